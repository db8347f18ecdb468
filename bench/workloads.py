"""The workloads the performance benches time: real data, the models at two sizes, one step of each.

Data: SQuAD v1.1 dev answers from ../shared/data (the bundled data/squad_sample.json where that is
absent), preprocessed with configs/tiny.yaml's data section into a cache directory, and the HVAE's
training rows built as train-hvae builds them (the train split's answers plus the unpaired passage
sentences of `train_context`).

Sizes: "tiny" is configs/tiny.yaml; "mid" widens it to d_model 256 with a 4-layer decoder (`SIZES`).

Each `*Step` object owns a model and an optimiser and runs one step on a given batch when called; the
benches time those calls. Training steps do what the trainers do per step (forward, backward, gradient
clipping, AdamW) without `accelerate`'s wrapper, which on one CPU process adds nothing but a call.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench import flops

ROOT = Path(__file__).resolve().parents[1]
SQUAD = ROOT.parent / "shared" / "data" / "squad" / "squad-v1.1-dev-open.json.gz"
SQUAD_SAMPLE = ROOT / "data" / "squad_sample.json"
CACHE = Path(os.environ.get("QA_EBM_BENCH_CACHE", Path(tempfile.gettempdir()) / "qa-ebm-bench"))

SIZES: dict[str, list[str]] = {
    "tiny": [],
    "mid": [
        "hvae.d_model=256",
        "hvae.n_heads=4",
        "hvae.latent_dim=64",
        "hvae.decoder_layers=4",
        "ebt.d_model=256",
        "ebt.n_heads=4",
        "ebt.n_layers=4",
    ],
}
# mcmc draws its refinement steps from [mcmc_min_steps, mcmc_steps] per batch; a fixed count (the default
# range's mean) makes every timed step the same work.
EBT_TRAIN_OVERRIDES = ["train_ebt.mcmc_min_steps=4", "train_ebt.mcmc_steps=4"]


def load_size(size: str, extra: list[str] | tuple[str, ...] = ()):
    from qa_ebm.config import load_config

    return load_config(ROOT / "configs" / "tiny.yaml", [*SIZES[size], *EBT_TRAIN_OVERRIDES, *extra])


def prepare_data() -> Path:
    """Preprocess the SQuAD answers once (tiny data config; cached across runs); returns the data dir."""
    from qa_ebm.data.preprocess import preprocess

    source = SQUAD if SQUAD.exists() else SQUAD_SAMPLE
    out = CACHE / f"data-{source.name.split('.')[0]}"
    if not (out / "manifest.json").is_file():
        preprocess(load_size("tiny"), out, squad=str(source), overwrite=True)
    return out


def hvae_train_rows(data_dir: Path) -> dict[str, np.ndarray]:
    """input_ids / token_mask (R, S, W), sentence_mask (R, S): the rows train-hvae samples its batches from."""
    from qa_ebm.data.processed import load_processed

    data = load_processed(data_dir)
    parts = [data.answer_arrays("train")]
    if "train_context" in data.dataset:
        parts.append(data.answer_arrays("train_context"))
    keys = ("input_ids", "token_mask", "sentence_mask")
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def fixed_batches(rows: dict[str, np.ndarray], batch_size: int, count: int, seed: int = 0) -> list[dict]:
    """`count` batches of random rows, drawn once so that every model sees exactly the same tokens."""
    rng = np.random.default_rng(seed)
    n = len(rows["sentence_mask"])
    picks = [rng.choice(n, size=batch_size, replace=False) for _ in range(count)]
    return [{k: torch.from_numpy(v[p]).long() for k, v in rows.items()} for p in picks]


def answer_tokens(batch: dict) -> int:
    """Real tokens (each sentence's tokens and its EOS) of a batch: what both models predict."""
    return int(batch["token_mask"].sum())


def lm_batch(batch: dict, start_id: int, pad_id: int) -> dict:
    """The same answers for a plain LM: [start, sentence_1 .. sentence_n] per answer, padded to the longest
    (the `DataCollatorForLanguageModeling` layout), labels -100 at padding."""
    ids, tmask, smask = batch["input_ids"], batch["token_mask"].bool(), batch["sentence_mask"].bool()
    rows = [ids[b][smask[b]][tmask[b][smask[b]]] for b in range(ids.shape[0])]  # real tokens per answer
    width = 1 + max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    for b, r in enumerate(rows):
        input_ids[b, 0] = start_id
        input_ids[b, 1 : 1 + len(r)] = r
        attention[b, : 1 + len(r)] = 1
    labels = input_ids.masked_fill(attention == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def token_spec(data_dir: Path):
    from qa_ebm.data.processed import load_processed
    from qa_ebm.training.hvae_trainer import token_spec as spec_of

    return spec_of(load_processed(data_dir))


def word_groups(batch: dict) -> list[tuple[int, int]]:
    """(sentences, token positions) of each length group the HVAE's word encoder and decoder process."""
    from qa_ebm.models.hvae import length_buckets, used_length

    tmask = batch["token_mask"][batch["sentence_mask"].bool()]
    return [(len(rows), used_length(tmask[rows])) for rows in length_buckets(tmask.sum(1))]


def hvae_step_flops(config, spec, batch: dict, skip_padding: bool = True) -> float:
    """Training FLOPs of one HVAE step on this batch, counting the positions its forward actually processes
    (`skip_padding=False`: one group of every sentence, every position and slot, logits everywhere: the step
    before commits 232172a and 7ecb5db)."""
    from qa_ebm.models.hvae import used_length

    h, real = config.hvae, batch["sentence_mask"].bool()
    shapes = flops.HVAEShapes(
        B=batch["input_ids"].shape[0],
        N=int(real.sum()),
        S=spec.max_sentences,
        W=spec.max_words,
        P=h.prefix_len,
        d=h.d_model,
        L=h.latent_dim,
        V=spec.vocab_size,
        word_layers=h.word_layers,
        sentence_layers=h.sentence_layers,
        decoder_layers=h.decoder_layers,
    )
    if not skip_padding:
        return 3 * sum(flops.hvae_forward(shapes).values())
    forward = flops.hvae_forward(
        shapes, word_groups=word_groups(batch), sentence_slots=used_length(real), logit_rows=answer_tokens(batch)
    )
    return 3 * sum(forward.values())


def lm_step_flops(config, spec, lm_inputs: dict) -> float:
    """Training FLOPs of one peer-LM step on its padded batch (`lm_batch`)."""
    B, T = lm_inputs["input_ids"].shape
    return 3 * flops.lm_forward(B, T, config.hvae.d_model, config.hvae.decoder_layers, spec.vocab_size)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class HVAEStep:
    """One train-hvae step (KL weights at their full value, the tiny config's free bits and word dropout)."""

    def __init__(self, config, spec, seed: int = 0):
        from qa_ebm.models.hvae import HVAE

        torch.manual_seed(seed)
        self.tc = config.train_hvae
        self.model = HVAE(config.hvae, spec).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.tc.lr, weight_decay=self.tc.weight_decay)

    def __call__(self, batch: dict) -> float:
        tc = self.tc
        out = self.model(
            **batch,
            beta_g=tc.beta_g,
            beta_l=tc.beta_l,
            free_bits=tc.free_bits,
            free_bits_per_dim=tc.free_bits_per_dim,
            word_dropout_encoder=tc.word_dropout_encoder,
            word_dropout_decoder=tc.word_dropout_decoder,
            count_loss_weight=tc.count_loss_weight,
        )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(out.loss.detach())


class GPT2Step:
    """The peer: `GPT2LMHeadModel` from config with the HVAE decoder's size, trained on the same answers."""

    def __init__(self, config, spec, seed: int = 0):
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(seed)
        h, tc = config.hvae, config.train_hvae
        self.spec = spec
        self.model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=spec.vocab_size,
                n_positions=1 + spec.max_sentences * spec.max_words,
                n_embd=h.d_model,
                n_layer=h.decoder_layers,
                n_head=h.n_heads,
                resid_pdrop=h.dropout,
                embd_pdrop=h.dropout,
                attn_pdrop=h.dropout,
                bos_token_id=spec.eos_id,
                eos_token_id=spec.eos_id,
                pad_token_id=spec.pad_id,
            )
        ).train()
        self.grad_clip = tc.grad_clip
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)

    def batch(self, batch: dict) -> dict:
        return lm_batch(batch, self.spec.eos_id, self.spec.pad_id)

    def __call__(self, batch: dict) -> float:
        loss = self.model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


