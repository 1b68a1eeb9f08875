"""The one training loop of mmclf, built on Accelerate; every network (text, image, ...) trains through it.

The loop is generic: it gets a model, train and eval dataloaders whose batches are
`{"inputs": {...}, "targets": {...}}` (`model(**inputs)` -> outputs), a loss of (outputs, targets), a
function giving class logits from outputs, optimizer parameter groups, and the `training` section of a
config; an expert supplies all of these (`mmclf.experts.base.Expert`). It
does gradient accumulation with `accelerator.accumulate`, mixed precision from the launch config,
clipping, AdamW/SGD with warmup-linear/cosine/step schedules, an evaluation with macro-F1 on
gathered predictions each epoch, `save_state` checkpoints (best by validation macro-F1, and last),
resume, early stopping and tracker logging.

Batch size is global: batches are split across processes (`split_batches=True`), so a run on N
processes sees the same batches, and reaches the same result, as a run on one.

Resume: checkpoints are written at the end of each epoch and, with `checkpoint_steps: N`, every N
optimizer steps inside an epoch too. A resumed run continues from the last one, with the model,
optimizer, scheduler, RNG states, the sampler's epoch and the loop state (epoch counter, batches done in
the unfinished epoch, best score, history): inside an epoch it skips the batches already done
(Accelerate's `skip_first_batches`) and reaches the same weights as an uninterrupted run. Random data
augmentation is seeded per row from (seed, epoch, row), so it is the same on any number of processes or
workers and after a resume.

Checkpoints load only when signed: `save_state` writes the optimizer, scheduler, RNG and loop states with
torch.save (pickles, and Accelerate loads the loop state with weights_only=False), so a crafted file in a run
folder could run code on `--resume`. Every checkpoint gets an HMAC of all its files under a secret kept outside
the run folder (`checkpoint_key`), checked before `load_state`: only checkpoints written by mmclf with the same
key load. A digest rather than our own safe format keeps Accelerate's `save_state`/`load_state`, FSDP and
DeepSpeed states included, as they are.
"""

from __future__ import annotations

import hmac
import importlib.util
import json
import math
import os
import random
import secrets
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration
from torch.utils.data import DataLoader, Dataset, Sampler
from transformers import get_scheduler

from mmclf.experts.base import decay_groups
from mmclf.progress import progress_bar
from mmclf.rundir import file_digest
from mmclf.scoring import macro_f1

BEST, LAST = "best", "last"
CHECKPOINT_SIGNATURE = "mmclf_signature.json"


@dataclass
class LoopState:
    """What a resumed run needs beyond model/optimizer/scheduler/RNG: saved with every checkpoint."""

    epoch: int = 0  # epochs completed
    batches_in_epoch: int = 0  # batches done in the unfinished epoch (a checkpoint inside an epoch)
    epoch_loss_sum: float = 0.0  # their summed training loss (mean over processes)
    best_score: float = -1.0
    best_epoch: int = -1
    epochs_without_improvement: int = 0
    history: list = field(default_factory=list)

    def state_dict(self) -> dict:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


class EpochSampler(Sampler):
    """Shuffles from (seed, epoch) alone, so the order is identical on every process and after a resume.

    With `lengths`, indices are grouped by length: shuffled, cut into chunks of 50 batches, each chunk
    sorted by length, and the resulting batches shuffled (less padding, still random).
    With `with_epoch`, it yields (epoch, index) pairs, the keys `SeededRows` reads.
    """

    def __init__(self, num_rows: int, seed: int, lengths=None, batch_size: int = 1, with_epoch: bool = False):
        self.num_rows, self.seed, self.epoch = num_rows, seed, 0
        self.lengths = None if lengths is None else np.asarray(lengths)
        self.batch_size = batch_size
        self.with_epoch = with_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.seed, self.epoch = state["seed"], state["epoch"]

    def __len__(self) -> int:
        return self.num_rows

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_rows, generator=generator).numpy()
        if self.lengths is not None:
            chunk = self.batch_size * 50
            order = np.concatenate([sorted(order[i:i + chunk], key=lambda j: -self.lengths[j])
                                    for i in range(0, len(order), chunk)])
            batches = [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]
            batch_order = torch.randperm(len(batches), generator=generator).tolist()
            order = np.concatenate([batches[b] for b in batch_order])
        if self.with_epoch:
            return ((self.epoch, i) for i in order.tolist())
        return iter(order.tolist())


LAST_BATCH_MIN_ROWS = 16  # 2 rows a process on up to 8 processes


