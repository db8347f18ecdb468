import copy
import gzip
import json

import pytest

from qa_ebm.config import SquadSourceConfig
from qa_ebm.data.squad import load_squad
from qa_ebm.errors import DataError
from qa_ebm.io import sha256_file

CTX_DANUBE = "The Danube is the second-longest river in Europe. It flows into the Black Sea."
CTX_HELIUM = "Helium is a chemical element with symbol He, the second lightest element."

SQUAD_V1 = {
    "version": "1.1",
    "data": [
        {
            "title": "Danube",
            "paragraphs": [
                {
                    "context": CTX_DANUBE,
                    "qas": [
                        {
                            "id": "q1",
                            "question": "Where does the Danube flow?",
                            "answers": [
                                {"text": "the Black Sea", "answer_start": CTX_DANUBE.index("the Black Sea")},
                                {"text": "Black Sea", "answer_start": CTX_DANUBE.index("Black Sea")},
                            ],
                        },
                        {
                            "id": "q2",
                            "question": "Which river is the Danube compared with?",
                            "answers": [{"text": "river", "answer_start": CTX_DANUBE.index("river")}],
                        },
                    ],
                },
                {
                    "context": "Vienna lies on the Danube.",
                    "qas": [
                        {
                            "id": "q3",
                            "question": "Which city lies on the Danube?",
                            "answers": [{"text": "Vienna", "answer_start": 0}],
                        }
                    ],
                },
            ],
        },
        {
            "title": "Helium",
            "paragraphs": [
                {
                    "context": CTX_HELIUM,
                    "qas": [
                        {
                            "id": "q4",
                            "question": "What is the symbol of helium?",
                            "answers": [{"text": "He", "answer_start": CTX_HELIUM.index("He,")}],
                        }
                    ],
                }
            ],
        },
    ],
}

SQUAD_V2 = {
    "version": "v2.0",
    "data": [
        {
            "title": "Helium",
            "paragraphs": [
                {
                    "context": CTX_HELIUM,
                    "qas": [
                        {
                            "id": "a1",
                            "question": "What is the symbol of helium?",
                            "answers": [{"text": "He", "answer_start": CTX_HELIUM.index("He,")}],
                            "is_impossible": False,
                        },
                        {
                            "id": "a2",
                            "question": "Who discovered helium on Mars?",
                            "answers": [],
                            "plausible_answers": [{"text": "He", "answer_start": CTX_HELIUM.index("He,")}],
                            "is_impossible": True,
                        },
                    ],
                }
            ],
        }
    ],
}


def _write(path, obj, gz=False):
    data = json.dumps(obj, indent=2).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return str(path)


def _load(spec, keep_unanswerable=True, limit=None):
    return load_squad(spec, SquadSourceConfig(keep_unanswerable=keep_unanswerable), limit=limit)


@pytest.mark.parametrize("name", ["dev-v1.1.json", "dev-v1.1.json.gz"])
def test_v1_one_example_per_question(tmp_path, name):
    spec = _write(tmp_path / name, SQUAD_V1, gz=name.endswith(".gz"))
    examples, report = _load(spec)
    assert [e["id"] for e in examples] == ["q1", "q2", "q3", "q4"]
    q1 = examples[0]
    assert q1 == {
        "id": "q1",
        "source": "squad",
        "group": "squad:Danube",
        "title": "Danube",
        "question": "Where does the Danube flow?",
        "context": CTX_DANUBE,
        "answer": "the Black Sea",
        "references": ["the Black Sea", "Black Sea"],
        "answer_start": CTX_DANUBE.index("the Black Sea"),
        "is_impossible": False,
        "markup": "text",
    }
    for e in examples:
        assert e["context"][e["answer_start"] : e["answer_start"] + len(e["answer"])] == e["answer"]
    assert (report.questions, report.examples, report.unanswerable) == (4, 4, 0)
    assert (report.kind, report.format, report.name) == ("local", "squad-json", "squad")
    assert report.files == [
        {"path": spec, "bytes": (tmp_path / name).stat().st_size, "sha256": sha256_file(tmp_path / name)}
    ]


def test_group_is_the_article_title(tmp_path):
    examples, _ = _load(_write(tmp_path / "s.json", SQUAD_V1))
    assert {e["id"]: e["group"] for e in examples} == {
        "q1": "squad:Danube",
        "q2": "squad:Danube",
        "q3": "squad:Danube",  # another paragraph, same article
        "q4": "squad:Helium",
    }


@pytest.mark.parametrize("gz", [False, True])
def test_v2_unanswerable_kept_and_flagged(tmp_path, gz):
    examples, report = _load(_write(tmp_path / "dev-v2.0.json", SQUAD_V2, gz=gz))
    by_id = {e["id"]: e for e in examples}
    assert set(by_id) == {"a1", "a2"}
    assert by_id["a1"]["is_impossible"] is False
    assert by_id["a1"]["answer"] == "He"
    impossible = by_id["a2"]
    assert impossible["is_impossible"] is True
    assert (impossible["answer"], impossible["references"], impossible["answer_start"]) == ("", [], -1)
    assert (report.questions, report.examples, report.unanswerable) == (2, 2, 1)


def test_v2_unanswerable_skipped_when_not_kept(tmp_path):
    examples, report = _load(_write(tmp_path / "dev-v2.0.json", SQUAD_V2), keep_unanswerable=False)
    assert [e["id"] for e in examples] == ["a1"]
    assert report.skipped == {"unanswerable": 1}
    assert report.unanswerable == 1


