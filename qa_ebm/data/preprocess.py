"""`qa-ebm preprocess`: sources -> clean text -> sentences -> filters -> hierarchical ids -> splits.

Output directory (written under a temp name and renamed into place only when complete):

    dataset/        datasets.DatasetDict.save_to_disk (train / val / test)
    tokenizer/      the tokenizer and its special ids (qa_ebm_tokenizer.json)
    punkt/          the Punkt sentence model used, so answer time splits identically
    config.yaml     the resolved config
    manifest.json   sources + content hashes, counts, filter drops, tokenizer, versions, fingerprint

Each answer becomes `input_ids` of shape (max_sentences, max_words): one row per sentence, its
tokens truncated to `max_words - 1` and closed by EOS, rows and tail padded with PAD, plus
`token_mask` (same shape) and `sentence_mask` (max_sentences,).
"""

from __future__ import annotations

import hashlib
import logging
import platform
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qa_ebm import __version__
from qa_ebm.config import CleanConfig, Config, DataConfig
from qa_ebm.data.clean import clean_to_blocks, join_blocks
from qa_ebm.data.physics import load_physics
from qa_ebm.data.schema import RawExample, SourceReport, raw_features
from qa_ebm.data.sentences import SentenceSplitter, find_pretrained_punkt
from qa_ebm.data.splits import assign_splits_by_source
from qa_ebm.data.squad import load_squad
from qa_ebm.data.tokenizer import build_tokenizer, encode_sentences, load_tokenizer, tokenizer_info
from qa_ebm.errors import ConfigError, DataError
from qa_ebm.io import atomic_output_dir, check_output_dir, write_json

log = logging.getLogger(__name__)

FORMAT = "qa-ebm/dataset"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
CONTEXT_SPLIT = "train_context"  # unpaired text from train-split SQuAD contexts, for the HVAE only
FILTERS = ("empty", "min_sentences", "max_sentences", "max_sentence_tokens")
META_COLUMNS = ("source", "group", "num_sentences", "is_impossible")  # what filters and splits read


@dataclass
class PreprocessResult:
    out: Path
    manifest: dict[str, Any]


