"""The ONNX Runtime backend: experts and fusion runs exported by `mmclf export` (`mmclf.export`), loaded without
PyTorch models.

An exported expert folder holds `mmclf_expert.json` with `"backend": "onnx"` (kind, class order, the settings its
encoding needs), `model.onnx` (encoded inputs -> class probabilities) and, for text, the tokenizer files. An
exported fusion run holds `fusion.json` with `"backend": "onnx"` and `heads.onnx` (expert_probs, the concatenated
expert probabilities -> fold_probs, every fold head's softmax [folds, rows, classes]); the fold heads vote as in
`mmclf.fusion.ensemble`. The TF-IDF expert has no network and keeps its own numpy folder.

onnxruntime is the optional extra `mmclf[onnx]`; loading an exported folder without it is an error naming it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from mmclf.experts import EXPERT_FILE, read_expert_info
from mmclf.fusion.ensemble import majority_vote
from mmclf.hub import Artifact
from mmclf.probability_tables import check_expert_classes

BACKEND = "onnx"
MODEL_FILE = "model.onnx"
HEADS_FILE = "heads.onnx"
FUSION_FILE = "fusion.json"
TEXT_KINDS = ("text",)
IMAGE_KINDS = ("image", "image-dcl")


def onnxruntime():
    """The onnxruntime module, or an error naming the extra that installs it."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError("the ONNX backend needs onnxruntime: pip install 'mmclf[onnx]'") from None
    return ort


def inference_session(path: Path, threads: int = 0):
    ort = onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0: onnxruntime's default, one per physical core
    options.log_severity_level = 3  # errors only
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def copy_folder(source: Path, target) -> Path:
    target = Path(target)
    shutil.copytree(source, target, dirs_exist_ok=True)
    return target


class OnnxExpert(Artifact):
    """A text or image expert exported to ONNX: encodes rows as its PyTorch original did, then runs `model.onnx`."""

    artifact = "expert"
    backend = BACKEND

    def __init__(self, folder: Path, info: dict):
        self.folder, self.info = Path(folder), info
        self.kind = info["kind"]
        self.class_names = list(info["class_names"])
        self.config = dict(info.get("config") or {})
        self.metadata = dict(info.get("metadata") or {})
        self.encoding = dict(info["encoding"])
        self.session = inference_session(self.folder / MODEL_FILE)
        self.input_names = [i.name for i in self.session.get_inputs()]
        if self.kind in TEXT_KINDS:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
            self.required_columns = ("id", "title", "description", "label")
        elif self.kind in IMAGE_KINDS:
            self.required_columns = ("id", "image", "label")
        else:
            raise ValueError(f"{self.folder}: no ONNX encoding for expert kind {self.kind!r}")

    @classmethod
    def _from_folder(cls, directory: Path) -> OnnxExpert:
        info = read_expert_info(directory)
        if info.get("backend") != BACKEND:
            raise ValueError(f"{directory} is not an ONNX export (its {EXPERT_FILE} has no \"backend\": \"onnx\")")
        if not (Path(directory) / MODEL_FILE).is_file():
            raise FileNotFoundError(f"{directory}: {MODEL_FILE} is missing")
        return cls(directory, info)

    def save_pretrained(self, directory) -> Path:
        return copy_folder(self.folder, directory)

    @property
    def base_model(self) -> str | None:
        return self.info.get("base_model")

    def to(self, device) -> OnnxExpert:
        if device is not None and str(device) != "cpu":
            raise ValueError(f"the ONNX backend runs on the CPU; got device {device!r} (use the PyTorch pipeline "
                             "for a GPU)")
        return self

    def encode(self, batch: dict) -> dict[str, np.ndarray]:
        if self.kind in TEXT_KINDS:
            encoded = self.tokenizer(list(batch["title"]), list(batch["description"]), truncation="longest_first",
                                     max_length=self.encoding["max_length"], padding=True, return_tensors="np")
            return {name: encoded[name].astype(np.int64) for name in self.input_names}
        return {"pixel_values": np.stack([self.pixels(image) for image in batch["image"]])}

    def pixels(self, image) -> np.ndarray:
        """torchvision's Resize(shorter side) + CenterCrop + ToTensor + Normalize, with PIL and numpy; rows without
        an image get the blank image of the mean colour, as the image expert does."""
        from PIL import Image

        e = self.encoding
        resize, crop = e["resize_size"], e["image_size"]
        if image is None:
            image = Image.new("RGB", (resize, resize), tuple(round(255 * c) for c in e["mean"]))
        image = image.convert("RGB")
        width, height = image.size
        short, long = (width, height) if width <= height else (height, width)
        new_long = int(resize * long / short)
        size = (resize, new_long) if width <= height else (new_long, resize)
        if size != image.size:
            image = image.resize(size, Image.BILINEAR)
        left, top = round((size[0] - crop) / 2), round((size[1] - crop) / 2)
        pixels = np.asarray(image.crop((left, top, left + crop, top + crop)), dtype=np.float32) / 255
        pixels = (pixels - np.asarray(e["mean"], dtype=np.float32)) / np.asarray(e["std"], dtype=np.float32)
        return pixels.transpose(2, 0, 1)

    def predict_batch(self, batch: dict) -> np.ndarray:
        """Class probabilities [rows, classes] of a batch of rows, in `class_names` order."""
        return self.session.run(None, self.encode(batch))[0]


