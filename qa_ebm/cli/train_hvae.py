"""`qa-ebm train-hvae`: train the hierarchical VAE on a preprocess output."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from qa_ebm.cli.common import add_common, config_from_args
from qa_ebm.cli.train_common import interrupted
from qa_ebm.training.distributed import is_main_process
from qa_ebm.training.hvae_trainer import train_hvae
from qa_ebm.training.runs import TrainingInterrupted


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-hvae",
        help="train the hierarchical VAE on a dataset dir; write a run dir with latents for every split",
        description="Train the HVAE (train_hvae section of the config), evaluate on val every "
        "train_hvae.eval_every steps, then encode every split's answers for the energy transformer.",
    )
    p.add_argument("--data", required=True, metavar="DIR", help="a qa-ebm preprocess output directory")
    p.add_argument("--out", required=True, metavar="RUN", help="run directory to write")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--report-to", choices=["none", "wandb"], help="log to Weights & Biases (offline without a login)")
    add_common(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.report_to:
        args.overrides = [*args.overrides, f"train_hvae.report_to={args.report_to}"]
    config = config_from_args(args)
    console = Console()
    try:
        result = train_hvae(
            config,
            args.data,
            args.out,
            resume=args.resume,
            overwrite=args.overwrite,
            on_eval=lambda m: print_eval(m, console),
        )
    except TrainingInterrupted as e:
        return interrupted(args, e)
    if is_main_process():  # under accelerate launch, the one that wrote the run
        console.print(
            f"stopped at step {result.step} ({result.stopped}); wrote {result.out} "
            "(model/, latents/, metrics.jsonl, trainer_state/)"
        )
    return 0


def print_eval(m: dict, console: Console) -> None:
    table = Table(title=f"step {m['step']}", title_justify="left")
    for col in ("train loss", "val nll", "val ppl", "KL g", "KL l", "active g", "active l", "recon exact"):
        table.add_column(col, justify="right")
    L = m.get("latent_dim", 0)
    table.add_row(
        f"{m.get('train_loss', float('nan')):.2f}",
        f"{m.get('val_token_nll', float('nan')):.3f}",
        f"{m.get('val_ppl', float('nan')):.1f}",
        f"{m.get('val_kl_g', float('nan')):.2f}",
        f"{m.get('val_kl_l', float('nan')):.2f}",
        f"{m.get('active_units_g', 0)}/{L}",
        f"{m.get('active_units_l', 0)}/{L}",
        f"{m.get('val_reconstruction_exact', 0):.2f}",
    )
    console.print(table)
    for r in m.get("reconstructions", [])[:2]:
        console.print(f"  gold : {r['gold'][:150]}\n  recon: {r['reconstruction'][:150]}")
    for s in m.get("prior_samples", [])[:1]:
        console.print(f"  prior: {s[:150]}")
