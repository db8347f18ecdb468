"""bench/flops.py: the analytic FLOP counts behind the MFU figures equal what torch's flop counter counts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench import flops, workloads
from qa_ebm.config import EBTConfig, HVAEConfig
from qa_ebm.models.ebt import EBTSpec, EnergyTransformer
from qa_ebm.models.hvae import HVAE, TokenSpec

SPEC = TokenSpec(vocab_size=50, pad_id=0, eos_id=3, mask_id=4, max_sentences=4, max_words=9)
# Dropout on, as in the configs: with dropout 0 torch runs attention in a fused CPU kernel that the flop
# counter does not count; with dropout it runs the matmuls the formulas count.
HVAE_CFG = HVAEConfig(
    d_model=32, n_heads=2, word_layers=1, sentence_layers=2, latent_dim=6, decoder_layers=2, prefix_len=3, dropout=0.1
)


def counted(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def answers(B: int = 6) -> dict[str, torch.Tensor]:
    """1..3 sentences of 2..7 tokens (EOS last): both the word and the sentence dimension carry padding."""
    g = torch.Generator().manual_seed(0)
    ids = torch.zeros(B, SPEC.max_sentences, SPEC.max_words, dtype=torch.long)
    tmask, smask = torch.zeros_like(ids), torch.zeros(B, SPEC.max_sentences, dtype=torch.long)
    for b in range(B):
        smask[b, : 1 + b % 3] = 1
        for s in range(1 + b % 3):
            n = 2 + (b + 2 * s) % 6
            ids[b, s, :n] = torch.randint(5, SPEC.vocab_size, (n,), generator=g)
            ids[b, s, n - 1] = SPEC.eos_id
            tmask[b, s, :n] = 1
    return {"input_ids": ids, "token_mask": tmask, "sentence_mask": smask}


def test_hvae_training_step_flops_match_the_counter():
    torch.manual_seed(0)
    model, batch = HVAE(HVAE_CFG, SPEC), answers()

    def step():
        model(**batch).loss.backward()

    config = SimpleNamespace(hvae=HVAE_CFG)
    assert workloads.hvae_step_flops(config, SPEC, batch) == counted(step)


def test_plain_lm_training_step_flops_match_the_counter():
    from transformers import GPT2Config, GPT2LMHeadModel

    lm = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=40, n_embd=32, n_layer=2, n_head=2)).train()
    inputs = workloads.lm_batch(answers(), start_id=SPEC.eos_id, pad_id=SPEC.pad_id)
    config = SimpleNamespace(hvae=SimpleNamespace(d_model=32, decoder_layers=2))
    spec = SimpleNamespace(vocab_size=50)
    assert workloads.lm_step_flops(config, spec, inputs) == counted(lambda: lm(**inputs).loss.backward())


@pytest.mark.parametrize("soft_tokens", [1, 2])
def test_energy_and_refinement_flops_match_the_counter(soft_tokens):
    torch.manual_seed(0)
    cfg = EBTConfig(d_model=32, n_heads=2, n_layers=2, soft_tokens=soft_tokens, max_condition_tokens=12)
    model = EnergyTransformer(cfg, EBTSpec(latent_dim=6, num_slots=5, condition_vocab=50))
    x, x_mask = torch.randint(5, 50, (4, 12)), torch.ones(4, 12, dtype=torch.long)
    slot_mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]).bool()
    shapes = flops.EBTShapes(B=4, Lc=12, P=5, M=soft_tokens, D=6, d=32, layers=2)
    with torch.no_grad():
        assert flops.ebt_condition_forward(shapes) == counted(lambda: model.condition(x, x_mask))
        cond = model.condition(x, x_mask)
        y = torch.randn(4, 5, 6)
        assert flops.ebt_energy_forward(shapes) == counted(lambda: model.energy(cond, y, slot_mask))
    for p in model.parameters():  # refinement forms input gradients only
        p.requires_grad_(False)
    y.requires_grad_(True)
    assert flops.refinement_step(shapes) == counted(lambda: model.energy(cond, y, slot_mask).sum().backward())
