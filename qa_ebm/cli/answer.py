"""`qa-ebm answer`: answer one question, or a batch from a file or stdin, with a saved pipeline.

An answer pipeline (`qa-ebm export`) writes the answer out of a latent refined from noise; a reading pipeline
(`pipelines/squad.yaml`) answers with a span of the passage given with --context.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from qa_ebm.errors import DataError
from qa_ebm.pipeline.answering import MODES, RANK_BY, SAMPLERS, AnswerOptions, answer_rows, reading_mode


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "answer",
        help="answer a question (optionally about a passage, --context) with a saved pipeline",
        description="With an answer pipeline (qa-ebm export): refine a latent from noise by gradient descent on the "
        "energy and decode it; --candidates N keeps the lowest energy of N, --trace shows the energy at every step "
        "and the answer forming. With a reading pipeline: answer with a span of the passage, chosen by the energy "
        "over its candidate spans (--mode extract, the default), by the proposal head alone (--mode proposal), or "
        "decode the refined latent (--mode generate); --steps N refines and snaps to the nearest low-energy span.",
    )
    p.add_argument("--pipeline", required=True, metavar="DIR", help="a pipeline dir (qa-ebm export, pipeline run)")
    p.add_argument("question", nargs="?", help="the question (or use --input for a batch)")
    p.add_argument("--context", metavar="TEXT", help="the passage to answer from")
    p.add_argument("--context-file", metavar="FILE", help="read the passage from a UTF-8 text file")
    p.add_argument(
        "--input",
        metavar="FILE",
        help="a batch, '-' for stdin: one question per line, or JSONL objects {id, question, context?}",
    )
    p.add_argument("--output", metavar="JSONL", help="write the batch's answers here (default: stdout)")
    p.add_argument(
        "--steps",
        type=int,
        help="refinement step cap (answer pipeline: default its own; reading: "
        "refine N steps and snap, default rank the candidates)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    g = p.add_argument_group("answer pipelines")
    g.add_argument("--candidates", type=int, default=1, help="refine N start points, keep the lowest energy")
    g.add_argument("--sampler", choices=SAMPLERS, help="replace the pipeline's sampler for this call")
    g.add_argument("--step-size", type=float, help="the sampler's step size (default: the pipeline's)")
    g.add_argument("--seed", type=int, help="seed of the start noise (default: the pipeline's)")
    g.add_argument("--trace", action="store_true", help="the energy at every step and the answer at a few steps")
    r = p.add_argument_group("reading pipelines")
    r.add_argument("--mode", choices=MODES, default="extract")
    r.add_argument("--rank-by", choices=RANK_BY, default="total", help="E_total or E_theta alone")
    r.add_argument(
        "--decision",
        choices=["lowest", "expected_f1"],
        help="pick the lowest energy, or the highest expected F1 under softmax(-E/T) (default: the pipeline's)",
    )
    r.add_argument("--temperature", type=float, help="T of --decision expected_f1 (default: the pipeline's)")
    add_reading_overrides(r)
    p.set_defaults(run=run)


def add_reading_overrides(group: argparse._ArgumentGroup) -> None:
    """The reading pipeline's runtime settings a command may override (`answer`, `evaluate`)."""
    group.add_argument("--top-k", type=int, metavar="N", help="candidates per question (default: the pipeline's)")
    group.add_argument(
        "--mixed-precision",
        choices=["no", "bf16"],
        help="bf16: the encoders (window states, candidate latents) under bfloat16 autocast (default: the pipeline's)",
    )


def apply_reading_overrides(pipe: Any, args: argparse.Namespace) -> None:
    """Set what `add_reading_overrides` parsed on a loaded reading pipeline; an option not given keeps its value."""
    if args.mixed_precision is not None:
        pipe.mixed_precision = args.mixed_precision
    if args.top_k is not None:
        pipe.top_k = args.top_k


def pipeline_mode(args: argparse.Namespace) -> tuple[str, int | None]:
    """(ReadingPipeline mode, steps) from the command's flags."""
    check_steps(args.steps)
    return reading_mode(args.mode, args.steps, args.rank_by)


