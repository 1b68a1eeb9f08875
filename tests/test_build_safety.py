"""build-dataset never gives a wrong result silently: atomic output, label codes, files without rows."""

import json
import os
import signal
import subprocess
import sys

import pytest
from datasets import DatasetDict, load_from_disk
from test_data import CODES, write_ens

from mmclf.cli import main
from mmclf.data.build import build_dataset


def fingerprint(folder):
    """What a dataset folder holds: its files, the ids of each split, its summary."""
    dataset = load_from_disk(str(folder))
    return (sorted(p.name for p in folder.iterdir()), {split: ds["id"][:] for split, ds in dataset.items()},
            (folder / "summary.json").read_text())


def leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture
def old_dataset(tmp_path):
    """A dataset with train, validation and test splits in tmp_path/ds; raw files in tmp_path/raw."""
    x, y, _ = write_ens(tmp_path / "raw", rows=40, images=False)
    x_test, _, _ = write_ens(tmp_path / "raw", rows=8, start=100, images=False, name="X_test.csv")
    build_dataset(x, y, out_dir=tmp_path / "ds", test_file=x_test)
    return x, y, tmp_path / "ds"


def test_existing_out_is_refused_without_overwrite_and_replaced_whole_with_it(old_dataset, tmp_path, capsys):
    x, y, out = old_dataset
    before = fingerprint(out)
    assert before[0] == ["dataset_dict.json", "mmclf_dataset.json", "summary.json", "summary.md", "test", "train", "validation"]
    with pytest.raises(ValueError, match=rf"^{out} already exists; pass --overwrite to replace it$"):
        build_dataset(x, y, out_dir=out, seed=3)
    assert main(["build-dataset", str(x), "--labels", str(y), "--out", str(out), "--seed", "3"]) == 2
    assert capsys.readouterr().err == f"mmclf build-dataset: error: {out} already exists; pass --overwrite to replace it\n"
    assert fingerprint(out) == before

    assert main(["build-dataset", str(x), "--labels", str(y), "--out", str(out), "--seed", "3", "--overwrite"]) == 0
    names, ids, summary = fingerprint(out)
    assert names == ["dataset_dict.json", "mmclf_dataset.json", "summary.json", "summary.md", "train", "validation"]  # old test split gone
    assert list(ids) == ["train", "validation"] and ids["validation"] != before[1]["validation"]
    assert json.loads(summary)["seed"] == 3 and "test" not in json.loads(summary)["splits"]
    assert leftovers(tmp_path) == []


