"""Hierarchical VAE over answers: sentences -> one global and one latent per sentence -> sentences.

Shapes: B answers, S sentence slots, W token slots per sentence, D model width, L latent width.

Encoder
    word level      e_{i,t} = Emb(x_{i,t}) + Pos_t -> Transformer over t -> mean over real tokens = h_i
                    (hvae.word_encoder = a pretrained encoder: h_i = Linear(LN(mean-pooled frozen states of
                    sentence i's text)), precomputed per dataset, see models/sentence_embedder.py)
    sentence level  [DOC; h_1..h_S] + SentPos -> Transformer over sentences -> d (at DOC), c_i
Posterior
    q(z_g | x)      = N(mu_g, diag sigma_g^2),  [mu_g, log sigma_g^2] = Linear(d)
    q(z_i | x, z_g) = N(mu_i, diag sigma_i^2),  [mu_i, log sigma_i^2] = Linear([c_i; z_g])
    z = mu + sigma * eps,  eps ~ N(0, I)                                     (reparameterisation)
Prior
    p(z_g) = N(0, I)
    p(z_i | z_g, z_{i-1}) = N(m_i, diag s_i^2),  [m_i, log s_i^2] = MLP([z_g; z_{i-1}]),  z_0 = 0
Decoder
    plan_i = MLP([z_g; z_i]);  p(x_i | plan_i) by a language model (see decoders.py)
    p(n_sentences | z_g) = Categorical(Linear(z_g))
Loss, per answer, averaged over the batch
    sum_{i,t} CE(x_{i,t})  +  beta_g KL_g  +  beta_l sum_i KL_i  +  w_count CE(n_sentences)
    KL_g = KL(q(z_g|x) || N(0, I))
         = 1/2 sum_d (mu^2 + sigma^2 - 1 - log sigma^2)
    KL_i = KL(q(z_i|x,z_g) || p(z_i|z_g,z_{i-1}))
         = 1/2 sum_d (log s^2 - log sigma^2 + (sigma^2 + (mu - m)^2) / s^2 - 1)
    with z_g and z_{i-1} sampled from the posterior, and the KLs passed through free bits.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from qa_ebm.config import HVAEConfig, config_from_dict
from qa_ebm.errors import CheckpointError, ConfigError
from qa_ebm.io import read_json
from qa_ebm.models.decoders import DecodeSettings, LatentDecoder, MemoryLMDecoder, PrefixLMDecoder
from qa_ebm.models.losses import free_bits_kl
from qa_ebm.models.weights import load_module, save_module

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class TokenSpec:
    """What the model needs to know about the data: vocabulary, special ids and the id tensor shape."""

    vocab_size: int
    pad_id: int
    eos_id: int
    mask_id: int
    max_sentences: int
    max_words: int
    sentence_dim: int = 0  # width of the pretrained sentence vectors (hvae.word_encoder); 0 for "scratch"


@dataclass
class Posterior:
    mu_g: torch.Tensor  # (B, L)
    logvar_g: torch.Tensor  # (B, L)
    mu_l: torch.Tensor  # (B, S, L)
    logvar_l: torch.Tensor  # (B, S, L)


@dataclass
class HVAEOutput:
    loss: torch.Tensor  # what the optimiser minimises (free bits and betas applied)
    rec_loss: torch.Tensor  # sum of token CE per answer
    token_nll: torch.Tensor  # mean CE per real token (log perplexity)
    kl_g: torch.Tensor  # raw KL_g per answer
    kl_l: torch.Tensor  # raw sum_i KL_i per answer
    count_loss: torch.Tensor
    posterior: Posterior
    n_tokens: int


def gaussian_kl(mu_q, logvar_q, mu_p=None, logvar_p=None) -> torch.Tensor:
    """Per-dimension KL(N(mu_q, e^logvar_q) || N(mu_p, e^logvar_p)); the prior defaults to N(0, I)."""
    if mu_p is None:
        return 0.5 * (mu_q.pow(2) + logvar_q.exp() - 1.0 - logvar_q)
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).pow(2)) / logvar_p.exp() - 1.0)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return mu + torch.randn_like(mu) * (0.5 * logvar).exp()


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


def _encoder(d: int, heads: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout, activation="gelu", batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def used_length(mask: torch.Tensor) -> int:
    """1 + the last index of the last dimension that is real (nonzero) in any row of `mask` (..., T); 0 if none."""
    real = mask.bool().flatten(0, -2).any(0) if mask.dim() > 1 else mask.bool()
    idx = real.nonzero()
    return int(idx[-1]) + 1 if len(idx) else 0


def trim_words(input_ids: torch.Tensor, token_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., W) ids and mask cut after the last token position that is real anywhere in the batch.

    Sentences are padded to max_words but are mostly shorter (SQuAD answers: 7 tokens of 32); the word
    encoder and the decoder attend only to real tokens, so the trailing padding is pure cost.
    """
    used = max(used_length(token_mask), 1)
    return input_ids[..., :used], token_mask[..., :used]


