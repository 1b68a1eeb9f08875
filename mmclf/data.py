"""Raw catalog files -> a cleaned, split `datasets.DatasetDict` on disk (`mmclf build-dataset`).

Reads the ENS challenge CSV pair, the SIGIR 2020 TSVs, or any CSV/TSV with a column mapping;
finds images by the challenge naming `image_<imageid>_product_<productid>.jpg`; checks every
image; cleans text; splits train/validation stratified by label; writes a summary.

Policy for bad input (documented in README):
- structural problems (missing columns, X/Y ids that do not match, duplicate ids, missing or
  unknown labels, undecodable bytes, a missing images folder) stop the build with an error that
  names the file, the row and the column;
- rows whose title is empty after cleaning are rejected, counted and listed in the summary;
- missing images are normal: the row keeps `image=None`, `has_image=False`;
- unreadable or truncated images are treated as missing, counted and listed (or are an error
  with `--strict-images`); non-RGB images are kept and decoded as RGB (`Image(mode="RGB")`).
"""

from __future__ import annotations

import codecs
import html
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

FIELDS = ("id", "title", "description", "product_id", "image_id", "label", "image")

# Column names of the known formats, mapped to the canonical fields. "" is the unnamed index.
KNOWN_FORMATS = {
    "ens": {
        "x": {"id": "", "title": "designation", "description": "description", "product_id": "productid", "image_id": "imageid"},
        "y": {"id": "", "label": "prdtypecode"},
    },
    "sigir": {
        "x": {"id": "integer_id", "title": "title", "description": "description", "product_id": "product_id", "image_id": "image_id"},
        "y": {"id": "integer_id", "label": "prdtypecode"},
    },
}
LIST_LIMIT = 20  # how many offending ids or files a summary lists
CHUNK_ROWS = 20_000  # rows read, checked and converted at a time
ROW_NUMBER = "<row number>"  # the id "column" of files without one

_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")
# Undecodable bytes become private-use characters U+F780..U+F7FF, so that the parsed table can
# say in which row and column they sit (pandas cannot parse lone surrogates).
_BAD_BYTE = re.compile("[\uf780-\uf7ff]")
codecs.register_error("mmclf-mark", lambda e: ("".join(chr(0xF700 + b) for b in e.object[e.start : e.end]), e.end))


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


# ---------------------------------------------------------------------------------------------
# Reading tables


@dataclass
class RawTable:
    """Rows of one raw file (all of it, or a chunk) as strings with canonical column names."""

    path: Path
    frame: pd.DataFrame  # canonical field -> str column
    source_columns: dict  # canonical field -> column name in the file ("" = unnamed index)
    first_row: int = 0  # position of the frame's first row in the file (chunks)

    def where(self, row: int, field_name: str | None = None) -> str:
        """'FILE, row N (id X), column C' for error messages; rows count from 1 after the header."""
        text = f"{self.path}, row {self.first_row + row + 1}"
        if "id" in self.frame.columns:
            text += f" (id {self.frame['id'].iat[row]!r})"
        if field_name is not None:
            column = self.source_columns.get(field_name, field_name)
            text += f", column {column!r}" if column else ", the unnamed index column"
        return text


def _open_chunks(path: Path, encoding: str, chunk_rows: int) -> tuple[list[str], Iterator[pd.DataFrame]]:
    """The header and an iterator of string frames of `chunk_rows` rows; bytes that are not valid in `encoding`
    arrive as marker characters (see `_replace_bad_bytes`)."""
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    with open(path, "rb") as handle:
        head = handle.read(65536)
    if not head.strip():
        raise ValueError(f"{path} is empty")
    separator = "\t" if path.suffix.lower() == ".tsv" or b"\t" in head.split(b"\n", 1)[0] else ","
    kind = "TSV" if separator == "\t" else "CSV"
    options = {"sep": separator, "dtype": str, "keep_default_na": False, "encoding": encoding,
               "encoding_errors": "mmclf-mark"}
    header = pd.read_csv(path, nrows=0, **options).columns
    columns = ["" if str(c).startswith("Unnamed: 0") else str(c).strip() for c in header]

    def chunks():
        try:
            for chunk in pd.read_csv(path, chunksize=chunk_rows, **options):
                chunk.columns = columns
                yield chunk
        except pd.errors.ParserError as error:
            raise ValueError(f"{path} could not be parsed as {kind}: {error}") from None

    return columns, chunks()


