"""Entry point: dispatch to a subcommand; map errors to exit codes.

Exit status 0 on success, 2 on a usage or input error (one line on stderr; the traceback only with
`--debug`), 1 on an internal failure.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from qa_ebm import __version__
from qa_ebm.cli import (
    answer,
    evaluate,
    export,
    pipeline,
    preprocess,
    serve,
    train_baseline,
    train_ebt,
    train_hvae,
    verify,
)
from qa_ebm.errors import QaEbmError

SUBCOMMANDS = (preprocess, train_hvae, train_ebt, train_baseline, export, answer, verify, evaluate, pipeline, serve)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's usage errors: one line, status 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qa-ebm", description="Question answering by energy-based reasoning in a latent space.")
    parser.add_argument("--version", action="version", version=f"qa-ebm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in SUBCOMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.run(args) or 0
    except QaEbmError as e:
        if args.debug:
            traceback.print_exc()
        print(f"qa-ebm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qa-ebm {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if args.debug:
            traceback.print_exc()
        print(
            f"qa-ebm {args.command}: internal error: {e.__class__.__name__}: {e} "
            "(rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
