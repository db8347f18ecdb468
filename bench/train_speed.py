"""HVAE training throughput next to a plain GPT-2 LM of the decoder's size, on the same answer tokens.

The peer is what a user would train instead: `GPT2LMHeadModel` from config with the HVAE decoder's
n_layer / n_embd / n_head, each answer's sentences concatenated after a start token and padded to the
batch's longest. Both models see the same fixed batches of real SQuAD answers (train-hvae's rows: the
train split's answers and the passage sentences of train_context), take full training steps (forward,
backward, clipping, AdamW) and are timed interleaved step by step in a rotating order, so drift in the
load of this shared machine lands on all of them. Throughput is answer tokens per second: the real tokens
(EOS included) both models predict. A third model, the HVAE step with padding not skipped (as before
commits 232172a and 7ecb5db), gives those optimisations' before and after in the same run.

Goal (issue 7): HVAE >= 0.5x the plain LM's tokens/s at tiny and at mid size (bench/workloads.py SIZES).

    python bench/train_speed.py [--quick] [--sizes tiny mid] [--threads 1] [--rounds 5] [--batches 6] [--tag NAME]

Writes bench/results/train_speed[-TAG].json and .md, with the machine description, the HVAE's forward
split by component (word encoder, sentence encoder, latents, decoder) and the top operators of a
profiled step.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from unittest.mock import patch

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import workloads  # noqa: E402
from bench.timing import machine_info, machine_line, save_results, summarise  # noqa: E402

RESULTS = ROOT / "bench" / "results"
GOAL_RATIO = 0.5
HVAE, UNSKIPPED, GPT2 = "hvae", "hvae, padding not skipped", "gpt2"


class PaddingNotSkipped:
    """The HVAE step as it was before it skipped padding (commits 232172a, 7ecb5db): every word position and
    sentence slot through the encoders and the decoder in one group, logits at every position. The same
    numbers (tests/test_hvae.py pins it), the old amount of work: the before of those optimisations, timed
    in the same run as the after."""

    def __init__(self, step: workloads.HVAEStep):
        self.step, self.model = step, step.model

    def __call__(self, batch: dict) -> float:
        import qa_ebm.models.hvae as hvae_module

        decoder = self.model.decoder
        with (
            patch.object(hvae_module, "trim_words", lambda ids, mask: (ids, mask)),
            patch.object(hvae_module, "used_length", lambda mask: mask.shape[-1]),
            patch.object(hvae_module, "length_buckets", lambda lengths: [torch.arange(len(lengths))]),
            patch.object(decoder, "token_logits", lambda plan, ids, mask: decoder(plan, ids, mask)[mask.bool()]),
        ):
            return self.step(batch)


def run_rounds(steps: dict, batches: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds per pass over all batches, per model and round.

    Interleaved step by step: each batch goes through every model before the next batch, in an order that
    rotates with the batch and the round, so a change in the machine's load lands on all of them.
    """
    names = list(steps)
    seconds: dict[str, list[float]] = {n: [0.0] * rounds for n in names}
    n_batches = len(next(iter(batches.values())))
    for r in range(rounds):
        for i in range(n_batches):
            k = (r + i) % len(names)
            for name in names[k:] + names[:k]:
                t0 = time.perf_counter()
                steps[name](batches[name][i])
                seconds[name][r] += time.perf_counter() - t0
    return seconds


