"""`mmclf denoise`: mislabelled rows found with k-fold out-of-fold probabilities ranked by cleanlab, a cleaned
dataset, and a report to look at before trusting it.

    mmclf denoise --config denoise-tiny dataset=DS output_dir=DIR [key=value ...] [--resume]

A denoise recipe is a complete expert recipe (any kind: image as in the paper, text too) with `folds` >= 2 and a
`denoise:` section (`DENOISE_DEFAULTS`; an expert recipe without one gets the defaults). The k fold models train
through `mmclf train`'s fold code and give out-of-fold probabilities of every train and validation row;
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
import re
import shutil
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from mmclf.experts import EXPERT_FILE, expert_class, load_expert
from mmclf.inference import expert_features
from mmclf.probability_tables import ProbabilityTable, align_tables
from mmclf.training import loop
from mmclf.training.config import config_differences, flatten, load_config, resolve, write_config
from mmclf.training.train import fold_splits, load_checked_dataset, save_table, train_folds

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
LABELLED_SPLITS = ("train", "validation")  # the splits with out-of-fold probabilities


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


# --- ranking and cut --------------------------------------------------------------------------------------

@dataclass
class Ranking:
    flagged_order: np.ndarray  # cleanlab's flagged rows, most suspected first (ranked by `rank_by`)
    order: np.ndarray  # every row, lowest label quality first
    flagged: np.ndarray  # bool per row
    scores: np.ndarray  # cleanlab's label quality per row (0: surely mislabelled, 1: surely right)
    warnings: list[str]


def rank_label_issues(labels: np.ndarray, probs: np.ndarray, filter_by: str = "prune_by_noise_rate",
                      rank_by: str = "normalized_margin", class_names: list[str] | None = None) -> Ranking:
    """cleanlab's flagged rows ranked by `rank_by`, and every row ordered by the same label quality score.
    cleanlab's warnings are recorded, with class indices named by their codes."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)  # float32 softmax rows, summed in float64
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # n_jobs=1: warnings raised in worker processes would be lost
        flagged_order = find_label_issues(labels, probs, filter_by=filter_by, return_indices_ranked_by=rank_by,
                                          n_jobs=1)
    scores = get_label_quality_scores(labels, probs, method=rank_by)
    flagged = np.zeros(len(labels), dtype=bool)
    flagged[flagged_order] = True
    messages = sorted({name_classes(str(w.message), class_names) for w in caught})
    return Ranking(flagged_order=np.asarray(flagged_order, dtype=np.int64), order=np.argsort(scores, kind="stable"),
                   flagged=flagged, scores=scores, warnings=messages)


def name_classes(message: str, class_names: list[str] | None) -> str:
    """'... in class: 3, ...' -> '... in class: 3 (code 1180), ...'."""
    if not class_names:
        return message
    return re.sub(r"class: (\d+)", lambda m: f"class: {m[1]} (code {class_names[int(m[1])]})"
                  if int(m[1]) < len(class_names) else m[0], message)


def choose_cut(ranking: Ranking, eligible: np.ndarray, percent: float, of: str) -> np.ndarray:
    """Bool per row: the top `percent` % of the eligible rows of cleanlab's flagged list (of='flagged', the
    paper's cut), or of all eligible rows by label quality (of='all', flagged or not)."""
    order = ranking.flagged_order if of == "flagged" else ranking.order
    order = order[eligible[order]]
    removed = np.zeros(len(eligible), dtype=bool)
    removed[order[: round(len(order) * percent / 100)]] = True
    return removed


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


# --- near-duplicates and outliers ---------------------------------------------------------------------------

