"""mmclf: multimodal product classifiers with decision-level fusion.

`from mmclf import MultimodalPipeline` loads the pipeline module on first use, so `import mmclf` (and the
`mmclf` command's help) stays fast.
"""

__version__ = "0.3.0"
__all__ = ["MultimodalPipeline"]


def __getattr__(name):
    if name == "MultimodalPipeline":
        from mmclf.pipeline import MultimodalPipeline

        return MultimodalPipeline
    raise AttributeError(f"module 'mmclf' has no attribute {name!r}")
