"""The span proposal head on a tiny random BERT with MiniLM's tokenizer: masking, loss, decoding,
training on a toy task, determinism, freezing, persistence."""

from __future__ import annotations

import json
import random

import pytest
import torch
from tiny import tiny_proposal_head

from qa_ebm.errors import CheckpointError, ConfigError, DataError
from qa_ebm.metrics.squad import squad_scores
from qa_ebm.reading.proposal import (
    SpanProposalHead,
    length_grouped_order,
    load_proposal_head,
    lr_factor,
    predict,
    top_k_spans,
    train_proposal_head,
)
from qa_ebm.reading.windows import make_windows

pytestmark = [pytest.mark.minilm, pytest.mark.usefixtures("one_thread")]

WORDS = "apple river stone cloud tiger lamp music paper green orange window silver forest candle rocket garden".split()


def tiny_head(tokenizer, seed: int = 0, dropout: float = 0.0, **cfg) -> SpanProposalHead:
    """The shared tiny head, here without dropout unless asked and with 5-token answers by default."""
    return tiny_proposal_head(tokenizer, seed=seed, dropout=dropout, **{"max_answer_tokens": 5, **cfg})


def toy_examples(n: int, seed: int) -> list[dict]:
    """The answer is the word after "ANSWER:", among distractors from the same vocabulary."""
    r = random.Random(seed)
    out = []
    for i in range(n):
        filler = [r.choice(WORDS) for _ in range(r.randint(3, 8))]
        cut, answer = r.randint(0, len(filler)), r.choice(WORDS)
        before = " ".join(filler[:cut]) + (" " if cut else "")
        context = f"{before}ANSWER: {answer} {' '.join(filler[cut:])}".strip()
        start = len(before) + len("ANSWER: ")
        assert context[start : start + len(answer)] == answer
        out.append(
            {
                "id": str(i),
                "question": "What is the answer?",
                "context": context,
                "answer": answer,
                "answer_start": start,
            }
        )
    return out


def test_logits_are_masked_to_passage_and_cls_and_loss_is_ce_start_plus_end(tokenizer):
    model = tiny_head(tokenizer).eval()
    w = make_windows(tokenizer, ["Who?", "What?"], ["Tesla was born in 1856.", "Edison."], 48, 8)
    batch = w.collate([0, 1])
    starts, ends = torch.tensor([5, 0]), torch.tensor([6, 0])
    out = model(**batch, cls_index=torch.tensor(w.cls_index), start_positions=starts, end_positions=ends)
    neg = torch.finfo(out.start_logits.dtype).min
    allowed = batch["passage_mask"].clone()
    allowed[:, 0] = True
    assert (out.start_logits[~allowed] == neg).all() and (out.start_logits[allowed] > neg).all()
    assert (out.end_logits[~allowed] == neg).all()
    expected = torch.nn.functional.cross_entropy(out.start_logits, starts) + torch.nn.functional.cross_entropy(
        out.end_logits, ends
    )
    assert torch.allclose(out.loss, expected)


def test_top_k_spans_are_exact_ordered_bounded_and_merged_across_windows(tokenizer):
    passage = " ".join(f"w{i}" for i in range(40))
    w = make_windows(tokenizer, ["Which?"], [passage], max_length=32, stride=12)
    assert len(w) > 2
    T = max(len(ids) for ids in w.input_ids)
    s, e = torch.zeros(len(w), T), torch.zeros(len(w), T)
    # "w20" is in the overlap of two windows: give it a different score in each
    target = passage.index("w20")
    seen = []
    for i in range(len(w)):
        span = w.token_span(i, target, target + 3)
        if span is not None:
            s[i, span[0]] = e[i, span[1]] = 5.0 + len(seen)
            seen.append(i)
    assert len(seen) == 2
    preds = top_k_spans(w, s, e, top_k=4, max_answer_tokens=3)[0]
    assert len(preds) == 4 and [p.score for p in preds] == sorted((p.score for p in preds), reverse=True)
    assert (preds[0].start, preds[0].text, preds[0].score) == (target, "w20", 12.0)  # the best window's score
    assert len({(p.start, p.end) for p in preds}) == 4  # merged: no character span twice
    for p in preds:
        assert passage[p.start : p.end] == p.text
        assert len(tokenizer(p.text, add_special_tokens=False)["input_ids"]) <= 3


def test_head_learns_the_toy_task(tokenizer):
    model = tiny_head(tokenizer)
    test = toy_examples(50, seed=1)
    result = train_proposal_head(
        model, tokenizer, toy_examples(400, seed=0), max_steps=250, epochs=100, batch_size=32, lr=5e-3, progress=False
    )
    assert result.steps == 250 and result.stopped == "steps"
    assert sum(result.losses[-20:]) / 20 < 0.25 * sum(result.losses[:20]) / 20
    preds = predict(model, tokenizer, [ex["question"] for ex in test], [ex["context"] for ex in test], top_k=3)
    assert all(1 <= len(p) <= 3 for p in preds)
    scores = squad_scores(
        {ex["id"]: p[0].text for ex, p in zip(test, preds, strict=True)}, {ex["id"]: [ex["answer"]] for ex in test}
    )
    assert scores["exact_match"] >= 90.0


def test_head_learns_the_toy_task_under_bf16_autocast(tokenizer):
    model = tiny_head(tokenizer)
    result = train_proposal_head(
        model,
        tokenizer,
        toy_examples(200, seed=0),
        max_steps=120,
        epochs=100,
        batch_size=32,
        lr=5e-3,
        mixed_precision="bf16",
        progress=False,
    )
    assert sum(result.losses[-20:]) / 20 < 0.25 * sum(result.losses[:20]) / 20
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast, not a bf16 model
    with pytest.raises(ConfigError, match="mixed_precision"):
        train_proposal_head(model, tokenizer, toy_examples(4, seed=0), max_steps=1, mixed_precision="fp16")


