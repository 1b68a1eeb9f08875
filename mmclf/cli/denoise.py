"""`mmclf denoise`: label issues ranked by cleanlab over k-fold out-of-fold probabilities, a cleaned dataset and a
report (`mmclf.denoise.denoise`)."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True,
                        help="recipe name (denoise-tiny, denoise-resnet50-4fold, or any expert recipe) or YAML path")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="override any recipe key, dotted for nesting: dataset=DIR output_dir=DIR "
                             "denoise.cut.percent=10 denoise.cut.of=all")
    parser.add_argument("--resume", action="store_true", help="continue interrupted folds in output_dir")


def run(args) -> int:
    from mmclf.denoise import SECTIONS, denoise
    from mmclf.rundir import end_processes
    from mmclf.training.config import load_config

    overrides = list(args.overrides) + (["resume=true"] if args.resume else [])
    denoise(load_config(args.config, overrides, SECTIONS))
    end_processes()
    return 0
