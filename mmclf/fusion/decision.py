"""Decision-level fusion: a shallow network over the experts' concatenated class probabilities.

The head is one linear layer (hidden_size=0) or linear -> ReLU -> linear with a small hidden
layer (6 in the paper), trained with cross-entropy and Adam (lr 0.01, 40 epochs, mini-batches
of 256 rows, reshuffled each epoch) on CPU by the heads trainer (`mmclf.fusion.trainer`).
By default the head's logits are the experts' weighted mean log-probability (a weighted product
of experts, one learnt weight per expert, starting equal) plus the layers over the probabilities
as a correction that starts at zero, and the loss is weighed by inverse class frequency: where one
expert is weak, or its modality is missing on most rows, the head starts from the experts'
consensus and learns how little to trust the weak one, instead of having to find the strong
expert from a random start. The paper's head (the layers alone, random start, plain
cross-entropy) stays available: start="random", class_weight=None.
Training uses stratified, seeded k-fold cross-validation (k=8) over the labelled rows: each fold
keeps the epoch with the best macro-F1 on its held-out part. At inference the k fold heads vote
(see mmclf.fusion.ensemble for the tie-break: highest mean softmax probability of the fold heads
among the tied classes, then the lowest class index); the fused class scores are the mean of the
fold heads' softmax.

Experts are matched by name, never by position: a fusion records the names of the experts it was
trained on (a table's expert name is its source, the expert run directory's name, or NAME given as
`--tables NAME=PATH`) and their class order; tables or experts given later in any order are matched
by name, and refused with a clear error when a name is missing or the class order differs.

Each training row is also predicted by the one fold head that never saw it; these out-of-fold
fused probabilities (probs/oof.parquet) score the fusion without a leak.

If the rarest labelled class has fewer rows than folds, the number of folds is reduced to that
count with a warning (recorded as folds_used); a class with a single labelled row is an error.

`mmclf fuse --tables A.parquet B.parquet --predict-tables A_test.parquet B_test.parquet --out DIR`
writes DIR/fusion.json (every option), DIR/folds/<i>/ (save_pretrained heads), DIR/README.md,
DIR/cv_metrics.json, DIR/probs/oof.parquet, DIR/probs/<split>.parquet and DIR/predictions.csv.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from huggingface_hub import PyTorchModelHubMixin
from sklearn.model_selection import StratifiedKFold
from torch import nn

from mmclf.evaluation import macro_f1, scores
from mmclf.fusion.ensemble import majority_vote
from mmclf.fusion.trainer import train_heads
from mmclf.hub import Artifact, from_pretrained_quietly, write_model_card
from mmclf.probability_tables import ProbabilityTable, TableMismatchError, align_tables, check_expert_classes
from mmclf.progress import progress_bar
from mmclf.rundir import staged_file, write_json

FUSION_FILE = "fusion.json"
FUSION_INPUTS = ("probs", "log_probs")
FUSION_STARTS = ("random", "mean")
CLASS_WEIGHTS = (None, "balanced")
LOG_FLOOR = 1e-6  # log-probability inputs: probabilities below this count as this


class FusionHead(nn.Module, PyTorchModelHubMixin, library_name="mmclf", tags=["mmclf", "decision-level-fusion"]):
    """Logits over the classes from the concatenated probabilities of the experts, in `expert_names` order.

    inputs: what the layers read: "probs" (the paper) or "log_probs" (logarithms clipped at LOG_FLOOR).
    start: "random" (the paper): the layers alone, initialised at random. "mean": the logits are the experts'
    weighted mean log-probability (a weighted product of experts; one weight per expert, learnt, starting
    equal) plus the layers' output, whose last layer starts at zero: a head starts as the experts' consensus
    and learns how much to trust each expert and a correction.
    """

    def __init__(self, class_names: list[str], expert_names: list[str] | None = None, hidden_size: int = 0,
                 expert_sources: list[str] | None = None, inputs: str = "probs", start: str = "random"):
        super().__init__()
        if inputs not in FUSION_INPUTS or start not in FUSION_STARTS:
            raise ValueError(f"fusion inputs must be one of {FUSION_INPUTS} and start one of {FUSION_STARTS}, "
                             f"got {inputs!r}, {start!r}")
        self.class_names = list(class_names)
        # heads saved by mmclf 0.1 recorded table sources such as "text/oof": the name is the part before "/"
        self.expert_names = list(expert_names or [s.split("/")[0] for s in expert_sources or []])
        self.hidden_size, self.inputs, self.start = hidden_size, inputs, start
        num_inputs = len(self.expert_names) * len(self.class_names)
        num_classes = len(self.class_names)
        if hidden_size > 0:
            self.layers = nn.Sequential(
                nn.Linear(num_inputs, hidden_size), nn.ReLU(), nn.Linear(hidden_size, num_classes)
            )
        else:
            self.layers = nn.Sequential(nn.Linear(num_inputs, num_classes))
        if start == "mean":
            nn.init.zeros_(self.layers[-1].weight)
            nn.init.zeros_(self.layers[-1].bias)
            self.expert_weights = nn.Parameter(torch.full((len(self.expert_names),), 1.0 / len(self.expert_names)))

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        log_probs = probs.clamp_min(LOG_FLOOR).log()
        logits = self.layers(log_probs if self.inputs == "log_probs" else probs)
        if self.start == "mean":
            per_expert = log_probs.unflatten(-1, (len(self.expert_names), len(self.class_names)))
            logits = logits + (per_expert * self.expert_weights[:, None]).sum(dim=-2)
        return logits


def named_tables(tables) -> dict[str, ProbabilityTable]:
    """{expert name: table} from a mapping or a list of tables (names from the tables); names must be unique."""
    if isinstance(tables, dict):
        return {name: table.renamed(name) for name, table in tables.items()}
    named: dict[str, ProbabilityTable] = {}
    for table in tables:
        name = table.expert_name
        if name in named:
            raise TableMismatchError(
                f"two tables come from experts named {name!r} ({named[name].name}, {table.name}); give each a "
                f"distinct name (--tables NAME=PATH)")
        named[name] = table
    return named


def check_finite(table: ProbabilityTable) -> None:
    bad = np.flatnonzero(~np.isfinite(table.probs).all(axis=1))
    if len(bad):
        raise ValueError(f"{table.name}: row {bad[0]} (id {table.ids[bad[0]]!r}) has NaN or infinite probabilities")


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


def fusion_source(expert_names: list[str]) -> str:
    return "fusion(" + ", ".join(expert_names) + ")"


@dataclass
class FusionModel(Artifact):
    """k fold heads trained together, majority-voted; an artifact saved as a fusion run folder."""

    artifact = "fusion"
    heads: list[FusionHead]
    options: dict
    cv_metrics: dict = field(default_factory=dict)
    oof: ProbabilityTable | None = None

    @property
    def class_names(self) -> list[str]:
        return self.heads[0].class_names

    @property
    def expert_names(self) -> list[str]:
        return self.heads[0].expert_names

    def check_experts(self, names_and_classes: dict[str, list[str]], where: str) -> None:
        """Raise unless every expert this fusion needs is among `names_and_classes`, with the same class order."""
        check_expert_classes(self.expert_names, self.class_names, names_and_classes, where)

    def fold_probs(self, probs_by_name: dict[str, np.ndarray]) -> np.ndarray:
        """Softmax of every fold head over rows whose expert probabilities are given by name: [folds, rows, classes]."""
        inputs = torch.from_numpy(np.concatenate([np.asarray(probs_by_name[n], dtype=np.float32)
                                                  for n in self.expert_names], axis=1))
        with torch.no_grad():
            return torch.stack([head.eval()(inputs).softmax(dim=1) for head in self.heads]).numpy()

    def predict_probs(self, probs_by_name: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fold heads' majority vote -> (predicted class indices, vote counts, mean probabilities)."""
        probs = self.fold_probs(probs_by_name)
        mean_probs = probs.mean(axis=0)
        winners, votes = majority_vote(probs.argmax(axis=2), len(self.class_names), mean_probs)
        return winners, votes, mean_probs

    def aligned(self, tables) -> list[ProbabilityTable]:
        """The tables this fusion needs, matched by expert name, rows in the first one's order."""
        named = named_tables(tables)
        self.check_experts({name: t.class_names for name, t in named.items()}, "tables")
        aligned = align_tables([named[name] for name in self.expert_names])
        for table in aligned:
            check_finite(table)
        return aligned

    def predict(self, tables) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        aligned = self.aligned(tables)
        return self.predict_probs(dict(zip(self.expert_names, (t.probs for t in aligned))))

    def predict_table(self, tables) -> tuple[ProbabilityTable, np.ndarray, np.ndarray]:
        """Like predict, with the mean probabilities as a ProbabilityTable in the first table's row order."""
        aligned = self.aligned(tables)
        winners, votes, mean_probs = self.predict_probs(dict(zip(self.expert_names, (t.probs for t in aligned))))
        first = aligned[0]
        table = ProbabilityTable(first.ids, first.splits, first.labels, mean_probs, self.class_names,
                                 source=fusion_source(self.expert_names))
        return table, winners, votes

    def save_pretrained(self, directory: str | Path, predict_tables=None, extra_options: dict | None = None,
                        with_oof: bool = True) -> Path:
        """The fusion run folder: fold heads, fusion.json, cv_metrics.json, probs/oof.parquet, the model card and,
        with `predict_tables` (one table per expert), probs/<split>.parquet and predictions.csv of their rows: the
        files `mmclf ensemble` votes on."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for fold, head in enumerate(self.heads):
            head.save_pretrained(directory / "folds" / str(fold))
        options = {**self.options, **(extra_options or {}), "class_names": self.class_names,
                   "expert_names": self.expert_names, "num_fold_heads": len(self.heads)}
        write_json(directory / FUSION_FILE, options)
        write_json(directory / "cv_metrics.json", self.cv_metrics)
        if with_oof and self.oof is not None:
            self.oof.save(directory / "probs" / "oof.parquet")
        if predict_tables is not None:
            self.write_predictions(predict_tables, directory)
        self.write_card(directory)
        return directory

    def write_predictions(self, tables, directory: str | Path) -> ProbabilityTable:
        """Fused probabilities of the tables' rows (probs/<split>.parquet per split) and the fold heads' vote
        (predictions.csv: id, split, prediction, votes)."""
        directory = Path(directory)
        table, winners, votes = self.predict_table(tables)
        for split in dict.fromkeys(table.splits):
            table.split_rows(split).save(directory / "probs" / f"{split}.parquet")
        frame = pd.DataFrame({"id": table.ids, "split": table.splits,
                              "prediction": [self.class_names[w] for w in winners], "votes": votes})
        with staged_file(directory / "predictions.csv") as staged:
            frame.to_csv(staged, index=False)
        return table

    def write_card(self, directory: Path) -> None:
        oof = self.cv_metrics.get("oof") or {}
        metrics = {**oof, "split": "out-of-fold", "rows": self.options.get("num_train_rows")} if oof else None
        settings = {k: v for k, v in self.options.items() if k not in ("class_names",)}
        write_model_card(
            directory, title=f"mmclf decision-level fusion of {', '.join(self.expert_names)}",
            task="multimodal-classification", class_names=self.class_names, metrics=metrics,
            tags=["decision-level-fusion"], details=settings,
            summary=(f"{len(self.heads)} fold heads (hidden size {self.options.get('hidden_size', 0)}) over the class "
                     f"probabilities of the experts {self.expert_names}, majority-voted. Metrics are out-of-fold: "
                     "each row is scored by the fold head that never saw it."),
            usage=("from mmclf.fusion.decision import FusionModel\n\n"
                   "fusion = FusionModel.from_pretrained(\"path/to/this/folder\")\n"
                   "winners, votes, probs = fusion.predict_probs({name: expert_probs for name in fusion.expert_names})"),
        )

    @classmethod
    def _from_folder(cls, directory: Path) -> FusionModel:
        directory = Path(directory)
        config_path = directory / FUSION_FILE
        if not config_path.is_file():
            raise FileNotFoundError(f"not a fusion run directory (no {FUSION_FILE}): {directory}")
        options = json.loads(config_path.read_text())
        heads = [from_pretrained_quietly(FusionHead, directory / "folds" / str(i))
                 for i in range(options["num_fold_heads"])]
        if any(head.class_names != heads[0].class_names or head.expert_names != heads[0].expert_names
               for head in heads):
            raise ValueError(f"{directory}: its fold heads disagree on experts or classes")
        cv_path, oof_path = directory / "cv_metrics.json", directory / "probs" / "oof.parquet"
        cv_metrics = json.loads(cv_path.read_text()) if cv_path.is_file() else {}
        oof = ProbabilityTable.load(oof_path) if oof_path.is_file() else None
        return cls(heads=heads, options=options, cv_metrics=cv_metrics, oof=oof)


def fit_decision_fusion(
    train_tables,
    *,
    folds: int = 8,
    hidden_size: int = 0,
    epochs: int = 40,
    lr: float = 0.01,
    batch_size: int = 256,
    seed: int = 0,
    inputs: str = "probs",
    start: str = "mean",
    class_weight: str | None = "balanced",
    progress: bool = True,
) -> FusionModel:
    """Train k fold heads on the labelled rows of the experts' tables (a list, or {name: table}); rows with
    label -1 are ignored. class_weight "balanced" weighs each row's loss by the inverse of its class's
    frequency (as scikit-learn does), so every class counts alike, as in macro-F1. The defaults (a head that
    starts as the experts' weighted product and learns a correction over their probabilities, balanced loss) keep
    the fusion at or above its best expert where another expert is weak; start="random", class_weight=None is the
    paper's head."""
    if class_weight not in CLASS_WEIGHTS:
        raise ValueError(f"class_weight must be one of {CLASS_WEIGHTS}, got {class_weight!r}")
    named = named_tables(train_tables)
    if not named:
        raise ValueError("no probability tables given")
    names = list(named)
    tables = align_tables(list(named.values()))
    for table in tables:
        check_finite(table)
    features = np.concatenate([t.probs for t in tables], axis=1)
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
    options = {"folds_requested": folds, "folds_used": folds_used, "hidden_size": hidden_size, "epochs": epochs,
               "lr": lr, "batch_size": batch_size, "seed": seed, "optimizer": "adam", "loss": "cross_entropy",
               "activation": "relu" if hidden_size > 0 else "none", "inputs": inputs, "start": start,
               "class_weight": class_weight, "num_train_rows": len(labelled)}
    class_weights = None
    if class_weight == "balanced":
        counts = np.bincount(labels, minlength=len(class_names))
        class_weights = torch.from_numpy(len(labels) / (np.count_nonzero(counts) * np.maximum(counts, 1))).float()

    splitter = StratifiedKFold(n_splits=folds_used, shuffle=True, random_state=seed)
    fold_splits = [(torch.from_numpy(tr), torch.from_numpy(ho)) for tr, ho in splitter.split(np.zeros(len(labels)), labels)]
    heads = []
    with torch.random.fork_rng(devices=[]):
        for fold in range(folds_used):
            torch.manual_seed(seed * 1000 + fold)
            heads.append(FusionHead(class_names, names, hidden_size, inputs=inputs, start=start))
    generator = torch.Generator().manual_seed(seed)
    with progress_bar(total=epochs, desc=f"fusion ({folds_used} folds)", disable=not progress) as bar:
        results = train_heads(heads, (x_all,), y_all, [tr for tr, _ in fold_splits], [ho for _, ho in fold_splits],
                              epochs=epochs, lr=lr, batch_size=batch_size, generator=generator, progress=bar,
                              class_weights=class_weights)
    oof_probs = np.zeros((len(labelled), len(class_names)), dtype=np.float32)
    fold_metrics = []
    with torch.no_grad():
        for fold, (head, (train_rows, heldout_rows), result) in enumerate(zip(heads, fold_splits, results)):
            oof_probs[heldout_rows.numpy()] = head(x_all[heldout_rows]).softmax(dim=1).numpy()
            fold_metrics.append({"fold": fold, "train_rows": len(train_rows), "eval_rows": len(heldout_rows), **result})

    best = np.array([m["best_eval_macro_f1"] for m in fold_metrics])
    cv_metrics = {
        "folds": fold_metrics,
        "mean_best_eval_macro_f1": float(best.mean()),
        "std_best_eval_macro_f1": float(best.std()),
        "oof_macro_f1": macro_f1(labels, oof_probs.argmax(axis=1)),
        "oof": scores(labels, oof_probs.argmax(axis=1)),
        "expert_macro_f1": {name: macro_f1(labels, t.probs[labelled].argmax(axis=1)) for name, t in zip(names, tables)},
    }
    oof = ProbabilityTable(
        [first.ids[i] for i in labelled], [first.splits[i] for i in labelled], labels, oof_probs, class_names,
        source=fusion_source(names) + " out-of-fold",
    )
    return FusionModel(heads=heads, options=options, cv_metrics=cv_metrics, oof=oof)


def fuse_tables(tables, output_dir, *, predict_tables=None, train_splits=None, **options) -> FusionModel:
    """Decision-level fusion as a run folder: fit on `tables` ({name: table}, a list of tables, or `[NAME=]PATH`
    strings), restricted to `train_splits` when given, predict `predict_tables` (matched by expert name), save
    everything into `output_dir`. `options`: the keywords of `fit_decision_fusion`. Returns the fitted fusion."""
    given = {"tables": described(tables), "predict_tables": described(predict_tables),
             "train_splits": list(train_splits) if train_splits else None}
    tables = as_named_tables(tables, "tables")
    if train_splits:
        tables = {name: t.split_rows(*train_splits) for name, t in tables.items()}
        if len(next(iter(tables.values()))) == 0:
            raise ValueError(f"the tables have no rows of splits {list(train_splits)}")
    if predict_tables is not None:
        predict_tables = as_named_tables(predict_tables, "predict_tables")
        if set(predict_tables) != set(tables):
            raise TableMismatchError(f"predict_tables come from experts {sorted(predict_tables)} but tables from "
                                     f"{sorted(tables)}: give one table per expert, named alike (NAME=PATH)")
    model = fit_decision_fusion(tables, **options)
    model.save_pretrained(output_dir, predict_tables=predict_tables, extra_options=given)
    return model


def described(tables) -> list[str] | None:
    """How tables were given, for fusion.json: their paths (or names)."""
    if tables is None:
        return None
    items = tables.items() if isinstance(tables, dict) else ((None, t) for t in tables)
    return [f"{name}={t}" if name and not isinstance(t, ProbabilityTable) else
            str(t.path or t.name) if isinstance(t, ProbabilityTable) else str(t) for name, t in items]


def as_named_tables(tables, what: str) -> dict[str, ProbabilityTable]:
    """{name: table} from a mapping, a list of tables, or `[NAME=]PATH` strings (NAME defaults to the table's own
    expert name)."""
    if isinstance(tables, dict):
        return named_tables({name: t if isinstance(t, ProbabilityTable) else ProbabilityTable.load(t)
                             for name, t in tables.items()})
    loaded = []
    for item in tables:
        if isinstance(item, ProbabilityTable):
            loaded.append(item)
            continue
        name, sep, path = str(item).partition("=")
        loaded.append(ProbabilityTable.load(path).renamed(name) if sep and name and "/" not in name
                      else ProbabilityTable.load(item))
    try:
        return named_tables(loaded)
    except TableMismatchError as error:
        raise TableMismatchError(f"{what}: {error}") from None
