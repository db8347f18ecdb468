"""`qa-ebm preprocess`: build a processed dataset directory from SQuAD and/or Physics SE."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from qa_ebm.cli.common import add_common, config_from_args
from qa_ebm.data.preprocess import SPLITS, preprocess


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preprocess",
        help="clean, split and tokenise SQuAD / Physics SE into a dataset directory",
        description="Load SQuAD and/or Physics Stack Exchange (a Hub id or a local file), clean the text, "
        "split sentences, filter, tokenise hierarchically and write grouped train/val/test splits.",
    )
    p.add_argument(
        "--squad", metavar="PATH|HUB_ID", help="SQuAD JSON (.json/.json.gz) or rajpurkar/squad, rajpurkar/squad_v2"
    )
    p.add_argument(
        "--physics",
        metavar="PATH|HUB_ID",
        help="H4 JSONL/parquet, Posts.xml, Q/A pairs, or HuggingFaceH4/stack-exchange-preferences",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output dataset directory")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_common(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    result = preprocess(config, args.out, squad=args.squad, physics=args.physics, overwrite=args.overwrite)
    print_summary(result.manifest, str(result.out))
    return 0


def print_summary(m: dict, out: str, console: Console | None = None) -> None:
    console = console or Console()
    sources = Table(title="sources", title_justify="left")
    for col in ("source", "format", "questions", "kept", "unanswerable"):
        sources.add_column(col, justify="left" if col in ("source", "format") else "right")
    dropped = Table(title="dropped (first rule that applies)", title_justify="left")
    for col in ("source", "rule", "examples"):
        dropped.add_column(col, justify="right" if col == "examples" else "left")
    for s in m["sources"]:
        kept = sum(m["counts_by_source"][split].get(s["name"], 0) for split in SPLITS)
        sources.add_row(s["name"], s["format"], str(s["questions"]), str(kept), str(s["unanswerable"]))
        for reason, n in s["skipped"].items():
            dropped.add_row(s["name"], f"source: {reason}", str(n))
        for rule, n in m["filter_drops"][s["name"]].items():
            dropped.add_row(s["name"], f"filter: {rule}", str(n))
    splits = Table(title="splits", title_justify="left")
    for col in ("split", "examples", "unanswerable", "by source"):
        splits.add_column(col, justify="left" if col in ("split", "by source") else "right")
    for split in SPLITS:
        splits.add_row(
            split, str(m["counts"][split]), str(m["unanswerable"][split]), _fmt(m["counts_by_source"][split])
        )
    tok = m["tokenizer"]
    for table in (sources, dropped, splits):
        console.print(table)
    console.print(
        f"tokenizer: {tok['kind']} ({tok['name']}), vocab {tok['vocab_size']}, special ids {tok['special']}\n"
        f"sentences: punkt {m['punkt']['origin']}; ids {m['shape']['max_sentences']} x {m['shape']['max_words']}; "
        f"{m['truncated_sentences']} sentences truncated to max_words"
    )
    console.print(f"wrote {out} in {m['seconds']:.1f} s (fingerprint {m['fingerprint'][:12]})")


def _fmt(d: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in d.items()) or "-"
