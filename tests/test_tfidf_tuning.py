"""The classic text expert's linear SVM, its temperature calibration and its built-in search: calibration
measured on the demo catalog, a bounded and deterministic search, identical reloads."""

import json
import sys

import numpy as np
import pytest

from mmclf.cli import main
from mmclf.demo_catalog import generate_catalog
from mmclf.experts import load_expert, tfidf
from mmclf.experts.tfidf import TfidfExpert
from mmclf.inference import expert_probabilities
from mmclf.testing import CLASS_NAMES, demo_split, make_dataset_dict

SMALL_GRID = {"C": [0.5, 1.0], "class_weight": [None, "balanced"], "char_ngrams": [[2, 4], [2, 5]]}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo catalog's text: each listing's words carry only part of its class, so probabilities are uncertain."""
    catalog = tmp_path_factory.mktemp("catalog")
    summary = generate_catalog(catalog, rows=900, test_rows=300, seed=0, image_size=16, overwrite=True, progress=False)
    class_names = list(summary["class_counts"]["train"])
    return demo_split(catalog, "train", class_names), demo_split(catalog, "test", class_names), class_names


def log_loss(probs, labels) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())


def expected_calibration_error(probs, labels, bins: int = 10) -> float:
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    return float(sum(abs(correct[which == b].mean() - confidence[which == b].mean()) * (which == b).mean()
                     for b in range(bins) if (which == b).any()))


@pytest.mark.slow
def test_temperature_calibration_improves_held_out_log_loss_on_the_demo(demo):
    train, test, class_names = demo
    labels = np.asarray(test["label"])
    results = {}
    for calibration in ("none", "temperature"):
        expert = TfidfExpert.build({"classifier": "linear_svm", "calibration": calibration}, class_names)
        expert.fit(train)
        probs = expert_probabilities(expert, test)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
        results[calibration] = (log_loss(probs, labels), expected_calibration_error(probs, labels),
                                probs.argmax(axis=1), expert.metadata.get("calibration"))
    print({key: value[:2] for key, value in results.items()})  # the measured log-loss and ECE, for the record
    (raw_loss, raw_ece, raw_pred, _), (loss, ece, pred, fitted) = results["none"], results["temperature"]
    np.testing.assert_array_equal(pred, raw_pred)  # one temperature changes no decision
    assert fitted["oof_log_loss"] < fitted["oof_log_loss_uncalibrated"] and 0 < fitted["temperature"] < 1
    # a bare SVM's softmax is far too flat on this catalog (log-loss 2.47, ECE 0.49); the temperature brings
    # it close to the truth (1.44, 0.08)
    assert loss < 0.7 * raw_loss and ece < raw_ece / 3


@pytest.mark.slow
def test_search_is_bounded_deterministic_and_keeps_the_best(demo, monkeypatch):
    train, _, class_names = demo
    fits = []
    make = tfidf.make_classifier
    monkeypatch.setattr(tfidf, "make_classifier", lambda config: fits.append(dict(config)) or make(config))
    train = train.select(range(450))
    config = {"tune": True, "tune_grid": SMALL_GRID, "tune_folds": 2}
    first = TfidfExpert.build(config, class_names)
    first.fit(train)
    assert len(fits) == 2 * 2 * 2 * 2 + 1  # settings x inner folds, then the final fit (the winner calibrates)
    tuning = first.metadata["tuning"]
    scores = [s["cv_macro_f1"] for s in tuning["settings"]]
    assert len(scores) == 8 and all(0.1 < s < 1.0 for s in scores)
    best = tuning["settings"][int(np.argmax(scores))]
    assert tuning["chosen"] == {k: best[k] for k in tfidf.TUNED_KEYS}
    assert {k: first.config[k] for k in tfidf.TUNED_KEYS} == tuning["chosen"]
    assert {(f["C"], f["class_weight"]) for f in fits} == {(0.5, None), (0.5, "balanced"), (1.0, None), (1.0, "balanced")}

    second = TfidfExpert.build(config, class_names)
    second.fit(train)
    assert second.metadata["tuning"] == tuning
    np.testing.assert_array_equal(second.coef, first.coef)


@pytest.mark.slow
def test_search_selects_ngram_ranges_exactly(demo):
    """A range picked from the widest vocabulary gives the same model as fitting that range directly."""
    train, _, class_names = demo
    fixed = {"C": 0.5, "class_weight": "balanced", "calibration": "none"}
    searched = TfidfExpert.build({**fixed, "tune": True, "tune_grid": {"char_ngrams": [[2, 3]], "word_ngrams": [[1, 1]]}},
                                 class_names)
    direct = TfidfExpert.build({**fixed, "char_ngrams": [2, 3], "word_ngrams": [1, 1]}, class_names)
    searched.fit(train)
    direct.fit(train)
    assert searched.config["char_ngrams"] == [2, 3] and searched.vocabularies == direct.vocabularies
    np.testing.assert_allclose(searched.coef, direct.coef, atol=1e-5)


@pytest.mark.parametrize("recipe", ["text-tfidf", "text-tfidf-tuned"])
def test_default_and_tuned_runs_save_reload_and_predict_identically(recipe, tmp_path, monkeypatch):
    dataset = make_dataset_dict(train_rows=90, validation_rows=30, test_rows=30)
    dataset.save_to_disk(str(tmp_path / "ds"))
    run_dir = tmp_path / "run"
    assert main(["train", "--config", recipe, f"dataset={tmp_path / 'ds'}", f"output_dir={run_dir}", "model.min_df=1",
                 "model.tune_grid.C=[0.5,1.0]"]) == 0
    info = json.loads((run_dir / "model" / "mmclf_expert.json").read_text())
    assert ("tuning" in info["metadata"]) == (recipe == "text-tfidf-tuned")
    assert info["metadata"]["calibration"]["temperature"] > 0
    if recipe == "text-tfidf-tuned":
        assert len(info["metadata"]["tuning"]["settings"]) == 2 * 2 * 2
        assert info["config"]["C"] == info["metadata"]["tuning"]["chosen"]["C"]
    assert {p.name for p in (run_dir / "model").iterdir()} == {
        "mmclf_expert.json", "README.md", "vocabulary.parquet", "model.safetensors"}
    in_memory = TfidfExpert.build(info["config"], CLASS_NAMES)
    monkeypatch.setitem(sys.modules, "sklearn", None)  # loading and predicting need no scikit-learn
    expert = load_expert(run_dir / "model")
    assert expert.config == info["config"] and in_memory.config == info["config"]
    probs = expert_probabilities(expert, dataset["test"])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    from mmclf.probability_tables import ProbabilityTable

    np.testing.assert_array_equal(probs, ProbabilityTable.load(run_dir / "probs" / "test.parquet").probs)


@pytest.mark.parametrize(("override", "message"), [
    ({"classifier": "forest"}, "model.classifier must be one of linear_svm, logistic"),
    ({"calibration": "isotonic"}, "model.calibration must be one of temperature, none"),
    ({"calibration_folds": 1}, "model.calibration_folds must be an integer >= 2"),
    ({"tune_grid": {"alpha": [1]}}, r"model.tune_grid: unknown key\(s\) \['alpha'\]"),
    ({"tune_grid": {"C": []}}, "model.tune_grid.C must be a non-empty list"),
    ({"tune_grid": {"C": [0.5, -1]}}, "model.C must be > 0"),
    ({"tune_grid": {"char_ngrams": [[3, 5]]}}, "every range must start at 2, the smallest length of model.char_ngrams"),
])
def test_bad_settings_are_named(override, message):
    with pytest.raises(ValueError, match=message):
        TfidfExpert.build(override, CLASS_NAMES)
