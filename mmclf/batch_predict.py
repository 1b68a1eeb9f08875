"""Catalog-scale prediction: a file (or a dataset split) of any size through a pipeline, chunk by chunk.

    from mmclf.batch_predict import predict_file
    summary = predict_file("demo_out/pipeline", "submission.csv", input="X_test.csv", images="image_test")

The input (ENS CSV, SIGIR TSV, a CSV with a `columns` mapping, Parquet, or a built dataset's split) is read
`chunk_rows` rows at a time; each chunk is predicted and written to a chunk folder beside the output
(`.<output name>.chunks/`, one Parquet file per chunk, each written whole). At the end the chunks are merged, in
input order, into the output (a submission CSV with the probability table beside it, or one Parquet file with
both), which appears whole or not at all. Memory is bounded by the chunk, not the file.

After a kill, `resume=True` keeps the finished chunks and predicts the others: the output is byte for byte the
one an uninterrupted run writes. The chunk folder records what the run was made of (input, pipeline, chunking);
a resume with anything else is refused. A chunk size that is a multiple of `batch_size` keeps the batches, and
so the numbers, those of one pass over the whole file.

Under `accelerate launch -m mmclf predict ...` chunk i is predicted by process i mod N on its own device; the main
process merges the chunks once all are done. Chunks, not processes, are the unit of work, so a run killed under
N processes resumes under any number.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mmclf.data.listings import Listings, to_listings
from mmclf.data.readers import KNOWN_FORMATS, detect_format, parse_columns, read_features_file
from mmclf.data.rows import image_file_name
from mmclf.hub import local_or_hub
from mmclf.pipeline import MultimodalPipeline, PipelinePrediction
from mmclf.probability_tables import CLASS_NAMES_KEY, SOURCE_KEY
from mmclf.progress import progress_bar
from mmclf.rundir import process_state, staged_file

DEFAULT_CHUNK_ROWS = 8192  # a multiple of every usual batch size
MANIFEST_FILE = "manifest.json"
COUNTS_KEY = b"mmclf.counts"
COUNT_NAMES = ("rows", "empty_title", "without_description", "without_image", "unreadable_image")
UNREADABLE_KEY = b"mmclf.unreadable"
UNREADABLE_LISTED = 20  # unreadable images named in the result (all are counted)
OUTPUT_FORMATS = ("auto", "csv", "parquet")


@dataclass
class BatchPrediction:
    """What a file prediction wrote: the output, the probability table, the rows and their input counts."""

    output: Path
    probabilities: Path  # the probability table: beside a CSV output, the output itself for Parquet
    rows: int
    counts: dict  # rows, empty_title, without_description, without_image (unreadable ones included), unreadable_image
    unreadable: list  # the first UNREADABLE_LISTED rows whose image could not be read: (row, id, why), rows 1-based
    chunks: int
    resumed_chunks: int  # finished chunks of an interrupted run that were kept
    seconds: float


@dataclass
class Chunk:
    index: int
    first_row: int  # position of the chunk's first row in the input (0-based)
    data: object  # a canonical DataFrame (id?, title, description?, image?, image_id?, product_id?) or a Dataset

    def __len__(self) -> int:
        return len(self.data)


# --- reading ---------------------------------------------------------------------------------------------------

def canonical_frame(frame: pd.DataFrame, column_map: dict | None, where: str) -> pd.DataFrame:
    """A frame in the ENS or SIGIR layout, with canonical column names, or mapped by `column_map` (field -> column)
    -> columns id (when there is one), title, description, image, image_id, product_id."""
    if column_map:
        missing = [c for c in column_map.values() if c not in frame.columns]
        if missing:
            raise ValueError(f"{where}: --columns names column(s) {missing} that are not there; found {list(frame.columns)}")
        return pd.DataFrame({field: frame[column] for field, column in column_map.items()}, index=frame.index)
    by_lower = {str(c).strip().lower(): c for c in frame.columns}
    layout = detect_format(list(by_lower))
    wanted = dict(KNOWN_FORMATS[layout]["x"]) if layout else {f: f for f in ("id", "title", "description")}
    if layout == "ens":
        wanted["id"] = next((c for c in ("unnamed: 0", "__index_level_0__", "") if c in by_lower), "")
    wanted.update({f: f for f in ("image", "image_id", "product_id") if f not in wanted})
    found = {f: by_lower[c] for f, c in wanted.items() if c in by_lower}
    if "title" not in found:
        raise ValueError(f"{where}: no title column: expected the ENS layout (designation, description, productid, "
                         f"imageid), the SIGIR layout (Integer_id, Title, ...), columns title, description, image, "
                         f"or --columns title=COL,...; found {list(frame.columns)}")
    return pd.DataFrame({field: frame[column] for field, column in found.items()}, index=frame.index)


def _csv_chunks(path: Path, column_map: dict | None, chunk_rows: int) -> Iterator[pd.DataFrame]:
    features = read_features_file(path, column_map, chunk_rows=chunk_rows)
    for table in features.chunks():
        yield table.frame


def _parquet_chunks(path: Path, column_map: dict | None, chunk_rows: int) -> Iterator[pd.DataFrame]:
    first_row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
        frame = batch.to_pandas()
        if isinstance(frame.index, pd.RangeIndex):  # no stored index: ids are row numbers of the whole file
            frame.index = pd.RangeIndex(first_row, first_row + len(frame))
        yield canonical_frame(frame, column_map, str(path))
        first_row += len(frame)


def input_chunks(input=None, dataset=None, split: str = "test", columns=None,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[Chunk]:
    """The rows of a raw file (CSV/TSV/Parquet) or of a built dataset's split, `chunk_rows` at a time."""
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    column_map = parse_columns(columns) if isinstance(columns, str) else columns
    if dataset is not None:
        split_rows = load_split(dataset, split)
        for index, start in enumerate(range(0, len(split_rows), chunk_rows)):
            yield Chunk(index, start, split_rows.select(range(start, min(start + chunk_rows, len(split_rows)))))
        return
    path = Path(input)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    frames = (_parquet_chunks if path.suffix.lower() == ".parquet" else _csv_chunks)(path, column_map, chunk_rows)
    first_row = 0
    for index, frame in enumerate(frames):
        yield Chunk(index, first_row, frame)
        first_row += len(frame)