class OnnxFusion(Artifact):
    """A fusion run exported to ONNX: every fold head in one graph, their votes counted in numpy."""

    artifact = "fusion"
    backend = BACKEND

    def __init__(self, folder: Path, options: dict):
        self.folder, self.options = Path(folder), options
        self.class_names = list(options["class_names"])
        self.expert_names = list(options["expert_names"])
        self.cv_metrics = dict(options.get("cv_metrics") or {})
        self.heads = list(range(options["num_fold_heads"]))  # fold indices: the heads live in one graph
        self.session = inference_session(self.folder / HEADS_FILE, threads=1)

    @classmethod
    def _from_folder(cls, directory: Path) -> OnnxFusion:
        path = Path(directory) / FUSION_FILE
        if not path.is_file():
            raise FileNotFoundError(f"not a fusion run directory (no {FUSION_FILE}): {directory}")
        options = json.loads(path.read_text())
        if options.get("backend") != BACKEND:
            raise ValueError(f"{directory} is not an ONNX export (its {FUSION_FILE} has no \"backend\": \"onnx\")")
        if not (Path(directory) / HEADS_FILE).is_file():
            raise FileNotFoundError(f"{directory}: {HEADS_FILE} is missing")
        return cls(directory, options)

    def save_pretrained(self, directory, with_oof: bool = False) -> Path:
        return copy_folder(self.folder, directory)

    def check_experts(self, names_and_classes: dict[str, list[str]], where: str) -> None:
        check_expert_classes(self.expert_names, self.class_names, names_and_classes, where)

    def fold_probs(self, probs_by_name: dict[str, np.ndarray]) -> np.ndarray:
        """Softmax of every fold head: [folds, rows, classes]."""
        inputs = np.concatenate([np.asarray(probs_by_name[n], dtype=np.float32) for n in self.expert_names], axis=1)
        return self.session.run(None, {"expert_probs": inputs})[0]

    def predict_probs(self, probs_by_name: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fold heads' majority vote -> (predicted class indices, vote counts, mean probabilities)."""
        probs = self.fold_probs(probs_by_name)
        mean_probs = probs.mean(axis=0)
        winners, votes = majority_vote(probs.argmax(axis=2), len(self.class_names), mean_probs)
        return winners, votes, mean_probs


def load_exported_expert(directory):
    """An expert folder of an exported pipeline: ONNX when its info says so, else the expert's own (TF-IDF)."""
    from mmclf.experts import load_expert

    return OnnxExpert.from_pretrained(directory) if read_expert_info(directory).get("backend") == BACKEND \
        else load_expert(directory)
