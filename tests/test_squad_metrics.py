"""SQuAD EM/F1: official normalisation, per-answer scores, corpus scores (v1.1 and v2.0), evaluate module."""

from __future__ import annotations

import pytest

from qa_ebm.errors import ConfigError
from qa_ebm.metrics.squad import (
    exact_match,
    f1,
    load_squad_metric,
    normalize_answer,
    squad_scores,
    squad_v2_scores,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Denver Broncos", "denver broncos"),
        ("  a  cat,  AN apple; the end. ", "cat apple end"),
        ("theatre and anthem", "theatre and anthem"),  # articles only as whole words
        ("U.S.-based", "usbased"),  # ASCII punctuation removed, not replaced by a space
        ("Café «Zürich»", "café «zürich»"),  # non-ASCII punctuation is kept, as in the official script
        ("", ""),
    ],
)
def test_normalize_answer_follows_the_official_rules(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_takes_the_best_gold():
    assert exact_match("the Denver Broncos", ["Broncos", "Denver Broncos"]) == 1.0
    assert exact_match("Denver", ["Broncos", "Denver Broncos"]) == 0.0
    assert exact_match("anything", []) == 0.0


def test_f1_is_token_overlap_against_the_best_gold():
    # pred tokens {denver, broncos, team}, gold {denver, broncos}: P = 2/3, R = 1, F1 = 0.8
    assert f1("Denver Broncos team", ["Denver Broncos"]) == pytest.approx(0.8)
    assert f1("Denver Broncos team", ["Carolina", "Denver Broncos"]) == pytest.approx(0.8)
    # repeated tokens count as a multiset: pred {a: x2}, gold {a: x1} -> P = 1/2, R = 1
    assert f1("cat cat", ["cat"]) == pytest.approx(2 * 0.5 / 1.5)
    assert f1("nothing shared", ["Denver"]) == 0.0
    assert f1("", [""]) == 0.0  # v1.1: no tokens on either side scores 0


def test_squad_scores_are_percent_means_and_count_missing_and_extra():
    refs = {"q1": ["Denver Broncos"], "q2": ["1856"], "q3": ["Nikola Tesla", "Tesla"]}
    preds = {"q1": "the Denver Broncos", "q2": "July 1856", "zzz": "stray"}
    out = squad_scores(preds, refs)
    assert out["count"] == 3 and out["missing"] == 1 and out["extra"] == 1
    assert out["exact_match"] == pytest.approx(100 / 3)
    assert out["f1"] == pytest.approx(100 * (1.0 + 2 * 0.5 / 1.5 + 0.0) / 3)


def test_squad_v2_splits_has_answer_and_no_answer():
    refs = {"a": ["Paris"], "b": ["London"], "n1": [], "n2": []}
    preds = {"a": "Paris", "b": "", "n1": "", "n2": "Rome"}
    out = squad_v2_scores(preds, refs)
    assert out["HasAns_total"] == 2 and out["NoAns_total"] == 2 and out["total"] == 4
    assert out["HasAns_exact"] == pytest.approx(50.0) and out["HasAns_f1"] == pytest.approx(50.0)
    # an empty prediction on an unanswerable question is a full match (EM and F1), a guess is 0
    assert out["NoAns_exact"] == pytest.approx(50.0) and out["NoAns_f1"] == pytest.approx(50.0)
    assert out["exact"] == pytest.approx(50.0) and out["f1"] == pytest.approx(50.0)


def test_squad_v2_drops_golds_that_normalise_to_nothing_and_omits_empty_groups():
    out = squad_v2_scores({"a": "Paris"}, {"a": ["the", "Paris"]})
    assert out["exact"] == 100.0 and "NoAns_total" not in out


def test_evaluate_module_matches_the_plain_functions():
    import evaluate

    predictions = [{"id": "1", "prediction_text": "Denver Broncos team"}, {"id": "2", "prediction_text": "1856"}]
    references = [
        {"id": "1", "answers": {"text": ["Denver Broncos"], "answer_start": [0]}},
        {"id": "2", "answers": {"text": ["July 1856", "1856"], "answer_start": [3, 8]}},
    ]
    metric = load_squad_metric()
    out = metric.compute(predictions=predictions, references=references)
    expected = squad_scores(
        {"1": "Denver Broncos team", "2": "1856"}, {"1": ["Denver Broncos"], "2": ["July 1856", "1856"]}
    )
    assert out == expected
    combined = evaluate.combine([load_squad_metric()]).compute(predictions=predictions, references=references)
    assert combined["f1"] == pytest.approx(expected["f1"])
    v2 = load_squad_metric("v2").compute(
        predictions=[{"id": "3", "prediction_text": ""}],
        references=[{"id": "3", "answers": {"text": [], "answer_start": []}}],
    )
    assert v2["NoAns_exact"] == 100.0


def test_unknown_metric_version_is_a_config_error():
    with pytest.raises(ConfigError, match="v1"):
        load_squad_metric("v3")
