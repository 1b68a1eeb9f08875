"""`MultimodalPipeline`: saved experts + fusion runs -> product codes, for Python, `mmclf predict` and the server.

    from mmclf import MultimodalPipeline
    pipeline = MultimodalPipeline.from_pretrained("demo_out/pipeline")       # or an owner/name Hub id
    codes = pipeline.predict(df)              # df: ENS / SIGIR layout, or title, description, image columns
    probs = pipeline.predict_proba(df)        # DataFrame: one column per product code, rows in input order

A pipeline folder is self-contained:
    pipeline.json      {"format": "mmclf-pipeline", "class_names": [...], "experts": {"text": "experts/text", ...},
                        "fusions": ["fusions/0", ...], "metadata": {...}}
    experts/<name>/    saved experts (save_pretrained form, with their model cards)
    fusions/<i>/       fusion runs (k fold heads each)
    README.md          the model card
Each expert computes its probabilities once; each fusion takes the experts it was trained on by name; the
fusions' votes are majority-voted (one fusion: its fold heads' vote), ties broken by the mean fused
probability (`mmclf.fusion.ensemble`). `predict_proba` gives that mean fused probability.

Every input row gets exactly one prediction, in input order: rows without an image, a description or a
title are predicted from what they have and counted (`PipelinePrediction.counts`).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mmclf.data.listings import Listings, to_listings
from mmclf.experts import EXPERT_FILE, load_expert, read_expert_info
from mmclf.experts.base import Expert
from mmclf.fusion.decision import FUSION_FILE, FusionModel
from mmclf.fusion.ensemble import majority_vote
from mmclf.hub import Artifact, inside, write_model_card
from mmclf.inference import expert_probabilities
from mmclf.rundir import staged_folder

PIPELINE_FILE = "pipeline.json"
PIPELINE_FORMAT = "mmclf-pipeline"


@dataclass
class PipelinePrediction:
    ids: list[str]
    codes: list[str]  # the predicted product code of every row, in input order
    winners: np.ndarray  # class indices
    votes: np.ndarray  # how many fused runs voted for the winner
    probs: np.ndarray  # mean fused probabilities [rows, classes]
    counts: dict  # rows, empty_title, without_description, without_image


class MultimodalPipeline(Artifact):
    artifact = "pipeline"

    def __init__(self, experts: dict[str, Expert], fusions: list[FusionModel], metadata: dict | None = None):
        if not experts or not fusions:
            raise ValueError("a pipeline needs at least one expert and one fusion")
        self.experts, self.fusions = dict(experts), list(fusions)
        self.class_names = list(fusions[0].class_names)
        self.metadata = dict(metadata or {})
        for name, expert in self.experts.items():
            if expert.class_names != self.class_names:
                raise ValueError(f"expert {name!r} predicts classes {expert.class_names[:5]}... in another order or "
                                 f"set than the fusions {self.class_names[:5]}...: its experts disagree on classes")
        classes = {name: expert.class_names for name, expert in self.experts.items()}
        for i, fusion in enumerate(self.fusions):
            fusion.check_experts(classes, f"fusion {i}")
        self.used_experts = [n for n in self.experts if any(n in f.expert_names for f in self.fusions)]
        # "onnx" for a folder written by `mmclf export` (its networks run in ONNX Runtime), else "torch"
        self.backend = "onnx" if any(getattr(part, "backend", "torch") == "onnx"
                                     for part in [*self.experts.values(), *self.fusions]) else "torch"

    # --- loading and saving -------------------------------------------------------------------------

    @classmethod
    def _from_folder(cls, root: Path, device=None) -> MultimodalPipeline:
        """A pipeline folder's experts, fusions and classes, loaded once (`from_pretrained` also takes an
        `owner/name` Hub id, a `revision`, and `device`)."""
        root = Path(root)
        spec = read_pipeline_spec(root)
        backend = spec.get("backend", "torch")
        if backend == "onnx":
            from mmclf.onnx_backend import OnnxFusion, load_exported_expert

            experts = {name: load_exported_expert(root / path) for name, path in spec["experts"].items()}
            fusions = [OnnxFusion.from_pretrained(root / path) for path in spec["fusions"]]
        elif backend == "torch":
            experts = {name: load_expert(root / path) for name, path in spec["experts"].items()}
            fusions = [FusionModel.from_pretrained(root / path) for path in spec["fusions"]]
        else:
            raise ValueError(f"{root / PIPELINE_FILE}: unknown backend {backend!r} (expected torch or onnx)")
        pipeline = cls(experts, fusions, spec.get("metadata"))
        if list(spec.get("class_names", pipeline.class_names)) != pipeline.class_names:
            raise ValueError(f"{root / PIPELINE_FILE}: class_names differ from its fusions' classes")
        return pipeline.to(device) if device is not None else pipeline

    @classmethod
    def from_folders(cls, experts: dict, fusions: list, metadata: dict | None = None) -> MultimodalPipeline:
        """A pipeline from saved expert folders (by name: the names the fusions were trained with) and fusion runs."""
        loaded = {}
        for name, folder in experts.items():
            trained_as = (read_expert_info(folder).get("metadata") or {}).get("name")
            if trained_as and trained_as != name:
                raise ValueError(f"expert folder {folder} was trained as {trained_as!r} but is given as {name!r}: "
                                 f"fusions find their experts by name, so use {trained_as}={folder}")
            loaded[name] = load_expert(folder)
        return cls(loaded, [FusionModel.from_pretrained(path) for path in fusions], metadata)

    def to(self, device) -> MultimodalPipeline:
        """Move every expert to `device` ("cpu", "cuda", "cuda:1"); fusion heads are tiny and stay on the CPU."""
        for expert in self.experts.values():
            expert.to(device)
        return self

    def save_pretrained(self, folder) -> Path:
        """A self-contained pipeline folder, written whole or not at all (an earlier pipeline there is replaced)."""
        folder = Path(folder)
        if folder.is_dir() and any(folder.iterdir()) and not (folder / PIPELINE_FILE).is_file():
            raise ValueError(f"{folder} exists and is not a pipeline folder: choose another output folder")
        with staged_folder(folder, replace=True) as staged:
            for name, expert in self.experts.items():
                expert.save_pretrained(staged / "experts" / name)
            for i, fusion in enumerate(self.fusions):
                fusion.save_pretrained(staged / "fusions" / str(i), with_oof=False)
            spec = {"format": PIPELINE_FORMAT, "version": 1, "backend": self.backend, "class_names": self.class_names,
                    "experts": {name: f"experts/{name}" for name in self.experts},
                    "fusions": [f"fusions/{i}" for i in range(len(self.fusions))], "metadata": self.metadata}
            (staged / PIPELINE_FILE).write_text(json.dumps(spec, indent=2))
            self.write_card(staged)
        return folder

    def write_card(self, folder: Path) -> None:
        metrics = self.metadata.get("metrics")
        fused = [f.cv_metrics.get("oof") for f in self.fusions]
        if metrics is None and len(self.fusions) == 1 and fused[0]:
            metrics = {**fused[0], "split": "out-of-fold", "rows": self.fusions[0].options.get("num_train_rows")}
        write_model_card(
            folder, title="mmclf multimodal product classifier", task="multimodal-classification",
            class_names=self.class_names, metrics=metrics, dataset=self.metadata.get("dataset"),
            base_model=next((e.base_model for e in self.experts.values() if e.base_model), None),
            tags=["multimodal", "decision-level-fusion", *self.experts],
            summary=(f"Experts {list(self.experts)} (title + description + image) whose class probabilities are "
                     f"fused at decision level by {len(self.fusions)} fused run(s), majority-voted."),
            details={"backend": self.backend, **({"export": self.metadata["export"]} if "export" in self.metadata else {}),
                     "experts": {name: {"kind": e.kind, "model": e.config.get("name")} for name, e in self.experts.items()},
                     "fusions": [{"experts": f.expert_names, "hidden_size": f.options.get("hidden_size"),
                                  "folds": len(f.heads), "oof_macro_f1": f.cv_metrics.get("oof_macro_f1")}
                                 for f in self.fusions]},
            usage=("from mmclf import MultimodalPipeline\n\n"
                   "pipeline = MultimodalPipeline.from_pretrained(\"path/or/owner/name\")\n"
                   "pipeline.predict([{\"title\": \"Piscine tubulaire 3 m\", \"description\": \"\", \"image\": None}])"),
        )

    # --- prediction ---------------------------------------------------------------------------------

    @property
    def uses_images(self) -> bool:
        return any("image" in self.experts[name].required_columns for name in self.used_experts)

    def predict_details(self, data, batch_size: int = 64, images_dir=None, progress: bool = False) -> PipelinePrediction:
        """Predictions, votes, fused probabilities and input counts of every row, in input order."""
        listings = data if isinstance(data, Listings) else to_listings(data, images_dir)
        counts = listings.counts()
        if not len(listings):
            raise ValueError("no rows to predict")
        if self.uses_images and counts["without_image"] == counts["rows"]:
            warnings.warn(f"none of the {counts['rows']} rows has an image: the image expert sees only blank images "
                          "and the predictions rest on the text alone", stacklevel=2)
        probs = {name: expert_probabilities(self.experts[name], listings, batch_size, progress)
                 for name in self.used_experts}
        counts = listings.counts()  # with the images that turned out unreadable
        votes, scores = [], []
        for fusion in self.fusions:
            winners, _, fused = fusion.predict_probs(probs)
            votes.append(winners)
            scores.append(fused)
        mean_scores = np.mean(scores, axis=0)
        winners, counts_of_votes = majority_vote(np.stack(votes), len(self.class_names), tie_break_scores=mean_scores)
        return PipelinePrediction(ids=list(listings.ids), codes=[self.class_names[w] for w in winners],
                                  winners=winners, votes=counts_of_votes, probs=mean_scores, counts=counts)

    def predict(self, data, batch_size: int = 64, images_dir=None) -> list[str]:
        """The product code of every row, in input order."""
        return self.predict_details(data, batch_size, images_dir).codes

    def predict_proba(self, data, batch_size: int = 64, images_dir=None) -> pd.DataFrame:
        """Mean fused probabilities: one row per input row (indexed by id), one column per product code."""
        result = self.predict_details(data, batch_size, images_dir)
        return pd.DataFrame(result.probs, index=pd.Index(result.ids, name="id"), columns=self.class_names)


def read_pipeline_spec(root: Path) -> dict:
    path = root / PIPELINE_FILE
    if not path.is_file():
        kind = ("an expert folder" if (root / EXPERT_FILE).is_file() else
                "a fusion run" if (root / FUSION_FILE).is_file() else "not an mmclf artifact")
        raise FileNotFoundError(f"{root} is not an mmclf pipeline (no {PIPELINE_FILE}; it is {kind}); "
                                "assemble one with `mmclf pipeline --experts NAME=DIR ... --fusions DIR ...`")
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(spec, dict) or not spec.get("experts") or not spec.get("fusions"):
        raise ValueError(f"{path}: needs at least one expert and one fusion")
    if not isinstance(spec["experts"], dict) or not isinstance(spec["fusions"], list):
        raise ValueError(f"{path}: 'experts' must map names to folders and 'fusions' must list folders")  # noqa: TRY004
    # every folder it names must stay inside the pipeline folder: checked before any of them is read
    for name, folder in spec["experts"].items():
        inside(root, folder, f"{path}: experts.{name}")
    for i, folder in enumerate(spec["fusions"]):
        inside(root, folder, f"{path}: fusions[{i}]")
    return spec


def assemble_pipeline(experts: dict, fusions: list, output_dir, *, evaluation=None,
                      metadata: dict | None = None) -> MultimodalPipeline:
    """A pipeline folder from saved experts ({name: folder}, the names the fusions were trained with) and fusion
    runs; `evaluation`: a report.json of `mmclf evaluate` whose scores go into the model card."""
    metadata = dict(metadata or {})
    if evaluation:
        report = json.loads(Path(evaluation).read_text())
        metadata["metrics"] = {k: report[k] for k in ("macro_f1", "weighted_f1", "accuracy")} | {
            "split": report.get("split", "evaluation"), "rows": report.get("num_rows")}
    pipeline = MultimodalPipeline.from_folders(experts, fusions, metadata)
    pipeline.save_pretrained(output_dir)
    return pipeline
