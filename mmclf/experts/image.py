"""Image expert: any timm model (ResNet152 in the paper) behind a small `nn.Module` with huggingface_hub's
`PyTorchModelHubMixin`, so a saved folder rebuilds offline with `ImageClassifier.from_pretrained(dir)`.

Weights: ImageNet from the Hub only when the recipe says `pretrained: true` (or names a Hub id), from a
local file with `pretrained_file` (its names mapped onto timm's with `key_map`; a load that fills under
`min_loaded` of the backbone is refused), otherwise random (offline). Transforms as in the paper: training
resizes, rotates, random-crops and flips; evaluation resizes and centre-crops.

Rows without an image are kept: they get a blank image of the normalisation mean colour (so the input
is all zeros after normalisation) and the dataset's `has_image` flag says which rows they are.

A dataset written by `mmclf cache-images` with a column `image_<resize_size>px` is read from that column
(images already decoded and resized: the same inputs, without JPEG decoding); other datasets from `image`.
"""

from __future__ import annotations

import pickle  # only for its error type: weights load weights-only
import re
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import timm
import torch
from huggingface_hub import PyTorchModelHubMixin
from PIL import Image
from safetensors.torch import load_file
from torch import nn
from torchvision import transforms as T

from mmclf.data.image_cache import cache_column, cached_image, cached_sizes
from mmclf.experts.base import Expert
from mmclf.hub import from_pretrained_quietly

CONFIG_DEFAULTS = {
    "name": "resnet152",  # any timm model name
    "pretrained": False,  # true: ImageNet weights from the Hub; or a Hub id (hf-hub:org/name)
    "pretrained_file": None,  # a local weights file: safetensors, or a torch state dict (.pth/.bin, loaded weights-only)
    "key_map": None,  # pretrained_file's names -> timm's: {regex: replacement} applied in order, or "order" (by position)
    "min_loaded": 0.9,  # refuse a pretrained_file that fills under this share of the backbone's tensors
    "image_size": 224,
    "resize_size": 256,  # resize the shorter side to this, then crop image_size (random for training, centre for eval)
    "rotation": 15,  # random rotation in degrees (training)
    "hflip": 0.5,  # horizontal flip probability (training)
    "mean": None,  # null: the timm model's pretrained config (ImageNet)
    "std": None,
    "drop_rate": 0.0,
    "missing_image": "blank",  # rows without an image get a blank mean-colour image (has_image=False), never dropped
}


class ImageClassifier(nn.Module, PyTorchModelHubMixin, library_name="mmclf", tags=["image-classification", "timm"]):
    def __init__(self, model_name: str, class_names: list, image_size: int = 224, resize_size: int = 256,
                 mean: list | None = None, std: list | None = None, drop_rate: float = 0.0):
        super().__init__()
        self.class_names = list(class_names)
        self.backbone = timm.create_model(model_name, pretrained=False, num_classes=len(class_names),
                                          drop_rate=drop_rate)
        self.image_size, self.resize_size = image_size, resize_size
        self.mean = list(mean or self.backbone.pretrained_cfg.get("mean", (0.485, 0.456, 0.406)))
        self.std = list(std or self.backbone.pretrained_cfg.get("std", (0.229, 0.224, 0.225)))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.backbone(pixel_values)

    def pooled_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_head(self.backbone.forward_features(pixel_values), pre_logits=True)


def load_pretrained_backbone(model: ImageClassifier, config: dict) -> dict | None:
    """Copy ImageNet (Hub) or local-file weights into the backbone; the classifier keeps its new shape.
    Returns the load report of a local file (None otherwise)."""
    pretrained, weights_file = config["pretrained"], config["pretrained_file"]
    if weights_file:
        return load_weights_file(model, weights_file, config["key_map"], config["min_loaded"])
    if not pretrained:
        return None
    name = pretrained if isinstance(pretrained, str) else config["name"]
    source = timm.create_model(name, pretrained=True, num_classes=len(model.class_names))
    model.backbone.load_state_dict(source.state_dict())
    return None


