"""The classic text expert (`text-tfidf`, and `text-tfidf-out-of-core`): fit time and peak memory as the catalog
grows, and its 5-fold cross-validated macro-F1 on real listings, per mode.

    python benchmarks/bench_tfidf.py --sizes 10000 100000 --real ../shared/data/rakuten_sample --workdir /tmp/bench-tfidf
    python benchmarks/bench_tfidf.py --mode in_memory out_of_core --sizes 84736 --demo-repeat 12 --memory-cap-gib 16

Demo catalogs of each size are generated and built without images (the expert reads text only); each fit
(on every labelled row: train + validation) runs in a fresh child process, so its peak RSS is its own
(start-up included: about 500 MiB of imports). Prints one Markdown table: training rows, fit seconds
(vocabularies, the classifier and its calibration; wall and CPU), features, stored non-zeros per row, prediction rows/s,
peak RSS, test macro-F1. With --real: the real sample is built and fitted the same way, then repeated
--real-repeat times (new ids) as a stand-in for the full challenge set's row count and text lengths (a
lower bound on memory: repeated rows add no new terms), and trained with `mmclf train --config text-tfidf
folds=5` (`text-tfidf-out-of-core` for --mode out_of_core), whose out-of-fold macro-F1 covers every labelled row.
Each child's address space is capped (--memory-cap-gib): a fit that needs more is reported "over the cap"
instead of taking the machine down.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, resource, sys, time
cap = int(float(sys.argv[3]) * 2**30)
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
import numpy as np
from datasets import load_from_disk
from mmclf.evaluation import macro_f1
from mmclf.experts.tfidf import TfidfExpert
from mmclf.inference import expert_probabilities

from datasets import concatenate_datasets
dataset = load_from_disk(sys.argv[1])
train = concatenate_datasets([dataset["train"], dataset["validation"]])
test = dataset["test"] if "test" in dataset else dataset["validation"]
expert = TfidfExpert.build({"mode": sys.argv[2], **json.loads(sys.argv[4])}, train.features["label"].names)
wall, cpu = time.perf_counter(), time.process_time()
expert.fit(train)
fit_wall, fit_cpu = time.perf_counter() - wall, time.process_time() - cpu
features = expert.features(train["title"][:1000], train["description"][:1000])
wall = time.perf_counter()
probs = expert_probabilities(expert, test, batch_size=256)
predict_seconds = time.perf_counter() - wall
print(json.dumps({"rows": len(train), "fit_seconds": fit_wall, "fit_cpu_seconds": fit_cpu,
                  "features": expert.coef.shape[1], "nonzeros_per_row": features.nnz / features.shape[0],
                  "predict_rows_per_second": len(test) / predict_seconds,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "test_macro_f1": macro_f1(np.asarray(test["label"]), probs.argmax(axis=1)) if "test" in dataset
                  else None}))
"""


def fit_in_child(dataset_dir: Path, mode: str, cap_gib: float, time_cap_s: float, workdir: Path,
                 model: dict) -> dict:
    """One fit in a fresh process, its result kept in `workdir` (an interrupted benchmark skips finished fits)."""
    done = workdir / f"fit-{dataset_dir.name}-{mode}{'-' + json.dumps(model, sort_keys=True) if model else ''}.json"
    if done.is_file():
        return json.loads(done.read_text())
    try:
        result = subprocess.run([sys.executable, "-c", CHILD, str(dataset_dir), mode, str(cap_gib), json.dumps(model)],
                                capture_output=True, text=True, check=False, timeout=time_cap_s)
    except subprocess.TimeoutExpired:
        outcome = {"over_time": True, "mode": mode}
    else:
        if result.returncode and not ("MemoryError" in result.stderr or "bad_alloc" in result.stderr
                                      or result.returncode < 0):
            raise RuntimeError(result.stderr[-2000:])
        outcome = {"over_cap": True, "mode": mode} if result.returncode else \
            {"mode": mode, **json.loads(result.stdout.strip().splitlines()[-1])}
    done.write_text(json.dumps(outcome))
    return outcome


