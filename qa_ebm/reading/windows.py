"""(question, passage) pairs -> overlapping token windows with a map back to passage characters.

An encoder reads at most ``max_length`` tokens, a SQuAD passage can be longer. As in Hugging Face's
question-answering pipeline and ``run_qa.py``, every pair is tokenised as
``[CLS] question [SEP] passage-piece [SEP]`` with ``truncation="only_second"``: the question is
repeated in every window and the passage is cut into pieces that overlap by ``stride`` tokens
(the tokenizer's ``stride`` is the overlap, HF's ``doc_stride``), so an answer near a cut is whole in
at least one window when it is shorter than ``stride`` tokens.

Each window keeps, per token, the passage character range it came from (-1 / ``None`` for question
and special tokens) and the index of the example it belongs to, so a token span maps back to an exact
passage substring: ``context[offsets[s][0]:offsets[e][1]]``.

Guards: the question is cut to ``max_question_tokens``, and further when the window would otherwise
hold no more than ``stride`` passage tokens (the tokenizer refuses a pair whose first sequence leaves
no room for the passage, and panics when ``stride`` does not fit what is left); a
passage that needs more than ``max_windows`` windows is logged and only its first windows are kept;
an empty, whitespace-only or binary passage raises :class:`DataError`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from qa_ebm.data.text_checks import check_text
from qa_ebm.errors import ConfigError

log = logging.getLogger(__name__)

_CHUNK = 512  # examples per tokenizer call


def check_passage(context: str, where: str = "passage") -> None:
    """Raise :class:`DataError` unless `context` is non-empty text (not whitespace, not binary)."""
    check_text(context, where, what="passage")


@dataclass
class Windows:
    """The windows of N (question, passage) pairs; W windows in all, each at most max_length tokens.

    Stored compactly (a full SQuAD train set is ~20M tokens): ``offsets[w]`` is an int32 array
    (T_w, 2) of passage character ranges with -1 for question and special tokens;
    :meth:`token_offsets` gives the same as ``(start, end)`` tuples and None.
    """

    input_ids: list[np.ndarray]  # (W,) arrays (T_w,) int32, unpadded
    token_type_ids: list[np.ndarray] | None  # (W,) arrays (T_w,) int8; None when the tokenizer has none
    offsets: list[np.ndarray]  # (W,) arrays (T_w, 2) int32, -1 off the passage
    example: list[int]  # (W,) index into questions/contexts
    cls_index: list[int]  # (W,) where the "no answer in this window" target points (HF run_qa)
    questions: list[str]  # (N,) as tokenised (possibly cut to max_question_tokens)
    contexts: list[str]  # (N,)
    pad_id: int = 0
    _by_example: dict[int, list[int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for w, b in enumerate(self.example):
            self._by_example.setdefault(b, []).append(w)

    def __len__(self) -> int:
        return len(self.input_ids)

    def windows_of(self, example: int) -> list[int]:
        """Indices of the windows of one example, in passage order."""
        return self._by_example.get(example, [])

    def passage_mask(self, w: int) -> np.ndarray:
        """(T_w,) bool: which tokens of window w come from the passage."""
        return self.offsets[w][:, 0] >= 0

    def token_offsets(self, w: int) -> list[tuple[int, int] | None]:
        """Per token of window w: its passage character range, or None (question / special token)."""
        return [(int(s), int(e)) if s >= 0 else None for s, e in self.offsets[w]]

    def char_span(self, w: int, start_token: int, end_token: int) -> tuple[int, int]:
        """Passage characters ``[start, end)`` covered by tokens ``start_token..end_token`` (inclusive)."""
        offs = self.offsets[w]
        if not (0 <= start_token <= end_token < len(offs)):
            raise IndexError(f"window {w}: token span ({start_token}, {end_token}) outside 0..{len(offs) - 1}")
        start, end = int(offs[start_token, 0]), int(offs[end_token, 1])
        if start < 0 or end < 0:
            raise ValueError(f"window {w}: token span ({start_token}, {end_token}) is not inside the passage")
        return start, end

    def span_text(self, w: int, start_token: int, end_token: int) -> str:
        s, e = self.char_span(w, start_token, end_token)
        return self.contexts[self.example[w]][s:e]

    def token_span(self, w: int, char_start: int, char_end: int) -> tuple[int, int] | None:
        """The tokens of window w that cover passage characters ``[char_start, char_end)``, or None.

        As ``run_qa.py``: the start token is the last passage token starting at or before
        `char_start`, the end token the first one ending at or after `char_end`; None when the span
        is not wholly inside the window's piece of passage.
        """
        offs = self.offsets[w]
        tokens = np.flatnonzero(offs[:, 0] >= 0)
        if not len(tokens) or char_end <= char_start:
            return None
        starts, ends = offs[tokens, 0], offs[tokens, 1]
        if starts[0] > char_start or ends[-1] < char_end:
            return None
        start = int(tokens[starts <= char_start].max())
        end = int(tokens[ends >= char_end].min())
        return start, max(start, end)  # tokens sharing one character's offsets can invert the pair

    def answer_positions(self, answer_starts: Sequence[int], answer_texts: Sequence[str]) -> tuple[list, list]:
        """Gold (start, end) token per window; the CLS index where the window lacks the whole answer.

        `answer_starts` / `answer_texts` are per example (length N); an example without an answer
        (start < 0 or empty text) points at CLS in all its windows.
        """
        starts, ends = [], []
        for w, b in enumerate(self.example):
            s, text = answer_starts[b], answer_texts[b]
            span = self.token_span(w, s, s + len(text)) if s >= 0 and text else None
            starts.append(self.cls_index[w] if span is None else span[0])
            ends.append(self.cls_index[w] if span is None else span[1])
        return starts, ends

    def collate(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Windows `indices`, right-padded to the longest: input_ids, attention_mask, passage_mask,
        token_type_ids (when the tokenizer has them), all (B, T)."""
        T = max(len(self.input_ids[w]) for w in indices)
        B = len(indices)
        ids = np.full((B, T), self.pad_id, dtype=np.int64)
        attn = np.zeros((B, T), dtype=np.int64)
        passage = np.zeros((B, T), dtype=bool)
        types = np.zeros((B, T), dtype=np.int64)
        for i, w in enumerate(indices):
            n = len(self.input_ids[w])
            ids[i, :n] = self.input_ids[w]
            attn[i, :n] = 1
            passage[i, :n] = self.passage_mask(w)
            if self.token_type_ids is not None:
                types[i, :n] = self.token_type_ids[w]
        batch = {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(attn),
            "passage_mask": torch.from_numpy(passage),
        }
        if self.token_type_ids is not None:
            batch["token_type_ids"] = torch.from_numpy(types)
        return batch


