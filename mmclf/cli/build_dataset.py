"""`mmclf build-dataset`: raw CSV/TSV files + images -> a DatasetDict on disk (`mmclf.stages.build_dataset`)."""

from __future__ import annotations

from mmclf.data.readers import FIELDS


def add_arguments(parser) -> None:
    parser.add_argument("features", help="X file: ENS CSV, SIGIR TSV, or any CSV/TSV with --columns")
    parser.add_argument("--labels", help="Y file (ENS index + prdtypecode, or SIGIR Prdtypecode); omit for unlabelled data")
    parser.add_argument("--images", help="folder with image_<imageid>_product_<productid>.jpg files")
    parser.add_argument("--out", required=True, help="output folder for the DatasetDict (written whole, or not at all)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    parser.add_argument("--test", help="unlabelled (or --test-labels) X file that becomes the test split")
    parser.add_argument("--test-labels", help="labels of the test file, when known")
    parser.add_argument("--test-images", help="images folder of the test file (default: --images)")
    parser.add_argument("--columns", help="generic layout: FIELD=COLUMN,... with fields " + ", ".join(FIELDS))
    parser.add_argument("--classes", help="fixed class list: comma-separated codes or a file with one per line")
    parser.add_argument("--min-class-rows", type=int, default=2,
                        help="refuse label codes found in fewer rows of the main file, naming them (default 2)")
    parser.add_argument("--validation-fraction", type=float, default=0.1, help="default 0.1 (a 9:1 split)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--encoding", default="utf-8")
    parser.add_argument("--encoding-errors", choices=["strict", "replace"], default="strict",
                        help="strict: stop at undecodable bytes; replace: replace them and count the rows")
    parser.add_argument("--strict-images", action="store_true", help="stop at an unreadable image instead of flagging it missing")
    parser.add_argument("--workers", type=int, default=4, help="threads checking images")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also push the DatasetDict to the Hugging Face Hub")


def run(args) -> int:
    from mmclf import stages
    from mmclf.data.build import summary_markdown

    dataset, summary = stages.build_dataset(
        features=args.features, labels=args.labels, images=args.images, output_dir=args.out,
        test=args.test, test_labels=args.test_labels, test_images=args.test_images, columns=args.columns,
        classes=args.classes, validation_fraction=args.validation_fraction, seed=args.seed, encoding=args.encoding,
        encoding_errors=args.encoding_errors, strict_images=args.strict_images, workers=args.workers,
        min_class_rows=args.min_class_rows, overwrite=args.overwrite,
    )
    print(summary_markdown(summary))
    print(f"saved to {args.out}")
    if args.push_to_hub:
        dataset.push_to_hub(args.push_to_hub)
        print(f"pushed to the Hub: {args.push_to_hub}")
    return 0
