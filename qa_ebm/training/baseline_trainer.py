"""`qa-ebm train-baseline`: fine-tune an HVAE run's decoder LM on (question, answer) pairs.

The evaluation's autoregressive baseline (models/baseline.py): the LM starts from the HVAE's trained decoder
LM (`HVAE.from_pretrained(run/model).decoder.lm`) and learns `question SEP answer EOS` on the train split of
the data the HVAE used: SQuAD questions with an answer and physics questions (SQuAD v2 unanswerable
questions carry no target and are left out, as for the HVAE).

Run directory:

    config.yaml  manifest.json  metrics.jsonl   as for train-hvae; the manifest records the HVAE run and data
    model/            AutoregressiveBaseline.save_pretrained (config.json + model.safetensors)
    tokenizer/        copied from the HVAE run: `BaselineAnswerer.from_pretrained(run)` needs nothing else
    trainer_state/    model + optimizer + scheduler + RNG (safetensors + JSON); --resume continues it exactly

The batch of a step is a function of (seed, step) alone and the RNG state (dropout) is checkpointed, so a
resumed run reproduces the uninterrupted one on CPU.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qa_ebm.config import Config, TrainBaselineConfig, load_config
from qa_ebm.data.processed import ProcessedData, load_processed
from qa_ebm.data.tokenizer import load_tokenizer
from qa_ebm.errors import CheckpointError, ConfigError
from qa_ebm.io import write_json
from qa_ebm.models.baseline import AutoregressiveBaseline, BaselineSpec, pack
from qa_ebm.models.decoders import DecodeSettings
from qa_ebm.models.hvae import HVAE
from qa_ebm.training.distributed import require_one_process
from qa_ebm.training.ebt_trainer import HVAERun, load_hvae_run, resolve_data_dir
from qa_ebm.training.hvae_trainer import TrainResult, _epoch_order, decode_text
from qa_ebm.training.loop import LoopSettings, LoopState, StepOutput, TrainingLoop
from qa_ebm.training.runs import base_manifest, load_checkpoint, prepare_run_dir, save_checkpoint, trim_metrics
from qa_ebm.training.schedules import warmup_cosine

log = logging.getLogger(__name__)

SECTIONS = ("train_baseline",)
# Settings that may change on --resume (they do not change what a step computes).
RESUMABLE_CHANGES = {
    "steps",
    "max_seconds",
    "eval_every",
    "save_every",
    "num_samples",
    "nonfinite",
    "max_nonfinite_skips",
}


@dataclass
class Pairs:
    """One split's (question, answer) pairs as token ids, with the answer text for the samples."""

    ids: list[str]
    questions: list[list[int]]
    answers: list[list[int]]
    texts: list[str]

    def __len__(self) -> int:
        return len(self.ids)


def qa_pairs(data: ProcessedData, split: str, tokenizer) -> Pairs:
    """The split's answerable questions with their answers as one id sequence (format: models/baseline.py).

    The answer is its sentences' ids (PAD and each sentence's EOS stripped) rendered as the HVAE renders
    them, `decode_text`, and encoded once more, so the target decodes to the plain answer text for
    SentencePiece and GPT-2 BPE alike (GPT-2's sentence-initial tokens carry no leading space).
    """
    arrays = data.answer_arrays(split)  # answerable only: is_impossible and empty answers are dropped
    ds = data.dataset[split].select_columns(["id", "question_ids"])[:]
    row = {i: n for n, i in enumerate(ds["id"])}
    eos, pad = data.manifest["tokenizer"]["special"]["eos_id"], data.manifest["tokenizer"]["special"]["pad_id"]
    texts = []
    for b in range(len(arrays["ids"])):
        sentences = []
        for s in range(int(arrays["sentence_mask"][b].sum())):
            sentences.append([int(t) for t in arrays["input_ids"][b, s] if t not in (eos, pad)])
        texts.append(decode_text(tokenizer, sentences))
    questions = [list(map(int, ds["question_ids"][row[i]])) for i in arrays["ids"]]
    return Pairs(list(arrays["ids"]), questions, tokenizer.encode_batch(texts), texts)


