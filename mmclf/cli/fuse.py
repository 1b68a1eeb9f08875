"""`mmclf fuse`: decision-level fusion over the experts' probability tables (`mmclf.stages.fuse`), or the
feature-level baseline over saved experts (`--level feature`, `mmclf.stages.fuse_features`)."""

from __future__ import annotations

# the choices of mmclf.fusion.decision, written out so that `--help` does not import torch
FUSION_INPUTS = ("probs", "log_probs")
FUSION_STARTS = ("random", "mean")


def add_arguments(parser) -> None:
    parser.add_argument("--level", choices=["decision", "feature"], default="decision",
                        help="decision (default): over probability tables; feature: the baseline over frozen experts' "
                        "features (needs --experts and --dataset)")
    parser.add_argument("--tables", nargs="+", metavar="[NAME=]PATH",
                        help="one probability table per expert to train on: RUN/probs/oof.parquet (out-of-fold, "
                        "recommended) or RUN/probs/validation.parquet (the paper's in-sample choice); the expert's name "
                        "is its run directory's name unless given as NAME=PATH")
    parser.add_argument("--predict-tables", nargs="+", default=None, metavar="[NAME=]PATH",
                        help="one probability table per expert with the rows to predict, matched to --tables by "
                        "expert name (any order)")
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
    parser.add_argument("--inputs", choices=FUSION_INPUTS, default="probs",
                        help="what the head's layers read: the experts' probabilities (default, the paper) or their "
                        "logarithms")
    parser.add_argument("--start", choices=FUSION_STARTS, default="mean",
                        help="mean (default): the head is the experts' weighted product (weights learnt, starting "
                        "equal) plus the layers as a correction starting at zero; random: the paper's head")
    parser.add_argument("--class-weight", choices=["none", "balanced"], default="balanced",
                        help="balanced (default): each row's loss weighted by the inverse frequency of its class; "
                        "none: the paper's plain cross-entropy")
    feature = parser.add_argument_group("feature level")
    feature.add_argument("--experts", nargs="+", metavar="NAME=MODEL_DIR", help="saved experts (RUN/model)")
    feature.add_argument("--dataset", help="built dataset: trained on train, selected on validation, all splits predicted")
    feature.add_argument("--combine", choices=["concat", "sum", "attention"], default="concat")


def run(args) -> int:
    from mmclf import stages

    if args.level == "feature":
        if not args.experts or not args.dataset:
            raise ValueError("--level feature needs --experts NAME=MODEL_DIR ... and --dataset DIR")
        metrics = stages.fuse_features(experts=parse_named(args.experts, "--experts"), dataset=args.dataset,
                                       output_dir=args.out, combine=args.combine, seed=args.seed,
                                       hidden_size=args.hidden_size)
        summary = ", ".join(f"{k}: {v:.4f}" for k, v in metrics.items() if k.endswith("macro_f1"))
        print(f"feature-level fusion ({args.combine}) written to {args.out}; {summary}")
        return 0
    if not args.tables:
        raise ValueError("decision-level fusion needs --tables (one probability table per expert)")
    model = stages.fuse(tables=args.tables, predict_tables=args.predict_tables, train_splits=args.train_splits,
                        output_dir=args.out, folds=args.folds, hidden_size=args.hidden_size, epochs=args.epochs,
                        lr=args.lr, batch_size=args.batch_size, seed=args.seed, inputs=args.inputs, start=args.start,
                        class_weight=args.class_weight)
    cv = model.cv_metrics
    experts = ", ".join(f"{s}: {f:.4f}" for s, f in cv["expert_macro_f1"].items())
    print(f"fusion out-of-fold macro-F1 {cv['oof_macro_f1']:.4f} (experts on the same rows: {experts}); "
          f"mean best fold macro-F1 {cv['mean_best_eval_macro_f1']:.4f}")
    if args.predict_tables:
        print(f"predictions -> {args.out}/predictions.csv")
    print(f"fusion run written to {args.out}")
    return 0


def parse_named(items: list[str], option: str) -> dict:
    """NAME=PATH items -> {name: path}; a missing NAME= or a repeated name is an error."""
    named = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"{option} expects NAME=PATH, got {item!r}")
        if name in named:
            raise ValueError(f"{option}: the name {name!r} is given twice")
        named[name] = path
    return named
