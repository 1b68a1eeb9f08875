"""Prediction throughput: the Python API (pipeline loaded once) against `mmclf predict` (loads per call), and the
HTTP server under concurrent clients.

    python benchmarks/bench_predict.py --pipeline demo_out/pipeline --input demo_out/catalog/X_test.csv \
        --images demo_out/catalog/image_test [--baseline-checkout /path/to/older/mmclf]

Measured in one run on the same pipeline and rows (best of --repeats):
- load: `MultimodalPipeline.from_pretrained` alone;
- Python API, loaded once: `predict` over the raw rows (a DataFrame + the images folder);
- Python API, loaded per call: `from_pretrained` + `predict` each time;
- `mmclf predict` in a fresh process (what a script calling the command pays);
- with --baseline-checkout: that checkout's `mmclf predict` in a fresh process (e.g. an older release);
- the server (`mmclf serve` in a subprocess on 127.0.0.1): --clients concurrent clients sending requests of
  --rows-per-request listings (images base64-encoded) for --seconds: rows/s, p50 and p99 latency.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from mmclf import MultimodalPipeline
from mmclf.testing import running_server


def best_time(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)

def command_time(pythonpath: str, args: list[str], repeats: int) -> float:
    env = {**os.environ, "PYTHONPATH": pythonpath, "HF_HUB_OFFLINE": "1"}
    return best_time(lambda: subprocess.run([sys.executable, "-m", "mmclf", *args], env=env, check=True,
                                            capture_output=True), repeats)

def serve_load(pipeline: str, listings: list[dict], clients: int, rows_per_request: int, seconds: float) -> dict:
    with running_server(pipeline) as url:
        bodies = [json.dumps(listings[i:i + rows_per_request]).encode()
                  for i in range(0, len(listings) - rows_per_request + 1, rows_per_request)]

        def client(index: int) -> list[float]:
            latencies, k = [], index
            stop = time.perf_counter() + seconds
            while time.perf_counter() < stop:
                request = urllib.request.Request(f"{url}/predict", data=bodies[k % len(bodies)],
                                                 headers={"Content-Type": "application/json"})
                start = time.perf_counter()
                urllib.request.urlopen(request, timeout=120).read()
                latencies.append(time.perf_counter() - start)
                k += clients
            return latencies

        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            latencies = [x for result in pool.map(client, range(clients)) for x in result]
        elapsed = time.perf_counter() - start
    latencies.sort()
    return {"requests": len(latencies), "rows_per_s": len(latencies) * rows_per_request / elapsed,
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--input", required=True, help="raw X file (ENS layout)")
    parser.add_argument("--images", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline-checkout", help="another mmclf checkout whose `mmclf predict` to time alike")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rows-per-request", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()

    frame = pd.read_csv(args.input, dtype=str, keep_default_na=False)
    rows = len(frame)
    load = best_time(lambda: MultimodalPipeline.from_pretrained(args.pipeline), args.repeats)
    pipeline = MultimodalPipeline.from_pretrained(args.pipeline)
    once = best_time(lambda: pipeline.predict(frame, images_dir=args.images), args.repeats)
    per_call = best_time(lambda: MultimodalPipeline.from_pretrained(args.pipeline).predict(frame, images_dir=args.images),
                         args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        cli_args = ["predict", "--pipeline", args.pipeline, "--input", args.input, "--images", args.images,
                    "--out", str(Path(tmp) / "p.csv")]
        cli = command_time(str(Path(__file__).resolve().parent.parent), cli_args, args.repeats)
        baseline = command_time(args.baseline_checkout, cli_args, args.repeats) if args.baseline_checkout else None

    print(f"\n{rows} rows, pipeline {args.pipeline} ({len(pipeline.experts)} experts, {len(pipeline.fusions)} fused "
          f"runs), {os.cpu_count()} CPU cores, best of {args.repeats}")
    print("| path | seconds | rows/s | ratio to `mmclf predict` |\n|---|---:|---:|---:|")
    table = [("Python API, pipeline loaded once", once), ("Python API, loaded per call", per_call),
             ("`mmclf predict` (new process)", cli)]
    if baseline is not None:
        table.append((f"`mmclf predict` of {args.baseline_checkout} (new process)", baseline))
    for name, seconds in table:
        print(f"| {name} | {seconds:.2f} | {rows / seconds:,.0f} | {cli / seconds:.2f} |")
    print(f"loading the pipeline: {load:.2f} s")

    listings = []
    for _, row in frame.iterrows():
        path = Path(args.images) / f"image_{row['imageid']}_product_{row['productid']}.jpg"
        listing = {"id": row.iloc[0], "title": row["designation"], "description": row["description"]}
        if path.is_file():
            listing["image"] = base64.b64encode(path.read_bytes()).decode()
        listings.append(listing)
    print(f"\nserver on 127.0.0.1, {args.clients} concurrent clients, {args.seconds:.0f} s each")
    print("| listings per request | requests | rows/s | p50 latency (ms) | p99 latency (ms) |\n|---:|---:|---:|---:|---:|")
    for size in args.rows_per_request:
        result = serve_load(args.pipeline, listings, args.clients, size, args.seconds)
        print(f"| {size} | {result['requests']} | {result['rows_per_s']:,.0f} | {result['p50_ms']:.0f} | "
              f"{result['p99_ms']:.0f} |")

if __name__ == "__main__":
    main()
