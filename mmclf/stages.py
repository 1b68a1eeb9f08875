"""Every stage of the recipe as a library call: a config in, an output folder (or file) written, what it wrote
returned.

    from mmclf import stages
    stages.demo_data(output_dir="demo/catalog", rows=1200)
    stages.build_dataset(features="demo/catalog/X_train.csv", labels="demo/catalog/Y_train.csv",
                         images="demo/catalog/image_train", output_dir="demo/dataset")
    run = stages.train("text-tiny", ["dataset=demo/dataset", "output_dir=runs/text", "folds=3"])
    fusion = stages.fuse("fuse-default", tables=[...], predict_tables=[...], output_dir="runs/fusion-0")

Each stage takes `config` (a dict, the name of a recipe shipped in `mmclf/recipes/`, a YAML path, or nothing:
the stage's defaults), `overrides` (dotted `key=value` strings, as on the command line) and keyword values
(applied last). Every key is checked against the stage's schema (`STAGE_SCHEMAS`; expert runs: the recipe
schema of `mmclf.training.config`): an unknown key is an error naming the close ones. The commands in
`mmclf/cli/` and the workflow steps (`mmclf.workflow`) call these functions and nothing else.
"""

from __future__ import annotations

import copy
from pathlib import Path

from mmclf.training.config import load_config, merge_into, parse_overrides, read_recipe

FUSE_SCHEMA = {
    "tables": [],  # one probability table per expert to train on ([NAME=]PATH; RUN/probs/oof.parquet recommended)
    "predict_tables": None,  # one table per expert with the rows to predict (matched by expert name)
    "train_splits": None,  # splits of the tables to train on (default: every labelled row)
    "folds": 8,  # cross-validation folds = fold heads that vote
    "hidden_size": 0,  # 0: one linear layer; > 0: linear -> ReLU -> linear (the paper: 6)
    "epochs": 40,
    "lr": 0.01,
    "batch_size": 256,
    "seed": 0,
    "inputs": "probs",  # probs (the paper) | log_probs
    "start": "mean",  # mean: the experts' weighted product + a learnt correction | random: the paper's head
    "class_weight": "balanced",  # balanced | none (the paper's plain cross-entropy)
    "output_dir": None,
}

STAGE_SCHEMAS = {
    "demo_data": {"rows": 3000, "test_rows": None, "seed": 0, "label_noise": 0.0, "image_size": 64,
                  "missing_image_rate": 0.04, "empty_description_rate": 0.35, "output_dir": None},
    "build_dataset": {"features": None, "labels": None, "images": None, "test": None, "test_labels": None,
                      "test_images": None, "columns": None, "classes": None, "validation_fraction": 0.1, "seed": 0,
                      "encoding": "utf-8", "encoding_errors": "strict", "strict_images": False, "workers": 4,
                      "min_class_rows": 2, "overwrite": False, "output_dir": None},
    "fuse": FUSE_SCHEMA,
    "fuse_features": {"experts": {}, "dataset": None, "combine": "concat", "seed": 0, "hidden_size": 0,
                      "output_dir": None},
    "ensemble": {"inputs": [], "split": "test", "output": None},
    "evaluate": {"predictions": None, "dataset": None, "labels": None, "split": "test", "id_column": None,
                 "prediction_column": None, "label_column": None, "output_dir": None},
    "assemble": {"experts": {}, "fusions": [], "evaluation": None, "metadata": {}, "output_dir": None},
    "export": {"pipeline": None, "output_dir": None, "format": "onnx", "quantize": None, "dataset": None,
               "split": "test", "parity_rows": 128, "tolerance": None, "min_agreement": None, "seed": 0},
    "predict": {"pipeline": None, "revision": None, "input": None, "dataset": None, "split": "test", "images": None,
                "columns": None, "batch_size": 64, "device": None, "allow_missing_images": False, "strict_images": False,
                "chunk_rows": 8192,
                "resume": False, "format": "auto", "progress": True, "output": None},
}
# keys whose value is a mapping of free names (expert names), not schema sections
FREE_MAPPINGS = {"experts", "metadata", "columns"}


def stage_config(stage: str, config=None, overrides=(), **values) -> dict:
    """The complete, checked config of a stage: its schema's defaults < `config` < `overrides` < `values`."""
    schema = copy.deepcopy(STAGE_SCHEMAS[stage])
    where = f"the {stage} stage's config"
    if isinstance(config, (str, Path)):
        where, config = f"recipe {config}", read_recipe(config)
    merged = _merge(schema, config or {}, where)
    merged = _merge(schema, {**merged, **parse_overrides(overrides)}, "overrides")
    merged = _merge(schema, {**merged, **values}, "keyword values")
    for key in ("output_dir", "output"):
        if key in schema and not merged[key]:
            raise ValueError(f"the {stage} stage needs {key}=PATH")
    return merged