class SeededRows(Dataset):
    """The training rows, each fetched with the random generators (torch CPU, numpy, random) seeded from
    (seed, epoch, row): a row's random augmentation does not depend on which process or worker fetches it,
    nor on what was fetched before. torch's CPU generator, which the training step draws from (dropout), is
    restored after the fetch; numpy's and random's are left as the row seeded them (nothing in the step draws
    from them, and saving numpy's state would cost more than the augmentation). Keys are the (epoch, index)
    pairs of `EpochSampler(with_epoch=True)`."""

    def __init__(self, rows, seed: int):
        self.rows, self.seed = rows, seed

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key):
        epoch, index = key
        row_seed = hash((self.seed, epoch, index)) & 0xFFFF_FFFF  # ints hash the same in every process and run
        training_rng = torch.get_rng_state()
        torch.random.default_generator.manual_seed(row_seed)  # CPU only: the GPU generators are left alone
        np.random.seed(row_seed)
        random.seed(row_seed)
        try:
            return self.rows[index]
        finally:
            torch.set_rng_state(training_rng)


def make_accelerator(training: dict, run_dir: str | Path | None = None) -> Accelerator:
    log_with = training.get("log_with", "auto")
    if log_with == "auto":
        log_with = "tensorboard" if importlib.util.find_spec("tensorboard") else None
    elif log_with in (None, "none", False):
        log_with = None
    kwargs = {} if training.get("mixed_precision") is None else {"mixed_precision": training["mixed_precision"]}
    return Accelerator(
        gradient_accumulation_steps=training.get("gradient_accumulation_steps", 1),
        log_with=log_with if run_dir is not None else None,
        project_dir=str(Path(run_dir) / "logs") if run_dir is not None else None,
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        **kwargs,
    )


def make_dataloaders(train_dataset, eval_dataset, collate_fn, training: dict, seed: int, lengths=None,
                     accelerator: Accelerator | None = None):
    pin = training.get("pin_memory", "auto")
    pin = (accelerator is not None and accelerator.device.type == "cuda") if pin == "auto" else bool(pin)
    common = {"collate_fn": collate_fn, "num_workers": training.get("num_workers", 0), "pin_memory": pin,
                  "persistent_workers": False}
    train_loader = None
    if train_dataset is not None:
        sampler = EpochSampler(len(train_dataset), seed, lengths if training.get("group_by_length") else None,
                               training["batch_size"], with_epoch=True)
        # a last batch of under LAST_BATCH_MIN_ROWS rows is dropped: BatchNorm cannot train on 1 row per process. The
        # rule does not depend on the process count, so 1 and N processes train on the same batches; the sampler
        # reshuffles every epoch, so no row is left out every time.
        remainder = len(train_dataset) % training["batch_size"]
        drop_last = len(train_dataset) > training["batch_size"] and 0 < remainder < LAST_BATCH_MIN_ROWS
        # its own generator: starting an epoch's iterator does not draw from the training RNG, so a resume
        # inside an epoch continues the same RNG sequence as an uninterrupted run
        train_loader = DataLoader(SeededRows(train_dataset, seed), batch_size=training["batch_size"], sampler=sampler,
                                  generator=torch.Generator().manual_seed(seed), drop_last=drop_last, **common)
    eval_loader = None
    if eval_dataset is not None:
        eval_loader = DataLoader(eval_dataset, batch_size=training["eval_batch_size"], shuffle=False, **common)
    return train_loader, eval_loader


