"""Prediction on a Ray cluster (`pip install "mmclf[ray]"`): Ray Data reads the files, spreads the batches over
actors that each load the pipeline once, and writes the results with its own writers.

    import ray
    from mmclf.ray import predict_dataset
    ray.init()                                    # or ray.init(address="auto") on a cluster node
    predict_dataset("demo_out/pipeline", "catalog/part-*.csv", "predictions/", images="/shared/images",
                    concurrency=8, num_gpus=1)

or, in a Ray Data program of your own:

    from mmclf.ray import RayPredictor
    predictions = dataset.map_batches(RayPredictor, fn_constructor_kwargs={"pipeline": "owner/name"},
                                      batch_format="pandas", batch_size=1024,
                                      compute=ray.data.ActorPoolStrategy(size=4))

Rows need an id column (ENS: the unnamed first column, SIGIR: Integer_id, or `id`): batches carry no row numbers.
Image files are read by the actors, so `images` must be a path every node sees (a shared or mounted folder).
Ray is imported inside the functions only: the rest of mmclf never needs it.
"""

from __future__ import annotations

import glob
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from mmclf.batch_predict import canonical_frame, chunk_listings
from mmclf.data.readers import parse_columns
from mmclf.pipeline import MultimodalPipeline

OUTPUT_FORMATS = ("parquet", "csv")


class RayPredictor:
    """A `map_batches` callable class: loads the pipeline (folder or Hub id, at `revision`) once per actor, on
    `device` (default: "cuda" when the actor was given a GPU, else "cpu"), and maps a pandas batch of listings to
    columns id, prdtypecode, votes and probs (the mean fused probabilities, in `class_names` order)."""

    def __init__(self, pipeline, revision: str | None = None, device: str | None = None, images: str | None = None,
                 columns=None, batch_size: int = 64):
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"  # Ray shows an actor only the GPUs it was given
        self.pipeline = MultimodalPipeline.from_pretrained(pipeline, revision=revision, device=device)
        self.class_names = self.pipeline.class_names
        self.images, self.batch_size = images, batch_size
        self.columns = parse_columns(columns) if isinstance(columns, str) else columns

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        frame = canonical_frame(batch, self.columns, "a Ray batch")
        if "id" not in frame:
            raise ValueError(f"a Ray batch has no id column (found {list(batch.columns)}): rows need ids to be told "
                             "apart; use the ENS or SIGIR layout, an `id` column, or --columns id=COL,...")
        frame["id"] = frame["id"].astype(str)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a batch without images is the data's business, counted by the caller
            result = self.pipeline.predict_details(chunk_listings(frame, self.images), self.batch_size)
        return pd.DataFrame({"id": result.ids, "prdtypecode": result.codes, "votes": result.votes.astype(np.int64),
                             "probs": list(result.probs.astype(np.float32))})


def read_files(paths):
    """A `ray.data.Dataset` of CSV/TSV or Parquet files (a glob, a file, or a list of them), every CSV column read as
    text (ids such as 0042 stay as written)."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    import ray.data

    patterns = [paths] if isinstance(paths, (str, Path)) else list(paths)
    files = sorted({f for pattern in patterns for f in (glob.glob(str(pattern)) or [str(pattern)])})
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"input file(s) not found: {missing[:5]}")
    suffixes = {Path(f).suffix.lower() for f in files}
    if suffixes == {".parquet"}:
        return ray.data.read_parquet(files)
    if ".parquet" in suffixes:
        raise ValueError(f"mix of Parquet and CSV files in {patterns}: give one kind")
    delimiter = "\t" if suffixes == {".tsv"} else ","
    header = pd.read_csv(files[0], sep=delimiter, nrows=0).columns
    names = ["" if str(c).startswith("Unnamed: 0") else str(c) for c in header]
    return ray.data.read_csv(
        files, parse_options=pa_csv.ParseOptions(delimiter=delimiter),
        read_options=pa_csv.ReadOptions(column_names=names, skip_rows=1),
        convert_options=pa_csv.ConvertOptions(column_types={n: pa.string() for n in names},
                                              strings_can_be_null=False))


def predict_dataset(pipeline, data, output, *, revision: str | None = None, images: str | None = None,
                    columns=None, output_format: str = "parquet", batch_size: int = 64, rows_per_batch: int = 1024,
                    concurrency: int = 1, num_cpus: float = 1, num_gpus: float = 0, device: str | None = None):
    """Predictions of a `ray.data.Dataset` (or a glob / list of CSV, TSV or Parquet files) by `concurrency` actors
    holding the pipeline (each with `num_cpus` and `num_gpus`: leave CPUs free for reading and writing), written by
    Ray's writer into the folder `output` (Parquet: id, prdtypecode, votes, probs; CSV: id, prdtypecode), rows in
    input order. Returns the output folder."""
    import ray.data

    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format must be one of {list(OUTPUT_FORMATS)}, got {output_format!r}")
    if not isinstance(data, ray.data.Dataset):
        data = read_files(data)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    predicted = data.map_batches(
        RayPredictor, fn_constructor_kwargs={"pipeline": str(pipeline), "revision": revision, "device": device,
                                             "images": images, "columns": columns, "batch_size": batch_size},
        batch_format="pandas", batch_size=rows_per_batch, compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=num_cpus, num_gpus=num_gpus)
    if output_format == "csv":
        predicted.select_columns(["id", "prdtypecode"]).write_csv(str(output))
    else:
        predicted.write_parquet(str(output))
    return Path(output)
