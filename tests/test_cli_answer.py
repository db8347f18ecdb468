"""`qa-ebm answer` / `evaluate` / `pipeline run`: bad input is one line on stderr, exit 2, nothing written."""

from __future__ import annotations

import json

import pytest

from qa_ebm.cli.answer import pipeline_mode, read_batch
from qa_ebm.cli.main import main
from qa_ebm.errors import DataError


def _run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def test_missing_context_file_and_missing_context(tmp_path, capsys):
    (tmp_path / "reading_pipeline.json").write_text("{}")  # a reading pipeline: inputs are checked before loading
    code, err = _run(capsys, "answer", "--pipeline", str(tmp_path), "Who?", "--context-file", str(tmp_path / "no.txt"))
    assert code == 2 and "no.txt: file not found" in err and len(err.splitlines()) == 1
    code, err = _run(capsys, "answer", "--pipeline", str(tmp_path), "Who?")
    assert code == 2 and "give --context TEXT or --context-file FILE" in err


def test_question_xor_input(tmp_path, capsys):
    code, err = _run(capsys, "answer", "--pipeline", str(tmp_path))
    assert code == 2 and "--input" in err


def test_batch_lines_are_checked_with_their_line_number(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"id": "a", "question": "Who?", "context": "Tesla was here."}\n\n{"id": "b", "question": 3}\n')
    with pytest.raises(DataError, match=r"q.jsonl line 3: field 'question' must be a string"):
        read_batch(str(path))
    path.write_text("{not json\n")
    with pytest.raises(DataError, match="line 1: not valid JSON"):
        read_batch(str(path))
    path.write_text("Who came?\n")  # a plain question line: fine for an answer pipeline, not for reading
    assert read_batch(str(path), need_context=False) == [{"id": "1", "question": "Who came?", "context": None}]
    with pytest.raises(DataError, match="line 1: field 'context' must be a string"):
        read_batch(str(path))
    path.write_text(json.dumps({"id": "a", "question": "Who?", "context": "Tesla."}) + "\n")
    assert read_batch(str(path)) == [{"id": "a", "question": "Who?", "context": "Tesla."}]


def test_mode_flags_map_to_pipeline_modes():
    import argparse

    def ns(**kw):
        return argparse.Namespace(**{"mode": "extract", "steps": 0, "rank_by": "total", **kw})

    assert pipeline_mode(ns()) == ("rank", None)
    assert pipeline_mode(ns(rank_by="energy")) == ("energy", None)
    assert pipeline_mode(ns(steps=5)) == ("refine", 5)
    assert pipeline_mode(ns(mode="proposal")) == ("proposal", None)
    assert pipeline_mode(ns(mode="generate", steps=3)) == ("generate", 3)
    with pytest.raises(DataError, match="--steps"):
        pipeline_mode(ns(steps=-1))


def test_pipeline_file_errors(tmp_path, capsys):
    code, err = _run(capsys, "pipeline", "run", str(tmp_path / "none.yaml"))
    assert code == 2 and "pipeline file not found" in err
    spec = tmp_path / "p.yaml"
    spec.write_text("stages: [train_hvae, preprocess]\n")
    code, err = _run(capsys, "pipeline", "run", str(spec))
    assert code == 2 and "out of order" in err
    spec.write_text("stages: [preprocess]\nsteps: 3\n")
    code, err = _run(capsys, "pipeline", "run", str(spec))
    assert code == 2 and "unknown key 'steps'" in err
