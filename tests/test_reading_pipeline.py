"""ReadingPipeline end to end: a tiny proposal head, a tiny HVAE run and the span energy trained here in seconds;
every mode answers verbatim, snap lands on a real candidate, save/load is exact, bad input is a DataError."""

from __future__ import annotations

import argparse
import json
import math
import random

import pytest
import torch
from tiny import FILLER, quick_hvae_run, tiny_proposal_head

from qa_ebm.config import EBTConfig
from qa_ebm.errors import CheckpointError, ConfigError, DataError
from qa_ebm.models.answer_encoder import AnswerEncoder
from qa_ebm.pipeline import ReadingAnswer, ReadingPipeline
from qa_ebm.reading.decision import expected_f1
from qa_ebm.reading.energy import SpanEnergyConfig
from qa_ebm.reading.proposal import train_proposal_head
from qa_ebm.training.reading_trainer import SpanTrainConfig, train_span_energy

pytestmark = [pytest.mark.minilm, pytest.mark.usefixtures("one_thread")]

COLORS = ["red", "green", "blue"]
SPAN_MODES = ("proposal", "energy", "rank", "refine")


def toy(n: int, seed: int, filler: tuple[int, int] = (3, 8)) -> list[dict]:
    """The answer is the passage's one color word, among filler words."""
    r = random.Random(seed)
    out = []
    for i in range(n):
        words = [r.choice(FILLER) for _ in range(r.randint(*filler))]
        answer = r.choice(COLORS)
        words.insert(r.randint(0, len(words)), answer)
        k = words.index(answer)
        start = len(" ".join(words[:k])) + (1 if k else 0)
        context = " ".join(words)
        assert context[start : start + len(answer)] == answer
        out.append({"id": str(i), "question": "Which color is it?", "context": context, "answer": answer,
                    "answer_start": start, "references": [answer]})  # fmt: skip
    return out


@pytest.fixture(scope="module")
def pipe(tmp_path_factory, tokenizer):
    """Everything trained from scratch: HVAE run (2 steps), a weak proposal head (10 steps), the span energy."""
    hvae_run = quick_hvae_run(tmp_path_factory.mktemp("reading"))
    head = tiny_proposal_head(tokenizer, stride=16)
    train_proposal_head(head, tokenizer, toy(160, 0), max_steps=10, epochs=10, batch_size=16, lr=1e-3, progress=False)

    energy_cfg = SpanEnergyConfig(
        ebt=EBTConfig(d_model=32, n_heads=2, n_layers=1, max_condition_tokens=48), top_k=12, max_answer_tokens=3
    )
    tc = SpanTrainConfig(steps=80, batch_size=16, lr=3e-3, warmup_steps=5, mcmc_coeff=0.1)
    result = train_span_energy(head, tokenizer, hvae_run, toy(160, 0), (), energy_cfg, tc, progress=False)
    return ReadingPipeline(head, tokenizer, AnswerEncoder.from_run(hvae_run), result.model)


def _inputs(examples):
    return [e["question"] for e in examples], [e["context"] for e in examples]


def test_the_trained_energy_beats_the_proposal_head_alone(pipe):
    val = toy(40, 1)
    exact = {}
    for mode in ("proposal", "rank", "energy"):
        answers = pipe(*_inputs(val), mode=mode)
        exact[mode] = sum(a.text == e["answer"] for a, e in zip(answers, val, strict=True)) / len(val)
    assert exact["rank"] >= 0.9 and exact["energy"] >= 0.9
    assert exact["rank"] > exact["proposal"] + 0.3


