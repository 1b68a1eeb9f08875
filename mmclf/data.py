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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

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
    """One raw file read as strings, with canonical column names and where each row came from."""

    path: Path
    frame: pd.DataFrame  # canonical field -> str column
    source_columns: dict  # canonical field -> column name in the file ("" = unnamed index)
    replaced_byte_rows: int = 0

    def where(self, row: int, field_name: str | None = None) -> str:
        """'FILE, row N (id X), column C' for error messages; rows count from 1 after the header."""
        text = f"{self.path}, row {row + 1}"
        if "id" in self.frame.columns:
            text += f" (id {self.frame['id'].iat[row]!r})"
        if field_name is not None:
            column = self.source_columns.get(field_name, field_name)
            text += f", column {column!r}" if column else ", the unnamed index column"
        return text


def _read_text_file(path: Path, encoding: str, encoding_errors: str) -> tuple[pd.DataFrame, int]:
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    with open(path, "rb") as handle:
        head = handle.read(65536)
    if not head.strip():
        raise ValueError(f"{path} is empty")
    separator = "\t" if path.suffix.lower() == ".tsv" or b"\t" in head.split(b"\n", 1)[0] else ","
    options = {"sep": separator, "dtype": str, "keep_default_na": False}
    try:
        try:
            frame, marked = pd.read_csv(path, encoding=encoding, **options), False
        except UnicodeDecodeError:  # find the row and column: parse again with the bad bytes marked
            frame, marked = pd.read_csv(path, encoding=encoding, encoding_errors="mmclf-mark", **options), True
    except pd.errors.ParserError as error:
        raise ValueError(f"{path} could not be parsed as {'TSV' if separator == chr(9) else 'CSV'}: {error}") from None
    frame.columns = ["" if str(c).startswith("Unnamed: 0") else str(c).strip() for c in frame.columns]
    replaced_rows = 0
    for column in frame.columns if marked else []:
        bad = frame[column].str.contains(_BAD_BYTE, regex=True)
        if bad.any():
            row = int(bad.to_numpy().argmax())
            if encoding_errors == "strict":
                byte = _BAD_BYTE.search(frame[column].iat[row]).group()
                raise ValueError(
                    f"{path}, row {row + 1}, column {column!r}: byte 0x{ord(byte) - 0xF700:02x} is not valid "
                    f"{encoding}; pass --encoding (e.g. latin-1) or --encoding-errors replace"
                )
            replaced_rows += int(bad.sum())
            frame[column] = frame[column].str.replace(_BAD_BYTE, "\ufffd", regex=True)
    return frame, replaced_rows


def _match_columns(frame: pd.DataFrame, wanted: dict, path: Path, hint: str) -> dict:
    """Map canonical fields to the file's columns (case-insensitive); error naming what is missing."""
    by_lower = {c.lower(): c for c in frame.columns}
    found, missing = {}, []
    for field_name, column in wanted.items():
        if column.lower() in by_lower:
            found[field_name] = by_lower[column.lower()]
        elif field_name != "id" or column == "":
            missing.append(column or "<unnamed index column>")
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}. {hint}")
    return found


def detect_format(columns) -> str | None:
    lower = {c.lower() for c in columns}
    for name, spec in KNOWN_FORMATS.items():
        if {c for c in spec["x"].values() if c} <= lower:
            return name
    return None


