"""The data stage on the real public files in ../shared/data (skipped where that folder is absent)."""

from __future__ import annotations

import gzip
import json
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import datasets
import pytest

from qa_ebm.config import load_config
from qa_ebm.data.clean import html_to_blocks, join_blocks
from qa_ebm.data.physics import load_physics
from qa_ebm.data.preprocess import SPLITS, preprocess

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SQUAD_V1 = SHARED / "squad" / "squad-v1.1-dev-open.json.gz"
SQUAD_V2 = SHARED / "squad" / "squad-v2.0-dev-open.json.gz"
PAIRS = SHARED / "physics_se" / "physics-se-stackmathqa-open.jsonl.gz"
POSTS = SHARED / "physics_se" / "other_sites" / "matheducators.stackexchange.com_Posts_2014-05-03.xml.gz"

pytestmark = [
    pytest.mark.shared_data,
    pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not present"),
]


def config(*overrides: str):
    return load_config(ROOT / "configs" / "tiny.yaml", ["data.tokenizer.vocab_size=2000", *overrides])


def _squad_questions(path: Path) -> list[dict]:
    doc = json.loads(gzip.open(path, "rt").read())
    return [qa for a in doc["data"] for p in a["paragraphs"] for qa in p["qas"]]


@pytest.mark.slow
def test_squad_v1_end_to_end(tmp_path):
    result = preprocess(config(), tmp_path / "out", squad=str(SQUAD_V1))
    m = result.manifest
    assert m["sources"][0]["questions"] == len(_squad_questions(SQUAD_V1)) == 9364
    assert m["unanswerable"] == dict.fromkeys(SPLITS, 0)
    dsd = datasets.load_from_disk(str(result.out / "dataset"))
    titles = {split: set(dsd[split].select_columns(["title"])[:]["title"]) for split in SPLITS}
    assert not titles["train"] & titles["val"] and not titles["train"] & titles["test"]
    assert not titles["val"] & titles["test"]
    rows = dsd["val"].select_columns(["context", "answer", "answer_start", "references"])[:]
    columns = (rows["context"], rows["answer"], rows["answer_start"], rows["references"])
    for context, answer, start, refs in zip(*columns, strict=True):
        assert context[start : start + len(answer)] == answer and answer in refs


@pytest.mark.slow
def test_squad_v2_flags_unanswerable(tmp_path):
    result = preprocess(config(), tmp_path / "out", squad=str(SQUAD_V2))
    questions = _squad_questions(SQUAD_V2)
    expected = sum(bool(qa.get("is_impossible")) for qa in questions)
    assert result.manifest["sources"][0]["unanswerable"] == expected == 4704
    assert sum(result.manifest["unanswerable"].values()) == expected


def test_physics_pairs_group_by_question_url(tmp_path):
    rows = [json.loads(line) for line in gzip.open(PAIRS, "rt")]
    urls = Counter(r["meta"]["url"] for r in rows)
    result = preprocess(config(), tmp_path / "out", physics=str(PAIRS))
    source = result.manifest["sources"][0]
    assert source["format"] == "pairs" and source["questions"] == len(urls)
    kept = sum(result.manifest["counts"].values())
    assert kept + sum(result.manifest["filter_drops"]["physics"].values()) == len(urls)


def test_posts_xml_accepted_else_best_scored():
    root = ET.fromstring(gzip.open(POSTS).read().decode("utf-8-sig"))
    posts = [r.attrib for r in root.iter("row")]
    questions = {p["Id"]: p for p in posts if p["PostTypeId"] == "1"}
    answers = [p for p in posts if p["PostTypeId"] == "2"]
    by_parent: dict[str, list[dict]] = {}
    for a in answers:
        by_parent.setdefault(a["ParentId"], []).append(a)
    examples, report = load_physics(str(POSTS), config().data.physics)
    assert report.format == "posts_xml" and report.questions == len(questions) == 397
    assert report.skipped.get("no_answer", 0) == sum(1 for q in questions if q not in by_parent)
    answer_of = {e["id"]: e["answer"] for e in examples}
    checked_accepted = checked_scored = 0
    for qid, q in questions.items():
        if qid not in by_parent:
            continue
        accepted = [a for a in by_parent[qid] if a["Id"] == q.get("AcceptedAnswerId")]
        expected = accepted[0] if accepted else max(by_parent[qid], key=lambda a: int(a["Score"]))
        assert answer_of[qid] == expected["Body"]
        checked_accepted += bool(accepted)
        checked_scored += not accepted
    assert checked_accepted == 189 and checked_scored > 100
    first = next(e for e in examples if e["title"])
    assert join_blocks(html_to_blocks(first["question"])).startswith(first["title"])


def test_posts_xml_end_to_end(tmp_path):
    result = preprocess(config("data.max_sentences=20"), tmp_path / "out", physics=str(POSTS))
    assert result.manifest["sources"][0]["format"] == "posts_xml"
    assert result.manifest["counts"]["train"] > 200
