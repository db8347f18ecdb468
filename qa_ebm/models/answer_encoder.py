"""Answer text <-> HVAE latents, exactly as `train-hvae` encoded the dataset's answers.

Reading mode encodes every candidate span of a passage, and `verify` a user's answer, with the run's own
sentence splitter and tokenizer, so a candidate lands where the same text would have in training; the
answer pipelines decode refined latents back to text through the same HVAE.
"""

from __future__ import annotations

from pathlib import Path

import torch

from qa_ebm.data.sentences import SentenceSplitter
from qa_ebm.data.tokenizer import Tokenizer, encode_sentences, load_tokenizer
from qa_ebm.errors import CheckpointError
from qa_ebm.models.decoders import DecodeSettings
from qa_ebm.models.hvae import HVAE


class AnswerEncoder:
    """texts -> ([mu_g; mu_1..mu_S] (N, 1+S, D), slot mask (N, 1+S)), the posterior means of an HVAE;
    :meth:`decode` goes the other way."""

    def __init__(self, hvae: HVAE, tokenizer: Tokenizer, splitter: SentenceSplitter, batch_size: int = 128):
        self.hvae, self.tokenizer, self.splitter, self.batch_size = hvae.eval(), tokenizer, splitter, batch_size
        self.embedder = None  # the frozen word level of an HVAE with hvae.word_encoder set
        if hvae.cfg.word_encoder != "scratch":
            from qa_ebm.models.sentence_embedder import SentenceEmbedder

            self.embedder = SentenceEmbedder(hvae.cfg.word_encoder)

    @classmethod
    def from_run(cls, run_dir: str | Path, batch_size: int = 128) -> AnswerEncoder:
        """From a train-hvae run dir (model/, tokenizer/, punkt/)."""
        d = Path(run_dir)
        for part in ("model", "tokenizer", "punkt"):
            if not (d / part).is_dir():
                raise CheckpointError(f"{d}: not a finished train-hvae run (no {part}/)")
        hvae = HVAE.from_pretrained(d / "model")
        return cls(hvae, load_tokenizer(d / "tokenizer"), SentenceSplitter.load(d / "punkt"), batch_size)

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        spec = self.hvae.spec
        device = next(self.hvae.parameters()).device
        ys, masks = [], []
        for start in range(0, len(texts), self.batch_size):
            # A span without a sentence boundary (most of them) is one sentence; an empty text stays one
            # empty sentence (EOS alone) rather than an answer with no sentence at all.
            sentences = [self.splitter.split(t) or [t.strip()] for t in texts[start : start + self.batch_size]]
            ids = encode_sentences(self.tokenizer, sentences, spec.max_sentences, spec.max_words)
            batch = [torch.from_numpy(ids[k]).long().to(device) for k in ("input_ids", "token_mask", "sentence_mask")]
            emb = None
            if self.embedder is not None:
                emb = torch.from_numpy(self.embedder.embed_answers(sentences, spec.max_sentences)).float().to(device)
            post = self.hvae.encode(*batch, sentence_emb=emb)
            real = batch[2].bool()
            ys.append(torch.cat([post.mu_g[:, None], post.mu_l], 1).float().cpu())
            masks.append(torch.cat([torch.ones_like(real[:, :1]), real], 1).cpu())
        y, mask = torch.cat(ys), torch.cat(masks)
        return y * mask.unsqueeze(-1), mask

    @torch.no_grad()
    def decode(self, z: torch.Tensor, mask: torch.Tensor, settings: DecodeSettings | None = None) -> list[str]:
        """HVAE latents [z_g; z_1..z_S] (N, 1+S, D) with slot mask (N, 1+S) -> text, one sentence per real slot."""
        device = next(self.hvae.parameters()).device
        z = (z * mask.unsqueeze(-1)).to(device)
        ids = self.hvae.decode(z[:, 0], z[:, 1:], mask[:, 1:].sum(1).to(device), settings)
        return [" ".join(self.tokenizer.decode(sentence) for sentence in answer).strip() for answer in ids]