def read_state_dict(path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a torch checkpoint (weights only: no pickled code runs); a checkpoint that
    wraps its weights in `state_dict` / `model` is unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.pretrained_file not found: {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError) as error:
        raise ValueError(f"model.pretrained_file {path} is neither safetensors nor a torch state dict that loads "
                         f"weights-only: {error}") from None
    for key in ("state_dict", "model", "module"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"model.pretrained_file {path} holds no mapping of names to tensors")
    return state


def map_keys(state: dict, key_map, target: dict) -> dict:
    """Rename `state`'s tensors to the target's names: regex replacements in order, or "order": the i-th tensor of
    the file to the i-th of the target, where both list the same number of tensors of the same shapes."""
    if not key_map:
        return dict(state)
    if key_map == "order":
        given, wanted = list(state.items()), list(target.items())
        if len(given) != len(wanted):
            raise ValueError(f"model.key_map=order: the file has {len(given)} tensors, the backbone {len(wanted)}")
        for (name, tensor), (target_name, target_tensor) in zip(given, wanted):
            if tensor.shape != target_tensor.shape and not target_name.startswith("__head__"):
                raise ValueError(f"model.key_map=order: {name} {tuple(tensor.shape)} does not fit {target_name} "
                                 f"{tuple(target_tensor.shape)}")
        return {target_name: tensor for (_, tensor), (target_name, _) in zip(given, wanted)}
    if not isinstance(key_map, dict):
        raise ValueError(f"model.key_map must be a mapping {{regex: replacement}} or 'order', got {key_map!r}")  # noqa: TRY004
    renamed = {}
    for name, tensor in state.items():
        for pattern, replacement in key_map.items():
            name = re.sub(pattern, replacement, name)
        renamed[name] = tensor
    return renamed


def load_weights_file(model: ImageClassifier, path, key_map=None, min_loaded: float = 0.9) -> dict:
    """Load a weights file into the backbone (not its classifier, which is new). Tensors whose name and shape match
    load; the report counts loaded / missing / unexpected ones. Refused (error listing the unmatched names) when
    under `min_loaded` of the backbone's tensors would load: a partial load must not pass for a pretrained one."""
    backbone = model.backbone
    head = next(name for name, module in backbone.named_modules() if module is backbone.get_classifier())
    wanted = {k: v for k, v in backbone.state_dict().items() if not k.startswith(f"{head}.")}
    if key_map == "order" and Path(path).suffix == ".safetensors":
        raise ValueError(f"model.key_map=order needs a torch state dict (.pth, tensors in the order they were saved); "
                         f"{path} is safetensors, whose tensors are stored sorted: give a {{regex: replacement}} map")
    state = read_state_dict(path)
    target = wanted
    if key_map == "order" and len(state) > len(wanted):  # the file's own classifier, last: matched, then dropped
        target = {**wanted, **{f"__head__{k}": v for k, v in backbone.state_dict().items() if k.startswith(f"{head}.")}}
    given = map_keys(state, key_map, target)
    given = {k: v for k, v in given.items() if not k.startswith(("__head__", f"{head}."))}
    loaded = [k for k in wanted if k in given and given[k].shape == wanted[k].shape]
    report = {"file": str(path), "loaded": len(loaded), "backbone_tensors": len(wanted),
              "missing": [k for k in wanted if k not in given],
              "unexpected": [k for k in given if k not in wanted],
              "shape_mismatch": [f"{k} {tuple(given[k].shape)} -> {tuple(wanted[k].shape)}"
                                 for k in wanted if k in given and given[k].shape != wanted[k].shape]}
    summary = (f"pretrained_file {path}: {len(loaded)} of {len(wanted)} backbone tensors loaded, "
               f"{len(report['missing'])} missing, {len(report['unexpected'])} unexpected, "
               f"{len(report['shape_mismatch'])} of another shape; classifier ({head}) new")
    if len(loaded) < min_loaded * len(wanted):
        details = "; ".join(f"{what}: {', '.join(report[what][:6])}{', ...' if len(report[what]) > 6 else ''}"
                            for what in ("missing", "unexpected", "shape_mismatch") if report[what])
        raise ValueError(f"{summary}: under model.min_loaded={min_loaded} of the backbone would load, refused. "
                         f"{details}. Map the file's names onto timm's with model.key_map ({{regex: replacement}} "
                         f"or 'order')")
    backbone.load_state_dict({k: given[k] for k in loaded}, strict=False)
    return {"summary": summary, **{k: v if isinstance(v, (int, str)) else len(v) for k, v in report.items()}}


def copy_image_weights(target: ImageClassifier, source: ImageClassifier, where) -> str:
    """Copy `source`'s weights into `target` (init_from): every backbone tensor must match in name and shape (else an
    error naming the ones that do not); the classification head is copied when the classes are the same (reordered
    to the target's class order if needed), otherwise left new. Returns what was done, to be printed."""
    head = next(name for name, module in target.backbone.named_modules() if module is target.backbone.get_classifier())
    in_head = f"backbone.{head}."
    wanted, given = target.state_dict(), source.state_dict()
    backbone = [key for key in wanted if not key.startswith(in_head)]
    problems = {
        "missing in the source": [key for key in backbone if key not in given],
        "not in this backbone": [key for key in given if not key.startswith(in_head) and key not in wanted],
        "of another shape": [f"{key} {tuple(given[key].shape)} -> {tuple(wanted[key].shape)}"
                             for key in backbone if key in given and given[key].shape != wanted[key].shape],
    }
    if any(problems.values()):
        details = "; ".join(f"{len(keys)} tensor(s) {what}: {', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}"
                            for what, keys in problems.items() if keys)
        raise ValueError(f"init_from {where}: its backbone ({source.backbone.default_cfg.get('architecture')}) does "
                         f"not match this one ({target.backbone.default_cfg.get('architecture')}): {details}")
    state = {key: given[key] for key in backbone}
    if sorted(source.class_names) == sorted(target.class_names):
        rows = torch.as_tensor([source.class_names.index(name) for name in target.class_names])
        state.update({key: given[key][rows] for key in wanted if key.startswith(in_head)})
        head_note = "the classification head" + ("" if source.class_names == target.class_names
                                                 else " (rows reordered to this dataset's class order)")
    else:
        state.update({key: wanted[key] for key in wanted if key.startswith(in_head)})
        only_source = sorted(set(source.class_names) - set(target.class_names))
        only_here = sorted(set(target.class_names) - set(source.class_names))
        head_note = (f"a NEW classification head: the classes differ (only in {where}: {only_source}; only in this "
                     f"dataset: {only_here})")
    target.load_state_dict(state)
    return f"initialised from {where}: {len(backbone)} backbone tensors, all matched, and {head_note}"


def check_image_config(config: dict) -> None:
    if config["resize_size"] < config["image_size"]:
        raise ValueError(f"model.resize_size ({config['resize_size']}) must be >= model.image_size "
                         f"({config['image_size']})")
    if config.get("missing_image", "blank") != "blank":
        raise ValueError(f"model.missing_image must be 'blank', got {config['missing_image']!r}")


class NormalizedTensor:
    """`T.ToTensor()` then `T.Normalize(mean, std)`: the same values, in a third of the time (one copy of the
    pixels instead of four; the tensor keeps the image's channels-last layout until batches are stacked)."""

    def __init__(self, mean, std):
        self.mean, self.std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)
        return pixels.float().div_(255).sub_(self.mean).div_(self.std)


