"""The machine's ceiling and each workload's model FLOPs utilisation (MFU), measured in one process.

Ceiling: dense fp32 matmuls (square, n = 512 / 1024 / 2048) at the torch thread count the workloads use,
timed before and after them; the best median is the achieved FLOP/s this machine offers. Because the
machine is shared and its load moves, MFU itself is taken in pairs: before every timed step, a 1024^3
matmul is timed (best of 3 calls), and MFU is the median over steps of (step FLOP/s / that matmul's).

Workloads (bench/workloads.py), at tiny and mid size:
- HVAE training step (train-hvae's step on real SQuAD answers), and the peer GPT-2 LM's for reference;
- EBT training step (train-ebt's mcmc objective, refinement steps fixed at 4, 7 in-batch rivals);
- refinement step at batch 64 (dE/dy given the cached question: forward + input-gradient backward).

Model FLOPs per step come from bench/flops.py (analytic, from the config and the batch's shapes); where
torch.utils.flop_counter can follow the step (everything but the EBT training step, whose autograd.grad
it cannot trace) the script counts them too and reports both. MFU = model FLOPs / step time / ceiling.

    python bench/ceiling.py [--quick] [--sizes tiny mid] [--threads 1] [--repeats 8]

Writes bench/results/ceiling.json and .md.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import flops, workloads  # noqa: E402
from bench.timing import machine_info, machine_line, save_results, summarise, time_fn  # noqa: E402

RESULTS = ROOT / "bench" / "results"
REFINE_BATCH = 64


def matmul_ceiling(sizes: list[int], repeats: int) -> list[dict]:
    """Achieved fp32 GFLOP/s of (n, n) @ (n, n) for each n (2 n^3 FLOPs a call)."""
    rows = []
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        out = torch.empty(n, n)
        stats = time_fn(lambda a=a, b=b, out=out: torch.mm(a, b, out=out), warmup=2, repeats=repeats)
        rows.append({"n": n, "seconds": stats, "gflop_per_s": 2 * n**3 / stats["median"] / 1e9})
    return rows


class ReferenceMatmul:
    """(n, n) @ (n, n) in fp32, timed as the best of a few calls: the ceiling sampled next to each step."""

    def __init__(self, n: int, calls: int = 3):
        self.a, self.b, self.out = torch.randn(n, n), torch.randn(n, n), torch.empty(n, n)
        self.flop, self.calls = 2 * n**3, calls

    def gflop_per_s(self) -> float:
        best = min(
            time_fn(lambda: torch.mm(self.a, self.b, out=self.out), warmup=0, repeats=1)["median"]
            for _ in range(self.calls)
        )
        return self.flop / best / 1e9


def interleaved(step: Callable[[], object], reference: ReferenceMatmul, warmup: int, repeats: int) -> dict:
    """Step seconds, the reference matmul's GFLOP/s measured just before each step, and their pairing.

    On a shared machine the ceiling moves with the load; pairing each step with a ceiling sample taken
    moments before it makes MFU a ratio taken under the same conditions.
    """
    for _ in range(warmup):
        step()
    seconds, ceilings = [], []
    for _ in range(repeats):
        ceilings.append(reference.gflop_per_s())
        seconds.append(time_fn(step, warmup=0, repeats=1)["median"])
    return {
        "seconds": summarise(seconds),
        "ceiling": summarise(ceilings),
        "pairs": list(zip(seconds, ceilings, strict=True)),
    }


def counted(fn: Callable[[], object]) -> float:
    """FLOPs of one call of fn, as torch.utils.flop_counter counts them."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def counted_refinement(step: workloads.RefineStep) -> float:
    """The refinement step's FLOPs, counted: flop_counter cannot trace autograd.grad, so the same input
    gradient is formed by .backward() with the weights frozen (no weight gradients, as in refinement)."""
    model, batch = step.model, step.batch
    frozen = [p for p in model.parameters() if p.requires_grad]
    y = batch.y.clone().requires_grad_(True)
    for p in frozen:
        p.requires_grad_(False)
    try:
        return counted(lambda: model.energy(step.cond, y, batch.slot_mask).sum().backward())
    finally:
        for p in frozen:
            p.requires_grad_(True)


def cycling(step: Callable, inputs: list) -> Callable[[], object]:
    batches = itertools.cycle(inputs)
    return lambda: step(next(batches))


