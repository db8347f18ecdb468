"""`qa-ebm train-ebt`: train the energy transformer on an HVAE run's latents."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from qa_ebm.cli.common import add_common, config_from_args
from qa_ebm.cli.train_common import interrupted
from qa_ebm.training.distributed import is_main_process
from qa_ebm.training.ebt_trainer import train_ebt
from qa_ebm.training.runs import TrainingInterrupted


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-ebt",
        help="train the energy transformer on (question, answer latent) pairs of an HVAE run",
        description="Train the energy transformer (ebt and train_ebt sections of the config) with the mcmc or "
        "ired objective, or the direct-regression baseline (train_ebt.objective=regress); evaluate on val every "
        "train_ebt.eval_every steps.",
    )
    p.add_argument("--hvae", required=True, metavar="RUN", help="a finished qa-ebm train-hvae run directory")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory to write")
    p.add_argument("--data", metavar="DIR", help="the preprocess output the HVAE used (default: the one it recorded)")
    p.add_argument("--objective", choices=["mcmc", "ired", "regress"], help="shorthand for --set train_ebt.objective")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--report-to", choices=["none", "wandb"], help="log to Weights & Biases (offline without a login)")
    add_common(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    for flag, key in ((args.report_to, "report_to"), (args.objective, "objective")):
        if flag:
            args.overrides = [*args.overrides, f"train_ebt.{key}={flag}"]
    config = config_from_args(args)
    console = Console()
    try:
        result = train_ebt(
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
    if is_main_process():  # under accelerate launch, the one that wrote the run
        console.print(f"stopped at step {result.step} ({result.stopped}); wrote {result.out} (model/, metrics.jsonl)")
    return 0


def print_eval(m: dict, console: Console) -> None:
    table = Table(title=f"step {m['step']}", title_justify="left")
    columns = {
        "train loss": "train_loss",
        "MSE start": "val_mse_start",
        "MSE mean": "val_mse_mean_latent",
        "MSE refined": "val_mse_refined",
        "steps": "val_steps",
        "E gold": "val_energy_gold",
        "E refined": "val_energy_refined",
        "E rivals": "val_energy_negatives",
        "recall@1": "val_recall_at_1",
    }
    for col in columns:
        table.add_column(col, justify="right")
    table.add_row(*(f"{m[k]:.3f}" if k in m else "-" for k in columns.values()))
    console.print(table)
    if "val_recall_at_1" in m:
        c = m["val_candidates"]
        console.print(f"  recall@1 among {c} answer latents (chance {1 / c:.3f})")
    for s in m.get("samples", [])[:2]:
        console.print(f"  Q: {s['question'][:100]}\n  A: {s['refined'][:150]}")
