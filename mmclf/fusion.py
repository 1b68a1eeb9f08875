"""Decision-level fusion: a shallow network over the experts' concatenated class probabilities.

The head is one linear layer (hidden_size=0) or linear -> ReLU -> linear with a small hidden
layer (6 in the paper), trained with cross-entropy and Adam (lr 0.01, 40 epochs, mini-batches
of 256 rows, reshuffled each epoch) on CPU. Training uses stratified, seeded k-fold
cross-validation (k=8) over the labelled rows: each fold keeps the epoch with the best
macro-F1 on its held-out part. At inference the k fold heads vote (see mmclf.ensemble for the
tie-break: highest mean softmax probability of the fold heads among the tied classes, then the
lowest class index); the fused class scores are the mean of the fold heads' softmax.

Each training row is also predicted by the one fold head that never saw it; these out-of-fold
fused probabilities (probs/oof.parquet) score the fusion without a leak.

If the rarest labelled class has fewer rows than folds, the number of folds is reduced to that
count with a warning (recorded as folds_used); a class with a single labelled row is an error.

`mmclf fuse --tables A.parquet B.parquet --predict-tables A_test.parquet B_test.parquet --out DIR`
writes DIR/fusion.json (every option), DIR/folds/<i>/ (save_pretrained heads),
DIR/cv_metrics.json, DIR/probs/oof.parquet, DIR/probs/<split>.parquet and DIR/predictions.csv.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from sklearn.model_selection import StratifiedKFold
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from tqdm.auto import tqdm

from mmclf.ensemble import majority_vote
from mmclf.evaluation import macro_f1
from mmclf.hub import from_pretrained_quietly
from mmclf.probability_tables import ProbabilityTable, TableMismatchError, align_tables


class FusionHead(nn.Module, PyTorchModelHubMixin, library_name="mmclf", tags=["mmclf", "decision-level-fusion"]):
    """Logits over the classes from the concatenated probabilities of the experts, in expert order."""

    def __init__(self, class_names: list[str], expert_sources: list[str], hidden_size: int = 0):
        super().__init__()
        self.class_names = list(class_names)
        self.expert_sources = list(expert_sources)
        self.hidden_size = hidden_size
        num_inputs = len(self.expert_sources) * len(self.class_names)
        num_classes = len(self.class_names)
        if hidden_size > 0:
            self.layers = nn.Sequential(
                nn.Linear(num_inputs, hidden_size), nn.ReLU(), nn.Linear(hidden_size, num_classes)
            )
        else:
            self.layers = nn.Sequential(nn.Linear(num_inputs, num_classes))

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        return self.layers(probs)


def expert_features(tables: list[ProbabilityTable]) -> tuple[list[ProbabilityTable], np.ndarray]:
    """Align the tables (same ids, splits, labels, class order) and concatenate their probabilities."""
    tables = align_tables(list(tables))
    for table in tables:
        bad = np.flatnonzero(~np.isfinite(table.probs).all(axis=1))
        if len(bad):
            raise ValueError(f"{table.name}: row {bad[0]} (id {table.ids[bad[0]]!r}) has NaN or infinite probabilities")
    return tables, np.concatenate([t.probs for t in tables], axis=1)


def choose_folds(labels: np.ndarray, class_names: list[str], folds: int) -> int:
    if folds < 2:
        raise ValueError(f"folds must be at least 2, got {folds}")
    classes, counts = np.unique(labels, return_counts=True)
    rarest = int(counts.argmin())
    if counts[rarest] < 2:
        raise ValueError(
            f"class {class_names[classes[rarest]]!r} has a single labelled row; "
            "cross-validated fusion needs at least 2 rows per class present"
        )
    if counts[rarest] < folds:
        warnings.warn(
            f"class {class_names[classes[rarest]]!r} has only {counts[rarest]} labelled rows: "
            f"using {counts[rarest]} folds instead of {folds}",
            stacklevel=3,
        )
        return int(counts[rarest])
    return folds


def train_fold_heads(heads, x, y, train_rows, heldout_rows, *, epochs, lr, batch_size, generator, progress=None):
    """Train the k fold heads at once (vmap over stacked parameters; Adam is per-element, so each
    head trains as if alone) with cross-entropy; each head keeps its best held-out macro-F1 epoch.

    Returns one result per fold: best macro-F1, best epoch and the per-epoch history.
    """
    folds = len(heads)
    params, buffers = stack_module_state(heads)
    template = copy.deepcopy(heads[0]).to("meta")
    batched_logits = vmap(lambda p, b, inputs: functional_call(template, (p, b), (inputs,)))
    optimizer = torch.optim.Adam(params.values(), lr=lr)
    steps = math.ceil(max(len(rows) for rows in train_rows) / batch_size)
    width = steps * batch_size
    results = [{"best_macro_f1": -1.0, "best_epoch": 0, "history": []} for _ in range(folds)]
    best_params = [None] * folds
    for epoch in range(1, epochs + 1):
        # each fold reshuffles its own rows; folds with fewer rows are padded with masked-out rows
        order = torch.zeros(folds, width, dtype=torch.long)
        mask = torch.zeros(folds, width)
        for fold, rows in enumerate(train_rows):
            order[fold, : len(rows)] = rows[torch.randperm(len(rows), generator=generator)]
            mask[fold, : len(rows)] = 1.0
        loss_sums = torch.zeros(folds)
        for step in range(steps):
            batch = order[:, step * batch_size : (step + 1) * batch_size]
            weight = mask[:, step * batch_size : (step + 1) * batch_size]
            logits = batched_logits(params, buffers, x[batch])
            losses = F.cross_entropy(logits.flatten(0, 1), y[batch].flatten(), reduction="none").view_as(weight)
            per_fold = (losses * weight).sum(dim=1)
            optimizer.zero_grad(set_to_none=True)
            (per_fold / weight.sum(dim=1).clamp(min=1.0)).sum().backward()
            optimizer.step()
            loss_sums += per_fold.detach()
        with torch.no_grad():
            for fold, rows in enumerate(heldout_rows):
                fold_params = {name: value[fold] for name, value in params.items()}
                fold_buffers = {name: value[fold] for name, value in buffers.items()}
                predicted = functional_call(template, (fold_params, fold_buffers), (x[rows],)).argmax(dim=1)
                score = macro_f1(y[rows].numpy(), predicted.numpy())
                result = results[fold]
                result["history"].append({"epoch": epoch, "train_loss": float(loss_sums[fold]) / len(train_rows[fold]),
                                          "heldout_macro_f1": score})
                if score > result["best_macro_f1"]:
                    result["best_macro_f1"], result["best_epoch"] = score, epoch
                    best_params[fold] = {name: value.detach().clone() for name, value in fold_params.items()}
        if progress is not None:
            progress.update(1)
            progress.set_postfix(mean_best_f1=f"{np.mean([r['best_macro_f1'] for r in results]):.4f}")
    for head, state in zip(heads, best_params):
        head.load_state_dict(state)
        head.eval()
    return results


@dataclass
class FusionModel:
    heads: list[FusionHead]
    options: dict
    cv_metrics: dict = field(default_factory=dict)
    oof: ProbabilityTable | None = None

    @property
    def class_names(self) -> list[str]:
        return self.heads[0].class_names

    @property
    def expert_sources(self) -> list[str]:
        return self.heads[0].expert_sources

    def fold_probs(self, tables: list[ProbabilityTable]) -> tuple[list[ProbabilityTable], np.ndarray]:
        """Aligned tables and the softmax of every fold head: [folds, rows, classes]."""
        if len(tables) != len(self.expert_sources):
            raise TableMismatchError(
                f"the fusion model was trained on {len(self.expert_sources)} experts "
                f"({self.expert_sources}); got {len(tables)} tables"
            )
        for table in tables:
            if table.class_names != self.class_names:
                raise TableMismatchError(
                    f"class order of {table.name} differs from the fusion model's: "
                    f"{table.class_names[:5]}... vs {self.class_names[:5]}..."
                )
        tables, features = expert_features(tables)
        inputs = torch.from_numpy(features)
        with torch.no_grad():
            probs = torch.stack([head.eval()(inputs).softmax(dim=1) for head in self.heads])
        return tables, probs.numpy()

    def predict(self, tables: list[ProbabilityTable]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fold heads' majority vote -> (predicted class indices, vote counts, mean probabilities)."""
        _, probs = self.fold_probs(tables)
        mean_probs = probs.mean(axis=0)
        winners, votes = majority_vote(probs.argmax(axis=2), len(self.class_names), mean_probs)
        return winners, votes, mean_probs

    def predict_table(self, tables: list[ProbabilityTable]) -> tuple[ProbabilityTable, np.ndarray, np.ndarray]:
        """Like predict, with the mean probabilities as a ProbabilityTable in the first table's row order."""
        aligned, probs = self.fold_probs(tables)
        mean_probs = probs.mean(axis=0)
        winners, votes = majority_vote(probs.argmax(axis=2), len(self.class_names), mean_probs)
        first = aligned[0]
        table = ProbabilityTable(first.ids, first.splits, first.labels, mean_probs, self.class_names,
                                 source=fusion_source(self.expert_sources))
        return table, winners, votes

    def save(self, directory: str | Path, extra_options: dict | None = None) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for fold, head in enumerate(self.heads):
            head.save_pretrained(directory / "folds" / str(fold))
        options = {
            **self.options,
            **(extra_options or {}),
            "class_names": self.class_names,
            "expert_sources": self.expert_sources,
            "num_fold_heads": len(self.heads),
        }
        (directory / "fusion.json").write_text(json.dumps(options, indent=2))
        (directory / "cv_metrics.json").write_text(json.dumps(self.cv_metrics, indent=2))
        if self.oof is not None:
            self.oof.save(directory / "probs" / "oof.parquet")
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> FusionModel:
        directory = Path(directory)
        config_path = directory / "fusion.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"not a fusion run directory (no fusion.json): {directory}")
        options = json.loads(config_path.read_text())
        heads = [from_pretrained_quietly(FusionHead, directory / "folds" / str(i))
                 for i in range(options["num_fold_heads"])]
        cv_path, oof_path = directory / "cv_metrics.json", directory / "probs" / "oof.parquet"
        cv_metrics = json.loads(cv_path.read_text()) if cv_path.is_file() else {}
        oof = ProbabilityTable.load(oof_path) if oof_path.is_file() else None
        return cls(heads=heads, options=options, cv_metrics=cv_metrics, oof=oof)


