"""The small trainer for shallow heads (decision-level fusion heads, feature-level fusion heads).

Heads are tiny and train on CPU from tensors in memory, so they skip the Accelerate loop: k heads of one
architecture train at once, vectorised with `torch.func.vmap` over their stacked parameters (Adam is
per-element, so each head trains as if alone). Each head has its own training rows and evaluation rows
(k-fold cross-validation; or one head, train and validation), reshuffled every epoch, and keeps the
weights of its epoch with the best evaluation macro-F1. Per-epoch records use the main loop's vocabulary:
epoch, train_loss, eval_loss, eval_macro_f1; each head's result: best_epoch, best_eval_macro_f1, history.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from mmclf.evaluation import macro_f1


def train_heads(heads, inputs: tuple[torch.Tensor, ...], labels: torch.Tensor, train_rows: list[torch.Tensor],
                eval_rows: list[torch.Tensor], *, epochs: int, lr: float, batch_size: int, weight_decay: float = 0.0,
                generator: torch.Generator, progress=None, class_weights: torch.Tensor | None = None) -> list[dict]:
    """Train `heads` (same architecture; `head(*inputs[rows])` gives logits) with Adam and cross-entropy
    (each row's loss weighted by its class's entry of `class_weights` when given).

    Returns one result per head; on return every head holds its best epoch's weights, in eval mode."""
    folds = len(heads)
    params, buffers = stack_module_state(heads)
    template = copy.deepcopy(heads[0]).to("meta")
    batched_logits = vmap(lambda p, b, *x: functional_call(template, (p, b), x))
    optimizer = torch.optim.Adam(params.values(), lr=lr, weight_decay=weight_decay)
    steps = math.ceil(max(len(rows) for rows in train_rows) / batch_size)
    width = steps * batch_size
    results = [{"best_epoch": 0, "best_eval_macro_f1": -1.0, "history": []} for _ in range(folds)]
    best_params = [None] * folds
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the matrices are tiny: thread hand-offs cost more than they save
    try:
        for epoch in range(1, epochs + 1):
            # each head reshuffles its own rows; heads with fewer rows are padded with masked-out rows
            order = torch.zeros(folds, width, dtype=torch.long)
            mask = torch.zeros(folds, width)
            for fold, rows in enumerate(train_rows):
                order[fold, : len(rows)] = rows[torch.randperm(len(rows), generator=generator)]
                mask[fold, : len(rows)] = 1.0
            loss_sums = torch.zeros(folds)
            for step in range(steps):
                batch = order[:, step * batch_size : (step + 1) * batch_size]
                weight = mask[:, step * batch_size : (step + 1) * batch_size]
                logits = batched_logits(params, buffers, *(x[batch] for x in inputs))
                losses = F.cross_entropy(logits.flatten(0, 1), labels[batch].flatten(), weight=class_weights,
                                         reduction="none")
                per_fold = (losses.view_as(weight) * weight).sum(dim=1)
                optimizer.zero_grad(set_to_none=True)
                (per_fold / weight.sum(dim=1).clamp(min=1.0)).sum().backward()
                optimizer.step()
                loss_sums += per_fold.detach()
            with torch.no_grad():
                for fold, rows in enumerate(eval_rows):
                    fold_params = {name: value[fold] for name, value in params.items()}
                    fold_buffers = {name: value[fold] for name, value in buffers.items()}
                    logits = functional_call(template, (fold_params, fold_buffers), tuple(x[rows] for x in inputs))
                    score = macro_f1(labels[rows].numpy(), logits.argmax(dim=1).numpy())
                    result = results[fold]
                    result["history"].append({"epoch": epoch, "train_loss": float(loss_sums[fold]) / len(train_rows[fold]),
                                              "eval_loss": float(F.cross_entropy(logits, labels[rows])),
                                              "eval_macro_f1": score})
                    if score > result["best_eval_macro_f1"]:
                        result["best_eval_macro_f1"], result["best_epoch"] = score, epoch
                        best_params[fold] = {name: value.detach().clone() for name, value in fold_params.items()}
            if progress is not None:
                progress.update(1)
                progress.set_postfix(mean_best_f1=f"{np.mean([r['best_eval_macro_f1'] for r in results]):.4f}")
    finally:
        torch.set_num_threads(threads)
    for head, state in zip(heads, best_params):
        head.load_state_dict(state, strict=False)  # buffers (e.g. standardisation) are not trained
        head.eval()
    return results
