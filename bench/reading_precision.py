"""bfloat16 autocast against float32 for the reading mode's hot loops, timed interleaved in one process.

Rows (each the median seconds per call over `--repeats`, fp32 and bf16 alternating call by call so the
machine's load falls on both alike):
- matmul: (4096 x 384) @ (384 x 1536), the shape of MiniLM-L6's feed-forward on 16 windows of 256 tokens;
- proposal step: one `train_proposal_head` step of the real all-MiniLM-L6-v2 head (forward, backward,
  AdamW) on 16 real SQuAD windows (max_length 256, stride 128);
- window encoding: `encode_windows` over the windows of 64 real questions (what the span-energy stage
  and answering pay per question before any candidate is scored).

Data: the open SQuAD v1.1 dev file in ../shared/data (the bundled data/squad_sample.json where absent).

    python bench/reading_precision.py [--repeats 8] [--threads 2]
                                      [--pipeline runs/squad/pipeline --data runs/squad/data]

With --pipeline (a trained reading pipeline) and --data (its preprocess output), also answering: the val
questions answered in batches of 32 in the pipeline's default mode with float32 and with bf16 encoders
(``ReadingPipeline.mixed_precision``), questions/s and SQuAD EM / F1 of each (quality must not move).

Writes bench/results/reading_precision.json and .md. The ratio depends on the CPU: with AVX512-BF16 or AMX
bf16 is fast; without, it is emulated and slower (then keep reading.mixed_precision=no).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.timing import machine_info, machine_line, save_results, summarise  # noqa: E402
from qa_ebm.models.precision import autocast  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SQUAD = ROOT.parent / "shared" / "data" / "squad" / "squad-v1.1-dev-open.json.gz"
SAMPLE = ROOT / "data" / "squad_sample.json"
CPU = torch.device("cpu")


def squad_examples(n: int) -> list[dict]:
    from qa_ebm.config import SquadSourceConfig
    from qa_ebm.data.squad import load_squad

    source = SQUAD if SQUAD.exists() else SAMPLE
    return load_squad(str(source), SquadSourceConfig(), limit=n)[0]


def interleaved(fns: dict[str, Callable[[], object]], warmup: int, repeats: int) -> dict[str, dict]:
    """Each of `fns` called `warmup` times, then `repeats` rounds of one call each: seconds per call."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return {k: summarise(v) for k, v in samples.items()}


def matmul_row(warmup: int, repeats: int) -> dict[str, dict]:
    a, b = torch.randn(4096, 384), torch.randn(384, 1536)

    def run(precision: str):
        def call():
            with autocast(CPU, precision):
                for _ in range(5):
                    a @ b

        return call

    return interleaved({"no": run("no"), "bf16": run("bf16")}, warmup, repeats)


def proposal_rows(examples: list[dict], warmup: int, repeats: int) -> dict[str, dict[str, dict]]:
    from qa_ebm.reading.energy import encode_windows
    from qa_ebm.reading.proposal import SpanProposalHead, _batch, example_windows

    head, tokenizer = SpanProposalHead.from_encoder("all-MiniLM-L6-v2", max_length=256, stride=128)
    windows = example_windows(tokenizer, head.config, examples)
    starts, ends = windows.answer_positions(
        [int(ex["answer_start"]) for ex in examples], [ex["answer"] for ex in examples]
    )
    idx = list(range(16))
    batch = _batch(windows, idx)
    s, e = torch.tensor(starts)[idx], torch.tensor(ends)[idx]
    opt = torch.optim.AdamW(head.parameters(), lr=1e-5)  # tiny steps: both precisions see a near-fixed model

    def step(precision: str):
        def call():
            head.train()
            with autocast(CPU, precision):
                out = head(**batch, start_positions=s, end_positions=e)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            opt.step()

        return call

    training = interleaved({"no": step("no"), "bf16": step("bf16")}, warmup, repeats)

    def encode(precision: str):
        return lambda: encode_windows(head, windows, 32, torch.float16, False, precision)

    encoding = interleaved({"no": encode("no"), "bf16": encode("bf16")}, 1, max(3, repeats // 2))
    return {"proposal step (16 windows)": training, f"window encoding ({len(windows)} windows)": encoding}


def answering_rows(pipeline: Path, data: Path, repeats: int) -> tuple[dict[str, dict], dict[str, dict]]:
    """Seconds per pass over the val questions, fp32 vs bf16 encoders, and each precision's EM / F1."""
    from qa_ebm.data.processed import load_processed
    from qa_ebm.metrics.squad import squad_scores
    from qa_ebm.pipeline.reading import ReadingPipeline

    pipe = ReadingPipeline.from_pretrained(pipeline)
    examples = load_processed(data).reading_examples("val", answerable_only=True)
    questions, contexts = [e["question"] for e in examples], [e["context"] for e in examples]
    refs = {e["id"]: e["references"] for e in examples}
    scores: dict[str, dict] = {}

    def run(precision: str):
        def call():
            pipe.mixed_precision = precision
            answers = pipe(questions, contexts, batch_size=32)
            preds = {e["id"]: a.text for e, a in zip(examples, answers, strict=True)}
            scores[precision] = squad_scores(preds, refs)

        return call

    timing = interleaved({"no": run("no"), "bf16": run("bf16")}, 0, repeats)
    return {f"answer val, {len(examples)} questions": timing}, scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pipeline", type=Path, help="a reading pipeline dir: also time answering its val split")
    parser.add_argument("--data", type=Path, help="the pipeline's preprocess output (with --pipeline)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = {"matmul (5 x 4096x384 @ 384x1536)": matmul_row(2, args.repeats)}
    rows.update(proposal_rows(squad_examples(64), 1, args.repeats))
    quality: dict[str, dict] = {}
    if args.pipeline is not None:
        answering, quality = answering_rows(args.pipeline, args.data, max(2, args.repeats // 4))
        rows.update(answering)
    machine = machine_info()
    result = {"machine": machine, "rows": {}, "answer_quality": quality}
    lines = [
        "# bf16 autocast against fp32 in the reading mode (bench/reading_precision.py)",
        "",
        machine_line(machine),
        "",
        "| workload | fp32 s (p05-p95) | bf16 s (p05-p95) | speed-up |",
        "| --- | --- | --- | --- |",
    ]
    for name, r in rows.items():
        speedup = r["no"]["median"] / r["bf16"]["median"]
        result["rows"][name] = {**r, "speedup": speedup}
        cell = "{median:.3f} ({p05:.3f}-{p95:.3f})".format
        lines.append(f"| {name} | {cell(**r['no'])} | {cell(**r['bf16'])} | {speedup:.2f}x |")
        print(lines[-1], flush=True)
    for precision, q in quality.items():
        lines.append(f"- answers with {precision} encoders: val EM {q['exact_match']:.2f} / F1 {q['f1']:.2f}")
    save_results(RESULTS, "reading_precision", result, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
