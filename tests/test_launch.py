"""launch/quickstart.sh end to end on a small demo catalog: every step runs once, a rerun skips them all, a rerun
after a failed step continues from it, and a failing step stops the script naming its log."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["demo-data", "build-dataset", "denoise", "train-text", "train-image-stage1", "train-image", "train-tfidf",
         *[f"fuse-{s}-h{h}-s{seed}" for s in ("text-image", "tfidf-image", "text-tfidf-image") for h in (0, 6)
           for seed in (0, 1)],
         "ensemble", "ensemble-validation", "evaluate-validation", "pipeline", "predict", "evaluate-test"]


def quickstart(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(["bash", str(ROOT / "launch" / "quickstart.sh"), str(out), *args], env=env,
                          capture_output=True, text=True, timeout=900, check=False)


def steps(stdout: str, status: str) -> list[str]:
    return [line[len("[skip] "):].split()[0] for line in stdout.splitlines() if line.startswith(f"[{status}")]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart") / "out"
    result = quickstart(out, "1200", "1")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result


def test_every_step_runs_once_and_writes_its_outputs(finished):
    out, result = finished
    assert steps(result.stdout, "run ") == STEPS
    assert steps(result.stdout, "done") == STEPS
    assert all((out / "logs" / f"{step}.log").is_file() for step in STEPS)
    spec = json.loads((out / "pipeline" / "pipeline.json").read_text())
    assert sorted(spec["experts"]) == ["image", "text", "tfidf"] and len(spec["fusions"]) == 12
    # DCL stage 2 started from stage 1; the experts trained on the denoised data
    info = json.loads((out / "experts" / "image" / "model" / "mmclf_expert.json").read_text())
    assert info["kind"] == "image" and info["metadata"]["init_from"] == str(out / "experts" / "image-stage1")
    assert f"dataset: {out / 'denoise' / 'dataset'}" in (out / "experts" / "text" / "config.yaml").read_text()
    # the pipeline's predictions for the raw test file are the 12-run majority vote
    ensemble, submission = pd.read_csv(out / "ensemble_test.csv"), pd.read_csv(out / "submission.csv", index_col=0)
    assert len(ensemble) == len(submission) == 180
    assert submission.loc[ensemble["id"], "prdtypecode"].tolist() == ensemble["prediction"].tolist()
    test = json.loads((out / "evaluation-test" / "report.json").read_text())
    validation = json.loads((out / "evaluation-validation" / "report.json").read_text())
    assert test["num_rows"] == 180 and validation["num_rows"] == 240
    assert test["macro_f1"] > 0.3 and validation["macro_f1"] > 0.3  # far above chance (1/27)
    assert f"test (held out): macro-F1 {test['macro_f1']:.4f}" in result.stdout


def test_a_rerun_skips_every_finished_step(finished):
    out, _ = finished
    rerun = quickstart(out, "1200", "1")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert steps(rerun.stdout, "run ") == [] and steps(rerun.stdout, "skip") == STEPS


def test_a_rerun_after_a_failed_step_continues_from_it(finished, tmp_path):
    out, _ = finished
    copy = tmp_path / "out"
    shutil.copytree(out, copy, symlinks=True)
    # as if the script had stopped in the last fusion run: its folder half written, nothing after it
    shutil.rmtree(copy / "fusion" / "text-tfidf-image-h6-s1" / "probs")
    (copy / "fusion" / "text-tfidf-image-h6-s1" / "predictions.csv").unlink()
    for path in ("ensemble_test.csv", "ensemble_validation.csv", "evaluation-validation", "pipeline", "submission.csv",
                 "evaluation-test"):
        shutil.rmtree(copy / path) if (copy / path).is_dir() else (copy / path).unlink()
    rerun = quickstart(copy, "1200", "1")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert steps(rerun.stdout, "run ") == STEPS[STEPS.index("fuse-text-tfidf-image-h6-s1"):]


def test_a_failing_step_stops_the_script_and_shows_its_log(tmp_path):
    result = quickstart(tmp_path / "out", "1200", "0")  # training.epochs=0 is refused by the recipe check
    assert result.returncode == 1
    assert steps(result.stdout, "done") == ["demo-data", "build-dataset"]
    assert "[fail] denoise" in result.stderr and "training.epochs must be >= 1" in result.stderr
    assert not (tmp_path / "out" / "experts").exists()
