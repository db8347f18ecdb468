"""The autoregressive baseline: the HVAE's decoder LM fine-tuned to map a question to its answer.

No latent, no energy: the evaluation's reference point for "the same decoder LM, trained the ordinary way".

Sequence (ids of the dataset tokenizer; SEP is the tokenizer's MASK id, which no question or answer contains)

    question_ids[:Q]  SEP  answer_ids[:A]  EOS
    |---- prompt ------|   |---- target ------|

    answer_ids = encode(the answer's sentences decoded one by one and joined by a space), i.e. the text the
    HVAE would render for the answer (`hvae_trainer.decode_text`); the sentences' own EOS tokens are not kept,
    so EOS appears once, closing the answer, and the decoded output is the plain answer text. An answer
    longer than A tokens is cut and gets no EOS (the model is never taught to stop where a cut fell).

Loss, per batch (token cross-entropy on the target only; question, SEP and padding are labelled -100)

    L = sum_{t in target} -log p(x_t | x_<t) / |target tokens|

Generation: prompts left-padded into one batch, `transformers`' `generate` (KV cache, greedy / beam /
nucleus), stopped at EOS.

The LM must be a GPT-2-family `AutoModelForCausalLM` (the HVAE's `scratch-gpt2`, `gpt2`, or any causal LM
with room for the sequence). Its position table is widened when the HVAE's, sized for one sentence, is too
short for question + answer. BART decoders (`scratch-bart`, `facebook/bart-base`) are refused: their learned
positions do not follow left padding in batched generation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from qa_ebm.errors import CheckpointError, ConfigError
from qa_ebm.models.decoders import DecodeSettings
from qa_ebm.models.weights import load_module, save_module

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
IGNORE = -100  # the label of a position that carries no loss (F.cross_entropy's ignore_index)


@dataclass
class BaselineSpec:
    """The sequence format: special ids and how many question / answer tokens a sequence holds."""

    pad_id: int
    eos_id: int
    sep_id: int  # the dataset tokenizer's MASK id: between the question and the answer
    max_question_tokens: int  # Q
    max_answer_tokens: int  # A (EOS not counted)

    @property
    def max_length(self) -> int:
        return self.max_question_tokens + 1 + self.max_answer_tokens + 1

    def validate(self) -> None:
        if self.max_question_tokens < 1 or self.max_answer_tokens < 1:
            raise ConfigError("baseline: max_question_tokens and max_answer_tokens must be >= 1")
        if len({self.pad_id, self.eos_id, self.sep_id}) < 3:
            raise ConfigError(f"baseline: PAD, EOS and SEP must be distinct ids, got {asdict(self)}")


@dataclass
class BaselineOutput:
    loss: torch.Tensor  # mean CE per target token (what the optimiser minimises)
    nll_sum: torch.Tensor  # summed CE over the target tokens (for exact val averages across batches)
    n_tokens: int


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, T) right-padded with PAD
    attention_mask: torch.Tensor  # (B, T) 1 on real tokens
    labels: torch.Tensor  # (B, T) the token itself on the target (answer + EOS), IGNORE elsewhere


def prompt_ids(question_ids: list[int], spec: BaselineSpec) -> list[int]:
    return [*question_ids[: spec.max_question_tokens], spec.sep_id]


def target_ids(answer_ids: list[int], spec: BaselineSpec) -> list[int]:
    """The answer cut to A tokens, closed with EOS only when nothing was cut."""
    cut = answer_ids[: spec.max_answer_tokens]
    return [*cut, spec.eos_id] if len(answer_ids) <= spec.max_answer_tokens else cut


def pack(question_ids: list[list[int]], answer_ids: list[list[int]], spec: BaselineSpec) -> Batch:
    """(question, answer) id lists -> a right-padded training batch whose labels mask everything but the target."""
    rows = [(prompt_ids(q, spec), target_ids(a, spec)) for q, a in zip(question_ids, answer_ids, strict=True)]
    T = max(len(p) + len(t) for p, t in rows)
    input_ids = torch.full((len(rows), T), spec.pad_id, dtype=torch.long)
    labels = torch.full((len(rows), T), IGNORE, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), T), dtype=torch.long)
    for b, (p, t) in enumerate(rows):
        n = len(p) + len(t)
        input_ids[b, :n] = torch.tensor(p + t)
        labels[b, len(p) : n] = torch.tensor(t)
        attention_mask[b, :n] = 1
    return Batch(input_ids, attention_mask, labels)


def lm_from_config(lm_config: dict) -> nn.Module:
    """A causal LM rebuilt from its saved `transformers` config (no Hub, random weights)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    lm_config = dict(lm_config)
    model_type = lm_config.pop("model_type", None)
    if model_type is None:
        raise CheckpointError("baseline: the saved LM config has no model_type")
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **lm_config))


