"""Windows of (question, passage) pairs: overlap, exact character maps, gold positions, guards."""

from __future__ import annotations

import itertools
import logging

import pytest

from qa_ebm.errors import ConfigError, DataError
from qa_ebm.reading.spans import word_offsets
from qa_ebm.reading.windows import check_passage, make_windows

pytestmark = pytest.mark.minilm

PASSAGE = " ".join(f"word{i} is here." for i in range(60))  # about 300 tokens


def test_long_passage_is_cut_into_overlapping_windows(tokenizer):
    w = make_windows(tokenizer, ["Where is it?", "Short?"], [PASSAGE, "Tiny passage."], max_length=64, stride=16)
    first = w.windows_of(0)
    assert len(first) > 3 and w.windows_of(1) == [len(w) - 1]
    assert w.example == [0] * len(first) + [1]
    for a, b in itertools.pairwise(first):
        assert len(w.input_ids[a]) <= 64
        pa = [o for o in w.token_offsets(a) if o is not None]
        pb = [o for o in w.token_offsets(b) if o is not None]
        assert pa[-16:] == pb[:16]  # consecutive windows share exactly `stride` passage tokens
    covered = {o for i in first for o in w.token_offsets(i) if o is not None}
    assert min(covered)[0] == 0 and max(covered)[1] == len(PASSAGE)


def test_offsets_map_every_passage_token_back_to_its_characters(tokenizer):
    w = make_windows(tokenizer, ["Who?"], ["Nikola Tesla (1856–1943) was a Serbian-American inventor."], 64, 16)
    tokens = tokenizer.convert_ids_to_tokens(w.input_ids[0])
    for tok, off in zip(tokens, w.token_offsets(0), strict=True):
        if off is None:
            continue  # question and special tokens
        assert w.contexts[0][off[0] : off[1]].lower() == tok.removeprefix("##")
    assert w.token_offsets(0)[0] is None and w.token_offsets(0)[-1] is None  # [CLS] ... [SEP]
    assert w.cls_index == [0]


def test_every_word_round_trips_through_token_spans(tokenizer):
    w = make_windows(tokenizer, ["Where?"], [PASSAGE], max_length=48, stride=16)
    for s, e in word_offsets(PASSAGE):
        hits = [(i, w.token_span(i, s, e)) for i in w.windows_of(0)]
        found = [(i, span) for i, span in hits if span is not None]
        assert found, (s, e)
        i, (ts, te) = found[0]
        assert w.char_span(i, ts, te) == (s, e) and w.span_text(i, ts, te) == PASSAGE[s:e]


def test_unicode_passage_offsets_are_exact(tokenizer):
    text = "Café\u00a0Zürich — cafe\u0301 北京大学 🚀 ends."
    w = make_windows(tokenizer, ["Where?"], [text], 64, 16)
    spans = [o for o in w.token_offsets(0) if o is not None]
    assert all(0 <= s < e <= len(text) for s, e in spans)
    ts = next(t for t, o in enumerate(w.token_offsets(0)) if o is not None and text[o[0] : o[1]] == "北")
    assert w.span_text(0, ts, ts + 3) == "北京大学"
    with pytest.raises(ValueError, match="not inside the passage"):
        w.char_span(0, 0, ts)


def test_answer_positions_point_at_the_answer_or_at_cls(tokenizer):
    start = PASSAGE.index("word50")
    w = make_windows(tokenizer, ["Which?"], [PASSAGE], max_length=64, stride=16)
    starts, ends = w.answer_positions([start], ["word50 is here"])
    hits = [i for i in range(len(w)) if starts[i] != w.cls_index[i]]
    assert hits and len(hits) < len(w)
    for i in range(len(w)):
        if i in hits:
            assert w.span_text(i, starts[i], ends[i]) == "word50 is here"
        else:
            assert starts[i] == ends[i] == w.cls_index[i]
    assert set(w.answer_positions([-1], [""])[0]) == {0}  # no answer: CLS everywhere


def test_too_many_windows_are_logged_and_capped(tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="qa_ebm.reading.windows"):
        w = make_windows(tokenizer, ["Q?"], [PASSAGE], max_length=40, stride=8, max_windows=2)
    assert len(w) == 2 and "keeping the first 2" in caplog.text


def test_a_long_question_is_cut_instead_of_crashing_the_tokenizer(tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="qa_ebm.reading.windows"):
        w = make_windows(tokenizer, ["why " * 100], [PASSAGE], max_length=48, stride=8, max_question_tokens=16)
    assert len(w.input_ids[0]) <= 48 and w.questions[0].count("why") == 16
    assert "keeping the first 16" in caplog.text
    # the default cap (64) does not fit 48 tokens with stride 8: the question gets what is left (48-3-8-1)
    w = make_windows(tokenizer, ["why " * 100], [PASSAGE], max_length=48, stride=8)
    assert w.questions[0].count("why") == 36 and len(w) > 1


def test_window_settings_that_leave_no_room_are_config_errors(tokenizer):
    with pytest.raises(ConfigError, match="stride"):
        make_windows(tokenizer, ["Q?"], [PASSAGE], max_length=48, stride=45)

    class Slow:
        is_fast = False

    with pytest.raises(ConfigError, match="fast"):
        make_windows(Slow(), ["Q?"], [PASSAGE])


@pytest.mark.parametrize(
    ("passage", "message"),
    [
        ("", "empty"),
        (" \n\t\u00a0", "whitespace only"),
        ("text\x00more", "NUL"),
        ("".join(chr(c) for c in range(1, 32)) * 3 + "abc", "binary"),
        ("\ufffd" * 20 + "abc", "binary"),
    ],
)
def test_unusable_passages_are_data_errors(tokenizer, passage, message):
    with pytest.raises(DataError, match=message):
        make_windows(tokenizer, ["Q?"], [passage])


def test_ordinary_text_with_a_few_controls_is_accepted():
    check_passage("line one\r\nline two\x0c with a form feed and emoji 👨\u200d👩\u200d👧")


def test_chunked_tokenisation_keeps_example_indices(tokenizer, monkeypatch):
    import qa_ebm.reading.windows as windows

    questions = [f"Question {i}?" for i in range(5)]
    contexts = [PASSAGE if i % 2 else f"Short passage {i}." for i in range(5)]
    whole = make_windows(tokenizer, questions, contexts, max_length=64, stride=16)
    monkeypatch.setattr(windows, "_CHUNK", 2)
    chunked = make_windows(tokenizer, questions, contexts, max_length=64, stride=16)
    assert chunked.example == whole.example and sorted(set(chunked.example)) == list(range(5))
    assert all((a == b).all() for a, b in zip(chunked.offsets, whole.offsets, strict=True))
    assert chunked.span_text(chunked.windows_of(4)[0], 5, 6) == "Short passage"  # [CLS] question 4 ? [SEP]
