"""The reading-mode energy: candidate spans of a passage ranked (and refined) by an energy over their latents.

Each candidate span of a passage gets a latent y_span, the HVAE posterior mean of its text standardised with
the HVAE run's train-latent statistics (``EnergyTransformer.standardize``). The energy transformer reads the
proposal head's encoder states of the window ``[CLS] question [SEP] passage-piece [SEP]`` that holds the span,
once per window (a cached ``Condition``); only the latent's soft tokens are recomputed per candidate and per
refinement step. A candidate's total energy is a product of experts with the proposal head:

    E_total(x, span) = E_theta(x, y_span) - w * s(span),      s(span) = s_i + e_j   (start + end logit)

with w a learned scalar (init 1.0); ``use_proposal_score=False`` drops the second term (E_total = E_theta).
Lower is better, so the energy only has to learn where the proposal head is wrong.

The span's place in the passage is part of the condition (``span_states=True``): the anchor

    a(span) = Linear(LN([h_i; h_j]))       h_i, h_j: the window's encoder states at the span's first and last token

is added to every soft token (``Condition.anchor``). Without it E_theta sees what a span says but not where
it stands, and cannot tell apart two candidates with similar text (two dates of one passage). Refinement moves
the latent only; the anchor stays the one of the candidate it started from.

Window of a candidate: a span may lie in several overlapping windows; it reads the one where it is most
central (the largest distance, in tokens, from the span to the nearer end of the window's passage piece; ties
go to the earlier window), as Hugging Face's ``run_qa.py`` picks a token's "max context" window. Its proposal
score is the best ``s_i + e_j`` over all windows holding it, which is what ``proposal.top_k_spans`` reports.

Candidates: the proposal head's top K spans per question; in training also the gold span (added when the head
missed it) and hard negatives: spans overlapping the gold (its ends moved by up to 2 words) and other spans of
the gold's sentence. Candidates are word- or token-aligned passage substrings: ``context[start:end] == text``.

This module sits at the models layer (``qa_ebm.reading``): it imports models, data helpers and metrics only.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from qa_ebm.config import EBTConfig, config_from_dict
from qa_ebm.errors import CheckpointError, ConfigError
from qa_ebm.metrics.squad import normalize_answer
from qa_ebm.models.ebt import Condition, EBTSpec, EnergyTransformer
from qa_ebm.models.precision import autocast
from qa_ebm.models.weights import load_module, save_module
from qa_ebm.reading.decision import check_no_answer_signal, check_rule
from qa_ebm.reading.proposal import SpanProposalHead, top_k_spans
from qa_ebm.reading.spans import Span, candidate_spans, gold_span_index, word_offsets
from qa_ebm.reading.windows import Windows

log = logging.getLogger(__name__)

CONFIG_FILE = "span_energy.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "qa-ebm/span-energy"
FORMAT_VERSION = 2  # 2: the span anchor (span_states)

# A latent encoder: texts -> (raw HVAE latents (N, P, D), slot mask (N, P)); AnswerEncoder is one.
LatentEncoder = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]


# ----------------------------------------------------------------------------------------------- config


def _reading_ebt() -> EBTConfig:
    # The condition is a whole window of encoder states (reading.max_length tokens), not a short question.
    return EBTConfig(max_condition_tokens=256)


@dataclass
class SpanEnergyConfig:
    """The reading-mode energy: its transformer, the candidates it ranks and how refinement snaps.

    ``ebt.question_encoder`` is unused here: the condition is always the proposal head's encoder states.
    """

    ebt: EBTConfig = field(default_factory=_reading_ebt)
    top_k: int = 20  # candidates per question from the proposal head
    max_answer_tokens: int = 30  # longest proposed span, in encoder tokens (also the hard negatives' words)
    snap_neighbours: int = 5  # m: a refined latent snaps to the lowest E_total of its m nearest candidates
    use_proposal_score: bool = True  # E_total = E_theta - w * s_proposal; False: E_total = E_theta
    span_states: bool = True  # the anchor a(span) from the span's first and last token states joins the condition
    # How an answer is chosen from E_total (``qa_ebm.reading.decision``): set on val after training.
    decision: str = "lowest"  # "lowest" | "expected_f1"
    temperature: float = 1.0  # T of p(c | x) = softmax(-E_total / T), for "expected_f1"
    # SQuAD v2: "no answer" when the no-answer signal ("energy": the chosen candidate's E_total; "null_margin":
    # the proposal head's null score minus its best span score) is above the threshold; both set on val
    # (threshold None: always answer)
    no_answer_signal: str = "energy"
    no_answer_threshold: float | None = None
    # The control without the energy: the expected-F1 rule over the proposal scores alone, softmax(s / T_p),
    # T_p set on val like `temperature` (evaluate's proposal_expected_f1 row)
    proposal_temperature: float = 1.0
    # Candidates per question at answer time (the proposal head's best first), set on val with the rule and T:
    # fewer can score better and answer faster. None: top_k.
    answer_top_k: int | None = None
    proposal_weight_init: float = 1.0  # w at initialisation

    def validate(self) -> None:
        self.ebt.validate()
        for name in ("top_k", "max_answer_tokens", "snap_neighbours"):
            if getattr(self, name) < 1:
                raise ConfigError(f"span energy: {name} must be >= 1, got {getattr(self, name)}")
        if not math.isfinite(self.proposal_weight_init):
            raise ConfigError(f"span energy: proposal_weight_init must be finite, got {self.proposal_weight_init}")
        check_rule(self.decision, self.temperature)
        check_rule("expected_f1", self.proposal_temperature)
        if self.answer_top_k is not None and not 1 <= self.answer_top_k <= self.top_k:
            raise ConfigError(f"span energy: answer_top_k must be in [1, top_k={self.top_k}], got {self.answer_top_k}")
        check_no_answer_signal(self.no_answer_signal)
        if self.no_answer_threshold is not None and not math.isfinite(self.no_answer_threshold):
            raise ConfigError(
                f"span energy: no_answer_threshold must be finite or null, got {self.no_answer_threshold}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "span energy config") -> SpanEnergyConfig:
        """Strict: an unknown key or a wrong type raises ConfigError naming the valid keys; missing keys default."""
        return config_from_dict(cls, data, where)


# ------------------------------------------------------------------------------------------------ model


class SpanEnergies(NamedTuple):
    """Per candidate (C,): E_theta alone and E_total = E_theta - w * s_proposal (lower is better)."""

    energy: torch.Tensor
    total: torch.Tensor


class SpanEnergy(nn.Module):
    """The energy transformer over span latents plus the learned weight w of the proposal score."""

    def __init__(self, config: SpanEnergyConfig, spec: EBTSpec):
        super().__init__()
        config.validate()
        if spec.condition_dim is None:
            raise ConfigError("span energy: the condition is encoder token states; EBTSpec needs condition_dim")
        self.config, self.spec = config, spec
        self.ebt = EnergyTransformer(config.ebt, spec)
        self.proposal_weight = nn.Parameter(torch.tensor(float(config.proposal_weight_init)))  # w
        dc = spec.condition_dim
        self.anchor = (
            nn.Sequential(nn.LayerNorm(2 * dc), nn.Linear(2 * dc, config.ebt.d_model)) if config.span_states else None
        )

    def condition(self, states: torch.Tensor, mask: torch.Tensor) -> Condition:
        """Window states (U, T, Dc) (the fp16 cache is cast to the model's dtype) and mask (U, T) -> cached keys."""
        dtype = self.proposal_weight.dtype
        return self.ebt.condition(states.to(dtype), mask)

    def candidate_condition(self, cond: Condition, rows: torch.Tensor, span_states: torch.Tensor) -> Condition:
        """Each candidate's condition: its window's row of `cond` (rows (C,)), anchored at its span when
        ``span_states`` is on; span_states (C, 2, Dc) are the window states at the span's first and last token."""
        cond = cond.select(rows)
        if self.anchor is None:
            return cond
        return cond.with_anchor(self.anchor(span_states.flatten(1).to(self.proposal_weight.dtype)))

    def energies(
        self, cond: Condition, y: torch.Tensor, slot_mask: torch.Tensor, proposal_score: torch.Tensor
    ) -> SpanEnergies:
        """cond: one row per candidate; y (C, P, D) standardised; slot_mask (C, P); proposal_score (C,)."""
        e = self.ebt.energy(cond, y, slot_mask)  # (C,)
        if not self.config.use_proposal_score:
            return SpanEnergies(e, e)
        return SpanEnergies(e, e - self.proposal_weight * proposal_score.to(e.dtype))

    def forward(
        self,
        states: torch.Tensor,
        mask: torch.Tensor,
        y: torch.Tensor,
        slot_mask: torch.Tensor,
        proposal_score: torch.Tensor,
        span_states: torch.Tensor,
    ) -> SpanEnergies:
        """Uncached: one window (row of `states`) per candidate."""
        rows = torch.arange(len(states), device=states.device)
        cond = self.candidate_condition(self.condition(states, mask), rows, span_states)
        return self.energies(cond, y, slot_mask, proposal_score)

    # ---------------------------------------------------------------------------------- persistence

    def save_pretrained(self, directory: str | Path) -> None:
        """``span_energy.json`` (format, version, config, spec) + ``model.safetensors``."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_module(self, d / WEIGHTS_FILE)
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "config": self.config.to_dict(), "spec": asdict(self.spec)}
        (d / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> SpanEnergy:
        """Load what :meth:`save_pretrained` wrote; every problem is a CheckpointError naming the file."""
        d = Path(directory)
        for need in (CONFIG_FILE, WEIGHTS_FILE):
            if not (d / need).is_file():
                raise CheckpointError(f"{d}: not a span energy directory (missing {need})")
        where = str(d / CONFIG_FILE)
        try:
            meta = json.loads((d / CONFIG_FILE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{where}: not valid JSON ({e})") from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(f"{where}: not a span energy config (format should be {FORMAT!r})")
        if meta.get("version") != FORMAT_VERSION:
            raise CheckpointError(f"{where}: format version {meta.get('version')!r}; this code reads {FORMAT_VERSION}")
        if set(meta) != {"format", "version", "config", "spec"}:
            raise CheckpointError(f"{where}: top-level keys must be format, version, config, spec; got {sorted(meta)}")
        try:
            config = SpanEnergyConfig.from_dict(meta["config"], where=where)
            spec = EBTSpec(**meta["spec"])
            model = cls(config, spec)
        except (ConfigError, TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: {e}") from e
        load_module(model, d / WEIGHTS_FILE)
        return model


# ------------------------------------------------------------------------------------ window states


@dataclass
class WindowEncoding:
    """The proposal head's reading of every window: encoder states (the energy's condition) and span logits."""

    states: list[torch.Tensor | None]  # (W,) of (T_w, Dc) on CPU, in the cache dtype; None once dropped
    start_logits: torch.Tensor  # (W, T) float32, T = the longest window
    end_logits: torch.Tensor  # (W, T)

    def drop_unused(self, used: set[int]) -> None:
        """Free the states of windows no candidate reads (a SQuAD-sized cache is gigabytes)."""
        self.states = [s if w in used else None for w, s in enumerate(self.states)]


@torch.no_grad()
def encode_windows(
    head: SpanProposalHead,
    windows: Windows,
    batch_size: int = 32,
    dtype: torch.dtype = torch.float16,
    progress: bool = False,
    mixed_precision: str = "no",
) -> WindowEncoding:
    """One encoder pass per window gives both the condition states and the proposal logits.

    `dtype`: how the states are kept; `mixed_precision` ``bf16``: the encoder runs under bfloat16 autocast.

    ``SpanProposalHead.forward`` returns logits only, so the encoder and ``qa_outputs`` are called here
    directly; logits of non-passage tokens are left unmasked (no passage span ever reads them).
    """
    from tqdm.auto import tqdm

    was_training = head.training
    head.eval()
    device = next(head.parameters()).device
    W = len(windows)
    T = max((len(ids) for ids in windows.input_ids), default=1)
    start, end = torch.zeros(W, T), torch.zeros(W, T)
    states: list[torch.Tensor | None] = [None] * W
    order = sorted(range(W), key=lambda w: len(windows.input_ids[w]))  # similar lengths: less padding
    try:
        for lo in tqdm(range(0, W, batch_size), desc="window states", unit="batch", disable=not progress):
            idx = order[lo : lo + batch_size]
            batch = {k: v.to(device) for k, v in windows.collate(idx).items()}
            kwargs = {"token_type_ids": batch["token_type_ids"]} if "token_type_ids" in batch else {}
            with autocast(device, mixed_precision):
                h = head.encoder(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs
                ).last_hidden_state  # (b, t, Dc)
                s, e = head.qa_outputs(h).float().unbind(-1)  # (b, t) each
            t = h.shape[1]
            start[idx, :t], end[idx, :t] = s.cpu(), e.cpu()
            for i, w in enumerate(idx):
                states[w] = h[i, : len(windows.input_ids[w])].to("cpu", dtype)
    finally:
        head.train(was_training)
    return WindowEncoding(states, start, end)


# ---------------------------------------------------------------------------------------- candidates


@dataclass(frozen=True)
class Candidate:
    """A candidate answer: ``context[start:end] == text``, read in window `window` (an index into the Windows)."""

    start: int
    end: int
    text: str
    window: int
    score: float  # s_proposal: the best s_i + e_j over the windows holding the span
    token_start: int  # the span's first and last token in `window`
    token_end: int


class Location(NamedTuple):
    """Where a span is read: its most central window, its first and last token there, its best proposal score."""

    window: int
    score: float
    token_start: int
    token_end: int


def locate(windows: Windows, enc: WindowEncoding, example: int, start: int, end: int) -> Location | None:
    """Where the span is read (see :class:`Location`), or None when no window holds it."""
    best_w, best_central, best_score, best_tokens = -1, -1, -math.inf, (0, 0)
    for w in windows.windows_of(example):
        tokens = windows.token_span(w, start, end)
        if tokens is None:
            continue
        i, j = tokens
        score = float(enc.start_logits[w, i] + enc.end_logits[w, j])
        best_score = max(best_score, score)
        passage = windows.passage_mask(w).nonzero()[0]
        central = min(i - int(passage[0]), int(passage[-1]) - j)
        if central > best_central:  # strict: ties keep the earlier window
            best_w, best_central, best_tokens = w, central, (i, j)
    return None if best_w < 0 else Location(best_w, best_score, *best_tokens)


def null_scores(windows: Windows, enc: WindowEncoding) -> list[float]:
    """Per question, s_null = min over its windows of s_CLS + e_CLS: the proposal head's score for "the answer is
    in none of the windows" (the window most sure it holds an answer decides, as Hugging Face's run_qa)."""
    cls = torch.tensor(windows.cls_index, dtype=torch.long).unsqueeze(1)  # (W, 1)
    per_window = (enc.start_logits.gather(1, cls) + enc.end_logits.gather(1, cls)).squeeze(1).tolist()
    n = len(windows.contexts)
    return [min((per_window[w] for w in windows.windows_of(b)), default=math.inf) for b in range(n)]


