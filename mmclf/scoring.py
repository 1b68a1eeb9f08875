"""The scores of mmclf, with numpy only: macro-F1 (the challenge metric), weighted-F1 and accuracy.

`macro_f1(labels, predictions)` is the one macro-F1 of the package: the training loop, the fusion
trainer, denoising, the demo and the benchmarks all call it with true and predicted class indices,
e.g. `macro_f1(labels, logits.argmax(1))`. Rows whose label is negative (-1: unknown) are left out.
"""

from __future__ import annotations

import numpy as np


def _class_indices(labels, predictions) -> tuple[np.ndarray, np.ndarray]:
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.ndim != 1 or labels.shape != predictions.shape:
        raise ValueError(f"labels {labels.shape} and predictions {predictions.shape} must be 1-d and the same length "
                         "(class indices: pass logits.argmax(1), not the logits)")
    for name, values in (("labels", labels), ("predictions", predictions)):
        if values.size and not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"{name} must be integer class indices, got dtype {values.dtype}")
    known = labels >= 0
    if (predictions[known] < 0).any():
        raise ValueError("predictions must be class indices >= 0")
    return labels[known].astype(np.int64), predictions[known].astype(np.int64)


def _f1_per_class(labels: np.ndarray, predictions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """F1 and support of every class present in labels or predictions (bincount: it runs once per fold and epoch)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    size = int(max(labels.max(), predictions.max())) + 1
    true_positives = np.bincount(labels[labels == predictions], minlength=size)
    support = np.bincount(labels, minlength=size)
    totals = support + np.bincount(predictions, minlength=size)
    present = totals > 0
    return 2 * true_positives[present] / totals[present], support[present]


def macro_f1(labels, predictions) -> float:
    """Macro-F1 of predicted class indices over the rows with a known label (>= 0), averaged over the classes
    present in those labels or predictions, as sklearn's f1_score(average="macro", zero_division=0).
    NaN when no row has a known label."""
    labels, predictions = _class_indices(labels, predictions)
    if len(labels) == 0:
        return float("nan")
    return float(_f1_per_class(labels, predictions)[0].mean())


def scores(labels, predictions) -> dict:
    """Macro-F1 (the challenge metric), support-weighted F1 and accuracy of the rows with a known label (>= 0);
    {} when there is none."""
    labels, predictions = _class_indices(labels, predictions)
    if len(labels) == 0:
        return {}
    f1, support = _f1_per_class(labels, predictions)
    return {"macro_f1": float(f1.mean()), "weighted_f1": float((f1 * support).sum() / support.sum()),
            "accuracy": float((labels == predictions).mean())}
