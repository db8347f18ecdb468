"""The smallest configs that still train every stage for real: shared by the tests that need trained runs."""

from __future__ import annotations

from pathlib import Path

from qa_ebm.config import Config, load_config

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "data.tokenizer.vocab_size=400",
    "data.max_sentences=4",
    "data.max_words=16",
    "data.physics.min_sentences=1",
    "hvae.d_model=32",
    "hvae.n_heads=2",
    "hvae.word_layers=1",
    "hvae.sentence_layers=1",
    "hvae.latent_dim=8",
    "hvae.decoder_layers=1",
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
