"""The reading-mode energy: config, E_total, the cached condition, persistence, candidates (window choice,
gold span, hard negatives) and candidate latents, on a tiny random BERT and a hashing latent encoder."""

from __future__ import annotations

import json
import random
import zlib

import pytest
import torch
from tiny import FILLER, tiny_proposal_head

from qa_ebm.config import EBTConfig
from qa_ebm.errors import CheckpointError, ConfigError
from qa_ebm.models.ebt import EBTSpec
from qa_ebm.reading.energy import (
    QuestionCandidates,
    SpanEnergy,
    SpanEnergyConfig,
    attach_latents,
    encode_candidates,
    encode_windows,
    gold_span,
    hard_negative_spans,
    locate,
    null_scores,
    propose_candidates,
    rank_energies,
    training_candidates,
)
from qa_ebm.reading.spans import word_offsets
from qa_ebm.reading.windows import make_windows

pytestmark = [pytest.mark.minilm, pytest.mark.usefixtures("one_thread")]

SPEC = EBTSpec(latent_dim=4, num_slots=3, condition_dim=32)


@pytest.fixture(scope="module")
def head(tokenizer):
    return tiny_proposal_head(tokenizer, max_length=32, stride=12, max_question_tokens=8).eval()


def tiny_energy(seed: int = 0, **cfg) -> SpanEnergy:
    torch.manual_seed(seed)
    ebt = EBTConfig(d_model=16, n_heads=2, n_layers=1, max_condition_tokens=48)
    return SpanEnergy(SpanEnergyConfig(**{"ebt": ebt, "top_k": 5, "max_answer_tokens": 3, **cfg}), SPEC).eval()


