"""`mmclf export`: the ONNX export round-trips a pipeline (tiny text, TF-IDF, image, two fusions) with its parity
recorded, a doctored export is refused, and every command's --help runs without torch."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from mmclf import MultimodalPipeline
from mmclf.cli import main

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def tiny_pipeline(seed: int = 0):
    """Tiny text (random weights, tokenizer trained on the rows), TF-IDF (fitted), image (random test_resnet) and
    two fusion runs fitted on their validation probabilities."""
    from mmclf.experts import expert_class
    from mmclf.fusion.decision import fit_decision_fusion
    from mmclf.inference import probability_table
    from mmclf.testing import make_dataset_dict

    torch.manual_seed(seed)
    data = make_dataset_dict(train_rows=48, validation_rows=24, test_rows=24, seed=seed, missing_every=5)
    names = data["train"].features["label"].names
    experts = {"text": expert_class("text").build({"name": "tiny", "max_length": 32, "tiny_vocab_size": 200}, names,
                                                  data["train"]),
               "image": expert_class("image").build({"name": "test_resnet", "image_size": 32, "resize_size": 36}, names),
               "tfidf": expert_class("tfidf").build({}, names)}
    experts["tfidf"].fit(data["train"])
    for expert in (experts["text"], experts["image"]):
        expert.model.eval()
    tables = {n: probability_table(e, data["validation"], "validation", n) for n, e in experts.items()}
    fusions = [fit_decision_fusion(tables, folds=2, epochs=3, progress=False),
               fit_decision_fusion({n: tables[n] for n in ("tfidf", "image")}, folds=2, epochs=3, hidden_size=6,
                                   progress=False)]
    return MultimodalPipeline(experts, fusions, {"dataset": "tiny"}), data


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    pipeline, data = tiny_pipeline()
    pipeline.save_pretrained(folder / "pipeline")
    data.save_to_disk(str(folder / "dataset"))
    return folder, pipeline, data


@pytest.mark.slow  # ~30 s: builds, saves and exports a pipeline of three experts and two fusions
def test_export_command_round_trips_the_pipeline_with_its_parity_recorded(saved, capsys):
    folder, pipeline, data = saved
    out = folder / "onnx"
    assert main(["export", str(folder / "pipeline"), "--format", "onnx", "--out", str(out),
                 "--dataset", str(folder / "dataset"), "--split", "test"]) == 0
    assert "pipeline: max |Δp|" in capsys.readouterr().out
    exported = MultimodalPipeline.from_pretrained(out)
    assert exported.backend == "onnx" and json.loads((out / "pipeline.json").read_text())["backend"] == "onnx"
    assert {p.name for p in out.glob("experts/*/model.onnx")} == {"model.onnx"}
    assert sorted(p.parent.name for p in out.glob("experts/*/model.onnx")) == ["image", "text"]
    assert not (out / "experts" / "tfidf" / "model.onnx").exists()  # the numpy path stays
    assert len(list(out.glob("fusions/*/heads.onnx"))) == 2

    test = data["test"]
    ours, theirs = pipeline.predict_details(test), exported.predict_details(test)
    assert theirs.codes == ours.codes
    np.testing.assert_allclose(theirs.probs, ours.probs, atol=1e-5)

    export = exported.metadata["export"]
    assert export["precision"] == "fp32" and export["rows"] == "given"
    assert set(export["parity"]) == {"expert text", "expert image", "expert tfidf", "fusion 0", "fusion 1", "pipeline"}
    for part, figures in export["parity"].items():
        assert figures["rows"] == len(test) and figures["max_abs_diff"] <= 1e-4, part
        assert figures["argmax_agreement"] == 1.0, part
    assert export["parity"]["pipeline"]["code_agreement"] == 1.0
    card = (out / "README.md").read_text()
    assert '"backend": "onnx"' in card and "max_abs_diff" in card

    from mmclf.serve import create_app  # an exported folder serves like any pipeline

    assert create_app(exported).state.batcher.pipeline.backend == "onnx"
    with pytest.raises(ValueError, match="runs on the CPU"):
        MultimodalPipeline.from_pretrained(out, device="cuda")


@pytest.mark.slow
def test_a_doctored_export_is_refused_naming_the_expert_and_nothing_is_written(saved, monkeypatch):
    from onnx import numpy_helper

    from mmclf import export

    folder, pipeline, _ = saved
    original = export.write_onnx

    def doctored(module, inputs, path, input_names, output_name, dynamic_axes):
        original(module, inputs, path, input_names, output_name, dynamic_axes)
        if path.parent.name != "text":
            return
        model = onnx.load(str(path))
        bias = next(t for t in reversed(model.graph.initializer) if len(t.dims) == 1)  # the classifier's bias
        values = numpy_helper.to_array(bias).copy()
        values[0] += 3.0  # one weight changed
        bias.CopyFrom(numpy_helper.from_array(values, bias.name))
        onnx.save(model, str(path))

    monkeypatch.setattr(export, "write_onnx", doctored)
    out = folder / "doctored"
    with pytest.raises(export.ParityError, match=r"expert text: max \|Δp\| 0\.\d+") as error:
        export.export_pipeline(pipeline, out, parity_rows=16)
    assert "expert image" not in str(error.value) and "Nothing was written" in str(error.value)
    assert not out.exists()


def test_export_checks_its_arguments_and_names_the_missing_extra(monkeypatch, tmp_path):
    from mmclf.export import export_pipeline

    pipeline = tmp_path / "pipeline"  # checked before it is loaded
    with pytest.raises(ValueError, match="quantize must be one of"):
        export_pipeline(pipeline, tmp_path / "x", quantize="int4")
    with pytest.raises(ValueError, match="format must be one of"):
        export_pipeline(pipeline, tmp_path / "x", format="tflite")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"pip install 'mmclf\[onnx\]'"):
        export_pipeline(pipeline, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_generated_parity_rows_cover_missing_images_descriptions_and_odd_sizes():
    from types import SimpleNamespace

    from mmclf.export import FALLBACK_WORDS, generated_rows

    rows = generated_rows(SimpleNamespace(experts={}), 12, seed=3)
    counts = rows.counts()
    assert counts == {"rows": 12, "empty_title": 0, "without_description": 4, "without_image": 3, "unreadable_image": 0}
    sizes = {image.size for image in rows.images if image is not None}
    assert len(sizes) == 9 and any(w != h for w, h in sizes)
    assert set(" ".join(rows.titles + rows.descriptions).split()) <= set(FALLBACK_WORDS)  # no text expert here


def test_every_command_help_and_argument_error_imports_no_torch_transformers_or_sklearn():
    code = """
