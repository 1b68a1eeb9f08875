import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict, load_from_disk
from PIL import Image

from mmclf.cli import main
from mmclf.data.image_cache import cache_images
from mmclf.experts.image import ImageExpert
from mmclf.testing import CLASS_NAMES, dataset_features, make_dataset_dict
from mmclf.training import loop

MODEL = dict(ImageExpert.config_defaults, name="test_convnext", image_size=32, resize_size=36)


def odd_shapes_dataset() -> Dataset:
    """Images of several shapes (wider, taller, smaller than the cache size) and a row without one."""
    rows = make_dataset_dict(train_rows=5, validation_rows=0, test_rows=0)["train"].to_dict()
    rng = np.random.default_rng(0)
    shapes = [(60, 40), (40, 70), (30, 30), None, (45, 45)]
    rows["image"] = [None if shape is None else Image.fromarray(rng.integers(0, 255, (*shape[::-1], 3), np.uint8))
                     for shape in shapes]
    rows["has_image"] = [shape is not None for shape in shapes]
    return Dataset.from_dict(rows, features=dataset_features())


def test_cached_images_give_the_same_inputs_without_decoding(tmp_path):
    DatasetDict({"train": odd_shapes_dataset()}).save_to_disk(str(tmp_path / "ds"))
    assert main(["cache-images", str(tmp_path / "ds"), "--sizes", "36", "48", "--out", str(tmp_path / "cached")]) == 0
    source = load_from_disk(str(tmp_path / "ds"))["train"]
    cached = load_from_disk(str(tmp_path / "cached"))["train"]
    assert cached["image_36px"][3] is None and cached["image_48px"][3] is None  # no image: nothing cached
    assert (cached["image_36px"][0]["width"], cached["image_36px"][0]["height"]) == (54, 36)  # shorter side 36
    assert (cached["image_48px"][1]["width"], cached["image_48px"][1]["height"]) == (48, 84)
    expert = ImageExpert.build(MODEL, CLASS_NAMES)
    without_originals = cached.remove_columns("image")  # the cache alone is enough
    for train in (False, True):
        rows = [loop.SeededRows(expert.encode(data, train=train), seed=0) for data in (source, without_originals)]
        for i in range(len(source)):
            assert torch.equal(rows[0][(1, i)]["pixel_values"], rows[1][(1, i)]["pixel_values"])


def test_cache_errors_name_the_problem(tmp_path, capsys):
    make_dataset_dict(train_rows=4, validation_rows=0, test_rows=0).save_to_disk(str(tmp_path / "ds"))
    assert main(["cache-images", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert "is not a DatasetDict folder" in capsys.readouterr().err
    assert main(["cache-images", str(tmp_path / "ds"), "--out", str(tmp_path / "ds")]) == 2
    assert "already exists" in capsys.readouterr().err
    broken = make_dataset_dict(train_rows=4, validation_rows=0, test_rows=0)["train"].to_dict()
    broken["image"][2] = {"bytes": b"not a JPEG", "path": None}
    DatasetDict({"train": Dataset.from_dict(broken, features=dataset_features())}).save_to_disk(str(tmp_path / "broken"))
    with pytest.raises(ValueError, match="split 'train', id 'tr2': image cannot be decoded"):
        cache_images(tmp_path / "broken", tmp_path / "broken-cached", sizes=[36])
    assert not (tmp_path / "broken-cached").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no partial folder left


def test_a_cache_of_another_size_is_not_used(tmp_path):
    DatasetDict({"train": odd_shapes_dataset()}).save_to_disk(str(tmp_path / "ds"))
    cached = cache_images(tmp_path / "ds", tmp_path / "cached", sizes=[48])["train"]
    expert = ImageExpert.build(MODEL, CLASS_NAMES)
    with pytest.warns(UserWarning, match=r"caches images at \[48\] px, not at this expert's resize_size 36"):
        encoded = expert.encode(cached, train=False)
    assert encoded[0]["pixel_values"].shape == (3, 32, 32)
