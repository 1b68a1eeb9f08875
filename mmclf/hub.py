"""Publishing to and fetching from the Hugging Face Hub (`mmclf push`).

Any saved folder can be pushed: an expert's `model/` folder, a fusion run, a whole pipeline.
A pipeline is pushed self-contained: the expert and fusion folders it points to are uploaded
under `experts/<name>/` and `fusions/<i>/` with a rewritten pipeline.json, so
`mmclf predict --pipeline OWNER/NAME` works from the Hub. Nothing here runs unless the user
names a repository id.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

SKIPPED_DIRS = {"checkpoints", "folds_state", "__pycache__", "logs"}


def _files(folder: Path, prefix: str) -> list[tuple[str, Path]]:
    return [
        (f"{prefix}{path.relative_to(folder).as_posix()}", path)
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not SKIPPED_DIRS & set(path.relative_to(folder).parts[:-1])
    ]


def push_folder(folder, repo_id: str, *, private: bool = False, token: str | None = None,
                commit_message: str | None = None) -> str:
    """Upload `folder` (resolving a pipeline's references) in one commit; returns the commit URL."""
    from huggingface_hub import CommitOperationAdd, HfApi

    from mmclf.predict import PIPELINE_FILE, load_pipeline

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"nothing to push: {folder} is not a folder")
    operations = []
    if (folder / PIPELINE_FILE).is_file():
        spec = load_pipeline(folder)
        files = []
        for name, path in spec["experts"].items():
            files += _files(path, f"experts/{name}/")
        for i, path in enumerate(spec["fusions"]):
            files += _files(path, f"fusions/{i}/")
        rewritten = {
            "class_names": spec["class_names"],
            "experts": {name: f"experts/{name}" for name in spec["experts"]},
            "fusions": [f"fusions/{i}" for i in range(len(spec["fusions"]))],
        }
        operations.append(CommitOperationAdd(PIPELINE_FILE, json.dumps(rewritten, indent=2).encode()))
    else:
        files = _files(folder, "")
    operations += [CommitOperationAdd(path_in_repo, str(path)) for path_in_repo, path in files]
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.create_commit(repo_id, operations, commit_message=commit_message or f"Upload {folder.name} with mmclf")
    return commit.commit_url


def from_pretrained_quietly(model_class, directory):
    """`model_class.from_pretrained(directory)` without the line huggingface_hub's mixin prints for every
    local load (a pipeline loads dozens of fold heads)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return model_class.from_pretrained(str(directory))


def local_or_hub(path_or_repo_id) -> Path:
    """A local folder as is; otherwise an `owner/name` Hub id, downloaded (cached) on demand."""
    path = Path(path_or_repo_id)
    if path.exists() or str(path_or_repo_id).count("/") != 1 or str(path_or_repo_id).startswith((".", "/")):
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(path_or_repo_id)))


def add_arguments(parser) -> None:
    parser.add_argument("folder", help="an expert model folder, a fusion run or a pipeline folder")
    parser.add_argument("--repo-id", required=True, help="OWNER/NAME on the Hub")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--token", help="Hub token (default: the logged-in one)")
    parser.add_argument("--message", help="commit message")


def run(args) -> int:
    url = push_folder(args.folder, args.repo_id, private=args.private, token=args.token, commit_message=args.message)
    print(f"pushed {args.folder} to {url}")
    return 0
