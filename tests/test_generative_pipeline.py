"""The answer pipeline (`qa-ebm export`, `answer` without a passage, `verify`) on tiny runs trained here."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny import sample_data, tiny_config

from qa_ebm.cli.main import main
from qa_ebm.errors import CheckpointError, ConfigError, DataError
from qa_ebm.pipeline import load_pipeline
from qa_ebm.pipeline.generative import FORMAT_VERSION, PIPELINE_FILE, Calibration, QAPipeline, question_seed
from qa_ebm.pipeline.sampling import build_from_config
from qa_ebm.training.baseline_trainer import train_baseline
from qa_ebm.training.ebt_trainer import train_ebt
from qa_ebm.training.hvae_trainer import train_hvae

BASELINE = ["train_baseline.steps=2", "train_baseline.warmup_steps=1", "train_baseline.eval_every=2"]
BASELINE += ["train_baseline.save_every=2", "train_baseline.batch_size=8", "train_baseline.max_answer_tokens=24"]
QUESTIONS = ["Where did Tesla move in 1884?", "What does a capacitor store?", "Who founded Harvard?"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("generative")
    config = tiny_config("ebt.use_context=false", "train_ebt.steps=6")
    sample_data(config, base / "data")
    train_hvae(config, base / "data", base / "hvae", progress=False)
    train_ebt(config, base / "hvae", base / "ebt", progress=False)
    train_ebt(tiny_config("train_ebt.objective=regress"), base / "hvae", base / "regress", progress=False)
    train_baseline(tiny_config(*BASELINE), base / "hvae", base / "baseline", progress=False)
    return {name: base / name for name in ("hvae", "ebt", "regress", "baseline", "data")}


@pytest.fixture(scope="module")
def pipe_dir(runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("pipe") / "pipeline"
    assert main(["export", "--hvae", str(runs["hvae"]), "--ebt", str(runs["ebt"]), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def pipe(pipe_dir) -> QAPipeline:
    return QAPipeline.from_pretrained(pipe_dir)


def test_export_round_trip_gives_the_same_answers(runs, pipe_dir, pipe):
    fresh = QAPipeline.from_runs(runs["hvae"], runs["ebt"])
    a, b = fresh(QUESTIONS, candidates=2), pipe(QUESTIONS, candidates=2)
    assert [x.to_dict() for x in a] == [x.to_dict() for x in b]
    meta = json.loads((pipe_dir / PIPELINE_FILE).read_text())
    assert meta["version"] == FORMAT_VERSION and meta["sampler"]["name"] == "gd"
    assert meta["sampler"]["max_steps"] == 3  # train_ebt.eval_steps: the sampler train-ebt evaluated with
    assert abs(sum(meta["sentence_counts"]) - 1) < 1e-9 and len(meta["sentence_counts"]) == 4
    cal = pipe.calibration
    assert cal is not None and len(cal.gold) == len(cal.negative) > 0 and cal.gold == sorted(cal.gold)


def test_answers_do_not_depend_on_the_batch(pipe):
    together = pipe(QUESTIONS, candidates=3, batch_size=2)
    alone = [pipe(q, candidates=3)[0] for q in QUESTIONS]
    for a, b in zip(together, alone, strict=True):
        assert a.text == b.text and a.steps == b.steps and a.energy == pytest.approx(b.energy, abs=1e-5)
    assert pipe(QUESTIONS[0], seed=1)[0].candidates != pipe(QUESTIONS[0], seed=2)[0].candidates


def test_best_of_n_keeps_the_lowest_energy(pipe):
    for a in pipe(QUESTIONS, candidates=4):
        energies = [c["energy"] for c in a.candidates]
        assert len(energies) == 4 and a.energy == min(energies)
        assert 1 <= a.sentences <= 4 and isinstance(a.text, str) and 0 <= a.steps <= 3


def test_refinement_over_the_used_slots_matches_refinement_over_all(pipe):
    """_refine drops the slots past the batch's last real one; the full-width sampler run gives the same latents."""
    cond = pipe._condition(QUESTIONS, [None] * len(QUESTIONS))
    starts = [pipe.start(q, 1, seed=0) for q in QUESTIONS]  # each with the usual sentence count
    y0, mask = torch.cat([y for y, _ in starts]), torch.cat([m for _, m in starts])
    assert int(mask.sum(1).max()) < mask.shape[1]  # some slots are unused: the case the cut is for
    got = pipe._refine(cond, y0, mask, pipe.sampler_config, None, seed=0)
    full = build_from_config(pipe.sampler_config).sample(lambda y, k: pipe.energy.energy(cond, y, mask, k), y0, mask)
    assert got.y.shape == y0.shape and torch.equal(got.steps, full.steps)
    torch.testing.assert_close(got.y, full.y, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.energy, full.energy, atol=1e-5, rtol=0)