def demo_dataset(workdir: Path, rows: int) -> Path:
    from mmclf.data.build import build_dataset
    from mmclf.demo_catalog import generate_catalog

    catalog, dataset_dir = workdir / f"catalog-{rows}", workdir / f"dataset-{rows}"
    if not (dataset_dir / "summary.json").is_file():
        # the expert reads text only: the least images the generator allows (it writes one file per image)
        generate_catalog(catalog, rows=rows, test_rows=max(1000, rows // 10), seed=0, image_size=16, overwrite=True,
                         missing_image_rate=0.999, progress=False)
        build_dataset(catalog / "X_train.csv", catalog / "Y_train.csv", None, dataset_dir,
                      test_file=catalog / "X_test.csv", test_labels_file=catalog / "Y_test.csv", overwrite=True)
    return dataset_dir


def real_dataset(workdir: Path, real: Path) -> Path:
    from mmclf.data.build import build_dataset

    dataset_dir = workdir / "dataset-real"
    if not (dataset_dir / "summary.json").is_file():
        build_dataset(real / "X_sample.csv", real / "Y_sample.csv", real / "image_train", dataset_dir, overwrite=True)
    return dataset_dir


def repeated(dataset_dir: Path, times: int) -> Path:
    from datasets import DatasetDict, concatenate_datasets, load_from_disk

    out = dataset_dir.with_name(f"{dataset_dir.name}-x{times}")
    if not out.is_dir():
        splits = load_from_disk(str(dataset_dir))
        DatasetDict({name: concatenate_datasets([split.map(lambda row, k=k: {"id": f"{row['id']}-{k}"})
                                                 for k in range(times)]) for name, split in splits.items()}
                    ).save_to_disk(str(out))
    return out


def print_row(name: str, rows: int | None, r: dict, args) -> None:
    if r.get("over_cap") or r.get("over_time"):
        cap = f"over the memory cap ({args.memory_cap_gib:g} GiB)" if r.get("over_cap") else \
            f"over the time cap ({args.time_cap_s:g} s)"
        print(f"| {name} | {r['mode']} | {rows or '-'} | {cap} | | | | | | |", flush=True)
        return
    print(f"| {name} | {r['mode']} | {r['rows']:,} | {r['fit_seconds']:.1f} | {r['fit_cpu_seconds']:.1f} | {r['features']:,} | "
          f"{r['nonzeros_per_row']:.0f} | {r['predict_rows_per_second']:,.0f} | {r['peak_mib']:.0f} | "
          + ("-" if r["test_macro_f1"] is None else f"{r['test_macro_f1']:.3f}") + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10000, 100000], help="demo catalog training rows")
    parser.add_argument("--demo-repeat", type=int, default=1,
                        help="also fit the largest demo catalog repeated this many times (new ids): 84736 x 12 "
                             "stands in for a 1M-row catalog, built in seconds instead of generated in half an hour")
    parser.add_argument("--real", help="folder with X_sample.csv, Y_sample.csv, image_train/ (the real sample)")
    parser.add_argument("--real-repeat", type=int, default=32, help="the real sample repeated this many times "
                        "(32: 84,736 rows, about the challenge's 84,916)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds on the real sample")
    parser.add_argument("--mode", nargs="+", default=["in_memory"], choices=["in_memory", "out_of_core"],
                        help="the expert's modes to measure (each fit in its own child)")
    parser.add_argument("--memory-cap-gib", type=float, default=16.0, help="address-space cap of each fit's child")
    parser.add_argument("--time-cap-s", type=float, default=3600.0, help="wall-time cap of each fit's child")
    parser.add_argument("--model", default="{}", help='model settings of every fit, as JSON (e.g. \'{"out_of_core": '
                                                     '{"passes": 1}}\')')
    parser.add_argument("--workdir", help="where catalogs, datasets and runs go (default: a temporary folder)")
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="mmclf-bench-tfidf-"))
    workdir.mkdir(parents=True, exist_ok=True)
    datasets = [("demo catalog", rows, demo_dataset(workdir, rows)) for rows in args.sizes]
    if args.demo_repeat > 1 and datasets:
        datasets.append((f"demo catalog x {args.demo_repeat}", None, repeated(datasets[-1][2], args.demo_repeat)))
    if args.real:
        real = real_dataset(workdir, Path(args.real))
        datasets.append(("real sample", None, real))
        if args.real_repeat > 1:
            datasets.append((f"real sample x {args.real_repeat}", None, repeated(real, args.real_repeat)))
    print("| data | mode | training rows | fit s (wall) | fit s (CPU) | features | non-zeros / row | predict rows/s "
          "| peak RSS MiB | test macro-F1 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    for name, rows, path in datasets:
        for mode in args.mode:
            outcome = fit_in_child(path, mode, args.memory_cap_gib, args.time_cap_s, workdir, json.loads(args.model))
            print_row(name, rows, outcome, args)

    if args.real:
        from mmclf.training.config import load_config
        from mmclf.training.train import train_expert

        for mode in args.mode:
            recipe = "text-tfidf" if mode == "in_memory" else "text-tfidf-out-of-core"
            run_dir = workdir / f"run-real-{args.folds}fold" if mode == "in_memory" else workdir / f"run-real-{args.folds}fold-{mode}"
            command = (f"mmclf train --config {recipe} dataset={real_dataset(workdir, Path(args.real))} "
                       f"output_dir={run_dir} folds={args.folds}")
            if not (run_dir / "metrics.json").is_file():
                start = time.perf_counter()
                resume = ["resume=true"] if run_dir.exists() else []  # an interrupted run continues
                train_expert(load_config(recipe, command.split()[4:] + resume))
                print(f"{command}: {time.perf_counter() - start:.0f} s")
            metrics = json.loads((run_dir / "metrics.json").read_text())
            folds = [f["best_eval_macro_f1"] for f in metrics["folds"]]
            print(f"real sample, {mode}, {args.folds}-fold cross-validated macro-F1 (out of fold, every labelled row): "
                  f"{metrics['oof_macro_f1']:.4f}; per fold " + ", ".join(f"{f:.3f}" for f in folds))


if __name__ == "__main__":
    main()
