"""Raw catalog files -> a cleaned, split `datasets.DatasetDict` on disk (`mmclf build-dataset`).

Finds images by the challenge naming `image_<imageid>_product_<productid>.jpg`; checks every image; cleans
text; splits train/validation stratified by label; writes a summary.

Policy for bad input (documented in README):
- structural problems (missing columns, X/Y ids that do not match, duplicate ids, missing or
  unknown labels, label codes in fewer than `min_class_rows` rows, undecodable bytes, a file with
  no rows, a missing images folder) stop the build with an error that names the file, the row
  and the column;
- rows whose title is empty after cleaning are rejected, counted and listed in the summary;
- missing images are normal: the row keeps `image=None`, `has_image=False`;
- unreadable or truncated images are treated as missing, counted and listed (or are an error
  with `--strict-images`); non-RGB images are kept and decoded as RGB (`Image(mode="RGB")`).

With an output folder, the dataset and its summary are written to `.NAME.partial-PID-*` beside it and renamed
into place only when complete: a folder named NAME is a complete dataset, and a killed build leaves the old one
(with `overwrite`, a kill between setting the old one aside and renaming the new one in leaves it in the partial
folder, and the next build puts it back). Partial folders of builds that no longer run are removed by the next.
Every built dataset holds `mmclf_dataset.json`; `overwrite` replaces only a folder that holds it.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mmclf.data.readers import (
    CHUNK_ROWS,
    FeaturesFile,
    RawTable,
    attach_labels,
    check_ids,
    normalise_codes,
    read_features_file,
    read_labels_file,
)
from mmclf.data.rows import LIST_LIMIT, ImageCheck, locate_images, prepare_rows, sorted_codes, to_dataset
from mmclf.rundir import remove_stale_partials, staged_folder

SCRATCH = ".parts"  # chunks read so far, inside the staged dataset folder until the dataset is saved
DATASET_MARKER = "mmclf_dataset.json"  # in every built dataset: what `overwrite` may replace


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

    def label_tables(self):
        """The tables holding this source's labels: the Y file, or the X file's chunks."""
        if self.labels is not None:
            return [self.labels]
        return self.features.chunks() if "label" in self.features.source_columns else []

    def label_counts(self) -> dict:
        counts = {}
        for table in self.label_tables():
            for code, n in table.frame["label"].value_counts().items():
                counts[code] = counts.get(code, 0) + int(n)
        counts.pop("", None)
        return counts

    def label_path_and_column(self) -> tuple[Path, str]:
        if self.labels is not None:
            return self.labels.path, self.labels.source_columns["label"]
        return self.features.path, self.features.source_columns["label"]

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


def _check_rare_codes(source: Source, counts: dict, class_names: list[str], min_rows: int) -> None:
    """Refuse label codes found in fewer than `min_rows` rows (`counts`: code -> rows), naming where they are: a
    typo in a few rows would otherwise become a class of its own. Codes outside `class_names` are left to the
    unknown-label check."""
    rare = {code: n for code, n in counts.items() if n < min_rows and code in class_names}
    if not rare:
        return
    rows = _code_rows(source, rare)
    path, column = source.label_path_and_column()
    listed = "; ".join(f"{code!r} in {n} row{'s' if n > 1 else ''} ({', '.join(rows[code])}{', ...' if n > 5 else ''})"
                       for code, n in sorted(rare.items(), key=lambda item: item[1])[:10])
    raise ValueError(
        f"{path}, column {column!r}: {len(rare)} label code(s) in fewer than {min_rows} rows (--min-class-rows; a "
        f"stratified split needs 2 rows per class): {listed}{' ...' if len(rare) > 10 else ''}. Fix these codes in "
        "the file, or pass --classes with the expected codes to refuse unknown ones"
    )


def _code_rows(source: Source, codes, limit: int = 5) -> dict:
    """code -> 'row N (id X)' of its first `limit` rows in the source's label file."""
    rows = {code: [] for code in codes}
    for table in source.label_tables():
        for row in np.flatnonzero(table.frame["label"].isin(rows.keys()).to_numpy()):
            found = rows[table.frame["label"].iat[row]]
            if len(found) < limit:
                sample_id = f" (id {table.frame['id'].iat[row]!r})" if "id" in table.frame else ""
                found.append(f"row {table.first_row + row + 1}{sample_id}")
    return rows


def rare_codes(source: Source, min_rows: int) -> dict:
    """Codes that look like mistakes, with their rows: under `min_rows` rows or under 1 % of the median class, or
    not an integer where the other codes are (a typo such as `27O5`). Reported in the summary for every split."""
    counts = source.label_counts()
    if not counts:
        return {}
    median = float(np.median(list(counts.values())))
    integers = sum(code.lstrip("-").isdigit() for code in counts) > len(counts) / 2
    suspect = {code: n for code, n in counts.items()
               if n < max(min_rows, median / 100) or (integers and not code.lstrip("-").isdigit())}
    rows = _code_rows(source, suspect)
    path, column = source.label_path_and_column()
    return {code: {"rows": n, "first_rows": rows[code], "file": str(path), "column": column}
            for code, n in sorted(suspect.items(), key=lambda item: item[1])}


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
        check_ids(table, seen_ids)
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
                                 f"{table.source_columns['label']!r}); known classes ({options['class_origin']}): "
                                 f"{class_names}")
        source.rows += len(table.frame)
        table.frame = prepare_rows(table, rejected)
        paths = locate_images(table, source.images_dir, present, source.check, options["workers"],
                              options["strict_images"])
        part = to_dataset(table.frame, paths, class_names)
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
    return concatenate_datasets(parts)


