"""`qa-ebm train-hvae`: train the hierarchical VAE on a preprocess output, then encode every split.

Run directory:

    config.yaml         the resolved config
    manifest.json       data dir + fingerprint, config hash, versions, final metrics
    metrics.jsonl       one line per eval (and per log interval): losses, KLs, active units, samples
    model/              HVAE.save_pretrained (config.json + model.safetensors)
    tokenizer/ punkt/   copied from the data dir: the run is self-contained
    trainer_state/      model + optimizer + scheduler + RNG (safetensors + JSON); --resume continues it
    latents/{split}.safetensors + {split}.json   posterior means and log-variances per answer, with ids

Determinism: the batch of a step is a function of (seed, step) alone (a seeded permutation per epoch), and
the RNG state is checkpointed, so a resumed run replays the uninterrupted run's losses exactly on CPU.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from qa_ebm.config import Config, TrainHVAEConfig
from qa_ebm.data.preprocess import CONTEXT_SPLIT
from qa_ebm.data.processed import ProcessedData, load_processed
from qa_ebm.data.tokenizer import load_tokenizer
from qa_ebm.errors import ConfigError
from qa_ebm.io import write_json
from qa_ebm.models.hvae import HVAE, TokenSpec
from qa_ebm.models.pretrained import causal_lm_identity
from qa_ebm.training.distributed import check_launch, mean_over_processes, seed_process, share_of
from qa_ebm.training.loop import LoopSettings, LoopState, StepOutput, TrainingLoop
from qa_ebm.training.runs import (
    TrainingError,  # noqa: F401  (callers catch it from here)
    base_manifest,
    init_wandb,
    load_checkpoint,
    prepare_run_dir,
    remove_replaced,
    save_checkpoint,
    trim_metrics,
)
from qa_ebm.training.schedules import kl_beta, warmup_cosine

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
BATCH_KEYS = ("input_ids", "token_mask", "sentence_mask")  # the model's inputs, in its argument order
# Settings that may change on --resume (they do not change what a step computes).
RESUMABLE_CHANGES = {
    "steps",
    "max_seconds",
    "eval_every",
    "save_every",
    "report_to",
    "num_samples",
    "nonfinite",
    "max_nonfinite_skips",
}


@dataclass
class TrainResult:
    out: Path
    step: int
    stopped: str  # "done" | "time budget"
    metrics: dict[str, Any]


def token_spec(data: ProcessedData) -> TokenSpec:
    special, shape = data.manifest["tokenizer"]["special"], data.manifest["shape"]
    return TokenSpec(
        vocab_size=data.manifest["tokenizer"]["vocab_size"],
        pad_id=special["pad_id"],
        eos_id=special["eos_id"],
        mask_id=special["mask_id"],
        max_sentences=shape["max_sentences"],
        max_words=shape["max_words"],
    )


def check_tokenizer_matches_decoder(tokenizer: dict[str, Any], decoder: str, gguf_file: str | None = None) -> None:
    """A pretrained decoder reads its own tokenizer's ids: the data must have been tokenised with it."""
    if decoder.startswith("scratch-"):
        return  # trained from scratch on the data's own vocabulary
    same = tokenizer["kind"] == "hf" and causal_lm_identity(str(tokenizer["name"])) == causal_lm_identity(
        decoder, gguf_file
    )
    if not same:
        name = f"{decoder}/{gguf_file}" if gguf_file else decoder
        raise ConfigError(
            f"tokenizer mismatch: the data was tokenised with {tokenizer['kind']} ({tokenizer['name']}) but "
            f"hvae.decoder={decoder} reads its own token ids; preprocess with --set data.tokenizer.kind=hf "
            f"--set data.tokenizer.name={name}, or train a scratch decoder (hvae.decoder=scratch-gpt2)"
        )


