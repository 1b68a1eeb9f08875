"""`mmclf train`: an expert trained from a recipe and `key=value` overrides (`mmclf.training.train.train_expert`)."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True, help="recipe name (e.g. text-tiny, image-tiny) or YAML path")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="override any recipe key, dotted for nesting: dataset=DIR training.epochs=3")
    parser.add_argument("--resume", action="store_true", help="continue the run in output_dir from its last checkpoint")


def run(args) -> int:
    from mmclf.rundir import end_processes
    from mmclf.training.config import load_config
    from mmclf.training.train import train_expert

    overrides = list(args.overrides) + (["resume=true"] if args.resume else [])
    train_expert(load_config(args.config, overrides))
    end_processes()
    return 0
