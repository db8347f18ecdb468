"""The body of ``POST /answer``: parsed and checked field by field before the model sees it.

Single question::

    {"question": str, "context"?: str | null, "id"?: str | int, "steps"?: int | null,
     "candidates"?: int, "seed"?: int | null, "trace"?: bool}          (answer pipelines)
    {"question": str, "context": str, "id"?: str | int, "steps"?: int | null,
     "mode"?: "extract" | "generate" | "proposal"}                       (reading pipelines)

Batch: ``{"batch": [{"question", "context"?, "id"?}, ...], **the options above}``.

Every refusal is a :class:`RequestError` with the HTTP status and a message naming the field: the client sees
that message and nothing else. The caps (steps, candidates, batch size) bound the work and the memory one
request can ask for; the deadline (``worker.py``) bounds the time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from qa_ebm.pipeline.answering import MODES, AnswerOptions

ROW_FIELDS = ("question", "context", "id")
COMMON_FIELDS = (*ROW_FIELDS, "steps", "batch")
ANSWER_FIELDS = ("candidates", "seed", "trace")  # answer pipelines only
READING_FIELDS = ("mode",)  # reading pipelines only
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed's range


class RequestError(Exception):
    """A request the service refuses: the HTTP status and a one-line message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class RequestLimits:
    """The most one request may ask for."""

    max_steps: int = 1000
    max_candidates: int = 16
    max_batch: int = 32


@dataclass(frozen=True)
class AnswerRequest:
    rows: list[dict[str, Any]]  # {"id", "question", "context"}: the rows of pipeline.answering
    options: AnswerOptions
    batch: bool  # answer {"answers": [records]} rather than one record


def parse_answer_request(body: bytes, reading: bool, limits: RequestLimits) -> AnswerRequest:
    """The request in `body`, checked for a reading pipeline (`reading`) or an answer pipeline."""
    data = _json_object(body)
    _check_fields(data, reading)
    if "batch" in data:
        given = [k for k in ROW_FIELDS if k in data]
        if given:
            raise RequestError(400, f"give 'question' or 'batch', not both (found '{given[0]}' beside 'batch')")
        items = data["batch"]
        if not isinstance(items, list) or not items:
            raise RequestError(400, f"field 'batch' must be a non-empty array, got {_json_type(items)}")
        if len(items) > limits.max_batch:
            raise RequestError(400, f"field 'batch' has {len(items)} questions; the limit is {limits.max_batch}")
        rows = [_row(item, f"batch[{i}]", reading, default_id=str(i)) for i, item in enumerate(items)]
    else:
        rows = [_row(data, None, reading, default_id="0")]
    options = AnswerOptions(
        steps=_integer(data, "steps", 0, limits.max_steps, default=None),
        batch_size=limits.max_batch,
        candidates=_integer(data, "candidates", 1, limits.max_candidates, default=1),
        seed=_integer(data, "seed", 0, MAX_SEED, default=None),
        trace=_boolean(data, "trace"),
        mode=_choice(data, "mode", MODES, default="extract"),
    )
    return AnswerRequest(rows, options, batch="batch" in data)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(400, f"body is not UTF-8 text (byte {e.start})") from e
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as e:
        raise RequestError(400, f"body is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
    except RecursionError as e:
        raise RequestError(400, "body is not acceptable JSON: nested too deeply") from e
    except ValueError as e:  # NaN / Infinity, or an integer past Python's digit limit
        raise RequestError(400, f"body is not acceptable JSON: {e}") from e
    if not isinstance(data, dict):
        raise RequestError(400, f'body must be a JSON object such as {{"question": ...}}, got {_json_type(data)}')
    return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _check_fields(data: dict[str, Any], reading: bool) -> None:
    own, other = (READING_FIELDS, ANSWER_FIELDS) if reading else (ANSWER_FIELDS, READING_FIELDS)
    for key in data:
        if key in other:
            kind, this = ("answer", "a reading") if reading else ("reading", "an answer")
            raise RequestError(400, f"field '{key}' applies to {kind} pipelines; this server runs {this} pipeline")
        if key not in COMMON_FIELDS and key not in own:
            raise RequestError(400, f"unknown field '{key}'; valid: {', '.join((*COMMON_FIELDS, *own))}")


def _row(item: Any, where: str | None, reading: bool, default_id: str) -> dict[str, Any]:
    def name(key: str) -> str:
        return f"'{where}.{key}'" if where else f"'{key}'"

    if not isinstance(item, dict):
        raise RequestError(400, f"'{where}' must be an object {{question, context?, id?}}, got {_json_type(item)}")
    if where is not None:
        extra = sorted(set(item) - set(ROW_FIELDS))
        if extra:
            raise RequestError(400, f"unknown field {name(extra[0])}; valid: {', '.join(ROW_FIELDS)}")
    if "question" not in item:
        raise RequestError(400, f"field {name('question')} is required")
    question = item["question"]
    if not isinstance(question, str):
        raise RequestError(400, f"field {name('question')} must be a string, got {_json_type(question)}")
    context = item.get("context")
    if reading and context is None:
        raise RequestError(400, f"field {name('context')} is required: this pipeline answers from a passage")
    if context is not None and not isinstance(context, str):
        raise RequestError(400, f"field {name('context')} must be a string or null, got {_json_type(context)}")
    rid = item.get("id", default_id)
    if isinstance(rid, bool) or not isinstance(rid, str | int):
        raise RequestError(400, f"field {name('id')} must be a string or an integer, got {_json_type(rid)}")
    return {"id": str(rid), "question": question, "context": context}


def _integer(data: dict[str, Any], key: str, lo: int, hi: int, default: int | None) -> int | None:
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(400, f"field '{key}' must be an integer, got {_json_type(value)}")
    if not lo <= value <= hi:
        raise RequestError(400, f"field '{key}' must be in [{lo}, {hi}], got {value}")
    return value


def _boolean(data: dict[str, Any], key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise RequestError(400, f"field '{key}' must be true or false, got {_json_type(value)}")
    return value


def _choice(data: dict[str, Any], key: str, choices: tuple[str, ...], default: str) -> str:
    value = data.get(key, default)
    if value not in choices:
        raise RequestError(400, f"field '{key}' must be one of {', '.join(choices)}, got {json.dumps(value)[:40]}")
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    for kind, name in ((bool, "boolean"), (str, "string"), (int, "integer"), (float, "number"), (list, "array")):
        if isinstance(value, kind):
            return name
    return "object"
