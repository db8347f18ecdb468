import json
import random

import huggingface_hub.constants
import pytest

from qa_ebm.data.tokenizer import (
    META_FILE,
    SP_MODEL_FILE,
    HFTokenizer,
    SentencePieceTokenizer,
    build_tokenizer,
    load_tokenizer,
    tokenizer_info,
)
from qa_ebm.errors import CheckpointError, DataError

WORDS = (
    "the a an energy mass force field wave particle light speed of in is and moves with quantum charge spin "
    "electron proton momentum heat gravity orbit planet $x$ $E = mc^2$ velocity"
).split()


def _sentences(n=200, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))) + "." for _ in range(n)]


SENTENCES = _sentences()


@pytest.fixture(scope="module")
def sp_tok():
    return SentencePieceTokenizer.train(SENTENCES, vocab_size=300)


# ----------------------------------------------------------------------------------- SentencePiece


def test_sentencepiece_special_ids(sp_tok):
    s = sp_tok.special
    assert (s.pad_id, s.unk_id, s.eos_id) == (0, 1, 3)
    assert sp_tok._sp.id_to_piece(s.mask_id) == "<mask>"
    assert s.mask_id not in (s.pad_id, s.unk_id, s.eos_id)
    assert sp_tok.kind == "sentencepiece"
    assert sp_tok.vocab_size <= 300


@pytest.mark.parametrize("text", ["the energy of light.", "An electron moves with momentum.", "gravity $E = mc^2$"])
def test_sentencepiece_round_trip(sp_tok, text):
    (ids,) = sp_tok.encode_batch([text])
    assert ids and all(isinstance(i, int) for i in ids)
    assert sp_tok.special.unk_id not in ids
    assert sp_tok.decode(ids) == text


def test_sentencepiece_unseen_characters_fall_back_to_bytes(sp_tok):
    text = "Zebra ω ∇·E"
    (ids,) = sp_tok.encode_batch([text])
    assert sp_tok.special.unk_id not in ids
    assert sp_tok.decode(ids) == text


def test_sentencepiece_decode_drops_pad_and_eos(sp_tok):
    (ids,) = sp_tok.encode_batch(["the energy."])
    s = sp_tok.special
    assert sp_tok.decode([*ids, s.eos_id, s.pad_id, s.pad_id]) == "the energy."


def test_sentencepiece_training_is_deterministic(sp_tok):
    again = SentencePieceTokenizer.train(SENTENCES, vocab_size=300)
    assert again._proto == sp_tok._proto


def test_sentencepiece_save_load_round_trip(sp_tok, tmp_path):
    sp_tok.save(tmp_path / "tok")
    assert (tmp_path / "tok" / SP_MODEL_FILE).read_bytes() == sp_tok._proto
    meta = json.loads((tmp_path / "tok" / META_FILE).read_text())
    assert meta == tokenizer_info(sp_tok)
    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, SentencePieceTokenizer)
    assert loaded.special == sp_tok.special
    assert loaded.encode_batch(SENTENCES[:5]) == sp_tok.encode_batch(SENTENCES[:5])


def test_sentencepiece_from_file(sp_tok, tmp_path):
    (tmp_path / "m.model").write_bytes(sp_tok._proto)
    tok = build_tokenizer("sentencepiece", str(tmp_path / "m.model"), [], vocab_size=0, model_type="unigram")
    assert tok.special == sp_tok.special
    with pytest.raises(DataError, match="model file not found"):
        SentencePieceTokenizer.from_file(tmp_path / "nope.model")


def test_sentencepiece_model_without_mask_is_refused(tmp_path):
    import sentencepiece as spm

    model = tmp_path / "plain"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES),
        model_prefix=str(model),
        vocab_size=100,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    with pytest.raises(DataError, match="lacks pad/eos/<mask>"):
        SentencePieceTokenizer.from_file(f"{model}.model")