def build_optimizer(groups: list[dict], training: dict) -> torch.optim.Optimizer:
    """AdamW or SGD over parameter groups; a group's `lr_scale` multiplies the recipe's learning rate.
    `fused_optimizer`: one fused kernel for all parameters (CPU and CUDA) instead of one per tensor."""
    groups = [{**{k: v for k, v in g.items() if k != "lr_scale"}, "lr": training["lr"] * g.get("lr_scale", 1.0)}
              for g in groups]
    fused = {"fused": True} if training.get("fused_optimizer") else {}
    if training["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=training["lr"], momentum=training["momentum"], **fused)
    return torch.optim.AdamW(groups, lr=training["lr"], **fused)


def build_scheduler(optimizer, training: dict, steps_per_epoch: int):
    total = steps_per_epoch * training["epochs"]
    if training.get("max_steps"):
        total = min(total, training["max_steps"])
    if training["scheduler"] == "step":
        every, gamma = training["step_epochs"], training["step_gamma"]
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: gamma ** ((step // steps_per_epoch) // every))
    warmup = int(training["warmup_ratio"] * total)
    name = "constant_with_warmup" if training["scheduler"] == "constant" else training["scheduler"]
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)


def logits_of(outputs) -> torch.Tensor:
    return outputs.logits if hasattr(outputs, "logits") else outputs


def cross_entropy(outputs, targets: dict) -> torch.Tensor:
    return F.cross_entropy(logits_of(outputs).float(), targets["labels"])


@torch.no_grad()
def predict(accelerator: Accelerator, model, loader, logits_fn=logits_of, desc: str = "predict"
            ) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of every row of a prepared, unshuffled loader, gathered over processes in row order."""
    model.eval()
    all_logits, all_labels = [], []
    for batch in progress_bar(loader, desc=desc, leave=False, disable=not accelerator.is_local_main_process):
        with accelerator.autocast():
            logits = logits_fn(model(**batch["inputs"]))
        logits, labels = accelerator.gather_for_metrics((logits.contiguous(), batch["targets"]["labels"]))
        all_logits.append(logits.float().cpu())
        all_labels.append(labels.cpu())
    return torch.cat(all_logits).numpy(), torch.cat(all_labels).numpy()


def train(model, train_loader, eval_loader, training: dict, run_dir: str | Path, accelerator: Accelerator, *,
          loss_fn=cross_entropy, logits_fn=logits_of, parameter_groups: list[dict] | None = None,
          resume: bool = False, tracker_config: dict | None = None) -> LoopState:
    """Train `model`; return the loop state. On return the model holds the best checkpoint's weights."""
    checkpoints = Path(run_dir) / "checkpoints"
    steps_per_epoch = math.ceil(len(train_loader) / training["gradient_accumulation_steps"])
    optimizer = build_optimizer(parameter_groups or decay_groups(model, training["weight_decay"]), training)
    scheduler = build_scheduler(optimizer, training, steps_per_epoch)
    sampler = train_loader.sampler
    model, optimizer, train_loader, eval_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, eval_loader, scheduler)
    if training.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    state = LoopState()
    accelerator.register_for_checkpointing(state)
    if hasattr(sampler, "state_dict"):
        accelerator.register_for_checkpointing(sampler)
    if resume and (checkpoints / LAST).is_dir():
        verify_checkpoint(checkpoints / LAST)
        accelerator.load_state(str(checkpoints / LAST))
        inside = f", batch {state.batches_in_epoch} of epoch {state.epoch + 1}" if state.batches_in_epoch else ""
        accelerator.print(f"resumed from {checkpoints / LAST} after epoch {state.epoch}{inside}")
    if accelerator.trackers == [] and accelerator.log_with:
        accelerator.init_trackers(Path(run_dir).name or "mmclf", config=tracker_config or {})

    clip = training.get("max_grad_norm") or 0
    patience = training.get("early_stopping_patience") or 0
    checkpoint_steps = training.get("checkpoint_steps") or 0
    accumulation = training["gradient_accumulation_steps"]
    max_steps = training.get("max_steps") or 0
    for epoch in range(state.epoch, training["epochs"]):
        if patience and state.epochs_without_improvement >= patience:
            break
        if max_steps and epoch * steps_per_epoch >= max_steps:
            break
        model.train()
        train_loader.set_epoch(epoch)
        batches = state.batches_in_epoch  # > 0: resuming from a checkpoint inside this epoch
        total_loss = torch.full((), state.epoch_loss_sum, device=accelerator.device)
        epoch_batches = accelerator.skip_first_batches(train_loader, batches) if batches else train_loader
        progress = progress_bar(epoch_batches, desc=f"epoch {epoch + 1}/{training['epochs']}", initial=batches,
                                total=len(train_loader), disable=not accelerator.is_local_main_process)
        for batch in progress:
            with accelerator.accumulate(model):
                loss = loss_fn(model(**batch["inputs"]), batch["targets"])
                accelerator.backward(loss)
                if clip and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), clip)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            total_loss += loss.detach()
            batches += 1
            if batches % 10 == 0:
                progress.set_postfix(loss=f"{total_loss.item() / batches:.4f}")
            steps = epoch * steps_per_epoch + batches // accumulation  # optimizer steps so far
            if (checkpoint_steps and accelerator.sync_gradients and steps % checkpoint_steps == 0
                    and batches < len(train_loader)):  # the end of the epoch has its own checkpoint
                state.batches_in_epoch = batches
                state.epoch_loss_sum = accelerator.reduce(total_loss, "mean").item()
                save_checkpoint(accelerator, checkpoints / LAST)
            if max_steps and accelerator.sync_gradients and steps >= max_steps:
                break  # evaluated and checkpointed like the end of an epoch; no epoch follows
        state.batches_in_epoch, state.epoch_loss_sum = 0, 0.0

        logits, labels = predict(accelerator, model, eval_loader, logits_fn, desc="evaluate")
        train_loss = accelerator.reduce(total_loss, "mean").item() / max(batches, 1)
        eval_loss = float(F.cross_entropy(torch.from_numpy(logits[labels >= 0]), torch.from_numpy(labels[labels >= 0])))
        score = macro_f1(labels, logits.argmax(axis=1))  # NaN when no row is labelled
        record = {"epoch": epoch + 1, "train_loss": train_loss, "eval_loss": eval_loss, "eval_macro_f1": score,
                  "eval_rows": len(labels), "train_batches": batches, "lr": scheduler.get_last_lr()[0]}
        state.epoch = epoch + 1
        state.history.append(record)
        improved = score > state.best_score
        if improved:
            state.best_score, state.best_epoch, state.epochs_without_improvement = score, epoch + 1, 0
        else:
            state.epochs_without_improvement += 1
        accelerator.log({k: v for k, v in record.items() if k != "epoch"}, step=epoch + 1)
        accelerator.print(f"epoch {epoch + 1}: train loss {train_loss:.4f}  eval loss {eval_loss:.4f}  "
                          f"eval macro-F1 {score:.4f}{'  (best)' if improved else ''}")
        if improved:
            save_checkpoint(accelerator, checkpoints / BEST)
        save_checkpoint(accelerator, checkpoints / LAST)

    if (checkpoints / BEST).is_dir():
        final = state.state_dict()
        verify_checkpoint(checkpoints / BEST)
        accelerator.load_state(str(checkpoints / BEST))  # best weights; the loop state keeps the final history
        state.load_state_dict(final)
    for tracker in accelerator.trackers:  # not end_training(): it would destroy the process group, still needed
        tracker.finish()
    return state


