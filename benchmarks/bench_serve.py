"""The HTTP server under concurrent clients, dynamic batching on and off, against in-process `predict`; and how
fast commands start.

    python benchmarks/bench_serve.py --pipeline demo_out/pipeline --input demo_out/catalog/X_test.csv \
        --images demo_out/catalog/image_test [--seconds 8] [--max-wait-ms 5] [--max-batch-rows 64]

One run, one machine: `mmclf serve` in a subprocess on 127.0.0.1 (once with batching, once with --no-batching),
loaded by 1, 8 and 32 clients sending 1-row requests and 4 clients sending 64-row requests (images base64-encoded,
as a real client sends them) for --seconds each: rows/s, p50 and p99 latency. The baseline is the same pipeline
in this process predicting the same rows in one call (`predict_details`, batch size 64): the ratio server/in-process
is what the server keeps of what the models can do. Clients, server and models share the machine's cores, so
compare ratios within one run. Start-up: seconds from process start to the end of `mmclf predict --help`, and of
a 1-row `mmclf predict`.
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

from mmclf.testing import running_server

LOADS = [(1, 1), (8, 1), (32, 1), (4, 64)]  # (clients, rows per request)

def listings_of(frame: pd.DataFrame, images: Path, rows: int) -> list[dict]:
    listings = []
    for i in range(rows):
        row = frame.iloc[i % len(frame)]
        item = {"id": f"{i}", "title": row["designation"], "description": row["description"]}
        path = images / f"image_{row['imageid']}_product_{row['productid']}.jpg"
        if path.is_file():
            item["image"] = base64.b64encode(path.read_bytes()).decode()
        listings.append(item)
    return listings

def load(url: str, listings: list[dict], clients: int, rows: int, seconds: float) -> dict:
    bodies = [json.dumps(listings[i:i + rows]).encode() for i in range(0, len(listings) - rows + 1, rows)]

    def client(index: int) -> list[float]:
        latencies, k, stop = [], index, time.perf_counter() + seconds
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
        latencies = sorted(x for result in pool.map(client, range(clients)) for x in result)
    elapsed = time.perf_counter() - start
    return {"rows_per_s": len(latencies) * rows / elapsed, "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}

def serve(pipeline: str, options: list[str], listings: list[dict], seconds: float) -> dict:
    with running_server(pipeline, options) as url:
        load(url, listings, 4, 16, 1.0)  # warm-up
        results = {(clients, rows): load(url, listings, clients, rows, seconds) for clients, rows in LOADS}
        metrics = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    batches = [line for line in metrics.splitlines() if line.startswith(("mmclf_batch_rows_sum", "mmclf_batch_rows_count",
                                                                           "mmclf_batch_seconds_sum"))]
    values = {line.split()[0]: float(line.split()[1]) for line in batches}
    results["mean batch rows"] = values["mmclf_batch_rows_sum"] / max(values["mmclf_batch_rows_count"], 1)
    results["mean batch ms"] = 1000 * values["mmclf_batch_seconds_sum"] / max(values["mmclf_batch_rows_count"], 1)
    return results

def startup(pipeline: str, frame: pd.DataFrame, images: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def seconds(args) -> float:
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "mmclf", *args], env=env, check=True, capture_output=True)
        return time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        one = Path(tmp) / "one.csv"
        frame.iloc[:1].to_csv(one, index=False)
        return {"predict --help": min(seconds(["predict", "--help"]) for _ in range(3)),
                "predict 1 row": min(seconds(["predict", "--pipeline", pipeline, "--input", str(one), "--images",
                                              images, "--out", str(Path(tmp) / "p.csv")]) for _ in range(2))}

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True)
    parser.add_argument("--input", required=True, help="raw X file (ENS layout)")
    parser.add_argument("--images", required=True)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--rows", type=int, default=256, help="distinct rows the clients cycle through")
    parser.add_argument("--max-wait-ms", default="5")
    parser.add_argument("--max-batch-rows", default="64")
    parser.add_argument("--skip-startup", action="store_true")
    args = parser.parse_args()

    from mmclf import MultimodalPipeline

    frame = pd.read_csv(args.input, dtype=str, keep_default_na=False)
    listings = listings_of(frame, Path(args.images), args.rows)
    pipeline = MultimodalPipeline.from_pretrained(args.pipeline)
    rows = [{**x, "image": base64.b64decode(x["image"]) if "image" in x else None} for x in listings]
    pipeline.predict_details(rows[:64])  # warm-up
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        pipeline.predict_details(rows, 64)
        timings.append(time.perf_counter() - start)
    in_process = len(rows) / min(timings)
    del pipeline

    modes = {"batching": ["--max-wait-ms", args.max_wait_ms, "--max-batch-rows", args.max_batch_rows],
             "no batching": ["--no-batching"]}
    results = {mode: serve(args.pipeline, options, listings, args.seconds) for mode, options in modes.items()}
    print(f"\n{os.cpu_count()} CPU cores; in-process predict of {len(rows)} rows in one call: {in_process:,.0f} rows/s "
          f"(best of 3)")
    print("| mode | clients x rows | rows/s | x in-process | p50 ms | p99 ms |\n|---|---|---:|---:|---:|---:|")
    for mode, result in results.items():
        for clients, per_request in LOADS:
            r = result[(clients, per_request)]
            print(f"| {mode} | {clients} x {per_request} | {r['rows_per_s']:,.0f} | {r['rows_per_s'] / in_process:.2f} "
                  f"| {r['p50_ms']:.0f} | {r['p99_ms']:.0f} |")
    for mode, result in results.items():
        print(f"{mode}: mean batch {result['mean batch rows']:.1f} rows, {result['mean batch ms']:.1f} ms")
    if not args.skip_startup:
        for what, seconds in startup(args.pipeline, frame, args.images).items():
            print(f"start-up, mmclf {what}: {seconds:.2f} s")

if __name__ == "__main__":
    main()
