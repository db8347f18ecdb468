"""Latent -> text decoders: one interface, two ways of telling a language model what to say.

A decoder receives one *plan* vector per sentence (from MLP([z_g; z_i]) in the HVAE) and models that
sentence's tokens, `p(x_i | plan_i) = prod_t p(x_{i,t} | x_{i,<t}, plan_i)`.

- `PrefixLMDecoder` (GPT-2 family, any `AutoModelForCausalLM`): the plan becomes P prefix vectors
  prepended to the token embeddings (Optimus / prefix tuning).
- `MemoryLMDecoder` (BART): the plan becomes P memory vectors the decoder cross-attends to.

Teacher forcing: the LM reads `[start, x_1 .. x_{W-1}]` and predicts `[x_1 .. x_W]`; every sentence row
ends with EOS, so generation stops there. Greedy decoding (the default) is a short loop of its own over the
LM's KV cache, all sentences of all answers in one batch that shrinks as sentences end: it gives the tokens
`generate` gives at a fraction of its per-token overhead, which dominates at these widths
(bench/results/answer_speed.md). Beam search and nucleus sampling go through `transformers`' `generate`.
"""

from __future__ import annotations

import abc
import functools
import inspect
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class DecodeSettings:
    """How to turn a plan into tokens. `num_beams > 1` is beam search; `do_sample` with `top_p` is nucleus."""

    max_new_tokens: int = 32
    min_new_tokens: int = 0  # EOS is barred before this many tokens (benchmarks use it to fix the length)
    num_beams: int = 1
    do_sample: bool = False
    top_p: float = 0.9
    temperature: float = 1.0


@functools.cache
def cache_argument(forward) -> str:
    """The name `forward` takes the KV cache under: transformers 5.24 renamed `past_key_values` to `cache` (the
    old name warns, and goes in 5.40); older versions know only `past_key_values`. Outputs follow the same name."""
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