def read_features_file(
    path, column_map: dict | None = None, encoding: str = "utf-8", encoding_errors: str = "strict"
) -> tuple[RawTable, str]:
    """Read an X file (ENS, SIGIR, or generic with `column_map` canonical -> file column)."""
    path = Path(path)
    frame, replaced = _read_text_file(path, encoding, encoding_errors)
    if column_map:
        unknown = set(column_map) - set(FIELDS)
        if unknown:
            raise ValueError(f"--columns: unknown field(s) {sorted(unknown)}; fields are {list(FIELDS)}")
        if "title" not in column_map:
            raise ValueError("--columns must map at least title=<column>")
        fmt, wanted = "generic", dict(column_map)
    else:
        fmt = detect_format(frame.columns)
        if fmt is None:
            raise ValueError(
                f"{path}: unknown layout, columns {list(frame.columns)}. Expected the ENS challenge columns "
                "(unnamed index, designation, description, productid, imageid), the SIGIR columns (Integer_id, "
                "Title, Description, Image_id, Product_id), or pass --columns title=COL,description=COL,..."
            )
        wanted = dict(KNOWN_FORMATS[fmt]["x"])
        if fmt == "ens" and "" not in frame.columns:
            raise ValueError(f"{path}: the ENS layout needs its unnamed index column first; found {list(frame.columns)}")
    found = _match_columns(frame, wanted, path, "Use --columns to map your columns.")
    canonical = pd.DataFrame({field_name: frame[column].str.strip() for field_name, column in found.items()})
    if "id" not in canonical:  # no id column: the row number is the stable id
        canonical.insert(0, "id", [str(i) for i in range(len(frame))])
        found["id"] = "<row number>"
    return RawTable(path, canonical, found, replaced), fmt


def read_labels_file(path, fmt: str, encoding: str = "utf-8", encoding_errors: str = "strict") -> RawTable:
    """Read a Y file: an id column (when the format has one) and the label column."""
    path = Path(path)
    frame, replaced = _read_text_file(path, encoding, encoding_errors)
    wanted = dict(KNOWN_FORMATS.get(fmt, {}).get("y", {"id": "", "label": "prdtypecode"}))
    if fmt == "generic":
        label_column = next((c for c in frame.columns if c.lower() == "prdtypecode"), frame.columns[-1])
        wanted = {"id": frame.columns[0], "label": label_column} if len(frame.columns) > 1 else {"label": label_column}
    found = _match_columns(frame, wanted, path, "The label file needs the product type code column.")
    canonical = pd.DataFrame({field_name: frame[column].str.strip() for field_name, column in found.items()})
    return RawTable(path, canonical, found, replaced)


def attach_labels(features: RawTable, labels: RawTable) -> None:
    """Add `label` to the features table: joined on id when the label file has ids, else by row."""
    x, y = features.frame, labels.frame
    if "id" in y:
        _check_unique_ids(labels)
        position = pd.Series(range(len(y)), index=y["id"])
        missing = ~x["id"].isin(position.index)
        if missing.any():
            row = int(missing.to_numpy().argmax())
            raise ValueError(
                f"ids of {features.path} and {labels.path} do not match: {int(missing.sum())} row(s) have no label, "
                f"first at {features.where(row, 'id')}"
            )
        extra = ~y["id"].isin(x["id"])
        if extra.any():
            row = int(extra.to_numpy().argmax())
            raise ValueError(
                f"ids of {features.path} and {labels.path} do not match: {int(extra.sum())} label row(s) have no "
                f"features, first at {labels.where(row, 'id')}"
            )
        x["label"] = y["label"].to_numpy()[position.loc[x["id"]].to_numpy()]
        features.source_columns["label"] = f"{labels.path}:{labels.source_columns['label']}"
    else:
        if len(y) != len(x):
            raise ValueError(
                f"{labels.path} has {len(y)} rows but {features.path} has {len(x)}; without an id column the "
                "label file must list one label per feature row, in order"
            )
        x["label"] = y["label"].to_numpy()
        features.source_columns["label"] = f"{labels.path}:{labels.source_columns['label']}"
    empty = x["label"] == ""
    if empty.any():
        row = int(empty.to_numpy().argmax())
        raise ValueError(f"missing label for {int(empty.sum())} row(s), first at {labels.path} for {features.where(row)}")


def _check_unique_ids(table: RawTable) -> None:
    duplicated = table.frame["id"].duplicated(keep=False)
    if duplicated.any():
        rows = duplicated.to_numpy().nonzero()[0][:2]
        raise ValueError(
            f"duplicate id {table.frame['id'].iat[rows[0]]!r} in {table.path}: rows {rows[0] + 1} and {rows[1] + 1}"
            f" ({int(table.frame['id'].duplicated().sum())} duplicated ids in all)"
        )


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


