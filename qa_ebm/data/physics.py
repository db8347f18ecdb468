"""Physics Stack Exchange, from whichever layout the user has, recognised by its fields.

- `h4`: `HuggingFaceH4/stack-exchange-preferences` on the Hub (physics `data_dir`), or the same
  schema in local JSONL/JSON/parquet: `qid`, `question` (HTML), `answers[{text, pm_score, selected}]`,
  optionally `title`.
- `posts_xml`: a Stack Exchange dump's `Posts.xml` (plain or gzipped), streamed row by row.
- `pairs`: any JSONL/JSON/CSV/parquet of question/answer pairs through `data.physics.fields`
  (defaults fit the StackMathQA `Q`/`A`/`meta.url` pairs in ../shared/data/physics_se).

One example per question with its best answer: the accepted/selected one, else the highest score
(first on ties). Question text = title + body where a title exists.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qa_ebm.config import PhysicsSourceConfig
from qa_ebm.data.hub import load_hub_dataset, resolve_local
from qa_ebm.data.records import RECORD_SUFFIXES, field_names, get_field, iter_records
from qa_ebm.data.schema import RawExample, SourceReport, scrub_example
from qa_ebm.errors import DataError
from qa_ebm.io import READ_ERRORS, open_input, strip_compression_suffix

LOCAL_HINT = "--physics data/physics_sample.jsonl"
H4_FIELDS = ("qid", "question", "answers")


def load_physics(
    spec: str, cfg: PhysicsSourceConfig, limit: int | None = None, streaming: bool = False
) -> tuple[list[RawExample], SourceReport]:
    path = resolve_local(
        spec, "a physics file or a Hub id", "data/physics_sample.jsonl or HuggingFaceH4/stack-exchange-preferences"
    )
    if path is None:
        fmt = "h4" if cfg.format in ("auto", "h4") else cfg.format
        if fmt != "h4":
            raise DataError(f"data.physics.format={cfg.format} needs a local file; {spec!r} is a Hub id")
        report = SourceReport(
            name="physics",
            spec=spec,
            kind="hub",
            format="h4",
            hub={"id": spec, "data_dir": cfg.hub_data_dir, "split": cfg.hub_split},
        )
        rows = load_hub_dataset(spec, LOCAL_HINT, data_dir=cfg.hub_data_dir, split=cfg.hub_split, streaming=streaming)
        examples = _h4_examples(((f"{spec}[{i}]", r) for i, r in enumerate(rows)), report, limit)
    else:
        if path.is_dir():
            raise DataError(f"{path}: is a directory; pass the data file itself (JSONL, parquet, CSV or Posts.xml)")
        fmt = detect_format(path, cfg)
        report = SourceReport.for_file("physics", spec, path, fmt)
        if fmt == "h4":
            examples = _h4_examples(iter_records(path), report, limit)
        elif fmt == "posts_xml":
            examples = _posts_xml_examples(path, report, limit)
        else:
            examples = _pair_examples(path, cfg, report, limit)
    report.examples = len(examples)
    if not examples:
        raise DataError(
            f"{spec}: the physics source is empty (0 questions with an answer; skipped: {report.skipped or 'none'})"
        )
    return examples, report


def detect_format(path: Path, cfg: PhysicsSourceConfig) -> str:
    """`h4`, `posts_xml` or `pairs`, from the configured format or, on `auto`, from the data itself."""
    name = strip_compression_suffix(path)
    if cfg.format != "auto":
        return cfg.format
    if name.endswith(".xml"):
        return "posts_xml"
    if not name.endswith(RECORD_SUFFIXES):
        try:
            with open_input(path, "rb") as f:
                head = f.read(512).lstrip(b"\xef\xbb\xbf \t\r\n")
        except READ_ERRORS as e:
            raise DataError(f"{path}: cannot read ({e.__class__.__name__}: {e})") from e
        if head.startswith((b"<?xml", b"<posts")):
            return "posts_xml"
        raise DataError(
            f"{path}: unrecognised file type (expected JSONL, JSON, CSV, parquet or Posts.xml, optionally .gz)"
        )
    for where, record in iter_records(path):
        if all(k in record for k in H4_FIELDS):
            return "h4"
        fields = cfg.fields
        missing = [f for f in (fields.question, fields.answer, fields.group) if not _has(record, f)]
        if missing:
            raise DataError(
                f"{where}: neither the H4 schema (fields {', '.join(H4_FIELDS)}) nor Q/A pairs: missing "
                f"field {missing[0]!r} (set data.physics.fields.*; fields present: {field_names(record)})"
            )
        return "pairs"
    raise DataError(f"{path}: the physics source is empty (no records)")


def _question_text(title: str | None, body: str, markup: str) -> str:
    if not title:
        return body
    return f"<h1>{_escape(title)}</h1>{body}" if markup == "html" else f"{title}\n\n{body}"


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _example(qid: str, group: str, title: str, question: str, answer: str, markup: str) -> RawExample:
    return scrub_example(
        RawExample(
            id=qid,
            source="physics",
            group=group,
            title=title,
            question=question,
            context="",
            answer=answer,
            references=[answer],
            answer_start=-1,
            is_impossible=False,
            markup=markup,
        )
    )


# --------------------------------------------------------------------------------------- H4


def _h4_examples(
    records: Iterator[tuple[str, dict[str, Any]]], report: SourceReport, limit: int | None
) -> list[RawExample]:
    examples = []
    for where, rec in records:
        if limit is not None and len(examples) >= limit:
            break
        missing = [k for k in H4_FIELDS if k not in rec]
        if missing:
            raise DataError(
                f"{where}: missing field {missing[0]!r} "
                "(H4 schema: qid, question, answers[{text, pm_score, selected}])"
            )
        report.questions += 1
        answers = rec["answers"] or []
        if not isinstance(answers, list):
            raise DataError(f"{where}.answers: expected a list of answers, got {type(answers).__name__}")
        for i, a in enumerate(answers):
            if not isinstance(a, dict) or "text" not in a:
                raise DataError(f"{where}.answers[{i}]: missing field 'text'")
        if not answers:
            report.skip("no_answer")
            continue
        best = _best(answers, accepted=lambda a: bool(a.get("selected")), score=lambda a: a.get("pm_score"))
        qid = str(rec["qid"])
        title = str(rec.get("title") or "")
        examples.append(
            _example(
                qid=qid,
                group=f"physics:{qid}",
                title=title,
                question=_question_text(title, str(rec["question"] or ""), "html"),
                answer=str(best["text"] or ""),
                markup="html",
            )
        )
    return examples


def _best(answers: list[dict], accepted, score) -> dict:
    """The accepted answer, else the highest-scored one (first on ties)."""
    for a in answers:
        if accepted(a):
            return a
    return max(answers, key=lambda a: _num(score(a)))


def _num(value: Any) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer past float's range (JSON allows any): it still compares by sign
        return float("inf") if value > 0 else float("-inf")
    except (TypeError, ValueError):
        return float("-inf")


# --------------------------------------------------------------------------------------- Posts.xml


def _posts_xml_examples(path: Path, report: SourceReport, limit: int | None) -> list[RawExample]:
    """Stream a Stack Exchange `Posts.xml`: rows are read and cleared one at a time.

    Memory is proportional to what is kept, not to the file: per question its title and body and one
    answer body (the accepted one once seen, until then the best-scored so far), never the other answers,
    the other post types or the XML. Answers follow their question in real dumps (ids rise); an answer
    seen before its question is kept aside until the question arrives (all of them: which one is
    accepted is not known yet), and dropped at the end if it never does.
    """
    from xml.etree.ElementTree import ParseError

    from defusedxml.ElementTree import iterparse

    questions: dict[str, tuple[str, str, str]] = {}  # id -> (title, body, accepted answer id)
    accepted: dict[str, str] = {}  # question id -> accepted answer body
    best: dict[str, tuple[float, str]] = {}  # question id -> (score, body), until its accepted answer is seen
    early: dict[str, dict[str, str]] = {}  # answers whose question was not seen yet: qid -> {aid: body}
    root = None
    try:
        with open_input(path, "rb") as f:
            for event, elem in iterparse(f, events=("start", "end")):
                if root is None:
                    root = elem
                    if elem.tag != "posts":
                        raise DataError(
                            f"{path}: not a Stack Exchange Posts.xml (root element <{elem.tag}>, expected <posts>)"
                        )
                    continue
                if event != "end" or elem.tag != "row":
                    continue
                a = elem.attrib
                kind = a.get("PostTypeId")
                if kind == "1":
                    if "Id" not in a:
                        raise DataError(f"{path}: question row without an Id attribute")
                    questions[a["Id"]] = (a.get("Title", ""), a.get("Body", ""), a.get("AcceptedAnswerId", ""))
                elif kind == "2":
                    _keep_answer(a, path, questions, accepted, best, early)
                root.clear()  # drop finished rows: the parsed tree never grows past one row
    except ParseError as e:
        raise DataError(f"{path}: malformed XML ({e})") from e
    except READ_ERRORS as e:
        raise DataError(f"{path}: cannot read ({e.__class__.__name__}: {e})") from e
    except LookupError as e:  # the XML declaration names an encoding Python does not know
        raise DataError(f"{path}: cannot read ({e})") from e
    except Exception as e:  # defusedxml refuses entity expansion and external references
        if e.__class__.__module__.startswith("defusedxml"):
            raise DataError(f"{path}: refused unsafe XML ({e.__class__.__name__})") from e
        raise

    examples = []
    for qid in list(questions):
        if limit is not None and len(examples) >= limit:
            break
        title, body, accepted_id = questions.pop(qid)  # each question's text is released as it is used
        report.questions += 1
        answer = accepted.pop(qid, None) or early.pop(qid, {}).get(accepted_id) or best.pop(qid, (0, None))[1]
        if answer is None:
            report.skip("no_answer")
            continue
        examples.append(
            _example(
                qid=qid,
                group=f"se:{qid}",
                title=title,
                question=_question_text(title, body, "html"),
                answer=answer,
                markup="html",
            )
        )
    return examples


def _keep_answer(
    a: dict[str, str],
    path: Path,
    questions: dict[str, tuple[str, str, str]],
    accepted: dict[str, str],
    best: dict[str, tuple[float, str]],
    early: dict[str, dict[str, str]],
) -> None:
    """Remember an answer row only if it can still be its question's best answer."""
    parent, aid, body = a.get("ParentId"), a.get("Id", ""), a.get("Body", "")
    if not parent:
        raise DataError(f"{path}: answer row Id={aid!r} without a ParentId attribute")
    if parent in accepted:  # the accepted answer wins whatever the others score
        return
    if parent in questions and questions[parent][2] == aid:
        accepted[parent] = body
        best.pop(parent, None)
        return
    if parent not in questions:
        early.setdefault(parent, {})[aid] = body
    score = _num(a.get("Score"))
    if parent not in best or score > best[parent][0]:
        best[parent] = (score, body)