def train_hvae(
    config: Config,
    data_dir: str | Path,
    out: str | Path,
    resume: bool = False,
    overwrite: bool = False,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    tc = config.train_hvae
    data = load_processed(data_dir)
    check_tokenizer_matches_decoder(data.manifest["tokenizer"], config.hvae.decoder, config.hvae.gguf_file)
    spec = token_spec(data)
    accelerator = Accelerator(mixed_precision=tc.mixed_precision, gradient_accumulation_steps=tc.grad_accum)
    check_launch(accelerator, "train_hvae", tc.batch_size, tc.mixed_precision)
    out, replaced = prepare_run_dir(Path(out), config, resume, overwrite, ("hvae", "train_hvae"), RESUMABLE_CHANGES)
    answers = {split: data.answer_arrays(split) for split in SPLITS}
    train, val = answers["train"], answers["val"]
    if CONTEXT_SPLIT in data.dataset:  # unpaired context text, for the HVAE only (see preprocess)
        extra = data.answer_arrays(CONTEXT_SPLIT)
        train = {k: (train[k] + extra[k]) if k == "ids" else np.concatenate([train[k], extra[k]]) for k in train}
    if len(train["ids"]) == 0:
        raise ConfigError(f"{data.root}: the train split has no answerable examples")
    tokenizer = load_tokenizer(data.tokenizer_dir)
    if config.hvae.word_encoder != "scratch":  # frozen pretrained word level: embed every sentence once
        spec = add_sentence_vectors(config.hvae.word_encoder, data, spec, answers, train)

    set_seed(tc.seed)
    model = HVAE(config.hvae, spec)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = warmup_cosine(optimizer, tc.warmup_steps, tc.steps, tc.min_lr_ratio)
    model, optimizer = accelerator.prepare(model, optimizer)
    seed_process(tc.seed, accelerator)
    state_dir = out / "trainer_state"
    saved = load_checkpoint(state_dir, accelerator, model, optimizer, scheduler) if resume else None
    start = LoopState.from_dict(saved)
    if resume and accelerator.is_main_process:
        trim_metrics(out / "metrics.jsonl", start.step)
    wandb_run = None
    if accelerator.is_main_process:
        wandb_run = init_wandb(tc.report_to, "train_hvae", config, out, "train-hvae")

    def save(step: int, loop_state: dict[str, Any]) -> None:
        save_checkpoint(state_dir, accelerator, model, optimizer, scheduler, {**loop_state, "seed": tc.seed})

    def evaluate(step: int, train_stats: dict[str, float]) -> dict[str, Any]:
        train_stats = mean_over_processes(train_stats, accelerator)
        metrics = {"step": step, **train_stats}
        if accelerator.is_main_process:  # the others go on to the next step and wait for it there
            metrics.update(diagnostics(accelerator.unwrap_model(model), val, tc, tokenizer))
            with (out / "metrics.jsonl").open("a") as f:
                f.write(json.dumps(metrics) + "\n")
            if wandb_run is not None:
                wandb_run.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)
            if on_eval is not None:
                on_eval(metrics)
        return metrics

    kl_schedule = functools.partial(
        kl_beta,
        total_steps=tc.steps,
        cycles=tc.kl_cycles,
        ramp_fraction=tc.kl_ramp_fraction,
        decrease_start=tc.beta_decrease_start,
        beta_final=tc.beta_final,
    )

    def train_step(step: int) -> StepOutput:
        beta_g, beta_l = kl_schedule(step, beta_max=tc.beta_g), kl_schedule(step, beta_max=tc.beta_l)
        losses, inputs = [], {}
        for micro in range(tc.grad_accum):
            batch = batch_at(train, step * tc.grad_accum + micro, tc.batch_size, tc.seed, accelerator)
            with accelerator.accumulate(model):
                output = model(
                    **batch,
                    beta_g=beta_g,
                    beta_l=beta_l,
                    free_bits=tc.free_bits,
                    free_bits_per_dim=tc.free_bits_per_dim,
                    word_dropout_encoder=tc.word_dropout_encoder,
                    word_dropout_decoder=tc.word_dropout_decoder,
                    count_loss_weight=tc.count_loss_weight,
                )
                accelerator.backward(output.loss)  # divides by grad_accum itself
            losses.append(output.loss.detach())
            inputs.update({k if tc.grad_accum == 1 else f"{k} (micro-batch {micro})": v for k, v in batch.items()})
        stats = {
            "loss": output.loss.item(),
            "token_nll": output.token_nll.item(),
            "kl_g": output.kl_g.item(),
            "kl_l": output.kl_l.item(),
            "beta_g": beta_g,
            "beta_l": beta_l,
        }
        return StepOutput(loss=torch.stack(losses), stats=stats, inputs=inputs)

    started = time.perf_counter()
    model.train()
    loop = TrainingLoop(
        LoopSettings.from_config(tc, "train_hvae"),
        accelerator,
        model,
        optimizer,
        scheduler,
        train_step,
        save,
        evaluate,
        checkpoint_dir=state_dir,
        oom_advice=f"with train_hvae.batch_size={tc.batch_size}; try "
        f"--set train_hvae.batch_size={max(1, tc.batch_size // 2)} --set train_hvae.grad_accum={tc.grad_accum * 2}",
        desc="train-hvae",
        show=("loss", "token_nll"),
        progress=progress,
    )
    result = loop.run(start)
    step, stopped, metrics = result.step, result.stopped, result.metrics

    if accelerator.is_main_process:
        hvae = accelerator.unwrap_model(model)
        hvae.save_pretrained(out / "model")
        for name in ("tokenizer", "punkt"):
            if (data.root / name).is_dir():
                shutil.copytree(data.root / name, out / name, dirs_exist_ok=True)
        export_latents(hvae, answers, out / "latents", tc.batch_size)
        write_json(
            out / "manifest.json", _manifest(config, data, step, stopped, metrics, time.perf_counter() - started)
        )
    if wandb_run is not None:
        wandb_run.finish()
    remove_replaced(replaced)  # the new run is complete: drop the old one
    return TrainResult(out=out, step=step, stopped=stopped, metrics=metrics)


