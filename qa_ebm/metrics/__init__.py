"""Metrics: SQuAD exact match and F1 (official normalisation); BLEU, ROUGE, distinct-n, lengths, perplexity."""

from qa_ebm.metrics.squad import (
    exact_match,
    f1,
    load_squad_metric,
    normalize_answer,
    squad_scores,
    squad_v2_scores,
)
from qa_ebm.metrics.text import (
    TEXT_METRICS,
    ReferenceLM,
    bleu,
    distinct_n,
    length_stats,
    load_text_metric,
    perplexity,
    rouge,
    smollm2_gguf,
    text_scores,
)

__all__ = [
    "TEXT_METRICS",
    "ReferenceLM",
    "bleu",
    "distinct_n",
    "exact_match",
    "f1",
    "length_stats",
    "load_squad_metric",
    "load_text_metric",
    "normalize_answer",
    "perplexity",
    "rouge",
    "smollm2_gguf",
    "squad_scores",
    "squad_v2_scores",
    "text_scores",
]
