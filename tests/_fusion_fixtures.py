import numpy as np

from mmclf.probability_tables import ProbabilityTable


def half_expert_tables(rows: int, classes: int, seed: int = 0, split: str = "validation", id_prefix: str = "r"):
    """Two experts: A is confident and right on the first half of the classes and spreads random
    mass otherwise; B the same on the second half."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, rows)
    ids = [f"{id_prefix}{i}" for i in range(rows)]
    names = [str(10 * (c + 1)) for c in range(classes)]
    tables = []
    for expert, knows in enumerate((labels < classes // 2, labels >= classes // 2)):
        probs = rng.dirichlet(np.ones(classes), rows)
        confident = rng.uniform(0.6, 0.95, rows)
        probs[knows] *= (1 - confident[knows])[:, None]
        probs[knows, labels[knows]] += confident[knows]
        tables.append(ProbabilityTable(ids, [split] * rows, labels, probs, names, source=f"expert{expert}"))
    return tables



def missing_modality_tables(rows: int, classes: int = 27, seed: int = 0, with_image: float = 0.12):
    """As on the real Rakuten sample: imbalanced classes (the largest 13 times the smallest), a text expert right on
    about 70 % of the rows with soft probabilities, and an image expert that sees an image on `with_image` of the
    rows only (weakly informative there) and elsewhere answers one vector, the one it learnt for a blank image."""
    rng = np.random.default_rng(seed)
    prior = np.geomspace(1, 13, classes)
    labels = rng.choice(classes, rows, p=prior / prior.sum())
    ids = [f"r{i}" for i in range(rows)]
    names = [str(10 * (c + 1)) for c in range(classes)]
    logits = rng.normal(0, 1, (rows, classes))
    right = rng.random(rows) < 0.7
    raised = np.where(right, labels, rng.integers(0, classes, rows))
    logits[np.arange(rows), raised] += rng.uniform(1, 5, rows)
    seen = rng.random(rows) < with_image
    image_logits = np.tile(np.log(rng.dirichlet(np.full(classes, 0.3)) + 1e-9), (rows, 1))
    image_logits[seen] = rng.normal(0, 1, (seen.sum(), classes))
    image_logits[seen, labels[seen]] += 1.0
    return [ProbabilityTable(ids, ["validation"] * rows, labels, np.exp(x) / np.exp(x).sum(axis=1, keepdims=True),
                             names, source=name) for name, x in (("text", logits), ("image", image_logits))]
