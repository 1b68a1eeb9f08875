import json
from pathlib import Path

import numpy as np
import pytest
from datasets import load_from_disk
from PIL import Image

from mmclf.cli import main
from mmclf.data.build import build_dataset
from mmclf.data.rows import clean_text

CODES = ["10", "2705", "50", "1560"]


def write_ens(folder: Path, rows: int = 40, *, start: int = 0, images: bool = True, name: str = "X.csv"):
    """ENS challenge layout: unnamed index, designation, description, productid, imageid (+ Y file)."""
    folder.mkdir(parents=True, exist_ok=True)
    image_dir = folder / "image_train"
    image_dir.mkdir(exist_ok=True)
    x_lines = [",designation,description,productid,imageid"]
    y_lines = [",prdtypecode"]
    for i in range(start, start + rows):
        code = CODES[i % len(CODES)]
        description = "" if i % 3 == 0 else f"Tr&egrave;s <b>beau</b> produit&nbsp;{i}"
        x_lines.append(f'{i * 7},"Produit {code} n&deg;{i}","{description}",{1000 + i},{5000 + i}')
        y_lines.append(f"{i * 7},{code}")
        if images and i % 4 != 0:
            Image.new("RGB", (16, 16), (i % 255, 0, 0)).save(image_dir / f"image_{5000 + i}_product_{1000 + i}.jpg")
    (folder / name).write_text("\n".join(x_lines) + "\n", encoding="utf-8")
    (folder / name.replace("X", "Y")).write_text("\n".join(y_lines) + "\n")
    return folder / name, folder / name.replace("X", "Y"), image_dir


def test_clean_text_decodes_entities_strips_tags_collapses_space():
    assert clean_text("caf&eacute;  <b>cr&egrave;me</b>\n br&ucirc;l&eacute;e") == "café crème brûlée"
    assert clean_text("l&amp;#39;&eacute;t&eacute;") == "l'été"  # double-encoded
    assert clean_text("a<br />b&nbsp;&lt;3") == "a b <3"
    assert clean_text("   ") == ""


def test_ens_layout_builds_stratified_split_with_images(tmp_path):
    x, y, images = write_ens(tmp_path / "raw", rows=80)
    dataset, summary = build_dataset(x, y, images, tmp_path / "ds", seed=1)
    assert set(dataset) == {"train", "validation"}
    assert len(dataset["train"]) == 72 and len(dataset["validation"]) == 8
    names = dataset["train"].features["label"].names
    assert names == ["10", "50", "1560", "2705"]  # numeric order, stable
    # stratified: each class has 2 of its 20 rows in validation
    assert sorted(np.bincount(dataset["validation"]["label"][:])) == [2, 2, 2, 2]
    row = dataset["train"][0]
    assert row["id"] and row["title"].startswith("Produit") and "°" in row["title"]
    assert summary["images"]["main"] == {"found": 60, "missing": 20, "unreadable": 0, "non_rgb_converted": 0,
                                         "unreadable_files": []}
    with_image = [r for r in dataset["train"] if r["has_image"]]
    assert with_image[0]["image"].size == (16, 16)
    assert all(r["image"] is None for r in dataset["train"] if not r["has_image"])
    reloaded = load_from_disk(str(tmp_path / "ds"))
    assert reloaded["validation"]["id"][:] == dataset["validation"]["id"][:]
    saved = json.loads((tmp_path / "ds" / "summary.json").read_text())
    assert saved["splits"]["train"]["without_description"] + saved["splits"]["validation"]["without_description"] == 27
    assert "| train | 72 |" in (tmp_path / "ds" / "summary.md").read_text()


def test_split_is_deterministic_and_seeded(tmp_path):
    x, y, _ = write_ens(tmp_path / "raw", rows=60, images=False)
    a, _ = build_dataset(x, y)
    b, _ = build_dataset(x, y)
    c, _ = build_dataset(x, y, seed=5)
    assert a["validation"]["id"][:] == b["validation"]["id"][:]
    assert a["validation"]["id"][:] != c["validation"]["id"][:]


def test_sigir_tsv_layout_and_label_file_without_ids(tmp_path):
    x = tmp_path / "X_train.tsv"
    lines = ["Integer_id\tTitle\tDescription\tImage_id\tProduct_id"]
    lines += [f"{i}\tTitre {i}\t{'&lt;p&gt;desc' if i % 2 else ''}\t{90 + i}\t{70 + i}" for i in range(30)]
    x.write_text("\n".join(lines) + "\n")
    y = tmp_path / "Y_train.tsv"
    y.write_text("Prdtypecode\n" + "\n".join(CODES[i % 3] for i in range(30)) + "\n")
    dataset, summary = build_dataset(x, y, validation_fraction=0.2)
    assert summary["sources"]["main"]["format"] == "sigir"
    rows = {r["id"]: r for r in dataset["train"]} | {r["id"]: r for r in dataset["validation"]}
    assert len(rows) == 30
    assert rows["1"]["description"] == "desc" and rows["1"]["description_raw"] == "&lt;p&gt;desc"
    assert dataset["train"].features["label"].int2str(rows["4"]["label"]) == CODES[1]


