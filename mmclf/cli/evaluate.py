"""`mmclf evaluate`: macro-F1, per-class report and confusion matrix of predictions (`mmclf.stages.evaluate`)."""

from __future__ import annotations

from mmclf.evaluation import ID_COLUMNS, LABEL_COLUMNS, PREDICTION_COLUMNS


def add_arguments(parser) -> None:
    parser.add_argument("--predictions", required=True, help="probability table (.parquet) or CSV with id + predicted code")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--dataset", help="dataset directory written by `mmclf build-dataset` (labels and class order)")
    source.add_argument("--labels", help="CSV with an id column and a class-code column")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--out", required=True, help="report directory (report.json, report.md, confusion_matrix.png)")
    parser.add_argument("--id-column", default=None,
                        help=f"id column of the CSV files (default: first of {list(ID_COLUMNS)}; "
                        "'Unnamed: 0' is the challenge's unnamed index)")
    parser.add_argument("--prediction-column", default=None,
                        help=f"predicted-code column of a predictions CSV (default: first of {list(PREDICTION_COLUMNS)})")
    parser.add_argument("--label-column", default=None,
                        help=f"class-code column of a labels CSV (default: first of {list(LABEL_COLUMNS)})")


def run(args) -> int:
    from mmclf import stages

    report = stages.evaluate(predictions=args.predictions, dataset=args.dataset, labels=args.labels, split=args.split,
                             output_dir=args.out, id_column=args.id_column, prediction_column=args.prediction_column,
                             label_column=args.label_column)
    print(f"{args.split}: macro-F1 {report['macro_f1']:.4f}  weighted-F1 {report['weighted_f1']:.4f}  "
          f"accuracy {report['accuracy']:.4f}  ({report['num_rows']} rows) -> {args.out}")
    return 0
