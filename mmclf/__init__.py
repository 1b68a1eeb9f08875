"""mmclf: multimodal product classifiers with decision-level fusion."""

__version__ = "0.1.0"
