"""Text -> latents matches what train-hvae exported for the same answers."""

import pytest
import torch
from safetensors.torch import load_file
from tiny import quick_hvae_run

from qa_ebm.data.processed import load_processed
from qa_ebm.errors import CheckpointError
from qa_ebm.models.answer_encoder import AnswerEncoder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("enc")
    quick_hvae_run(base)
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
