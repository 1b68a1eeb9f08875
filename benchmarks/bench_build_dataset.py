"""Time and peak memory of `mmclf build-dataset` as the catalog grows.

Each build runs in a fresh child process (so its peak RSS is its own); catalogs come from the
demo generator. Prints one Markdown table: rows, image size, seconds, µs per row, peak MiB.

    python benchmarks/bench_build_dataset.py                      # 1k/10k/100k rows; 2k/10k/20k with 500 px images
    python benchmarks/bench_build_dataset.py --sizes 1000:64 2000:64 --workdir /tmp/bench
    python benchmarks/bench_build_dataset.py --real ../shared/data/rakuten_sample   # also the real sample
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, resource, sys, time
from mmclf.data.build import build_dataset
args = json.loads(sys.argv[1])
start = time.perf_counter()
dataset, summary = build_dataset(**args)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rows": sum(len(d) for d in dataset.values()),
                  "images": sum(i["found"] for i in summary["images"].values())}))
"""


def build_in_child(arguments: dict) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, json.dumps(arguments)], capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(result.stderr[-2000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["1000:0", "10000:0", "100000:0", "2000:500", "10000:500", "20000:500"],
                        help="ROWS:IMAGE_PX pairs; 0 px = build without the images folder")
    parser.add_argument("--workdir", help="where catalogs and datasets go (default: a temporary folder)")
    parser.add_argument("--real", help="folder with X_sample.csv, Y_sample.csv, image_train/ to build as well")
    args = parser.parse_args()

    from mmclf.demo_catalog import generate_catalog

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="mmclf-bench-"))
    rows_out = []
    for item in args.sizes:
        rows, pixels = (int(v) for v in item.split(":"))
        catalog = workdir / f"catalog-{rows}-{pixels or 64}"
        if not (catalog / "X_train.csv").exists():
            start = time.perf_counter()
            generate_catalog(catalog, rows=rows, test_rows=max(27, rows // 10), seed=0, image_size=pixels or 64,
                             progress=False)
            print(f"generated {catalog.name} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
        out = workdir / f"dataset-{rows}-{pixels}"
        shutil.rmtree(out, ignore_errors=True)
        arguments = {"features_file": str(catalog / "X_train.csv"), "labels_file": str(catalog / "Y_train.csv"),
                     "images_dir": str(catalog / "image_train") if pixels else None, "out_dir": str(out)}
        rows_out.append((rows, pixels, build_in_child(arguments)))
    if args.real:
        real = Path(args.real)
        arguments = {"features_file": str(real / "X_sample.csv"), "labels_file": str(real / "Y_sample.csv"),
                     "images_dir": str(real / "image_train"), "out_dir": str(workdir / "dataset-real")}
        rows_out.append(("real sample", 500, build_in_child(arguments)))

    print("| rows | images | seconds | µs / row | peak RSS (MiB) |")
    print("|---:|---:|---:|---:|---:|")
    for rows, pixels, result in rows_out:
        images = f"{result['images']:,} at {pixels} px" if pixels else "none"
        print(f"| {result['rows']:,} | {images} | {result['seconds']:.1f} | {1e6 * result['seconds'] / result['rows']:.0f} "
              f"| {result['peak_mib']:.0f} |")
    print(f"(this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; data in {workdir})",
          file=sys.stderr)


if __name__ == "__main__":
    main()
