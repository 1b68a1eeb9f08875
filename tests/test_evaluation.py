import json

import datasets
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from mmclf.cli import main
from mmclf.evaluation import compute_report, write_report
from mmclf.probability_tables import ProbabilityTable

CODES = ["10", "40", "50", "1140", "2583"]


def noisy_predictions(rows=200, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CODES), rows)
    predictions = np.where(rng.random(rows) < 0.7, labels, rng.integers(0, len(CODES), rows))
    predictions[predictions == 4] = 3  # class 4 is never predicted: zero precision, zero_division path
    return labels, predictions


def test_report_numbers_equal_sklearn():
    labels, predictions = noisy_predictions()
    report = compute_report(labels, predictions, CODES)
    assert report["macro_f1"] == pytest.approx(f1_score(labels, predictions, average="macro", zero_division=0))
    assert report["weighted_f1"] == pytest.approx(f1_score(labels, predictions, average="weighted", zero_division=0))
    assert report["accuracy"] == pytest.approx(accuracy_score(labels, predictions))
    precision, recall, f1, support = precision_recall_fscore_support(labels, predictions, labels=range(5),
                                                                     zero_division=0)
    assert [row["class"] for row in report["per_class"]] == CODES
    np.testing.assert_allclose([row["precision"] for row in report["per_class"]], precision)
    np.testing.assert_allclose([row["recall"] for row in report["per_class"]], recall)
    np.testing.assert_allclose([row["f1"] for row in report["per_class"]], f1)
    assert [row["support"] for row in report["per_class"]] == support.tolist()
    assert report["confusion_matrix"] == confusion_matrix(labels, predictions, labels=range(5)).tolist()
    assert report["per_class"][4]["precision"] == 0.0 and report["num_rows"] == 200


def test_report_rejects_bad_indices():
    with pytest.raises(ValueError, match="predictions row 1 holds class index 7"):
        compute_report(np.array([0, 1]), np.array([0, 7]), ["a", "b"])
    with pytest.raises(ValueError, match="zero rows"):
        compute_report(np.array([]), np.array([]), ["a", "b"])


def test_write_report_files(tmp_path):
    labels, predictions = noisy_predictions()
    report = compute_report(labels, predictions, CODES)
    write_report(report, tmp_path / "r", extra={"split": "test"})
    saved = json.loads((tmp_path / "r" / "report.json").read_text())
    assert saved["macro_f1"] == report["macro_f1"] and saved["split"] == "test"
    markdown = (tmp_path / "r" / "report.md").read_text()
    assert f"| macro-F1 | {report['macro_f1']:.4f} |" in markdown and "| 2583 |" in markdown
    png = (tmp_path / "r" / "confusion_matrix.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def make_dataset(path, labels):
    features = datasets.Features({"id": datasets.Value("string"), "label": datasets.ClassLabel(names=CODES)})
    ids = [f"s{i}" for i in range(len(labels))]
    split = datasets.Dataset.from_dict({"id": ids, "label": labels.tolist()}, features=features)
    datasets.DatasetDict({"train": split, "test": split}).save_to_disk(str(path))
    return ids


def test_evaluate_cli_with_dataset_and_probability_table(tmp_path):
    labels, predictions = noisy_predictions(60)
    ids = make_dataset(tmp_path / "ds", labels)
    probs = np.eye(5, dtype=np.float32)[predictions]
    order = np.random.default_rng(1).permutation(60)  # prediction rows in another order
    ProbabilityTable([ids[i] for i in order], ["test"] * 60, [-1] * 60, probs[order], CODES).save(tmp_path / "p.parquet")
    code = main(["evaluate", "--predictions", str(tmp_path / "p.parquet"), "--dataset", str(tmp_path / "ds"),
                 "--split", "test", "--out", str(tmp_path / "report")])
    assert code == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["macro_f1"] == pytest.approx(f1_score(labels, predictions, average="macro"))
    assert (tmp_path / "report" / "confusion_matrix.png").stat().st_size > 0


def test_evaluate_cli_with_csv_predictions_and_labels(tmp_path):
    labels, predictions = noisy_predictions(40)
    ids = [f"s{i}" for i in range(40)]
    pd.DataFrame({"id": ids, "prdtypecode": [CODES[p] for p in predictions]}).to_csv(tmp_path / "p.csv", index=False)
    pd.DataFrame({"id": ids[::-1], "label": [CODES[y] for y in labels[::-1]]}).to_csv(tmp_path / "y.csv", index=False)
    code = main(["evaluate", "--predictions", str(tmp_path / "p.csv"), "--labels", str(tmp_path / "y.csv"),
                 "--out", str(tmp_path / "report")])
    assert code == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    # class order from the codes, numerically sorted
    assert report["class_names"] == ["10", "40", "50", "1140", "2583"]
    assert report["weighted_f1"] == pytest.approx(f1_score(labels, predictions, average="weighted"))


def test_evaluate_cli_labels_from_table(tmp_path):
    labels, predictions = noisy_predictions(30)
    probs = np.eye(5, dtype=np.float32)[predictions]
    ProbabilityTable([f"s{i}" for i in range(30)], ["validation"] * 30, labels, probs, CODES).save(tmp_path / "p.parquet")
    code = main(["evaluate", "--predictions", str(tmp_path / "p.parquet"), "--split", "validation",
                 "--out", str(tmp_path / "r")])
    assert code == 0
    assert json.loads((tmp_path / "r" / "report.json").read_text())["accuracy"] == pytest.approx(
        accuracy_score(labels, predictions))


def test_evaluate_cli_errors(tmp_path, capsys):
    labels, predictions = noisy_predictions(10)
    ids = make_dataset(tmp_path / "ds", labels)
    pd.DataFrame({"id": ids[:9], "prediction": [CODES[p] for p in predictions[:9]]}).to_csv(tmp_path / "short.csv",
                                                                                          index=False)
    args = ["evaluate", "--dataset", str(tmp_path / "ds"), "--out", str(tmp_path / "r"), "--predictions"]
    assert main([*args, str(tmp_path / "short.csv")]) == 2
    assert "1 labelled ids of split 'test'" in capsys.readouterr().err
    pd.DataFrame({"id": ids, "prediction": ["10"] * 9 + ["77"]}).to_csv(tmp_path / "unknown.csv", index=False)
    assert main([*args, str(tmp_path / "unknown.csv")]) == 2
    assert "prediction '77' (row 9) is not a known class code" in capsys.readouterr().err
    (tmp_path / "empty.csv").write_text("")
    assert main([*args, str(tmp_path / "empty.csv")]) == 2
    assert "is empty" in capsys.readouterr().err
    assert main([*args, str(tmp_path / "nope.csv")]) == 2
    assert "not found" in capsys.readouterr().err
