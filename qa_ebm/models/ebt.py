"""Energy transformer: E(x, y, k) -> scalar, low when the latent answer y fits the question x.

Shapes: B examples, L condition (question + context) tokens, P = 1 + S latent slots (z_g, z_1..z_S),
D latent width, M soft tokens per slot, d model width.

Condition   c^0 = In(x) + Pos                 In = Embedding over the dataset tokenizer ("learned"), or
                                              Linear over a frozen pretrained encoder's token states
            c^{l+1} = Block_l(c^l | keys c^l)  the condition attends only to itself ...
Soft tokens s^0_p = LN(GELU(Linear(y_p))) + Slot_p + Land_k (+ a)      M tokens for each slot p; a: an
                                                                         optional per-row anchor of the condition
            s^{l+1} = Block_l(s^l | keys [c^l; s^l])                    ... while the latent reads it
Energy      E(x, y, k) = w2 . tanh(W1 mean_{real soft tokens} LN(s^L)) + b2

Because the condition never attends to the soft tokens, its per-layer keys and values depend on the
question alone: :meth:`EnergyTransformer.condition` computes them once per question, and every
refinement step (and every candidate answer in reading mode) only recomputes the soft tokens.

The latents live in a standardised space: per-dimension mean and std of the training answers' global
and local posterior means are buffers of the model (:meth:`standardize` / :meth:`unstandardize`), so
N(0, I) noise is a sensible starting point for refinement and MSEs compare across HVAE runs.

Attention is written out (no fused kernel): training differentiates dE/dy again with respect to the
weights, and torch's fused attention kernels have no double backward.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from qa_ebm.config import EBTConfig, config_from_dict
from qa_ebm.errors import CheckpointError
from qa_ebm.io import read_json
from qa_ebm.models.weights import load_module, save_module

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class EBTSpec:
    """What the model needs to know about its inputs: the latent layout and the condition's token space."""

    latent_dim: int
    num_slots: int  # 1 + max_sentences
    condition_vocab: int | None = None  # learned question encoder: the dataset tokenizer's vocabulary
    condition_dim: int | None = None  # frozen pretrained encoder: the width of its token states
    hvae_run: str = ""  # fingerprint of the HVAE run whose latents the model was trained on

    def __post_init__(self) -> None:
        if (self.condition_vocab is None) == (self.condition_dim is None):
            raise ValueError("EBTSpec needs exactly one of condition_vocab (learned) and condition_dim (pretrained)")


@dataclass
class Condition:
    """The question's cached per-layer keys and values: computed once, read by every refinement step."""

    keys: list[torch.Tensor]  # n_layers x (B, H, L, d/H)
    values: list[torch.Tensor]
    mask: torch.Tensor  # (B, L) bool, True at real tokens
    # (B, d) or None: added to every soft token. Reading mode puts the candidate span's place in the passage
    # here, so that it is part of what the energy is conditioned on (and refinement never moves it).
    anchor: torch.Tensor | None = None

    def select(self, rows: torch.Tensor) -> Condition:
        """The conditions of these rows (LongTensor (N,)), e.g. each candidate's own passage window."""
        anchor = None if self.anchor is None else self.anchor[rows]
        return Condition([k[rows] for k in self.keys], [v[rows] for v in self.values], self.mask[rows], anchor)

    def repeat_interleave(self, n: int) -> Condition:
        """Each question n times in a row: for n candidate latents per question (best-of-N, reading mode)."""
        return Condition(
            [k.repeat_interleave(n, 0) for k in self.keys],
            [v.repeat_interleave(n, 0) for v in self.values],
            self.mask.repeat_interleave(n, 0),
            None if self.anchor is None else self.anchor.repeat_interleave(n, 0),
        )

    def with_anchor(self, anchor: torch.Tensor) -> Condition:
        """The same keys and values with a per-row anchor (B, d) added to the soft tokens."""
        return Condition(self.keys, self.values, self.mask, anchor)


