"""Text -> latents matches what train-hvae exported for the same answers."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qa_ebm.config import load_config
from qa_ebm.data.preprocess import preprocess
from qa_ebm.data.processed import load_processed
from qa_ebm.errors import CheckpointError
from qa_ebm.models.answer_encoder import AnswerEncoder
from qa_ebm.training.hvae_trainer import train_hvae

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "data.tokenizer.vocab_size=400",
    "data.max_sentences=4",
    "data.max_words=16",
    "hvae.d_model=32",
    "hvae.n_heads=2",
    "hvae.word_layers=1",
    "hvae.sentence_layers=1",
    "hvae.latent_dim=8",
    "hvae.decoder_layers=1",
    "train_hvae.steps=2",
    "train_hvae.warmup_steps=1",
    "train_hvae.batch_size=16",
    "train_hvae.num_samples=1",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("enc")
    config = load_config(ROOT / "configs" / "tiny.yaml", SMALL)
    preprocess(config, base / "data", squad=str(ROOT / "data" / "squad_sample.json"))
    train_hvae(config, base / "data", base / "hvae", progress=False)
    return base


def test_encoding_text_reproduces_the_exported_latents(run):
    data = load_processed(run / "data")
    val = data.dataset["val"].select_columns(["id", "answer", "is_impossible"])[:]
    exported = load_file(str(run / "hvae" / "latents" / "val.safetensors"))
    ids = data.answer_arrays("val")["ids"]
    text_of = dict(zip(val["id"], val["answer"], strict=True))
    y, mask = AnswerEncoder.from_run(run / "hvae")([text_of[i] for i in ids[:6]])
    assert y.shape == (6, 5, 8) and mask[:, 0].all()
    torch.testing.assert_close(y[:, 0], exported["mu_g"][:6], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mask[:, 1:], exported["sentence_mask"][:6].bool())
    real = mask[:, 1:]
    torch.testing.assert_close(y[:, 1:][real], exported["mu_l"][:6][real], atol=1e-5, rtol=1e-5)


def test_empty_text_and_missing_run(run, tmp_path):
    y, mask = AnswerEncoder.from_run(run / "hvae")(["", "Tesla"])
    assert mask.sum(1).tolist() == [2, 2] and torch.isfinite(y).all()
    with pytest.raises(CheckpointError, match="no model/"):
        AnswerEncoder.from_run(tmp_path)
