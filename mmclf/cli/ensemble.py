"""`mmclf ensemble`: majority vote over fused runs, probability tables or predictions CSVs (`mmclf.stages.ensemble`)."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--inputs", nargs="+", required=True,
                        help="fusion run directories, probability tables (.parquet) or predictions CSVs (id, prediction)")
    parser.add_argument("--split", default="test", help="split to vote on (default: test)")
    parser.add_argument("--out", required=True, help="output CSV (id, split, prediction, votes); "
                        "the vote-share probability table is written beside it with the .parquet suffix")


def run(args) -> int:
    import numpy as np

    from mmclf import stages

    table, _, counts = stages.ensemble(inputs=args.inputs, split=args.split, output=args.out)
    unanimous = float(np.mean(counts == len(args.inputs)))
    print(f"{len(args.inputs)} voters, {len(table)} rows of {args.split!r}: {unanimous:.1%} unanimous -> {args.out}")
    return 0
