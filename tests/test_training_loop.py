import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from mmclf.training import loop
from mmclf.training.config import TRAINING_DEFAULTS


class ToyData(torch.utils.data.Dataset):
    """Gaussian blobs: class k has its mean at +3 on feature k."""

    def __init__(self, rows: int, classes: int = 3, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(rows) % classes
        self.features = torch.randn(rows, 8, generator=generator)
        self.features[torch.arange(rows), self.labels] += 3.0

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"inputs": {"features": self.features[i]}, "targets": {"labels": self.labels[i]}}


class ToyModel(nn.Module):
    def __init__(self, classes: int = 3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, classes))

    def forward(self, features):
        return self.net(features)


def training_config(**changes) -> dict:
    config = dict(TRAINING_DEFAULTS, epochs=2, batch_size=8, eval_batch_size=16, lr=0.01, warmup_ratio=0.0,
                  log_with="none", num_workers=0)
    config.update(changes)
    return config


def run(tmp_path, train_rows=64, seed=0, resume=False, **changes):
    training = training_config(**changes)
    torch.manual_seed(seed)
    model = ToyModel()
    accelerator = loop.make_accelerator(training, tmp_path)
    train_loader, eval_loader = loop.make_dataloaders(ToyData(train_rows), ToyData(31, seed=1), None, training, seed,
                                                      accelerator=accelerator)
    state = loop.train(model, train_loader, eval_loader, training, tmp_path, accelerator, resume=resume)
    return accelerator.unwrap_model(model), state


def weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_loss_falls_and_best_checkpoint_is_kept(tmp_path):
    _model, state = run(tmp_path, train_rows=96, epochs=4, lr=0.02)
    losses = [record["train_loss"] for record in state.history]
    assert losses[-1] < 0.6 * losses[0]
    assert state.best_score > 0.85
    assert state.best_score == max(r["eval_macro_f1"] for r in state.history)
    assert all(r["eval_rows"] == 31 for r in state.history)
    for name in ("best", "last"):
        assert (tmp_path / "checkpoints" / name / "model.safetensors").is_file()
        assert (tmp_path / "checkpoints" / name / "random_states_0.pkl").is_file()


def test_gradient_accumulation_matches_the_large_batch(tmp_path):
    big, _ = run(tmp_path / "big", batch_size=8, gradient_accumulation_steps=1)
    small, _ = run(tmp_path / "small", batch_size=4, gradient_accumulation_steps=2)
    other, _ = run(tmp_path / "other", batch_size=4, gradient_accumulation_steps=1)
    assert torch.allclose(weights(big), weights(small), atol=1e-5)
    assert not torch.allclose(weights(big), weights(other), atol=1e-3)  # the comparison can fail


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    # a warmup+decay schedule and AdamW make the comparison sensitive to scheduler and optimizer state
    changes = {"epochs": 3, "lr": 0.05, "warmup_ratio": 0.3, "optimizer": "adamw"}
    reference, reference_state = run(tmp_path / "reference", **changes)

    save = loop.save_checkpoint

    def save_then_die(accelerator, directory):
        save(accelerator, directory)
        if directory.name == loop.LAST:
            raise KeyboardInterrupt("killed after the first epoch")

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "killed", **changes)
    monkeypatch.setattr(loop, "save_checkpoint", save)
    resumed, resumed_state = run(tmp_path / "killed", resume=True, seed=123, **changes)  # seed: resume restores RNG
    assert resumed_state.epoch == 3 and len(resumed_state.history) == 3
    final = [load_file(tmp_path / run_name / "checkpoints" / "last" / "model.safetensors")
             for run_name in ("reference", "killed")]
    assert final[0].keys() == final[1].keys()
    assert all(torch.allclose(final[0][k], final[1][k], atol=1e-6) for k in final[0])
    assert torch.allclose(weights(reference), weights(resumed), atol=1e-6)  # the best epoch's weights
    assert [r["train_loss"] for r in resumed_state.history] == pytest.approx(
        [r["train_loss"] for r in reference_state.history], abs=1e-6)


class NoisyData(ToyData):
    """ToyData with random augmentation (noise drawn from the global torch RNG when a row is fetched)."""

    def __getitem__(self, i):
        row = super().__getitem__(i)
        return {**row, "inputs": {"features": row["inputs"]["features"] + 0.5 * torch.randn(8)}}


class DropoutModel(ToyModel):
    def __init__(self, classes: int = 3):
        super().__init__(classes)
        self.net.insert(2, nn.Dropout(0.3))


