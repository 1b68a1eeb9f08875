"""One artifact protocol and the Hugging Face Hub boundary: model cards, uploads and Hub loading.

Experts, fusion runs and pipelines are artifacts (`Artifact`, the pattern of huggingface_hub's
`PyTorchModelHubMixin`): `save_pretrained(dir)`, `from_pretrained(path_or_hub_id, revision=None)` and
`push_to_hub(repo_id, ...)`. Each folder names its kind with a marker file (`ARTIFACT_MARKERS`), so
`load_artifact(path_or_hub_id)` returns the right one, and anything `mmclf push` uploads loads back from its Hub id.

Every saved folder carries a README.md model card built with `huggingface_hub.ModelCard`: metadata (library,
tags, base model, dataset, metrics in `model-index`) and a body with the class list, the hyper-parameters and
how to load and predict. Nothing here touches the network unless the user names a repository id.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

CARD_FILE = "README.md"
SKIPPED_DIRS = {"checkpoints", "__pycache__", "logs"}
SKIPPED_FILES = {".mmclf_done.json", ".mmclf_lock"}  # a workflow's done marker, a run's lock: local bookkeeping
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")  # torch.save / pickle files: loading runs code
METRIC_NAMES = {"macro_f1": "Macro F1", "weighted_f1": "Weighted F1", "accuracy": "Accuracy"}
HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def write_model_card(directory, *, title: str, summary: str, task: str, class_names: list[str],
                     metrics: dict | None = None, base_model: str | None = None, dataset: str | None = None,
                     tags: list[str] = (), details: dict | None = None, usage: str = "") -> Path:
    """README.md with `model-index` metrics. `metrics`: {"macro_f1", "weighted_f1", "accuracy", "split", "rows"}."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    metrics = metrics or {}
    dataset_name = dataset or "product catalog"
    eval_results = [
        EvalResult(task_type=task, dataset_type=dataset_name, dataset_name=dataset_name, metric_type=key,
                   metric_name=name, metric_value=round(float(metrics[key]), 4), dataset_split=metrics.get("split"))
        for key, name in METRIC_NAMES.items() if metrics.get(key) is not None
    ]
    data = ModelCardData(
        library_name="mmclf", tags=["mmclf", "product-classification", *tags],
        base_model=base_model if base_model and HUB_ID.match(base_model) else None,
        datasets=[dataset] if dataset and HUB_ID.match(dataset) else None,
        model_name=title if eval_results else None, eval_results=eval_results or None,
    )
    lines = [f"# {title}", "", summary, ""]
    if eval_results:
        where = f"{metrics.get('split', 'evaluation')} split" + (f", {metrics['rows']:,} rows" if "rows" in metrics else "")
        lines += [f"## Evaluation ({where})", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {r.metric_name} | {r.metric_value:.4f} |" for r in eval_results] + [""]
    if details:
        lines += ["## Settings", "", "```json", json.dumps(details, indent=2, default=str), "```", ""]
    lines += [f"## Classes ({len(class_names)})", "", "index: product type code", "",
              ", ".join(f"{i}: {name}" for i, name in enumerate(class_names)), ""]
    if usage:
        lines += ["## Usage", "", "```python", usage.strip(), "```", ""]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
    path = Path(directory) / CARD_FILE
    card.save(path)
    return path


def push_folder(folder, repo_id: str, *, private: bool = False, token: str | None = None,
                commit_message: str | None = None, create_pr: bool = False) -> str:
    """Upload a self-contained folder in one commit (checkpoints and logs left out); returns the commit URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"nothing to push: {folder} is not a folder")
    operations = [
        CommitOperationAdd(path.relative_to(folder).as_posix(), str(path))
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name not in SKIPPED_FILES and not SKIPPED_DIRS & set(path.relative_to(folder).parts[:-1])
    ]
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.create_commit(repo_id, operations, commit_message=commit_message or f"Upload {folder.name} with mmclf",
                               create_pr=create_pr)
    return commit.pr_url if create_pr and commit.pr_url else commit.commit_url


def refuse_pickles(folder) -> None:
    """Refuse a folder holding a pickled file (torch.save weights, pickles), before anything in it is opened:
    unpickling can run code. mmclf writes weights as safetensors and everything else as JSON or Parquet."""
    folder = Path(folder)
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in PICKLE_SUFFIXES and not SKIPPED_DIRS & set(path.relative_to(folder).parts[:-1]):
            raise ValueError(f"{path}: a pickled file ({path.suffix}); mmclf does not load pickles, which can run code. "
                             "Save the weights as safetensors (model.safetensors: safetensors.torch.save_file, or "
                             "save_pretrained(..., safe_serialization=True)) and remove this file")


def inside(root, relative, key: str) -> Path:
    """`root / relative`, refused unless it resolves (symlinks followed) inside `root`: what an artifact names
    stays in the artifact. `key` names where the path was found, for the error."""
    root = Path(root)
    text = str(relative)
    if not text or "\0" in text or Path(text).is_absolute():
        raise ValueError(f"{key}: {text!r} must be a relative path inside {root}")
    path = root / text
    if not path.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"{key}: {text!r} leads outside {root}; paths an artifact names must stay inside it")
    return path


def from_pretrained_quietly(model_class, directory):
    """`model_class.from_pretrained(directory)` without the line huggingface_hub's mixin prints for every
    local load (a pipeline loads dozens of fold heads)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return model_class.from_pretrained(str(directory))


def local_or_hub(path_or_repo_id, revision: str | None = None) -> Path:
    """A local folder as is; an `owner/name` Hub id (that is not a local path) downloaded on demand, at `revision`
    (a branch, tag or commit; default: main)."""
    text = str(path_or_repo_id)
    path = Path(text)
    if path.exists():
        return path
    if not HUB_ID.match(text) or text.startswith((".", "~")):
        raise FileNotFoundError(f"folder not found: {text}")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(text, revision=revision))
    except LocalEntryNotFoundError:
        raise FileNotFoundError(f"folder not found: {text} (and no cached Hub repository {text!r}; "
                                "the Hub is not reachable offline)") from None
    except HfHubHTTPError as error:
        raise FileNotFoundError(f"folder not found: {text}, and the Hub answered: {error}") from None


