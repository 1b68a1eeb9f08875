"""Decision-level fusion where an expert is weak or its modality is missing on most rows: each idea measured.

    python benchmarks/bench_fusion_robustness.py --dataset DS --runs tfidf=RUN text=RUN image=RUN \\
        --sets tfidf,image text,image tfidf,text,image

RUN folders are expert runs of `mmclf train ... folds=5`: their out-of-fold tables (probs/oof.parquet) cover
every labelled row of DS. For each expert set and fusion variant: 8-fold cross-validated fusion, its
out-of-fold macro-F1 beside the best single expert's on the same rows (Markdown table, and --json FILE).

On the real Rakuten sample: build DS with `mmclf build-dataset X_sample.csv --labels Y_sample.csv --images
image_train --out DS`, then train `text-tfidf`, `text-tiny` and `image-tiny` with folds=5 into the RUN folders.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from mmclf.evaluation import macro_f1
from mmclf.fusion.decision import fit_decision_fusion
from mmclf.probability_tables import ProbabilityTable

PAPER = {"inputs": "probs", "start": "random", "class_weight": None, "lr": 0.01, "epochs": 40}
VARIANTS = {
    "paper: probabilities, random start, lr 0.01, 40 epochs": {},
    "balanced loss": {"class_weight": "balanced"},
    "log-probabilities": {"inputs": "log_probs"},
    "mean start": {"start": "mean"},
    "mean start, balanced (default)": {"start": "mean", "class_weight": "balanced"},
    "mean start, balanced, log-probabilities": {"start": "mean", "class_weight": "balanced", "inputs": "log_probs"},
    "mean start, balanced, lr 0.003": {"start": "mean", "class_weight": "balanced", "lr": 0.003},
    "mean start, balanced, lr 0.03": {"start": "mean", "class_weight": "balanced", "lr": 0.03},
    "mean start, balanced, 20 epochs": {"start": "mean", "class_weight": "balanced", "epochs": 20},
    "mean start, balanced, 80 epochs": {"start": "mean", "class_weight": "balanced", "epochs": 80},
    "paper, lr 0.03, 80 epochs": {"lr": 0.03, "epochs": 80},
    "mean start, balanced, image expert uniform on rows without image": {
        "start": "mean", "class_weight": "balanced", "blank_missing_images": True},
}


def uniform_without_image(table: ProbabilityTable, has_image: dict[str, bool]) -> ProbabilityTable:
    """The table with uniform probabilities on rows without an image: an expert that says nothing there."""
    probs = table.probs.copy()
    probs[[not has_image[i] for i in table.ids]] = 1.0 / probs.shape[1]
    return ProbabilityTable(table.ids, table.splits, table.labels, probs, table.class_names, table.source)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, metavar="NAME=RUN_DIR")
    parser.add_argument("--dataset", required=True, help="the dataset the runs were trained on (for has_image)")
    parser.add_argument("--sets", nargs="+", required=True, help="comma-separated expert names, e.g. tfidf,image")
    parser.add_argument("--image-expert", default="image", help="the name of the image expert among --runs")
    parser.add_argument("--variants", nargs="*", help="names of VARIANTS to run (default: all)")
    parser.add_argument("--hidden-size", type=int, nargs="+", default=[0], help="fusion head hidden sizes")
    parser.add_argument("--folds", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--json", help="write every result to this file")
    args = parser.parse_args()

    from datasets import concatenate_datasets, load_from_disk

    dataset = load_from_disk(args.dataset)
    labelled = concatenate_datasets([dataset[s] for s in ("train", "validation") if s in dataset])
    has_image = dict(zip(labelled["id"], labelled["has_image"]))
    runs = dict(item.split("=", 1) for item in args.runs)
    tables = {name: ProbabilityTable.load(Path(run) / "probs" / "oof.parquet").renamed(name) for name, run in runs.items()}
    print(f"{len(has_image)} labelled rows, {sum(has_image.values())} with an image")

    results = []
    variants = {name: VARIANTS[name] for name in (args.variants or VARIANTS)}
    for expert_set in args.sets:
        names = expert_set.split(",")
        experts = {name: macro_f1(tables[name].labels, tables[name].predictions()) for name in names}
        best = max(experts.values())
        print(f"\n### {{{', '.join(names)}}}: experts " + ", ".join(f"{n} {f:.4f}" for n, f in experts.items()))
        print("\n| variant | hidden | fused out-of-fold macro-F1 | minus best expert | seconds |\n|---|---:|---:|---:|---:|")
        for label, variant in variants.items():
            options = {**PAPER, **{k: v for k, v in variant.items() if k != "blank_missing_images"}}
            chosen = {n: uniform_without_image(tables[n], has_image)
                      if variant.get("blank_missing_images") and n == args.image_expert else tables[n] for n in names}
            for hidden in args.hidden_size:
                scores, start = [], time.perf_counter()
                for seed in args.seeds:
                    model = fit_decision_fusion(chosen, folds=args.folds, hidden_size=hidden, seed=seed,
                                                progress=False, **options)
                    scores.append(model.cv_metrics["oof_macro_f1"])
                seconds = (time.perf_counter() - start) / len(args.seeds)
                fused = float(np.mean(scores))
                print(f"| {label} | {hidden} | {fused:.4f} | {fused - best:+.4f} | {seconds:.1f} |", flush=True)
                results.append({"experts": names, "expert_macro_f1": experts, "variant": label, "hidden_size": hidden,
                                "options": options, "fused_macro_f1": scores, "seconds": seconds})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
