"""Hostile and careless input: each test closes one way to run code, read outside an artifact, lose data or give
a wrong answer with exit 0 (docs/security.md lists them)."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mmclf.data.build import DATASET_MARKER, build_dataset
from mmclf.data.readers import read_features_file
from mmclf.data.rows import sorted_codes
from mmclf.evaluation import evaluate_predictions
from mmclf.hub import load_artifact, refuse_pickles
from mmclf.pipeline import PIPELINE_FILE, read_pipeline_spec
from mmclf.rundir import LOCK_FILE, RunFolder, RunFolderBusy, remove_stale_partials, staged_folder, unlock_folder
from mmclf.training import loop
from tests.test_data import write_ens
from tests.test_training_loop import run

# --- nothing in a run, pipeline or export folder runs code ----------------------------------------------------

PAYLOAD = "import pathlib; pathlib.Path({!r}).write_text('ran')"


class Payload:
    """Unpickling this runs code: what a crafted checkpoint file holds."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return exec, (PAYLOAD.format(str(self.marker)),)


def test_resume_refuses_a_crafted_checkpoint_before_unpickling_it(tmp_path, monkeypatch):
    monkeypatch.setenv("MMCLF_CHECKPOINT_KEY", str(tmp_path / "key"))
    run(tmp_path / "run", epochs=1)
    last = tmp_path / "run" / "checkpoints" / "last"
    assert (last / loop.CHECKPOINT_SIGNATURE).is_file()
    marker = tmp_path / "code-ran"
    torch.save(Payload(marker), last / "custom_checkpoint_0.pkl")  # the loop state, loaded weights_only=False
    with pytest.raises(ValueError, match=r"checkpoints/last: checkpoint not signed .* can run code"):
        run(tmp_path / "run", epochs=2, resume=True)
    assert not marker.exists()


def test_a_checkpoint_signed_with_another_key_is_refused_and_the_own_key_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("MMCLF_CHECKPOINT_KEY", str(tmp_path / "key-a"))
    run(tmp_path / "run", epochs=1)
    assert oct((tmp_path / "key-a").stat().st_mode & 0o777) == "0o600"
    monkeypatch.setenv("MMCLF_CHECKPOINT_KEY", str(tmp_path / "key-b"))  # a run folder from elsewhere
    with pytest.raises(ValueError, match="not signed by this machine's mmclf key"):
        run(tmp_path / "run", epochs=2, resume=True)
    monkeypatch.setenv("MMCLF_CHECKPOINT_KEY", str(tmp_path / "key-a"))
    _, state = run(tmp_path / "run", epochs=2, resume=True)
    assert state.epoch == 2 and len(state.history) == 2


@pytest.mark.parametrize("name", ["pytorch_model.bin", "folds/0/weights.pt", "extra.pkl", "head.ckpt"])
def test_a_pickled_file_in_an_artifact_is_refused_before_it_is_opened(tmp_path, name):
    folder = tmp_path / "expert"
    folder.mkdir()
    (folder / "mmclf_expert.json").write_text(json.dumps({"kind": "text", "class_names": ["1", "2"]}))
    marker = tmp_path / "code-ran"
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    torch.save(Payload(marker), folder / name)
    with pytest.raises(ValueError, match=rf"{name}: a pickled file .* safetensors"):
        load_artifact(folder)
    from mmclf.experts import load_expert

    with pytest.raises(ValueError, match="a pickled file"):
        load_expert(folder)
    assert not marker.exists()
    refuse_pickles(tmp_path / "nothing-here")  # no folder, no pickle: nothing to refuse


# --- every path an artifact names stays inside it ---------------------------------------------------------------

@pytest.mark.parametrize(("key", "experts", "fusions"), [
    ("experts.text", {"text": "/etc"}, ["fusions/0"]),
    ("fusions\\[0\\]", {"text": "experts/text"}, ["../../../etc"]),
    ("experts.text", {"text": "experts/../.."}, ["fusions/0"]),
])
def test_pipeline_paths_that_leave_the_folder_are_refused_naming_the_key(tmp_path, key, experts, fusions):
    root = tmp_path / "pipeline"
    root.mkdir()
    (root / PIPELINE_FILE).write_text(json.dumps({"experts": experts, "fusions": fusions}))
    with pytest.raises(ValueError, match=rf"pipeline.json: {key}: .*(must be a relative path|leads outside)"):
        read_pipeline_spec(root)


def test_a_symlinked_expert_folder_leading_outside_is_refused(tmp_path):
    root = tmp_path / "pipeline"
    (root / "experts").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (root / "experts" / "text").symlink_to(tmp_path / "elsewhere")
    (root / PIPELINE_FILE).write_text(json.dumps({"experts": {"text": "experts/text"}, "fusions": ["fusions/0"]}))
    with pytest.raises(ValueError, match="experts.text: 'experts/text' leads outside"):
        read_pipeline_spec(root)


