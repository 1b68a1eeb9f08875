"""Probabilities and features from saved experts, for prediction and serving; no training code is imported.

`data` is anything `mmclf.data.listings.to_listings` takes (a DataFrame, a list of dicts, a
`datasets.Dataset`) or `Listings`; rows come back in input order.
"""

from __future__ import annotations

import numpy as np

from mmclf.data.listings import Listings, to_listings
from mmclf.experts import load_expert
from mmclf.experts.base import Expert
from mmclf.probability_tables import ProbabilityTable
from mmclf.progress import progress_bar

__all__ = ["expert_features", "expert_probabilities", "load_expert", "probability_table"]


def _batches(data, batch_size: int, desc: str, progress: bool):
    listings = data if isinstance(data, Listings) else to_listings(data)
    steps = -(-len(listings) // batch_size)
    return progress_bar(listings.batches(batch_size), total=steps, desc=desc, leave=False, disable=not progress)


def expert_probabilities(expert: Expert, data, batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Class probabilities [rows, classes] in the expert's class order."""
    parts = [expert.predict_batch(batch) for batch in _batches(data, batch_size, f"{expert.kind} expert", progress)]
    return np.concatenate(parts) if parts else np.zeros((0, len(expert.class_names)), dtype=np.float32)


def expert_features(expert: Expert, data, batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Pooled backbone features [rows, dim] (text: first-token hidden state; image: timm pre-logits)."""
    return np.concatenate([expert.features_batch(b) for b in _batches(data, batch_size, "features", progress)])


def probability_table(expert: Expert, dataset, split: str, source: str, batch_size: int = 64) -> ProbabilityTable:
    """The probability table of a labelled `datasets.Dataset` (columns id and label), every row marked `split`."""
    probs = expert_probabilities(expert, dataset, batch_size)
    return ProbabilityTable(ids=list(dataset["id"]), splits=[split] * len(dataset), labels=np.asarray(dataset["label"]),
                            probs=probs, class_names=expert.class_names, source=source)