def test_training_is_deterministic_for_a_seed(tokenizer):
    data = toy_examples(64, seed=0)

    def run(seed: int) -> tuple[list[float], torch.Tensor]:
        model = tiny_head(tokenizer, dropout=0.1)  # dropout draws from the seeded generator too
        res = train_proposal_head(model, tokenizer, data, max_steps=4, batch_size=8, seed=seed, progress=False)
        return res.losses, model.qa_outputs.weight.detach().clone()

    (la, wa), (lb, wb), (lc, _) = run(3), run(3), run(4)
    assert la == lb and torch.equal(wa, wb)
    assert la != lc  # another seed, another batch order


def test_time_budget_and_epochs_stop_training(tokenizer):
    data = toy_examples(20, seed=0)
    res = train_proposal_head(tiny_head(tokenizer), tokenizer, data, max_seconds=0.0, progress=False)
    assert res.steps == 0 and res.stopped == "time"
    res = train_proposal_head(tiny_head(tokenizer), tokenizer, data, epochs=1, batch_size=8, progress=False)
    assert res.steps == 3 and res.stopped == "epochs" and res.epochs == pytest.approx(1.0)
    with pytest.raises(DataError, match="answer_start"):
        train_proposal_head(tiny_head(tokenizer), tokenizer, [{"question": "q", "context": "c", "answer": "c"}])


def test_length_grouped_order_is_a_permutation_of_similar_length_batches():
    lengths = torch.randint(40, 257, (1000,), generator=torch.Generator().manual_seed(0))
    order = length_grouped_order(lengths, 16, torch.Generator().manual_seed(1))
    assert sorted(order.tolist()) == list(range(1000))
    batches = order.split(16)
    assert [len(b) for b in batches] == [16] * 62 + [8]  # the short batch stays last: blocks never straddle
    useful = lengths.sum() / sum(16 * int(lengths[b].max()) for b in batches)
    random_useful = lengths.sum() / sum(16 * int(lengths[b].max()) for b in torch.randperm(1000).split(16))
    assert useful > 0.95 > random_useful
    again = length_grouped_order(lengths, 16, torch.Generator().manual_seed(1))
    assert torch.equal(order, again)
    assert not torch.equal(order, length_grouped_order(lengths, 16, torch.Generator().manual_seed(2)))


def test_grouped_batches_train_the_toy_task(tokenizer):
    model = tiny_head(tokenizer)
    result = train_proposal_head(
        model, tokenizer, toy_examples(200, seed=0), max_steps=120, epochs=100, batch_size=32, lr=5e-3,
        group_by_length=True, progress=False,
    )  # fmt: skip
    assert sum(result.losses[-20:]) / 20 < 0.25 * sum(result.losses[:20]) / 20


def test_lr_schedule_warms_up_then_decays_to_zero():
    assert lr_factor(0.0, 0.1) == 0.0 and lr_factor(0.05, 0.1) == pytest.approx(0.5)
    assert lr_factor(0.1, 0.1) == pytest.approx(1.0) and lr_factor(0.55, 0.1) == pytest.approx(0.5)
    assert lr_factor(1.0, 0.1) == 0.0 and lr_factor(1.5, 0.1) == 0.0


def test_frozen_encoder_trains_the_head_only_and_skips_dropout(tokenizer):
    model = tiny_head(tokenizer, freeze_encoder=True)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head = model.qa_outputs.weight.detach().clone()
    train_proposal_head(model, tokenizer, toy_examples(32, seed=0), max_steps=3, batch_size=8, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.encoder.state_dict().items())
    assert not torch.equal(head, model.qa_outputs.weight)
    model.train()
    assert model.training and not model.encoder.training
    model.freeze_encoder(False)
    assert all(p.requires_grad for p in model.encoder.parameters())


def test_save_and_load_round_trip(tokenizer, tmp_path):
    model = tiny_head(tokenizer, max_answer_tokens=7).eval()
    model.save_pretrained(tmp_path / "head", tokenizer)
    loaded, tok = load_proposal_head(tmp_path / "head")
    assert loaded.config == model.config and tok.is_fast
    w = make_windows(tok, ["Who?"], ["Tesla was born in 1856."], 48, 8)
    batch = w.collate([0])
    a, b = model(**batch), loaded(**batch)
    assert torch.equal(a.start_logits, b.start_logits) and torch.equal(a.end_logits, b.end_logits)


def test_loading_rejects_broken_directories(tokenizer, tmp_path):
    d = tmp_path / "head"
    tiny_head(tokenizer).save_pretrained(d)
    config_file = d / "proposal_head.json"
    good = json.loads(config_file.read_text())

    def write(meta):
        config_file.write_text(json.dumps(meta))

    write({**good, "config": {**good["config"], "surprise": 1}})
    with pytest.raises(CheckpointError, match="surprise"):
        SpanProposalHead.from_pretrained(d)
    write({**good, "config": {**good["config"], "max_length": "256"}})
    with pytest.raises(CheckpointError, match="max_length"):
        SpanProposalHead.from_pretrained(d)
    write({**good, "config": {**good["config"], "hidden_size": 64}})
    with pytest.raises(CheckpointError, match="hidden_size"):
        SpanProposalHead.from_pretrained(d)
    write({**good, "version": 99})
    with pytest.raises(CheckpointError, match="version"):
        SpanProposalHead.from_pretrained(d)
    write(good)
    with pytest.raises(CheckpointError, match=r"tokenizer\.json"):
        load_proposal_head(d)  # saved without its tokenizer
    (d / "head.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"head\.safetensors"):
        SpanProposalHead.from_pretrained(d)