class LatentDecoder(nn.Module, abc.ABC):
    """Interface: `forward(plan, input_ids, token_mask) -> logits`, `token_logits(...)` (the real tokens' rows
    only, what training scores) and `generate(plan, settings) -> ids`; a subclass provides `hidden_states`."""

    def __init__(self, lm: nn.Module, plan_dim: int, prefix_len: int, start_id: int, eos_id: int, pad_id: int):
        super().__init__()
        self.lm = lm
        self.prefix_len = prefix_len
        self.hidden = lm.get_input_embeddings().embedding_dim
        self.start_id, self.eos_id, self.pad_id = start_id, eos_id, pad_id
        self.to_prefix = nn.Linear(plan_dim, prefix_len * self.hidden)

    @abc.abstractmethod
    def hidden_states(self, plan: torch.Tensor, input_ids: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """The LM's last hidden states at the W token positions, (N, W, H): what its head turns into logits."""

    def token_logits(self, plan: torch.Tensor, input_ids: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """Logits at the real tokens only, (T, V) in the row-major order of `token_mask`: `forward(...)[mask]`.

        At small widths the LM head is the widest matmul in the model (V >> H), and sentences padded to
        max_words are half padding on SQuAD: leaving the padding and the prefix positions out of the head
        (and out of the softmax over V) halves its work, a fifth of a tiny HVAE training step's FLOPs
        (bench/train_speed.py).
        """
        real = token_mask.bool()
        if getattr(self.lm.config, "final_logit_softcapping", None):  # a head that is more than a projection
            return self(plan, input_ids, token_mask)[real]
        return self.lm.get_output_embeddings()(self.hidden_states(plan, input_ids, token_mask)[real])

    def _cache_argument(self) -> str:
        return cache_argument(type(self.lm).forward)

    def prefix(self, plan: torch.Tensor) -> torch.Tensor:
        return self.to_prefix(plan).view(plan.shape[0], self.prefix_len, self.hidden)  # (N, P, H)

    def shift_right(self, input_ids: torch.Tensor) -> torch.Tensor:
        start = torch.full_like(input_ids[:, :1], self.start_id)
        return torch.cat([start, input_ids[:, :-1]], dim=1)  # (N, W)

    def _strip(self, sequences: torch.Tensor) -> list[list[int]]:
        """Each row's tokens before its first EOS, pad ids left out. Decoding pads rows after their EOS; a
        sampled pad id before it is noise (pad is never a training target), and an LM whose pad is its EOS
        (GPT-2 style) ends there either way."""
        out = []
        for row in sequences.tolist():
            ids = [t for t in row if t != self.pad_id]
            out.append(ids[: ids.index(self.eos_id)] if self.eos_id in ids else ids)
        return out

    @staticmethod
    def _is_greedy(settings: DecodeSettings) -> bool:
        return settings.num_beams == 1 and not settings.do_sample

    def _greedy(
        self, first: Mapping[str, torch.Tensor], per_row: Mapping[str, torch.Tensor], settings: DecodeSettings
    ) -> list[list[int]]:
        """Greedy decoding over the KV cache: `first` is the first forward's inputs (N rows); `per_row` holds
        the inputs every later forward reads again (BART's memory), cut down with the cache as rows finish.

        A row leaves the batch once it emits EOS, so a batch of sentences costs what its unfinished rows
        cost, and no padding ever enters the LM (nor needs an attention mask).
        """
        max_new_tokens = settings.max_new_tokens
        n = next(iter(first.values())).shape[0]
        device = next(iter(first.values())).device
        tokens = torch.full((n, max_new_tokens), self.pad_id, dtype=torch.long, device=device)  # (N, T)
        rows = torch.arange(n, device=device)  # the rows of `tokens` still being decoded
        cache_arg = self._cache_argument()
        out = self.lm(**first, use_cache=True, logits_to_keep=1)
        cache, per_row = getattr(out, cache_arg), dict(per_row)
        for t in range(max_new_tokens):
            logits = out.logits[:, -1]  # (n, V)
            if t < settings.min_new_tokens:
                logits = logits.clone()
                logits[:, self.eos_id] = float("-inf")
            step = logits.argmax(-1)  # (n,)
            tokens[rows, t] = step
            going = step != self.eos_id
            if t == max_new_tokens - 1 or not bool(going.any()):
                break
            if not bool(going.all()):
                keep = going.nonzero().squeeze(1)
                rows, step = rows[keep], step[keep]
                cache.batch_select_indices(keep)
                per_row = {k: v[keep] for k, v in per_row.items()}
            step_inputs = {"input_ids": step[:, None], cache_arg: cache, **per_row}
            out = self.lm(**step_inputs, use_cache=True, logits_to_keep=1)
        return self._strip(tokens)

    def _generate_kwargs(self, settings: DecodeSettings) -> dict:
        kwargs = {
            "max_new_tokens": settings.max_new_tokens,
            "min_new_tokens": settings.min_new_tokens,
            "num_beams": settings.num_beams,
            "do_sample": settings.do_sample,
            "eos_token_id": self.eos_id,
            "pad_token_id": self.pad_id,
        }
        if settings.do_sample:
            kwargs.update(top_p=settings.top_p, top_k=0, temperature=settings.temperature)  # nucleus only
        return kwargs


class PrefixLMDecoder(LatentDecoder):
    """Causal LM conditioned on P prefix vectors per sentence."""

    def _inputs(self, plan: torch.Tensor, input_ids: torch.Tensor, token_mask: torch.Tensor) -> dict:
        N, P = plan.shape[0], self.prefix_len
        dec_in = self.shift_right(input_ids)
        embeds = torch.cat([self.prefix(plan), self.lm.get_input_embeddings()(dec_in)], dim=1)  # (N, P+W, H)
        attn = torch.cat([token_mask.new_ones(N, P + 1), token_mask[:, :-1]], dim=1)  # the start token is real
        return {"inputs_embeds": embeds, "attention_mask": attn}

    def forward(self, plan: torch.Tensor, input_ids: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        logits = self.lm(**self._inputs(plan, input_ids, token_mask)).logits
        return logits[:, self.prefix_len :]  # (N, W, V): position P reads the start token and predicts x_1

    def hidden_states(self, plan: torch.Tensor, input_ids: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        out = self.lm.base_model(**self._inputs(plan, input_ids, token_mask), use_cache=False)
        return out.last_hidden_state[:, self.prefix_len :]  # (N, W, H)

    @torch.no_grad()
    def generate(self, plan: torch.Tensor, settings: DecodeSettings) -> list[list[int]]:
        start = torch.full((plan.shape[0], 1), self.start_id, dtype=torch.long, device=plan.device)
        embeds = torch.cat([self.prefix(plan), self.lm.get_input_embeddings()(start)], dim=1)  # (N, P+1, H)
        if self._is_greedy(settings):
            return self._greedy({"inputs_embeds": embeds}, {}, settings)
        attn = torch.ones(embeds.shape[:2], dtype=torch.long, device=plan.device)
        out = self.lm.generate(inputs_embeds=embeds, attention_mask=attn, **self._generate_kwargs(settings))
        return self._strip(out)  # with inputs_embeds only, generate returns just the new tokens


class MemoryLMDecoder(LatentDecoder):
    """BART-style decoder cross-attending to P memory vectors per sentence (`BartForCausalLM`)."""

    def _inputs(self, plan: torch.Tensor, input_ids: torch.Tensor, token_mask: torch.Tensor) -> dict:
        dec_in = self.shift_right(input_ids)
        attn = torch.cat([token_mask.new_ones(plan.shape[0], 1), token_mask[:, :-1]], dim=1)
        return {"input_ids": dec_in, "attention_mask": attn, "encoder_hidden_states": self.prefix(plan)}

    def forward(self, plan: torch.Tensor, input_ids: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        return self.lm(**self._inputs(plan, input_ids, token_mask)).logits

    def hidden_states(self, plan: torch.Tensor, input_ids: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        return self.lm.base_model(**self._inputs(plan, input_ids, token_mask), use_cache=False).last_hidden_state

    @torch.no_grad()
    def generate(self, plan: torch.Tensor, settings: DecodeSettings) -> list[list[int]]:
        start = torch.full((plan.shape[0], 1), self.start_id, dtype=torch.long, device=plan.device)
        memory = self.prefix(plan)  # (N, P, H)
        if self._is_greedy(settings):
            from transformers import DynamicCache, EncoderDecoderCache

            # Lazily grown caches: BartForCausalLM sizes its own from config.num_hidden_layers, which BartConfig
            # maps to encoder_layers (1 here), so a deeper decoder would index past its end.
            cache = EncoderDecoderCache(DynamicCache(), DynamicCache())
            first = {"input_ids": start, "encoder_hidden_states": memory, self._cache_argument(): cache}
            return self._greedy(first, {"encoder_hidden_states": memory}, settings)
        out = self.lm.generate(input_ids=start, encoder_hidden_states=memory, **self._generate_kwargs(settings))
        return self._strip(out[:, 1:])
