"""Image expert: any timm model (ResNet152 in the paper) behind a small `nn.Module` with huggingface_hub's
`PyTorchModelHubMixin`, so a saved folder rebuilds offline with `ImageClassifier.from_pretrained(dir)`.

Weights: ImageNet from the Hub only when the recipe says `pretrained: true` (or names a Hub id), from a
local file with `pretrained_file`, otherwise random (offline). Transforms as in the paper: training
resizes, rotates, random-crops and flips; evaluation resizes and centre-crops.

Rows without an image are kept: they get a blank image of the normalisation mean colour (so the input
is all zeros after normalisation) and the dataset's `has_image` flag says which rows they are. The
count is reported when a split is encoded.
"""

from __future__ import annotations

import json
from pathlib import Path

import timm
import torch
from huggingface_hub import PyTorchModelHubMixin
from PIL import Image
from torch import nn
from torchvision import transforms as T

from mmclf.hub import from_pretrained_quietly
from mmclf.train import EXPERT_FILE


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


def load_pretrained_backbone(model: ImageClassifier, model_cfg: dict) -> None:
    """Copy ImageNet (or local-file) weights into the backbone; the classifier keeps its new shape."""
    pretrained, weights_file = model_cfg["pretrained"], model_cfg["pretrained_file"]
    if not pretrained and not weights_file:
        return
    name = pretrained if isinstance(pretrained, str) else model_cfg["name"]
    overlay = {"file": str(weights_file)} if weights_file else None
    if weights_file and not Path(weights_file).is_file():
        raise FileNotFoundError(f"model.pretrained_file not found: {weights_file}")
    source = timm.create_model(name, pretrained=True, num_classes=len(model.class_names),
                               pretrained_cfg_overlay=overlay)
    model.backbone.load_state_dict(source.state_dict())


class ImageExpert:
    kind = "image"
    required_columns = ("id", "image", "label")

    def __init__(self, model: ImageClassifier, rotation: float = 0.0, hflip: float = 0.0):
        self.model, self.rotation, self.hflip = model, rotation, hflip

    @property
    def class_names(self) -> list[str]:
        return self.model.class_names

    @classmethod
    def build(cls, model_cfg: dict, class_names: list[str], train_dataset=None) -> ImageExpert:
        if model_cfg["resize_size"] < model_cfg["image_size"]:
            raise ValueError(f"model.resize_size ({model_cfg['resize_size']}) must be >= model.image_size "
                             f"({model_cfg['image_size']})")
        if model_cfg.get("missing_image", "blank") != "blank":
            raise ValueError(f"model.missing_image must be 'blank', got {model_cfg['missing_image']!r}")
        default = timm.models.get_pretrained_cfg(model_cfg["name"])
        mean = model_cfg["mean"] or list(getattr(default, "mean", None) or (0.485, 0.456, 0.406))
        std = model_cfg["std"] or list(getattr(default, "std", None) or (0.229, 0.224, 0.225))
        model = ImageClassifier(model_cfg["name"], class_names, model_cfg["image_size"], model_cfg["resize_size"],
                                mean, std, model_cfg["drop_rate"])
        load_pretrained_backbone(model, model_cfg)
        return cls(model, model_cfg["rotation"], model_cfg["hflip"])

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.model.save_pretrained(directory)
        info = {"kind": self.kind, "class_names": self.class_names, "image_size": self.model.image_size}
        (directory / EXPERT_FILE).write_text(json.dumps(info, indent=2))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> ImageExpert:
        return cls(from_pretrained_quietly(ImageClassifier, directory).eval())

    def transform(self, train: bool):
        m = self.model
        steps = [T.Resize(m.resize_size)]
        if train:
            if self.rotation:
                steps.append(T.RandomRotation(self.rotation))
            steps += [T.RandomCrop(m.image_size), T.RandomHorizontalFlip(self.hflip)]
        else:
            steps.append(T.CenterCrop(m.image_size))
        return T.Compose(steps + [T.ToTensor(), T.Normalize(m.mean, m.std)])

    def blank_image(self) -> Image.Image:
        colour = tuple(round(255 * c) for c in self.model.mean)
        return Image.new("RGB", (self.model.resize_size, self.model.resize_size), colour)

    def encode(self, dataset, train: bool = False):
        """The dataset with images decoded and transformed on access (works in DataLoader workers)."""
        transform = self.transform(train)

        def apply(batch):
            images = [self.blank_image() if image is None else image.convert("RGB") for image in batch["image"]]
            return {"pixel_values": [transform(image) for image in images], "labels": batch["label"]}

        return dataset.with_transform(apply, columns=["image", "label"])

    @staticmethod
    def collate_fn(rows: list[dict]) -> dict:
        return {"pixel_values": torch.stack([r["pixel_values"] for r in rows]),
                "labels": torch.tensor([r["labels"] for r in rows], dtype=torch.long)}

    def lengths(self, encoded):
        return None

    @torch.no_grad()
    def features(self, batch: dict) -> torch.Tensor:
        return self.model.pooled_features(batch["pixel_values"])


def count_missing_images(dataset) -> int:
    if "has_image" in dataset.column_names:
        return int(sum(not flag for flag in dataset["has_image"]))
    return 0
