"""Candidate answer spans of a passage, with exact character offsets.

In reading mode an answer is a span of the passage, verbatim. The candidates are word-aligned:

1. whitespace runs: maximal runs of non-separator characters, where separators are Unicode whitespace
   (``str.isspace``: spaces, tabs, newlines, no-break and ideographic spaces, ...) and the zero-width
   spaces U+200B/U+2060/U+FEFF; a CJK ideograph is a run by itself (those scripts put no spaces
   between words, as BERT's tokenizer also assumes);
2. words: punctuation (Unicode category P*) never starts or ends a word, so ``"(Tesla),"`` yields
   ``Tesla``. By default a run is also split *at* its inner punctuation (``Manning's`` -> ``Manning``,
   ``s``; ``1926.:292`` -> ``1926``, ``292``), so spans may end there; with
   ``split_punctuation=False`` only the run's ends are stripped. Symbols (``$``, ``%``, ``+``, emoji)
   are kept as word characters;
3. a candidate is every run of 1..``max_answer_words`` consecutive words, from the first word's start
   to the last word's end (whatever lies between, punctuation included, is kept), so
   ``context[span.start:span.end] == span.text`` always holds.

On the open SQuAD v1.1 dev articles (9,364 questions, 30 words) the gold answer is a candidate with
its exact offsets for 99.5 % of questions with the default, 97.5 % with ``split_punctuation=False``
(possessives, ``360—an``, Wikipedia's ``.:32`` citation marks), for 3 % more candidates.

Offsets are Python string indices (code points), as SQuAD's ``answer_start``. Combining marks stay
with their base character: they are neither separators nor punctuation.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from qa_ebm.metrics.squad import f1 as token_f1

# Separators beyond str.isspace(): zero-width space, word joiner, BOM used as a zero-width no-break space.
_ZERO_WIDTH = frozenset("\u200b\u2060\ufeff")


@dataclass(frozen=True)
class Span:
    """A passage span: ``context[start:end] == text``."""

    start: int
    end: int
    text: str


def _is_separator(ch: str) -> bool:
    return ch.isspace() or ch in _ZERO_WIDTH


def _is_cjk(ch: str) -> bool:
    # The CJK Unified Ideographs blocks and their extensions (the ranges BERT's BasicTokenizer splits).
    cp = ord(ch)
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def _is_punct(ch: str) -> bool:
    return unicodedata.category(ch).startswith("P")


def word_offsets(context: str, split_punctuation: bool = True) -> list[tuple[int, int]]:
    """``(start, end)`` of every word of `context` (rules 1-2 of the module docstring), in order."""
    runs: list[tuple[int, int]] = []
    start = None
    for i, ch in enumerate(context):
        if _is_separator(ch) or _is_cjk(ch):
            if start is not None:
                runs.append((start, i))
                start = None
            if not _is_separator(ch):
                runs.append((i, i + 1))  # a CJK ideograph is a word of its own
        elif start is None:
            start = i
    if start is not None:
        runs.append((start, len(context)))
    words = []
    for s, e in runs:
        if split_punctuation:
            words.extend(_split_at_punctuation(context, s, e))
            continue
        while s < e and _is_punct(context[s]):
            s += 1
        while e > s and _is_punct(context[e - 1]):
            e -= 1
        if s < e:
            words.append((s, e))
    return words


def _split_at_punctuation(context: str, s: int, e: int) -> list[tuple[int, int]]:
    out, start = [], None
    for i in range(s, e):
        if _is_punct(context[i]):
            if start is not None:
                out.append((start, i))
                start = None
        elif start is None:
            start = i
    if start is not None:
        out.append((start, e))
    return out


def candidate_spans(
    context: str, max_answer_words: int = 30, unique_text: bool = False, split_punctuation: bool = True
) -> list[Span]:
    """Every span of 1..`max_answer_words` consecutive words of `context`, in (start, length) order.

    Spans are distinct by offsets; with `unique_text`, only the first occurrence of each text is kept
    (the HVAE gives equal texts equal latents, so an energy scorer need not see them twice).
    """
    if max_answer_words < 1:
        raise ValueError(f"max_answer_words must be >= 1, got {max_answer_words}")
    words = word_offsets(context, split_punctuation)
    spans: list[Span] = []
    seen: set[tuple[int, int] | str] = set()
    for i, (s, _) in enumerate(words):
        for _, e in words[i : i + max_answer_words]:
            text = context[s:e]
            key: tuple[int, int] | str = text if unique_text else (s, e)
            if key in seen:
                continue
            seen.add(key)
            spans.append(Span(s, e, text))
    return spans


def _strip_answer(answer_start: int, answer_text: str) -> tuple[int, str]:
    """The gold answer without the separators and punctuation that no candidate ends with."""
    s, e = 0, len(answer_text)
    while s < e and (_is_separator(answer_text[s]) or _is_punct(answer_text[s])):
        s += 1
    while e > s and (_is_separator(answer_text[e - 1]) or _is_punct(answer_text[e - 1])):
        e -= 1
    return answer_start + s, answer_text[s:e]


def gold_span_index(candidates: Sequence[Span], answer_start: int, answer_text: str) -> int | None:
    """Index of the gold answer among `candidates`, or None when no candidate shares a token with it.

    The gold is first stripped of the separators and punctuation at its ends, which candidates never
    carry (gold ``"Tesla,"`` -> ``Tesla``). Then, in order:

    1. exact: the candidate with the gold's offsets and text;
    2. same text elsewhere (SQuAD has a few wrong ``answer_start`` values, e.g. pointing inside
       ``2010`` for the answer ``10``): the occurrence nearest to `answer_start`;
    3. overlap (the gold starts or ends inside a word, e.g. gold ``gold`` in ``golden``): the best
       token F1 with the gold text among the candidates overlapping the gold's character range (all
       candidates when `answer_start` < 0); ties go to the larger overlap, then the shorter span.
    """
    start, text = _strip_answer(answer_start, answer_text)
    if not text:
        return None
    end = start + len(text)
    same_text = [i for i, c in enumerate(candidates) if c.text == text]
    for i in same_text:
        if candidates[i].start == start and answer_start >= 0:
            return i
    if same_text:
        return min(same_text, key=lambda i: abs(candidates[i].start - start))
    if answer_start >= 0:
        pool = [i for i, c in enumerate(candidates) if c.start < end and c.end > start]
    else:
        pool = list(range(len(candidates)))
    best, best_key = None, (0.0, 0, 0)
    for i in pool:
        c = candidates[i]
        score = token_f1(c.text, [text])
        if score <= 0.0:
            continue
        overlap = max(0, min(c.end, end) - max(c.start, start))
        key = (score, overlap, -(c.end - c.start))
        if best is None or key > best_key:
            best, best_key = i, key
    return best


@dataclass
class SpanCandidates:
    """One question's candidate spans and, when known, the index of the gold one."""

    context: str
    spans: list[Span]
    gold: int | None = None

    @classmethod
    def from_context(
        cls,
        context: str,
        max_answer_words: int = 30,
        answer_start: int = -1,
        answer_text: str = "",
        unique_text: bool = False,
    ) -> SpanCandidates:
        spans = candidate_spans(context, max_answer_words, unique_text=unique_text)
        gold = gold_span_index(spans, answer_start, answer_text) if answer_text else None
        return cls(context, spans, gold)

    @property
    def texts(self) -> list[str]:
        return [s.text for s in self.spans]

    def __len__(self) -> int:
        return len(self.spans)


