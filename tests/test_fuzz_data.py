"""Fuzzing the data stage: random and mangled HTML, JSON, JSONL, CSV and Posts.xml either process or raise the
project's own error (a QaEbmError with a one-line message), never another exception or a hang.

Each property writes what hypothesis generates to a real file and runs it through the loaders the stage
uses (squad.py, physics.py, records.py), then cleans and sentence-splits what they return exactly as
preprocess does; a few examples go through the whole `preprocess`. Generation is derandomised so the suite
is reproducible; `QA_EBM_FUZZ_SCALE=20` runs twenty times as many examples, randomised, for a deeper search.
`pytest tests/test_fuzz_data.py --hypothesis-show-statistics` prints the counts that docs/reliability.md reports.
"""

from __future__ import annotations

import copy
import gzip
import json
import os
from datetime import timedelta
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tiny import tiny_config

from qa_ebm.config import PairFieldsConfig, PhysicsSourceConfig, SquadSourceConfig
from qa_ebm.data.clean import clean_to_blocks, join_blocks
from qa_ebm.data.physics import load_physics
from qa_ebm.data.schema import RawExample
from qa_ebm.data.sentences import SentenceSplitter
from qa_ebm.data.squad import load_squad
from qa_ebm.errors import QaEbmError

SCALE = int(os.environ.get("QA_EBM_FUZZ_SCALE", "1"))


def fuzz(examples: int, seconds: float = 5.0):
    """Settings of one fuzz property: `examples` (times QA_EBM_FUZZ_SCALE), and a per-example deadline that
    turns a hang (a quadratic regex, a parser loop) into a failure, loose enough for a shared CPU."""
    return settings(
        max_examples=examples * SCALE,
        deadline=timedelta(seconds=seconds),
        derandomize=SCALE == 1,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
    )


# ------------------------------------------------------------------------------------------- strategies

# Text that looks like what the sources hold, plus the characters that break parsers: control characters,
# lone surrogates (JSON can carry them), NUL, bidi marks, TeX delimiters and markup characters.
NASTY = ["\x00", "\x01", "\x1b", "\ufeff", "\u202e", "\ud800", "\udfff", "\r", "\u2028", "&", "<", ">", '"', "'"]
TEX = ["$", "$$", "\\[", "\\]", "\\(", "\\)", "\\begin{align}", "\\end{align}", "\\", "{", "}"]
WORDS = ["The", "mass", "is", "conserved.", "Why?", "e.g.", "Dr.", "U.S.", "1.5", "m/s", "\n\n", " ", "\t", "..."]
fragments = st.one_of(st.sampled_from(NASTY + TEX + WORDS), st.text(max_size=12))
texts = st.lists(fragments, max_size=30).map("".join)

TAGS = ["p", "div", "b", "i", "a", "pre", "code", "li", "ul", "blockquote", "h1", "table", "td", "span", "script"]
TAGS += ["style", "br", "hr", "img", "math", "svg", "x-unknown", "P", "LI"]
entities = st.sampled_from(
    ["&amp;", "&lt;", "&gt;", "&nbsp;", "&#x1F600;", "&#xD800;", "&#0;", "&#99999999;", "&bogus;"]
)
attributes = st.dictionaries(st.sampled_from(["alt", "href", "src", "class", "title"]), texts, max_size=2).map(
    lambda a: "".join(f" {k}={quoteattr(v)}" for k, v in a.items())
)


def _element(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    def build(tag: str, attrs: str, inner: list[str], closed: bool) -> str:
        return f"<{tag}{attrs}>{''.join(inner)}" + (f"</{tag}>" if closed else "")

    return st.builds(build, st.sampled_from(TAGS), attributes, st.lists(children, max_size=4), st.booleans())


html_fragments = st.recursive(
    st.one_of(texts, entities, st.sampled_from(["<!-- c -->", "<!DOCTYPE html>", "<![CDATA[x]]>", "</p>", "<", "<p"])),
    _element,
    max_leaves=25,
)
html_docs = st.lists(html_fragments, max_size=6).map("".join)
html_bodies = st.lists(html_fragments, max_size=2).map("".join)  # many per file: lighter to generate


def _deep(tag: str, depth: int) -> str:
    return f"<{tag}>" * depth + "deep text." + f"</{tag}>" * (depth // 2)


html_inputs = st.one_of(
    html_docs,
    texts,
    st.builds(_deep, st.sampled_from(["b", "div", "li", "p"]), st.integers(500, 3000)),
    st.builds(
        lambda t, n: t * n, st.sampled_from(["\\[", "\\begin{a}", "$", "<b>", "&amp;", "$$ "]), st.integers(1, 5000)
    ),
)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**400),  # ints past float range and past 4300 digits
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)
any_json = st.recursive(json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(texts, c, max_size=4))


