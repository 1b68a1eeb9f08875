"""Streaming `predict`: chunked equals one pass over the whole file for every input format; a run killed after
some chunks and resumed writes the same bytes as an uninterrupted one, and nothing partial ever sits at the output
path; 2 CPU processes under `accelerate launch` write the same bytes as 1."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from datasets import load_from_disk
from threadpoolctl import threadpool_limits

from mmclf import MultimodalPipeline, batch_predict
from mmclf.batch_predict import IdCheck, chunks_folder, predict_file
from mmclf.cli import main
from mmclf.probability_tables import ProbabilityTable
from mmclf.testing import save_dataset_dict

FIXTURE = Path(__file__).parent / "fixtures" / "pipeline_v0_1"
IMAGES = FIXTURE / "images"


@pytest.fixture(scope="module")
def pipeline():
    return MultimodalPipeline.from_pretrained(FIXTURE / "pipeline")


@pytest.fixture(scope="module")
def ens(tmp_path_factory) -> Path:
    """17 rows in the ENS layout: the fixture's 12 rows and 5 of them again with new ids (images still found)."""
    raw = pd.read_csv(FIXTURE / "X_test.csv", dtype=str, keep_default_na=False)
    rows = pd.concat([raw] * 2, ignore_index=True).iloc[:17]
    rows["Unnamed: 0"] = [f"x{i}" for i in range(len(rows))]
    path = tmp_path_factory.mktemp("ens") / "X.csv"
    rows.rename(columns={"Unnamed: 0": ""}).to_csv(path, index=False)
    return path


def whole_file(pipeline, frame, images=IMAGES, batch_size=2):
    return pipeline.predict_details(frame, batch_size=batch_size, images_dir=images)


def predicted(output: Path) -> ProbabilityTable:
    return ProbabilityTable.load(output.with_suffix(".parquet"))


def assert_same_predictions(output: Path, reference, atol=1e-6):
    table = predicted(output)
    assert table.ids == reference.ids
    np.testing.assert_allclose(table.probs, reference.probs, atol=atol)
    codes = pd.read_parquet(output.with_suffix(".parquet"))["prdtypecode"].tolist()
    assert codes == reference.codes
    if output.suffix == ".csv":
        submission = pd.read_csv(output, dtype=str, keep_default_na=False)
        assert submission.columns.tolist() == ["Unnamed: 0", "prdtypecode"]
        assert submission["Unnamed: 0"].tolist() == reference.ids and submission["prdtypecode"].tolist() == reference.codes


