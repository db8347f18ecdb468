"""Choosing the answer among scored candidates: the lowest energy, or the expected-F1 (minimum Bayes risk) span.

The total energies of a question's candidates define a distribution over them,

    p(c | x) = softmax_c(-E_total(x, c) / T),

and SQuAD scores an answer by its token F1 against the gold. ``lowest`` answers with the mode of p (the
lowest energy, whatever T). ``expected_f1`` answers with the candidate of the highest expected F1 under p,

    c* = argmax_c  sum_c' p(c' | x) F1(c, c'),

the minimum-Bayes-risk choice for SQuAD's loss: when the energy hesitates between nested or overlapping
spans, the span they share scores more on average than any one of them. T is a setting chosen on val
(:func:`calibrate`); T -> 0 gives back ``lowest``.

SQuAD v2 adds questions the passage does not answer. A no-answer signal a(x) then decides: above a
threshold tau the answer is "no answer" (the empty string). Two signals (``NO_ANSWER_SIGNALS``):

    energy        a(x) = E_total(x, c*), the chosen candidate's energy
    null_margin   a(x) = s_null(x) - max_c s(c), with s_null = min over the question's windows of
                  s_CLS + e_CLS (the proposal head's "no answer in this window" score, as Hugging Face's
                  run_qa post-processing) and s(c) = s_i + e_j the best span's proposal score

The signal and tau are settings chosen on val to maximise the official v2 F1 (:func:`calibrate_no_answer`):
answered questions score their span's F1 (0 when unanswerable), abstentions score 1 when unanswerable and 0
otherwise.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch

from qa_ebm.errors import ConfigError
from qa_ebm.metrics.squad import normalize_answer, squad_scores

RULES = ("lowest", "expected_f1")
NO_ANSWER_SIGNALS = ("energy", "null_margin")
TEMPERATURES = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)  # the grid `calibrate` searches


def check_no_answer_signal(signal: str) -> None:
    if signal not in NO_ANSWER_SIGNALS:
        raise ConfigError(f"unknown no-answer signal {signal!r}; valid: {', '.join(NO_ANSWER_SIGNALS)}")


def check_rule(rule: str, temperature: float) -> None:
    if rule not in RULES:
        raise ConfigError(f"unknown decision rule {rule!r}; valid: {', '.join(RULES)}")
    if not temperature > 0:
        raise ConfigError(f"decision temperature must be > 0, got {temperature}")


def token_f1_matrix(texts: Sequence[str]) -> torch.Tensor:
    """(n, n): SQuAD token F1 between every pair of texts (symmetric, 1 on the diagonal of non-empty texts)."""
    bags = [Counter(normalize_answer(t).split()) for t in texts]
    sizes = [sum(b.values()) for b in bags]
    n = len(texts)
    out = torch.zeros(n, n)
    for i in range(n):
        for j in range(i, n):
            same = sum((bags[i] & bags[j]).values())
            if same:
                out[i, j] = out[j, i] = 2 * same / (sizes[i] + sizes[j])  # = 2PR / (P + R)
    return out


def expected_f1(
    texts: Sequence[str], energies: torch.Tensor, temperature: float, f1_matrix: torch.Tensor | None = None
) -> torch.Tensor:
    """(n,): each candidate's expected F1 against a candidate drawn from softmax(-energies / temperature).
    `f1_matrix`: ``token_f1_matrix(texts)`` when the caller already has it."""
    m = token_f1_matrix(texts) if f1_matrix is None else f1_matrix
    p = torch.softmax(-energies.double() / temperature, dim=0)
    return (m.double() @ p).float()


def decide(
    texts: Sequence[str],
    energies: torch.Tensor,
    rule: str = "lowest",
    temperature: float = 1.0,
    f1_matrix: torch.Tensor | None = None,
) -> list[int]:
    """Candidate indices, best first, by `rule`; ties keep the given order (candidates come best proposal first)."""
    check_rule(rule, temperature)
    if rule == "lowest":
        key = energies.tolist()
    else:
        key = (-expected_f1(texts, energies, temperature, f1_matrix)).tolist()
    return sorted(range(len(texts)), key=lambda k: key[k])


def calibrate(
    texts: Sequence[Sequence[str]],
    energies: Sequence[torch.Tensor],
    references: Sequence[Sequence[str]],
    temperatures: Sequence[float] = TEMPERATURES,
    only_expected_f1: bool = False,
) -> tuple[str, float, dict[str, float]]:
    """The (rule, temperature) of the best F1 on these (val) questions, and the F1 of every setting tried.

    ``lowest`` wins ties: the plain rule unless the expected-F1 rule measurably helps. `only_expected_f1`:
    the best temperature of the expected-F1 rule (``lowest`` still scored, for reference, never chosen).
    """
    refs = {str(q): list(r) for q, r in enumerate(references)}
    matrices = [token_f1_matrix(ts) for ts in texts]  # once per question, for every temperature

    def f1_of(rule: str, t: float) -> float:
        pairs = enumerate(zip(texts, energies, matrices, strict=True))
        preds = {str(q): ts[decide(ts, e, rule, t, m)[0]] for q, (ts, e, m) in pairs if len(ts)}
        return squad_scores(preds, refs)["f1"]

    tried = {"lowest": f1_of("lowest", 1.0)}
    best = ("lowest", 1.0, -1.0 if only_expected_f1 else tried["lowest"])
    for t in temperatures:
        tried[f"expected_f1@{t:g}"] = score = f1_of("expected_f1", t)
        if score > best[2]:
            best = ("expected_f1", float(t), score)
    return best[0], best[1], tried


def calibrate_no_answer(
    energies: Sequence[float], span_f1: Sequence[float], answerable: Sequence[bool]
) -> tuple[float | None, dict[str, float]]:
    """The no-answer threshold tau of the best v2 F1 on these (val) questions, and the v2 scores at tau.

    `energies`: each question's no-answer signal (the chosen candidate's E_total, or the null margin: any
    score where higher means "more likely unanswerable"); `span_f1`: that candidate's F1 against the gold
    answers (ignored for unanswerable questions); `answerable`: whether the question has gold answers.
    tau is None (always answer) when no threshold scores more than answering everything, e.g. a val split
    without unanswerable questions.
    """
    n = len(energies)
    if not n == len(span_f1) == len(answerable):
        raise ValueError("calibrate_no_answer: energies, span_f1 and answerable must have one entry per question")
    if n == 0:
        return None, {}
    # Abstain on every question whose energy is above tau: sweep tau down through the sorted energies.
    order = sorted(range(n), key=lambda q: -energies[q])
    score = sum(span_f1[q] for q in range(n) if answerable[q])  # everything answered
    best_score, tau = score, None
    for rank, q in enumerate(order):
        score += (0.0 if answerable[q] else 1.0) - (span_f1[q] if answerable[q] else 0.0)
        below = energies[order[rank + 1]] if rank + 1 < n else energies[q] - 1.0  # the highest one still answered
        if score > best_score and below < energies[q]:  # a tie cannot be split by a threshold
            best_score, tau = score, (below + energies[q]) / 2
    has = [q for q in range(n) if answerable[q]]
    no = [q for q in range(n) if not answerable[q]]

    def answers(q: int) -> bool:
        return tau is None or energies[q] <= tau

    has_f1 = sum(span_f1[q] for q in has if answers(q))
    no_f1 = sum(1.0 for q in no if not answers(q))
    scores = {
        "f1": 100.0 * (has_f1 + no_f1) / n,
        "HasAns_f1": 100.0 * has_f1 / len(has) if has else 0.0,
        "NoAns_f1": 100.0 * no_f1 / len(no) if no else 0.0,
        "HasAns_total": float(len(has)),
        "NoAns_total": float(len(no)),
    }
    return tau, scores


__all__ = [
    "NO_ANSWER_SIGNALS",
    "RULES",
    "TEMPERATURES",
    "calibrate",
    "calibrate_no_answer",
    "check_no_answer_signal",
    "check_rule",
    "decide",
    "expected_f1",
    "token_f1_matrix",
]
