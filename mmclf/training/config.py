"""Recipes: complete YAML configs for expert training, loaded by name or path, with `key=value` overrides.

A recipe is a nested mapping. `SCHEMA` below names every key an expert run understands and its
default; a recipe may only use these keys (an unknown key is an error naming the close ones), and
keys it leaves out take the default, so the resolved config written into the run directory always
holds every key. The shipped recipes (`mmclf/recipes/*.yaml`) spell out every key anyway.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path

import yaml

from mmclf import rundir
from mmclf.experts import expert_class
from mmclf.rundir import flatten, write_config  # noqa: F401  (imported from here by other modules)

RECIPES_DIR = Path(__file__).parent.parent / "recipes"

TRAINING_DEFAULTS = {
    "epochs": 3,
    "batch_size": 32,  # global batch: split across processes (accelerate split_batches), so results do not
    "eval_batch_size": 64,  # depend on the number of processes
    "gradient_accumulation_steps": 1,
    "optimizer": "adamw",  # adamw | sgd
    "lr": 5.0e-5,
    "weight_decay": 0.01,
    "momentum": 0.9,  # sgd only
    "scheduler": "linear",  # linear (warmup then linear decay) | cosine | constant | step (x step_gamma every step_epochs)
    "warmup_ratio": 0.06,
    "step_epochs": 12,
    "step_gamma": 0.1,
    "max_grad_norm": 1.0,  # 0 or null: no clipping
    "early_stopping_patience": 0,  # epochs without a better validation macro-F1 before stopping; 0: off
    "checkpoint_steps": 0,  # also checkpoint every N optimizer steps inside an epoch (resume there); 0: at epoch ends only
    "mixed_precision": None,  # null: from the accelerate launch config; or no | fp16 | bf16
    "log_with": "auto",  # auto (tensorboard when installed) | none | tensorboard | wandb | ... (accelerate trackers)
    "num_workers": 0,
    "pin_memory": "auto",  # auto: when training on a GPU
    "group_by_length": False,  # text: batches of similar lengths (less padding)
    "channels_last": False,  # image: channels-last memory format (faster convolutions on recent GPUs)
    "fused_optimizer": True,  # AdamW/SGD as one fused kernel (optimizer step on CPU: AdamW 4.5x, SGD 3.7x faster)
    "frozen_backbone": False,  # true: the pretrained backbone's features computed once, only the head trains (CPU-friendly)
    "max_steps": 0,  # stop after this many optimizer steps in all (a short check); 0: the epochs decide
}

SCHEMA = {
    "expert": "text",  # an expert kind of mmclf.experts.KINDS: text | image | ...
    "dataset": None,  # path of a DatasetDict written by `mmclf build-dataset`
    "output_dir": None,
    "seed": 42,
    "folds": 1,  # k > 1: k stratified folds over train+validation -> probs/oof.parquet
    "predict_splits": ["validation", "test"],  # splits to write probability tables for (missing ones are skipped)
    "resume": False,  # continue from output_dir/checkpoints/last
    "init_from": None,  # an earlier run (RUN_DIR, or its model/ folder) whose weights this run starts from
    "model": {},  # the expert kind's own keys and defaults (its `config_defaults`)
    "training": TRAINING_DEFAULTS,
}

# keys that may differ when resuming a run: they do not change what is computed
RESUME_FREE_KEYS = ("resume", "dataset", "output_dir", "training.log_with", "training.num_workers",
                    "training.pin_memory", "training.eval_batch_size", "predict_splits", "training.checkpoint_steps")


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def read_recipe(name_or_path: str | Path) -> dict:
    path = Path(name_or_path)
    if not path.is_file():
        named = RECIPES_DIR / f"{name_or_path}.yaml"
        if not named.is_file():
            raise FileNotFoundError(f"no recipe file {str(name_or_path)!r} and no shipped recipe of that name; "
                                    f"shipped recipes: {', '.join(recipe_names())}")
        path = named
    with open(path) as f:
        try:
            recipe = yaml.safe_load(f) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"recipe {path} is not valid YAML: {error}") from None
    if not isinstance(recipe, dict):
        raise ValueError(f"recipe {path} must be a mapping of keys to values, got {type(recipe).__name__}")  # noqa: TRY004
    return recipe


def schema_for(expert: str, sections: dict | None = None) -> dict:
    """The schema of an expert kind's runs; `sections` adds a command's own top-level sections (e.g. `denoise`)."""
    schema = copy.deepcopy(SCHEMA)
    kind = expert_class(expert)
    schema["model"] = copy.deepcopy(kind.config_defaults)
    if not kind.trains_with_loop:  # fitted in one call: of the training keys only the prediction batch size applies
        schema["training"] = {"eval_batch_size": TRAINING_DEFAULTS["eval_batch_size"]}
        del schema["init_from"]  # and there are no weights to start from
    schema.update(copy.deepcopy(sections or {}))
    return schema


def _unknown_key_error(key: str, valid: list[str], where: str) -> ValueError:
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ValueError(f"unknown config key {key!r} in {where}.{hint} Valid keys: {', '.join(valid)}")


def merge_into(schema: dict, values: dict, where: str, prefix: str = "") -> dict:
    """Return schema defaults updated with values; any key not in the schema is an error."""
    merged = copy.deepcopy(schema)
    valid = sorted(flatten(schema))
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in schema:
            raise _unknown_key_error(name, valid if not prefix else sorted(prefix + k for k in flatten(schema)), where)
        if isinstance(schema[key], dict) and schema[key]:
            if not isinstance(value, dict):
                raise ValueError(f"config key {name!r} in {where} must be a mapping, got {value!r}")
            merged[key] = merge_into(schema[key], value, where, name + ".")
        else:
            merged[key] = _as_schema_type(schema[key], value, name, where)
    return merged


def _as_schema_type(default, value, name: str, where: str):
    """Numbers written like 1e-4 load as strings in YAML 1.1: read them as numbers where a number is expected."""
    numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
    if numeric and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"config key {name!r} in {where} must be a number, got {value!r}") from None
        return int(number) if isinstance(default, int) and number.is_integer() else number
    return value


def parse_overrides(overrides) -> dict:
    """['training.lr=1e-4', 'dataset=DIR'] -> nested dict; values are parsed as YAML (numbers, lists, null...)."""
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value (dotted keys for nesting, e.g. training.lr=1e-4)")
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text) if text != "" else None
        except yaml.YAMLError as error:
            raise ValueError(f"override {item!r}: value is not valid YAML: {error}") from None
        parts = key.strip().split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r} conflicts with another override of {part!r}")  # noqa: TRY004
        node[parts[-1]] = value
    return nested


def validate(config: dict) -> None:
    training = {**TRAINING_DEFAULTS, **config["training"]}
    checks = [
        (config["folds"] is not None and int(config["folds"]) >= 1, "folds must be an integer >= 1"),
        (training["epochs"] >= 1, "training.epochs must be >= 1"),
        (training["batch_size"] >= 1, "training.batch_size must be >= 1"),
        (training["gradient_accumulation_steps"] >= 1, "training.gradient_accumulation_steps must be >= 1"),
        (training["optimizer"] in ("adamw", "sgd"), "training.optimizer must be adamw or sgd"),
        (training["scheduler"] in ("linear", "cosine", "constant", "step"),
         "training.scheduler must be linear, cosine, constant or step"),
        (training["lr"] > 0, "training.lr must be > 0"),
        (training["checkpoint_steps"] >= 0, "training.checkpoint_steps must be >= 0 (0: at epoch ends only)"),
        (training["max_steps"] >= 0, "training.max_steps must be >= 0 (0: the epochs decide)"),
        (isinstance(config["predict_splits"], list), "predict_splits must be a list of split names"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(f"invalid config: {message}")


def load_config(name_or_path: str, overrides=(), sections: dict | None = None) -> dict:
    """Read a recipe (shipped name or YAML path), apply `key=value` overrides, check every key, fill defaults."""
    recipe = read_recipe(name_or_path)
    extra = parse_overrides(overrides)
    expert = extra.get("expert", recipe.get("expert", SCHEMA["expert"]))
    schema = schema_for(expert, sections)
    config = merge_into(schema, recipe, where=f"recipe {name_or_path}")
    config = merge_into(schema, deep_update(config, extra), where="command-line overrides")
    validate(config)
    return config


def deep_update(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


def resolve(config: dict, sections: dict | None = None) -> dict:
    """Complete a (possibly partial) config dict against the schema; the Python API's entry point."""
    schema = schema_for(config.get("expert", SCHEMA["expert"]), sections)
    resolved = merge_into(schema, config, where="config")
    validate(resolved)
    return resolved


def config_differences(saved: dict, current: dict, ignore=RESUME_FREE_KEYS) -> list[str]:
    """Dotted keys whose values differ between two resolved configs (outside `ignore`)."""
    return rundir.config_differences(saved, current, ignore)
