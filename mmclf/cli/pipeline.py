"""`mmclf pipeline`: a self-contained pipeline folder from saved experts and fusion runs (`mmclf.stages.assemble`)."""

from __future__ import annotations

from mmclf.cli.fuse import parse_named


def add_arguments(parser) -> None:
    parser.add_argument("--experts", nargs="+", required=True, metavar="NAME=MODEL_DIR",
                        help="saved experts by the names the fusions were trained with (the expert runs' directory "
                        "names), in any order, e.g. text=runs/text/model image=runs/image/model")
    parser.add_argument("--fusions", nargs="+", required=True, help="fusion run folders (several: majority vote)")
    parser.add_argument("--evaluation", help="a report.json of `mmclf evaluate` for the model card's metrics")
    parser.add_argument("--out", required=True, help="pipeline folder to write (self-contained)")


def run(args) -> int:
    from mmclf import stages

    pipeline = stages.assemble(experts=parse_named(args.experts, "--experts"), fusions=args.fusions,
                               evaluation=args.evaluation, output_dir=args.out)
    print(f"wrote {args.out} ({len(pipeline.experts)} experts, {len(pipeline.fusions)} fusions)")
    return 0