def _replace_bad_bytes(frame: pd.DataFrame, path: Path, first_row: int, encoding: str, encoding_errors: str) -> int:
    """Raise at the first undecodable byte (file, row, column), or replace them with U+FFFD; rows replaced."""
    replaced = 0
    for column in frame.columns:
        bad = frame[column].str.contains(_BAD_BYTE, regex=True)
        if bad.any():
            row = int(bad.to_numpy().argmax())
            if encoding_errors == "strict":
                byte = _BAD_BYTE.search(frame[column].iat[row]).group()
                raise ValueError(
                    f"{path}, row {first_row + row + 1}, column {column!r}: byte 0x{ord(byte) - 0xF700:02x} is not "
                    f"valid {encoding}; pass --encoding (e.g. latin-1) or --encoding-errors replace"
                )
            replaced += int(bad.sum())
            frame[column] = frame[column].str.replace(_BAD_BYTE, "\ufffd", regex=True)
    return replaced


def _match_columns(columns: list[str], wanted: dict, path: Path, hint: str) -> dict:
    """Map canonical fields to the file's columns (case-insensitive); error naming what is missing."""
    by_lower = {c.lower(): c for c in columns}
    found, missing = {}, []
    for field_name, column in wanted.items():
        if column.lower() in by_lower:
            found[field_name] = by_lower[column.lower()]
        elif field_name != "id" or column == "":
            missing.append(column or "<unnamed index column>")
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(columns)}. {hint}")
    return found


def detect_format(columns) -> str | None:
    lower = {c.lower() for c in columns}
    for name, spec in KNOWN_FORMATS.items():
        if {c for c in spec["x"].values() if c} <= lower:
            return name
    return None


@dataclass
class FeaturesFile:
    """An X file's layout, and its rows chunk by chunk (`chunks()` reads the file again each time)."""

    path: Path
    format: str
    source_columns: dict
    encoding: str
    encoding_errors: str
    chunk_rows: int = CHUNK_ROWS
    replaced_byte_rows: int = 0
    label_source: str | None = None  # "Y_FILE:COLUMN" when labels come from a separate file

    @property
    def described_columns(self) -> dict:
        return {**self.source_columns, **({"label": self.label_source} if self.label_source else {})}

    def chunks(self) -> Iterator[RawTable]:
        first_row, self.replaced_byte_rows = 0, 0
        for frame in _open_chunks(self.path, self.encoding, self.chunk_rows)[1]:
            self.replaced_byte_rows += _replace_bad_bytes(frame, self.path, first_row, self.encoding,
                                                          self.encoding_errors)
            canonical = pd.DataFrame({name: frame[column].str.strip() for name, column in self.source_columns.items()
                                      if column != ROW_NUMBER})
            if self.source_columns.get("id") == ROW_NUMBER:  # no id column: the row number is the stable id
                canonical.insert(0, "id", [str(i) for i in range(first_row, first_row + len(frame))])
            yield RawTable(self.path, canonical, self.described_columns, first_row)
            first_row += len(frame)


def read_features_file(path, column_map: dict | None = None, encoding: str = "utf-8",
                       encoding_errors: str = "strict", chunk_rows: int = CHUNK_ROWS) -> FeaturesFile:
    """An X file (ENS, SIGIR, or generic with `column_map` canonical -> file column), checked from its header."""
    path = Path(path)
    columns, _ = _open_chunks(path, encoding, chunk_rows)
    if column_map:
        unknown = set(column_map) - set(FIELDS)
        if unknown:
            raise ValueError(f"--columns: unknown field(s) {sorted(unknown)}; fields are {list(FIELDS)}")
        if "title" not in column_map:
            raise ValueError("--columns must map at least title=<column>")
        fmt, wanted = "generic", dict(column_map)
    else:
        fmt = detect_format(columns)
        if fmt is None:
            raise ValueError(
                f"{path}: unknown layout, columns {list(columns)}. Expected the ENS challenge columns "
                "(unnamed index, designation, description, productid, imageid), the SIGIR columns (Integer_id, "
                "Title, Description, Image_id, Product_id), or pass --columns title=COL,description=COL,..."
            )
        wanted = dict(KNOWN_FORMATS[fmt]["x"])
        if fmt == "ens" and "" not in columns:
            raise ValueError(f"{path}: the ENS layout needs its unnamed index column first; found {list(columns)}")
    found = _match_columns(columns, wanted, path, "Use --columns to map your columns.")
    found.setdefault("id", ROW_NUMBER)
    return FeaturesFile(path, fmt, found, encoding, encoding_errors, chunk_rows)