@pytest.mark.parametrize("mode", SPAN_MODES)
def test_span_modes_answer_verbatim_with_offsets_and_runners_up(pipe, mode):
    val = toy(6, 2) + toy(2, 3, filler=(40, 60))  # the last two need several windows
    questions, contexts = _inputs(val)
    answers = pipe(questions, contexts, mode=mode, steps=4, top_n=3, batch_size=4, decision="lowest")
    assert len(answers) == len(val) and all(isinstance(a, ReadingAnswer) for a in answers)
    for a, c in zip(answers, contexts, strict=True):
        assert c[a.start : a.end] == a.text and a.text
        assert len(a.runners_up) == 2 and all(c[r["start"] : r["end"]] == r["text"] for r in a.runners_up)
        assert all(r["energy"] >= a.energy for r in a.runners_up)  # the answer has the lowest energy
        assert (a.steps > 0) == (mode == "refine") and a.proposal_score is not None
        d = a.to_dict()
        assert set(d) == {"text", "start", "end", "energy", "steps", "proposal_score", "runners_up"}
        json.dumps(d)


def test_generate_decodes_the_refined_latent_whose_energy_fell(pipe):
    questions, contexts = _inputs(toy(3, 4))
    answers = pipe(questions, contexts, mode="generate", steps=3)
    start = pipe(questions, contexts, mode="generate", steps=0)  # the best proposal's latent, decoded
    for a, s in zip(answers, start, strict=True):
        assert isinstance(a.text, str) and a.start is None and a.end is None and a.proposal_score is None
        assert 1 <= a.steps <= 3 and s.steps == 0
        assert a.energy <= s.energy  # E_theta: the default sampler keeps a step only if the energy drops


def test_refine_snaps_to_one_of_the_questions_candidates(pipe):
    val = toy(8, 5)
    questions, contexts = _inputs(val)
    top_k = pipe.energy.config.top_k
    pool = pipe(questions, contexts, mode="proposal", top_n=top_k)
    for init in ("proposal", "noise"):
        refined = pipe(questions, contexts, mode="refine", steps=6, init=init)
        for a, p, c in zip(refined, pool, contexts, strict=True):
            spans = {(p.start, p.end)} | {(r["start"], r["end"]) for r in p.runners_up}
            assert (a.start, a.end) in spans and c[a.start : a.end] == a.text
    # With 0 steps the latent is the best proposal's own: it is among its m nearest candidates, so the
    # snapped answer's E_total is at most the best proposal's.
    snapped = pipe(questions, contexts, mode="refine", steps=0)
    ranked = pipe(questions, contexts, mode="rank", top_n=top_k)
    for a, p, r in zip(snapped, pool, ranked, strict=True):
        e_total = {(r.start, r.end): r.energy} | {(x["start"], x["end"]): x["energy"] for x in r.runners_up}
        assert a.steps == 0 and a.energy <= e_total[(p.start, p.end)] + 1e-6


