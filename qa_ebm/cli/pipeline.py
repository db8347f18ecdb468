"""`qa-ebm pipeline run pipelines/X.yaml`: run a staged pipeline, skipping unchanged stages."""

from __future__ import annotations

import argparse

from rich.console import Console

from qa_ebm.pipeline.runner import load_spec, run_pipeline


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pipeline",
        help="run a staged pipeline file (pipelines/*.yaml)",
        description="Run the stages of a pipeline file in order; a stage whose config, inputs and upstream "
        "stages are unchanged since its last run is skipped.",
    )
    actions = p.add_subparsers(dest="action", required=True)
    r = actions.add_parser("run", help="run the stages of a pipeline file")
    r.add_argument("spec", metavar="PIPELINE.yaml", help="e.g. pipelines/squad.yaml")
    r.add_argument("--squad", metavar="PATH|HUB_ID", help="SQuAD input (replaces the file's)")
    r.add_argument("--physics", metavar="PATH|HUB_ID", help="physics input (replaces the file's)")
    r.add_argument("--out", metavar="DIR", help="output root (default: the file's `out`)")
    r.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="one more config override after the file's `set` list, e.g. --set evaluate.reference_lm=smollm2",
    )
    r.add_argument("--force", action="store_true", help="rerun every stage even if unchanged")
    r.add_argument("--debug", action="store_true", help="show tracebacks")
    r.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    spec = load_spec(args.spec, inputs={"squad": args.squad, "physics": args.physics}, out=args.out)
    spec.overrides += args.overrides
    console = Console()
    console.print(f"pipeline {spec.name}: {' -> '.join(spec.stages)} into {spec.out}")

    def on_stage(report) -> None:
        what = "skipped (unchanged)" if report.status == "skipped" else f"done in {report.seconds:.0f} s"
        console.print(f"  {report.name}: {what} -> {report.out}")

    reports = run_pipeline(spec, force=args.force, on_stage=on_stage)
    total = sum(r.seconds for r in reports)
    console.print(f"pipeline {spec.name}: {len(reports)} stages, {total:.0f} s; see {spec.out}/pipeline_run.json")
    return 0
