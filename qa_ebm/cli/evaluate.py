"""`qa-ebm evaluate`: judge a reading pipeline on a dataset split, side by side with its baselines."""

from __future__ import annotations

import argparse

from rich.console import Console

from qa_ebm.errors import DataError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="EM/F1 of a reading pipeline on a split, beside the proposal head alone and simple baselines",
        description="Evaluate a reading pipeline on the SQuAD questions of a preprocess output's split: the "
        "proposal head alone, energy ranking, refine + snap at several step counts, generate mode and the "
        "best-overlap sentence, side by side. Writes results.json, results.md and f1_vs_steps.png.",
    )
    p.add_argument("--pipeline", required=True, metavar="DIR")
    p.add_argument("--data", required=True, metavar="DIR", help="a qa-ebm preprocess output")
    p.add_argument("--split", default="test", help="the split to judge (choose settings on val, report test)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 5, 10, 20], help="refinement step counts")
    p.add_argument("--limit", type=int, help="only the first N questions")
    p.add_argument("--no-generate", action="store_true", help="skip generate mode")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from qa_ebm.data.processed import load_processed
    from qa_ebm.pipeline.evaluate_reading import evaluate_reading, markdown, write_results
    from qa_ebm.pipeline.reading import ReadingPipeline

    examples = load_processed(args.data).reading_examples(args.split, answerable_only=True)
    if args.limit is not None:
        examples = examples[: args.limit]
    if not examples:
        raise DataError(f"{args.data}: split {args.split!r} has no answerable questions with a passage (SQuAD)")
    pipe = ReadingPipeline.from_pretrained(args.pipeline)
    result = evaluate_reading(pipe, examples, args.steps, args.batch_size, generate=not args.no_generate)
    result.update({"pipeline": str(args.pipeline), "data": str(args.data), "split": args.split})
    title = f"Reading evaluation: {args.pipeline} on {args.data} ({args.split})"
    write_results(result, Path(args.out), title)
    Console().print(markdown(result, title))
    return 0
