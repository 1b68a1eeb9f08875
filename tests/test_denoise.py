import json
import shutil

import numpy as np
import pandas as pd
import pytest
from datasets import concatenate_datasets, load_from_disk
from PIL import Image

import mmclf.denoise.run
from mmclf.cli import main
from mmclf.denoise import (
    SECTIONS,
    check_denoise_config,
    choose_cut,
    cross_split_copies,
    find_data_issues,
    rank_label_issues,
)
from mmclf.probability_tables import ProbabilityTable
from mmclf.testing import CLASS_NAMES, make_dataset_dict
from mmclf.training.config import load_config
from mmclf.training.folds import fold_splits


def noisy_predictions(rows=3000, classes=8, flip_fraction=0.10, seed=0):
    """Probabilities of a good model (right ~92 % of the time) and labels with known flips."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, classes, rows)
    logits = rng.normal(0, 1, (rows, classes))
    logits[np.arange(rows), true] += 3.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    flipped = rng.choice(rows, round(flip_fraction * rows), replace=False)
    given = true.copy()
    given[flipped] = (true[flipped] + rng.integers(1, classes, len(flipped))) % classes
    return given, probs.astype(np.float32), flipped


def precision_recall(removed: np.ndarray, flipped: np.ndarray) -> tuple[float, float]:
    hits = len(set(np.flatnonzero(removed)) & set(flipped))
    return hits / max(1, removed.sum()), hits / len(flipped)


def test_ranking_finds_flipped_labels_at_both_cuts():
    given, probs, flipped = noisy_predictions()
    ranking = rank_label_issues(given, probs, "prune_by_noise_rate", "normalized_margin")
    everyone = np.ones(len(given), dtype=bool)
    assert sorted(ranking.order) == list(range(len(given))) and np.all(np.diff(ranking.scores[ranking.order]) >= 0)
    assert sorted(ranking.flagged_order) == np.flatnonzero(ranking.flagged).tolist()
    assert np.all(np.diff(ranking.scores[ranking.flagged_order]) >= 0)

    paper = choose_cut(ranking, everyone, 10, "flagged")
    assert paper.sum() == round(0.1 * ranking.flagged.sum()) and ranking.flagged[paper].all()
    precision, recall = precision_recall(paper, flipped)
    assert precision >= 0.97 and recall == pytest.approx(paper.sum() * precision / len(flipped))

    tenth = choose_cut(ranking, everyone, 10, "all")
    assert tenth.sum() == 300
    precision, recall = precision_recall(tenth, flipped)
    assert precision >= 0.8 and recall >= 0.8

    only_first_half = np.arange(len(given)) < 1500
    half = choose_cut(ranking, only_first_half, 10, "all")
    assert half.sum() == 150 and not half[1500:].any()


def test_a_cut_of_all_rows_takes_the_lowest_scores_flagged_or_not():
    given, probs, _ = noisy_predictions(rows=600, flip_fraction=0.02)
    ranking = rank_label_issues(given, probs, rank_by="self_confidence")
    removed = choose_cut(ranking, np.ones(600, dtype=bool), 30, "all")
    assert removed.sum() == 180 and (removed & ~ranking.flagged).any()
    assert ranking.scores[removed].max() <= ranking.scores[~removed].min()
    assert np.allclose(ranking.scores, probs[np.arange(600), given] / probs.sum(axis=1), atol=1e-6)


def test_cleanlab_warnings_name_the_class_code():
    given, probs, _ = noisy_predictions(rows=400, classes=4)
    given[given == 2] = 3
    given[7] = 2  # class 2 keeps a single row
    ranking = rank_label_issues(given, probs, class_names=CLASS_NAMES)
    assert any("class: 2 (code 1160)" in warning for warning in ranking.warnings), ranking.warnings


def test_folds_are_stratified_disjoint_and_cover_every_row_once():
    labels = np.repeat(np.arange(4), [40, 13, 9, 4])
    np.random.default_rng(0).shuffle(labels)
    folds = fold_splits(labels, 4, seed=3, class_names=CLASS_NAMES)
    held = np.concatenate([h for _, h in folds])
    assert sorted(held) == list(range(len(labels)))
    for train_rows, held_rows in folds:
        assert sorted(np.concatenate([train_rows, held_rows])) == list(range(len(labels)))
        for k, total in enumerate([40, 13, 9, 4]):
            assert abs((labels[held_rows] == k).sum() - total / 4) < 1
    with pytest.raises(ValueError, match=r"folds=5 needs at least 5 labelled rows of every class.*'2583': 4"):
        fold_splits(labels, 5, seed=0, class_names=CLASS_NAMES)


@pytest.mark.parametrize(("overrides", "message"), [
    (["denoise.cut.percent=0"], r"denoise.cut.percent must be in \(0, 100\)"),
    (["denoise.cut.percent=100", "denoise.cut.of=all"], r"denoise.cut.percent must be in \(0, 100\)"),
    (["denoise.cut.percent=150"], r"denoise.cut.percent must be in \(0, 100\)"),
    (["denoise.cut.of=most"], "denoise.cut.of must be 'flagged' or 'all'"),
    (["denoise.splits=[test]"], "denoise.splits must be a non-empty list"),
    (["denoise.filter_by=prune_by_noise"], "denoise.filter_by must be one of"),
    (["folds=1"], "set folds=4"),
])
def test_bad_denoise_config_is_an_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        check_denoise_config(load_config("denoise-tiny", overrides, SECTIONS))


def test_denoise_section_keys_are_strict():
    with pytest.raises(ValueError, match="unknown config key 'denoise.cut.fraction'"):
        load_config("denoise-tiny", ["denoise.cut.fraction=10"], SECTIONS)
    with pytest.raises(ValueError, match="unknown config key 'denoise'"):
        load_config("denoise-tiny")  # `mmclf train` does not take a denoise recipe silently
    assert load_config("image-tiny", [], SECTIONS)["denoise"]["cut"] == {"percent": 10.0, "of": "flagged"}
    paper = load_config("denoise-resnet50-4fold", [], SECTIONS)
    assert (paper["model"]["name"], paper["folds"], paper["training"]["optimizer"], paper["denoise"]["filter_by"],
            paper["denoise"]["rank_by"], paper["denoise"]["cut"]["percent"], paper["denoise"]["splits"]) == \
        ("resnet50", 4, "sgd", "prune_by_noise_rate", "normalized_margin", 10, ["train", "validation"])


def test_datalab_finds_planted_near_duplicates_and_cross_split_copies():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 16)).astype(np.float32)
    features[40] = features[3]
    features[250] = features[3] * 1.0001
    features[120] = features[77] + rng.normal(scale=1e-4, size=16)
    sets, outliers = find_data_issues(features)
    assert [sorted(s.tolist()) for s in sets] == [[3, 40, 250], [77, 120]]
    assert len(outliers) == 300 and outliers["outlier_score"].between(0, 1).all()
    splits = np.array(["train"] * 200 + ["validation"] * 50 + ["test"] * 50)
    assert np.flatnonzero(cross_split_copies(sets, splits)).tolist() == [3, 40]  # 250 (test) is kept


# --- end to end: `mmclf denoise` on a tiny image dataset with flipped labels and planted duplicates -----------

TINY = ["folds=2", "training.epochs=3", "training.batch_size=20", "training.num_workers=0", "model.image_size=32",
        "model.resize_size=36", "training.lr=5e-3", "denoise.contact_sheet_rows=12"]
FLIPPED = {"tr3", "tr10", "tr17", "tr30", "va4"}
COPIES = {"va_copy_of_tr5": ("validation", "tr5"), "te_copy_of_tr6": ("test", "tr6")}


def planted_dataset_dict():
    data = make_dataset_dict(train_rows=96, validation_rows=32, test_rows=16, image_size=32, missing_every=11)
    flip = {"train": [3, 10, 17, 30], "validation": [4]}

    def flip_labels(row, index, split):
        if index in flip.get(split, []):
            row["label"] = (row["label"] + 2) % len(CLASS_NAMES)
        return row

    for split in flip:
        data[split] = data[split].map(flip_labels, with_indices=True, fn_kwargs={"split": split})
    for new_id, (split, source) in COPIES.items():
        copy = data["train"].select([int(source[2:])]).map(lambda row, new_id=new_id: {**row, "id": new_id})
        data[split] = concatenate_datasets([data[split], copy.cast(data[split].features)])
    return data


@pytest.fixture(scope="module")
def denoised(tmp_path_factory):
    root = tmp_path_factory.mktemp("denoise")
    dataset_dir = root / "ds"
    planted_dataset_dict().save_to_disk(str(dataset_dir))
    out = root / "out"
    assert main(["denoise", "--config", "denoise-tiny", f"dataset={dataset_dir}", f"output_dir={out}", *TINY,
                 "denoise.cut.percent=50", "denoise.datalab.remove_cross_split_duplicates=true"]) == 0
    return root, dataset_dir, out


@pytest.mark.slow  # the denoised fixture trains 4 folds (~4 s)
def test_denoise_writes_issues_cleaned_dataset_and_report(denoised):
    _, dataset_dir, out = denoised
    summary = json.loads((out / "summary.json").read_text())
    issues = pd.read_csv(out / "label_issues.csv", dtype={"given_code": str, "suggested_code": str})
    oof = ProbabilityTable.load(out / "probs" / "oof.parquet")
    assert len(oof) == 96 + 32 + 1 and set(oof.splits) == {"train", "validation"}

    # rows without an image (every 11th) are not ranked by the image expert
    unjudged = {f"{p}{i}" for p, n in (("tr", 96), ("va", 32)) for i in range(n) if i % 11 == 10}
    assert summary["unjudged_rows"] == len(unjudged) and not set(issues["id"]) & unjudged
    assert summary["ranked_rows"] == len(oof) - len(unjudged)
    assert len(issues) == summary["flagged"] > 0 and issues["flagged"].all()
    assert issues["rank"].is_monotonic_increasing and issues["rank"].is_unique and issues["rank"].min() >= 1
    assert issues["removed"].sum() == summary["removed_label_issues"] == round(0.5 * len(issues))
    assert issues["removed"].tolist() == [True] * issues["removed"].sum() + [False] * (~issues["removed"]).sum()
    assert set(issues["suggested_code"]) <= set(CLASS_NAMES) and (issues["given_code"] != issues["suggested_code"]).any()
    assert len(set(issues["id"]) & FLIPPED) >= 3 and set(issues["id"][:3]) <= FLIPPED  # tr10 has no image

    # the cleaned dataset lacks exactly the removed rows and keeps ids, order, columns and class order
    near = pd.read_csv(out / "near_duplicates.csv")
    removed = set(issues.loc[issues["removed"], "id"]) | set(near.loc[near["removed"], "id"])
    original, cleaned = load_from_disk(str(dataset_dir)), load_from_disk(str(out / "dataset"))
    assert list(cleaned) == list(original)
    for split in original:
        assert cleaned[split].features == original[split].features
        assert list(cleaned[split]["id"]) == [i for i in original[split]["id"] if i not in removed]
    assert summary["rows_after"] == {split: len(cleaned[split]) for split in cleaned}
    assert sum(summary["rows_before"].values()) - sum(summary["rows_after"].values()) == len(removed)

    assert "# Label-noise report" in (out / "report.md").read_text()
    with Image.open(out / "contact_sheet.png") as sheet:
        shown = min(len(issues), 48)  # denoise.contact_sheet_rows: 8 cards a row, 2.1 in each, 6 in at least; 90 dpi
        assert abs(sheet.size[0] - max(2.1 * min(shown, 8), 6.0) * 90) <= 2 and sheet.size[1] > 200


@pytest.mark.slow
def test_planted_near_duplicates_are_found_and_cross_split_copies_removed(denoised):
    _, _, out = denoised
    near = pd.read_csv(out / "near_duplicates.csv")
    set_of = dict(zip(near["id"], near["set"]))
    for copy, (split, source) in COPIES.items():
        assert copy in set_of and set_of[copy] == set_of[source], (copy, near)
    removed = set(near.loc[near["removed"], "id"])
    assert {"tr5", "tr6"} <= removed and not removed & set(COPIES)  # the training copy goes, evaluation splits stay
    assert set(near.loc[near["removed"], "split"]) <= {"train", "validation"}


@pytest.mark.slow
def test_rerun_reranks_without_training_and_gives_the_same_ranking(denoised, monkeypatch, capsys):
    root, dataset_dir, out = denoised
    before = pd.read_csv(out / "label_issues.csv")
    monkeypatch.setattr(mmclf.denoise.run, "train_folds", lambda *a, **k: pytest.fail("a rerun must not train"))
    assert main(["denoise", "--config", "denoise-tiny", f"dataset={dataset_dir}", f"output_dir={out}", *TINY,
                 "denoise.cut.of=all", "denoise.cut.percent=5"]) == 0
    after = pd.read_csv(out / "label_issues.csv")
    columns = ["rank", "id", "score"]
    assert after.loc[after["flagged"], columns].reset_index(drop=True).equals(before[columns])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["removed_label_issues"] == after["removed"].sum() == round(0.05 * summary["ranked_rows"])
    assert summary["removed_unflagged"] == (after["removed"] & ~after["flagged"]).sum() > 0
    kept = after.loc[~after["removed"], "score"]  # flagged rows the cut left; none where it took every flagged row
    assert kept.empty or after.loc[after["removed"], "score"].max() <= kept.min()
    assert summary["removed_duplicates"] == 0

    # an out-of-fold table given by path is ranked the same way, into another folder
    other = root / "from_table"
    assert main(["denoise", "--config", "denoise-tiny", f"dataset={dataset_dir}", f"output_dir={other}", *TINY,
                 f"denoise.probabilities={out / 'probs' / 'oof.parquet'}"]) == 0
    assert pd.read_csv(other / "label_issues.csv")[["rank", "id"]].equals(before[["rank", "id"]])
    assert (other / "near_duplicates.csv").is_file()

    assert main(["denoise", "--config", "denoise-tiny", f"dataset={dataset_dir}", f"output_dir={out}", *TINY,
                 "training.lr=0.1"]) == 2
    error = capsys.readouterr().err
    assert "cannot resume" in error and "training.lr: 0.005 -> 0.1" in error


@pytest.mark.slow
def test_probabilities_of_other_rows_are_an_error(denoised, tmp_path, capsys):
    _, _, out = denoised
    other = tmp_path / "other"
    make_dataset_dict(train_rows=96, validation_rows=32, test_rows=0, image_size=32, seed=1).save_to_disk(str(other))
    assert main(["denoise", "--config", "denoise-tiny", f"dataset={other}", f"output_dir={tmp_path / 'o'}", *TINY,
                 f"denoise.probabilities={out / 'probs' / 'oof.parquet'}"]) == 2
    error = capsys.readouterr().err
    assert "sample ids differ" in error and "1 only in the second (e.g. ['va_copy_of_tr5'])" in error


@pytest.mark.slow
def test_interrupted_folds_continue_with_resume(denoised, tmp_path, capsys):
    _, dataset_dir, out = denoised
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    (copy / "probs" / "oof.parquet").unlink()
    shutil.rmtree(copy / "folds" / "1")  # stopped before fold 1
    kept = (copy / "folds" / "0" / "probs" / "heldout.parquet").stat().st_mtime_ns
    args = ["denoise", "--config", "denoise-tiny", f"dataset={dataset_dir}", f"output_dir={copy}", *TINY]
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0
    assert (copy / "folds" / "0" / "probs" / "heldout.parquet").stat().st_mtime_ns == kept
    before, after = ProbabilityTable.load(out / "probs" / "oof.parquet"), ProbabilityTable.load(copy / "probs" / "oof.parquet")
    assert after.ids == before.ids and np.allclose(after.probs, before.probs, atol=1e-5)


@pytest.mark.slow  # 3-5 s: 3 folds of a text expert
def test_a_text_expert_recipe_denoises_every_row(tmp_path):
    dataset_dir = tmp_path / "ds"
    planted_dataset_dict().save_to_disk(str(dataset_dir))
    out = tmp_path / "out"
    assert main(["denoise", "--config", "text-tiny", f"dataset={dataset_dir}", f"output_dir={out}", "folds=2",
                 "model.max_length=24", "model.tiny_vocab_size=200", "training.epochs=2", "training.batch_size=20",
                 "training.log_with=none", "denoise.cut.of=all"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["expert"] == "text" and summary["unjudged_rows"] == 0 and summary["ranked_rows"] == 129
    assert summary["removed_label_issues"] == round(0.1 * 129)
    near = pd.read_csv(out / "near_duplicates.csv")
    set_of = dict(zip(near["id"], near["set"]))
    assert all(copy in set_of and set_of[copy] == set_of[source] for copy, (_, source) in COPIES.items())


def test_a_class_with_fewer_rows_than_folds_is_an_error_before_anything_is_written(tmp_path, capsys):
    data = make_dataset_dict(train_rows=40, validation_rows=8, test_rows=0, image_size=16)
    rare = data["train"].filter(lambda row: row["label"] == 3).select([0, 1])
    data["train"] = concatenate_datasets([data["train"].filter(lambda row: row["label"] != 3), rare])
    data["validation"] = data["validation"].filter(lambda row: row["label"] != 3)
    data.save_to_disk(str(tmp_path / "ds"))
    out = tmp_path / "out"
    assert main(["denoise", "--config", "denoise-tiny", f"dataset={tmp_path / 'ds'}", f"output_dir={out}"]) == 2
    assert "folds=4 needs at least 4 labelled rows of every class; classes with fewer (code: rows): {'2583': 2}" \
        in capsys.readouterr().err
    assert not out.exists()
