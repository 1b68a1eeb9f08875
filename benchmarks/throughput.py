"""Training throughput of expert recipes: samples/s, tokens/s, peak memory and model-FLOPs utilisation (MFU),
through mmclf's own training loop (`loop.train`: Accelerate prepare, autocast, the recipe's speed options).

Two modes over the same batches, so their ratio is the input pipeline's cost:
- synthetic: the batches are decoded, augmented, tokenised and collated before timing, then replayed
  from (pinned) host memory; timing sees the model step and the host-to-device copy only;
- real: the same rows go through the recipe's input pipeline (DataLoader, workers, transforms) while
  timing runs.
Rows come from `--dataset DIR` (its train split), or are generated: titles and descriptions long enough to
fill `model.max_length` tokens, 500 px JPEGs like the Rakuten images.

FLOPs of a training step (forward + backward) are counted with `torch.utils.flop_counter.FlopCounterMode`
on one batch of each input shape. MFU = counted FLOPs per second / peak: `--peak-tflops`, or on a GPU
the dense bf16/fp16 (or fp32) peak of its model from the table below; on a CPU the peak is measured as the
best large-matmul rate of the same dtype (so CPU MFU reads "of what this CPU reaches on a matmul").
Peak memory: `torch.cuda.max_memory_allocated` on a GPU, the process's peak RSS on a CPU. Each
(recipe, mode) runs in a fresh process (`--in-process`: all in this one, a quick check that the script runs).
Checkpoints are not written (they are not part of a step).
Models get random weights of the recipe's architecture (speed does not depend on the values); a Hub text
model that is not in the local cache is built from the architecture table below, with a tokenizer trained
on the rows standing in for its own (token counts then differ from the real tokenizer's on real text).

    python benchmarks/throughput.py --recipes text-tiny image-tiny [--dataset DS] [--steps 20] [--warmup 3] [--repeats 3]
    python benchmarks/throughput.py --recipes text-camembert-large --mixed-precision bf16 model.max_length=256
    python benchmarks/throughput.py --recipes image-resnet152-224 --batch-size 16 training.channels_last=false
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

# dense tensor-core peaks in TFLOP/s (bf16 = fp16 on these GPUs), and fp32 without TF32 (torch's default)
GPU_PEAK_TFLOPS = {
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp32": 51.2},
    "H100 NVL": {"bf16": 835.0, "fp16": 835.0, "fp32": 60.0},
    "H100": {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9},  # SXM
    "H200": {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9},
    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
    "L40S": {"bf16": 362.1, "fp16": 362.1, "fp32": 91.6},
    "L4": {"bf16": 121.0, "fp16": 121.0, "fp32": 30.3},
    "V100": {"fp16": 125.0, "fp32": 15.7},
    "T4": {"fp16": 65.0, "fp32": 8.1},
}

# the CamemBERT architectures, for building them offline with random weights
ARCHITECTURES = {
    "camembert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                       "intermediate_size": 3072, "vocab_size": 32005, "max_position_embeddings": 514},
    "camembert/camembert-large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                                  "intermediate_size": 4096, "vocab_size": 32005, "max_position_embeddings": 514},
}

WORDS = ["livre", "jeu", "console", "carte", "piscine", "jardin", "enfant", "bébé", "lot", "neuf", "occasion",
         "rouge", "bleu", "grand", "petit", "collection", "figurine", "décoration", "maison", "coussin"]


# --- rows, expert, batches --------------------------------------------------------------------------------

def generated_rows(count: int, words: int, image_size: int = 500):
    """Labelled rows in the dataset contract: long texts (truncated to max_length) and 500 px JPEGs (a pool of
    32 distinct images, cycled)."""
    from datasets import ClassLabel, Dataset, Features, Image, Value
    from PIL import Image as PILImage
    from PIL import ImageDraw

    rng = np.random.default_rng(0)
    pool = []
    for _ in range(32):
        image = PILImage.new("RGB", (image_size, image_size), tuple(int(c) for c in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(12):
            x, y = rng.integers(0, image_size, 2)
            draw.ellipse([x, y, x + image_size // 4, y + image_size // 4],
                         fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        pool.append({"bytes": buffer.getvalue(), "path": None})
    labels = rng.integers(0, 27, count)
    data = {
        "id": [str(i) for i in range(count)],
        "title": [" ".join(rng.choice(WORDS, 12)) for _ in range(count)],
        "description": [" ".join(rng.choice(WORDS, words)) for _ in range(count)],
        "image": [pool[i % len(pool)] for i in range(count)],
        "has_image": [True] * count,
        "label": labels.tolist(),
    }
    features = Features({"id": Value("string"), "title": Value("string"), "description": Value("string"),
                         "image": Image(mode="RGB"), "has_image": Value("bool"),
                         "label": ClassLabel(names=[str(i) for i in range(27)])})
    return Dataset.from_dict(data, features=features)


def build_expert(config: dict, class_names: list[str], rows):
    """The recipe's expert with random weights; notes on what stands in for what."""
    from mmclf.experts import expert_class

    model_config = dict(config["model"])
    if "pretrained" in model_config:
        model_config.update(pretrained=False, pretrained_file=None)  # random weights: same speed, no download
    expert_cls = expert_class(config["expert"])
    try:
        return expert_cls.build(model_config, class_names, rows), ""
    except OSError:  # a Hub model that is not cached, offline
        if model_config.get("name") not in ARCHITECTURES:
            raise
    from transformers import AutoModelForSequenceClassification, CamembertConfig

    from mmclf.experts.text import train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer((f"{t} {d}" for t, d in zip(rows["title"], rows["description"])), 8000)
    architecture = CamembertConfig(**ARCHITECTURES[model_config["name"]], num_labels=len(class_names),
                                   pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                   eos_token_id=tokenizer.eos_token_id)
    model = AutoModelForSequenceClassification.from_config(architecture)
    return expert_cls(model, tokenizer, model_config), "architecture from the table, stand-in tokenizer"


