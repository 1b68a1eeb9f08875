"""Builders that the tests and the benchmarks share: tiny datasets, synthetic probability tables, image features.

Nothing here is a pytest fixture (those stay in tests/); heavy libraries (datasets, PIL) are imported inside the
functions that need them, so `import mmclf.testing` is cheap.

Tiny DatasetDicts (the dataset contract's columns, a learnable signal in text and image):
    CLASS_NAMES, make_split, dataset_features, make_dataset_dict, save_dataset_dict
Synthetic probability tables for fusion:
    half_expert_tables, missing_modality_tables
Image features for checking the demo catalog's signal without a network:
    colour_histograms
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

__all__ = [
    "CLASS_NAMES",
    "colour_histograms",
    "dataset_features",
    "half_expert_tables",
    "make_dataset_dict",
    "make_split",
    "missing_modality_tables",
    "save_dataset_dict",
]

# --- tiny DatasetDicts ------------------------------------------------------------------------------------------

CLASS_NAMES = ["10", "40", "1160", "2583"]
WORDS = {
    "10": ["livre", "roman", "auteur", "chapitre"],
    "40": ["jeu", "console", "manette", "niveau"],
    "1160": ["carte", "collection", "rare", "booster"],
    "2583": ["piscine", "pompe", "filtre", "bassin"],
}
FILLER = ["le", "la", "de", "avec", "pour", "neuf", "occasion", "très", "bon", "état", "lot", "produit"]
COLOURS = {"10": (220, 40, 40), "40": (40, 200, 40), "1160": (40, 40, 220), "2583": (230, 230, 40)}
COLUMNS = ("id", "title", "description", "title_raw", "description_raw", "product_id", "image_id", "image",
           "has_image", "label")


def make_split(rows: int, prefix: str, seed: int, image_size: int = 32, missing_every: int = 0,
               class_names=CLASS_NAMES) -> dict:
    """Columns of one split as a dict of lists: a class word in the title (and often the description), a square of
    the class's colour in the image; every `missing_every`-th row has no image (0: all have one)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    labels = np.arange(rows) % len(class_names)
    rng.shuffle(labels)
    data = {k: [] for k in COLUMNS}
    for i, label in enumerate(labels):
        name = class_names[label]
        words = WORDS.get(name, ["objet"])
        title = " ".join(rng.choice(FILLER, 2).tolist() + [rng.choice(words)] + rng.choice(FILLER, 1).tolist())
        description = "" if i % 3 == 0 else " ".join(rng.choice(FILLER + words, int(rng.integers(3, 20))).tolist())
        missing = missing_every and i % missing_every == missing_every - 1
        image = None
        if not missing:
            image = Image.new("RGB", (image_size, image_size), tuple(int(c) for c in rng.integers(90, 160, 3)))
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


def dataset_features(class_names=CLASS_NAMES):
    """The `datasets.Features` of a built dataset with these class names."""
    from datasets import ClassLabel, Features, Image, Value

    return Features({
        "id": Value("string"), "title": Value("string"), "description": Value("string"),
        "title_raw": Value("string"), "description_raw": Value("string"), "product_id": Value("string"),
        "image_id": Value("string"), "image": Image(), "has_image": Value("bool"),
        "label": ClassLabel(names=list(class_names)),
    })


def make_dataset_dict(train_rows=96, validation_rows=33, test_rows=21, seed=0, image_size=32, missing_every=0,
                      class_names=CLASS_NAMES):
    """A DatasetDict with train / validation / test splits (a split of 0 rows is left out)."""
    from datasets import Dataset, DatasetDict

    splits = {"train": (train_rows, "tr"), "validation": (validation_rows, "va"), "test": (test_rows, "te")}
    return DatasetDict({
        split: Dataset.from_dict(make_split(rows, prefix, seed + k, image_size, missing_every, class_names),
                                 features=dataset_features(class_names))
        for k, (split, (rows, prefix)) in enumerate(splits.items()) if rows
    })


def save_dataset_dict(path, **kwargs):
    """make_dataset_dict(**kwargs) saved to `path` (as `mmclf build-dataset` would); returns `path`."""
    make_dataset_dict(**kwargs).save_to_disk(str(path))
    return path


# --- synthetic probability tables -------------------------------------------------------------------------------

