"""Decision rules over scored candidates: the lowest energy, the expected-F1 choice, and their calibration."""

from __future__ import annotations

import pytest
import torch

from qa_ebm.errors import ConfigError
from qa_ebm.reading.decision import calibrate, check_rule, decide, expected_f1, token_f1_matrix
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


def test_bad_rules_and_temperatures_are_config_errors():
    with pytest.raises(ConfigError, match="unknown decision rule 'vote'; valid: lowest, expected_f1"):
        check_rule("vote", 1.0)
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        decide(["a"], torch.zeros(1), "expected_f1", 0.0)
    with pytest.raises(ConfigError, match="unknown decision rule"):
        SpanEnergyConfig(decision="mode").validate()