def add_sentence_vectors(name: str, data: ProcessedData, spec: TokenSpec, answers: dict, train: dict) -> TokenSpec:
    """Put each split's sentence vectors (N, S, Dp) under "sentence_emb"; the spec learns their width."""
    from qa_ebm.models.sentence_embedder import SentenceEmbedder

    embedder = SentenceEmbedder(name)
    for split, arrays in answers.items():
        arrays["sentence_emb"] = embedder.embed_answers(data.answer_sentences(split), spec.max_sentences)
    extra = []
    if CONTEXT_SPLIT in data.dataset:
        extra = [embedder.embed_answers(data.answer_sentences(CONTEXT_SPLIT), spec.max_sentences)]
    train["sentence_emb"] = np.concatenate([answers["train"]["sentence_emb"], *extra])
    return dataclasses.replace(spec, sentence_dim=embedder.dim)


# --------------------------------------------------------------------------------------- batches


def batch_at(
    arrays: dict[str, Any], index: int, batch_size: int, seed: int, accelerator=None
) -> dict[str, torch.Tensor]:
    """The `index`-th batch of the run: a pure function of (seed, index), so a resumed run sees the same data.

    Each epoch is a permutation drawn from a generator seeded with (seed, epoch). With several
    processes, `batch_size` is the global batch and each process takes its block of it (`share_of`).
    """
    n = len(arrays["ids"])
    epoch, k = divmod(index, math.ceil(n / batch_size))
    rows = _epoch_order(n, seed, epoch)[k * batch_size : (k + 1) * batch_size]
    device = torch.device("cpu")
    if accelerator is not None:
        rows = share_of(rows, accelerator.process_index, accelerator.num_processes).rows
        device = accelerator.device
    return {name: torch.from_numpy(arrays[name][rows]).to(device) for name in batch_keys(arrays)}


@functools.lru_cache(maxsize=2)
def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of one epoch, seeded with (seed, epoch); cached, since every step of the epoch needs it."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=gen).numpy()


def iter_batches(arrays: dict[str, Any], batch_size: int):
    n = len(arrays["ids"])
    for start in range(0, n, batch_size):
        yield {
            name: torch.from_numpy(np.asarray(arrays[name][start : start + batch_size])) for name in batch_keys(arrays)
        }


def batch_keys(arrays: dict[str, Any]) -> tuple[str, ...]:
    """The model inputs a batch carries: the ids and masks, plus the sentence vectors of a pretrained word level."""
    return (*BATCH_KEYS, "sentence_emb") if "sentence_emb" in arrays else BATCH_KEYS


