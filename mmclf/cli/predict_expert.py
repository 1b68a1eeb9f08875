"""`mmclf predict-expert`: the probability table of a saved expert (`mmclf.training.train.predict_expert`)."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="a saved expert folder (RUN/model)")
    parser.add_argument("--dataset", required=True, help="a DatasetDict folder written by `mmclf build-dataset`")
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", required=True, help="the probability table to write (.parquet)")
    parser.add_argument("--batch-size", type=int, default=64)


def run(args) -> int:
    from mmclf.rundir import end_processes
    from mmclf.training.train import predict_expert

    predict_expert(args.model, args.dataset, args.split, args.out, batch_size=args.batch_size)
    end_processes()
    return 0
