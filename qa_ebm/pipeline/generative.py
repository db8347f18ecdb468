"""The answer pipeline: a question in, an answer written out of a latent refined by gradient descent.

Components, each an attribute and each saved by its own ``save_pretrained`` (diffusers' pipeline pattern):
the condition encoder (learned tokens over the dataset tokenizer, or a frozen pretrained encoder), the
EnergyTransformer, the AnswerEncoder (the HVAE with its tokenizer and sentence splitter: latent -> text, and
text -> latent for ``verify``) and the sampler, a config that a call can swap without touching a model.

For a batch of B questions and N candidates each:

    condition    x = encoder(question [, passage]); keys/values of every layer computed once per question
    start        y0 ~ N(0, I) on the real slots of [z_g; z_1..z_n] (standardised latent space), one draw
                 per (question, candidate) from a generator seeded by (seed, question text), so an answer
                 does not depend on the rest of the batch (Langevin's per-step noise is drawn per batch)
    sentences    n, the number of sentence slots, is not known before the answer is: candidate 0 takes the
                 train answers' most common count, candidates 1..N-1 draw it from their count distribution;
                 the energy chooses among them like among any other candidates
    refine       y <- sampler(E(x, ., k), y0): adaptive steps, capped
    choose       best of N: the candidate with the lowest final energy
    decode       text = HVAE decoder(unstandardise(y)), one sentence per real slot

``verify`` encodes a given answer with the HVAE (posterior mean), scores E(x, y), and places the energy among
val gold energies and val negative energies (another question's answer) stored at export: a calibrated
plausibility rather than a raw number.

Directory layout (``save_pretrained`` / ``from_pretrained``)::

    qa_pipeline.json      format, version, sampler config, seed, sentence-count distribution, question encoder,
                          calibration energies
    energy/               EnergyTransformer
    model/ tokenizer/ punkt/   the HVAE run parts AnswerEncoder.from_run reads
    question_encoder/     only when the energy reads a frozen encoder given as a local directory (self-contained)
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from qa_ebm import __version__
from qa_ebm.data.text_checks import check_text
from qa_ebm.energy.samplers import LangevinSampler, SampleResult
from qa_ebm.errors import CheckpointError, ConfigError, DataError
from qa_ebm.models.answer_encoder import AnswerEncoder
from qa_ebm.models.ebt import Condition, EnergyTransformer, LatentModel
from qa_ebm.models.question_encoder import LEARNED, FrozenConditionEncoder, LearnedConditionTokens
from qa_ebm.pipeline.directory import check_model_name, read_meta
from qa_ebm.pipeline.sampling import build_from_config, sampler_config

log = logging.getLogger(__name__)

PIPELINE_FILE = "qa_pipeline.json"
FORMAT = "qa-ebm/qa-pipeline"
FORMAT_VERSION = 1
ENERGY_DIR = "energy"
QUESTION_ENCODER_DIR = "question_encoder"
HVAE_PARTS = ("model", "tokenizer", "punkt")
META_KEYS = {"format", "version", "qa_ebm", "sampler", "seed", "sentence_counts", "question_encoder", "calibration"}
TRACE_STEPS = (0, 1, 2, 5, 10, 20, 50, 100)  # where --trace decodes the latent on its way


@dataclass
class Answer:
    """One generated answer. `energy` is E(x, y) of the refined latent (lower is better)."""

    text: str
    energy: float
    steps: int  # gradient steps the chosen candidate used
    sentences: int  # sentence slots of the chosen candidate
    energies: list[float] = field(default_factory=list)  # its energy at the start and after every step
    candidates: list[dict[str, Any]] = field(default_factory=list)  # every candidate: {energy, steps, sentences}
    trace: list[dict[str, Any]] | None = None  # with trace=True: [{"step", "text"}], the latent decoded on its way

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Verdict:
    """``verify``: the energy of (question, answer) and where it falls among val pairs."""

    energy: float
    gold_percentile: float  # % of val (question, gold answer) energies at or above this one
    negative_percentile: float  # % of val (question, another question's answer) energies at or above it
    sentences: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Calibration:
    """Sorted val energies of gold pairs and of mismatched pairs; the reference for ``verify``'s percentiles."""

    gold: list[float]
    negative: list[float]

    def percentile(self, energy: float, which: str) -> float:
        values = self.gold if which == "gold" else self.negative
        if not values:
            return float("nan")
        at_or_above = len(values) - bisect.bisect_left(values, energy)
        return 100.0 * at_or_above / len(values)


