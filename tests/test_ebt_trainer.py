"""`train-ebt` end to end on the sample data: objectives, artifacts, resume, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tiny import ROOT, SMALL, sample_data, tiny_config

from qa_ebm.cli.main import main
from qa_ebm.errors import CheckpointError
from qa_ebm.models.ebt import EnergyTransformer, LatentModel, LatentRegressor
from qa_ebm.training import ebt_trainer
from qa_ebm.training.ebt_trainer import load_hvae_run, train_ebt
from qa_ebm.training.hvae_trainer import train_hvae
from qa_ebm.training.runs import TrainingError


def config(*overrides: str):
    return tiny_config(*overrides)


@pytest.fixture(scope="module")
def hvae_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("ebt")
    sample_data(config(), base / "data")
    train_hvae(config(), base / "data", base / "hvae", progress=False)
    return base / "hvae"


@pytest.mark.parametrize(
    ("objective", "cls"), [("mcmc", EnergyTransformer), ("ired", EnergyTransformer), ("regress", LatentRegressor)]
)
def test_each_objective_trains_and_reports(hvae_run, tmp_path, objective, cls):
    seen = []
    result = train_ebt(
        config(f"train_ebt.objective={objective}"), hvae_run, tmp_path / "ebt", on_eval=seen.append, progress=False
    )
    assert result.step == 4 and [m["step"] for m in seen] == [2, 4]
    m = seen[-1]
    assert m["val_mse_start"] > 0 and m["val_mse_refined"] > 0 and m["val_mse_mean_latent"] > 0
    if cls is EnergyTransformer:
        assert 0 <= m["val_recall_at_1"] <= 1 and m["val_candidates"] == 8
        assert 1 <= m["val_steps"] and {"val_energy_gold", "val_energy_refined", "val_energy_negatives"} <= set(m)
    assert len(m["samples"]) == 1 and isinstance(m["samples"][0]["refined"], str)
    model = LatentModel.from_pretrained(tmp_path / "ebt" / "model")
    assert type(model) is cls and model.spec.hvae_run == load_hvae_run(hvae_run).fingerprint
    manifest = json.loads((tmp_path / "ebt" / "manifest.json").read_text())
    assert manifest["format"] == "qa-ebm/ebt-run" and manifest["hvae"]["fingerprint"] == model.spec.hvae_run
    lines = (tmp_path / "ebt" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [2, 4]


def test_resume_replays_the_uninterrupted_run(hvae_run, tmp_path, monkeypatch):
    straight = []
    train_ebt(config(), hvae_run, tmp_path / "a", on_eval=straight.append, progress=False)
    objective, calls = ebt_trainer._objective, {"n": 0}

    def interrupted(*args, **kwargs):  # Ctrl-C in step 3, after the step-2 checkpoint
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return objective(*args, **kwargs)

    monkeypatch.setattr(ebt_trainer, "_objective", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_ebt(config(), hvae_run, tmp_path / "b", progress=False)
    monkeypatch.setattr(ebt_trainer, "_objective", objective)
    resumed = []
    result = train_ebt(config(), hvae_run, tmp_path / "b", resume=True, on_eval=resumed.append, progress=False)
    assert result.step == 4 and [m["step"] for m in resumed] == [4]
    a, b = straight[-1], resumed[-1]
    for key in ("train_loss", "val_mse_refined", "val_recall_at_1", "val_energy_gold"):
        assert a[key] == b[key], key
    wa = LatentModel.from_pretrained(tmp_path / "a" / "model").state_dict()
    wb = LatentModel.from_pretrained(tmp_path / "b" / "model").state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_hvae_run_without_latents_is_refused(hvae_run, tmp_path):
    broken = tmp_path / "hvae"
    shutil.copytree(hvae_run, broken)
    (broken / "latents" / "val.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no latents/val.safetensors"):
        train_ebt(config(), broken, tmp_path / "ebt", progress=False)
    assert main(["train-ebt", "--hvae", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2


def test_resume_on_another_hvae_run_is_refused(hvae_run, tmp_path):
    train_ebt(config("train_ebt.steps=2"), hvae_run, tmp_path / "ebt", progress=False)
    other = tmp_path / "hvae2"
    shutil.copytree(hvae_run, other)
    from safetensors.torch import load_file, save_file

    latents = load_file(str(other / "latents" / "train.safetensors"))
    latents["mu_g"] += 1.0
    save_file(latents, str(other / "latents" / "train.safetensors"))
    with pytest.raises(CheckpointError, match="only fits the latents it was trained on"):
        train_ebt(config("train_ebt.steps=4"), other, tmp_path / "ebt", resume=True, progress=False)


def test_mismatched_latent_sizes_are_refused(hvae_run, tmp_path):
    broken = tmp_path / "hvae"
    shutil.copytree(hvae_run, broken)
    from safetensors.torch import load_file, save_file

    latents = load_file(str(broken / "latents" / "test.safetensors"))
    latents["mu_g"] = latents["mu_g"][:, :4].contiguous()
    save_file(latents, str(broken / "latents" / "test.safetensors"))
    with pytest.raises(CheckpointError, match="latent sizes"):
        load_hvae_run(broken)


def test_nan_energy_stops_with_the_step(hvae_run, tmp_path, monkeypatch):
    real = EnergyTransformer.energy

    def nan_energy(self, *args, **kwargs):
        return real(self, *args, **kwargs) * float("nan")

    monkeypatch.setattr(EnergyTransformer, "energy", nan_energy)
    with pytest.raises((TrainingError, ebt_trainer.RefinementError), match="step 0"):
        train_ebt(config(), hvae_run, tmp_path / "ebt", progress=False)


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_a_nan_in_the_batch_is_stopped_or_skipped(hvae_run, tmp_path, monkeypatch, policy):
    real = ebt_trainer.batch_at

    def poisoned(arrays, index, *args):  # one gold latent of step 2's batch is NaN
        batch, share = real(arrays, index, *args)
        if index == 2:
            batch["y"] = batch["y"].clone().index_fill_(0, torch.tensor([0]), float("nan"))
        return batch, share

    monkeypatch.setattr(ebt_trainer, "batch_at", poisoned)
    seen, out = [], tmp_path / policy
    if policy == "stop":
        with pytest.raises(TrainingError, match=r"batch input 'y' holds \d+ non-finite values at step 2.*step 2 \("):
            train_ebt(config(), hvae_run, out, progress=False)
        return
    result = train_ebt(config("train_ebt.nonfinite=skip"), hvae_run, out, on_eval=seen.append, progress=False)
    assert result.step == 4 and [m["nonfinite_skips"] for m in seen] == [0, 1]
    assert all(torch.isfinite(torch.tensor(m["train_loss"])) for m in seen)
    from safetensors.torch import load_file

    replay = load_file(str(out / "trainer_state" / "replay.safetensors"))  # the skipped step's samples not kept
    assert replay and all(torch.isfinite(t.float()).all() for t in replay.values())
    weights = load_file(str(out / "trainer_state" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_cli_trains_and_prints_the_diagnostics(hvae_run, tmp_path, capsys):
    args = ["train-ebt", "--config", str(ROOT / "configs" / "tiny.yaml"), "--hvae", str(hvae_run)]
    args += ["--out", str(tmp_path / "ebt"), "--objective", "ired"]
    for item in SMALL:
        args += ["--set", item]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "recall@1" in out and "stopped at step 4" in out
