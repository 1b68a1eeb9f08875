import numpy as np
import pandas as pd
import pytest

from mmclf.cli import main
from mmclf.fusion.ensemble import ensemble, majority_vote
from mmclf.probability_tables import ProbabilityTable, TableMismatchError

CLASSES = ["10", "40", "50"]


def test_majority_vote_plain_winners_and_counts():
    votes = np.array([[0, 1, 2, 2], [0, 1, 1, 2], [1, 1, 2, 2]])
    winners, counts = majority_vote(votes, 3)
    assert winners.tolist() == [0, 1, 2, 2]
    assert counts.tolist() == [2, 3, 2, 3]


def test_tie_goes_to_lowest_class_index_without_scores():
    votes = np.array([[2, 1], [1, 2]])
    winners, counts = majority_vote(votes, 3)
    assert winners.tolist() == [1, 1]
    assert counts.tolist() == [1, 1]


def test_tie_goes_to_highest_score_among_tied_classes_only():
    votes = np.array([[2, 0, 1], [1, 2, 1], [0, 0, 2]])
    # row 0: votes 2, 1, 0 -> all tied at one vote -> highest score: class 2
    # row 1: votes 0, 2, 0 -> class 0 wins outright; class 1's high score does not matter
    # row 2: votes 1, 1, 2 -> class 1 wins outright although class 2 scores higher
    scores = np.array([[0.1, 0.2, 0.7], [0.0, 0.9, 0.1], [0.0, 0.0, 1.0]])
    winners, counts = majority_vote(votes, 3, scores)
    assert winners.tolist() == [2, 0, 1]
    assert counts.tolist() == [1, 2, 2]


def test_equal_scores_fall_back_to_lowest_index():
    votes = np.array([[2], [1]])
    winners, _ = majority_vote(votes, 3, np.array([[0.9, 0.3, 0.3]]))
    assert winners.tolist() == [1]  # class 0 has the best score but no votes


def test_bad_vote_input_is_refused():
    with pytest.raises(ValueError, match="class indices"):
        majority_vote(np.array([[0, 3]]), 3)
    with pytest.raises(ValueError, match="shape"):
        majority_vote(np.array([[0, 1]]), 3, np.zeros((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        majority_vote(np.array([[0]]), 3, np.array([[np.nan, 0, 0]]))


def write_fusion_dir(root, name, ids, votes, probs, split="test"):
    run = root / name
    (run / "probs").mkdir(parents=True)
    ProbabilityTable(ids, [split] * len(ids), [-1] * len(ids), probs, CLASSES, source=name).save(
        run / "probs" / f"{split}.parquet"
    )
    pd.DataFrame({"id": ids, "split": split, "prediction": [CLASSES[v] for v in votes], "votes": 8}).to_csv(
        run / "predictions.csv", index=False
    )
    return run


def test_ensemble_cli_votes_over_fusion_dirs_tables_and_csv(tmp_path):
    ids = ["a", "b", "c"]
    flat = np.full((3, 3), 1 / 3)
    # fusion dir votes come from predictions.csv, not from the argmax of its probabilities
    run1 = write_fusion_dir(tmp_path, "run1", ids, [0, 1, 2], flat)
    run2 = write_fusion_dir(tmp_path, "run2", ids, [0, 2, 1], np.array([[1, 0, 0], [0, 0.2, 0.8], [0, 0.9, 0.1]]))
    # a probability table voter, rows in another order
    table = ProbabilityTable(["c", "a", "b"], ["test"] * 3, [-1] * 3,
                             np.array([[0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4]]), CLASSES, source="t")
    table.save(tmp_path / "t.parquet")
    pd.DataFrame({"id": ["b", "a", "c"], "prediction": ["10", "10", "40"]}).to_csv(tmp_path / "v.csv", index=False)
    out = tmp_path / "out" / "predictions.csv"
    code = main(["ensemble", "--inputs", str(run1), str(run2), str(tmp_path / "t.parquet"), str(tmp_path / "v.csv"),
                 "--split", "test", "--out", str(out)])
    assert code == 0
    result = pd.read_csv(out, dtype=str)
    # a: 0,0,1,0 -> 10 (3 votes); b: 1,2,2,0 -> 50 (2 votes);
    # c: 2,1,1,1 -> 40 (3 votes)
    assert result["id"].tolist() == ids
    assert result["prediction"].tolist() == ["10", "50", "40"]
    assert result["votes"].astype(int).tolist() == [3, 2, 3]
    shares = ProbabilityTable.load(out.with_suffix(".parquet"))
    np.testing.assert_allclose(shares.probs[1], [0.25, 0.25, 0.5])


def test_ensemble_tie_break_uses_mean_probabilities(tmp_path):
    ids = ["a"]
    run1 = write_fusion_dir(tmp_path, "run1", ids, [0], np.array([[0.5, 0.1, 0.4]]))
    run2 = write_fusion_dir(tmp_path, "run2", ids, [2], np.array([[0.2, 0.1, 0.7]]))
    _, winners, counts = ensemble([run1, run2], "test")
    assert winners.tolist() == [2]  # mean probs: 0.35 vs 0.55
    assert counts.tolist() == [1]


def test_ensemble_refuses_mismatched_inputs(tmp_path, capsys):
    run1 = write_fusion_dir(tmp_path, "run1", ["a", "b"], [0, 1], np.full((2, 3), 1 / 3))
    run2 = write_fusion_dir(tmp_path, "run2", ["a", "z"], [0, 1], np.full((2, 3), 1 / 3))
    with pytest.raises(TableMismatchError, match="sample ids differ"):
        ensemble([run1, run2], "test")
    other = ProbabilityTable(["a", "b"], ["test"] * 2, [-1] * 2, np.full((2, 3), 1 / 3), ["10", "50", "40"])
    other.save(tmp_path / "other.parquet")
    code = main(["ensemble", "--inputs", str(run1), str(tmp_path / "other.parquet"), "--out", str(tmp_path / "o.csv")])
    assert code == 2
    assert "class order differs" in capsys.readouterr().err


def test_ensemble_csv_with_unknown_class_or_empty_file(tmp_path):
    run1 = write_fusion_dir(tmp_path, "run1", ["a"], [0], np.full((1, 3), 1 / 3))
    pd.DataFrame({"id": ["a"], "prediction": ["99"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="unknown class '99'"):
        ensemble([run1, tmp_path / "bad.csv"], "test")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        ensemble([run1, tmp_path / "empty.csv"], "test")
