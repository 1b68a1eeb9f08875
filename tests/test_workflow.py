"""Workflows: the paper's own workflow (`rakuten-paper`) end to end on the demo catalog with tiny stand-ins, on the
CPU; a rerun skips every step; one TF-IDF setting changed reruns exactly the TF-IDF step and the steps downstream of
it; --dry-run; workflow files with an unknown stage, a missing input or a cycle get an error naming the step."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mmclf import stages
from mmclf.workflow import Workflow, WorkflowError, run_workflow

FUSIONS = [f"fuse_{s}_h{h}_s{seed}" for s in ("text_base-image", "text_large-image", "text_base-text_large-tfidf-image")
           for h in (0, 6) for seed in (0, 1)]
STEPS = ["dataset", "denoise", "text_base", "text_large", "image_224", "image", "tfidf", *FUSIONS, "ensemble_test",
         "ensemble_validation", "evaluate_validation", "pipeline", "predict"]
DOWNSTREAM_OF_TFIDF = ["tfidf", *[f for f in FUSIONS if "tfidf" in f], "ensemble_test", "ensemble_validation",
                       "evaluate_validation", "pipeline", "predict"]


def stand_ins(catalog) -> list[str]:
    """The paper's workflow on the demo catalog with tiny models standing in for CamemBERT and ResNet152."""
    tiny = "training.epochs=1"
    return [
        f"x_train={catalog}/X_train.csv", f"y_train={catalog}/Y_train.csv", f"images_train={catalog}/image_train",
        f"x_test={catalog}/X_test.csv", f"images_test={catalog}/image_test", "accelerate_config=null",
        "dataset.validation_fraction=0.2", "dataset.test_labels=" + f"{catalog}/Y_test.csv",
        "denoise.config=denoise-tiny", f"denoise.{tiny}", "denoise.folds=2", "denoise.denoise.splits=[train]",
        "text_base.config=text-tiny", f"text_base.{tiny}", "text_large.config=text-tiny", f"text_large.{tiny}",
        "text_large.model.tiny_layers=1", "image_224.config=image-tiny", f"image_224.{tiny}",
        "image.config=image-tiny-dcl", f"image.{tiny}",
    ]


def ran(lines: list[str], status: str) -> list[str]:
    return [line.split("] ", 1)[1].split()[0] for line in lines if line.startswith(f"[{status}")]


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    root = tmp_path_factory.mktemp("paper")
    catalog = stages.demo_data(output_dir=root / "catalog", rows=1200)
    lines: list[str] = []
    run_workflow("rakuten-paper", stand_ins(catalog), out=root / "out", echo=lines.append)
    return root / "out", stand_ins(catalog), lines


@pytest.mark.slow
def test_the_paper_workflow_runs_every_step_on_the_cpu(paper):
    out, _, lines = paper
    assert ran(lines, "run ") == STEPS and ran(lines, "done") == STEPS
    assert all((out / "logs" / f"{step}.log").is_file() for step in STEPS)
    spec = json.loads((out / "pipeline" / "pipeline.json").read_text())
    assert sorted(spec["experts"]) == ["image", "text_base", "text_large", "tfidf"] and len(spec["fusions"]) == 12
    info = json.loads((out / "image" / "model" / "mmclf_expert.json").read_text())
    assert info["kind"] == "image" and info["metadata"]["init_from"] == str(out / "image_224")  # DCL from stage 1
    assert f"dataset: {out / 'denoise' / 'dataset'}" in (out / "text_large" / "config.yaml").read_text()
    ensemble = pd.read_csv(out / "ensemble_test" / "predictions.csv")
    submission = pd.read_csv(out / "predict" / "submission.csv", index_col=0)
    assert len(ensemble) == len(submission) == 180
    assert submission.loc[ensemble["id"], "prdtypecode"].tolist() == ensemble["prediction"].tolist()
    validation = json.loads((out / "evaluate_validation" / "report.json").read_text())
    assert validation["num_rows"] == 240 and validation["macro_f1"] > 0.12  # far above chance (1/27)


@pytest.mark.slow
def test_a_rerun_skips_every_step(paper):
    out, overrides, _ = paper
    lines: list[str] = []
    run_workflow("rakuten-paper", overrides, out=out, echo=lines.append)
    assert ran(lines, "run ") == [] and ran(lines, "skip") == STEPS


@pytest.mark.slow
def test_a_changed_setting_reruns_exactly_its_step_and_those_downstream(paper, tmp_path):
    out, overrides, _ = paper
    changed = [*overrides, "tfidf.model.C=2.0"]
    dry: list[str] = []
    run_workflow("rakuten-paper", changed, out=out, dry_run=True, echo=dry.append)
    assert [line.split()[1].rstrip(":") for line in dry if line.startswith("run ")] == DOWNSTREAM_OF_TFIDF
    assert dry[STEPS.index("tfidf")].startswith("run  tfidf: changed since it finished")
    assert dry[STEPS.index("pipeline")] == "run  pipeline: upstream step 'tfidf' runs"
    assert dry[0] == "skip dataset: done, fingerprint matches"
    lines: list[str] = []
    run_workflow("rakuten-paper", changed, out=out, echo=lines.append)
    assert ran(lines, "run ") == DOWNSTREAM_OF_TFIDF
    assert "C: 2.0" in (out / "tfidf" / "config.yaml").read_text()
    again: list[str] = []
    run_workflow("rakuten-paper", changed, out=out, echo=again.append)
    assert ran(again, "run ") == []