def run_noisy(tmp_path, resume=False, seed=0, **changes):
    training = training_config(**changes)
    torch.manual_seed(seed)
    model = DropoutModel()
    accelerator = loop.make_accelerator(training, tmp_path)
    train_loader, eval_loader = loop.make_dataloaders(NoisyData(64), ToyData(31, seed=1), None, training, 0,
                                                      accelerator=accelerator)
    return loop.train(model, train_loader, eval_loader, training, tmp_path, accelerator, resume=resume)


def test_resume_inside_an_epoch_equals_an_uninterrupted_run(tmp_path, monkeypatch, capsys):
    # 64 rows, batches of 4, 2 batches per optimizer step: 8 steps per epoch; dropout and augmentation
    # make the comparison sensitive to every random draw
    changes = {"epochs": 2, "batch_size": 4, "gradient_accumulation_steps": 2, "lr": 0.05, "warmup_ratio": 0.3}
    save, saved = loop.save_checkpoint, []

    def save_and_count(accelerator, directory):
        saved.append(directory.name)
        save(accelerator, directory)

    monkeypatch.setattr(loop, "save_checkpoint", save_and_count)
    reference = run_noisy(tmp_path / "reference", **changes)
    assert saved.count(loop.LAST) == 2  # checkpoint_steps 0 (the default): one checkpoint per epoch

    def save_then_die(accelerator, directory):
        save_and_count(accelerator, directory)
        if saved.count(loop.LAST) == 5:  # steps 3, 6, end of epoch 1, steps 9, 12: 4 steps into epoch 2
            raise KeyboardInterrupt("killed in the middle of epoch 2")

    saved.clear()
    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_noisy(tmp_path / "killed", checkpoint_steps=3, **changes)
    monkeypatch.setattr(loop, "save_checkpoint", save)
    capsys.readouterr()
    resumed = run_noisy(tmp_path / "killed", resume=True, seed=123, checkpoint_steps=3, **changes)
    assert "after epoch 1, batch 8 of epoch 2" in capsys.readouterr().out
    final = [load_file(tmp_path / name / "checkpoints" / "last" / "model.safetensors") for name in ("reference", "killed")]
    assert all(torch.allclose(final[0][k], final[1][k], atol=1e-6) for k in final[0])
    assert [r["train_loss"] for r in resumed.history] == pytest.approx(
        [r["train_loss"] for r in reference.history], abs=1e-6)
    assert resumed.batches_in_epoch == 0


def test_augmentation_is_seeded_per_row_and_epoch():
    rows = loop.SeededRows(NoisyData(8), seed=3)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = rows[(0, 5)]["inputs"]["features"]
    assert torch.equal(torch.get_rng_state(), state)  # fetching leaves the training RNG alone
    torch.manual_seed(1)
    assert torch.equal(rows[(0, 5)]["inputs"]["features"], first)  # the same row and epoch: the same draw
    assert not torch.equal(rows[(1, 5)]["inputs"]["features"], first)  # another epoch: another draw


def test_early_stopping_stops_after_patience(tmp_path):
    _, state = run(tmp_path, epochs=6, lr=1e-12, early_stopping_patience=2)
    assert len(state.history) == 3  # the best epoch, then two without improvement
    assert state.best_epoch == 1


def test_step_schedule_multiplies_lr_every_n_epochs():
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    scheduler = loop.build_scheduler(optimizer, training_config(scheduler="step", step_epochs=2, step_gamma=0.1,
                                                                epochs=6), steps_per_epoch=3)
    lrs = []
    for _ in range(18):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(1.0) and lrs[5] == pytest.approx(1.0)
    assert lrs[6] == pytest.approx(0.1) and lrs[12] == pytest.approx(0.01)


def test_epoch_sampler_is_a_seeded_permutation_and_groups_lengths():
    sampler = loop.EpochSampler(100, seed=5)
    first = list(sampler)
    assert sorted(first) == list(range(100))
    assert list(loop.EpochSampler(100, seed=5)) == first
    sampler.set_epoch(1)
    assert list(sampler) != first
    lengths = np.random.default_rng(0).integers(1, 200, 400)
    grouped = list(loop.EpochSampler(400, seed=0, lengths=lengths, batch_size=10))
    assert sorted(grouped) == list(range(400))
    spread = np.mean([np.ptp(lengths[grouped[i:i + 10]]) for i in range(0, 400, 10)])
    assert spread < 0.5 * np.mean([np.ptp(lengths[i:i + 10]) for i in range(0, 400, 10)])