def load_split(dataset, split: str):
    from datasets import load_from_disk

    if not Path(dataset).is_dir():
        raise FileNotFoundError(f"dataset folder not found: {dataset}")
    splits = load_from_disk(str(dataset))
    if split not in splits:
        raise ValueError(f"{dataset} has no split {split!r}; it has {list(splits)}")
    return splits[split]


def estimated_rows(input=None, dataset=None, split: str = "test") -> int:
    """The number of rows to predict: exact for Parquet and datasets; for CSV the line count (a quoted line break
    counts twice), read at disk speed."""
    if dataset is not None:
        return len(load_split(dataset, split))
    path = Path(input)
    if path.suffix.lower() == ".parquet":
        return pq.ParquetFile(path).metadata.num_rows
    lines, last = 0, b"\n"
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            lines += block.count(b"\n")
            last = block[-1:]
    return max(lines - (last == b"\n"), 0)


def chunk_listings(data, images_dir=None, strict_images: bool = False, first_row: int = 0) -> Listings:
    """Listings of a canonical frame (or a Dataset): images found by the challenge naming under `images_dir`, one
    file check per row (listing a catalog's image folder for every chunk would cost more than the chunk); an empty
    image cell is a row without an image. An image that cannot be read (or leads out of `images_dir`) is predicted
    as a missing one and recorded, or is an error with `strict_images`."""
    if isinstance(data, pd.DataFrame) and "image" in data:
        data = data.assign(image=[None if isinstance(v, str) and not v.strip() else v for v in data["image"]])
    elif isinstance(data, pd.DataFrame) and images_dir is not None and {"image_id", "product_id"} <= set(data.columns):
        folder = Path(images_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"images folder not found: {folder}")
        names = [image_file_name(str(i), str(p)) for i, p in zip(data["image_id"], data["product_id"])]
        data = data.assign(image=[name if (folder / name).is_file() else None for name in names])
    listings = to_listings(data, images_dir)
    listings.on_unreadable_image = "error" if strict_images else "missing"
    listings.first_row = first_row
    return listings


