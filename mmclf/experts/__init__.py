"""Experts: one interface (`base.Expert`), a registry by kind, and the experts themselves.

Adding an expert kind is one new file with an `Expert` subclass plus one line in `KINDS`: training, folds,
probability tables, prediction and the pipeline work with it unchanged. Kinds are imported only when used,
so reading the registry does not import transformers or timm.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

EXPERT_FILE = "mmclf_expert.json"

# kind -> "module:Class"
KINDS = {
    "text": "mmclf.experts.text:TextExpert",
    "image": "mmclf.experts.image:ImageExpert",
    "image-dcl": "mmclf.experts.dcl:DCLExpert",
    "tfidf": "mmclf.experts.tfidf:TfidfExpert",
}


def expert_class(kind: str):
    if kind not in KINDS:
        raise ValueError(f"unknown expert kind {kind!r}; expected one of {sorted(KINDS)}")
    module, name = KINDS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def read_expert_info(directory) -> dict:
    info_file = Path(directory) / EXPERT_FILE
    if not info_file.is_file():
        where = "folder not found" if not Path(directory).is_dir() else f"no {EXPERT_FILE}"
        raise FileNotFoundError(f"{directory} is not a saved mmclf expert ({where})")
    try:
        info = json.loads(info_file.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{info_file} is not valid JSON: {error}") from None
    if not isinstance(info, dict) or "kind" not in info or "class_names" not in info:
        raise ValueError(f"{info_file} is not an mmclf expert description (needs 'kind' and 'class_names')")
    return info


def load_expert(directory, revision: str | None = None):
    """The saved expert in `directory` (or an `owner/name` Hub id at `revision`), whatever its kind (read from its
    mmclf_expert.json)."""
    from mmclf.hub import local_or_hub, refuse_pickles

    directory = local_or_hub(directory, revision) if not Path(directory).exists() else Path(directory)
    refuse_pickles(directory)
    return expert_class(read_expert_info(directory)["kind"]).from_pretrained(directory)
