"""Train the reading-mode energy over a frozen proposal head's candidates (see ``qa_ebm/reading/energy.py``).

Work done once, before the first step:
    1. windows of every (question, passage) and the proposal head's encoder states of each (an fp16 cache in
       memory; windows no candidate reads are freed) and span logits, in one batched pass;
    2. candidates per question: the top K proposals + the gold span (added when the head missed it) + hard
       negatives (spans overlapping the gold, spans of its sentence), each with its window and proposal score;
    3. their latents: HVAE posterior means of the texts, each distinct text encoded once, standardised with the
       HVAE run's train-latent statistics (stored in the model, so answering standardises the same way).

Each step takes B questions, computes the condition of the windows they read once, and minimises

    L = CE(-E_total(x, candidates), gold)                    the gold the lowest total energy among its candidates
      + mcmc_coeff * L_mcmc(x, y_gold)                        refinement from noise lands on the gold latent
      + gold_grad_coeff * |dE_theta(x, y_gold)/dy|^2          the gold a fixed point of refinement
      + risk_coeff * (1 - sum_c p(c | x) F1(c, gold))         minimum risk: p = softmax(-E_total), token F1

where L_mcmc is ``ebt_objectives.mcmc_objective`` (recon + contrast, without its own gold-gradient term) with
the question's cached condition; the risk term (minimum-risk training for SQuAD's loss) makes a near miss
cheaper than a far one, which the one-hot cross-entropy cannot. AdamW (no decay on biases, norms and w),
linear warmup then cosine (``schedules.warmup_cosine`` planned over ``steps``), gradient clipping. Every
random draw comes from generators seeded with ``seed``, so a run stopped by ``steps`` is bit-reproducible on
CPU; a run stopped by ``max_seconds`` stops where the clock says (its lr schedule is cut short, not compressed).

At the end the val questions are answered three ways from the same candidates (the top K proposals only, no
gold added): the proposal head alone, E_theta alone and E_total; their SQuAD EM/F1 are in ``metrics``. The
decision rule over E_total (lowest, or expected F1 at a temperature: ``qa_ebm.reading.decision``) of the best
val F1 is written into the model's config, so the exported pipeline answers with it.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from qa_ebm.config import TrainEBTConfig, config_from_dict
from qa_ebm.errors import ConfigError, DataError
from qa_ebm.metrics.squad import exact_match, squad_scores
from qa_ebm.metrics.squad import f1 as squad_f1
from qa_ebm.models.answer_encoder import AnswerEncoder
from qa_ebm.models.ebt import EBTSpec, energy_gradient
from qa_ebm.models.precision import autocast, check_precision
from qa_ebm.reading.decision import NO_ANSWER_SIGNALS, calibrate, calibrate_no_answer, decide
from qa_ebm.reading.energy import (
    LatentEncoder,
    QuestionCandidates,
    SpanEnergies,
    SpanEnergy,
    SpanEnergyConfig,
    WindowEncoding,
    attach_latents,
    collate_candidates,
    encode_windows,
    null_scores,
    pad_per_question,
    propose_candidates,
    rank_energies,
    training_candidates,
)
from qa_ebm.reading.proposal import SpanProposalHead, example_windows
from qa_ebm.training.ebt_objectives import mcmc_objective
from qa_ebm.training.ebt_trainer import latent_statistics, load_hvae_run
from qa_ebm.training.schedules import warmup_cosine

log = logging.getLogger(__name__)

EXAMPLE_KEYS = ("question", "context", "answer", "answer_start")


@dataclass
class SpanTrainConfig:
    """How the span energy trains (the model and its candidates: :class:`SpanEnergyConfig`)."""

    steps: int = 2000  # the step cap (and the length the lr schedule is planned for)
    max_seconds: float | None = None  # a wall-clock budget for the steps (preparation not counted)
    batch_size: int = 16  # questions per step
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 50  # at most `steps`
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    hard_negatives: int = 6  # per training question, beside its top-K proposals and the gold
    mcmc_coeff: float = 0.1  # 0: no refinement objective
    risk_coeff: float = 0.0  # weight of the expected-F1 risk 1 - E_p[F1(c, gold)] beside the cross-entropy
    gold_grad_coeff: float = 0.01
    mcmc_steps: int = 4  # refinement steps per mcmc example, drawn from [mcmc_min_steps, mcmc_steps]
    mcmc_min_steps: int = 2
    truncate: int = 1  # gradients through the last `truncate` refinement steps
    step_size: float = 0.5  # the learnable refinement step size's initial value
    step_size_jitter: float = 0.5
    langevin_noise: float = 0.05
    mcmc_rivals: int = 3  # other questions' gold latents as negatives in the mcmc contrast
    encode_batch_size: int = 32  # windows per encoder batch
    mixed_precision: str = "no"  # "bf16": window encoding and training steps under bfloat16 autocast
    seed: int = 0

    def validate(self) -> None:
        check_precision(self.mixed_precision, "span training")
        if min(self.steps, self.batch_size, self.encode_batch_size, self.mcmc_min_steps) < 1:
            raise ConfigError("span training: steps, batch_size, encode_batch_size and mcmc_min_steps must be >= 1")
        if not 1 <= self.truncate <= self.mcmc_min_steps <= self.mcmc_steps:
            raise ConfigError("span training: need 1 <= truncate <= mcmc_min_steps <= mcmc_steps")
        if self.lr <= 0 or self.step_size <= 0 or self.grad_clip <= 0:
            raise ConfigError("span training: lr, step_size and grad_clip must be > 0")
        coeffs = ("mcmc_coeff", "gold_grad_coeff", "risk_coeff", "weight_decay", "warmup_steps", "hard_negatives")
        if min(getattr(self, name) for name in coeffs) < 0:
            raise ConfigError(f"span training: {', '.join(coeffs)} must be >= 0")
        if not 0 <= self.min_lr_ratio <= 1 or not 0 <= self.step_size_jitter < 1:
            raise ConfigError("span training: min_lr_ratio must be in [0, 1] and step_size_jitter in [0, 1)")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise ConfigError(f"span training: max_seconds must be > 0 or null, got {self.max_seconds}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "span training config") -> SpanTrainConfig:
        return config_from_dict(cls, data, where)

    def mcmc(self) -> TrainEBTConfig:
        """The mcmc objective's settings. Its gold-gradient term is off: this trainer adds that term itself."""
        return TrainEBTConfig(
            mcmc_steps=self.mcmc_steps,
            mcmc_min_steps=self.mcmc_min_steps,
            truncate=self.truncate,
            step_size=self.step_size,
            step_size_jitter=self.step_size_jitter,
            langevin_noise=self.langevin_noise,
            recon_coeff=1.0,
            contrast_coeff=1.0,
            gold_grad_coeff=0.0,
        )


