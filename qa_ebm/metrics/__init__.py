"""Metrics: SQuAD exact match and F1 (official normalisation)."""

from qa_ebm.metrics.squad import (
    exact_match,
    f1,
    load_squad_metric,
    normalize_answer,
    squad_scores,
    squad_v2_scores,
)

__all__ = ["exact_match", "f1", "load_squad_metric", "normalize_answer", "squad_scores", "squad_v2_scores"]