def fit_positions(lm: nn.Module, length: int, generator: torch.Generator | None = None) -> None:
    """Make sure `lm` can read `length` positions; GPT-2's learned table is widened, its trained rows kept.

    The HVAE's scratch decoder only ever saw `prefix_len + max_words` positions (one sentence); the new rows
    start like GPT-2's own initialisation and are learned in fine-tuning.
    """
    cfg = lm.config
    if cfg.model_type == "bart":
        raise ConfigError(
            "the autoregressive baseline needs a GPT-2-family decoder LM; this HVAE has a BART decoder "
            "(hvae.decoder=scratch-bart or a BART id), whose learned positions do not follow left padding in "
            "batched generation; train an HVAE with hvae.decoder=scratch-gpt2 (or a causal LM) for the baseline"
        )
    if cfg.model_type == "gpt2":
        old = lm.transformer.wpe
        if old.num_embeddings < length:
            new = nn.Embedding(length, old.embedding_dim).to(old.weight.device, old.weight.dtype)
            with torch.no_grad():
                new.weight.normal_(0.0, cfg.initializer_range, generator=generator)
                new.weight[: old.num_embeddings] = old.weight
            lm.transformer.wpe = new
            cfg.n_positions = length
        return
    room = getattr(cfg, "max_position_embeddings", None)
    if room is not None and room < length:
        raise ConfigError(
            f"decoder LM {cfg.model_type!r} reads at most {room} positions but a question + answer needs {length}; "
            f"lower train_baseline.max_answer_tokens or data.max_question_tokens"
        )


