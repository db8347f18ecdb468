"""Decision rules over scored candidates: the lowest energy, the expected-F1 choice, and their calibration."""

from __future__ import annotations

import pytest
import torch

from qa_ebm.errors import ConfigError
from qa_ebm.reading.decision import (
    calibrate,
    calibrate_no_answer,
    check_rule,
    decide,
    expected_f1,
    token_f1_matrix,
)
from qa_ebm.reading.energy import SpanEnergyConfig


def test_token_f1_matrix_is_squad_f1_between_pairs():
    m = token_f1_matrix(["The cat sat.", "cat", "a dog", ""])
    # "cat sat" vs "cat": P = 1/2, R = 1 -> F1 = 2/3; articles and punctuation are dropped first.
    torch.testing.assert_close(m[0, 1], torch.tensor(2 / 3))
    assert torch.equal(m, m.T)
    assert m[0, 0] == m[1, 1] == m[2, 2] == 1.0
    assert m[0, 2] == 0.0 and m[3].abs().sum() == 0.0  # no shared word; an empty text shares nothing


def test_lowest_is_the_argmin_and_keeps_proposal_order_on_ties():
    assert decide(["a", "b", "c"], torch.tensor([0.5, -1.0, 0.5])) == [1, 0, 2]


def test_expected_f1_prefers_the_span_the_mass_agrees_on():
    texts = ["Nikola Tesla", "Tesla", "Edison"]
    e = torch.tensor([0.1, 0.2, 0.0])  # Edison alone is the lowest, but two thirds of the mass say Tesla
    assert decide(texts, e, "lowest")[0] == 2
    assert decide(texts, e, "expected_f1", 1.0)[0] == 0
    p = torch.softmax(-e, 0)
    want = token_f1_matrix(texts) @ p
    torch.testing.assert_close(expected_f1(texts, e, 1.0), want)
    # A cold distribution is the mode: the expected-F1 rule gives back the lowest energy.
    assert decide(texts, e, "expected_f1", 0.001)[0] == 2


def test_calibrate_keeps_lowest_unless_expected_f1_scores_more():
    texts = [["Nikola Tesla", "Tesla", "Edison"], ["1887", "in 1887", "1900"]]
    energies = [torch.tensor([0.1, 0.2, 0.0]), torch.tensor([0.0, 0.1, 0.05])]
    rule, t, tried = calibrate(texts, energies, [["Nikola Tesla"], ["1887"]], temperatures=(0.001, 1.0))
    assert (rule, t) == ("expected_f1", 1.0) and tried["expected_f1@1"] > tried["lowest"]
    # When the lowest energy is already right, no temperature beats it and the plain rule stays.
    rule, t, tried = calibrate(texts, energies, [["Edison"], ["1887"]], temperatures=(0.001, 1.0))
    assert rule == "lowest" and tried["lowest"] == 100.0
    # only_expected_f1: the best temperature of the expected-F1 rule even where lowest scores more.
    rule, t, tried = calibrate(
        texts, energies, [["Edison"], ["1887"]], temperatures=(0.001, 1.0), only_expected_f1=True
    )
    assert rule == "expected_f1" and tried[f"expected_f1@{t:g}"] == max(
        tried["expected_f1@0.001"], tried["expected_f1@1"]
    )


def test_bad_rules_and_temperatures_are_config_errors():
    with pytest.raises(ConfigError, match="unknown decision rule 'vote'; valid: lowest, expected_f1"):
        check_rule("vote", 1.0)
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        decide(["a"], torch.zeros(1), "expected_f1", 0.0)
    with pytest.raises(ConfigError, match="unknown decision rule"):
        SpanEnergyConfig(decision="mode").validate()


def test_no_answer_threshold_maximises_v2_f1_and_is_none_without_unanswerable_questions():
    energies = [3.0, 2.5, 1.0, 0.5, 0.0]
    answerable = [False, False, True, False, True]
    span_f1 = [0.0, 0.0, 0.5, 0.0, 1.0]
    tau, scores = calibrate_no_answer(energies, span_f1, answerable)
    # Abstaining above 0.25 gets the three unanswerables right, at the cost of the answerable at 1.0 (F1 0.5):
    # 4 / 5 beats 3.5 / 5 (abstaining above 1.75) and 1.5 / 5 (always answering).
    assert tau == 0.25
    assert scores["f1"] == pytest.approx(80.0)
    assert scores["HasAns_f1"] == pytest.approx(50.0) and scores["NoAns_f1"] == pytest.approx(100.0)
    # Brute force over every cut agrees.
    best = max(
        sum(f if a else 0.0 for e, f, a in zip(energies, span_f1, answerable, strict=True) if e <= t)
        + sum(1.0 for e, a in zip(energies, answerable, strict=True) if e > t and not a)
        for t in [*energies, -1.0]
    )
    assert scores["f1"] == pytest.approx(100 * best / 5)
    assert calibrate_no_answer([1.0, 0.0], [0.3, 1.0], [True, True]) == (
        None,
        pytest.approx({"f1": 65.0, "HasAns_f1": 65.0, "NoAns_f1": 0.0, "HasAns_total": 2.0, "NoAns_total": 0.0}),
    )
    # Tied energies cannot be split.
    assert calibrate_no_answer([1.0, 1.0], [1.0, 0.0], [True, False])[0] is None
