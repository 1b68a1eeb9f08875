"""Raw catalog files read as canonical string tables: the ENS challenge CSV pair, the SIGIR 2020 TSVs, or any
CSV/TSV with a column mapping.

Every problem a reader finds is an error naming the file, the row (counted from 1 after the header), the id
and the column. Files are read in chunks of `CHUNK_ROWS` rows so that memory stays flat as files grow.
"""

from __future__ import annotations

import codecs
import functools
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

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
OPTIONAL_FIELDS = {"description"}  # a known layout without it (title-only) still builds
CHUNK_ROWS = 20_000  # rows read, checked and converted at a time
ROW_NUMBER = "<row number>"  # the id "column" of files without one
# what pandas raises on a file it cannot read: a bad layout, no columns at all, a stream the codec refuses (UTF-16
# without a byte order mark)
UNPARSABLE = (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeError)

# Undecodable bytes become private-use characters U+F780..U+F7FF, so that the parsed table can
# say in which row and column they sit (pandas cannot parse lone surrogates).
_BAD_BYTE = re.compile("[\uf780-\uf7ff]")
_WHOLE_FLOAT = re.compile(r"^([+-]?\d+)\.0*$")  # `2705.0`, `2705.00`: an integer code written by a float column
codecs.register_error("mmclf-mark", lambda e: ("".join(chr(0xF700 + b) for b in e.object[e.start : e.end]), e.end))


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
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ValueError(f"{path}: unknown encoding {encoding!r} (--encoding); e.g. utf-8, latin-1, cp1252") from None
    with open(path, "rb") as handle:
        head = handle.read(65536)
    if not head.strip():
        raise ValueError(f"{path} is empty")
    if codecs.lookup(encoding).name not in ("utf-8", "utf-8-sig") and _accented_utf8(head):
        _warn_once(f"{path} is UTF-8 with accented characters and is read as {encoding}: 'é' comes out as 'Ã©'; "
                   f"leave out --encoding unless the file really is {encoding}", *_stat(path))
    separator = "\t" if path.suffix.lower() == ".tsv" or b"\t" in head.split(b"\n", 1)[0] else ","
    kind = "TSV" if separator == "\t" else "CSV"
    options = {"sep": separator, "dtype": str, "keep_default_na": False, "encoding": encoding,
               "encoding_errors": "mmclf-mark"}
    try:
        first = pd.read_csv(path, nrows=1, **options)
    except UNPARSABLE as error:
        raise ValueError(f"{path} could not be parsed as {kind} ({encoding}): {error}") from None
    if len(first) == 0:
        raise ValueError(f"{path} has a header but no rows")
    columns = ["" if str(c).startswith("Unnamed: 0") else str(c).strip() for c in first.columns]

    def chunks():
        try:
            for chunk in pd.read_csv(path, chunksize=chunk_rows, **options):
                chunk.columns = columns
                yield chunk
        except UNPARSABLE as error:
            raise ValueError(f"{path} could not be parsed as {kind} ({encoding}): {error}") from None

    return columns, chunks()


def _accented_utf8(head: bytes) -> bool:
    """Non-ASCII bytes that decode as UTF-8: a UTF-8 file (Latin-1 or cp1252 text almost never does)."""
    if head.isascii():
        return False
    try:
        codecs.getincrementaldecoder("utf-8")("strict").decode(head, final=False)  # a cut last character is fine
    except UnicodeDecodeError:
        return False
    return True


@functools.lru_cache(maxsize=16)
def _warn_once(message: str, size: int, mtime: float) -> None:
    """A file is opened for its header and again for its rows: one warning (again once the file changed)."""
    warnings.warn(message, stacklevel=4)


def _stat(path: Path) -> tuple[int, float]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime


@functools.lru_cache(maxsize=16)
def _decodes_strictly(path: Path, encoding: str, size: int, mtime: float) -> bool:
    """Whether the whole file is valid `encoding` (size and mtime: a changed file is decoded again)."""
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                decoder.decode(block)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _replace_bad_bytes(frame: pd.DataFrame, path: Path, first_row: int, encoding: str, encoding_errors: str) -> int:
    """Raise at the first undecodable byte (file, row, column), or replace them with U+FFFD; rows replaced."""
    replaced = 0
    for column in frame.columns:
        bad = frame[column].str.contains(_BAD_BYTE, regex=True)
        if bad.any() and _decodes_strictly(path, encoding, *_stat(path)):
            return 0  # the markers are the file's own private-use characters, not undecodable bytes
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


