import json

import numpy as np
import pytest
import torch
from datasets import load_from_disk

from mmclf.data.listings import to_listings
from mmclf.experts import load_expert
from mmclf.experts.image import ImageClassifier, ImageExpert
from mmclf.inference import expert_features, probability_table
from mmclf.probability_tables import ProbabilityTable
from mmclf.testing import CLASS_NAMES, make_dataset_dict, save_dataset_dict
from mmclf.training.config import load_config
from mmclf.training.train import train_expert

TINY = ["model.image_size=32", "model.resize_size=36", "training.log_with=none", "training.epochs=1",
        "training.num_workers=0", "training.batch_size=16"]


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """An image run with 2 folds (out-of-fold table) on a dataset where every 7th row has no image."""
    root = tmp_path_factory.mktemp("image")
    dataset_dir = save_dataset_dict(root / "ds", train_rows=64, validation_rows=25, test_rows=15, missing_every=7)
    config = load_config("image-tiny", [f"dataset={dataset_dir}", f"output_dir={root / 'run'}", "folds=2"] + TINY)
    return train_expert(config), load_from_disk(str(dataset_dir))


@pytest.mark.slow
def test_save_and_reload_give_the_same_probabilities(tmp_path):
    dataset = make_dataset_dict(train_rows=12, validation_rows=0, test_rows=0, missing_every=4)["train"]
    config = load_config("image-tiny", TINY)
    expert = ImageExpert.build(config["model"], CLASS_NAMES)
    expert.save_pretrained(tmp_path / "model")
    reloaded = load_expert(tmp_path / "model")
    assert isinstance(reloaded.model, ImageClassifier)
    assert reloaded.class_names == CLASS_NAMES
    assert (reloaded.model.image_size, reloaded.model.mean) == (32, [0.5, 0.5, 0.5])  # test_resnet's own mean
    batch = expert.collate([expert.encode(dataset, train=False)[i] for i in range(12)])["inputs"]
    assert batch["pixel_values"].shape == (12, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(expert.model.eval()(batch["pixel_values"]), reloaded.model(batch["pixel_values"]),
                              atol=1e-5)


def test_missing_images_become_blank_mean_images():
    dataset = make_dataset_dict(train_rows=8, validation_rows=0, test_rows=0, missing_every=4)["train"]
    assert to_listings(dataset).counts()["without_image"] == 2
    expert = ImageExpert.build(load_config("image-tiny", TINY)["model"], CLASS_NAMES)
    encoded = expert.encode(dataset, train=False)
    missing = encoded[3]["pixel_values"]
    assert torch.allclose(missing, torch.zeros_like(missing), atol=0.01)  # the mean colour normalises to zero
    assert encoded[0]["pixel_values"].abs().sum() > 1
    train_view = expert.encode(dataset, train=True)
    assert train_view[0]["pixel_values"].shape == (3, 32, 32)


def test_unknown_missing_image_strategy_is_refused():
    config = load_config("image-tiny", TINY + ["model.missing_image=drop"])
    with pytest.raises(ValueError, match="missing_image"):
        ImageExpert.build(config["model"], CLASS_NAMES)


@pytest.mark.slow  # the image_run fixture trains 2 folds + a run (~4 s)
def test_image_run_learns_and_writes_tables(image_run):
    run_dir, dataset = image_run
    table = ProbabilityTable.load(run_dir / "probs" / "validation.parquet")
    assert table.ids == list(dataset["validation"]["id"]) and table.class_names == CLASS_NAMES
    expert = load_expert(run_dir / "model")
    again = probability_table(expert, dataset["validation"], "validation", source="image")
    assert np.allclose(again.probs, table.probs, atol=1e-5)
    features = expert_features(expert, dataset["test"])
    assert features.shape == (len(dataset["test"]), load_expert(run_dir / "model").model.backbone.num_features)


@pytest.mark.slow
def test_out_of_fold_table_covers_every_labelled_row_once(image_run):
    run_dir, dataset = image_run
    oof = ProbabilityTable.load(run_dir / "probs" / "oof.parquet")
    expected = list(dataset["train"]["id"]) + list(dataset["validation"]["id"])
    assert oof.ids == expected and len(set(oof.ids)) == len(expected)
    assert oof.splits == ["train"] * len(dataset["train"]) + ["validation"] * len(dataset["validation"])
    assert oof.labels.tolist() == list(dataset["train"]["label"]) + list(dataset["validation"]["label"])
    assert np.allclose(oof.probs.sum(axis=1), 1.0, atol=1e-5)  # every row was filled by its held-out fold
    held = [ProbabilityTable.load(run_dir / "folds" / str(i) / "probs" / "heldout.parquet") for i in (0, 1)]
    assert sorted(held[0].ids + held[1].ids) == sorted(expected)
    assert not set(held[0].ids) & set(held[1].ids)
    for fold in held:
        rows = [oof.ids.index(i) for i in fold.ids]
        assert np.allclose(oof.probs[rows], fold.probs)
    assert (run_dir / "folds" / "0" / "model" / "model.safetensors").is_file()
    assert not (run_dir / "folds" / "0" / "checkpoints").exists()  # removed once the fold was complete


def test_folds_need_enough_rows_per_class(tmp_path):
    dataset_dir = save_dataset_dict(tmp_path / "ds", train_rows=8, validation_rows=4, test_rows=0)
    config = load_config("image-tiny", [f"dataset={dataset_dir}", f"output_dir={tmp_path / 'run'}", "folds=5"] + TINY)
    with pytest.raises(ValueError, match="folds=5 needs at least 5 labelled rows of every class"):
        train_expert(config)


def test_normalized_tensor_equals_to_tensor_then_normalize():
    from torchvision import transforms as T

    from mmclf.experts.image import NormalizedTensor

    image = make_dataset_dict(train_rows=1, validation_rows=0, test_rows=0, image_size=40)["train"][0]["image"]
    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    expected = T.Compose([T.ToTensor(), T.Normalize(mean, std)])(image)
    assert torch.equal(NormalizedTensor(mean, std)(image), expected)


def test_a_last_batch_of_one_row_is_dropped_not_fed_to_batchnorm(tmp_path):
    # 33 training rows in batches of 16: the third batch would hold 1 row, which BatchNorm cannot normalise
    dataset_dir = save_dataset_dict(tmp_path / "ds", train_rows=33, validation_rows=8, test_rows=0)
    run = tmp_path / "run"
    train_expert(load_config("image-tiny", [f"dataset={dataset_dir}", f"output_dir={run}", *TINY, "training.epochs=2"]))
    metrics = json.loads((run / "metrics.json").read_text())
    assert [epoch["train_batches"] for epoch in metrics["epochs"]] == [2, 2]