@dataclass
class SpanTrainResult:
    model: SpanEnergy  # trained, in eval mode, on the proposal head's device
    steps: int
    seconds: float  # training steps only
    stopped: str  # "steps" | "time"
    losses: list[float]  # per step
    train_questions: int  # questions trained on (their gold span found in a window)
    skipped: int  # training questions without one
    metrics: dict[str, Any] = field(default_factory=dict)  # prep seconds, last parts, val EM/F1 per ranking


@dataclass
class PreparedQuestions:
    """Questions made ready for the energy: their candidates with latents, and the window states they read."""

    items: list[QuestionCandidates]
    states: WindowEncoding
    nulls: list[float]  # per question, the proposal head's null score s_null (``reading.energy.null_scores``)


def _check_examples(examples: Sequence[Mapping[str, Any]], where: str) -> None:
    for n, ex in enumerate(examples):
        missing = [k for k in EXAMPLE_KEYS if k not in ex]
        if missing:
            raise DataError(f"train_span_energy: {where} example {n} lacks {', '.join(missing)}")


def _encoder_and_stats(
    hvae: str | Path | LatentEncoder, latent_stats: tuple[torch.Tensor, torch.Tensor] | None, gold_texts: list[str]
) -> tuple[LatentEncoder, tuple[torch.Tensor, torch.Tensor], str]:
    """The latent encoder, the standardisation statistics and the HVAE run's fingerprint."""
    if isinstance(hvae, (str, Path)):
        run = load_hvae_run(hvae)
        return AnswerEncoder.from_run(hvae), latent_statistics(run.latents["train"]), run.fingerprint
    if latent_stats is not None:
        return hvae, latent_stats, ""
    # No run to read them from: the statistics of the training golds' own latents.
    y, mask = hvae(gold_texts)
    stats = latent_statistics({"mu_g": y[:, 0], "mu_l": y[:, 1:], "sentence_mask": mask[:, 1:]})
    return hvae, stats, ""


