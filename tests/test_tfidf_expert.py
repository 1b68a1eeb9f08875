"""The classic text expert (TF-IDF n-grams + a linear classifier): training, folds, saving without pickle, reload,
prediction from raw listings, fusion and pipelines."""

import json
import sys
from functools import partial

import numpy as np
import pytest
import scipy.sparse as sp

from mmclf import MultimodalPipeline
from mmclf.cli import main
from mmclf.experts import load_expert
from mmclf.experts.tfidf import BLOCKS, TfidfExpert, analyse, documents, normalise
from mmclf.fusion.decision import fit_decision_fusion
from mmclf.inference import expert_probabilities
from mmclf.probability_tables import ProbabilityTable
from mmclf.rundir import LOCK_FILE
from mmclf.testing import CLASS_NAMES, make_dataset_dict

HTML_TITLE = "<b>Piscine</b> tubulaire &amp; pompe &eacute;t&eacute;"


@pytest.fixture(scope="module")
def tfidf_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfidf")
    dataset = make_dataset_dict(train_rows=120, validation_rows=40, test_rows=30)
    # raw HTML in a title (a dataset not made by build-dataset) and empty descriptions (every third row)
    dataset["test"] = dataset["test"].map(lambda row, i: {"title": HTML_TITLE} if i == 0 else {}, with_indices=True)
    dataset.save_to_disk(str(root / "ds"))
    run_dir = root / "run"
    assert main(["train", "--config", "text-tfidf", f"dataset={root / 'ds'}", f"output_dir={run_dir}", "folds=3",
                 "model.min_df=1"]) == 0
    return root, dataset, run_dir


def test_run_directory_tables_and_folds(tfidf_run):
    _, dataset, run_dir = tfidf_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert len(metrics["folds"]) == 3 and metrics["oof_macro_f1"] > 0.9  # the fixture's words name the class
    assert metrics["best_epoch"] == 1 and metrics["epochs"][0]["eval_rows"] == 40
    for split, rows in (("validation", 40), ("test", 30)):
        table = ProbabilityTable.load(run_dir / "probs" / f"{split}.parquet")
        assert table.ids == list(dataset[split]["id"]) and table.class_names == CLASS_NAMES
        np.testing.assert_allclose(table.probs.sum(axis=1), 1.0, rtol=1e-5)
    oof = ProbabilityTable.load(run_dir / "probs" / "oof.parquet")
    assert sorted(oof.ids) == sorted([*dataset["train"]["id"], *dataset["validation"]["id"]])
    assert set(oof.splits) == {"train", "validation"} and oof.expert_name == "run"
    assert "training:\n  eval_batch_size: 256\n" in (run_dir / "config.yaml").read_text()
    for fold in range(3):  # each fold's folder released as soon as the fold is done (an empty lock file)
        assert (run_dir / "folds" / str(fold) / LOCK_FILE).read_text() == ""


def test_saved_without_pickle_and_reload_gives_identical_probabilities(tfidf_run, monkeypatch):
    _, dataset, run_dir = tfidf_run
    assert {p.name for p in (run_dir / "model").iterdir()} == {
        "mmclf_expert.json", "README.md", "vocabulary.parquet", "model.safetensors"}
    assert not [p for p in run_dir.rglob("*") if p.suffix in (".pkl", ".pickle", ".joblib", ".bin")]
    monkeypatch.setitem(sys.modules, "sklearn", None)  # loading and predicting need no scikit-learn at all
    expert = load_expert(run_dir / "model")
    saved = ProbabilityTable.load(run_dir / "probs" / "test.parquet")
    np.testing.assert_array_equal(expert_probabilities(expert, dataset["test"]), saved.probs)


def test_predict_expert_writes_the_same_table(tfidf_run, tmp_path):
    root, _, run_dir = tfidf_run
    assert main(["predict-expert", "--model", str(run_dir / "model"), "--dataset", str(root / "ds"), "--split", "test",
                 "--out", str(tmp_path / "test.parquet")]) == 0
    written, saved = ProbabilityTable.load(tmp_path / "test.parquet"), ProbabilityTable.load(run_dir / "probs" / "test.parquet")
    assert written.ids == saved.ids
    np.testing.assert_array_equal(written.probs, saved.probs)


