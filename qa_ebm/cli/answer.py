"""`qa-ebm answer`: answer questions about a passage with a reading pipeline (one, or a JSONL batch)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from qa_ebm.errors import DataError

MODES = ("extract", "generate", "proposal")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "answer",
        help="answer a question about a passage (--context) with a trained reading pipeline",
        description="Answer with a span of the given passage, chosen by the energy over the passage's candidate "
        "spans (--mode extract, the default), by the proposal head alone (--mode proposal), or by decoding "
        "the refined latent (--mode generate). --steps N refines a latent for up to N steps and snaps it to the "
        "nearest low-energy candidate; without it the candidates are ranked by energy.",
    )
    p.add_argument("--pipeline", required=True, metavar="DIR", help="a pipeline dir (e.g. runs/squad/pipeline)")
    p.add_argument("question", nargs="?", help="the question (or use --input for a batch)")
    p.add_argument("--context", metavar="TEXT", help="the passage to answer from")
    p.add_argument("--context-file", metavar="FILE", help="read the passage from a UTF-8 text file")
    p.add_argument("--input", metavar="JSONL", help="a batch: one {id, question, context} object per line")
    p.add_argument("--output", metavar="JSONL", help="write the batch's answers here (default: stdout)")
    p.add_argument("--mode", choices=MODES, default="extract")
    p.add_argument("--steps", type=int, default=0, help="refinement steps before snapping (0: rank candidates)")
    p.add_argument("--rank-by", choices=["total", "energy"], default="total", help="E_total or E_theta alone")
    p.add_argument(
        "--decision",
        choices=["lowest", "expected_f1"],
        help="pick the lowest energy, or the highest expected F1 under softmax(-E/T) (default: the pipeline's)",
    )
    p.add_argument("--temperature", type=float, help="T of --decision expected_f1 (default: the pipeline's)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(run=run)


def pipeline_mode(args: argparse.Namespace) -> tuple[str, int | None]:
    """(ReadingPipeline mode, steps) from the command's flags."""
    if args.steps < 0:
        raise DataError(f"--steps must be >= 0, got {args.steps}")
    if args.mode == "proposal":
        return "proposal", None
    if args.mode == "generate":
        return "generate", args.steps or None
    if args.steps > 0:
        return "refine", args.steps
    return ("rank" if args.rank_by == "total" else "energy"), None


def read_batch(path: str) -> list[dict[str, Any]]:
    """The JSONL batch, each line checked: an object with a string question and a non-empty string context."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"--input {p}: file not found")
    rows = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{p} line {n}: not valid JSON ({e.msg})") from e
        if not isinstance(row, dict):
            raise DataError(f"{p} line {n}: expected an object {{id, question, context}}")
        for key in ("question", "context"):
            if not isinstance(row.get(key), str):
                raise DataError(f"{p} line {n}: field {key!r} must be a string (this pipeline reads passages)")
        rows.append({"id": row.get("id", str(n)), "question": row["question"], "context": row["context"]})
    if not rows:
        raise DataError(f"{p}: no questions")
    return rows


def single_context(args: argparse.Namespace) -> str:
    if args.context is not None and args.context_file is not None:
        raise DataError("give --context or --context-file, not both")
    if args.context_file is not None:
        path = Path(args.context_file)
        if not path.is_file():
            raise DataError(f"--context-file {path}: file not found")
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"--context-file {path}: not UTF-8 text (byte {e.start})") from e
    if args.context is None:
        raise DataError("this pipeline answers questions about a passage: give --context TEXT or --context-file FILE")
    return args.context


def run(args: argparse.Namespace) -> int:
    if (args.question is None) == (args.input is None):
        raise DataError("give one question, or --input QUESTIONS.jsonl for a batch")
    mode, steps = pipeline_mode(args)
    if args.input is not None:
        rows = read_batch(args.input)
    else:
        rows = [{"id": "0", "question": args.question, "context": single_context(args)}]
    from qa_ebm.pipeline.reading import ReadingPipeline

    pipe = ReadingPipeline.from_pretrained(args.pipeline)
    answers = pipe(
        [r["question"] for r in rows],
        [r["context"] for r in rows],
        mode=mode,
        steps=steps,
        batch_size=args.batch_size,
        decision=args.decision,
        temperature=args.temperature,
    )
    records = [{"id": r["id"], **answer_record(a.to_dict())} for r, a in zip(rows, answers, strict=True)]
    if args.input is not None:
        write_jsonl(records, args.output)
    elif args.json:
        print(json.dumps(records[0], ensure_ascii=False))
    else:
        print_answer(records[0])
    return 0


def answer_record(d: dict[str, Any]) -> dict[str, Any]:
    """The answer's fields, its text under "answer" first (the batch format's contract)."""
    return {"answer": d.pop("text"), **d}


def write_jsonl(records: list[dict[str, Any]], output: str | None) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if output is None:
        sys.stdout.write(text)
        return
    out = Path(output)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")  # nothing half-written on failure
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)


def print_answer(r: dict[str, Any]) -> None:
    where = f" [{r['start']}:{r['end']}]" if r.get("start") is not None else ""
    print(f"{r['answer']}{where}")
    print(f"  energy {r['energy']:.3f}, steps {r['steps']}")
    for alt in r.get("runners_up", [])[:3]:
        print(f"  runner-up: {alt['text']!r} (energy {alt['energy']:.3f})")
