"""`mmclf train` and `mmclf predict-expert`: train an expert from a recipe, write its run directory, and
write probability tables of saved experts.

Run directory (`output_dir`):
    config.yaml              the resolved config (every key)
    model/                   the trained expert in save_pretrained form (+ mmclf_expert.json: kind, class order)
    checkpoints/best, last/  accelerate save_state folders (`--resume` continues from last)
    probs/<split>.parquet    probability tables of the splits in `predict_splits`
    probs/oof.parquet        out-of-fold probabilities of every labelled row (train + validation) when folds > 1
    folds/<i>/               the fold runs (model, metrics, held-out table)
    metrics.json             per-epoch and best validation metrics
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import yaml
from accelerate.utils import set_seed

from mmclf.evaluation import scores
from mmclf.experts import EXPERT_FILE, expert_class, load_expert
from mmclf.experts.base import check_class_names, check_columns
from mmclf.hub import local_or_hub
from mmclf.inference import expert_probabilities
from mmclf.probability_tables import ProbabilityTable
from mmclf.training import loop
from mmclf.training.config import config_differences, flatten, load_config, resolve, write_config

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

def prepare_run_dir(config: dict) -> Path:
    if not config["output_dir"]:
        raise ValueError("no output_dir given: set output_dir=RUN_DIR")
    run_dir = Path(config["output_dir"])
    saved = run_dir / "config.yaml"
    if saved.is_file():
        if not config["resume"]:
            raise ValueError(f"{run_dir} already holds a run ({saved}); pass --resume (resume=true) to continue it "
                             f"or choose another output_dir")
        previous = yaml.safe_load(saved.read_text())
        differences = config_differences(previous, config)
        if differences:
            details = "; ".join(f"{k}: {flatten(previous).get(k)!r} -> {flatten(config).get(k)!r}" for k in differences)
            raise ValueError(f"cannot resume {run_dir}: its config.yaml differs from this config in {details}")
    loop.process_state().wait_for_everyone()  # every process has looked before the main one writes
    if loop.process_state().is_main_process:
        write_config(config, saved)
    loop.process_state().wait_for_everyone()
    return run_dir


def build_or_reload_expert(config: dict, class_names: list[str], train_dataset, run_dir: Path, name: str):
    """Main process builds the expert (e.g. trains the tiny tokenizer) and saves it; the others load that copy,
    so every process, and a resumed run, uses the same tokenizer."""
    state, model_dir = loop.process_state(), run_dir / "model"
    expert_cls = expert_class(config["expert"])
    reuse = config["resume"] and (model_dir / EXPERT_FILE).is_file()
    set_seed(config["seed"])
    if state.is_main_process:
        expert = expert_cls.from_pretrained(model_dir) if reuse else expert_cls.build(
            config["model"], class_names, train_dataset)
        expert.metadata.update(name=name, dataset=str(config["dataset"]),
                               recipe={"training": config["training"], "seed": config["seed"]})
        init_from = config.get("init_from")  # absent from the schema of experts fitted in one call
        if not reuse and init_from:
            state.print(expert.initialise_from(saved_model_dir(init_from)))
            expert.metadata["init_from"] = str(init_from)
        if not reuse:
            expert.save_pretrained(model_dir)
    state.wait_for_everyone()
    if not state.is_main_process:
        expert = expert_cls.from_pretrained(model_dir)
    return expert


def saved_model_dir(run) -> Path:
    """The saved expert of an earlier run: RUN_DIR/model, a saved expert folder itself, or a Hub id."""
    path = local_or_hub(run)
    for candidate in (path / "model", path):
        if (candidate / EXPERT_FILE).is_file():
            return candidate
    raise FileNotFoundError(f"init_from={run}: no saved expert there (expected {path / 'model' / EXPERT_FILE}, "
                            f"as `mmclf train` writes)")


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


def encode(expert, dataset, train: bool):
    with loop.process_state().main_process_first():
        return expert.encode(dataset, train=train)


def fit(config: dict, train_dataset, eval_dataset, run_dir: Path, class_names: list[str], name: str | None = None):
    """Train one expert on train_dataset, selecting the best epoch on eval_dataset. Returns (expert, state, acc).
    `name`: the expert's name (its probability tables' source; default: the run directory's name)."""
    training = config["training"]
    expert = build_or_reload_expert(config, class_names, train_dataset, run_dir, name or run_dir.name)
    accelerator = loop.make_accelerator(training, run_dir)
    if not expert.trains_with_loop:
        state = fit_in_one_call(expert, train_dataset, eval_dataset, config)
    else:
        train_encoded, eval_encoded = encode(expert, train_dataset, True), encode(expert, eval_dataset, False)
        lengths = expert.lengths(train_encoded) if training["group_by_length"] else None
        train_loader, eval_loader = loop.make_dataloaders(train_encoded, eval_encoded, expert.collate, training,
                                                          config["seed"], lengths, accelerator)
        set_seed(config["seed"])
        tracker_config = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(config).items()}
        state = loop.train(expert.model, train_loader, eval_loader, training, run_dir, accelerator,
                           loss_fn=expert.loss, logits_fn=expert.logits, parameter_groups=expert.parameter_groups(training),
                           resume=config["resume"], tracker_config=tracker_config)
        expert.model = accelerator.unwrap_model(expert.model)
    if accelerator.is_main_process:
        expert.save_pretrained(run_dir / "model")
    accelerator.wait_for_everyone()
    return expert, state, accelerator


