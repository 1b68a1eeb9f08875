"""Probability tables: the contract between experts and fusion.

A table is one Parquet file: one row per sample id with the split it belongs to, its label
index (-1 when unknown) and a float32 vector over the label set. The class order and the
producing model are stored in the file's schema metadata, so a table read back alone is
complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmclf.rundir import staged_file

CLASS_NAMES_KEY = b"mmclf.class_names"
SOURCE_KEY = b"mmclf.source"


class TableMismatchError(ValueError):
    """Tables that cannot be combined: their ids, splits, labels or class order disagree."""


@dataclass
class ProbabilityTable:
    ids: list[str]
    splits: list[str]
    labels: np.ndarray  # int64, -1 where unknown
    probs: np.ndarray  # float32 [rows, classes]
    class_names: list[str]
    source: str = ""
    path: str | None = field(default=None, compare=False)

    def __post_init__(self):
        self.ids = [str(i) for i in self.ids]
        self.splits = [str(s) for s in self.splits]
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.probs = np.asarray(self.probs, dtype=np.float32)
        n = len(self.ids)
        if self.probs.ndim != 2 or self.probs.shape[0] != n:
            raise ValueError(f"probs must have shape [{n}, classes], got {self.probs.shape}")
        if self.probs.shape[1] != len(self.class_names):
            raise ValueError(f"probs has {self.probs.shape[1]} columns but {len(self.class_names)} class names")
        if len(self.splits) != n or len(self.labels) != n:
            raise ValueError("ids, splits, labels and probs must have the same number of rows")
        if len(set(self.ids)) != n:
            raise ValueError(f"duplicate sample ids in probability table {self.name}")

    @property
    def name(self) -> str:
        return self.path or self.source or "<table>"

    @property
    def expert_name(self) -> str:
        """The producing expert's name: the source up to its first '/' (an expert run writes its directory's
        name, fold tables `NAME/folds/i`)."""
        return self.source.split("/")[0] if self.source else Path(self.path or "table").stem

    def renamed(self, source: str) -> ProbabilityTable:
        return ProbabilityTable(self.ids, self.splits, self.labels, self.probs, self.class_names, source, self.path)

    def __len__(self) -> int:
        return len(self.ids)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        num_classes = self.probs.shape[1]
        flat = pa.array(self.probs.reshape(-1), type=pa.float32())
        table = pa.table(
            {
                "id": pa.array(self.ids, type=pa.string()),
                "split": pa.array(self.splits, type=pa.string()),
                "label": pa.array(self.labels, type=pa.int64()),
                "probs": pa.FixedSizeListArray.from_arrays(flat, num_classes),
            }
        )
        table = table.replace_schema_metadata(
            {CLASS_NAMES_KEY: json.dumps(self.class_names).encode(), SOURCE_KEY: self.source.encode()}
        )
        with staged_file(path) as staged:  # whole or not at all
            pq.write_table(table, staged)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ProbabilityTable:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"probability table not found: {path}")
        table = pq.read_table(path)
        meta = table.schema.metadata or {}
        missing = {"id", "split", "label", "probs"} - set(table.column_names)
        if missing or CLASS_NAMES_KEY not in meta:
            raise TableMismatchError(
                f"{path} is not an mmclf probability table (missing columns {sorted(missing)} or class names)"
            )
        class_names = json.loads(meta[CLASS_NAMES_KEY])
        probs_column = table.column("probs").combine_chunks()
        probs = probs_column.values.to_numpy(zero_copy_only=False).reshape(len(table), len(class_names))
        return cls(
            ids=table.column("id").to_pylist(),
            splits=table.column("split").to_pylist(),
            labels=table.column("label").to_numpy(),
            probs=probs,
            class_names=class_names,
            source=meta.get(SOURCE_KEY, b"").decode(),
            path=str(path),
        )

    def select(self, rows) -> ProbabilityTable:
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return ProbabilityTable(
            ids=[self.ids[i] for i in rows],
            splits=[self.splits[i] for i in rows],
            labels=self.labels[rows],
            probs=self.probs[rows],
            class_names=list(self.class_names),
            source=self.source,
            path=self.path,
        )

    def split_rows(self, *splits: str) -> ProbabilityTable:
        return self.select(np.array([s in splits for s in self.splits], dtype=bool))

    def predictions(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


def align_tables(tables: list[ProbabilityTable]) -> list[ProbabilityTable]:
    """Return the tables with rows in the first table's id order, or raise TableMismatchError.

    Tables must share the class order, the id set, and each id's split and label.
    """
    if not tables:
        raise TableMismatchError("no probability tables given")
    first = tables[0]
    aligned = [first]
    for other in tables[1:]:
        if other.class_names != first.class_names:
            raise TableMismatchError(
                f"class order differs between {first.name} and {other.name}: "
                f"{first.class_names[:5]}... vs {other.class_names[:5]}..."
            )
        position = {sample_id: i for i, sample_id in enumerate(other.ids)}
        missing = [i for i in first.ids if i not in position]
        extra = set(other.ids) - set(first.ids)
        if missing or extra:
            raise TableMismatchError(
                f"sample ids differ between {first.name} and {other.name}: "
                f"{len(missing)} only in the first (e.g. {missing[:3]}), "
                f"{len(extra)} only in the second (e.g. {sorted(extra)[:3]})"
            )
        reordered = other.select([position[i] for i in first.ids])
        bad_split = [i for i, (a, b) in enumerate(zip(first.splits, reordered.splits)) if a != b]
        if bad_split:
            i = bad_split[0]
            raise TableMismatchError(
                f"split differs for {len(bad_split)} ids between {first.name} and {other.name}, "
                f"e.g. id {first.ids[i]!r}: {first.splits[i]!r} vs {reordered.splits[i]!r}"
            )
        bad_label = np.flatnonzero(first.labels != reordered.labels)
        if len(bad_label):
            i = bad_label[0]
            raise TableMismatchError(
                f"label differs for {len(bad_label)} ids between {first.name} and {other.name}, "
                f"e.g. id {first.ids[i]!r}: {first.labels[i]} vs {reordered.labels[i]}"
            )
        aligned.append(reordered)
    return aligned


def check_expert_classes(expert_names: list[str], class_names: list[str], names_and_classes: dict[str, list[str]],
                         where: str) -> None:
    """Raise unless every expert a fusion needs is among `names_and_classes`, with the fusion's class order."""
    missing = [name for name in expert_names if name not in names_and_classes]
    if missing:
        raise TableMismatchError(f"{where}: the fusion was trained on experts {expert_names}; "
                                 f"missing {missing} (given: {sorted(names_and_classes)})")
    for name in expert_names:
        if list(names_and_classes[name]) != list(class_names):
            raise TableMismatchError(f"{where}: class order of expert {name!r} differs from the fusion's: "
                                     f"{list(names_and_classes[name])[:5]}... vs {list(class_names)[:5]}...")
