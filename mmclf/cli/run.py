"""`mmclf run WORKFLOW [key=value ...]`: a workflow's steps in order, each skipped when done (`mmclf.workflow`)."""

from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    parser.add_argument("workflow", help="a shipped workflow (demo, quickstart, rakuten-paper) or a workflow YAML file")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="variables (raw_dir=DIR accelerate_config=FILE) and step keys (STEP.KEY=VALUE, e.g. "
                        "text_base.model.name=PATH text_base.config=text-tiny fuse.epochs=20)")
    parser.add_argument("--out", help="output folder (default: the workflow's `out` variable, or WORKFLOW_out)")
    parser.add_argument("--dry-run", action="store_true", help="print each step with run or skip and the reason")


def run(args) -> int:
    from mmclf.workflow import StepFailed, run_workflow

    try:
        workflow = run_workflow(args.workflow, args.overrides, out=args.out, dry_run=args.dry_run)
    except StepFailed as error:
        print(f"[fail] {error}", file=sys.stderr)
        return 1
    if not args.dry_run:
        print(f"workflow {args.workflow} done: {workflow.out}")
    return 0
