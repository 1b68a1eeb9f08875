import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mmclf.cli import main
from mmclf.probability_tables import ProbabilityTable
from mmclf.testing import make_dataset_dict, save_dataset_dict

pytestmark = pytest.mark.slow  # every test shares cli_run: a text run through the CLI (~8 s)

# 96 training rows = 6 global batches of 16 (8 per process with 2 processes); 33 validation rows (odd)
TINY = ["model.max_length=24", "model.tiny_vocab_size=200", "model.dropout=0", "training.log_with=none",
        "training.epochs=2", "training.batch_size=16", "training.eval_batch_size=16", "training.lr=5e-3"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    dataset_dir = save_dataset_dict(root / "ds")
    run_dir = root / "run"
    assert main(["train", "--config", "text-tiny", f"dataset={dataset_dir}", f"output_dir={run_dir}", *TINY]) == 0
    return root, dataset_dir, run_dir


def test_train_writes_the_run_directory(cli_run):
    _, _, run_dir = cli_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["epochs"]] == [1, 2]
    assert all(r["eval_rows"] == 33 for r in metrics["epochs"])
    assert metrics["best_eval_macro_f1"] == max(r["eval_macro_f1"] for r in metrics["epochs"])
    assert "training:\n  epochs: 2\n" in (run_dir / "config.yaml").read_text()


def test_predict_expert_writes_the_same_table(cli_run):
    root, dataset_dir, run_dir = cli_run
    out = root / "test_table.parquet"
    assert main(["predict-expert", "--model", str(run_dir / "model"), "--dataset", str(dataset_dir), "--split", "test",
                 "--out", str(out)]) == 0
    written, saved = ProbabilityTable.load(out), ProbabilityTable.load(run_dir / "probs" / "test.parquet")
    assert written.ids == saved.ids and np.allclose(written.probs, saved.probs, atol=1e-5)


def test_predict_expert_refuses_other_classes(cli_run, tmp_path, capsys):
    _, _, run_dir = cli_run
    other = tmp_path / "other"
    make_dataset_dict(train_rows=8, validation_rows=4, test_rows=4, class_names=["10", "40", "1160", "50"]) \
        .save_to_disk(str(other))
    code = main(["predict-expert", "--model", str(run_dir / "model"), "--dataset", str(other), "--split", "test",
                 "--out", str(tmp_path / "t.parquet")])
    assert code == 2
    assert "class names differ from the model's (only in the data: ['50']; only in the model: ['2583'])" \
        in capsys.readouterr().err
    assert not (tmp_path / "t.parquet").exists()


def test_bad_input_errors(cli_run, tmp_path, capsys):
    _, dataset_dir, run_dir = cli_run
    assert main(["train", "--config", "text-tiny", f"dataset={dataset_dir}", "output_dir=x", "training.batchsize=4"]) == 2
    assert "unknown config key 'training.batchsize'" in capsys.readouterr().err
    assert main(["train", "--config", "text-tiny", f"dataset={dataset_dir}", f"output_dir={run_dir}", *TINY]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--config", "text-tiny", f"dataset={dataset_dir}", f"output_dir={run_dir}", *TINY,
                 "training.lr=0.1", "--resume"]) == 2
    error = capsys.readouterr().err
    assert "cannot resume" in error and "training.lr: 0.005 -> 0.1" in error
    no_title = tmp_path / "no_title"
    make_dataset_dict(train_rows=8, validation_rows=4, test_rows=0).remove_columns("title").save_to_disk(str(no_title))
    assert main(["train", "--config", "text-tiny", f"dataset={no_title}", f"output_dir={tmp_path / 'r'}", *TINY]) == 2
    assert "split 'train' lacks column(s) ['title'] needed by the text expert" in capsys.readouterr().err
    assert main(["train", "--config", "text-tiny", f"dataset={tmp_path / 'nowhere'}", f"output_dir={tmp_path / 'r'}"]) == 2
    assert "dataset folder not found" in capsys.readouterr().err


def test_resume_of_a_finished_run_gives_the_same_tables(cli_run):
    _, dataset_dir, run_dir = cli_run
    before = ProbabilityTable.load(run_dir / "probs" / "validation.parquet")
    assert main(["train", "--config", "text-tiny", f"dataset={dataset_dir}", f"output_dir={run_dir}", *TINY,
                 "--resume"]) == 0
    after = ProbabilityTable.load(run_dir / "probs" / "validation.parquet")
    assert np.allclose(before.probs, after.probs, atol=1e-6)


@pytest.mark.distributed
def test_two_processes_give_the_same_predictions_as_one(cli_run, tmp_path):
    _, dataset_dir, run_dir = cli_run
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
               "-m", "mmclf", "train", "--config", "text-tiny", f"dataset={dataset_dir}",
               f"output_dir={tmp_path / 'run2'}", *TINY]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    one = ProbabilityTable.load(run_dir / "probs" / "validation.parquet")
    two = ProbabilityTable.load(tmp_path / "run2" / "probs" / "validation.parquet")
    assert len(two) == 33 and two.ids == one.ids  # no padded duplicates, no dropped rows, same order
    assert np.allclose(one.probs, two.probs, atol=1e-4)
    metrics = json.loads((tmp_path / "run2" / "metrics.json").read_text())
    assert [r["eval_rows"] for r in metrics["epochs"]] == [33, 33]
    # only the main process writes files: the same files as one process, plus the second process's RNG states
    files = [{str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()} for run in (run_dir, tmp_path / "run2")]
    assert files[1] - files[0] == {f"checkpoints/{name}/random_states_1.pkl" for name in ("best", "last")}
    assert files[0] <= files[1]
