import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from datasets import load_from_disk
from safetensors.torch import load_file

from mmclf.cli import main
from mmclf.experts import load_expert
from mmclf.experts.dcl import HEADS_FILE, DCLExpert, DCLOutputs
from mmclf.experts.image import ImageExpert, copy_image_weights
from mmclf.experts.region_confusion import location_targets, region_confusion, region_permutation
from mmclf.fusion.decision import fit_decision_fusion
from mmclf.inference import expert_probabilities
from mmclf.pipeline import MultimodalPipeline
from mmclf.probability_tables import ProbabilityTable
from mmclf.testing import CLASS_NAMES, make_dataset_dict, save_dataset_dict
from mmclf.training import loop

# test_resnet (stride 32) at 64 px: a 2x2 feature map, a 2x2 grid of 32 px regions
DCL_TINY = {"name": "test_resnet", "image_size": 64, "resize_size": 64, "rotation": 0, "grid": 2}
RUN = ["training.log_with=none", "training.num_workers=0", "training.batch_size=16", "training.eval_batch_size=32"]


def dcl_expert(**config) -> DCLExpert:
    torch.manual_seed(0)
    return DCLExpert.build({**DCL_TINY, **config}, CLASS_NAMES)


# --- the region confusion mechanism ------------------------------------------------------------------------------

@pytest.mark.parametrize(("grid", "max_shift"), [(7, 1), (7, 2), (5, 3), (4, 1)])
def test_each_region_moves_at_most_k_places_in_its_row_and_column(grid, max_shift):
    generator = torch.Generator().manual_seed(0)
    rows, columns = torch.arange(grid)[:, None], torch.arange(grid)[None, :]
    largest = 0
    for _ in range(300):
        source = region_permutation(grid, max_shift, generator)
        assert sorted(source.tolist()) == list(range(grid * grid))  # a permutation
        from_row, from_column = (source // grid).reshape(grid, grid), (source % grid).reshape(grid, grid)
        largest = max(largest, int((from_row - rows).abs().max()), int((from_column - columns).abs().max()))
    assert largest == min(max_shift, grid - 1)  # the bound holds and is reached


def test_no_shift_is_the_identity():
    image = torch.rand(3, 28, 28)
    destroyed, source = region_confusion(image, grid=7, max_shift=0, generator=torch.Generator().manual_seed(1))
    assert source.tolist() == list(range(49))
    assert torch.equal(destroyed, image)


def test_destroyed_image_is_the_regions_rearranged():
    image = torch.rand(3, 30, 45)  # regions of 10 x 15 px
    destroyed, source = region_confusion(image, grid=3, max_shift=1, generator=torch.Generator().manual_seed(4))
    assert source.tolist() == [3, 1, 2, 0, 4, 8, 6, 7, 5]
    for position, original in enumerate(source.tolist()):
        (r, c), (i, j) = divmod(position, 3), divmod(original, 3)
        assert torch.equal(destroyed[:, 10 * r:10 * r + 10, 15 * c:15 * c + 15], image[:, 10 * i:10 * i + 10, 15 * j:15 * j + 15])
    with pytest.raises(ValueError, match="does not split into a 4x4 grid"):
        region_confusion(image, grid=4)


def test_location_targets_follow_the_permutation():
    source = region_permutation(7, 1, torch.Generator().manual_seed(5))
    targets = location_targets(source[None], 7)[0]
    assert targets.shape == (2, 7, 7) and -1 < targets.min() and targets.max() < 1
    centres = (2 * torch.arange(7.0) + 1) / 7 - 1
    for position, original in enumerate(source.tolist()):
        (r, c), (i, j) = divmod(position, 7), divmod(original, 7)
        assert targets[0, r, c] == centres[i] and targets[1, r, c] == centres[j]


def test_training_batch_holds_originals_and_destroyed_copies_with_their_targets():
    expert = dcl_expert(adversarial="per_class")
    dataset = make_dataset_dict(train_rows=6, validation_rows=0, test_rows=0, missing_every=4)["train"]
    encoded = loop.SeededRows(expert.encode(dataset, train=True), seed=0)
    rows = [encoded[0, i] for i in range(6)]  # each access draws a new augmentation: fetch once
    batch = expert.collate(rows)
    pixels, targets = batch["inputs"]["pixel_values"], batch["targets"]
    labels = torch.as_tensor(dataset["label"])
    assert pixels.shape == (12, 3, 64, 64)
    assert torch.equal(targets["labels"], labels.repeat(2))
    moved = torch.as_tensor([rows[i]["source"].tolist() != [0, 1, 2, 3] for i in range(6)])
    assert 0 < moved.sum() < 6  # on a 2x2 grid some copies are left as they were: they are no destroyed images
    assert torch.equal(targets["adversarial_labels"], torch.cat([labels, labels + 4 * moved]))  # per_class: 2 x 4
    assert torch.equal(targets["location"][:6], location_targets(torch.arange(4).repeat(6, 1), 2))  # originals
    for i in range(6):
        source = rows[i]["source"]
        assert torch.equal(pixels[6 + i], _rearranged(pixels[i], source, 2))
        assert torch.equal(targets["location"][6 + i], location_targets(source[None], 2)[0])
    evaluation = expert.collate([expert.encode(dataset, train=False)[i] for i in range(6)])
    assert evaluation["inputs"]["pixel_values"].shape == (6, 3, 64, 64)
    assert set(evaluation["targets"]) == {"labels"}


def _rearranged(image, source, grid):
    size = image.shape[-1] // grid
    out = torch.empty_like(image)
    for position, original in enumerate(source.tolist()):
        (r, c), (i, j) = divmod(position, grid), divmod(original, grid)
        out[:, size * r:size * (r + 1), size * c:size * (c + 1)] = image[:, size * i:size * (i + 1), size * j:size * (j + 1)]
    return out


def test_destruction_depends_on_seed_epoch_and_row_only():
    dataset = make_dataset_dict(train_rows=8, validation_rows=0, test_rows=0)["train"]
    expert = dcl_expert(rotation=10, resize_size=72)
    # the training loop fetches rows through SeededRows, keyed by (epoch, row)
    first, second = (loop.SeededRows(expert.encode(dataset, train=True), 7) for _ in range(2))
    before = torch.get_rng_state()
    a = first[0, 3]
    assert torch.equal(torch.get_rng_state(), before)  # the global generator is left as it was
    torch.rand(100)
    b = second[0, 3]
    assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["source"], b["source"])
    assert torch.equal(a["destroyed_values"], b["destroyed_values"])
    assert not torch.equal(a["pixel_values"], second[1, 3]["pixel_values"])  # another epoch: another augmentation


