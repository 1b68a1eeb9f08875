"""The train stage (`train_expert`, run by `mmclf train`): an expert trained from a resolved config into its run
directory (`mmclf.rundir.RunFolder`); and `predict_expert` (`mmclf predict-expert`): the probability table of a
saved expert. One run is `mmclf.training.fit`; k folds are `mmclf.training.folds`.

Run directory (`output_dir`):
    config.yaml              the resolved config (every key but `resume`)
    model/                   the trained expert in save_pretrained form (+ mmclf_expert.json: kind, class order)
    checkpoints/best, last/  accelerate save_state folders (`--resume` continues from last)
    probs/<split>.parquet    probability tables of the splits in `predict_splits`
    probs/oof.parquet        out-of-fold probabilities of every labelled row (train + validation) when folds > 1
    folds/<i>/               the fold runs (model, metrics, held-out table)
    metrics.json             per-epoch and best validation metrics
"""

from __future__ import annotations

from pathlib import Path

from mmclf.evaluation import scores
from mmclf.experts import expert_class, load_expert
from mmclf.experts.base import check_class_names, check_columns
from mmclf.probability_tables import ProbabilityTable
from mmclf.rundir import RunFolder, main_process_writes, print_once
from mmclf.training import loop
from mmclf.training.config import RESUME_FREE_KEYS, resolve
from mmclf.training.fit import fit, predict_table, saved_model_dir, summary
from mmclf.training.folds import train_folds

# --- input checks -------------------------------------------------------------------------------------------

def load_dataset_dict(path):
    import datasets

    if path is None:
        raise ValueError("no dataset given: set dataset=DIR (a folder written by `mmclf build-dataset`)")
    if not Path(path).is_dir():
        raise FileNotFoundError(f"dataset folder not found: {path}")
    return datasets.load_from_disk(str(path))


def load_checked_dataset(config: dict):
    """The config's DatasetDict, checked: train and validation splits, the expert's columns and one class order
    in every split. Returns (dataset_dict, class_names)."""
    dataset_dict = load_dataset_dict(config["dataset"])
    for split in ("train", "validation"):
        if split not in dataset_dict:
            raise ValueError(f"dataset {config['dataset']} has no {split!r} split (splits: {list(dataset_dict)})")
    expert_cls = expert_class(config["expert"])
    class_names = check_columns(dataset_dict["train"], expert_cls, f"dataset {config['dataset']} split 'train'")
    for split in dataset_dict:
        check_class_names(check_columns(dataset_dict[split], expert_cls, f"dataset {config['dataset']} split {split!r}"),
                          class_names, f"dataset {config['dataset']} split {split!r}")
    return dataset_dict, class_names


# --- training -----------------------------------------------------------------------------------------------

def train_expert(config: dict) -> Path:
    """Run a full training (folds included) from a config dict; return the run directory."""
    config = resolve(config)
    dataset_dict, class_names = load_checked_dataset(config)
    if config.get("init_from"):
        saved_model_dir(config["init_from"])  # a wrong path fails here, on every process, before the run starts
    run = RunFolder(config["output_dir"], RESUME_FREE_KEYS)
    run.open(config, resume=config["resume"])
    run_dir = run.path
    check_dataset_fingerprint(run, dataset_fingerprint(dataset_dict), config["dataset"])

    metrics = {}
    if int(config["folds"]) > 1:
        oof, fold_metrics = train_folds(config, dataset_dict, run_dir, class_names)
        run.save_table(oof, "probs/oof.parquet")
        metrics["folds"] = fold_metrics
        metrics["oof_macro_f1"] = loop.macro_f1(oof.labels, oof.probs.argmax(axis=1))

    expert, state, accelerator = fit(config, dataset_dict["train"], dataset_dict["validation"], run_dir, class_names)
    for split in config["predict_splits"]:
        if split not in dataset_dict:
            accelerator.print(f"predict_splits: the dataset has no {split!r} split; skipped")
            continue
        table = predict_table(accelerator, expert, dataset_dict[split], split,
                              config["training"]["eval_batch_size"], source=run_dir.name)
        run.save_table(table, f"probs/{split}.parquet")
        if split == "validation":
            metrics["validation_rows"] = len(table)
            metrics["validation"] = scores(table.labels, table.predictions())
    run.write_json("metrics.json", {**summary(state), **metrics})
    with main_process_writes() as main:
        if main and "validation" in metrics:  # the model card gets the run's own evaluation
            expert.metadata["metrics"] = {**metrics["validation"], "split": "validation",
                                          "rows": metrics["validation_rows"]}
            expert.write_info(run_dir / "model")
    accelerator.print(f"best validation macro-F1 {state.best_score:.4f} (epoch {state.best_epoch}); run in {run_dir}")
    run.close()
    return run_dir


DATASET_FINGERPRINT_FILE = "dataset_fingerprint.json"


def dataset_fingerprint(dataset_dict) -> str:
    """sha256 over every split's name, row count and `datasets` fingerprint (a hash of its content and the
    transforms that made it): cheap, and it changes when the rows do."""
    import hashlib
    import json

    parts = {split: [len(ds), ds._fingerprint] for split, ds in sorted(dataset_dict.items())}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def check_dataset_fingerprint(run: RunFolder, fingerprint: str, dataset) -> None:
    """Save the dataset's fingerprint beside config.yaml; a resumed run must train on the same rows (`dataset` is a
    resume-free key: the folder may move, its content may not)."""
    import json

    path = run / DATASET_FINGERPRINT_FILE
    if path.is_file():
        saved = json.loads(path.read_text()).get("fingerprint")
        if saved != fingerprint:
            raise ValueError(f"cannot resume {run.path}: dataset {dataset} is not the dataset the run was trained on "
                             f"(fingerprint {fingerprint[:12]}, the run's {path.name}: {str(saved)[:12]}); train on "
                             "the original dataset or into another output folder")
        return
    run.write_json(DATASET_FINGERPRINT_FILE, {"fingerprint": fingerprint, "dataset": str(dataset)})


# --- prediction ---------------------------------------------------------------------------------------------

def predict_expert(model_dir, dataset_dir, split: str, out, batch_size: int = 64) -> ProbabilityTable:
    """The probability table of a saved expert over one split of a dataset, written to `out` (.parquet) when
    given (whole or not at all). The split must hold the expert's columns and its class order."""
    dataset_dict = load_dataset_dict(dataset_dir)
    if split not in dataset_dict:
        raise ValueError(f"dataset {dataset_dir} has no split {split!r} (splits: {list(dataset_dict)})")
    dataset = dataset_dict[split]
    expert = load_expert(model_dir)
    where = f"dataset {dataset_dir} split {split!r}"
    check_class_names(check_columns(dataset, type(expert), where), expert.class_names, where)
    accelerator = loop.make_accelerator({"log_with": None})
    table = predict_table(accelerator, expert, dataset, split, batch_size, expert.metadata.get("name", ""))
    if out is not None:
        with main_process_writes() as main:
            if main:
                table.save(out)
        print_once(f"wrote {len(table)} rows to {out}")
    return table
