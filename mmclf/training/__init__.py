"""Training: recipes (config.py), the one Accelerate loop (loop.py), one expert run (fit.py), k folds with
out-of-fold probability tables (folds.py) and the train stage (train.py)."""