class HashEncoder:
    """texts -> (N, 3, 4) latents drawn from a generator seeded by the text; the last slot padded."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append(list(texts))
        y = torch.stack(
            [torch.randn(3, 4, generator=torch.Generator().manual_seed(zlib.crc32(t.encode()))) for t in texts]
        )
        mask = torch.tensor([[True, True, False]] * len(texts))
        return y * mask.unsqueeze(-1), mask


def long_passage(n: int = 40, seed: int = 0) -> str:
    r = random.Random(seed)
    return " ".join(r.choice(FILLER) for _ in range(n))


# ------------------------------------------------------------------------------------------ config


def test_config_round_trips_and_rejects_unknown_keys_and_bad_values():
    cfg = SpanEnergyConfig(top_k=7, use_proposal_score=False, ebt=EBTConfig(d_model=16, n_heads=2))
    assert SpanEnergyConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert SpanEnergyConfig.from_dict({"snap_neighbours": 3}).ebt.max_condition_tokens == 256  # defaults fill in
    with pytest.raises(ConfigError, match=r"unknown key 'topk'.*valid keys.*snap_neighbours.*top_k"):
        SpanEnergyConfig.from_dict({"topk": 3})
    with pytest.raises(ConfigError, match=r"unknown key 'ebt.width'"):
        SpanEnergyConfig.from_dict({"ebt": {"width": 3}})
    with pytest.raises(ConfigError, match="top_k must be >= 1"):
        SpanEnergyConfig.from_dict({"top_k": 0})
    with pytest.raises(ConfigError, match="use_proposal_score must be bool"):
        SpanEnergyConfig.from_dict({"use_proposal_score": "yes"})


# ------------------------------------------------------------------------------------------- model


def _inputs(C: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    states = torch.randn(2, 10, 32, generator=g)
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 7:] = False
    rows = torch.tensor([0, 1, 1, 0])[:C]
    y = torch.randn(C, 3, 4, generator=g)
    slot_mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]], dtype=torch.bool)[:C]
    score = torch.randn(C, generator=g)
    span = torch.randn(C, 2, 32, generator=g)  # the window states at each candidate's first and last token
    return states, mask, rows, y, slot_mask, score, span


def test_total_energy_is_e_theta_minus_w_times_proposal_score_and_the_switch_drops_it():
    model = tiny_energy()
    with torch.no_grad():
        model.proposal_weight.fill_(0.7)
    states, mask, rows, y, slot_mask, score, span = _inputs()
    e = model(states[rows], mask[rows], y, slot_mask, score, span)
    torch.testing.assert_close(e.total, e.energy - 0.7 * score)
    plain = tiny_energy(use_proposal_score=False)
    e2 = plain(states[rows], mask[rows], y, slot_mask, score, span)
    torch.testing.assert_close(e2.total, e2.energy)
    torch.testing.assert_close(e2.energy, e.energy)  # same seed, same E_theta: only the second term differs


def test_cached_condition_per_window_equals_reading_each_candidate_alone():
    model = tiny_energy()
    states, mask, rows, y, slot_mask, score, span = _inputs()
    cond = model.condition(states, mask)
    cached = model.energies(model.candidate_condition(cond, rows, span), y, slot_mask, score)
    for c in range(len(rows)):
        one = slice(c, c + 1)
        alone = model(states[rows[one]], mask[rows[one]], y[one], slot_mask[one], score[one], span[one])
        torch.testing.assert_close(cached.total[one], alone.total, atol=1e-5, rtol=1e-5)
    # The energy depends on the window it reads: another window gives another energy.
    other = model.energies(model.candidate_condition(cond, 1 - rows, span), y, slot_mask, score)
    assert not torch.allclose(other.energy, cached.energy)


def test_the_span_anchor_is_part_of_the_condition_and_the_switch_removes_it():
    states, mask, rows, y, slot_mask, score, span = _inputs()
    model = tiny_energy()
    moved = model(states[rows], mask[rows], y, slot_mask, score, span.flip(0))
    here = model(states[rows], mask[rows], y, slot_mask, score, span)
    assert not torch.allclose(moved.energy, here.energy)  # same text, another place: another energy
    cond = model.candidate_condition(model.condition(states, mask), rows, span)
    assert cond.anchor is not None and cond.anchor.shape == (len(rows), model.config.ebt.d_model)
    torch.testing.assert_close(cond.select(torch.tensor([1])).anchor, cond.anchor[1:2])

    plain = tiny_energy(span_states=False)
    assert plain.anchor is None
    a = plain(states[rows], mask[rows], y, slot_mask, score, span)
    b = plain(states[rows], mask[rows], y, slot_mask, score, span.flip(0))
    assert torch.equal(a.energy, b.energy)


def test_save_load_round_trip_and_bad_directories(tmp_path):
    model = tiny_energy(seed=3)
    with torch.no_grad():
        model.proposal_weight.fill_(0.25)
        model.ebt.set_latent_stats(torch.full((2, 4), 0.5), torch.full((2, 4), 2.0))
    model.save_pretrained(tmp_path / "e")
    loaded = SpanEnergy.from_pretrained(tmp_path / "e").eval()
    assert loaded.config == model.config and loaded.spec == model.spec
    states, mask, rows, y, slot_mask, score, span = _inputs()
    a = model(states[rows], mask[rows], y, slot_mask, score, span)
    b = loaded(states[rows], mask[rows], y, slot_mask, score, span)
    assert torch.equal(a.total, b.total) and torch.equal(loaded.ebt.latent_std, model.ebt.latent_std)

    with pytest.raises(CheckpointError, match=r"missing span_energy\.json"):
        SpanEnergy.from_pretrained(tmp_path)
    meta = json.loads((tmp_path / "e" / "span_energy.json").read_text())
    meta["config"]["top_kk"] = 3
    (tmp_path / "e" / "span_energy.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="unknown key 'top_kk'"):
        SpanEnergy.from_pretrained(tmp_path / "e")
    with pytest.raises(ConfigError, match="condition_dim"):
        SpanEnergy(SpanEnergyConfig(), EBTSpec(latent_dim=4, num_slots=3, condition_vocab=10))


# -------------------------------------------------------------------------------------- candidates


def test_proposals_are_verbatim_sorted_and_read_a_window_that_holds_them(head, tokenizer):
    contexts = ["The cello, whose full name is violoncello, is a bowed instrument.", long_passage(40)]
    windows = make_windows(tokenizer, ["Name?", "Which?"], contexts, 32, 12, 8)
    enc = encode_windows(head, windows, batch_size=2)
    assert enc.states[0].dtype == torch.float16 and enc.states[0].shape == (len(windows.input_ids[0]), 32)
    cands = propose_candidates(windows, enc, top_k=6, max_answer_tokens=3)
    for b, cs in enumerate(cands):
        assert len(cs) == 6 and [c.score for c in cs] == sorted((c.score for c in cs), reverse=True)
        for c in cs:
            assert contexts[b][c.start : c.end] == c.text
            assert windows.example[c.window] == b and windows.token_span(c.window, c.start, c.end) is not None


def test_a_span_in_two_windows_reads_the_one_where_it_is_most_central(head, tokenizer):
    passage = long_passage(40)
    windows = make_windows(tokenizer, ["Which?"], [passage], 32, 12, 8)
    enc = encode_windows(head, windows)
    first, second = windows.windows_of(0)[:2]
    shared = sorted(
        set(map(tuple, windows.offsets[first][windows.passage_mask(first)].tolist()))
        & set(map(tuple, windows.offsets[second][windows.passage_mask(second)].tolist()))
    )
    assert len(shared) > 4
    (s0, e0), (s1, e1) = shared[0], shared[-1]
    # The overlap's first word sits near the end of the first window and at the very start of the second.
    assert locate(windows, enc, 0, s0, e0)[0] == first
    assert locate(windows, enc, 0, s1, e1)[0] == second
    # Its score is the best start+end logit over the windows holding it.
    where = locate(windows, enc, 0, s0, e0)
    score = where.score
    i, j = windows.token_span(where.window, s0, e0)
    assert (where.token_start, where.token_end) == (i, j)
    both = [
        enc.start_logits[v, t[0]] + enc.end_logits[v, t[1]]
        for v in (first, second)
        for t in [windows.token_span(v, s0, e0)]
    ]
    assert score == pytest.approx(float(max(both)))


def test_null_score_is_the_lowest_cls_start_plus_end_logit_over_a_questions_windows(head, tokenizer):
    contexts = [long_passage(40), "The cello is a bowed instrument."]
    windows = make_windows(tokenizer, ["Which?", "What?"], contexts, 32, 12, 8)
    enc = encode_windows(head, windows)
    assert len(windows.windows_of(0)) > 1 and len(windows.windows_of(1)) == 1
    # Make the middle window of question 0 the surest that it holds an answer: its CLS score decides.
    middle = windows.windows_of(0)[1]
    enc.start_logits[middle, windows.cls_index[middle]] = -50.0
    nulls = null_scores(windows, enc)
    assert nulls[0] == pytest.approx(-50.0 + float(enc.end_logits[middle, windows.cls_index[middle]]))
    (only,) = windows.windows_of(1)
    cls = windows.cls_index[only]
    assert nulls[1] == pytest.approx(float(enc.start_logits[only, cls] + enc.end_logits[only, cls]))


def test_gold_span_exact_stripped_and_with_a_wrong_answer_start():
    context = "Tesla moved to Paris in 1882. Later, Tesla, the inventor, went to New York."
    assert gold_span(context, 15, "Paris").text == "Paris"
    span = gold_span(context, 37, "Tesla,")
    assert (span.start, span.text) == (37, "Tesla")
    span = gold_span(context, 5, "New York")  # answer_start points elsewhere: the text's occurrence wins
    assert context[span.start : span.end] == "New York"
    assert gold_span(context, 0, "  ") is None


def test_hard_negatives_overlap_the_gold_or_share_its_sentence_and_are_deterministic():
    context = "Tesla moved to Paris in 1882 with his friend. Edison stayed in New York for years."
    gold = gold_span(context, context.index("Paris"), "Paris in 1882")
    negs = hard_negative_spans(context, gold, 8, random.Random(0), max_words=30)
    assert len(negs) == 8 and len({(s.start, s.end) for s in negs}) == 8
    end_of_sentence = context.index(".") + 1
    overlapping = [s for s in negs if s.start < gold.end and s.end > gold.start]
    assert 4 <= len(overlapping) < 8  # about half overlap, the rest are other spans of the sentence
    for s in negs:
        assert (s.start, s.end) != (gold.start, gold.end) and context[s.start : s.end] == s.text
        assert s.end <= end_of_sentence  # never from the next sentence
    assert negs == hard_negative_spans(context, gold, 8, random.Random(0), max_words=30)


def test_training_candidates_add_the_missed_gold_and_hard_negatives(head, tokenizer):
    contexts = [long_passage(12, seed=s) for s in range(3)]
    words = [word_offsets(c) for c in contexts]
    answers = [(words[b][5][0], contexts[b][words[b][5][0] : words[b][6][1]]) for b in range(3)]  # 2-word golds
    windows = make_windows(tokenizer, ["Which?"] * 3, contexts, 32, 12, 8)
    enc = encode_windows(head, windows)
    cands, golds = training_candidates(windows, enc, answers, 2, 3, 4, random.Random(0))
    for b in range(3):
        assert golds[b] is not None and cands[b][golds[b]].text == answers[b][1]
        assert cands[b][golds[b]].start == answers[b][0]
        assert 2 + 1 <= len(cands[b]) <= 2 + 1 + 4 and len({(c.start, c.end) for c in cands[b]}) == len(cands[b])
        assert all(contexts[b][c.start : c.end] == c.text for c in cands[b])
    # Another occurrence of the gold's text is the same answer, not a negative.
    context = "red apple river red stone"
    windows = make_windows(tokenizer, ["Which?"], [context], 32, 12, 8)
    enc = encode_windows(head, windows)
    second = context.rindex("red")
    cands, golds = training_candidates(windows, enc, [(second, "red")], 30, 3, 4, random.Random(0))
    assert [(c.start, c.text) for c in cands[0] if c.text == "red"] == [(second, "red")] and len(cands[0]) > 5
    assert cands[0][golds[0]].start == second
    # A gold that is no span of the passage is None, and that question keeps its proposals only.
    windows = make_windows(tokenizer, ["Which?"] * 3, contexts, 32, 12, 8)
    enc = encode_windows(head, windows)
    cands, golds = training_candidates(windows, enc, [(0, "zebra"), *answers[1:]], 2, 3, 4, random.Random(0))
    assert golds[0] is None and len(cands[0]) == 2


def test_candidate_latents_are_standardised_zero_padded_and_encoded_once_per_text():
    model = tiny_energy()
    with torch.no_grad():
        model.ebt.set_latent_stats(torch.full((2, 4), 1.0), torch.full((2, 4), 2.0))
    encoder = HashEncoder()
    y, mask = encode_candidates(encoder, model, ["Paris", "New York", "Paris"])
    assert encoder.calls == [["Paris", "New York"]]
    raw, raw_mask = HashEncoder()(["Paris", "New York", "Paris"])
    torch.testing.assert_close(y[:, :2], (raw[:, :2] - 1.0) / 2.0)
    assert torch.equal(y[:, 2], torch.zeros(3, 4)) and torch.equal(mask, raw_mask)


def test_rank_energies_batches_questions_as_scoring_each_alone(head, tokenizer):
    model = tiny_energy()
    contexts = [long_passage(30, seed=s) for s in range(3)]
    windows = make_windows(tokenizer, ["Which?"] * 3, contexts, 32, 12, 8)
    enc = encode_windows(head, windows)
    items = attach_latents(HashEncoder(), model, propose_candidates(windows, enc, 5, 3))
    assert all(isinstance(it, QuestionCandidates) and len(it) == 5 for it in items)
    batched = rank_energies(model, enc.states, items, batch_size=2)
    for it, e in zip(items, batched, strict=True):
        for k, c in enumerate(it.candidates):
            s = enc.states[c.window][None].float()
            alone = model(
                s,
                torch.ones(s.shape[:2], dtype=torch.bool),
                it.y[k : k + 1],
                it.slot_mask[k : k + 1],
                torch.tensor([c.score]),
                s[:, [c.token_start, c.token_end]],
            )
            torch.testing.assert_close(e.total[k : k + 1], alone.total, atol=1e-5, rtol=1e-5)
