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