class Replay(torch.utils.data.Dataset):
    """Collated batches, handed out whole (a DataLoader with batch_size=1 and this as collate)."""

    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        return i

    def collate(self, indices):
        return self.batches[indices[0]]


def shape_key(batch) -> tuple:
    return tuple((name, tuple(value.shape)) for name, value in sorted(batch["inputs"].items()))


# --- one measurement ----------------------------------------------------------------------------------------

def peak_tflops(device: torch.device, dtype_name: str, override: float | None) -> tuple[float | None, str]:
    if override:
        return override, "--peak-tflops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in GPU_PEAK_TFLOPS.items():  # the more specific names come first
            if key in name and dtype_name in peaks:
                return peaks[dtype_name], f"{key} datasheet ({dtype_name} dense)"
        return None, f"unknown GPU {name!r}: pass --peak-tflops"
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype_name, torch.float32)
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    best = 0.0
    for _ in range(10):
        start = time.perf_counter()
        a @ b
        best = max(best, 2 * 2048 ** 3 / (time.perf_counter() - start) / 1e12)
    return best, f"measured {dtype_name} matmul on this CPU"


def measure(args) -> dict:
    from accelerate.utils import set_seed
    from datasets import load_from_disk

    from mmclf.training import loop
    from mmclf.training.config import load_config

    config = load_config(args.recipe, args.overrides)
    training = dict(config["training"], epochs=1, log_with="none", checkpoint_steps=0)
    if args.batch_size:
        training["batch_size"] = args.batch_size
    if args.mixed_precision:
        training["mixed_precision"] = args.mixed_precision
    batch_size = training["batch_size"]
    batches = args.warmup + args.steps + 1  # the timed window: from the step after warm-up to the last one
    rows_needed = batch_size * batches
    if args.dataset:
        rows = load_from_disk(args.dataset)["train"]
        if len(rows) < rows_needed:
            raise SystemExit(f"{args.dataset} has {len(rows)} training rows; {rows_needed} are needed "
                             f"(batch {batch_size} x {batches} steps)")
        rows = rows.select(range(rows_needed))
    else:
        rows = generated_rows(rows_needed, words=config["model"].get("max_length", 64) * 2)
    class_names = rows.features["label"].names
    set_seed(config["seed"])
    expert, note = build_expert(config, class_names, rows)
    accelerator = loop.make_accelerator(training)
    encoded = expert.encode(rows, train=True)
    eval_rows = expert.encode(rows.select(range(min(len(rows), training["eval_batch_size"]))), train=False)
    train_loader, eval_loader = loop.make_dataloaders(encoded, eval_rows, expert.collate, training, config["seed"],
                                                      expert.lengths(encoded) if training["group_by_length"] else None,
                                                      accelerator)
    # the batches of the run, made beforehand: their shapes and tokens; replayed in synthetic mode
    unprepared = loop.make_dataloaders(encoded, None, expert.collate, dict(training, num_workers=0),
                                       config["seed"], expert.lengths(encoded) if training["group_by_length"] else None)[0]
    prepared_batches = list(unprepared)
    tokens = [int(b["inputs"]["attention_mask"].sum()) if "attention_mask" in b["inputs"] else None
              for b in prepared_batches]
    if args.mode == "synthetic":
        pin = accelerator.device.type == "cuda"
        if pin:
            prepared_batches = [{part: {k: v.pin_memory() for k, v in b[part].items()} for part in b}
                                for b in prepared_batches]
        replay = Replay(prepared_batches)
        train_loader = torch.utils.data.DataLoader(replay, batch_size=1, collate_fn=replay.collate)

    stamps, steps_seen, model = [], [0], expert.model
    first_timed, last_timed = args.warmup, args.warmup + args.steps

    def timed_loss(outputs, targets):
        if model.training:
            if steps_seen[0] in (first_timed, last_timed):
                if accelerator.device.type == "cuda":
                    torch.cuda.synchronize()
                stamps.append(time.perf_counter())
            steps_seen[0] += 1
        return expert.loss(outputs, targets)

    loop.save_checkpoint = lambda accelerator, directory: None  # checkpoints are not part of a training step
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as run_dir:
        loop.train(model, train_loader, eval_loader, training, run_dir, accelerator, loss_fn=timed_loss,
                   logits_fn=expert.logits, parameter_groups=expert.parameter_groups(training))
    elapsed = stamps[1] - stamps[0]
    if accelerator.device.type == "cuda":
        peak_memory, memory_kind = torch.cuda.max_memory_allocated() / 2 ** 30, "GPU allocated"
    else:
        peak_memory, memory_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, "process RSS"

    from torch.utils.flop_counter import FlopCounterMode

    flops_by_shape = {}
    model.train()
    for batch in prepared_batches[first_timed:last_timed]:
        key = shape_key(batch)
        if key not in flops_by_shape:
            batch = {part: {k: v.to(accelerator.device) for k, v in batch[part].items()} for part in batch}
            with FlopCounterMode(display=False) as counter:
                accelerator.backward(expert.loss(model(**batch["inputs"]), batch["targets"]))
            model.zero_grad(set_to_none=True)
            flops_by_shape[key] = counter.get_total_flops()
    flops = sum(flops_by_shape[shape_key(b)] for b in prepared_batches[first_timed:last_timed])
    precision = accelerator.mixed_precision if accelerator.mixed_precision != "no" else "fp32"
    peak, peak_source = peak_tflops(accelerator.device, precision, args.peak_tflops)
    achieved = flops / elapsed / 1e12
    timed_tokens = tokens[first_timed:last_timed]
    device = torch.cuda.get_device_name(accelerator.device) if accelerator.device.type == "cuda" else (
        f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)")
    return {
        "recipe": args.recipe, "mode": args.mode, "device": device, "precision": precision, "batch": batch_size,
        "overrides": args.overrides, "steps": args.steps,
        "samples_per_s": args.steps * batch_size / elapsed,
        "tokens_per_s": None if None in timed_tokens else sum(timed_tokens) / elapsed,
        "tokens_per_sample": None if None in timed_tokens else sum(timed_tokens) / args.steps / batch_size,
        "peak_memory_gib": peak_memory, "memory_kind": memory_kind,
        "tflops_per_s": achieved, "mfu": achieved / peak if peak else None, "peak_tflops": peak,
        "peak_source": peak_source, "gflops_per_sample": flops / args.steps / batch_size / 1e9, "note": note,
    }


