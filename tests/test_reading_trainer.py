"""train_span_energy on a toy reading task: the energy learns what the (untrained) proposal head cannot, reads
the question, is deterministic given the seed, honours its budget and checks its inputs."""

from __future__ import annotations

import random
import zlib

import pytest
import torch
from tiny import FILLER, quick_hvae_run, tiny_proposal_head

from qa_ebm.config import EBTConfig
from qa_ebm.errors import ConfigError, DataError
from qa_ebm.reading.energy import SpanEnergyConfig
from qa_ebm.reading.proposal import SpanProposalHead
from qa_ebm.training.reading_trainer import SpanTrainConfig, train_span_energy

pytestmark = [pytest.mark.minilm, pytest.mark.usefixtures("one_thread")]

COLORS, FRUITS = ["red", "green", "blue"], ["pear", "plum", "mango"]


@pytest.fixture(scope="module")
def hvae_run(tmp_path_factory):
    return quick_hvae_run(tmp_path_factory.mktemp("hvae"))


def tiny_head(tokenizer) -> SpanProposalHead:
    return tiny_proposal_head(tokenizer).eval()


def toy(n: int, seed: int) -> list[dict]:
    """A passage holds one color and one fruit among filler words; the question asks for one of the two."""
    r = random.Random(seed)
    out = []
    for i in range(n):
        words = [r.choice(FILLER) for _ in range(r.randint(3, 7))]
        color, fruit = r.choice(COLORS), r.choice(FRUITS)
        words.insert(r.randint(0, len(words)), color)
        words.insert(r.randint(0, len(words)), fruit)
        asks_color = r.random() < 0.5
        answer = color if asks_color else fruit
        k = words.index(answer)
        start = len(" ".join(words[:k])) + (1 if k else 0)
        question = "Which color is it?" if asks_color else "Which fruit is it?"
        out.append({"id": str(i), "question": question, "context": " ".join(words), "answer": answer,
                    "answer_start": start, "references": [answer]})  # fmt: skip
    return out


ENERGY = SpanEnergyConfig(ebt=EBTConfig(d_model=32, n_heads=2, n_layers=1, max_condition_tokens=48), top_k=30,
                          max_answer_tokens=3)  # fmt: skip