def test_save_and_load_give_identical_answers(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    names = {p.name for p in (tmp_path / "pipe").iterdir()}
    assert names == {"reading_pipeline.json", "proposal", "energy", "model", "tokenizer", "punkt"}
    assert not list((tmp_path / "pipe").rglob("*.bin")) and not list((tmp_path / "pipe").rglob("*.pt"))
    loaded = ReadingPipeline.from_pretrained(tmp_path / "pipe")
    assert loaded.sampler_config == pipe.sampler_config and loaded.max_length == pipe.max_length == 48
    questions, contexts = _inputs(toy(5, 6))
    for mode in (*SPAN_MODES, "generate"):
        a = [x.to_dict() for x in pipe(questions, contexts, mode=mode, steps=3)]
        b = [x.to_dict() for x in loaded(questions, contexts, mode=mode, steps=3)]
        assert a == b, mode
    noise = [pipe(questions, contexts, mode="refine", steps=3, init="noise")[0].to_dict() for _ in "ab"]
    assert noise[0] == noise[1]  # noise starts are seeded per call


def test_bad_passages_and_arguments_are_reported_with_the_question_index(pipe):
    q = ["Which color?", "Which color?"]
    for bad, what in (("", "empty"), ("   \n", "whitespace only"), ("red\x00blue", "NUL"), ("\x01\x02\x03x", "binary")):
        with pytest.raises(DataError, match=rf"question 1: .*{what}"):
            pipe(q, ["red apple", bad])
    with pytest.raises(DataError, match="question 0: expected a string"):
        pipe([None], ["red apple"])
    with pytest.raises(DataError, match="2 questions but 1 passages"):
        pipe(q, ["red apple"])
    with pytest.raises(ConfigError, match="unknown mode 'extract'"):
        pipe(q[:1], ["red apple"], mode="extract")
    with pytest.raises(ConfigError, match="unknown init"):
        pipe(q[:1], ["red apple"], mode="refine", init="zeros")
    assert pipe("Which color?", "a red apple")[0].text  # a single pair may be given as two strings


def test_from_pretrained_refuses_incomplete_or_tampered_directories(pipe, tmp_path):
    with pytest.raises(CheckpointError, match="not a reading pipeline directory"):
        ReadingPipeline.from_pretrained(tmp_path)
    pipe.save_pretrained(tmp_path / "p")
    meta_path = tmp_path / "p" / "reading_pipeline.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "sampler": {"name": "gd", "stepsize": 1}}))
    with pytest.raises(CheckpointError, match="stepsize"):
        ReadingPipeline.from_pretrained(tmp_path / "p")
    meta_path.write_text(json.dumps({**meta, "windows": {**meta["windows"], "max_length": 512}}))
    with pytest.raises(CheckpointError, match=r"exceed the energy's ebt\.max_condition_tokens=48"):
        ReadingPipeline.from_pretrained(tmp_path / "p")
    meta_path.write_text(json.dumps({**meta, "extra": 1}))
    with pytest.raises(CheckpointError, match="top-level keys"):
        ReadingPipeline.from_pretrained(tmp_path / "p")
    meta_path.write_text(json.dumps({**meta, "mixed_precision": "fp8"}))
    with pytest.raises(CheckpointError, match="mixed_precision must be one of no, bf16"):
        ReadingPipeline.from_pretrained(tmp_path / "p")


def test_the_encoders_precision_is_saved_and_older_pipelines_load_as_float32(pipe, tmp_path):
    pipe.mixed_precision = "bf16"
    try:
        pipe.save_pretrained(tmp_path / "p")
    finally:
        pipe.mixed_precision = "no"
    assert ReadingPipeline.from_pretrained(tmp_path / "p").mixed_precision == "bf16"
    assert ReadingPipeline.from_pretrained(tmp_path / "p", mixed_precision="no").mixed_precision == "no"
    meta_path = tmp_path / "p" / "reading_pipeline.json"
    meta = json.loads(meta_path.read_text())
    del meta["mixed_precision"]  # as written before the setting existed
    meta_path.write_text(json.dumps(meta))
    assert ReadingPipeline.from_pretrained(tmp_path / "p").mixed_precision == "no"


def test_timings_accumulate_per_stage(pipe):
    pipe.reset_timings()
    assert set(pipe.timings) == {"encoding", "candidates", "energy", "refinement", "decoding"}
    questions, contexts = _inputs(toy(4, 7))
    pipe(questions, contexts, mode="rank")
    assert pipe.timings["encoding"] > 0 and pipe.timings["energy"] > 0 and pipe.timings["refinement"] == 0
    ranked = dict(pipe.timings)
    pipe(questions, contexts, mode="refine", steps=2)
    assert pipe.timings["refinement"] > 0 and pipe.timings["encoding"] > ranked["encoding"]


def test_the_expected_f1_rule_answers_with_the_candidate_of_the_highest_expected_f1(pipe):
    val = toy(6, 4)
    questions, contexts = _inputs(val)
    lowest = pipe(questions, contexts, mode="rank", top_n=20, decision="lowest")
    voted = pipe(questions, contexts, mode="rank", top_n=20, decision="expected_f1", temperature=2.0)
    for a, b in zip(lowest, voted, strict=True):
        cands = [(a.text, a.energy)] + [(r["text"], r["energy"]) for r in a.runners_up]
        texts, energies = [t for t, _ in cands], torch.tensor([e for _, e in cands])
        assert b.text == texts[int(expected_f1(texts, energies, 2.0).argmax())]
    with pytest.raises(ConfigError, match="unknown decision rule"):
        pipe(questions, contexts, mode="rank", decision="vote")


def test_proposal_mode_is_the_heads_best_span_unless_a_rule_is_asked_for(pipe):
    questions, contexts = _inputs(toy(6, 4))
    plain = pipe(questions, contexts, mode="proposal", top_n=20)
    for a in plain:  # the head's own order: energy = -score, lowest first
        assert a.energy <= min((r["energy"] for r in a.runners_up), default=a.energy)
    t_p = pipe.energy.config.proposal_temperature
    voted = pipe(questions, contexts, mode="proposal", top_n=20, decision="expected_f1")
    for a, b in zip(plain, voted, strict=True):
        cands = [(a.text, a.energy)] + [(r["text"], r["energy"]) for r in a.runners_up]
        texts, energies = [t for t, _ in cands], torch.tensor([e for _, e in cands])
        assert b.text == texts[int(expected_f1(texts, energies, t_p).argmax())]


def test_bf16_encoders_answer_with_verbatim_spans_and_float32_energies(pipe):
    examples = toy(6, 9)
    questions, contexts = _inputs(examples)
    full = pipe(questions, contexts, mode="rank", top_n=3)
    pipe.mixed_precision = "bf16"
    try:
        half = pipe(questions, contexts, mode="rank", top_n=3)
    finally:
        pipe.mixed_precision = "no"
    for a, b, c in zip(full, half, contexts, strict=True):
        assert c[b.start : b.end] == b.text and math.isfinite(b.energy)
        assert abs(a.energy - b.energy) < 0.1 * max(1.0, abs(a.energy))  # the encoders rounded, not replaced
    with pytest.raises(ConfigError, match="mixed_precision must be one of no, bf16"):
        ReadingPipeline(pipe.proposal, pipe.tokenizer, pipe.answer_encoder, pipe.energy, mixed_precision="fp16")


def test_answer_takes_mixed_precision(pipe, tmp_path, capsys):
    from qa_ebm.cli.main import main

    pipe.save_pretrained(tmp_path / "pipe")
    ex = toy(1, 10)[0]
    argv = ["answer", "--pipeline", str(tmp_path / "pipe"), ex["question"], "--context", ex["context"], "--json"]
    assert main([*argv, "--mixed-precision", "bf16"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert ex["context"][record["start"] : record["end"]] == record["answer"]
    assert main([*argv, "--top-k", "2"]) == 0  # two candidates: the answer and at most one runner-up
    record = json.loads(capsys.readouterr().out)
    assert len(record["runners_up"]) <= 1
    with pytest.raises((SystemExit, argparse.ArgumentError)):  # not a choice
        main([*argv, "--mixed-precision", "fp16"])


def test_the_answer_top_k_chosen_on_val_is_the_pipelines_default(pipe):
    from qa_ebm.pipeline.reading import ReadingPipeline as Pipeline

    cfg = pipe.energy.config
    try:
        cfg.answer_top_k = 2
        assert Pipeline(pipe.proposal, pipe.tokenizer, pipe.answer_encoder, pipe.energy).top_k == 2
        cfg.answer_top_k = None
        assert Pipeline(pipe.proposal, pipe.tokenizer, pipe.answer_encoder, pipe.energy).top_k == cfg.top_k
        cfg.answer_top_k = cfg.top_k + 1
        with pytest.raises(ConfigError, match="answer_top_k must be in"):
            cfg.validate()
    finally:
        cfg.answer_top_k = None


def test_top_k_caps_the_candidates_at_answer_time(pipe):
    questions, contexts = _inputs(toy(4, 11))
    pipe.top_k = 1
    try:
        one = pipe(questions, contexts, mode="rank", top_n=5)
        pipe.top_k = 0
        with pytest.raises(ConfigError, match="top_k must be >= 1"):
            pipe(questions, contexts)
    finally:
        pipe.top_k = pipe.energy.config.top_k
    proposal = pipe(questions, contexts, mode="proposal")
    assert [a.text for a in one] == [a.text for a in proposal] and all(not a.runners_up for a in one)


def test_rank_mode_says_no_answer_above_the_threshold(pipe):
    val = toy(4, 5)
    questions, contexts = _inputs(val)
    answered = pipe(questions, contexts, mode="rank", decision="lowest")
    cut = sorted(a.energy for a in answered)[1]  # abstain on all but the two lowest energies
    pipe.energy.config.no_answer_threshold = cut
    try:
        abstained = pipe(questions, contexts, mode="rank", decision="lowest")
        assert pipe(questions, contexts, mode="rank", decision="lowest", abstain=False) == answered
    finally:
        pipe.energy.config.no_answer_threshold = None
    for a, b in zip(answered, abstained, strict=True):
        if a.energy <= cut:
            assert b == a
        else:
            assert (b.text, b.start, b.end) == ("", None, None)
            assert b.runners_up[0] == {"text": a.text, "start": a.start, "end": a.end, "energy": a.energy}


def test_rank_mode_can_abstain_on_the_proposal_heads_null_margin(pipe):
    from qa_ebm.reading.energy import encode_windows, null_scores, propose_candidates
    from qa_ebm.reading.windows import make_windows

    questions, contexts = _inputs(toy(4, 5))
    windows = make_windows(
        pipe.tokenizer, questions, contexts, pipe.max_length, pipe.stride, pipe.max_question_tokens, pipe.max_windows
    )
    enc = encode_windows(pipe.proposal, windows)
    cands = propose_candidates(windows, enc, pipe.energy.config.top_k, pipe.energy.config.max_answer_tokens)
    margins = [n - cs[0].score for n, cs in zip(null_scores(windows, enc), cands, strict=True)]
    cut = sorted(margins)[1]  # abstain on all but the two smallest margins
    answered = pipe(questions, contexts, mode="rank", decision="lowest")
    cfg = pipe.energy.config
    cfg.no_answer_signal, cfg.no_answer_threshold = "null_margin", cut
    try:
        abstained = pipe(questions, contexts, mode="rank", decision="lowest")
    finally:
        cfg.no_answer_signal, cfg.no_answer_threshold = "energy", None
    for a, b, m in zip(answered, abstained, margins, strict=True):
        assert b == a if m <= cut else (b.text, b.start, b.end) == ("", None, None)
    assert sum(b.text == "" for b in abstained) == 2


def test_evaluate_scores_the_rows_and_squad_v2_groups(pipe):
    from qa_ebm.pipeline.evaluate_reading import evaluate_reading, markdown

    answerable = toy(6, 7)
    unanswerable = [{**e, "id": f"u{e['id']}", "references": []} for e in toy(4, 8)]
    questions, contexts = _inputs(unanswerable)
    energies = sorted(a.energy for a in pipe(questions, contexts, mode="rank", decision="lowest"))
    pipe.energy.config.no_answer_threshold = energies[1]  # two of the four unanswerable ones abstain (at least)
    try:
        result = evaluate_reading(pipe, answerable, steps=(1,), generate=False, unanswerable=unanswerable)
    finally:
        pipe.energy.config.no_answer_threshold = None
    assert [r["row"] for r in result["rows"]] == [
        "proposal",
        "proposal_expected_f1",
        "energy",
        "rank",
        "expected_f1",
        "refine@1",
        "best_sentence",
    ]
    assert all(r["count"] == 6 for r in result["rows"])
    rows = {r["row"]: r for r in result["rows"]}
    plain = evaluate_reading(pipe, answerable, steps=(1,), generate=False)["rows"]
    assert rows["rank"]["f1"] == next(r["f1"] for r in plain if r["row"] == "rank")  # answerable rows never abstain
    v2 = result["squad_v2"]
    assert (v2["HasAns_total"], v2["NoAns_total"], v2["total"]) == (6, 4, 10)
    assert v2["NoAns_exact"] >= 50.0  # an abstention is an exact "no answer"
    assert "SQuAD v2, rank row" in markdown(result, "t")
