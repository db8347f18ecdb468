"""Energy transformer quality within a fixed CPU budget: mcmc vs ired vs direct regression.

For each workload (real SQuAD v1.1 from ../shared/data, questions with their contexts, split by article;
the bundled physics sample): preprocess with configs/tiny.yaml, train an HVAE for --hvae-budget seconds
(its latents are the targets), then train each objective for the same --budget seconds and measure on
val and test, in the standardised latent space (per-dimension z-scores of the train latents):

- MSE of the start point (N(0, I) noise), of the mean latent (always predicting 0), after refinement, and
  of the regression baseline's prediction;
- verifier recall@1: the gold latent's rank among 32 answer latents (its own + 31 other questions');
- quality vs the number of refinement steps (1, 2, 5, 10, 20, 50; ired: steps per landscape), on the
  first 256 questions of each split.

Goals (issue 4): refinement at least halves the start point's MSE; recall@1 >= 0.8 among 32 on SQuAD
val; at least one objective beats direct regression on latent MSE. Settings come from val only.

    python bench/ebt_quality.py [--budget 240] [--hvae-budget 300] [--workloads squad physics] [--set k=v ...]

Writes bench/results/ebt_quality.json and .md (or --tag-suffixed names). The work dir keeps the data and
HVAE runs, so a second call with other EBT settings reuses them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
WORKLOADS = {
    "squad": ("squad", SHARED / "squad" / "squad-v1.1-dev-open.json.gz"),
    "physics": ("physics", ROOT / "data" / "physics_sample.jsonl"),
}
OBJECTIVES = ("mcmc", "ired", "regress")
STEP_CURVE = (1, 2, 5, 10, 20, 50)
CURVE_SIZE = 256


def hvae_for(name: str, overrides: list[str], work: Path, budget: float) -> Path:
    """Preprocess and train the workload's HVAE once; reuse them when they are already in the work dir."""
    from qa_ebm.config import load_config
    from qa_ebm.data.preprocess import preprocess
    from qa_ebm.training.hvae_trainer import train_hvae

    kind, path = WORKLOADS[name]
    config = load_config(
        ROOT / "configs" / "tiny.yaml",
        [*overrides, "train_hvae.steps=100000", f"train_hvae.max_seconds={budget}", "train_hvae.eval_every=1000"],
    )
    data_dir, run_dir = work / f"data-{name}", work / f"hvae-{name}"
    if not (data_dir / "manifest.json").is_file():
        preprocess(config, data_dir, **{kind: str(path)}, overwrite=True)
    if not (run_dir / "manifest.json").is_file():
        train_hvae(config, data_dir, run_dir, overwrite=True, progress=False)
    return run_dir


def evaluate(model, arrays, config, texts) -> dict:
    from qa_ebm.training.ebt_trainer import diagnostics

    tc = dataclasses.replace(config.train_ebt, eval_size=10**9, num_samples=0)
    out = {"n": len(arrays["ids"]), **diagnostics(model, arrays, tc, config, texts)}
    if config.train_ebt.objective != "regress":
        out["curve"] = {}
        for steps in STEP_CURVE:
            # recall is step-independent; the curve reads the first CURVE_SIZE questions (ired's 50 steps per
            # landscape are 500 energy evaluations of the batch)
            tc_n = dataclasses.replace(tc, eval_steps=steps, eval_candidates=2, eval_size=CURVE_SIZE)
            d = diagnostics(model, arrays, tc_n, config, texts)
            out["curve"][steps] = {"mse": d["val_mse_refined"], "steps_used": d["val_steps"]}
    return {k.removeprefix("val_"): v for k, v in out.items()}


