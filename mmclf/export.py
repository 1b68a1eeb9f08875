"""`mmclf export`: a pipeline's networks exported to ONNX, written only when the export proves its parity.

    from mmclf.export import export_pipeline
    exported = export_pipeline("demo_out/pipeline", "demo_out/pipeline-onnx", quantize="int8")
    exported.predict(rows)        # a MultimodalPipeline whose experts and fusions run in ONNX Runtime

What is exported: each text expert (the transformer with its classification head), each image expert (the timm
CNN; a DCL expert's classification path, which is what a saved DCL expert is) and each fusion run (its fold heads
in one graph). The softmax is inside each graph, so the runtime reads probabilities. The TF-IDF expert has no
network and keeps its own numpy folder. Encoding stays as it was: the text expert's tokenizer is saved beside its
graph; images are resized, cropped and normalised with PIL and numpy exactly as torchvision did.

The exporter is `torch.onnx.export` with the TorchScript tracer (`dynamo=False`): it traces transformers' encoders,
timm CNNs and the fusion heads in seconds (the torch.export-based exporter takes 4 to 7 times longer here and
needs onnxscript), and the parity check below catches what a trace could get wrong. optimum's exporters cover
transformers models only, not the timm experts or the fusion heads. `quantize="int8"`: onnxruntime's dynamic
quantization of the experts' MatMul and Gemm weights (convolutions stay fp32: int8 convolutions are slower on
most CPUs); fusion heads stay fp32 (a few thousand weights).

Parity: the exported pipeline is loaded from the staged folder and compared with the PyTorch pipeline on the
rows given (`rows`, e.g. a dataset split) or on generated rows (words from the text expert's vocabulary,
images of random sizes and colours, some rows without a description or an image): per expert, per fusion run
(given the same expert probabilities) and for the whole pipeline, the largest absolute probability difference
and the share of rows whose argmax (the predicted code) agrees, over all rows and over the rows the PyTorch
reference decides by more than the tolerance (top-two margin; closer rows are near-ties that rounding may flip).
Beyond the tolerance (`TOLERANCES`, or the `tolerance` and `min_agreement` given: |Δp| above it, or agreement on
decided rows below `min_agreement`) nothing is written and the error names each part and its figures; within it,
the figures go into pipeline.json (`metadata.export`) and the model card.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmclf.data.listings import Listings, to_listings
from mmclf.inference import expert_probabilities
from mmclf.onnx_backend import (
    BACKEND,
    FUSION_FILE,
    HEADS_FILE,
    IMAGE_KINDS,
    MODEL_FILE,
    TEXT_KINDS,
    OnnxFusion,
    onnxruntime,
)
from mmclf.pipeline import PIPELINE_FILE, PIPELINE_FORMAT, MultimodalPipeline
from mmclf.rundir import staged_folder

FORMATS = ("onnx",)
QUANTIZATIONS = (None, "int8")
# largest absolute probability difference allowed, smallest share of rows whose predicted class must agree
TOLERANCES = {"fp32": {"max_abs_diff": 1e-4, "min_agreement": 0.99},
              "int8": {"max_abs_diff": 0.1, "min_agreement": 0.9}}
OPSET = 17
FALLBACK_WORDS = ["piscine", "livre", "jeu", "console", "carte", "collection", "bassin", "pompe", "roman", "lot",
                  "neuf", "occasion", "enfant", "jardin", "maison", "cuisine", "bleu", "rouge", "grand", "petit"]


class ParityError(ValueError):
    """The export's outputs differ from the PyTorch pipeline's beyond the tolerance."""


class Probabilities(nn.Module):
    """An expert's network from encoded inputs (positional, in `names` order) to softmax probabilities."""

    def __init__(self, expert, names: list[str]):
        super().__init__()
        self.network, self.names = expert.model, names
        self.logits = expert.logits  # a bound method of the expert: picks the class logits from the outputs

    def forward(self, *inputs):
        return torch.softmax(self.logits(self.network(**dict(zip(self.names, inputs)))).float(), dim=1)


class FoldHeads(nn.Module):
    """A fusion run's fold heads in one graph: concatenated expert probabilities -> [folds, rows, classes]."""

    def __init__(self, heads):
        super().__init__()
        self.heads = nn.ModuleList(heads)

    def forward(self, probs):
        return torch.stack([head(probs).softmax(dim=1) for head in self.heads])


