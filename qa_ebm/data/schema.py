"""The one record every source produces, before cleaning."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from qa_ebm.data.clean import replace_lone_surrogates
from qa_ebm.io import sha256_file


class RawExample(TypedDict):
    id: str
    source: str  # "squad" | "physics"
    group: str  # split unit: SQuAD article title, Stack Exchange question
    title: str
    question: str  # markup as in the source (see `markup`)
    context: str  # SQuAD passage, verbatim (answer offsets point into it); "" elsewhere
    answer: str  # the gold answer, markup as in the source; "" when unanswerable
    references: list[str]  # every gold answer text (SQuAD dev has several), for EM/F1
    answer_start: int  # character offset of `answer` in `context`; -1 when not a span
    is_impossible: bool  # SQuAD v2 "no answer": kept for the verifier, never generated
    markup: str  # "html" | "text"


def raw_features():
    """The `datasets.Features` of a RawExample, so that a column the data leaves empty keeps its type."""
    from datasets import Features, List, Value

    string = Value("string")
    return Features(
        {
            "id": string,
            "source": string,
            "group": string,
            "title": string,
            "question": string,
            "context": string,
            "answer": string,
            "references": List(string),
            "answer_start": Value("int64"),
            "is_impossible": Value("bool"),
            "markup": string,
        }
    )


def scrub_example(example: RawExample) -> RawExample:
    """Lone surrogates (JSON may carry half an emoji: `"\\ud83d"`) -> U+FFFD in every text field, which Arrow
    cannot store otherwise; one character for one keeps every offset into the context."""
    for key in ("id", "group", "title", "question", "context", "answer"):
        example[key] = replace_lone_surrogates(example[key])
    example["references"] = [replace_lone_surrogates(r) for r in example["references"]]
    return example


@dataclass
class SourceReport:
    """What a source loader read, for the manifest and the summary."""

    name: str
    spec: str
    kind: str  # "local" | "hub"
    format: str
    files: list[dict] = field(default_factory=list)  # {path, bytes, sha256}
    hub: dict | None = None
    questions: int = 0
    examples: int = 0
    unanswerable: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count, before any filter

    @classmethod
    def for_file(cls, name: str, spec: str, path: Path, format: str) -> SourceReport:
        """A report for a local file, with its size and content hash for the manifest."""
        return cls(
            name=name,
            spec=spec,
            kind="local",
            format=format,
            files=[{"path": str(path), "bytes": path.stat().st_size, "sha256": sha256_file(path)}],
        )

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
