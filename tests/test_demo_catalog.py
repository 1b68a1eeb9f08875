import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.sparse import csr_matrix, hstack
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import f1_score
from sklearn.svm import LinearSVC

from mmclf.demo_catalog import (
    CLASS_CODES,
    FAMILIES,
    FAMILY_OF,
    REAL_COUNTS,
    TEXT_GROUP_OF,
    VISUAL_GROUP_OF,
    allocate_counts,
    generate_catalog,
)
from mmclf.testing import colour_histograms

ROWS, NOISE, SIZE = 300, 0.1, 40


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    out = tmp_path_factory.mktemp("catalog")
    summary = generate_catalog(out, rows=ROWS, seed=0, label_noise=NOISE, image_size=SIZE, progress=False)
    return out, summary


def read_split(out, split):
    x = pd.read_csv(out / f"X_{split}.csv", index_col=0)
    y = pd.read_csv(out / f"Y_{split}.csv", index_col=0)
    return x, y["prdtypecode"].astype(str)


def test_ens_csv_layout(catalog):
    out, summary = catalog
    assert (out / "X_train.csv").read_text().splitlines()[0] == ",designation,description,productid,imageid"
    assert (out / "Y_train.csv").read_text().splitlines()[0] == ",prdtypecode"
    assert (out / "X_test.csv").read_text().splitlines()[0] == ",designation,description,productid,imageid"
    x_train, y_train = read_split(out, "train")
    x_test, y_test = read_split(out, "test")
    test_rows = summary["rows"]["test"]
    assert test_rows == round(0.15 * ROWS)
    assert list(x_train.index) == list(range(ROWS)) == list(y_train.index)
    assert list(x_test.index) == list(range(ROWS, ROWS + test_rows)) == list(y_test.index)
    both = pd.concat([x_train, x_test])
    assert both["productid"].is_unique and both["imageid"].is_unique
    assert x_train["designation"].notna().all()
    assert sorted(summary["files"]) == ["README.md", "X_test.csv", "X_train.csv", "Y_test.csv", "Y_train.csv",
                                        "label_noise.csv"]
    readme = (out / "README.md").read_text()
    assert "seed: 0" in readme and f"{ROWS} train, {test_rows} test" in readme and "synthetic" in readme


def test_every_class_in_both_splits_with_a_floor(catalog):
    out, summary = catalog
    _, y_train = read_split(out, "train")
    _, y_test = read_split(out, "test")
    assert set(y_train) == set(CLASS_CODES) == set(y_test)
    assert min(summary["class_counts"]["train"].values()) >= 5
    assert sum(summary["class_counts"]["train"].values()) == ROWS


def test_class_imbalance_follows_the_real_proportions():
    counts = allocate_counts(3000, REAL_COUNTS, floor=5)
    assert sum(counts.values()) == 3000
    assert 10 <= max(counts.values()) / min(counts.values()) <= 16
    assert max(counts, key=counts.get) == "2583" and min(counts, key=counts.get) == "1180"
    assert allocate_counts(sum(REAL_COUNTS.values()), REAL_COUNTS, floor=5) == REAL_COUNTS
    small = allocate_counts(200, REAL_COUNTS, floor=5)
    assert sum(small.values()) == 200 and min(small.values()) == 5


def test_text_is_raw_html_with_empty_descriptions(catalog):
    out, _ = catalog
    x, _ = read_split(out, "train")
    assert 0.28 <= x["description"].isna().mean() <= 0.42
    text = " ".join(x["designation"]) + " ".join(x["description"].dropna())
    for marker in ("&eacute;", "&#39;", "<br />", "<strong>", "<li>", "é"):
        assert marker in text
    lengths = x["description"].dropna().str.len()
    assert lengths.max() > 4 * lengths.median()


def test_images_match_the_csv_and_missing_ones_are_absent(catalog):
    out, summary = catalog
    for split in ("train", "test"):
        x, _ = read_split(out, split)
        expected = {f"image_{i}_product_{p}.jpg" for i, p in zip(x["imageid"], x["productid"])}
        on_disk = {p.name for p in (out / f"image_{split}").iterdir()}
        assert on_disk <= expected
        assert all(re.fullmatch(r"image_\d+_product_\d+\.jpg", name) for name in on_disk)
        missing = len(expected) - len(on_disk)
        assert missing == summary["missing_images"][split]
        assert 0.02 <= missing / len(x) <= 0.07
    sample = sorted((out / "image_train").iterdir())[:5]
    for path in sample:
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and image.size == (SIZE, SIZE)


def test_label_noise_flips_within_the_family(catalog, tmp_path):
    out, _ = catalog
    clean = tmp_path / "clean"
    generate_catalog(clean, rows=ROWS, seed=0, label_noise=0.0, image_size=SIZE, progress=False)
    assert not (clean / "label_noise.csv").exists()
    _, noisy = read_split(out, "train")
    _, truth = read_split(clean, "train")
    flips = pd.read_csv(out / "label_noise.csv", dtype={"true_prdtypecode": str, "noisy_prdtypecode": str})
    assert list(flips.columns) == ["index", "split", "true_prdtypecode", "noisy_prdtypecode"]
    assert len(flips) == round(NOISE * ROWS)
    assert set(flips["split"]) == {"train"}
    assert list(flips["index"]) == list(noisy.index[noisy != truth])
    assert list(flips["true_prdtypecode"]) == list(truth[flips["index"]])
    assert list(flips["noisy_prdtypecode"]) == list(noisy[flips["index"]])
    assert (flips["true_prdtypecode"] != flips["noisy_prdtypecode"]).all()
    assert all(FAMILY_OF[t] == FAMILY_OF[n] for t, n in zip(flips["true_prdtypecode"], flips["noisy_prdtypecode"]))
    # the test split and everything but train labels are untouched by the noise
    assert (out / "Y_test.csv").read_bytes() == (clean / "Y_test.csv").read_bytes()
    assert (out / "X_train.csv").read_bytes() == (clean / "X_train.csv").read_bytes()


