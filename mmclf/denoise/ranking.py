"""cleanlab's ranking of label issues over out-of-fold probabilities, and the cut that removes the top of it."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mmclf.probability_tables import ProbabilityTable

LABELLED_SPLITS = ("train", "validation")  # the splits with out-of-fold probabilities


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