def _merge(schema: dict, values: dict, where: str) -> dict:
    """merge_into for a flat stage schema whose mapping-valued keys hold free names."""
    plain = {k: v for k, v in schema.items() if k not in FREE_MAPPINGS}
    merged = merge_into(plain, {k: v for k, v in values.items() if k not in FREE_MAPPINGS}, where)
    for key in FREE_MAPPINGS & set(schema):
        value = values.get(key, schema[key])
        if value is not None and not isinstance(value, (dict, str)):
            raise ValueError(f"config key {key!r} in {where} must be a mapping, got {value!r}")
        merged[key] = copy.deepcopy(value)
    return merged


def expert_config(config, overrides, values: dict, sections: dict | None = None) -> dict:
    """An expert (or denoise) run's config: a recipe name, path or dict, then overrides, then keyword values."""
    from mmclf.training.config import deep_update, resolve

    if isinstance(config, dict):
        config = resolve(deep_update(config, parse_overrides(overrides)), sections)
    else:
        config = load_config(config, overrides, sections)
    return resolve(deep_update(config, values), sections) if values else config


# --- the stages ---------------------------------------------------------------------------------------------

def demo_data(config=None, overrides=(), **values) -> Path:
    """The synthetic demo catalog (ENS layout, images, test labels, label_noise.csv) in `output_dir`."""
    from mmclf.demo_catalog import generate_catalog

    c = stage_config("demo_data", config, overrides, **values)
    generate_catalog(c["output_dir"], rows=c["rows"], test_rows=c["test_rows"], seed=c["seed"],
                     label_noise=c["label_noise"], image_size=c["image_size"],
                     missing_image_rate=c["missing_image_rate"], empty_description_rate=c["empty_description_rate"],
                     overwrite=True, progress=False)
    return Path(c["output_dir"])


def build_dataset(config=None, overrides=(), **values):
    """Raw files (ENS CSV, SIGIR TSV, any CSV with `columns`) + images -> a DatasetDict in `output_dir`, written
    whole or not at all. Returns (dataset_dict, summary)."""
    from mmclf.data.build import build_dataset as build
    from mmclf.data.build import parse_classes
    from mmclf.data.readers import parse_columns

    c = stage_config("build_dataset", config, overrides, **values)
    if not c["features"]:
        raise ValueError("the build_dataset stage needs features=FILE (the X file)")
    columns = parse_columns(c["columns"]) if isinstance(c["columns"], str) else c["columns"]
    classes = parse_classes(c["classes"]) if isinstance(c["classes"], str) else c["classes"]
    return build(c["features"], c["labels"], c["images"], c["output_dir"], test_file=c["test"],
                 test_labels_file=c["test_labels"], test_images_dir=c["test_images"], columns=columns,
                 classes=classes, validation_fraction=c["validation_fraction"], seed=c["seed"],
                 encoding=c["encoding"], encoding_errors=c["encoding_errors"], strict_images=c["strict_images"],
                 workers=c["workers"], min_class_rows=c["min_class_rows"], overwrite=c["overwrite"])


def train(config, overrides=(), **values) -> Path:
    """An expert run from a recipe (`text-tiny`, `image-resnet152-224`, ... or a YAML path or dict): model/,
    probability tables (probs/<split>.parquet, probs/oof.parquet with folds > 1), metrics.json. Runs under
    `accelerate launch` as it does in one process. Returns the run folder."""
    from mmclf.training.train import train_expert

    return train_expert(expert_config(config, overrides, values))


def denoise(config, overrides=(), **values) -> Path:
    """Label-noise removal from a denoise recipe (`denoise-tiny`, `denoise-resnet50-4fold`): k-fold out-of-fold
    probabilities ranked by cleanlab, label_issues.csv, report.md and the cleaned dataset in DIR/dataset."""
    from mmclf.denoise import SECTIONS
    from mmclf.denoise import denoise as run_denoise

    return run_denoise(expert_config(config, overrides, values, SECTIONS))


def fuse(config=None, overrides=(), **values):
    """Decision-level fusion: 8-fold heads over the experts' probability tables, saved as a fusion run folder
    (predictions.csv and probs/<split>.parquet of `predict_tables` included). Returns the FusionModel."""
    from mmclf.fusion.decision import fuse_tables

    c = stage_config("fuse", config, overrides, **values)
    if not c["tables"]:
        raise ValueError("the fuse stage needs tables=[...] (one probability table per expert)")
    options = {k: c[k] for k in ("folds", "hidden_size", "epochs", "lr", "batch_size", "seed", "inputs", "start")}
    class_weight = None if c["class_weight"] in (None, "none") else c["class_weight"]
    return fuse_tables(c["tables"], c["output_dir"], predict_tables=c["predict_tables"],
                       train_splits=c["train_splits"], class_weight=class_weight, **options)