# --- the model ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "image_size", "grid"), [
    ("test_resnet", 64, 2), ("resnet18", 96, 3), ("efficientnet_b0", 64, 2), ("convnext_atto", 64, 2),
    ("test_convnext", 128, 4),
])
def test_head_outputs_for_several_backbones_and_grids(name, image_size, grid):
    expert = dcl_expert(name=name, image_size=image_size, resize_size=image_size, grid=grid)
    pixels = torch.rand(4, 3, image_size, image_size)
    outputs = expert.model.train()(pixels)
    assert isinstance(outputs, DCLOutputs)
    assert outputs.logits.shape == (4, 4) and outputs.adversarial_logits.shape == (4, 2)
    assert outputs.location.shape == (4, 2, grid, grid) and outputs.location.abs().max() < 1


def test_backbones_grids_and_sizes_that_do_not_fit_are_refused():
    with pytest.raises(ValueError, match=r"'test_resnet' at input 64 px and grid 7: .* 2x2 feature map .* fit here: \[2\]"):
        dcl_expert(grid=7)
    with pytest.raises(ValueError, match=r"'resnet18' at input 96 px and grid 2: .* 3x3 feature map .* fit here: \[3\]"):
        dcl_expert(name="resnet18", image_size=96, resize_size=96, grid=2)
    with pytest.raises(ValueError, match="'test_vit' .* not a CNN feature map"):
        dcl_expert(name="test_vit", image_size=64, grid=2)
    with pytest.raises(ValueError, match="model.adversarial"):
        dcl_expert(adversarial="four_way")
    with pytest.raises(ValueError, match="model.grid must be >= 2"):
        dcl_expert(grid=1)


