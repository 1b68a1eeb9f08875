import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import f1_score

from mmclf.cli import main
from mmclf.evaluation import macro_f1
from mmclf.fusion.decision import FusionHead, FusionModel, fit_decision_fusion
from mmclf.probability_tables import ProbabilityTable, TableMismatchError
from mmclf.testing import half_expert_tables, missing_modality_tables

FAST = {"epochs": 25, "batch_size": 32, "progress": False}


@pytest.fixture(scope="module")
def trained():
    tables = half_expert_tables(480, 6, seed=0)
    model = fit_decision_fusion(tables, folds=4, **FAST)
    return tables, model


def test_fusion_learns_which_expert_to_trust(trained):
    _, model = trained
    test = half_expert_tables(400, 6, seed=1, split="test", id_prefix="t")
    labels = test[0].labels
    for table in test:
        assert macro_f1(labels, table.predictions()) < 0.65
    winners, votes, mean_probs = model.predict(test)
    assert macro_f1(labels, winners) > 0.9
    assert model.cv_metrics["oof_macro_f1"] > 0.9
    assert all(score < 0.65 for score in model.cv_metrics["expert_macro_f1"].values())
    assert votes.min() >= 1 and votes.max() <= 4
    np.testing.assert_allclose(mean_probs.sum(axis=1), 1.0, rtol=1e-5)


def test_macro_f1_matches_sklearn():
    rng = np.random.default_rng(0)
    labels, predictions = rng.integers(0, 7, 300), rng.integers(1, 9, 300)
    expected = f1_score(labels, predictions, average="macro", zero_division=0)
    assert macro_f1(labels, predictions) == pytest.approx(expected)


def test_folds_are_stratified_and_out_of_fold_covers_every_row(trained):
    tables, model = trained
    folds = model.cv_metrics["folds"]
    assert len(model.heads) == len(folds) == 4
    assert sum(f["eval_rows"] for f in folds) == len(tables[0])
    assert all(f["train_rows"] + f["eval_rows"] == len(tables[0]) for f in folds)
    assert all(1 <= f["best_epoch"] <= FAST["epochs"] for f in folds)
    assert all(len(f["history"]) == FAST["epochs"] for f in folds)
    # the kept epoch is the best one on the held-out part
    for f in folds:
        assert f["best_eval_macro_f1"] == max(h["eval_macro_f1"] for h in f["history"])
    assert model.oof.ids == tables[0].ids
    np.testing.assert_array_equal(model.oof.labels, tables[0].labels)
    assert model.cv_metrics["oof_macro_f1"] == pytest.approx(macro_f1(model.oof.labels, model.oof.predictions()))


def test_fold_vote_tie_break_uses_mean_probability():
    heads = []
    for bias in ([0.0, 1.0, 0.0], [0.0, 0.0, 2.0]):
        head = FusionHead(["a", "b", "c"], ["x"], hidden_size=0)
        with torch.no_grad():
            head.layers[0].weight.zero_()
            head.layers[0].bias.copy_(torch.tensor(bias))
        heads.append(head)
    model = FusionModel(heads=heads, options={})
    table = ProbabilityTable(["r"], ["test"], [-1], [[1.0, 0.0, 0.0]], ["a", "b", "c"], source="x")
    winners, votes, mean_probs = model.predict([table])
    # one vote each for b and c; c has the higher mean softmax probability
    assert winners.tolist() == [2] and votes.tolist() == [1]
    assert mean_probs[0, 2] > mean_probs[0, 1]


def test_training_is_seeded(trained):
    tables, model = trained
    again = fit_decision_fusion(tables, folds=4, **FAST)
    for a, b in zip(model.heads, again.heads):
        for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
            assert torch.equal(x, y), name


def test_two_layer_head_and_save_reload_identical(trained, tmp_path):
    tables, _ = trained
    model = fit_decision_fusion(tables, folds=3, hidden_size=6, **FAST)
    assert model.heads[0].layers[0].out_features == 6
    head = model.heads[0]
    head.save_pretrained(tmp_path / "head")
    reloaded_head = FusionHead.from_pretrained(tmp_path / "head")
    assert reloaded_head.class_names == head.class_names and reloaded_head.expert_names == ["expert0", "expert1"]
    x = torch.rand(5, 12)
    with torch.no_grad():
        assert torch.equal(head(x), reloaded_head(x))
    model.save_pretrained(tmp_path / "fusion")
    reloaded = FusionModel.from_pretrained(tmp_path / "fusion")
    assert reloaded.options["hidden_size"] == 6 and len(reloaded.heads) == 3
    for before, after in zip(model.predict(tables), reloaded.predict(tables)):
        np.testing.assert_array_equal(before, after)