def fusion_source(expert_sources: list[str]) -> str:
    return "fusion(" + ", ".join(expert_sources) + ")"


def fit_decision_fusion(
    train_tables: list[ProbabilityTable],
    *,
    folds: int = 8,
    hidden_size: int = 0,
    epochs: int = 40,
    lr: float = 0.01,
    batch_size: int = 256,
    seed: int = 0,
    progress: bool = True,
) -> FusionModel:
    """Train k fold heads on the labelled rows of the experts' tables (rows with label -1 are ignored)."""
    if not train_tables:
        raise ValueError("no probability tables given")
    tables, features = expert_features(train_tables)
    first = tables[0]
    class_names = first.class_names
    labelled = np.flatnonzero(first.labels >= 0)
    if len(labelled) == 0:
        raise ValueError(
            f"{first.name} has no labelled rows to train fusion on (splits: {sorted(set(first.splits))})"
        )
    too_big = labelled[first.labels[labelled] >= len(class_names)]
    if len(too_big):
        raise ValueError(f"{first.name}: row {too_big[0]} has label {first.labels[too_big[0]]} outside the class list")
    labels = first.labels[labelled]
    x_all = torch.from_numpy(features[labelled])
    y_all = torch.from_numpy(labels)
    folds_used = choose_folds(labels, class_names, folds)
    sources = [t.source or t.name for t in tables]
    options = {"folds_requested": folds, "folds_used": folds_used, "hidden_size": hidden_size, "epochs": epochs,
               "lr": lr, "batch_size": batch_size, "seed": seed, "optimizer": "adam", "loss": "cross_entropy",
               "activation": "relu" if hidden_size > 0 else "none", "num_train_rows": len(labelled)}

    splitter = StratifiedKFold(n_splits=folds_used, shuffle=True, random_state=seed)
    fold_splits = [(torch.from_numpy(tr), torch.from_numpy(ho)) for tr, ho in splitter.split(np.zeros(len(labels)), labels)]
    heads = []
    with torch.random.fork_rng(devices=[]):
        for fold in range(folds_used):
            torch.manual_seed(seed * 1000 + fold)
            heads.append(FusionHead(class_names, sources, hidden_size))
    generator = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the matrices are tiny: thread hand-offs cost more than they save
    try:
        with tqdm(total=epochs, desc=f"fusion ({folds_used} folds)", disable=not progress) as bar:
            results = train_fold_heads(
                heads, x_all, y_all, [tr for tr, _ in fold_splits], [ho for _, ho in fold_splits],
                epochs=epochs, lr=lr, batch_size=batch_size, generator=generator, progress=bar,
            )
        oof_probs = np.zeros((len(labelled), len(class_names)), dtype=np.float32)
        fold_metrics = []
        with torch.no_grad():
            for fold, (head, (train_rows, heldout_rows), result) in enumerate(zip(heads, fold_splits, results)):
                oof_probs[heldout_rows.numpy()] = head(x_all[heldout_rows]).softmax(dim=1).numpy()
                fold_metrics.append({"fold": fold, "train_rows": len(train_rows), "heldout_rows": len(heldout_rows),
                                     **result})
    finally:
        torch.set_num_threads(threads)

    best = np.array([m["best_macro_f1"] for m in fold_metrics])
    cv_metrics = {
        "folds": fold_metrics,
        "mean_best_macro_f1": float(best.mean()),
        "std_best_macro_f1": float(best.std()),
        "oof_macro_f1": macro_f1(labels, oof_probs.argmax(axis=1)),
        "expert_macro_f1": {
            source: macro_f1(labels, t.probs[labelled].argmax(axis=1)) for source, t in zip(sources, tables)
        },
    }
    oof = ProbabilityTable(
        [first.ids[i] for i in labelled], [first.splits[i] for i in labelled], labels, oof_probs, class_names,
        source=fusion_source(sources) + " out-of-fold",
    )
    return FusionModel(heads=heads, options=options, cv_metrics=cv_metrics, oof=oof)


