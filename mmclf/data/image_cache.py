"""Decoded-image cache (`mmclf cache-images`): a copy of a dataset whose images are also stored decoded and
resized, so training stops decoding and resizing 500 px JPEGs for every row of every epoch.

For each size S, a column `image_<S>px` holds every image resized exactly as the image expert's first
transform does (shorter side to S, bilinear with antialiasing: torchvision `Resize(S)`) as raw RGB bytes
with its height and width (`None` where the row has no image). An image expert whose `resize_size` is S
reads that column instead of `image`; its resize is then a no-op, so its inputs are the same as without the
cache, bit for bit. Other sizes, and prediction from raw files, decode the JPEGs as before.

Disk: width x height x 3 bytes per image (192 KB at 256 px, 768 KB at 512 px for square images), against
about 26 KB for a 500 px Rakuten JPEG; the output is a new dataset folder (the source is left as it is),
written whole or not at all.

    mmclf cache-images data/rakuten --sizes 256 --out data/rakuten-256px
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

COLUMN = "image_{size}px"
MAP_BATCH_ROWS = 64


def cache_column(size: int) -> str:
    return COLUMN.format(size=size)


def cached_sizes(column_names) -> list[int]:
    """The sizes of the image caches among a dataset's columns."""
    return sorted(int(match[1]) for name in column_names if (match := re.fullmatch(r"image_(\d+)px", name)))


def cache_feature():
    from datasets import Value

    return {"height": Value("int32"), "width": Value("int32"), "pixels": Value("binary")}


def resize_shorter_side(image, size: int):
    """The image expert's resize (torchvision `Resize(size)` on a PIL image)."""
    from torchvision.transforms import functional

    return functional.resize(image, size)


def cached_image(value):
    """A PIL image from one cell of an `image_<S>px` column; None stays None."""
    import numpy as np
    from PIL import Image

    if value is None:
        return None
    pixels = np.frombuffer(value["pixels"], dtype=np.uint8).reshape(value["height"], value["width"], 3)
    return Image.fromarray(pixels)


def _encode_rows(batch: dict, sizes: list[int], split: str) -> dict:
    from PIL import Image

    columns = {cache_column(size): [] for size in sizes}
    for sample_id, value in zip(batch["id"], batch["image"]):
        image = None
        if value is not None:
            try:
                with Image.open(io.BytesIO(value["bytes"]) if value.get("bytes") else value["path"]) as opened:
                    image = opened.convert("RGB")
            except Exception as error:  # noqa: BLE001 - PIL raises many kinds; every one means the image is unusable
                raise ValueError(f"split {split!r}, id {sample_id!r}: image cannot be decoded "
                                 f"({type(error).__name__}: {error})") from None
        for size in sizes:
            if image is None:
                columns[cache_column(size)].append(None)
                continue
            resized = resize_shorter_side(image, size)
            columns[cache_column(size)].append(
                {"height": resized.height, "width": resized.width, "pixels": resized.tobytes()})
    return columns


def cache_images(dataset_dir, out_dir, sizes=(256,), workers: int = 1):
    """Write a copy of the DatasetDict in `dataset_dir` to `out_dir` with an `image_<S>px` column per size.
    Returns the new DatasetDict. `out_dir` must not exist; it appears only once complete."""
    from datasets import Features, Image, load_from_disk

    source, out = Path(dataset_dir), Path(out_dir)
    sizes = sorted({int(size) for size in sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"--sizes must be positive pixel sizes, got {sizes}")
    if not (source / "dataset_dict.json").is_file():
        raise FileNotFoundError(f"{source} is not a DatasetDict folder (no dataset_dict.json); "
                                "write one with `mmclf build-dataset`")
    if out.exists():
        raise ValueError(f"{out} already exists; choose another --out or remove it")
    dataset_dict = load_from_disk(str(source))
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
    try:
        staged = work / "dataset"
        for split, dataset in dataset_dict.items():
            if "image" not in dataset.column_names:
                raise ValueError(f"{source} split {split!r} has no 'image' column to cache")
            existing = [cache_column(size) for size in sizes if cache_column(size) in dataset.column_names]
            if existing:
                raise ValueError(f"{source} split {split!r} already has {existing}")
            raw = dataset.cast_column("image", Image(decode=False))
            features = Features({**raw.features, **{cache_column(size): cache_feature() for size in sizes}})
            cached = raw.map(_encode_rows, batched=True, batch_size=MAP_BATCH_ROWS, writer_batch_size=MAP_BATCH_ROWS,
                             fn_kwargs={"sizes": sizes, "split": split}, features=features,
                             num_proc=workers if workers > 1 else None, desc=f"caching {split} images at {sizes} px",
                             cache_file_name=str(work / "map" / f"{split}.arrow"))
            cached = cached.cast_column("image", dataset.features["image"])
            cached.save_to_disk(str(staged / split))
            del cached
            shutil.rmtree(work / "map", ignore_errors=True)  # the mapped copy, now saved
        (staged / "dataset_dict.json").write_text(json.dumps({"splits": list(dataset_dict)}))
        for name in ("summary.json", "summary.md"):
            if (source / name).is_file():
                shutil.copy2(source / name, staged / name)
        staged.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return load_from_disk(str(out))