def test_question_without_answers_is_unanswerable_even_without_flag(tmp_path):
    doc = copy.deepcopy(SQUAD_V1)
    doc["data"][1]["paragraphs"][0]["qas"][0]["answers"] = []
    examples, report = _load(_write(tmp_path / "s.json", doc))
    assert examples[-1]["is_impossible"] is True
    assert report.unanswerable == 1


def test_integer_ids_become_strings(tmp_path):
    doc = copy.deepcopy(SQUAD_V1)
    doc["data"][1]["paragraphs"][0]["qas"][0]["id"] = 42
    examples, _ = _load(_write(tmp_path / "s.json", doc))
    assert examples[-1]["id"] == "42"


def test_duplicate_ids_are_skipped(tmp_path):
    doc = copy.deepcopy(SQUAD_V1)
    doc["data"][1]["paragraphs"][0]["qas"][0]["id"] = "q1"
    examples, report = _load(_write(tmp_path / "s.json", doc))
    assert [e["id"] for e in examples] == ["q1", "q2", "q3"]
    assert report.skipped == {"duplicate_id": 1}


def test_limit(tmp_path):
    examples, report = _load(_write(tmp_path / "s.json", SQUAD_V1), limit=2)
    assert [e["id"] for e in examples] == ["q1", "q2"]
    assert report.examples == 2


def test_utf8_bom_is_accepted(tmp_path):
    p = tmp_path / "bom.json"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(SQUAD_V1).encode())
    examples, _ = _load(str(p))
    assert len(examples) == 4


# ----------------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    spec = str(tmp_path / "nope.json")
    with pytest.raises(DataError, match=r"nope\.json: no such file or directory"):
        _load(spec)


@pytest.mark.parametrize("spec", ["./missing-squad", "missing.json", "missing.json.gz", "~/no/such/squad"])
def test_nonexistent_path_that_looks_like_a_path(spec):
    with pytest.raises(DataError, match="no such file or directory"):
        _load(spec)


def test_malformed_json_names_file_and_line(tmp_path):
    p = tmp_path / "broken.json"
    p.write_text('{\n  "data": [\n    {"title": "x",,}\n  ]\n}\n')
    with pytest.raises(DataError, match=r"broken\.json: not valid JSON .*line 3"):
        _load(str(p))


def test_malformed_gzipped_json(tmp_path):
    p = tmp_path / "broken.json.gz"
    p.write_bytes(gzip.compress(b'{"data": [\n'))
    with pytest.raises(DataError, match=r"broken\.json\.gz: not valid JSON .*line 2"):
        _load(str(p))


def test_truncated_gzip_is_a_data_error(tmp_path):
    p = tmp_path / "cut.json.gz"
    p.write_bytes(gzip.compress(json.dumps(SQUAD_V1).encode())[:-20])
    with pytest.raises(DataError, match=r"cut\.json\.gz"):
        _load(str(p))


def test_non_utf8_file_is_a_data_error(tmp_path):
    p = tmp_path / "utf16.json"
    p.write_bytes(json.dumps(SQUAD_V1).encode("utf-16"))
    with pytest.raises(DataError, match=r"utf16\.json: cannot read \(UnicodeDecodeError"):
        _load(str(p))


def test_missing_question_field_names_path_and_field(tmp_path):
    doc = copy.deepcopy(SQUAD_V1)
    del doc["data"][0]["paragraphs"][0]["qas"][0]["question"]
    with pytest.raises(DataError, match=r"data\[0\]\.paragraphs\[0\]\.qas\[0\]: missing field 'question'"):
        _load(_write(tmp_path / "s.json", doc))


def test_wrong_field_type_names_path(tmp_path):
    doc = copy.deepcopy(SQUAD_V1)
    doc["data"][1]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = "42"
    with pytest.raises(
        DataError, match=r"data\[1\]\.paragraphs\[0\]\.qas\[0\]\.answers\[0\]\.answer_start: expected int, got str"
    ):
        _load(_write(tmp_path / "s.json", doc))


def test_missing_title_names_article(tmp_path):
    doc = copy.deepcopy(SQUAD_V1)
    del doc["data"][1]["title"]
    with pytest.raises(DataError, match=r"data\[1\]: missing field 'title'"):
        _load(_write(tmp_path / "s.json", doc))


@pytest.mark.parametrize("doc", [[], {"version": "1.1"}, {"data": {"title": "x"}}])
def test_not_squad_json(tmp_path, doc):
    with pytest.raises(DataError, match="not SQuAD JSON"):
        _load(_write(tmp_path / "s.json", doc))


def test_empty_data_list(tmp_path):
    with pytest.raises(DataError, match="the SQuAD source is empty"):
        _load(_write(tmp_path / "s.json", {"version": "1.1", "data": []}))


def test_all_unanswerable_and_not_kept_is_empty(tmp_path):
    doc = copy.deepcopy(SQUAD_V2)
    del doc["data"][0]["paragraphs"][0]["qas"][0]
    with pytest.raises(DataError, match="empty"):
        _load(_write(tmp_path / "s.json", doc), keep_unanswerable=False)


def test_directory(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        _load(str(tmp_path))


def test_hub_id_offline_points_to_a_local_file(tmp_path, monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    # An empty cache, so a copy cached on this machine cannot make the load succeed.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)  # no local ./rajpurkar/squad
    with pytest.raises(DataError, match=r"cannot load 'rajpurkar/squad'.*offline\? pass a local file") as e:
        _load("rajpurkar/squad")
    assert "--squad" in str(e.value)
