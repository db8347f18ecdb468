"""Sentences -> vectors from a frozen pretrained encoder: the HVAE's word level when it is pretrained.

h = mean over the sentence's real tokens of the encoder's last hidden states (sentence-transformers'
mean pooling, without its final normalisation). The encoder is frozen, so a dataset's sentences are
embedded once and the HVAE trains on the cached vectors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from qa_ebm.models.pretrained import load_encoder


class SentenceEmbedder:
    def __init__(self, name: str, max_tokens: int = 64, batch_size: int = 128, device: str | torch.device = "cpu"):
        self.model, self.tokenizer = load_encoder(name)
        self.model.eval().requires_grad_(False).to(device)
        self.name, self.max_tokens, self.batch_size, self.device = name, max_tokens, batch_size, device

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def __call__(self, sentences: Sequence[str]) -> torch.Tensor:
        """(N, dim) float32, one vector per sentence, in the order given."""
        out = torch.zeros(len(sentences), self.dim)
        order = np.argsort([len(s) for s in sentences], kind="stable")  # similar lengths share a batch
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            enc = self.tokenizer(
                [sentences[i] for i in rows],
                truncation=True,
                max_length=self.max_tokens,
                padding=True,
                return_tensors="pt",
            ).to(self.device)
            states = self.model(**enc).last_hidden_state  # (b, T, dim)
            mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)
            out[torch.from_numpy(rows)] = ((states * mask).sum(1) / mask.sum(1).clamp_min(1)).float().cpu()
        return out

    def embed_answers(self, answers: Sequence[Sequence[str]], max_sentences: int) -> np.ndarray:
        """(N, max_sentences, dim) float16 for answers given as lists of sentences; zeros at padding."""
        flat = [s for sents in answers for s in list(sents)[:max_sentences]]
        vectors = self(flat).half().numpy()
        out = np.zeros((len(answers), max_sentences, self.dim), dtype=np.float16)
        k = 0
        for b, sents in enumerate(answers):
            n = min(len(sents), max_sentences)
            out[b, :n] = vectors[k : k + n]
            k += n
        return out