def save_checkpoint(accelerator: Accelerator, directory: Path) -> None:
    """save_state into `directory`, signed (`checkpoint_signature`), replacing an older checkpoint there only once
    the new one is complete."""
    partial = directory.with_name(directory.name + ".partial")
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / CHECKPOINT_SIGNATURE).write_text(json.dumps({"hmac-sha256": checkpoint_signature(partial)}))
        if directory.exists():
            shutil.rmtree(directory)
        partial.rename(directory)
    accelerator.wait_for_everyone()


def checkpoint_key_file() -> Path:
    """MMCLF_CHECKPOINT_KEY (a file path), else ~/.cache/mmclf/checkpoint.key (XDG_CACHE_HOME honoured)."""
    if os.environ.get("MMCLF_CHECKPOINT_KEY"):
        return Path(os.environ["MMCLF_CHECKPOINT_KEY"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "mmclf" / "checkpoint.key"


def checkpoint_key() -> bytes:
    """The secret that signs checkpoints, made (readable by its owner only) on first use. Processes of one run on
    several machines need the same key: point MMCLF_CHECKPOINT_KEY at one shared file."""
    path = checkpoint_key_file()
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        staged = path.with_name(f".{path.name}.{os.getpid()}")
        handle = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(handle, secrets.token_hex(32).encode())
        os.close(handle)
        try:
            os.link(staged, path)  # atomic: of processes making it at once, one key wins
        except FileExistsError:
            pass
        finally:
            staged.unlink()
    key = path.read_bytes().strip()
    if len(key) < 32:
        raise ValueError(f"checkpoint key {path} is too short ({len(key)} bytes): remove it to make a new one")
    return key


def checkpoint_signature(directory: Path) -> str:
    """HMAC-SHA256 under `checkpoint_key` of every file's relative path and content digest."""
    directory = Path(directory)
    mac = hmac.new(checkpoint_key(), digestmod="sha256")
    for file in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != CHECKPOINT_SIGNATURE):
        mac.update(f"{file.relative_to(directory).as_posix()}\0{file_digest(file)}\n".encode())
    return mac.hexdigest()


def verify_checkpoint(directory: Path) -> None:
    """Refuse a checkpoint that this key did not sign, before any of its files is unpickled."""
    try:
        signed = json.loads((Path(directory) / CHECKPOINT_SIGNATURE).read_text())["hmac-sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        signed = None
    if not isinstance(signed, str) or not hmac.compare_digest(signed, checkpoint_signature(directory)):
        raise ValueError(
            f"{directory}: checkpoint not signed by this machine's mmclf key ({checkpoint_key_file()}), or changed "
            f"since: its {CHECKPOINT_SIGNATURE} is missing or does not match. Its optimizer, RNG and loop states are "
            "pickles, which can run code, so it is not loaded; start the run again in a new output folder (or, for "
            "a run of yours from another machine, set MMCLF_CHECKPOINT_KEY to that machine's key file)")