def write_onnx(module: nn.Module, inputs: tuple, path: Path, input_names: list[str], output_name: str,
               dynamic_axes: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on the legacy exporter and on traced Python values
        torch.onnx.export(module.eval(), inputs, str(path), input_names=input_names, output_names=[output_name],
                          dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False)


def quantize_int8(path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = path.with_name("model.fp32.onnx")
    path.rename(fp32)
    quantize_dynamic(str(fp32), str(path), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"])
    fp32.unlink()


def export_expert(expert, folder: Path, sample: dict, quantize: str | None) -> None:
    """One text or image expert as model.onnx + mmclf_expert.json (+ the tokenizer); `sample`: a batch of rows
    to trace with."""
    folder.mkdir(parents=True)
    inputs = {name: tensor.cpu() for name, tensor in expert._inputs(sample).items()}
    names = list(inputs)
    axes = {name: {0: "rows", 1: "tokens"} if tensor.ndim == 2 else {0: "rows"} for name, tensor in inputs.items()}
    write_onnx(Probabilities(expert, names), tuple(inputs.values()), folder / MODEL_FILE, names, "probs",
               {**axes, "probs": {0: "rows"}})
    if quantize == "int8":
        quantize_int8(folder / MODEL_FILE)
    if expert.kind in TEXT_KINDS:
        expert.tokenizer.save_pretrained(folder)
        encoding = {"max_length": expert.config["max_length"]}
    else:
        model = expert.model
        encoding = {"image_size": model.image_size, "resize_size": model.resize_size, "mean": list(model.mean),
                    "std": list(model.std)}
    info = {"kind": "text" if expert.kind in TEXT_KINDS else "image", "backend": BACKEND,
            "precision": quantize or "fp32", "exported_from": expert.kind, "class_names": expert.class_names,
            "config": expert.config, "metadata": expert.metadata, "encoding": encoding,
            "base_model": expert.base_model}
    (folder / "mmclf_expert.json").write_text(json.dumps(info, indent=2, default=str))
    expert.write_card(folder)


def export_fusion(fusion, folder: Path) -> None:
    folder.mkdir(parents=True)
    width = len(fusion.expert_names) * len(fusion.class_names)
    write_onnx(FoldHeads(fusion.heads), (torch.rand(2, width),), folder / HEADS_FILE, ["expert_probs"], "fold_probs",
               {"expert_probs": {0: "rows"}, "fold_probs": {1: "rows"}})
    options = {**fusion.options, "class_names": fusion.class_names, "expert_names": fusion.expert_names,
               "num_fold_heads": len(fusion.heads), "backend": BACKEND, "cv_metrics": fusion.cv_metrics}
    (folder / FUSION_FILE).write_text(json.dumps(options, indent=2, default=str))


def generated_rows(pipeline: MultimodalPipeline, rows: int, seed: int = 0) -> Listings:
    """Rows to check parity on when none are given: words from a text expert's vocabulary, images of random sizes,
    shapes and colours; every third row without a description, every fourth without an image."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    words = FALLBACK_WORDS
    for expert in pipeline.experts.values():
        vocabulary = getattr(getattr(expert, "tokenizer", None), "get_vocab", dict)()
        pieces = [w.lstrip("▁") for w in vocabulary if w.lstrip("▁").isalpha() and len(w.lstrip("▁")) > 2]
        if len(pieces) > 50:
            words = pieces
            break
    titles, descriptions, images = [], [], []
    for i in range(rows):
        titles.append(" ".join(rng.choice(words, int(rng.integers(2, 9)))))
        descriptions.append("" if i % 3 == 0 else " ".join(rng.choice(words, int(rng.integers(5, 41)))))
        if i % 4 == 3:
            images.append(None)
            continue
        width, height = (int(v) for v in rng.integers(40, 200, 2))
        image = Image.new("RGB", (width, height), tuple(int(c) for c in rng.integers(0, 256, 3)))
        x, y = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
        ImageDraw.Draw(image).rectangle([x, y, x + width // 3, y + height // 3],
                                        fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        images.append(image)
    return Listings(ids=[f"parity{i}" for i in range(rows)], titles=titles, descriptions=descriptions, images=images)


def compare(reference: np.ndarray, exported: np.ndarray, margin: float) -> dict:
    """Largest absolute probability difference; argmax agreement over all rows, and over the rows the reference
    decides by more than `margin` (its top two probabilities further apart: closer ones are near-ties that any
    rounding may flip)."""
    agree = reference.argmax(axis=1) == exported.argmax(axis=1)
    top_two = np.sort(reference, axis=1)[:, -2:]
    decided = top_two[:, 1] - top_two[:, 0] > margin
    return {"rows": len(reference), "max_abs_diff": float(np.abs(reference - exported).max()),
            "argmax_agreement": float(agree.mean()), "decided_rows": int(decided.sum()),
            "decided_agreement": float(agree[decided].mean()) if decided.any() else 1.0}


def parity(pipeline: MultimodalPipeline, exported: MultimodalPipeline, rows: Listings, batch_size: int,
           margin: float) -> dict:
    """Figures per expert ("expert NAME"), per fusion run ("fusion I", on the reference experts' probabilities)
    and for the whole pipeline ("pipeline": fused probabilities and predicted codes)."""
    figures, reference = {}, {}
    for name in pipeline.used_experts:
        reference[name] = expert_probabilities(pipeline.experts[name], rows, batch_size)
        figures[f"expert {name}"] = compare(reference[name],
                                            expert_probabilities(exported.experts[name], rows, batch_size), margin)
    for i, (fusion, copy) in enumerate(zip(pipeline.fusions, exported.fusions)):
        figures[f"fusion {i}"] = compare(fusion.predict_probs(reference)[2], copy.predict_probs(reference)[2], margin)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # generated rows may all lack images in a tiny check
        ours, theirs = pipeline.predict_details(rows, batch_size), exported.predict_details(rows, batch_size)
    figures["pipeline"] = {**compare(ours.probs, theirs.probs, margin),
                           "code_agreement": float(np.mean(np.array(ours.codes) == np.array(theirs.codes)))}
    return figures


def check_parity(figures: dict, limits: dict, where) -> None:
    failures = [f"{part}: max |Δp| {f['max_abs_diff']:.3g}, argmax agreement {f['decided_agreement']:.3f} on "
                f"{f['decided_rows']} decided rows ({f['argmax_agreement']:.3f} on all {f['rows']})"
                for part, f in figures.items()
                if f["max_abs_diff"] > limits["max_abs_diff"] or f["decided_agreement"] < limits["min_agreement"]]
    if failures:
        raise ParityError(f"the ONNX export differs from the PyTorch pipeline beyond the tolerance (max |Δp| <= "
                          f"{limits['max_abs_diff']:g}, argmax agreement >= {limits['min_agreement']:g} on rows decided by more than "
                          f"that): "
                          f"{'; '.join(failures)}. Nothing was written to {where}")


def export_pipeline(pipeline, output_dir, *, format: str = "onnx", quantize: str | None = None, rows=None,
                    parity_rows: int = 128, seed: int = 0, tolerance: float | None = None,
                    min_agreement: float | None = None, batch_size: int = 32) -> MultimodalPipeline:
    """Export `pipeline` (a MultimodalPipeline, a pipeline folder or an `owner/name` Hub id) into `output_dir` and
    return it loaded. `rows`: what to check parity on (anything `to_listings` takes; its first `parity_rows`
    rows), default: `parity_rows` generated rows. Raises ParityError, writing nothing, beyond the tolerance."""
    if format not in FORMATS:
        raise ValueError(f"export format must be one of {FORMATS}, got {format!r}")
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {QUANTIZATIONS[1:]} (or none), got {quantize!r}")
    if parity_rows < 1:
        raise ValueError(f"parity_rows must be at least 1, got {parity_rows}")
    onnxruntime()  # the clear error about the extra, before any work
    if not isinstance(pipeline, MultimodalPipeline):
        pipeline = MultimodalPipeline.from_pretrained(pipeline)
    if pipeline.backend != "torch":
        raise ValueError("this pipeline is an ONNX export already; export its PyTorch original")
    pipeline.to("cpu")
    limits = dict(TOLERANCES[quantize or "fp32"])
    limits.update({k: v for k, v in (("max_abs_diff", tolerance), ("min_agreement", min_agreement)) if v is not None})
    source = "generated" if rows is None else "given"
    if rows is None:
        rows = generated_rows(pipeline, parity_rows, seed)
    else:
        rows = rows if isinstance(rows, Listings) else to_listings(rows)
        n = min(parity_rows, len(rows))
        rows = Listings(rows.ids[:n], rows.titles[:n], rows.descriptions[:n], list(rows.images[:n]), rows.images_dir)
    sample = rows.batch(0, min(4, len(rows)))
    output_dir = Path(output_dir)
    with staged_folder(output_dir, replace=True) as staged:
        for name, expert in pipeline.experts.items():
            if expert.kind in TEXT_KINDS + IMAGE_KINDS:
                export_expert(expert, staged / "experts" / name, sample, quantize)
            elif not expert.trains_with_loop:  # no network (TF-IDF): its own numpy folder
                expert.save_pretrained(staged / "experts" / name)
            else:
                raise ValueError(f"expert {name!r}: no ONNX export for the {expert.kind!r} kind")
        for i, fusion in enumerate(pipeline.fusions):
            export_fusion(fusion, staged / "fusions" / str(i))
        spec = {"format": PIPELINE_FORMAT, "version": 1, "backend": BACKEND, "class_names": pipeline.class_names,
                "experts": {name: f"experts/{name}" for name in pipeline.experts},
                "fusions": [f"fusions/{i}" for i in range(len(pipeline.fusions))], "metadata": pipeline.metadata}
        (staged / PIPELINE_FILE).write_text(json.dumps(spec, indent=2, default=str))
        exported = MultimodalPipeline.from_pretrained(staged)
        figures = parity(pipeline, exported, rows, batch_size, limits["max_abs_diff"])
        check_parity(figures, limits, output_dir)
        exported.metadata["export"] = {"format": format, "precision": quantize or "fp32", "tolerance": limits,
                                       "rows": source,
                                       "parity": figures}
        spec["metadata"] = exported.metadata
        (staged / PIPELINE_FILE).write_text(json.dumps(spec, indent=2, default=str))
        exported.write_card(staged)
    return MultimodalPipeline.from_pretrained(output_dir)


__all__ = ["TOLERANCES", "OnnxFusion", "ParityError", "export_pipeline", "generated_rows", "parity"]
