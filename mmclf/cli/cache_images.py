"""`mmclf cache-images`: a copy of a dataset with its images decoded and resized once."""

from __future__ import annotations

from mmclf.data.image_cache import cache_column, cache_images


def add_arguments(parser) -> None:
    parser.add_argument("dataset", help="a DatasetDict folder written by `mmclf build-dataset`")
    parser.add_argument("--out", required=True, help="the new dataset folder (written whole, or not at all)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[256],
                        help="shorter-side sizes to store: the recipes' model.resize_size (256 for 224 px crops, "
                             "512 for 448 px); default 256")
    parser.add_argument("--workers", type=int, default=1, help="processes decoding and resizing images")


def run(args) -> int:
    dataset_dict = cache_images(args.dataset, args.out, args.sizes, args.workers)
    sizes = sorted(set(args.sizes))
    for split, dataset in dataset_dict.items():
        images = len(dataset) - dataset.data.column(cache_column(sizes[0])).null_count
        print(f"{split}: {len(dataset):,} rows, {images:,} images cached at {', '.join(f'{s} px' for s in sizes)}")
    print(f"saved to {args.out}")
    return 0