class IdCheck:
    """Raises at the first empty id, and at the first id seen twice in the whole input, naming both rows. Holds a
    64-bit hash and the row of every id (16 bytes a row), not the ids."""

    def __init__(self, source: str):
        self.source = source
        self.hashes = np.empty(0, dtype=np.uint64)  # sorted
        self.rows = np.empty(0, dtype=np.int64)  # the row of each hash

    def add(self, ids: list[str], first_row: int) -> None:
        empty = next((row for row, sample_id in enumerate(ids) if not sample_id.strip()), None)
        if empty is not None:
            raise ValueError(f"{self.source}: row {first_row + empty + 1} has an empty id: every row needs one")
        hashes = np.concatenate([self.hashes, pd.util.hash_array(np.asarray(ids, dtype=object))])
        rows = np.concatenate([self.rows, np.arange(first_row, first_row + len(ids))])
        order = np.argsort(hashes, kind="stable")
        hashes, rows = hashes[order], rows[order]
        repeated = np.flatnonzero(hashes[1:] == hashes[:-1])
        if len(repeated):
            pairs = np.sort(np.stack([rows[repeated], rows[repeated + 1]], axis=1), axis=1)
            first, second = pairs[np.argmin(pairs[:, 1])]
            raise ValueError(f"{self.source}: duplicate id {ids[second - first_row]!r}: rows {first + 1} and {second + 1}")
        self.hashes, self.rows = hashes, rows


# --- the chunk folder ------------------------------------------------------------------------------------------

def describe(path) -> str:
    """A digest of a file's or a folder's files' names, sizes and modification times: it changes when they do."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        stat = file.stat()
        digest.update(f"{file.relative_to(path) if path.is_dir() else file.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def chunks_folder(output: Path) -> Path:
    return output.parent / f".{output.name}.chunks"


def chunk_path(folder: Path, index: int) -> Path:
    return folder / f"chunk-{index:06d}.parquet"


def open_chunks_folder(folder: Path, manifest: dict, resume: bool) -> None:
    """Keep the folder of an interrupted run of the same manifest when resuming; start afresh otherwise."""
    saved_file = folder / MANIFEST_FILE
    if folder.is_dir() and resume and saved_file.is_file():
        saved = json.loads(saved_file.read_text())
        changed = sorted(k for k in set(saved) | set(manifest) if saved.get(k) != manifest.get(k))
        if changed:
            raise ValueError(f"cannot resume the prediction into {folder}: it was made with other {', '.join(changed)}; "
                             "rerun without --resume to start afresh")
        return
    if folder.is_dir():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    saved_file.write_text(json.dumps(manifest, indent=2))


def probability_schema(class_names: list[str], source: str, counts: dict | None = None) -> pa.Schema:
    """A probability table (id, split, label, probs: `mmclf.probability_tables`) with each row's code and votes."""
    metadata = {CLASS_NAMES_KEY: json.dumps(class_names).encode(), SOURCE_KEY: source.encode()}
    if counts is not None:
        metadata[COUNTS_KEY] = json.dumps(counts).encode()
    return pa.schema([("id", pa.string()), ("split", pa.string()), ("label", pa.int64()),
                      ("probs", pa.list_(pa.float32(), len(class_names))), ("prdtypecode", pa.string()),
                      ("votes", pa.int64())], metadata=metadata)


def prediction_table(result: PipelinePrediction, schema: pa.Schema) -> pa.Table:
    rows, classes = result.probs.shape
    probs = pa.FixedSizeListArray.from_arrays(pa.array(result.probs.astype(np.float32).reshape(-1)), classes)
    return pa.Table.from_arrays([pa.array(result.ids, pa.string()), pa.array(["test"] * rows, pa.string()),
                                 pa.array(np.full(rows, -1), pa.int64()), probs,
                                 pa.array(result.codes, pa.string()), pa.array(result.votes, pa.int64())],
                                schema=schema)