def read_labels_file(path, fmt: str, encoding: str = "utf-8", encoding_errors: str = "strict") -> RawTable:
    """Read a whole Y file: an id column (when the format has one) and the label column."""
    path = Path(path)
    columns, chunks = _open_chunks(path, encoding, CHUNK_ROWS)
    frames = list(chunks)
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns, dtype=str)
    _replace_bad_bytes(frame, path, 0, encoding, encoding_errors)
    wanted = dict(KNOWN_FORMATS.get(fmt, {}).get("y", {"id": "", "label": "prdtypecode"}))
    if fmt == "generic":
        label_column = next((c for c in columns if c.lower() == "prdtypecode"), columns[-1])
        wanted = {"id": columns[0], "label": label_column} if len(columns) > 1 else {"label": label_column}
    found = _match_columns(columns, wanted, path, "The label file needs the product type code column.")
    canonical = pd.DataFrame({field_name: frame[column].str.strip() for field_name, column in found.items()})
    labels = RawTable(path, canonical, found)
    if "id" in canonical:
        _check_unique_ids(labels, {})
    return labels


def _check_unique_ids(table: RawTable, seen: dict) -> None:
    """Raise at the first id that repeats one of this table or of `seen` (id -> row); record the table's ids."""
    ids = table.frame["id"]
    duplicated = ids.duplicated() | ids.isin(seen.keys())
    if duplicated.any():
        row = int(duplicated.to_numpy().argmax())
        sample_id = ids.iat[row]
        first = seen.get(sample_id, table.first_row + int((ids == sample_id).to_numpy().argmax()))
        raise ValueError(f"duplicate id {sample_id!r} in {table.path}: rows {first + 1} and {table.first_row + row + 1}")
    seen.update(zip(ids, range(table.first_row, table.first_row + len(ids))))


def attach_labels(features: RawTable, labels: RawTable, label_rows: dict | None) -> None:
    """Add `label` to a chunk of X: joined on id when the label file has ids (`label_rows`: id -> row), else by row."""
    x, y = features.frame, labels.frame
    if label_rows is not None:
        rows = x["id"].map(label_rows)
        missing = rows.isna()
        if missing.any():
            row = int(missing.to_numpy().argmax())
            raise ValueError(
                f"ids of {features.path} and {labels.path} do not match: {int(missing.sum())} row(s) of this part "
                f"have no label, first at {features.where(row, 'id')}"
            )
        x["label"] = y["label"].to_numpy()[rows.to_numpy(dtype=int)]
    else:
        end = features.first_row + len(x)
        if end > len(y):
            raise ValueError(f"{labels.path} has {len(y)} rows but {features.path} has more; without an id column "
                             "the label file must list one label per feature row, in order")
        x["label"] = y["label"].to_numpy()[features.first_row:end]
    empty = x["label"] == ""
    if empty.any():
        row = int(empty.to_numpy().argmax())
        raise ValueError(f"missing label for {int(empty.sum())} row(s), first at {labels.path} for {features.where(row)}")


def sorted_codes(codes) -> list[str]:
    codes = sorted(set(codes))
    return sorted(codes, key=int) if all(c.lstrip("-").isdigit() for c in codes) else codes


# ---------------------------------------------------------------------------------------------
# Images


@dataclass
class ImageCheck:
    found: int = 0
    missing: int = 0
    unreadable: list = field(default_factory=list)  # (file, reason)
    non_rgb: int = 0