def add_arguments(parser) -> None:
    parser.add_argument("--level", choices=["decision", "feature"], default="decision",
                        help="decision (default): over probability tables; feature: the baseline over frozen experts' "
                        "features (needs --experts and --dataset)")
    parser.add_argument("--tables", nargs="+",
                        help="one probability table per expert to train on: RUN/probs/oof.parquet (out-of-fold, "
                        "recommended) or RUN/probs/validation.parquet (the paper's in-sample choice)")
    parser.add_argument("--predict-tables", nargs="+", default=None,
                        help="one probability table per expert, same expert order, with the rows to predict")
    parser.add_argument("--out", required=True, help="fusion run directory")
    parser.add_argument("--train-splits", nargs="+", default=None,
                        help="splits of the tables to train on (default: every labelled row)")
    parser.add_argument("--folds", type=int, default=8, help="cross-validation folds = fold heads that vote (default 8)")
    parser.add_argument("--hidden-size", type=int, default=0,
                        help="0: one linear layer; >0: linear -> ReLU -> linear with this hidden size (paper: 6)")
    parser.add_argument("--epochs", type=int, default=40, help="epochs per fold (default 40)")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam learning rate")
    parser.add_argument("--batch-size", type=int, default=256, help="rows per Adam step (default 256)")
    parser.add_argument("--seed", type=int, default=0)
    feature = parser.add_argument_group("feature level")
    feature.add_argument("--experts", nargs="+", metavar="NAME=MODEL_DIR", help="saved experts (RUN/model)")
    feature.add_argument("--dataset", help="built dataset: trained on train, selected on validation, all splits predicted")
    feature.add_argument("--combine", choices=["concat", "sum", "attention"], default="concat")