def write_chunk(path: Path, result: PipelinePrediction, class_names: list[str], source: str,
                unreadable: list) -> None:
    counts = {name: int(result.counts[name]) for name in COUNT_NAMES}
    schema = probability_schema(class_names, source, counts)
    schema = schema.with_metadata({**schema.metadata, UNREADABLE_KEY: json.dumps(unreadable[:UNREADABLE_LISTED]).encode()})
    with staged_file(path) as staged:
        pq.write_table(prediction_table(result, schema), staged)


def chunk_counts(path: Path) -> tuple[dict, list]:
    """A finished chunk's input counts, and the rows it lists whose image could not be read."""
    metadata = pq.read_schema(path).metadata
    return json.loads(metadata[COUNTS_KEY]), json.loads(metadata.get(UNREADABLE_KEY, b"[]"))


def merge_chunks(folder: Path, chunks: int, output: Path, output_format: str) -> Path:
    """The chunks, in input order, as one Parquet file (and a submission CSV when `output_format` is csv), each
    written whole; returns the Parquet file."""
    table_path = output if output_format == "parquet" else output.with_suffix(".parquet")
    first = pq.read_schema(chunk_path(folder, 0))
    schema = first.with_metadata({k: v for k, v in first.metadata.items() if k not in (COUNTS_KEY, UNREADABLE_KEY)})
    with staged_file(table_path) as staged, pq.ParquetWriter(staged, schema) as writer:
        for index in range(chunks):
            writer.write_table(pq.read_table(chunk_path(folder, index)).replace_schema_metadata(schema.metadata))
    if output_format == "csv":
        with staged_file(output) as staged, open(staged, "w") as handle:
            for index in range(chunks):
                part = pq.read_table(chunk_path(folder, index), columns=["id", "prdtypecode"]).to_pandas()
                # the challenge's submission format: the id as an unnamed index column, then prdtypecode
                part.set_index(pd.Index(part["id"], name=""))[["prdtypecode"]].to_csv(handle, header=index == 0)
    return table_path


# --- the stage -------------------------------------------------------------------------------------------------

class OneProcess:
    """The process state of a plain (not launched) run."""

    num_processes, process_index, is_main_process, device = 1, 0, True, None

    def wait_for_everyone(self) -> None:
        pass


def launched_state():
    """Accelerate's process state under a multi-process launch (which sets WORLD_SIZE), else `OneProcess`: a
    plain run skips Accelerate's start-up (about a second, a fifth of a 10,000-row prediction)."""
    return process_state() if int(os.environ.get("WORLD_SIZE", "1")) > 1 else OneProcess()


def output_format_of(output: Path, output_format: str) -> str:
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"format must be one of {list(OUTPUT_FORMATS)}, got {output_format!r}")
    if output_format == "auto":
        return "parquet" if output.suffix.lower() == ".parquet" else "csv"
    return output_format