def preprocess(
    config: Config,
    out: str | Path,
    squad: str | None = None,
    physics: str | None = None,
    overwrite: bool = False,
) -> PreprocessResult:
    """Run the whole data stage; see the module docstring for what lands in `out`."""
    import datasets

    clock = _Stopwatch()
    cfg = config.data
    squad = squad or cfg.squad.path
    physics = physics or cfg.physics.path
    if not squad and not physics:
        raise ConfigError("no data source: pass --squad and/or --physics (or set data.squad.path / data.physics.path)")
    out = check_output_dir(out, overwrite)

    # 1. Sources -> one list of raw examples.
    rows: list[RawExample] = []
    reports: list[SourceReport] = []
    if squad:
        examples, report = load_squad(squad, cfg.squad, limit=cfg.limit, streaming=cfg.streaming)
        rows += examples
        reports.append(report)
    if physics:
        examples, report = load_physics(physics, cfg.physics, limit=cfg.limit, streaming=cfg.streaming)
        rows += examples
        reports.append(report)
    ds = datasets.Dataset.from_list(rows, features=raw_features())  # typed: an all-empty column is no `null`
    del rows
    map_kw = {
        "batched": True,
        "batch_size": cfg.batch_size,
        "num_proc": _num_proc(cfg.num_proc, len(ds), cfg.batch_size),
    }

    clock.lap("load")
    # 2. Markup -> clean text.
    ds = ds.map(_Clean(cfg.clean), desc="clean text", new_fingerprint=_fp("clean", config), **map_kw)

    clock.lap("clean")
    # 3. Sentences: Punkt, pretrained where installed, else trained on this corpus.
    splitter = _sentence_splitter(cfg.punkt, ds, cfg.punkt_train_chars)
    ds = ds.map(
        _SplitSentences(splitter),
        features=_sentence_features(ds.features),
        desc="split sentences",
        new_fingerprint=_fp("split", config),
        **map_kw,
    )

    clock.lap("sentences")
    # 4. Sentence-count filters (unanswerable questions carry no target and are never filtered).
    # Kept rows are tracked as a mask over the full table and gathered once per split in step 7:
    # `Dataset.select` would leave an indices mapping that later maps read back row by row.
    meta = {k: np.asarray(v) for k, v in ds.select_columns(list(META_COLUMNS))[:].items()}
    drops = {r.name: dict.fromkeys(FILTERS, 0) for r in reports}
    keep = _sentence_filters(meta, cfg, drops)
    _check_not_all_dropped(keep, drops, cfg, meta["num_sentences"])

    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        clock.lap("filter")
        # 5. Tokenizer: trained on the kept text, or loaded; saved first so map workers load it.
        corpus = _tokenizer_corpus(ds, keep)
        tok = build_tokenizer(
            cfg.tokenizer.kind, cfg.tokenizer.name, corpus, cfg.tokenizer.vocab_size, cfg.tokenizer.model_type
        )
        tok.save(tmp / "tokenizer")
        splitter.save(tmp / "punkt")

        clock.lap("tokenizer")
        # 6. Optional filter on the longest sentence's token count (else sentences are truncated).
        encode = _Encode(str(tmp / "tokenizer"), cfg.max_sentences, cfg.max_words, cfg.max_question_tokens)
        if cfg.max_sentence_tokens is not None:
            measured = ds.map(
                _LongestSentence(encode), remove_columns=ds.column_names, desc="measure sentences", **map_kw
            )
            longest = np.asarray(column(measured, "longest_sentence"))
            keep &= _token_filter(meta, keep, longest, cfg.max_sentence_tokens, drops)
            _check_not_all_dropped(keep, drops, cfg, longest=longest)

        clock.lap("token_filter")
        # 7. Grouped splits, each gathered in one Arrow `take` and encoded into fresh tables.
        rows = np.flatnonzero(keep)
        groups, sources = meta["group"][rows], meta["source"][rows]
        pinned = {g: "val" for g in cfg.splits.val_groups} | {g: "test" for g in cfg.splits.test_groups}
        unknown = sorted(set(pinned) - set(groups.tolist()))
        if unknown:
            raise DataError(f"data.splits: pinned groups not in the data: {', '.join(unknown)}")
        split_of = np.array(
            assign_splits_by_source(
                groups.tolist(), sources.tolist(), cfg.splits.val, cfg.splits.test, cfg.splits.seed, pinned
            )
        )
        if not (split_of == "train").any():
            raise DataError(
                f"the train split is empty: only {len(set(groups.tolist()))} question groups; "
                "lower data.splits.val / data.splits.test or add data"
            )
        features = ds.features.copy()
        features.update(_id_features(cfg.max_sentences, cfg.max_words))
        parts = {name: take_rows(ds, rows[split_of == name]) for name in SPLITS}
        extra = context_text(ds, rows[split_of == "train"], splitter, cfg)
        if extra is not None:
            parts[CONTEXT_SPLIT] = extra
        dsd = datasets.DatasetDict(
            {
                name: part.map(
                    encode,
                    features=features,
                    desc=f"tokenise {name}",
                    new_fingerprint=_fp(f"encode-{name}", config),
                    **{**map_kw, "num_proc": _num_proc(cfg.num_proc, len(part), cfg.batch_size)},
                )
                if len(part)
                else datasets.Dataset.from_dict({k: [] for k in features}, features=features)  # map adds no columns
                for name, part in parts.items()
            }
        )

        clock.lap("encode")
        # 8. Write.
        # An empty split must still be written as one (empty) shard: datasets writes none and cannot load it back.
        dsd.save_to_disk(str(tmp / "dataset"), num_shards={name: 1 for name, part in dsd.items() if len(part) == 0})
        config.save(tmp / "config.yaml")
        saved = datasets.load_from_disk(str(tmp / "dataset"))  # fingerprint what landed on disk
        clock.lap("write")
        manifest = _manifest(config, reports, saved, drops, tok, splitter, clock)
        write_json(tmp / "manifest.json", manifest)
    return PreprocessResult(out=out, manifest=manifest)


# --------------------------------------------------------------------------------------- map steps


