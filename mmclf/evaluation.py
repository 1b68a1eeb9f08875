"""Evaluate predictions against labels: macro-F1 (the challenge metric), weighted-F1, accuracy,
per-class precision / recall / F1 / support and a row-normalised confusion matrix.

The numbers come from the `evaluate` metric module shipped in `mmclf/metrics/`, loaded by path
so nothing is fetched. `mmclf evaluate` writes REPORT_DIR/report.json, report.md and
confusion_matrix.png.

Predictions are either a probability table (.parquet; predicted class = highest probability)
or a CSV with an id column and a predicted class-code column. Labels come from a dataset
saved by `mmclf build-dataset` (--dataset), a CSV of id + class code (--labels), or, when
neither is given, from the probability table itself. Every prediction must have a label and
every labelled row of the split a prediction: nothing is dropped.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from mmclf.data.readers import normalise_codes
from mmclf.data.rows import sorted_codes
from mmclf.probability_tables import ProbabilityTable
from mmclf.scoring import macro_f1, scores  # noqa: F401  (re-exported: mmclf.evaluation.macro_f1)

METRIC_PATH = Path(__file__).parent / "metrics" / "classification_report.py"
PREDICTION_COLUMNS = ("prediction", "prdtypecode", "label")
LABEL_COLUMNS = ("label", "prdtypecode", "prediction")
ID_COLUMNS = ("id", "Unnamed: 0", "Integer_id")  # "Unnamed: 0": the challenge files' unnamed index


@lru_cache(maxsize=1)
def load_metric():
    import evaluate

    return evaluate.load(str(METRIC_PATH))


def compute_report(labels: np.ndarray, predictions: np.ndarray, class_names: list[str]) -> dict:
    """Classification report of integer class indices into `class_names`."""
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    if labels.shape != predictions.shape or labels.ndim != 1:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} must be 1-d and the same length")
    if len(labels) == 0:
        raise ValueError("nothing to evaluate: zero rows")
    num_classes = len(class_names)
    for name, values in (("labels", labels), ("predictions", predictions)):
        bad = np.flatnonzero((values < 0) | (values >= num_classes))
        if len(bad):
            raise ValueError(
                f"{name} row {bad[0]} holds class index {values[bad[0]]}, outside 0..{num_classes - 1} "
                f"({len(bad)} such rows)"
            )
    result = load_metric().compute(predictions=predictions, references=labels, num_classes=num_classes)
    per_class = [
        {
            "class": class_names[c],
            "precision": result["precision"][c],
            "recall": result["recall"][c],
            "f1": result["f1"][c],
            "support": result["support"][c],
        }
        for c in range(num_classes)
    ]
    return {
        "num_rows": len(labels),
        "accuracy": result["accuracy"],
        "macro_f1": result["macro_f1"],
        "weighted_f1": result["weighted_f1"],
        "macro_precision": result["macro_precision"],
        "macro_recall": result["macro_recall"],
        "weighted_precision": result["weighted_precision"],
        "weighted_recall": result["weighted_recall"],
        "class_names": list(class_names),
        "per_class": per_class,
        "confusion_matrix": result["confusion_matrix"],
    }


def plot_confusion_matrix(report: dict, path: str | Path, title: str = "") -> Path:
    """Row-normalised confusion matrix (each true class sums to 1), class codes on both axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(report["confusion_matrix"], dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    names = report["class_names"]
    size = max(6.0, 0.38 * len(names) + 2.0)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(names)), labels=names, rotation=90, fontsize=8)
    ax.set_yticks(range(len(names)), labels=names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or f"confusion matrix (row-normalised), macro-F1 {report['macro_f1']:.4f}")
    if len(names) <= 30:
        for i, j in zip(*np.nonzero(normalised >= 0.01)):
            ax.text(j, i, f"{normalised[i, j]:.2f}"[1:] if normalised[i, j] < 1 else "1", ha="center", va="center",
                    fontsize=6, color="white" if normalised[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def report_markdown(report: dict, title: str = "Evaluation report") -> str:
    lines = [
        f"# {title}",
        "",
        f"Rows: {report['num_rows']}",
        "",
        "| metric | value |",
        "|---|---|",
        f"| macro-F1 | {report['macro_f1']:.4f} |",
        f"| weighted-F1 | {report['weighted_f1']:.4f} |",
        f"| accuracy | {report['accuracy']:.4f} |",
        f"| macro precision | {report['macro_precision']:.4f} |",
        f"| macro recall | {report['macro_recall']:.4f} |",
        "",
        "## Per class",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for row in report["per_class"]:
        lines.append(
            f"| {row['class']} | {row['precision']:.4f} | {row['recall']:.4f} | {row['f1']:.4f} | {row['support']} |"
        )
    lines += ["", "![confusion matrix](confusion_matrix.png)", ""]
    return "\n".join(lines)


def write_report(report: dict, out_dir: str | Path, title: str = "Evaluation report", extra: dict | None = None) -> Path:
    """Write report.json (with `extra` merged in), report.md and confusion_matrix.png into out_dir."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {**(extra or {}), **report}
    (out_dir / "report.json").write_text(json.dumps(payload, indent=2))
    (out_dir / "report.md").write_text(report_markdown(report, title))
    plot_confusion_matrix(report, out_dir / "confusion_matrix.png")
    return out_dir


# ---------------------------------------------------------------- reading predictions and labels


def read_csv(path: str | Path, what: str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise ValueError(f"{what} file {path} is empty") from None
    if frame.empty:
        raise ValueError(f"{what} file {path} has a header but no rows")
    return frame


def pick_column(frame: pd.DataFrame, path, requested: str | None, candidates: tuple[str, ...], what: str) -> str:
    if requested:
        if requested not in frame.columns:
            raise ValueError(f"{path}: no column {requested!r} (columns: {list(frame.columns)})")
        return requested
    for name in candidates:
        if name in frame.columns:
            return name
    raise ValueError(f"{path}: no {what} column; expected one of {list(candidates)} (columns: {list(frame.columns)})")


def check_ids(frame: pd.DataFrame, path, id_column: str) -> None:
    if id_column not in frame.columns:
        raise ValueError(f"{path}: no id column {id_column!r} (columns: {list(frame.columns)})")
    empty = np.flatnonzero(frame[id_column].str.strip() == "")
    if len(empty):
        raise ValueError(f"{path}: row {empty[0] + 2} has an empty {id_column!r} ({len(empty)} such rows)")
    duplicated = frame[id_column][frame[id_column].duplicated()]
    if len(duplicated):
        raise ValueError(f"{path}: id {duplicated.iloc[0]!r} appears more than once in column {id_column!r}")


def read_predictions(path, split: str | None, id_column: str, prediction_column: str | None):
    """Return (ids, predicted class names, labels or None, class names or None) of one split."""
    path = Path(path)
    if path.suffix == ".parquet":
        table = ProbabilityTable.load(path)
        if split is not None and split in table.splits:
            table = table.split_rows(split)
        elif split is not None:
            raise ValueError(f"{path} has no rows of split {split!r} (splits: {sorted(set(table.splits))})")
        predicted = [table.class_names[i] for i in table.predictions()]
        labels = None if (table.labels < 0).any() else table.labels
        return table.ids, predicted, labels, table.class_names
    frame = read_csv(path, "predictions")
    id_column = pick_column(frame, path, id_column, ID_COLUMNS, "id")
    check_ids(frame, path, id_column)
    column = pick_column(frame, path, prediction_column, PREDICTION_COLUMNS, "prediction")
    if split is not None and "split" in frame.columns:
        frame = frame[frame["split"] == split]
        if frame.empty:
            raise ValueError(f"{path} has no rows of split {split!r}")
    return frame[id_column].tolist(), normalise_codes(frame[column]).tolist(), None, None


def read_labels_from_dataset(dataset_dir, split: str):
    import datasets

    dataset_dir = Path(dataset_dir)
    if not dataset_dir.exists():
        raise FileNotFoundError(f"dataset not found: {dataset_dir}")
    dataset = datasets.load_from_disk(str(dataset_dir))
    if split not in dataset:
        raise ValueError(f"dataset {dataset_dir} has no split {split!r} (splits: {list(dataset.keys())})")
    part = dataset[split].select_columns(["id", "label"])
    class_names = list(part.features["label"].names)
    labels = np.asarray(part["label"], dtype=np.int64)
    if (labels < 0).all():
        raise ValueError(f"split {split!r} of {dataset_dir} is unlabelled (every label is -1)")
    return list(part["id"]), labels, class_names


def read_labels_from_csv(path, id_column: str, label_column: str | None):
    frame = read_csv(path, "labels")
    id_column = pick_column(frame, path, id_column, ID_COLUMNS, "id")
    check_ids(frame, path, id_column)
    column = pick_column(frame, path, label_column, LABEL_COLUMNS, "label")
    return frame[id_column].tolist(), normalise_codes(frame[column]).tolist()


def match_predictions(pred_ids, predicted_names, label_ids, label_values, source: str):
    """Pair every prediction with its label by id; raise when either side has ids the other lacks."""
    label_of = dict(zip(label_ids, label_values))
    unlabelled = [i for i in pred_ids if i not in label_of]
    if unlabelled:
        raise ValueError(
            f"{len(unlabelled)} predicted ids have no label in {source} (e.g. {unlabelled[:3]})"
        )
    predicted_set = set(pred_ids)
    unpredicted = [i for i in label_ids if i not in predicted_set]
    if unpredicted:
        raise ValueError(
            f"{len(unpredicted)} labelled ids of {source} have no prediction (e.g. {unpredicted[:3]})"
        )
    return [label_of[i] for i in pred_ids], list(predicted_names)


def to_indices(names, class_names: list[str], what: str, source) -> np.ndarray:
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [(row, name) for row, name in enumerate(names) if name not in index]
    if unknown:
        row, name = unknown[0]
        raise ValueError(
            f"{source}: {what} {name!r} (row {row}) is not a known class code; "
            f"{len(unknown)} such rows; classes: {class_names[:10]}..."
        )
    return np.array([index[n] for n in names], dtype=np.int64)


def evaluate_predictions(predictions, output_dir, *, dataset=None, labels=None, split: str = "test",
                         id_column: str | None = None, prediction_column: str | None = None,
                         label_column: str | None = None) -> dict:
    """Score a probability table or predictions CSV against labels from a built dataset (`dataset`), a CSV
    (`labels`), or, with neither, the table's own labels; write report.json, report.md and confusion_matrix.png
    into `output_dir` and return the report. Every prediction needs a label and every labelled row a prediction."""
    if dataset is not None and labels is not None:
        raise ValueError("give labels from a dataset or from a CSV, not both")
    pred_ids, predicted_names, table_labels, table_classes = read_predictions(predictions, split, id_column,
                                                                              prediction_column)
    if dataset is not None:
        label_ids, label_values, class_names = read_labels_from_dataset(dataset, split)
        keep = label_values >= 0
        if not keep.all():
            raise ValueError(f"split {split!r} of {dataset} has {int((~keep).sum())} unlabelled rows; "
                             "evaluate a fully labelled split")
        if table_classes is not None and table_classes != class_names:
            raise ValueError(f"class order of {predictions} differs from the dataset {dataset}")
        label_names = [class_names[i] for i in label_values]
        label_source = f"split {split!r} of {dataset}"
    elif labels is not None:
        label_ids, label_names = read_labels_from_csv(labels, id_column, label_column)
        class_names = table_classes or sorted_codes(list(label_names) + list(predicted_names))
        label_source = str(labels)
    else:
        if table_labels is None:
            raise ValueError(f"{predictions} carries no labels for split {split!r}: give a dataset or a labels CSV")
        class_names = table_classes
        label_ids, label_names = pred_ids, [class_names[i] for i in table_labels]
        label_source = str(predictions)
    label_names, predicted_names = match_predictions(pred_ids, predicted_names, label_ids, label_names, label_source)
    label_indices = to_indices(label_names, class_names, "label", label_source)
    predicted = to_indices(predicted_names, class_names, "prediction", predictions)
    report = compute_report(label_indices, predicted, class_names)
    extra = {"predictions": str(predictions), "labels": label_source, "split": split}
    write_report(report, output_dir, title=f"Evaluation of {Path(predictions).name} ({split})", extra=extra)
    return report
