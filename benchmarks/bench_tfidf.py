"""The classic text expert (`text-tfidf`): fit time and peak memory as the catalog grows, and its 5-fold
cross-validated macro-F1 on real listings.

    python benchmarks/bench_tfidf.py --sizes 10000 100000 --real ../shared/data/rakuten_sample --workdir /tmp/bench-tfidf

Demo catalogs of each size are generated and built without images (the expert reads text only); each fit
(on every labelled row: train + validation) runs in a fresh child process, so its peak RSS is its own
(start-up included: about 500 MiB of imports). Prints one Markdown table: training rows, fit seconds
(vocabularies, the classifier and its calibration; wall and CPU), features, stored non-zeros per row, prediction rows/s,
peak RSS, test macro-F1. With --real: the real sample is built and fitted the same way, then repeated
--real-repeat times (new ids) as a stand-in for the full challenge set's row count and text lengths (a
lower bound on memory: repeated rows add no new terms), and trained with `mmclf train --config text-tfidf
folds=5`, whose out-of-fold macro-F1 covers every labelled row.
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
import numpy as np
from datasets import load_from_disk
from mmclf.evaluation import macro_f1
from mmclf.experts.tfidf import TfidfExpert
from mmclf.inference import expert_probabilities

from datasets import concatenate_datasets
dataset = load_from_disk(sys.argv[1])
train = concatenate_datasets([dataset["train"], dataset["validation"]])
test = dataset["test"] if "test" in dataset else dataset["validation"]
expert = TfidfExpert.build({}, train.features["label"].names)
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


def fit_in_child(dataset_dir: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, str(dataset_dir)], capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def demo_dataset(workdir: Path, rows: int) -> Path:
    from mmclf.data.build import build_dataset
    from mmclf.demo_catalog import generate_catalog

    catalog, dataset_dir = workdir / f"catalog-{rows}", workdir / f"dataset-{rows}"
    if not (dataset_dir / "summary.json").is_file():
        generate_catalog(catalog, rows=rows, test_rows=max(1000, rows // 10), seed=0, image_size=16, overwrite=True,
                         progress=False)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10000, 100000], help="demo catalog training rows")
    parser.add_argument("--real", help="folder with X_sample.csv, Y_sample.csv, image_train/ (the real sample)")
    parser.add_argument("--real-repeat", type=int, default=32, help="the real sample repeated this many times "
                        "(32: 84,736 rows, about the challenge's 84,916)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds on the real sample")
    parser.add_argument("--workdir", help="where catalogs, datasets and runs go (default: a temporary folder)")
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="mmclf-bench-tfidf-"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = [("demo catalog", fit_in_child(demo_dataset(workdir, rows))) for rows in args.sizes]
    if args.real:
        real = real_dataset(workdir, Path(args.real))
        results.append(("real sample", fit_in_child(real)))
        if args.real_repeat > 1:
            results.append((f"real sample x {args.real_repeat}", fit_in_child(repeated(real, args.real_repeat))))

    print("| data | training rows | fit s (wall) | fit s (CPU) | features | non-zeros / row | predict rows/s "
          "| peak RSS MiB | test macro-F1 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results:
        print(f"| {name} | {r['rows']:,} | {r['fit_seconds']:.1f} | {r['fit_cpu_seconds']:.1f} | {r['features']:,} | "
              f"{r['nonzeros_per_row']:.0f} | {r['predict_rows_per_second']:,.0f} | {r['peak_mib']:.0f} | "
              + ("-" if r["test_macro_f1"] is None else f"{r['test_macro_f1']:.3f}") + " |", flush=True)

    if args.real:
        from mmclf.training.config import load_config
        from mmclf.training.train import train_expert

        run_dir = workdir / f"run-real-{args.folds}fold"
        command = (f"mmclf train --config text-tfidf dataset={real_dataset(workdir, Path(args.real))} "
                   f"output_dir={run_dir} folds={args.folds}")
        if not (run_dir / "metrics.json").is_file():
            start = time.perf_counter()
            resume = ["resume=true"] if run_dir.exists() else []  # an interrupted run continues
            train_expert(load_config("text-tfidf", command.split()[4:] + resume))
            print(f"{command}: {time.perf_counter() - start:.0f} s")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        folds = [f["best_eval_macro_f1"] for f in metrics["folds"]]
        print(f"real sample, {args.folds}-fold cross-validated macro-F1 (out of fold, every labelled row): "
              f"{metrics['oof_macro_f1']:.4f}; per fold " + ", ".join(f"{f:.3f}" for f in folds))


if __name__ == "__main__":
    main()