import contextlib, io, sys
from mmclf.cli import COMMANDS, main
for command in COMMANDS:
    for argv in ([command, "--help"], [command, "--no-such-option"]):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                main(argv)
            except SystemExit:
                pass
print(len(COMMANDS), sorted({m.split(".")[0] for m in sys.modules} & {"torch", "transformers", "sklearn"}))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    count, heavy = result.stdout.split(" ", 1)
    assert int(count) >= 16 and heavy.strip() == "[]"


def test_fuse_command_choices_match_the_library():
    from mmclf.cli import fuse
    from mmclf.fusion import decision

    assert fuse.FUSION_INPUTS == decision.FUSION_INPUTS and fuse.FUSION_STARTS == decision.FUSION_STARTS


@pytest.mark.slow  # the demo workflow (~3 min on 2 cores), then an fp32 and an int8 export
def test_onnx_exports_of_the_demo_pipeline_predict_its_test_codes(tmp_path):
    from datasets import load_from_disk

    from mmclf.demo import run_demo
    from mmclf.export import TOLERANCES, export_pipeline

    run_demo(tmp_path, rows=300, folds=2, overrides=["epochs=1"], echo=lambda line: None)
    test = load_from_disk(str(tmp_path / "dataset"))["test"]
    pipeline = MultimodalPipeline.from_pretrained(tmp_path / "pipeline")
    codes = pipeline.predict(test)
    for quantize in (None, "int8"):
        exported = export_pipeline(pipeline, tmp_path / f"onnx-{quantize}", quantize=quantize, rows=test,
                                   parity_rows=len(test))
        assert exported.predict(test) == codes
        limits = TOLERANCES[quantize or "fp32"]
        for part, figures in exported.metadata["export"]["parity"].items():
            assert figures["max_abs_diff"] <= limits["max_abs_diff"], part
            assert figures["decided_agreement"] >= limits["min_agreement"], part