def test_refuses_mismatched_or_unlabelled_tables():
    a, b = half_expert_tables(60, 4)
    reordered = ProbabilityTable(b.ids, b.splits, b.labels, b.probs, list(reversed(b.class_names)))
    with pytest.raises(TableMismatchError, match="class order"):
        fit_decision_fusion([a, reordered], folds=2, **FAST)
    with pytest.raises(TableMismatchError, match="sample ids differ"):
        fit_decision_fusion([a, b.select(range(59))], folds=2, **FAST)
    resplit = ProbabilityTable(b.ids, ["train"] * len(b), b.labels, b.probs, b.class_names)
    with pytest.raises(TableMismatchError, match="split differs"):
        fit_decision_fusion([a, resplit], folds=2, **FAST)
    unlabelled = [ProbabilityTable(t.ids, t.splits, [-1] * len(t), t.probs, t.class_names, t.source) for t in (a, b)]
    with pytest.raises(ValueError, match="no labelled rows"):
        fit_decision_fusion(unlabelled, folds=2, **FAST)


def test_rare_class_reduces_folds_with_warning_or_errors():
    a, b = half_expert_tables(80, 4)
    labels = a.labels.copy()
    labels[labels == 3] = 2
    labels[[0, 1, 2]] = 3  # class 3 has exactly three rows
    tables = [ProbabilityTable(t.ids, t.splits, labels, t.probs, t.class_names, t.source) for t in (a, b)]
    with pytest.warns(UserWarning, match="using 3 folds instead of 8"):
        model = fit_decision_fusion(tables, folds=8, **FAST)
    assert len(model.heads) == 3 and model.options["folds_used"] == 3 and model.options["folds_requested"] == 8
    labels[[1, 2]] = 2  # now a single row of class 3
    tables = [ProbabilityTable(t.ids, t.splits, labels, t.probs, t.class_names, t.source) for t in (a, b)]
    with pytest.raises(ValueError, match="class '40' has a single labelled row"):
        fit_decision_fusion(tables, folds=4, **FAST)


def test_fuse_cli_end_to_end(tmp_path, capsys):
    train = half_expert_tables(240, 4, seed=0, split="validation")
    test = half_expert_tables(50, 4, seed=1, split="test", id_prefix="t")
    train_paths, test_paths = [], []
    for i, (tr, te) in enumerate(zip(train, test)):
        # the unlabelled test rows inside the training tables are ignored
        combined = ProbabilityTable(tr.ids + te.ids, tr.splits + te.splits, list(tr.labels) + [-1] * len(te),
                                    np.concatenate([tr.probs, te.probs]), tr.class_names, source=f"expert{i}")
        train_paths.append(str(combined.save(tmp_path / f"expert{i}_all.parquet")))
        test_paths.append(str(te.save(tmp_path / f"expert{i}_test.parquet")))
    out = tmp_path / "fusion"
    code = main(["fuse", "--tables", *train_paths, "--predict-tables", *test_paths, "--out", str(out),
                 "--folds", "3", "--epochs", "20", "--batch-size", "32", "--hidden-size", "6"])
    assert code == 0, capsys.readouterr().err
    config = json.loads((out / "fusion.json").read_text())
    assert config["folds_used"] == 3 and config["hidden_size"] == 6 and config["lr"] == 0.01
    assert config["class_names"] == ["10", "20", "30", "40"] and config["expert_names"] == ["expert0", "expert1"]
    assert config["tables"] == train_paths
    for fold in range(3):
        assert (out / "folds" / str(fold) / "model.safetensors").is_file()
        assert json.loads((out / "folds" / str(fold) / "config.json").read_text())["hidden_size"] == 6
    cv = json.loads((out / "cv_metrics.json").read_text())
    assert len(cv["folds"]) == 3 and cv["oof_macro_f1"] > 0.85
    oof = ProbabilityTable.load(out / "probs" / "oof.parquet")
    assert sorted(oof.ids) == sorted(train[0].ids) and set(oof.splits) == {"validation"}
    fused = ProbabilityTable.load(out / "probs" / "test.parquet")
    assert fused.ids == test[0].ids and fused.class_names == ["10", "20", "30", "40"]
    predictions = pd.read_csv(out / "predictions.csv", dtype={"prediction": str})
    assert list(predictions.columns) == ["id", "split", "prediction", "votes"]
    winners, votes, mean_probs = FusionModel.from_pretrained(out).predict(test)
    assert predictions["votes"].tolist() == votes.tolist() and predictions["votes"].between(1, 3).all()
    assert predictions["prediction"].tolist() == [fused.class_names[w] for w in winners]
    np.testing.assert_allclose(fused.probs, mean_probs, rtol=1e-6)
    assert macro_f1(test[0].labels, winners) > 0.85


