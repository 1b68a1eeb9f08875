"""ONNX Runtime against PyTorch on the CPU: rows/s of a text expert's network, fp32 and int8, at batch 1 and 32.

    python benchmarks/bench_onnx.py [--models tiny camembert-base] [--seconds 4] [--demo demo_out]

For each model (the demo's tiny CamemBERT, and the camembert-base architecture with random weights, built offline
as benchmarks/throughput.py does), texts tokenised to max length 128 (every row full), the same inputs go through
PyTorch (eval, no_grad), the fp32 ONNX export and the int8 one (`mmclf.export`'s exporter and quantizer), each for
--seconds at batch 1 and batch 32 in one process, so the ratios compare like with like (absolute rows/s move with
whatever else runs on the machine). With --demo (a finished `mmclf demo` folder): the macro-F1 of the PyTorch,
fp32-ONNX and int8-ONNX pipelines on the demo's test split.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ARCHITECTURES = {
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128,
             "vocab_size": 4000, "max_position_embeddings": 130},
    "camembert-base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                       "intermediate_size": 3072, "vocab_size": 32005, "max_position_embeddings": 514},
}
MAX_LENGTH = 128


def rate(function, rows: int, seconds: float) -> float:
    function()  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        function()
        done += rows
    return done / (time.perf_counter() - start)


def bench_model(name: str, seconds: float, folder: Path) -> dict:
    from transformers import AutoModelForSequenceClassification, CamembertConfig

    from mmclf.export import Probabilities, quantize_int8, write_onnx
    from mmclf.onnx_backend import inference_session

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(CamembertConfig(**ARCHITECTURES[name], num_labels=27)).eval()
    expert = type("Network", (), {"model": model, "logits": staticmethod(lambda outputs: outputs.logits)})()
    names = ["input_ids", "attention_mask"]
    results = {}
    for batch in (1, 32):
        ids = torch.randint(5, ARCHITECTURES[name]["vocab_size"], (batch, MAX_LENGTH))
        mask = torch.ones_like(ids)
        if batch == 1:
            fp32, int8 = folder / f"{name}.fp32" / "model.onnx", folder / f"{name}.int8" / "model.onnx"
            for path in (fp32, int8):
                path.parent.mkdir(parents=True, exist_ok=True)
                write_onnx(Probabilities(expert, names), (ids, mask), path, names, "probs",
                           {"input_ids": {0: "rows", 1: "tokens"}, "attention_mask": {0: "rows", 1: "tokens"},
                            "probs": {0: "rows"}})
            quantize_int8(int8)
            sessions = {"fp32": inference_session(fp32), "int8": inference_session(int8)}
        feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
        with torch.no_grad():
            reference = torch.softmax(model(input_ids=ids, attention_mask=mask).logits, dim=1).numpy()
            torch_rate = rate(lambda i=ids, m=mask: model(input_ids=i, attention_mask=m), batch, seconds)
        row = {"torch_rows_s": round(torch_rate, 1)}
        for precision, session in sessions.items():
            row[f"onnx_{precision}_rows_s"] = round(rate(lambda s=session, f=feed: s.run(None, f), batch, seconds), 1)
            row[f"onnx_{precision}_speedup"] = round(row[f"onnx_{precision}_rows_s"] / torch_rate, 2)
            row[f"onnx_{precision}_max_abs_diff"] = float(np.abs(session.run(None, feed)[0] - reference).max())
        results[f"batch {batch}"] = row
    return results


def demo_f1(demo: Path, folder: Path) -> dict:
    from datasets import load_from_disk

    from mmclf import MultimodalPipeline
    from mmclf.export import export_pipeline
    from mmclf.scoring import macro_f1

    test = load_from_disk(str(demo / "dataset"))["test"]
    labels = np.asarray(test["label"])
    pipeline = MultimodalPipeline.from_pretrained(demo / "pipeline")
    index = {name: i for i, name in enumerate(pipeline.class_names)}
    names = test.features["label"].names
    truth = np.asarray([index[names[label]] for label in labels])
    scores = {"rows": len(test), "torch": macro_f1(truth, pipeline.predict_details(test).winners)}
    for quantize in (None, "int8"):
        exported = export_pipeline(pipeline, folder / f"demo-{quantize}", quantize=quantize, rows=test,
                                   parity_rows=len(test))
        scores[f"onnx_{quantize or 'fp32'}"] = macro_f1(truth, exported.predict_details(test).winners)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(ARCHITECTURES), choices=list(ARCHITECTURES))
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--demo", type=Path, help="a finished `mmclf demo` folder: macro-F1 of the exports")
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        report = {name: bench_model(name, args.seconds, Path(tmp)) for name in args.models}
        if args.demo:
            report["demo_macro_f1"] = demo_f1(args.demo, Path(tmp))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