def test_start_takes_the_most_common_count_first(pipe):
    y0, mask = pipe.start("Why?", 8, seed=0)
    shares = torch.tensor(pipe.sentence_counts)
    assert int(mask[0].sum()) - 1 == int(shares.argmax()) + 1
    assert bool(mask[:, 0].all()) and torch.all(y0[~mask] == 0)
    assert question_seed(0, "Why?") == question_seed(0, "Why?") != question_seed(1, "Why?")


def test_steps_zero_decodes_the_start_and_refinement_lowers_the_energy(pipe):
    start = pipe(QUESTIONS, steps=0)
    refined = pipe(QUESTIONS, steps=3)
    assert all(a.steps == 0 for a in start)
    assert all(r.energy <= s.energy + 1e-6 for s, r in zip(start, refined, strict=True))


def test_trace_records_every_step_and_ends_at_the_answer(pipe):
    a = pipe(QUESTIONS[0], trace=True)[0]
    assert len(a.energies) == a.steps + 1 and a.energies[-1] == pytest.approx(a.energy, abs=1e-5)
    steps = [d["step"] for d in a.trace]
    assert steps[0] == 0 and steps[-1] == a.steps and a.trace[-1]["text"] == a.text
    assert pipe(QUESTIONS[0])[0].trace is None


def test_the_sampler_is_swapped_per_call(pipe):
    a = pipe(QUESTIONS, sampler={"name": "langevin", "step_size": 0.1, "max_steps": 2})
    assert all(x.steps <= 2 for x in a)
    with pytest.raises(ConfigError, match="unknown sampler"):
        pipe(QUESTIONS, sampler={"name": "adam"})


def test_verify_places_energies_among_the_calibration(pipe):
    verdicts = pipe.verify(QUESTIONS, ["New York City.", "Charge.", "John Harvard."])
    for v in verdicts:
        assert 0 <= v.gold_percentile <= 100 and 0 <= v.negative_percentile <= 100 and v.sentences == 1
    cal = Calibration(gold=[1.0, 2.0, 3.0, 4.0], negative=[3.0, 5.0])
    assert cal.percentile(2.0, "gold") == 75.0 and cal.percentile(0.0, "negative") == 100.0
    assert cal.percentile(9.0, "gold") == 0.0
    with pytest.raises(DataError, match="3 questions but 1 answers"):
        pipe.verify(QUESTIONS, ["one"])


@pytest.mark.parametrize(
    ("question", "message"),
    [("", "question 0: the question is empty"), (" \n", "whitespace only"), ("a\x00b", "NUL characters")],
)
def test_bad_questions_are_refused(pipe, question, message):
    with pytest.raises(DataError, match=message):
        pipe(question)


def test_a_long_question_is_cut_with_a_warning(pipe, caplog, monkeypatch):
    counted = []
    token_counts = pipe.condition_encoder.token_counts
    monkeypatch.setattr(
        pipe.condition_encoder, "token_counts", lambda q, c: counted.append(list(q)) or token_counts(q, c)
    )
    with caplog.at_level("WARNING"):
        pipe(["why " * 200, QUESTIONS[0]])
    assert "1 of 2 questions are longer than the 24 tokens" in caplog.text
    assert counted == [["why " * 200]]  # a question that fits is tokenised once, not again to count its tokens


def test_a_passage_for_a_pipeline_trained_without_passages_is_refused(pipe):
    with pytest.raises(DataError, match="trained without passages"):
        pipe(QUESTIONS[0], "Tesla moved to New York City in 1884.")


def test_export_refuses_a_regression_run_and_another_hvae(runs, tmp_path):
    with pytest.raises(CheckpointError, match="LatentRegressor"):
        QAPipeline.from_runs(runs["hvae"], runs["regress"])
    other = tmp_path / "hvae"
    shutil.copytree(runs["hvae"], other)
    latents = other / "latents" / "train.safetensors"
    tensors = load_file(latents)
    save_file({**tensors, "mu_g": tensors["mu_g"] + 1}, latents)  # other latents: another fingerprint
    with pytest.raises(CheckpointError, match="another HVAE run"):
        QAPipeline.from_runs(other, runs["ebt"])


def test_damaged_pipeline_dirs_are_refused(pipe_dir, tmp_path):
    broken = tmp_path / "p"
    shutil.copytree(pipe_dir, broken)
    meta = json.loads((broken / PIPELINE_FILE).read_text())
    (broken / PIPELINE_FILE).write_text(json.dumps({**meta, "version": FORMAT_VERSION + 1}))
    with pytest.raises(CheckpointError, match="export the pipeline again"):
        load_pipeline(broken)
    (broken / PIPELINE_FILE).write_text(json.dumps({**meta, "extra": 1}))
    with pytest.raises(CheckpointError, match="top-level keys"):
        load_pipeline(broken)
    shutil.rmtree(broken / "energy")
    with pytest.raises(CheckpointError, match="missing energy"):
        load_pipeline(broken)
    with pytest.raises(CheckpointError, match="not a pipeline directory"):
        load_pipeline(tmp_path)


