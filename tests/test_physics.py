import csv
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qa_ebm.config import PairFieldsConfig, PhysicsSourceConfig
from qa_ebm.data.clean import html_to_blocks
from qa_ebm.data.physics import detect_format, load_physics
from qa_ebm.errors import DataError

# ----------------------------------------------------------------------------------- H4 schema

H4_RECORDS = [
    {
        "qid": 101,
        "title": "Why is the sky blue?",
        "question": "<p>Light &amp; air: why blue?</p>",
        "answers": [
            {"text": "<p>Most voted.</p>", "pm_score": 9, "selected": False},
            {"text": "<p>Rayleigh scattering, accepted.</p>", "pm_score": 2, "selected": True},
        ],
    },
    {
        "qid": 102,
        "title": None,
        "question": "<p>What is mass?</p>",
        "answers": [
            {"text": "<p>Low.</p>", "pm_score": 1, "selected": False},
            {"text": "<p>First of the best.</p>", "pm_score": 7, "selected": False},
            {"text": "<p>Tied second.</p>", "pm_score": 7, "selected": False},
        ],
    },
    {"qid": 103, "title": "Unanswered", "question": "<p>Nobody knows?</p>", "answers": []},
]


def _cfg(**kw):
    return PhysicsSourceConfig(**kw)


def _write_jsonl(path, records, gz=False):
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _write_parquet(path, records):
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def _h4_file(tmp_path, layout):
    if layout == "jsonl":
        return _write_jsonl(tmp_path / "physics.jsonl", H4_RECORDS)
    if layout == "jsonl.gz":
        return _write_jsonl(tmp_path / "physics.jsonl.gz", H4_RECORDS, gz=True)
    if layout == "json":
        p = tmp_path / "physics.json"
        p.write_text(json.dumps(H4_RECORDS))
        return p
    if layout == "json-data":
        p = tmp_path / "physics.json"
        p.write_text(json.dumps({"data": H4_RECORDS}))
        return p
    return _write_parquet(tmp_path / "physics.parquet", H4_RECORDS)


@pytest.mark.parametrize("layout", ["jsonl", "jsonl.gz", "json", "json-data", "parquet"])
def test_h4_layouts(tmp_path, layout):
    path = _h4_file(tmp_path, layout)
    examples, report = load_physics(str(path), _cfg())
    assert report.format == "h4"
    assert [e["id"] for e in examples] == ["101", "102"]
    sky, mass = examples
    assert sky["answer"] == "<p>Rayleigh scattering, accepted.</p>"  # selected beats a higher pm_score
    assert mass["answer"] == "<p>First of the best.</p>"  # highest pm_score, first on ties
    assert sky["references"] == [sky["answer"]]
    assert (sky["source"], sky["group"], sky["markup"], sky["context"], sky["answer_start"]) == (
        "physics",
        "physics:101",
        "html",
        "",
        -1,
    )
    assert report.questions == 3
    assert report.examples == 2
    assert report.skipped == {"no_answer": 1}


def test_h4_question_is_title_then_body(tmp_path):
    examples, _ = load_physics(str(_h4_file(tmp_path, "jsonl")), _cfg())
    sky, mass = examples
    assert sky["title"] == "Why is the sky blue?"
    assert html_to_blocks(sky["question"]) == ["Why is the sky blue?", "Light & air: why blue?"]
    assert mass["title"] == ""
    assert mass["question"] == "<p>What is mass?</p>"


def test_h4_title_markup_is_escaped(tmp_path):
    rec = dict(H4_RECORDS[0], title="Is a < b & c > d?")
    examples, _ = load_physics(str(_write_jsonl(tmp_path / "p.jsonl", [rec])), _cfg())
    assert html_to_blocks(examples[0]["question"])[0] == "Is a < b & c > d?"


def test_h4_limit(tmp_path):
    examples, _ = load_physics(str(_h4_file(tmp_path, "jsonl")), _cfg(), limit=1)
    assert [e["id"] for e in examples] == ["101"]


