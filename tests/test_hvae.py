"""The hierarchical VAE: shapes and masks, the KL maths, the prior chain, both decoders, persistence."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from qa_ebm.config import HVAEConfig
from qa_ebm.errors import CheckpointError, ConfigError
from qa_ebm.models.decoders import DecodeSettings
from qa_ebm.models.hvae import HVAE, TokenSpec, gaussian_kl

SPEC = TokenSpec(vocab_size=40, pad_id=0, eos_id=3, mask_id=4, max_sentences=4, max_words=7)


def tiny(decoder: str = "scratch-gpt2", **kw) -> HVAE:
    torch.manual_seed(0)
    cfg = HVAEConfig(
        d_model=32,
        n_heads=2,
        word_layers=1,
        sentence_layers=1,
        latent_dim=6,
        decoder=decoder,
        decoder_layers=1,
        prefix_len=2,
        dropout=0.0,
        **kw,
    )
    return HVAE(cfg, SPEC)


def batch(B: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    """Answers with 1..4 sentences of 2..6 tokens, each closed by EOS, padded with PAD."""
    g = torch.Generator().manual_seed(seed)
    S, W = SPEC.max_sentences, SPEC.max_words
    ids = torch.zeros(B, S, W, dtype=torch.long)
    tmask = torch.zeros(B, S, W, dtype=torch.long)
    smask = torch.zeros(B, S, dtype=torch.long)
    for b in range(B):
        n = 1 + b % S
        smask[b, :n] = 1
        for s in range(n):
            length = 2 + (b + s) % (W - 2)
            ids[b, s, : length - 1] = torch.randint(5, SPEC.vocab_size, (length - 1,), generator=g)
            ids[b, s, length - 1] = SPEC.eos_id
            tmask[b, s, :length] = 1
    return {"input_ids": ids, "token_mask": tmask, "sentence_mask": smask}


def test_posterior_shapes_and_padding_independence():
    model = tiny().eval()
    x = batch()
    post = model.encode(**x)
    assert post.mu_g.shape == post.logvar_g.shape == (5, 6)
    assert post.mu_l.shape == post.logvar_l.shape == (5, 4, 6)
    # what sits in padded slots must not change the encoding of real ones
    noisy = {k: v.clone() for k, v in x.items()}
    pad = noisy["token_mask"] == 0
    noisy["input_ids"][pad] = torch.randint(5, 40, (int(pad.sum()),))
    again = model.encode(**noisy)
    torch.testing.assert_close(again.mu_g, post.mu_g)
    real = x["sentence_mask"].bool()
    torch.testing.assert_close(again.mu_l[real], post.mu_l[real])


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    mu_q, lv_q, mu_p, lv_p = (torch.randn(3, 5, generator=g) for _ in range(4))
    q = Normal(mu_q, (0.5 * lv_q).exp())
    torch.testing.assert_close(gaussian_kl(mu_q, lv_q), kl_divergence(q, Normal(0.0, 1.0)))
    torch.testing.assert_close(gaussian_kl(mu_q, lv_q, mu_p, lv_p), kl_divergence(q, Normal(mu_p, (0.5 * lv_p).exp())))


def test_kl_terms_in_the_loss_are_masked_to_real_sentences():
    model = tiny()
    x = batch()
    torch.manual_seed(0)
    out = model(**x, beta_g=0.0, beta_l=0.0)
    torch.manual_seed(0)
    full = model(**x, beta_g=1.0, beta_l=1.0, count_loss_weight=0.0)
    expected = out.rec_loss + out.kl_g + out.kl_l
    torch.testing.assert_close(full.loss, expected)
    # a padded slot's posterior does not enter KL_l: same value whatever the padding holds
    assert out.kl_l.item() > 0 and out.kl_g.item() > 0


def test_prior_chain_conditions_on_the_previous_latent():
    model = tiny()
    z_g = torch.randn(2, 6)
    z_l = torch.randn(2, 4, 6)
    mu, _ = model.prior_params(z_g, z_l)
    changed = z_l.clone()
    changed[:, 1] += 5.0  # only slot 2's prior reads z_1
    mu2, _ = model.prior_params(z_g, changed)
    torch.testing.assert_close(mu[:, :2], mu2[:, :2])
    torch.testing.assert_close(mu[:, 3], mu2[:, 3])
    assert not torch.allclose(mu[:, 2], mu2[:, 2])
    z_g_s, z_l_s, n = model.sample_prior(3, generator=torch.Generator().manual_seed(0))
    assert z_g_s.shape == (3, 6) and z_l_s.shape == (3, 4, 6) and ((n >= 1) & (n <= 4)).all()


@pytest.mark.parametrize("decoder", ["scratch-gpt2", "scratch-bart"])
def test_both_decoders_learn_a_tiny_batch(decoder):
    model = tiny(decoder)
    x = batch()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        out = model(**x, beta_g=0.1, beta_l=0.1)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.token_nll.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("decoder", ["scratch-gpt2", "scratch-bart"])
@pytest.mark.parametrize(
    "settings",
    [
        DecodeSettings(max_new_tokens=7),
        DecodeSettings(max_new_tokens=7, num_beams=3),
        DecodeSettings(max_new_tokens=7, do_sample=True, top_p=0.9),
    ],
)
def test_decoding_strategies_give_one_token_list_per_real_sentence(decoder, settings):
    model = tiny(decoder).eval()
    x = batch()
    out = model.reconstruct(**x, settings=settings)
    assert [len(a) for a in out] == x["sentence_mask"].sum(1).tolist()
    assert all(len(s) <= 7 and SPEC.eos_id not in s and SPEC.pad_id not in s for a in out for s in a)


def _greedy_without_cache(decoder, plan: torch.Tensor, settings: DecodeSettings) -> list[list[int]]:
    """Reference greedy decoding: the whole sequence through the LM at every step, no KV cache, no row dropping."""
    start = torch.full((len(plan), 1), decoder.start_id, dtype=torch.long)
    seq, done = start, torch.zeros(len(plan), dtype=torch.bool)
    for t in range(settings.max_new_tokens):
        if hasattr(decoder.lm, "transformer"):  # GPT-2: prefix vectors, then the tokens' embeddings
            embeds = torch.cat([decoder.prefix(plan), decoder.lm.get_input_embeddings()(seq)], dim=1)
            logits = decoder.lm(inputs_embeds=embeds, use_cache=False).logits[:, -1]
        else:  # BART: the tokens, cross-attending to the memory
            logits = decoder.lm(input_ids=seq, encoder_hidden_states=decoder.prefix(plan), use_cache=False).logits[
                :, -1
            ]
        if t < settings.min_new_tokens:
            logits[:, decoder.eos_id] = float("-inf")
        step = logits.argmax(-1).masked_fill(done, decoder.pad_id)
        done |= step == decoder.eos_id
        seq = torch.cat([seq, step[:, None]], dim=1)
    return decoder._strip(seq[:, 1:])


@pytest.mark.parametrize("decoder", ["scratch-gpt2", "scratch-bart"])
@pytest.mark.parametrize("min_new_tokens", [0, 4])
@torch.no_grad()
def test_cached_greedy_decoding_gives_the_tokens_of_full_recomputation(decoder, min_new_tokens):
    model = tiny(decoder).eval()
    # Untied random output embeddings with a heavy EOS row, so that rows end at different steps (an untrained
    # tied LM repeats its input: EOS, the start token, at once); the rows that finish leave the cached batch.
    out = torch.randn(SPEC.vocab_size, 32, generator=torch.Generator().manual_seed(2))
    out[SPEC.eos_id] *= 3
    model.decoder.lm.get_output_embeddings().weight = torch.nn.Parameter(out)
    settings = DecodeSettings(max_new_tokens=7, min_new_tokens=min_new_tokens)
    plan = torch.randn(12, 32, generator=torch.Generator().manual_seed(1)) * 3
    got = model.decoder.generate(plan, settings)
    assert got == _greedy_without_cache(model.decoder, plan, settings)
    if decoder == "scratch-gpt2":  # rows of several lengths, and the tokens transformers' generate gives
        assert len({len(s) for s in got}) > 1
        start = torch.full((12, 1), model.decoder.start_id, dtype=torch.long)
        embeds = torch.cat([model.decoder.prefix(plan), model.decoder.lm.get_input_embeddings()(start)], dim=1)
        kwargs = model.decoder._generate_kwargs(settings)
        assert got == model.decoder._strip(model.decoder.lm.generate(inputs_embeds=embeds, **kwargs))


def test_the_kv_cache_goes_under_the_name_the_lm_takes():
    from qa_ebm.models.decoders import cache_argument

    def new_forward(input_ids=None, cache=None, use_cache=None): ...

    def old_forward(input_ids=None, past_key_values=None, use_cache=None): ...

    assert cache_argument(new_forward) == "cache"
    assert cache_argument(old_forward) == "past_key_values"


@pytest.mark.parametrize("decoder", ["scratch-gpt2", "scratch-bart"])
@torch.no_grad()
def test_cached_greedy_decoding_uses_no_deprecated_argument(decoder):
    """transformers 5.24 renamed past_key_values to cache and warns on the old name (removed in 5.40)."""
    import warnings

    model = tiny(decoder).eval()
    plan = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        model.decoder.generate(plan, DecodeSettings(max_new_tokens=4, min_new_tokens=2))


@pytest.mark.parametrize("decoder", ["scratch-gpt2", "scratch-bart"])
def test_token_logits_are_the_full_logits_at_the_real_tokens(decoder):
    model = tiny(decoder).eval()
    x = batch()
    real = x["sentence_mask"].bool()
    tokens, tmask = x["input_ids"][real], x["token_mask"][real]
    plan = torch.randn(len(tokens), 32, generator=torch.Generator().manual_seed(0))
    full = model.decoder(plan, tokens, tmask)  # (N, W, V)
    torch.testing.assert_close(model.decoder.token_logits(plan, tokens, tmask), full[tmask.bool()])


def test_skipping_trailing_padding_changes_neither_the_loss_nor_its_gradients(monkeypatch):
    """forward groups sentences by length and cuts each group's trailing token positions, and the sentence
    slots that are padding in every row; the untrimmed computation (one group, nothing cut, logits at every
    position) must give the same numbers."""
    import qa_ebm.models.hvae as hvae_module

    # 1..3 sentences of 2..6 tokens, longest answer first: both dimensions padded, lengths out of order
    x = {k: v[[2, 0, 1]] for k, v in batch().items()}
    assert x["sentence_mask"].sum(1).max() < SPEC.max_sentences and x["token_mask"].sum(-1).max() < SPEC.max_words

    def loss_and_grads(model):
        torch.manual_seed(1)
        out = model(**x, free_bits=0.5)
        grads = torch.autograd.grad(out.loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
        return out, grads

    trimmed, g_trimmed = loss_and_grads(tiny())
    monkeypatch.setattr(hvae_module, "trim_words", lambda ids, mask: (ids, mask))
    monkeypatch.setattr(hvae_module, "used_length", lambda mask: mask.shape[-1])
    monkeypatch.setattr(hvae_module, "length_buckets", lambda lengths: [torch.arange(len(lengths))])
    model = tiny()
    full_logits = lambda plan, ids, mask: model.decoder(plan, ids, mask)[mask.bool()]  # noqa: E731
    monkeypatch.setattr(model.decoder, "token_logits", full_logits)
    full, g_full = loss_and_grads(model)
    for name in ("loss", "rec_loss", "kl_g", "kl_l", "count_loss"):
        torch.testing.assert_close(getattr(trimmed, name), getattr(full, name), msg=name)
    for a, b in zip(g_trimmed, g_full, strict=True):
        if a is not None or b is not None:
            torch.testing.assert_close(a, b)


def test_an_answer_encodes_the_same_alone_and_in_a_batch_of_longer_ones():
    model = tiny().eval()
    x = batch()  # row 3 has every sentence slot; row 0 one short sentence
    alone = model.encode(**{k: v[:1] for k, v in x.items()})
    together = model.encode(**x)
    torch.testing.assert_close(alone.mu_g, together.mu_g[:1])
    torch.testing.assert_close(alone.mu_l, together.mu_l[:1])  # padded slots too: they carry no context
    torch.testing.assert_close(alone.logvar_l, together.logvar_l[:1])


def test_word_dropout_only_in_training_and_never_on_eos():
    model = tiny()
    x = batch()
    ids = x["input_ids"][x["sentence_mask"].bool()]
    mask = x["token_mask"][x["sentence_mask"].bool()]
    dropped = model._word_dropout(ids, mask, 0.99)
    assert (dropped == SPEC.mask_id).sum() > 0
    assert ((ids == SPEC.eos_id) == (dropped == SPEC.eos_id)).all()
    assert (dropped[mask == 0] == ids[mask == 0]).all()
    model.eval()
    assert torch.equal(model._word_dropout(ids, mask, 0.99), ids)


@pytest.mark.parametrize("decoder", ["scratch-gpt2", "scratch-bart"])
def test_save_load_round_trip_is_bit_exact(tmp_path, decoder):
    model = tiny(decoder).eval()
    model.save_pretrained(tmp_path / "m")
    loaded = HVAE.from_pretrained(tmp_path / "m").eval()
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    x = batch()
    torch.testing.assert_close(loaded.encode(**x).mu_l, model.encode(**x).mu_l, rtol=0, atol=0)


def test_from_pretrained_refuses_what_is_not_a_model(tmp_path):
    with pytest.raises(CheckpointError, match="not an HVAE directory"):
        HVAE.from_pretrained(tmp_path)
    model = tiny()
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(CheckpointError, match="safetensors"):
        HVAE.from_pretrained(tmp_path / "m")


def test_decoder_vocabulary_must_cover_the_tokenizer(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    small = tmp_path / "small-lm"
    GPT2LMHeadModel(GPT2Config(vocab_size=20, n_positions=16, n_embd=16, n_layer=1, n_head=2)).save_pretrained(small)
    model = tiny(decoder=str(small))  # 20 < 40 ids: resized, since the data's tokenizer added tokens
    assert model.decoder.lm.get_input_embeddings().num_embeddings == 40
    with pytest.raises(ConfigError, match="cannot load decoder"):
        tiny(decoder=str(tmp_path / "missing-lm-dir"))


def test_without_kl_pressure_the_decoder_reads_z_and_reconstructs_exactly():
    """The plumbing check behind the quality benchmark: information can flow x -> z -> x."""
    model = tiny()
    x = batch(B=8, seed=3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(250):
        out = model(**x, beta_g=0.0, beta_l=0.0)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    model.eval()
    gold = [
        [
            x["input_ids"][b, s, : int(x["token_mask"][b, s].sum()) - 1].tolist()
            for s in range(int(x["sentence_mask"][b].sum()))
        ]
        for b in range(8)
    ]
    assert model.reconstruct(**x) == gold
    post = model.encode(**x)
    real = x["sentence_mask"].bool()
    tokens, tmask = x["input_ids"][real], x["token_mask"][real]

    def nll(mu_g, mu_l):
        plan = model.plan(torch.cat([mu_g.unsqueeze(1).expand_as(mu_l), mu_l], -1))[real]
        ce = torch.nn.functional.cross_entropy(
            model.decoder(plan, tokens, tmask).flatten(0, 1), tokens.flatten(), reduction="none"
        )
        return (ce.view_as(tokens) * tmask).sum() / tmask.sum()

    with torch.no_grad():
        shuffled = torch.roll(torch.arange(8), 1)  # every answer gets another answer's latent
        assert nll(post.mu_g[shuffled], post.mu_l[shuffled]) > 10 * nll(post.mu_g, post.mu_l)


# ----------------------------------------------------------------------------- pretrained, frozen decoder


@pytest.fixture(scope="module")
def pretrained_lm_dir(tmp_path_factory):
    """A small LlamaForCausalLM saved like a Hub model: stands in for SmolLM2 (also Llama, tied embeddings)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=SPEC.vocab_size - 2,  # the data's tokenizer added PAD / MASK: the decoder is resized
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        tie_word_embeddings=True,
        initializer_range=0.5,  # a random LM at the usual 0.02 barely reacts to its inputs: nothing to steer
    )
    d = tmp_path_factory.mktemp("lm") / "small-llama"
    LlamaForCausalLM(config).save_pretrained(d)
    return d