def test_probabilities_match_scikit_learns_own_pipeline():
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    dataset = make_dataset_dict(train_rows=80, validation_rows=0, test_rows=30)
    expert = TfidfExpert.build({"min_df": 1, "title_weight": 3, "classifier": "logistic", "C": 20.0,
                                "class_weight": None, "calibration": "none"}, CLASS_NAMES)
    expert.fit(dataset["train"])
    config = expert.config
    train_docs = documents(dataset["train"]["title"], dataset["train"]["description"], config)
    test_docs = documents(dataset["test"]["title"], dataset["test"]["description"], config)
    vectorizers = [TfidfVectorizer(analyzer=partial(analyse, block=block, config=config), min_df=1,
                                   max_features=config["max_features"], sublinear_tf=True) for block in BLOCKS]
    train_x = sp.hstack([v.fit_transform(train_docs) for v in vectorizers], format="csr")
    test_x = sp.hstack([v.transform(test_docs) for v in vectorizers], format="csr")
    np.testing.assert_allclose(expert.features(dataset["test"]["title"], dataset["test"]["description"]).toarray(),
                               test_x.toarray(), atol=1e-6)
    classifier = LogisticRegression(C=config["C"], max_iter=config["max_iter"], tol=config["tol"])
    classifier.fit(train_x, dataset["train"]["label"])
    np.testing.assert_allclose(expert_probabilities(expert, dataset["test"]), classifier.predict_proba(test_x),
                               atol=1e-5)


def test_text_is_cleaned_and_empty_fields_work(tfidf_run):
    _, _, run_dir = tfidf_run
    assert normalise("<p>Caf&eacute;  CR&Egrave;ME</p>", strip_accents=True) == "cafe creme"
    expert = load_expert(run_dir / "model")
    rows = [{"title": HTML_TITLE, "description": ""}, {"title": "Piscine tubulaire & pompe été", "description": None},
            {"title": "", "description": ""}]
    probs = expert_probabilities(expert, rows)
    np.testing.assert_array_equal(probs[0], probs[1])  # HTML decoded and stripped like the dataset build does
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert CLASS_NAMES[probs[0].argmax()] == "2583"  # piscine, pompe: the fixture's words of class 2583


def test_out_of_fold_tables_fuse_and_feed_a_pipeline(tfidf_run, tmp_path):
    _, dataset, run_dir = tfidf_run
    oof = ProbabilityTable.load(run_dir / "probs" / "oof.parquet")
    # a second expert that knows nothing: its table is uniform on every row
    blind = ProbabilityTable(oof.ids, oof.splits, oof.labels, np.full_like(oof.probs, 0.25), oof.class_names,
                             source="blind")
    blind.save(tmp_path / "blind.parquet")
    assert main(["fuse", "--tables", str(run_dir / "probs" / "oof.parquet"), str(tmp_path / "blind.parquet"),
                 "--folds", "3", "--epochs", "10", "--out", str(tmp_path / "fusion")]) == 0
    cv = json.loads((tmp_path / "fusion" / "cv_metrics.json").read_text())
    tfidf_f1 = json.loads((run_dir / "metrics.json").read_text())["oof_macro_f1"]
    assert cv["expert_macro_f1"] == {"run": pytest.approx(tfidf_f1), "blind": pytest.approx(0.1)}
    assert cv["oof_macro_f1"] >= tfidf_f1
    model = fit_decision_fusion({"run": oof}, folds=3, epochs=5, progress=False)
    model.save_pretrained(tmp_path / "alone")
    pipeline = MultimodalPipeline.from_folders({"run": run_dir / "model"}, [tmp_path / "alone"])
    saved = pipeline.save_pretrained(tmp_path / "pipeline")
    assert not [p for p in saved.rglob("*") if p.suffix in (".pkl", ".pickle", ".joblib")]
    codes = MultimodalPipeline.from_pretrained(saved).predict(dataset["test"])
    assert codes == pipeline.predict(dataset["test"]) and len(codes) == 30
    assert not pipeline.uses_images


def test_recipe_errors(tfidf_run, tmp_path, capsys):
    root, _, _ = tfidf_run
    run = ["train", "--config", "text-tfidf", f"dataset={root / 'ds'}", f"output_dir={tmp_path / 'run'}"]
    assert main([*run, "training.lr=0.1"]) == 2  # no gradient loop: no learning rate
    assert "unknown config key 'training.lr'" in capsys.readouterr().err
    assert main([*run, "model.title_weight=1.5"]) == 2
    assert "model.title_weight must be an integer >= 1" in capsys.readouterr().err
    dataset = make_dataset_dict(train_rows=12, validation_rows=4, test_rows=0)
    with pytest.raises(ValueError, match="tfidf expert, word n-grams: "):
        TfidfExpert.build({"min_df": 50}, CLASS_NAMES).fit(dataset["train"])
    with pytest.raises(ValueError, match="the tfidf expert is not fitted"):
        expert_probabilities(TfidfExpert.build({}, CLASS_NAMES), [{"title": "x", "description": ""}])
    with pytest.raises(ValueError, match="no dense pooled features"):
        TfidfExpert.build({}, CLASS_NAMES).features_batch({})