def test_h4_missing_field(tmp_path):
    bad = [H4_RECORDS[0], {"qid": 5, "answers": []}]
    path = _write_jsonl(tmp_path / "p.jsonl", bad)
    with pytest.raises(DataError, match=r"p\.jsonl:2: missing field 'question'"):
        load_physics(str(path), _cfg(format="h4"))


def test_h4_answer_without_text(tmp_path):
    rec = dict(H4_RECORDS[0], answers=[{"pm_score": 1}])
    with pytest.raises(DataError, match=r"answers\[0\]: missing field 'text'"):
        load_physics(str(_write_jsonl(tmp_path / "p.jsonl", [rec])), _cfg())


def test_h4_all_unanswered_is_empty(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", [H4_RECORDS[2]])
    with pytest.raises(DataError, match=r"physics source is empty.*no_answer"):
        load_physics(str(path), _cfg())


def test_h4_malformed_jsonl_names_line(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps(H4_RECORDS[0]) + "\n\n{not json\n")
    with pytest.raises(DataError, match=r"p\.jsonl: line 3: not valid JSON"):
        load_physics(str(p), _cfg(format="h4"))


# ----------------------------------------------------------------------------------- Posts.xml

POSTS_XML = """<?xml version="1.0" encoding="utf-8"?>
<posts>
  <row Id="1" PostTypeId="1" AcceptedAnswerId="3" Score="10" Title="Why does ice float &amp; not sink?"
       Body="&lt;p&gt;Ice is solid &amp;amp; water is liquid: $\\rho_{ice} &amp;lt; \\rho_w$?&lt;/p&gt;" />
  <row Id="2" PostTypeId="2" ParentId="1" Score="25" Body="&lt;p&gt;Popular but not accepted.&lt;/p&gt;" />
  <row Id="3" PostTypeId="2" ParentId="1" Score="3" Body="&lt;p&gt;Accepted: hydrogen bonds.&lt;/p&gt;" />
  <row Id="4" PostTypeId="1" Score="2" Title="What is spin?" Body="&lt;p&gt;Is it rotation?&lt;/p&gt;" />
  <row Id="5" PostTypeId="2" ParentId="4" Score="1" Body="&lt;p&gt;Low.&lt;/p&gt;" />
  <row Id="6" PostTypeId="2" ParentId="4" Score="8" Body="&lt;p&gt;Best spin answer.&lt;/p&gt;" />
  <row Id="7" PostTypeId="4" Score="0" Body="&lt;p&gt;Tag wiki excerpt.&lt;/p&gt;" />
  <row Id="8" PostTypeId="5" Score="0" Body="&lt;p&gt;Tag wiki.&lt;/p&gt;" />
  <row Id="9" PostTypeId="1" Score="1" Title="Unanswered question" Body="&lt;p&gt;Anyone?&lt;/p&gt;" />
</posts>
"""


def _write_posts(path, text=POSTS_XML, gz=False, bom=True):
    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.mark.parametrize("name", ["Posts.xml", "Posts.xml.gz"])
def test_posts_xml(tmp_path, name):
    path = _write_posts(tmp_path / name, gz=name.endswith(".gz"))
    examples, report = load_physics(str(path), _cfg())
    assert report.format == "posts_xml"
    assert [e["id"] for e in examples] == ["1", "4"]
    ice, spin = examples
    assert ice["answer"] == "<p>Accepted: hydrogen bonds.</p>"  # accepted despite the lower Score
    assert spin["answer"] == "<p>Best spin answer.</p>"  # highest Score
    assert ice["group"] == "se:1"
    assert ice["title"] == "Why does ice float & not sink?"
    assert html_to_blocks(ice["question"]) == [
        "Why does ice float & not sink?",
        "Ice is solid & water is liquid: $\\rho_{ice} < \\rho_w$?",
    ]
    assert report.questions == 3  # tag wiki rows (PostTypeId 4, 5) are not questions
    assert report.skipped == {"no_answer": 1}
    assert all("Tag wiki" not in e["answer"] and "Tag wiki" not in e["question"] for e in examples)


def test_posts_xml_accepted_answer_before_its_question(tmp_path):
    xml = """<?xml version="1.0" encoding="utf-8"?>
<posts>
  <row Id="10" PostTypeId="2" ParentId="11" Score="1" Body="early accepted" />
  <row Id="11" PostTypeId="1" AcceptedAnswerId="10" Title="Q" Body="body" />
  <row Id="12" PostTypeId="2" ParentId="11" Score="50" Body="late popular" />
</posts>"""
    examples, _ = load_physics(str(_write_posts(tmp_path / "Posts.xml", xml)), _cfg())
    assert [e["answer"] for e in examples] == ["early accepted"]


def test_posts_xml_limit(tmp_path):
    examples, _ = load_physics(str(_write_posts(tmp_path / "Posts.xml")), _cfg(), limit=1)
    assert [e["id"] for e in examples] == ["1"]


def test_posts_xml_malformed(tmp_path):
    path = _write_posts(
        tmp_path / "Posts.xml", '<?xml version="1.0"?>\n<posts>\n  <row Id="1" PostTypeId="1"\n</posts>'
    )
    with pytest.raises(DataError, match=r"Posts\.xml: malformed XML"):
        load_physics(str(path), _cfg())


def test_posts_xml_truncated_gzip(tmp_path):
    path = tmp_path / "Posts.xml.gz"
    path.write_bytes(gzip.compress(POSTS_XML.encode())[:-30])
    with pytest.raises(DataError, match=r"Posts\.xml\.gz"):
        load_physics(str(path), _cfg())


def test_posts_xml_wrong_root(tmp_path):
    xml = '<?xml version="1.0"?>\n<users>\n  <row Id="1" DisplayName="alice" />\n</users>\n'
    with pytest.raises(DataError, match=r"root element <users>, expected <posts>"):
        load_physics(str(_write_posts(tmp_path / "Users.xml", xml)), _cfg())


def test_posts_xml_entity_expansion_is_refused(tmp_path):
    xml = """<?xml version="1.0"?>
<!DOCTYPE posts [
  <!ENTITY lol "lol">
  <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<posts>
  <row Id="1" PostTypeId="1" Title="t" Body="&lol3;" />
  <row Id="2" PostTypeId="2" ParentId="1" Score="1" Body="&lol3;" />
</posts>
"""
    with pytest.raises(DataError, match=r"Posts\.xml: refused unsafe XML"):
        load_physics(str(_write_posts(tmp_path / "Posts.xml", xml)), _cfg())


def test_posts_xml_external_entity_is_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    xml = f"""<?xml version="1.0"?>
<!DOCTYPE posts [<!ENTITY xxe SYSTEM "file://{secret}">]>
<posts>
  <row Id="1" PostTypeId="1" Title="t" Body="q" />
  <row Id="2" PostTypeId="2" ParentId="1" Score="1" Body="&xxe;" />
</posts>
"""
    with pytest.raises(DataError, match="refused unsafe XML"):
        load_physics(str(_write_posts(tmp_path / "Posts.xml", xml)), _cfg())


def test_posts_xml_answer_without_parent(tmp_path):
    xml = '<posts><row Id="1" PostTypeId="1" Body="q"/><row Id="2" PostTypeId="2" Body="a"/></posts>'
    with pytest.raises(DataError, match="answer row Id='2' without a ParentId"):
        load_physics(str(_write_posts(tmp_path / "Posts.xml", xml)), _cfg())


# ----------------------------------------------------------------------------------- Q/A pairs

URL1 = "https://physics.stackexchange.com/questions/1"
URL2 = "https://physics.stackexchange.com/questions/2"
PAIRS = [
    {"Q": "Why is the sky blue?", "A": "Second best answer.", "meta": {"url": URL1, "answer_score": "3"}},
    {"Q": "Why is the sky blue?", "A": "Rayleigh scattering.", "meta": {"url": URL1, "answer_score": "12"}},
    {"Q": "What is $E = mc^2$?", "A": "Mass-energy equivalence.", "meta": {"url": URL2, "answer_score": "1"}},
]


def test_pairs_jsonl_grouped_by_url(tmp_path):
    path = _write_jsonl(tmp_path / "stackmathqa.jsonl", PAIRS)
    examples, report = load_physics(str(path), _cfg())
    assert report.format == "pairs"
    assert [e["id"] for e in examples] == [URL1, URL2]
    assert [e["group"] for e in examples] == [f"pairs:{URL1}", f"pairs:{URL2}"]
    assert examples[0]["answer"] == "Second best answer."  # no score field: first answer of the group
    assert examples[1]["question"] == "What is $E = mc^2$?"
    assert examples[1]["markup"] == "text"
    assert report.questions == 2


def test_pairs_jsonl_best_by_score(tmp_path):
    path = _write_jsonl(tmp_path / "stackmathqa.jsonl.gz", PAIRS, gz=True)
    cfg = _cfg(fields=PairFieldsConfig(score="meta.answer_score"))
    examples, _ = load_physics(str(path), cfg)
    assert [e["answer"] for e in examples] == ["Rayleigh scattering.", "Mass-energy equivalence."]


def test_pairs_empty_answer_is_skipped(tmp_path):
    rows = [*PAIRS, {"Q": "Empty?", "A": "  ", "meta": {"url": "u3"}}]
    examples, report = load_physics(str(_write_jsonl(tmp_path / "p.jsonl", rows)), _cfg())
    assert len(examples) == 2
    assert report.skipped == {"no_answer": 1}


def test_pairs_without_a_group_value_are_not_merged(tmp_path):
    rows = [
        {"Q": "What is torque?", "A": "A turning force.", "meta": {"url": None}},
        {"Q": "What is entropy?", "A": "A measure of disorder.", "meta": {"url": None}},
    ]
    path = _write_jsonl(tmp_path / "p.jsonl", rows)
    try:
        examples, _ = load_physics(str(path), _cfg())
    except DataError:  # refusing the file is fine too; silently losing a question is not
        return
    assert sorted(e["question"] for e in examples) == ["What is entropy?", "What is torque?"]


def _write_csv(path, rows, fieldnames):
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fieldnames, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


CSV_ROWS = [
    {"thread": "t1", "heading": "Pendulum", "question": "Why is the period fixed?", "answer": "Nine.", "votes": "9"},
    {"thread": "t1", "heading": "Pendulum", "question": "Why is the period fixed?", "answer": "Ten.", "votes": "10"},
    {"thread": "t2", "heading": "", "question": "Is light a wave?", "answer": "Both, in a sense.", "votes": ""},
]
CSV_FIELDS = PairFieldsConfig(question="question", answer="answer", group="thread", score="votes", title="heading")


def test_pairs_csv_custom_fields(tmp_path):
    path = _write_csv(tmp_path / "pairs.csv", CSV_ROWS, list(CSV_ROWS[0]))
    examples, report = load_physics(str(path), _cfg(fields=CSV_FIELDS))
    assert report.format == "pairs"
    assert [e["id"] for e in examples] == ["t1", "t2"]
    assert examples[0]["answer"] == "Ten."  # scores compare as numbers: 10 > 9
    assert examples[0]["title"] == "Pendulum"
    assert examples[0]["question"] == "Pendulum\n\nWhy is the period fixed?"
    assert examples[1]["question"] == "Is light a wave?"


def test_pairs_html_markup(tmp_path):
    path = _write_csv(tmp_path / "pairs.csv", CSV_ROWS, list(CSV_ROWS[0]))
    examples, _ = load_physics(str(path), _cfg(fields=CSV_FIELDS, pairs_markup="html"))
    assert examples[0]["markup"] == "html"
    assert html_to_blocks(examples[0]["question"]) == ["Pendulum", "Why is the period fixed?"]


def test_pairs_missing_field_in_first_record_names_field_and_line(tmp_path):
    path = _write_csv(tmp_path / "pairs.csv", CSV_ROWS, ["thread", "heading", "question", "votes"])
    with pytest.raises(DataError, match=r"pairs\.csv:2: .*missing field 'answer'"):
        load_physics(str(path), _cfg(fields=CSV_FIELDS))


def test_pairs_missing_field_in_later_record_names_field_and_line(tmp_path):
    p = tmp_path / "pairs.jsonl"
    p.write_text(
        json.dumps(PAIRS[0])
        + "\n\n"
        + json.dumps(PAIRS[1])
        + "\n"
        + json.dumps({"Q": "x", "meta": {"url": "u"}})
        + "\n"
    )
    with pytest.raises(DataError, match=r"pairs\.jsonl:4: missing field 'A'"):
        load_physics(str(p), _cfg())


def test_pairs_missing_nested_group_field(tmp_path):
    p = _write_jsonl(tmp_path / "pairs.jsonl", [PAIRS[0], {"Q": "x", "A": "y", "meta": {}}])
    with pytest.raises(DataError, match=r"pairs\.jsonl:2: missing field 'meta\.url'"):
        load_physics(str(p), _cfg(format="pairs"))


# ----------------------------------------------------------------------------------- detect_format


def test_detect_format(tmp_path):
    cfg = _cfg()
    assert detect_format(_h4_file(tmp_path, "jsonl"), cfg) == "h4"
    assert detect_format(_h4_file(tmp_path, "parquet"), cfg) == "h4"
    assert detect_format(_write_posts(tmp_path / "Posts.xml"), cfg) == "posts_xml"
    assert detect_format(_write_posts(tmp_path / "Posts.xml.gz", gz=True), cfg) == "posts_xml"
    assert detect_format(_write_jsonl(tmp_path / "pairs.jsonl", PAIRS), cfg) == "pairs"
    csv_path = _write_csv(tmp_path / "pairs.csv", CSV_ROWS, list(CSV_ROWS[0]))
    assert detect_format(csv_path, _cfg(fields=CSV_FIELDS)) == "pairs"


def test_detect_format_sniffs_xml_without_extension(tmp_path):
    assert detect_format(_write_posts(tmp_path / "dump"), _cfg()) == "posts_xml"
    assert detect_format(_write_posts(tmp_path / "dump2", gz=True), _cfg()) == "posts_xml"
    no_decl = _write_posts(tmp_path / "dump3", "\n  <posts><row Id='1' PostTypeId='1'/></posts>", bom=False)
    assert detect_format(no_decl, _cfg()) == "posts_xml"


def test_detect_format_unknown_file_type(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("just some text\n")
    with pytest.raises(DataError, match="unrecognised file type"):
        detect_format(p, _cfg())


def test_detect_format_neither_schema(tmp_path):
    p = _write_jsonl(tmp_path / "x.jsonl", [{"foo": 1, "bar": 2}])
    with pytest.raises(DataError, match=r"x\.jsonl:1: neither the H4 schema.*missing field 'Q'.*bar, foo"):
        detect_format(p, _cfg())


def test_detect_format_empty_file(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text("\n")
    with pytest.raises(DataError, match="empty"):
        detect_format(p, _cfg())


def test_detect_format_explicit_config_wins(tmp_path):
    path = _write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    assert detect_format(path, _cfg(format="h4")) == "h4"


# ----------------------------------------------------------------------------------- paths


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        load_physics(str(tmp_path / "nope.jsonl"), _cfg())


def test_directory(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        load_physics(str(tmp_path), _cfg())


def test_hub_id_with_a_local_only_format(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="needs a local file"):
        load_physics("someone/physics-pairs", _cfg(format="pairs"))
