"""Row preparation: text cleaning, class codes and image lookup, shared by the dataset build and prediction."""

from __future__ import annotations

import html
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mmclf.data.readers import RawTable
from mmclf.progress import progress_bar

LIST_LIMIT = 20  # how many offending ids or files a summary lists

_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Decode HTML entities (also double-encoded ones), strip tags, collapse whitespace."""
    for _ in range(3):  # `&amp;eacute;` needs two rounds
        decoded = html.unescape(text)
        if decoded == text:
            break
        text = decoded
    return _SPACE.sub(" ", _TAG.sub(" ", text)).strip()


def image_file_name(image_id: str, product_id: str) -> str:
    return f"image_{image_id}_product_{product_id}.jpg"


def code_order(code: str):
    """Integer codes in numeric order, then any other code in text order: one odd code (a typo such as `27O5`)
    does not re-sort the others as text (…, 2905, 40, 50)."""
    return (0, int(code), "") if code.lstrip("-").isdigit() else (1, 0, code)


def sorted_codes(codes) -> list[str]:
    return sorted(set(codes), key=code_order)



@dataclass
class ImageCheck:
    found: int = 0
    missing: int = 0
    unreadable: list = field(default_factory=list)  # (file, reason)
    non_rgb: int = 0


def check_image(path: str) -> tuple[str, str]:
    """'ok' | 'non_rgb' | 'unreadable' with a reason. Decodes at reduced scale: truncation still shows."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            mode = image.mode
            if image.format == "JPEG":
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except Exception as error:  # noqa: BLE001 - PIL raises many kinds: every one means the file cannot be used
        return "unreadable", f"{type(error).__name__}: {error}"
    return ("ok" if mode == "RGB" else "non_rgb"), mode


def locate_images(table: RawTable, images_dir: Path | None, present: set, check: ImageCheck, workers: int,
                  strict: bool) -> list:
    """Path (or None) of each row's image, after checking that every found file decodes; counts go to `check`."""
    frame = table.frame
    if images_dir is None:
        check.missing += len(frame)
        return [None] * len(frame)
    if "image" in frame:
        names = frame["image"].tolist()
    elif {"image_id", "product_id"} <= set(frame.columns):
        names = [image_file_name(i, p) for i, p in zip(frame["image_id"], frame["product_id"])]
    else:
        raise ValueError(f"{table.path}: to find images, map image=COL or both image_id and product_id")
    candidates = [(row, str(images_dir / name)) for row, name in enumerate(names) if name and Path(name).name in present]
    paths = [None] * len(frame)
    unreadable_before = len(check.unreadable)
    # a symlink or `../` that leads out of the images folder is refused like an unreadable image
    root = images_dir.resolve()
    outside = {row for row, path in candidates if not Path(path).resolve().is_relative_to(root)}
    for row, path in candidates:
        if row in outside:
            if strict:
                raise ValueError(f"image {path} for {table.where(row)} leads outside the images folder {images_dir} "
                                 "(a symlink or ..): refused")
            check.unreadable.append((path, f"leads outside the images folder {images_dir}"))
    candidates = [(row, path) for row, path in candidates if row not in outside]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = pool.map(check_image, [p for _, p in candidates], chunksize=64)
        for (row, path), (status, detail) in progress_bar(
            zip(candidates, results), total=len(candidates), desc=f"checking images in {images_dir.name}", unit="img"
        ):
            if status == "unreadable":
                if strict:
                    raise ValueError(f"unreadable image {path} for {table.where(row)}: {detail}")
                check.unreadable.append((path, detail))
                continue
            check.non_rgb += status == "non_rgb"
            paths[row] = path
    found = sum(p is not None for p in paths)
    check.found += found
    check.missing += len(frame) - found - (len(check.unreadable) - unreadable_before)
    return paths



def prepare_rows(table: RawTable, rejected: dict) -> pd.DataFrame:
    """Clean text; reject (count, list) rows with an empty title."""
    frame = table.frame
    for column in ("title", "description"):
        if column not in frame:
            frame[column] = ""
        frame[f"{column}_raw"] = frame[column]
        frame[column] = frame[column].map(clean_text)
    for column in ("product_id", "image_id"):
        if column not in frame:
            frame[column] = ""
    empty_title = frame["title"] == ""
    if empty_title.any():
        entry = rejected.setdefault(f"empty title ({table.path.name})", {"count": 0, "ids": []})
        entry["count"] += int(empty_title.sum())
        entry["ids"] = (entry["ids"] + frame.loc[empty_title, "id"].tolist())[:LIST_LIMIT]
    return frame.loc[~empty_title].reset_index(drop=True)


def dataset_features(class_names: list[str], image_feature):
    from datasets import ClassLabel, Features, Value

    text = {name: Value("string") for name in ("id", "title", "description", "title_raw", "description_raw",
                                               "product_id", "image_id")}
    return Features({**text, "image": image_feature, "has_image": Value("bool"),
                     "label": ClassLabel(names=class_names)})


def to_dataset(frame: pd.DataFrame, image_paths: list, class_names: list[str]):
    """A chunk's rows as a Dataset; the image column holds file paths until the dataset is complete."""
    from datasets import Dataset, Value

    index = {name: i for i, name in enumerate(class_names)}
    columns = frame[["id", "title", "description", "title_raw", "description_raw", "product_id", "image_id"]].assign(
        image=image_paths,
        has_image=[p is not None for p in image_paths],
        label=frame["label"].map(index) if "label" in frame else -1,
    )
    return Dataset.from_pandas(columns, features=dataset_features(class_names, Value("string")), preserve_index=False)

