"""The `mmclf` command line: one subcommand per pipeline stage.

Each command lives in the module that implements it; a module is imported only when its
command runs, so `mmclf --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from mmclf.progress import configure_for_logs

# command: (module, function that adds its arguments, function that runs it, one-line help)
COMMANDS = {
    "demo-data": ("mmclf.data.demo_catalog", "add_arguments", "run", "write the synthetic demo catalog (ENS layout)"),
    "build-dataset": ("mmclf.data.build", "add_arguments", "run", "raw CSV/TSV files + images -> DatasetDict on disk"),
    "cache-images": ("mmclf.data.image_cache", "add_arguments", "run",
                     "copy of a dataset with its images decoded and resized once (faster image training)"),
    "train": ("mmclf.training.train", "add_train_arguments", "run_train", "train an expert from a recipe YAML"),
    "predict-expert": ("mmclf.training.train", "add_predict_arguments", "run_predict",
                       "probability table of a saved expert"),
    "denoise": ("mmclf.denoise", "add_arguments", "run",
                "k-fold out-of-fold probabilities ranked by cleanlab -> label issues, cleaned dataset, report"),
    "fuse": ("mmclf.fusion.decision", "add_arguments", "run", "decision-level fusion over experts' probability tables"),
    "ensemble": ("mmclf.fusion.ensemble", "add_arguments", "run", "majority vote over fused runs or prediction tables"),
    "pipeline": ("mmclf.pipeline", "add_pipeline_arguments", "run_pipeline", "assemble experts + fusions into a pipeline"),
    "predict": ("mmclf.pipeline", "add_arguments", "run", "raw files + saved pipeline -> submission file"),
    "evaluate": ("mmclf.evaluation", "add_arguments", "run", "macro-F1, per-class report, confusion matrix"),
    "push": ("mmclf.pipeline", "add_push_arguments", "run_push", "push a pipeline, expert or fusion folder to the Hub"),
    "serve": ("mmclf.serve", "add_arguments", "run", "HTTP server answering predictions of a pipeline"),
    "demo": ("mmclf.demo", "add_arguments", "run", "the whole pipeline on the built-in demo catalog"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmclf", description="Multimodal product classification toolkit.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, add_name, run_name, help_text) in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            getattr(module, add_name)(sub)
            sub.set_defaults(func=getattr(module, run_name))
    return parser


def main(argv: list[str] | None = None) -> int:
    configure_for_logs()
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as error:  # bad input: a message, no traceback (MMCLF_DEBUG=1 shows it)
        if os.environ.get("MMCLF_DEBUG"):
            raise
        print(f"mmclf {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
