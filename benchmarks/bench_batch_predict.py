"""Catalog-scale `mmclf predict`: peak memory and rows/s as the file grows, streamed against one whole-file pass,
2 CPU processes under `accelerate launch` against 1, and the Ray Data path on a local instance.

    python benchmarks/bench_batch_predict.py --sizes 10000 100000 1000000 --workdir /tmp/bench-batch [--ray]

A pipeline of a TF-IDF expert and one fused run (2 fold heads) is trained on a small generated dataset (prediction
cost is then reading, the expert and the fusion, not a network); ENS CSV catalogs of each size are generated from
the same vocabulary (no images). Every measurement runs in a fresh child process, so its peak RSS is its own
(imports included). All figures come from one run on the same machine: compare ratios, not absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

CHILD = """
import json, resource, sys, time, warnings
import pandas as pd
from mmclf import MultimodalPipeline
from mmclf.batch_predict import predict_file
mode, pipeline, catalog, out, chunk_rows = sys.argv[1:6]
started = time.perf_counter()
if mode == "whole":  # what `mmclf predict` did before streaming: every row read, held and predicted at once
    loaded = MultimodalPipeline.from_pretrained(pipeline)
    started = time.perf_counter()
    frame = pd.read_csv(catalog, dtype=str, keep_default_na=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = loaded.predict_details(frame, 64)
    pd.DataFrame({"prdtypecode": result.codes}, index=pd.Index(result.ids, name="")).to_csv(out)
    rows = len(result.ids)
else:
    loaded = MultimodalPipeline.from_pretrained(pipeline)
    started = time.perf_counter()
    rows = predict_file(loaded, out, input=catalog, chunk_rows=int(chunk_rows), progress=False).rows
seconds = time.perf_counter() - started
print(json.dumps({"rows": rows, "seconds": seconds, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

RAY_CHILD = """
import glob, json, sys, time
import ray
from mmclf.ray import predict_dataset
pipeline, catalog, small, out = sys.argv[1:5]
started = time.perf_counter()
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
init = time.perf_counter() - started
started = time.perf_counter()
predict_dataset(pipeline, small, out + "-small", concurrency=1, num_cpus=1, rows_per_batch=4096)
small_seconds = time.perf_counter() - started
started = time.perf_counter()
predict_dataset(pipeline, catalog, out, concurrency=1, num_cpus=1, rows_per_batch=4096)
seconds = time.perf_counter() - started
ray.shutdown()
print(json.dumps({"init": init, "small_seconds": small_seconds, "seconds": seconds}))
"""


def run_json(command: list[str], env=None) -> dict:
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def build_pipeline(workdir: Path) -> Path:
    from mmclf import stages
    from mmclf.testing import save_dataset_dict

    pipeline = workdir / "pipeline"
    if (pipeline / "pipeline.json").is_file():
        return pipeline
    dataset = save_dataset_dict(workdir / "dataset", train_rows=240, validation_rows=60, test_rows=30)
    stages.train("text-tfidf", [f"dataset={dataset}", f"output_dir={workdir / 'tfidf'}", "folds=2", "model.min_df=1"])
    stages.fuse("fuse-default", tables=[str(workdir / "tfidf" / "probs" / "oof.parquet")], folds=2, epochs=5,
                output_dir=workdir / "fusion")
    stages.assemble(experts={"tfidf": str(workdir / "tfidf" / "model")}, fusions=[str(workdir / "fusion")],
                    output_dir=pipeline)
    return pipeline


def write_catalog(path: Path, rows: int, seed: int = 0) -> Path:
    """An ENS X file of `rows` generated listings, written 100k rows at a time."""
    from mmclf.testing import FILLER, WORDS

    if path.is_file():
        return path
    vocabulary = np.array(FILLER + [w for words in WORDS.values() for w in words])
    rng = np.random.default_rng(seed)
    with open(path, "w") as handle:
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            words = rng.choice(vocabulary, (n, 12))
            pd.DataFrame({"": [f"r{i}" for i in range(start, start + n)],
                          "designation": [" ".join(w[:4]) for w in words],
                          "description": [" ".join(w[4:]) if i % 3 else "" for i, w in enumerate(words)],
                          "productid": np.arange(start, start + n), "imageid": np.arange(start, start + n)},
                         ).to_csv(handle, index=False, header=start == 0)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--chunk-rows", type=int, default=8192)
    parser.add_argument("--processes-rows", type=int, default=100_000, help="rows of the 1- vs 2-process comparison")
    parser.add_argument("--ray", action="store_true", help="also the Ray Data path on a local instance (2 CPUs)")
    parser.add_argument("--workdir", default="/tmp/bench-batch-predict")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    pipeline = build_pipeline(workdir)
    child = [sys.executable, "-c", CHILD]

    print("| rows | path | rows/s | peak RSS (MiB) |\n|---:|---|---:|---:|")
    peaks = {}
    for size in sorted(args.sizes):
        catalog = write_catalog(workdir / f"X_{size}.csv", size)
        modes = ["whole", "stream"] if size == min(args.sizes) else ["stream"]
        for mode in modes:
            r = run_json([*child, mode, str(pipeline), str(catalog), str(workdir / f"out_{mode}_{size}.csv"),
                          str(args.chunk_rows)])
            peaks[(mode, size)] = r
            print(f"| {size:,} | {mode} | {r['rows'] / r['seconds']:,.0f} | {r['peak_mib']:,.0f} |", flush=True)
    smallest, largest = min(args.sizes), max(args.sizes)
    stream, whole = peaks[("stream", smallest)], peaks[("whole", smallest)]
    print(f"\npeak RSS at {largest:,} / at {smallest:,} rows (streamed): "
          f"{peaks[('stream', largest)]['peak_mib'] / stream['peak_mib']:.2f}x; streamed / whole-file rows/s at "
          f"{smallest:,}: {(stream['rows'] / stream['seconds']) / (whole['rows'] / whole['seconds']):.2f}x")

    catalog = write_catalog(workdir / f"X_{args.processes_rows}.csv", args.processes_rows)
    command = ["predict", "--pipeline", str(pipeline), "--input", str(catalog), "--chunk-rows", str(args.chunk_rows)]
    env = {"OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    timings = {}
    for processes in (1, 2):
        started = time.perf_counter()
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                  str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                  "--main_process_port", str(29600 + processes)] if processes > 1 else [sys.executable]
        done = subprocess.run([*launch, "-m", "mmclf", *command, "--out", str(workdir / f"procs{processes}.csv")],
                              capture_output=True, text=True, check=False, env={**os.environ, "HF_HUB_OFFLINE": "1", **env})
        if done.returncode:
            raise RuntimeError(done.stderr[-3000:])
        timings[processes] = time.perf_counter() - started
        print(f"{processes} process(es), OMP_NUM_THREADS=1, {args.processes_rows:,} rows: "
              f"{args.processes_rows / timings[processes]:,.0f} rows/s (command wall time, start-up included)")
    same = (workdir / "procs1.csv").read_bytes() == (workdir / "procs2.csv").read_bytes()
    print(f"2 / 1 processes rows/s: {timings[1] / timings[2]:.2f}x; outputs identical: {same}")

    if args.ray:
        small = write_catalog(workdir / "X_1000.csv", 1000)
        r = run_json([sys.executable, "-c", RAY_CHILD, str(pipeline), str(catalog), str(small),
                      str(workdir / "ray_out")])
        print(f"Ray (local, 2 CPUs, 1 actor): ray.init {r['init']:.1f} s; 1,000 rows {r['small_seconds']:.1f} s "
              f"(start-up overhead); {args.processes_rows:,} rows: {args.processes_rows / r['seconds']:,.0f} rows/s")


if __name__ == "__main__":
    main()