# --------------------------------------------------------------------------------------- blocks


class Attention(nn.Module):
    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)
        self.dropout = nn.Dropout(dropout)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        return x.view(B, T, self.n_heads, d // self.n_heads).transpose(1, 2)  # (B, H, T, d/H)

    def keys_values(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(h).chunk(2, dim=-1)
        return self.split_heads(k), self.split_heads(v)

    def forward(self, h: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        q = self.split_heads(self.q(h))  # (B, H, T, d/H)
        att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, T, L')
        att = att.masked_fill(~key_mask[:, None, None, :], torch.finfo(att.dtype).min)
        att = self.dropout(att.softmax(dim=-1))
        y = (att @ v).transpose(1, 2).flatten(2)  # (B, T, d)
        return self.out(y)


class Block(nn.Module):
    """Pre-LN transformer block whose queries may read extra (cached) keys and values besides their own."""

    def __init__(self, d: int, n_heads: int, dropout: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = Attention(d, n_heads, dropout)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d), nn.Dropout(dropout))

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor,
        extra: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B, T, d) with mask (B, T); extra = (keys, values, mask) read in addition to x's own.

        Returns the new x and x's own keys/values (what a later reader of x caches).
        """
        h = self.ln1(x)
        k, v = self.attn.keys_values(h)
        own = (k, v)
        if extra is not None:
            k = torch.cat([extra[0], k], dim=2)
            v = torch.cat([extra[1], v], dim=2)
            mask = torch.cat([extra[2], mask], dim=1)
        x = x + self.attn(h, k, v, mask)
        x = x + self.mlp(self.ln2(x))
        return x, own


class ConditionedTransformer(nn.Module):
    """The backbone shared by the energy model and the direct-regression baseline.

    A transformer encoder over [condition; soft tokens] whose attention mask keeps the condition from
    reading the soft tokens, run as two streams so the condition's stream can be cached.
    """

    def __init__(self, cfg: EBTConfig, spec: EBTSpec):
        super().__init__()
        d = cfg.d_model
        if spec.condition_vocab is not None:
            self.cond_in: nn.Module = nn.Embedding(spec.condition_vocab, d)
        else:
            self.cond_in = nn.Sequential(nn.LayerNorm(spec.condition_dim), nn.Linear(spec.condition_dim, d))
        self.cond_pos = nn.Embedding(cfg.max_condition_tokens, d)
        self.blocks = nn.ModuleList(Block(d, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.max_condition_tokens = cfg.max_condition_tokens

    def condition(self, x: torch.Tensor, mask: torch.Tensor) -> Condition:
        """x: token ids (B, L) or frozen token states (B, L, Dc); mask (B, L). Runs the condition stream once."""
        L = x.shape[1]
        if L > self.max_condition_tokens:
            raise ValueError(f"{L} condition tokens exceed ebt.max_condition_tokens={self.max_condition_tokens}")
        mask = mask.bool()
        c = self.cond_in(x) + self.cond_pos(torch.arange(L, device=x.device))  # (B, L, d)
        keys, values = [], []
        for block in self.blocks:
            c, (k, v) = block(c, mask)
            keys.append(k)
            values.append(v)
        return Condition(keys, values, mask)

    def soft_stream(self, s: torch.Tensor, mask: torch.Tensor, cond: Condition) -> torch.Tensor:
        """Soft tokens s (B, T, d) with mask (B, T) through every layer, reading the cached condition."""
        for block, k, v in zip(self.blocks, cond.keys, cond.values, strict=True):
            s, _ = block(s, mask, extra=(k, v, cond.mask))
        return self.ln_f(s)


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over dim 1 of x (B, T, d) where mask (B, T) is true."""
    w = mask.to(x.dtype).unsqueeze(-1)
    return (x * w).sum(1) / w.sum(1).clamp_min(1.0)


# --------------------------------------------------------------------------------------- models


class LatentModel(nn.Module):
    """What the energy model and the regression baseline share: backbone, slot layout, latent statistics."""

    def __init__(self, cfg: EBTConfig, spec: EBTSpec):
        super().__init__()
        self.cfg, self.spec = cfg, spec
        self.backbone = ConditionedTransformer(cfg, spec)
        self.slot_pos = nn.Embedding(spec.num_slots * cfg.soft_tokens, cfg.d_model)
        # Standardisation of the latents: row 0 for z_g, row 1 for every z_i.
        self.register_buffer("latent_mean", torch.zeros(2, spec.latent_dim))
        self.register_buffer("latent_std", torch.ones(2, spec.latent_dim))

    def condition(self, x: torch.Tensor, mask: torch.Tensor) -> Condition:
        return self.backbone.condition(x, mask)

    def token_mask(self, slot_mask: torch.Tensor) -> torch.Tensor:
        """(B, P) slot mask -> (B, P*M) soft-token mask."""
        return slot_mask.bool().repeat_interleave(self.cfg.soft_tokens, dim=1)

    # --- latent statistics

    def set_latent_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.latent_mean.copy_(mean)
        self.latent_std.copy_(std.clamp_min(1e-6))

    def _stats(self, P: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.tensor([0] + [1] * (P - 1), device=self.latent_mean.device)
        return self.latent_mean[index], self.latent_std[index]  # (P, D) each

    def standardize(self, z: torch.Tensor) -> torch.Tensor:
        """HVAE latents [z_g; z_1..z_S] (B, P, D) -> the model's standardised space."""
        mean, std = self._stats(z.shape[1])
        return (z - mean) / std

    def unstandardize(self, y: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(y.shape[1])
        return y * std + mean

    # --- persistence

    def save_pretrained(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"kind": type(self).__name__, "ebt": asdict(self.cfg), "spec": asdict(self.spec)}
        (d / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        save_module(self, d / WEIGHTS_FILE)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> LatentModel:
        d = Path(directory)
        if not (d / CONFIG_FILE).is_file() or not (d / WEIGHTS_FILE).is_file():
            raise CheckpointError(f"{d}: not a saved {cls.__name__} (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
        meta = read_json(d / CONFIG_FILE)
        if not isinstance(meta, dict):
            raise CheckpointError(f"{d / CONFIG_FILE}: expected a JSON object with kind, ebt, spec")
        unknown = set(meta) - {"kind", "ebt", "spec"}
        if unknown:
            raise CheckpointError(f"{d / CONFIG_FILE}: unknown keys {sorted(unknown)}; valid: kind, ebt, spec")
        kinds = {k.__name__: k for k in (EnergyTransformer, LatentRegressor)}
        kind = kinds.get(meta.get("kind"))
        if kind is None or not issubclass(kind, cls):
            raise CheckpointError(f"{d / CONFIG_FILE}: holds a {meta.get('kind')!r}, not a {cls.__name__}")
        cfg = config_from_dict(EBTConfig, meta["ebt"], where=str(d / CONFIG_FILE))
        try:
            spec = EBTSpec(**meta["spec"])
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{d / CONFIG_FILE}: invalid spec ({e})") from e
        model = kind(cfg, spec)
        load_module(model, d / WEIGHTS_FILE)
        return model


@dataclass
class EnergyOutput:
    energy: torch.Tensor  # (B,)


class EnergyTransformer(LatentModel):
    """E(x, y, k): lower is a better answer. y is standardised, (B, P, D), with a slot mask (B, P)."""

    def __init__(self, cfg: EBTConfig, spec: EBTSpec):
        super().__init__(cfg, spec)
        d, M = cfg.d_model, cfg.soft_tokens
        # Soft-token generator: Linear -> GELU -> LayerNorm, M tokens per latent slot.
        self.soft = nn.Sequential(nn.Linear(spec.latent_dim, M * d), nn.GELU())
        self.soft_ln = nn.LayerNorm(d)
        self.landscape = nn.Embedding(cfg.num_landscapes, d)
        self.head = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1))
        # log alpha of y <- y - alpha g/|g|: learned by the mcmc objective, the step size refinement uses.
        self.log_step_size = nn.Parameter(torch.zeros(()))

    @property
    def step_size(self) -> float:
        return self.log_step_size.detach().exp().item()

    def soft_tokens(self, y: torch.Tensor, k: torch.Tensor | None) -> torch.Tensor:
        B, P, _ = y.shape
        s = self.soft_ln(self.soft(y).view(B, P * self.cfg.soft_tokens, self.cfg.d_model))  # (B, P*M, d)
        s = s + self.slot_pos(torch.arange(s.shape[1], device=y.device))
        k = torch.zeros(B, dtype=torch.long, device=y.device) if k is None else k
        return s + self.landscape(k)[:, None, :]

    def energy(
        self, cond: Condition, y: torch.Tensor, slot_mask: torch.Tensor, k: torch.Tensor | None = None
    ) -> torch.Tensor:
        """E for latents y (B, P, D) given the cached condition of the same B questions -> (B,)."""
        mask = self.token_mask(slot_mask)
        s = self.soft_tokens(y, k)
        if cond.anchor is not None:
            s = s + cond.anchor[:, None, :].to(s.dtype)
        s = self.backbone.soft_stream(s, mask, cond)  # (B, P*M, d)
        return self.head(_masked_mean(s, mask)).squeeze(-1)

    def forward(
        self,
        x: torch.Tensor,
        x_mask: torch.Tensor,
        y: torch.Tensor,
        slot_mask: torch.Tensor,
        k: torch.Tensor | None = None,
    ) -> EnergyOutput:
        return EnergyOutput(self.energy(self.condition(x, x_mask), y, slot_mask, k))


class LatentRegressor(LatentModel):
    """The direct-regression baseline: the same backbone predicts the standardised latent, no energy.

    Learned queries stand in for the soft tokens (there is no y to read); each slot's latent is a linear
    read-out of the mean of its M output tokens.
    """

    def __init__(self, cfg: EBTConfig, spec: EBTSpec):
        super().__init__(cfg, spec)
        self.readout = nn.Linear(cfg.d_model, spec.latent_dim)

    def predict(self, cond: Condition, slot_mask: torch.Tensor) -> torch.Tensor:
        B, P = slot_mask.shape
        M, d = self.cfg.soft_tokens, self.cfg.d_model
        q = self.slot_pos.weight[: P * M].expand(B, -1, -1)  # (B, P*M, d)
        s = self.backbone.soft_stream(q, self.token_mask(slot_mask), cond)
        return self.readout(s.view(B, P, M, d).mean(2))  # (B, P, D)

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, slot_mask: torch.Tensor) -> torch.Tensor:
        return self.predict(self.condition(x, x_mask), slot_mask)


def energy_gradient(
    model: EnergyTransformer,
    cond: Condition,
    y: torch.Tensor,
    slot_mask: torch.Tensor,
    k: torch.Tensor | None = None,
    create_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(E (B,), dE/dy (B, P, D)), the gradient zeroed at padded slots.

    `create_graph=True` keeps the graph so a loss on the gradient (or on a step taken with it) trains
    the weights: the double backward the training objectives need.
    """
    with torch.enable_grad():
        if not y.requires_grad:
            y = y.detach().requires_grad_(True)
        e = model.energy(cond, y, slot_mask, k)
        (g,) = torch.autograd.grad(e.sum(), y, create_graph=create_graph)
    return e, g * slot_mask.to(g.dtype).unsqueeze(-1)


__all__ = [
    "Condition",
    "ConditionedTransformer",
    "EBTSpec",
    "EnergyOutput",
    "EnergyTransformer",
    "LatentModel",
    "LatentRegressor",
    "energy_gradient",
]
