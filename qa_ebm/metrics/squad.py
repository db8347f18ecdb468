"""SQuAD exact match and F1, as the official evaluation scripts compute them.

Normalisation (v1.1 and v2.0 scripts alike): lowercase, drop ASCII punctuation, drop the articles
``a``/``an``/``the`` as whole words, collapse whitespace. For a prediction ``p`` and gold answers
``G``:

    EM(p, G) = max_{g in G} [norm(p) == norm(g)]
    F1(p, G) = max_{g in G} 2 P R / (P + R),   P = |tok(p) ∩ tok(g)| / |tok(p)|,  R = ... / |tok(g)|

where ``∩`` is the multiset intersection of the normalised whitespace tokens. Corpus scores are the
means over questions, in percent. A question without a prediction scores 0 (as in the official
scripts); predictions for unknown ids are ignored and counted.

SQuAD v2.0 adds unanswerable questions (empty gold list): the empty prediction means "no answer", and
scores are split into HasAns / NoAns / overall. v2 differs from v1.1 in two details the official
script has: gold answers that normalise to "" are dropped, and when either side has no tokens, F1 is
1 if both are empty, else 0.

``load_squad_metric()`` wraps the same functions as a Hugging Face ``evaluate`` module (built in
memory, no loading script and no network), so ``evaluate.combine`` works; ``evaluate`` is imported
only then.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from qa_ebm.errors import ConfigError

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = frozenset(string.punctuation)  # the official scripts strip ASCII punctuation only


def normalize_answer(text: str) -> str:
    """Official SQuAD normalisation: lower, remove punctuation, remove articles, fix whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _f1_one(prediction: str, gold: str, v2: bool = False) -> float:
    pred_toks, gold_toks = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if v2 and (not pred_toks or not gold_toks):
        return float(pred_toks == gold_toks)  # v2: "no answer" vs "no answer" is a full match
    same = sum((Counter(pred_toks) & Counter(gold_toks)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_toks), same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals any normalised gold answer, else 0.0 (0.0 for no golds)."""
    norm = normalize_answer(prediction)
    return float(any(norm == normalize_answer(g) for g in golds))


def f1(prediction: str, golds: Sequence[str]) -> float:
    """Token F1 of the prediction against its best gold answer (v1.1 rules), in [0, 1]; 0.0 for no golds."""
    return max((_f1_one(prediction, g) for g in golds), default=0.0)


def squad_scores(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """SQuAD v1.1 corpus scores: ``{"exact_match": %, "f1": %, "count": n, "missing": m, "extra": e}``.

    `references` maps each question id to its gold answer texts and defines the questions scored;
    `missing` counts questions without a prediction (scored 0), `extra` predictions for unknown ids.
    """
    em = f = 0.0
    missing = 0
    for qid, golds in references.items():
        if qid not in predictions:
            missing += 1
            continue
        em += exact_match(predictions[qid], golds)
        f += f1(predictions[qid], golds)
    n = len(references)
    return {
        "exact_match": 100.0 * em / n if n else 0.0,
        "f1": 100.0 * f / n if n else 0.0,
        "count": n,
        "missing": missing,
        "extra": len(set(predictions) - set(references)),
    }


def squad_v2_scores(predictions: Mapping[str, str], references: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """SQuAD v2.0 corpus scores, as the official v2 script: overall, HasAns and NoAns, in percent.

    An empty gold list marks an unanswerable question; an empty (or whitespace) prediction means
    "no answer". Keys: ``exact``, ``f1``, ``total``, ``HasAns_exact``, ``HasAns_f1``, ``HasAns_total``,
    ``NoAns_exact``, ``NoAns_f1``, ``NoAns_total`` (a group with no questions is left out), and
    ``missing`` / ``extra`` as in :func:`squad_scores`.
    """
    groups: dict[str, list[tuple[float, float]]] = {"HasAns": [], "NoAns": []}
    missing = 0
    for qid, golds in references.items():
        # v2: golds that normalise to nothing are not answers; none left means "no answer"
        real = [g for g in golds if normalize_answer(g)] or [""]
        pred = predictions.get(qid)
        if pred is None:
            missing += 1
            scores = (0.0, 0.0)
        else:
            norm = normalize_answer(pred)
            scores = (
                float(any(norm == normalize_answer(g) for g in real)),
                max(_f1_one(pred, g, v2=True) for g in real),
            )
        groups["HasAns" if golds else "NoAns"].append(scores)

    def pct(rows: list[tuple[float, float]], i: int) -> float:
        return 100.0 * sum(r[i] for r in rows) / len(rows) if rows else 0.0

    every = groups["HasAns"] + groups["NoAns"]
    out: dict[str, Any] = {"exact": pct(every, 0), "f1": pct(every, 1), "total": len(every)}
    for name, rows in groups.items():
        if rows:
            out.update({f"{name}_exact": pct(rows, 0), f"{name}_f1": pct(rows, 1), f"{name}_total": len(rows)})
    out.update(missing=missing, extra=len(set(predictions) - set(references)))
    return out


# ----------------------------------------------------------------------------- evaluate module


def load_squad_metric(version: str = "v1", **kwargs: Any) -> Any:
    """The metric as an ``evaluate.Metric`` (in memory; no Hub, no loading script).

    Inputs follow the Hub's ``squad`` metric: predictions ``{"id", "prediction_text"}``, references
    ``{"id", "answers": {"text": [...], "answer_start": [...]}}``. Output: :func:`squad_scores`
    (``version="v1"``) or :func:`squad_v2_scores` (``version="v2"``). `kwargs` go to
    ``evaluate.Metric`` (``keep_in_memory`` defaults to True so nothing is cached on disk).
    """
    if version not in ("v1", "v2"):
        raise ConfigError(f"SQuAD metric version {version!r}: expected 'v1' or 'v2'")
    kwargs.setdefault("keep_in_memory", True)
    return _metric_class()(config_name=version, **kwargs)


def _metric_class() -> type:
    import datasets
    import evaluate

    class SquadMetric(evaluate.Metric):
        """SQuAD v1.1 / v2.0 exact match and F1 (official normalisation)."""

        def _info(self) -> evaluate.MetricInfo:
            return evaluate.MetricInfo(
                description=__doc__ or "",
                citation="Rajpurkar et al., SQuAD (EMNLP 2016); Know What You Don't Know (ACL 2018)",
                inputs_description=(
                    "predictions: [{id, prediction_text}]; references: [{id, answers: {text, answer_start}}]"
                ),
                features=datasets.Features(
                    {
                        "predictions": {"id": datasets.Value("string"), "prediction_text": datasets.Value("string")},
                        "references": {
                            "id": datasets.Value("string"),
                            "answers": datasets.Sequence(
                                {"text": datasets.Value("string"), "answer_start": datasets.Value("int32")}
                            ),
                        },
                    }
                ),
            )

        def _compute(self, predictions: list[dict], references: list[dict]) -> dict[str, Any]:
            preds = {p["id"]: p["prediction_text"] for p in predictions}
            golds = {r["id"]: list(r["answers"]["text"]) for r in references}
            return squad_v2_scores(preds, golds) if self.config_name == "v2" else squad_scores(preds, golds)

    return SquadMetric
