"""Arguments every subcommand shares: --config, --set, --debug."""

from __future__ import annotations

import argparse

from qa_ebm.config import Config, load_config


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="YAML", help="config file (e.g. configs/tiny.yaml); defaults if omitted")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one config value by its dotted key, e.g. --set data.max_words=30 (repeatable)",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.config, args.overrides)
