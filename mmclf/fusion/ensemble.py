"""Majority vote: over the k fold heads of one fusion run, and over several runs (`mmclf ensemble`).

Tie-break rule (used everywhere in mmclf): when several classes share the highest vote count,
the winner is the tied class with the highest tie-break score (the voters' mean probability
for that class); if the scores tie too, or no scores are given, the lowest class index wins.

`mmclf ensemble --inputs ... --split test --out predictions.csv` accepts, per voter:
- a fusion run directory (its predictions.csv gives the vote, probs/<split>.parquet the probabilities),
- a probability table (.parquet; the vote is its highest-probability class),
- a predictions CSV with columns id, prediction (class code) and optionally split.
A CSV voter has no probabilities; it enters the tie-break score as a one-hot vector, which
never changes the order of classes tied on votes. Inputs must agree on ids, splits and class
order. Writes the CSV (id, split, prediction, votes) and a probability table of vote shares
beside it (same name, .parquet).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mmclf.probability_tables import ProbabilityTable, TableMismatchError, align_tables


def majority_vote(
    predictions: np.ndarray, num_classes: int, tie_break_scores: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Majority vote of integer predictions [voters, rows] -> (winners [rows], winning vote counts [rows]).

    Ties on votes go to the tied class with the highest `tie_break_scores[row, class]`, then to
    the lowest class index.
    """
    predictions = np.asarray(predictions)
    if predictions.ndim != 2 or predictions.shape[0] == 0:
        raise ValueError(f"predictions must have shape [voters, rows] with at least one voter, got {predictions.shape}")
    if predictions.size and (predictions.min() < 0 or predictions.max() >= num_classes):
        raise ValueError(f"predictions must be class indices in 0..{num_classes - 1}")
    rows = predictions.shape[1]
    counts = np.zeros((rows, num_classes), dtype=np.int64)
    for voter in predictions:
        counts[np.arange(rows), voter] += 1
    tied = counts == counts.max(axis=1, keepdims=True)
    if tie_break_scores is None:
        winners = tied.argmax(axis=1)  # first True = lowest tied class index
    else:
        scores = np.asarray(tie_break_scores, dtype=np.float64)
        if scores.shape != (rows, num_classes):
            raise ValueError(f"tie_break_scores must have shape {(rows, num_classes)}, got {scores.shape}")
        if not np.isfinite(scores).all():
            raise ValueError("tie_break_scores contain NaN or infinite values")
        # argmax returns the first maximum, so equal scores fall back to the lowest class index
        winners = np.where(tied, scores, -np.inf).argmax(axis=1)
    return winners, counts[np.arange(rows), winners]


# ---------------------------------------------------------------- reading voters


def _read_prediction_csv(path: Path, split: str) -> pd.DataFrame:
    from mmclf.evaluation import read_csv

    frame = read_csv(path, "predictions")
    missing = {"id", "prediction"} - set(frame.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)} (columns: {list(frame.columns)})")
    if "split" in frame.columns:
        frame = frame[frame["split"] == split]
    else:
        frame = frame.assign(split=split)
    if frame.empty:
        raise ValueError(f"{path} has no rows of split {split!r}")
    duplicated = frame["id"][frame["id"].duplicated()]
    if len(duplicated):
        raise ValueError(f"{path}: id {duplicated.iloc[0]!r} appears more than once")
    return frame.reset_index(drop=True)


def _votes_from_frame(frame: pd.DataFrame, table: ProbabilityTable, path: Path) -> np.ndarray:
    """The frame's predicted class indices, in the table's row order."""
    index = {name: i for i, name in enumerate(table.class_names)}
    predicted = dict(zip(frame["id"], frame["prediction"]))
    missing = [i for i in table.ids if i not in predicted]
    if missing or len(predicted) != len(table.ids):
        raise TableMismatchError(f"{path}: ids differ from its probability table (e.g. {missing[:3]})")
    unknown = [(row, code) for row, code in enumerate(frame["prediction"]) if code not in index]
    if unknown:
        row, code = unknown[0]
        raise ValueError(f"{path}: row {row + 2}, column 'prediction': unknown class {code!r}")
    return np.array([index[predicted[i]] for i in table.ids], dtype=np.int64)


