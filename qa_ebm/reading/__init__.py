"""Reading mode: answers as spans of a given passage.

Candidate spans with exact character offsets (``spans``), token windows of long passages through a
pretrained encoder's fast tokenizer (``windows``), and the extractive proposal head that proposes the
top-K spans and is the baseline the energy model must beat (``proposal``). This package sits at the
models layer: it imports ``qa_ebm.data`` / ``qa_ebm.models`` / ``qa_ebm.metrics``, never training or cli.
"""

from qa_ebm.reading.proposal import (
    ProposalConfig,
    ProposalOutput,
    SpanPrediction,
    SpanProposalHead,
    TrainResult,
    load_proposal_head,
    predict,
    top_k_spans,
    train_proposal_head,
)
from qa_ebm.reading.spans import CandidateBatch, Span, SpanCandidates, candidate_spans, gold_span_index, word_offsets
from qa_ebm.reading.windows import Windows, check_passage, make_windows

__all__ = [
    "CandidateBatch",
    "ProposalConfig",
    "ProposalOutput",
    "Span",
    "SpanCandidates",
    "SpanPrediction",
    "SpanProposalHead",
    "TrainResult",
    "Windows",
    "candidate_spans",
    "check_passage",
    "gold_span_index",
    "load_proposal_head",
    "make_windows",
    "predict",
    "top_k_spans",
    "train_proposal_head",
    "word_offsets",
]