def _slots(node) -> list[tuple[dict | list, str | int]]:
    """Every (container, key) of a JSON tree, depth first."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
    found = []
    for key, child in items:
        found += [(node, key), *_slots(child)]
    return found


@st.composite
def mutated(draw, valid: st.SearchStrategy):
    """Half the time a valid document; else one field of it deleted or replaced by anything JSON holds."""
    doc = copy.deepcopy(draw(valid))
    if draw(st.booleans()):
        return doc
    slots = _slots(doc)
    if not slots:
        return draw(any_json)
    container, key = slots[draw(st.integers(0, len(slots) - 1))]
    if draw(st.booleans()):
        del container[key]
    else:
        container[key] = draw(any_json)
    return doc


def record(**fields) -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries(fields)


squad_answer = record(text=texts, answer_start=st.integers(0, 500))
squad_qa = record(
    id=st.one_of(texts, st.integers()),
    question=texts,
    answers=st.lists(squad_answer, max_size=3),
    is_impossible=st.booleans(),
)
squad_paragraph = record(context=texts, qas=st.lists(squad_qa, max_size=4))
squad_valid = record(
    version=st.just("v2.0"),
    data=st.lists(record(title=texts, paragraphs=st.lists(squad_paragraph, max_size=3)), max_size=3),
)
squad_docs = mutated(squad_valid)

h4_answer = record(text=html_docs, pm_score=st.one_of(st.integers(-5, 50), json_scalars), selected=st.booleans())
h4_records = mutated(
    record(
        qid=st.integers(0, 10**6),
        title=st.one_of(st.none(), texts),
        question=html_docs,
        answers=st.lists(h4_answer, max_size=4),
    )
)
# Few distinct urls, so several answers share a question and the best one is chosen.
pair_valid = record(
    Q=texts, A=st.one_of(texts, html_docs), meta=record(url=st.sampled_from(["u1", "u2", "u3", "", "u4"]))
)
pair_records = mutated(pair_valid)


def _jsonl(records: list, garbage: list[str]) -> str:
    lines = [json.dumps(r) for r in records]
    for i, g in enumerate(garbage):  # a mangled line among valid ones
        lines.insert(i % (len(lines) + 1), g)
    return "\n".join(lines) + "\n"


def _mangle(data: bytes, how: str, at: int) -> bytes:
    """Damage a valid file the ways files get damaged: cut short, a stray byte, a wrong encoding, compressed."""
    at = at % (len(data) + 1)
    return {
        "none": data,
        "truncate": data[:at],
        "stray": data[:at] + b"\xff\x00<{\x80" + data[at:],
        "utf16": data.decode("latin-1").encode("utf-16"),
        "gzip": gzip.compress(data),
        "gzip-truncated": gzip.compress(data)[: max(1, at % 40)],
        "bom": b"\xef\xbb\xbf" + data,
    }[how]


mangles = st.tuples(
    st.sampled_from(["none", "none", "none", "truncate", "stray", "utf16", "gzip", "gzip-truncated", "bom"]),
    st.integers(0, 10**6),
)

POST_ATTRS = ["Id", "PostTypeId", "ParentId", "AcceptedAnswerId", "Score", "Title", "Body", "Tags", "CreationDate"]
noise_row = st.dictionaries(
    st.sampled_from(POST_ATTRS),
    st.one_of(st.sampled_from(["1", "2", "3", "7", "", "-1", "1e999", "nan"]), st.integers(0, 20).map(str), texts),
    max_size=7,
)


@st.composite
def post_rows(draw) -> list[dict]:
    """A dump's rows: questions, answers to them (some to questions not in the file, some accepted) and the
    other post types, in dump order or shuffled (answers before their question), one row sometimes mangled."""
    rows = []
    n = draw(st.integers(0, 5))
    for q in range(1, n + 1):
        answers = [f"{q}0{k}" for k in range(draw(st.integers(0, 3)))]
        accepted = {"AcceptedAnswerId": draw(st.sampled_from(answers))} if answers and draw(st.booleans()) else {}
        rows.append({"Id": str(q), "PostTypeId": "1", "Title": draw(texts), "Body": draw(html_bodies), **accepted})
        for aid in answers:
            parent = str(q) if draw(st.integers(0, 5)) else str(draw(st.integers(n + 1, 99)))
            score = draw(st.one_of(st.integers(-3, 30).map(str), st.sampled_from(["", "x", "1e999", "nan"])))
            rows.append({"Id": aid, "PostTypeId": "2", "ParentId": parent, "Score": score, "Body": draw(html_bodies)})
    rows += draw(st.lists(noise_row, max_size=2)) if draw(st.integers(0, 3)) == 0 else []
    if rows and draw(st.integers(0, 3)) == 0:
        rows = draw(st.permutations(rows))
    return draw(mutated(st.just(rows)))


def _xml_text(s: str) -> str:
    # An attribute holds what XML 1.0 allows; a few invalid characters get through on purpose via `raw`.
    return "".join(c for c in s if c in "\t\n\r" or (" " <= c <= "\ud7ff") or ("\ue000" <= c <= "\ufffd"))


def _posts_xml(rows: list[dict], root: str, prolog: str, raw: str) -> str:
    def row(r) -> str:  # a mutation may have put any JSON value where a row was: it becomes text
        if not isinstance(r, dict):
            return escape(_xml_text(str(r)))
        return "<row" + "".join(f" {k}={quoteattr(_xml_text(str(v)))}" for k, v in r.items()) + " />\n"

    body = "".join(map(row, rows if isinstance(rows, list) else [rows]))
    return f"{prolog}<{root}>\n{body}{raw}</{root}>\n"


XML_PROLOGS = [
    *['<?xml version="1.0" encoding="utf-8"?>\n'] * 6,
    "",
    '<?xml version="1.0" encoding="bogus-9"?>\n',
    '<?xml version="1.0"?><!DOCTYPE posts [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>\n',
    '<?xml version="1.0"?><!DOCTYPE posts [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n',
    '<?xml version="1.0"?><!DOCTYPE posts SYSTEM "http://example.invalid/posts.dtd">\n',
]
XML_RAW = ["", "<row Id='9' PostTypeId='1' Body='&b;' />", "<row Id='8' Body='&x;'/>", "<row \x01 />", "<![CDATA[x]]>"]
XML_RAW += ["<other><row Id='1' PostTypeId='1'/></other>", "<row Id='7' PostTypeId='2' ParentId='1' Body='&#0;'/>"]
posts_files = st.builds(
    _posts_xml,
    post_rows(),
    st.sampled_from(["posts"] * 8 + ["badges", "Posts"]),
    st.sampled_from(XML_PROLOGS),
    st.sampled_from(XML_RAW),
)


# ------------------------------------------------------------------------------------------- the stage

_SPLITTER: SentenceSplitter | None = None


def splitter() -> SentenceSplitter:
    """A Punkt model trained once on a few sentences: the fuzz exercises splitting, not sentence quality."""
    global _SPLITTER
    if _SPLITTER is None:
        _SPLITTER = SentenceSplitter.train(["The mass is conserved. Dr. Smith said so. Why? Because e.g. it is."] * 5)
    return _SPLITTER


def stage(examples: list[RawExample]) -> None:
    """What preprocess does to each loaded example before tokenising: clean the markup, split the answer."""
    for ex in examples:
        assert isinstance(ex["question"], str) and isinstance(ex["answer"], str) and isinstance(ex["context"], str)
        assert isinstance(ex["answer_start"], int) and all(isinstance(r, str) for r in ex["references"])
        for text in (ex["question"], ex["answer"]):
            blocks = clean_to_blocks(text, ex["markup"])
            assert all(b and b == b.strip() and "\x00" not in b for b in blocks)
        if ex["answer"]:
            splitter().split(join_blocks(clean_to_blocks(ex["answer"], ex["markup"])))


def processes_or_refuses(load, path: Path) -> None:
    """`load(path)` -> examples run through `stage`, or a QaEbmError naming the problem in one line."""
    try:
        examples, report = load(path)
    except QaEbmError as e:
        message = str(e)
        assert message and "\n" not in message and "Traceback" not in message
        event(f"refused: {type(e).__name__}")
        return
    assert report.examples == len(examples) > 0
    stage(examples)
    event("processed")


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------------------------- properties


@fuzz(400, seconds=3)
@given(
    html=html_inputs, markup=st.sampled_from(["html", "text"]), code=st.sampled_from(["placeholder", "keep", "drop"])
)
def test_cleaning_any_markup_gives_clean_blocks(html, markup, code):
    blocks = clean_to_blocks(html, markup, code_blocks=code, images="alt")
    assert all(isinstance(b, str) and b and b == b.strip() and "\x00" not in b for b in blocks)
    event("some text" if blocks else "no text")
    splitter().split(join_blocks(blocks))


@fuzz(200)
@given(doc=st.one_of(squad_docs, squad_docs, squad_docs, any_json), mangle=mangles)
def test_squad_json_processes_or_refuses(tmp_path_factory, doc, mangle):
    data = json.dumps(doc, allow_nan=False).encode("utf-8", "surrogatepass")
    path = _write(tmp_path_factory.mktemp("squad"), "train-v2.0.json", _mangle(data, *mangle))
    processes_or_refuses(lambda p: load_squad(str(p), SquadSourceConfig()), path)


@fuzz(60)
@given(text=st.one_of(st.binary(max_size=300), st.builds(lambda d: "[" * d, st.integers(1, 200_000)).map(str.encode)))
def test_squad_bytes_that_are_not_json_are_refused(tmp_path_factory, text):
    path = _write(tmp_path_factory.mktemp("squad"), "dev.json", text)
    processes_or_refuses(lambda p: load_squad(str(p), SquadSourceConfig()), path)


@fuzz(150)
@given(
    records=st.one_of(
        st.lists(h4_records, max_size=6), st.lists(pair_records, max_size=6), st.lists(any_json, max_size=4)
    ),
    garbage=st.lists(
        st.one_of(texts, st.sampled_from(["{", "[1,", '{"Q": "\\ud800"}', "nul\x00l", "9" * 5000])), max_size=2
    ),
    name=st.sampled_from(["physics.jsonl", "physics.json", "physics.jsonl.gz", "Q_A.jsonl"]),
    mangle=mangles,
)
def test_physics_jsonl_processes_or_refuses(tmp_path_factory, records, garbage, name, mangle):
    if name.endswith(".json"):
        data = json.dumps(records).encode("utf-8", "surrogatepass")
    else:
        data = _jsonl(records, garbage).encode("utf-8", "surrogatepass")
    if name.endswith(".gz"):
        data = gzip.compress(data)
    path = _write(tmp_path_factory.mktemp("physics"), name, _mangle(data, *mangle))
    processes_or_refuses(lambda p: load_physics(str(p), PhysicsSourceConfig()), path)


@fuzz(60)
@given(
    rows=st.lists(st.dictionaries(st.sampled_from(["Q", "A", "url", "x"]), texts, max_size=4), max_size=6),
    big=st.booleans(),
)
def test_physics_csv_processes_or_refuses(tmp_path_factory, rows, big):
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["Q", "A", "url"])
    for row in rows:
        writer.writerow([_xml_text(row.get(k, "")) for k in ("Q", "A", "url")])
    data = buf.getvalue() + ('"' + "x" * 200_000 + '"\n' if big else "")  # past csv's field size limit
    path = _write(tmp_path_factory.mktemp("physics"), "pairs.csv", data.encode())
    cfg = PhysicsSourceConfig(format="pairs", fields=PairFieldsConfig(group="url"))
    processes_or_refuses(lambda p: load_physics(str(p), cfg), path)


@fuzz(200)
@given(xml=posts_files, mangle=mangles, name=st.sampled_from(["Posts.xml", "Posts.xml.gz", "posts"]))
def test_posts_xml_processes_or_refuses(tmp_path_factory, xml, mangle, name):
    data = xml.encode("utf-8", "surrogatepass")
    if name.endswith(".gz"):
        data = gzip.compress(data)
    path = _write(tmp_path_factory.mktemp("posts"), name, _mangle(data, *mangle))
    processes_or_refuses(lambda p: load_physics(str(p), PhysicsSourceConfig()), path)


@fuzz(40, seconds=5)
@given(data=st.binary(max_size=2000), name=st.sampled_from(["Posts.xml", "physics.parquet", "physics.csv", "x.bin"]))
def test_physics_random_bytes_are_refused_or_read(tmp_path_factory, data, name):
    path = _write(tmp_path_factory.mktemp("bytes"), name, data)
    processes_or_refuses(lambda p: load_physics(str(p), PhysicsSourceConfig()), path)


def test_a_billion_laughs_posts_xml_is_refused_without_expansion(tmp_path):
    """defusedxml refuses entity declarations: the classic exponential expansion never starts."""
    lol = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    xml = f'<?xml version="1.0"?><!DOCTYPE posts [<!ENTITY l0 "lol">{lol}]><posts><row Body="&l9;"/></posts>'
    path = _write(tmp_path, "Posts.xml", xml.encode())
    with pytest.raises(QaEbmError, match="refused unsafe XML"):
        load_physics(str(path), PhysicsSourceConfig())


# Mostly words, so that the whole stage gets past its loaders: a tokenizer to train, sentences to filter.
prose = st.lists(st.one_of(st.sampled_from(WORDS), st.sampled_from(WORDS), fragments), min_size=4, max_size=30).map(
    " ".join
)
squad_prose = record(
    data=st.lists(
        record(
            title=texts,
            paragraphs=st.lists(
                record(
                    context=prose,
                    qas=st.lists(
                        record(
                            id=texts,
                            question=prose,
                            answers=st.lists(
                                record(text=prose, answer_start=st.integers(0, 50)), min_size=1, max_size=2
                            ),
                            is_impossible=st.booleans(),
                        ),
                        min_size=1,
                        max_size=3,
                    ),
                ),
                min_size=1,
                max_size=2,
            ),
        ),
        min_size=1,
        max_size=3,
    )
)
pair_prose = record(Q=prose, A=st.one_of(prose, html_docs), meta=record(url=st.sampled_from(["u1", "u2", "u3", "u4"])))


# A few whole runs of the stage: loaders, cleaning, Punkt training, the tokenizer, filters and splits.
@fuzz(12, seconds=60)
@given(doc=squad_prose, records=st.lists(pair_prose, min_size=1, max_size=8))
def test_whole_preprocess_writes_or_refuses(tmp_path_factory, doc, records):
    from qa_ebm.data.preprocess import preprocess

    base = tmp_path_factory.mktemp("pre")
    squad = _write(base, "squad.json", json.dumps(doc).encode("utf-8", "surrogatepass"))
    physics = _write(base, "physics.jsonl", _jsonl(records, []).encode("utf-8", "surrogatepass"))
    config = tiny_config("data.splits.val=0.0", "data.splits.test=0.0")
    try:
        result = preprocess(config, base / "out", squad=str(squad), physics=str(physics))
    except QaEbmError as e:
        assert str(e) and "\n" not in str(e)
        event(f"refused: {type(e).__name__}")
        return
    event("processed")
    assert (base / "out" / "manifest.json").is_file() and sum(result.manifest["counts"].values()) > 0


def test_the_strategies_reach_both_outcomes(tmp_path):
    """The fuzz is only worth its count if generated files are both accepted and refused."""
    ok = {
        "data": [
            {"title": "T", "paragraphs": [{"context": "ab", "qas": [{"id": "1", "question": "q?", "answers": []}]}]}
        ]
    }
    accepted = _write(tmp_path, "ok.json", json.dumps(ok).encode())
    examples, _ = load_squad(str(accepted), SquadSourceConfig())
    assert len(examples) == 1
    with pytest.raises(QaEbmError):
        load_squad(str(_write(tmp_path, "bad.json", b"[" * 100_000)), SquadSourceConfig())
