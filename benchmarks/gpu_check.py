"""The prepared GPU check: one command, one JSON (gpu_check.json) and one Markdown table (gpu_check.md).

Sections: environment (GPU, driver, torch, CUDA); benchmarks/throughput.py for camembert-large at max length 256
(bf16), resnet152 at 224 (channels_last, bf16) and DCL at 448, each synthetic vs real input pipeline (samples/s,
MFU); the optimizer step fused vs not; a few training steps of every stage of the paper's workflow
(`mmclf run rakuten-paper`) at real model sizes with random weights (no pretrained ones offline) under
`accelerate launch` with accelerate_configs/1gpu-bf16.yaml, checking that each loss decreases and each saved
expert reloads to the same probabilities; prediction rows/s through the saved pipeline on the GPU.

`--cpu-dry-run` runs every section at tiny sizes on the CPU (the same recipes with tiny models standing in), so the
check is known to work before a GPU is at hand. Nothing here changes the device's settings (clocks, power, MIG,
persistence mode): `nvidia-smi` is only queried.

    bash benchmarks/gpu_check.sh --out gpu_check_out            # on one H100 / H200: under 8 minutes
    bash benchmarks/gpu_check.sh --cpu-dry-run --out /tmp/check  # anywhere (about 95 s on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent

# (recipe, overrides) measured by throughput.py; the dry run swaps in tiny models of the same expert kinds (and its
# MFU is against a nominal 1 TFLOP/s: measuring the CPU's matmul peak would take most of its time)
THROUGHPUT = {
    "gpu": [("text-camembert-large", ["model.max_length=256"]),
            ("image-resnet152-224", ["training.channels_last=true"]),
            ("image-resnet152-dcl-448", ["training.channels_last=true"])],
    "cpu-dry-run": [("text-camembert-large", ["model.name=tiny", "model.max_length=32"]),
                    ("image-resnet152-224", ["model.name=test_resnet", "model.image_size=64", "model.resize_size=72"]),
                    ("image-resnet152-dcl-448", ["model.name=test_resnet", "model.image_size=64",
                                                 "model.resize_size=72", "model.grid=2"])],
}
CAMEMBERT = {"base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072},
             "large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                       "intermediate_size": 4096},
             "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}}
TRAINED_STEPS = ["text_base", "text_large", "image_224", "image"]


def run(command: list[str], log: Path, timeout: int) -> tuple[int, float]:
    start = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, timeout=timeout,
                              check=False).returncode
    return code, time.perf_counter() - start


def environment() -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cpu_cores": os.cpu_count(), "gpu": None, "driver": None}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        try:  # a query only
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, check=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            env["driver"] = "nvidia-smi not available"
    import accelerate
    import transformers

    import mmclf

    env.update(mmclf=mmclf.__version__, transformers=transformers.__version__, accelerate=accelerate.__version__)
    return env


def throughput(mode: str, out: Path) -> list[dict]:
    results = []
    for recipe, overrides in THROUGHPUT[mode]:
        target = out / f"throughput-{recipe}.json"
        size = ["--steps", "20", "--warmup", "5", "--mixed-precision", "bf16"] if mode == "gpu" else \
            ["--steps", "2", "--warmup", "1", "--batch-size", "4", "--mixed-precision", "no", "--peak-tflops", "1",
             "--in-process"]
        code, _ = run([sys.executable, "benchmarks/throughput.py", "--recipes", recipe, *size, "--json", str(target),
                       *overrides], out / f"throughput-{recipe}.log", timeout=300)
        if code != 0:
            raise SystemExit(f"throughput.py {recipe} failed: see {out / f'throughput-{recipe}.log'}")
        results += json.loads(target.read_text())
    return results


def optimizer_step(mode: str) -> dict:
    """One AdamW step over camembert-large's parameters (tiny on the dry run), fused vs one kernel per tensor."""
    from transformers import CamembertConfig, CamembertForSequenceClassification

    from mmclf.experts.base import decay_groups
    from mmclf.training import loop
    from mmclf.training.config import TRAINING_DEFAULTS

    device = "cuda" if mode == "gpu" else "cpu"
    size = CAMEMBERT["large" if mode == "gpu" else "tiny"]
    model = CamembertForSequenceClassification(CamembertConfig(vocab_size=32005, num_labels=27, **size)).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    seconds = {}
    for fused in (False, True, False, True):  # alternating, best of two each
        optimizer = loop.build_optimizer(decay_groups(model, 0.01), {**TRAINING_DEFAULTS, "fused_optimizer": fused})
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(10):
            optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        key = "fused_s" if fused else "unfused_s"
        seconds[key] = min(seconds.get(key, float("inf")), (time.perf_counter() - start) / 10)
    parameters = sum(p.numel() for p in model.parameters())
    return {**seconds, "speedup": seconds["unfused_s"] / seconds["fused_s"], "parameters": parameters, "device": device}


