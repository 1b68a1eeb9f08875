"""Training: recipes (config.py), the one Accelerate loop (loop.py), and `mmclf train` with folds and
out-of-fold probability tables (train.py)."""