def _prepare(
    proposal: SpanProposalHead,
    tokenizer: Any,
    examples: Sequence[Mapping[str, Any]],
    model: SpanEnergy,
    encode: LatentEncoder,
    tc: SpanTrainConfig,
    train: bool,
    progress: bool,
) -> PreparedQuestions:
    cfg = model.config
    windows = example_windows(tokenizer, proposal.config, examples)
    enc = encode_windows(proposal, windows, tc.encode_batch_size, torch.float16, progress, tc.mixed_precision)
    if train:
        answers = [(int(ex["answer_start"]), str(ex["answer"])) for ex in examples]
        rng = random.Random(tc.seed)
        cands, golds = training_candidates(
            windows, enc, answers, cfg.top_k, cfg.max_answer_tokens, tc.hard_negatives, rng
        )
    else:
        cands, golds = propose_candidates(windows, enc, cfg.top_k, cfg.max_answer_tokens), None
    enc.drop_unused({c.window for cs in cands for c in cs})
    items = attach_latents(encode, model, cands, golds, progress=progress)
    if train and tc.risk_coeff > 0:  # once here, not at every step: the risk term's F1 of each candidate
        for it in items:
            if it.gold is not None:
                gold_text = [it.candidates[it.gold].text]
                it.gold_f1 = torch.tensor([squad_f1(c.text, gold_text) for c in it.candidates])
    return PreparedQuestions(items, enc, null_scores(windows, enc))


def _step_loss(
    model: SpanEnergy,
    batch: list[QuestionCandidates],
    states: WindowEncoding,
    tc: SpanTrainConfig,
    mcmc_tc: TrainEBTConfig,
    gen: torch.Generator,
) -> tuple[torch.Tensor, dict[str, float]]:
    device = model.proposal_weight.device
    inputs = collate_candidates(batch, states.states, device)
    cond = model.condition(inputs.states, inputs.state_mask)  # once per window, for every candidate
    cond = model.candidate_condition(cond, inputs.rows, inputs.span_states)  # one row per candidate
    e = model.energies(cond, inputs.y, inputs.slot_mask, inputs.score)  # (C,)
    logits, _ = pad_per_question(-e.total, inputs.sizes, fill=float("-inf"))  # (B, Cmax)
    gold = torch.tensor([it.gold for it in batch], dtype=torch.long, device=device)
    ce = F.cross_entropy(logits, gold)
    loss, parts = ce, {"ce": ce.item(), "acc": (logits.argmax(1) == gold).float().mean().item()}
    if tc.risk_coeff > 0:
        # Minimum-risk training for SQuAD's loss: under p(c | x) = softmax(-E_total), the expected token F1
        # against the gold; a near miss (the gold's span moved by a word) costs less than a far one.
        f1, _ = pad_per_question(torch.cat([it.gold_f1 for it in batch]).to(device), inputs.sizes, fill=0.0)
        risk = 1.0 - (torch.softmax(logits.float(), dim=1) * f1).sum(1).mean()
        loss = loss + tc.risk_coeff * risk
        parts["risk"] = risk.item()

    rows = inputs.ptr[:-1] + gold  # (B,) the gold candidates
    cond_gold = cond.select(rows)
    y_gold, mask_gold = inputs.y[rows], inputs.slot_mask[rows]
    if tc.mcmc_coeff > 0:
        y0 = torch.randn(y_gold.shape, generator=gen).to(device)
        out = mcmc_objective(model.ebt, cond_gold, y_gold, mask_gold, y0, mcmc_tc, gen, tc.mcmc_rivals)
        loss = loss + tc.mcmc_coeff * out.loss
        parts.update({k: out.parts[k] for k in ("recon", "contrast", "refined_mse")})
    if tc.gold_grad_coeff > 0:
        _, g = energy_gradient(model.ebt, cond_gold, y_gold, mask_gold, create_graph=True)
        gold_grad = g.pow(2).sum((1, 2)).mean()
        loss = loss + tc.gold_grad_coeff * gold_grad
        parts["gold_grad"] = gold_grad.item()
    parts["w"] = model.proposal_weight.item()
    return loss, parts


