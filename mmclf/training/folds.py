"""k-fold training: k models over k stratified folds of train+validation, and the out-of-fold probabilities of
every labelled row (`mmclf train folds=k`, `mmclf denoise`).

Fold i is a run folder of its own, RUN_DIR/folds/<i>/ (config.yaml, model/, metrics.json,
probs/heldout.parquet); its checkpoints are removed once the fold is complete. A resumed run skips the
complete folds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from mmclf.probability_tables import ProbabilityTable
from mmclf.rundir import RunFolder, main_process_writes, print_once, staged_file
from mmclf.training.config import RESUME_FREE_KEYS
from mmclf.training.fit import fit, predict_table, summary


def fold_splits(labels: np.ndarray, k: int, seed: int, class_names: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """k stratified folds as (training rows, held-out rows); every row is held out exactly once."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(labels, minlength=len(class_names))
    if counts.min() < k:
        rare = {class_names[i]: int(counts[i]) for i in np.flatnonzero(counts < k)}
        raise ValueError(f"folds={k} needs at least {k} labelled rows of every class; classes with fewer "
                         f"(code: rows): {rare}")
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels))


def fold_init_from(config: dict, fold: int, held_ids: list[str]) -> str | None:
    """Fold i of a run with init_from starts from fold i of the earlier run, which held out the same rows: the earlier
    run's final model was trained on them, and out-of-fold probabilities from it would be optimistic."""
    if not config.get("init_from"):
        return None
    source = Path(config["init_from"]) / "folds" / str(fold)
    held = source / "probs" / "heldout.parquet"
    if not held.is_file() or set(ProbabilityTable.load(held).ids) != set(held_ids):
        raise ValueError(f"folds={config['folds']} with init_from={config['init_from']}: fold {fold} must start from "
                         f"{source / 'model'}, a model trained without the rows this fold holds out, and there is none "
                         f"with the same held-out rows; train the earlier run on the same dataset with "
                         f"folds={config['folds']} seed={config['seed']}")
    return str(source)


def train_folds(config: dict, dataset_dict, run_dir: Path, class_names: list[str]) -> tuple[ProbabilityTable, list]:
    """k models over k stratified folds of train+validation; out-of-fold probabilities of every labelled row.
    Returns (out-of-fold table, per-fold metrics)."""
    from datasets import concatenate_datasets

    run_dir = Path(run_dir)
    parts = [dataset_dict["train"], dataset_dict["validation"]]
    labelled = concatenate_datasets(parts)
    origin = ["train"] * len(parts[0]) + ["validation"] * len(parts[1])
    labels = np.asarray(labelled["label"])
    if (labels < 0).any():
        raise ValueError(f"folds need labels on every train and validation row; {int((labels < 0).sum())} rows "
                         f"have label -1 (e.g. id {labelled[int(np.flatnonzero(labels < 0)[0])]['id']!r})")
    k = int(config["folds"])
    probs = np.zeros((len(labelled), len(class_names)), dtype=np.float32)
    fold_metrics = []
    for i, (train_rows, held_rows) in enumerate(fold_splits(labels, k, config["seed"], class_names)):
        fold = RunFolder(run_dir / "folds" / str(i), RESUME_FREE_KEYS)
        held_path = fold / "probs" / "heldout.parquet"
        if not (config["resume"] and held_path.is_file()):
            print_once(f"fold {i + 1}/{k}: {len(train_rows)} training rows, {len(held_rows)} held out")
            held = labelled.select(held_rows)
            fold_config = {**config, "output_dir": str(fold.path), "folds": 1, "predict_splits": [],
                           "init_from": fold_init_from(config, i, list(held["id"]))}
            fold.open(fold_config, resume=config["resume"])
            expert, state, accelerator = fit(fold_config, labelled.select(train_rows), held, fold.path, class_names,
                                             name=run_dir.name)
            table = predict_table(accelerator, expert, held, [origin[j] for j in held_rows],
                                  config["training"]["eval_batch_size"], source=f"{run_dir.name}/folds/{i}")
            with main_process_writes() as main:
                if main:  # the held-out table comes last: its presence marks the fold complete
                    fold.write_json("metrics.json", {**summary(state), "train_rows": len(train_rows),
                                                     "eval_rows": len(held_rows)})
                    with staged_file(held_path) as staged:
                        table.save(staged)
                    shutil.rmtree(fold / "checkpoints", ignore_errors=True)  # no longer needed
            fold.close()
        probs[held_rows] = ProbabilityTable.load(held_path).probs
        fold_metrics.append({"fold": i, **json.loads((fold / "metrics.json").read_text())})
    oof = ProbabilityTable(ids=list(labelled["id"]), splits=origin, labels=labels, probs=probs,
                           class_names=class_names, source=run_dir.name)
    return oof, fold_metrics
