"""The autoregressive baseline: sequence format and loss mask, generation, save/load, training, resume, CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from tiny import ROOT, TINY_HVAE

from qa_ebm.cli.main import main
from qa_ebm.config import load_config
from qa_ebm.data.preprocess import preprocess
from qa_ebm.errors import CheckpointError, ConfigError
from qa_ebm.models.baseline import (
    IGNORE,
    AutoregressiveBaseline,
    BaselineAnswerer,
    BaselineSpec,
    fit_positions,
    pack,
)
from qa_ebm.models.decoders import DecodeSettings
from qa_ebm.training import baseline_trainer
from qa_ebm.training.baseline_trainer import train_baseline
from qa_ebm.training.hvae_trainer import train_hvae
from qa_ebm.training.runs import TrainingError, TrainingInterrupted

SMALL = [  # the tiny HVAE of tests/test_ebt_trainer.py: trains in seconds
    *TINY_HVAE,
    "data.max_sentences=4",
    "data.max_words=16",
    "data.max_question_tokens=24",
    "data.physics.min_sentences=1",
    "hvae.prefix_len=2",
    "train_hvae.steps=2",
    "train_hvae.batch_size=16",
    "train_hvae.eval_every=2",
    "train_hvae.save_every=2",
    "train_hvae.warmup_steps=1",
    "train_hvae.num_samples=0",
    "train_baseline.steps=4",
    "train_baseline.batch_size=8",
    "train_baseline.warmup_steps=1",
    "train_baseline.eval_every=2",
    "train_baseline.save_every=2",
    "train_baseline.max_answer_tokens=24",
    "train_baseline.num_samples=1",
]
SPEC = BaselineSpec(pad_id=0, eos_id=3, sep_id=4, max_question_tokens=6, max_answer_tokens=5)


def config(*overrides: str):
    return load_config(ROOT / "configs" / "tiny.yaml", [*SMALL, *overrides])


def tiny_lm(vocab: int = 20, n_positions: int = 8, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(
        GPT2Config(
            vocab_size=vocab, n_positions=n_positions, n_embd=32, n_layer=1, n_head=2, bos_token_id=3, eos_token_id=3
        )
    )


@pytest.fixture(scope="module")
def hvae_run(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("baseline")
    preprocess(
        config(),
        base / "data",
        squad=str(ROOT / "data" / "squad_sample.json"),
        physics=str(ROOT / "data" / "physics_sample.jsonl"),
    )
    train_hvae(config(), base / "data", base / "hvae", progress=False)
    return base / "hvae"


# --------------------------------------------------------------------------------------- model


def test_pack_puts_loss_on_the_answer_and_eos_only():
    batch = pack([[5, 6, 7], [8]], [[9], [11, 12, 13, 14, 15, 16]], SPEC)
    assert batch.input_ids[0].tolist() == [5, 6, 7, 4, 9, 3, 0]  # question SEP answer EOS, PAD
    assert batch.labels[0].tolist() == [IGNORE] * 4 + [9, 3, IGNORE]
    assert batch.attention_mask[0].tolist() == [1] * 6 + [0]
    # an answer longer than A=5 tokens is cut and gets no EOS
    assert batch.input_ids[1].tolist() == [8, 4, 11, 12, 13, 14, 15]
    assert batch.labels[1].tolist() == [IGNORE, IGNORE, 11, 12, 13, 14, 15]


def test_question_tokens_carry_no_loss():
    model = AutoregressiveBaseline(tiny_lm(), SPEC).eval()  # no dropout: the two losses must be comparable
    batch = pack([[5, 6, 7]], [[9, 10]], SPEC)
    base = model(batch.input_ids, batch.attention_mask, batch.labels)
    assert base.n_tokens == 3  # 9, 10, EOS
    assert (batch.labels[0, :4] == IGNORE).all()  # question and SEP
    logits = model.lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    manual = torch.nn.functional.cross_entropy(logits[0, 3:6], torch.tensor([9, 10, 3]))
    torch.testing.assert_close(base.loss, manual)  # exactly the answer tokens and EOS, read after SEP
    other = pack([[11, 12, 13]], [[9, 10]], SPEC)  # another question: same targets, same count, other loss
    changed = model(other.input_ids, other.attention_mask, other.labels)
    assert changed.n_tokens == 3 and changed.loss != base.loss


def test_positions_are_widened_keeping_the_trained_rows():
    lm = tiny_lm(n_positions=8)
    trained = lm.transformer.wpe.weight.detach().clone()
    fit_positions(lm, 20)
    assert lm.transformer.wpe.num_embeddings == 20 and lm.config.n_positions == 20
    assert torch.equal(lm.transformer.wpe.weight[:8], trained)


def test_overfits_two_pairs_and_generates_the_memorised_answers(tmp_path):
    torch.manual_seed(0)
    model = AutoregressiveBaseline(tiny_lm(), SPEC)
    questions, answers = [[5, 6, 7], [8, 9]], [[10, 11, 12], [13, 14]]
    batch = pack(questions, answers, SPEC)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        out = model(batch.input_ids, batch.attention_mask, batch.labels)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.1 * losses[0]
    assert model.generate(questions) == answers  # batched, left-padded prompts of different lengths
    assert model.generate(questions, DecodeSettings(max_new_tokens=10, num_beams=3)) == answers
    assert model.generate([[5, 6, 7]], DecodeSettings(max_new_tokens=2)) == [[10, 11]]

    model.save_pretrained(tmp_path / "m")
    loaded = AutoregressiveBaseline.from_pretrained(tmp_path / "m")
    assert loaded.spec == SPEC
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.generate(questions) == answers


def test_bad_model_dirs_and_decoders_are_refused(tmp_path):
    AutoregressiveBaseline(tiny_lm(), SPEC).save_pretrained(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    meta["baseline"]["colour"] = "red"
    (tmp_path / "m" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="exactly the keys"):
        AutoregressiveBaseline.from_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match="not a baseline model directory"):
        AutoregressiveBaseline.from_pretrained(tmp_path / "nothing")
    from transformers import BartConfig, BartForCausalLM

    bart = BartForCausalLM(BartConfig(vocab_size=20, d_model=16, decoder_layers=1, encoder_layers=1, is_decoder=True))
    with pytest.raises(ConfigError, match="GPT-2-family"):
        AutoregressiveBaseline(bart, SPEC)
    with pytest.raises(ConfigError, match="distinct"):
        AutoregressiveBaseline(tiny_lm(), BaselineSpec(0, 3, 3, 4, 4))


# --------------------------------------------------------------------------------------- training


def test_trains_from_the_hvae_decoder_and_writes_the_run(hvae_run, tmp_path):
    from qa_ebm.models.hvae import HVAE

    seen = []
    result = train_baseline(config(), hvae_run, tmp_path / "b", on_eval=seen.append, progress=False)
    assert result.step == 4 and [m["step"] for m in seen] == [2, 4]
    m = seen[-1]
    assert m["val_token_nll"] > 0 and m["val_ppl"] > 1 and 0 <= m["val_exact"] <= 1
    assert len(m["samples"]) == 1 and isinstance(m["samples"][0]["answer"], str) and m["samples"][0]["gold"]
    run = tmp_path / "b"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["format"] == "qa-ebm/baseline-run" and manifest["hvae"]["dir"] == str(hvae_run.resolve())
    assert manifest["data"]["fingerprint"] and manifest["pairs"]["train"] > 0
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [2, 4]
    assert (run / "config.yaml").is_file() and (run / "trainer_state" / "state.json").is_file()
    # it started from the HVAE's decoder LM: the token embeddings moved a little, not from a fresh init
    hvae_lm = HVAE.from_pretrained(hvae_run / "model").decoder.lm
    model = AutoregressiveBaseline.from_pretrained(run / "model")
    start, now = hvae_lm.transformer.wte.weight, model.lm.transformer.wte.weight
    assert start.shape == now.shape and (now - start).abs().max() < 0.1
    answers = BaselineAnswerer.from_pretrained(run)(["Who founded the company?", "What is inertia?"])
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)


def test_loss_falls_on_a_fixed_batch(hvae_run, tmp_path, monkeypatch):
    real = baseline_trainer.batch_at
    monkeypatch.setattr(baseline_trainer, "batch_at", lambda pairs, index, *a: real(pairs, 0, *a))  # one batch
    seen = []
    overrides = ("train_baseline.steps=24", "train_baseline.eval_every=2", "train_baseline.lr=3.0e-3")
    train_baseline(config(*overrides), hvae_run, tmp_path / "b", on_eval=seen.append, progress=False)
    losses = [m["train_loss"] for m in seen]  # means over 2 steps; about 5.9 -> 4.2 on CPU
    assert losses[-1] < 0.8 * losses[0] and losses[-1] == min(losses)


def test_resume_reproduces_the_uninterrupted_run(hvae_run, tmp_path, monkeypatch):
    straight = []
    train_baseline(config(), hvae_run, tmp_path / "a", on_eval=straight.append, progress=False)
    real, calls = AutoregressiveBaseline.forward, {"train_steps": 0}

    def forward(self, *args, **kwargs):
        if self.training:
            calls["train_steps"] += 1
            if calls["train_steps"] == 3:
                raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(AutoregressiveBaseline, "forward", forward)
    with pytest.raises(KeyboardInterrupt):
        train_baseline(config(), hvae_run, tmp_path / "b", progress=False)
    monkeypatch.setattr(AutoregressiveBaseline, "forward", real)
    resumed = []
    result = train_baseline(config(), hvae_run, tmp_path / "b", resume=True, on_eval=resumed.append, progress=False)
    assert result.step == 4 and [m["step"] for m in resumed] == [4]
    assert straight[-1]["train_loss"] == resumed[-1]["train_loss"]
    assert straight[-1]["val_token_nll"] == resumed[-1]["val_token_nll"]
    wa = AutoregressiveBaseline.from_pretrained(tmp_path / "a" / "model").state_dict()
    wb = AutoregressiveBaseline.from_pretrained(tmp_path / "b" / "model").state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sigint_saves_a_checkpoint_that_resumes_to_the_uninterrupted_run(hvae_run, tmp_path, monkeypatch):
    straight = []
    train_baseline(config(), hvae_run, tmp_path / "a", on_eval=straight.append, progress=False)
    real, calls = AutoregressiveBaseline.forward, {"train_steps": 0}

    def forward(self, *args, **kwargs):  # Ctrl-C in step 3 of 4: saved at step 3, off the cadence (every 2)
        if self.training:
            calls["train_steps"] += 1
            if calls["train_steps"] == 3:
                os.kill(os.getpid(), signal.SIGINT)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(AutoregressiveBaseline, "forward", forward)
    with pytest.raises(TrainingInterrupted, match="SIGINT at step 3") as e:
        train_baseline(config(), hvae_run, tmp_path / "b", progress=False)
    assert e.value.exit_status == 130
    monkeypatch.setattr(AutoregressiveBaseline, "forward", real)
    resumed = []
    train_baseline(config(), hvae_run, tmp_path / "b", resume=True, on_eval=resumed.append, progress=False)
    assert resumed == straight[1:]  # the step-4 eval, its train loss averaged over steps 3 and 4 as before
    wa = AutoregressiveBaseline.from_pretrained(tmp_path / "a" / "model").state_dict()
    wb = AutoregressiveBaseline.from_pretrained(tmp_path / "b" / "model").state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_bad_inputs_are_refused(hvae_run, tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="not a finished train-hvae run"):
        train_baseline(config(), tmp_path / "nothing", tmp_path / "b", progress=False)
    broken = tmp_path / "hvae"
    shutil.copytree(hvae_run, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["data"]["dir"] = str(tmp_path / "gone")
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="data dir"):
        train_baseline(config(), broken, tmp_path / "b", progress=False)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train_baseline(config(), hvae_run, tmp_path / "fresh", resume=True, progress=False)
    with pytest.raises(ConfigError, match=r"train_baseline\.warmup_steps"):
        config("train_baseline.warmup_steps=10")

    def nan_loss(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        out.loss = out.loss * float("nan")
        return out

    real = AutoregressiveBaseline.forward
    monkeypatch.setattr(AutoregressiveBaseline, "forward", nan_loss)
    with pytest.raises(TrainingError, match="step 0"):
        train_baseline(config(), hvae_run, tmp_path / "nan", progress=False)


def test_cli_trains_and_exits_2_on_bad_input(hvae_run, tmp_path, capsys):
    args = ["train-baseline", "--config", str(ROOT / "configs" / "tiny.yaml"), "--hvae", str(hvae_run)]
    args += ["--out", str(tmp_path / "b")]
    for item in [*SMALL, "train_baseline.steps=2"]:
        args += ["--set", item]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "stopped at step 2" in out and "val ppl" in out
    assert (tmp_path / "b" / "model" / "model.safetensors").is_file()
    assert main(args) == 2  # exists: --resume or --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["train-baseline", "--hvae", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "not a finished train-hvae run" in capsys.readouterr().err