def _check_out(out: Path, overwrite: bool) -> None:
    remove_stale_partials(out)  # puts back a dataset set aside by an overwrite killed half-way
    if not (out.exists() or out.is_symlink()) or (out.is_dir() and not any(out.iterdir())):
        return
    if not overwrite:
        raise ValueError(f"{out} already exists; pass --overwrite to replace it")
    if out.is_symlink() or not (out / DATASET_MARKER).is_file():
        raise ValueError(f"{out} is not a dataset folder built by mmclf (no {DATASET_MARKER}): --overwrite "
                         "replaces only a dataset; choose another --out or remove it yourself")


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
    min_class_rows: int = 2,
    overwrite: bool = False,
):
    """Build the DatasetDict; save it and its summary to `out_dir` when given. Returns (dataset_dict, summary).

    An existing `out_dir` is an error unless `overwrite`, then replaced whole. Everything is written to a partial
    folder beside `out_dir`, renamed into place when complete. Rows are read and checked `chunk_rows` at a time;
    with `out_dir`, each chunk is written to the partial folder, so memory does not grow with the number of rows."""
    from datasets import DatasetDict, Image, load_from_disk

    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {validation_fraction}")
    if min_class_rows < 2:
        raise ValueError(f"--min-class-rows must be at least 2 (a stratified split needs 2 rows per class), "
                         f"got {min_class_rows}")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        _check_out(out, overwrite)
    options = {"columns": columns, "encoding": encoding, "encoding_errors": encoding_errors, "workers": workers,
               "strict_images": strict_images, "chunk_rows": chunk_rows}
    sources = {"main": _open_source(features_file, labels_file, images_dir, options)}
    if test_file:
        sources["test"] = _open_source(test_file, test_labels_file, test_images_dir or images_dir, options)
    if not sources["main"].labelled and "test" in sources:
        raise ValueError("an unlabelled main file already forms the test split; do not also pass --test")
    main = sources["main"]
    counts = main.label_counts() if main.labelled else {}
    if classes:
        class_names, options["class_origin"] = [str(c) for c in classes], "--classes"
        repeated = sorted({c for c in class_names if class_names.count(c) > 1})
        if repeated:
            raise ValueError(f"--classes lists {repeated} more than once")
    else:  # the main file's codes; a test file's labels must be among them
        class_names, options["class_origin"] = sorted_codes(counts), f"the codes of {main.features.path}"
    _check_rare_codes(main, counts, class_names, min_class_rows)

    with contextlib.ExitStack() as stack:
        # _check_out has refused what must not be replaced; the dataset is written into `staged`, renamed to `out`
        staged = stack.enter_context(staged_folder(out, replace=True)) if out is not None else None
        rejected, seen_ids, read = {}, {}, {}
        for name, source in sources.items():
            scratch = staged / SCRATCH / name if staged else None
            if scratch:
                scratch.mkdir(parents=True)
            check_classes = bool(classes) or name == "test"
            read[name] = _read_source(source, class_names, check_classes, seen_ids, rejected, options, scratch)
            read[name] = read[name].cast_column("image", Image(mode="RGB"))

        splits = {}
        if sources["main"].labelled:
            full = read["main"]
            label_ids = np.asarray(full.data.column("label"))
            too_small = np.flatnonzero(np.bincount(label_ids, minlength=len(class_names)) == 1)  # after rejections
            if len(too_small):
                ids = [full.data.column("id")[int(np.flatnonzero(label_ids == i)[0])].as_py() for i in too_small[:10]]
                raise ValueError(f"classes {[class_names[i] for i in too_small[:10]]} keep a single row (ids {ids}) "
                                 "once rows with an empty title are rejected: a stratified split needs 2")
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
        summary["rare_codes"] = {name: rare for name, source in sources.items()
                                 if source.labelled and (rare := rare_codes(source, min_class_rows))}
        if staged is not None:
            dataset.save_to_disk(str(staged))
            (staged / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
            (staged / "summary.md").write_text(summary_markdown(summary))
            (staged / DATASET_MARKER).write_text(json.dumps({"format": "mmclf-dataset", "version": 1,
                                                             "splits": list(dataset), "classes": class_names}))
            shutil.rmtree(staged / SCRATCH)  # the chunks the dataset was read from: it is saved whole now
    if out is not None:
        dataset = load_from_disk(str(out))  # the parts it was read from are gone
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
    for name, codes in summary.get("rare_codes", {}).items():
        lines.append(f"Rare or odd label codes ({name}; check them for typos):")
        lines += [f"  - {code!r}: {info['rows']:,} row(s), {', '.join(info['first_rows'])}" for code, info in codes.items()]
    total_rejected = sum(r["count"] for r in summary["rows_rejected"].values())
    lines.append(f"Rows rejected: {total_rejected:,}")
    for reason, info in summary["rows_rejected"].items():
        lines.append(f"  - {reason}: {info['count']:,} (ids {', '.join(info['ids'])}{' ...' if info['count'] > len(info['ids']) else ''})")
    return "\n".join(lines) + "\n"



def parse_classes(text: str | None) -> list[str] | None:
    """Codes normalised as in the files (`2705.0` -> `2705`)."""
    if not text:
        return None
    path = Path(text)
    codes = path.read_text().splitlines() if path.is_file() else text.split(",")
    return normalise_codes(pd.Series(codes, dtype=str)).loc[lambda c: c != ""].tolist()
