"""Feature-level fusion: the baseline decision-level fusion is compared against.

The experts are frozen and their backbone features extracted once; this module trains a head
on those feature matrices (one per modality, same row order):
- concat:    standardised features concatenated;
- sum:       each modality linearly projected to `projection_size`, the projections summed;
- attention: each modality projected as above, then a learned score per modality
             (w . tanh(projection)) softmax-normalised over modalities per row, and the
             projections averaged with those weights;
followed by a linear classifier (hidden_size=0) or linear -> ReLU -> linear.
Features are standardised inside the model with the training rows' mean and standard
deviation (stored as buffers, so a saved model standardises on its own). Training: the heads
trainer of `mmclf.fusion.trainer` (Adam, cross-entropy, mini-batches, the epoch with the best
validation macro-F1 kept), as for decision-level fusion.
"""

from __future__ import annotations

import json

import numpy as np
import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from mmclf.evaluation import scores
from mmclf.fusion.trainer import train_heads
from mmclf.hub import write_model_card
from mmclf.progress import progress_bar

COMBINE_MODES = ("concat", "sum", "attention")


class Standardize(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def fit(self, features: np.ndarray) -> None:
        self.mean.copy_(torch.from_numpy(features.mean(axis=0)))
        std = features.std(axis=0)
        self.std.copy_(torch.from_numpy(np.where(std > 1e-6, std, 1.0)))  # constant columns stay centred only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class FeatureFusionModel(nn.Module, PyTorchModelHubMixin, library_name="mmclf", tags=["mmclf", "feature-fusion"]):
    def __init__(
        self,
        feature_dims: list[int],
        num_classes: int,
        combine: str = "concat",
        projection_size: int = 256,
        hidden_size: int = 0,
        class_names: list[str] | None = None,
    ):
        super().__init__()
        if combine not in COMBINE_MODES:
            raise ValueError(f"combine must be one of {COMBINE_MODES}, got {combine!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.feature_dims = list(feature_dims)
        self.num_classes = num_classes
        self.combine = combine
        self.class_names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
        self.standardize = nn.ModuleList(Standardize(d) for d in self.feature_dims)
        if combine == "concat":
            self.projections = nn.ModuleList()
            fused_size = sum(self.feature_dims)
        else:
            self.projections = nn.ModuleList(nn.Linear(d, projection_size) for d in self.feature_dims)
            fused_size = projection_size
        self.attention = nn.Linear(projection_size, 1, bias=False) if combine == "attention" else None
        if hidden_size > 0:
            self.classifier = nn.Sequential(
                nn.Linear(fused_size, hidden_size), nn.ReLU(), nn.Linear(hidden_size, num_classes)
            )
        else:
            self.classifier = nn.Linear(fused_size, num_classes)

    def fuse(self, features) -> torch.Tensor:
        features = [norm(x) for norm, x in zip(self.standardize, features)]
        if self.combine == "concat":
            return torch.cat(features, dim=1)
        projected = torch.stack([proj(x) for proj, x in zip(self.projections, features)], dim=1)  # [rows, modalities, P]
        if self.combine == "sum":
            return projected.sum(dim=1)
        weights = self.attention(torch.tanh(projected)).softmax(dim=1)  # [rows, modalities, 1]
        return (weights * projected).sum(dim=1)

    def forward(self, *features: torch.Tensor) -> torch.Tensor:
        """Logits from one feature matrix [rows, dim] per modality, in `feature_dims` order."""
        return self.classifier(self.fuse(features))

    def check_features(self, features, what: str = "features") -> list[np.ndarray]:
        if len(features) != len(self.feature_dims):
            raise ValueError(f"{what}: expected {len(self.feature_dims)} feature matrices (one per modality), "
                             f"got {len(features)}")
        arrays = [np.asarray(x, dtype=np.float32) for x in features]
        for m, (x, dim) in enumerate(zip(arrays, self.feature_dims)):
            if x.ndim != 2 or x.shape[1] != dim:
                raise ValueError(f"{what}: modality {m} must have shape [rows, {dim}], got {x.shape}")
            if x.shape[0] != arrays[0].shape[0]:
                raise ValueError(f"{what}: modality {m} has {x.shape[0]} rows, modality 0 has {arrays[0].shape[0]}")
            bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
            if len(bad):
                raise ValueError(f"{what}: modality {m}, row {bad[0]} has NaN or infinite values ({len(bad)} rows)")
        return arrays

    @torch.no_grad()
    def predict_proba(self, features: list[np.ndarray], batch_size: int = 4096) -> np.ndarray:
        arrays = self.check_features(features)
        self.eval()
        outputs = []
        for start in range(0, len(arrays[0]), batch_size):
            batch = [torch.from_numpy(x[start : start + batch_size]) for x in arrays]
            outputs.append(self(*batch).softmax(dim=1))
        if not outputs:
            return np.zeros((0, self.num_classes), dtype=np.float32)
        return torch.cat(outputs).numpy()


def check_labels(labels, rows: int, num_classes: int, what: str) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (rows,):
        raise ValueError(f"{what}: expected {rows} labels, got shape {labels.shape}")
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if len(bad):
        raise ValueError(f"{what}: row {bad[0]} has label {labels[bad[0]]}, outside 0..{num_classes - 1}")
    return labels


def fit_feature_fusion(
    train_features: list[np.ndarray],
    train_labels,
    val_features: list[np.ndarray],
    val_labels,
    *,
    combine: str = "concat",
    hidden_size: int = 0,
    projection_size: int = 256,
    epochs: int = 30,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    num_classes: int | None = None,
    class_names: list[str] | None = None,
    seed: int = 0,
    progress: bool = False,
) -> FeatureFusionModel:
    """Train a feature-fusion head; the returned model has the best validation macro-F1 epoch's
    weights and `history` (per-epoch train_loss, eval_loss, eval_macro_f1) and `best_epoch` attributes."""
    if not train_features:
        raise ValueError("no feature matrices given")
    if num_classes is None:
        num_classes = len(class_names) if class_names is not None else int(np.max(train_labels)) + 1
    dims = [np.asarray(x).shape[1] if np.asarray(x).ndim == 2 else -1 for x in train_features]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FeatureFusionModel(dims, num_classes, combine, projection_size, hidden_size, class_names)
    train = model.check_features(train_features, "train features")
    val = model.check_features(val_features, "validation features")
    if len(train[0]) == 0 or len(val[0]) == 0:
        raise ValueError("feature fusion needs at least one training and one validation row")
    y_train = torch.from_numpy(check_labels(train_labels, len(train[0]), num_classes, "train labels"))
    y_val = check_labels(val_labels, len(val[0]), num_classes, "validation labels")
    for norm, x in zip(model.standardize, train):
        norm.fit(x)
    rows = len(train[0])
    inputs = tuple(torch.from_numpy(np.concatenate([x, v])) for x, v in zip(train, val))
    labels = torch.cat([y_train, torch.from_numpy(y_val)])
    with progress_bar(total=epochs, desc=f"feature fusion ({combine})", disable=not progress) as bar:
        result = train_heads([model], inputs, labels, [torch.arange(rows)], [torch.arange(rows, len(labels))],
                             epochs=epochs, lr=lr, weight_decay=weight_decay, batch_size=batch_size,
                             generator=torch.Generator().manual_seed(seed), progress=bar)[0]
    model.history, model.best_epoch = result["history"], result["best_epoch"]
    return model


def fuse_expert_features(expert_dirs: dict, dataset_dict, out_dir, *, combine: str = "concat", seed: int = 0,
                         **options) -> dict:
    """Step-by-step feature-level fusion of saved experts on a built dataset: features extracted once from the
    frozen experts, a head trained on `train` and selected on `validation`; probability tables for every split
    and `metrics.json` (validation and, when labelled, test macro-F1) go to `out_dir`."""
    from pathlib import Path

    from mmclf.experts import load_expert
    from mmclf.experts.base import check_class_names
    from mmclf.inference import expert_features
    from mmclf.probability_tables import ProbabilityTable

    out_dir = Path(out_dir)
    class_names = dataset_dict["train"].features["label"].names
    experts = [load_expert(path) for path in expert_dirs.values()]
    for expert, path in zip(experts, expert_dirs.values()):
        check_class_names(class_names, expert.class_names, f"expert {path}")
    features = {split: [expert_features(expert, dataset_dict[split]) for expert in experts] for split in dataset_dict}
    labels = {split: np.asarray(dataset_dict[split]["label"][:]) for split in dataset_dict}
    model = fit_feature_fusion(features["train"], labels["train"], features["validation"], labels["validation"],
                               combine=combine, class_names=class_names, seed=seed, **options)
    model.save_pretrained(out_dir)
    metrics = {"combine": combine, "experts": {k: str(v) for k, v in expert_dirs.items()},
               "best_epoch": model.best_epoch, "history": model.history}
    for split in dataset_dict:
        probs = model.predict_proba(features[split])
        ProbabilityTable(dataset_dict[split]["id"][:], [split] * len(probs), labels[split], probs, class_names,
                         source=f"feature-fusion({combine})").save(out_dir / "probs" / f"{split}.parquet")
        if (labels[split] >= 0).all():
            metrics[split] = scores(labels[split], probs.argmax(axis=1))
            metrics[f"{split}_macro_f1"] = metrics[split]["macro_f1"]
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    split = "test" if "test" in metrics else "validation"
    write_model_card(out_dir, title=f"mmclf feature-level fusion ({combine}) of {', '.join(expert_dirs)}",
                     task="multimodal-classification", class_names=class_names, tags=["feature-level-fusion"],
                     metrics={**metrics[split], "split": split, "rows": len(labels[split])} if split in metrics else None,
                     details={"combine": combine, "experts": metrics["experts"], "best_epoch": model.best_epoch, **options},
                     summary="A head over the frozen experts' pooled features: the feature-level baseline that "
                             "decision-level fusion is compared against.",
                     usage="from mmclf.fusion.feature import FeatureFusionModel\n\n"
                           "model = FeatureFusionModel.from_pretrained(\"path/to/this/folder\")\n"
                           "probs = model.predict_proba([text_features, image_features])")
    return metrics
