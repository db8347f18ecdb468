"""`qa-ebm verify`: the energy of a given (question, answer) pair, as a calibrated plausibility score."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify",
        help="score a given answer to a question with the energy (lower is more plausible)",
        description="Encode the answer with the pipeline's HVAE and report E(question, answer), with the share of "
        "val gold answers and of val mismatched answers (another question's answer) whose energy is at or above "
        "it: a gold percentile near 50 reads like a typical correct answer, a negative percentile near 100 beats "
        "almost every wrong one.",
    )
    p.add_argument("--pipeline", required=True, metavar="DIR", help="an answer pipeline (qa-ebm export)")
    p.add_argument("question")
    p.add_argument("answer")
    p.add_argument("--context", metavar="TEXT", help="the passage, for a pipeline trained with passages")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from qa_ebm.pipeline import load_pipeline
    from qa_ebm.pipeline.generative import QAPipeline

    pipe = load_pipeline(args.pipeline, expect=QAPipeline)
    verdict = pipe.verify(args.question, args.answer, args.context)[0]
    if args.json:
        print(json.dumps({"question": args.question, "answer": args.answer, **verdict.to_dict()}))
        return 0
    print(f"energy {verdict.energy:.3f} ({verdict.sentences} sentence{'s' * (verdict.sentences != 1)})")
    print(f"  lower than or equal to the energy of {verdict.gold_percentile:.1f} % of val gold answers")
    print(f"  lower than or equal to the energy of {verdict.negative_percentile:.1f} % of val mismatched answers")
    return 0