def test_generic_csv_with_column_mapping_and_image_paths(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("L", (8, 8), 128).save(tmp_path / "img" / "a.png")  # grayscale: kept, decoded as RGB
    lines = ["sku,name,text,category,picture"] + [f"s{i},Nom {i},,{'A' if i % 2 else 'B'},{'a.png' if i == 3 else ''}" for i in range(20)]
    (tmp_path / "catalog.csv").write_text("\n".join(lines) + "\n")
    dataset, summary = build_dataset(
        tmp_path / "catalog.csv", images_dir=tmp_path / "img", validation_fraction=0.5,
        columns={"id": "sku", "title": "name", "description": "text", "label": "category", "image": "picture"},
    )
    assert dataset["train"].features["label"].names == ["A", "B"]
    assert summary["images"]["main"]["found"] == 1 and summary["images"]["main"]["non_rgb_converted"] == 1
    image = next(r["image"] for split in dataset.values() for r in split if r["has_image"])
    assert image.mode == "RGB"


def test_test_split_without_labels(tmp_path):
    x, y, images = write_ens(tmp_path / "raw", rows=40)
    x_test, _, _ = write_ens(tmp_path / "raw", rows=10, start=100, name="X_test.csv")
    dataset, summary = build_dataset(x, y, images, test_file=x_test)
    assert len(dataset["test"]) == 10 and set(dataset["test"]["label"][:]) == {-1}
    assert summary["splits"]["test"]["rows"] == 10


def test_unlabelled_file_alone_becomes_test_split(tmp_path):
    x, _, _ = write_ens(tmp_path / "raw", rows=12, images=False)
    dataset, _ = build_dataset(x, classes=CODES)
    assert list(dataset) == ["test"] and len(dataset["test"]) == 12


def test_empty_titles_are_rejected_counted_and_listed(tmp_path):
    x, y, _ = write_ens(tmp_path / "raw", rows=40, images=False)
    lines = x.read_text().splitlines()
    lines[5] = lines[5].replace('"Produit', '"<br/>  ').split(",", 2)
    lines[5] = f'{lines[5][0]},"  ",' + lines[5][2].split(",", 1)[1]
    x.write_text("\n".join(lines) + "\n")
    dataset, summary = build_dataset(x, y)
    assert len(dataset["train"]) + len(dataset["validation"]) == 39
    (reason, info), = summary["rows_rejected"].items()
    assert "empty title" in reason and info == {"count": 1, "ids": ["28"]}


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda x, y: x.write_text(x.read_text().replace("designation", "title_fr")), r"unknown layout.*designation"),
        (lambda x, y: y.write_text(y.read_text().replace("prdtypecode", "code")), r"Y.csv: missing column\(s\) \['prdtypecode'\]"),
        (lambda x, y: y.write_text(y.read_text().replace("\n14,", "\n15,")), r"do not match.*row 3 \(id '14'\), column ''|do not match.*id '14'"),
        (lambda x, y: x.write_text(x.read_text().replace("\n14,", "\n7,")), r"duplicate id '7' in .*X.csv: rows 2 and 3"),
        (lambda x, y: x.write_text(x.read_text().replace("\n14,", "\n ,")), r"empty id at .*X.csv, row 3 \(id ''\), the unnamed index column"),
        (lambda x, y: y.write_text(y.read_text().replace("\n14,50", "\n14,")), r"missing label .*row 3 \(id '14'\)"),
        (lambda x, y: x.write_bytes(x.read_bytes().replace(b"beau", b"b\xe9au", 1)), r"X.csv, row 2, column 'description': byte 0xe9 is not valid utf-8"),
        (lambda x, y: x.write_text(""), r"X.csv is empty"),
    ],
    ids=["misnamed-x-column", "misnamed-y-column", "indexes-differ", "duplicate-id", "empty-id", "missing-label", "non-utf8", "empty-file"],
)
def test_bad_input_names_file_row_and_column(tmp_path, mutate, message):
    x, y, _ = write_ens(tmp_path, rows=20, images=False)
    mutate(x, y)
    with pytest.raises(ValueError, match=message):
        build_dataset(x, y)


