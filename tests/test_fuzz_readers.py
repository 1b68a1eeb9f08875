"""Property-based tests over the raw-file readers: whatever the bytes, encoding, quoting or columns, a reader gives
a clear error (ValueError or FileNotFoundError naming the file) or accounts for every row exactly; never another
exception. Bounded by example count (FUZZ_EXAMPLES each) so the lane stays fast."""

import csv
import io
import os
import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmclf.data.readers import read_features_file, read_labels_file

FUZZ_EXAMPLES = int(os.environ.get("MMCLF_FUZZ_EXAMPLES", "80"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

ENCODINGS = ["utf-8", "latin-1", "cp1252", "utf-16", "ascii", "latin-42", "utf-8-sig"]
cell_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


def write(data: bytes, suffix: str = ".csv") -> Path:
    folder = Path(tempfile.mkdtemp(prefix="fuzz-"))
    path = folder / f"input{suffix}"
    path.write_bytes(data)
    return path


def read_all(path: Path, columns=None, encoding="utf-8", errors="strict"):
    """(rows, ids) read, or the error's message: a clear error must name the file."""
    try:
        features = read_features_file(path, columns, encoding=encoding, encoding_errors=errors, chunk_rows=7)
        frames = [table.frame for table in features.chunks()]
    except (ValueError, FileNotFoundError) as error:
        assert path.name in str(error) or "--columns" in str(error), str(error)
        return None
    return sum(len(f) for f in frames), [i for f in frames for i in f["id"]]


@FUZZ
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".csv", ".tsv"]),
       encoding=st.sampled_from(ENCODINGS), errors=st.sampled_from(["strict", "replace"]))
def test_random_bytes_give_a_clear_error_or_rows(data, suffix, encoding, errors):
    path = write(data, suffix)
    read_all(path, {"title": "title"}, encoding, errors)
    read_all(path, None, encoding, errors)


@FUZZ
@given(rows=st.lists(st.tuples(cell_text, cell_text), min_size=1, max_size=25),
       quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]),
       encoding=st.sampled_from(["utf-8", "latin-1", "utf-16"]), extra=st.booleans())
def test_well_formed_files_account_for_every_row(rows, quoting, encoding, extra):
    """Any text, any quoting, an extra column: exactly one row out per data row in, ids in file order."""
    buffer = io.StringIO(newline="")
    # "\r\n" as in RFC 4180: the writer then quotes a field holding a bare "\r", which pandas (like old Mac
    # files) reads as a line break when unquoted
    writer = csv.writer(buffer, quoting=quoting, lineterminator="\r\n")
    writer.writerow(["sku", "name", "notes"] + (["extra"] if extra else []))
    for i, (title, notes) in enumerate(rows):
        writer.writerow([f"p{i}", title, notes] + (["x"] if extra else []))
    try:
        data = buffer.getvalue().encode(encoding)
    except UnicodeEncodeError:
        data = buffer.getvalue().encode("utf-8")
        encoding = "utf-8"
    result = read_all(write(data), {"id": "sku", "title": "name", "description": "notes"}, encoding)
    assert result is not None
    count, ids = result
    assert count == len(rows) and ids == [f"p{i}" for i in range(len(rows))]


@FUZZ
@given(header=st.lists(st.sampled_from(["sku", "name", "notes", "Title", "Integer_id", "designation", "", "x"]),
                       min_size=1, max_size=5),
       mapping=st.dictionaries(st.sampled_from(["id", "title", "description", "image", "label", "colour"]),
                               st.sampled_from(["sku", "name", "notes", "missing", "title"]), max_size=4))
def test_missing_and_extra_columns_are_errors_naming_the_file_or_mapped(header, mapping):
    lines = [",".join(header)] + [",".join(f"v{r}{c}" for c in range(len(header))) for r in range(3)]
    path = write(("\n".join(lines) + "\n").encode())
    result = read_all(path, mapping or None)
    if result is not None:
        assert result[0] == 3
        if "id" in mapping:  # a mapped id is read, never replaced by row numbers
            column = [h.lower() for h in header].index(mapping["id"].lower())
            assert result[1] == [f"v{r}{column}" for r in range(3)]


@FUZZ
@given(data=st.binary(max_size=300), fmt=st.sampled_from(["ens", "sigir", "generic"]))
def test_label_files_of_random_bytes_give_a_clear_error_or_labels(data, fmt):
    path = write(data)
    try:
        labels = read_labels_file(path, fmt)
    except (ValueError, FileNotFoundError) as error:
        assert path.name in str(error), str(error)
        return
    assert "label" in labels.frame


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252"])
def test_a_utf8_file_read_as_latin1_warns_and_reads_every_row(tmp_path, encoding):
    """Not an error (every byte is valid latin-1), but a warning naming the file, and every row is read."""
    path = tmp_path / "x.csv"
    path.write_text("sku,name\n1,Crème brûlée\n2,Café\n", encoding="utf-8")
    with pytest.warns(UserWarning, match=r"x.csv is UTF-8 with accented characters and is read as " + encoding):
        features = read_features_file(path, {"id": "sku", "title": "name"}, encoding=encoding)
    frame = next(features.chunks()).frame
    assert frame["title"].tolist() == ["CrÃ¨me brÃ»lÃ©e", "CafÃ©"]


def test_a_latin1_file_read_as_latin1_reads_without_a_warning(tmp_path):
    path = tmp_path / "x.csv"
    path.write_bytes("sku,name\n1,Crème brûlée\n2,Café\n".encode("latin-1"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = next(read_features_file(path, {"id": "sku", "title": "name"}, encoding="latin-1").chunks()).frame
    assert frame["title"].tolist() == ["Crème brûlée", "Café"]
