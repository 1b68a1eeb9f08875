"""Text input pipeline: real (non-padding) tokens/s of the tiny text expert's training step with
padding to max length, per-batch padding, and per-batch padding with length grouping.

    python benchmarks/bench_text_pipeline.py [--dataset DS_DIR] [--rows 640] [--max-length 256]

Without --dataset, texts follow a long-tailed length distribution (log-normal word counts, many short
titles, a third of descriptions empty), like product catalogs.
"""

import argparse
import time

import numpy as np
import torch
from datasets import ClassLabel, Dataset, Features, Value, load_from_disk
from transformers import DataCollatorWithPadding

from mmclf.experts.text import TextExpert
from mmclf.training import loop

WORDS = ["livre", "jeu", "console", "carte", "piscine", "jardin", "enfant", "bébé", "lot", "neuf", "occasion", "rouge", "bleu", "grand", "petit"]


def generated(rows: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    title_words = np.clip(rng.lognormal(2.0, 0.4, rows).astype(int), 2, 40)
    description_words = np.clip(rng.lognormal(3.5, 1.0, rows).astype(int), 0, 1500)
    description_words[rng.random(rows) < 0.35] = 0
    data = {
        "id": [str(i) for i in range(rows)],
        "title": [" ".join(rng.choice(WORDS, n)) for n in title_words],
        "description": [" ".join(rng.choice(WORDS, n)) for n in description_words],
        "label": rng.integers(0, 27, rows).tolist(),
    }
    features = Features({"id": Value("string"), "title": Value("string"), "description": Value("string"),
                         "label": ClassLabel(names=[str(i) for i in range(27)])})
    return Dataset.from_dict(data, features=features)


def padded_batches(expert):
    """The expert's own collate, flattened to the layout the other variant gives."""
    def collate(rows):
        batch = expert.collate(rows)
        return {**batch["inputs"], **batch["targets"]}
    return collate


def tokens_per_second(expert, encoded, collate, sampler, batch_size, max_batches):
    model = expert.model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loader = torch.utils.data.DataLoader(encoded, batch_size=batch_size, sampler=sampler, collate_fn=collate)
    real_tokens, start = 0, time.perf_counter()
    for i, batch in enumerate(loader):
        if i == max_batches:
            break
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        torch.nn.functional.cross_entropy(logits, batch["labels"]).backward()
        optimizer.step()
        optimizer.zero_grad()
        real_tokens += int(batch["attention_mask"].sum())
    return real_tokens / (time.perf_counter() - start), batch["input_ids"].shape


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", help="a DatasetDict folder (uses its train split)")
    parser.add_argument("--rows", type=int, default=640)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=None, help="default: one whole epoch")
    args = parser.parse_args()
    dataset = load_from_disk(args.dataset)["train"] if args.dataset else generated(args.rows)
    model_cfg = dict(TextExpert.config_defaults, max_length=args.max_length)
    expert = TextExpert.build(model_cfg, dataset.features["label"].names, dataset)
    encoded = expert.encode(dataset, train=True)
    lengths = np.array(expert.lengths(encoded))
    variants = {
        "pad to max length": (DataCollatorWithPadding(expert.tokenizer, padding="max_length",
                                                      max_length=args.max_length),
                              loop.EpochSampler(len(encoded), 0)),
        "per-batch padding": (padded_batches(expert), loop.EpochSampler(len(encoded), 0)),
        "per-batch + length grouping": (padded_batches(expert),
                                        loop.EpochSampler(len(encoded), 0, lengths, args.batch_size)),
    }
    print(f"\n{len(encoded)} rows, tokens per row: median {np.median(lengths):.0f}, p90 "
          f"{np.percentile(lengths, 90):.0f}, max {lengths.max()} (max_length {args.max_length}); "
          f"tiny encoder, batch {args.batch_size}, {args.batches or 'one epoch of'} training steps each")
    print("| batching | real tokens/s | ratio to max-length padding |\n|---|---|---|")
    base = None
    for name, (collate, sampler) in variants.items():
        rate, _ = tokens_per_second(expert, encoded, collate, sampler, args.batch_size, args.batches)
        base = base or rate
        print(f"| {name} | {rate:,.0f} | {rate / base:.2f} |")


if __name__ == "__main__":
    main()
