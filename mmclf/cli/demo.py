"""`mmclf demo`: `mmclf run demo`, then the paper's Table 1 for the demo catalog (`mmclf.demo.run_demo`)."""

from __future__ import annotations

from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out); reruns skip finished steps")
    parser.add_argument("--rows", type=int, default=3000, help="training rows of the demo catalog")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folds", type=int, default=3, help="expert folds for out-of-fold probabilities")
    parser.add_argument("--label-noise", type=float, default=0.0, help="fraction of training labels flipped")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="workflow overrides, e.g. text.training.epochs=2 fuse.epochs=20 (see `mmclf run demo`)")


def run(args) -> int:
    from mmclf.demo import run_demo, table_markdown

    report = run_demo(args.out, rows=args.rows, seed=args.seed, folds=args.folds, label_noise=args.label_noise,
                      overrides=args.overrides)
    print()
    print(table_markdown(report))
    print(f"report: {Path(args.out) / 'report.json'}; predictions: {Path(args.out) / 'predict' / 'submission.csv'}; "
          f"{report['details']['total_seconds']:.0f} s in all")
    return 0