def fit_in_one_call(expert, train_dataset, eval_dataset, config: dict) -> loop.LoopState:
    """An expert without a gradient loop (e.g. TF-IDF + a linear model) fits once, on every process alike;
    its evaluation is reported in the loop's vocabulary."""
    set_seed(config["seed"])
    expert.fit(train_dataset, eval_dataset)
    labels = np.asarray(eval_dataset["label"])
    score = loop.macro_f1(expert_probabilities(expert, eval_dataset, config["training"]["eval_batch_size"]), labels)
    record = {"epoch": 1, "eval_macro_f1": score, "eval_rows": len(labels)}
    loop.process_state().print(f"fitted: eval macro-F1 {score:.4f}")
    return loop.LoopState(epoch=1, best_score=score, best_epoch=1, history=[record])


def predict_table(accelerator, expert, dataset, split_names, batch_size: int, source: str) -> ProbabilityTable:
    """Probabilities of every row of `dataset` (in order); a network's are computed on all processes and gathered."""
    import torch

    if expert.trains_with_loop:
        encoded = encode(expert, dataset, train=False)
        _, loader = loop.make_dataloaders(None, encoded, expert.collate, {"eval_batch_size": batch_size}, 0,
                                          accelerator=accelerator)
        loader = accelerator.prepare_data_loader(loader)
        expert.model.to(accelerator.device)
        logits, _ = loop.predict(accelerator, expert.model, loader, expert.logits)
        probs = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    else:
        probs = expert_probabilities(expert, dataset, batch_size)
    splits = [split_names] * len(dataset) if isinstance(split_names, str) else split_names
    return ProbabilityTable(ids=list(dataset["id"]), splits=splits, labels=np.asarray(dataset["label"]),
                            probs=probs, class_names=expert.class_names, source=source)


def save_table(table: ProbabilityTable, path: Path) -> None:
    if loop.process_state().is_main_process:
        table.save(path)


def summary(state) -> dict:
    return {"best_epoch": state.best_epoch, "best_eval_macro_f1": state.best_score, "epochs": state.history}


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


def train_folds(config: dict, dataset_dict, run_dir: Path, class_names: list[str]) -> tuple[ProbabilityTable, list]:
    """k models over k stratified folds of train+validation; out-of-fold probabilities of every labelled row."""
    from datasets import concatenate_datasets

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
        fold_dir = run_dir / "folds" / str(i)
        held_path = fold_dir / "probs" / "heldout.parquet"
        if not (config["resume"] and held_path.is_file()):
            loop.process_state().print(f"fold {i + 1}/{k}: {len(train_rows)} training rows, {len(held_rows)} held out")
            held = labelled.select(held_rows)
            fold_config = {**config, "output_dir": str(fold_dir), "folds": 1, "predict_splits": [],
                           "init_from": fold_init_from(config, i, list(held["id"]))}
            prepare_run_dir(fold_config)
            expert, state, accelerator = fit(fold_config, labelled.select(train_rows), held, fold_dir, class_names,
                                             name=run_dir.name)
            table = predict_table(accelerator, expert, held, [origin[j] for j in held_rows],
                                  config["training"]["eval_batch_size"], source=f"{run_dir.name}/folds/{i}")
            save_table(table, held_path)
            write_json({**summary(state), "train_rows": len(train_rows), "eval_rows": len(held_rows)},
                       fold_dir / "metrics.json")
            if loop.process_state().is_main_process:  # the fold is complete: its checkpoints are no longer needed
                shutil.rmtree(fold_dir / "checkpoints", ignore_errors=True)
            loop.process_state().wait_for_everyone()
        fold_table = ProbabilityTable.load(held_path)
        probs[held_rows] = fold_table.probs
        fold_metrics.append({"fold": i, **json.loads((fold_dir / "metrics.json").read_text())})
    oof = ProbabilityTable(ids=list(labelled["id"]), splits=origin, labels=labels, probs=probs,
                           class_names=class_names, source=run_dir.name)
    return oof, fold_metrics


