"""The one macro-F1 (mmclf.scoring), which the loop, fusion, denoising, the demo and the benchmarks share."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from mmclf import evaluation
from mmclf.scoring import macro_f1, scores
from mmclf.training import loop


def test_macro_f1_and_scores_match_sklearn():
    rng = np.random.default_rng(0)
    labels, predictions = rng.integers(0, 7, 300), rng.integers(1, 9, 300)
    assert macro_f1(labels, predictions) == pytest.approx(f1_score(labels, predictions, average="macro", zero_division=0))
    assert scores(labels, predictions) == pytest.approx({
        "macro_f1": f1_score(labels, predictions, average="macro", zero_division=0),
        "weighted_f1": f1_score(labels, predictions, average="weighted", zero_division=0),
        "accuracy": accuracy_score(labels, predictions)})


def test_unlabelled_rows_are_left_out():
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    assert macro_f1(np.array([0, 1, -1]), logits.argmax(1)) == 1.0
    assert np.isnan(macro_f1(np.array([-1, -1, -1]), logits.argmax(1)))
    assert scores(np.array([-1, -1]), np.array([0, 1])) == {}
    assert scores(np.array([0, 1, -1]), np.array([0, 0, 1])) == pytest.approx(
        {"macro_f1": 1 / 3, "weighted_f1": 1 / 3, "accuracy": 0.5})


def test_logits_or_mismatched_lengths_are_refused():
    logits = np.array([[2.0, 0.0], [0.0, 2.0]])
    with pytest.raises(ValueError, match="logits.argmax"):
        macro_f1(np.array([0, 1]), logits)
    with pytest.raises(ValueError, match="same length"):
        macro_f1(np.array([0, 1, 1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="integer class indices"):
        macro_f1(np.array([0, 1]), np.array([0.0, 1.0]))


def test_there_is_one_implementation():
    assert evaluation.macro_f1 is macro_f1 and evaluation.scores is scores
    assert loop.macro_f1 is macro_f1
