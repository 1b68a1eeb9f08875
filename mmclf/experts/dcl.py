"""DCL image expert: Destruction and Construction Learning (Chen et al., CVPR 2019) around any timm CNN.

Training sees every image twice in its batch, as is and destroyed by the region confusion mechanism
(`region_confusion.py`), and learns three heads on the backbone:
- the classification head (the image expert's own) on pooled features, on both images;
- an adversarial head on pooled features: original vs destroyed (`adversarial: binary`), or, as the reference
  code's variant, the class and whether the image was destroyed (`per_class`: 2 x classes outputs); a copy whose
  shuffle moved no region counts as an original;
- a region-alignment head: a 1x1 convolution on the feature map, average-pooled to the grid, tanh: each
  region's original (row, column), regressed with an L1 loss.
loss = class_weight * CE(class) + adversarial_weight * CE(adversarial) + location_weight * L1(location),
the means over both images of the batch; the two new heads learn at `head_lr_scale` x the recipe's lr.

Evaluation and prediction use the original image and the classification head only. A saved DCL expert is a
plain image expert folder (`load_expert` gives an `ImageExpert`: backbone + classification head) with the
auxiliary heads beside it in `dcl_heads.safetensors`, which only a continued DCL run reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from mmclf.experts.base import decay_groups
from mmclf.experts.image import CONFIG_DEFAULTS as IMAGE_DEFAULTS
from mmclf.experts.image import ImageClassifier, ImageExpert, copy_image_weights
from mmclf.experts.region_confusion import location_targets, region_confusion

HEADS_FILE = "dcl_heads.safetensors"

DCL_DEFAULTS = {
    "grid": 7,  # regions per side; the image side and the backbone's feature map side must be multiples of it
    "max_shift": 1,  # k: places a region may move within its row and within its column
    "adversarial": "binary",  # binary: original vs destroyed | per_class: 2 x classes (class, destroyed or not)
    "class_weight": 1.0,
    "adversarial_weight": 1.0,  # alpha
    "location_weight": 1.0,  # gamma
    "head_lr_scale": 10.0,  # lr multiplier of the adversarial and alignment heads
}
CONFIG_DEFAULTS = {**IMAGE_DEFAULTS, "image_size": 448, "resize_size": 512, **DCL_DEFAULTS}
ADVERSARIAL_KINDS = ("binary", "per_class")


class DCLOutputs(NamedTuple):
    logits: torch.Tensor  # [2B, classes]: the B originals, then their B destroyed copies
    adversarial_logits: torch.Tensor  # [2B, 2] or [2B, 2 * classes]
    location: torch.Tensor  # [2B, 2, grid, grid]: predicted original (row, column) of each region, in (-1, 1)


def feature_map_sizes(classifier: ImageClassifier, name: str, grid: int) -> tuple[int, int]:
    """(channels of the feature map, width of the pooled features) of the backbone at its input size; an error
    when the backbone gives no CNN feature map or the map does not divide into the grid."""
    backbone, size = classifier.backbone, classifier.image_size
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        probe = torch.zeros(1, 3, size, size, device=next(backbone.parameters()).device)
        features = backbone.forward_features(probe)
        pooled = backbone.forward_head(features, pre_logits=True)
    backbone.train(was_training)
    where = f"DCL with backbone {name!r} at input {size} px and grid {grid}"
    if features.ndim != 4 or features.shape[1] != backbone.num_features:
        raise ValueError(f"{where}: forward_features gives a {tuple(features.shape)} tensor, not a CNN feature map "
                         f"[batch, channels, height, width]; DCL needs a convolutional backbone (resnet, resnext, "
                         f"seresnext, efficientnet, convnext, ...)")
    height, width = features.shape[2:]
    if size % grid or height % grid or width % grid:
        fitting = [g for g in range(2, min(height, width) + 1) if not (size % g or height % g or width % g)]
        raise ValueError(f"{where}: the {size} px image and its {height}x{width} feature map must both divide into "
                         f"the {grid}x{grid} grid; grids that fit here: {fitting or 'none (use a larger image_size)'}")
    return features.shape[1], pooled.shape[-1]


class DCLModel(nn.Module):
    """An `ImageClassifier` (backbone + classification head, saved as a plain image expert) and DCL's two heads."""

    def __init__(self, classifier: ImageClassifier, name: str, grid: int, adversarial_outputs: int):
        super().__init__()
        channels, pooled = feature_map_sizes(classifier, name, grid)
        self.classifier, self.grid = classifier, grid
        self.heads = nn.ModuleDict({"adversarial": nn.Linear(pooled, adversarial_outputs),
                                    "alignment": nn.Conv2d(channels, 2, kernel_size=1)})

    def forward(self, pixel_values: torch.Tensor):
        """Training: all three heads (`DCLOutputs`); evaluation: the class logits only."""
        backbone = self.classifier.backbone
        features = backbone.forward_features(pixel_values)
        logits = backbone.forward_head(features)
        if not self.training:
            return logits
        pooled = backbone.forward_head(features, pre_logits=True)
        location = torch.tanh(F.adaptive_avg_pool2d(self.heads["alignment"](features), self.grid))
        return DCLOutputs(logits, self.heads["adversarial"](pooled), location)

    # what ImageExpert reads from its model (transforms, blank image, features)
    class_names = property(lambda self: self.classifier.class_names)
    image_size = property(lambda self: self.classifier.image_size)
    resize_size = property(lambda self: self.classifier.resize_size)
    mean = property(lambda self: self.classifier.mean)
    std = property(lambda self: self.classifier.std)
    backbone = property(lambda self: self.classifier.backbone)

    def pooled_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.classifier.pooled_features(pixel_values)


