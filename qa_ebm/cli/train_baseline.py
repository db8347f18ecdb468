"""`qa-ebm train-baseline`: fine-tune an HVAE run's decoder LM question -> answer (the autoregressive baseline)."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from qa_ebm.cli.common import add_common, config_from_args
from qa_ebm.cli.train_common import interrupted
from qa_ebm.training.baseline_trainer import train_baseline
from qa_ebm.training.runs import TrainingInterrupted


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-baseline",
        help="fine-tune an HVAE run's decoder LM on (question, answer) pairs: the autoregressive baseline",
        description="Train the autoregressive baseline (train_baseline section of the config): the HVAE run's "
        "trained decoder LM fine-tuned on `question SEP answer EOS` over the train split of the data the HVAE "
        "used; evaluate on val every train_baseline.eval_every steps.",
    )
    p.add_argument("--hvae", required=True, metavar="RUN", help="a finished qa-ebm train-hvae run directory")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory to write")
    p.add_argument("--data", metavar="DIR", help="the preprocess output the HVAE used (default: the one it recorded)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_common(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    console = Console()
    try:
        result = train_baseline(
            config,
            args.hvae,
            args.out,
            data_dir=args.data,
            resume=args.resume,
            overwrite=args.overwrite,
            on_eval=lambda m: print_eval(m, console),
        )
    except TrainingInterrupted as e:
        return interrupted(args, e)
    console.print(f"stopped at step {result.step} ({result.stopped}); wrote {result.out} (model/, metrics.jsonl)")
    return 0


def print_eval(m: dict, console: Console) -> None:
    table = Table(title=f"step {m['step']}", title_justify="left")
    columns = {"train loss": "train_loss", "val NLL": "val_token_nll", "val ppl": "val_ppl", "exact": "val_exact"}
    for col in columns:
        table.add_column(col, justify="right")
    table.add_row(*(f"{m[k]:.3f}" if k in m else "-" for k in columns.values()))
    console.print(table)
    for s in m.get("samples", [])[:2]:
        console.print(f"  Q: {s['question'][:100]}\n  A: {s['answer'][:150]}\n  gold: {s['gold'][:150]}")
