"""`mmclf denoise`: mislabelled rows found with k-fold out-of-fold probabilities ranked by cleanlab, a cleaned
dataset, and a report to look at before trusting it.

    mmclf denoise --config denoise-tiny dataset=DS output_dir=DIR [key=value ...] [--resume]

A denoise recipe is a complete expert recipe (any kind: image as in the paper, text too) with `folds` >= 2 and a
`denoise:` section (`DENOISE_DEFAULTS`; an expert recipe without one gets the defaults). The k fold models train
through `mmclf.training.folds` (as `mmclf train folds=k` does) and give out-of-fold probabilities of every train and validation row;
`cleanlab.filter.find_label_issues` flags rows and ranks them; the cut removes the top of the ranking from the
named splits. cleanlab's Datalab lists near-duplicates and outliers in the pooled features of fold 0's model.

Output directory:
    config.yaml            the resolved config (the expert recipe + `denoise:`)
    folds/<i>/             the fold runs (model, metrics, held-out probabilities)
    probs/oof.parquet      out-of-fold probabilities of every train and validation row
    probs/features.parquet pooled features of every row seen by fold 0's model (Datalab's input, reused on reruns)
    label_issues.csv       every flagged row, and any removed one: rank, id, split, given and suggested code, score
    near_duplicates.csv    the rows of every near-duplicate set; outliers.csv: the outlying rows
    dataset/               the cleaned DatasetDict: same columns, ids and class order, + denoise.json
    report.md, contact_sheet.png, summary.json

Rerunning into a DIR that holds probs/oof.parquet only re-ranks (change the `denoise:` keys freely; the others
must match); `--resume` continues interrupted folds.

Rows the expert cannot judge are not ranked and are kept, counted in the report: for an expert that reads only
the image, rows without one (it would see a blank image).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from mmclf.denoise.datalab import cross_split_copies, datalab_issues, write_data_issue_files
from mmclf.denoise.ranking import LABELLED_SPLITS, add_ranking, choose_cut
from mmclf.denoise.report import draw_contact_sheet, write_report
from mmclf.evaluation import macro_f1
from mmclf.experts import expert_class
from mmclf.probability_tables import ProbabilityTable, align_tables
from mmclf.rundir import RunFolder, main_process_writes, print_once, staged_folder
from mmclf.training.config import RESUME_FREE_KEYS, resolve
from mmclf.training.folds import fold_splits, train_folds
from mmclf.training.train import load_checked_dataset

DENOISE_DEFAULTS = {
    "probabilities": None,  # an existing out-of-fold table to rank (RUN/probs/oof.parquet of `mmclf train folds=k`)
    "filter_by": "prune_by_noise_rate",  # cleanlab.filter.find_label_issues(filter_by=...)
    "rank_by": "normalized_margin",  # return_indices_ranked_by: normalized_margin | self_confidence | ...
    "cut": {
        "percent": 10.0,  # how much to remove: this percentage of ...
        "of": "flagged",  # ... the flagged list (the paper) | all: all ranked rows of the cleaned splits, by score
    },
    "splits": ["train", "validation"],  # splits rows are removed from
    "datalab": {
        "enabled": True,  # near-duplicate and outlier issues from fold 0's pooled features
        "near_duplicate_threshold": 0.13,  # a pair is near-duplicate below this x the median nearest-neighbour distance
        "remove_cross_split_duplicates": False,  # remove the copy in the earlier split (train < validation < test)
    },
    "contact_sheet_rows": 48,  # top flagged rows shown in contact_sheet.png
}
SECTIONS = {"denoise": DENOISE_DEFAULTS}
FILTERS = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given",
           "low_normalized_margin", "low_self_confidence")
RANKINGS = ("normalized_margin", "self_confidence", "confidence_weighted_entropy")


def check_denoise_config(config: dict) -> None:
    section, cut = config["denoise"], config["denoise"]["cut"]
    percent = cut["percent"]
    checks = [
        (section["filter_by"] in FILTERS, f"denoise.filter_by must be one of {', '.join(FILTERS)}"),
        (section["rank_by"] in RANKINGS, f"denoise.rank_by must be one of {', '.join(RANKINGS)}"),
        (cut["of"] in ("flagged", "all"), f"denoise.cut.of must be 'flagged' or 'all', got {cut['of']!r}"),
        (isinstance(percent, (int, float)) and 0 < percent < 100 or (cut["of"] == "flagged" and percent == 100),
         f"denoise.cut.percent must be in (0, 100) (100 is allowed with cut.of=flagged), got {percent!r}"),
        (isinstance(section["splits"], list) and section["splits"] and set(section["splits"]) <= set(LABELLED_SPLITS),
         (f"denoise.splits must be a non-empty list of {list(LABELLED_SPLITS)} (the splits with out-of-fold "
          f"probabilities), got {section['splits']!r}")),
        (section["probabilities"] is not None or int(config["folds"]) >= 2,
         (f"denoise needs out-of-fold probabilities: set folds=4 (the paper's; folds={config['folds']} now) or "
          "denoise.probabilities=TABLE")),
        (section["datalab"]["near_duplicate_threshold"] > 0, "denoise.datalab.near_duplicate_threshold must be > 0"),
        (section["contact_sheet_rows"] >= 0, "denoise.contact_sheet_rows must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(f"invalid config: {message}")


# --- rows of the dataset ----------------------------------------------------------------------------------

def read_rows(dataset_dict, expert_kind: str, class_names: list[str]) -> pd.DataFrame:
    """One row per dataset row, train and validation first: split, position in it, id, label, code, title,
    and `judged`: whether the expert sees something of the row (an image-only expert needs an image)."""
    image_only = set(expert_class(expert_kind).required_columns) <= {"id", "label", "image"}
    frames = []
    for split in [*LABELLED_SPLITS, *(s for s in dataset_dict if s not in LABELLED_SPLITS)]:
        dataset = dataset_dict[split]
        frame = pd.DataFrame({"split": split, "position": np.arange(len(dataset)), "id": list(dataset["id"]),
                              "label": np.asarray(dataset["label"], dtype=np.int64)})
        frame["title"] = list(dataset["title"]) if "title" in dataset.column_names else ""
        frame["judged"] = (np.asarray(dataset["has_image"], dtype=bool)
                           if image_only and "has_image" in dataset.column_names else True)
        frames.append(frame)
    rows = pd.concat(frames, ignore_index=True)
    rows["code"] = [class_names[i] if i >= 0 else "" for i in rows["label"]]
    return rows


def aligned_probabilities(path: Path, rows: pd.DataFrame, class_names: list[str], dataset: str) -> ProbabilityTable:
    """The out-of-fold table in the order of the dataset's train and validation rows; an error names what differs
    (ids, splits, labels, class order)."""
    table = ProbabilityTable.load(path)
    labelled = rows[rows["split"].isin(LABELLED_SPLITS)]
    expected = ProbabilityTable(ids=labelled["id"].tolist(), splits=labelled["split"].tolist(),
                                labels=labelled["label"].to_numpy(),
                                probs=np.zeros((len(labelled), len(class_names)), dtype=np.float32),
                                class_names=class_names, path=f"dataset {dataset} (train + validation)")
    return align_tables([expected, table])[1]


# --- outputs ----------------------------------------------------------------------------------------------

def write_clean_dataset(dataset_dict, rows: pd.DataFrame, out: Path, info: dict) -> dict:
    """The DatasetDict without the rows marked `removed`, written whole or not at all; returns rows per split."""
    from datasets import DatasetDict

    cleaned = {}
    for split, dataset in dataset_dict.items():
        removed = rows.loc[(rows["split"] == split) & rows["removed"], "position"].to_numpy()
        cleaned[split] = dataset.select(np.setdiff1d(np.arange(len(dataset)), removed)) if len(removed) else dataset
    counts = {split: len(dataset) for split, dataset in cleaned.items()}
    with staged_folder(out, replace=True) as staged:
        DatasetDict(cleaned).save_to_disk(str(staged))
        (staged / "denoise.json").write_text(json.dumps({**info, "rows": counts}, indent=2))
    return counts


# --- the stage ---------------------------------------------------------------------------------------------

def denoise(config: dict) -> Path:
    """Run `mmclf denoise` from a config dict (an expert config + `denoise:`); returns the output directory."""
    config = resolve(config, SECTIONS)
    check_denoise_config(config)
    section = config["denoise"]
    dataset_dict, class_names = load_checked_dataset(config)
    run = RunFolder(config["output_dir"], (*RESUME_FREE_KEYS, "denoise.*"))
    out = run.path
    if (out / "dataset").resolve() == Path(config["dataset"]).resolve():
        raise ValueError(f"dataset={config['dataset']} is this run's own output (DIR/dataset): choose another "
                         f"output_dir")
    oof_path = Path(section["probabilities"] or out / "probs" / "oof.parquet")
    if section["probabilities"] and not oof_path.is_file():
        raise FileNotFoundError(f"denoise.probabilities: probability table not found: {oof_path}")
    oof_exists = oof_path.is_file()
    if not oof_exists:  # unlabelled rows or a class with fewer rows than folds: errors before any write
        labels = np.concatenate([np.asarray(dataset_dict[split]["label"]) for split in LABELLED_SPLITS])
        if (labels < 0).any():
            raise ValueError(f"denoise needs a label on every train and validation row; {int((labels < 0).sum())} "
                             f"rows of dataset {config['dataset']} have label -1")
        fold_splits(labels, int(config["folds"]), config["seed"], class_names)
    # a folder with out-of-fold probabilities is re-ranked (only denoise.* keys may change); unfinished folds need
    # --resume
    run.open(config, resume=config["resume"], rerun=oof_exists)
    if not oof_exists:
        expert_config = {key: value for key, value in config.items() if key != "denoise"}
        oof, _ = train_folds(expert_config, dataset_dict, out, class_names)
        run.save_table(oof, "probs/oof.parquet")
    with main_process_writes() as main:
        if main:
            rank_and_write(config, dataset_dict, class_names, out, oof_path)
    return out


def rank_and_write(config: dict, dataset_dict, class_names: list[str], out: Path, oof_path: Path) -> dict:
    section = config["denoise"]
    rows = read_rows(dataset_dict, config["expert"], class_names)
    oof = aligned_probabilities(oof_path, rows, class_names, config["dataset"])
    ranking = add_ranking(rows, oof, section, class_names)
    in_cut_splits = rows["split"].isin(section["splits"]).to_numpy()
    cut = choose_cut(ranking, in_cut_splits & rows["judged"].to_numpy(), section["cut"]["percent"],
                     section["cut"]["of"])

    data_issues = datalab_issues(config, dataset_dict, rows, out)
    duplicates_removed = np.zeros(len(rows), dtype=bool)
    if "sets" in data_issues and section["datalab"]["remove_cross_split_duplicates"]:
        duplicates_removed = cross_split_copies(data_issues["sets"], rows["split"].to_numpy()) & in_cut_splits
    rows["removed"] = cut | duplicates_removed
    write_data_issue_files(out, data_issues, duplicates_removed)

    columns = ["rank", "id", "split", "given_code", "suggested_code", "score", "p_given", "p_suggested", "flagged",
               "removed", "title"]
    issues = rows[rows["flagged"] | cut].sort_values("rank")
    issues.assign(removed=cut[issues.index])[columns].to_csv(out / "label_issues.csv", index=False)

    summary = {
        "dataset": str(config["dataset"]), "expert": config["expert"], "folds": int(config["folds"]),
        "probabilities": str(oof_path), "given_probabilities": bool(section["probabilities"]), "source": oof.source,
        "filter_by": section["filter_by"], "rank_by": section["rank_by"],
        "oof_macro_f1": macro_f1(oof.labels, oof.probs.argmax(axis=1)),
        "oof_accuracy": float((oof.probs.argmax(axis=1) == oof.labels).mean()),
        "labelled_rows": len(oof), "ranked_rows": len(ranking.order), "unjudged_rows": len(oof) - len(ranking.order),
        "flagged": int(ranking.flagged.sum()), "cleanlab_warnings": ranking.warnings,
        "cut_percent": float(section["cut"]["percent"]), "cut_of": section["cut"]["of"], "cut_splits": section["splits"],
        "removed_label_issues": int(cut.sum()), "removed_unflagged": int((cut & ~ranking.flagged).sum()),
        "removed_by_split": {s: int(cut[(rows["split"] == s).to_numpy()].sum()) for s in section["splits"]},
        "remove_cross_split_duplicates": section["datalab"]["remove_cross_split_duplicates"],
        "removed_duplicates": int((duplicates_removed & ~cut).sum()),
        "near_duplicate_sets": len(data_issues.get("sets", [])), "cross_split_sets": data_issues.get("cross_split_sets", 0),
        "conflicting_sets": data_issues.get("conflicting_sets", 0), "outliers": len(data_issues.get("outliers", [])),
        "rows_before": {split: len(dataset) for split, dataset in dataset_dict.items()},
    }
    summary["rows_after"] = write_clean_dataset(dataset_dict, rows, out / "dataset", {
        "source": str(config["dataset"]), "removed_label_issues": summary["removed_label_issues"],
        "removed_duplicates": summary["removed_duplicates"], "label_issues": "../label_issues.csv"})
    (out / "summary.json").write_text(json.dumps(summary, indent=2))

    cards = issues[issues["flagged"]].head(section["contact_sheet_rows"])
    draw_contact_sheet(cards, dataset_dict, out / "contact_sheet.png",
                       f"{len(cards)} most suspected of {summary['flagged']} flagged rows "
                       f"({section['filter_by']}, ranked by {section['rank_by']}): given \u2192 suggested code")
    write_report(out / "report.md", summary, rows, class_names, data_issues)
    print_once(
        f"flagged {summary['flagged']} of {summary['ranked_rows']} rows, removed {int(rows['removed'].sum())}; "
        f"{summary['near_duplicate_sets']} near-duplicate sets, {summary['outliers']} outliers; report in "
        f"{out / 'report.md'}")
    for warning in ranking.warnings:
        print_once(f"cleanlab warned: {warning}")
    return summary
