"""Wall time of the workflows against the code they replace, in one run, and the time a done workflow takes to skip.

    python benchmarks/bench_workflow.py --baseline-ref 6dd0876 --rows 3000 --quickstart-rows 1200 --epochs 1

For each of (baseline, current), one after the other on the same machine:
- demo: `mmclf demo --out DIR --rows ROWS` (baseline: the Python demo; current: `mmclf run demo`);
- quickstart: `launch/quickstart.sh DIR QROWS EPOCHS` (baseline: the bash script of steps; current: its wrapper
  over `mmclf run quickstart`);
then, for the current code, each command again on its finished folder (everything skipped) and
`mmclf run WORKFLOW --dry-run`. The baseline runs from a `git worktree` of `--baseline-ref` put first on PYTHONPATH,
so both use this environment's libraries. Prints a Markdown table with the ratios current / baseline.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(command: list[str], cwd: Path, pythonpath: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(pythonpath), HF_HUB_OFFLINE="1", MMCLF_PROGRESS_INTERVAL="600",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline-ref", required=True, help="the commit whose `mmclf demo` and quickstart.sh to time")
    parser.add_argument("--rows", type=int, default=3000, help="demo catalog rows")
    parser.add_argument("--quickstart-rows", type=int, default=1200)
    parser.add_argument("--epochs", type=int, default=1, help="quickstart epochs")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="mmclf-bench-workflow-"))
    baseline = work / "baseline-src"
    if not baseline.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(baseline), args.baseline_ref],
                       check=True, capture_output=True)
    rows = []
    try:
        for label, source in (("baseline", baseline), ("current", ROOT)):
            demo_out, quick_out = work / f"{label}-demo", work / f"{label}-quickstart"
            for folder in (demo_out, quick_out):
                shutil.rmtree(folder, ignore_errors=True)
            demo = [sys.executable, "-m", "mmclf", "demo", "--out", str(demo_out), "--rows", str(args.rows)]
            quick = ["bash", str(source / "launch" / "quickstart.sh"), str(quick_out), str(args.quickstart_rows),
                     str(args.epochs)]
            seconds = {"demo": timed(demo, source, source), "quickstart": timed(quick, source, source)}
            if label == "current":
                seconds["demo rerun"] = timed(demo, source, source)
                seconds["quickstart rerun"] = timed(quick, source, source)
                seconds["demo --dry-run"] = timed([sys.executable, "-m", "mmclf", "run", "demo", f"rows={args.rows}",
                                                   "--out", str(demo_out), "--dry-run"], source, source)
            rows.append((label, seconds))
            print(label, {k: round(v, 1) for k, v in seconds.items()}, flush=True)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)], check=False,
                       capture_output=True)
    base, current = rows[0][1], rows[1][1]
    print("\n| command | baseline (s) | current (s) | current / baseline |")
    print("|---|---:|---:|---:|")
    for key in ("demo", "quickstart"):
        print(f"| {key} | {base[key]:.1f} | {current[key]:.1f} | {current[key] / base[key]:.2f} |")
    for key in ("demo rerun", "quickstart rerun", "demo --dry-run"):
        print(f"| {key} (everything done) | | {current[key]:.1f} | |")


if __name__ == "__main__":
    main()
