"""The `qa-ebm` command: success output, and one clear line with exit status 2 for every bad input."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qa_ebm.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
SQUAD = str(ROOT / "data" / "squad_sample.json")
PHYSICS = str(ROOT / "data" / "physics_sample.jsonl")
TINY = str(ROOT / "configs" / "tiny.yaml")


def preprocess(tmp_path: Path, *args: str) -> list[str]:
    return ["preprocess", "--config", TINY, "--set", "data.tokenizer.vocab_size=800", *args]


def fails_cleanly(capsys, argv: list[str], *fragments: str) -> str:
    """Exit status 2, exactly one error line on stderr (progress bars aside), no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.strip() and "examples/s" not in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_end_to_end_on_the_samples(tmp_path, capsys):
    out = tmp_path / "data"
    assert main(preprocess(tmp_path, "--squad", SQUAD, "--physics", PHYSICS, "--out", str(out))) == 0
    stdout = capsys.readouterr().out
    for fragment in ("sources", "squad", "physics", "filter: max_sentences", "train", "val", "test", f"wrote {out}"):
        assert fragment in stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert sum(manifest["counts"].values()) == 179 + 148


def test_missing_file(tmp_path, capsys):
    fails_cleanly(
        capsys,
        preprocess(tmp_path, "--squad", "nope/train.json", "--out", str(tmp_path / "o")),
        "nope/train.json",
        "no such file",
    )


def test_compressed_wrong(tmp_path, capsys):
    bad = tmp_path / "train.json.gz"
    bad.write_text('{"data": []}')
    fails_cleanly(capsys, preprocess(tmp_path, "--squad", str(bad), "--out", str(tmp_path / "o")), str(bad), "not gzip")
    truncated = tmp_path / "cut.json.gz"
    truncated.write_bytes(gzip.compress(Path(SQUAD).read_bytes())[:2000])
    fails_cleanly(capsys, preprocess(tmp_path, "--squad", str(truncated), "--out", str(tmp_path / "o")), str(truncated))


def test_malformed_json(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"qid": 1, "question": "q", "answers": []}\n{"qid": 2, "question": \n')
    fails_cleanly(
        capsys,
        preprocess(tmp_path, "--physics", str(bad), "--out", str(tmp_path / "o")),
        str(bad),
        "line 2",
        "not valid JSON",
    )


def test_wrong_schema_names_field_and_place(tmp_path, capsys):
    bad = tmp_path / "squad.json"
    bad.write_text(
        json.dumps({"data": [{"title": "T", "paragraphs": [{"context": "c", "qas": [{"id": "1", "answers": []}]}]}]})
    )
    fails_cleanly(
        capsys,
        preprocess(tmp_path, "--squad", str(bad), "--out", str(tmp_path / "o")),
        "data[0].paragraphs[0].qas[0]",
        "missing field 'question'",
    )
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"Q": "q?", "Answer": "a.", "meta": {"url": "u"}}) + "\n")
    fails_cleanly(
        capsys,
        preprocess(tmp_path, "--physics", str(pairs), "--out", str(tmp_path / "o")),
        f"{pairs}:1",
        "missing field 'A'",
    )


def test_empty_source(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    fails_cleanly(capsys, preprocess(tmp_path, "--physics", str(empty), "--out", str(tmp_path / "o")), "empty")
    squad = tmp_path / "squad.json"
    squad.write_text('{"version": "1.1", "data": []}')
    fails_cleanly(capsys, preprocess(tmp_path, "--squad", str(squad), "--out", str(tmp_path / "o")), "empty")


def test_everything_dropped(tmp_path, capsys):
    argv = preprocess(tmp_path, "--physics", PHYSICS, "--out", str(tmp_path / "o"), "--set", "data.max_sentences=2")
    line = fails_cleanly(capsys, argv, "all examples were dropped", "max_sentences", "--set data.max_sentences=")
    assert line.endswith("--set data.max_sentences=11")  # keeps 95% of the physics sample's answers


def test_output_exists(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    fails_cleanly(capsys, preprocess(tmp_path, "--physics", PHYSICS, "--out", str(out)), str(out), "--overwrite")
    assert (out / "keep.txt").read_text() == "precious"
    assert main(preprocess(tmp_path, "--physics", PHYSICS, "--out", str(out), "--overwrite")) == 0
    assert not (out / "keep.txt").exists() and (out / "manifest.json").exists()


def test_hub_id_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = fails_cleanly(
        capsys, preprocess(tmp_path, "--squad", "rajpurkar/squad", "--out", str(tmp_path / "o")), "rajpurkar/squad"
    )
    assert "Hub" in line and "local file" in line


def test_config_errors(tmp_path, capsys):
    argv = preprocess(tmp_path, "--squad", SQUAD, "--out", str(tmp_path / "o"), "--set", "data.max_wrods=3")
    fails_cleanly(capsys, argv, "unknown key 'data.max_wrods'", "max_words")
    fails_cleanly(capsys, ["preprocess", "--out", str(tmp_path / "o")], "--squad and/or --physics")


def test_usage_error_is_status_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["preprocess"])
    assert e.value.code == 2
    assert "--out" in capsys.readouterr().err


def test_debug_shows_the_traceback(tmp_path, capsys):
    assert main([*preprocess(tmp_path, "--squad", "missing.json", "--out", str(tmp_path / "o")), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_console_script_in_a_real_process(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "qa_ebm.cli.main"]
    help_ = subprocess.run([*cmd, "preprocess", "--help"], capture_output=True, text=True, env=env, check=True)
    assert "--squad" in help_.stdout and "--overwrite" in help_.stdout
    bad = subprocess.run(
        [*cmd, *preprocess(tmp_path, "--squad", "missing.json", "--out", str(tmp_path / "o"))],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "qa-ebm preprocess: error: missing.json: no such file or directory "
        "(expected a SQuAD JSON file or a Hub id, e.g. data/squad_sample.json or rajpurkar/squad)"
    ]