# --- the table ----------------------------------------------------------------------------------------------

def run_one(args, recipe: str, mode: str, variant: list[str]) -> dict:
    if args.in_process:
        return measure(argparse.Namespace(**{**vars(args), "recipe": recipe, "mode": mode,
                                             "overrides": [*args.overrides, *variant]}))
    command = [sys.executable, __file__, "--one", recipe, mode, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    for flag, value in (("--dataset", args.dataset), ("--batch-size", args.batch_size),
                        ("--mixed-precision", args.mixed_precision), ("--peak-tflops", args.peak_tflops)):
        if value:
            command += [flag, str(value)]
    result = subprocess.run(command + list(args.overrides) + variant, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{recipe} ({mode}) failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def figure(value: float) -> str:
    """Three significant digits, thousands separated."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def table(results: list[dict]) -> str:
    header = ("| recipe | settings | mode | device | precision | batch | samples/s | tokens/s | peak memory (GiB) "
              "| TFLOP/s | MFU | real / synthetic |")
    lines = [header, "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    synthetic = {(r["recipe"], " ".join(r["overrides"])): r["samples_per_s"] for r in results if r["mode"] == "synthetic"}
    for r in results:
        key = (r["recipe"], " ".join(r["overrides"]))
        ratio = r["samples_per_s"] / synthetic[key] if r["mode"] == "real" and key in synthetic else None
        tokens = "" if r["tokens_per_s"] is None else figure(r["tokens_per_s"])
        mfu = "" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %"
        lines.append(
            f"| {r['recipe']} | {' '.join(r['overrides']) or 'recipe'} | {r['mode']} | {r['device']} | {r['precision']} | {r['batch']} | "
            f"{figure(r['samples_per_s'])} | {tokens} | {r['peak_memory_gib']:.2f} ({r['memory_kind']}) | "
            f"{figure(r['tflops_per_s'])} | {mfu} | {'' if ratio is None else f'{ratio:.2f}'} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["text-tiny", "image-tiny"])
    parser.add_argument("--modes", nargs="+", default=["synthetic", "real"], choices=["synthetic", "real"])
    parser.add_argument("--dataset", help="a DatasetDict folder (its train split); default: generated rows")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (cuDNN autotuning, compilation)")
    parser.add_argument("--batch-size", type=int, help="default: the recipe's training.batch_size")
    parser.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], help="default: the recipe's / launch's")
    parser.add_argument("--peak-tflops", type=float, help="the device's peak for the MFU (default: table or measured)")
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs of the modes; the best of each is kept")
    parser.add_argument("--variants", nargs="+", default=[], metavar="'KEY=VALUE ...'",
                        help="settings to compare, each a quoted list of overrides; they alternate within the run")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--in-process", action="store_true",
                        help="measure in this process, not in a fresh one per (recipe, mode): quicker, for checking that "
                             "the script runs (on a CPU the peak memory then covers every run so far)")
    parser.add_argument("--one", nargs=2, metavar=("RECIPE", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, as for `mmclf train`")
    args = parser.parse_args()
    if args.one:
        args.recipe, args.mode = args.one
        print(json.dumps(measure(args)))
        return
    results = []
    variants = [variant.split() for variant in args.variants] or [[]]
    for recipe in args.recipes:  # variants and modes alternate, best of each kept: a busy machine slows some runs
        best = {}
        for _ in range(args.repeats):
            for variant in variants:
                for mode in args.modes:
                    result = run_one(args, recipe, mode, variant)
                    key = (" ".join(variant), mode)
                    if key not in best or result["samples_per_s"] > best[key]["samples_per_s"]:
                        best[key] = result
        results += list(best.values())
    print(f"\n{args.steps} timed steps after {args.warmup} warm-up steps, best of {args.repeats} alternating runs; "
          f"rows: {args.dataset or 'generated'}; overrides: {' '.join(args.overrides) or 'none'}")
    print(table(results))
    for r in results:
        notes = [f"MFU peak: {r['peak_source']} ({r['peak_tflops']:.2f} TFLOP/s)" if r["peak_tflops"] else r["peak_source"],
                 f"{r['gflops_per_sample']:.2f} GFLOP per sample (forward + backward)"]
        if r["tokens_per_sample"]:
            notes.append(f"{r['tokens_per_sample']:.0f} tokens per sample")
        if r["note"]:
            notes.append(r["note"])
        print(f"- {r['recipe']} ({' '.join(r['overrides']) or 'recipe'}, {r['mode']}): {'; '.join(notes)}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
