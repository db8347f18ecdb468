"""End-to-end behaviour of the data stage on the bundled samples in data/."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest

from qa_ebm.config import load_config
from qa_ebm.data import preprocess as preprocess_module
from qa_ebm.data.preprocess import SPLITS, preprocess
from qa_ebm.data.sentences import SentenceSplitter
from qa_ebm.data.tokenizer import load_tokenizer
from qa_ebm.errors import ConfigError, DataError, OutputExistsError
from qa_ebm.io import sha256_file

ROOT = Path(__file__).resolve().parents[1]
SQUAD = ROOT / "data" / "squad_sample.json"
PHYSICS = ROOT / "data" / "physics_sample.jsonl"
FAST = ["data.tokenizer.vocab_size=800"]


def config(*overrides: str):
    return load_config(ROOT / "configs" / "tiny.yaml", [*FAST, *overrides])


def run(tmp_path: Path, name: str = "out", *overrides: str, squad=SQUAD, physics=PHYSICS, **kw):
    return preprocess(
        config(*overrides), tmp_path / name, squad=squad and str(squad), physics=physics and str(physics), **kw
    )


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    result = run(tmp_path_factory.mktemp("sample"))
    return result, datasets.load_from_disk(str(result.out / "dataset"))


def test_output_layout_and_manifest(sample):
    result, dsd = sample
    out, m = result.out, result.manifest
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "dataset", "manifest.json", "punkt", "tokenizer"]
    assert json.loads((out / "manifest.json").read_text()) == json.loads(json.dumps(m, default=str))
    assert m["counts"] == {name: len(dsd[name]) for name in SPLITS}
    files = {f["path"]: f["sha256"] for s in m["sources"] for f in s["files"]}
    assert files == {str(SQUAD): sha256_file(SQUAD), str(PHYSICS): sha256_file(PHYSICS)}
    assert m["config_hash"] == load_config(out / "config.yaml").hash() == config().hash()
    assert m["tokenizer"]["special"] == {"pad_id": 0, "eos_id": 3, "mask_id": 4, "unk_id": 1}
    assert {"datasets", "nltk", "sentencepiece"} <= set(m["versions"])
    by_source = {s["name"]: s for s in m["sources"]}
    assert by_source["squad"]["questions"] == 179 and by_source["physics"]["questions"] == 150


def test_hierarchical_ids_and_masks(sample):
    result, dsd = sample
    S, W = 12, 32
    tok = load_tokenizer(result.out / "tokenizer")
    pad, eos = tok.special.pad_id, tok.special.eos_id
    for split in SPLITS:
        cols = dsd[split].with_format("numpy")[:]
        ids, tmask, smask, n = cols["input_ids"], cols["token_mask"], cols["sentence_mask"], cols["num_sentences"]
        assert ids.shape == tmask.shape == (len(n), S, W) and smask.shape == (len(n), S)
        assert dsd[split].features["input_ids"].dtype == "int32"
        np.testing.assert_array_equal(smask.sum(1), n)
        np.testing.assert_array_equal(tmask.any(2), smask.astype(bool))
        assert (ids[tmask == 0] == pad).all()
        assert (ids[tmask == 1] != pad).all()
        lengths = tmask.sum(2)  # the last real token of every sentence row is EOS
        rows, cols = np.nonzero(smask)
        assert (ids[rows, cols, lengths[rows, cols] - 1] == eos).all()
        assert ((ids == eos).sum(2) == smask).all()  # exactly one EOS per real sentence
    impossible = dsd["train"].filter(lambda r: r["is_impossible"])
    assert len(impossible) > 0 and all(sum(r) == 0 for r in impossible["sentence_mask"])


def test_ids_decode_back_to_the_sentences(sample):
    result, dsd = sample
    tok = load_tokenizer(result.out / "tokenizer")
    checked = 0
    for row in dsd["val"]:
        for sentence, ids, mask in zip(row["sentences"], row["input_ids"], row["token_mask"], strict=False):
            if sum(mask) < 31:  # not truncated
                assert " ".join(tok.decode(ids[: sum(mask)]).split()) == " ".join(sentence.split())
                checked += 1
    assert checked > 20


def test_splits_grouped_and_every_source_everywhere(sample):
    _, dsd = sample
    groups = {split: set(dsd[split]["group"]) for split in SPLITS}
    assert (
        not groups["train"] & groups["val"]
        and not groups["train"] & groups["test"]
        and not groups["val"] & groups["test"]
    )
    for split in SPLITS:
        assert set(dsd[split]["source"]) == {"squad", "physics"}


def test_saved_punkt_splits_answers_identically(sample):
    result, dsd = sample
    splitter = SentenceSplitter.load(result.out / "punkt")
    for row in dsd["test"]:
        assert splitter.split(row["answer"]) == row["sentences"]


def test_text_is_clean_and_latex_untouched(sample):
    _, dsd = sample
    physics = [r for split in SPLITS for r in dsd[split] if r["source"] == "physics"]
    text = " ".join(r["answer"] + " " + r["question"] for r in physics)
    assert "<p>" not in text and "&amp;" not in text and "&lt;" not in text
    assert "$" in text and "\\frac" in text  # LaTeX survives cleaning as written
    assert "[code]" in text  # code blocks became placeholders (tiny config)


def test_deterministic_fingerprint_and_num_proc_invariant(sample, tmp_path):
    first = sample[0].manifest["fingerprint"]
    again = run(tmp_path, "again").manifest["fingerprint"]
    parallel = run(tmp_path, "parallel", "data.num_proc=2", "data.batch_size=64").manifest["fingerprint"]
    assert first == again == parallel
    other_seed = run(tmp_path, "seed", "data.splits.seed=1").manifest["fingerprint"]
    assert other_seed != first


def test_filters_count_what_they_drop(sample, tmp_path):
    base = sample[0].manifest
    _, dsd = sample
    n = np.concatenate([np.asarray(dsd[s]["num_sentences"]) for s in SPLITS])
    src = np.concatenate([np.asarray(dsd[s]["source"]) for s in SPLITS])
    imp = np.concatenate([np.asarray(dsd[s]["is_impossible"]) for s in SPLITS])
    m = run(tmp_path, "strict", "data.max_sentences=6", "data.physics.min_sentences=5").manifest
    drops = m["filter_drops"]["physics"]
    kept_physics = (src == "physics") & ~imp
    assert drops["min_sentences"] == base["filter_drops"]["physics"]["min_sentences"] + int(
        (kept_physics & (n < 5)).sum()
    )
    assert drops["max_sentences"] == base["filter_drops"]["physics"]["max_sentences"] + int(
        (kept_physics & (n > 6)).sum()
    )
    assert sum(m["counts_by_source"][s].get("physics", 0) for s in SPLITS) == int(
        (kept_physics & (n >= 5) & (n <= 6)).sum()
    )


def test_max_sentence_tokens_filter(sample, tmp_path):
    _, dsd = sample
    longest = np.concatenate([np.asarray(dsd[s]["longest_sentence"]) for s in SPLITS])
    imp = np.concatenate([np.asarray(dsd[s]["is_impossible"]) for s in SPLITS])
    m = run(tmp_path, "tok", "data.max_sentence_tokens=40").manifest
    dropped = sum(d["max_sentence_tokens"] for d in m["filter_drops"].values())
    assert dropped == int(((longest > 40) & ~imp).sum()) > 0


def test_everything_dropped_names_the_filter_and_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"min_sentences dropped 14\d.*lower data\.min_sentences"):
        run(tmp_path, "x", "data.physics.min_sentences=13", squad=None)
    with pytest.raises(DataError, match=r"max_sentences dropped .*--set data\.max_sentences="):
        run(tmp_path, "x", "data.max_sentences=2", "data.min_sentences=1", "data.physics.min_sentences=1", squad=None)
    assert not (tmp_path / "x").exists()


def test_existing_output_is_refused_then_replaced_atomically(sample, tmp_path, monkeypatch):
    good = run(tmp_path, "out", squad=None)
    before = (good.out / "manifest.json").read_text()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        run(tmp_path, "out", squad=None)

    def boom(dsd):
        raise RuntimeError("disk full")

    monkeypatch.setattr(preprocess_module, "content_fingerprint", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        run(tmp_path, "out", overwrite=True)
    assert (good.out / "manifest.json").read_text() == before  # the good output survived
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp dirs left behind


def test_no_source_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="--squad and/or --physics"):
        run(tmp_path, squad=None, physics=None)


def test_hf_tokenizer_from_a_local_dir(tmp_path):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    corpus = [line for line in SQUAD.read_text().split('"') if len(line) > 30]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=600, special_tokens=["<|endoftext|>"])
    tok_dir = tmp_path / "gpt2-like"
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>").save_pretrained(tok_dir)
    m = run(tmp_path, "hf", "data.tokenizer.kind=hf", f"data.tokenizer.name={tok_dir}", physics=None).manifest
    special = m["tokenizer"]["special"]
    assert m["tokenizer"]["kind"] == "hf"
    assert special["eos_id"] == 0 and len({special["pad_id"], special["eos_id"], special["mask_id"]}) == 3
    tok = load_tokenizer(tmp_path / "hf" / "tokenizer")
    assert tok.special.pad_id == special["pad_id"] and tok.decode(tok.encode_batch(["The Danube"])[0]) == "The Danube"


def test_context_text_comes_from_train_articles_only(sample):
    result, dsd = sample
    ctx = dsd["train_context"].select_columns(["title", "answer", "sentences", "num_sentences", "is_impossible"])[:]
    assert result.manifest["context_text"] == len(ctx["answer"]) > 0
    titles = set(ctx["title"])
    assert titles <= set(column_of(dsd["train"], "title"))
    assert not titles & set(column_of(dsd["val"], "title")) and not titles & set(column_of(dsd["test"], "title"))
    contexts = set(column_of(dsd["train"], "context"))
    assert all(any(text in c for c in contexts) for text in ctx["answer"])  # verbatim spans of train passages
    assert set(ctx["num_sentences"]) == {1} and not any(ctx["is_impossible"])
    # 10 spans per unique train passage plus every sentence of those passages (tiny config)
    assert len(ctx["answer"]) > 10 * len({c for c in contexts if c})


def test_context_text_off_writes_no_extra_split(tmp_path):
    result = run(tmp_path, "plain", "data.context_sentences=false", "data.context_spans=0")
    assert result.manifest["context_text"] == 0
    assert "train_context" not in datasets.load_from_disk(str(result.out / "dataset"))


def column_of(ds, name):
    return ds.select_columns([name])[:][name]