def forward_split(step: workloads.HVAEStep, batches: list[dict]) -> dict[str, float]:
    """Median milliseconds per training step in each part of the HVAE, from wall-clock hooks on its modules.

    Forward: word encoder, sentence encoder, decoder transformer (the LM without its head), LM head, and
    the rest of the forward pass ("latents and losses": posterior, prior, plans, prefix, KLs, cross-entropy).
    Backward + optimiser: the rest of the step.
    """
    model = step.model
    parts = {"word encoder": getattr(model, "word_enc", None), "sentence encoder": model.sent_enc}
    parts["decoder transformer"] = model.decoder.lm.base_model
    parts["LM head"] = model.decoder.lm.get_output_embeddings()
    clock: dict[str, float] = {}
    handles = []
    for name, module in parts.items():
        if module is None:
            continue

        def pre(_m, _a, name=name):
            clock[name + ":t0"] = time.perf_counter()

        def post(_m, _a, _o, name=name):
            clock[name] = clock.get(name, 0.0) + time.perf_counter() - clock[name + ":t0"]

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    forward_hook = [model.register_forward_pre_hook(lambda *_: clock.__setitem__("fwd:t0", time.perf_counter()))]
    forward_hook.append(
        model.register_forward_hook(lambda *_: clock.__setitem__("forward", time.perf_counter() - clock["fwd:t0"]))
    )
    samples: dict[str, list[float]] = {}
    try:
        for b in batches:
            clock.clear()
            t0 = time.perf_counter()
            step(b)
            total = time.perf_counter() - t0
            named = {k: v for k, v in clock.items() if not k.endswith(":t0") and k != "forward"}
            row = {**named, "latents and losses": clock["forward"] - sum(named.values())}
            row["backward + optimiser"] = total - clock["forward"]
            row["step"] = total
            for k, v in row.items():
                samples.setdefault(k, []).append(1000 * v)
    finally:
        for h in handles + forward_hook:
            h.remove()
    return {k: float(np.median(v)) for k, v in samples.items()}