def baseline_spec(config: Config, hvae_config: Config, tokenizer) -> BaselineSpec:
    return BaselineSpec(
        pad_id=tokenizer.special.pad_id,
        eos_id=tokenizer.special.eos_id,
        sep_id=tokenizer.special.mask_id,
        max_question_tokens=hvae_config.data.max_question_tokens,  # the data stage cut questions to this
        max_answer_tokens=config.train_baseline.max_answer_tokens,
    )


def batch_at(pairs: Pairs, index: int, batch_size: int, seed: int, spec: BaselineSpec):
    """The index-th batch: a seeded permutation per epoch, as in train-hvae."""
    epoch, k = divmod(index, math.ceil(len(pairs) / batch_size))
    rows = _epoch_order(len(pairs), seed, epoch)[k * batch_size : (k + 1) * batch_size]
    return pack([pairs.questions[r] for r in rows], [pairs.answers[r] for r in rows], spec)


def train_baseline(
    config: Config,
    hvae_run_dir: str | Path,
    out_dir: str | Path,
    *,
    data_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    tc = config.train_baseline
    run = load_hvae_run(hvae_run_dir)
    data_path = resolve_data_dir(run, data_dir)
    for needed in ("model", "tokenizer"):
        if not (run.root / needed).is_dir():
            raise CheckpointError(f"{run.root}: not a complete train-hvae run (no {needed}/)")
    out = Path(out_dir)
    if resume:
        _check_same_hvae(out, run)
    require_one_process("train-baseline")
    out, replaced = prepare_run_dir(out, config, resume, overwrite, SECTIONS, RESUMABLE_CHANGES)
    tokenizer = load_tokenizer(run.root / "tokenizer")
    data = load_processed(data_path)
    train, val = qa_pairs(data, "train", tokenizer), qa_pairs(data, "val", tokenizer)
    if len(train) == 0:
        raise ConfigError(f"{data_path}: the train split has no answerable questions")
    spec = baseline_spec(config, load_config(run.root / "config.yaml"), tokenizer)

    accelerator = Accelerator(mixed_precision=tc.mixed_precision)
    set_seed(tc.seed)
    hvae = HVAE.from_pretrained(run.root / "model")
    model = AutoregressiveBaseline(hvae.decoder.lm, spec)  # the same decoder LM, its trained weights
    del hvae
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    scheduler = warmup_cosine(optimizer, tc.warmup_steps, tc.steps, tc.min_lr_ratio)
    model, optimizer = accelerator.prepare(model, optimizer)
    state_dir = out / "trainer_state"
    saved = load_checkpoint(state_dir, accelerator, model, optimizer, scheduler) if resume else None
    start = LoopState.from_dict(saved)
    if resume and accelerator.is_main_process:
        trim_metrics(out / "metrics.jsonl", start.step)

    def save(step: int, loop_state: dict[str, Any]) -> None:
        state = {**loop_state, "seed": tc.seed, "hvae_fingerprint": run.fingerprint}
        save_checkpoint(state_dir, accelerator, model, optimizer, scheduler, state)

    def evaluate(step: int, train_stats: dict[str, float]) -> dict[str, Any]:
        metrics = {"step": step, **train_stats, **diagnostics(accelerator.unwrap_model(model), val, tc, tokenizer)}
        with (out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        if on_eval is not None:
            on_eval(metrics)
        return metrics

    def train_step(step: int) -> StepOutput:
        batch = batch_at(train, step, tc.batch_size, tc.seed, spec)
        with accelerator.autocast():
            output = model(
                batch.input_ids.to(accelerator.device),
                batch.attention_mask.to(accelerator.device),
                batch.labels.to(accelerator.device),
            )
        accelerator.backward(output.loss)
        return StepOutput(loss=output.loss.detach(), stats={"loss": output.loss.item()})

    started = time.perf_counter()
    model.train()
    loop = TrainingLoop(
        LoopSettings.from_config(tc, "train_baseline"),
        accelerator,
        model,
        optimizer,
        scheduler,
        train_step,
        save,
        evaluate,
        checkpoint_dir=state_dir,
        oom_advice=f"with train_baseline.batch_size={tc.batch_size}; try "
        f"--set train_baseline.batch_size={max(1, tc.batch_size // 2)} or a lower "
        f"train_baseline.max_answer_tokens (now {tc.max_answer_tokens})",
        desc="train-baseline",
        progress=progress,
    )
    result = loop.run(start)
    step, stopped, metrics = result.step, result.stopped, result.metrics

    accelerator.unwrap_model(model).save_pretrained(out / "model")
    shutil.copytree(run.root / "tokenizer", out / "tokenizer", dirs_exist_ok=True)
    manifest = base_manifest("qa-ebm/baseline-run", config, step, stopped, metrics, time.perf_counter() - started)
    manifest["hvae"] = {"dir": str(run.root.resolve()), "fingerprint": run.fingerprint}
    manifest["data"] = {"dir": str(data_path.resolve()), "fingerprint": data.manifest.get("fingerprint")}
    manifest["pairs"] = {"train": len(train), "val": len(val)}
    write_json(out / "manifest.json", manifest)
    if replaced is not None:  # the new run is complete: drop the old one
        shutil.rmtree(replaced, ignore_errors=True)
    return TrainResult(out=out, step=step, stopped=stopped, metrics=metrics)


def _check_same_hvae(out: Path, run: HVAERun) -> None:
    state = out / "trainer_state" / "state.json"
    if not state.is_file():
        return  # nothing trained yet: prepare_run_dir decides whether there is anything to resume
    recorded = json.loads(state.read_text()).get("hvae_fingerprint")
    if recorded and recorded != run.fingerprint:
        raise CheckpointError(
            f"{out}: started from HVAE run {recorded}, but {run.root} is {run.fingerprint}; resume it with the "
            f"HVAE run it started from"
        )


# --------------------------------------------------------------------------------------- diagnostics


@torch.no_grad()
def diagnostics(model: AutoregressiveBaseline, val: Pairs, tc: TrainBaselineConfig, tokenizer) -> dict[str, Any]:
    """Val loss and perplexity on the answer tokens, exact match of a few greedy answers, samples as text.

    Runs in eval mode inside its own RNG fork, so evaluating neither depends on nor perturbs training.
    """
    if len(val) == 0:
        return {}
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    nll, tokens = 0.0, 0
    with torch.random.fork_rng(devices=[]):
        for start in range(0, len(val), tc.batch_size):
            end = start + tc.batch_size
            batch = pack(val.questions[start:end], val.answers[start:end], model.spec)
            o = model(batch.input_ids.to(device), batch.attention_mask.to(device), batch.labels.to(device))
            nll += o.nll_sum.item()
            tokens += o.n_tokens
        k = min(len(val), max(tc.num_samples, 16))  # the exact-match estimate reads at least 16 answers
        greedy = DecodeSettings(max_new_tokens=model.spec.max_answer_tokens + 1)
        generated = [tokenizer.decode(a) for a in model.generate(val.questions[:k], greedy)]
    model.train(was_training)
    gold = [tokenizer.decode(a[: model.spec.max_answer_tokens]) for a in val.answers[:k]]  # the target, as text
    return {
        "val_token_nll": nll / max(tokens, 1),
        "val_ppl": math.exp(min(nll / max(tokens, 1), 50)),
        "val_exact": float(np.mean([a.strip() == g.strip() for a, g in zip(generated, gold, strict=True)])),
        "samples": [
            {"question": tokenizer.decode(val.questions[i]), "gold": val.texts[i], "answer": generated[i]}
            for i in range(min(tc.num_samples, k))
        ],
    }