def test_image_symlinks_leaving_the_folder_are_counted_or_refused_with_strict_images(tmp_path):
    x, y, images = write_ens(tmp_path / "raw", rows=40)
    secret = tmp_path / "secret.jpg"
    Image.new("RGB", (16, 16), (0, 255, 0)).save(secret)
    victim = min(images.glob("*.jpg"))
    victim.unlink()
    victim.symlink_to(secret)
    _, summary = build_dataset(x, y, images, tmp_path / "ds")
    info = summary["images"]["main"]
    assert info["unreadable"] == 1 and "leads outside the images folder" in info["unreadable_files"][0]
    assert info["found"] + info["missing"] + info["unreadable"] == 40
    with pytest.raises(ValueError, match=rf"image .*{victim.name} for .* leads outside the images folder"):
        build_dataset(x, y, images, tmp_path / "strict", strict_images=True)


# --- no wrong answer with exit 0 ---------------------------------------------------------------------------------

def test_columns_naming_a_missing_id_column_is_an_error_listing_the_columns(tmp_path):
    path = tmp_path / "items.csv"
    path.write_text("sku,name\n1,a\n2,b\n")
    with pytest.raises(ValueError, match=r"items.csv: --columns names column\(s\) \['ref'\] that the file lacks; "
                                         r"its columns are \['sku', 'name'\]"):
        read_features_file(path, {"id": "ref", "title": "name"})
    assert read_features_file(path, {"id": "SKU", "title": "name"}).source_columns["id"] == "sku"


def test_evaluate_normalises_codes_from_a_labels_csv(tmp_path):
    ids = [f"r{i}" for i in range(6)]
    codes = ["1920", "2705", "40", "1920", "2705", "40"]
    pd.DataFrame({"id": ids, "prediction": [f"{c}.0" for c in codes]}).to_csv(tmp_path / "pred.csv", index=False)
    pd.DataFrame({"id": ids, "label": codes}).to_csv(tmp_path / "labels.csv", index=False)
    report = evaluate_predictions(tmp_path / "pred.csv", tmp_path / "report", labels=tmp_path / "labels.csv")
    assert report["macro_f1"] == 1.0 and report["class_names"] == ["40", "1920", "2705"]


