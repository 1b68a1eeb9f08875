"""`mmclf predict`: raw files (or a built dataset split) + a saved pipeline -> submission file
(`mmclf.stages.predict`)."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--pipeline", required=True, help="pipeline folder or owner/name Hub id")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="raw X file (ENS CSV, SIGIR TSV, or CSV with --columns)")
    source.add_argument("--dataset", help="a built dataset folder (mmclf build-dataset)")
    parser.add_argument("--split", default="test", help="split of --dataset to predict (default test)")
    parser.add_argument("--images", help="images folder of --input")
    parser.add_argument("--columns", help="column mapping of --input, as in build-dataset")
    parser.add_argument("--out", required=True, help="predictions CSV (id, prdtypecode); fused scores go beside it as .parquet")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cpu)")
    parser.add_argument("--allow-missing-images", action="store_true",
                        help="predict even when a pipeline with an image expert gets no image at all")


def run(args) -> int:
    from mmclf import stages

    result = stages.predict(pipeline=args.pipeline, input=args.input, dataset=args.dataset, split=args.split,
                            images=args.images, columns=args.columns, output=args.out, batch_size=args.batch_size,
                            device=args.device, allow_missing_images=args.allow_missing_images)
    counts = result.counts
    print(f"wrote {len(result.codes):,} predictions to {args.out} (one per input row); predicted without an image: "
          f"{counts['without_image']:,}, without a description: {counts['without_description']:,}, "
          f"with an empty title: {counts['empty_title']:,}")
    return 0