# On SQuAD's mix of short answers and long passage sentences, 2 groups take a tiny step from 7.3 to 6.0 GFLOP
# (one group: 7.3); 3 or 4 groups save 6-8 % more, within the timing noise of bench/train_speed.py.
LENGTH_BUCKETS = 2


def length_buckets(lengths: torch.Tensor, buckets: int = LENGTH_BUCKETS) -> list[torch.Tensor]:
    """Row indices sorted by length and split into `buckets` groups of about equal size, shortest first.

    Each group is then cut to its own longest row (`trim_words`): in a batch of short answers and long
    passage sentences, the answers stop paying for the passages' padding.
    """
    return [rows for rows in lengths.argsort().tensor_split(buckets) if len(rows)]


def build_decoder(cfg: HVAEConfig, spec: TokenSpec, lm_config: dict | None = None) -> LatentDecoder:
    """The decoder named by `cfg.decoder`: a small LM from scratch, or a pretrained causal LM.

    `lm_config` (a saved `transformers` config) rebuilds the architecture without the Hub; its weights
    then come from the HVAE's own safetensors.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, BartConfig, BartForCausalLM, GPT2Config, GPT2LMHeadModel

    kwargs = {"plan_dim": cfg.d_model, "prefix_len": cfg.prefix_len, "start_id": spec.eos_id, "eos_id": spec.eos_id}
    kwargs["pad_id"] = spec.pad_id
    if lm_config is not None:
        lm_config = dict(lm_config)
        config = AutoConfig.for_model(lm_config.pop("model_type"), **lm_config)
        lm = BartForCausalLM(config) if config.model_type == "bart" else AutoModelForCausalLM.from_config(config)
    elif cfg.decoder == "scratch-gpt2":
        lm = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=spec.vocab_size,
                n_positions=cfg.prefix_len + spec.max_words,
                n_embd=cfg.d_model,
                n_layer=cfg.decoder_layers,
                n_head=cfg.n_heads,
                resid_pdrop=cfg.dropout,
                embd_pdrop=cfg.dropout,
                attn_pdrop=cfg.dropout,
                bos_token_id=spec.eos_id,
                eos_token_id=spec.eos_id,
                pad_token_id=spec.pad_id,
            )
        )
    elif cfg.decoder == "scratch-bart":
        lm = BartForCausalLM(
            BartConfig(
                vocab_size=spec.vocab_size,
                d_model=cfg.d_model,
                decoder_layers=cfg.decoder_layers,
                decoder_attention_heads=cfg.n_heads,
                decoder_ffn_dim=4 * cfg.d_model,
                encoder_layers=1,
                encoder_attention_heads=cfg.n_heads,
                encoder_ffn_dim=4 * cfg.d_model,
                dropout=cfg.dropout,
                # generate() indexes BART's learned positions past the sentence length on its sampling and
                # beam paths (transformers 5.x); a roomy table costs a few KB.
                max_position_embeddings=max(64, 2 * spec.max_words),
                is_decoder=True,
                is_encoder_decoder=False,
                pad_token_id=spec.pad_id,
                bos_token_id=spec.eos_id,
                eos_token_id=spec.eos_id,
                decoder_start_token_id=spec.eos_id,
                forced_eos_token_id=None,
            )
        )
    else:
        lm = _pretrained_lm(cfg, spec)
    if lm.get_input_embeddings().num_embeddings < spec.vocab_size:
        raise ConfigError(
            f"decoder {cfg.decoder!r} has {lm.get_input_embeddings().num_embeddings} token embeddings but the data's "
            f"tokenizer has {spec.vocab_size} ids; preprocess with that decoder's tokenizer "
            f"(--set data.tokenizer.kind=hf --set data.tokenizer.name={cfg.decoder})"
        )
    return MemoryLMDecoder(lm, **kwargs) if lm.config.model_type == "bart" else PrefixLMDecoder(lm, **kwargs)


def _pretrained_lm(cfg: HVAEConfig, spec: TokenSpec) -> nn.Module:
    from transformers import AutoModelForCausalLM, BartForCausalLM

    from qa_ebm.models.pretrained import resolve_causal_lm

    name, gguf_file = resolve_causal_lm(cfg.decoder, cfg.gguf_file)
    local = Path(name)
    try:
        if "bart" in name.lower():
            lm = BartForCausalLM.from_pretrained(name, trust_remote_code=False)
        else:  # a GGUF file is dequantised to float32 on load
            lm = AutoModelForCausalLM.from_pretrained(name, gguf_file=gguf_file, trust_remote_code=False)
    except (OSError, ValueError) as e:
        hint = "" if local.exists() else "; offline? pass a local model directory as hvae.decoder"
        raise ConfigError(f"cannot load decoder {cfg.decoder!r}: {str(e).splitlines()[0]}{hint}") from e
    if lm.get_input_embeddings().num_embeddings < spec.vocab_size:  # the tokenizer added PAD / MASK
        lm.resize_token_embeddings(spec.vocab_size)
    return lm


class HVAE(nn.Module):
    def __init__(self, cfg: HVAEConfig, spec: TokenSpec, decoder: LatentDecoder | None = None):
        super().__init__()
        self.cfg, self.spec = cfg, spec
        D, L, S, W = cfg.d_model, cfg.latent_dim, spec.max_sentences, spec.max_words
        # encoder: word level (from scratch over token ids, or a projection of frozen pretrained sentence vectors)
        self.pretrained_words = cfg.word_encoder != "scratch"
        if self.pretrained_words:
            if spec.sentence_dim < 1:
                raise ConfigError(f"hvae.word_encoder={cfg.word_encoder} needs the sentence vectors' width")
            self.sent_in = nn.Sequential(nn.LayerNorm(spec.sentence_dim), nn.Linear(spec.sentence_dim, D))
        else:
            self.tok_emb = nn.Embedding(spec.vocab_size, D, padding_idx=spec.pad_id)
            self.word_pos = nn.Embedding(W, D)
            self.word_enc = _encoder(D, cfg.n_heads, cfg.word_layers, cfg.dropout)
        self.doc_token = nn.Parameter(torch.randn(1, 1, D) * 0.02)
        self.sent_pos = nn.Embedding(S + 1, D)
        self.sent_enc = _encoder(D, cfg.n_heads, cfg.sentence_layers, cfg.dropout)
        self.enc_norm = nn.LayerNorm(D)
        # posterior and prior
        self.q_global = nn.Linear(D, 2 * L)
        self.q_local = nn.Linear(D + L, 2 * L)
        self.prior_local = _mlp(2 * L, D, 2 * L)
        # decoder side
        self.count_head = nn.Linear(L, S)
        self.plan = _mlp(2 * L, D, D)
        self.decoder = decoder if decoder is not None else build_decoder(cfg, spec)
        if cfg.freeze_decoder:  # the prefix projection (decoder.to_prefix) stays trainable
            self.decoder.lm.requires_grad_(False)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimiser updates: everything but a frozen decoder LM (hvae.freeze_decoder)."""
        return [p for p in self.parameters() if p.requires_grad]

    # ------------------------------------------------------------------------------- encoder

    def encode(
        self,
        input_ids: torch.Tensor,
        token_mask: torch.Tensor,
        sentence_mask: torch.Tensor,
        sentence_emb: torch.Tensor | None = None,
    ) -> Posterior:
        """q(z_g|x) and q(z_i|x, z_g) evaluated at z_g = mu_g (the deterministic encoding)."""
        mu_g, logvar_g, ctx = self.encode_context(input_ids, token_mask, sentence_mask, sentence_emb)
        return Posterior(mu_g, logvar_g, *self._local_posterior(ctx, mu_g))

    def encode_context(
        self,
        input_ids: torch.Tensor,
        token_mask: torch.Tensor,
        sentence_mask: torch.Tensor,
        sentence_emb: torch.Tensor | None = None,
    ):
        """-> mu_g, logvar_g (B, L) and the contextual sentence vectors c_i (B, S, D).

        `sentence_emb` (B, S, Dp): the pretrained word level's sentence vectors, required when
        hvae.word_encoder is not "scratch" (and then the token ids are not read).
        """
        B, S = sentence_mask.shape
        real = sentence_mask.bool()  # (B, S)
        if self.pretrained_words:
            if sentence_emb is None:
                raise ValueError(f"hvae.word_encoder={self.cfg.word_encoder}: encode needs sentence_emb")
            h = self.sent_in(sentence_emb.float()) * real.unsqueeze(-1)  # (B, S, D)
        else:
            tokens = input_ids[real]  # (N, W): only real sentences (an all-padding row would attend to nothing)
            tmask = token_mask[real].bool()
            pooled, order = [], []
            for rows in length_buckets(tmask.sum(1)):  # sentences of similar length together, each group
                ids, mask = trim_words(tokens[rows], tmask[rows])  # cut to its longest: (n, W')
                x = self.tok_emb(ids) + self.word_pos.weight[: ids.shape[1]]
                x = self.word_enc(x, src_key_padding_mask=~mask)  # (n, W', D)
                pooled.append((x * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1))  # (n, D)
                order.append(rows)
            h_real = torch.cat(pooled)[torch.cat(order).argsort()]  # (N, D), back in the sentences' order
            h = h_real.new_zeros(B, S, h_real.shape[-1]).masked_scatter(real.unsqueeze(-1), h_real)  # (B, S, D)
        # Slots after the batch's last real sentence are padding in every row: the transformer skips them.
        # Real slots never attend to padded ones, so this changes nothing but the work done.
        used = used_length(real)
        seq = torch.cat([self.doc_token.expand(B, -1, -1), h[:, :used]], dim=1) + self.sent_pos.weight[: used + 1]
        pad = torch.cat([real.new_zeros(B, 1), ~real[:, :used]], dim=1)  # the DOC slot is always attended
        seq = self.enc_norm(self.sent_enc(seq, src_key_padding_mask=pad))  # (B, 1+S', D)
        doc = seq[:, 0]
        # padded slots carry no context (zeros), whatever else is in the batch
        ctx = F.pad(seq[:, 1:], (0, 0, 0, S - used)) * real.unsqueeze(-1)  # (B, S, D)
        mu_g, logvar_g = self.q_global(doc).chunk(2, dim=-1)  # (B, L) each
        return mu_g, logvar_g, ctx

    def _local_posterior(self, ctx: torch.Tensor, z_g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = z_g.unsqueeze(1).expand(-1, ctx.shape[1], -1)
        mu_l, logvar_l = self.q_local(torch.cat([ctx, z], dim=-1)).chunk(2, dim=-1)  # (B, S, L) each
        return mu_l, logvar_l

    # ------------------------------------------------------------------------------- prior

    def prior_params(self, z_g: torch.Tensor, z_l: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """p(z_i | z_g, z_{i-1}) for every slot i, given the latents of the previous slots (teacher forced)."""
        z_prev = torch.cat([torch.zeros_like(z_l[:, :1]), z_l[:, :-1]], dim=1)  # (B, S, L), z_0 = 0
        z = z_g.unsqueeze(1).expand_as(z_prev)
        mu, logvar = self.prior_local(torch.cat([z, z_prev], dim=-1)).chunk(2, dim=-1)
        return mu, logvar

    def sample_prior(self, n: int, generator: torch.Generator | None = None, use_mean: bool = False):
        """Latents from the prior, slot by slot along the chain; the sentence count from the count head."""
        device = self.doc_token.device
        L, S = self.cfg.latent_dim, self.spec.max_sentences
        z_g = torch.randn(n, L, generator=generator, device=device)
        n_sent = self.count_head(z_g).argmax(-1) + 1
        z_prev = torch.zeros(n, L, device=device)
        slots = []
        for _ in range(S):
            mu, logvar = self.prior_local(torch.cat([z_g, z_prev], dim=-1)).chunk(2, dim=-1)
            eps = torch.randn(mu.shape, generator=generator, device=device)
            z_prev = mu if use_mean else mu + eps * (0.5 * logvar).exp()
            slots.append(z_prev)
        return z_g, torch.stack(slots, dim=1), n_sent

    # ------------------------------------------------------------------------------- training

    def forward(
        self,
        input_ids: torch.Tensor,
        token_mask: torch.Tensor,
        sentence_mask: torch.Tensor,
        beta_g: float = 1.0,
        beta_l: float = 1.0,
        free_bits: float = 0.0,
        free_bits_per_dim: bool = True,
        word_dropout_encoder: float = 0.0,
        word_dropout_decoder: float = 0.0,
        count_loss_weight: float = 1.0,
        sentence_emb: torch.Tensor | None = None,
    ) -> HVAEOutput:
        B = input_ids.shape[0]
        input_ids, token_mask, sentence_mask = input_ids.long(), token_mask.long(), sentence_mask.long()
        enc_ids = self._word_dropout(input_ids, token_mask, word_dropout_encoder)
        mu_g, logvar_g, ctx = self.encode_context(enc_ids, token_mask, sentence_mask, sentence_emb)
        z_g = reparameterize(mu_g, logvar_g)  # (B, L)
        mu_l, logvar_l = self._local_posterior(ctx, z_g)
        z_l = reparameterize(mu_l, logvar_l)  # (B, S, L)
        prior_mu, prior_logvar = self.prior_params(z_g, z_l)

        real = sentence_mask.bool()
        kl_g = gaussian_kl(mu_g, logvar_g)  # (B, L)
        kl_l = gaussian_kl(mu_l, logvar_l, prior_mu, prior_logvar)  # (B, S, L)
        n_sent = real.sum()
        kl_g_loss = free_bits_kl(kl_g, free_bits, free_bits_per_dim)  # per answer
        kl_l_loss = free_bits_kl(kl_l.flatten(0, 1), free_bits, free_bits_per_dim, real.flatten().float())
        kl_l_loss = kl_l_loss * n_sent / B  # per sentence -> sum over an answer's sentences

        plan = self.plans(z_g, z_l, real)  # (N, D)
        tokens, tmask = input_ids[real], token_mask[real]  # (N, W)
        ce_sum = plan.new_zeros(())
        # The decoder is causal: positions after a group's longest sentence change nothing but the work done.
        for rows in length_buckets(tmask.sum(1)):
            ids, mask = trim_words(tokens[rows], tmask[rows])  # (n, W')
            dec_in = self._word_dropout(ids, mask, word_dropout_decoder)
            logits = self.decoder.token_logits(plan[rows], dec_in, mask)  # (T_group, V): the real tokens only
            ce_sum = ce_sum + F.cross_entropy(logits.float(), ids[mask.bool()], reduction="sum")
        n_tokens = int(tmask.sum())

        counts = real.sum(1) - 1  # class k = k+1 sentences
        count_loss = F.cross_entropy(self.count_head(z_g), counts)
        loss = ce_sum / B + beta_g * kl_g_loss + beta_l * kl_l_loss + count_loss_weight * count_loss
        return HVAEOutput(
            loss=loss,
            rec_loss=ce_sum / B,
            token_nll=ce_sum / max(n_tokens, 1),
            kl_g=kl_g.sum(-1).mean(),
            kl_l=(kl_l.sum(-1) * real).sum() / B,
            count_loss=count_loss,
            posterior=Posterior(mu_g, logvar_g, mu_l, logvar_l),
            n_tokens=n_tokens,
        )

    def plans(self, z_g: torch.Tensor, z_l: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """plan_i = MLP([z_g; z_i]) for the real sentence slots only: (B, L), (B, S, L), (B, S) -> (N, D)."""
        z = torch.cat([z_g.unsqueeze(1).expand_as(z_l), z_l], dim=-1)[
            real
        ]  # (N, 2L): padding slots never reach the MLP
        return self.plan(z)

    def _word_dropout(self, ids: torch.Tensor, mask: torch.Tensor, p: float) -> torch.Tensor:
        """Replace real tokens (not EOS) by MASK with probability p (Bowman et al., 2016).

        On the decoder side this forces it to take the content from z rather than from its own inputs;
        targets are always the original tokens.
        """
        if p <= 0 or not self.training:
            return ids
        drop = (torch.rand(ids.shape, device=ids.device) < p) & mask.bool() & (ids != self.spec.eos_id)
        return ids.masked_fill(drop, self.spec.mask_id)

    # ------------------------------------------------------------------------------- generation

    @torch.no_grad()
    def decode(
        self, z_g: torch.Tensor, z_l: torch.Tensor, n_sentences: torch.Tensor, settings: DecodeSettings | None = None
    ) -> list[list[list[int]]]:
        """Token ids per answer, per sentence, for the first n_sentences slots of each answer."""
        settings = settings or DecodeSettings(max_new_tokens=self.spec.max_words)
        S = self.spec.max_sentences
        real = torch.arange(S, device=z_g.device) < n_sentences.clamp(1, S).unsqueeze(1)  # (B, S)
        plan = self.plans(z_g, z_l, real)
        flat = iter(self.decoder.generate(plan, settings))
        return [[next(flat) for _ in range(int(k))] for k in real.sum(1).tolist()]

    @torch.no_grad()
    def reconstruct(
        self, input_ids, token_mask, sentence_mask, settings: DecodeSettings | None = None, sentence_emb=None
    ):
        """decode(posterior mean): the ceiling of everything downstream."""
        post = self.encode(input_ids.long(), token_mask.long(), sentence_mask.long(), sentence_emb)
        return self.decode(post.mu_g, post.mu_l, sentence_mask.long().sum(1), settings)

    # ------------------------------------------------------------------------------- persistence

    def save_pretrained(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        lm_config = self.decoder.lm.config.to_dict()
        meta = {"hvae": asdict(self.cfg), "tokens": asdict(self.spec), "decoder_lm_config": lm_config}
        (d / CONFIG_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        save_module(self, d / WEIGHTS_FILE)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> HVAE:
        d = Path(directory)
        if not (d / CONFIG_FILE).is_file() or not (d / WEIGHTS_FILE).is_file():
            raise CheckpointError(f"{d}: not an HVAE directory (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
        meta = read_json(d / CONFIG_FILE)
        if not isinstance(meta, dict):
            raise CheckpointError(f"{d / CONFIG_FILE}: expected a JSON object with hvae, tokens, decoder_lm_config")
        unknown = set(meta) - {"hvae", "tokens", "decoder_lm_config"}
        if unknown:
            raise CheckpointError(f"{d / CONFIG_FILE}: unknown keys {sorted(unknown)}")
        cfg = config_from_dict(HVAEConfig, meta["hvae"], where=str(d / CONFIG_FILE))
        spec = TokenSpec(**meta["tokens"])
        model = cls(cfg, spec, decoder=build_decoder(cfg, spec, lm_config=meta["decoder_lm_config"]))
        load_module(model, d / WEIGHTS_FILE)
        return model
