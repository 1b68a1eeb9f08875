"""Listings to predict: any table of products -> the rows the experts read, in input order.

`to_listings(data, images_dir=None)` takes
- a pandas DataFrame in the ENS layout (designation, description, productid, imageid; the id in the unnamed
  first column or the index), the SIGIR layout (Integer_id, Title, Description, Image_id, Product_id), or with
  columns id (optional: the index otherwise), title, description (optional), image (optional);
- a list of dicts with those keys;
- a `datasets.Dataset` (one written by `mmclf build-dataset`, or any with those columns).
Images are PIL images, file paths (relative ones under `images_dir`), bytes, or None; without an image
column they are found in `images_dir` by the challenge naming `image_<imageid>_product_<productid>.jpg`.
They are decoded batch by batch, so a large file never sits decoded in memory.

Nothing is dropped: a row with an empty title, no description or no image is kept and counted
(`Listings.counts()`); an image that is given but cannot be read (or whose relative path leads out of
`images_dir`, by `..` or a symlink) is an error naming the row and field, or, with
`on_unreadable_image="missing"`, is predicted as a missing image and recorded in `Listings.unreadable`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mmclf.data.readers import KNOWN_FORMATS, detect_format
from mmclf.data.rows import clean_text, image_file_name


def load_image(value, images_dir: Path | None = None):
    """A PIL image from a PIL image, a path, bytes or a `datasets` image dict ({"bytes", "path"}); None stays None."""
    from PIL import Image

    if _missing(value):
        return None
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        image = Image.open(io.BytesIO(value))
    elif isinstance(value, (str, Path)):
        path = Path(value)
        if images_dir is not None and not path.is_absolute():
            path = Path(images_dir) / path
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path}")
        image = Image.open(path)
    else:
        raise TypeError(f"an image must be a PIL image, a path, bytes or None, got {type(value).__name__}")
    image.load()
    return image



class ImageTooLarge(ValueError):
    """An image whose header gives more pixels than allowed."""


def open_image(source, max_pixels: int | None = None, min_side: int | None = None):
    """Decode an image file (a path or a binary file object) with a pixel limit checked from its header before any
    pixel is decoded. With `min_side`, an image at least twice that large on its shorter side is decoded at reduced
    scale, its shorter side kept >= `min_side`: JPEG by draft mode (DCT scaling by 1/2, 1/4 or 1/8, the cheap way),
    other formats by `Image.reduce` (box averaging by a whole factor) after decoding."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit below is the one that counts
            image = Image.open(source)
    except Image.DecompressionBombError as error:
        raise ImageTooLarge(str(error)) from None
    pixels = image.width * image.height
    if max_pixels is not None and pixels > max_pixels:
        raise ImageTooLarge(f"{image.width}x{image.height} = {pixels:,} pixels is over the limit of {max_pixels:,}")
    if min_side and image.format == "JPEG":
        image.draft(image.mode, (min_side, min_side))
    image.load()
    factor = min(image.size) // min_side if min_side else 1
    if factor >= 2:
        if image.mode not in ("L", "LA", "RGB", "RGBA"):
            image = image.convert("RGB")  # the experts read RGB; reduce() takes no palette or bilevel image
        image = image.reduce(factor)
    return image

@dataclass
class Listings:
    """Rows to predict: ids, cleaned titles and descriptions, image references (decoded per batch)."""

    ids: list[str]
    titles: list[str]
    descriptions: list[str]
    images: Sequence  # per row: a PIL image, path, bytes, datasets image dict or None (a list, or a lazy column)
    images_dir: Path | None = None
    on_unreadable_image: str = "error"  # error | missing: predict the row as one without an image, and record it
    unreadable: dict[int, str] = field(default_factory=dict)  # row (0-based) -> why its image could not be read
    first_row: int = 0  # where the rows start in their file (0-based): messages name file rows

    def __post_init__(self):
        if self.on_unreadable_image not in ("error", "missing"):
            raise ValueError(f"on_unreadable_image must be 'error' or 'missing', got {self.on_unreadable_image!r}")
        if len(set(self.ids)) != len(self.ids):
            seen: dict = {}
            for row, sample_id in enumerate(self.ids):
                if sample_id in seen:
                    raise ValueError(f"duplicate id {sample_id!r}: rows {seen[sample_id] + 1} and {row + 1}")
                seen[sample_id] = row

    def __len__(self) -> int:
        return len(self.ids)

    def counts(self) -> dict:
        """Rows in all, rows without a title, a description or an image (no reference, or one that could not be
        read), and rows whose image could not be read (known once their batch was decoded)."""
        images = self.images[:] if not isinstance(self.images, list) else self.images
        return {"rows": len(self), "empty_title": sum(not t for t in self.titles),
                "without_description": sum(not d for d in self.descriptions),
                "without_image": sum(image is None for image in images) + len(self.unreadable),
                "unreadable_image": len(self.unreadable)}

    def batch(self, start: int, stop: int) -> dict:
        """Columns id, title, description, image (PIL or None) and has_image of rows start..stop-1."""
        images = []
        for row, value in enumerate(self.images[start:stop], start):
            try:
                check_inside(value, self.images_dir)
                images.append(load_image(value, self.images_dir))
            except Exception as error:  # noqa: BLE001 - PIL raises many kinds: each means the image is unusable
                reason = f"cannot read the image ({type(error).__name__}: {error})"
                if self.on_unreadable_image == "error":
                    raise ValueError(f"row {self.first_row + row + 1} (id {self.ids[row]!r}), field 'image': {reason}") from None
                self.unreadable[row] = reason
                images.append(None)
        return {"id": self.ids[start:stop], "title": self.titles[start:stop],
                "description": self.descriptions[start:stop], "image": images,
                "has_image": [image is not None for image in images]}

    def batches(self, batch_size: int):
        for start in range(0, len(self), batch_size):
            yield self.batch(start, start + batch_size)