def propose_candidates(
    windows: Windows, enc: WindowEncoding, top_k: int, max_answer_tokens: int
) -> list[list[Candidate]]:
    """The proposal head's top-K spans per question, best proposal score first."""
    preds = top_k_spans(windows, enc.start_logits, enc.end_logits, top_k=top_k, max_answer_tokens=max_answer_tokens)
    out = []
    for b, ps in enumerate(preds):
        cands = []
        for p in ps:
            where = locate(windows, enc, b, p.start, p.end)
            if where is not None:  # always, for a span top_k_spans found in a window
                cands.append(Candidate(p.start, p.end, p.text, *where))
        out.append(sorted(cands, key=lambda c: -c.score))
    return out


def gold_span(context: str, answer_start: int, answer_text: str) -> Span | None:
    """The word-aligned span of a SQuAD answer (see ``spans.gold_span_index``), or None when there is none.

    Fast path: the spans made of the words overlapping the answer's characters, accepted when the one chosen
    has the answer's (normalised) text; otherwise (a wrong ``answer_start``, an answer inside a word) every span
    of the passage, by gold_span_index's rules.
    """
    if not answer_text.strip():
        return None
    words = word_offsets(context)
    a_end = answer_start + len(answer_text)
    near = [k for k, (s, e) in enumerate(words) if s < a_end and e > answer_start]
    if near:
        pool = [
            Span(words[i][0], words[j][1], context[words[i][0] : words[j][1]])
            for i in range(near[0], near[-1] + 1)
            for j in range(i, near[-1] + 1)
        ]
        k = gold_span_index(pool, answer_start, answer_text)
        if k is not None and normalize_answer(pool[k].text) == normalize_answer(answer_text):
            return pool[k]
    n_words = max(len(answer_text.split()), 1)
    spans = candidate_spans(context, max_answer_words=max(30, n_words))
    k = gold_span_index(spans, answer_start, answer_text)
    return None if k is None else spans[k]