class AutoregressiveBaseline(nn.Module):
    """A causal LM over `question SEP answer EOS` (see the module docstring for the format and the loss)."""

    def __init__(self, lm: nn.Module, spec: BaselineSpec):
        super().__init__()
        spec.validate()
        self.spec = spec
        fit_positions(lm, spec.max_length)
        self.lm = lm.requires_grad_(True)  # fine-tuned whole, also when the HVAE kept it frozen (hvae.freeze_decoder)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> BaselineOutput:
        logits = self.lm(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, T, V)
        # position t predicts token t+1: compare logits[:, :-1] with labels[:, 1:]
        ce = F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE, reduction="sum"
        )
        n_tokens = int((labels[:, 1:] != IGNORE).sum())
        return BaselineOutput(loss=ce / max(n_tokens, 1), nll_sum=ce, n_tokens=n_tokens)

    @torch.no_grad()
    def generate(self, question_ids: list[list[int]], settings: DecodeSettings | None = None) -> list[list[int]]:
        """Answer ids (no SEP, no EOS, no padding) for each question's ids.

        `settings.max_new_tokens` is capped at A + 1 (the longest trained target); without settings, greedy
        decoding with that budget.
        """
        if not question_ids:
            return []
        s = self.spec
        settings = settings or DecodeSettings(max_new_tokens=s.max_answer_tokens + 1)
        prompts = [prompt_ids(q, s) for q in question_ids]
        P = max(map(len, prompts))
        device = next(self.parameters()).device
        input_ids = torch.full((len(prompts), P), s.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(prompts), P), dtype=torch.long)
        for b, p in enumerate(prompts):  # left padding: every prompt ends where generation starts
            input_ids[b, P - len(p) :] = torch.tensor(p)
            attention_mask[b, P - len(p) :] = 1
        kwargs = {
            "max_new_tokens": min(settings.max_new_tokens, s.max_answer_tokens + 1),
            "num_beams": settings.num_beams,
            "do_sample": settings.do_sample,
            "eos_token_id": s.eos_id,
            "pad_token_id": s.pad_id,
        }
        if settings.do_sample:
            kwargs.update(top_p=settings.top_p, top_k=0, temperature=settings.temperature)  # nucleus only
        was_training = self.training
        self.eval()
        out = self.lm.generate(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **kwargs)
        self.train(was_training)
        answers = []
        for row in out[:, P:].tolist():  # (B, new tokens): the prompt is echoed first
            row = row[: row.index(s.eos_id)] if s.eos_id in row else row
            answers.append([t for t in row if t != s.pad_id])
        return answers

    # ------------------------------------------------------------------------------- persistence

    def save_pretrained(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"baseline": asdict(self.spec), "lm_config": self.lm.config.to_dict()}
        (d / CONFIG_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        save_module(self, d / WEIGHTS_FILE)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> AutoregressiveBaseline:
        d = Path(directory)
        if not (d / CONFIG_FILE).is_file() or not (d / WEIGHTS_FILE).is_file():
            raise CheckpointError(f"{d}: not a baseline model directory (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
        try:
            meta = json.loads((d / CONFIG_FILE).read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{d / CONFIG_FILE}: not valid JSON ({e.msg})") from e
        if not isinstance(meta, dict) or set(meta) != {"baseline", "lm_config"}:
            found = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
            raise CheckpointError(f"{d / CONFIG_FILE}: expected keys ['baseline', 'lm_config'], found {found}")
        valid = {f.name for f in fields(BaselineSpec)}
        if not isinstance(meta["baseline"], dict) or set(meta["baseline"]) != valid:
            raise CheckpointError(f"{d / CONFIG_FILE}: baseline must have exactly the keys {sorted(valid)}")
        model = cls(lm_from_config(meta["lm_config"]), BaselineSpec(**meta["baseline"]))
        load_module(model, d / WEIGHTS_FILE)
        return model.eval()


class BaselineAnswerer:
    """Text in, text out: a baseline run's model with the tokenizer it was trained with.

    `BaselineAnswerer.from_pretrained(run_dir)(["Who founded the company?"])` -> a list of answer strings.
    """

    def __init__(self, model: AutoregressiveBaseline, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    @classmethod
    def from_pretrained(cls, run_dir: str | Path) -> BaselineAnswerer:
        from qa_ebm.data.tokenizer import load_tokenizer

        root = Path(run_dir)
        model = AutoregressiveBaseline.from_pretrained(root / "model")
        tokenizer = load_tokenizer(root / "tokenizer")
        if (tokenizer.special.eos_id, tokenizer.special.mask_id) != (model.spec.eos_id, model.spec.sep_id):
            raise CheckpointError(f"{root}: tokenizer/ special ids do not match model/ (EOS, SEP)")
        return cls(model, tokenizer)

    def answer(self, questions: list[str], settings: DecodeSettings | None = None, batch_size: int = 32) -> list[str]:
        """The answer text for each question (greedy unless `settings` says otherwise)."""
        out: list[str] = []
        for start in range(0, len(questions), batch_size):
            ids = self.tokenizer.encode_batch(list(questions[start : start + batch_size]))
            out += [self.tokenizer.decode(a) for a in self.model.generate(ids, settings)]
        return out

    __call__ = answer