def check_dcl_config(config: dict) -> None:
    if config["adversarial"] not in ADVERSARIAL_KINDS:
        raise ValueError(f"model.adversarial must be one of {ADVERSARIAL_KINDS}, got {config['adversarial']!r}")
    if config["grid"] < 2 or config["max_shift"] < 0:  # a 1x1 grid has nothing to shuffle
        raise ValueError(f"model.grid must be >= 2 and model.max_shift >= 0, got {config['grid']} and "
                         f"{config['max_shift']}")
    if min(config["class_weight"], config["adversarial_weight"], config["location_weight"]) < 0:
        raise ValueError("model.class_weight, adversarial_weight and location_weight must be >= 0")


def adversarial_outputs(config: dict, classes: int) -> int:
    return 2 if config["adversarial"] == "binary" else 2 * classes


class DCLExpert(ImageExpert):
    kind = "image-dcl"
    config_defaults = CONFIG_DEFAULTS

    @classmethod
    def build(cls, config: dict, class_names: list[str], train_dataset=None) -> DCLExpert:
        config = {**CONFIG_DEFAULTS, **config}
        check_dcl_config(config)
        image = ImageExpert.build({key: config[key] for key in IMAGE_DEFAULTS}, class_names)
        model = DCLModel(image.model, config["name"], config["grid"], adversarial_outputs(config, len(class_names)))
        return cls(model, config, image.metadata)  # with the pretrained weights' load report

    # --- saving: a plain image expert + the auxiliary heads ---------------------------------------------------

    def as_image_expert(self) -> ImageExpert:
        """The trained classifier as a plain image expert (its config records the DCL settings it was trained with)."""
        return ImageExpert(self.model.classifier, self.config, self.metadata)

    def save_pretrained(self, directory) -> Path:
        directory = self.as_image_expert().save_pretrained(directory)
        save_file({k: v.contiguous() for k, v in self.model.heads.state_dict().items()}, str(directory / HEADS_FILE))
        return directory

    def write_info(self, directory) -> None:
        self.as_image_expert().write_info(directory)

    @classmethod
    def _from_folder(cls, directory) -> DCLExpert:
        """A saved DCL expert with its auxiliary heads (to continue DCL training)."""
        image, heads_file = ImageExpert.from_pretrained(directory), Path(directory) / HEADS_FILE
        if not heads_file.is_file():
            raise FileNotFoundError(f"{directory} holds no DCL heads ({HEADS_FILE}); to start DCL from a plain image "
                                    f"expert, set init_from to its run")
        config = {**CONFIG_DEFAULTS, **image.config}
        model = DCLModel(image.model, config["name"], config["grid"],
                         adversarial_outputs(config, len(image.class_names)))
        model.heads.load_state_dict(load_file(str(heads_file)))
        return cls(model.eval(), config, image.metadata)

    def initialise_from(self, directory) -> str:
        return copy_image_weights(self.model.classifier, ImageExpert.from_pretrained(directory).model, directory)

    def head(self):
        raise ValueError("DCL trains the backbone on shuffled regions: training.frozen_backbone does not apply "
                         "(freeze an image expert instead)")

    # --- encoding -----------------------------------------------------------------------------------------

    def encode_batch(self, batch: dict, train: bool) -> dict:
        """Training rows also get `destroyed_values` (the augmented image destroyed) and `source` (its permutation)."""
        encoded = super().encode_batch(batch, train)
        if train:
            pairs = [region_confusion(image, self.config["grid"], self.config["max_shift"])
                     for image in encoded["pixel_values"]]
            encoded["destroyed_values"] = [destroyed for destroyed, _ in pairs]
            encoded["source"] = [source for _, source in pairs]
        return encoded

    def collate(self, rows: list[dict]) -> dict:
        """Training batches: the B originals then their B destroyed copies, with class, adversarial and location
        targets for all 2B images; evaluation batches: the originals only (as the image expert)."""
        if "destroyed_values" not in rows[0]:
            return super().collate(rows)
        labels = torch.as_tensor([row["labels"] for row in rows])
        sources = torch.stack([row["source"] for row in rows])
        unchanged = torch.arange(sources.shape[1]).expand_as(sources)
        # a copy the shuffle left as it was (likely on small grids) is no destroyed image: its adversarial target says so
        destroyed = (sources != unchanged).any(dim=1).long()
        if self.config["adversarial"] == "binary":
            adversarial = torch.cat([torch.zeros_like(labels), destroyed])
        else:
            adversarial = torch.cat([labels, labels + destroyed * len(self.class_names)])
        images = [row["pixel_values"] for row in rows] + [row["destroyed_values"] for row in rows]
        return {"inputs": {"pixel_values": torch.stack(images)},
                "targets": {"labels": labels.repeat(2), "adversarial_labels": adversarial,
                            "location": location_targets(torch.cat([unchanged, sources]), self.config["grid"])}}

    # --- model --------------------------------------------------------------------------------------------

    def loss(self, outputs: DCLOutputs, targets: dict) -> torch.Tensor:
        config = self.config
        return (config["class_weight"] * F.cross_entropy(outputs.logits.float(), targets["labels"])
                + config["adversarial_weight"] * F.cross_entropy(outputs.adversarial_logits.float(),
                                                                 targets["adversarial_labels"])
                + config["location_weight"] * F.l1_loss(outputs.location.float(), targets["location"]))

    def parameter_groups(self, training: dict) -> list[dict]:
        heads = [{**group, "lr_scale": self.config["head_lr_scale"]}
                 for group in decay_groups(self.model.heads, training["weight_decay"])]
        return decay_groups(self.model.classifier, training["weight_decay"]) + heads
