"""`mmclf push`: upload a pipeline, expert or fusion folder to the Hub; it loads back with
`mmclf.hub.load_artifact(repo_id)` (or the kind's own `from_pretrained`)."""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("folder", help="a pipeline folder, an expert model folder or a fusion run")
    parser.add_argument("--repo-id", required=True, help="OWNER/NAME on the Hub")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--token", help="Hub token (default: the logged-in one)")
    parser.add_argument("--message", help="commit message")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to main")


def run(args) -> int:
    from mmclf.hub import ARTIFACT_MARKERS, artifact_kind, push_folder

    folder = Path(args.folder)
    kind = artifact_kind(folder)
    if kind is None:
        raise ValueError(f"{folder} is not an mmclf pipeline, expert or fusion folder "
                         f"(none of {sorted(ARTIFACT_MARKERS.values())})")
    url = push_folder(folder, args.repo_id, private=args.private, token=args.token,
                      commit_message=args.message or f"Upload mmclf {kind}", create_pr=args.create_pr)
    print(f"pushed {kind} {folder} to {url}")
    return 0
