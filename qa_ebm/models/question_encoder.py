"""Question (+ context) -> the condition tokens the energy transformer reads.

Two encoders with one call signature, ``encoder(questions, contexts) -> (x, mask)``:

- :class:`LearnedConditionTokens` ("learned"): token ids of the dataset's own tokenizer,
  ``[question; EOS; context]`` cut to ``max_tokens``; the embeddings are trained with the energy model.
- :class:`FrozenConditionEncoder` (a Hub id or local dir, e.g. all-MiniLM-L6-v2): the last hidden states
  of a frozen pretrained encoder over the pair ``(question, context)``, computed once per question
  (no gradient reaches it), so training and refinement pay for it once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from qa_ebm.config import EBTConfig
from qa_ebm.data.tokenizer import Tokenizer, load_tokenizer
from qa_ebm.errors import CheckpointError

LEARNED = "learned"


class LearnedConditionTokens:
    """Ids (N, max_tokens) int64 and mask (N, max_tokens) bool from the dataset tokenizer."""

    def __init__(self, tokenizer: Tokenizer, max_tokens: int):
        self.tokenizer, self.max_tokens = tokenizer, max_tokens

    @property
    def spec_fields(self) -> dict[str, int]:
        return {"condition_vocab": self.tokenizer.vocab_size}

    def token_counts(self, questions: Sequence[str], contexts: Sequence[str | None]) -> list[int]:
        """Tokens each (question, context) takes before the cut to max_tokens."""
        q = self.tokenizer.encode_batch(list(questions))
        c = self.tokenizer.encode_batch([x or "" for x in contexts])
        return [len(qi) + 1 + len(ci) for qi, ci in zip(q, c, strict=True)]

    def __call__(self, questions: Sequence[str], contexts: Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        special = self.tokenizer.special
        q_ids = self.tokenizer.encode_batch(list(questions))
        with_context = [i for i, c in enumerate(contexts) if c]
        c_ids = dict(zip(with_context, self.tokenizer.encode_batch([contexts[i] for i in with_context]), strict=True))
        ids = np.full((len(q_ids), self.max_tokens), special.pad_id, dtype=np.int64)
        mask = np.zeros((len(q_ids), self.max_tokens), dtype=bool)
        for i, q in enumerate(q_ids):
            row = [*q, special.eos_id, *c_ids.get(i, [])][: self.max_tokens]
            ids[i, : len(row)] = row
            mask[i, : len(row)] = True
        x, mask = torch.from_numpy(ids), torch.from_numpy(mask)
        return x, mask


class FrozenConditionEncoder:
    """Last hidden states (N, max_tokens, Dc) float32 of a frozen pretrained encoder, and their mask."""

    def __init__(self, name: str, max_tokens: int, batch_size: int = 32, device: str | torch.device = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        from qa_ebm.models.pretrained import MODEL_LOAD_ERRORS, resolve_pretrained

        path = resolve_pretrained(name)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
            self.model = AutoModel.from_pretrained(path, trust_remote_code=False).eval().to(device)
        except MODEL_LOAD_ERRORS as e:
            raise CheckpointError(
                f"ebt.question_encoder={name!r}: cannot load it ({e}); give a local model dir, or 'learned'"
            ) from e
        self.model.requires_grad_(False)
        self.name, self.max_tokens, self.batch_size, self.device = name, max_tokens, batch_size, device

    @property
    def spec_fields(self) -> dict[str, int]:
        return {"condition_dim": int(self.model.config.hidden_size)}

    def token_counts(self, questions: Sequence[str], contexts: Sequence[str | None]) -> list[int]:
        """Tokens each (question, context) takes, special tokens included, before the cut to max_tokens."""
        return [
            len(self.tokenizer(q, c or None, truncation=False)["input_ids"])
            for q, c in zip(questions, contexts, strict=True)
        ]

    @torch.no_grad()
    def __call__(self, questions: Sequence[str], contexts: Sequence[str | None]) -> tuple[torch.Tensor, torch.Tensor]:
        # Questions with a context are encoded as pairs, the others alone, so that a question's states do
        # not depend on what else is in its batch.
        dim = int(self.model.config.hidden_size)
        states = torch.zeros(len(questions), self.max_tokens, dim)
        masks = torch.zeros(len(questions), self.max_tokens, dtype=torch.bool)
        paired = [i for i, c in enumerate(contexts) if c]
        alone = [i for i, c in enumerate(contexts) if not c]
        for rows, with_context in ((paired, True), (alone, False)):
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start : start + self.batch_size]
                enc = self.tokenizer(
                    [questions[i] for i in chunk],
                    [contexts[i] for i in chunk] if with_context else None,
                    truncation="longest_first",  # a long question must not make the pair fail
                    max_length=self.max_tokens,
                    padding="max_length",
                    return_tensors="pt",
                ).to(self.device)
                states[chunk] = self.model(**enc).last_hidden_state.float().cpu()  # (b, max_tokens, Dc)
                masks[chunk] = enc["attention_mask"].bool().cpu()
        return states, masks


def build_condition_encoder(cfg: EBTConfig, tokenizer_dir: str) -> LearnedConditionTokens | FrozenConditionEncoder:
    if cfg.question_encoder == LEARNED:
        return LearnedConditionTokens(load_tokenizer(tokenizer_dir), cfg.max_condition_tokens)
    return FrozenConditionEncoder(cfg.question_encoder, cfg.max_condition_tokens)