class ImageExpert(Expert):
    kind = "image"
    task = "image-classification"
    required_columns = ("id", "image", "label")
    config_defaults = CONFIG_DEFAULTS

    def __init__(self, model: ImageClassifier, config: dict, metadata: dict | None = None):
        super().__init__(model, config, model.class_names, metadata)
        self.transforms = {train: self.transform(train) for train in (True, False)}

    @classmethod
    def build(cls, config: dict, class_names: list[str], train_dataset=None) -> ImageExpert:
        config = {**CONFIG_DEFAULTS, **config}
        check_image_config(config)
        default = timm.models.get_pretrained_cfg(config["name"])
        mean = config["mean"] or list(getattr(default, "mean", None) or (0.485, 0.456, 0.406))
        std = config["std"] or list(getattr(default, "std", None) or (0.229, 0.224, 0.225))
        model = ImageClassifier(config["name"], class_names, config["image_size"], config["resize_size"],
                                mean, std, config["drop_rate"])
        report = load_pretrained_backbone(model, config)
        return cls(model, config, {"pretrained_load": report} if report else None)

    @property
    def base_model(self) -> str | None:
        pretrained = self.config.get("pretrained")
        return f"timm/{self.config['name']}" if pretrained is True else (pretrained or None)

    def save_model(self, directory) -> None:
        self.model.save_pretrained(directory)

    def initialise_from(self, directory) -> str:
        return copy_image_weights(self.model, ImageExpert.from_pretrained(directory).model, directory)

    @classmethod
    def load_model(cls, directory, config, class_names, metadata) -> ImageExpert:
        model = from_pretrained_quietly(ImageClassifier, directory).eval()
        config = {**config, "name": model.backbone.default_cfg.get("architecture", config.get("name")),
                  "image_size": model.image_size, "resize_size": model.resize_size}
        return cls(model, config, metadata)

    def transform(self, train: bool):
        m, config = self.model, self.config
        steps = [T.Resize(m.resize_size)]
        if train:
            if config["rotation"]:
                steps.append(T.RandomRotation(config["rotation"]))
            steps += [T.RandomCrop(m.image_size), T.RandomHorizontalFlip(config["hflip"])]
        else:
            steps.append(T.CenterCrop(m.image_size))
        return T.Compose(steps + [NormalizedTensor(m.mean, m.std)])

    def blank_image(self) -> Image.Image:
        colour = tuple(round(255 * c) for c in self.model.mean)
        return Image.new("RGB", (self.model.resize_size, self.model.resize_size), colour)

    def encode(self, dataset, train: bool):
        """Lazily encoded rows; from the decoded-image cache column when the dataset has one at resize_size."""
        cached = cache_column(self.model.resize_size)
        if cached not in dataset.column_names:
            if cached_sizes(dataset.column_names):
                warnings.warn(f"the dataset caches images at {cached_sizes(dataset.column_names)} px, not at this "
                              f"expert's resize_size {self.model.resize_size}: decoding the original images",
                              stacklevel=2)
            return super().encode(dataset, train)
        columns = [cached] + [c for c in ("label",) if c in dataset.column_names]
        return dataset.with_transform(partial(self.encode_batch, train=train), columns=columns)

    def encode_batch(self, batch: dict, train: bool) -> dict:
        """Images decoded and transformed (works in DataLoader workers); rows without one get the blank image."""
        transform = self.transforms[train]
        cached = cache_column(self.model.resize_size)
        images = [cached_image(value) for value in batch[cached]] if cached in batch else batch["image"]
        images = [self.blank_image() if image is None else image.convert("RGB") for image in images]
        encoded = {"pixel_values": [transform(image) for image in images]}
        if "label" in batch:
            encoded["labels"] = batch["label"]
        return encoded

    def collate_inputs(self, rows: list[dict]) -> dict:
        return {"pixel_values": torch.stack([row["pixel_values"] for row in rows])}

    def pooled_features(self, inputs: dict) -> torch.Tensor:
        return self.model.pooled_features(inputs["pixel_values"])

    def head(self) -> nn.Module:
        backbone = self.model.backbone
        return nn.Sequential(nn.Dropout(getattr(backbone, "drop_rate", 0.0)), backbone.get_classifier())

    def frozen_features(self, inputs: dict) -> torch.Tensor:
        return self.pooled_features(inputs)
