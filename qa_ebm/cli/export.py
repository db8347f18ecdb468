"""`qa-ebm export`: an HVAE run and an energy-transformer run -> one self-contained answer pipeline dir."""

from __future__ import annotations

import argparse

from rich.console import Console


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write an answer pipeline directory from a train-hvae run and a train-ebt run",
        description="Assemble the answer pipeline (question encoder, energy transformer, sampler, HVAE decoder) "
        "into one directory that `qa-ebm answer --pipeline DIR` and `qa-ebm verify` load. Also stores the train "
        "answers' sentence-count distribution and the val energies that verify's percentiles refer to.",
    )
    p.add_argument("--hvae", required=True, metavar="RUN", help="a finished qa-ebm train-hvae run")
    p.add_argument("--ebt", required=True, metavar="RUN", help="a qa-ebm train-ebt run on that HVAE (mcmc or ired)")
    p.add_argument("--out", required=True, metavar="DIR", help="the pipeline directory to write")
    p.add_argument("--data", metavar="DIR", help="the preprocess output the HVAE used (default: the one it recorded)")
    p.add_argument("--calibration-size", type=int, default=1000, help="val questions scored for verify (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="the pipeline's default seed for start noise")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from qa_ebm.io import atomic_output_dir, check_output_dir
    from qa_ebm.pipeline.generative import QAPipeline

    check_output_dir(args.out, args.overwrite)  # before minutes of work, not after
    pipe = QAPipeline.from_runs(args.hvae, args.ebt, args.data, calibration_size=args.calibration_size, seed=args.seed)
    with atomic_output_dir(args.out, overwrite=args.overwrite) as tmp:
        pipe.save_pretrained(tmp)
    cal = pipe.calibration
    console = Console()
    console.print(f"wrote {args.out}: sampler {pipe.sampler_config['name']}, seed {pipe.seed}")
    if cal is not None and cal.gold:
        mid = len(cal.gold) // 2
        console.print(
            f"  calibration: {len(cal.gold)} val questions, median energy gold {cal.gold[mid]:.3f} / "
            f"other answers {cal.negative[len(cal.negative) // 2]:.3f}"
        )
    return 0