def test_unknown_label_against_fixed_class_list(tmp_path):
    x, y, _ = write_ens(tmp_path, rows=20, images=False)
    with pytest.raises(ValueError, match=r"unknown label '1560' for id '21'"):
        build_dataset(x, y, classes=["10", "50", "2705"])


def test_non_utf8_fallback_replaces_and_counts(tmp_path):
    x, y, _ = write_ens(tmp_path, rows=40, images=False)
    x.write_bytes(x.read_bytes().replace(b"beau", b"b\xe9au"))
    _, summary = build_dataset(x, y, encoding_errors="replace")
    assert summary["sources"]["main"]["rows_with_replaced_bytes"] == 26
    latin, _ = build_dataset(x, y, encoding="latin-1")
    assert any("béau" in d for split in latin.values() for d in split["description"])


def test_unreadable_and_truncated_images_are_flagged_or_fatal(tmp_path):
    x, y, images = write_ens(tmp_path, rows=40)
    big = images / "image_5001_product_1001.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(big)
    big.write_bytes(big.read_bytes()[: len(big.read_bytes()) // 2])  # truncated JPEG
    (images / "image_5002_product_1002.jpg").write_bytes(b"not a jpeg")
    Image.new("CMYK", (8, 8)).save(images / "image_5003_product_1003.jpg")
    dataset, summary = build_dataset(x, y, images)
    check = summary["images"]["main"]
    assert check["unreadable"] == 2 and check["found"] == 28 and check["missing"] == 10 and check["non_rgb_converted"] == 1
    assert any("image_5002_product_1002.jpg" in f for f in check["unreadable_files"])
    rows = {r["id"]: r for split in dataset.values() for r in split}
    assert rows["7"]["has_image"] is False and rows["21"]["image"].mode == "RGB"
    with pytest.raises(ValueError, match=r"unreadable image .*image_5001_product_1001.jpg for .*row 2 \(id '7'\)"):
        build_dataset(x, y, images, strict_images=True)


def test_missing_images_folder_is_an_error(tmp_path):
    x, y, _ = write_ens(tmp_path, rows=20, images=False)
    with pytest.raises(FileNotFoundError, match="images folder not found"):
        build_dataset(x, y, tmp_path / "nope")


def test_cli_builds_and_prints_summary(tmp_path, capsys):
    x, y, images = write_ens(tmp_path / "raw", rows=40)
    assert main(["build-dataset", str(x), "--labels", str(y), "--images", str(images), "--out", str(tmp_path / "ds")]) == 0
    out = capsys.readouterr().out
    assert "| train | 36 |" in out and "30 found, 10 missing" in out
    assert main(["build-dataset", str(x), "--labels", str(y), "--images", str(tmp_path / "nope"), "--out", str(tmp_path / "d2")]) == 2
    assert "images folder not found" in capsys.readouterr().err


def test_chunked_reading_gives_the_same_dataset_and_row_numbers(tmp_path):
    x, y, images = write_ens(tmp_path / "raw", rows=60)
    whole, whole_summary = build_dataset(x, y, images, tmp_path / "whole")
    chunked, chunked_summary = build_dataset(x, y, images, tmp_path / "chunked", chunk_rows=7)
    for split in whole:
        assert whole[split]["id"][:] == chunked[split]["id"][:]
        assert whole[split]["description"][:] == chunked[split]["description"][:]
        assert whole[split]["has_image"][:] == chunked[split]["has_image"][:]
    assert whole_summary["splits"] == chunked_summary["splits"] and whole_summary["images"] == chunked_summary["images"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chunked", "raw", "whole"]  # scratch parts removed
    x.write_text(x.read_text().replace("\n140,", "\n7,"))  # row 21 repeats the id of row 2, in another chunk
    with pytest.raises(ValueError, match=r"duplicate id '7' in .*X.csv: rows 2 and 21"):
        build_dataset(x, y, chunk_rows=7)


def test_generic_label_column_with_replaced_bytes_is_counted_once(tmp_path):
    lines = ["sku,name,category"] + [f"s{i},Nom {i},{'A' if i % 2 else 'B'}" for i in range(20)]
    path = tmp_path / "catalog.csv"
    path.write_bytes("\n".join(lines).encode().replace(b"Nom 3", b"N\xf6m 3") + b"\n")
    dataset, summary = build_dataset(path, columns={"id": "sku", "title": "name", "label": "category"},
                                     validation_fraction=0.5, encoding_errors="replace", chunk_rows=6)
    assert summary["sources"]["main"]["rows_with_replaced_bytes"] == 1
    assert dataset["train"].features["label"].names == ["A", "B"]
    titles = [t for split in dataset.values() for t in split["title"]]
    assert "N\ufffdm 3" in titles