ANSWER_TOP_KS = (5, 10)  # candidate counts tried on val beside the trained top_k


def evaluate_rankings(
    model: SpanEnergy,
    prepared: PreparedQuestions,
    references: Sequence[Sequence[str]],
    batch_size: int = 32,
    energies: Sequence[SpanEnergies] | None = None,
) -> dict[str, Any]:
    """SQuAD EM/F1 of the best candidate by proposal score, by E_theta and by E_total; recall@K of the candidates;
    and under ``decision`` the decision rule of the best F1 on these questions (``decision.calibrate``).
    `energies`: the items' ``rank_energies`` when the caller already has them."""
    if energies is None:
        energies = rank_energies(model, prepared.states.states, prepared.items, batch_size)
    picks: dict[str, dict[str, str]] = {"proposal": {}, "energy": {}, "rank": {}}
    recall = 0
    refs = {str(q): list(r) for q, r in enumerate(references)}
    for q, (it, e) in enumerate(zip(prepared.items, energies, strict=True)):
        if not len(it):
            continue
        texts = [c.text for c in it.candidates]
        picks["proposal"][str(q)] = max(it.candidates, key=lambda c: c.score).text
        picks["energy"][str(q)] = texts[int(e.energy.argmin())]
        picks["rank"][str(q)] = texts[int(e.total.argmin())]
        recall += any(exact_match(t, refs[str(q)]) for t in texts)
    out: dict[str, Any] = {"count": len(references), "recall_at_k": 100.0 * recall / max(len(references), 1)}
    for name, preds in picks.items():
        scores = squad_scores(preds, refs)
        out[name] = {"exact_match": scores["exact_match"], "f1": scores["f1"]}
    texts = [[c.text for c in it.candidates] for it in prepared.items]
    # The rule and T, for each count of candidates kept (the proposal head's best first): the best of all.
    top_k = model.config.top_k
    by_count = {}
    for k in sorted({k for k in ANSWER_TOP_KS if k < top_k} | {top_k}):
        by_count[k] = calibrate([ts[:k] for ts in texts], [e.total[:k] for e in energies], references)
    best_f1 = {k: max(tried.values()) for k, (_, _, tried) in by_count.items()}  # the chosen setting's F1
    best = max(by_count, key=lambda k: (best_f1[k], k == top_k))
    rule, temperature, tried = by_count[best]
    out["decision"] = {"rule": rule, "temperature": temperature, "f1": tried, "top_k": best, "f1_by_top_k": best_f1}
    # The same rule over the proposal scores alone: how much of the decision's gain the energy brings.
    scores = [torch.tensor([-c.score for c in it.candidates]) for it in prepared.items]
    _, p_temperature, p_tried = calibrate(texts, scores, references, only_expected_f1=True)
    out["proposal_decision"] = {"temperature": p_temperature, "f1": p_tried}
    return out