# kind -> the marker file its folders hold (checked in this order: a pipeline folder also holds experts)
ARTIFACT_MARKERS = {"pipeline": "pipeline.json", "fusion": "fusion.json", "expert": "mmclf_expert.json"}
ARTIFACT_CLASSES = {"pipeline": "mmclf.pipeline:MultimodalPipeline", "fusion": "mmclf.fusion.decision:FusionModel",
                    "expert": "mmclf.experts:load_expert"}


def artifact_kind(folder) -> str | None:
    """"pipeline", "fusion" or "expert" by the marker file in `folder`; None when it holds none."""
    return next((kind for kind, marker in ARTIFACT_MARKERS.items() if (Path(folder) / marker).is_file()), None)


class Artifact:
    """save_pretrained / from_pretrained / push_to_hub for one kind of mmclf folder.

    A subclass writes its folder in `save_pretrained(directory)` (marker file included) and reads it in
    `_from_folder(directory, **kwargs)`; `from_pretrained` resolves a Hub id first."""

    artifact: str = ""  # the kind, a key of ARTIFACT_MARKERS

    def save_pretrained(self, directory) -> Path:
        raise NotImplementedError

    @classmethod
    def _from_folder(cls, directory: Path, **kwargs):
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, path_or_hub_id, revision: str | None = None, **kwargs):
        """Load from a local folder or an `owner/name` Hub repository at `revision` (a folder holding a pickled
        file is refused before anything is read: `refuse_pickles`)."""
        folder = local_or_hub(path_or_hub_id, revision)
        refuse_pickles(folder)
        return cls._from_folder(folder, **kwargs)

    def push_to_hub(self, repo_id: str, *, private: bool = False, token: str | None = None,
                    commit_message: str | None = None, create_pr: bool = False) -> str:
        """Save into a temporary folder and upload it in one commit; returns the commit (or PR) URL."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / self.artifact)
            return push_folder(folder, repo_id, private=private, token=token, create_pr=create_pr,
                               commit_message=commit_message or f"Upload mmclf {self.artifact}")


def load_artifact(path_or_hub_id, revision: str | None = None):
    """The expert, fusion run or pipeline saved at a local folder or Hub id, whatever its kind."""
    import importlib

    root = local_or_hub(path_or_hub_id, revision)
    refuse_pickles(root)
    kind = artifact_kind(root)
    if kind is None:
        raise ValueError(f"{path_or_hub_id} is not an mmclf artifact (none of {sorted(ARTIFACT_MARKERS.values())})")
    module, name = ARTIFACT_CLASSES[kind].split(":")
    loader = getattr(importlib.import_module(module), name)
    return loader(root) if kind == "expert" else loader.from_pretrained(root)
