"""The demo's Table 1 over several seeds (mean and spread), and predict throughput of the tiny pipeline.

    python benchmarks/bench_demo.py --seeds 0 1 2 --workdir /tmp/mmclf-demo-bench

Each seed is a full `mmclf demo` (its own catalog, experts, fusion, ensemble); a seed whose
folder already holds report.json is reused. Then `mmclf predict` runs the saved pipeline of the
first seed on the raw test files (reading, image checks, both experts, fusion, vote) and reports
rows per second.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from mmclf.demo import TABLE_ROWS, run_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", default="/tmp/mmclf-demo-bench")
    parser.add_argument("--predict-repeats", type=int, default=3)
    args = parser.parse_args()

    reports = []
    for seed in args.seeds:
        out = Path(args.workdir) / f"seed-{seed}"
        report_file = out / "report.json"
        reports.append(json.loads(report_file.read_text()) if report_file.is_file() else run_demo(out, seed=seed))

    header = "| method | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean ± std |"
    print(header)
    print("|---|" + "---:|" * (len(args.seeds) + 1))
    for key, label in TABLE_ROWS:
        values = np.array([r[key] for r in reports])
        print(f"| {label} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {values.mean():.3f} ± {values.std():.3f} |")
    wins = sum(r["decision_fusion"] > max(r["text"], r["image"]) for r in reports)
    wins_all = sum(r["decision_fusion_all"] > max(r["text"], r["tfidf"], r["image"]) for r in reports)
    print(f"\ndecision fusion beats both of its experts on {wins} of {len(reports)} seeds, over all three experts "
          f"beats each of them on {wins_all}; "
          f"demo wall time {', '.join(str(r['details']['total_seconds']) for r in reports)} s")

    from mmclf.cli import main as cli

    first = Path(args.workdir) / f"seed-{args.seeds[0]}"
    catalog = first / "catalog"
    rows = len(pd.read_csv(catalog / "X_test.csv"))
    timings = []
    for _ in range(args.predict_repeats):
        start = time.perf_counter()
        cli(["predict", "--pipeline", str(first / "pipeline"), "--input", str(catalog / "X_test.csv"),
             "--images", str(catalog / "image_test"), "--out", str(first / "bench_predictions.csv")])
        timings.append(time.perf_counter() - start)
    best = min(timings)
    print(f"\npredict (raw files -> submission, tiny pipeline with {len(reports[0]['details']['decision_fusion_runs'])}"
          f" fused runs): {rows} rows in {best:.1f} s = {rows / best:.0f} rows/s (best of {len(timings)})")


if __name__ == "__main__":
    main()