def test_a_second_process_training_into_a_locked_run_folder_gets_the_holders_name(tmp_path):
    folder = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from mmclf.rundir import RunFolder\n"
        f"RunFolder({str(folder)!r}).open({{'a': 1}}); print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderBusy, match=rf"run is in use by another run \(pid {holder.pid} on host "):
            RunFolder(folder).open({"a": 1}, resume=True)
        holder.send_signal(signal.SIGKILL)  # killed: its lock is stale
        holder.wait()
        assert f"pid {holder.pid}" in (folder / LOCK_FILE).read_text()
        assert RunFolder(folder).open({"a": 1}, resume=True) is True  # taken over
        assert f"pid {os.getpid()}" in (folder / LOCK_FILE).read_text()
    finally:
        holder.kill()
        unlock_folder(folder)
    assert (folder / LOCK_FILE).read_text() == ""  # released


def test_resume_on_another_dataset_is_refused(tmp_path):
    from mmclf.testing import save_dataset_dict
    from mmclf.training.train import check_dataset_fingerprint, dataset_fingerprint, load_dataset_dict

    save_dataset_dict(tmp_path / "a", seed=0)
    save_dataset_dict(tmp_path / "b", seed=1)
    run_folder = RunFolder(tmp_path / "run")
    check_dataset_fingerprint(run_folder, dataset_fingerprint(load_dataset_dict(tmp_path / "a")), tmp_path / "a")
    saved = json.loads((tmp_path / "run" / "dataset_fingerprint.json").read_text())
    check_dataset_fingerprint(run_folder, dataset_fingerprint(load_dataset_dict(tmp_path / "a")), tmp_path / "a")
    save_dataset_dict(tmp_path / "a-moved", seed=0)  # the same rows elsewhere: `dataset` is resume-free
    check_dataset_fingerprint(run_folder, dataset_fingerprint(load_dataset_dict(tmp_path / "a-moved")), "moved")
    with pytest.raises(ValueError, match=r"cannot resume .*run: dataset .*b is not the dataset the run was trained on"):
        check_dataset_fingerprint(run_folder, dataset_fingerprint(load_dataset_dict(tmp_path / "b")), tmp_path / "b")
    assert json.loads((tmp_path / "run" / "dataset_fingerprint.json").read_text()) == saved


def test_an_odd_code_keeps_numeric_class_order_and_is_reported_with_its_rows(tmp_path):
    assert sorted_codes(["2905", "40", "27O5", "50", "1140"]) == ["40", "50", "1140", "2905", "27O5"]
    x, y, _ = write_ens(tmp_path / "raw", rows=60, images=False)
    frame = pd.read_csv(y, dtype=str)
    frame.iloc[[5, 17], 1] = "27O5"  # a typo in two rows
    frame.to_csv(y, index=False)
    dataset, summary = build_dataset(x, y, out_dir=tmp_path / "ds")
    names = dataset["train"].features["label"].names
    assert names[-1] == "27O5" and names[:-1] == sorted(names[:-1], key=int)
    odd = summary["rare_codes"]["main"]["27O5"]
    assert odd["rows"] == 2 and odd["first_rows"] == ["row 6 (id '35')", "row 18 (id '119')"]
    assert "'27O5': 2 row(s), row 6 (id '35')" in (tmp_path / "ds" / "summary.md").read_text()


def test_an_unknown_encoding_is_a_clear_error(tmp_path):
    x, _, _ = write_ens(tmp_path / "raw", rows=4, images=False)
    with pytest.raises(ValueError, match=r"X.csv: unknown encoding 'latin-42' \(--encoding\)"):
        read_features_file(x, encoding="latin-42")


# --- nothing lost ---------------------------------------------------------------------------------------------

def test_overwrite_replaces_only_a_folder_with_the_dataset_marker(tmp_path):
    x, y, _ = write_ens(tmp_path / "raw", rows=40, images=False)
    denoise_like = tmp_path / "denoised"
    denoise_like.mkdir()
    (denoise_like / "summary.json").write_text("{}")
    (denoise_like / "dataset_dict.json").write_text("{}")
    with pytest.raises(ValueError, match=rf"denoised is not a dataset folder built by mmclf \(no {DATASET_MARKER}\)"):
        build_dataset(x, y, out_dir=denoise_like, overwrite=True)
    assert sorted(p.name for p in denoise_like.iterdir()) == ["dataset_dict.json", "summary.json"]
    build_dataset(x, y, out_dir=tmp_path / "ds")
    assert json.loads((tmp_path / "ds" / DATASET_MARKER).read_text())["format"] == "mmclf-dataset"
    build_dataset(x, y, out_dir=tmp_path / "ds", overwrite=True, seed=4)


KILLED_BETWEEN_RENAMES = """
import os, sys
from pathlib import Path
from mmclf import rundir

target = Path(sys.argv[1])
original_rename = Path.rename
def rename(self, destination):
    result = original_rename(self, destination)
    if Path(destination).name == "old":
        os._exit(9)  # killed right after the old folder was set aside
    return result
Path.rename = rename
with rundir.staged_folder(target, replace=True) as staged:
    (staged / "data.txt").write_text("new")
"""


def test_an_overwrite_killed_between_its_renames_is_recovered_by_the_next_write(tmp_path):
    target = tmp_path / "ds"
    target.mkdir()
    (target / "data.txt").write_text("old")
    result = subprocess.run([sys.executable, "-c", KILLED_BETWEEN_RENAMES, str(target)], check=False)
    assert result.returncode == 9 and not target.exists()  # the window: only the aside copy holds the data
    with pytest.raises(RuntimeError), staged_folder(target, replace=True):
        assert (target / "data.txt").read_text() == "old"  # put back before anything else happens
        raise RuntimeError("this write fails too")
    assert (target / "data.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


WRITE_FOREVER = """
import sys, time
from pathlib import Path
from mmclf.rundir import staged_file
with staged_file(sys.argv[1]) as staged:
    with open(staged, "w") as stream:
        for i in range(10**7):
            stream.write(f"{i},row\\n")
            if i % 1000 == 0:
                stream.flush(); print(i, flush=True)
"""


@pytest.mark.parametrize("kill_after_lines", [1, 5, 20])
def test_an_output_killed_mid_write_is_whole_or_absent(tmp_path, kill_after_lines):
    target = tmp_path / "predictions.csv"
    target.write_text("old,whole\n")
    writer = subprocess.Popen([sys.executable, "-c", WRITE_FOREVER, str(target)], stdout=subprocess.PIPE, text=True)
    for _ in range(kill_after_lines):
        writer.stdout.readline()
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert target.read_text() == "old,whole\n"
    remove_stale_partials(target)  # what the next write into it does first
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.csv"]


# --- documented figures are the code's figures ------------------------------------------------------------------

@pytest.mark.slow
def test_two_runs_of_the_demo_workflow_with_one_seed_give_identical_tables(tmp_path):
    from mmclf.probability_tables import ProbabilityTable
    from mmclf.workflow import run_workflow

    outputs = []
    for name in ("first", "second"):
        run_workflow("demo", ["rows=300", "folds=2", "epochs=1"], out=tmp_path / name, echo=lambda line: None)
        outputs.append(tmp_path / name)
    reports = [sorted(p.relative_to(out) for p in out.rglob("report.json")) for out in outputs]
    tables = [sorted(p.relative_to(out) for p in out.rglob("probs/*.parquet")) for out in outputs]
    assert reports[0] == reports[1] and reports[0] and tables[0] == tables[1] and len(tables[0]) > 10
    for relative in reports[0]:  # the same scores; only the run's own folder differs in the paths it names
        first, second = (json.loads((out / relative).read_text().replace(str(out), "OUT")) for out in outputs)
        assert first == second, relative
    for relative in tables[0]:
        first, second = (ProbabilityTable.load(out / relative) for out in outputs)
        assert first.ids == second.ids and first.class_names == second.class_names, relative
        np.testing.assert_array_equal(first.probs, second.probs, err_msg=str(relative))