def test_loss_falls_over_a_few_steps():
    expert = dcl_expert()
    dataset = make_dataset_dict(train_rows=8, validation_rows=0, test_rows=0)["train"]
    rows = expert.encode(dataset, train=True)
    batch = expert.collate([rows[i] for i in range(8)])
    training = {"optimizer": "sgd", "lr": 0.02, "momentum": 0.9, "weight_decay": 0.0}
    optimizer = loop.build_optimizer(expert.parameter_groups(training), training)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.02, 0.02, 0.2, 0.2])  # new heads: 10x
    expert.model.train()
    losses = []
    for _ in range(10):
        loss = expert.loss(expert.model(**batch["inputs"]), batch["targets"])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_inference_uses_the_classification_head_only_and_reloads_as_an_image_expert(tmp_path):
    dataset = make_dataset_dict(train_rows=10, validation_rows=0, test_rows=0, missing_every=5)["train"]
    expert = dcl_expert()
    expert.model.eval()
    before = expert_probabilities(expert, dataset)
    with torch.no_grad():
        for parameter in expert.model.heads.parameters():
            parameter.add_(torch.randn_like(parameter))
    assert np.array_equal(expert_probabilities(expert, dataset), before)
    expert.save_pretrained(tmp_path / "model")
    plain = load_expert(tmp_path / "model")
    assert type(plain) is ImageExpert and plain.config["grid"] == 2
    assert json.loads((tmp_path / "model" / "mmclf_expert.json").read_text())["kind"] == "image"
    assert np.allclose(expert_probabilities(plain, dataset), before, atol=1e-6)
    again = DCLExpert.from_pretrained(tmp_path / "model")  # a continued DCL run gets its heads back
    assert all(torch.equal(again.model.heads.state_dict()[k], v) for k, v in expert.model.heads.state_dict().items())
    assert set(load_file(tmp_path / "model" / HEADS_FILE)) == {"adversarial.weight", "adversarial.bias",
                                                               "alignment.weight", "alignment.bias"}
    ImageExpert.build(DCL_TINY, CLASS_NAMES).save_pretrained(tmp_path / "plain")
    with pytest.raises(FileNotFoundError, match="holds no DCL heads"):
        DCLExpert.from_pretrained(tmp_path / "plain")


# --- init_from ---------------------------------------------------------------------------------------------------

def test_initialisation_checks_every_backbone_tensor_and_reorders_the_head():
    source = ImageExpert.build({"name": "test_resnet", "image_size": 32, "resize_size": 32}, CLASS_NAMES).model
    target = dcl_expert().model.classifier
    note = copy_image_weights(target, source, "stage1")
    tensors = len([k for k in source.state_dict() if not k.startswith("backbone.fc.")])
    assert note == f"initialised from stage1: {tensors} backbone tensors, all matched, and the classification head"
    assert all(torch.equal(target.state_dict()[k], v) for k, v in source.state_dict().items())
    shuffled = ImageExpert.build(DCL_TINY, CLASS_NAMES[::-1]).model
    assert "rows reordered" in copy_image_weights(shuffled, source, "stage1")
    assert torch.equal(shuffled.backbone.fc.weight, source.backbone.fc.weight.flip(0))
    other = ImageExpert.build(DCL_TINY, ["10", "40", "1160", "50"]).model
    assert "a NEW classification head: the classes differ (only in stage1: ['2583']; only in this dataset: ['50'])" \
        in copy_image_weights(other, source, "stage1")
    wider = ImageExpert.build({"name": "resnet18", "image_size": 32, "resize_size": 32}, CLASS_NAMES).model
    with pytest.raises(ValueError, match=r"backbone \(test_resnet\) does not match this one \(resnet18\): "
                                         r"\d+ tensor\(s\) missing in the source: backbone.conv1.weight"):
        copy_image_weights(wider, source, "stage1")


# The CLI runs use test_convnext, free of BatchNorm: without SyncBatchNorm (GPU only) each process normalises over its
# own share of the batch, so a BatchNorm backbone cannot give the same results on 1 and 2 CPU processes.
STAGE2 = ["--config", "image-tiny-dcl", "model.name=test_convnext", "training.epochs=2", "training.optimizer=adamw",
          "training.lr=3e-3", "model.rotation=10", *RUN]


@pytest.fixture(scope="module")
def two_stage(tmp_path_factory):
    """Stage 1 (image-tiny at 32 px) then DCL (image-tiny-dcl at 64 px) initialised from it, through the CLI."""
    root = tmp_path_factory.mktemp("dcl")
    dataset_dir = save_dataset_dict(root / "ds", train_rows=32, validation_rows=15, test_rows=8, missing_every=9)
    stage1, stage2 = root / "stage1", root / "stage2"
    assert main(["train", "--config", "image-tiny", f"dataset={dataset_dir}", f"output_dir={stage1}", "training.epochs=1",
                 "model.name=test_convnext", "model.image_size=32", "model.resize_size=36", *RUN]) == 0
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        assert main(["train", *STAGE2, f"dataset={dataset_dir}", f"init_from={stage1}", f"output_dir={stage2}"]) == 0
    return dataset_dir, stage1, stage2, log.getvalue()


