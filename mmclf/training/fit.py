"""One expert trained into a run folder, and its probability tables: the single run that `mmclf train`, every
fold of `mmclf.training.folds` and the denoise folds are made of.

A run folder (`run_dir`) gets `model/` (the expert in save_pretrained form), `checkpoints/` and `logs/`; the
config check and `config.yaml` are the caller's (`mmclf.rundir.RunFolder`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from accelerate.utils import set_seed

from mmclf.experts import EXPERT_FILE, expert_class
from mmclf.experts.base import decay_groups
from mmclf.hub import local_or_hub
from mmclf.inference import expert_probabilities
from mmclf.probability_tables import ProbabilityTable
from mmclf.progress import progress_bar
from mmclf.rundir import flatten, main_process_writes, print_once, process_state
from mmclf.training import loop


def saved_model_dir(run) -> Path:
    """The saved expert of an earlier run: RUN_DIR/model, a saved expert folder itself, or a Hub id."""
    path = local_or_hub(run)
    for candidate in (path / "model", path):
        if (candidate / EXPERT_FILE).is_file():
            return candidate
    raise FileNotFoundError(f"init_from={run}: no saved expert there (expected {path / 'model' / EXPERT_FILE}, "
                            f"as `mmclf train` writes)")


def build_or_reload_expert(config: dict, class_names: list[str], train_dataset, run_dir: Path, name: str):
    """Main process builds the expert (e.g. trains the tiny tokenizer) and saves it; the others load that copy,
    so every process, and a resumed run, uses the same tokenizer."""
    model_dir = run_dir / "model"
    expert_cls = expert_class(config["expert"])
    reuse = config["resume"] and (model_dir / EXPERT_FILE).is_file()
    set_seed(config["seed"])
    expert = None
    with main_process_writes() as main:
        if main:
            expert = expert_cls.from_pretrained(model_dir) if reuse else expert_cls.build(
                config["model"], class_names, train_dataset)
            expert.metadata.update(name=name, dataset=str(config["dataset"]),
                                   recipe={"training": config["training"], "seed": config["seed"]})
            init_from = config.get("init_from")  # absent from the schema of experts fitted in one call
            if not reuse and init_from:
                print_once(expert.initialise_from(saved_model_dir(init_from)))
                expert.metadata["init_from"] = str(init_from)
            if not reuse and expert.metadata.get("pretrained_load"):
                print_once(expert.metadata["pretrained_load"]["summary"])
            if not reuse:
                expert.save_pretrained(model_dir)
    return expert if expert is not None else expert_cls.from_pretrained(model_dir)


def encode(expert, dataset, train: bool):
    with process_state().main_process_first():
        return expert.encode(dataset, train=train)


def fit(config: dict, train_dataset, eval_dataset, run_dir: Path, class_names: list[str], name: str | None = None):
    """Train one expert on train_dataset, selecting the best epoch on eval_dataset. Returns (expert, state, acc).
    `name`: the expert's name (its probability tables' source; default: the run directory's name)."""
    training = config["training"]
    expert = build_or_reload_expert(config, class_names, train_dataset, run_dir, name or run_dir.name)
    accelerator = loop.make_accelerator(training, run_dir)
    if not expert.trains_with_loop:
        state = fit_in_one_call(expert, train_dataset, eval_dataset, config)
    elif training.get("frozen_backbone"):
        state = fit_head(expert, train_dataset, eval_dataset, config, run_dir, accelerator)
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
    score = loop.macro_f1(labels, expert_probabilities(expert, eval_dataset, config["training"]["eval_batch_size"]).argmax(1))
    record = {"epoch": 1, "eval_macro_f1": score, "eval_rows": len(labels)}
    print_once(f"fitted: eval macro-F1 {score:.4f}")
    return loop.LoopState(epoch=1, best_score=score, best_epoch=1, history=[record])


class FeatureRows(torch.utils.data.Dataset):
    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"features": self.features[index], "labels": self.labels[index]}


def collate_features(rows: list[dict]) -> dict:
    return {"inputs": {"features": torch.stack([row["features"] for row in rows])},
            "targets": {"labels": torch.stack([row["labels"] for row in rows])}}


class Head(torch.nn.Module):
    def __init__(self, head: torch.nn.Module):
        super().__init__()
        self.head = head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)


@torch.no_grad()
def backbone_features(expert, head, dataset, training: dict, accelerator) -> FeatureRows:
    """The frozen backbone's features of every row (evaluation encoding: no augmentation), computed once; the first
    batch also checks that the head over them gives the model's own logits (else the architecture is refused)."""
    _, loader = loop.make_dataloaders(None, encode(expert, dataset, train=False), expert.collate, training, 0,
                                      accelerator=accelerator)
    expert.model.eval()
    features, labels = [], []
    for batch in progress_bar(loader, desc="backbone features", leave=False,
                              disable=not accelerator.is_local_main_process):
        inputs = {name: tensor.to(accelerator.device) for name, tensor in batch["inputs"].items()}
        if not features:
            check_head_reproduces_model(expert, head, inputs)
        with accelerator.autocast():
            features.append(expert.frozen_features(inputs).float().cpu())
        labels.append(batch["targets"]["labels"])
    return FeatureRows(torch.cat(features), torch.cat(labels))


def check_head_reproduces_model(expert, head, inputs: dict) -> None:
    head.eval()
    direct = expert.logits(expert.model(**inputs)).float()
    composed = head(expert.frozen_features(inputs)).float()
    if not torch.allclose(direct, composed, atol=1e-4, rtol=1e-3):
        raise ValueError(f"training.frozen_backbone: for this {expert.kind} model "
                         f"({type(expert.model).__name__}) the head over the backbone's features does not give the "
                         f"model's logits (max difference {(direct - composed).abs().max():.3g}); this architecture "
                         f"cannot be trained frozen")


def fit_head(expert, train_dataset, eval_dataset, config: dict, run_dir: Path, accelerator) -> loop.LoopState:
    """training.frozen_backbone: every row through the pretrained backbone once, then only the head trains on those
    features, through the same loop (checkpoints, best epoch, resume). The head's modules are the model's own, so
    the expert saves and predicts as usual."""
    training = config["training"]
    head = expert.freeze_backbone()
    expert.model.to(accelerator.device)
    with process_state().main_process_first():
        train_rows = backbone_features(expert, head, train_dataset, training, accelerator)
        eval_rows = backbone_features(expert, head, eval_dataset, training, accelerator)
    print_once(f"frozen backbone: {sum(p.numel() for p in head.parameters()):,} head parameters train on "
               f"{tuple(train_rows.features.shape)} features")
    train_loader, eval_loader = loop.make_dataloaders(train_rows, eval_rows, collate_features, training,
                                                      config["seed"], None, accelerator)
    set_seed(config["seed"])
    model = Head(head)
    state = loop.train(model, train_loader, eval_loader, training, run_dir, accelerator, loss_fn=expert.loss,
                       logits_fn=expert.logits, parameter_groups=decay_groups(model, training["weight_decay"]),
                       resume=config["resume"])
    return state


def predict_table(accelerator, expert, dataset, split_names, batch_size: int, source: str) -> ProbabilityTable:
    """Probabilities of every row of `dataset` (in order); a network's are computed on all processes and gathered."""
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


def summary(state) -> dict:
    return {"best_epoch": state.best_epoch, "best_eval_macro_f1": state.best_score, "epochs": state.history}
