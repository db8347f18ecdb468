"""One tokenizer interface over SentencePiece (trained on the corpus, offline) and Hugging Face.

Both expose the ids the models need: `pad_id`, `eos_id` (ends every sentence slot), `mask_id` (word
dropout), `unk_id`. A tokenizer is saved as a directory with `qa_ebm_tokenizer.json` naming its kind
and special ids, so later stages load exactly what preprocessing used.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qa_ebm.errors import CheckpointError, DataError
from qa_ebm.io import read_json

META_FILE = "qa_ebm_tokenizer.json"
SP_MODEL_FILE = "spm.model"


@dataclass
class SpecialIds:
    pad_id: int
    eos_id: int
    mask_id: int
    unk_id: int


class SentencePieceTokenizer:
    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, name: str = "trained"):
        import sentencepiece as spm

        self._proto = model_proto
        self.name = name
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.special = SpecialIds(
            pad_id=self._sp.pad_id(),
            eos_id=self._sp.eos_id(),
            mask_id=self._sp.piece_to_id("<mask>"),
            unk_id=self._sp.unk_id(),
        )
        if min(asdict(self.special).values()) < 0 or self.special.mask_id == self.special.unk_id:
            raise DataError(
                f"sentencepiece model {name!r} lacks pad/eos/<mask> pieces; "
                "train one with qa-ebm preprocess (data.tokenizer.name: null)"
            )

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, model_type: str = "unigram") -> SentencePieceTokenizer:
        import sentencepiece as spm

        buffer = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(texts),
                model_writer=buffer,
                vocab_size=vocab_size,
                model_type=model_type,
                pad_id=0,
                unk_id=1,
                bos_id=2,
                eos_id=3,
                user_defined_symbols=["<mask>"],
                character_coverage=1.0,  # LaTeX and accents must not become <unk>
                hard_vocab_limit=False,  # a small corpus gets the vocabulary it can support
                byte_fallback=True,
                num_threads=1,  # multi-threaded training is not deterministic
                minloglevel=2,
            )
        except RuntimeError as e:
            raise DataError(f"training the SentencePiece tokenizer failed: {e}") from e
        return cls(buffer.getvalue())

    @classmethod
    def from_file(cls, path: str | Path) -> SentencePieceTokenizer:
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: sentencepiece model file not found")
        return cls(path.read_bytes(), name=str(path))

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._sp.encode(texts)

    def decode(self, ids: list[int]) -> str:
        return self._sp.decode([i for i in ids if i not in (self.special.pad_id, self.special.eos_id)])

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / SP_MODEL_FILE).write_bytes(self._proto)
        _write_meta(d, self)


class HFTokenizer:
    """A Hugging Face tokenizer (GPT-2 BPE in the base config) extended with PAD, EOS and MASK."""

    kind = "hf"

    def __init__(self, tokenizer, name: str):
        self._tok = tokenizer
        self.name = name
        added = {}
        if tokenizer.pad_token is None:
            added["pad_token"] = "<|pad|>"
        if tokenizer.eos_token is None:
            added["eos_token"] = "<|endoftext|>"
        if tokenizer.mask_token is None:
            added["mask_token"] = "<|mask|>"
        if added:
            tokenizer.add_special_tokens(added)
        self.special = SpecialIds(
            pad_id=tokenizer.pad_token_id,
            eos_id=tokenizer.eos_token_id,
            mask_id=tokenizer.mask_token_id,
            unk_id=tokenizer.unk_token_id if tokenizer.unk_token_id is not None else tokenizer.eos_token_id,
        )

    @classmethod
    def from_pretrained(cls, name: str) -> HFTokenizer:
        """`name` is a Hub id (`gpt2`), a local directory, a `.gguf` file or a packaged GGUF alias
        (`smollm2`, see `resolve_causal_lm`: the tokenizer a GGUF decoder reads); no remote code is ever run."""
        from transformers import AutoTokenizer

        from qa_ebm.models.pretrained import resolve_causal_lm

        path, gguf_file = resolve_causal_lm(name)
        local = Path(path)
        try:
            tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf_file, trust_remote_code=False)
        except (OSError, ValueError) as e:
            hint = (
                ""
                if local.is_dir()
                else ("; offline? pass a local tokenizer directory instead (data.tokenizer.name=PATH)")
            )
            raise DataError(f"cannot load tokenizer {name!r}: {str(e).splitlines()[0]}{hint}") from e
        return cls(tok, name=name)

    @property
    def vocab_size(self) -> int:
        return len(self._tok)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return self._tok(texts, add_special_tokens=False, verbose=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True)

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        self._tok.save_pretrained(d)
        _write_meta(d, self)


Tokenizer = SentencePieceTokenizer | HFTokenizer


def build_tokenizer(kind: str, name: str | None, corpus: Iterable[str], vocab_size: int, model_type: str) -> Tokenizer:
    if kind == "hf":
        return HFTokenizer.from_pretrained(name)
    if name:
        return SentencePieceTokenizer.from_file(name)
    return SentencePieceTokenizer.train(corpus, vocab_size=vocab_size, model_type=model_type)


def load_tokenizer(directory: str | Path) -> Tokenizer:
    d = Path(directory)
    meta_path = d / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{d}: not a qa-ebm tokenizer directory (no {META_FILE})")
    meta = read_json(meta_path)
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path}: expected a JSON object with kind, name, special")
    if meta.get("kind") == "sentencepiece":
        model_file = d / SP_MODEL_FILE
        try:
            tok: Tokenizer = SentencePieceTokenizer(model_file.read_bytes(), name=str(meta.get("name", "")))
        except OSError as e:
            raise CheckpointError(f"{model_file}: cannot read ({e.strerror or e})") from e
        except RuntimeError as e:  # sentencepiece's own parser: not a model protobuf
            raise CheckpointError(f"{model_file}: not a SentencePiece model ({str(e).splitlines()[0][:120]})") from e
    elif meta.get("kind") == "hf":
        tok = HFTokenizer.from_pretrained(str(d))
        tok.name = meta.get("name", str(d))
    else:
        raise CheckpointError(f"{meta_path}: unknown tokenizer kind {meta.get('kind')!r}")
    if asdict(tok.special) != meta.get("special"):
        raise CheckpointError(
            f"{meta_path}: special ids {meta.get('special')} do not match the tokenizer's {asdict(tok.special)}"
        )
    return tok


def tokenizer_info(tok: Tokenizer) -> dict:
    return {"kind": tok.kind, "name": tok.name, "vocab_size": tok.vocab_size, "special": asdict(tok.special)}


def _write_meta(d: Path, tok: Tokenizer) -> None:
    (d / META_FILE).write_text(json.dumps(tokenizer_info(tok), indent=2) + "\n")


def encode_sentences(tok: Tokenizer, answers: list[list[str]], max_sentences: int, max_words: int) -> dict[str, Any]:
    """Sentences -> the HVAE's hierarchical ids: (N, S, W) with EOS closing each sentence, and masks.

    Each sentence is cut to `max_words - 1` tokens before its EOS; sentences past `max_sentences` are
    dropped. Also returns, per answer, how many sentences were cut and the longest sentence's length.
    """
    S, W = max_sentences, max_words
    pad, eos = tok.special.pad_id, tok.special.eos_id
    flat_ids = iter(tok.encode_batch([s for sents in answers for s in sents[:S]]))
    N = len(answers)
    input_ids = np.full((N, S, W), pad, dtype=np.int32)
    token_mask = np.zeros((N, S, W), dtype=np.int8)
    sentence_mask = np.zeros((N, S), dtype=np.int8)
    truncated = np.zeros(N, dtype=np.int32)
    longest = np.zeros(N, dtype=np.int32)
    for b, sents in enumerate(answers):
        for s in range(min(len(sents), S)):
            ids = next(flat_ids)
            longest[b] = max(longest[b], len(ids))
            truncated[b] += len(ids) > W - 1
            ids = [*ids[: W - 1], eos]
            input_ids[b, s, : len(ids)] = ids
            token_mask[b, s, : len(ids)] = 1
            sentence_mask[b, s] = 1
    return {
        "input_ids": input_ids,
        "token_mask": token_mask,
        "sentence_mask": sentence_mask,
        "num_truncated": truncated,
        "longest_sentence": longest,
    }