def check_inside(value, images_dir: Path | None) -> None:
    """A relative image path must stay inside `images_dir` once `..` and symlinks are resolved."""
    if images_dir is None or not isinstance(value, (str, Path)) or Path(value).is_absolute():
        return
    root = Path(images_dir).resolve()
    if not (root / value).resolve().is_relative_to(root):
        raise PermissionError(f"{value} leads out of the images folder {images_dir} (a symlink or ..): refused")


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text(values) -> list[str]:
    return ["" if _missing(v) else clean_text(str(v)) for v in values]


def _from_dataset(dataset, images_dir) -> Listings | None:
    columns = dataset.column_names
    if "title" not in columns:
        return None
    rows = len(dataset)
    images = dataset["image"] if "image" in columns else [None] * rows
    return Listings(
        ids=[str(i) for i in dataset["id"]] if "id" in columns else [str(i) for i in range(rows)],
        titles=_text(dataset["title"]),
        descriptions=_text(dataset["description"]) if "description" in columns else [""] * rows,
        images=images, images_dir=images_dir)


def _column_map(frame) -> dict:
    """Canonical field -> the frame's column, for the ENS, SIGIR or canonical layouts."""
    by_lower = {str(c).strip().lower(): c for c in frame.columns}
    layout = detect_format(list(by_lower))
    wanted = dict(KNOWN_FORMATS[layout]["x"]) if layout else {f: f for f in ("id", "title", "description")}
    if layout == "ens":
        wanted["id"] = "unnamed: 0" if "unnamed: 0" in by_lower else ""
    wanted.update({f: f for f in ("image", "image_id", "product_id") if f not in wanted})
    found = {field: by_lower[column.lower()] for field, column in wanted.items() if column.lower() in by_lower}
    if "title" not in found:
        raise ValueError(f"the listings have no title column: expected the ENS layout (designation, description, "
                         f"productid, imageid), the SIGIR layout (Integer_id, Title, ...) or columns title, "
                         f"description, image; got {list(frame.columns)}")
    return found


def to_listings(data, images_dir=None) -> Listings:
    """Listings from a DataFrame, a list of dicts or a datasets.Dataset (see the module docstring)."""
    import pandas as pd

    images_dir = Path(images_dir) if images_dir is not None else None
    if images_dir is not None and not images_dir.is_dir():
        raise FileNotFoundError(f"images folder not found: {images_dir}")
    if hasattr(data, "column_names") and hasattr(data, "features"):  # a datasets.Dataset
        listings = _from_dataset(data, images_dir)
        if listings is not None:
            return listings
        data = data.to_pandas()
    if isinstance(data, (list, tuple)):
        bad = next((i for i, row in enumerate(data) if not isinstance(row, dict)), None)
        if bad is not None:
            raise ValueError(f"row {bad + 1}: each listing must be a dict (title, description, image), "
                             f"got {type(data[bad]).__name__}")
        data = pd.DataFrame(list(data))
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"listings must be a pandas DataFrame, a list of dicts or a datasets.Dataset, "
                        f"got {type(data).__name__}")
    found = _column_map(data)
    rows = len(data)
    ids = data[found["id"]] if "id" in found else data.index
    if "image" in found:
        images = [None if _missing(v) else v for v in data[found["image"]]]
    elif images_dir is not None and {"image_id", "product_id"} <= set(found):
        present = {p.name for p in images_dir.iterdir()}
        names = [image_file_name(str(i), str(p)) for i, p in zip(data[found["image_id"]], data[found["product_id"]])]
        images = [name if name in present else None for name in names]
    else:
        images = [None] * rows
    return Listings(
        ids=[str(i) for i in ids], titles=_text(data[found["title"]]),
        descriptions=_text(data[found["description"]]) if "description" in found else [""] * rows,
        images=images, images_dir=images_dir)
