"""Near-duplicates and outliers: cleanlab's Datalab over the pooled features of a fold model."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from mmclf.experts import EXPERT_FILE, load_expert
from mmclf.inference import expert_features
from mmclf.rundir import process_state


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
    expert = load_expert(model_dir).to(process_state().device)
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