def test_load_tokenizer_without_meta_is_a_checkpoint_error(sp_tok, tmp_path):
    (tmp_path / SP_MODEL_FILE).write_bytes(sp_tok._proto)
    with pytest.raises(CheckpointError, match=META_FILE):
        load_tokenizer(tmp_path)


def test_load_tokenizer_unknown_kind(tmp_path):
    (tmp_path / META_FILE).write_text(json.dumps({"kind": "wordpiece"}))
    with pytest.raises(CheckpointError, match="unknown tokenizer kind 'wordpiece'"):
        load_tokenizer(tmp_path)


def test_load_tokenizer_special_id_mismatch(sp_tok, tmp_path):
    sp_tok.save(tmp_path)
    meta = json.loads((tmp_path / META_FILE).read_text())
    meta["special"]["mask_id"] = 99
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="special ids"):
        load_tokenizer(tmp_path)


# ----------------------------------------------------------------------------------- Hugging Face


@pytest.fixture(scope="module")
def gpt2_style_dir(tmp_path_factory):
    """A tiny GPT-2-style byte-level BPE, saved like a Hub tokenizer: only an eos token, no pad/mask/unk."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        SENTENCES, vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"], show_progress=False
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>")
    d = tmp_path_factory.mktemp("gpt2ish")
    fast.save_pretrained(d)
    return d


def test_hf_from_local_dir_adds_pad_and_mask(gpt2_style_dir):
    tok = HFTokenizer.from_pretrained(str(gpt2_style_dir))
    s = tok.special
    assert tok.kind == "hf"
    assert tok._tok.convert_ids_to_tokens(s.eos_id) == "<|endoftext|>"
    assert tok._tok.convert_ids_to_tokens(s.pad_id) == "<|pad|>"
    assert tok._tok.convert_ids_to_tokens(s.mask_id) == "<|mask|>"
    assert len({s.pad_id, s.eos_id, s.mask_id}) == 3
    assert s.unk_id == s.eos_id  # byte-level BPE has no unk
    assert tok.vocab_size > max(s.pad_id, s.mask_id)


def test_hf_encode_decode(gpt2_style_dir):
    tok = HFTokenizer.from_pretrained(str(gpt2_style_dir))
    texts = ["the energy of light.", "An electron moves with momentum."]
    ids = tok.encode_batch(texts)
    assert len(ids) == 2
    assert all(tok.special.eos_id not in seq for seq in ids)  # no special tokens added
    assert [tok.decode(seq) for seq in ids] == texts
    assert tok.decode([*ids[0], tok.special.eos_id, tok.special.pad_id]) == texts[0]
    assert tok.encode_batch([]) == []


def test_hf_save_load_round_trip(gpt2_style_dir, tmp_path):
    tok = HFTokenizer.from_pretrained(str(gpt2_style_dir))
    tok.save(tmp_path / "tok")
    meta = json.loads((tmp_path / "tok" / META_FILE).read_text())
    assert meta["kind"] == "hf" and meta["name"] == str(gpt2_style_dir)
    loaded = load_tokenizer(tmp_path / "tok")
    assert isinstance(loaded, HFTokenizer)
    assert loaded.special == tok.special
    assert loaded.name == str(gpt2_style_dir)
    assert loaded.vocab_size == tok.vocab_size
    assert loaded.encode_batch(SENTENCES[:5]) == tok.encode_batch(SENTENCES[:5])


def test_hf_build_tokenizer(gpt2_style_dir):
    tok = build_tokenizer("hf", str(gpt2_style_dir), [], vocab_size=0, model_type="unigram")
    assert isinstance(tok, HFTokenizer)


def test_hf_hub_id_offline_is_a_data_error_with_hint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match=r"cannot load tokenizer 'some-org/not-a-model'.*local tokenizer directory"):
        HFTokenizer.from_pretrained("some-org/not-a-model")


def test_hf_dir_that_is_not_a_tokenizer(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match="cannot load tokenizer") as e:
        HFTokenizer.from_pretrained(str(tmp_path))
    assert "offline?" not in str(e.value)  # a local dir: no Hub hint
