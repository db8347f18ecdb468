"""Reading mode on real SQuAD v1.1, quality and speed: the whole pipeline side by side with its proposal head.

One command trains (or reuses) the reading pipeline of ``pipelines/squad.yaml`` on the open SQuAD v1.1 dev
articles in ../shared/data (val and test are whole articles, pinned in that file), then reports:

- the training budget each stage used (seconds, from the pipeline run's own records);
- EM / F1 on val and test for every row of ``qa-ebm evaluate`` (proposal head alone, the expected-F1 rule
  over the proposal scores alone, E_theta, E_total, expected-F1 decision, refine + snap at 1..20 steps,
  generate, best-overlap sentence), with questions/s of each row answered in batches of 32;
- the latency of one question answered alone (batch 1, after a warm-up): p50 / p95 for the proposal head
  alone and for the default answer (E_total with the pipeline's decision rule), and the share of the
  answer's time spent in encoding / candidates / energy.

Settings are chosen on val only (the decision rule is calibrated there by the span_energy stage); test is
reported beside it.

    python bench/reading.py [--squad PATH] [--run runs/squad] [--set KEY=VALUE ...] [--latency-questions 100]
                            [--threads 2] [--tag -bf16]

Stages already run with unchanged settings are reused (``qa-ebm pipeline run`` skips them); ``--force``
retrains. Writes bench/results/reading.json and reading.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SQUAD_V1 = ROOT.parent / "shared" / "data" / "squad" / "squad-v1.1-dev-open.json.gz"
SPEC = ROOT / "pipelines" / "squad.yaml"
REFERENCE = "proposal head alone, 25 min on two cores (DESIGN.md): test F1 62.0 / EM 50.0, 26 q/s, p50 27 ms"


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))]


def latency(pipe, examples: list[dict], n: int, mode: str) -> dict:
    """p50 / p95 milliseconds of one question answered alone, and the pipeline's time share per stage."""
    for e in examples[:3]:  # warm-up: the first calls pay for allocations
        pipe(e["question"], e["context"], mode=mode)
    pipe.reset_timings()
    times = []
    for e in examples[:n]:
        t0 = time.perf_counter()
        pipe(e["question"], e["context"], mode=mode)
        times.append(1000 * (time.perf_counter() - t0))
    times.sort()
    total = sum(pipe.timings.values())
    shares = {k: round(100 * v / total, 1) for k, v in pipe.timings.items() if v > 0} if total else {}
    return {"n": len(times), "p50_ms": statistics.median(times), "p95_ms": percentile(times, 0.95), "share": shares}


def markdown(r: dict) -> str:
    m = r["machine"]
    budget = ", ".join(f"{k} {v:.0f} s" for k, v in r["train_seconds"].items())
    lines = [
        "# Reading mode on real SQuAD v1.1 (pipelines/squad.yaml)\n",
        f"machine: {m['platform']}, {m['cpus']} CPUs, torch {m['torch']} with {m['threads']} thread(s).\n",
        f"settings: pipelines/squad.yaml{''.join(f' --set {o}' for o in r.get('overrides', []))}\n",
        f"training: {budget}; {r['train_total_seconds'] / 60:.1f} min in all. "
        f"Decision rule chosen on val: {r['decision']['rule']}, T = {r['decision']['temperature']:g}.\n",
        "| row | val EM | val F1 | test EM | test F1 | test questions/s (batch 32) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    val = {row["row"]: row for row in r["val"]["rows"]}
    for row in r["test"]["rows"]:
        v = val.get(row["row"], {})
        lines.append(
            f"| {row['row']} | {v.get('exact_match', float('nan')):.1f} | {v.get('f1', float('nan')):.1f} | "
            f"{row['exact_match']:.1f} | {row['f1']:.1f} | {row['per_second']} |"
        )
    lines.append("")
    for mode, lat in r["latency"].items():
        share = ", ".join(f"{k} {v:.0f} %" for k, v in lat["share"].items())
        lines.append(
            f"- one question alone, `{mode}`: p50 {lat['p50_ms']:.0f} ms, p95 {lat['p95_ms']:.0f} ms "
            f"over {lat['n']} test questions ({share})"
        )
    lines += [f"- peak RSS {r['peak_rss_gb']:.2f} GB", f"- reference: {REFERENCE}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--squad", type=Path, default=SQUAD_V1, help="the open SQuAD v1.1 file")
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "squad", help="the pipeline's output root")
    parser.add_argument("--latency-questions", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--force", action="store_true", help="retrain every stage")
    parser.add_argument("--tag", default="", help="suffix for the result file names")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="after the file's `set`"
    )
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.squad.is_file():
        print(f"{args.squad} not found: this benchmark needs ../shared/data", file=sys.stderr)
        return 2

    from qa_ebm.data.processed import load_processed
    from qa_ebm.pipeline.reading import ReadingPipeline
    from qa_ebm.pipeline.runner import load_spec, run_pipeline

    spec = load_spec(SPEC, inputs={"squad": str(args.squad)}, out=str(args.run))
    spec.overrides += args.overrides
    run_pipeline(spec, force=args.force)
    record = json.loads((args.run / "pipeline_run.json").read_text())
    train_stages = ("preprocess", "train_hvae", "proposal", "span_energy", "export")
    # A reused stage reports its seconds from the run that made it: stage.json keeps them.
    seconds = {}
    for stage in record["stages"]:
        if stage["name"] in train_stages:
            kept = json.loads((Path(stage["out"]) / "stage.json").read_text())
            seconds[stage["name"]] = float(kept.get("seconds", stage["seconds"]))
    results = {s: json.loads((args.run / "eval" / s / "results.json").read_text()) for s in ("val", "test")}

    pipe = ReadingPipeline.from_pretrained(args.run / "pipeline")
    test = load_processed(args.run / "data").reading_examples("test", answerable_only=True)
    lat = {mode: latency(pipe, test, args.latency_questions, mode) for mode in ("proposal", "rank")}
    cfg = pipe.energy.config
    result = {
        "benchmark": "reading",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "overrides": args.overrides,
        "train_seconds": seconds,
        "train_total_seconds": sum(seconds.values()),
        "decision": {"rule": cfg.decision, "temperature": cfg.temperature},
        "val": {"rows": results["val"]["rows"], "timings": results["val"]["timings"]},
        "test": {"rows": results["test"]["rows"], "timings": results["test"]["timings"]},
        "latency": lat,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "reference": REFERENCE,
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    name = f"reading{args.tag}"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