def model_inputs(batch: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """A batch on `device` as the HVAE's keyword arguments: ids and masks as int64, sentence vectors as float."""
    return {k: v.to(device).float() if k == "sentence_emb" else v.to(device).long() for k, v in batch.items()}


# --------------------------------------------------------------------------------------- diagnostics


@torch.no_grad()
def diagnostics(model: HVAE, val: dict[str, Any], tc: TrainHVAEConfig, tokenizer) -> dict[str, Any]:
    """Reconstruction loss/perplexity, KLs, active units, posterior variance, reconstruction accuracy, samples.

    Runs in its own RNG fork with a fixed seed, so evaluating neither depends on nor perturbs training.
    """
    if len(val["ids"]) == 0:
        return {}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(tc.seed)
        nll = kl_g = kl_l = tokens = answers = 0.0
        mu_g, mu_l, var_g, var_l = [], [], [], []
        for batch in iter_batches(val, tc.batch_size):
            batch = {k: v.to(device) for k, v in batch.items()}
            o = model(**batch)
            B = batch["input_ids"].shape[0]
            nll += o.token_nll.item() * o.n_tokens
            tokens += o.n_tokens
            kl_g += o.kl_g.item() * B
            kl_l += o.kl_l.item() * B
            answers += B
            real = batch["sentence_mask"].bool()
            mu_g.append(o.posterior.mu_g)
            var_g.append(o.posterior.logvar_g.exp())
            mu_l.append(o.posterior.mu_l[real])
            var_l.append(o.posterior.logvar_l[real].exp())
        mu_g, mu_l = torch.cat(mu_g), torch.cat(mu_l)
        metrics = {
            "val_token_nll": nll / tokens,
            "val_ppl": math.exp(min(nll / tokens, 50)),
            "val_kl_g": kl_g / answers,
            "val_kl_l": kl_l / answers,
            "active_units_g": active_units(mu_g),
            "active_units_l": active_units(mu_l),
            "latent_dim": model.cfg.latent_dim,
            "posterior_var_g": torch.cat(var_g).mean().item(),
            "posterior_var_l": torch.cat(var_l).mean().item(),
        }
        metrics.update(reconstruction_report(model, val, tokenizer, tc.num_samples))
        metrics["prior_samples"] = []
        if tc.num_samples > 0:
            z = model.sample_prior(tc.num_samples, generator=torch.Generator(device=device).manual_seed(tc.seed))
            metrics["prior_samples"] = [decode_text(tokenizer, a) for a in model.decode(*z)]
    model.train(was_training)
    return metrics


def active_units(mu: torch.Tensor, threshold: float = 0.01) -> int:
    """Dimensions whose posterior mean varies across inputs: Cov_x(E_q[z_d]) > threshold (Burda et al., 2016)."""
    return int((mu.var(dim=0, unbiased=False) > threshold).sum()) if mu.shape[0] > 1 else 0


def reconstruction_report(
    model: HVAE, arrays: dict[str, Any], tokenizer, num_samples: int, limit: int = 64
) -> dict[str, Any]:
    """Greedy decode(posterior mean) of up to `limit` answers: exact-match rate and a few examples as text."""
    device = next(model.parameters()).device
    sub = {k: v[:limit] for k, v in arrays.items()}
    exact, shown = 0, []
    for batch in iter_batches(sub, 32):
        decoded = model.reconstruct(**model_inputs(batch, device))
        for b, sentences in enumerate(decoded):
            gold = gold_sentences(batch, b)
            exact += sentences == gold
            if len(shown) < num_samples:
                shown.append(
                    {"gold": decode_text(tokenizer, gold), "reconstruction": decode_text(tokenizer, sentences)}
                )
    return {"val_reconstruction_exact": exact / max(len(sub["ids"]), 1), "reconstructions": shown}


def gold_sentences(batch: dict[str, torch.Tensor], b: int) -> list[list[int]]:
    """The token ids of answer b's real sentences, without EOS (what decoding should produce)."""
    out = []
    for s in range(int(batch["sentence_mask"][b].sum())):
        n = int(batch["token_mask"][b, s].sum())
        out.append(batch["input_ids"][b, s, : n - 1].tolist())
    return out


def decode_text(tokenizer, sentences: list[list[int]]) -> str:
    """An answer's text from its sentences' token ids."""
    return " ".join(tokenizer.decode(ids) for ids in sentences)


# --------------------------------------------------------------------------------------- latents


@torch.no_grad()
def export_latents(model: HVAE, answers: dict[str, dict[str, Any]], directory: Path, batch_size: int) -> dict[str, int]:
    """Posterior means and log-variances of every split's answers (`answer_arrays`), for the energy transformer."""
    directory.mkdir(parents=True, exist_ok=True)
    model.eval()
    device = next(model.parameters()).device
    counts = {}
    for split, arrays in answers.items():
        parts: dict[str, list[torch.Tensor]] = {
            "mu_g": [],
            "logvar_g": [],
            "mu_l": [],
            "logvar_l": [],
            "sentence_mask": [],
        }
        for batch in iter_batches(arrays, batch_size):
            post = model.encode(**model_inputs(batch, device))
            for name in ("mu_g", "logvar_g", "mu_l", "logvar_l"):
                parts[name].append(getattr(post, name).float().cpu())
            parts["sentence_mask"].append(batch["sentence_mask"].to(torch.int8))
        tensors = {k: torch.cat(v) if v else torch.zeros(0) for k, v in parts.items()}
        tmp = directory / f".{split}.safetensors.tmp"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, directory / f"{split}.safetensors")
        write_json(directory / f"{split}.json", {"ids": arrays["ids"], "latent_dim": model.cfg.latent_dim})
        counts[split] = len(arrays["ids"])
    return counts


# --------------------------------------------------------------------------------------- run dir


def _manifest(config: Config, data: ProcessedData, step: int, stopped: str, metrics: dict, seconds: float) -> dict:
    manifest = base_manifest("qa-ebm/hvae-run", config, step, stopped, metrics, seconds)
    return {**manifest, "data": {"dir": str(data.root.resolve()), "fingerprint": data.manifest.get("fingerprint")}}