def test_fuse_cli_train_splits_and_mismatch_errors(tmp_path, capsys):
    a, b = half_expert_tables(40, 4)
    a.save(tmp_path / "a.parquet")
    ProbabilityTable(b.ids, b.splits, b.labels, b.probs, ["10", "20", "40", "30"]).save(tmp_path / "b.parquet")
    code = main(["fuse", "--tables", str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet"), "--out", str(tmp_path)])
    assert code == 2 and "class order differs" in capsys.readouterr().err
    code = main(["fuse", "--tables", str(tmp_path / "a.parquet"), "--train-splits", "train", "--out", str(tmp_path)])
    assert code == 2 and "no rows of splits ['train']" in capsys.readouterr().err
    code = main(["fuse", "--tables", str(tmp_path / "missing.parquet"), "--out", str(tmp_path)])
    assert code == 2 and "not found" in capsys.readouterr().err


def test_predict_tables_in_another_order_are_matched_by_name(tmp_path, capsys):
    train = half_expert_tables(80, 4, seed=0)
    test = half_expert_tables(30, 4, seed=1, split="test", id_prefix="t")
    paths = {}
    for name, tables in (("train", train), ("test", test)):
        for i, table in enumerate(tables):
            paths[name, i] = str(table.save(tmp_path / f"{name}{i}.parquet"))
    common = ["--tables", paths["train", 0], paths["train", 1], "--folds", "3", "--epochs", "5", "--seed", "1"]
    assert main(["fuse", *common, "--predict-tables", paths["test", 0], paths["test", 1], "--out",
                 str(tmp_path / "same")]) == 0
    assert main(["fuse", *common, "--predict-tables", paths["test", 1], paths["test", 0], "--out",
                 str(tmp_path / "swapped")]) == 0
    same = pd.read_csv(tmp_path / "same" / "predictions.csv")
    assert same.equals(pd.read_csv(tmp_path / "swapped" / "predictions.csv"))
    capsys.readouterr()
    # names that cannot be matched: refused, nothing predicted
    assert main(["fuse", *common, "--predict-tables", paths["test", 0], f"other={paths['test', 1]}", "--out",
                 str(tmp_path / "bad")]) == 2
    assert "predict_tables come from experts ['expert0', 'other'] but tables from ['expert0', 'expert1']" \
        in capsys.readouterr().err
    # two tables of experts with the same name must be named apart
    assert main(["fuse", "--tables", paths["train", 0], paths["train", 0], "--out", str(tmp_path / "dup")]) == 2
    assert "two tables come from experts named 'expert0'" in capsys.readouterr().err
    assert main(["fuse", "--tables", f"a={paths['train', 0]}", f"b={paths['train', 1]}", "--folds", "3", "--epochs",
                 "2", "--out", str(tmp_path / "named")]) == 0
    assert json.loads((tmp_path / "named" / "fusion.json").read_text())["expert_names"] == ["a", "b"]


def test_fusion_never_loses_to_its_best_expert_when_another_sees_its_modality_on_few_rows(tmp_path):
    tables = missing_modality_tables(1500, seed=0)  # the image expert is uninformative on 88 % of the rows
    text, image = (macro_f1(t.labels, t.predictions()) for t in tables)
    assert image < 0.1 and text > 0.4
    for hidden_size in (0, 6):
        model = fit_decision_fusion(tables, hidden_size=hidden_size, progress=False)
        assert model.cv_metrics["oof_macro_f1"] >= text, hidden_size
    weights = torch.stack([head.expert_weights for head in model.heads]).detach()
    assert (weights[:, 0] > weights[:, 1]).all()  # every fold head learnt to trust the text expert more
    model.save_pretrained(tmp_path / "fusion")
    reloaded = FusionModel.from_pretrained(tmp_path / "fusion")
    assert (reloaded.options["start"], reloaded.options["class_weight"]) == ("mean", "balanced")
    np.testing.assert_array_equal(reloaded.predict(tables)[2], model.predict(tables)[2])
    # the paper's head (probabilities, random start, plain cross-entropy) stays an option; here it falls far behind
    paper = fit_decision_fusion(tables, start="random", class_weight=None, progress=False)
    assert paper.cv_metrics["oof_macro_f1"] < text - 0.1
