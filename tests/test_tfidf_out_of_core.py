"""The TF-IDF expert's out-of-core mode: hashed n-grams and a linear SVM trained by SGD in passes over chunks of
rows. Saved without pickle, reloaded without scikit-learn, bounded by the chunk, deterministic, close to the
in-memory mode's macro-F1, and usable in fusion and pipelines like the in-memory mode."""

import json
import sys
import zlib

import numpy as np
import pytest
from datasets import Value

from mmclf import MultimodalPipeline
from mmclf.cli import main
from mmclf.demo_catalog import generate_catalog
from mmclf.experts import load_expert, tfidf_out_of_core
from mmclf.experts.tfidf import TfidfExpert
from mmclf.fusion.decision import fit_decision_fusion
from mmclf.inference import expert_probabilities
from mmclf.probability_tables import ProbabilityTable
from mmclf.scoring import macro_f1
from mmclf.testing import CLASS_NAMES, demo_split, make_dataset_dict

SMALL = {"mode": "out_of_core", "min_df": 1, "out_of_core": {"hash_bits": 12, "chunk_rows": 32, "passes": 3}}
DEMO_ROWS, DEMO_OUT_OF_CORE = 5000, {"hash_bits": 16, "passes": 8}  # measured: macro-F1 0.574 in memory, 0.571 out of core
SMALL_OVERRIDES = ["model.out_of_core.hash_bits=12", "model.out_of_core.chunk_rows=32", "model.out_of_core.passes=3"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfidf-ooc")
    dataset = make_dataset_dict(train_rows=150, validation_rows=50, test_rows=30)
    dataset.save_to_disk(str(root / "ds"))
    run_dir = root / "run"
    assert main(["train", "--config", "text-tfidf-out-of-core", f"dataset={root / 'ds'}", f"output_dir={run_dir}",
                 "folds=2", *SMALL_OVERRIDES]) == 0
    return root, dataset, run_dir


def test_folds_save_reload_without_scikit_learn_and_predict_identically(run, monkeypatch):
    _, dataset, run_dir = run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len(metrics["folds"]) == 2 and metrics["oof_macro_f1"] > 0.9  # the fixture's words name the class
    assert {p.name for p in (run_dir / "model").iterdir()} == {"mmclf_expert.json", "README.md", "model.safetensors"}
    assert not [p for p in run_dir.rglob("*") if p.suffix in (".pkl", ".pickle", ".joblib", ".bin")]
    info = json.loads((run_dir / "model" / "mmclf_expert.json").read_text())
    assert info["config"]["mode"] == "out_of_core" and info["config"]["out_of_core"]["hash_bits"] == 12
    held_out = info["metadata"]["out_of_core"]["held_out_rows"]
    assert 0 < held_out < 30 and info["metadata"]["out_of_core"]["training_rows"] + held_out == 150
    assert info["metadata"]["calibration"]["held_out_log_loss"] <= info["metadata"]["calibration"][
        "held_out_log_loss_uncalibrated"]
    monkeypatch.setitem(sys.modules, "sklearn", None)  # loading and predicting need no scikit-learn at all
    expert = load_expert(run_dir / "model")
    assert expert.coef.shape == (len(CLASS_NAMES), 2 * 4096) and expert.vocabularies is None
    probs = expert_probabilities(expert, dataset["test"])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(probs, ProbabilityTable.load(run_dir / "probs" / "test.parquet").probs)
    oof = ProbabilityTable.load(run_dir / "probs" / "oof.parquet")
    assert sorted(oof.ids) == sorted([*dataset["train"]["id"], *dataset["validation"]["id"]])


def test_buckets_and_signs_are_crc32_of_the_utf8_term():
    """The hash is fixed by the CRC-32 standard: the same buckets in every process and on every platform."""
    config = {"title_weight": 1, "word_ngrams": [1, 1], "char_ngrams": [2, 2], "out_of_core": {"hash_bits": 12}}
    counts = tfidf_out_of_core.hashed_counts([("été été", "")], "word", config)
    code = zlib.crc32("été".encode())
    assert code == 1154575572  # a literal: a change of hash function would move every saved model's buckets
    assert code >> 31 == 0  # top bit clear: a positive sign
    assert counts.indices.tolist() == [code & 4095]
    np.testing.assert_allclose(counts.data, [1 + np.log(2)], rtol=1e-6)  # sublinear tf of 2 occurrences


def test_fitting_holds_one_chunk_of_rows_at_a_time(monkeypatch):
    from sklearn.linear_model import SGDClassifier

    seen, analysed = [], []
    partial_fit, hashed_counts = SGDClassifier.partial_fit, tfidf_out_of_core.hashed_counts
    monkeypatch.setattr(SGDClassifier, "partial_fit",
                        lambda self, x, y, **kw: seen.append(x.shape) or partial_fit(self, x, y, **kw))
    monkeypatch.setattr(tfidf_out_of_core, "hashed_counts",
                        lambda pairs, *a: analysed.append(len(pairs)) or hashed_counts(pairs, *a))
    train = make_dataset_dict(train_rows=150, validation_rows=0, test_rows=0)["train"]
    expert = TfidfExpert.build(SMALL, CLASS_NAMES)
    expert.fit(train)
    rows = expert.metadata["out_of_core"]["training_rows"]
    assert max(r for r, _ in seen) <= 32 and max(analysed) <= 32
    assert sum(r for r, _ in seen) == 3 * rows and len(seen) == 3 * -(-rows // 32)  # every row once per pass
    assert {f for _, f in seen} == {2 * 4096}


def test_the_same_seed_gives_identical_weights():
    train = make_dataset_dict(train_rows=90, validation_rows=0, test_rows=0)["train"]
    first, second, other = (TfidfExpert.build({**SMALL, "seed": seed}, CLASS_NAMES) for seed in (0, 0, 1))
    for expert in (first, second, other):
        expert.fit(train)
    np.testing.assert_array_equal(first.coef, second.coef)
    np.testing.assert_array_equal(first.intercept, second.intercept)
    assert not np.array_equal(first.coef, other.coef)


@pytest.mark.slow  # about 30 s: both modes fitted on 5,000 rows
def test_macro_f1_on_the_demo_catalog_is_within_0_02_of_the_in_memory_mode(tmp_path):
    summary = generate_catalog(tmp_path, rows=DEMO_ROWS, test_rows=1000, seed=0, image_size=16, overwrite=True,
                               progress=False)
    class_names = list(summary["class_counts"]["train"])
    train, test = demo_split(tmp_path, "train", class_names), demo_split(tmp_path, "test", class_names)
    labels, scores = np.asarray(test["label"]), {}
    for mode, extra in (("in_memory", {}), ("out_of_core", {"out_of_core": DEMO_OUT_OF_CORE})):
        expert = TfidfExpert.build({"mode": mode, **extra}, class_names)
        expert.fit(train)
        scores[mode] = macro_f1(labels, expert_probabilities(expert, test).argmax(axis=1))
    print(scores)  # the measured macro-F1 of both modes, for the record
    assert scores["in_memory"] > 0.4  # a catalog where both are meaningful (27 classes: chance is about 0.04)
    assert abs(scores["out_of_core"] - scores["in_memory"]) <= 0.02


def test_it_fuses_and_feeds_a_pipeline(run, tmp_path):
    _, dataset, run_dir = run
    oof = ProbabilityTable.load(run_dir / "probs" / "oof.parquet")
    fusion = fit_decision_fusion({"run": oof}, folds=2, epochs=5, progress=False)
    fusion.save_pretrained(tmp_path / "fusion")
    pipeline = MultimodalPipeline.from_folders({"run": run_dir / "model"}, [tmp_path / "fusion"])
    saved = pipeline.save_pretrained(tmp_path / "pipeline")
    codes = MultimodalPipeline.from_pretrained(saved).predict(dataset["test"])
    assert codes == pipeline.predict(dataset["test"]) and len(codes) == 30
    truth = [CLASS_NAMES[label] for label in dataset["test"]["label"]]
    assert np.mean([c == t for c, t in zip(codes, truth)]) > 0.9
    # ONNX export: the fusion head exported, the hashed expert copied as it is, the same codes
    from mmclf.export import export_pipeline

    exported = export_pipeline(saved, tmp_path / "onnx", rows=dataset["test"])
    assert exported.backend == "onnx" and exported.predict(dataset["test"]) == codes


@pytest.mark.parametrize(("override", "message"), [
    ({"mode": "streaming"}, "model.mode must be one of in_memory, out_of_core"),
    ({"out_of_core": {"hash_bits": 30}}, "model.out_of_core.hash_bits must be an integer from 8 to 24"),
    ({"out_of_core": {"chunk_rows": 0}}, "model.out_of_core.chunk_rows must be an integer >= 1"),
    ({"out_of_core": {"passes": 2.5}}, "model.out_of_core.passes must be an integer >= 1"),
    ({"out_of_core": {"average": "yes"}}, "model.out_of_core.average must be true or false"),
    ({"out_of_core": {"holdout_fraction": 0.7}}, "model.out_of_core.holdout_fraction must be a number from 0"),
    ({"out_of_core": {"bits": 16}}, r"model.out_of_core: unknown key\(s\) \['bits'\]"),
    ({"mode": "out_of_core", "tune": True}, "model.tune: the search runs in model.mode: in_memory only"),
])
def test_bad_settings_are_named(override, message):
    with pytest.raises(ValueError, match=message):
        TfidfExpert.build(override, CLASS_NAMES)


def test_a_missing_label_names_the_row(tmp_path):
    train = make_dataset_dict(train_rows=40, validation_rows=0, test_rows=0)["train"]
    train = train.cast_column("label", Value("int64")).map(lambda row, i: {"label": -1} if i == 37 else {},
                                                          with_indices=True)
    with pytest.raises(ValueError, match=r"row 37 \(id 'tr37'\) has none"):
        TfidfExpert.build(SMALL, CLASS_NAMES).fit(train)
