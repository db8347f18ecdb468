"""The smallest configs, runs and models that still train every stage for real: shared by the tests that need
them. Fixtures shared the same way live in tests/conftest.py."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from qa_ebm.config import Config, load_config

if TYPE_CHECKING:
    from qa_ebm.reading.proposal import SpanProposalHead

ROOT = Path(__file__).resolve().parents[1]
# The words the toy reading tasks build their passages from, around the answer.
FILLER = "apple river stone cloud tiger lamp music paper window silver forest candle rocket garden".split()
TINY_HVAE = [  # the smallest HVAE: 32 wide, every stack one layer deep, 8-dim latents, 400 word pieces
    "data.tokenizer.vocab_size=400",
    "hvae.d_model=32",
    "hvae.n_heads=2",
    "hvae.word_layers=1",
    "hvae.sentence_layers=1",
    "hvae.latent_dim=8",
    "hvae.decoder_layers=1",
]
QUICK_HVAE = [  # the tiny HVAE alone, 2 steps: for tests that need an HVAE run and nothing trained from it
    *TINY_HVAE,
    "data.max_sentences=4",
    "data.max_words=16",
    "train_hvae.steps=2",
    "train_hvae.warmup_steps=1",
    "train_hvae.batch_size=16",
    "train_hvae.num_samples=1",
]
SMALL = [
    *TINY_HVAE,
    "data.max_sentences=4",
    "data.max_words=16",
    "data.physics.min_sentences=1",
    "hvae.prefix_len=2",
    "train_hvae.steps=4",
    "train_hvae.batch_size=16",
    "train_hvae.eval_every=4",
    "train_hvae.save_every=4",
    "train_hvae.warmup_steps=1",
    "train_hvae.num_samples=1",
    "ebt.d_model=32",
    "ebt.n_layers=1",
    "ebt.max_condition_tokens=24",
    "train_ebt.steps=4",
    "train_ebt.batch_size=8",
    "train_ebt.warmup_steps=1",
    "train_ebt.eval_every=2",
    "train_ebt.save_every=2",
    "train_ebt.eval_steps=3",
    "train_ebt.eval_size=16",
    "train_ebt.eval_candidates=8",
    "train_ebt.num_samples=1",
    "train_ebt.mcmc_steps=3",
]


def tiny_config(*overrides: str) -> Config:
    return load_config(ROOT / "configs" / "tiny.yaml", [*SMALL, *overrides])


def sample_data(config: Config, out: Path) -> Path:
    """Preprocess the bundled samples (data/) into `out`."""
    from qa_ebm.data.preprocess import preprocess

    preprocess(
        config,
        out,
        squad=str(ROOT / "data" / "squad_sample.json"),
        physics=str(ROOT / "data" / "physics_sample.jsonl"),
    )
    return out


def quick_hvae_run(base: Path) -> Path:
    """The SQuAD sample preprocessed into base/data and the QUICK_HVAE trained on it into base/hvae (returned)."""
    from qa_ebm.data.preprocess import preprocess
    from qa_ebm.training.hvae_trainer import train_hvae

    config = load_config(ROOT / "configs" / "tiny.yaml", QUICK_HVAE)
    preprocess(config, base / "data", squad=str(ROOT / "data" / "squad_sample.json"))
    train_hvae(config, base / "data", base / "hvae", progress=False)
    return base / "hvae"


def answer_runs(base: Path, pipeline: str) -> None:
    """The sample data, an HVAE run, an EBT run (question only, no context) and the answer pipeline exported from
    them, under base: data/, hvae/, ebt/ and `pipeline`/."""
    from qa_ebm.pipeline.generative import QAPipeline
    from qa_ebm.training.ebt_trainer import train_ebt
    from qa_ebm.training.hvae_trainer import train_hvae

    config = tiny_config("ebt.use_context=false")
    sample_data(config, base / "data")
    train_hvae(config, base / "data", base / "hvae", progress=False)
    train_ebt(config, base / "hvae", base / "ebt", progress=False)
    QAPipeline.from_runs(base / "hvae", base / "ebt").save_pretrained(base / pipeline)


def tiny_proposal_head(
    tokenizer: Any, *, layers: int = 2, dropout: float = 0.1, seed: int = 0, **config: Any
) -> SpanProposalHead:
    """A span proposal head on a random BERT, 32 wide with `layers` layers, over `tokenizer`'s vocabulary (MiniLM's
    in the tests), seeded; in train mode. `dropout` defaults to BertConfig's; `config` overrides ProposalConfig
    fields."""
    from transformers import BertConfig, BertModel

    from qa_ebm.reading.proposal import ProposalConfig, SpanProposalHead

    torch.manual_seed(seed)
    bert = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    defaults = {"encoder": "tiny", "hidden_size": 32, "max_length": 48, "stride": 8, "max_question_tokens": 16}
    return SpanProposalHead(BertModel(bert, add_pooling_layer=False), ProposalConfig(**{**defaults, **config}))