def _calibrate_no_answer(
    model: SpanEnergy,
    prepared: PreparedQuestions,
    scored: Sequence[SpanEnergies],
    examples: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """The no-answer signal and threshold of the best v2 F1 on val (``decision.NO_ANSWER_SIGNALS``), with the
    model's decision rule, their v2 scores, and the best F1 of every signal tried (``energy`` wins ties)."""
    cfg = model.config
    signals: dict[str, list[float]] = {name: [] for name in NO_ANSWER_SIGNALS}
    span_f1, answerable = [], []
    for it, e, null, ex in zip(prepared.items, scored, prepared.nulls, examples, strict=True):
        if not len(it):
            continue  # no candidate span: answered "no answer" whatever the threshold
        texts = [c.text for c in it.candidates]
        k = decide(texts, e.total, cfg.decision, cfg.temperature)[0]
        signals["energy"].append(float(e.total[k]))
        signals["null_margin"].append(null - max(c.score for c in it.candidates))
        answerable.append(not ex.get("is_impossible", False))
        span_f1.append(squad_f1(texts[k], list(ex.get("references") or [])) if answerable[-1] else 0.0)
    tried = {name: calibrate_no_answer(values, span_f1, answerable) for name, values in signals.items()}
    best = max(NO_ANSWER_SIGNALS, key=lambda name: tried[name][1].get("f1", 0.0))  # first (energy) on ties
    threshold, scores = tried[best]
    f1_by_signal = {name: t[1].get("f1") for name, t in tried.items()}
    return {"signal": best, "threshold": threshold, **scores, "f1_by_signal": f1_by_signal}


def train_span_energy(
    proposal: SpanProposalHead,
    tokenizer: Any,
    hvae: str | Path | LatentEncoder,
    train_examples: Sequence[Mapping[str, Any]],
    val_examples: Sequence[Mapping[str, Any]] = (),
    config: SpanEnergyConfig | None = None,
    train_config: SpanTrainConfig | None = None,
    *,
    latent_stats: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress: bool = True,
    callback: Callable[[int, float, dict[str, float]], None] | None = None,
) -> SpanTrainResult:
    """Train a new :class:`SpanEnergy` on `train_examples` (SQuAD dicts: question, context, answer, answer_start;
    val examples may add ``references``, all gold texts); see the module docstring.

    `proposal` stays frozen (and keeps its mode). `hvae` is a train-hvae run dir (its AnswerEncoder and its
    train-latent statistics), or any ``texts -> (latents, slot mask)`` callable, standardised with
    `latent_stats` (mean, std) of shape (2, D), or when None with the training golds' own statistics.
    """
    # A copy: the decision settings chosen on val are written into the model's config, never the caller's.
    config = copy.deepcopy(config) if config is not None else SpanEnergyConfig()
    tc = train_config or SpanTrainConfig()
    config.validate()
    tc.validate()
    if not train_examples:
        raise DataError("train_span_energy: no training examples")
    _check_examples(train_examples, "train")
    _check_examples(val_examples, "val")
    if config.ebt.max_condition_tokens < proposal.config.max_length:
        raise ConfigError(
            f"span energy: ebt.max_condition_tokens={config.ebt.max_condition_tokens} is below the proposal head's "
            f"window length max_length={proposal.config.max_length}"
        )
    t_prep = time.perf_counter()
    encode, (mean, std), fingerprint = _encoder_and_stats(
        hvae, latent_stats, [str(ex["answer"]) for ex in train_examples]
    )
    probe, _ = encode([str(train_examples[0]["answer"])])
    spec = EBTSpec(
        latent_dim=int(probe.shape[2]),
        num_slots=int(probe.shape[1]),
        condition_dim=proposal.config.hidden_size,
        hvae_run=fingerprint,
    )
    device = next(proposal.parameters()).device
    torch.manual_seed(tc.seed)  # the weights' initialisation
    model = SpanEnergy(config, spec).to(device)
    model.ebt.set_latent_stats(mean.to(device), std.to(device))
    with torch.no_grad():
        model.ebt.log_step_size.fill_(math.log(tc.step_size))

    train = _prepare(proposal, tokenizer, train_examples, model, encode, tc, True, progress)
    usable = [k for k, it in enumerate(train.items) if it.gold is not None]
    skipped = len(train.items) - len(usable)
    if skipped:
        log.info("span energy: %d of %d training questions have no gold span in a window", skipped, len(train.items))
    if not usable:
        raise DataError("train_span_energy: no training question has its answer as a span of its passage")
    val = _prepare(proposal, tokenizer, val_examples, model, encode, tc, False, progress) if val_examples else None
    prep_seconds = time.perf_counter() - t_prep

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]  # biases, norms, w, log step size
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr
    )
    sched = warmup_cosine(opt, min(tc.warmup_steps, tc.steps), tc.steps, tc.min_lr_ratio)
    gen = torch.Generator().manual_seed(tc.seed)  # batch order and the mcmc objective's draws
    mcmc_tc = tc.mcmc()
    model.train()

    from tqdm.auto import tqdm

    bar = tqdm(total=tc.steps, desc="span energy", unit="step", disable=not progress)
    losses: list[float] = []
    parts: dict[str, float] = {}
    per_epoch = math.ceil(len(usable) / tc.batch_size)
    order: list[int] = []
    stopped, step = "steps", 0
    t0 = time.perf_counter()
    try:
        while step < tc.steps:
            if tc.max_seconds is not None and time.perf_counter() - t0 >= tc.max_seconds:
                stopped = "time"
                break
            if step % per_epoch == 0:
                order = [usable[k] for k in torch.randperm(len(usable), generator=gen).tolist()]
            lo = (step % per_epoch) * tc.batch_size
            batch = [train.items[k] for k in order[lo : lo + tc.batch_size]]
            with autocast(device, tc.mixed_precision):
                loss, parts = _step_loss(model, batch, train.states, tc, mcmc_tc, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            sched.step()
            step += 1
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}", acc=f"{parts['acc']:.2f}")
            if callback is not None:
                callback(step, losses[-1], parts)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    model.eval()
    metrics: dict[str, Any] = {"prep_seconds": prep_seconds, "last": parts}
    if val is not None:
        has = [q for q, ex in enumerate(val_examples) if not ex.get("is_impossible", False)]
        refs = [list(val_examples[q].get("references") or [val_examples[q]["answer"]]) for q in has]
        scored = rank_energies(model, val.states.states, val.items, tc.batch_size)  # every val question, once
        answerable = PreparedQuestions([val.items[q] for q in has], val.states, [val.nulls[q] for q in has])
        metrics["val"] = evaluate_rankings(model, answerable, refs, tc.batch_size, [scored[q] for q in has])
        # The decision rule is a setting, chosen here on val and saved with the model's config.
        model.config.decision = metrics["val"]["decision"]["rule"]
        model.config.temperature = metrics["val"]["decision"]["temperature"]
        model.config.proposal_temperature = metrics["val"]["proposal_decision"]["temperature"]
        chosen = metrics["val"]["decision"]["top_k"]
        model.config.answer_top_k = chosen if chosen < model.config.top_k else None
        if len(has) < len(val_examples):  # SQuAD v2: unanswerable questions in val set the no-answer threshold
            metrics["val"]["no_answer"] = _calibrate_no_answer(model, val, scored, val_examples)
            model.config.no_answer_signal = metrics["val"]["no_answer"]["signal"]
            model.config.no_answer_threshold = metrics["val"]["no_answer"]["threshold"]
    return SpanTrainResult(
        model=model,
        steps=step,
        seconds=seconds,
        stopped=stopped,
        losses=losses,
        train_questions=len(usable),
        skipped=skipped,
        metrics=metrics,
    )


__all__ = ["PreparedQuestions", "SpanTrainConfig", "SpanTrainResult", "evaluate_rankings", "train_span_energy"]