def load_voter(path: str | Path, split: str, class_names: list[str] | None) -> tuple[ProbabilityTable, np.ndarray, bool]:
    """Return (probability table of the split, predicted class indices, whether the input has probabilities)."""
    path = Path(path)
    if path.is_dir():
        table_path = path / "probs" / f"{split}.parquet"
        if not table_path.is_file():
            raise FileNotFoundError(f"{path} has no fused probabilities for split {split!r} ({table_path})")
        table = ProbabilityTable.load(table_path)
        frame = _read_prediction_csv(path / "predictions.csv", split)
        return table, _votes_from_frame(frame, table, path / "predictions.csv"), True
    if path.suffix == ".parquet":
        table = ProbabilityTable.load(path).split_rows(split)
        if len(table) == 0:
            raise ValueError(f"{path} has no rows of split {split!r}")
        return table, table.predictions(), True
    frame = _read_prediction_csv(path, split)
    if class_names is None:
        raise ValueError(f"{path}: a predictions CSV needs a class order; give a probability table or fusion run too")
    one_hot = np.zeros((len(frame), len(class_names)), dtype=np.float32)
    table = ProbabilityTable(frame["id"], frame["split"], np.full(len(frame), -1), one_hot, class_names, source=str(path))
    votes = _votes_from_frame(frame, table, path)
    table.probs[np.arange(len(frame)), votes] = 1.0
    return table, votes, False


def ensemble(inputs: list[str | Path], split: str) -> tuple[ProbabilityTable, np.ndarray, np.ndarray]:
    """Majority vote of the inputs on one split -> (vote-share table, winners, vote counts)."""
    if not inputs:
        raise ValueError("no inputs to ensemble")
    # a CSV carries no class order: take it from the first input that has one
    class_names = None
    for path in inputs:
        path = Path(path)
        if path.is_dir() or path.suffix == ".parquet":
            table_path = path / "probs" / f"{split}.parquet" if path.is_dir() else path
            class_names = ProbabilityTable.load(table_path).class_names
            break
    voters = [load_voter(path, split, class_names) for path in inputs]
    tables = [table for table, _, _ in voters]
    labelled = [t for t in tables if (t.labels >= 0).any()]
    if labelled:
        align_tables(labelled)  # full check (ids, splits, labels, class order) among inputs that carry labels
    labels = labelled[0].labels.copy() if labelled else None
    neutral = [ProbabilityTable(t.ids, t.splits, np.full(len(t), -1), t.probs, t.class_names, t.source, t.path)
               for t in tables]
    aligned = align_tables(neutral)
    first = aligned[0]
    if labels is not None:
        position = {i: r for r, i in enumerate(labelled[0].ids)}
        labels = labels[[position[i] for i in first.ids]]
    votes = []
    for original, predicted, _ in voters:
        position = {i: r for r, i in enumerate(original.ids)}
        votes.append(predicted[[position[i] for i in first.ids]])
    votes = np.stack(votes)
    num_classes = len(first.class_names)
    mean_probs = np.mean([t.probs for t in aligned], axis=0)
    winners, counts = majority_vote(votes, num_classes, mean_probs)
    shares = np.zeros((len(first), num_classes), dtype=np.float32)
    for voter in votes:
        shares[np.arange(len(first)), voter] += 1.0 / len(votes)
    table = ProbabilityTable(
        first.ids, first.splits, labels if labels is not None else np.full(len(first), -1), shares,
        first.class_names, source="ensemble(" + ",".join(str(p) for p in inputs) + ")",
    )
    return table, winners, counts


def write_ensemble(inputs: list[str | Path], split: str, output) -> tuple[ProbabilityTable, np.ndarray, np.ndarray]:
    """Majority vote of the inputs on one split, written as a CSV (id, split, prediction, votes) at `output` and
    the vote-share probability table beside it (.parquet). Returns what `ensemble` returns."""
    from mmclf.rundir import staged_file

    table, winners, counts = ensemble(inputs, split)
    output = Path(output)
    frame = pd.DataFrame({"id": table.ids, "split": table.splits,
                          "prediction": [table.class_names[w] for w in winners], "votes": counts})
    table.save(output.with_suffix(".parquet"))
    with staged_file(output) as staged:
        frame.to_csv(staged, index=False)
    return table, winners, counts