def write_json(data: dict, path: Path) -> None:
    if loop.process_state().is_main_process:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2))


def train_expert(config: dict) -> Path:
    """Run a full training (folds included) from a config dict; return the run directory."""
    config = resolve(config)
    dataset_dict, class_names = load_checked_dataset(config)
    if config.get("init_from"):
        saved_model_dir(config["init_from"])  # a wrong path fails here, on every process, before the run starts
    run_dir = prepare_run_dir(config)

    metrics = {}
    if int(config["folds"]) > 1:
        oof, fold_metrics = train_folds(config, dataset_dict, run_dir, class_names)
        save_table(oof, run_dir / "probs" / "oof.parquet")
        metrics["folds"] = fold_metrics
        metrics["oof_macro_f1"] = loop.macro_f1(oof.probs, oof.labels)

    expert, state, accelerator = fit(config, dataset_dict["train"], dataset_dict["validation"], run_dir, class_names)
    for split in config["predict_splits"]:
        if split not in dataset_dict:
            accelerator.print(f"predict_splits: the dataset has no {split!r} split; skipped")
            continue
        table = predict_table(accelerator, expert, dataset_dict[split], split,
                              config["training"]["eval_batch_size"], source=run_dir.name)
        save_table(table, run_dir / "probs" / f"{split}.parquet")
        if split == "validation":
            metrics["validation_rows"] = len(table)
            metrics["validation"] = scores(table.labels, table.predictions())
    write_json({**summary(state), **metrics}, run_dir / "metrics.json")
    if "validation" in metrics and accelerator.is_main_process:  # the model card gets the run's own evaluation
        expert.metadata["metrics"] = {**metrics["validation"], "split": "validation", "rows": metrics["validation_rows"]}
        expert.write_info(run_dir / "model")
    accelerator.wait_for_everyone()
    accelerator.print(f"best validation macro-F1 {state.best_score:.4f} (epoch {state.best_epoch}); run in {run_dir}")
    return run_dir


# --- command line -------------------------------------------------------------------------------------------

def add_train_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="recipe name (e.g. text-tiny, image-tiny) or YAML path")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="override any recipe key, dotted for nesting: dataset=DIR training.epochs=3")
    parser.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last checkpoint")


def run_train(args) -> int:
    overrides = list(args.overrides) + (["resume=true"] if args.resume else [])
    train_expert(load_config(args.config, overrides))
    loop.end_processes()
    return 0


def add_predict_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="a saved expert folder (RUN/model)")
    parser.add_argument("--dataset", required=True, help="a DatasetDict folder written by `mmclf build-dataset`")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", required=True, help="the probability table to write (.parquet)")
    parser.add_argument("--batch-size", type=int, default=64)


def run_predict(args) -> int:
    dataset_dict = load_dataset_dict(args.dataset)
    if args.split not in dataset_dict:
        raise ValueError(f"dataset {args.dataset} has no split {args.split!r} (splits: {list(dataset_dict)})")
    dataset = dataset_dict[args.split]
    expert = load_expert(args.model)
    where = f"dataset {args.dataset} split {args.split!r}"
    check_class_names(check_columns(dataset, type(expert), where), expert.class_names, where)
    accelerator = loop.make_accelerator({"log_with": None})
    table = predict_table(accelerator, expert, dataset, args.split, args.batch_size, expert.metadata.get("name", ""))
    save_table(table, Path(args.out))
    loop.process_state().print(f"wrote {len(table)} rows to {args.out}")
    loop.end_processes()
    return 0