# --------------------------------------------------------------------------------------- pairs


def _pair_examples(path: Path, cfg: PhysicsSourceConfig, report: SourceReport, limit: int | None) -> list[RawExample]:
    f = cfg.fields
    by_group: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for where, rec in iter_records(path):
        for name in (f.question, f.answer, f.group):
            if not _has(rec, name):
                raise DataError(
                    f"{where}: missing field {name!r} (pairs layout from data.physics.fields; "
                    f"fields present: {field_names(rec)})"
                )
        key = get_field(rec, f.group)
        # A row without a group value is a question of its own, never merged with other such rows.
        key = str(key) if key not in (None, "") else f"row:{where}"
        by_group.setdefault(key, []).append((where, rec))
    examples = []
    for group, pairs in by_group.items():
        if limit is not None and len(examples) >= limit:
            break
        report.questions += 1
        scored = [rec for _, rec in pairs]
        best = _best(
            scored,
            accepted=lambda r: False,
            score=lambda r: get_field(r, f.score) if f.score and _has(r, f.score) else 0,
        )
        title = str(get_field(best, f.title)) if f.title and _has(best, f.title) else ""
        answer = get_field(best, f.answer)
        if not isinstance(answer, str) or not answer.strip():
            report.skip("no_answer")
            continue
        examples.append(
            _example(
                qid=group,
                group=f"pairs:{group}",
                title=title,
                question=_question_text(title, str(get_field(best, f.question)), cfg.pairs_markup),
                answer=answer,
                markup=cfg.pairs_markup,
            )
        )
    return examples


def _has(record: dict[str, Any], dotted: str) -> bool:
    try:
        get_field(record, dotted)
        return True
    except KeyError:
        return False
