"""SQuAD v1.1 / v2.0: the official JSON files (plain or gzipped) or the Hub sets.

One example per question: (question, context, first gold answer), all gold answers kept as
references. v2 "no answer" questions are kept with `is_impossible` (useful to a verifier) and
never used as generation targets. Split groups are article titles, so a passage never sits in two
splits.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qa_ebm.config import SquadSourceConfig
from qa_ebm.data.hub import load_hub_dataset, resolve_local
from qa_ebm.data.records import field_names
from qa_ebm.data.schema import RawExample, SourceReport, scrub_example
from qa_ebm.errors import DataError
from qa_ebm.io import READ_ERRORS, open_input

LOCAL_HINT = "--squad path/to/dev-v1.1.json"


def load_squad(
    spec: str, cfg: SquadSourceConfig, limit: int | None = None, streaming: bool = False
) -> tuple[list[RawExample], SourceReport]:
    path = resolve_local(spec, "a SQuAD JSON file or a Hub id", "data/squad_sample.json or rajpurkar/squad")
    if path is None:
        report = SourceReport(name="squad", spec=spec, kind="hub", format="hub", hub={"id": spec})
        rows = _hub_rows(spec, streaming)
    else:
        if path.is_dir():
            raise DataError(f"{path}: is a directory; pass the SQuAD JSON file itself")
        report = SourceReport.for_file("squad", spec, path, "squad-json")
        rows = _json_rows(path)
    examples: list[RawExample] = []
    seen_ids: set[str] = set()
    for row in rows:
        if limit is not None and len(examples) >= limit:
            break
        report.questions += 1
        if row["id"] in seen_ids:
            report.skip("duplicate_id")
            continue
        seen_ids.add(row["id"])
        if row["is_impossible"]:
            report.unanswerable += 1
            if not cfg.keep_unanswerable:
                report.skip("unanswerable")
                continue
        examples.append(row)
    report.examples = len(examples)
    if not examples:
        raise DataError(f"{spec}: the SQuAD source is empty (0 questions read)")
    return examples, report


def _example(
    qid: str, title: str, context: str, question: str, answers: list[tuple[str, int]], impossible: bool
) -> RawExample:
    impossible = impossible or not answers
    text, start = ("", -1) if impossible else answers[0]
    return scrub_example(
        RawExample(
            id=str(qid),
            source="squad",
            group=f"squad:{title}",
            title=title,
            question=question,
            context=context,
            answer=text,
            references=[] if impossible else [a for a, _ in answers],
            answer_start=int(start),
            is_impossible=impossible,
            markup="text",
        )
    )


def _json_rows(path: Path) -> Iterator[RawExample]:
    with open_input(path, "rt") as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from e
        except READ_ERRORS as e:
            raise DataError(f"{path}: cannot read ({e.__class__.__name__}: {e})") from e
        except ValueError as e:  # an integer literal longer than Python converts (4300 digits)
            raise DataError(f"{path}: not usable JSON ({e})") from e
        except RecursionError as e:
            raise DataError(f"{path}: JSON nested too deeply to read") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError(f"{path}: not SQuAD JSON (expected an object with a 'data' list of articles)")
    for a, article in enumerate(doc["data"]):
        where = f"{path}: data[{a}]"
        title = _field(article, "title", where, str)
        for p, para in enumerate(_field(article, "paragraphs", where, list)):
            pwhere = f"{where}.paragraphs[{p}]"
            context = _field(para, "context", pwhere, str)
            for q, qa in enumerate(_field(para, "qas", pwhere, list)):
                qwhere = f"{pwhere}.qas[{q}]"
                answers = []
                for i, ans in enumerate(_field(qa, "answers", qwhere, list)):
                    awhere = f"{qwhere}.answers[{i}]"
                    answers.append((_field(ans, "text", awhere, str), int(_field(ans, "answer_start", awhere, int))))
                yield _example(
                    qid=_field(qa, "id", qwhere, (str, int)),
                    title=title,
                    context=context,
                    question=_field(qa, "question", qwhere, str),
                    answers=answers,
                    impossible=bool(qa.get("is_impossible", False)),
                )


def _hub_rows(repo_id: str, streaming: bool) -> Iterator[RawExample]:
    dsd = load_hub_dataset(repo_id, LOCAL_HINT, streaming=streaming)
    for split in dsd:
        for row in dsd[split]:
            ans = row["answers"]
            yield _example(
                qid=row["id"],
                title=row["title"],
                context=row["context"],
                question=row["question"],
                answers=list(zip(ans["text"], ans["answer_start"], strict=True)),
                impossible=not ans["text"],
            )


def _field(obj: Any, name: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected an object, got {type(obj).__name__}")
    if name not in obj:
        raise DataError(f"{where}: missing field {name!r} (SQuAD schema; fields present: {field_names(obj)})")
    value = obj[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        expected = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise DataError(f"{where}.{name}: expected {expected}, got {type(value).__name__}")
    return value
