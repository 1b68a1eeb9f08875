"""Tiny DatasetDicts with a learnable signal in text and image, in the dataset contract's shape."""

from __future__ import annotations

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage
from PIL import ImageDraw

CLASS_NAMES = ["10", "40", "1160", "2583"]
WORDS = {
    "10": ["livre", "roman", "auteur", "chapitre"],
    "40": ["jeu", "console", "manette", "niveau"],
    "1160": ["carte", "collection", "rare", "booster"],
    "2583": ["piscine", "pompe", "filtre", "bassin"],
}
FILLER = ["le", "la", "de", "avec", "pour", "neuf", "occasion", "très", "bon", "état", "lot", "produit"]
COLOURS = {"10": (220, 40, 40), "40": (40, 200, 40), "1160": (40, 40, 220), "2583": (230, 230, 40)}


def make_split(rows: int, prefix: str, seed: int, image_size: int = 32, missing_every: int = 0,
               class_names=CLASS_NAMES) -> dict:
    rng = np.random.default_rng(seed)
    labels = np.arange(rows) % len(class_names)
    rng.shuffle(labels)
    data = {k: [] for k in ("id", "title", "description", "title_raw", "description_raw", "product_id", "image_id",
                            "image", "has_image", "label")}
    for i, label in enumerate(labels):
        name = class_names[label]
        words = WORDS.get(name, ["objet"])
        title = " ".join(rng.choice(FILLER, 2).tolist() + [rng.choice(words)] + rng.choice(FILLER, 1).tolist())
        description = "" if i % 3 == 0 else " ".join(rng.choice(FILLER + words, int(rng.integers(3, 20))).tolist())
        missing = missing_every and i % missing_every == missing_every - 1
        image = None
        if not missing:
            image = PILImage.new("RGB", (image_size, image_size), tuple(int(c) for c in rng.integers(90, 160, 3)))
            draw = ImageDraw.Draw(image)
            x, y = rng.integers(0, image_size // 3, 2)
            draw.rectangle([x, y, x + image_size // 2, y + image_size // 2], fill=COLOURS.get(name, (0, 0, 0)))
        data["id"].append(f"{prefix}{i}")
        data["title"].append(title)
        data["description"].append(description)
        data["title_raw"].append(title)
        data["description_raw"].append(description)
        data["product_id"].append(str(1000 + i))
        data["image_id"].append(str(5000 + i))
        data["image"].append(image)
        data["has_image"].append(image is not None)
        data["label"].append(int(label))
    return data


def features(class_names=CLASS_NAMES) -> Features:
    return Features({
        "id": Value("string"), "title": Value("string"), "description": Value("string"),
        "title_raw": Value("string"), "description_raw": Value("string"), "product_id": Value("string"),
        "image_id": Value("string"), "image": Image(), "has_image": Value("bool"),
        "label": ClassLabel(names=list(class_names)),
    })


def make_dataset_dict(train_rows=96, validation_rows=33, test_rows=21, seed=0, image_size=32, missing_every=0,
                      class_names=CLASS_NAMES) -> DatasetDict:
    splits = {"train": (train_rows, "tr"), "validation": (validation_rows, "va"), "test": (test_rows, "te")}
    return DatasetDict({
        split: Dataset.from_dict(make_split(rows, prefix, seed + k, image_size, missing_every, class_names),
                                 features=features(class_names))
        for k, (split, (rows, prefix)) in enumerate(splits.items()) if rows
    })


def save_dataset_dict(path, **kwargs):
    make_dataset_dict(**kwargs).save_to_disk(str(path))
    return path