def encoder_folder(path: Path, size: str, texts: list[str]) -> Path:
    """A CamemBERT-shaped encoder folder with random weights and a tokenizer trained on the catalog (offline, there
    are no pretrained weights), given to the workflow as `model.name=PATH`."""
    from transformers import CamembertConfig, CamembertModel

    from mmclf.experts.text import train_tiny_tokenizer

    tokenizer = train_tiny_tokenizer(texts, 8000 if size != "tiny" else 400)
    CamembertModel(CamembertConfig(vocab_size=len(tokenizer), max_position_embeddings=514,
                                   pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                   eos_token_id=tokenizer.eos_token_id, **CAMEMBERT[size])).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def workflow_overrides(mode: str, catalog: Path, encoders: dict) -> list[str]:
    common = [f"x_train={catalog}/X_train.csv", f"y_train={catalog}/Y_train.csv", f"images_train={catalog}/image_train",
              f"x_test={catalog}/X_test.csv", f"images_test={catalog}/image_test", "dataset.validation_fraction=0.2",
              "denoise.denoise.splits=[train]", f"text_base.model.name={encoders['base']}",
              f"text_large.model.name={encoders['large']}"]
    steps = ["denoise", *TRAINED_STEPS]
    if mode == "gpu":
        return [*common, "accelerate_config=accelerate_configs/1gpu-bf16.yaml", "device=cuda",
                "denoise.model.pretrained=false", "image_224.model.pretrained=false",
                *[f"{step}.training.epochs=2" for step in steps], *[f"{step}.training.max_steps=100" for step in steps],
                *[f"{step}.training.early_stopping_patience=0" for step in steps]]
    tiny_image = ["model.name=test_resnet", "model.image_size=64", "model.resize_size=72", "model.pretrained=false"]
    return [*common, "accelerate_config=null", "denoise.config=denoise-tiny", "denoise.folds=2",  # CI's time
            "dataset.validation_fraction=0.4",  # 240 validation rows: every class twice for the fusion folds
            *[f"{step}.{o}" for step in ("image_224", "image") for o in tiny_image],
            "text_base.model.max_length=32", "text_large.model.max_length=32", "image.model.grid=2",
            *[f"{step}.training.epochs=2" for step in steps], *[f"{step}.training.batch_size=16" for step in steps],
            *[f"{step}.training.early_stopping_patience=0" for step in steps]]


def check_training(step_dir: Path, dataset: Path) -> dict:
    """Train loss first vs last epoch; the saved expert reloads and gives the probabilities the run saved."""
    from datasets import load_from_disk

    from mmclf.experts import load_expert
    from mmclf.inference import expert_probabilities
    from mmclf.probability_tables import ProbabilityTable

    metrics = json.loads((step_dir / "metrics.json").read_text())
    losses = [epoch["train_loss"] for epoch in metrics["epochs"]]
    table = ProbabilityTable.load(step_dir / "probs" / "test.parquet")
    rows = load_from_disk(str(dataset))["test"].select(range(16))
    again = expert_probabilities(load_expert(step_dir / "model"), rows, 16)
    difference = float(np.abs(again - table.probs[:16]).max())
    return {"train_losses": losses, "loss_decreased": len(losses) > 1 and losses[-1] < losses[0],
            "steps": sum(epoch["train_batches"] for epoch in metrics["epochs"]),
            "checkpoint_reloads": (step_dir / "checkpoints" / "best").is_dir() and difference < 0.05,
            "reload_max_probability_difference": difference}