def locate_images(table: RawTable, images_dir: Path | None, workers: int, strict: bool) -> tuple[list, ImageCheck]:
    """Path (or None) of each row's image, after checking that every found file decodes."""
    frame, check = table.frame, ImageCheck()
    if images_dir is None:
        check.missing = len(frame)
        return [None] * len(frame), check
    if not images_dir.is_dir():
        raise FileNotFoundError(f"images folder not found: {images_dir}")
    if "image" in frame:
        names = frame["image"].tolist()
    elif {"image_id", "product_id"} <= set(frame.columns):
        names = [image_file_name(i, p) for i, p in zip(frame["image_id"], frame["product_id"])]
    else:
        raise ValueError(f"{table.path}: to find images, map image=COL or both image_id and product_id")
    present = {p.name for p in images_dir.iterdir()}
    candidates = [(row, str(images_dir / name)) for row, name in enumerate(names) if name and Path(name).name in present]
    paths = [None] * len(frame)
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
    check.found = sum(p is not None for p in paths)
    check.missing = len(frame) - check.found - len(check.unreadable)
    return paths, check


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
        reason = f"empty title ({table.path.name})"
        rejected[reason] = {"count": int(empty_title.sum()), "ids": frame.loc[empty_title, "id"].tolist()[:LIST_LIMIT]}
    return frame.loc[~empty_title].reset_index(drop=True)


def _to_dataset(frame: pd.DataFrame, image_paths: list, class_names: list[str]):
    from datasets import ClassLabel, Dataset, Features, Image, Value

    features = Features(
        {
            "id": Value("string"),
            "title": Value("string"),
            "description": Value("string"),
            "title_raw": Value("string"),
            "description_raw": Value("string"),
            "product_id": Value("string"),
            "image_id": Value("string"),
            "image": Image(mode="RGB"),
            "has_image": Value("bool"),
            "label": ClassLabel(names=class_names),
        }
    )
    index = {name: i for i, name in enumerate(class_names)}
    columns = frame[["id", "title", "description", "title_raw", "description_raw", "product_id", "image_id"]].assign(
        image=image_paths,
        has_image=[p is not None for p in image_paths],
        label=frame["label"].map(index) if "label" in frame else -1,
    )
    return Dataset.from_pandas(columns, features=features, preserve_index=False)


@dataclass
class SourceFiles:
    features: str
    labels: str | None = None
    images: str | None = None