@dataclass
class CandidateBatch:
    """The candidates of B questions, flattened for batched scoring (C candidates in all).

    Candidates of question b are rows ``ptr[b]:ptr[b+1]``; :meth:`pad` lays scores out as (B, Cmax)
    for a cross-entropy over each question's candidates.
    """

    texts: list[str]  # (C,)
    offsets: torch.Tensor  # (C, 2) int64 character [start, end) in the question's passage
    example: torch.Tensor  # (C,) int64 question index
    ptr: torch.Tensor  # (B + 1,) int64
    gold: torch.Tensor  # (B,) int64 index within the question's candidates; -1 when unknown

    @classmethod
    def collate(cls, items: Sequence[SpanCandidates]) -> CandidateBatch:
        sizes = [len(it) for it in items]
        spans = [s for it in items for s in it.spans]
        return cls(
            texts=[s.text for s in spans],
            offsets=torch.tensor([(s.start, s.end) for s in spans], dtype=torch.long).reshape(-1, 2),
            example=torch.repeat_interleave(torch.arange(len(items)), torch.tensor(sizes, dtype=torch.long)),
            ptr=torch.tensor([0, *torch.tensor(sizes, dtype=torch.long).cumsum(0).tolist()], dtype=torch.long),
            gold=torch.tensor([-1 if it.gold is None else it.gold for it in items], dtype=torch.long),
        )

    def pad(self, values: torch.Tensor, fill: float = float("-inf")) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-candidate `values` (C, ...) -> padded (B, Cmax, ...) and a validity mask (B, Cmax)."""
        B = len(self.ptr) - 1
        sizes = self.ptr[1:] - self.ptr[:-1]  # (B,)
        cmax = int(sizes.max()) if B else 0
        pos = torch.arange(len(self.example)) - self.ptr[self.example]  # (C,) slot within its question
        out = values.new_full((B, cmax, *values.shape[1:]), fill)
        out[self.example, pos] = values
        mask = torch.arange(cmax).unsqueeze(0) < sizes.unsqueeze(1)  # (B, Cmax)
        return out, mask