def fold_features(model_dir: Path, dataset_dict, rows: pd.DataFrame, cache: Path, batch_size: int) -> np.ndarray:
    """Pooled features of the judged rows (in `rows` order) by one fold model, cached in `cache` with the ids and
    the model they belong to."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    seen = rows[rows["judged"]]
    model = str(model_dir.resolve()).encode()
    if cache.is_file():
        table = pq.read_table(cache)
        if (table.schema.metadata or {}).get(b"model") == model and table.column("id").to_pylist() == seen["id"].tolist():
            return np.stack(table.column("features").to_numpy(zero_copy_only=False)).astype(np.float32)
    expert = load_expert(model_dir).to(loop.process_state().device)
    parts = [expert_features(expert, dataset_dict[split].select(group["position"].to_numpy()), batch_size,
                             progress=True) for split, group in seen.groupby("split", sort=False)]
    features = np.concatenate(parts).astype(np.float32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    flat = pa.array(features.reshape(-1), type=pa.float32())
    table = pa.table({"id": seen["id"].tolist(), "features": pa.FixedSizeListArray.from_arrays(flat, features.shape[1])})
    pq.write_table(table.replace_schema_metadata({b"model": model}), cache)
    return features


def find_data_issues(features: np.ndarray, threshold: float = 0.13) -> tuple[list[np.ndarray], pd.DataFrame]:
    """cleanlab Datalab's near-duplicate sets (connected groups of rows closer than `threshold` x the median
    nearest-neighbour distance) and its outlier issues (columns is_outlier_issue, outlier_score)."""
    from cleanlab import Datalab
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    lab = Datalab(data={"row": np.arange(len(features))}, verbosity=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lab.find_issues(features=features, issue_types={"near_duplicate": {"threshold": threshold}, "outlier": {}})
    neighbours = lab.get_issues("near_duplicate")["near_duplicate_sets"]
    pairs = np.array([(i, int(j)) for i, members in enumerate(neighbours) for j in members], dtype=np.int64)
    pairs = pairs.reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(features),) * 2)
    _, component = connected_components(graph, directed=False)
    groups = pd.Series(np.arange(len(features))).groupby(component).apply(np.asarray)
    sets = sorted((g for g in groups if len(g) > 1), key=lambda g: (-len(g), g[0]))
    return sets, lab.get_issues("outlier")[["is_outlier_issue", "outlier_score"]]


def split_rank(split: str) -> int:
    return {"train": 0, "validation": 1}.get(split, 2)


def cross_split_copies(sets: list[np.ndarray], splits: np.ndarray) -> np.ndarray:
    """Bool per row: rows of a near-duplicate set that also holds a row of a later split (train < validation <
    any other split): removing them keeps the evaluation splits whole and ends the leak."""
    copies = np.zeros(len(splits), dtype=bool)
    for members in sets:
        ranks = np.array([split_rank(s) for s in splits[members]])
        copies[members[ranks < ranks.max()]] = True
    return copies


# --- outputs ----------------------------------------------------------------------------------------------

def write_clean_dataset(dataset_dict, rows: pd.DataFrame, out: Path, info: dict) -> dict:
    """The DatasetDict without the rows marked `removed`, written whole or not at all; returns rows per split."""
    from datasets import DatasetDict

    cleaned = {}
    for split, dataset in dataset_dict.items():
        removed = rows.loc[(rows["split"] == split) & rows["removed"], "position"].to_numpy()
        cleaned[split] = dataset.select(np.setdiff1d(np.arange(len(dataset)), removed)) if len(removed) else dataset
    staged = out.parent / f".{out.name}.partial"
    shutil.rmtree(staged, ignore_errors=True)
    DatasetDict(cleaned).save_to_disk(str(staged))
    counts = {split: len(dataset) for split, dataset in cleaned.items()}
    (staged / "denoise.json").write_text(json.dumps({**info, "rows": counts}, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    staged.rename(out)
    return counts


def draw_contact_sheet(cards: pd.DataFrame, dataset_dict, path: Path, title: str, columns: int = 8) -> Path:
    """A grid of the given rows: thumbnail (or title text without an image), rank, id, given -> suggested code."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = max(1, min(columns, len(cards)))
    grid_rows = max(1, -(-len(cards) // columns))
    width, height = max(2.1 * columns, 6.0), 2.75 * grid_rows + 0.8
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    figure.suptitle(textwrap.fill(title, int(width * 9)), fontsize=11)
    for n in range(grid_rows * columns):
        ax = figure.add_subplot(grid_rows, columns, n + 1)
        ax.set_xticks([])
        ax.set_yticks([])
        if n >= len(cards):
            ax.axis("off")
            continue
        card = cards.iloc[n]
        image = dataset_dict[card["split"]][int(card["position"])].get("image")
        if image is not None:
            ax.imshow(image.convert("RGB"))
            ax.set_xlabel(textwrap.shorten(str(card["title"]), 36, placeholder="…"), fontsize=6.5)
        else:
            ax.set_facecolor("#f2f2f2")
            ax.text(0.5, 0.5, textwrap.fill(str(card["title"])[:150], 22), ha="center", va="center", fontsize=7,
                    transform=ax.transAxes, wrap=True)
        ax.set_title(f"#{card['rank']}  {card['id']} ({card['split']})\n"
                     f"given {card['given_code']} \u2192 {card['suggested_code']} (p {card['p_suggested']:.2f})",
                     fontsize=7.5, color="#b00020")
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.45 / height))  # room for the title
    figure.savefig(path, dpi=90)
    return path