def normalise_codes(codes: pd.Series) -> pd.Series:
    """Label codes as the classes know them: whitespace stripped, `2705.0` / `2705.00` read as `2705`."""
    return codes.str.strip().str.replace(_WHOLE_FLOAT, r"\1", regex=True)


def detect_format(columns) -> str | None:
    lower = {c.lower() for c in columns}
    for name, spec in KNOWN_FORMATS.items():
        if {c for f, c in spec["x"].items() if c and f not in OPTIONAL_FIELDS} <= lower:
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
            if "label" in canonical:
                canonical["label"] = normalise_codes(canonical["label"])
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
        absent = [c for c in column_map.values() if c.lower() not in {name.lower() for name in columns}]
        if absent:  # above all id=NAME: ids silently becoming row numbers would be a wrong answer
            raise ValueError(f"{path}: --columns names column(s) {absent} that the file lacks; its columns are "
                             f"{list(columns)}")
        fmt, wanted = "generic", dict(column_map)
    else:
        fmt = detect_format(columns)
        if fmt is None:
            raise ValueError(
                f"{path}: unknown layout, columns {list(columns)}. Expected the ENS challenge columns "
                "(unnamed index, designation, description, productid, imageid), the SIGIR columns (Integer_id, "
                "Title, Description, Image_id, Product_id), description optional in both, or pass "
                "--columns title=COL,description=COL,..."
            )
        lower = {c.lower() for c in columns}
        wanted = {f: c for f, c in KNOWN_FORMATS[fmt]["x"].items() if f not in OPTIONAL_FIELDS or c.lower() in lower}
        if fmt == "ens" and "" not in columns:
            raise ValueError(f"{path}: the ENS layout needs its unnamed index column first; found {list(columns)}")
    found = _match_columns(columns, wanted, path, "Use --columns to map your columns.")
    found.setdefault("id", ROW_NUMBER)
    return FeaturesFile(path, fmt, found, encoding, encoding_errors, chunk_rows)


def read_labels_file(path, fmt: str, encoding: str = "utf-8", encoding_errors: str = "strict") -> RawTable:
    """Read a whole Y file: an id column (when the format has one) and the label column."""
    path = Path(path)
    columns, chunks = _open_chunks(path, encoding, CHUNK_ROWS)
    frame = pd.concat(list(chunks), ignore_index=True)
    _replace_bad_bytes(frame, path, 0, encoding, encoding_errors)
    wanted = dict(KNOWN_FORMATS.get(fmt, {}).get("y", {"id": "", "label": "prdtypecode"}))
    if fmt == "generic":
        label_column = next((c for c in columns if c.lower() == "prdtypecode"), columns[-1])
        wanted = {"id": columns[0], "label": label_column} if len(columns) > 1 else {"label": label_column}
    found = _match_columns(columns, wanted, path, "The label file needs the product type code column.")
    canonical = pd.DataFrame({field_name: frame[column].str.strip() for field_name, column in found.items()})
    canonical["label"] = normalise_codes(canonical["label"])
    labels = RawTable(path, canonical, found)
    if "id" in canonical:
        check_ids(labels, {})
    return labels


def check_ids(table: RawTable, seen: dict) -> None:
    """Raise at the first empty id, or at the first id that repeats one of this table or of `seen` (id -> row);
    record the table's ids."""
    ids = table.frame["id"]
    empty = ids.str.strip() == ""
    if empty.any():
        raise ValueError(f"empty id at {table.where(int(empty.to_numpy().argmax()), 'id')}: every row needs one")
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


def parse_columns(text: str | None) -> dict | None:
    """`--columns id=sku,title=name,...` -> {"id": "sku", "title": "name", ...}."""
    if not text:
        return None
    mapping = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"--columns expects FIELD=COLUMN pairs separated by commas, got {item!r}")
        mapping[key.strip()] = value.strip()
    return mapping