def run_objective(name: str, objective: str, hvae: Path, overrides: list[str], work: Path, budget: float) -> dict:
    from qa_ebm.config import load_config
    from qa_ebm.training.ebt_trainer import (
        build_arrays,
        latent_statistics,
        load_ebt,
        load_hvae_run,
        resolve_data_dir,
        train_ebt,
    )

    config = load_config(
        ROOT / "configs" / "tiny.yaml",
        [
            *overrides,
            f"train_ebt.objective={objective}",
            "train_ebt.steps=100000",
            "train_ebt.warmup_steps=50",
            f"train_ebt.max_seconds={budget}",
            "train_ebt.eval_every=100000",
            "train_ebt.save_every=100000",
            "train_ebt.num_samples=0",
        ],
    )
    out = work / f"ebt-{name}-{objective}"
    t0 = time.perf_counter()
    result = train_ebt(config, hvae, out, overwrite=True, progress=False)
    seconds = time.perf_counter() - t0
    model = load_ebt(out).eval()
    run = load_hvae_run(hvae)
    mean, std = latent_statistics(run.latents["train"])
    arrays, _, texts = build_arrays(config, run, resolve_data_dir(run, None), mean, std)
    row = {"workload": name, "objective": objective, "steps": result.step, "train_seconds": round(seconds, 1)}
    for split in ("val", "test"):
        row[split] = evaluate(model, arrays[split], config, texts[split])
    return row


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Energy transformer quality\n",
        f"machine: {m['platform']}, {m['cpus']} CPUs, torch {m['torch']}; configs/tiny.yaml; "
        f"{result['budget_seconds']:.0f} s of training per objective, HVAE {result['hvae_budget_seconds']:.0f} s; "
        f"overrides {result['overrides'] or 'none'}. MSE in standardised latent units (mean latent = predicting 0).\n",
        "| workload | objective | split | n | train steps | MSE start | MSE mean latent | MSE refined/predicted | "
        "steps used | recall@1 (of 32) | E gold | E rivals |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["results"]:
        if "skipped" in r:
            lines.append(f"| {r['workload']} | skipped: {r['skipped']} |")
            continue
        for split in ("val", "test"):
            s = r[split]

            def f(key, fmt="{:.3f}", s=s):
                return fmt.format(s[key]) if key in s else "-"

            lines.append(
                f"| {r['workload']} | {r['objective']} | {split} | {s['n']} | {r['steps']} | {f('mse_start')} | "
                f"{f('mse_mean_latent')} | {f('mse_refined')} | {f('steps', '{:.1f}')} | {f('recall_at_1')} | "
                f"{f('energy_gold')} | {f('energy_negatives')} |"
            )
    lines += ["", f"Latent MSE (val, first {CURVE_SIZE}) against the step cap (ired: steps per landscape):", ""]
    lines += ["| workload | objective | " + " | ".join(str(n) for n in STEP_CURVE) + " |"]
    lines += ["| --- | --- | " + " | ".join("---" for _ in STEP_CURVE) + " |"]
    for r in result["results"]:
        curve = r.get("val", {}).get("curve")
        if curve:
            cells = " | ".join(f"{curve[n]['mse']:.3f}" for n in STEP_CURVE)
            lines.append(f"| {r['workload']} | {r['objective']} | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=240.0, help="training seconds per objective")
    parser.add_argument("--hvae-budget", type=float, default=300.0, help="training seconds of each HVAE")
    parser.add_argument("--workloads", nargs="+", default=["squad", "physics"], choices=sorted(WORKLOADS))
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-ebt", help="keeps data and HVAE runs")
    parser.add_argument("--tag", default="", help="suffix for the result file names")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    results = []
    for name in args.workloads:
        if not WORKLOADS[name][1].exists():
            results.append({"workload": name, "skipped": f"{WORKLOADS[name][1]} not found"})
            continue
        hvae = hvae_for(name, args.overrides, args.work, args.hvae_budget)
        for objective in args.objectives:
            row = run_objective(name, objective, hvae, args.overrides, args.work, args.budget)
            results.append(row)
            v = row["val"]
            print(
                f"{name} {objective}: val MSE start {v['mse_start']:.3f} mean {v['mse_mean_latent']:.3f} "
                f"refined {v['mse_refined']:.3f} recall@1 {v.get('recall_at_1', float('nan')):.3f}",
                file=sys.stderr,
            )
    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
        "budget_seconds": args.budget,
        "hvae_budget_seconds": args.hvae_budget,
        "overrides": args.overrides,
        "results": results,
    }
    stem = "ebt_quality" + (f"-{args.tag}" if args.tag else "")
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