def test_same_seed_same_bytes_other_seed_other_catalog(catalog, tmp_path):
    out, _ = catalog
    again = tmp_path / "again"
    generate_catalog(again, rows=ROWS, seed=0, label_noise=NOISE, image_size=SIZE, progress=False)
    for name in ("X_train.csv", "Y_train.csv", "X_test.csv", "Y_test.csv", "label_noise.csv"):
        assert (again / name).read_bytes() == (out / name).read_bytes()
    for split in ("image_train", "image_test"):
        images = sorted(p.name for p in (out / split).iterdir())
        assert images == sorted(p.name for p in (again / split).iterdir())
        assert all((out / split / n).read_bytes() == (again / split / n).read_bytes() for n in images)
    other = tmp_path / "other"
    generate_catalog(other, rows=ROWS, seed=1, label_noise=NOISE, image_size=SIZE, progress=False)
    assert (other / "X_train.csv").read_bytes() != (out / "X_train.csv").read_bytes()
    assert (other / "Y_train.csv").read_bytes() != (out / "Y_train.csv").read_bytes()


def test_signatures_are_one_to_one_and_split_between_modalities():
    assert sorted(c for codes in FAMILIES.values() for c in codes) == sorted(CLASS_CODES)
    pairs = {(TEXT_GROUP_OF[c], VISUAL_GROUP_OF[c]) for c in CLASS_CODES}
    assert len(pairs) == len(CLASS_CODES)
    for group_of in (TEXT_GROUP_OF, VISUAL_GROUP_OF):
        sizes = np.bincount([group_of[c] for c in CLASS_CODES])
        assert 2 <= sizes.min() and sizes.max() <= 3


def image_features(out, split, x):
    paths = [out / f"image_{split}" / f"image_{i}_product_{p}.jpg" for i, p in zip(x["imageid"], x["productid"])]
    return csr_matrix(colour_histograms(paths))


def test_neither_modality_alone_matches_both(tmp_path):
    out = tmp_path / "signal"
    generate_catalog(out, rows=900, test_rows=400, seed=5, image_size=32, progress=False)
    (x_train, y_train), (x_test, y_test) = read_split(out, "train"), read_split(out, "test")
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    train_text = vectorizer.fit_transform(x_train["designation"] + " " + x_train["description"].fillna(""))
    test_text = vectorizer.transform(x_test["designation"] + " " + x_test["description"].fillna(""))
    train_image, test_image = image_features(out, "train", x_train), image_features(out, "test", x_test)

    def score(train, test):
        model = LinearSVC(C=1.0).fit(train, y_train)
        return f1_score(y_test, model.predict(test), average="macro")

    text = score(train_text, test_text)
    image = score(train_image, test_image)
    both = score(hstack([train_text, train_image]).tocsr(), hstack([test_text, test_image]).tocsr())
    # measured with seed 5: text 0.43, image 0.39, both 0.78 (each modality mostly narrows to 3 classes)
    assert 0.2 <= text <= 0.7 and 0.2 <= image <= 0.7
    assert both >= 0.65 and both >= max(text, image) + 0.2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rows": 100}, "rows=100 is too small"),
        ({"rows": 300, "test_rows": 20}, "test_rows=20 is too small"),
        ({"rows": 300, "label_noise": 1.0}, r"label_noise=1.0 must be in \[0, 1\)"),
        ({"rows": 300, "label_noise": -0.1}, r"label_noise=-0.1 must be in \[0, 1\)"),
        ({"rows": 135, "label_noise": 0.9}, "label_noise=0.9 is too high"),
        ({"rows": 300, "image_size": 8}, "image_size=8"),
    ],
)
def test_invalid_arguments_raise(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_catalog(tmp_path / "bad", progress=False, **kwargs)


def test_existing_catalog_needs_overwrite(tmp_path):
    out = tmp_path / "cat"
    generate_catalog(out, rows=135, seed=0, image_size=16, progress=False)
    with pytest.raises(ValueError, match="already holds a catalog"):
        generate_catalog(out, rows=135, seed=1, image_size=16, progress=False)
    generate_catalog(out, rows=135, seed=1, image_size=16, overwrite=True, progress=False)
    x, _ = read_split(out, "train")
    expected = {f"image_{i}_product_{p}.jpg" for i, p in zip(x["imageid"], x["productid"])}
    assert {p.name for p in (out / "image_train").iterdir()} <= expected  # no image left from seed 0


def test_cli(tmp_path, capsys):
    from mmclf.cli import main

    out = tmp_path / "cli"
    args = ["demo-data", "--out", str(out), "--rows", "150", "--test-rows", "30", "--seed", "3",
            "--label-noise", "0.2", "--image-size", "24"]
    assert main(args) == 0
    x, _ = read_split(out, "train")
    assert len(x) == 150 and len(read_split(out, "test")[0]) == 30
    assert len(pd.read_csv(out / "label_noise.csv")) == 30
    with Image.open(next((out / "image_test").iterdir())) as image:
        assert image.size == (24, 24)
    assert "150 train + 30 test rows" in capsys.readouterr().out
    assert main(["demo-data", "--out", str(tmp_path / "bad"), "--rows", "10"]) == 2
    assert "rows=10 is too small" in capsys.readouterr().err