def test_cli_answer_verify_and_batch(pipe_dir, tmp_path, capsys, monkeypatch):
    assert main(["answer", "--pipeline", str(pipe_dir), QUESTIONS[0], "--json", "--candidates", "2"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert {"id", "answer", "energy", "steps", "sentences", "energies", "candidates", "trace"} <= set(record)
    assert len(record["candidates"]) == 2

    assert main(["answer", "--pipeline", str(pipe_dir), QUESTIONS[0], "--trace", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "energy by step:" in out and "step   0:" in out

    batch = tmp_path / "q.txt"
    batch.write_text(f"{QUESTIONS[0]}\n\n" + json.dumps({"id": "x", "question": QUESTIONS[1]}) + "\n")
    assert main(["answer", "--pipeline", str(pipe_dir), "--input", str(batch), "--output", str(tmp_path / "a")]) == 0
    lines = [json.loads(x) for x in (tmp_path / "a").read_text().splitlines()]
    assert [x["id"] for x in lines] == ["1", "x"] and all(isinstance(x["answer"], str) for x in lines)

    monkeypatch.setattr("sys.stdin", io.StringIO(QUESTIONS[2] + "\n"))
    assert main(["answer", "--pipeline", str(pipe_dir), "--input", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == "1"

    assert main(["verify", "--pipeline", str(pipe_dir), QUESTIONS[0], "New York City.", "--json"]) == 0
    verdict = json.loads(capsys.readouterr().out)
    assert {"energy", "gold_percentile", "negative_percentile", "sentences"} <= set(verdict)


def test_cli_bad_input_exits_2_with_one_line(pipe_dir, tmp_path, capsys):
    cases = [
        (["answer", "--pipeline", str(pipe_dir), " "], "whitespace only"),
        (["answer", "--pipeline", str(pipe_dir), "Why?", "--candidates", "0"], "--candidates must be >= 1"),
        (["answer", "--pipeline", str(pipe_dir), "Why?", "--context", "A passage."], "trained without passages"),
        (["answer", "--pipeline", str(tmp_path), "Why?"], "not a pipeline directory"),
        (["verify", "--pipeline", str(pipe_dir), "Why?", ""], "answer 0: the answer is empty"),
        (["export", "--hvae", str(tmp_path), "--ebt", str(tmp_path), "--out", str(tmp_path / "o")], "manifest"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, (argv, err)
    assert not (tmp_path / "o").exists()


def test_evaluate_puts_every_row_side_by_side(runs, pipe_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["evaluate", "--pipeline", str(pipe_dir), "--data", str(runs["data"]), "--split", "val", "--out", str(out)]
    argv += ["--steps", "1", "3", "--candidates", "2", "--regress", str(runs["regress"])]
    argv += ["--baseline", str(runs["baseline"]), "--limit", "12"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    result = json.loads((out / "results.json").read_text())
    names = [r["row"] for r in result["rows"]]
    assert names == [
        "ebt",
        "ebt@1",
        "ebt@3",
        "ebt best-of-2",
        "regression",
        "retrieval",
        "prior",
        "autoregressive",
        "reconstruction",
    ]
    for r in result["rows"]:
        assert r["count"] == 12 and 0 <= r["bleu"] <= 100 and 0 <= r["rougeL"] <= 100 and r["per_second"] > 0
        assert r["row"] in table
    squad_rows = [r for r in result["rows"] if "f1" in r]
    assert squad_rows and all(r["squad_count"] <= 12 for r in squad_rows)
    assert result["rows"][1]["mean_steps"] <= 1 and len(result["energy_curves"]) == 12
    for png in ("quality_vs_steps.png", "steps_vs_length.png", "energy_curves.png"):
        assert (out / png).stat().st_size > 0
    assert (out / "results.md").read_text().startswith("# Evaluation")


def test_retrieval_returns_the_nearest_train_answer(pipe):
    from qa_ebm.pipeline.evaluate_generative import retrieval_answers

    train = [
        {"question": "Who founded Harvard University?", "answer": "John Harvard"},
        {"question": "What does a capacitor store in a circuit?", "answer": "charge"},
    ]
    got = retrieval_answers(pipe, train, ["What does a capacitor store?", "Who founded Harvard?"], batch_size=8)
    assert got == ["charge", "John Harvard"]
