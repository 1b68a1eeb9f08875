"""`mmclf predict`: raw files (or a built dataset split) + a saved pipeline -> submission file, streamed chunk by
chunk and resumable; under `accelerate launch` the chunks are shared among the processes (`mmclf.stages.predict`)."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("--pipeline", required=True, help="pipeline folder or owner/name Hub id")
    parser.add_argument("--revision", help="branch, tag or commit of a Hub pipeline (default: main)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="raw X file (ENS CSV, SIGIR TSV, CSV with --columns, or Parquet)")
    source.add_argument("--dataset", help="a built dataset folder (mmclf build-dataset)")
    parser.add_argument("--split", default="test", help="split of --dataset to predict (default test)")
    parser.add_argument("--images", help="images folder of --input")
    parser.add_argument("--columns", help="column mapping of --input, as in build-dataset")
    parser.add_argument("--out", required=True,
                        help="predictions CSV (id, prdtypecode) with the probability table beside it as .parquet, "
                             "or a .parquet file with ids, codes, votes and probabilities")
    parser.add_argument("--format", default="auto", choices=["auto", "csv", "parquet"],
                        help="output format (default: from the --out suffix)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--chunk-rows", type=int, default=8192,
                        help="rows read, predicted and written at a time: memory follows it, not the file (default 8192)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the finished chunks of an interrupted run of the same command")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cpu; each process's own under accelerate launch)")
    parser.add_argument("--allow-missing-images", action="store_true",
                        help="predict even when a pipeline with an image expert gets no image at all")
    parser.add_argument("--strict-images", action="store_true",
                        help="stop at the first image that cannot be read (default: predict that row as one without "
                             "an image, and count and list it)")


def run(args) -> int:
    from mmclf import stages
    from mmclf.rundir import end_processes, print_once

    result = stages.predict(pipeline=args.pipeline, revision=args.revision, input=args.input, dataset=args.dataset,
                            split=args.split, images=args.images, columns=args.columns, output=args.out,
                            format=args.format, batch_size=args.batch_size, chunk_rows=args.chunk_rows,
                            resume=args.resume, device=args.device, allow_missing_images=args.allow_missing_images,
                            strict_images=args.strict_images)
    counts = result.counts
    resumed = f"; {result.resumed_chunks} of {result.chunks} chunks kept from the interrupted run" \
        if result.resumed_chunks else ""
    print_once(f"wrote {result.rows:,} predictions to {args.out} (one per input row); predicted without an image: "
               f"{counts['without_image']:,}, without a description: {counts['without_description']:,}, "
               f"with an empty title: {counts['empty_title']:,}{resumed} ({result.rows / result.seconds:,.0f} rows/s)")
    if counts["unreadable_image"]:
        listed = "; ".join(f"row {row} (id {sample_id!r}): {why}" for row, sample_id, why in result.unreadable[:5])
        shown = f"; the first {len(result.unreadable[:5])}" if counts["unreadable_image"] > 5 else ""
        print_once(f"{counts['unreadable_image']:,} image(s) could not be read and were predicted as missing "
                   f"(--strict-images stops instead){shown}: {listed}")
    end_processes()
    return 0