@pytest.mark.slow  # the two_stage fixture trains both stages (~5 s)
def test_stage_two_starts_from_every_stage_one_backbone_tensor(two_stage, tmp_path, capsys):
    dataset_dir, stage1, _, log = two_stage
    trained = load_expert(stage1 / "model").model.state_dict()
    tensors = len([key for key in trained if not key.startswith("backbone.head.fc.")])
    assert f"initialised from {stage1 / 'model'}: {tensors} backbone tensors, all matched, and the classification head" \
        in log
    expert = DCLExpert.build({**DCL_TINY, "name": "test_convnext"}, CLASS_NAMES)
    expert.initialise_from(stage1 / "model")
    assert all(torch.equal(expert.model.classifier.state_dict()[key], value) for key, value in trained.items())
    with pytest.raises(ValueError, match=r"its backbone \(test_convnext\) does not match this one \(test_resnet\)"):
        dcl_expert().initialise_from(stage1 / "model")
    assert main(["train", "--config", "image-tiny-dcl", f"dataset={dataset_dir}", f"init_from={tmp_path}",
                 f"output_dir={tmp_path / 'run'}", *RUN]) == 2
    assert f"init_from={tmp_path}: no saved expert there" in capsys.readouterr().err


@pytest.mark.slow
def test_dcl_stage_writes_a_reloadable_image_model_and_tables(two_stage, tmp_path):
    dataset_dir, stage1, stage2, _ = two_stage
    dataset = load_from_disk(str(dataset_dir))
    metrics = json.loads((stage2 / "metrics.json").read_text())
    assert [r["eval_rows"] for r in metrics["epochs"]] == [15, 15]
    expert = load_expert(stage2 / "model")
    assert type(expert) is ImageExpert and expert.metadata["init_from"] == str(stage1)
    assert (stage2 / "model" / HEADS_FILE).is_file()
    validation = ProbabilityTable.load(stage2 / "probs" / "validation.parquet")
    test = ProbabilityTable.load(stage2 / "probs" / "test.parquet")
    assert test.ids == list(dataset["test"]["id"])
    assert np.allclose(expert_probabilities(expert, dataset["test"]), test.probs, atol=1e-5)
    # into a pipeline unchanged: a fusion over its validation table, the pipeline predicting from raw rows
    fusion = fit_decision_fusion({"stage2": validation}, folds=2, epochs=3, progress=False)
    MultimodalPipeline({"stage2": expert}, [fusion]).save_pretrained(tmp_path / "pipeline")
    predicted = MultimodalPipeline.from_pretrained(tmp_path / "pipeline").predict_proba(dataset["test"])
    assert np.allclose(predicted.to_numpy(), fusion.predict_probs({"stage2": test.probs})[2], atol=1e-5)


@pytest.mark.slow
def test_resuming_a_finished_dcl_run_gives_the_same_tables(two_stage):
    dataset_dir, stage1, stage2, _ = two_stage
    before = ProbabilityTable.load(stage2 / "probs" / "validation.parquet")
    assert main(["train", *STAGE2, f"dataset={dataset_dir}", f"init_from={stage1}", f"output_dir={stage2}",
                 "--resume"]) == 0
    assert np.allclose(ProbabilityTable.load(stage2 / "probs" / "validation.parquet").probs, before.probs, atol=1e-6)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_give_the_same_evaluation_as_one(two_stage, tmp_path):
    dataset_dir, stage1, stage2, _ = two_stage
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29523",
               "-m", "mmclf", "train", *STAGE2, f"dataset={dataset_dir}", f"init_from={stage1}",
               f"output_dir={tmp_path / 'two'}"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    for split in ("validation", "test"):
        one = ProbabilityTable.load(stage2 / "probs" / f"{split}.parquet")
        two = ProbabilityTable.load(tmp_path / "two" / "probs" / f"{split}.parquet")
        assert two.ids == one.ids
        assert np.allclose(one.probs, two.probs, atol=1e-4)
    losses = [[r["train_loss"] for r in json.loads((run / "metrics.json").read_text())["epochs"]]
              for run in (stage2, tmp_path / "two")]
    assert np.allclose(losses[0], losses[1], rtol=1e-4)