def markdown_table(frame: pd.DataFrame) -> str:
    def cell(value):
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


def per_class_counts(rows: pd.DataFrame, class_names: list[str]) -> pd.DataFrame:
    labelled = rows[rows["split"].isin(LABELLED_SPLITS)]
    table = []
    for code in class_names:
        of_class = labelled[labelled["code"] == code]
        flagged = of_class[of_class["flagged"]]
        suggested = flagged["suggested_code"].value_counts()
        removed = int(of_class["removed"].sum())
        table.append({"code": code, "rows": len(of_class), "ranked": int(of_class["judged"].sum()),
                      "flagged": len(flagged), "flagged %": f"{100 * len(flagged) / max(1, of_class['judged'].sum()):.1f}",
                      "removed": removed, "removed %": f"{100 * removed / max(1, len(of_class)):.1f}",
                      "most suggested instead": f"{suggested.index[0]} ({suggested.iloc[0]})" if len(suggested) else ""})
    return pd.DataFrame(table)


def write_report(path: Path, summary: dict, rows: pd.DataFrame, class_names: list[str], data_issues: dict) -> None:
    s = summary
    flagged = rows[rows["flagged"]].sort_values("rank")
    pairs = flagged.groupby(["given_code", "suggested_code"]).size().sort_values(ascending=False).head(10)
    source = (f"probabilities `{s['probabilities']}` ({s['source']})" if s["given_probabilities"]
              else f"{s['expert']} expert, {s['folds']} folds")
    cut_base = "flagged list" if s["cut_of"] == "flagged" else "ranked rows"
    removed_by_split = ", ".join(f"{split} {n}" for split, n in s["removed_by_split"].items())
    not_flagged = f"; {s['removed_unflagged']} of them not flagged" if s["removed_unflagged"] else ""
    sizes = ", ".join(f"{split} {s['rows_before'][split]} \u2192 {n}" for split, n in s["rows_after"].items())
    lines = [
        "# Label-noise report",
        "",
        (f"Dataset `{s['dataset']}`, {source}: out-of-fold macro-F1 {s['oof_macro_f1']:.4f}, accuracy "
         f"{s['oof_accuracy']:.4f} over {s['labelled_rows']} train and validation rows."),
        "",
        (f"`cleanlab.filter.find_label_issues(filter_by='{s['filter_by']}', "
         f"return_indices_ranked_by='{s['rank_by']}')` flagged **{s['flagged']}** of {s['ranked_rows']} ranked rows "
         f"({100 * s['flagged'] / max(1, s['ranked_rows']):.1f} %)."),
    ]
    if s["unjudged_rows"]:
        lines.append(f"{s['unjudged_rows']} rows without an image were not ranked (the {s['expert']} expert sees "
                     "only a blank image for them) and are kept.")
    lines += [
        "",
        (f"Cut: {s['cut_percent']:g} % of the {cut_base} in {', '.join(s['cut_splits'])}: "
         f"**{s['removed_label_issues']}** rows removed ({removed_by_split}{not_flagged})."),
        f"Cleaned dataset `dataset/` (rows): {sizes}.",
        "",
        "## cleanlab warnings",
        "",
        *([f"- {warning}" for warning in s["cleanlab_warnings"]] or ["none"]),
        "",
        "## Top suspected rows",
        "",
        (f"Score: cleanlab's label quality by {s['rank_by']} (0: surely mislabelled, 1: surely right); rank: the "
         "row's place among all ranked rows by that score. Every flagged row is in `label_issues.csv`."),
        "",
        "![contact sheet](contact_sheet.png)",
        "",
        markdown_table(flagged.head(25)[["rank", "id", "split", "given_code", "suggested_code", "score", "p_given",
                                         "p_suggested", "removed", "title"]]),
        "",
        "## Most frequent given \u2192 suggested codes among flagged rows",
        "",
        markdown_table(pd.DataFrame({"given": [g for g, _ in pairs.index], "suggested": [c for _, c in pairs.index],
                                     "rows": pairs.to_numpy()})) if len(pairs) else "none",
        "",
        "## Per class (train + validation)",
        "",
        markdown_table(per_class_counts(rows, class_names)),
        "",
        *data_issues_report(s, data_issues),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def data_issues_report(s: dict, data_issues: dict) -> list[str]:
    lines = ["## Near-duplicates and outliers (cleanlab Datalab)", ""]
    if "skipped" in data_issues:
        return [*lines, f"Not computed: {data_issues['skipped']}."]
    near, outliers = data_issues["near_duplicates"], data_issues["outliers"]
    removal = (f"{s['removed_duplicates']} rows removed as cross-split copies" if s["remove_cross_split_duplicates"]
               else "denoise.datalab.remove_cross_split_duplicates=true would remove their copies in earlier splits")
    by_split = ", ".join(f"{split} {n}" for split, n in outliers["split"].value_counts().items()) or "none"
    lines += [
        (f"Pooled features of fold 0's model over {data_issues['rows']} rows of every split. "
         f"**{s['near_duplicate_sets']}** near-duplicate sets ({len(near)} rows); **{s['cross_split_sets']}** span "
         "splits (a listing trained on and scored again in evaluation inflates scores): "
         f"{removal}; **{s['conflicting_sets']}** sets hold different codes. All in `near_duplicates.csv`."),
        "",
    ]
    if len(near):
        lines += [markdown_table(near[near["set"] < 15][["set", "id", "split", "code", "removed", "title"]]), ""]
    lines.append(f"**{len(outliers)}** outliers ({by_split}), kept; all in `outliers.csv`.")
    if len(outliers):
        lines += ["", markdown_table(outliers.head(15)[["id", "split", "code", "outlier_score", "title"]])]
    return lines


# --- the command --------------------------------------------------------------------------------------------

def prepare_output_dir(config: dict, out: Path, oof_path: Path) -> bool:
    """Write config.yaml; True when the folds still have to be trained. A DIR with out-of-fold probabilities is
    re-ranked when only `denoise:` keys changed."""
    saved = out / "config.yaml"
    if saved.is_file():
        previous = yaml.safe_load(saved.read_text())
        differences = [k for k in config_differences(previous, config) if not k.startswith("denoise.")]
        if differences:
            details = "; ".join(f"{k}: {flatten(previous).get(k)!r} -> {flatten(config).get(k)!r}" for k in differences)
            raise ValueError(f"{out} holds a denoise run with another config ({details}); only denoise.* keys may "
                             f"change on a rerun: choose another output_dir")
        if not oof_path.is_file() and not config["resume"]:
            raise ValueError(f"{out} holds unfinished folds; pass --resume to continue them or choose another output_dir")
    needs_training = not oof_path.is_file()
    loop.process_state().wait_for_everyone()  # every process has looked before the main process writes
    if loop.process_state().is_main_process:
        write_config(config, saved)
    loop.process_state().wait_for_everyone()
    return needs_training


def denoise(config: dict) -> Path:
    """Run `mmclf denoise` from a config dict (an expert config + `denoise:`); returns the output directory."""
    config = resolve(config, SECTIONS)
    check_denoise_config(config)
    section = config["denoise"]
    dataset_dict, class_names = load_checked_dataset(config)
    if not config["output_dir"]:
        raise ValueError("no output_dir given: set output_dir=DIR")
    out = Path(config["output_dir"])
    if (out / "dataset").resolve() == Path(config["dataset"]).resolve():
        raise ValueError(f"dataset={config['dataset']} is this run's own output (DIR/dataset): choose another "
                         f"output_dir")
    oof_path = Path(section["probabilities"] or out / "probs" / "oof.parquet")
    if section["probabilities"] and not oof_path.is_file():
        raise FileNotFoundError(f"denoise.probabilities: probability table not found: {oof_path}")
    if not oof_path.is_file():  # unlabelled rows or a class with fewer rows than folds: errors before any write
        labels = np.concatenate([np.asarray(dataset_dict[split]["label"]) for split in LABELLED_SPLITS])
        if (labels < 0).any():
            raise ValueError(f"denoise needs a label on every train and validation row; {int((labels < 0).sum())} "
                             f"rows of dataset {config['dataset']} have label -1")
        fold_splits(labels, int(config["folds"]), config["seed"], class_names)
    state = loop.process_state()
    if prepare_output_dir(config, out, oof_path):
        expert_config = {key: value for key, value in config.items() if key != "denoise"}
        oof, _ = train_folds(expert_config, dataset_dict, out, class_names)
        save_table(oof, oof_path)
        state.wait_for_everyone()
    if state.is_main_process:
        rank_and_write(config, dataset_dict, class_names, out, oof_path)
    state.wait_for_everyone()
    return out


def add_ranking(rows: pd.DataFrame, oof: ProbabilityTable, section: dict, class_names: list[str]) -> Ranking:
    """Rank the judged train and validation rows; adds the columns flagged, score, rank (1: lowest label quality,
    0: not ranked), suggested_code, p_given and p_suggested to `rows`. Returns the ranking in row numbers of
    `rows`."""
    labelled = rows.index[rows["split"].isin(LABELLED_SPLITS)].to_numpy()
    judged = rows.loc[labelled, "judged"].to_numpy()
    ranked = labelled[judged]
    ranking = rank_label_issues(oof.labels[judged], oof.probs[judged], section["filter_by"], section["rank_by"],
                                class_names)
    rows["flagged"], rows["rank"], rows["score"] = False, 0, np.nan
    rows.loc[ranked, "flagged"] = ranking.flagged
    rows.loc[ranked, "score"] = ranking.scores
    rows.loc[ranked[ranking.order], "rank"] = np.arange(1, len(ranked) + 1)
    suggested = oof.probs.argmax(axis=1)
    rows["given_code"], rows["suggested_code"], rows["p_given"], rows["p_suggested"] = rows["code"], "", np.nan, np.nan
    rows.loc[labelled, "suggested_code"] = [class_names[i] for i in suggested]
    rows.loc[labelled, "p_given"] = oof.probs[np.arange(len(oof)), oof.labels]
    rows.loc[labelled, "p_suggested"] = oof.probs[np.arange(len(oof)), suggested]
    return Ranking(flagged_order=ranked[ranking.flagged_order], order=ranked[ranking.order],
                   flagged=rows["flagged"].to_numpy(), scores=rows["score"].to_numpy(), warnings=ranking.warnings)


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
        "oof_macro_f1": loop.macro_f1(oof.probs, oof.labels),
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
    loop.process_state().print(
        f"flagged {summary['flagged']} of {summary['ranked_rows']} rows, removed {int(rows['removed'].sum())}; "
        f"{summary['near_duplicate_sets']} near-duplicate sets, {summary['outliers']} outliers; report in "
        f"{out / 'report.md'}")
    for warning in ranking.warnings:
        loop.process_state().print(f"cleanlab warned: {warning}")
    return summary


def datalab_issues(config: dict, dataset_dict, rows: pd.DataFrame, out: Path) -> dict:
    """Near-duplicate sets and outliers of the judged rows of every split ({"skipped": why} when they cannot be
    computed); the previous run's near_duplicates.csv and outliers.csv are removed."""
    section = config["denoise"]
    model_dir = Path(section["probabilities"]).parent.parent if section["probabilities"] else out
    model_dir = model_dir / "folds" / "0" / "model"
    for stale in ("near_duplicates.csv", "outliers.csv"):
        (out / stale).unlink(missing_ok=True)
    seen = rows.index[rows["judged"]].to_numpy()
    if not section["datalab"]["enabled"]:
        return {"skipped": "denoise.datalab.enabled is false"}
    if not (model_dir / EXPERT_FILE).is_file():
        return {"skipped": f"no fold model at {model_dir} to compute features with"}
    if len(seen) <= 10:
        return {"skipped": f"{len(seen)} rows are too few for nearest-neighbour issues (more than 10 needed)"}
    features = fold_features(model_dir, dataset_dict, rows, out / "probs" / "features.parquet",
                             config["training"]["eval_batch_size"])
    local_sets, outlier_issues = find_data_issues(features, section["datalab"]["near_duplicate_threshold"])
    sets = [seen[members] for members in local_sets]  # row numbers of `rows`
    columns = ["id", "split", "code", "title"]
    near = pd.concat([rows.loc[members, columns].assign(set=number, row=members) for number, members in enumerate(sets)]
                     or [pd.DataFrame(columns=[*columns, "set", "row"])])
    outliers = rows.loc[seen, columns].assign(outlier_score=outlier_issues["outlier_score"].to_numpy())
    outliers = outliers[outlier_issues["is_outlier_issue"].to_numpy()].sort_values("outlier_score")
    return {"rows": len(seen), "sets": sets, "near_duplicates": near, "outliers": outliers,
            "cross_split_sets": sum(rows.loc[m, "split"].nunique() > 1 for m in sets),
            "conflicting_sets": sum(rows.loc[m, "code"].nunique() > 1 for m in sets)}


def write_data_issue_files(out: Path, data_issues: dict, removed: np.ndarray) -> None:
    """near_duplicates.csv (set, id, split, code, removed, title) and outliers.csv, when Datalab ran."""
    if "sets" not in data_issues:
        return
    near = data_issues["near_duplicates"]
    near["removed"] = removed[near["row"].to_numpy(dtype=np.int64)]
    near[["set", "id", "split", "code", "removed", "title"]].to_csv(out / "near_duplicates.csv", index=False)
    data_issues["outliers"][["id", "split", "code", "outlier_score", "title"]].to_csv(out / "outliers.csv", index=False)


# --- command line -------------------------------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True,
                        help="recipe name (denoise-tiny, denoise-resnet50-4fold, or any expert recipe) or YAML path")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="override any recipe key, dotted for nesting: dataset=DIR output_dir=DIR "
                             "denoise.cut.percent=10 denoise.cut.of=all")
    parser.add_argument("--resume", action="store_true", help="continue interrupted folds in output_dir")


def run(args) -> int:
    overrides = list(args.overrides) + (["resume=true"] if args.resume else [])
    denoise(load_config(args.config, overrides, SECTIONS))
    loop.end_processes()
    return 0
