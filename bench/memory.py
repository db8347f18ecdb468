"""Memory: peak RSS of each workload (each in its own process) and the base configs' sizes.

1. Peak RSS: every workload of bench/workloads.py (HVAE, peer GPT-2 and EBT training steps, refinement
   at batch 64) at tiny and mid size runs a few steps in a fresh subprocess, so each peak is its own;
   an "idle" process (Python, torch, the data) is the floor they share.
2. Config sizes: for configs/*.yaml and the bench's mid size, parameters (models built on the meta
   device: nothing is allocated, no Hub access), training state (16 bytes a trained parameter: fp32
   weights, gradients, AdamW's two moments; 4 a frozen one), activations saved for the backward at
   batch 64 (analytic, `activation_bytes`; every sentence slot and word position filled, the worst
   case a batch can be), and the smallest GPU memory class that holds them. For tiny the activations
   are also measured: the bytes of the tensors autograd saves during one forward (saved-tensor hooks).

    python bench/memory.py [--quick] [--sizes tiny mid] [--threads 1] [--steps 3]

Writes bench/results/memory.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import workloads  # noqa: E402
from bench.timing import current_rss_mb, machine_info, machine_line, peak_rss_mb, reset_peak_rss, save_results  # noqa: E402

RESULTS = ROOT / "bench" / "results"
WORKLOADS = ("idle", "hvae-train", "gpt2-train", "ebt-train", "refine-64")
BATCH = 64
GPU_CLASSES_GB = (8, 16, 24, 40, 80)
GPU_OVERHEAD_GB = 1.0  # CUDA context, kernels and allocator slack, besides the tensors counted here
# a tokenizer-extended GPT-2 BPE (PAD, MASK) for configs whose decoder is the pretrained "gpt2"
GPT2_VOCAB = 50257 + 2
MINILM_DIM, MINILM_PARAMS = 384, 22_713_216  # all-MiniLM-L6-v2, the frozen question encoder of base


# --------------------------------------------------------------------------------------- peak RSS


def child(workload: str, size: str, steps: int) -> dict:
    """Run `steps` steps of one workload in this (fresh) process; report its peak RSS."""
    config = workloads.load_size(size)
    data_dir = workloads.prepare_data()
    rows = workloads.hvae_train_rows(data_dir)
    spec = workloads.token_spec(data_dir)
    loading_peak = peak_rss_mb()
    reset_peak_rss()  # the data's loading transient is not the workload's
    floor = current_rss_mb()
    if workload in ("hvae-train", "gpt2-train"):
        batches = workloads.fixed_batches(rows, config.train_hvae.batch_size, steps, seed=0)
        step = (workloads.HVAEStep if workload == "hvae-train" else workloads.GPT2Step)(config, spec)
        for b in batches:
            step(step.batch(b) if workload == "gpt2-train" else b)
    elif workload in ("ebt-train", "refine-64"):
        batch_size = config.train_ebt.batch_size if workload == "ebt-train" else BATCH
        batch, spec_fields = workloads.ebt_batch(config, data_dir, batch_size)
        model = workloads.build_ebt(config, spec_fields, batch.slot_mask.shape[1])
        step = workloads.EBTStep(config, model) if workload == "ebt-train" else workloads.RefineStep(model, batch)
        for _ in range(steps):
            step(batch) if workload == "ebt-train" else step()
    return {
        "workload": workload,
        "size": size,
        "loading_peak_rss_mb": loading_peak,
        "floor_rss_mb": floor,
        "peak_rss_mb": peak_rss_mb(),
    }


def peak_rss(workload: str, size: str, steps: int, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", workload, "--size", size, "--steps", str(steps)]
    cmd += ["--threads", str(threads)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{workload} at {size} failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------- config sizes


def layer_activation_bytes(s: int, b: int, h: int, a: int, value_bytes: int, dropout: bool, keys: int | None = None):
    """Bytes one pre-LN transformer layer saves for its backward (Korthikanti et al. 2022, table 2, with the
    value width as a parameter): values 16 s b h + 2 a s k b (layer-norm and linear inputs, Q, K, V, GELU
    input and output; attention probabilities before and after dropout), plus 1-byte dropout masks
    2 s b h + a s k b when dropout is on; k = keys per query (s for self-attention)."""
    k = s if keys is None else keys
    values = value_bytes * (16 * s * b * h + 2 * a * s * k * b)
    masks = (2 * s * b * h + a * s * k * b) if dropout else 0
    return values + masks


def activation_bytes(config, vocab: int, batch: int = BATCH) -> dict[str, float]:
    """Activations saved by one training step at `batch`, every slot and word filled (the worst case)."""
    h, e, data = config.hvae, config.ebt, config.data
    vb = 2 if config.train_hvae.mixed_precision in ("bf16", "fp16") else 4
    S, W, P = data.max_sentences, data.max_words, h.prefix_len
    N = batch * S
    drop = h.dropout > 0
    hvae = (
        h.word_layers * layer_activation_bytes(W, N, h.d_model, h.n_heads, vb, drop)
        + h.sentence_layers * layer_activation_bytes(S + 1, batch, h.d_model, h.n_heads, vb, drop)
        + h.decoder_layers * layer_activation_bytes(P + W, N, h.d_model, h.n_heads, vb, drop)
        + 2 * 4 * N * W * vocab  # logits and their log-softmax, fp32 (cross-entropy upcasts), real tokens only
    )
    # EBT (mcmc): the condition stream once, and the soft-token stream of every energy call whose graph is
    # alive when the loss is differentiated: the tracked refinement steps and the gold latent's gradient
    # (forward and backward graphs, ~2x), the refined latent and the in-batch rivals.
    eb = 2 if config.train_ebt.mixed_precision in ("bf16", "fp16") else 4
    tc, T = config.train_ebt, (S + 1) * e.soft_tokens
    Lc = e.max_condition_tokens
    condition = e.n_layers * layer_activation_bytes(Lc, batch, e.d_model, e.n_heads, eb, e.dropout > 0)
    energy_call = e.n_layers * layer_activation_bytes(T, batch, e.d_model, e.n_heads, eb, e.dropout > 0, Lc + T)
    from qa_ebm.training.ebt_trainer import RIVALS

    calls = 2 * (tc.truncate + 1) + 1 + RIVALS
    return {"hvae": hvae, "ebt": condition + calls * energy_call}


def config_spec(config, vocab: int):
    from qa_ebm.models.hvae import TokenSpec

    return TokenSpec(vocab, 0, 1, 2, config.data.max_sentences, config.data.max_words)


def param_counts(config, vocab: int) -> dict[str, int]:
    """Trained and frozen parameters of the HVAE and the energy model, built on the meta device."""
    from qa_ebm.models.ebt import EBTSpec, EnergyTransformer
    from qa_ebm.models.hvae import HVAE, build_decoder

    h, e = config.hvae, config.ebt
    spec = config_spec(config, vocab)
    with torch.device("meta"):
        lm_config = None
        if h.decoder not in ("scratch-gpt2", "scratch-bart"):  # a pretrained GPT-2: its architecture, offline
            from transformers import GPT2Config

            lm_config = {**GPT2Config(vocab_size=vocab).to_dict(), "model_type": "gpt2"}
        hvae = HVAE(h, spec, decoder=build_decoder(h, spec, lm_config=lm_config))
        learned = e.question_encoder == "learned"
        ebt_spec = EBTSpec(
            latent_dim=h.latent_dim,
            num_slots=1 + config.data.max_sentences,
            condition_vocab=vocab if learned else None,
            condition_dim=None if learned else MINILM_DIM,
        )
        ebt = EnergyTransformer(e, ebt_spec)
    return {
        "hvae": workloads.n_params(hvae),
        "ebt": workloads.n_params(ebt),
        "frozen": 0 if learned else MINILM_PARAMS,
    }


def measured_activation_bytes(config, spec, batch: dict) -> float:
    """Bytes of the distinct non-parameter tensors autograd saves during one HVAE training forward."""
    torch.manual_seed(0)
    model = workloads.HVAEStep(config, spec).model
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params and t.device.type != "meta":
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(**batch, word_dropout_decoder=config.train_hvae.word_dropout_decoder)
    del out
    return float(sum(seen.values()))


def full_batch(spec, batch: int = BATCH) -> dict:
    """A worst-case batch: every sentence slot and word position real, random ids, EOS last."""
    g = torch.Generator().manual_seed(0)
    S, W = spec.max_sentences, spec.max_words
    ids = torch.randint(5, spec.vocab_size, (batch, S, W), generator=g)
    ids[..., -1] = spec.eos_id
    return {
        "input_ids": ids,
        "token_mask": torch.ones(batch, S, W, dtype=torch.long),
        "sentence_mask": torch.ones(batch, S, dtype=torch.long),
    }


def gpu_class(total_gb: float) -> str:
    for gb in GPU_CLASSES_GB:
        if total_gb + GPU_OVERHEAD_GB <= 0.9 * gb:  # leave a tenth for fragmentation
            return f"{gb} GB"
    return f"> {GPU_CLASSES_GB[-1]} GB (shard or shrink the batch)"


def config_table(data_dir: Path, rows: dict) -> list[dict]:
    from qa_ebm.config import load_config

    spec = workloads.token_spec(data_dir)
    entries = [(p.stem, load_config(p), p.name) for p in sorted((ROOT / "configs").glob("*.yaml"))]
    entries.append(("mid", workloads.load_size("mid"), "tiny.yaml + " + " ".join(workloads.SIZES["mid"])))
    out = []
    for name, config, source in entries:
        vocab = spec.vocab_size if config.data.tokenizer.kind == "sentencepiece" else GPT2_VOCAB
        params = param_counts(config, vocab)
        act = activation_bytes(config, vocab)
        state = 16 * (params["hvae"] + params["ebt"]) + 4 * params["frozen"]
        row = {
            "config": name,
            "source": source,
            "vocab": vocab,
            "params": params,
            "training_state_gb": state / 2**30,
            "activations_batch64_gb": {k: v / 2**30 for k, v in act.items()},
            # the stages train one at a time: the larger of the two is what the GPU must hold
            "peak_gb": max(16 * params["hvae"] + act["hvae"], 16 * params["ebt"] + 4 * params["frozen"] + act["ebt"])
            / 2**30,
        }
        row["gpu_class"] = gpu_class(row["peak_gb"])
        if name == "tiny":
            squad = workloads.fixed_batches(rows, BATCH, 1, seed=0)[0]
            row["measured_activations_batch64_gb"] = {
                "hvae, every slot filled": measured_activation_bytes(config, spec, full_batch(spec)) / 2**30,
                "hvae, SQuAD batch": measured_activation_bytes(config, spec, squad) / 2**30,
            }
        out.append(row)
    return out


# --------------------------------------------------------------------------------------- report


def markdown(result: dict) -> str:
    lines = ["# Memory", "", machine_line(result["machine"]), ""]
    lines += [
        f"Peak RSS, MiB: each workload alone in a fresh process, {result['steps']} steps. The peak is reset "
        "(/proc/self/clear_refs) once Python, torch and the data are loaded, so it is the workload's own; the "
        "RSS at that point is the floor, and the loading peak before it is shown apart (idle: nothing after it):",
        "",
        "| size | workload | loading peak | floor | workload peak | peak above floor |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["peak_rss"]:
        lines.append(
            f"| {r['size']} | {r['workload']} | {r['loading_peak_rss_mb']:.0f} | {r['floor_rss_mb']:.0f} | "
            f"{r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] - r['floor_rss_mb']:.0f} |"
        )
    lines += [
        "",
        "Config sizes (parameters in millions; GB = GiB; activations at batch 64 with every slot and word filled; "
        "training state 16 bytes a trained parameter; peak: the larger stage, HVAE or EBT, since they train "
        f"one at a time; GPU class: smallest of {', '.join(map(str, GPU_CLASSES_GB))} GB holding peak + "
        f"{GPU_OVERHEAD_GB:.0f} GB within 90 %):",
        "",
        "| config | vocab | HVAE params | EBT params | frozen | training state GB | HVAE act. GB | EBT act. GB | "
        "peak GB | GPU class |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in result["configs"]:
        p, a = r["params"], r["activations_batch64_gb"]
        lines.append(
            f"| {r['config']} | {r['vocab']} | {p['hvae'] / 1e6:.1f} | {p['ebt'] / 1e6:.1f} | "
            f"{p['frozen'] / 1e6:.1f} | {r['training_state_gb']:.2f} | {a['hvae']:.2f} | {a['ebt']:.2f} | "
            f"{r['peak_gb']:.2f} | {r['gpu_class']} |"
        )
    for r in result["configs"]:
        if "measured_activations_batch64_gb" in r:
            lines += [
                "",
                f"{r['config']}, HVAE activations at batch 64, measured (saved-tensor hooks, one forward):",
                "",
            ]
            lines += [f"- {k}: {v:.3f} GB" for k, v in r["measured_activations_batch64_gb"].items()]
            lines.append(f"- analytic, every slot filled: {r['activations_batch64_gb']['hvae']:.3f} GB")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(workloads.SIZES), choices=list(workloads.SIZES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3, help="steps per workload")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny only, idle and HVAE, one step")
    parser.add_argument("--child", choices=WORKLOADS, help=argparse.SUPPRESS)
    parser.add_argument("--size", default="tiny", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args.child, args.size, args.steps)))
        return 0
    names = WORKLOADS
    if args.quick:
        args.sizes, args.steps, names = ["tiny"], 1, WORKLOADS[:2]

    data_dir = workloads.prepare_data()  # once, before the children, so none of them pays for it
    rows = workloads.hvae_train_rows(data_dir)
    peaks = [peak_rss(w, size, args.steps, args.threads) for size in args.sizes for w in names]
    result = {
        "machine": machine_info(),
        "steps": args.steps,
        "peak_rss": peaks,
        "configs": config_table(data_dir, rows),
    }
    name = "memory" + ("-quick" if args.quick else "")
    save_results(args.out, name, result, markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