def paper_workflow(mode: str, out: Path) -> tuple[dict, Path]:
    from mmclf import stages

    catalog = stages.demo_data(output_dir=out / "catalog", rows=800 if mode == "gpu" else 600)
    texts = [line for line in (catalog / "X_train.csv").read_text().splitlines()[1:]]
    encoders = {size: encoder_folder(out / f"camembert-{size}-random", size if mode == "gpu" else "tiny", texts)
                for size in ("base", "large")}
    work = out / "paper"
    command = [sys.executable, "-m", "mmclf", "run", "rakuten-paper", "--out", str(work),
               *workflow_overrides(mode, catalog, encoders)]
    code, seconds = run(command, out / "workflow.log", timeout=480 if mode == "gpu" else 900)
    report = {"returncode": code, "wall_s": seconds, "command": " ".join(command[2:]), "trainings": {}}
    if code == 0:
        dataset = work / "denoise" / "dataset"
        report["trainings"] = {step: check_training(work / step, dataset) for step in TRAINED_STEPS}
    return report, work


def predict_speed(mode: str, work: Path, out: Path) -> dict:
    from mmclf import stages

    device = "cuda" if mode == "gpu" else "cpu"
    catalog = out / "catalog"
    start = time.perf_counter()
    prediction = stages.predict(pipeline=str(work / "pipeline"), input=str(catalog / "X_test.csv"),
                                images=str(catalog / "image_test"), device=device, progress=False,
                                output=str(out / "predictions.csv"))
    seconds = time.perf_counter() - start
    rows = prediction.rows
    return {"device": device, "rows": rows, "seconds": seconds, "rows_per_s": rows / seconds,
            "experts": "text_base, text_large, tfidf, image + 12 fusion heads"}


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [(f"mode: {report['mode']}; GPU: {env['gpu'] or 'none'} (driver {env['driver'] or '-'}); torch "
             f"{env['torch']}, CUDA {env['cuda']}; mmclf {env['mmclf']}"), "",
             "| recipe | settings | mode | device | precision | batch | samples/s | MFU |",
             "|---|---|---|---|---|---:|---:|---:|"]
    for r in report["throughput"]:
        mfu = "" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %"
        lines.append(f"| {r['recipe']} | {' '.join(r['overrides']) or 'recipe'} | {r['mode']} | {r['device']} | "
                     f"{r['precision']} | {r['batch']} | {r['samples_per_s']:.1f} | {mfu} |")
    o = report["optimizer"]
    lines += ["", (f"AdamW step over {o['parameters']:,} parameters ({o['device']}): fused {1000 * o['fused_s']:.1f} ms, "
              f"one kernel per tensor {1000 * o['unfused_s']:.1f} ms ({o['speedup']:.2f}x)"), "",
              "| workflow step | steps | train loss first -> last | decreased | reloads |", "|---|---:|---|---|---|"]
    for step, t in report["workflow"]["trainings"].items():
        lines.append(f"| {step} | {t['steps']} | {t['train_losses'][0]:.3f} -> {t['train_losses'][-1]:.3f} | "
                     f"{'yes' if t['loss_decreased'] else 'NO'} | {'yes' if t['checkpoint_reloads'] else 'NO'} |")
    p = report["predict"]
    lines += ["", (f"workflow wall time {report['workflow']['wall_s']:.0f} s; predict through the pipeline on "
              f"{p['device']}: {p['rows']} rows in {p['seconds']:.1f} s = {p['rows_per_s']:.1f} rows/s"), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-dry-run", action="store_true", help="every section at tiny sizes on the CPU")
    parser.add_argument("--out", default="gpu_check_out")
    args = parser.parse_args()
    mode = "cpu-dry-run" if args.cpu_dry_run else "gpu"
    if mode == "gpu" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --cpu-dry-run, or on a machine with a GPU")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    report = {"mode": mode, "environment": environment()}
    print("throughput ...", flush=True)
    report["throughput"] = throughput(mode, out)
    print("optimizer step ...", flush=True)
    report["optimizer"] = optimizer_step(mode)
    print("the paper's workflow ...", flush=True)
    report["workflow"], work = paper_workflow(mode, out)
    if report["workflow"]["returncode"] != 0:
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
        raise SystemExit(f"the workflow failed: see {out / 'workflow.log'} and {work / 'logs'}")
    print("predict ...", flush=True)
    report["predict"] = predict_speed(mode, work, out)
    report["wall_s"] = time.perf_counter() - started
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    print(f"{report['wall_s']:.0f} s; written: {out / 'gpu_check.json'}, {out / 'gpu_check.md'}")


if __name__ == "__main__":
    main()
