"""`mmclf demo-data`: write the synthetic demo catalog (`mmclf.demo_catalog.generate_catalog`)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="folder to write the catalog into")
    parser.add_argument("--rows", type=int, default=3000, help="train rows (default 3000)")
    parser.add_argument("--test-rows", type=int, default=None, help="test rows (default 15%% of --rows)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--label-noise", type=float, default=0.0,
                        help="fraction of train labels flipped within their family (default 0)")
    parser.add_argument("--image-size", type=int, default=64, help="image side in pixels (default 64; real: 500)")
    parser.add_argument("--missing-image-rate", type=float, default=0.04)
    parser.add_argument("--overwrite", action="store_true", help="replace a catalog already in --out")


def run(args: argparse.Namespace) -> int:
    # generate_catalog itself, not stages.demo_data: the command refuses to replace a catalog unless --overwrite,
    # and prints the summary the stage does not return
    from mmclf.demo_catalog import generate_catalog

    summary = generate_catalog(args.out, rows=args.rows, test_rows=args.test_rows, seed=args.seed,
                               label_noise=args.label_noise, image_size=args.image_size,
                               missing_image_rate=args.missing_image_rate, overwrite=args.overwrite)
    rows = summary["rows"]
    print(f"demo catalog: {rows['train']} train + {rows['test']} test rows, {summary['image_size']} px images, "
          f"{summary['flipped_labels']} flipped labels -> {summary['out_dir']}")
    return 0