def fuse_features(config=None, overrides=(), **values) -> dict:
    """Feature-level fusion (the baseline the paper beat) over saved experts ({name: model folder}) on a built
    dataset; returns its metrics."""
    from datasets import load_from_disk

    from mmclf.fusion.feature import fuse_expert_features

    c = stage_config("fuse_features", config, overrides, **values)
    if not c["experts"] or not c["dataset"]:
        raise ValueError("the fuse_features stage needs experts={NAME: MODEL_DIR} and dataset=DIR")
    return fuse_expert_features(c["experts"], load_from_disk(str(c["dataset"])), c["output_dir"],
                                combine=c["combine"], seed=c["seed"], hidden_size=c["hidden_size"])


def ensemble(config=None, overrides=(), **values):
    """Majority vote of fusion runs, probability tables or predictions CSVs on one split, written to `output`
    (CSV) and its .parquet twin. Returns (vote-share table, winners, vote counts)."""
    from mmclf.fusion.ensemble import write_ensemble

    c = stage_config("ensemble", config, overrides, **values)
    return write_ensemble(c["inputs"], c["split"], c["output"])


def evaluate(config=None, overrides=(), **values) -> dict:
    """Macro-F1, weighted-F1, accuracy, per-class report and confusion matrix in `output_dir`; returns the
    report."""
    from mmclf.evaluation import evaluate_predictions

    c = stage_config("evaluate", config, overrides, **values)
    if not c["predictions"]:
        raise ValueError("the evaluate stage needs predictions=FILE")
    return evaluate_predictions(c["predictions"], c["output_dir"], dataset=c["dataset"], labels=c["labels"],
                                split=c["split"], id_column=c["id_column"], prediction_column=c["prediction_column"],
                                label_column=c["label_column"])


def assemble(config=None, overrides=(), **values):
    """A self-contained pipeline folder from saved experts ({name: model folder}) and fusion runs; returns the
    MultimodalPipeline."""
    from mmclf.pipeline import assemble_pipeline

    c = stage_config("assemble", config, overrides, **values)
    return assemble_pipeline(c["experts"], c["fusions"], c["output_dir"], evaluation=c["evaluation"],
                             metadata=c["metadata"])


def predict(config=None, overrides=(), **values):
    """Predictions of a pipeline (folder or Hub id) for a raw file (CSV, TSV, Parquet) or a dataset split, streamed
    `chunk_rows` rows at a time into `output` (a submission CSV with the probability table beside it, or Parquet);
    `resume` continues an interrupted run; an unreadable image is predicted as a missing one and counted
    (`strict_images`: an error). Returns the BatchPrediction (output, rows, input counts, unreadable images)."""
    from mmclf.batch_predict import predict_file

    c = stage_config("predict", config, overrides, **values)
    if not c["pipeline"]:
        raise ValueError("the predict stage needs pipeline=DIR_OR_HUB_ID")
    if not c["output"]:
        raise ValueError("the predict stage needs output=FILE")
    return predict_file(c["pipeline"], c["output"], input=c["input"], dataset=c["dataset"], split=c["split"],
                        images=c["images"], columns=c["columns"], batch_size=c["batch_size"], device=c["device"],
                        allow_missing_images=c["allow_missing_images"], strict_images=c["strict_images"],
                        progress=c["progress"],
                        chunk_rows=c["chunk_rows"], resume=c["resume"], output_format=c["format"],
                        revision=c["revision"])


def export(config=None, overrides=(), **values):
    """A pipeline's networks exported to ONNX in `output_dir` (`quantize`: int8), written only when its outputs
    match the PyTorch pipeline's within the tolerance on `parity_rows` rows of `dataset`'s `split` (default:
    generated rows); returns the exported MultimodalPipeline. See `mmclf.export`."""
    from mmclf.export import export_pipeline

    c = stage_config("export", config, overrides, **values)
    if not c["pipeline"] or not c["output_dir"]:
        raise ValueError("the export stage needs pipeline=DIR_OR_HUB_ID and output_dir=DIR")
    rows = None
    if c["dataset"]:
        from datasets import load_from_disk

        if not Path(c["dataset"]).is_dir():
            raise FileNotFoundError(f"dataset folder not found: {c['dataset']}")
        splits = load_from_disk(str(c["dataset"]))
        if c["split"] not in splits:
            raise ValueError(f"{c['dataset']} has no split {c['split']!r}; it has {list(splits)}")
        rows = splits[c["split"]]
        rows = rows.select(range(min(len(rows), c["parity_rows"])))
    return export_pipeline(c["pipeline"], c["output_dir"], format=c["format"], quantize=c["quantize"], rows=rows,
                           parity_rows=c["parity_rows"], seed=c["seed"], tolerance=c["tolerance"],
                           min_agreement=c["min_agreement"])


STAGES = {"demo_data": demo_data, "build_dataset": build_dataset, "train": train, "denoise": denoise, "fuse": fuse,
          "fuse_features": fuse_features, "ensemble": ensemble, "evaluate": evaluate, "assemble": assemble,
          "predict": predict, "export": export}