def check_steps(steps: int | None) -> None:
    if steps is not None and steps < 0:
        raise DataError(f"--steps must be >= 0, got {steps}")


def answer_options(args: argparse.Namespace) -> AnswerOptions:
    """The flags as options, checked before the pipeline is loaded."""
    check_steps(args.steps)
    if args.candidates < 1:
        raise DataError(f"--candidates must be >= 1, got {args.candidates}")
    return AnswerOptions(
        steps=args.steps,
        batch_size=args.batch_size,
        candidates=args.candidates,
        sampler=args.sampler,
        step_size=args.step_size,
        seed=args.seed,
        trace=args.trace,
        mode=args.mode,
        rank_by=args.rank_by,
        decision=args.decision,
        temperature=args.temperature,
    )


def read_batch(path: str, need_context: bool = True) -> list[dict[str, Any]]:
    """The batch, each line checked: a plain question, or a JSON object {id, question, context}.

    A line that starts with "{" is JSON; any other non-empty line is a question. `need_context`: every line
    must carry a passage (reading pipelines).
    """
    if path == "-":
        where, text = "stdin", sys.stdin.read()
    else:
        p = Path(path)
        if not p.is_file():
            raise DataError(f"--input {p}: file not found")
        try:
            where, text = str(p), p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise DataError(f"--input {p}: not UTF-8 text (byte {e.start})") from e
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if not line.lstrip().startswith("{"):
            row: Any = {"question": line.strip()}
        else:
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where} line {n}: not valid JSON ({e.msg})") from e
            if not isinstance(row, dict):
                raise DataError(f"{where} line {n}: expected an object {{id, question, context}}")
        if not isinstance(row.get("question"), str):
            raise DataError(f"{where} line {n}: field 'question' must be a string")
        context = row.get("context")
        if need_context and not isinstance(context, str):
            raise DataError(f"{where} line {n}: field 'context' must be a string (this pipeline reads passages)")
        if context is not None and not isinstance(context, str):
            raise DataError(f"{where} line {n}: field 'context' must be a string or absent")
        rows.append({"id": str(row.get("id", n)), "question": row["question"], "context": context})
    if not rows:
        raise DataError(f"{where}: no questions")
    return rows


def single_context(args: argparse.Namespace, required: bool) -> str | None:
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
    if args.context is None and required:
        raise DataError("this pipeline answers questions about a passage: give --context TEXT or --context-file FILE")
    return args.context


def run(args: argparse.Namespace) -> int:
    from qa_ebm.pipeline import load_pipeline, pipeline_class
    from qa_ebm.pipeline.reading import ReadingPipeline

    if (args.question is None) == (args.input is None):
        raise DataError("give one question, or --input FILE ('-' for stdin) for a batch")
    reading = pipeline_class(args.pipeline) is ReadingPipeline
    if args.input is not None:
        rows = read_batch(args.input, need_context=reading)
    else:
        rows = [{"id": "0", "question": args.question, "context": single_context(args, required=reading)}]
    options = answer_options(args)  # bad flags fail before the pipeline loads
    pipe = load_pipeline(args.pipeline)
    if reading:
        apply_reading_overrides(pipe, args)
    records = answer_rows(pipe, rows, options)
    if args.input is not None:
        write_jsonl(records, args.output)
    elif args.json:
        print(json.dumps(records[0], ensure_ascii=False))
    else:
        print_answer(records[0])
    return 0


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
    sentences = f", sentences {r['sentences']}" if "sentences" in r else ""
    print(f"  energy {r['energy']:.3f}, steps {r['steps']}{sentences}")
    for alt in r.get("runners_up", [])[:3]:
        print(f"  runner-up: {alt['text']!r} (energy {alt['energy']:.3f})")
    if len(r.get("candidates", [])) > 1:
        print("  candidates' energies: " + ", ".join(f"{c['energy']:.3f}" for c in r["candidates"]))
    if r.get("trace"):
        print("  energy by step: " + " ".join(f"{e:.3f}" for e in r["energies"]))
        for d in r["trace"]:
            print(f"  step {d['step']:>3}: {d['text']}")