def run_feature_level(args) -> int:
    from datasets import load_from_disk

    from mmclf.feature_fusion import fuse_expert_features

    if not args.experts or not args.dataset:
        raise ValueError("--level feature needs --experts NAME=MODEL_DIR ... and --dataset DIR")
    experts = dict(item.split("=", 1) for item in args.experts if "=" in item)
    if len(experts) != len(args.experts):
        raise ValueError(f"--experts expects NAME=MODEL_DIR items, got {args.experts}")
    metrics = fuse_expert_features(experts, load_from_disk(args.dataset), args.out, combine=args.combine,
                                   seed=args.seed, hidden_size=args.hidden_size)
    scores = ", ".join(f"{k}: {v:.4f}" for k, v in metrics.items() if k.endswith("macro_f1"))
    print(f"feature-level fusion ({args.combine}) written to {args.out}; {scores}")
    return 0


def run(args) -> int:
    if args.level == "feature":
        return run_feature_level(args)
    if not args.tables:
        raise ValueError("decision-level fusion needs --tables (one probability table per expert)")
    tables = [ProbabilityTable.load(path) for path in args.tables]
    if args.train_splits:
        selected = [t.split_rows(*args.train_splits) for t in tables]
        if len(selected[0]) == 0:
            raise ValueError(
                f"{args.tables[0]} has no rows of splits {args.train_splits} (splits: {sorted(set(tables[0].splits))})"
            )
        tables = selected
    model = fit_decision_fusion(tables, folds=args.folds, hidden_size=args.hidden_size, epochs=args.epochs,
                                lr=args.lr, batch_size=args.batch_size, seed=args.seed)
    out = Path(args.out)
    cli_options = {"tables": [str(p) for p in args.tables], "predict_tables": args.predict_tables,
                   "train_splits": args.train_splits}
    model.save(out, extra_options=cli_options)
    cv = model.cv_metrics
    experts = ", ".join(f"{s}: {f:.4f}" for s, f in cv["expert_macro_f1"].items())
    print(f"fusion out-of-fold macro-F1 {cv['oof_macro_f1']:.4f} (experts on the same rows: {experts}); "
          f"mean best fold macro-F1 {cv['mean_best_macro_f1']:.4f}")

    if args.predict_tables:
        if len(args.predict_tables) != len(args.tables):
            raise ValueError(
                f"--predict-tables needs one table per expert in the order of --tables: "
                f"{len(args.tables)} expected, {len(args.predict_tables)} given"
            )
        table, winners, votes = model.predict_table([ProbabilityTable.load(p) for p in args.predict_tables])
        for split in dict.fromkeys(table.splits):
            table.split_rows(split).save(out / "probs" / f"{split}.parquet")
        pd.DataFrame({"id": table.ids, "split": table.splits,
                      "prediction": [model.class_names[w] for w in winners], "votes": votes}
                     ).to_csv(out / "predictions.csv", index=False)
        print(f"predicted {len(table)} rows ({', '.join(dict.fromkeys(table.splits))}) -> {out / 'predictions.csv'}")
    print(f"fusion run written to {out}")
    return 0
