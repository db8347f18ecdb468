"""The span proposal head: an extractive reader, the baseline reading mode must beat.

A pretrained encoder reads each window ``[CLS] question [SEP] passage-piece [SEP]`` (see
``windows.py``); one linear layer turns every token state ``h_t`` into a start and an end logit:

    (s_t, e_t) = W h_t + b,      W: (2, D)

Logits outside the passage are masked out, except at CLS, which is the target of a window that does
not hold the whole answer (as in ``run_qa.py``). Training minimises, per window,

    L = CE(s, t_start) + CE(e, t_end)

and a span ``(i, j)`` of one window scores ``s_i + e_j`` for ``i <= j < i + max_answer_tokens``. The
spans of all windows of a question are mapped to passage characters and merged (a span seen by two
windows keeps its best score): the top K are the candidates the energy model re-ranks, and the top 1
is the baseline answer.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn

from qa_ebm.errors import CheckpointError, ConfigError, DataError
from qa_ebm.models.precision import autocast, check_precision
from qa_ebm.models.weights import load_module, safetensors_hint, save_module
from qa_ebm.reading.windows import Windows, make_windows

log = logging.getLogger(__name__)

CONFIG_FILE = "proposal_head.json"
HEAD_FILE = "head.safetensors"
ENCODER_DIR = "encoder"
FORMAT = "qa-ebm/span-proposal-head"
FORMAT_VERSION = 1
GROUP_BATCHES = 50  # batches per length-sorted chunk of `length_grouped_order`: local sorting, global shuffling


@dataclass
class ProposalConfig:
    """What the head needs beyond its weights; saved beside them and validated on load."""

    encoder: str = "all-MiniLM-L6-v2"  # the name it was built from (informational once saved)
    hidden_size: int = 384
    max_length: int = 256  # tokens per window
    stride: int = 128  # overlap between consecutive windows, in tokens
    max_question_tokens: int = 64
    max_windows: int | None = 16  # per passage; beyond: logged, first windows kept
    max_answer_tokens: int = 30
    freeze_encoder: bool = False

    def validate(self) -> None:
        for name in ("hidden_size", "max_length", "max_question_tokens", "max_answer_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"proposal head: {name} must be >= 1, got {getattr(self, name)}")
        if self.stride < 0 or self.stride >= self.max_length:
            raise ConfigError(f"proposal head: stride must be in [0, max_length), got {self.stride}")
        if self.max_windows is not None and self.max_windows < 1:
            raise ConfigError(f"proposal head: max_windows must be >= 1 or null, got {self.max_windows}")

    @classmethod
    def from_dict(cls, data: Any, where: str) -> ProposalConfig:
        """Strict: unknown or missing keys and wrong types raise :class:`CheckpointError`."""
        if not isinstance(data, dict):
            raise CheckpointError(f"{where}: 'config' must be an object")
        known = {f.name: f for f in fields(cls)}
        unknown, missing = sorted(set(data) - set(known)), sorted(set(known) - set(data))
        if unknown or missing:
            raise CheckpointError(
                f"{where}: config keys do not match (unknown: {unknown or 'none'}; missing: {missing or 'none'})"
            )
        types = {"encoder": (str,), "freeze_encoder": (bool,), "max_windows": (int, type(None))}
        for name, value in data.items():
            ok = types.get(name, (int,))
            if not isinstance(value, ok) or (isinstance(value, bool) and bool not in ok):
                raise CheckpointError(f"{where}: config.{name} = {value!r} has the wrong type")
        cfg = cls(**data)
        try:
            cfg.validate()
        except ConfigError as e:
            raise CheckpointError(f"{where}: {e}") from e
        return cfg


@dataclass
class ProposalOutput:
    start_logits: torch.Tensor  # (B, T), masked outside passage + CLS
    end_logits: torch.Tensor  # (B, T)
    loss: torch.Tensor | None = None  # mean over windows of CE(start) + CE(end)


@dataclass(frozen=True)
class SpanPrediction:
    """A proposed answer: ``context[start:end] == text``; higher score = better."""

    start: int
    end: int
    text: str
    score: float


class SpanProposalHead(nn.Module):
    """Encoder (any HF AutoModel with ``last_hidden_state``) + Linear(D, 2) -> start/end logits."""

    def __init__(self, encoder: nn.Module, config: ProposalConfig | None = None):
        super().__init__()
        hidden = int(encoder.config.hidden_size)
        config = config or ProposalConfig(encoder=str(getattr(encoder.config, "name_or_path", "")), hidden_size=hidden)
        if config.hidden_size != hidden:
            raise ConfigError(f"proposal head: config.hidden_size={config.hidden_size} but the encoder has {hidden}")
        config.validate()
        self.config = config
        self.encoder = encoder
        self.qa_outputs = nn.Linear(hidden, 2)
        std = float(getattr(encoder.config, "initializer_range", 0.02))
        nn.init.normal_(self.qa_outputs.weight, std=std)
        nn.init.zeros_(self.qa_outputs.bias)
        self.freeze_encoder(config.freeze_encoder)

    @classmethod
    def from_encoder(cls, name: str, trust_remote_code: bool = False, **config: Any) -> tuple[SpanProposalHead, Any]:
        """A new head on the pretrained encoder `name` (see ``load_encoder``) and its fast tokenizer."""
        from qa_ebm.models.pretrained import load_encoder

        encoder, tokenizer = load_encoder(name, trust_remote_code=trust_remote_code)
        cfg = ProposalConfig(encoder=name, hidden_size=int(encoder.config.hidden_size), **config)
        return cls(encoder, cfg), tokenizer

    def freeze_encoder(self, frozen: bool = True) -> None:
        """Train the head only (frozen) or the whole model; a frozen encoder also stays in eval mode."""
        self.config.freeze_encoder = frozen
        self.encoder.requires_grad_(not frozen)
        if frozen:
            self.encoder.eval()

    def train(self, mode: bool = True) -> SpanProposalHead:
        super().train(mode)
        if self.config.freeze_encoder:
            self.encoder.eval()  # no dropout in a frozen encoder: its states are fixed features
        return self

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        passage_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        cls_index: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
    ) -> ProposalOutput:
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        if self.config.freeze_encoder:
            with torch.no_grad():
                h = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        else:
            h = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state
        logits = self.qa_outputs(h)  # (B, T, 2)
        start, end = logits.unbind(-1)  # (B, T) each
        allowed = passage_mask.bool().clone()
        rows = torch.arange(len(allowed), device=allowed.device)
        allowed[rows, cls_index if cls_index is not None else 0] = True
        neg = torch.finfo(start.dtype).min
        start, end = start.masked_fill(~allowed, neg), end.masked_fill(~allowed, neg)
        loss = None
        if start_positions is not None and end_positions is not None:
            loss = nn.functional.cross_entropy(start, start_positions) + nn.functional.cross_entropy(end, end_positions)
        return ProposalOutput(start, end, loss)

    # ---------------------------------------------------------------------------- persistence

    def save_pretrained(self, directory: str | Path, tokenizer: Any | None = None) -> None:
        """``proposal_head.json`` + ``head.safetensors`` + ``encoder/`` (the encoder's own
        ``save_pretrained``, and the tokenizer's when given)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(d / ENCODER_DIR)
        if tokenizer is not None:
            tokenizer.save_pretrained(d / ENCODER_DIR)
        save_module(self.qa_outputs, d / HEAD_FILE)
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "config": asdict(self.config)}
        (d / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> SpanProposalHead:
        """Load a directory written by :meth:`save_pretrained`; no remote code, no pickle."""
        from transformers import AutoModel

        d = Path(directory)
        for need in (CONFIG_FILE, HEAD_FILE, f"{ENCODER_DIR}/config.json"):
            if not (d / need).is_file():
                raise CheckpointError(f"{d}: not a span proposal head directory (missing {need})")
        where = str(d / CONFIG_FILE)
        try:
            meta = json.loads((d / CONFIG_FILE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{where}: not valid JSON ({e})") from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(f"{where}: not a span proposal head config (format should be {FORMAT!r})")
        if meta.get("version") != FORMAT_VERSION:
            raise CheckpointError(f"{where}: format version {meta.get('version')!r}; this code reads {FORMAT_VERSION}")
        if set(meta) != {"format", "version", "config"}:
            raise CheckpointError(f"{where}: top-level keys must be format, version, config; got {sorted(meta)}")
        cfg = ProposalConfig.from_dict(meta["config"], where)
        try:
            # save_pretrained wrote safetensors: a pytorch_model.bin put in its place is never unpickled
            encoder = AutoModel.from_pretrained(d / ENCODER_DIR, trust_remote_code=False, use_safetensors=True)
        except SafetensorError as e:
            weights = d / ENCODER_DIR / "model.safetensors"
            raise CheckpointError(f"{weights}: not a readable safetensors file{safetensors_hint(weights)} ({e})") from e
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{d / ENCODER_DIR}: cannot load the encoder ({e})") from e
        try:
            model = cls(encoder, cfg)
        except ConfigError as e:
            raise CheckpointError(f"{where}: {e}") from e
        load_module(model.qa_outputs, d / HEAD_FILE)
        return model


def load_proposal_head(directory: str | Path) -> tuple[SpanProposalHead, Any]:
    """The head and the fast tokenizer saved with it."""
    from transformers import AutoTokenizer

    model = SpanProposalHead.from_pretrained(directory)
    enc = Path(directory) / ENCODER_DIR
    if not (enc / "tokenizer.json").is_file():
        raise CheckpointError(f"{enc}: no tokenizer.json; save the head with save_pretrained(dir, tokenizer)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(enc, trust_remote_code=False)
    except (OSError, ValueError) as e:  # ValueError covers undecodable JSON
        raise CheckpointError(f"{enc}: cannot load the tokenizer ({str(e).splitlines()[0][:160]})") from e
    return model, tokenizer


# ------------------------------------------------------------------------------ span decoding


def top_k_spans(
    windows: Windows,
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    top_k: int = 5,
    max_answer_tokens: int = 30,
) -> list[list[SpanPrediction]]:
    """Best spans per example across its windows, best first; ``score = s_i + e_j``.

    `start_logits` / `end_logits` are (W, T) for the W windows of `windows`, in order (T >= each
    window's length). Valid spans: both ends on passage tokens, ``i <= j < i + max_answer_tokens``.
    A character span found by several windows keeps its best score. Every window contributes its own
    top K, which is enough for the merged top K: a span's rivals inside its best window that beat it
    also beat it overall.
    """
    W = len(windows)
    if start_logits.shape[0] != W or end_logits.shape[0] != W:
        raise ValueError(f"{W} windows but logits for {start_logits.shape[0]} / {end_logits.shape[0]}")
    T = start_logits.shape[1]
    merged: list[dict[tuple[int, int], SpanPrediction]] = [{} for _ in windows.contexts]
    if W:
        s, e = start_logits.float().cpu(), end_logits.float().cpu()
        passage = torch.zeros((W, T), dtype=torch.bool)
        for w in range(W):
            mask = windows.passage_mask(w)
            passage[w, : len(mask)] = torch.from_numpy(mask)
        i = torch.arange(T)
        band = (i[None, :] >= i[:, None]) & (i[None, :] - i[:, None] < max_answer_tokens)  # (T, T): j in [i, i+L)
        for w in range(W):
            if not passage[w].any():
                continue
            valid = band & passage[w][:, None] & passage[w][None, :]  # (T, T)
            scores = (s[w][:, None] + e[w][None, :]).masked_fill(~valid, float("-inf")).flatten()  # (T*T,)
            k = min(top_k, int(valid.sum()))
            best, flat = scores.topk(k)
            b = windows.example[w]
            context = windows.contexts[b]
            for score, f in zip(best.tolist(), flat.tolist(), strict=True):
                cs, ce = windows.char_span(w, f // T, f % T)
                old = merged[b].get((cs, ce))
                if old is None or score > old.score:
                    merged[b][(cs, ce)] = SpanPrediction(cs, ce, context[cs:ce], score)
    return [sorted(m.values(), key=lambda p: -p.score)[:top_k] for m in merged]


@torch.inference_mode()
def predict(
    model: SpanProposalHead,
    tokenizer: Any,
    questions: Sequence[str],
    contexts: Sequence[str],
    top_k: int = 5,
    batch_size: int = 32,
) -> list[list[SpanPrediction]]:
    """Top-K spans per question (best first), windowed as the model's config says, batched."""
    cfg = model.config
    windows = make_windows(
        tokenizer, questions, contexts, cfg.max_length, cfg.stride, cfg.max_question_tokens, cfg.max_windows
    )
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    T = max((len(ids) for ids in windows.input_ids), default=1)
    start = torch.full((len(windows), T), float("-inf"))
    end = torch.full((len(windows), T), float("-inf"))
    order = sorted(range(len(windows)), key=lambda w: len(windows.input_ids[w]))  # similar lengths: less padding
    try:
        for lo in range(0, len(order), batch_size):
            idx = order[lo : lo + batch_size]
            batch = {k: v.to(device) for k, v in _batch(windows, idx).items()}
            out = model(**batch)
            t = out.start_logits.shape[1]
            start[idx, :t], end[idx, :t] = out.start_logits.float().cpu(), out.end_logits.float().cpu()
    finally:
        model.train(was_training)
    return top_k_spans(windows, start, end, top_k=top_k, max_answer_tokens=cfg.max_answer_tokens)


def example_windows(tokenizer: Any, config: ProposalConfig, examples: Sequence[Mapping[str, Any]]) -> Windows:
    """The windows of SQuAD-style examples (``question``, ``context``) under the head's windowing settings."""
    return make_windows(
        tokenizer,
        [ex["question"] for ex in examples],
        [ex["context"] for ex in examples],
        config.max_length,
        config.stride,
        config.max_question_tokens,
        config.max_windows,
    )


def _batch(windows: Windows, idx: Sequence[int]) -> dict[str, torch.Tensor]:
    batch = windows.collate(idx)
    batch["cls_index"] = torch.tensor([windows.cls_index[w] for w in idx], dtype=torch.long)
    return batch


# ------------------------------------------------------------------------------------ training


@dataclass
class TrainResult:
    steps: int
    epochs: float  # passes over the windows
    seconds: float
    stopped: str  # "steps" | "time" | "epochs"
    windows: int
    losses: list[float]  # per step


def length_grouped_order(lengths: torch.Tensor, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    """A random epoch order whose consecutive `batch_size` blocks hold windows of similar lengths.

    The windows are shuffled, cut into chunks of ``GROUP_BATCHES`` batches, sorted by length within a chunk and
    cut into batches; the full batches are shuffled and a short last one stays last (so ``order[k * batch_size:
    (k + 1) * batch_size]`` is always one batch). Batches are padded to their longest window: random batches of
    SQuAD windows (max_length 256) are 31 % padding, grouped ones about 2 % (Hugging Face's ``group_by_length``).
    """
    perm = torch.randperm(len(lengths), generator=generator)
    batches: list[torch.Tensor] = []
    chunk = GROUP_BATCHES * batch_size
    for lo in range(0, len(perm), chunk):
        idx = perm[lo : lo + chunk]
        idx = idx[torch.argsort(lengths[idx], descending=True, stable=True)]
        batches += list(idx.split(batch_size))
    short = [b for b in batches if len(b) < batch_size]  # at most one: only the last chunk can end short
    full = [b for b in batches if len(b) == batch_size]
    shuffled = [full[k] for k in torch.randperm(len(full), generator=generator).tolist()]
    return torch.cat(shuffled + short) if batches else perm


def lr_factor(progress: float, warmup: float) -> float:
    """Linear warmup over the first `warmup` fraction of training, then linear decay to 0."""
    if progress < warmup:
        return progress / warmup
    return max(0.0, (1.0 - progress) / max(1e-12, 1.0 - warmup))


def train_proposal_head(
    model: SpanProposalHead,
    tokenizer: Any,
    examples: Sequence[Mapping[str, Any]],
    *,
    max_seconds: float | None = None,
    max_steps: int | None = None,
    epochs: float = 1.0,
    batch_size: int = 16,
    lr: float = 1e-4,
    weight_decay: float = 0.01,
    warmup: float = 0.1,
    max_length: int | None = None,
    stride: int | None = None,
    seed: int = 0,
    mixed_precision: str = "no",
    group_by_length: bool = False,
    progress: bool = True,
    callback: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Fine-tune `model` on SQuAD-style `examples` (``question``, ``context``, ``answer``, ``answer_start``).

    AdamW (no decay on biases and norms), gradient clipping at 1, a linear warmup over the first
    `warmup` fraction then linear decay to 0. Training stops at the first of `max_steps`, `epochs`
    passes over the windows, and `max_seconds`. The schedule's "fraction" is steps over planned steps;
    with `max_seconds` and no `max_steps` it is the larger of that and the elapsed share of
    `max_seconds`, so the learning rate reaches 0 when the time is up, and a run stopped by time is
    then not bit-reproducible. Runs stopped by steps are deterministic on CPU for a given `seed`.
    `max_length` / `stride` override the model's windowing (and are recorded in its config).
    Examples without an answer (``answer_start`` < 0) train every window towards CLS. `mixed_precision`
    ``bf16`` runs the forward pass under bfloat16 autocast (``qa_ebm.models.precision``). `group_by_length`
    batches windows of similar lengths (:func:`length_grouped_order`) to cut padding. The model is left in
    eval mode.
    """
    cfg = model.config
    if max_length is not None:
        cfg.max_length = max_length
    if stride is not None:
        cfg.stride = stride
    cfg.validate()
    check_precision(mixed_precision, "train_proposal_head")
    if batch_size < 1 or lr <= 0 or epochs <= 0 or not 0 <= warmup < 1:
        raise ConfigError(f"train_proposal_head: bad settings (batch_size={batch_size}, lr={lr}, epochs={epochs})")
    if not examples:
        raise DataError("train_proposal_head: no training examples")
    for n, ex in enumerate(examples):
        missing = [k for k in ("question", "context", "answer", "answer_start") if k not in ex]
        if missing:
            raise DataError(f"train_proposal_head: example {n} lacks {', '.join(missing)}")
    windows = example_windows(tokenizer, cfg, examples)
    start_pos, end_pos = windows.answer_positions(
        [int(ex["answer_start"]) for ex in examples], [ex["answer"] for ex in examples]
    )
    start_pos_t, end_pos_t = torch.tensor(start_pos), torch.tensor(end_pos)

    torch.manual_seed(seed)  # dropout
    gen = torch.Generator().manual_seed(seed)  # batch order
    per_epoch = math.ceil(len(windows) / batch_size)
    planned = math.ceil(epochs * per_epoch)
    if max_steps is not None:
        planned = min(planned, max_steps)
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    device = next(model.parameters()).device
    model.train()

    from tqdm.auto import tqdm

    bar = tqdm(total=planned, desc="proposal head", unit="step", disable=not progress)
    losses: list[float] = []
    t0 = time.perf_counter()
    stopped, step = "epochs", 0
    order = torch.empty(0, dtype=torch.long)
    lengths = torch.tensor([len(ids) for ids in windows.input_ids])
    try:
        while step < planned:
            if step % per_epoch == 0:
                order = (
                    length_grouped_order(lengths, batch_size, gen)
                    if group_by_length
                    else torch.randperm(len(windows), generator=gen)
                )
            lo = (step % per_epoch) * batch_size
            idx = order[lo : lo + batch_size].tolist()
            elapsed = time.perf_counter() - t0
            if max_seconds is not None and elapsed >= max_seconds:
                stopped = "time"
                break
            frac = step / planned
            if max_seconds is not None and max_steps is None:
                frac = max(frac, elapsed / max_seconds)
            for group in opt.param_groups:
                group["lr"] = lr * lr_factor(frac, warmup)
            batch = {k: v.to(device) for k, v in _batch(windows, idx).items()}
            with autocast(device, mixed_precision):
                out = model(
                    **batch, start_positions=start_pos_t[idx].to(device), end_positions=end_pos_t[idx].to(device)
                )
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_([*decay, *no_decay], 1.0)
            opt.step()
            step += 1
            losses.append(float(out.loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if callback is not None:
                callback(step, losses[-1])
        else:
            stopped = "steps" if max_steps is not None and step >= max_steps else "epochs"
    finally:
        bar.close()
    model.eval()
    return TrainResult(
        steps=step,
        epochs=step / per_epoch,
        seconds=time.perf_counter() - t0,
        stopped=stopped,
        windows=len(windows),
        losses=losses,
    )
