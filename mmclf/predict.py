"""Saved experts + fusion -> predictions in the challenge's submission format (`mmclf predict`).

A pipeline folder holds `pipeline.json`:
    {"class_names": [...], "experts": {"text": "experts/text", "image": "experts/image"},
     "fusions": ["fusions/0", ...]}
`experts` are `save_pretrained` folders in the order the fusion heads were trained on;
`fusions` are fusion run folders. One fusion gives its k-fold vote; several are majority-voted
(the ensemble tie-break of `mmclf.ensemble`). Paths are relative to the pipeline folder, so the
folder can be moved or pushed as a whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from mmclf.probability_tables import ProbabilityTable

PIPELINE_FILE = "pipeline.json"


def write_pipeline(pipeline_dir, experts: dict, fusions: list, class_names: list[str]) -> Path:
    """Write pipeline.json; paths are stored relative to `pipeline_dir`."""
    pipeline_dir = Path(pipeline_dir)
    pipeline_dir.mkdir(parents=True, exist_ok=True)

    def relative(path):
        return os.path.relpath(Path(path).resolve(), pipeline_dir.resolve())

    spec = {
        "class_names": list(class_names),
        "experts": {name: relative(path) for name, path in experts.items()},
        "fusions": [relative(path) for path in fusions],
    }
    (pipeline_dir / PIPELINE_FILE).write_text(json.dumps(spec, indent=2))
    return pipeline_dir / PIPELINE_FILE


def load_pipeline(pipeline_dir) -> dict:
    """Read pipeline.json of a local folder or of an `owner/name` Hub repository."""
    from mmclf.hub import local_or_hub

    pipeline_dir = local_or_hub(pipeline_dir)
    path = pipeline_dir / PIPELINE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: a pipeline folder needs {PIPELINE_FILE} (see `mmclf demo` output)")
    spec = json.loads(path.read_text())
    if not spec.get("experts") or not spec.get("fusions"):
        raise ValueError(f"{path}: needs at least one expert and one fusion")
    spec["experts"] = {name: pipeline_dir / p for name, p in spec["experts"].items()}
    spec["fusions"] = [pipeline_dir / p for p in spec["fusions"]]
    spec["root"] = pipeline_dir
    return spec


def predict_dataset(pipeline, dataset, split: str = "test", batch_size: int = 64):
    """Predict every row of `dataset` (a datasets.Dataset) with a pipeline folder, Hub id or loaded spec.
    Returns (class indices, votes, fused table)."""
    from mmclf.ensemble import majority_vote
    from mmclf.fusion import FusionModel
    from mmclf.train import predict_probabilities

    spec = pipeline if isinstance(pipeline, dict) else load_pipeline(pipeline)
    class_names = spec["class_names"]
    data_classes = dataset.features["label"].names if "label" in dataset.features else class_names
    if list(data_classes) != list(class_names):
        raise ValueError(
            f"the pipeline predicts {len(class_names)} classes {class_names[:6]}... but the data's labels are "
            f"{len(data_classes)} classes {list(data_classes)[:6]}...: build the dataset with --classes from the pipeline"
        )
    if len(dataset) == 0:
        raise ValueError("no rows to predict")
    tables = []
    for name, model_dir in spec["experts"].items():
        print(f"expert {name}: {model_dir}")
        tables.append(predict_probabilities(model_dir, dataset, split, batch_size=batch_size))
    votes, scores = [], []
    for fusion_dir in spec["fusions"]:
        predicted, _, probs = FusionModel.load(fusion_dir).predict(tables)
        votes.append(predicted)
        scores.append(probs)
    mean_scores = np.mean(scores, axis=0)
    winners, counts = majority_vote(np.stack(votes), len(class_names), tie_break_scores=mean_scores)
    first = tables[0]
    fused = ProbabilityTable(first.ids, first.splits, first.labels, mean_scores, class_names, source=str(spec["root"]))
    return winners, counts, fused


def write_submission(path, ids, class_names, winners) -> Path:
    """The challenge's format: the sample id as an unnamed index column, then prdtypecode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"prdtypecode": [class_names[i] for i in winners]}, index=pd.Index(ids, name=""))
    frame.to_csv(path)
    return path


def add_pipeline_arguments(parser) -> None:
    parser.add_argument("--experts", nargs="+", required=True, metavar="NAME=MODEL_DIR",
                        help="saved experts in the order the fusion heads were trained on, e.g. text=runs/text/model")
    parser.add_argument("--fusions", nargs="+", required=True, help="fusion run folders (several: majority vote)")
    parser.add_argument("--out", required=True, help="pipeline folder to write pipeline.json into")


def run_pipeline(args) -> int:
    from mmclf.fusion import FusionModel

    experts = {}
    for item in args.experts:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--experts expects NAME=MODEL_DIR, got {item!r}")
        experts[name] = path
    class_names = FusionModel.load(args.fusions[0]).class_names
    path = write_pipeline(args.out, experts, args.fusions, class_names)
    load_pipeline(args.out)  # fails early on a broken folder
    print(f"wrote {path}")
    return 0


def add_arguments(parser) -> None:
    parser.add_argument("--pipeline", required=True, help="pipeline folder (pipeline.json + experts + fusions)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="raw X file (ENS CSV, SIGIR TSV, or CSV with --columns)")
    source.add_argument("--dataset", help="a built dataset folder (mmclf build-dataset)")
    parser.add_argument("--split", default="test", help="split of --dataset to predict (default test)")
    parser.add_argument("--images", help="images folder of --input")
    parser.add_argument("--columns", help="column mapping of --input, as in build-dataset")
    parser.add_argument("--out", required=True, help="predictions CSV (id, prdtypecode); fused scores go beside it as .parquet")
    parser.add_argument("--batch-size", type=int, default=64)


def run(args) -> int:
    from mmclf.data.build import build_dataset
    from mmclf.data.readers import parse_columns

    spec = load_pipeline(args.pipeline)
    if args.input:
        dataset = build_dataset(args.input, images_dir=args.images, columns=parse_columns(args.columns),
                                classes=spec["class_names"])[0]["test"]
        split = "test"
    else:
        from datasets import load_from_disk

        splits = load_from_disk(args.dataset)
        if args.split not in splits:
            raise ValueError(f"{args.dataset} has no split {args.split!r}; it has {list(splits)}")
        dataset, split = splits[args.split], args.split
    winners, _, fused = predict_dataset(spec, dataset, split, args.batch_size)
    out = write_submission(args.out, fused.ids, spec["class_names"], winners)
    fused.save(out.with_suffix(".parquet"))
    print(f"wrote {len(winners):,} predictions to {out}")
    return 0
