"""The `mmclf` command line: one module per command in this package, each mapping its flags (and recipes) onto
a stage call of the library. A command's module is imported only when it runs, so `mmclf --help` stays fast."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from mmclf.progress import configure_for_logs

# command -> one-line help; the command's module is mmclf.cli.<command with "_" for "-">, with
# add_arguments(parser) and run(args) -> exit code. A command module maps flags onto a library call, nothing else.
COMMANDS = {
    "run": "run a workflow (demo, quickstart, rakuten-paper or a YAML file): ordered steps, skipped when done",
    "demo": "the whole pipeline on the built-in demo catalog, ending in the paper's Table 1 (mmclf run demo)",
    "demo-data": "write the synthetic demo catalog (ENS layout)",
    "build-dataset": "raw CSV/TSV files + images -> DatasetDict on disk",
    "cache-images": "copy of a dataset with its images decoded and resized once (faster image training)",
    "train": "train an expert from a recipe YAML",
    "predict-expert": "probability table of a saved expert",
    "denoise": "k-fold out-of-fold probabilities ranked by cleanlab -> label issues, cleaned dataset, report",
    "fuse": "decision-level fusion over experts' probability tables (or feature level over saved experts)",
    "ensemble": "majority vote over fused runs or prediction tables",
    "evaluate": "macro-F1, per-class report, confusion matrix",
    "pipeline": "assemble experts + fusions into a pipeline",
    "predict": "raw files + saved pipeline -> submission file",
    "push": "push a pipeline, expert or fusion folder to the Hub",
    "serve": "HTTP server answering predictions of a pipeline",
    "export": "a pipeline exported to ONNX Runtime (optionally int8), written only when its parity holds",
}


def command_module(command: str):
    return importlib.import_module(f"mmclf.cli.{command.replace('-', '_')}")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmclf", description="Multimodal product classification toolkit.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = command_module(name)
            module.add_arguments(sub)
            sub.set_defaults(func=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    configure_for_logs()
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args, extra = parser.parse_known_args(argv)
    if extra:  # KEY=VALUE items after an option (`run demo --out DIR rows=1200`): argparse leaves them over
        if not isinstance(getattr(args, "overrides", None), list) or any(e.startswith("-") or "=" not in e
                                                                         for e in extra):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides += extra
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