def test_overwrite_replaces_only_a_dataset_folder(tmp_path):
    x, y, _ = write_ens(tmp_path / "raw", rows=40, images=False)
    with pytest.raises(ValueError, match=r"raw is not a dataset folder .*--overwrite replaces only a dataset"):
        build_dataset(x, y, out_dir=tmp_path / "raw", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["X.csv", "Y.csv", "image_train"]
    (tmp_path / "empty").mkdir()  # an empty folder holds nothing to lose
    dataset, _ = build_dataset(x, y, out_dir=tmp_path / "empty")
    assert len(load_from_disk(str(tmp_path / "empty"))["train"]) == len(dataset["train"]) == 36


def _fail_after_writing(original):
    def save(self, path, *args, **kwargs):
        original(self, path, *args, **kwargs)
        raise RuntimeError("disk full")
    return save


@pytest.mark.parametrize("where", ["save_to_disk", "summary"])
def test_failed_save_keeps_the_old_dataset_and_leaves_no_scratch(old_dataset, tmp_path, monkeypatch, where):
    x, y, out = old_dataset
    before = fingerprint(out)
    if where == "save_to_disk":
        monkeypatch.setattr(DatasetDict, "save_to_disk", _fail_after_writing(DatasetDict.save_to_disk))
    else:
        monkeypatch.setattr("mmclf.data.build.summary_markdown", lambda summary: 1 / 0)
    with pytest.raises((RuntimeError, ZeroDivisionError)):
        build_dataset(x, y, out_dir=out, seed=3, overwrite=True, chunk_rows=7)
    with pytest.raises((RuntimeError, ZeroDivisionError)):
        build_dataset(x, y, out_dir=tmp_path / "new")
    monkeypatch.undo()
    assert fingerprint(out) == before
    assert not (tmp_path / "new").exists()
    assert leftovers(tmp_path) == []


KILLED_BUILD = """
import os, signal, sys
from datasets import DatasetDict
from mmclf.data.build import build_dataset
original = DatasetDict.save_to_disk
def save(self, path, *args, **kwargs):
    original(DatasetDict({"train": self["train"]}), path)  # the new train split is written, then the process dies
    os.kill(os.getpid(), signal.SIGKILL)
DatasetDict.save_to_disk = save
build_dataset(sys.argv[1], sys.argv[2], out_dir=sys.argv[3], seed=3, overwrite=True)
"""


def test_killed_build_leaves_the_old_dataset_and_the_next_run_clears_its_partial_folder(old_dataset, tmp_path):
    x, y, out = old_dataset
    before = fingerprint(out)
    killed = subprocess.run([sys.executable, "-c", KILLED_BUILD, str(x), str(y), str(out)], capture_output=True,
                            text=True, timeout=300, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert fingerprint(out) == before
    (partial,) = leftovers(tmp_path)
    assert partial.startswith(".ds.partial-") and (tmp_path / partial / "new" / "train").is_dir()

    live = f".ds.partial-{os.getppid()}-running"  # a build still running elsewhere keeps its folder
    for name in (live, ".ds.partial-x", ".ds-keep", ".other.partial-1"):
        (tmp_path / name).mkdir()
    build_dataset(x, y, out_dir=out, seed=3, overwrite=True)
    assert leftovers(tmp_path) == sorted([live, ".ds-keep", ".other.partial-1"])
    assert json.loads((out / "summary.json").read_text())["seed"] == 3


def write_codes(y, codes):
    lines = y.read_text().splitlines()
    y.write_text("\n".join([lines[0]] + [f"{line.split(',')[0]},{code}" for line, code in zip(lines[1:], codes)]) + "\n")


def test_label_codes_are_normalised_before_classes_are_formed(tmp_path):
    x, y, _ = write_ens(tmp_path, rows=40, images=False)
    written = {"10": "10.0", "2705": " 2705.00 ", "50": "50", "1560": "1560."}
    write_codes(y, [written[CODES[i % 4]] for i in range(40)])
    dataset, summary = build_dataset(x, y)
    assert dataset["train"].features["label"].names == ["10", "50", "1560", "2705"]
    assert summary["splits"]["train"]["class_counts"] == {"10": 9, "50": 9, "1560": 9, "2705": 9}
    row = dataset["train"][0]
    assert dataset["train"].features["label"].int2str(row["label"]) == CODES[int(row["id"]) // 7 % 4]
    # --classes is normalised the same way; codes in a generic label column too
    assert main(["build-dataset", str(x), "--labels", str(y), "--classes", "2705.0, 10,50.00,1560",
                 "--out", str(tmp_path / "ds")]) == 0
    assert load_from_disk(str(tmp_path / "ds"))["train"].features["label"].names == ["2705", "10", "50", "1560"]
    with pytest.raises(ValueError, match=r"--classes lists \['10'\] more than once"):
        build_dataset(x, y, classes=["10", "50", "1560", "2705", "10"])
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("sku,name,category\n" + "".join(f"s{i},Nom {i},{' 7.0' if i % 2 else '12 '}\n" for i in range(10)))
    generic, _ = build_dataset(catalog, columns={"id": "sku", "title": "name", "label": "category"},
                               validation_fraction=0.2)
    assert generic["train"].features["label"].names == ["7", "12"]


def test_rare_code_is_reported_with_file_rows_and_ids(tmp_path):
    x, y, _ = write_ens(tmp_path, rows=40, images=False)
    codes = [CODES[i % 4] for i in range(40)]
    codes[2] = "2750"  # a typo in one row
    write_codes(y, codes)
    with pytest.raises(ValueError) as error:
        build_dataset(x, y)
    message = str(error.value)
    assert message.startswith(f"{y}, column 'prdtypecode': 1 label code(s) in fewer than 2 rows")
    assert "'2750' in 1 row (row 3 (id '14'))" in message and "--classes" in message and "\n" not in message
    codes[33] = "2750"  # the same typo twice: found when asking for more rows per class
    write_codes(y, codes)
    with pytest.raises(ValueError, match=r"fewer than 5 rows.*'2750' in 2 rows \(row 3 \(id '14'\), row 34 \(id '231'\)\)"):
        build_dataset(x, y, min_class_rows=5)
    with pytest.raises(ValueError, match=r"unknown label '2750' for id '14' in .*X.csv, row 3 \(label column "
                                         r"'.*Y.csv:prdtypecode'\); known classes \(--classes\)"):
        build_dataset(x, y, classes=CODES)


def test_rare_code_in_a_label_column_of_the_features_file(tmp_path):
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("sku,name,category\n" + "".join(f"s{i},Nom {i},{'A' if i != 6 else 'AA'}\n" for i in range(10)))
    with pytest.raises(ValueError, match=r"catalog.csv, column 'category': .*'AA' in 1 row \(row 7 \(id 's6'\)\)"):
        build_dataset(catalog, columns={"id": "sku", "title": "name", "label": "category"}, chunk_rows=4)


def test_test_labels_outside_the_main_files_codes_are_refused(tmp_path):
    x, y, _ = write_ens(tmp_path, rows=40, images=False)
    x_test, y_test, _ = write_ens(tmp_path, rows=8, start=100, images=False, name="X_test.csv")
    write_codes(y_test, ["10", "50", "1560", "2705", "10", "50", "99", "2705"])
    with pytest.raises(ValueError, match=r"unknown label '99' for id '742' in .*X_test.csv, row 7 .*known classes "
                                         r"\(the codes of .*X.csv\)"):
        build_dataset(x, y, test_file=x_test, test_labels_file=y_test)


@pytest.mark.parametrize("empty", ["X", "Y", "test"])
def test_header_without_rows_is_a_one_line_error_naming_the_file(tmp_path, capsys, empty):
    x, y, _ = write_ens(tmp_path, rows=20, images=False)
    x_test, _, _ = write_ens(tmp_path, rows=4, start=100, images=False, name="X_test.csv")
    path = {"X": x, "Y": y, "test": x_test}[empty]
    path.write_text(path.read_text().splitlines()[0] + "\n")
    with pytest.raises(ValueError, match=rf"^{path} has a header but no rows$"):
        build_dataset(x, y, test_file=x_test)
    args = ["build-dataset", str(x), "--labels", str(y), "--test", str(x_test), "--out", str(tmp_path / "ds")]
    assert main(args) == 2
    assert capsys.readouterr().err == f"mmclf build-dataset: error: {path} has a header but no rows\n"
    assert not (tmp_path / "ds").exists() and leftovers(tmp_path) == []


def test_title_only_files_build_and_keep_their_ids(tmp_path):
    x, y, _ = write_ens(tmp_path / "ens", rows=40, images=False)
    without_description = [",".join(v for k, v in enumerate(line.split(",")) if k != 2) for line in x.read_text().splitlines()]
    x.write_text("\n".join(without_description) + "\n")
    assert without_description[:2] == [",designation,productid,imageid", '0,"Produit 10 n&deg;0",1000,5000']
    dataset, summary = build_dataset(x, y)
    assert summary["sources"]["main"]["format"] == "ens" and "description" not in summary["sources"]["main"]["columns"]
    ids = sorted(int(i) for split in dataset.values() for i in split["id"])
    assert ids == [i * 7 for i in range(40)]
    assert {d for split in dataset.values() for d in split["description"]} == {""}

    sigir = tmp_path / "X.tsv"
    sigir.write_text("Integer_id\tTitle\tImage_id\tProduct_id\n" + "".join(f"{i * 3}\tTitre {i}\t{i}\t{i}\n" for i in range(20)))
    (tmp_path / "Y.tsv").write_text("Integer_id\tPrdtypecode\n" + "".join(f"{i * 3}\t{CODES[i % 2]}\n" for i in range(20)))
    dataset, summary = build_dataset(sigir, tmp_path / "Y.tsv")
    assert summary["sources"]["main"]["format"] == "sigir"
    assert sorted(int(i) for split in dataset.values() for i in split["id"]) == [i * 3 for i in range(20)]

    catalog = tmp_path / "catalog.csv"
    catalog.write_text("sku,name,category\n" + "".join(f"s{i * 5},Nom {i},{'AB'[i % 2]}\n" for i in range(20)))
    assert main(["build-dataset", str(catalog), "--columns", "id=sku,title=name,label=category",
                 "--out", str(tmp_path / "generic")]) == 0
    dataset = load_from_disk(str(tmp_path / "generic"))
    assert sorted(i for split in dataset.values() for i in split["id"]) == sorted(f"s{i * 5}" for i in range(20))
    assert dataset["train"].features["label"].names == ["A", "B"]


def test_class_left_with_one_row_after_empty_titles_are_rejected_names_the_row(tmp_path):
    x, y, _ = write_ens(tmp_path, rows=40, images=False)
    write_codes(y, ["99" if i in (1, 2) else CODES[i % 4] for i in range(40)])
    x.write_text(x.read_text().replace('"Produit 2705 n&deg;1"', '"<br>"'))
    with pytest.raises(ValueError, match=r"classes \['99'\] keep a single row \(ids \['14'\]\) once rows with an empty "
                                         r"title are rejected"):
        build_dataset(x, y)