class _Clean:
    """Markup -> clean text for questions and free-form answers.

    Span answers (those with an `answer_start` into a context, i.e. SQuAD) and their contexts stay
    verbatim, whitespace included: `context[answer_start:][:len(answer)] == answer` must hold for
    reading mode, and SQuAD contexts do contain double spaces.
    """

    def __init__(self, clean: CleanConfig):
        self.clean = clean

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        def text(raw: str, markup: str) -> str:
            return join_blocks(clean_to_blocks(raw, markup, self.clean.code_blocks, self.clean.images))

        questions = [text(q, m) for q, m in zip(batch["question"], batch["markup"], strict=True)]
        answers, references = [], []
        for answer, refs, start, markup in zip(
            batch["answer"], batch["references"], batch["answer_start"], batch["markup"], strict=True
        ):
            if start >= 0:
                answers.append(answer)
                references.append(refs)
            else:
                answers.append(text(answer, markup))
                references.append([answers[-1]])
        return {"question": questions, "answer": answers, "references": references}


class _SplitSentences:
    def __init__(self, splitter: SentenceSplitter):
        self.splitter = splitter

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        sentences = [self.splitter.split(a) if a else [] for a in batch["answer"]]
        return {"sentences": sentences, "num_sentences": [len(s) for s in sentences]}


class _Encode:
    """Sentences -> (S, W) ids with EOS closing each sentence; question -> ids for a learned encoder."""

    def __init__(self, tokenizer_dir: str, max_sentences: int, max_words: int, max_question_tokens: int):
        self.tokenizer_dir = tokenizer_dir
        self.S, self.W, self.Q = max_sentences, max_words, max_question_tokens
        self._tok = None  # loaded lazily: in each map worker, from the saved files

    @property
    def tokenizer(self):
        if self._tok is None:
            self._tok = load_tokenizer(self.tokenizer_dir)
        return self._tok

    def __call__(self, batch: dict[str, list]) -> dict[str, Any]:
        ids = encode_sentences(self.tokenizer, batch["sentences"], self.S, self.W)
        ids["question_ids"] = [q[: self.Q] for q in self.tokenizer.encode_batch(batch["question"])]
        return ids


def context_text(ds, train_rows: np.ndarray, splitter: SentenceSplitter, cfg: DataConfig):
    """Unpaired text from the train split's SQuAD contexts, as extra answers for the HVAE.

    A few thousand short answers teach a decoder little English; the passages they come from hold
    many times more text of the same kind (DESIGN, "Measured already", lesson 1). Each unique train
    context gives its sentences (if `cfg.context_sentences`) and `cfg.context_spans` random word spans
    of 1-12 words (answers are mostly short spans), drawn with a generator seeded by the split seed and
    the context's index, so the output is deterministic. Val and test contexts are never used.
    """
    import datasets

    if not cfg.context_sentences and cfg.context_spans <= 0:
        return None
    contexts = column(ds, "context")
    titles = column(ds, "title")
    seen: dict[str, str] = {}
    for i in train_rows:
        if contexts[i] and contexts[i] not in seen:
            seen[contexts[i]] = titles[i]
    if not seen:
        return None
    texts: list[tuple[str, str]] = []
    for k, (context, title) in enumerate(seen.items()):
        parts = splitter.split(context)
        if not parts:  # whitespace, or nothing a sentence can be made of
            continue
        if cfg.context_sentences:
            texts += [(title, sentence) for sentence in parts]
        rng = np.random.default_rng([cfg.splits.seed, k])
        for _ in range(cfg.context_spans):
            words = parts[int(rng.integers(len(parts)))].split()
            n = int(rng.integers(1, min(12, len(words)) + 1))
            start = int(rng.integers(len(words) - n + 1))
            texts.append((title, " ".join(words[start : start + n])))
    if not texts:
        return None
    records = [
        {
            "id": f"context-{i}",
            "source": "squad-context",
            "group": f"squad:{title}",
            "title": title,
            "question": "",
            "context": "",
            "answer": text,
            "references": [],
            "answer_start": -1,
            "is_impossible": False,
            "markup": "text",
            "sentences": [text],
            "num_sentences": 1,
        }
        for i, (title, text) in enumerate(texts)
    ]
    return datasets.Dataset.from_list(records, features=ds.features)


class _LongestSentence:
    """Token count of each answer's longest sentence, for the `max_sentence_tokens` filter.

    It runs before the sentence filters are applied (on every row), so it only measures: no ids.
    """

    def __init__(self, encode: _Encode):
        self.encode = encode

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        lengths = iter(map(len, self.encode.tokenizer.encode_batch([s for sents in batch["sentences"] for s in sents])))
        return {"longest_sentence": [max((next(lengths) for _ in sents), default=0) for sents in batch["sentences"]]}