def _sentence_bounds(context: str, words: list[tuple[int, int]], k: int) -> tuple[int, int]:
    """First and last word index of the sentence holding word k: a sentence ends at a word followed by . ! ?"""

    def ends_sentence(i: int) -> bool:
        tail = context[words[i][1] : words[i + 1][0] if i + 1 < len(words) else len(context)]
        return any(ch in ".!?" for ch in tail)

    lo = k
    while lo > 0 and not ends_sentence(lo - 1):
        lo -= 1
    hi = k
    while hi < len(words) - 1 and not ends_sentence(hi):
        hi += 1
    return lo, hi


def hard_negative_spans(context: str, gold: Span, n: int, rng: random.Random, max_words: int = 30) -> list[Span]:
    """Up to n spans that are nearly the gold: about half overlap it (its first or last word moved by up to
    2 words), the rest are other spans of its sentence (no overlap, at most gold length + 2 words)."""
    words = word_offsets(context)
    starts = {s: k for k, (s, _) in enumerate(words)}
    ends = {e: k for k, (_, e) in enumerate(words)}
    if n < 1 or gold.start not in starts or gold.end not in ends:
        return []
    a, b = starts[gold.start], ends[gold.end]

    def span(i: int, j: int) -> Span:
        return Span(words[i][0], words[j][1], context[words[i][0] : words[j][1]])

    overlap = [
        (i, j)
        for i in range(max(0, a - 2), min(b, a + 2) + 1)
        for j in range(max(i, a, b - 2), min(len(words) - 1, b + 2) + 1)
        if (i, j) != (a, b) and j - i < max_words
    ]
    lo, hi = _sentence_bounds(context, words, a)
    longest = min(max_words, b - a + 3)
    sentence = [
        (i, j)
        for i in range(lo, hi + 1)
        for j in range(i, min(hi, i + longest - 1) + 1)
        if j < a or i > b  # no overlap with the gold
    ]
    k_overlap = min(len(overlap), max(n - len(sentence), (n + 1) // 2))
    picked = rng.sample(overlap, k_overlap)
    picked += rng.sample(sentence, min(len(sentence), n - k_overlap))
    return [span(i, j) for i, j in picked]


def training_candidates(
    windows: Windows,
    enc: WindowEncoding,
    answers: Sequence[tuple[int, str]],
    top_k: int,
    max_answer_tokens: int,
    hard_negatives: int,
    rng: random.Random,
) -> tuple[list[list[Candidate]], list[int | None]]:
    """Per question: its top-K proposals, plus the gold span when the head missed it, plus hard negatives;
    and the gold's index among them (None when the answer is no span of any kept window). Spans with the
    gold's text at other offsets are dropped: they are the same answer, not negatives.

    `answers` are per question ``(answer_start, answer_text)`` as in SQuAD.
    """
    proposals = propose_candidates(windows, enc, top_k, max_answer_tokens)
    out, golds = [], []
    for b, cands in enumerate(proposals):
        context = windows.contexts[b]
        gold = gold_span(context, *answers[b])
        where = None if gold is None else locate(windows, enc, b, gold.start, gold.end)
        if gold is None or where is None:
            out.append(cands)
            golds.append(None)
            continue
        # Another occurrence of the gold's text is the same answer (same latent; SQuAD scores text), so it is
        # no negative: keep only the gold occurrence of that text.
        cands = [c for c in cands if c.text != gold.text or (c.start, c.end) == (gold.start, gold.end)]
        seen = {(c.start, c.end): k for k, c in enumerate(cands)}
        if (gold.start, gold.end) not in seen:
            seen[(gold.start, gold.end)] = len(cands)
            cands.append(Candidate(gold.start, gold.end, gold.text, *where))
        gold_index = seen[(gold.start, gold.end)]
        for s in hard_negative_spans(context, gold, hard_negatives, rng, max_words=max_answer_tokens):
            fresh = (s.start, s.end) not in seen and s.text != gold.text
            neg = locate(windows, enc, b, s.start, s.end) if fresh else None
            if neg is not None:
                seen[(s.start, s.end)] = len(cands)
                cands.append(Candidate(s.start, s.end, s.text, *neg))
        out.append(cands)
        golds.append(gold_index)
    return out, golds


# ------------------------------------------------------------------------------------------- latents


@torch.no_grad()
def encode_candidates(
    encode: LatentEncoder, model: SpanEnergy, texts: Sequence[str], batch_size: int = 256, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> standardised latents (N, P, D), zero on padded slots, and slot masks (N, P).

    Equal texts have equal latents, so each distinct text is encoded once.
    """
    from tqdm.auto import tqdm

    unique = list(dict.fromkeys(texts))
    ys, masks = [], []
    for lo in tqdm(range(0, len(unique), batch_size), desc="candidate latents", unit="batch", disable=not progress):
        y, mask = encode(unique[lo : lo + batch_size])
        ys.append(y.float())
        masks.append(mask.bool())
    P, D = model.spec.num_slots, model.spec.latent_dim
    if not unique:
        return torch.zeros(0, P, D), torch.zeros(0, P, dtype=torch.bool)
    y, mask = torch.cat(ys), torch.cat(masks)
    if y.shape[1:] != (P, D):
        raise CheckpointError(
            f"the HVAE gives latents of shape {tuple(y.shape[1:])} but the energy was built for ({P}, {D})"
        )
    stats = model.ebt.latent_mean
    y = model.ebt.standardize(y.to(stats.device)).cpu() * mask.unsqueeze(-1)  # padded slots stay 0
    row = {t: k for k, t in enumerate(unique)}
    index = torch.tensor([row[t] for t in texts], dtype=torch.long)
    return y[index], mask[index]


@dataclass
class QuestionCandidates:
    """One question's candidates with their latents; `gold` indexes the gold candidate in training."""

    candidates: list[Candidate]
    y: torch.Tensor  # (n, P, D) standardised
    slot_mask: torch.Tensor  # (n, P) bool
    gold: int | None = None
    gold_f1: torch.Tensor | None = None  # (n,) in training: each candidate's token F1 against the gold's text

    def __len__(self) -> int:
        return len(self.candidates)


def attach_latents(
    encode: LatentEncoder,
    model: SpanEnergy,
    candidates: Sequence[list[Candidate]],
    golds: Sequence[int | None] | None = None,
    batch_size: int = 256,
    progress: bool = False,
) -> list[QuestionCandidates]:
    """Latents for every question's candidates, encoded in one batched pass."""
    texts = [c.text for cands in candidates for c in cands]
    y, mask = encode_candidates(encode, model, texts, batch_size, progress)
    out, lo = [], 0
    for q, cands in enumerate(candidates):
        hi = lo + len(cands)
        out.append(QuestionCandidates(list(cands), y[lo:hi], mask[lo:hi], None if golds is None else golds[q]))
        lo = hi
    return out


# ----------------------------------------------------------------------------------------- scoring


@dataclass
class CandidateInputs:
    """B questions' candidates flattened to C rows, and the U distinct windows they read."""

    states: torch.Tensor  # (U, T, Dc) padded window states
    state_mask: torch.Tensor  # (U, T) bool
    rows: torch.Tensor  # (C,) long: each candidate's row in `states`
    y: torch.Tensor  # (C, P, D)
    slot_mask: torch.Tensor  # (C, P)
    score: torch.Tensor  # (C,) proposal scores
    sizes: torch.Tensor  # (B,) candidates per question
    span_states: torch.Tensor  # (C, 2, Dc) window states at each candidate's first and last token

    @property
    def ptr(self) -> torch.Tensor:
        """(B + 1,): candidates of question b are rows ptr[b]:ptr[b+1]."""
        return torch.cat([self.sizes.new_zeros(1), self.sizes.cumsum(0)])


def collate_candidates(
    items: Sequence[QuestionCandidates], states: Sequence[torch.Tensor | None], device: torch.device | str = "cpu"
) -> CandidateInputs:
    """Batch the candidates of `items`; `states` are the window states indexed by ``Candidate.window``."""
    windows = sorted({c.window for it in items for c in it.candidates})
    row = {w: k for k, w in enumerate(windows)}
    parts = [states[w] for w in windows]
    if any(p is None for p in parts):
        raise ValueError("a candidate reads a window whose states were dropped")
    T = max((len(p) for p in parts), default=1)
    Dc = parts[0].shape[-1] if parts else 1
    padded = torch.zeros(len(parts), T, Dc, dtype=parts[0].dtype if parts else torch.float32)
    mask = torch.zeros(len(parts), T, dtype=torch.bool)
    for k, p in enumerate(parts):
        padded[k, : len(p)] = p
        mask[k, : len(p)] = True
    cands = [c for it in items for c in it.candidates]
    P, D = (items[0].y.shape[1], items[0].y.shape[2]) if items else (1, 1)
    rows = torch.tensor([row[c.window] for c in cands], dtype=torch.long)
    tokens = torch.tensor([(c.token_start, c.token_end) for c in cands], dtype=torch.long).view(-1, 2)
    span_states = padded[rows[:, None], tokens]  # (C, 2, Dc)
    return CandidateInputs(
        states=padded.to(device),
        state_mask=mask.to(device),
        rows=rows.to(device),
        y=torch.cat([it.y for it in items]).to(device) if cands else torch.zeros(0, P, D, device=device),
        slot_mask=torch.cat([it.slot_mask for it in items]).to(device)
        if cands
        else torch.zeros(0, P, dtype=torch.bool, device=device),
        score=torch.tensor([c.score for c in cands], dtype=torch.float32, device=device),
        sizes=torch.tensor([len(it) for it in items], dtype=torch.long, device=device),
        span_states=span_states.to(device),
    )


def pad_per_question(values: torch.Tensor, sizes: torch.Tensor, fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-candidate values (C,) -> (B, Cmax) with `fill` beyond each question's candidates, and the valid mask."""
    B = len(sizes)
    cmax = int(sizes.max()) if B else 0
    valid = torch.arange(cmax, device=sizes.device)[None, :] < sizes[:, None]  # (B, Cmax)
    out = values.new_full((B, cmax), fill)
    out[valid] = values
    return out, valid


@torch.no_grad()
def rank_energies(
    model: SpanEnergy,
    states: Sequence[torch.Tensor | None],
    items: Sequence[QuestionCandidates],
    batch_size: int = 32,
) -> list[SpanEnergies]:
    """E_theta and E_total of every candidate, per question (each (n_q,)), batched by `batch_size` questions."""
    device = model.proposal_weight.device
    out: list[SpanEnergies] = []
    for lo in range(0, len(items), batch_size):
        chunk = items[lo : lo + batch_size]
        inputs = collate_candidates(chunk, states, device)
        if len(inputs.rows) == 0:
            out += [SpanEnergies(torch.zeros(0), torch.zeros(0)) for _ in chunk]
            continue
        cond = model.condition(inputs.states, inputs.state_mask)
        cond = model.candidate_condition(cond, inputs.rows, inputs.span_states)
        e = model.energies(cond, inputs.y, inputs.slot_mask, inputs.score)
        sizes = inputs.sizes.tolist()
        for a, b in zip(e.energy.split(sizes), e.total.split(sizes), strict=True):
            out.append(SpanEnergies(a.cpu(), b.cpu()))
    return out


__all__ = [
    "Candidate",
    "CandidateInputs",
    "Location",
    "QuestionCandidates",
    "SpanEnergies",
    "SpanEnergy",
    "SpanEnergyConfig",
    "WindowEncoding",
    "attach_latents",
    "collate_candidates",
    "encode_candidates",
    "encode_windows",
    "gold_span",
    "hard_negative_spans",
    "locate",
    "null_scores",
    "pad_per_question",
    "propose_candidates",
    "rank_energies",
    "training_candidates",
]