def hash_encoder(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """A stand-in HVAE: (N, 2, 4) latents seeded by the text."""
    y = torch.stack([torch.randn(2, 4, generator=torch.Generator().manual_seed(zlib.crc32(t.encode()))) for t in texts])
    return y, torch.ones(len(texts), 2, dtype=torch.bool)


def test_the_energy_learns_the_question_dependent_toy_task_the_proposal_head_cannot(tokenizer, hvae_run):
    head = tiny_head(tokenizer)
    before = [p.clone() for p in head.parameters()]
    tc = SpanTrainConfig(steps=150, batch_size=16, lr=3e-3, warmup_steps=5, mcmc_coeff=0.1)
    result = train_span_energy(head, tokenizer, hvae_run, toy(200, 0), toy(50, 1), ENERGY, tc, progress=False)
    assert (result.steps, result.stopped, result.train_questions, result.skipped) == (150, "steps", 200, 0)
    assert sum(result.losses[-10:]) < 0.25 * sum(result.losses[:10])
    val = result.metrics["val"]
    assert val["count"] == 50 and val["recall_at_k"] == 100.0  # every gold is among the 30 proposals
    # The untrained head is near chance; the energy ranks the gold first, and needs the question to do so
    # (each passage holds both a color and a fruit).
    assert val["proposal"]["exact_match"] < 20
    assert val["rank"]["exact_match"] >= 90 and val["energy"]["exact_match"] >= 90
    assert {"recon", "contrast", "gold_grad", "ce", "acc", "w"} <= set(result.metrics["last"])
    # The decision rule of the best val F1 is chosen and written into the model's config.
    decision = val["decision"]
    chosen = "lowest" if decision["rule"] == "lowest" else f"expected_f1@{decision['temperature']:g}"
    assert decision["f1"][chosen] == max(decision["f1"].values())
    assert (result.model.config.decision, result.model.config.temperature) == (
        decision["rule"],
        decision["temperature"],
    )
    # The candidates kept at answer time: the count of the best val F1 (its rule and T), None for all top_k.
    assert decision["f1_by_top_k"][decision["top_k"]] == max(decision["f1_by_top_k"].values())
    assert set(decision["f1_by_top_k"]) == {5, 10, ENERGY.top_k}
    assert result.model.config.answer_top_k == (None if decision["top_k"] == ENERGY.top_k else decision["top_k"])
    # The control: the expected-F1 rule over the proposal scores alone, its temperature chosen on val too.
    control = val["proposal_decision"]
    assert control["f1"][f"expected_f1@{control['temperature']:g}"] == max(
        f1 for name, f1 in control["f1"].items() if name != "lowest"
    )
    assert result.model.config.proposal_temperature == control["temperature"]
    assert all(torch.equal(a, b) for a, b in zip(before, head.parameters(), strict=True))  # the head is frozen
    assert not result.model.training


def test_training_is_deterministic_given_the_seed(tokenizer):
    head = tiny_head(tokenizer)
    tc = SpanTrainConfig(steps=6, batch_size=8, lr=3e-3, warmup_steps=2, mcmc_coeff=0.5, seed=4)
    runs = [train_span_energy(head, tokenizer, hash_encoder, toy(24, 0), (), ENERGY, tc, progress=False) for _ in "ab"]
    assert runs[0].losses == runs[1].losses
    for a, b in zip(runs[0].model.state_dict().values(), runs[1].model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    tc.seed = 5
    other = train_span_energy(head, tokenizer, hash_encoder, toy(24, 0), (), ENERGY, tc, progress=False)
    assert other.losses != runs[0].losses


def test_bf16_autocast_trains_the_toy_task_too(tokenizer, hvae_run):
    tc = SpanTrainConfig(steps=150, batch_size=16, lr=3e-3, warmup_steps=5, mcmc_coeff=0.1, mixed_precision="bf16")
    result = train_span_energy(
        tiny_head(tokenizer), tokenizer, hvae_run, toy(200, 0), toy(50, 1), ENERGY, tc, progress=False
    )
    assert sum(result.losses[-10:]) < 0.25 * sum(result.losses[:10])
    assert result.metrics["val"]["rank"]["exact_match"] >= 90
    assert all(p.dtype == torch.float32 for p in result.model.parameters())


def test_the_risk_term_is_one_minus_the_expected_f1_and_falls_with_training(tokenizer):
    tc = SpanTrainConfig(steps=60, batch_size=16, lr=3e-3, warmup_steps=2, mcmc_coeff=0.0, risk_coeff=1.0)
    risks = []
    result = train_span_energy(
        tiny_head(tokenizer), tokenizer, hash_encoder, toy(64, 0), (), ENERGY, tc, progress=False,
        callback=lambda step, loss, parts: risks.append(parts["risk"]),
    )  # fmt: skip
    assert len(risks) == 60 and all(0.0 <= r <= 1.0 for r in risks)
    assert sum(risks[-10:]) < 0.5 * sum(risks[:10])
    assert {"ce", "acc", "risk"} <= set(result.metrics["last"])
    with pytest.raises(ConfigError, match="risk_coeff"):
        SpanTrainConfig(risk_coeff=-1.0).validate()


def test_without_a_run_the_latents_are_standardised_with_the_training_golds_statistics(tokenizer):
    head = tiny_head(tokenizer)
    examples = toy(16, 0)
    tc = SpanTrainConfig(steps=1, batch_size=8, mcmc_coeff=0.0, gold_grad_coeff=0.0)
    result = train_span_energy(head, tokenizer, hash_encoder, examples, (), ENERGY, tc, progress=False)
    y, _ = hash_encoder([ex["answer"] for ex in examples])
    torch.testing.assert_close(result.model.ebt.latent_mean[0], y[:, 0].mean(0))
    torch.testing.assert_close(result.model.ebt.latent_std[1], y[:, 1].std(0))
    assert set(result.metrics["last"]) == {"ce", "acc", "w"}  # both extra terms off
    stats = (torch.zeros(2, 4), torch.full((2, 4), 3.0))
    given = train_span_energy(
        head, tokenizer, hash_encoder, examples, (), ENERGY, tc, latent_stats=stats, progress=False
    )
    assert torch.equal(given.model.ebt.latent_std, stats[1])


def test_the_time_budget_stops_training(tokenizer):
    tc = SpanTrainConfig(steps=10_000, batch_size=4, max_seconds=0.3, mcmc_coeff=0.0)
    result = train_span_energy(tiny_head(tokenizer), tokenizer, hash_encoder, toy(8, 0), (), ENERGY, tc, progress=False)
    assert result.stopped == "time" and 0 < result.steps < 10_000


def test_bad_inputs_and_settings_are_reported(tokenizer):
    head = tiny_head(tokenizer)
    with pytest.raises(DataError, match="no training examples"):
        train_span_energy(head, tokenizer, hash_encoder, [], progress=False)
    bad = [{k: v for k, v in toy(1, 0)[0].items() if k != "answer_start"}]
    with pytest.raises(DataError, match="train example 0 lacks answer_start"):
        train_span_energy(head, tokenizer, hash_encoder, bad, progress=False)
    nowhere = [{**ex, "answer": "zebra", "answer_start": 0} for ex in toy(3, 0)]
    with pytest.raises(DataError, match="no training question has its answer"):
        train_span_energy(head, tokenizer, hash_encoder, nowhere, (), ENERGY, progress=False)
    short = SpanEnergyConfig(ebt=EBTConfig(d_model=16, n_heads=2, max_condition_tokens=16))
    with pytest.raises(ConfigError, match="max_condition_tokens=16 is below"):
        train_span_energy(head, tokenizer, hash_encoder, toy(2, 0), (), short, progress=False)
    with pytest.raises(ConfigError, match=r"unknown key 'step'.*valid keys"):
        SpanTrainConfig.from_dict({"step": 3})
    with pytest.raises(ConfigError, match="truncate <= mcmc_min_steps"):
        SpanTrainConfig.from_dict({"mcmc_min_steps": 3, "mcmc_steps": 2})
    with pytest.raises(ConfigError, match="mixed_precision must be one of no, bf16"):
        SpanTrainConfig.from_dict({"mixed_precision": "fp16"})
    assert SpanTrainConfig.from_dict(SpanTrainConfig(lr=0.1).to_dict()) == SpanTrainConfig(lr=0.1)


def test_unanswerable_val_questions_set_a_no_answer_threshold(tokenizer):
    head = tiny_head(tokenizer)
    val = toy(12, 1)
    for ex in val[:4]:  # SQuAD v2 style: unanswerable, no gold answers
        ex.update(is_impossible=True, references=[], answer="", answer_start=-1)
    tc = SpanTrainConfig(steps=4, batch_size=8, lr=3e-3, warmup_steps=1, mcmc_coeff=0.0)
    result = train_span_energy(head, tokenizer, hash_encoder, toy(24, 0), val, ENERGY, tc, progress=False)
    m = result.metrics["val"]
    assert m["count"] == 8  # the rankings are scored on the answerable questions
    na = m["no_answer"]
    assert (na["HasAns_total"], na["NoAns_total"]) == (8.0, 4.0)
    assert result.model.config.no_answer_threshold == na["threshold"]
    # Both signals are calibrated; the one kept has the best val v2 F1 (energy on ties).
    assert set(na["f1_by_signal"]) == {"energy", "null_margin"}
    assert result.model.config.no_answer_signal == na["signal"]
    assert na["f1"] == max(na["f1_by_signal"].values()) == na["f1_by_signal"][na["signal"]]
    if na["f1_by_signal"]["energy"] == na["f1_by_signal"]["null_margin"]:
        assert na["signal"] == "energy"
    assert na["threshold"] is None or na["NoAns_f1"] > 0  # a threshold is only kept when it abstains somewhere
    # Without unanswerable val questions there is nothing to calibrate: the pipeline always answers.
    plain = train_span_energy(head, tokenizer, hash_encoder, toy(24, 0), toy(6, 1), ENERGY, tc, progress=False)
    assert "no_answer" not in plain.metrics["val"] and plain.model.config.no_answer_threshold is None