def _sentence_features(features):
    from datasets import List, Value

    features = features.copy()
    features.update({"sentences": List(Value("string")), "num_sentences": Value("int64")})
    return features


def _id_features(S: int, W: int) -> dict:
    from datasets import Array2D, List, Value

    return {
        "input_ids": Array2D((S, W), "int32"),
        "token_mask": Array2D((S, W), "int8"),
        "sentence_mask": List(Value("int8"), length=S),
        "question_ids": List(Value("int32")),
        "num_truncated": Value("int32"),
        "longest_sentence": Value("int32"),
    }


# --------------------------------------------------------------------------------------- steps


def column(ds, name: str) -> list:
    """A whole column as a Python list in one Arrow call.

    `ds[name]` is a lazy column in datasets >= 4 whose iteration formats one row at a time: on 94k
    rows that is seconds per pass.
    """
    return ds.select_columns([name])[:][name]


def take_rows(ds, rows: np.ndarray):
    """Rows of a dataset without an indices mapping, as a new contiguous in-memory dataset."""
    import datasets
    from datasets.table import InMemoryTable

    table = ds.data.table.take(rows)
    return datasets.Dataset(InMemoryTable(table), info=ds.info.copy())


def _sentence_splitter(spec: str, ds, max_chars: int) -> SentenceSplitter:
    if spec in ("auto", "pretrained"):
        found = find_pretrained_punkt()
        if found is not None:
            return SentenceSplitter.load(found, origin="pretrained")
        if spec == "pretrained":
            raise DataError(
                "data.punkt=pretrained but NLTK's English punkt_tab data is not installed "
                "(python -m nltk.downloader punkt_tab), or use data.punkt=auto to train one on the corpus"
            )
    if spec in ("auto", "train"):
        return SentenceSplitter.train(_punkt_corpus(ds), max_chars=max_chars)
    if not Path(spec).is_dir():
        raise ConfigError(f"data.punkt={spec!r}: expected auto, pretrained, train or a punkt directory")
    return SentenceSplitter.load(spec)


def _punkt_corpus(ds):
    """Prose to learn abbreviations and sentence starters from: answers, then unique contexts."""
    yield from (a for a in column(ds, "answer") if a)
    seen: set[str] = set()
    for c in column(ds, "context"):
        if c and c not in seen:
            seen.add(c)
            yield c


def _tokenizer_corpus(ds, keep: np.ndarray):
    rows = np.flatnonzero(keep)
    sentences, questions = column(ds, "sentences"), column(ds, "question")
    yield from (s for i in rows for s in sentences[i])
    yield from (questions[i] for i in rows if questions[i])


def _min_sentences(cfg, source: str) -> int:
    if source == "physics" and cfg.physics.min_sentences is not None:
        return cfg.physics.min_sentences
    return cfg.min_sentences


def _sentence_filters(meta: dict[str, np.ndarray], cfg, drops: dict[str, dict[str, int]]) -> np.ndarray:
    n, impossible, sources = meta["num_sentences"], meta["is_impossible"].astype(bool), meta["source"]
    keep = np.ones(len(n), dtype=bool)
    for source in drops:
        mine = (sources == source) & ~impossible
        rules = [
            ("empty", n == 0),
            ("min_sentences", n < _min_sentences(cfg, source)),
            ("max_sentences", n > cfg.max_sentences),
        ]
        for name, rejected in rules:  # an answer is counted under the first filter that drops it
            hit = mine & keep & rejected
            drops[source][name] += int(hit.sum())
            keep &= ~hit
    return keep


def _token_filter(
    meta: dict[str, np.ndarray],
    keep: np.ndarray,
    longest: np.ndarray,
    max_tokens: int,
    drops: dict[str, dict[str, int]],
) -> np.ndarray:
    hit = keep & ~meta["is_impossible"].astype(bool) & (longest > max_tokens)
    for source, count in Counter(meta["source"][hit]).items():
        drops[str(source)]["max_sentence_tokens"] += int(count)
    return ~hit