def run_size(size: str, data_dir: Path, rows: dict, args) -> list[dict]:
    config = workloads.load_size(size)
    spec = workloads.token_spec(data_dir)
    batches = workloads.fixed_batches(rows, config.train_hvae.batch_size, args.batches, seed=0)
    repeats = args.repeats * len(batches)  # every batch equally often
    out = []

    hvae = workloads.HVAEStep(config, spec)
    analytic = sum(workloads.hvae_step_flops(config, spec, b) for b in batches) / len(batches)
    count = sum(counted(lambda b=b: hvae(b)) for b in batches) / len(batches)
    out.append(("HVAE training step", f"batch {len(batches[0]['input_ids'])}", hvae, batches, analytic, count))

    gpt2 = workloads.GPT2Step(config, spec)
    lm_batches = [gpt2.batch(b) for b in batches]
    analytic = sum(workloads.lm_step_flops(config, spec, lb) for lb in lm_batches) / len(lm_batches)
    count = sum(counted(lambda lb=lb: gpt2(lb)) for lb in lm_batches) / len(lm_batches)
    out.append(
        ("GPT-2 LM training step (peer)", f"batch {len(lm_batches[0]['input_ids'])}", gpt2, lm_batches, analytic, count)
    )

    ebt_batch, spec_fields = workloads.ebt_batch(config, data_dir, config.train_ebt.batch_size)
    model = workloads.build_ebt(config, spec_fields, ebt_batch.slot_mask.shape[1])
    tc = config.train_ebt
    ebt = workloads.EBTStep(config, model)
    analytic = flops.ebt_mcmc_train_step(
        workloads.ebt_shapes(config, ebt_batch), tc.mcmc_steps, tc.truncate, ebt.rivals
    )
    out.append(("EBT training step (mcmc, 4 steps)", f"batch {ebt_batch.x.shape[0]}", ebt, [ebt_batch], analytic, None))

    refine_batch, _ = workloads.ebt_batch(config, data_dir, REFINE_BATCH)
    refine = workloads.RefineStep(model, refine_batch)
    analytic = flops.refinement_step(workloads.ebt_shapes(config, refine_batch))
    label = f"batch {refine_batch.x.shape[0]}"
    out.append(("refinement step (dE/dy)", label, lambda _: refine(), [None], analytic, counted_refinement(refine)))

    results = []
    reference = ReferenceMatmul(args.reference_n)
    for name, batch_label, step, inputs, analytic, count in out:
        reps = repeats if len(inputs) > 1 else args.repeats
        timing = interleaved(cycling(step, inputs), reference, warmup=2, repeats=reps)
        mfu = [analytic / t / 1e9 / c for t, c in timing["pairs"]]
        results.append(
            {
                "size": size,
                "workload": name,
                "batch": batch_label,
                "seconds": timing["seconds"],
                "ceiling_gflop_per_s": timing["ceiling"],
                "gflop_analytic": analytic / 1e9,
                "gflop_counted": None if count is None else count / 1e9,
                "gflop_per_s": analytic / timing["seconds"]["median"] / 1e9,
                "mfu": summarise(mfu),
            }
        )
    return results


def markdown(result: dict) -> str:
    ceiling = result["ceiling_gflop_per_s"]
    lines = [
        "# Ceiling and model FLOPs utilisation",
        "",
        machine_line(result["machine"]),
        "",
        f"fp32 matmul ceiling: **{ceiling:.1f} GFLOP/s** at {result['machine']['torch_threads']} torch thread(s) "
        "(best median of square matmuls, timed before and after the workloads):",
        "",
        "| n | before: GFLOP/s | after: GFLOP/s |",
        "| --- | --- | --- |",
    ]
    for a, b in zip(result["matmul_before"], result["matmul_after"], strict=True):
        lines.append(f"| {a['n']} | {a['gflop_per_s']:.1f} | {b['gflop_per_s']:.1f} |")
    lines += [
        "",
        "Model FLOPs per step: analytic (bench/flops.py), and counted by torch.utils.flop_counter where it can "
        "follow the step. Step time: median (5th-95th percentile) after warm-up. MFU: each step's achieved "
        f"FLOP/s over a {result['reference_n']}^3 matmul's, timed just before it (ceiling column: that matmul's "
        "median); median (5th-95th percentile) of those pairs.",
        "",
        "| size | workload | batch | GFLOP/step analytic | counted | step ms | GFLOP/s | ceiling GFLOP/s | MFU |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for w in result["workloads"]:
        s, m = w["seconds"], w["mfu"]
        count = "-" if w["gflop_counted"] is None else f"{w['gflop_counted']:.3f}"
        lines.append(
            f"| {w['size']} | {w['workload']} | {w['batch']} | {w['gflop_analytic']:.3f} | {count} | "
            f"{1000 * s['median']:.1f} ({1000 * s['p05']:.1f}-{1000 * s['p95']:.1f}) | {w['gflop_per_s']:.1f} | "
            f"{w['ceiling_gflop_per_s']['median']:.1f} | {m['median']:.0%} ({m['p05']:.0%}-{m['p95']:.0%}) |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(workloads.SIZES), choices=list(workloads.SIZES))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: see bench/README.md)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the batches per workload")
    parser.add_argument("--batches", type=int, default=4, help="fixed training batches per workload")
    parser.add_argument("--reference-n", type=int, default=1024, help="matmul size sampled next to each step")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny only, small matmuls, few repeats")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    matmuls = [512, 1024, 2048]
    if args.quick:
        args.sizes, args.repeats, args.batches, matmuls, args.reference_n = ["tiny"], 2, 2, [256, 512], 512
    torch.set_num_threads(args.threads)

    before = matmul_ceiling(matmuls, repeats=5)
    data_dir = workloads.prepare_data()
    rows = workloads.hvae_train_rows(data_dir)
    results = [w for size in args.sizes for w in run_size(size, data_dir, rows, args)]
    after = matmul_ceiling(matmuls, repeats=5)
    ceiling = max(r["gflop_per_s"] for r in before + after)
    result = {
        "reference_n": args.reference_n,
        "machine": machine_info(),
        "matmul_before": before,
        "matmul_after": after,
        "ceiling_gflop_per_s": ceiling,
        "workloads": results,
        "sizes": {size: workloads.SIZES[size] for size in args.sizes},
    }
    name = "ceiling" + ("-quick" if args.quick else "")
    save_results(args.out, name, result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
