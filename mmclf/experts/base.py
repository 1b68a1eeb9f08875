"""The expert interface: what every expert (text, image, ...) implements, so that training, folds,
probability tables, prediction and the pipeline never ask which kind it is.

An expert owns
- its model and its recipe section (`config`: the `model:` keys of a recipe, `config_defaults` for the schema),
  the class order (`class_names`) and free-form `metadata` (run name, dataset, metrics) for its model card;
- its encoding: `encode_batch` turns a batch of rows (columns id, title, description, image, has_image and,
  when known, label) into model inputs and targets; `encode` does it for a whole `datasets.Dataset`
  (lazily, or cached); `collate` stacks encoded rows into `{"inputs": {...}, "targets": {...}}`, so targets
  never reach `forward`;
- its loss (`loss(outputs, targets)`), its class logits (`logits(outputs)`) and its optimizer parameter groups;
- save_pretrained / from_pretrained: weights as safetensors, `mmclf_expert.json` (kind, class order, config,
  metadata) and a model card.

An expert that needs no gradient loop sets `trains_with_loop = False` and implements `fit(train, eval)`
and `predict_batch` instead of a torch model.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from mmclf.experts import EXPERT_FILE, read_expert_info
from mmclf.hub import Artifact, write_model_card


class Expert(Artifact):
    artifact = "expert"
    kind: ClassVar[str] = ""
    required_columns: ClassVar[tuple[str, ...]] = ("id", "label")  # dataset columns the expert reads
    target_names: ClassVar[tuple[str, ...]] = ("labels",)  # encoded keys that are targets, not model inputs
    config_defaults: ClassVar[dict] = {}  # the recipe's `model:` section: every key and its default
    trains_with_loop: ClassVar[bool] = True
    task: ClassVar[str] = "classification"  # model card task type

    def __init__(self, model, config: dict, class_names: list[str], metadata: dict | None = None):
        self.model = model
        self.config = {**self.config_defaults, **config}
        self.class_names = list(class_names)
        self.metadata = dict(metadata or {})

    # --- building, saving, loading ---------------------------------------------------------------

    @classmethod
    def build(cls, config: dict, class_names: list[str], train_dataset) -> Expert:
        """A new, untrained expert from the recipe's `model:` section (train_dataset: e.g. to fit a tokenizer)."""
        raise NotImplementedError

    def save_model(self, directory: Path) -> None:
        raise NotImplementedError

    @classmethod
    def load_model(cls, directory: Path, config: dict, class_names: list[str], metadata: dict) -> Expert:
        raise NotImplementedError

    def save_pretrained(self, directory) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.save_model(directory)
        self.write_info(directory)
        return directory

    def write_info(self, directory) -> None:
        """mmclf_expert.json (kind, class order, config, metadata) and the model card."""
        info = {"kind": self.kind, "class_names": self.class_names, "config": self.config, "metadata": self.metadata}
        (Path(directory) / EXPERT_FILE).write_text(json.dumps(info, indent=2, default=str))
        self.write_card(directory)

    @classmethod
    def _from_folder(cls, directory) -> Expert:
        info = read_expert_info(directory)
        if info["kind"] != cls.kind:
            raise ValueError(f"{directory} holds a {info['kind']!r} expert, not a {cls.kind!r} one")
        config = info.get("config") or {key: info[key] for key in cls.config_defaults if key in info}
        return cls.load_model(Path(directory), config, info["class_names"], info.get("metadata") or {})

    def initialise_from(self, directory) -> str:
        """Take the weights of the saved expert in `directory` (recipe key `init_from`); returns what was loaded."""
        raise ValueError(f"the {self.kind} expert cannot be initialised from an earlier run (init_from)")

    def write_card(self, directory) -> Path:
        name = self.metadata.get("name") or self.kind
        return write_model_card(
            directory, title=f"mmclf {self.kind} expert: {name}", task=self.task, class_names=self.class_names,
            summary=f"A {self.kind} expert of mmclf for product type classification "
                    f"({len(self.class_names)} classes). Its class probabilities feed mmclf's decision-level fusion.",
            metrics=self.metadata.get("metrics"), base_model=self.base_model, dataset=self.metadata.get("dataset"),
            tags=[self.kind], details={"kind": self.kind, "model": self.config, **self.metadata.get("recipe", {})},
            usage=("from mmclf.experts import load_expert\n"
                   "from mmclf.inference import expert_probabilities\n\n"
                   "expert = load_expert(\"path/to/this/folder\")\n"
                   "probs = expert_probabilities(expert, rows)  # rows: a datasets.Dataset or mmclf Listings"),
        )

    @property
    def base_model(self) -> str | None:
        return None

    # --- encoding ---------------------------------------------------------------------------------

    def encode_batch(self, batch: dict, train: bool) -> dict:
        """Columns of rows -> columns of encoded rows (model inputs and, when `label` is given, targets)."""
        raise NotImplementedError

    def encode(self, dataset, train: bool):
        """A `datasets.Dataset` encoded for training or evaluation (here lazily, on access)."""
        columns = [c for c in self.required_columns if c in dataset.column_names and c != "id"]
        return dataset.with_transform(partial(self.encode_batch, train=train), columns=columns)

    def lengths(self, encoded) -> list[int] | None:
        """Row lengths for length-grouped batches; None where lengths do not matter."""
        return None

    def collate_inputs(self, rows: list[dict]) -> dict:
        raise NotImplementedError

    def collate(self, rows: list[dict]) -> dict:
        targets = {name: torch.as_tensor([row[name] for row in rows]) for name in self.target_names if name in rows[0]}
        inputs = self.collate_inputs([{k: v for k, v in row.items() if k not in self.target_names} for row in rows])
        return {"inputs": inputs, "targets": targets}

    # --- model ------------------------------------------------------------------------------------

    def logits(self, outputs) -> torch.Tensor:
        return outputs.logits if hasattr(outputs, "logits") else outputs

    def loss(self, outputs, targets: dict) -> torch.Tensor:
        return F.cross_entropy(self.logits(outputs).float(), targets["labels"])

    def parameter_groups(self, training: dict) -> list[dict]:
        """Optimizer parameter groups; a group may carry `lr_scale` (a multiplier of the recipe's lr)."""
        return decay_groups(self.model, training["weight_decay"])

    def pooled_features(self, inputs: dict) -> torch.Tensor:
        """The backbone's pooled features of a collated batch (for feature-level fusion)."""
        raise NotImplementedError

    # --- a frozen backbone (training.frozen_backbone): its features computed once, only the head trains ----------

    def head(self) -> torch.nn.Module:
        """The part that trains over a frozen backbone: frozen features -> class logits (the model's own modules)."""
        raise ValueError(f"the {self.kind} expert has no frozen-backbone mode (training.frozen_backbone)")

    def frozen_features(self, inputs: dict) -> torch.Tensor:
        """What `head()` reads: the frozen backbone's output for a collated batch."""
        raise ValueError(f"the {self.kind} expert has no frozen-backbone mode (training.frozen_backbone)")

    def freeze_backbone(self) -> torch.nn.Module:
        """Every parameter frozen but the head's; returns the head."""
        head = self.head()
        self.model.requires_grad_(False)
        head.requires_grad_(True)
        return head

    def fit(self, train_dataset, eval_dataset) -> None:
        """Experts with `trains_with_loop = False` fit here, in one call."""
        raise NotImplementedError

    # --- inference --------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device) -> Expert:
        self.model.to(device)
        return self

    def _inputs(self, batch: dict) -> dict:
        encoded = self.encode_batch({k: v for k, v in batch.items() if k != "label"}, train=False)
        rows = [dict(zip(encoded, values)) for values in zip(*encoded.values())]
        return {name: tensor.to(self.device) for name, tensor in self.collate(rows)["inputs"].items()}

    @torch.no_grad()
    def predict_batch(self, batch: dict) -> np.ndarray:
        """Class probabilities [rows, classes] of a batch of rows, in `class_names` order."""
        self.model.eval()
        logits = self.logits(self.model(**self._inputs(batch)))
        return torch.softmax(logits.float(), dim=1).cpu().numpy()

    @torch.no_grad()
    def features_batch(self, batch: dict) -> np.ndarray:
        self.model.eval()
        return self.pooled_features(self._inputs(batch)).float().cpu().numpy()


def decay_groups(model, weight_decay: float) -> list[dict]:
    """Weight decay only on matrices, not on biases and normalisation weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]


def check_columns(dataset, expert_cls, where: str) -> list[str]:
    """Raise unless `dataset` has the columns the expert reads and a ClassLabel label; return its class names."""
    missing = [c for c in expert_cls.required_columns if c not in dataset.column_names]
    if missing:
        raise ValueError(f"{where} lacks column(s) {missing} needed by the {expert_cls.kind} expert; "
                         f"it has {dataset.column_names}")
    names = getattr(dataset.features["label"], "names", None)
    if names is None:
        raise ValueError(f"{where}: column 'label' must be a datasets.ClassLabel (the class order), "
                         f"got {dataset.features['label']}")
    return list(names)


def check_class_names(data_names: list[str], model_names: list[str], where: str) -> None:
    if list(data_names) != list(model_names):
        only_data = sorted(set(data_names) - set(model_names))
        only_model = sorted(set(model_names) - set(data_names))
        detail = (f"only in the data: {only_data}; only in the model: {only_model}" if only_data or only_model
                  else "same classes in a different order")
        raise ValueError(f"{where}: class names differ from the model's ({detail}); data: {list(data_names)}, "
                         f"model: {list(model_names)}")
