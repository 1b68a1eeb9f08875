"""Image input pipeline: images/s of the image expert's training DataLoader (the loop's own, from
`loop.make_dataloaders`: JPEG decode, resize, rotation, random crop, flip, normalise) at 224 and 448 px with
N workers, and the rate per worker (per core); from the 500 px JPEGs and from the decoded-image cache
(`mmclf cache-images`), alternating in one run so the ratio holds on a busy machine.

    python benchmarks/bench_image_pipeline.py [--images 192] [--workers 0 1 2] [--source-size 500] [--repeats 3]
        [--images-dir /work/shared/data/rakuten_sample/image_train]   # real JPEGs instead of drawn ones

It says how many DataLoader workers a GPU run needs: a GPU consuming R images/s needs about
R / (per-worker rate) workers (and as many free cores).
"""

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value, load_from_disk
from PIL import Image as PILImage
from PIL import ImageDraw

from mmclf.data.image_cache import cache_images
from mmclf.experts.image import ImageExpert, NormalizedTensor
from mmclf.training import loop
from mmclf.training.config import TRAINING_DEFAULTS


def jpeg_dataset(count: int, size: int, images_dir: str | None = None) -> Dataset:
    rng = np.random.default_rng(0)
    images = []
    files = sorted(Path(images_dir).glob("*.jpg")) if images_dir else []
    for i in range(count):
        if files:  # real files, cycled
            images.append({"bytes": files[i % len(files)].read_bytes(), "path": None})
            continue
        image = PILImage.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 255, 3)))
        draw = ImageDraw.Draw(image)
        for _ in range(10):
            x, y = rng.integers(0, size, 2)
            draw.ellipse([x, y, x + size // 4, y + size // 4], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        images.append({"bytes": buffer.getvalue(), "path": None})
    features = Features({"image": Image(mode="RGB"), "label": ClassLabel(names=["a", "b"]), "id": Value("string")})
    return Dataset.from_dict({"image": images, "label": [0] * count, "id": [str(i) for i in range(count)]},
                             features=features)


def images_per_second(expert, dataset, workers: int, batch_size: int) -> float:
    training = dict(TRAINING_DEFAULTS, batch_size=batch_size, num_workers=workers)
    loader, _ = loop.make_dataloaders(expert.encode(dataset, train=True), None, expert.collate, training, seed=0)
    start, seen = time.perf_counter(), 0
    for batch in loader:
        seen += len(batch["targets"]["labels"])
    return seen / (time.perf_counter() - start)


def tensor_conversion_ms(dataset: Dataset, repeats: int) -> dict:
    """ms per 224 px crop: torchvision's ToTensor + Normalize against the expert's NormalizedTensor."""
    from torchvision import transforms as T

    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    crops = [T.CenterCrop(224)(T.Resize(256)(dataset[i]["image"])) for i in range(min(len(dataset), 32))]
    ways = {"ToTensor + Normalize": T.Compose([T.ToTensor(), T.Normalize(mean, std)]),
            "NormalizedTensor": NormalizedTensor(mean, std)}
    best = {name: float("inf") for name in ways}
    for _ in range(repeats):
        for name, convert in ways.items():
            start = time.perf_counter()
            for crop in crops:
                convert(crop)
            best[name] = min(best[name], (time.perf_counter() - start) / len(crops) * 1000)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=192)
    parser.add_argument("--source-size", type=int, default=500, help="JPEG side in px (the Rakuten images: 500)")
    parser.add_argument("--images-dir", help="a folder of real JPEGs to use (cycled) instead of drawn images")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per setting; the best is kept")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = ((224, 256), (448, 512))
    with tempfile.TemporaryDirectory() as scratch:
        DatasetDict({"train": jpeg_dataset(args.images, args.source_size, args.images_dir)}).save_to_disk(f"{scratch}/jpeg")
        cache_images(f"{scratch}/jpeg", f"{scratch}/cached", sizes=[resize for _, resize in sizes])
        sources = {"JPEG": load_from_disk(f"{scratch}/jpeg")["train"],
                   "cache": load_from_disk(f"{scratch}/cached")["train"]}
        disk = {name: sum(f.stat().st_size for f in Path(scratch, name).rglob("*.arrow")) / args.images / 1024
                for name in ("jpeg", "cached")}
        origin = f"real JPEGs from {args.images_dir}" if args.images_dir else f"drawn JPEGs of {args.source_size} px"
        print(f"\n{args.images} {origin} ({disk['jpeg']:.0f} KB each on disk; with the 256 "
              f"and 512 px caches {disk['cached']:.0f} KB), training transforms, batch {args.batch_size}, "
              f"torch threads 1, best of {args.repeats}")
        print("| crop px | workers | JPEG images/s | cache images/s | JPEG per worker | cache per worker | cache / JPEG |")
        print("|---|---|---|---|---|---|---|")
        for image_size, resize in sizes:
            config = dict(ImageExpert.config_defaults, name="test_resnet", image_size=image_size, resize_size=resize)
            expert = ImageExpert.build(config, ["a", "b"])
            for workers in args.workers:
                rates = {name: 0.0 for name in sources}
                for _ in range(args.repeats):
                    for name, dataset in sources.items():
                        rates[name] = max(rates[name], images_per_second(expert, dataset, workers, args.batch_size))
                per_worker = {name: rate / max(workers, 1) for name, rate in rates.items()}
                print(f"| {image_size} | {workers} | {rates['JPEG']:.0f} | {rates['cache']:.0f} | "
                      f"{per_worker['JPEG']:.0f} | {per_worker['cache']:.0f} | {rates['cache'] / rates['JPEG']:.2f} |")
        conversion = tensor_conversion_ms(sources["JPEG"], args.repeats)
    print("workers=0 decodes in the training process; the per-worker rate includes worker start-up")
    print("tensor conversion of a 224 px crop: " + ", ".join(f"{name} {ms:.2f} ms" for name, ms in conversion.items()))


if __name__ == "__main__":
    main()
