"""The reading pipeline: answer a question about a passage with a span of it (or with decoded text).

Components, each an attribute and each saved by its own ``save_pretrained`` (diffusers' pipeline pattern):
the proposal head and its fast tokenizer (windows, encoder states, candidate spans), the AnswerEncoder (the
HVAE, its tokenizer and sentence splitter: span text -> latent, and latent -> text in generate mode), the
SpanEnergy, and the sampler (a config: swapping it never touches a model). For each batch of questions:

    encoding     windows [CLS] q [SEP] passage-piece [SEP], one encoder pass: token states + span logits
    candidates   the proposal head's top K spans, each with its most central window, and their HVAE latents
    energy       the condition of each window computed once; E_theta and E_total of every candidate
    refinement   (refine / generate) gradient descent on E_theta from the best proposal's latent (or noise)
                 with that window's cached condition, then snap or decode

Modes of ``__call__`` (the ``energy`` field of an answer is what the mode ranks by; lower is better):

    proposal   the proposal head alone: best s_i + e_j (energy = -score); with decision="expected_f1", the
               expected-F1 rule over softmax(s / T_p) (the control row: the rule without the energy)
    energy     the candidate chosen by E_theta(x, y_span)
    rank       the candidate chosen by E_total = E_theta - w * s_proposal; "no answer" (text "", start = end =
               None) when the energy config's no-answer signal (its E_total, or the proposal head's null margin)
               is above its no_answer_threshold (SQuAD v2, both set on val)
    refine     y <- sampler(E_theta, y0) for `steps` steps; snap: among the m candidates nearest to y
               (L2 in the standardised latent space) the lowest E_total (energy = that E_total)
    generate   the refined latent decoded by the HVAE decoder (start / end None; energy = E_theta(y))

"Chosen by" is the decision rule (``qa_ebm.reading.decision``): the lowest energy, or the highest expected F1
under softmax(-E / T); the span energy's config carries the rule chosen on val, and a call can override it.
Span modes answer verbatim: ``context[start:end] == text``. Seconds per stage accumulate in ``timings``
across calls (``reset_timings()`` clears them), so a benchmark can report each stage's share.

Directory layout (``save_pretrained`` / ``from_pretrained``)::

    reading_pipeline.json   format, version, windowing settings, sampler config, seed
    proposal/               SpanProposalHead + tokenizer (encoder/)
    energy/                 SpanEnergy
    model/ tokenizer/ punkt/   the HVAE run parts AnswerEncoder.from_run reads
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from qa_ebm.errors import CheckpointError, ConfigError, DataError
from qa_ebm.models.answer_encoder import AnswerEncoder
from qa_ebm.models.precision import autocast, check_precision
from qa_ebm.pipeline.directory import read_meta
from qa_ebm.pipeline.sampling import build_from_config
from qa_ebm.reading.decision import check_rule, decide
from qa_ebm.reading.energy import (
    Candidate,
    SpanEnergy,
    attach_latents,
    collate_candidates,
    encode_windows,
    null_scores,
    propose_candidates,
)
from qa_ebm.reading.proposal import SpanProposalHead, load_proposal_head
from qa_ebm.reading.windows import check_passage, make_windows

PIPELINE_FILE = "reading_pipeline.json"
FORMAT = "qa-ebm/reading-pipeline"
FORMAT_VERSION = 1
PROPOSAL_DIR = "proposal"
ENERGY_DIR = "energy"
HVAE_PARTS = ("model", "tokenizer", "punkt")
MODES = ("proposal", "energy", "rank", "refine", "generate")
INITS = ("proposal", "noise")
STAGES = ("encoding", "candidates", "energy", "refinement", "decoding")
WINDOW_KEYS = ("max_length", "stride", "max_question_tokens", "max_windows")
HEAD_SETTING = -1  # max_windows: take the proposal head's (None already means "no cap")


@dataclass
class ReadingAnswer:
    """One answer. Span modes: ``context[start:end] == text``; generate mode: start = end = None."""

    text: str
    start: int | None
    end: int | None
    energy: float  # what the mode ranked by (see the module docstring); lower is better
    steps: int = 0  # refinement steps used; 0 for the ranking modes
    proposal_score: float | None = None  # s_i + e_j of the span; None in generate mode
    runners_up: list[dict[str, Any]] = field(default_factory=list)  # next best: {text, start, end, energy}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_sampler(energy: SpanEnergy, max_steps: int = 20) -> dict[str, Any]:
    """Gradient descent with the step size the mcmc objective learned; a step is kept only if E drops."""
    return {"name": "gd", "step_size": energy.ebt.step_size, "max_steps": max_steps, "accept_if_lower": True}


class ReadingPipeline:
    """Question + passage -> :class:`ReadingAnswer`; see the module docstring."""

    def __init__(
        self,
        proposal: SpanProposalHead,
        tokenizer: Any,
        answer_encoder: AnswerEncoder,
        energy: SpanEnergy,
        sampler: Mapping[str, Any] | None = None,
        *,
        max_length: int | None = None,
        stride: int | None = None,
        max_question_tokens: int | None = None,
        max_windows: int | None = HEAD_SETTING,
        seed: int = 0,
        mixed_precision: str = "no",
    ):
        """`sampler`: ``{"name": "gd" | "langevin" | "ired", **its options}`` (default :func:`default_sampler`).
        Windowing settings default to the proposal head's (``max_windows=None``: no cap). `seed` seeds the
        noise of ``init="noise"`` afresh at every call, so answers do not depend on earlier calls.
        `mixed_precision` ``bf16``: the two encoders (window states, candidate latents) run under bfloat16
        autocast; energies, refinement and decisions stay float32 (saved with the pipeline; a loader or a
        caller may change it: ``pipe.mixed_precision = "no"``)."""
        pc = proposal.config
        self.proposal, self.tokenizer = proposal.eval(), tokenizer
        self.answer_encoder, self.energy = answer_encoder, energy.eval()
        self.max_length = pc.max_length if max_length is None else max_length
        self.stride = pc.stride if stride is None else stride
        self.max_question_tokens = pc.max_question_tokens if max_question_tokens is None else max_question_tokens
        self.max_windows = pc.max_windows if max_windows == HEAD_SETTING else max_windows
        self.seed = seed
        check_precision(mixed_precision, "reading pipeline")
        self.mixed_precision = mixed_precision
        # Candidates per question at answer time (the proposal head's best first): the count chosen on val
        # (answer_top_k), else the top_k the energy trained on.
        self.top_k = energy.config.answer_top_k or energy.config.top_k
        self.state_dtype = torch.float16  # window states rounded as the training cache rounded them
        self.sampler_config = dict(sampler) if sampler is not None else default_sampler(energy)
        self.timings: dict[str, float] = dict.fromkeys(STAGES, 0.0)
        self._check()

    def _check(self) -> None:
        spec, hvae = self.energy.spec, self.answer_encoder.hvae
        if spec.condition_dim != self.proposal.config.hidden_size:
            raise ConfigError(
                f"reading pipeline: the energy reads {spec.condition_dim}-wide states but the proposal head's "
                f"encoder gives {self.proposal.config.hidden_size}"
            )
        if (spec.latent_dim, spec.num_slots) != (hvae.cfg.latent_dim, hvae.spec.max_sentences + 1):
            raise ConfigError(
                f"reading pipeline: the energy was built for latents ({spec.num_slots}, {spec.latent_dim}) but the "
                f"HVAE gives ({hvae.spec.max_sentences + 1}, {hvae.cfg.latent_dim})"
            )
        if self.max_length > self.energy.config.ebt.max_condition_tokens:
            raise ConfigError(
                f"reading pipeline: windows of {self.max_length} tokens exceed the energy's "
                f"ebt.max_condition_tokens={self.energy.config.ebt.max_condition_tokens}"
            )
        try:
            build_from_config(self.sampler_config)  # validates
        except ConfigError as e:
            raise ConfigError(f"reading pipeline: {e}") from e

    @property
    def device(self) -> torch.device:
        return next(self.proposal.parameters()).device

    def to(self, device: torch.device | str) -> ReadingPipeline:
        self.proposal.to(device)
        self.energy.to(device)
        self.answer_encoder.hvae.to(device)
        return self

    def reset_timings(self) -> None:
        self.timings = dict.fromkeys(STAGES, 0.0)

    def _tick(self, stage: str, since: float) -> float:
        now = time.perf_counter()
        self.timings[stage] += now - since
        return now

    def _sampler(self, steps: int | None):
        return build_from_config(self.sampler_config, steps)

    # --------------------------------------------------------------------------------------------- answering

    def __call__(
        self,
        questions: Sequence[str] | str,
        contexts: Sequence[str] | str,
        mode: str = "rank",
        steps: int | None = None,
        batch_size: int = 32,
        top_n: int = 3,
        init: str = "proposal",
        decision: str | None = None,
        temperature: float | None = None,
        abstain: bool = True,
    ) -> list[ReadingAnswer]:
        """One answer per (question, passage); `top_n` - 1 runners-up each. `steps` (refine / generate): the
        sampler's step cap for this call (None: its configured cap). `init`: refinement starts from the best
        proposal's latent ("proposal") or from N(0, I) noise ("noise", seeded with ``self.seed``).
        `decision` / `temperature`: the decision rule, None for the energy config's (energy and rank modes);
        in proposal mode over the proposal scores, None for the head's best span (T: the config's T_p).
        `abstain=False`: rank mode always answers with a span, whatever the no-answer threshold.

        Raises DataError for a non-string question and for an empty, whitespace-only or binary passage,
        naming the question's index.
        """
        if isinstance(questions, str) and isinstance(contexts, str):
            questions, contexts = [questions], [contexts]
        if mode not in MODES:
            raise ConfigError(f"reading pipeline: unknown mode {mode!r}; valid: {', '.join(MODES)}")
        if init not in INITS:
            raise ConfigError(f"reading pipeline: unknown init {init!r}; valid: {', '.join(INITS)}")
        if self.top_k < 1:
            raise ConfigError(f"reading pipeline: top_k must be >= 1, got {self.top_k}")
        if (steps is not None and steps < 0) or batch_size < 1 or top_n < 1:
            raise ConfigError(
                f"reading pipeline: need steps >= 0, batch_size >= 1, top_n >= 1 (got {steps}, {batch_size}, {top_n})"
            )
        cfg = self.energy.config
        if mode == "proposal":  # the head's best span, unless a rule is asked for (then T_p set on val)
            rule = ("lowest", 1.0) if decision is None else (decision, temperature or cfg.proposal_temperature)
        else:
            rule = (cfg.decision if decision is None else decision, temperature or cfg.temperature)
        check_rule(*rule)
        if len(questions) != len(contexts):
            raise DataError(f"{len(questions)} questions but {len(contexts)} passages")
        for i, (q, c) in enumerate(zip(questions, contexts, strict=True)):
            if not isinstance(q, str):
                raise DataError(f"question {i}: expected a string, got {type(q).__name__}")
            check_passage(c, where=f"question {i}")
        generator = torch.Generator(device=self.device).manual_seed(self.seed)
        answers: list[ReadingAnswer] = []
        with torch.no_grad():
            for lo in range(0, len(questions), batch_size):
                hi = lo + batch_size
                answers += self._answer(
                    list(questions[lo:hi]),
                    list(contexts[lo:hi]),
                    lo,
                    mode,
                    steps,
                    batch_size,
                    top_n,
                    init,
                    rule,
                    self.energy.config.no_answer_threshold if abstain else None,
                    generator,
                )
        return answers

    def _answer(
        self,
        questions: list[str],
        contexts: list[str],
        offset: int,
        mode: str,
        steps: int | None,
        batch_size: int,
        top_n: int,
        init: str,
        rule: tuple[str, float],
        threshold: float | None,
        generator: torch.Generator,
    ) -> list[ReadingAnswer]:
        cfg = self.energy.config
        t = time.perf_counter()
        windows = make_windows(
            self.tokenizer,
            questions,
            contexts,
            self.max_length,
            self.stride,
            self.max_question_tokens,
            self.max_windows,
        )
        enc = encode_windows(self.proposal, windows, batch_size, self.state_dtype, mixed_precision=self.mixed_precision)
        t = self._tick("encoding", t)
        cands = propose_candidates(windows, enc, self.top_k, cfg.max_answer_tokens)
        for b, cs in enumerate(cands):
            if not cs:
                raise DataError(f"question {offset + b}: the passage has no candidate span")
        if mode == "proposal":
            self._tick("candidates", t)
            return [_ranked(cs, torch.tensor([-c.score for c in cs]), top_n, *rule) for cs in cands]
        with autocast(self.device, self.mixed_precision):
            items = attach_latents(self.answer_encoder, self.energy, cands)
        t = self._tick("candidates", t)

        inputs = collate_candidates(items, enc.states, self.device)
        cond = self.energy.condition(inputs.states, inputs.state_mask)  # each window's keys/values, once
        cond = self.energy.candidate_condition(cond, inputs.rows, inputs.span_states)  # one row per candidate
        e = self.energy.energies(cond, inputs.y, inputs.slot_mask, inputs.score)
        ptr = inputs.ptr.tolist()
        e_theta = [e.energy[ptr[b] : ptr[b + 1]].cpu() for b in range(len(cands))]
        e_total = [e.total[ptr[b] : ptr[b + 1]].cpu() for b in range(len(cands))]
        t = self._tick("energy", t)
        if mode == "energy":
            return [_ranked(cs, en, top_n, *rule) for cs, en in zip(cands, e_theta, strict=True)]
        if mode == "rank":
            answers = [_ranked(cs, en, top_n, *rule) for cs, en in zip(cands, e_total, strict=True)]
            if cfg.no_answer_signal == "null_margin":
                signal = [n - cs[0].score for n, cs in zip(null_scores(windows, enc), cands, strict=True)]
            else:
                signal = [a.energy for a in answers]
            return [_abstain_above(a, s, threshold) for a, s in zip(answers, signal, strict=True)]

        # Refinement on E_theta from the best proposal's latent (candidates are sorted by proposal score, so
        # it is each question's first row), reading that candidate's window through the cached condition.
        best = inputs.ptr[:-1]  # (B,)
        cond_best = cond.select(best)
        mask = inputs.slot_mask[best]  # (B, P): noise starts get the best proposal's sentence count too
        y0 = inputs.y[best]
        if init == "noise":
            y0 = torch.randn(y0.shape, generator=generator, device=generator.device) * mask.unsqueeze(-1)
        if steps == 0:
            y, used, e_refined = y0, [0] * len(cands), self.energy.ebt.energy(cond_best, y0, mask)
        else:

            def energy_fn(y: torch.Tensor, k: torch.Tensor | None) -> torch.Tensor:
                return self.energy.ebt.energy(cond_best, y, mask, k)

            result = self._sampler(steps).sample(energy_fn, y0, mask, generator=generator)
            y, used, e_refined = result.y, result.steps.tolist(), result.energy
        t = self._tick("refinement", t)
        if mode == "generate":
            texts = self._decode(y, mask)
            self._tick("decoding", t)
            return [
                ReadingAnswer(text, None, None, float(en), int(n))
                for text, en, n in zip(texts, e_refined.tolist(), used, strict=True)
            ]
        answers = []
        for b, cs in enumerate(cands):
            # Snap: the m candidates nearest the refined latent, then the lowest E_total among them.
            dist = (inputs.y[ptr[b] : ptr[b + 1]] - y[b]).pow(2).sum((1, 2)).cpu()  # (n,)
            near = dist.topk(min(cfg.snap_neighbours, len(cs)), largest=False).indices.tolist()
            answer = _ranked([cs[k] for k in near], e_total[b][near], top_n)
            answer.steps = int(used[b])
            answers.append(answer)
        self._tick("refinement", t)
        return answers

    def _decode(self, y: torch.Tensor, mask: torch.Tensor) -> list[str]:
        """Standardised latents (B, P, D) -> text through the HVAE decoder, one sentence per real slot."""
        return self.answer_encoder.decode(self.energy.ebt.unstandardize(y), mask)

    # --------------------------------------------------------------------------------------------- persistence

    def save_pretrained(self, directory: str | Path) -> None:
        """Every component into one directory (see the module docstring); loadable by :meth:`from_pretrained`."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.proposal.save_pretrained(d / PROPOSAL_DIR, self.tokenizer)
        self.energy.save_pretrained(d / ENERGY_DIR)
        self.answer_encoder.hvae.save_pretrained(d / "model")
        self.answer_encoder.tokenizer.save(d / "tokenizer")
        self.answer_encoder.splitter.save(d / "punkt")
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "windows": {k: getattr(self, k) for k in WINDOW_KEYS},
            "sampler": self.sampler_config,
            "seed": self.seed,
            "mixed_precision": self.mixed_precision,
        }
        (d / PIPELINE_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path, mixed_precision: str | None = None) -> ReadingPipeline:
        """Load and validate a directory written by :meth:`save_pretrained` (no pickle, no remote code).
        `mixed_precision`: None for the saved setting ("no" in pipelines saved before it was)."""
        d = Path(directory)
        parts = (PROPOSAL_DIR, ENERGY_DIR, *HVAE_PARTS)
        meta, where = read_meta(d, PIPELINE_FILE, parts, FORMAT, "a reading pipeline")
        if meta.get("version") != FORMAT_VERSION:
            raise CheckpointError(f"{where}: format version {meta.get('version')!r}; this code reads {FORMAT_VERSION}")
        keys, optional = {"format", "version", "windows", "sampler", "seed"}, {"mixed_precision"}
        if not keys <= set(meta) <= keys | optional:
            raise CheckpointError(
                f"{where}: top-level keys must be {', '.join(sorted(keys))} (and optionally "
                f"{', '.join(sorted(optional))}); got {sorted(meta)}"
            )
        if mixed_precision is None:
            mixed_precision = meta.get("mixed_precision", "no")
        windows = meta["windows"]
        if not isinstance(windows, dict) or set(windows) != set(WINDOW_KEYS):
            raise CheckpointError(f"{where}: 'windows' must have exactly the keys {', '.join(WINDOW_KEYS)}")
        for k, v in windows.items():
            if not (isinstance(v, int) and not isinstance(v, bool)) and not (k == "max_windows" and v is None):
                raise CheckpointError(f"{where}: windows.{k} = {v!r} must be an integer")
        if not isinstance(meta["sampler"], dict) or not isinstance(meta["seed"], int):
            raise CheckpointError(f"{where}: 'sampler' must be an object and 'seed' an integer")
        proposal, tokenizer = load_proposal_head(d / PROPOSAL_DIR)
        energy = SpanEnergy.from_pretrained(d / ENERGY_DIR)
        encoder = AnswerEncoder.from_run(d)
        try:
            return cls(
                proposal,
                tokenizer,
                encoder,
                energy,
                meta["sampler"],
                **windows,
                seed=meta["seed"],
                mixed_precision=mixed_precision,
            )
        except ConfigError as e:
            raise CheckpointError(f"{where}: {e}") from e

    @classmethod
    def from_runs(
        cls,
        proposal_dir: str | Path,
        hvae_run: str | Path,
        energy_dir: str | Path,
        sampler: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> ReadingPipeline:
        """Assemble from the stages' outputs: a saved proposal head, a train-hvae run dir, a saved SpanEnergy."""
        proposal, tokenizer = load_proposal_head(proposal_dir)
        return cls(
            proposal,
            tokenizer,
            AnswerEncoder.from_run(hvae_run),
            SpanEnergy.from_pretrained(energy_dir),
            sampler,
            **kwargs,
        )


def _abstain_above(answer: ReadingAnswer, signal: float, threshold: float | None) -> ReadingAnswer:
    """SQuAD v2: "no answer" (text "", no offsets) when the no-answer signal is above the threshold; the span it
    would have given becomes the first runner-up."""
    if threshold is None or signal <= threshold:
        return answer
    best = {"text": answer.text, "start": answer.start, "end": answer.end, "energy": answer.energy}
    return ReadingAnswer("", None, None, answer.energy, 0, None, [best, *answer.runners_up[:-1]])


def _ranked(
    cands: Sequence[Candidate], energies: torch.Tensor, top_n: int, rule: str = "lowest", temperature: float = 1.0
) -> ReadingAnswer:
    """The candidate the decision rule puts first as the answer, the next `top_n` - 1 as runners-up."""
    order = decide([c.text for c in cands], energies, rule, temperature)  # stable: ties keep proposal order
    best = cands[order[0]]
    runners = [
        {"text": cands[k].text, "start": cands[k].start, "end": cands[k].end, "energy": float(energies[k])}
        for k in order[1:top_n]
    ]
    return ReadingAnswer(best.text, best.start, best.end, float(energies[order[0]]), 0, best.score, runners)


__all__ = ["MODES", "ReadingAnswer", "ReadingPipeline", "default_sampler"]