def _check_image(path: str) -> tuple[str, str]:
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
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = pool.map(_check_image, [p for _, p in candidates], chunksize=64)
        for (row, path), (status, detail) in tqdm(
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


# ---------------------------------------------------------------------------------------------
# Building


def _prepare_rows(table: RawTable, rejected: dict) -> pd.DataFrame:
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


def _features(class_names: list[str], image_feature):
    from datasets import ClassLabel, Features, Value

    text = {name: Value("string") for name in ("id", "title", "description", "title_raw", "description_raw",
                                               "product_id", "image_id")}
    return Features({**text, "image": image_feature, "has_image": Value("bool"),
                     "label": ClassLabel(names=class_names)})


def _to_dataset(frame: pd.DataFrame, image_paths: list, class_names: list[str]):
    """A chunk's rows as a Dataset; the image column holds file paths until the dataset is complete."""
    from datasets import Dataset, Value

    index = {name: i for i, name in enumerate(class_names)}
    columns = frame[["id", "title", "description", "title_raw", "description_raw", "product_id", "image_id"]].assign(
        image=image_paths,
        has_image=[p is not None for p in image_paths],
        label=frame["label"].map(index) if "label" in frame else -1,
    )
    return Dataset.from_pandas(columns, features=_features(class_names, Value("string")), preserve_index=False)


@dataclass
class Source:
    """One X file (+ Y file, images folder) and what reading it found."""

    features: FeaturesFile
    labels: RawTable | None
    images_dir: Path | None
    check: ImageCheck = field(default_factory=ImageCheck)
    rows: int = 0

    @property
    def labelled(self) -> bool:
        return self.labels is not None or "label" in self.features.source_columns

    def label_codes(self) -> set:
        if self.labels is not None:
            return set(self.labels.frame["label"]) - {""}
        if "label" in self.features.source_columns:
            return {code for table in self.features.chunks() for code in table.frame["label"]} - {""}
        return set()

    def info(self) -> dict:
        return {"file": str(self.features.path), "format": self.features.format, "rows": self.rows,
                "columns": self.features.described_columns, "rows_with_replaced_bytes": self.features.replaced_byte_rows}


def _open_source(features_file, labels_file, images_dir, options: dict) -> Source:
    features = read_features_file(features_file, options["columns"], options["encoding"], options["encoding_errors"],
                                  options["chunk_rows"])
    labels = read_labels_file(labels_file, features.format, options["encoding"],
                              options["encoding_errors"]) if labels_file else None
    if labels is not None:
        features.label_source = f"{labels.path}:{labels.source_columns['label']}"
    images_dir = Path(images_dir) if images_dir else None
    if images_dir is not None and not images_dir.is_dir():
        raise FileNotFoundError(f"images folder not found: {images_dir}")
    return Source(features, labels, images_dir)


def _read_source(source: Source, class_names: list[str], check_classes: bool, seen_ids: dict, rejected: dict,
                 options: dict, scratch: Path | None):
    """All rows of a source as one Dataset, built chunk by chunk (written to `scratch` when given, so memory
    stays flat as rows grow)."""
    from datasets import concatenate_datasets, load_from_disk

    labels = source.labels
    label_rows = None
    if labels is not None and "id" in labels.frame:
        label_rows = dict(zip(labels.frame["id"], range(len(labels.frame))))
    present = {p.name for p in source.images_dir.iterdir()} if source.images_dir else set()
    parts, matched = [], 0
    for table in source.features.chunks():
        _check_unique_ids(table, seen_ids)
        if labels is not None:
            attach_labels(table, labels, label_rows)
            matched += len(table.frame)
        elif "label" in table.frame:
            empty = table.frame["label"] == ""
            if empty.any():
                raise ValueError(f"missing label at {table.where(int(empty.to_numpy().argmax()), 'label')}")
        if check_classes and "label" in table.frame:
            unknown = ~table.frame["label"].isin(class_names)
            if unknown.any():
                row = int(unknown.to_numpy().argmax())
                raise ValueError(f"unknown label {table.frame['label'].iat[row]!r} for id {table.frame['id'].iat[row]!r} "
                                 f"in {table.path}, row {table.first_row + row + 1} (label column "
                                 f"{table.source_columns['label']!r}); known classes: {class_names}")
        source.rows += len(table.frame)
        table.frame = _prepare_rows(table, rejected)
        paths = locate_images(table, source.images_dir, present, source.check, options["workers"],
                              options["strict_images"])
        part = _to_dataset(table.frame, paths, class_names)
        if scratch is not None:  # on disk, memory-mapped: rows read so far no longer take memory
            part.save_to_disk(str(scratch / f"part-{len(parts)}"))
            part = load_from_disk(str(scratch / f"part-{len(parts)}"))
        parts.append(part)
    if labels is not None and matched != len(labels.frame):
        if label_rows is None:
            raise ValueError(f"{labels.path} has {len(labels.frame)} rows but {source.features.path} has {matched}; "
                             "without an id column the label file must list one label per feature row, in order")
        unmatched = ~labels.frame["id"].isin(seen_ids.keys())
        row = int(unmatched.to_numpy().argmax())
        raise ValueError(f"ids of {source.features.path} and {labels.path} do not match: {int(unmatched.sum())} label "
                         f"row(s) have no features, first at {labels.where(row, 'id')}")
    if not parts:
        raise ValueError(f"{source.features.path} has a header but no rows")
    return concatenate_datasets(parts)


def build_dataset(
    features_file,
    labels_file=None,
    images_dir=None,
    out_dir=None,
    *,
    test_file=None,
    test_labels_file=None,
    test_images_dir=None,
    columns: dict | None = None,
    classes: list[str] | None = None,
    validation_fraction: float = 0.1,
    seed: int = 0,
    encoding: str = "utf-8",
    encoding_errors: str = "strict",
    strict_images: bool = False,
    workers: int = 4,
    chunk_rows: int = CHUNK_ROWS,
):
    """Build the DatasetDict; save it and its summary to `out_dir` when given. Returns (dataset_dict, summary).

    Rows are read and checked `chunk_rows` at a time; with `out_dir`, each chunk is written to a scratch folder
    beside it (removed at the end), so memory does not grow with the number of rows."""
    from datasets import DatasetDict, Image

    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {validation_fraction}")
    options = {"columns": columns, "encoding": encoding, "encoding_errors": encoding_errors, "workers": workers,
               "strict_images": strict_images, "chunk_rows": chunk_rows}
    sources = {"main": _open_source(features_file, labels_file, images_dir, options)}
    if test_file:
        sources["test"] = _open_source(test_file, test_labels_file, test_images_dir or images_dir, options)
    if not sources["main"].labelled and "test" in sources:
        raise ValueError("an unlabelled main file already forms the test split; do not also pass --test")
    class_names = [str(c) for c in classes] if classes else sorted_codes(
        set().union(*(source.label_codes() for source in sources.values())))

    scratch_root = None
    if out_dir is not None:
        Path(out_dir).parent.mkdir(parents=True, exist_ok=True)
        scratch_root = Path(tempfile.mkdtemp(prefix=f".{Path(out_dir).name}-", dir=Path(out_dir).parent))
    try:
        rejected, seen_ids, read = {}, {}, {}
        for name, source in sources.items():
            scratch = scratch_root / name if scratch_root else None
            if scratch:
                scratch.mkdir()
            read[name] = _read_source(source, class_names, bool(classes), seen_ids, rejected, options, scratch)
            read[name] = read[name].cast_column("image", Image(mode="RGB"))

        splits = {}
        if sources["main"].labelled:
            full = read["main"]
            counts = np.bincount(np.asarray(full.data.column("label")), minlength=len(class_names))
            too_small = [class_names[i] for i in np.flatnonzero(counts == 1)]
            if too_small:
                raise ValueError(f"classes {too_small[:10]} have a single labelled row: a stratified split needs "
                                 "at least 2")
            try:
                parts = full.train_test_split(test_size=validation_fraction, stratify_by_column="label", seed=seed)
            except ValueError as error:
                raise ValueError(f"cannot split {len(full)} rows over {len(class_names)} classes with validation "
                                 f"fraction {validation_fraction}: {error}") from None
            splits["train"], splits["validation"] = parts["train"], parts["test"]
        else:
            splits["test"] = read["main"]
        if "test" in read:
            splits["test"] = read["test"]
        dataset = DatasetDict(splits)
        summary = _summarise(dataset, sources, rejected, class_names, validation_fraction, seed)
        if out_dir is not None:
            out_dir = Path(out_dir)
            dataset.save_to_disk(str(out_dir))
            (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
            (out_dir / "summary.md").write_text(summary_markdown(summary))
            from datasets import load_from_disk

            dataset = load_from_disk(str(out_dir))  # the scratch parts go away below
    finally:
        if scratch_root is not None:
            shutil.rmtree(scratch_root, ignore_errors=True)
    return dataset, summary


def _summarise(dataset, sources, rejected, class_names, validation_fraction, seed) -> dict:
    import pyarrow.compute as pc

    images = {}
    for name, source in sources.items():
        check = source.check
        images[name] = {"found": check.found, "missing": check.missing, "unreadable": len(check.unreadable),
                        "non_rgb_converted": check.non_rgb,
                        "unreadable_files": [f"{p}: {why}" for p, why in check.unreadable[:LIST_LIMIT]]}
    per_split = {}
    for split, ds in dataset.items():
        counts = np.zeros(len(class_names), dtype=np.int64)
        without_description = with_image = 0
        for batch in ds.select_columns(["description", "has_image", "label"]).with_format("arrow").iter(20_000):
            without_description += pc.sum(pc.equal(batch["description"], "")).as_py() or 0
            with_image += pc.sum(batch["has_image"]).as_py() or 0
            labels = batch["label"].to_numpy()
            counts += np.bincount(labels[labels >= 0], minlength=len(class_names))
        per_split[split] = {
            "rows": len(ds),
            "without_description": int(without_description),
            "with_image": int(with_image),
            "class_counts": {name: int(n) for name, n in zip(class_names, counts)} if counts.any() else {},
        }
    return {
        "sources": {name: source.info() for name, source in sources.items()},
        "splits": per_split,
        "num_classes": len(class_names),
        "class_names": class_names,
        "images": images,
        "rows_rejected": rejected,
        "validation_fraction": validation_fraction,
        "seed": seed,
    }


def summary_markdown(summary: dict) -> str:
    lines = ["# Dataset summary", "", "| split | rows | without description | with image |", "|---|---:|---:|---:|"]
    for split, info in summary["splits"].items():
        lines.append(f"| {split} | {info['rows']:,} | {info['without_description']:,} | {info['with_image']:,} |")
    lines += ["", f"Classes: {summary['num_classes']} ({', '.join(summary['class_names'])})", ""]
    for name, info in summary["images"].items():
        lines.append(
            f"Images ({name}): {info['found']:,} found, {info['missing']:,} missing, {info['unreadable']:,} unreadable "
            f"(treated as missing), {info['non_rgb_converted']:,} non-RGB (decoded as RGB)"
        )
        lines += [f"  - {f}" for f in info["unreadable_files"]]
    for name, info in summary["sources"].items():
        if info["rows_with_replaced_bytes"]:
            lines.append(f"Rows with undecodable bytes replaced ({name}): {info['rows_with_replaced_bytes']:,}")
    total_rejected = sum(r["count"] for r in summary["rows_rejected"].values())
    lines.append(f"Rows rejected: {total_rejected:,}")
    for reason, info in summary["rows_rejected"].items():
        lines.append(f"  - {reason}: {info['count']:,} (ids {', '.join(info['ids'])}{' ...' if info['count'] > len(info['ids']) else ''})")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Command line


def _parse_columns(text: str | None) -> dict | None:
    if not text:
        return None
    mapping = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"--columns expects FIELD=COLUMN pairs separated by commas, got {item!r}")
        mapping[key.strip()] = value.strip()
    return mapping


def _parse_classes(text: str | None) -> list[str] | None:
    if not text:
        return None
    path = Path(text)
    if path.is_file():
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return [c.strip() for c in text.split(",") if c.strip()]


def add_arguments(parser) -> None:
    parser.add_argument("features", help="X file: ENS CSV, SIGIR TSV, or any CSV/TSV with --columns")
    parser.add_argument("--labels", help="Y file (ENS index + prdtypecode, or SIGIR Prdtypecode); omit for unlabelled data")
    parser.add_argument("--images", help="folder with image_<imageid>_product_<productid>.jpg files")
    parser.add_argument("--out", required=True, help="output folder for the DatasetDict")
    parser.add_argument("--test", help="unlabelled (or --test-labels) X file that becomes the test split")
    parser.add_argument("--test-labels", help="labels of the test file, when known")
    parser.add_argument("--test-images", help="images folder of the test file (default: --images)")
    parser.add_argument("--columns", help="generic layout: FIELD=COLUMN,... with fields " + ", ".join(FIELDS))
    parser.add_argument("--classes", help="fixed class list: comma-separated codes or a file with one per line")
    parser.add_argument("--validation-fraction", type=float, default=0.1, help="default 0.1 (a 9:1 split)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--encoding", default="utf-8")
    parser.add_argument("--encoding-errors", choices=["strict", "replace"], default="strict",
                        help="strict: stop at undecodable bytes; replace: replace them and count the rows")
    parser.add_argument("--strict-images", action="store_true", help="stop at an unreadable image instead of flagging it missing")
    parser.add_argument("--workers", type=int, default=4, help="threads checking images")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="also push the DatasetDict to the Hugging Face Hub")


def run(args) -> int:
    dataset, summary = build_dataset(
        args.features, args.labels, args.images, args.out,
        test_file=args.test, test_labels_file=args.test_labels, test_images_dir=args.test_images,
        columns=_parse_columns(args.columns), classes=_parse_classes(args.classes),
        validation_fraction=args.validation_fraction, seed=args.seed, encoding=args.encoding,
        encoding_errors=args.encoding_errors, strict_images=args.strict_images, workers=args.workers,
    )
    print(summary_markdown(summary))
    print(f"saved to {args.out}")
    if args.push_to_hub:
        dataset.push_to_hub(args.push_to_hub)
        print(f"pushed to the Hub: {args.push_to_hub}")
    return 0