def _train(model: HVAE, steps: int, lr: float = 3e-3) -> list[float]:
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=lr)
    x, losses = batch(), []
    for _ in range(steps):
        out = model(**x, beta_g=0.1, beta_l=0.1)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.token_nll.item())
    return losses


def test_frozen_decoder_keeps_its_weights_while_the_rest_learns(pretrained_lm_dir):
    model = tiny(str(pretrained_lm_dir), freeze_decoder=True)
    lm_before = {k: v.clone() for k, v in model.decoder.lm.state_dict().items()}
    rest_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("decoder.lm.")}
    trainable = {id(p) for p in model.trainable_parameters()}
    assert not trainable & {id(p) for p in model.decoder.lm.parameters()}  # the optimiser never sees the LM
    assert {id(p) for p in model.decoder.to_prefix.parameters()} <= trainable
    assert {id(p) for p in model.plan.parameters()} | {id(p) for p in model.q_global.parameters()} <= trainable

    losses = _train(model, 40)
    assert losses[-1] < 0.8 * losses[0]  # token NLL: only the latent -> prefix path can have lowered it
    for k, v in model.decoder.lm.state_dict().items():
        assert torch.equal(v, lm_before[k]), k
    changed = [k for k, v in model.state_dict().items() if k in rest_before and not torch.equal(v, rest_before[k])]
    assert "decoder.to_prefix.weight" in changed and "q_global.weight" in changed


def test_unfrozen_pretrained_decoder_is_fine_tuned(pretrained_lm_dir):
    model = tiny(str(pretrained_lm_dir), freeze_decoder=False)
    embeddings = model.decoder.lm.get_input_embeddings().weight.detach().clone()
    assert {id(p) for p in model.decoder.lm.parameters()} <= {id(p) for p in model.trainable_parameters()}
    _train(model, 3)
    assert not torch.equal(model.decoder.lm.get_input_embeddings().weight, embeddings)


def test_frozen_pretrained_decoder_round_trip_is_bit_exact(tmp_path, pretrained_lm_dir):
    model = tiny(str(pretrained_lm_dir), freeze_decoder=True)
    _train(model, 2)
    model.eval().save_pretrained(tmp_path / "m")
    loaded = HVAE.from_pretrained(tmp_path / "m").eval()  # rebuilt from the saved LM config: no source dir
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert [p.requires_grad for p in loaded.parameters()] == [p.requires_grad for p in model.parameters()]
    x = batch()
    assert loaded.reconstruct(**x) == model.reconstruct(**x)
