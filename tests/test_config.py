from pathlib import Path

import pytest

from qa_ebm.config import Config, load_config
from qa_ebm.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["tiny.yaml", "base.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.data.max_words >= 2


def test_base_config_is_the_published_scale():
    cfg = load_config(CONFIGS / "base.yaml")
    assert (cfg.hvae.d_model, cfg.hvae.latent_dim) == (768, 128)
    assert (cfg.data.max_sentences, cfg.data.max_words) == (11, 30)
    assert cfg.data.tokenizer.kind == "hf" and cfg.data.tokenizer.name == "gpt2"
    assert cfg.data.physics.min_sentences == 5


def test_dotted_overrides_are_typed():
    cfg = load_config(CONFIGS / "tiny.yaml", ["data.max_words=30", "data.splits.val=0.2", "data.tokenizer.name=null"])
    assert cfg.data.max_words == 30
    assert cfg.data.splits.val == 0.2
    assert cfg.data.tokenizer.name is None


def test_unknown_key_names_the_valid_ones(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data:\n  max_wrods: 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'data.max_wrods'.*max_words"):
        load_config(p)


def test_unknown_override_key_is_an_error():
    with pytest.raises(ConfigError, match=r"unknown key 'hvae.latnet_dim'.*latent_dim"):
        load_config(None, ["hvae.latnet_dim=4"])


def test_wrong_type_names_key_and_type():
    with pytest.raises(ConfigError, match=r"data.max_words must be int, got str 'many'"):
        load_config(None, ["data.max_words=many"])
    with pytest.raises(ConfigError, match=r"must be int, got bool"):
        load_config(None, ["data.max_words=true"])


def test_literal_lists_choices():
    with pytest.raises(ConfigError, match=r"data.tokenizer.kind='bpe'.*sentencepiece, hf"):
        load_config(None, ["data.tokenizer.kind=bpe"])


def test_cross_field_validation():
    with pytest.raises(ConfigError, match="min_sentences"):
        load_config(None, ["data.min_sentences=9", "data.max_sentences=8"])
    with pytest.raises(ConfigError, match=r"needs data\.tokenizer\.name"):
        load_config(None, ["data.tokenizer.kind=hf"])
    for share in ("1.0", "-0.1"):
        with pytest.raises(ConfigError, match=r"reading.energy_holdout must be in \[0, 1\), got"):
            load_config(None, [f"reading.energy_holdout={share}"])


def test_round_trip_and_hash(tmp_path):
    cfg = load_config(CONFIGS / "tiny.yaml", ["data.max_words=17"])
    cfg.save(tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert again.hash() == cfg.hash()
    assert Config.from_dict(cfg.to_dict()).hash() == cfg.hash()
    assert load_config(CONFIGS / "tiny.yaml").hash() != cfg.hash()


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"expected KEY\.PATH=VALUE"):
        load_config(None, ["data.max_words"])


def test_pretrained_decoder_settings_are_validated():
    assert load_config(None, ["hvae.decoder=smollm2", "hvae.freeze_decoder=true"]).hvae.freeze_decoder is True
    with pytest.raises(ConfigError, match=r"freeze_decoder=true needs a pretrained decoder.*scratch-gpt2"):
        load_config(None, ["hvae.decoder=scratch-gpt2", "hvae.freeze_decoder=true"])
    with pytest.raises(ConfigError, match=r"hvae.gguf_file='model.bin' must be a .gguf file"):
        load_config(None, ["hvae.decoder=/models/lm", "hvae.gguf_file=model.bin"])
    with pytest.raises(ConfigError, match=r"scratch decoders are scratch-gpt2 and scratch-bart"):
        load_config(None, ["hvae.decoder=scratch-llama"])
    with pytest.raises(ConfigError, match=r"freeze_decoder.*bool"):
        load_config(None, ["hvae.freeze_decoder=sometimes"])
