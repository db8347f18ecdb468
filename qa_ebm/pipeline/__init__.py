"""Inference pipelines and the staged runner (the layer above training, below the command line).

``ReadingPipeline`` / ``ReadingAnswer`` are imported lazily, so ``qa_ebm.pipeline.runner`` (and the CLI that
reads pipeline specs) does not pay for torch and transformers until a pipeline is actually used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qa_ebm.pipeline.reading import ReadingAnswer, ReadingPipeline

__all__ = ["ReadingAnswer", "ReadingPipeline"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from qa_ebm.pipeline import reading

        return getattr(reading, name)
    raise AttributeError(f"module 'qa_ebm.pipeline' has no attribute {name!r}")
