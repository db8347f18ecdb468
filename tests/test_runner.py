"""`pipeline run`: stages in order, each skipped when its config, inputs and upstream are unchanged."""

from __future__ import annotations

import yaml
from tiny import QUICK_HVAE, ROOT, SMALL

from qa_ebm.pipeline.runner import load_spec, run_pipeline


def _spec(tmp_path, overrides):
    path = tmp_path / "p.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "t",
                "config": str(ROOT / "configs" / "tiny.yaml"),
                "out": str(tmp_path / "out"),
                "set": overrides,
                "inputs": {"squad": str(ROOT / "data" / "squad_sample.json")},
                "stages": ["preprocess", "train_hvae"],
            }
        )
    )
    return load_spec(path)


def test_unchanged_stages_are_skipped_and_changes_rerun_downstream(tmp_path):
    first = run_pipeline(_spec(tmp_path, QUICK_HVAE), progress=False)
    assert [r.status for r in first] == ["ran", "ran"]
    assert (tmp_path / "out" / "hvae" / "latents" / "train.safetensors").is_file()
    again = run_pipeline(_spec(tmp_path, QUICK_HVAE), progress=False)
    assert [r.status for r in again] == ["skipped", "skipped"]
    changed = run_pipeline(_spec(tmp_path, [*QUICK_HVAE, "train_hvae.lr=0.002"]), progress=False)
    assert [r.status for r in changed] == ["skipped", "ran"]
    upstream = run_pipeline(_spec(tmp_path, [*QUICK_HVAE, "train_hvae.lr=0.002", "data.max_words=12"]), progress=False)
    assert [r.status for r in upstream] == ["ran", "ran"]


def test_command_line_inputs_replace_the_files(tmp_path):
    spec = _spec(tmp_path, QUICK_HVAE)
    path = tmp_path / "p.yaml"
    replaced = load_spec(path, inputs={"squad": "other.json", "physics": None}, out=str(tmp_path / "o2"))
    assert replaced.inputs == {"squad": "other.json"} and replaced.out == tmp_path / "o2"
    assert spec.stages == replaced.stages


def test_the_proposal_key_ignores_the_energy_settings_but_the_energy_key_does_not(tmp_path):
    from qa_ebm.config import load_config
    from qa_ebm.pipeline.runner import Context, stage_key

    def keys(overrides):
        spec = _spec(tmp_path, [*QUICK_HVAE, *overrides])
        ctx = Context(spec=spec, config=load_config(spec.config, spec.overrides), progress=False)
        return stage_key(ctx, "proposal"), stage_key(ctx, "span_energy")

    base = keys([])
    more_energy = keys(["reading.energy_max_questions=5", "reading.energy_max_seconds=9"])
    assert more_energy[0] == base[0] and more_energy[1] != base[1]
    assert keys(["reading.proposal_lr=0.001"])[0] != base[0]


def test_the_energy_holdout_gives_the_proposal_head_and_the_energy_disjoint_whole_articles(tmp_path):
    import pytest

    from qa_ebm.config import load_config
    from qa_ebm.data.processed import load_processed
    from qa_ebm.errors import DataError
    from qa_ebm.pipeline.runner import Context, _reading_train_questions

    spec = _spec(tmp_path, [])
    spec.stages = ["preprocess"]
    run_pipeline(spec, progress=False)
    data = load_processed(tmp_path / "out" / "data")

    def questions(share, stage):
        config = load_config(spec.config, [*spec.overrides, f"reading.energy_holdout={share}"])
        return _reading_train_questions(Context(spec=spec, config=config, progress=False), data, stage)

    everything = questions(0.0, "proposal")
    assert questions(0.0, "span_energy") == everything
    head, energy = questions(0.4, "proposal"), questions(0.4, "span_energy")
    assert head and energy and len(head) + len(energy) == len(everything)
    assert not {q["title"] for q in head} & {q["title"] for q in energy}
    assert {q["id"] for q in head} | {q["id"] for q in energy} == {q["id"] for q in everything}
    with pytest.raises(DataError, match=r"energy_holdout=0.99 leaves the proposal head no train questions"):
        questions(0.99, "proposal")


def test_an_answer_pipeline_runs_every_stage_and_reruns_only_what_changed(tmp_path):
    from qa_ebm.pipeline import load_pipeline
    from qa_ebm.pipeline.generative import QAPipeline

    stages = ["preprocess", "train_hvae", "train_ebt", "train_regress", "train_baseline", "export", "evaluate"]
    small = [*SMALL, "train_baseline.steps=2", "train_baseline.warmup_steps=1", "train_baseline.batch_size=8"]
    small += ["train_baseline.max_answer_tokens=24", "evaluate.steps=[1, 2]", "evaluate.limit=8"]

    def spec(extra: list[str]):
        path = tmp_path / "p.yaml"
        inputs = {
            "squad": str(ROOT / "data" / "squad_sample.json"),
            "physics": str(ROOT / "data" / "physics_sample.jsonl"),
        }
        body = {"name": "g", "config": str(ROOT / "configs" / "tiny.yaml"), "out": str(tmp_path / "out"),
                "set": [*small, *extra], "inputs": inputs, "stages": stages}  # fmt: skip
        path.write_text(yaml.safe_dump(body))
        return load_spec(path)

    first = run_pipeline(spec([]), progress=False)
    assert [r.status for r in first] == ["ran"] * 7 and first[5].summary["kind"] == "QAPipeline"
    assert isinstance(load_pipeline(tmp_path / "out" / "pipeline"), QAPipeline)
    for split in ("val", "test"):
        rows = first[6].summary[split]
        assert {"ebt", "ebt@1", "ebt@2", "regression", "retrieval", "prior", "autoregressive"} <= set(rows)
        assert (tmp_path / "out" / "eval" / split / "results.md").is_file()
    again = run_pipeline(spec(["evaluate.candidates=1"]), progress=False)
    assert [r.status for r in again] == ["skipped"] * 6 + ["ran"]
    assert "ebt best-of-4" not in again[6].summary["val"]