def predict_file(pipeline, output, *, input=None, dataset=None, split: str = "test", images=None, columns=None,
                 batch_size: int = 64, device=None, allow_missing_images: bool = False, strict_images: bool = False,
                 progress: bool = True,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS, resume: bool = False, output_format: str = "auto",
                 revision: str | None = None) -> BatchPrediction:
    """Predictions of every row of a raw file (`input`: CSV/TSV with its `images` folder and `columns` mapping,
    or Parquet) or of a built dataset's `split`, streamed chunk by chunk into `output`: a submission CSV with the
    probability table beside it (.parquet), or (`output_format` parquet, or a .parquet name) one Parquet file
    with ids, codes, votes and probabilities. `pipeline`: a MultimodalPipeline, a folder or an `owner/name` Hub
    id (at `revision`). `resume`: keep the finished chunks of an interrupted run of the same command. An image
    that cannot be read is predicted as a missing one, counted and listed (`strict_images`: an error instead)."""
    if (input is None) == (dataset is None):
        raise ValueError("give either an input file or a dataset to predict")
    started = time.perf_counter()
    output = Path(output)
    output_format = output_format_of(output, output_format)
    if isinstance(pipeline, MultimodalPipeline):
        loaded, source, pipeline_files = pipeline, "pipeline", None  # an object in memory: trusted to be the same
        if device is not None:
            loaded.to(device)
    else:
        loaded, source, pipeline_files = None, str(pipeline), describe(local_or_hub(pipeline, revision))
    state = launched_state()
    if device is None and state.num_processes > 1:
        device = state.device
    if dataset is not None:
        load_split(dataset, split)  # the split exists
    source_path = input if input is not None else Path(dataset) / split
    manifest = {"input": str(Path(source_path).resolve()), "input_files": describe(source_path),
                "pipeline": source, "pipeline_files": pipeline_files, "split": split if dataset is not None else None,
                "columns": columns, "images": str(images) if images is not None else None, "chunk_rows": chunk_rows,
                "batch_size": batch_size, "format": output_format, "strict_images": strict_images}
    folder = chunks_folder(output)
    if state.is_main_process:
        open_chunks_folder(folder, manifest, resume)
    state.wait_for_everyone()
    resumed = len(list(folder.glob("chunk-*.parquet")))
    state.wait_for_everyone()  # every process has counted before any writes

    mine = estimated_rows(input, dataset, split) // state.num_processes
    bar = progress_bar(total=mine, unit="rows", desc="predict", disable=not (progress and state.is_main_process))
    ids, chunks = IdCheck(str(input or f"{dataset} split {split}")), 0
    try:
        for chunk in input_chunks(input, dataset, split, columns, chunk_rows):
            chunks += 1
            listings = chunk_listings(chunk.data, images, strict_images, chunk.first_row)
            ids.add(listings.ids, chunk.first_row)
            path = chunk_path(folder, chunk.index)
            if chunk.index % state.num_processes != state.process_index:
                continue
            if path.is_file():
                bar.total = max(bar.total - len(chunk), bar.n)
                continue
            if loaded is None:
                loaded = MultimodalPipeline.from_pretrained(pipeline, revision=revision, device=device)
            check_images(loaded, listings, chunk, chunk_rows, allow_missing_images)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the missing-image warning is handled by check_images
                result = loaded.predict_details(listings, batch_size)
            unreadable = [(chunk.first_row + row + 1, listings.ids[row], why) for row, why in sorted(listings.unreadable.items())]
            write_chunk(path, result, loaded.class_names, source, unreadable)
            bar.update(len(chunk))
        if chunks == 0:
            raise ValueError(f"{input or dataset} has no rows to predict")
    except (ValueError, FileNotFoundError):
        # bad input: the chunks predicted so far cannot be resumed from once the input is fixed (it changed)
        if state.is_main_process:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        bar.close()
    state.wait_for_everyone()  # every chunk is written
    counts, unreadable = {name: 0 for name in COUNT_NAMES}, []
    for index in range(chunks):
        chunk_total, chunk_unreadable = chunk_counts(chunk_path(folder, index))
        for name, value in chunk_total.items():
            counts[name] += value
        unreadable += chunk_unreadable[:UNREADABLE_LISTED - len(unreadable)]
    state.wait_for_everyone()  # every process has read the counts before the folder goes
    table_path = output if output_format == "parquet" else output.with_suffix(".parquet")
    if state.is_main_process:
        merge_chunks(folder, chunks, output, output_format)
        shutil.rmtree(folder)
    state.wait_for_everyone()
    return BatchPrediction(output, table_path, counts["rows"], counts, [tuple(u) for u in unreadable], chunks, resumed,
                           time.perf_counter() - started)


def check_images(pipeline: MultimodalPipeline, listings: Listings, chunk: Chunk, chunk_rows: int,
                 allow_missing_images: bool) -> None:
    """A pipeline with an image expert refuses a first chunk without any image (most often a missing images folder)."""
    if chunk.index or allow_missing_images or not pipeline.uses_images:
        return
    counts = listings.counts()
    if counts["without_image"] == counts["rows"]:
        rows = f"the first {counts['rows']} rows have" if counts["rows"] == chunk_rows else f"the {counts['rows']} rows has"
        raise ValueError(f"none of {rows} an image (is the images folder missing?); this pipeline's image expert "
                         "would see only blank images. Allow missing images to predict anyway")
