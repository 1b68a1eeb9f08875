"""Optimizer step time, as the loop builds it (`loop.build_optimizer`), with and without
`training.fused_optimizer`, on the parameters of a model of the recipes (random weights, random gradients).
Settings alternate, the best of each is kept.

    python benchmarks/bench_optimizer.py [--model camembert-base] [--steps 10] [--repeats 3]
"""

import argparse
import time

import torch
from transformers import AutoModelForSequenceClassification, CamembertConfig

from mmclf.experts.base import decay_groups
from mmclf.training import loop
from mmclf.training.config import TRAINING_DEFAULTS

MODELS = {
    "camembert-base": {},  # CamembertConfig's defaults are camembert-base's shape
    "camembert-large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                        "intermediate_size": 4096},
}


def step_seconds(model, training: dict, steps: int) -> float:
    optimizer = loop.build_optimizer(decay_groups(model, training["weight_decay"]), training)
    optimizer.step()  # state allocated outside the timing
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="camembert-base")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(CamembertConfig(vocab_size=32005, num_labels=27,
                                                                           **MODELS[args.model]))
    for parameter in model.parameters():
        parameter.grad = torch.randn_like(parameter)
    best = {}
    for _ in range(args.repeats):
        for optimizer in ("adamw", "sgd"):
            for fused in (False, True):
                training = dict(TRAINING_DEFAULTS, optimizer=optimizer, fused_optimizer=fused)
                seconds = step_seconds(model, training, args.steps)
                best[optimizer, fused] = min(best.get((optimizer, fused), seconds), seconds)
    parameters = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"\n{args.model} shape, {parameters:.0f} M parameters, {torch.get_num_threads()} torch threads, "
          f"best of {args.repeats} x {args.steps} steps")
    print("| optimizer | per-tensor (ms / step) | fused (ms / step) | speed-up |\n|---|---:|---:|---:|")
    for optimizer in ("adamw", "sgd"):
        plain, fused = best[optimizer, False], best[optimizer, True]
        print(f"| {optimizer} | {1000 * plain:.0f} | {1000 * fused:.0f} | {plain / fused:.1f}x |")


if __name__ == "__main__":
    main()
