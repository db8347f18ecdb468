"""Inference pipelines and the staged runner (the layer above training, below the command line).

``QAPipeline`` (answers written from a refined latent) and ``ReadingPipeline`` (answers that are spans of a
given passage) are imported lazily, so ``qa_ebm.pipeline.runner`` (and the CLI that reads pipeline specs) does
not pay for torch and transformers until a pipeline is actually used. :func:`load_pipeline` tells them apart
by the file each writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from qa_ebm.errors import CheckpointError

if TYPE_CHECKING:
    from qa_ebm.pipeline.generative import Answer, QAPipeline, Verdict
    from qa_ebm.pipeline.reading import ReadingAnswer, ReadingPipeline

__all__ = ["Answer", "QAPipeline", "ReadingAnswer", "ReadingPipeline", "Verdict", "load_pipeline", "pipeline_class"]
_LAZY = {
    "Answer": "generative",
    "QAPipeline": "generative",
    "Verdict": "generative",
    "ReadingAnswer": "reading",
    "ReadingPipeline": "reading",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"qa_ebm.pipeline.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'qa_ebm.pipeline' has no attribute {name!r}")


def pipeline_class(directory: str | Path) -> type:
    """QAPipeline or ReadingPipeline, from the file in `directory` (nothing is loaded)."""
    from qa_ebm.pipeline import generative, reading

    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"--pipeline {d}: no such directory")
    if (d / generative.PIPELINE_FILE).is_file():
        cls = generative.QAPipeline
    elif (d / reading.PIPELINE_FILE).is_file():
        cls = reading.ReadingPipeline
    else:
        raise CheckpointError(
            f"{d}: not a pipeline directory (no {generative.PIPELINE_FILE} or {reading.PIPELINE_FILE}); write one "
            "with qa-ebm export or qa-ebm pipeline run"
        )
    return cls


def load_pipeline(directory: str | Path, expect: type | None = None) -> Any:
    """The pipeline saved in `directory`, whichever kind it is; `expect` refuses the other kind."""
    from qa_ebm.pipeline import generative

    d = Path(directory)
    cls = pipeline_class(d)
    if expect is not None and cls is not expect:
        what = "an answer pipeline (qa-ebm export)" if expect is generative.QAPipeline else "a reading pipeline"
        raise CheckpointError(f"{d}: holds a {cls.__name__}; this command needs {what}")
    return cls.from_pretrained(d)