def _check_not_all_dropped(
    keep: np.ndarray,
    drops: dict[str, dict[str, int]],
    cfg,
    n: np.ndarray | None = None,
    longest: np.ndarray | None = None,
) -> None:
    """Raise when nothing is left, naming the filter that dropped most and a setting that keeps 95%."""
    if keep.any():
        return
    total = Counter()
    for per_source in drops.values():
        total.update(per_source)
    worst, count = total.most_common(1)[0]
    advice = {
        "empty": "the answers have no text after cleaning: check data.clean and the source's answer field",
        "min_sentences": f"lower data.min_sentences (now {cfg.min_sentences}) or data.physics.min_sentences",
        "max_sentences": f"raise data.max_sentences (now {cfg.max_sentences}), "
        f"e.g. --set data.max_sentences={_percentile(n, 95, cfg.max_sentences * 2)}",
        "max_sentence_tokens": f"raise data.max_sentence_tokens (now {cfg.max_sentence_tokens}), "
        f"e.g. --set data.max_sentence_tokens={_percentile(longest, 95, 2 * (cfg.max_sentence_tokens or 1))}, "
        "or set it to null to truncate instead",
    }[worst]
    raise DataError(f"all examples were dropped by the filters ({worst} dropped {count}); {advice}")


def _percentile(values: np.ndarray | None, q: float, fallback: int) -> int:
    values = values[values > 0] if values is not None else None
    return int(np.ceil(np.percentile(values, q))) if values is not None and len(values) else fallback


def _num_proc(requested: int, rows: int, batch_size: int) -> int | None:
    """datasets.map wants None for in-process work; a worker with less than a batch only costs."""
    n = min(requested, -(-rows // batch_size))
    return n if n > 1 else None


def _fp(step: str, config: Config) -> str:
    """Explicit fingerprints: our map callables hold objects `datasets` cannot hash cheaply."""
    return hashlib.sha256(f"{step}:{config.hash()}".encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------- manifest


def content_fingerprint(dsd) -> str:
    """sha256 of every split's Arrow data: equal iff the processed datasets are equal."""
    import pyarrow as pa

    h = hashlib.sha256()
    for name in sorted(dsd):
        table = dsd[name].data.table
        # `take` rebuilds every buffer contiguously: the bytes depend on the data, not on how the
        # map batches happened to chunk it (batch_size, num_proc).
        table = table.take(np.arange(table.num_rows))
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        h.update(name.encode())
        h.update(sink.getvalue().to_pybytes())
    return h.hexdigest()


def _manifest(config: Config, reports: list[SourceReport], dsd, drops, tok, splitter, clock) -> dict[str, Any]:
    counts = {name: len(dsd[name]) for name in SPLITS}
    by_source = {name: dict(sorted(Counter(column(dsd[name], "source")).items())) for name in SPLITS}
    unanswerable = {name: int(sum(column(dsd[name], "is_impossible"))) for name in SPLITS}
    truncated = int(sum(sum(column(dsd[name], "num_truncated")) for name in SPLITS))
    fingerprint = content_fingerprint(dsd)
    clock.lap("manifest")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created_by": f"qa-ebm {__version__}",
        "sources": [asdict(r) for r in reports],
        "counts": counts,
        "context_text": len(dsd[CONTEXT_SPLIT]) if CONTEXT_SPLIT in dsd else 0,
        "counts_by_source": by_source,
        "unanswerable": unanswerable,
        "filter_drops": drops,
        "truncated_sentences": truncated,
        "shape": {"max_sentences": config.data.max_sentences, "max_words": config.data.max_words},
        "tokenizer": tokenizer_info(tok),
        "punkt": {
            "origin": "pretrained"
            if splitter.origin == "pretrained"
            else "trained"
            if splitter.origin == "trained"
            else "loaded"
        },
        "config_hash": config.hash(),
        "fingerprint": fingerprint,
        "versions": _versions(),
        "seconds": round(clock.total, 2),
        "seconds_by_stage": {k: round(v, 3) for k, v in clock.laps.items()},
    }


class _Stopwatch:
    """Wall time per stage, for the summary and the benchmark (not part of the fingerprint)."""

    def __init__(self):
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self.last
        self.last = now

    @property
    def total(self) -> float:
        return time.perf_counter() - self.start


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "qa_ebm": __version__}
    for pkg in ("datasets", "pyarrow", "nltk", "sentencepiece", "transformers", "tokenizers", "beautifulsoup4"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out