@dataclass
class EBTBatch:
    x: torch.Tensor  # (B, Lc) condition token ids
    x_mask: torch.Tensor  # (B, Lc)
    y: torch.Tensor  # (B, P, D) standardised latents (random: the cost does not depend on their values)
    slot_mask: torch.Tensor  # (B, P)


def ebt_batch(config, data_dir: Path, batch_size: int, seed: int = 0) -> tuple[EBTBatch, dict]:
    """Real questions (+ passages) of the val split as the condition, latents of the answers' slot layout."""
    from qa_ebm.data.processed import load_processed
    from qa_ebm.models.question_encoder import build_condition_encoder

    data = load_processed(data_dir)
    examples = data.answer_examples("val")[:batch_size]
    encoder = build_condition_encoder(config.ebt, str(data.tokenizer_dir))
    contexts = [e["context"] if config.ebt.use_context else None for e in examples]
    x, x_mask = encoder([e["question"] for e in examples], contexts)
    sentences = torch.from_numpy(data.answer_arrays("val")["sentence_mask"][:batch_size]).bool()
    slot_mask = torch.cat([torch.ones(len(examples), 1, dtype=torch.bool), sentences], dim=1)
    gen = torch.Generator().manual_seed(seed)
    y = torch.randn((*slot_mask.shape, config.hvae.latent_dim), generator=gen) * slot_mask.unsqueeze(-1)
    return EBTBatch(x, x_mask, y, slot_mask), encoder.spec_fields