def top_ops(step, batches: list[dict], rows: int = 12) -> list[dict]:
    """The operators with the most self CPU time over these steps (torch.profiler), per step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in batches:
            step(b)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    n = len(batches)
    return [
        {
            "op": e.key,
            "self_ms_per_step": e.self_cpu_time_total / 1000 / n,
            "share": e.self_cpu_time_total / total,
            "calls_per_step": e.count / n,
        }
        for e in events[:rows]
    ]


def run_size(size: str, data_dir: Path, rows: dict, args) -> dict:
    config = workloads.load_size(size)
    spec = workloads.token_spec(data_dir)
    batches = workloads.fixed_batches(rows, config.train_hvae.batch_size, args.batches, seed=0)
    tokens = sum(workloads.answer_tokens(b) for b in batches)
    hvae, gpt2 = workloads.HVAEStep(config, spec), workloads.GPT2Step(config, spec)
    unskipped = PaddingNotSkipped(workloads.HVAEStep(config, spec))  # same seed: the same initial weights
    lm_batches = [gpt2.batch(b) for b in batches]
    steps = {HVAE: hvae, UNSKIPPED: unskipped, GPT2: gpt2}
    inputs = {HVAE: batches, UNSKIPPED: batches, GPT2: lm_batches}
    run_rounds(steps, inputs, 1)  # warm-up: allocator, first-call costs, lazy inits
    seconds = run_rounds(steps, inputs, args.rounds)

    flop = {
        HVAE: sum(workloads.hvae_step_flops(config, spec, b) for b in batches),
        UNSKIPPED: sum(workloads.hvae_step_flops(config, spec, b, skip_padding=False) for b in batches),
        GPT2: sum(workloads.lm_step_flops(config, spec, lb) for lb in lm_batches),
    }
    padded = {  # token positions each model processes (the LM's start token aside)
        HVAE: sum(n * w for b in batches for n, w in workloads.word_groups(b)),
        UNSKIPPED: sum(int(b["sentence_mask"].sum()) * spec.max_words for b in batches),
        GPT2: sum(lb["input_ids"].numel() - lb["input_ids"].shape[0] for lb in lm_batches),
    }
    models = {}
    for name in steps:
        per_round = seconds[name]
        models[name] = {
            "params": workloads.n_params(steps[name].model),
            "step_ms": summarise([1000 * s / len(batches) for s in per_round]),
            "tokens_per_s": summarise([tokens / s for s in per_round]),
            "gflop_per_step": flop[name] / len(batches) / 1e9,
            "gflop_per_s": float(np.median([flop[name] / s / 1e9 for s in per_round])),
            "real_token_fraction": tokens / padded[name],
        }

    def ratio(a: str, b: str) -> dict:  # tokens/s of a over b, per round
        return summarise([tb / ta for ta, tb in zip(seconds[a], seconds[b], strict=True)])

    result = {
        "size": size,
        "overrides": workloads.SIZES[size],
        "hvae_config": config.to_dict()["hvae"],
        "batch_size": config.train_hvae.batch_size,
        "batches": len(batches),
        "answer_tokens_per_batch": tokens / len(batches),
        "rounds": args.rounds,
        "models": models,
        "ratio": ratio(HVAE, GPT2),
        "ratio_padding_not_skipped": ratio(UNSKIPPED, GPT2),
        "speedup_from_skipping_padding": ratio(HVAE, UNSKIPPED),
        "goal_ratio": GOAL_RATIO,
    }
    if not args.quick:
        result["hvae_split_ms"] = forward_split(hvae, batches)
        result["hvae_top_ops"] = top_ops(hvae, batches[:3])
    return result


def markdown(result: dict) -> str:
    lines = [
        "# HVAE training throughput vs a plain GPT-2 LM",
        "",
        machine_line(result["machine"]),
        "",
        f"data: {result['data']}; every figure is the median over {result['rounds']} rounds (5th-95th percentile "
        f"in brackets) of full training steps on the same {result['batches']} fixed batches, the models "
        "interleaved step by step.",
        "",
        "| size | model | params | step ms | answer tokens/s | GFLOP/step | GFLOP/s | real-token fraction |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in result["sizes"]:
        for name, m in row["models"].items():
            st, tp = m["step_ms"], m["tokens_per_s"]
            lines.append(
                f"| {row['size']} | {name} | {m['params'] / 1e6:.2f} M | {st['median']:.0f} ({st['p05']:.0f}-"
                f"{st['p95']:.0f}) | {tp['median']:.0f} ({tp['p05']:.0f}-{tp['p95']:.0f}) | "
                f"{m['gflop_per_step']:.2f} | {m['gflop_per_s']:.1f} | {m['real_token_fraction']:.2f} |"
            )
    lines += [
        "",
        "Ratios of tokens/s, per round (padding not skipped: the HVAE step before commits 232172a and 7ecb5db):",
        "",
        "| size | HVAE / GPT-2 | goal | met | padding not skipped / GPT-2 | speed-up from skipping padding |",
        "| --- | --- | --- | --- | --- | --- |",
    ]

    def fmt(r: dict) -> str:
        return f"{r['median']:.2f} ({r['p05']:.2f}-{r['p95']:.2f})"

    for row in result["sizes"]:
        met = "yes" if row["ratio"]["median"] >= row["goal_ratio"] else "no"
        lines.append(
            f"| {row['size']} | {fmt(row['ratio'])} | >= {row['goal_ratio']} | {met} | "
            f"{fmt(row['ratio_padding_not_skipped'])} | {fmt(row['speedup_from_skipping_padding'])} |"
        )
    split_rows = [row for row in result["sizes"] if "hvae_split_ms" in row]
    if split_rows:
        parts = list(split_rows[0]["hvae_split_ms"])
        lines += ["", "HVAE step split, ms (median over the batches, wall-clock hooks on the modules):", ""]
        lines += ["| size | " + " | ".join(parts) + " |", "| --- |" + " --- |" * len(parts)]
        for row in split_rows:
            lines.append(f"| {row['size']} | " + " | ".join(f"{row['hvae_split_ms'][p]:.0f}" for p in parts) + " |")
        for row in split_rows:
            lines += ["", f"HVAE top operators at {row['size']} (torch.profiler, self CPU time):", ""]
            lines += ["| op | ms/step | share | calls/step |", "| --- | --- | --- | --- |"]
            for op in row["hvae_top_ops"]:
                lines.append(
                    f"| {op['op']} | {op['self_ms_per_step']:.1f} | {op['share']:.0%} | {op['calls_per_step']:.0f} |"
                )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(workloads.SIZES), choices=list(workloads.SIZES))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: see bench/README.md)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per model (after one warm-up round)")
    parser.add_argument("--batches", type=int, default=6, help="fixed batches per round")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny only, 2 batches, 2 rounds, no profile")
    parser.add_argument("--tag", default="", help="suffix for the result files (e.g. before / after)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.batches, args.rounds = ["tiny"], 2, 2
    torch.set_num_threads(args.threads)

    data_dir = workloads.prepare_data()
    rows = workloads.hvae_train_rows(data_dir)
    sizes = [run_size(size, data_dir, rows, args) for size in args.sizes]
    result = {
        "machine": machine_info(),
        "data": f"{data_dir.name} ({len(rows['sentence_mask'])} training rows)",
        "rounds": args.rounds,
        "batches": args.batches,
        "sizes": sizes,
    }
    name = "train_speed" + (f"-{args.tag}" if args.tag else "") + ("-quick" if args.quick else "")
    save_results(args.out, name, result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