ConditionEncoder = LearnedConditionTokens | FrozenConditionEncoder


def default_sampler(energy: EnergyTransformer, max_steps: int = 10) -> dict[str, Any]:
    """Normalised gradient descent at the step size the mcmc objective learned; a step is kept only if E drops."""
    return {"name": "gd", "step_size": energy.step_size, "max_steps": max_steps, "accept_if_lower": True}


def question_seed(seed: int, question: str) -> int:
    """A per-question seed: the same question gets the same start noise alone or in any batch."""
    return int.from_bytes(hashlib.sha256(f"{seed}\x00{question}".encode()).digest()[:8], "little") >> 1


class QAPipeline:
    """Question (+ optional passage) -> :class:`Answer`; see the module docstring."""

    def __init__(
        self,
        energy: EnergyTransformer,
        condition_encoder: ConditionEncoder,
        answer_encoder: AnswerEncoder,
        sampler: Mapping[str, Any] | None = None,
        *,
        sentence_counts: Sequence[float] | None = None,
        calibration: Calibration | None = None,
        seed: int = 0,
    ):
        """`sentence_counts[i]`: the share of train answers with i + 1 sentences (default: all have one).
        `calibration`: val energies for ``verify`` (None: verify reports energies without percentiles)."""
        if not isinstance(energy, EnergyTransformer):
            raise ConfigError(f"answer pipeline: needs an EnergyTransformer, got a {type(energy).__name__}")
        self.energy, self.condition_encoder, self.answer_encoder = energy.eval(), condition_encoder, answer_encoder
        self.sampler_config = dict(sampler) if sampler is not None else default_sampler(energy)
        S = energy.spec.num_slots - 1
        counts = list(sentence_counts) if sentence_counts is not None else [1.0] + [0.0] * (S - 1)
        if len(counts) != S or min(counts) < 0 or sum(counts) <= 0:
            raise ConfigError(f"answer pipeline: sentence_counts must be {S} non-negative shares, got {counts}")
        self.sentence_counts = [c / sum(counts) for c in counts]
        self.calibration, self.seed = calibration, seed
        self._check()

    def _check(self) -> None:
        spec, hvae = self.energy.spec, self.answer_encoder.hvae
        if (spec.latent_dim, spec.num_slots) != (hvae.cfg.latent_dim, hvae.spec.max_sentences + 1):
            raise ConfigError(
                f"answer pipeline: the energy was built for latents ({spec.num_slots}, {spec.latent_dim}) but the "
                f"HVAE gives ({hvae.spec.max_sentences + 1}, {hvae.cfg.latent_dim})"
            )
        fields = self.condition_encoder.spec_fields
        expected = {"condition_vocab": spec.condition_vocab} if "condition_vocab" in fields else {}
        expected = expected or {"condition_dim": spec.condition_dim}
        if fields != expected:
            raise ConfigError(f"answer pipeline: the question encoder gives {fields} but the energy reads {expected}")
        try:
            build_from_config(self.sampler_config)
        except ConfigError as e:
            raise ConfigError(f"answer pipeline: {e}") from e

    @property
    def device(self) -> torch.device:
        return next(self.energy.parameters()).device

    @property
    def uses_context(self) -> bool:
        return self.energy.cfg.use_context

    def to(self, device: torch.device | str) -> QAPipeline:
        self.energy.to(device)
        self.answer_encoder.hvae.to(device)
        return self

    # --------------------------------------------------------------------------------------------- inputs

    def _inputs(self, questions: Sequence[str] | str, contexts: Sequence[str | None] | str | None):
        if isinstance(questions, str):
            questions = [questions]
            contexts = [contexts] if isinstance(contexts, str) else contexts
        questions = list(questions)
        contexts = [None] * len(questions) if contexts is None else list(contexts)
        if len(contexts) != len(questions):
            raise DataError(f"{len(questions)} questions but {len(contexts)} passages")
        for i, (q, c) in enumerate(zip(questions, contexts, strict=True)):
            check_text(q, f"question {i}", what="question")
            if c is not None:
                check_text(c, f"question {i}", what="passage")
                if not self.uses_context:
                    raise DataError(
                        f"question {i}: a passage was given but this pipeline's energy was trained without "
                        "passages (ebt.use_context=false); ask without --context"
                    )
        return questions, contexts

    def _condition(self, questions: list[str], contexts: list[str | None], warn: bool = True) -> Condition:
        x, mask = self.condition_encoder(questions, contexts)  # (B, max_condition_tokens[, Dc]), padded
        if warn:  # about the question alone: a passage is cut to fit by design
            self._warn_if_cut(questions, mask)
        # Drop the padding columns past the batch's longest row: they are masked out of every attention, yet
        # each refinement step would attend over them and copy their cached keys (a question alone fills
        # ~12 of 64). Positions keep their indices, so the energy is the same up to float rounding.
        length = max(int(mask.any(0).nonzero().max()) + 1, 1) if mask.any() else 1
        x, mask = x[:, :length], mask[:, :length]
        return self.energy.condition(x.to(self.device), mask.to(self.device))

    def _warn_if_cut(self, questions: list[str], mask: torch.Tensor) -> None:
        """Warn when a question alone is longer than the energy reads. Only a row that fills the whole window
        can have been cut, so only those questions are tokenised a second time (to count their tokens)."""
        limit = self.energy.cfg.max_condition_tokens
        full = mask.all(1).nonzero().flatten().tolist()
        if not full:
            return
        counts = self.condition_encoder.token_counts([questions[i] for i in full], [None] * len(full))
        long = [(i, n) for i, n in zip(full, counts, strict=True) if n > limit]
        if long:
            log.warning(
                "%d of %d questions are longer than the %d tokens the energy reads (ebt.max_condition_tokens) "
                "and were cut (question %d has %d tokens)",
                len(long),
                len(questions),
                limit,
                *long[0],
            )

    # --------------------------------------------------------------------------------------------- answering

    def __call__(
        self,
        questions: Sequence[str] | str,
        contexts: Sequence[str | None] | str | None = None,
        *,
        steps: int | None = None,
        candidates: int = 1,
        sampler: Mapping[str, Any] | None = None,
        seed: int | None = None,
        trace: bool = False,
        batch_size: int = 32,
    ) -> list[Answer]:
        """One answer per question. `steps`: the sampler's step cap for this call (None: its configured cap;
        0: decode the start point). `candidates`: best of N by final energy. `sampler`: a config replacing the
        pipeline's for this call. `seed`: replaces the pipeline's. `trace`: decode the chosen candidate's latent
        at a few steps on its way (``TRACE_STEPS``); its energy after every step is always in ``energies``.

        Raises DataError for an empty, whitespace-only or binary question (naming its index), and for a
        passage given to a pipeline trained without passages.
        """
        questions, contexts = self._inputs(questions, contexts)
        if (steps is not None and steps < 0) or candidates < 1 or batch_size < 1:
            raise ConfigError(
                f"answer pipeline: need steps >= 0, candidates >= 1, batch_size >= 1 "
                f"(got {steps}, {candidates}, {batch_size})"
            )
        config = dict(sampler) if sampler is not None else self.sampler_config
        build_from_config(config)  # a bad override fails before any work
        seed = self.seed if seed is None else seed
        answers: list[Answer] = []
        for lo in range(0, len(questions), batch_size):
            hi = lo + batch_size
            answers += self._answer(questions[lo:hi], contexts[lo:hi], steps, candidates, config, seed, trace)
        return answers

    def usual_slot_mask(self) -> torch.Tensor:
        """(1, P) slot mask of the train answers' most common sentence count: z_g and slots 1..n."""
        n = max(range(len(self.sentence_counts)), key=self.sentence_counts.__getitem__) + 1
        return torch.arange(self.energy.spec.num_slots)[None, :] <= n

    def start(self, question: str, candidates: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Start latents (N, P, D) and slot masks (N, P) of one question's N candidates (see the module docstring)."""
        P, D = self.energy.spec.num_slots, self.energy.spec.latent_dim
        gen = torch.Generator().manual_seed(question_seed(seed, question))
        shares = torch.tensor(self.sentence_counts)
        counts = torch.multinomial(shares, candidates, replacement=True, generator=gen) + 1  # (N,)
        counts[0] = int(self.usual_slot_mask().sum()) - 1
        mask = torch.arange(P)[None, :] <= counts[:, None]  # slot 0 (z_g) and slots 1..n
        y0 = torch.randn(candidates, P, D, generator=gen) * mask.unsqueeze(-1)
        return y0, mask

    def _answer(
        self,
        questions: list[str],
        contexts: list[str | None],
        steps: int | None,
        N: int,
        config: Mapping[str, Any],
        seed: int,
        trace: bool,
    ) -> list[Answer]:
        B = len(questions)
        with torch.no_grad():
            cond = self._condition(questions, contexts).repeat_interleave(N)  # row b*N + j: question b, cand. j
        starts = [self.start(q, N, seed) for q in questions]
        y0 = torch.cat([y for y, _ in starts]).to(self.device)  # (B*N, P, D)
        mask = torch.cat([m for _, m in starts]).to(self.device)  # (B*N, P)
        result = self._refine(cond, y0, mask, config, steps, seed)
        energies = result.energy.view(B, N)
        best = torch.arange(B, device=energies.device) * N + energies.argmin(1)  # (B,) rows of the winners
        texts = self.answer_encoder.decode(self.energy.unstandardize(result.y[best]), mask[best])
        answers = []
        for b, row in enumerate(best.tolist()):
            rows = range(b * N, (b + 1) * N)
            answers.append(
                Answer(
                    text=texts[b],
                    energy=float(result.energy[row]),
                    steps=int(result.steps[row]),
                    sentences=int(mask[row].sum()) - 1,
                    energies=[float(result.initial_energy[row]), *result.energies[row]],
                    candidates=[
                        {
                            "energy": float(result.energy[r]),
                            "steps": int(result.steps[r]),
                            "sentences": int(mask[r].sum()) - 1,
                        }
                        for r in rows
                    ],
                )
            )
        if trace:
            for b, row in enumerate(best.tolist()):
                answers[b].trace = self._trace(
                    cond.select(torch.tensor([row])),
                    y0[row : row + 1],
                    mask[row : row + 1],
                    config,
                    int(result.steps[row]),
                    seed,
                )
        return answers

    def _refine(
        self, cond: Condition, y0: torch.Tensor, mask: torch.Tensor, config, steps: int | None, seed: int
    ) -> SampleResult:
        if steps == 0:  # the start point itself, scored (samplers need at least one step)
            with torch.no_grad():
                energy = self.energy.energy(cond, y0, mask)
            zeros = torch.zeros(len(y0), dtype=torch.long, device=y0.device)
            return SampleResult(y0, energy, zeros, [[] for _ in range(len(y0))], energy, zeros.float())

        sampler = build_from_config(config, steps)
        generator = torch.Generator(device=y0.device).manual_seed(seed)  # Langevin's noise; gd draws none
        # Refine only the slots up to the batch's last real one: the rest are masked out of the energy and never
        # move, yet each would cost a soft token in every layer of every step (an answer of the usual one or two
        # sentences uses 2-3 of 1 + max_sentences slots). Positions keep their indices, so the energy is the
        # same up to float rounding. Not for Langevin, whose noise is drawn over the whole latent's shape.
        used = y0.shape[1] if isinstance(sampler, LangevinSampler) else int(mask.any(0).nonzero().max()) + 1
        slots = mask[:, :used]

        def energy_fn(y: torch.Tensor, k: torch.Tensor | None) -> torch.Tensor:
            return self.energy.energy(cond, y, slots, k)

        result = sampler.sample(energy_fn, y0[:, :used], slots, generator=generator)
        result.y = torch.cat([result.y, y0[:, used:]], dim=1)  # (B, P, D): the unused slots as they started
        return result

    def _trace(self, cond, y0, mask, config, used: int, seed: int) -> list[dict[str, Any]]:
        """The latent decoded at TRACE_STEPS and at the last step (rerun with that cap: the samplers are
        deterministic given their seed, so the run capped at t passes through the same latents)."""
        decoded = []
        for t in [s for s in TRACE_STEPS if s < used] + [used]:
            y = y0 if t == 0 else self._refine(cond, y0, mask, config, t, seed).y
            decoded.append({"step": t, "text": self.answer_encoder.decode(self.energy.unstandardize(y), mask)[0]})
        return decoded

    # --------------------------------------------------------------------------------------------- verifying

    @torch.no_grad()
    def verify(
        self,
        questions: Sequence[str] | str,
        answers: Sequence[str] | str,
        contexts: Sequence[str | None] | str | None = None,
        batch_size: int = 64,
    ) -> list[Verdict]:
        """E(question, HVAE(answer)) for each pair, placed among the val energies of the calibration."""
        if isinstance(answers, str):
            answers = [answers]
        questions, contexts = self._inputs(questions, contexts)
        answers = list(answers)
        if len(answers) != len(questions):
            raise DataError(f"{len(questions)} questions but {len(answers)} answers")
        for i, a in enumerate(answers):
            check_text(a, f"answer {i}", what="answer")
        verdicts = []
        for lo in range(0, len(questions), batch_size):
            hi = lo + batch_size
            cond = self._condition(questions[lo:hi], contexts[lo:hi])
            z, mask = self.answer_encoder(answers[lo:hi])
            y = self.energy.standardize(z.to(self.device)) * mask.to(self.device).unsqueeze(-1)
            energies = self.energy.energy(cond, y, mask.to(self.device)).tolist()
            for e, m in zip(energies, mask.tolist(), strict=True):
                gold = self.calibration.percentile(e, "gold") if self.calibration else float("nan")
                neg = self.calibration.percentile(e, "negative") if self.calibration else float("nan")
                verdicts.append(Verdict(float(e), gold, neg, sum(m) - 1))
        return verdicts

    # --------------------------------------------------------------------------------------------- persistence

    def save_pretrained(self, directory: str | Path) -> None:
        """Every component into one directory (see the module docstring); loadable by :meth:`from_pretrained`."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.energy.save_pretrained(d / ENERGY_DIR)
        self.answer_encoder.hvae.save_pretrained(d / "model")
        self.answer_encoder.tokenizer.save(d / "tokenizer")
        self.answer_encoder.splitter.save(d / "punkt")
        encoder = {"kind": LEARNED}
        if isinstance(self.condition_encoder, FrozenConditionEncoder):
            encoder = {"kind": "pretrained", "name": self.condition_encoder.name}
            if Path(self.condition_encoder.name).is_dir():  # a local dir travels with the pipeline
                shutil.copytree(self.condition_encoder.name, d / QUESTION_ENCODER_DIR, dirs_exist_ok=True)
                encoder["name"] = QUESTION_ENCODER_DIR
        meta = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "qa_ebm": __version__,
            "sampler": self.sampler_config,
            "seed": self.seed,
            "sentence_counts": self.sentence_counts,
            "question_encoder": encoder,
            "calibration": asdict(self.calibration) if self.calibration is not None else None,
        }
        (d / PIPELINE_FILE).write_text(json.dumps(meta, indent=1) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> QAPipeline:
        """Load and validate a directory written by :meth:`save_pretrained` (no pickle, no remote code)."""
        d = Path(directory)
        meta, where = read_meta(d, PIPELINE_FILE, (ENERGY_DIR, *HVAE_PARTS), FORMAT, "an answer pipeline")
        if meta.get("version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{where}: format version {meta.get('version')!r} (written by qa-ebm {meta.get('qa_ebm')}); this "
                f"qa-ebm {__version__} reads version {FORMAT_VERSION}: export the pipeline again"
            )
        if set(meta) != META_KEYS:
            raise CheckpointError(f"{where}: top-level keys must be {', '.join(sorted(META_KEYS))}; got {sorted(meta)}")
        energy = LatentModel.from_pretrained(d / ENERGY_DIR)
        if not isinstance(energy, EnergyTransformer):
            raise CheckpointError(f"{d / ENERGY_DIR}: holds a {type(energy).__name__}, not an EnergyTransformer")
        encoder_meta = meta["question_encoder"]
        if not isinstance(encoder_meta, dict) or encoder_meta.get("kind") not in (LEARNED, "pretrained"):
            raise CheckpointError(f"{where}: question_encoder must be {{kind: learned | pretrained, name}}")
        if encoder_meta["kind"] == LEARNED:
            from qa_ebm.data.tokenizer import load_tokenizer

            encoder = LearnedConditionTokens(load_tokenizer(d / "tokenizer"), energy.cfg.max_condition_tokens)
        else:
            name = check_model_name(str(encoder_meta.get("name")), where, "question_encoder.name")
            if name == QUESTION_ENCODER_DIR:
                if not (d / name).is_dir():
                    raise CheckpointError(f"{d}: missing {QUESTION_ENCODER_DIR}/ (the bundled question encoder)")
                name = str(d / name)
            encoder = FrozenConditionEncoder(name, energy.cfg.max_condition_tokens)
        calibration = meta["calibration"]
        try:
            calibration = None if calibration is None else Calibration(**calibration)
            return cls(
                energy,
                encoder,
                AnswerEncoder.from_run(d),
                meta["sampler"],
                sentence_counts=meta["sentence_counts"],
                calibration=calibration,
                seed=int(meta["seed"]),
            )
        except (ConfigError, TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: {e}") from e

    @classmethod
    def from_runs(
        cls,
        hvae_run: str | Path,
        ebt_run: str | Path,
        data_dir: str | Path | None = None,
        *,
        sampler: Mapping[str, Any] | None = None,
        calibration_size: int = 1000,
        seed: int = 0,
    ) -> QAPipeline:
        """Assemble from a train-hvae run and a train-ebt run trained on its latents (``qa-ebm export``).

        The sampler defaults to the one train-ebt evaluated with (its ``train_ebt`` section); the sentence-count
        distribution comes from the HVAE's train latents; the calibration scores up to `calibration_size` val
        questions with their gold answers and with another val question's answer (the data dir the HVAE run
        recorded, or `data_dir`).
        """
        from qa_ebm.config import load_config
        from qa_ebm.models.question_encoder import build_condition_encoder
        from qa_ebm.training.ebt_trainer import load_ebt, load_hvae_run, make_sampler, resolve_data_dir

        run = load_hvae_run(hvae_run)
        energy = load_ebt(ebt_run)
        if not isinstance(energy, EnergyTransformer):
            raise CheckpointError(
                f"{ebt_run}: holds a {type(energy).__name__} (train_ebt.objective=regress), which has no energy to "
                "refine with; export an mcmc or ired run"
            )
        if energy.spec.hvae_run and energy.spec.hvae_run != run.fingerprint:
            raise CheckpointError(
                f"{ebt_run}: trained on the latents of another HVAE run ({energy.spec.hvae_run}, not {run.fingerprint} "
                f"of {hvae_run})"
            )
        data = resolve_data_dir(run, data_dir)
        if sampler is None:
            config_file = Path(ebt_run) / "config.yaml"
            if config_file.is_file():
                config = load_config(config_file)
                sampler = sampler_config(make_sampler(energy, config.train_ebt, config.ebt.num_landscapes))
        counts = run.latents["train"]["sentence_mask"].sum(1).long().clamp_min(1)
        shares = torch.bincount(counts - 1, minlength=energy.spec.num_slots - 1).float()
        encoder = build_condition_encoder(energy.cfg, str(data / "tokenizer"))
        pipe = cls(
            energy,
            encoder,
            AnswerEncoder.from_run(hvae_run),
            sampler,
            sentence_counts=shares.tolist(),
            seed=seed,
        )
        pipe.calibration = calibrate(pipe, run, data, calibration_size, seed)
        return pipe


@torch.no_grad()
def calibrate(pipe: QAPipeline, run: Any, data_dir: Path, size: int, seed: int, batch_size: int = 64) -> Calibration:
    """Val energies of (question, its gold latent) and (question, another val question's gold latent)."""
    from qa_ebm.training.ebt_trainer import gold_latents, question_texts

    n_val = len(run.ids["val"])
    if n_val < 2:
        return Calibration([], [])
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randperm(n_val, generator=gen)[:size]
    others = rows.roll(1)  # a derangement of the chosen rows: every question gets someone else's answer
    questions, contexts = question_texts(data_dir, {"val": run.ids["val"]}, pipe.uses_context)["val"]
    z, mask = gold_latents(run.latents["val"])
    y = pipe.energy.standardize(z.to(pipe.device)) * mask.to(pipe.device).unsqueeze(-1)
    mask = mask.to(pipe.device)
    gold, negative = [], []
    for lo in range(0, len(rows), batch_size):
        chunk, other = rows[lo : lo + batch_size], others[lo : lo + batch_size]
        cond = pipe._condition([questions[i] for i in chunk], [contexts[i] for i in chunk], warn=False)
        gold += pipe.energy.energy(cond, y[chunk], mask[chunk]).tolist()
        negative += pipe.energy.energy(cond, y[other], mask[other]).tolist()
    return Calibration(sorted(gold), sorted(negative))


__all__ = ["Answer", "Calibration", "QAPipeline", "Verdict", "default_sampler"]
