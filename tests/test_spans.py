"""Candidate spans: word rules, exact offsets on any Unicode text, gold lookup, the flat batch."""

from __future__ import annotations

import gzip
import json
import unicodedata
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qa_ebm.reading.spans import (
    CandidateBatch,
    Span,
    SpanCandidates,
    candidate_spans,
    gold_span_index,
    word_offsets,
)

SQUAD_V1 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "squad" / "squad-v1.1-dev-open.json.gz"


def words(context: str, **kw) -> list[str]:
    return [context[s:e] for s, e in word_offsets(context, **kw)]


def test_words_strip_punctuation_at_the_ends():
    assert words('"Nikola Tesla," born (1856).') == ["Nikola", "Tesla", "born", "1856"]
    assert words("-- ... !") == []  # all-punctuation runs are no words


def test_inner_punctuation_splits_by_default_and_only_strips_when_asked():
    text = "Manning's shotgun in 1926.:292 for US$10"
    assert words(text) == ["Manning", "s", "shotgun", "in", "1926", "292", "for", "US$10"]  # $ is a symbol
    assert words(text, split_punctuation=False) == ["Manning's", "shotgun", "in", "1926.:292", "for", "US$10"]
    spans = {s.text for s in candidate_spans(text, 3)}
    assert {"Manning", "Manning's shotgun", "1926"} <= spans  # a span keeps the punctuation between its words


def test_unicode_separators_cjk_combining_marks_and_emoji():
    text = "Tesla\u00a0Edison\u3000Westinghouse\u200bMarconi caf\u0065\u0301 北京大学 🚀🚀 x\u2028y"
    got = words(text)
    assert got[:4] == ["Tesla", "Edison", "Westinghouse", "Marconi"]  # NBSP, ideographic and zero-width spaces
    assert "cafe\u0301" in got  # the combining acute accent stays on its letter
    assert ["北", "京", "大", "学"] == got[5:9]  # each ideograph is a word
    assert "🚀🚀" in got and got[-2:] == ["x", "y"]  # emoji kept; U+2028 separates


def test_candidates_are_every_run_of_up_to_n_words():
    text = "alpha beta, gamma delta"
    spans = candidate_spans(text, max_answer_words=2)
    assert [s.text for s in spans] == ["alpha", "alpha beta", "beta", "beta, gamma", "gamma", "gamma delta", "delta"]
    assert all(text[s.start : s.end] == s.text for s in spans)
    with pytest.raises(ValueError, match="max_answer_words"):
        candidate_spans(text, 0)


def test_unique_text_keeps_the_first_occurrence():
    text = "Tesla met Tesla"
    spans = candidate_spans(text, 1, unique_text=True)
    assert [(s.start, s.text) for s in spans] == [(0, "Tesla"), (6, "met")]
    assert len(candidate_spans(text, 1)) == 3


_TEXT = st.text(
    alphabet=st.sampled_from(list("ab Z9.,'-()\"$%\u00a0\u3000\u200b\n\t\u0301北京🚀é\u2028«»!")),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(_TEXT, st.integers(1, 4))
def test_spans_are_exact_trimmed_and_distinct_on_any_text(text, n):
    spans = candidate_spans(text, n)
    assert len({(s.start, s.end) for s in spans}) == len(spans)
    for s in spans:
        assert text[s.start : s.end] == s.text and s.text
        assert not s.text[0].isspace() and not s.text[-1].isspace()
        assert not unicodedata.category(s.text[0]).startswith("P")
        assert not unicodedata.category(s.text[-1]).startswith("P")
    starts = [s.start for s in spans]
    assert all(starts.count(x) <= n for x in set(starts))  # at most n lengths from each first word


def test_gold_exact_offsets_and_stripped_gold():
    text = "In 1882, Tesla moved to Paris."
    spans = candidate_spans(text, 5)
    i = gold_span_index(spans, 9, "Tesla")
    assert spans[i] == Span(9, 14, "Tesla")
    j = gold_span_index(spans, 24, "Paris. ")  # gold carries punctuation and a space: stripped
    assert spans[j].text == "Paris" and spans[j].start == 24


def test_gold_with_a_wrong_offset_takes_the_nearest_same_text():
    text = "Tesla and Edison. Later, Tesla left."
    spans = candidate_spans(text, 3)
    i = gold_span_index(spans, 22, "Tesla")  # points at ", T": the nearest "Tesla" is at 25
    assert spans[i].start == 25


def test_gold_inside_a_word_falls_back_to_the_best_overlap():
    text = "the golden anniversary of gold rushes"
    spans = candidate_spans(text, 3)
    i = gold_span_index(spans, 4, "golden anniversary of")
    assert spans[i].text == "golden anniversary of"
    k = gold_span_index(spans, 26, "gold rush")  # "rush" is inside "rushes": best overlap is "gold"
    assert spans[k].text == "gold" and spans[k].start == 26
    assert gold_span_index(spans, 0, "zebra") is None
    assert gold_span_index(spans, -1, "anniversary") is not None  # no offset: search by text
    assert gold_span_index(spans, 0, " ,") is None


def test_candidate_batch_flattens_and_pads():
    a = SpanCandidates.from_context("Tesla was born in 1856.", 2, answer_start=18, answer_text="1856")
    b = SpanCandidates.from_context("Edison.", 2)
    assert a.texts[a.gold] == "1856" and b.gold is None
    batch = CandidateBatch.collate([a, b])
    C = len(a) + len(b)
    assert batch.offsets.shape == (C, 2) and batch.example.tolist() == [0] * len(a) + [1] * len(b)
    assert batch.ptr.tolist() == [0, len(a), C] and batch.gold.tolist() == [a.gold, -1]
    scores, mask = batch.pad(torch.arange(C, dtype=torch.float))
    assert scores.shape == (2, len(a)) and mask.sum().item() == C
    assert scores[1, 0].item() == len(a) and torch.isinf(scores[1, 1:]).all()
    # the padded layout is what a per-question cross-entropy over candidates needs
    loss = torch.nn.functional.cross_entropy(scores[:1], batch.gold[:1])
    assert torch.isfinite(loss)


@pytest.mark.shared_data
@pytest.mark.skipif(not SQUAD_V1.is_file(), reason="../shared/data is not present")
def test_gold_answers_of_real_squad_are_candidates():
    doc = json.loads(gzip.open(SQUAD_V1, "rt").read())
    article = next(a for a in doc["data"] if a["title"] == "Normans")
    exact = total = 0
    for para in article["paragraphs"]:
        spans = candidate_spans(para["context"], 30)
        for qa in para["qas"]:
            ans = qa["answers"][0]
            i = gold_span_index(spans, ans["answer_start"], ans["text"])
            total += 1
            exact += i is not None and spans[i].text == ans["text"].strip() and spans[i].start == ans["answer_start"]
    assert total == 112 and exact / total >= 0.95
