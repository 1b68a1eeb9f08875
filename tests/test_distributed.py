"""Two CPU processes (gloo) against one: the image expert, with a run killed inside an epoch under 2 processes
and resumed under 1. Augmentation is seeded per row and the model has no batch statistics (GroupNorm), so
1 and 2 processes compute the same thing up to float summation order: tolerance 1e-4 on probabilities."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mmclf.cli import main
from mmclf.probability_tables import ProbabilityTable
from mmclf.testing import save_dataset_dict

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

# 64 training rows: 4 global batches of 16 per epoch; a checkpoint after every optimizer step
IMAGE = ["model.name=test_efficientnet_gn", "model.image_size=32", "model.resize_size=36", "training.log_with=none",
         "training.epochs=2", "training.batch_size=16", "training.eval_batch_size=34", "training.num_workers=0",
         "training.lr=3e-3", "training.checkpoint_steps=1", "predict_splits=[validation]"]

STOP_AFTER_CHECKPOINTS = """
import os, sys
from mmclf.cli import main
from mmclf.training import loop

save, saved = loop.save_checkpoint, []

def save_then_stop(accelerator, directory):
    save(accelerator, directory)
    saved.append(directory.name)
    if saved.count(loop.LAST) == int(os.environ["STOP_AFTER"]):
        os._exit(3)  # every process, right after the checkpoint: a run killed there

loop.save_checkpoint = save_then_stop
sys.exit(main(sys.argv[1:]))
"""


def launch_two_processes(script: str, *args: str, port: int, env=None):
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", **(env or {}))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               str(port), script, *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)


def test_image_run_killed_inside_an_epoch_on_two_processes_resumes_on_one(tmp_path):
    dataset_dir = save_dataset_dict(tmp_path / "ds", train_rows=64, test_rows=0, missing_every=7)
    train = ["train", "--config", "image-tiny", f"dataset={dataset_dir}"]
    assert main([*train, f"output_dir={tmp_path / 'one'}", *IMAGE]) == 0

    script = tmp_path / "stop_after_checkpoints.py"
    script.write_text(STOP_AFTER_CHECKPOINTS)
    # checkpoints "last": steps 1, 2, 3, the end of epoch 1, step 5: killed 1 step into epoch 2
    killed = launch_two_processes(str(script), *train, f"output_dir={tmp_path / 'two'}", *IMAGE, port=29531,
                                  env={"STOP_AFTER": "5"})
    assert killed.returncode != 0 and (tmp_path / "two" / "checkpoints" / "last" / "random_states_1.pkl").is_file(), killed.stderr[-3000:]
    assert not (tmp_path / "two" / "metrics.json").exists()
    assert main([*train, f"output_dir={tmp_path / 'two'}", *IMAGE, "--resume"]) == 0

    one, two = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("one", "two"))
    assert [r["eval_rows"] for r in two["epochs"]] == [33, 33]  # every validation row gathered once
    for a, b in zip(one["epochs"], two["epochs"]):  # epoch 1 evaluated on 2 processes, epoch 2 on 1
        assert abs(a["eval_macro_f1"] - b["eval_macro_f1"]) < 1e-6 and abs(a["train_loss"] - b["train_loss"]) < 1e-4
    tables = [ProbabilityTable.load(tmp_path / run / "probs" / "validation.parquet") for run in ("one", "two")]
    assert tables[1].ids == tables[0].ids
    assert np.allclose(tables[0].probs, tables[1].probs, atol=1e-4)
    assert np.abs(tables[0].probs - 1 / 4).max() > 0.05  # the model learned something: the check can fail


def test_tfidf_expert_on_two_processes_writes_the_same_tables_as_one(tmp_path):
    dataset_dir = save_dataset_dict(tmp_path / "ds", train_rows=64, validation_rows=24, test_rows=12)
    train = ["train", "--config", "text-tfidf", f"dataset={dataset_dir}", "folds=2", "model.min_df=1"]
    assert main([*train, f"output_dir={tmp_path / 'one'}"]) == 0
    result = launch_two_processes("-m", "mmclf", *train, f"output_dir={tmp_path / 'two'}", port=29533)
    assert result.returncode == 0, result.stderr[-3000:]
    for table in ("oof", "validation", "test"):
        one, two = (ProbabilityTable.load(tmp_path / run / "probs" / f"{table}.parquet") for run in ("one", "two"))
        assert two.ids == one.ids and np.array_equal(one.probs, two.probs), table
    files = [{str(p.relative_to(tmp_path / run)) for p in (tmp_path / run).rglob("*") if p.is_file()}
             for run in ("one", "two")]
    assert files[0] == files[1]  # only the main process writes


def test_a_denoise_run_on_two_processes_ranks_as_one(tmp_path):
    dataset_dir = save_dataset_dict(tmp_path / "ds", train_rows=80, validation_rows=24, test_rows=0)
    denoise = ["denoise", "--config", "text-tiny", f"dataset={dataset_dir}", "folds=2", "model.max_length=24",
               "model.tiny_vocab_size=200", "training.epochs=2", "training.batch_size=16", "training.log_with=none",
               "training.num_workers=0", "denoise.cut.of=all", "denoise.datalab.enabled=false"]
    assert main([*denoise, f"output_dir={tmp_path / 'one'}"]) == 0
    result = launch_two_processes("-m", "mmclf", *denoise, f"output_dir={tmp_path / 'two'}", port=29535)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = (ProbabilityTable.load(tmp_path / run / "probs" / "oof.parquet") for run in ("one", "two"))
    assert len(two) == 104 and two.ids == one.ids  # every train and validation row judged once
    assert np.allclose(one.probs, two.probs, atol=1e-4)
    removed = [json.loads((tmp_path / run / "summary.json").read_text())["removed_label_issues"] for run in ("one", "two")]
    assert removed[0] == removed[1] == round(0.1 * 104)
