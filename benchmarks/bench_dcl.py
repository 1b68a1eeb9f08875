"""DCL measurements, three parts (run one with its name, or all CPU ones with no name):

    python benchmarks/bench_dcl.py transform [--images 96]
        cost per image at 448 px of a DCL training row (the image expert's decode, resize 512, rotation, random crop
        448, flip, normalise + the destroyed copy and its permutation) against the image expert's, on 500 px JPEGs

    python benchmarks/bench_dcl.py quality [--seeds 0 1 2] [--rows 2000] [--out /tmp/bench-dcl]
        on the demo catalog, per seed: stage 1 (image-tiny), then from it the same stage-2 budget (epochs, lr
        schedule, image size) once as a plain fine-tune and once with DCL (image-tiny-dcl); test macro-F1 of each

    python benchmarks/bench_dcl.py throughput [--model resnet152 --image-size 448 --batch-size 32 --peak-tflops P]
        on a GPU: training rows/s and model-FLOPs utilisation of DCL and of plain fine-tuning at the same input in
        bf16 (FLOPs counted with torch.utils.flop_counter on one step; MFU = FLOPs/s over the GPU's dense bf16 peak,
        989 TFLOP/s for an H100/H200 SXM unless --peak-tflops says otherwise); on a CPU it runs as a check only
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from mmclf.experts.dcl import DCLExpert
from mmclf.experts.image import ImageExpert
from mmclf.experts.region_confusion import region_confusion


def bench_transform(images: int) -> None:
    from bench_image_pipeline import jpeg_dataset

    torch.set_num_threads(1)  # per image, on one core (as in a DataLoader worker)
    dataset = jpeg_dataset(images, 500)
    config = dict(DCLExpert.config_defaults, name="test_resnet")  # 448 px crop of a 512 px resize, 7x7 grid, k=1
    dcl = DCLExpert.build(config, ["a", "b"])
    plain = ImageExpert.build({key: config[key] for key in ImageExpert.config_defaults}, ["a", "b"])
    plain_rows, dcl_rows = plain.encode(dataset, train=True), dcl.encode(dataset, train=True)
    generator = torch.Generator().manual_seed(0)
    names = ("image expert training row: JPEG decode, resize 512, rotate, crop 448, flip, normalise",
             "DCL training row: the same + the destroyed copy and its permutation, seeded per row",
             "region confusion alone (on the augmented 448 px tensor)")
    steps = {name: [] for name in names}
    for i in range(images):  # the three timed back to back per image, so a busy machine slows them alike
        times = [time.perf_counter()]
        augmented = plain_rows[i]["pixel_values"]
        times.append(time.perf_counter())
        dcl_rows[i]
        times.append(time.perf_counter())
        region_confusion(augmented, grid=7, max_shift=1, generator=generator)
        times.append(time.perf_counter())
        for values, before, after in zip(steps.values(), times, times[1:]):
            values.append(after - before)
    plain_row = statistics.median(steps[names[0]])
    print(f"\n{images} JPEGs of 500 px, one core, median µs per image")
    print("| step | µs / image | relative to the image expert's row |\n|---|---:|---:|")
    for name, values in steps.items():
        print(f"| {name} | {statistics.median(values) * 1e6:,.0f} | {statistics.median(values) / plain_row:.2f}x |")


def train_run(config_name: str, overrides: list[str], training_from: dict | None = None) -> tuple[Path, float]:
    from mmclf.training.config import load_config
    from mmclf.training.train import train_expert

    config = load_config(config_name, overrides)
    if training_from is not None:  # the same stage-2 budget as the DCL recipe
        config["training"] = dict(training_from["training"])
        config["model"] = {k: training_from["model"][k] for k in config["model"]}
    run_dir = Path(config["output_dir"])
    if (run_dir / "metrics.json").is_file():
        return run_dir, json.loads((run_dir / "seconds.json").read_text())["seconds"]
    start = time.perf_counter()
    train_expert(config)
    seconds = time.perf_counter() - start
    (run_dir / "seconds.json").write_text(json.dumps({"seconds": seconds}))
    return run_dir, seconds


def macro_f1_on_test(run_dir: Path) -> float:
    from mmclf.evaluation import macro_f1
    from mmclf.probability_tables import ProbabilityTable

    table = ProbabilityTable.load(run_dir / "probs" / "test.parquet")
    return float(macro_f1(table.labels, table.predictions()))


def bench_quality(seeds: list[int], rows: int, out: Path, stage2_epochs: int) -> None:
    from mmclf.data.build import build_dataset
    from mmclf.demo_catalog import generate_catalog
    from mmclf.training.config import load_config

    results = []
    for seed in seeds:
        root = out / f"seed{seed}"
        catalog, dataset = root / "catalog", root / "dataset"
        if not (dataset / "summary.json").is_file():
            generate_catalog(catalog, rows=rows, seed=seed, overwrite=True)
            build_dataset(catalog / "X_train.csv", catalog / "Y_train.csv", catalog / "image_train", dataset,
                          test_file=catalog / "X_test.csv", test_labels_file=catalog / "Y_test.csv",
                          test_images_dir=catalog / "image_test", seed=seed, overwrite=True)
        common = [f"dataset={dataset}", f"seed={seed}", "training.log_with=none"]
        stage1, stage1_seconds = train_run("image-tiny", [*common, f"output_dir={root / 'stage1'}"])
        stage2 = [*common, f"init_from={stage1}", f"training.epochs={stage2_epochs}"]
        dcl_config = load_config("image-tiny-dcl", [*stage2, "output_dir=unused"])
        plain, plain_seconds = train_run("image-tiny", [*stage2, f"output_dir={root / 'plain'}"], dcl_config)
        dcl, dcl_seconds = train_run("image-tiny-dcl", [*stage2, f"output_dir={root / 'dcl'}"])
        results.append({"seed": seed, "stage1": macro_f1_on_test(stage1), "plain": macro_f1_on_test(plain),
                         "dcl": macro_f1_on_test(dcl), "stage1_s": stage1_seconds, "plain_s": plain_seconds,
                         "dcl_s": dcl_seconds})
        print(json.dumps(results[-1]))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\ntest macro-F1 on the demo catalog ({rows} train rows), stage 2: {stage2_epochs} epochs from stage 1")
    print("| seed | stage 1 (image-tiny) | + plain fine-tune | + DCL | DCL - plain | plain s | DCL s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['seed']} | {r['stage1']:.3f} | {r['plain']:.3f} | {r['dcl']:.3f} | {r['dcl'] - r['plain']:+.3f} "
              f"| {r['plain_s']:.0f} | {r['dcl_s']:.0f} |")
    if len(results) > 1:
        def mean_std(key):
            values = [r[key] for r in results]
            return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"
        differences = [r["dcl"] - r["plain"] for r in results]
        print(f"| mean ± std | {mean_std('stage1')} | {mean_std('plain')} | {mean_std('dcl')} | "
              f"{statistics.mean(differences):+.3f} | | |")


def time_training_step(accelerator, expert, images: int, image_size: int, grid: int, steps: int) -> tuple[float, int]:
    """(seconds per training step, FLOPs of one step) of `expert` on a synthetic batch of `images` images."""
    from torch.utils.flop_counter import FlopCounterMode

    from mmclf.training import loop

    training = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4}
    device = accelerator.device
    pixels = torch.randn(images, 3, image_size, image_size, device=device).to(memory_format=torch.channels_last)
    targets = {"labels": torch.randint(0, 27, (images,), device=device),
               "adversarial_labels": torch.randint(0, 2, (images,), device=device),
               "location": torch.rand(images, 2, grid, grid, device=device) * 2 - 1}
    optimizer = loop.build_optimizer(expert.parameter_groups(training), training)
    model, optimizer = accelerator.prepare(expert.model, optimizer)
    model = model.to(memory_format=torch.channels_last).train()

    def step():
        with accelerator.autocast():
            loss = expert.loss(model(pixels), targets)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # warm-up (cudnn autotuning, allocator)
        step()
    with FlopCounterMode(display=False) as counter:
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps, counter.get_total_flops()


def bench_throughput(model: str, image_size: int, batch_size: int, steps: int, peak_tflops: float | None,
                     grid: int) -> None:
    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision="bf16" if torch.cuda.is_available() else "no")
    classes = [str(i) for i in range(27)]
    config = dict(DCLExpert.config_defaults, name=model, image_size=image_size, resize_size=image_size, grid=grid)
    rates = {}
    for kind in ("plain", "dcl"):
        expert = (DCLExpert.build(config, classes) if kind == "dcl"
                  else ImageExpert.build({k: config[k] for k in ImageExpert.config_defaults}, classes))
        images = 2 * batch_size if kind == "dcl" else batch_size  # a DCL row is an image and its destroyed copy
        seconds, flops = time_training_step(accelerator, expert, images, image_size, grid, steps)
        rates[kind] = (batch_size / seconds, flops / seconds, flops / batch_size)
        accelerator.free_memory()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU (a check only: no bf16, no MFU)"
    peak = (peak_tflops or 989.0) * 1e12
    print(f"\n{model} at {image_size} px, {batch_size} rows per step, {device}")
    print("| training | rows/s | images/s | TFLOP/s | MFU | GFLOP per row |\n|---|---:|---:|---:|---:|---:|")
    for kind, (rows_per_s, flops_per_s, flops_per_row) in rates.items():
        images = rows_per_s * (2 if kind == "dcl" else 1)
        mfu = f"{flops_per_s / peak:.1%}" if torch.cuda.is_available() else "-"
        print(f"| {kind} | {rows_per_s:,.1f} | {images:,.1f} | {flops_per_s / 1e12:.1f} | {mfu} | "
              f"{flops_per_row / 1e9:.1f} |")
    print(f"DCL / plain: {rates['dcl'][2] / rates['plain'][2]:.2f}x the FLOPs per row, "
          f"{rates['plain'][0] / rates['dcl'][0]:.2f}x the time per row")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", nargs="?", choices=["transform", "quality", "throughput"])
    parser.add_argument("--images", type=int, default=96)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--stage2-epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-dcl"))
    parser.add_argument("--model", default="resnet152")
    parser.add_argument("--image-size", type=int, default=448)
    parser.add_argument("--grid", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak (default 989)")
    args = parser.parse_args()
    if args.part in (None, "transform"):
        bench_transform(args.images)
    if args.part in (None, "quality"):
        bench_quality(args.seeds, args.rows, args.out, args.stage2_epochs)
    if args.part == "throughput":
        bench_throughput(args.model, args.image_size, args.batch_size, args.steps, args.peak_tflops, args.grid)


if __name__ == "__main__":
    main()
