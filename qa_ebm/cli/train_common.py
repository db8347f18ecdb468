"""What the train-* commands share: a run stopped by SIGINT/SIGTERM ends with one line and a signal's exit status."""

from __future__ import annotations

import argparse
import shlex
import sys

from qa_ebm.training.distributed import is_main_process
from qa_ebm.training.runs import TrainingInterrupted


def interrupted(args: argparse.Namespace, error: TrainingInterrupted) -> int:
    """One line on stderr (the step, the checkpoint, the command that continues the run); the exit status
    128 + the signal's number (130 for SIGINT, 143 for SIGTERM), as for any process a signal stopped."""
    if is_main_process():  # under accelerate launch, once
        print(f"qa-ebm {args.command}: {error}; continue with: {resume_command(args)}", file=sys.stderr)
    return error.exit_status


def resume_command(args: argparse.Namespace) -> str:
    """The command line that resumes this run: the same inputs, config and overrides, with --resume."""
    parts = ["qa-ebm", args.command]
    for flag in ("config", "data", "hvae"):
        if getattr(args, flag, None):
            parts += [f"--{flag}", str(getattr(args, flag))]
    parts += ["--out", str(args.out)]
    for item in args.overrides:
        parts += ["--set", item]
    return shlex.join([*parts, "--resume"])
