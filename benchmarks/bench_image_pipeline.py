"""Image input pipeline: images/s of the image expert's training DataLoader (JPEG decode, resize, rotation,
random crop, flip, normalise) at 224 and 448 px with N workers, and the rate per worker (per core).

    python benchmarks/bench_image_pipeline.py [--images 192] [--workers 0 1 2] [--source-size 500]

It says how many DataLoader workers a GPU run needs: a GPU consuming R images/s needs about
R / (per-worker rate) workers (and as many free cores).
"""

import argparse
import io
import time

import numpy as np
from datasets import ClassLabel, Dataset, Features, Image, Value
from PIL import Image as PILImage
from PIL import ImageDraw
from torch.utils.data import DataLoader

from mmclf.experts.image import ImageExpert


def jpeg_dataset(count: int, size: int) -> Dataset:
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        image = PILImage.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(10):
            x, y = rng.integers(0, size, 2)
            draw.ellipse([x, y, x + size // 4, y + size // 4], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        images.append({"bytes": buffer.getvalue(), "path": None})
    features = Features({"image": Image(), "label": ClassLabel(names=["a", "b"]), "id": Value("string")})
    return Dataset.from_dict({"image": images, "label": [0] * count, "id": [str(i) for i in range(count)]},
                             features=features)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--source-size", type=int, default=500, help="JPEG side in px (the Rakuten images: 500)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    dataset = jpeg_dataset(args.images, args.source_size)
    print(f"\n{args.images} JPEGs of {args.source_size} px, training transforms, batch {args.batch_size}")
    print("| crop px | workers | images/s | images/s per worker |\n|---|---|---|---|")
    for image_size, resize in ((224, 256), (448, 512)):
        config = dict(ImageExpert.config_defaults, name="test_resnet", image_size=image_size, resize_size=resize)
        expert = ImageExpert.build(config, ["a", "b"])
        encoded = expert.encode(dataset, train=True)
        for workers in args.workers:
            loader = DataLoader(encoded, batch_size=args.batch_size, num_workers=workers,
                                collate_fn=expert.collate, shuffle=True)
            start, seen = time.perf_counter(), 0
            for batch in loader:
                seen += len(batch["targets"]["labels"])
            rate = seen / (time.perf_counter() - start)
            print(f"| {image_size} | {workers} | {rate:.0f} | {rate / max(workers, 1):.0f} |")
    print("workers=0 decodes in the training process; the per-worker rate includes worker start-up")


if __name__ == "__main__":
    main()
