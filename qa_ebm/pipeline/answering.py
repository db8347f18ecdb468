"""Answering rows with either kind of pipeline: the one code path of `qa-ebm answer` and `qa-ebm serve`.

A row is ``{"id", "question", "context"}``; a record is what both commands print for it:
``{"id", "answer", **the rest of the answer's fields}`` (``Answer`` or ``ReadingAnswer``), so a client of the
HTTP service and a reader of ``qa-ebm answer --json`` see the same schema.

Torch and the pipelines are imported when a row is answered, not with this module: the command line checks
its flags before it pays for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MODES = ("extract", "generate", "proposal")  # reading pipelines: how the answer is chosen
RANK_BY = ("total", "energy")
SAMPLERS = ("gd", "langevin", "ired")


@dataclass(frozen=True)
class AnswerOptions:
    """How to answer; the fields of one kind of pipeline are ignored by the other.

    `steps`: the refinement step cap (answer pipelines: None for the pipeline's own; reading pipelines: refine
    that many steps and snap to a span, None or 0 to rank the candidate spans).
    """

    steps: int | None = None
    batch_size: int = 32
    # answer pipelines
    candidates: int = 1
    sampler: str | None = None  # replaces the pipeline's sampler for this call
    step_size: float | None = None
    seed: int | None = None
    trace: bool = False
    # reading pipelines
    mode: str = "extract"
    rank_by: str = "total"
    decision: str | None = None
    temperature: float | None = None


def reading_mode(mode: str, steps: int | None, rank_by: str = "total") -> tuple[str, int | None]:
    """(ReadingPipeline mode, steps) for an answering `mode` (``MODES``), a step cap and what ranks the spans."""
    steps = steps or 0
    if mode == "proposal":
        return "proposal", None
    if mode == "generate":
        return "generate", steps or None
    if steps > 0:
        return "refine", steps
    return ("rank" if rank_by == "total" else "energy"), None


def answer_rows(pipe: Any, rows: Sequence[dict[str, Any]], options: AnswerOptions) -> list[dict[str, Any]]:
    """One record per row, in order, from a loaded ``QAPipeline`` or ``ReadingPipeline``.

    Raises the pipeline's own errors (DataError for bad text, ConfigError for bad options).
    """
    from qa_ebm.pipeline.reading import ReadingPipeline

    answers = (
        _answer_reading(pipe, rows, options) if isinstance(pipe, ReadingPipeline) else _answer(pipe, rows, options)
    )
    return [{"id": r["id"], **answer_record(a.to_dict())} for r, a in zip(rows, answers, strict=True)]


def answer_record(d: dict[str, Any]) -> dict[str, Any]:
    """The answer's fields, its text under "answer" first (the batch format's contract)."""
    return {"answer": d.pop("text"), **d}


def _answer_reading(pipe: Any, rows: Sequence[dict[str, Any]], options: AnswerOptions) -> list[Any]:
    mode, steps = reading_mode(options.mode, options.steps, options.rank_by)
    return pipe(
        [r["question"] for r in rows],
        [r["context"] for r in rows],
        mode=mode,
        steps=steps,
        batch_size=options.batch_size,
        decision=options.decision,
        temperature=options.temperature,
    )


def _answer(pipe: Any, rows: Sequence[dict[str, Any]], options: AnswerOptions) -> list[Any]:
    sampler = None
    if options.sampler is not None or options.step_size is not None:
        sampler = {"name": options.sampler or pipe.sampler_config["name"]}
        step_size = options.step_size if options.step_size is not None else pipe.sampler_config.get("step_size")
        if step_size is not None:
            sampler["step_size"] = step_size
    return pipe(
        [r["question"] for r in rows],
        [r["context"] for r in rows],
        steps=options.steps,
        candidates=options.candidates,
        sampler=sampler,
        seed=options.seed,
        trace=options.trace,
        batch_size=options.batch_size,
    )