def ebt_shapes(config, batch: EBTBatch) -> flops.EBTShapes:
    return flops.EBTShapes(
        B=batch.x.shape[0],
        Lc=batch.x.shape[1],
        P=batch.slot_mask.shape[1],
        M=config.ebt.soft_tokens,
        D=config.hvae.latent_dim,
        d=config.ebt.d_model,
        layers=config.ebt.n_layers,
    )


def build_ebt(config, spec_fields: dict, num_slots: int, seed: int = 0):
    from qa_ebm.models.ebt import EBTSpec, EnergyTransformer

    torch.manual_seed(seed)
    spec = EBTSpec(latent_dim=config.hvae.latent_dim, num_slots=num_slots, **spec_fields)
    return EnergyTransformer(config.ebt, spec)


class EBTStep:
    """One train-ebt step with the mcmc objective (EBT_TRAIN_OVERRIDES fixes its refinement steps)."""

    def __init__(self, config, model, seed: int = 0):
        from qa_ebm.training.ebt_trainer import RIVALS, param_groups

        self.tc, self.rivals = config.train_ebt, RIVALS
        self.model = model.train()
        self.optimizer = torch.optim.AdamW(param_groups(model, self.tc), weight_decay=self.tc.weight_decay)
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, batch: EBTBatch) -> float:
        from qa_ebm.training.ebt_objectives import mcmc_objective

        cond = self.model.condition(batch.x, batch.x_mask)
        y0 = torch.randn(batch.y.shape, generator=self.gen)
        out = mcmc_objective(self.model, cond, batch.y, batch.slot_mask, y0, self.tc, self.gen, self.rivals)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tc.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(out.loss.detach())


class RefineStep:
    """One refinement step at inference: dE/dy for a batch of latents, the question's condition cached."""

    def __init__(self, model, batch: EBTBatch):
        from qa_ebm.models.ebt import energy_gradient

        self.model = model.eval()
        self.gradient = energy_gradient
        with torch.no_grad():
            self.cond = model.condition(batch.x, batch.x_mask)
        self.batch = batch

    def __call__(self, y: torch.Tensor | None = None) -> torch.Tensor:
        y = self.batch.y if y is None else y
        _, g = self.gradient(self.model, self.cond, y, self.batch.slot_mask)
        return g