def _load_source(files: SourceFiles, options: dict, rejected: dict) -> tuple[pd.DataFrame, list, ImageCheck, dict]:
    table, fmt = read_features_file(files.features, options["columns"], options["encoding"], options["encoding_errors"])
    _check_unique_ids(table)
    if files.labels:
        attach_labels(table, read_labels_file(files.labels, fmt, options["encoding"], options["encoding_errors"]))
    elif "label" in table.frame:
        empty = table.frame["label"] == ""
        if empty.any():
            raise ValueError(f"missing label at {table.where(int(empty.to_numpy().argmax()), 'label')}")
    kept_before = len(table.frame)
    table.frame = _prepare_rows(table, rejected)
    if len(table.frame) < kept_before:
        table.frame.index = range(len(table.frame))
    images_dir = Path(files.images) if files.images else None
    paths, check = locate_images(table, images_dir, options["workers"], options["strict_images"])
    info = {"file": str(table.path), "format": fmt, "rows": kept_before, "columns": table.source_columns,
            "rows_with_replaced_bytes": table.replaced_byte_rows}
    return table.frame, paths, check, info


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
):
    """Build the DatasetDict; save it and its summary to `out_dir` when given. Returns (dataset_dict, summary)."""
    from datasets import DatasetDict

    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {validation_fraction}")
    options = {"columns": columns, "encoding": encoding, "encoding_errors": encoding_errors, "workers": workers,
               "strict_images": strict_images}
    rejected: dict = {}
    main_files = SourceFiles(str(features_file), labels_file and str(labels_file), images_dir and str(images_dir))
    frame, paths, main_check, main_info = _load_source(main_files, options, rejected)
    sources = {"main": (frame, paths, main_check, main_info)}
    if test_file:
        test_files = SourceFiles(str(test_file), test_labels_file and str(test_labels_file),
                                 str(test_images_dir or images_dir) if (test_images_dir or images_dir) else None)
        sources["test"] = _load_source(test_files, options, rejected)
        overlap = set(frame["id"]) & set(sources["test"][0]["id"])
        if overlap:
            raise ValueError(f"{len(overlap)} id(s) appear in both {features_file} and {test_file}, e.g. {sorted(overlap)[:3]}")

    labelled = {name: "label" in source[0] for name, source in sources.items()}
    seen = [c for name, source in sources.items() if labelled[name] for c in source[0]["label"]]
    if classes:
        class_names = [str(c) for c in classes]
        for name, (source_frame, _, _, info) in sources.items():
            if labelled[name]:
                unknown = ~source_frame["label"].isin(class_names)
                if unknown.any():
                    row = int(unknown.to_numpy().argmax())
                    raise ValueError(
                        f"unknown label {source_frame['label'].iat[row]!r} for id {source_frame['id'].iat[row]!r} in "
                        f"{info['file']} (column {info['columns'].get('label')!r}); known classes: {class_names}"
                    )
    else:
        class_names = sorted_codes(seen)

    splits = {}
    if labelled["main"]:
        full = _to_dataset(frame, paths, class_names)
        too_small = [c for c, n in pd.Series(frame["label"]).value_counts().items() if n < 2]
        if too_small:
            raise ValueError(f"classes {too_small[:10]} have a single labelled row: a stratified split needs at least 2")
        try:
            parts = full.train_test_split(test_size=validation_fraction, stratify_by_column="label", seed=seed)
        except ValueError as error:
            raise ValueError(f"cannot split {len(full)} rows over {len(class_names)} classes with validation "
                             f"fraction {validation_fraction}: {error}") from None
        splits["train"], splits["validation"] = parts["train"], parts["test"]
    else:
        splits["test"] = _to_dataset(frame, paths, class_names)
    if "test" in sources:
        if "test" in splits:
            raise ValueError("an unlabelled main file already forms the test split; do not also pass --test")
        test_frame, test_paths = sources["test"][0], sources["test"][1]
        splits["test"] = _to_dataset(test_frame, test_paths, class_names)
    dataset = DatasetDict(splits)

    summary = _summarise(dataset, sources, rejected, class_names, validation_fraction, seed)
    if out_dir is not None:
        out_dir = Path(out_dir)
        dataset.save_to_disk(str(out_dir))
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
        (out_dir / "summary.md").write_text(summary_markdown(summary))
    return dataset, summary


def _summarise(dataset, sources, rejected, class_names, validation_fraction, seed) -> dict:
    images = {}
    for name, (_, _, check, _) in sources.items():
        images[name] = {"found": check.found, "missing": check.missing, "unreadable": len(check.unreadable),
                        "non_rgb_converted": check.non_rgb,
                        "unreadable_files": [f"{p}: {why}" for p, why in check.unreadable[:LIST_LIMIT]]}
    per_split = {}
    for split, ds in dataset.items():
        labels = ds["label"][:] if hasattr(ds["label"], "__getitem__") else list(ds["label"])
        counts = pd.Series(labels).value_counts()
        per_split[split] = {
            "rows": len(ds),
            "without_description": int(sum(d == "" for d in ds["description"])),
            "with_image": int(sum(ds["has_image"])),
            "class_counts": {class_names[i]: int(counts.get(i, 0)) for i in range(len(class_names))} if (counts.index >= 0).any() else {},
        }
    return {
        "sources": {name: source[3] for name, source in sources.items()},
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
