"""Latent -> text decoders: one interface, two ways of telling a language model what to say.

A decoder receives one *plan* vector per sentence (from MLP([z_g; z_i]) in the HVAE) and models that
sentence's tokens, `p(x_i | plan_i) = prod_t p(x_{i,t} | x_{i,<t}, plan_i)`.

- `PrefixLMDecoder` (GPT-2 family, any `AutoModelForCausalLM`): the plan becomes P prefix vectors
  prepended to the token embeddings (Optimus / prefix tuning).
- `MemoryLMDecoder` (BART): the plan becomes P memory vectors the decoder cross-attends to.

Teacher forcing: the LM reads `[start, x_1 .. x_{W-1}]` and predicts `[x_1 .. x_W]`; every sentence row
ends with EOS, so generation stops there. Generation goes through `transformers`' `generate` (KV cache,
greedy / beam / nucleus).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class DecodeSettings:
    """How to turn a plan into tokens. `num_beams > 1` is beam search; `do_sample` with `top_p` is nucleus."""

    max_new_tokens: int = 32
    num_beams: int = 1
    do_sample: bool = False
    top_p: float = 0.9
    temperature: float = 1.0


class LatentDecoder(nn.Module):
    """Interface: `forward(plan, input_ids, token_mask) -> logits`, `token_logits(...)` (the real tokens' rows
    only, what training scores) and `generate(plan, settings) -> ids`; a subclass provides `hidden_states`."""

    def __init__(self, lm: nn.Module, plan_dim: int, prefix_len: int, start_id: int, eos_id: int, pad_id: int):
        super().__init__()
        self.lm = lm
        self.prefix_len = prefix_len
        self.hidden = lm.get_input_embeddings().embedding_dim
        self.start_id, self.eos_id, self.pad_id = start_id, eos_id, pad_id
        self.to_prefix = nn.Linear(plan_dim, prefix_len * self.hidden)

    def hidden_states(self, plan: torch.Tensor, input_ids: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """The LM's last hidden states at the W token positions, (N, W, H): what its head turns into logits."""
        raise NotImplementedError

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

    def prefix(self, plan: torch.Tensor) -> torch.Tensor:
        return self.to_prefix(plan).view(plan.shape[0], self.prefix_len, self.hidden)  # (N, P, H)

    def shift_right(self, input_ids: torch.Tensor) -> torch.Tensor:
        start = torch.full_like(input_ids[:, :1], self.start_id)
        return torch.cat([start, input_ids[:, :-1]], dim=1)  # (N, W)

    def _strip(self, sequences: torch.Tensor) -> list[list[int]]:
        out = []
        for row in sequences.tolist():
            ids = [t for t in row if t != self.pad_id]
            out.append(ids[: ids.index(self.eos_id)] if self.eos_id in ids else ids)
        return out

    def _generate_kwargs(self, settings: DecodeSettings) -> dict:
        kwargs = {
            "max_new_tokens": settings.max_new_tokens,
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
        embeds = torch.cat([self.prefix(plan), self.lm.get_input_embeddings()(start)], dim=1)
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
        out = self.lm.generate(
            input_ids=start, encoder_hidden_states=self.prefix(plan), **self._generate_kwargs(settings)
        )
        return self._strip(out[:, 1:])