def _cut_questions(tokenizer, questions: Sequence[str], max_question_tokens: int) -> list[str]:
    enc = tokenizer(list(questions), add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for i, q in enumerate(questions):
        offs = enc["offset_mapping"][i]
        if len(offs) > max_question_tokens:
            log.warning("question %d has %d tokens; keeping the first %d: %.60r", i, len(offs), max_question_tokens, q)
            q = q[: offs[max_question_tokens - 1][1]]
        out.append(q)
    return out


def make_windows(
    tokenizer,
    questions: Sequence[str],
    contexts: Sequence[str],
    max_length: int = 256,
    stride: int = 128,
    max_question_tokens: int = 64,
    max_windows: int | None = 16,
) -> Windows:
    """Tokenise (question, passage) pairs into windows (see the module docstring).

    `tokenizer` must be a fast (Rust) Hugging Face tokenizer: only those return character offsets.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"{type(tokenizer).__name__} is not a fast tokenizer; reading mode needs character offsets")
    if len(questions) != len(contexts):
        raise ValueError(f"{len(questions)} questions but {len(contexts)} passages")
    special = tokenizer.num_special_tokens_to_add(pair=True)
    # The tokenizer needs stride < (passage tokens per window); so the question may take at most this:
    room = max_length - special - stride - 1
    if max_question_tokens < 1 or stride < 0 or room < 1:
        raise ConfigError(
            f"windows: max_length ({max_length}) must exceed {special} special tokens + stride ({stride}) + 1 "
            f"question token + 1 new passage token; max_question_tokens ({max_question_tokens}) must be >= 1"
        )
    if max_windows is not None and max_windows < 1:
        raise ConfigError(f"windows: max_windows must be >= 1 or None, got {max_windows}")
    if tokenizer.padding_side != "right":
        # The HF pipeline swaps the pair for left-padding tokenizers; this code keeps the question first.
        raise ConfigError(f"{type(tokenizer).__name__}: padding_side={tokenizer.padding_side!r}; need 'right'")
    for i, c in enumerate(contexts):
        check_passage(c, where=f"example {i}")
    questions = _cut_questions(tokenizer, questions, min(max_question_tokens, room))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    kept: dict[int, int] = {}
    input_ids, types, offsets, example, cls_index = [], [], [], [], []
    has_types = False
    # In chunks: the tokenizer's own encodings (token strings, masks, ...) of a whole dataset are large.
    for lo in range(0, len(questions), _CHUNK):
        enc = tokenizer(
            questions[lo : lo + _CHUNK],
            list(contexts[lo : lo + _CHUNK]),
            truncation="only_second",
            max_length=max_length,
            stride=stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            padding=False,
        )
        has_types = "token_type_ids" in enc
        for w, local in enumerate(enc["overflow_to_sample_mapping"]):
            b = lo + local
            kept[b] = kept.get(b, 0) + 1
            if max_windows is not None and kept[b] > max_windows:
                continue
            ids = np.asarray(enc["input_ids"][w], dtype=np.int32)
            off = np.asarray(enc["offset_mapping"][w], dtype=np.int32).reshape(-1, 2)
            off[np.asarray([s != 1 for s in enc.sequence_ids(w)])] = -1  # sequence 1 is the passage
            input_ids.append(ids)
            offsets.append(off)
            if has_types:
                types.append(np.asarray(enc["token_type_ids"][w], dtype=np.int8))
            example.append(b)
            is_cls = np.flatnonzero(ids == tokenizer.cls_token_id) if tokenizer.cls_token_id is not None else []
            cls_index.append(int(is_cls[0]) if len(is_cls) else 0)
    if max_windows is not None:
        for b, n in kept.items():
            if n > max_windows:
                log.warning(
                    "example %d: the passage (%d characters) needs %d windows of %d tokens; keeping the first %d",
                    b,
                    len(contexts[b]),
                    n,
                    max_length,
                    max_windows,
                )
    return Windows(
        input_ids=input_ids,
        token_type_ids=types if has_types else None,
        offsets=offsets,
        example=example,
        cls_index=cls_index,
        questions=list(questions),
        contexts=list(contexts),
        pad_id=pad_id,
    )