@pytest.mark.slow
def test_an_interrupted_training_resumes_and_what_reads_it_is_not_rerun(paper):
    out, overrides, _ = paper
    run_workflow("rakuten-paper", overrides, out=out, echo=lambda line: None)  # every step done, as first run
    for name in (".mmclf_done.json", "metrics.json"):  # as if killed after its last checkpoint
        (out / "text_large" / name).unlink()
    dry: list[str] = []
    run_workflow("rakuten-paper", overrides, out=out, dry_run=True, echo=dry.append)
    assert dry[STEPS.index("text_large")] == "run  text_large: unfinished: no done marker"
    lines: list[str] = []
    run_workflow("rakuten-paper", overrides, out=out, echo=lines.append)
    # the resumed training ends with the folder the first run wrote, so nothing that reads it runs again
    assert ran(lines, "run ") == ["text_large"] and ran(lines, "skip") == [s for s in STEPS if s != "text_large"]
    assert f"resumed from {out / 'text_large' / 'checkpoints' / 'last'}" in (out / "logs" / "text_large.log").read_text()


def write(tmp_path, text: str):
    path = tmp_path / "workflow.yaml"
    path.write_text(text)
    return path


def test_workflow_files_with_an_unknown_stage_a_missing_input_or_a_cycle_are_refused(tmp_path):
    with pytest.raises(WorkflowError, match="step 'b': unknown stage 'trian'"):
        Workflow(write(tmp_path, "steps:\n  b: {stage: trian}\n"), tmp_path / "out")
    with pytest.raises(WorkflowError, match=r"step 'fuse': \$\{steps.text.output\} names no step 'text'"):
        Workflow(write(tmp_path, "steps:\n  fuse: {stage: fuse, with: {tables: ['${steps.text.output}/x']}}\n"),
                 tmp_path / "out")
    cycle = ("steps:\n  a: {stage: ensemble, with: {inputs: ['${steps.b.output}']}}\n"
             "  b: {stage: ensemble, with: {inputs: ['${steps.a.output}']}}\n")
    with pytest.raises(WorkflowError, match="step 'a' reads step 'b', which comes later"):
        Workflow(write(tmp_path, cycle), tmp_path / "out")
    with pytest.raises(WorkflowError, match="step 'a' reads itself"):
        Workflow(write(tmp_path, "steps:\n  a: {stage: ensemble, with: {inputs: ['${steps.a.output}']}}\n"),
                 tmp_path / "out")
    with pytest.raises(WorkflowError, match="unknown workflow variable 'raw_dri'"):
        Workflow("rakuten-paper", tmp_path / "out", ["raw_dri=x"])
    with pytest.raises(WorkflowError, match="no step or sweep named 'text_bsae'"):
        Workflow("rakuten-paper", tmp_path / "out", ["text_bsae.config=text-tiny"])


def test_the_launch_scripts_are_thin_wrappers_over_mmclf_run(tmp_path):
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    quick = subprocess.run(["bash", str(root / "launch" / "quickstart.sh"), str(tmp_path / "q"), "1200", "1",
                            "--dry-run"], env=env, capture_output=True, text=True, check=True).stdout.splitlines()
    assert len(quick) == 25 and all(line.startswith("run ") and line.endswith("not run yet") for line in quick)
    paper = subprocess.run(["bash", str(root / "launch" / "rakuten_paper.sh"), str(tmp_path / "raw"), str(tmp_path / "p"),
                            "accelerate_configs/cpu.yaml", "--dry-run"], env=env, capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert [line.split()[1].rstrip(":") for line in paper][:3] == ["dataset", "denoise", "text_base"]
    workflow = Workflow("rakuten-paper", tmp_path / "p", [f"raw_dir={tmp_path / 'raw'}"])
    assert workflow.variables["x_train"] == f"{tmp_path / 'raw'}/X_train_update.csv"
    assert workflow.stage_values(workflow.steps[0])["features"] == f"{tmp_path / 'raw'}/X_train_update.csv"


@pytest.mark.slow
def test_a_step_with_launch_accelerate_runs_under_accelerate_launch(tmp_path):
    workflow = write(tmp_path, """
vars: {accelerate_config: null}
steps:
  catalog: {stage: demo_data, with: {rows: 200}}
  dataset:
    stage: build_dataset
    with: {features: "${steps.catalog.output}/X_train.csv", labels: "${steps.catalog.output}/Y_train.csv",
           validation_fraction: 0.3}
  text:
    stage: train
    config: text-tiny
    launch: accelerate
    with: {dataset: "${steps.dataset.output}", predict_splits: [validation],
           training: {epochs: 1, log_with: none}, model: {tiny_layers: 1}}
""")
    config = Path(__file__).resolve().parents[1] / "accelerate_configs" / "cpu.yaml"
    lines: list[str] = []
    run_workflow(workflow, [f"accelerate_config={config}"], out=tmp_path / "out", echo=lines.append)
    assert ran(lines, "done") == ["catalog", "dataset", "text"]
    log = (tmp_path / "out" / "logs" / "text.log").read_text()
    assert f"-m accelerate.commands.launch --config_file {config} -m mmclf train --config" in log
    assert (tmp_path / "out" / "text" / "probs" / "validation.parquet").is_file()
    assert "training:\n  epochs: 1" in (tmp_path / "out" / "logs" / "text.config.yaml").read_text()