def half_expert_tables(rows: int, classes: int, seed: int = 0, split: str = "validation", id_prefix: str = "r"):
    """Two experts: A is confident and right on the first half of the classes and spreads random
    mass otherwise; B the same on the second half."""
    from mmclf.probability_tables import ProbabilityTable

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, rows)
    ids = [f"{id_prefix}{i}" for i in range(rows)]
    names = [str(10 * (c + 1)) for c in range(classes)]
    tables = []
    for expert, knows in enumerate((labels < classes // 2, labels >= classes // 2)):
        probs = rng.dirichlet(np.ones(classes), rows)
        confident = rng.uniform(0.6, 0.95, rows)
        probs[knows] *= (1 - confident[knows])[:, None]
        probs[knows, labels[knows]] += confident[knows]
        tables.append(ProbabilityTable(ids, [split] * rows, labels, probs, names, source=f"expert{expert}"))
    return tables


def missing_modality_tables(rows: int, classes: int = 27, seed: int = 0, with_image: float = 0.12):
    """As on the real Rakuten sample: imbalanced classes (the largest 13 times the smallest), a text expert right on
    about 70 % of the rows with soft probabilities, and an image expert that sees an image on `with_image` of the
    rows only (weakly informative there) and elsewhere answers one vector, the one it learnt for a blank image."""
    from mmclf.probability_tables import ProbabilityTable

    rng = np.random.default_rng(seed)
    prior = np.geomspace(1, 13, classes)
    labels = rng.choice(classes, rows, p=prior / prior.sum())
    ids = [f"r{i}" for i in range(rows)]
    names = [str(10 * (c + 1)) for c in range(classes)]
    logits = rng.normal(0, 1, (rows, classes))
    right = rng.random(rows) < 0.7
    raised = np.where(right, labels, rng.integers(0, classes, rows))
    logits[np.arange(rows), raised] += rng.uniform(1, 5, rows)
    seen = rng.random(rows) < with_image
    image_logits = np.tile(np.log(rng.dirichlet(np.full(classes, 0.3)) + 1e-9), (rows, 1))
    image_logits[seen] = rng.normal(0, 1, (seen.sum(), classes))
    image_logits[seen, labels[seen]] += 1.0
    return [ProbabilityTable(ids, ["validation"] * rows, labels, np.exp(x) / np.exp(x).sum(axis=1, keepdims=True),
                             names, source=name) for name, x in (("text", logits), ("image", image_logits))]


# --- image features ---------------------------------------------------------------------------------------------

def colour_histograms(paths, levels: int = 6) -> np.ndarray:
    """A levels^3-bin RGB colour histogram (square-rooted) per image; zeros for a missing image."""
    from PIL import Image

    rows = []
    for path in map(Path, paths):
        if not path.exists():
            rows.append(np.zeros(levels**3))
            continue
        quantised = np.asarray(Image.open(path).convert("RGB"), dtype=int) * levels // 256
        codes = (quantised[..., 0] * levels + quantised[..., 1]) * levels + quantised[..., 2]
        rows.append(np.sqrt(np.bincount(codes.ravel(), minlength=levels**3) / codes.size))
    return np.array(rows)


@contextlib.contextmanager
def running_server(pipeline, options=(), timeout: float = 120):
    """`mmclf serve` over `pipeline` on a free 127.0.0.1 port, in a child process; yields its URL once /health
    answers, and stops it at the end."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "mmclf", "serve", "--pipeline", str(pipeline), "--port",
                               str(port), *options], env={**os.environ, "HF_HUB_OFFLINE": "1"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).read()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)


def demo_split(catalog, split: str, class_names: list[str]):
    """A text-only Dataset (id, title, description, label) of one split (`train`, `test`) of a demo catalog folder."""
    import pandas as pd
    from datasets import ClassLabel, Dataset, Features, Value

    catalog = Path(catalog)
    rows = pd.read_csv(catalog / f"X_{split}.csv", index_col=0, keep_default_na=False)
    codes = pd.read_csv(catalog / f"Y_{split}.csv", index_col=0)["prdtypecode"].astype(str)
    features = Features({"id": Value("string"), "title": Value("string"), "description": Value("string"),
                         "label": ClassLabel(names=class_names)})
    return Dataset.from_dict({"id": [str(i) for i in rows.index], "title": list(rows["designation"]),
                              "description": list(rows["description"]),
                              "label": [class_names.index(c) for c in codes]}, features=features)
