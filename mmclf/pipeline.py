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
import tempfile
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
from mmclf.hub import local_or_hub, push_folder, write_model_card
from mmclf.inference import expert_probabilities
from mmclf.probability_tables import ProbabilityTable

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


class MultimodalPipeline:
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

    # --- loading and saving -------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, folder_or_hub_id, device=None) -> MultimodalPipeline:
        """Load a pipeline folder or `owner/name` Hub repository (experts, fusions and classes, once)."""
        root = local_or_hub(folder_or_hub_id)
        spec = read_pipeline_spec(root)
        experts = {name: load_expert(root / path) for name, path in spec["experts"].items()}
        fusions = [FusionModel.load(root / path) for path in spec["fusions"]]
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
        return cls(loaded, [FusionModel.load(path) for path in fusions], metadata)

    def to(self, device) -> MultimodalPipeline:
        """Move every expert to `device` ("cpu", "cuda", "cuda:1"); fusion heads are tiny and stay on the CPU."""
        for expert in self.experts.values():
            expert.to(device)
        return self

    def save_pretrained(self, folder) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for name, expert in self.experts.items():
            expert.save_pretrained(folder / "experts" / name)
        for i, fusion in enumerate(self.fusions):
            fusion.save(folder / "fusions" / str(i), with_oof=False)
        spec = {"format": PIPELINE_FORMAT, "version": 1, "class_names": self.class_names,
                "experts": {name: f"experts/{name}" for name in self.experts},
                "fusions": [f"fusions/{i}" for i in range(len(self.fusions))], "metadata": self.metadata}
        (folder / PIPELINE_FILE).write_text(json.dumps(spec, indent=2))
        self.write_card(folder)
        return folder

    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | None = None,
                    commit_message: str | None = None, create_pr: bool = False) -> str:
        """Save into a temporary folder and upload it in one commit; returns the commit (or PR) URL."""
        with tempfile.TemporaryDirectory() as tmp:
            return push_folder(self.save_pretrained(Path(tmp) / "pipeline"), repo_id, private=private, token=token,
                               commit_message=commit_message or "Upload mmclf pipeline", create_pr=create_pr)

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
            details={"experts": {name: {"kind": e.kind, "model": e.config.get("name")} for name, e in self.experts.items()},
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
    return spec


def write_submission(path, ids, codes) -> Path:
    """The challenge's format: the sample id as an unnamed index column, then prdtypecode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"prdtypecode": list(codes)}, index=pd.Index(ids, name="")).to_csv(path)
    return path


# --- command line -----------------------------------------------------------------------------------------

def parse_named(items: list[str], option: str) -> dict:
    named = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{option} expects NAME=PATH, got {item!r}")
        if name in named:
            raise ValueError(f"{option}: the name {name!r} is given twice")
        named[name] = path
    return named


def add_pipeline_arguments(parser) -> None:
    parser.add_argument("--experts", nargs="+", required=True, metavar="NAME=MODEL_DIR",
                        help="saved experts by the names the fusions were trained with (the expert runs' directory "
                        "names), in any order, e.g. text=runs/text/model image=runs/image/model")
    parser.add_argument("--fusions", nargs="+", required=True, help="fusion run folders (several: majority vote)")
    parser.add_argument("--evaluation", help="a report.json of `mmclf evaluate` for the model card's metrics")
    parser.add_argument("--out", required=True, help="pipeline folder to write (self-contained)")


def run_pipeline(args) -> int:
    metadata = {}
    if args.evaluation:
        report = json.loads(Path(args.evaluation).read_text())
        metadata["metrics"] = {k: report[k] for k in ("macro_f1", "weighted_f1", "accuracy")} | {
            "split": "evaluation", "rows": report.get("num_rows")}
    pipeline = MultimodalPipeline.from_folders(parse_named(args.experts, "--experts"), args.fusions, metadata)
    path = pipeline.save_pretrained(args.out)
    print(f"wrote {path} ({len(pipeline.experts)} experts, {len(pipeline.fusions)} fusions)")
    return 0


def add_arguments(parser) -> None:
    parser.add_argument("--pipeline", required=True, help="pipeline folder or owner/name Hub id")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="raw X file (ENS CSV, SIGIR TSV, or CSV with --columns)")
    source.add_argument("--dataset", help="a built dataset folder (mmclf build-dataset)")
    parser.add_argument("--split", default="test", help="split of --dataset to predict (default test)")
    parser.add_argument("--images", help="images folder of --input")
    parser.add_argument("--columns", help="column mapping of --input, as in build-dataset")
    parser.add_argument("--out", required=True, help="predictions CSV (id, prdtypecode); fused scores go beside it as .parquet")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cpu)")
    parser.add_argument("--allow-missing-images", action="store_true",
                        help="predict even when a pipeline with an image expert gets no image at all")


def read_input_file(path, columns: str | None, images_dir) -> Listings:
    """Every row of a raw X file (ids kept, empty titles kept) as listings."""
    from mmclf.data.readers import parse_columns, read_features_file

    features = read_features_file(path, parse_columns(columns))
    frames = [table.frame for table in features.chunks()]
    if not frames or not sum(len(f) for f in frames):
        raise ValueError(f"{path} has a header but no rows")
    return to_listings(pd.concat(frames, ignore_index=True), images_dir)


def run(args) -> int:
    pipeline = MultimodalPipeline.from_pretrained(args.pipeline, device=args.device)
    if args.input:
        listings = read_input_file(args.input, args.columns, args.images)
    else:
        from datasets import load_from_disk

        if not Path(args.dataset).is_dir():
            raise FileNotFoundError(f"dataset folder not found: {args.dataset}")
        splits = load_from_disk(args.dataset)
        if args.split not in splits:
            raise ValueError(f"{args.dataset} has no split {args.split!r}; it has {list(splits)}")
        listings = to_listings(splits[args.split])
    counts = listings.counts()
    if pipeline.uses_images and counts["without_image"] == counts["rows"] and not args.allow_missing_images:
        raise ValueError(f"none of the {counts['rows']} rows has an image (is --images missing?); this pipeline's "
                         "image expert would see only blank images. Pass --allow-missing-images to predict anyway")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the missing-image warning is handled above
        result = pipeline.predict_details(listings, args.batch_size, progress=True)
    out = write_submission(args.out, result.ids, result.codes)
    ProbabilityTable(result.ids, ["test"] * len(result.ids), np.full(len(result.ids), -1), result.probs,
                     pipeline.class_names, source=str(args.pipeline)).save(out.with_suffix(".parquet"))
    print(f"wrote {len(result.codes):,} predictions to {out} (one per input row); predicted without an image: "
          f"{counts['without_image']:,}, without a description: {counts['without_description']:,}, "
          f"with an empty title: {counts['empty_title']:,}")
    return 0


def add_push_arguments(parser) -> None:
    parser.add_argument("folder", help="a pipeline folder, an expert model folder or a fusion run")
    parser.add_argument("--repo-id", required=True, help="OWNER/NAME on the Hub")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--token", help="Hub token (default: the logged-in one)")
    parser.add_argument("--message", help="commit message")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to main")


def run_push(args) -> int:
    folder = Path(args.folder)
    options = {"private": args.private, "token": args.token, "commit_message": args.message, "create_pr": args.create_pr}
    if (folder / PIPELINE_FILE).is_file():
        url = MultimodalPipeline.from_pretrained(folder).push_to_hub(args.repo_id, **options)
    elif (folder / EXPERT_FILE).is_file() or (folder / FUSION_FILE).is_file():
        url = push_folder(folder, args.repo_id, **options)
    else:
        raise ValueError(f"{folder} is not an mmclf pipeline, expert or fusion folder (no {PIPELINE_FILE}, "
                         f"{EXPERT_FILE} or {FUSION_FILE})")
    print(f"pushed {folder} to {url}")
    return 0
