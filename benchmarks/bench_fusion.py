"""Decision-level fusion training time and quality on synthetic expert probability tables.

The paper's setting: 8.5k validation rows, 2 experts, 27 classes, 8 folds x 40 epochs.
Expert A is confident and right on the first half of the classes and spreads random mass
otherwise; expert B the same on the second half. Only a fusion that learns which expert to
trust for which class gets both halves right.

    python benchmarks/bench_fusion.py [--rows 8500] [--classes 27] [--hidden-size 0]
"""

import argparse
import time

import torch

from mmclf.evaluation import macro_f1
from mmclf.fusion.decision import fit_decision_fusion
from mmclf.testing import half_expert_tables  # the tests' synthetic two-expert tables


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=8500)
    parser.add_argument("--classes", type=int, default=27)
    parser.add_argument("--hidden-size", type=int, default=0)
    parser.add_argument("--folds", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    tables = half_expert_tables(args.rows, args.classes)
    start = time.perf_counter()
    model = fit_decision_fusion(tables, folds=args.folds, hidden_size=args.hidden_size, epochs=args.epochs,
                                progress=False)
    seconds = time.perf_counter() - start
    test = half_expert_tables(args.rows, args.classes, seed=1)
    winners, _, _ = model.predict(test)
    labels = test[0].labels
    print(f"torch threads: {torch.get_num_threads()}")
    print(f"fusion training: {args.rows} rows x {len(tables)} experts x {args.classes} classes, "
          f"{args.folds} folds x {args.epochs} epochs, hidden_size={args.hidden_size}: {seconds:.2f} s")
    print(f"out-of-fold fused macro-F1: {model.cv_metrics['oof_macro_f1']:.4f}")
    for table in test:
        print(f"held-out {table.source} macro-F1: {macro_f1(labels, table.predictions()):.4f}")
    print(f"held-out fused (fold vote) macro-F1: {macro_f1(labels, winners):.4f}")


if __name__ == "__main__":
    main()
