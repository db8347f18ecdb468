"""Choosing the answer among scored candidates: the lowest energy, or the expected-F1 (minimum Bayes risk) span.

The total energies of a question's candidates define a distribution over them,

    p(c | x) = softmax_c(-E_total(x, c) / T),

and SQuAD scores an answer by its token F1 against the gold. ``lowest`` answers with the mode of p (the
lowest energy, whatever T). ``expected_f1`` answers with the candidate of the highest expected F1 under p,

    c* = argmax_c  sum_c' p(c' | x) F1(c, c'),

the minimum-Bayes-risk choice for SQuAD's loss: when the energy hesitates between nested or overlapping
spans, the span they share scores more on average than any one of them. T is a setting chosen on val
(:func:`calibrate`); T -> 0 gives back ``lowest``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import torch

from qa_ebm.errors import ConfigError
from qa_ebm.metrics.squad import normalize_answer, squad_scores

RULES = ("lowest", "expected_f1")
TEMPERATURES = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0)  # the grid `calibrate` searches


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


def expected_f1(texts: Sequence[str], energies: torch.Tensor, temperature: float) -> torch.Tensor:
    """(n,): each candidate's expected F1 against a candidate drawn from softmax(-energies / temperature)."""
    p = torch.softmax(-energies.double() / temperature, dim=0)
    return (token_f1_matrix(texts).double() @ p).float()


def decide(texts: Sequence[str], energies: torch.Tensor, rule: str = "lowest", temperature: float = 1.0) -> list[int]:
    """Candidate indices, best first, by `rule`; ties keep the given order (candidates come best proposal first)."""
    check_rule(rule, temperature)
    if rule == "lowest":
        key = energies.tolist()
    else:
        key = (-expected_f1(texts, energies, temperature)).tolist()
    return sorted(range(len(texts)), key=lambda k: key[k])


def calibrate(
    texts: Sequence[Sequence[str]],
    energies: Sequence[torch.Tensor],
    references: Sequence[Sequence[str]],
    temperatures: Sequence[float] = TEMPERATURES,
) -> tuple[str, float, dict[str, float]]:
    """The (rule, temperature) of the best F1 on these (val) questions, and the F1 of every setting tried.

    ``lowest`` wins ties: the plain rule unless the expected-F1 rule measurably helps.
    """
    refs = {str(q): list(r) for q, r in enumerate(references)}

    def f1_of(rule: str, t: float) -> float:
        pairs = enumerate(zip(texts, energies, strict=True))
        preds = {str(q): ts[decide(ts, e, rule, t)[0]] for q, (ts, e) in pairs if len(ts)}
        return squad_scores(preds, refs)["f1"]

    tried = {"lowest": f1_of("lowest", 1.0)}
    best = ("lowest", 1.0, tried["lowest"])
    for t in temperatures:
        tried[f"expected_f1@{t:g}"] = score = f1_of("expected_f1", t)
        if score > best[2]:
            best = ("expected_f1", float(t), score)
    return best[0], best[1], tried


__all__ = ["RULES", "TEMPERATURES", "calibrate", "check_rule", "decide", "expected_f1", "token_f1_matrix"]
