"""Training-loop overhead: steps/s of the mmclf loop vs a bare PyTorch loop, same model, batches and data.

Both loops do forward, cross-entropy, backward, clipping, AdamW and a linear schedule; the mmclf loop adds
Accelerate's prepare/accumulate, loss tracking, the progress bar, one evaluation and two checkpoints per
epoch. Runs alternate (bare, mmclf, bare, ...) and the best of each is kept, to damp noise from other load.

    python benchmarks/bench_loop_overhead.py [--steps 300] [--repeats 3] [--hidden 1024]
"""

import argparse
import tempfile
import time

import torch
from torch import nn

from mmclf.experts.base import decay_groups
from mmclf.training import loop
from mmclf.training.config import TRAINING_DEFAULTS


class Blobs(torch.utils.data.Dataset):
    def __init__(self, rows, dim=256, classes=27):
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(rows, dim, generator=generator)
        self.y = torch.randint(0, classes, (rows,), generator=generator)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"inputs": {"features": self.x[i]}, "targets": {"labels": self.y[i]}}


class MLP(nn.Module):
    def __init__(self, dim=256, hidden=1024, classes=27):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, classes))

    def forward(self, features):
        return self.net(features)


def bare(training, train_data, steps, hidden):
    torch.manual_seed(0)
    model = MLP(hidden=hidden)
    optimizer = loop.build_optimizer(decay_groups(model, training["weight_decay"]), training)
    loader = torch.utils.data.DataLoader(train_data, batch_size=training["batch_size"], shuffle=True)
    scheduler = loop.build_scheduler(optimizer, training, len(loader))
    stamps = []
    start = time.perf_counter()
    model.train()
    for batch in loader:
        stamps.append(time.perf_counter())
        loss = nn.functional.cross_entropy(model(**batch["inputs"]), batch["targets"]["labels"])
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), training["max_grad_norm"])
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    end = time.perf_counter()
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]), steps / (end - start)


def mmclf_loop(training, train_data, eval_data, steps, hidden):
    torch.manual_seed(0)
    model = MLP(hidden=hidden)
    with tempfile.TemporaryDirectory() as run_dir:
        accelerator = loop.make_accelerator(training, run_dir)
        train_loader, eval_loader = loop.make_dataloaders(train_data, eval_data, None, training, 0,
                                                          accelerator=accelerator)
        stamps = []

        def timed_loss(outputs, targets):
            if model.training:
                stamps.append(time.perf_counter())
            return loop.cross_entropy(outputs, targets)

        start = time.perf_counter()
        loop.train(model, train_loader, eval_loader, training, run_dir, accelerator, loss_fn=timed_loss)
        end = time.perf_counter()
        return (len(stamps) - 1) / (stamps[-1] - stamps[0]), steps / (end - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=1024, help="MLP width: larger means longer steps")
    args = parser.parse_args()
    training = dict(TRAINING_DEFAULTS, epochs=1, batch_size=args.batch_size, eval_batch_size=256, lr=1e-3,
                    log_with="none")
    train_data, eval_data = Blobs(args.steps * args.batch_size), Blobs(256)
    results = {"bare PyTorch": [], "mmclf loop": []}
    for _ in range(args.repeats):
        results["bare PyTorch"].append(bare(training, train_data, args.steps, args.hidden))
        results["mmclf loop"].append(mmclf_loop(training, train_data, eval_data, args.steps, args.hidden))
    steady = {name: max(r[0] for r in rates) for name, rates in results.items()}
    whole = {name: max(r[1] for r in rates) for name, rates in results.items()}
    print(f"\n{args.steps} steps of batch {args.batch_size}, MLP 256-{args.hidden}-{args.hidden}-27, torch threads "
          f"{torch.get_num_threads()}, best of {args.repeats}")
    print("| loop | steps/s (training steps) | ratio | steps/s (whole epoch) | ratio |\n|---|---|---|---|---|")
    for name, rate in steady.items():
        print(f"| {name} | {rate:.1f} | {rate / steady['bare PyTorch']:.3f} | {whole[name]:.1f} | "
              f"{whole[name] / whole['bare PyTorch']:.3f} |")
    print("training steps: first to last step of the epoch; whole epoch: for mmclf also one evaluation of 256 rows "
          "and writing the best and last checkpoints")


if __name__ == "__main__":
    main()