@pytest.mark.filterwarnings("ignore:none of the")
def test_chunked_prediction_equals_one_pass_for_every_input_format(pipeline, ens, tmp_path):
    raw = pd.read_csv(ens, dtype=str, keep_default_na=False).iloc[:9]
    raw.rename(columns={"Unnamed: 0": ""}).to_csv(tmp_path / "X.csv", index=False)
    reference = whole_file(pipeline, raw)
    assert len(reference.ids) == 9 and reference.counts["without_image"] == 2
    # ENS CSV, chunks a multiple of the batch size and not
    for chunk_rows in (4, 3):
        out = tmp_path / f"ens{chunk_rows}.csv"
        result = predict_file(pipeline, out, input=tmp_path / "X.csv", images=IMAGES, batch_size=2,
                              chunk_rows=chunk_rows, progress=False)
        assert (result.rows, result.chunks, result.resumed_chunks) == (9, -(-9 // chunk_rows), 0)
        assert result.counts == reference.counts
        assert_same_predictions(out, reference)
        assert not chunks_folder(out).exists()
    # SIGIR TSV
    sigir = raw.rename(columns={"Unnamed: 0": "Integer_id", "designation": "Title", "description": "Description",
                                "productid": "Product_id", "imageid": "Image_id"})
    sigir.to_csv(tmp_path / "X.tsv", sep="\t", index=False)
    predict_file(pipeline, tmp_path / "sigir.csv", input=tmp_path / "X.tsv", images=IMAGES, batch_size=2,
                 chunk_rows=4, progress=False)
    assert_same_predictions(tmp_path / "sigir.csv", reference)
    # a generic CSV with a column mapping (image paths relative to the images folder)
    generic = pd.DataFrame({"sku": raw["Unnamed: 0"], "name": raw["designation"], "text": raw["description"],
                            "photo": [f"image_{i}_product_{p}.jpg" if (IMAGES / f"image_{i}_product_{p}.jpg").is_file()
                                      else "" for i, p in zip(raw["imageid"], raw["productid"])]})
    generic.to_csv(tmp_path / "generic.csv", index=False)
    predict_file(pipeline, tmp_path / "generic.csv.out.csv", input=tmp_path / "generic.csv", images=IMAGES,
                 columns="id=sku,title=name,description=text,image=photo", batch_size=2, chunk_rows=4, progress=False)
    assert_same_predictions(tmp_path / "generic.csv.out.csv", reference)
    # Parquet in, Parquet out (one file: ids, codes, votes, probabilities)
    sigir.to_parquet(tmp_path / "X.parquet", index=False)
    result = predict_file(pipeline, tmp_path / "out.parquet", input=tmp_path / "X.parquet", images=IMAGES,
                          batch_size=2, chunk_rows=4, progress=False)
    assert result.probabilities == tmp_path / "out.parquet" and not (tmp_path / "out.csv").exists()
    assert_same_predictions(tmp_path / "out.parquet", reference)
    assert pd.read_parquet(tmp_path / "out.parquet")["votes"].tolist() == reference.votes.tolist()


@pytest.mark.filterwarnings("ignore:none of the")
def test_a_dataset_split_predicts_chunk_by_chunk(pipeline, tmp_path):
    dataset = save_dataset_dict(tmp_path / "ds", train_rows=8, validation_rows=4, test_rows=11, missing_every=4)
    reference = whole_file(pipeline, load_from_disk(str(dataset))["test"], images=None)
    result = predict_file(pipeline, tmp_path / "test.csv", dataset=dataset, split="test", batch_size=2,
                          chunk_rows=4, progress=False)
    assert (result.rows, result.chunks, result.counts["without_image"]) == (11, 3, 2)
    assert_same_predictions(tmp_path / "test.csv", reference)
    with pytest.raises(ValueError, match="has no split 'nope'"):
        predict_file(pipeline, tmp_path / "x.csv", dataset=dataset, split="nope", progress=False)


class Killed(Exception):
    pass


def test_a_killed_run_resumes_and_writes_the_bytes_of_an_uninterrupted_one(pipeline, ens, tmp_path, monkeypatch):
    options = {"input": ens, "images": IMAGES, "batch_size": 5, "chunk_rows": 5, "progress": False}
    predict_file(pipeline, tmp_path / "whole" / "sub.csv", **options)
    out = tmp_path / "run" / "sub.csv"

    write, written = batch_predict.write_chunk, []

    def write_then_die(path, *args):
        assert not out.exists() and not out.with_suffix(".parquet").exists()  # nothing partial at the output path
        if len(written) == 2:
            raise Killed
        write(path, *args)
        written.append(path.name)

    monkeypatch.setattr(batch_predict, "write_chunk", write_then_die)
    with pytest.raises(Killed):
        predict_file(pipeline, out, **options)
    assert sorted(p.name for p in out.parent.iterdir()) == [".sub.csv.chunks"]
    assert sorted(p.name for p in chunks_folder(out).glob("chunk-*")) == ["chunk-000000.parquet", "chunk-000001.parquet"]

    monkeypatch.setattr(batch_predict, "write_chunk", write)
    calls = []
    monkeypatch.setattr(pipeline, "predict_details", lambda listings, *a, **k: calls.append(len(listings)) or
                        MultimodalPipeline.predict_details(pipeline, listings, *a, **k))
    result = predict_file(pipeline, out, resume=True, **options)
    assert calls == [5, 2] and (result.resumed_chunks, result.rows) == (2, 17)  # only the missing chunks
    for name in ("sub.csv", "sub.parquet"):
        assert (out.parent / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    assert sorted(p.name for p in out.parent.iterdir()) == ["sub.csv", "sub.parquet"]


def test_resume_refuses_another_chunking_and_a_plain_rerun_starts_afresh(pipeline, ens, tmp_path, monkeypatch):
    out = tmp_path / "sub.csv"
    monkeypatch.setattr(batch_predict, "write_chunk", lambda *a: (_ for _ in ()).throw(Killed))
    with pytest.raises(Killed):
        predict_file(pipeline, out, input=ens, images=IMAGES, chunk_rows=5, progress=False)
    monkeypatch.undo()
    (chunks_folder(out) / "chunk-000000.parquet").write_bytes(b"left over")
    with pytest.raises(ValueError, match="cannot resume the prediction .* made with other chunk_rows"):
        predict_file(pipeline, out, input=ens, images=IMAGES, chunk_rows=10, resume=True, progress=False)
    result = predict_file(pipeline, out, input=ens, images=IMAGES, chunk_rows=10, progress=False)  # afresh
    assert (result.resumed_chunks, result.rows) == (0, 17) and not chunks_folder(out).exists()


def test_a_duplicate_id_in_a_later_chunk_names_both_rows_and_an_empty_id_its_row(pipeline, ens, tmp_path):
    rows = pd.read_csv(ens, dtype=str, keep_default_na=False)
    rows.iloc[4, 0] = "x2"
    rows.to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(ValueError, match=r"dup.csv: duplicate id 'x2': rows 3 and 5"):
        predict_file(pipeline, tmp_path / "p.csv", input=tmp_path / "dup.csv", images=IMAGES, chunk_rows=4,
                     progress=False)
    check = IdCheck("f")
    check.add(["a", "b"], 0)
    with pytest.raises(ValueError, match="duplicate id 'c': rows 3 and 4"):
        check.add(["c", "c"], 2)
    rows.iloc[4, 0] = ""
    rows.to_csv(tmp_path / "empty.csv", index=False)
    with pytest.raises(ValueError, match=r"empty.csv: row 5 has an empty id"):
        predict_file(pipeline, tmp_path / "p.csv", input=tmp_path / "empty.csv", images=IMAGES, chunk_rows=4,
                     progress=False)
    assert not (tmp_path / "p.csv").exists()


def test_command_line_parquet_output_and_missing_images(ens, tmp_path, capsys):
    out = tmp_path / "p.parquet"
    assert main(["predict", "--pipeline", str(FIXTURE / "pipeline"), "--input", str(ens), "--images", str(IMAGES),
                 "--out", str(out), "--chunk-rows", "8"]) == 0
    assert "wrote 17 predictions to" in (printed := capsys.readouterr().out) and "without an image: 4," in printed
    table = ProbabilityTable.load(out)
    assert len(table.ids) == 17 and table.class_names == ["10", "40", "1160", "2583"]
    assert main(["predict", "--pipeline", str(FIXTURE / "pipeline"), "--input", str(ens), "--out",
                 str(tmp_path / "q.csv"), "--chunk-rows", "8"]) == 2
    assert "none of the first 8 rows have an image (is the images folder missing?)" in capsys.readouterr().err
    assert list(tmp_path.glob("*q.*")) == []  # bad input leaves neither an output nor its chunks


STOP_AFTER_CHUNKS = """
import os, sys
from mmclf import batch_predict
from mmclf.cli import main

write, written = batch_predict.write_chunk, []

def write_then_stop(*args):
    write(*args)
    written.append(1)
    if len(written) == int(os.environ["STOP_AFTER"]):
        os._exit(3)  # a process killed right after its chunk

batch_predict.write_chunk = write_then_stop
sys.exit(main(sys.argv[1:]))
"""


def launch(script: str, *args: str, processes: int, port: int, env=None):
    env = dict(os.environ, ACCELERATE_USE_CPU="true", OMP_NUM_THREADS="1", **(env or {}))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
               str(port), script, *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)


def single(*args: str) -> int:
    """`mmclf` in this process, with the threads of each launched one (float sums in the same order: the same
    bytes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            return main(list(args))
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_write_the_bytes_of_one_and_a_killed_two_process_run_resumes_on_one(ens, tmp_path, capsys):
    predict = ["predict", "--pipeline", str(FIXTURE / "pipeline"), "--input", str(ens), "--images", str(IMAGES),
               "--batch-size", "2", "--chunk-rows", "2"]  # 9 chunks
    assert single(*predict, "--out", str(tmp_path / "one" / "sub.csv")) == 0
    two = launch("-m", "mmclf", *predict, "--out", str(tmp_path / "two" / "sub.csv"), processes=2, port=29541)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("wrote 17 predictions") == 1  # the main process reports
    for name in ("sub.csv", "sub.parquet"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()

    script = tmp_path / "stop_after_chunks.py"
    script.write_text(STOP_AFTER_CHUNKS)
    killed = launch(str(script), *predict, "--out", str(tmp_path / "killed" / "sub.csv"), processes=2, port=29543,
                    env={"STOP_AFTER": "2"})
    assert killed.returncode != 0 and not (tmp_path / "killed" / "sub.csv").exists(), killed.stderr[-3000:]
    kept = sorted(p.name for p in chunks_folder(tmp_path / "killed" / "sub.csv").glob("chunk-*"))
    assert 2 <= len(kept) < 9, kept
    capsys.readouterr()
    assert single(*predict, "--out", str(tmp_path / "killed" / "sub.csv"), "--resume") == 0
    assert f"{len(kept)} of 9 chunks kept" in capsys.readouterr().out
    for name in ("sub.csv", "sub.parquet"):
        assert (tmp_path / "killed" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()
    shutil.rmtree(tmp_path / "killed")


@pytest.mark.filterwarnings("ignore:none of the")
def test_an_unreadable_image_is_predicted_as_missing_and_counted(pipeline, ens, tmp_path):
    raw = pd.read_csv(ens, dtype=str, keep_default_na=False)
    images = tmp_path / "images"
    shutil.copytree(IMAGES, images)
    names = [f"image_{i}_product_{p}.jpg" for i, p in zip(raw["imageid"], raw["productid"])]
    with_image = [row for row, name in enumerate(names) if (images / name).is_file()]
    broken, escaping = with_image[1], with_image[3]
    (images / names[broken]).write_bytes(b"not an image at all")
    outside = tmp_path / "outside.jpg"
    shutil.copy(images / names[escaping], outside)
    (images / names[escaping]).unlink()
    (images / names[escaping]).symlink_to(outside)  # a readable image, but outside the folder it was given

    out = tmp_path / "sub.csv"
    result = predict_file(pipeline, out, input=ens, images=images, batch_size=2, chunk_rows=4, progress=False)
    affected = [row for row, name in enumerate(names) if name in (names[broken], names[escaping])]
    assert len(affected) >= 2 and result.rows == len(raw) and result.counts["unreadable_image"] == len(affected)
    assert [(row, sample_id) for row, sample_id, _ in result.unreadable] == [(r + 1, raw["Unnamed: 0"].iloc[r]) for r in affected]
    reasons = {names[row - 1]: why for row, _, why in result.unreadable}
    assert "cannot identify image file" in reasons[names[broken]] and "leads out of" in reasons[names[escaping]]
    # those rows get exactly the predictions of rows without an image
    for row in (broken, escaping):
        (images / names[row]).unlink()
    reference = whole_file(pipeline, raw, images=images)
    assert result.counts["without_image"] == reference.counts["without_image"]
    assert_same_predictions(out, reference)

    (images / names[broken]).write_bytes(b"not an image at all")
    broken = min(row for row in affected if names[row] == names[broken])
    with pytest.raises(ValueError, match=rf"row {broken + 1} \(id '{raw['Unnamed: 0'].iloc[broken]}'\), field 'image'"):
        predict_file(pipeline, tmp_path / "strict.csv", input=ens, images=images, chunk_rows=4, strict_images=True,
                     progress=False)
    assert not (tmp_path / "strict.csv").exists()
