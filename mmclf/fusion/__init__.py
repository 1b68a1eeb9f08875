"""Fusion: decision-level fusion over probability tables (decision.py), the feature-level baseline
(feature.py), the small trainer both share (trainer.py), and majority-vote ensembles (ensemble.py)."""
