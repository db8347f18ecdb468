"""Checkpoints: bit-exact module round trips, pickles refused, resume == uninterrupted, atomic state dirs."""

from __future__ import annotations

import json
import os
import pickle
import shlex
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LinearLR, MultiStepLR, SequentialLR

from qa_ebm.errors import CheckpointError
from qa_ebm.models import weights
from qa_ebm.training import checkpoint
from qa_ebm.training.checkpoint import load_module, load_trainer_state, save_module, save_trainer_state

STEPS, SPLIT = 10, 5


# ------------------------------------------------------------------------------------------- helpers


def _mlp(seed: int, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Dropout(0.5), nn.Linear(32, 1)).to(dtype)


def _tiny_gpt2(seed: int) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=16, tie_word_embeddings=True
    )
    return transformers.GPT2LMHeadModel(config).eval()


def _setup(seed: int, dtype: torch.dtype = torch.float32):
    model = _mlp(seed, dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    warmup = LinearLR(opt, start_factor=0.1, total_iters=3)
    sched = SequentialLR(opt, [warmup, CosineAnnealingLR(opt, T_max=STEPS - 3)], milestones=[3])
    return model, opt, sched


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    return torch.randn(STEPS, 16, 8, generator=g), torch.randn(STEPS, 16, 1, generator=g)


def _train(model, opt, sched, steps: range) -> list[tuple[float, float]]:
    """Train on the fixed batches `steps`; return (loss, lr) per step. Dropout draws from torch's RNG."""
    x, y = _data()
    model.train()
    history = []
    for i in steps:
        opt.zero_grad()
        loss = F.mse_loss(model(x[i].to(next(model.parameters()).dtype)), y[i].to(next(model.parameters()).dtype))
        loss.backward()
        history.append((loss.item(), opt.param_groups[0]["lr"]))
        opt.step()
        sched.step()
    return history


def _assert_state_dicts_equal(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert sa[key].dtype == sb[key].dtype, key
        assert torch.equal(sa[key], sb[key]), key


def _any_differs(a: nn.Module, b: nn.Module) -> bool:
    return any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _saved_state(tmp_path: Path, steps: int = 2) -> tuple[Path, nn.Module]:
    model, opt, sched = _setup(0)
    _train(model, opt, sched, range(steps))
    directory = tmp_path / "trainer_state"
    save_trainer_state(directory, opt, sched, {"step": steps})
    return directory, model


class _RunsShellOnUnpickle:
    """A pickle payload: unpickling it runs a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


# ---------------------------------------------------------------------------------------------- module


def test_module_round_trip_is_bit_exact(tmp_path):
    src, dst = _mlp(0), _mlp(1)
    assert _any_differs(src, dst)
    save_module(src, tmp_path / "model.safetensors")
    load_module(dst, tmp_path / "model.safetensors")
    _assert_state_dicts_equal(src, dst)
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp file left behind


def test_gpt2_with_tied_lm_head_round_trips_and_stays_tied(tmp_path):
    src, dst = _tiny_gpt2(0), _tiny_gpt2(1)
    assert src.lm_head.weight.data_ptr() == src.transformer.wte.weight.data_ptr()
    assert _any_differs(src, dst)
    path = tmp_path / "model.safetensors"
    save_module(src, path)
    with safe_open(str(path), "pt") as f:  # the tied tensor is stored once
        stored = set(f.keys())
    assert len({"lm_head.weight", "transformer.wte.weight"} & stored) == 1

    load_module(dst, path)
    _assert_state_dicts_equal(src, dst)
    assert dst.lm_head.weight.data_ptr() == dst.transformer.wte.weight.data_ptr()
    ids = torch.arange(12).reshape(2, 6) % 50
    with torch.no_grad():
        assert torch.equal(src(ids).logits, dst(ids).logits)


def test_torch_save_pickle_renamed_safetensors_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    torch.save(_mlp(0).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: not a readable safetensors file.*zip"):
        load_module(_mlp(1), path)


def test_malicious_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"weight": _RunsShellOnUnpickle(marker)})
    path = tmp_path / "model.safetensors"
    path.write_bytes(payload)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: .*pickle"):
        load_module(_mlp(1), path)
    assert not marker.exists()

    # Control: the payload is live, so a loader that unpickled it would have created the marker.
    pickle.loads(payload)
    assert marker.exists()


@pytest.mark.parametrize("damage", ["missing", "empty", "truncated"])
def test_missing_or_damaged_module_file(tmp_path, damage):
    path = tmp_path / "model.safetensors"
    save_module(_mlp(0), path)
    if damage == "missing":
        path.unlink()
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"model\.safetensors"):
        load_module(_mlp(1), path)


def test_key_mismatch_is_an_error_when_strict_and_tolerated_otherwise(tmp_path):
    path = tmp_path / "model.safetensors"
    save_module(_mlp(0), path)
    smaller = nn.Sequential(nn.Linear(8, 32))
    with pytest.raises(CheckpointError, match=r"unexpected \(3\.bias, 3\.weight\)"):
        load_module(smaller, path)
    load_module(smaller, path, strict=False)
    assert torch.equal(smaller[0].weight, _mlp(0)[0].weight)

    with pytest.raises(CheckpointError, match=r"does not fit Sequential: size mismatch"):
        load_module(nn.Sequential(nn.Linear(8, 31)), path, strict=False)


def test_failed_module_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    save_module(_mlp(0), path)
    before = path.read_bytes()

    def half_written(module, filename, **kwargs):
        Path(filename).write_bytes(b"garbage")
        raise OSError("disk full")

    monkeypatch.setattr(weights, "save_model", half_written)
    with pytest.raises(OSError, match="disk full"):
        save_module(_mlp(1), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


# --------------------------------------------------------------------------------------- trainer state


def test_resume_equals_uninterrupted_training(tmp_path):
    model, opt, sched = _setup(0)
    uninterrupted = _train(model, opt, sched, range(STEPS))

    first, opt1, sched1 = _setup(0)
    head = _train(first, opt1, sched1, range(SPLIT))
    assert head == uninterrupted[:SPLIT]
    state_dir, model_path = tmp_path / "trainer_state", tmp_path / "model.safetensors"
    save_trainer_state(state_dir, opt1, sched1, {"step": SPLIT, "history": head})
    save_module(first, model_path)
    rng_at_save = torch.get_rng_state()

    torch.manual_seed(999)  # a fresh process: other init, other RNG position
    resumed, opt2, sched2 = _setup(1)
    assert _any_differs(resumed, first)
    load_module(resumed, model_path)
    state = load_trainer_state(state_dir, opt2, sched2)
    assert state == {"step": SPLIT, "history": [list(h) for h in head]}
    assert torch.equal(torch.get_rng_state(), rng_at_save)

    tail = _train(resumed, opt2, sched2, range(SPLIT, STEPS))
    assert tail == uninterrupted[SPLIT:]  # exact floats: losses and learning rates of steps 6-10
    _assert_state_dicts_equal(resumed, model)
    assert sched2.state_dict() == sched.state_dict()
    for a, b in zip(opt2.state_dict()["state"].values(), opt.state_dict()["state"].values(), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in ("step", "exp_avg", "exp_avg_sq"))


def test_resume_depends_on_the_restored_rng(tmp_path):
    """Guard for the test above: with dropout, a resume that skipped the RNG state would diverge."""
    model, opt, sched = _setup(0)
    uninterrupted = _train(model, opt, sched, range(STEPS))
    first, opt1, sched1 = _setup(0)
    _train(first, opt1, sched1, range(SPLIT))
    save_trainer_state(tmp_path / "s", opt1, sched1, {})
    save_module(first, tmp_path / "m.safetensors")

    resumed, opt2, sched2 = _setup(1)
    load_module(resumed, tmp_path / "m.safetensors")
    load_trainer_state(tmp_path / "s", opt2, sched2)
    torch.manual_seed(999)  # throw the restored RNG state away
    tail = _train(resumed, opt2, sched2, range(SPLIT, STEPS))
    assert [loss for loss, _ in tail] != [loss for loss, _ in uninterrupted[SPLIT:]]


def test_trainer_state_layout(tmp_path):
    directory, _ = _saved_state(tmp_path)
    assert sorted(p.name for p in directory.iterdir()) == sorted(checkpoint.TRAINER_STATE_FILES)
    tensors = load_file(directory / "optimizer.safetensors")
    assert set(tensors) == {f"{i}.{name}" for i in range(4) for name in ("step", "exp_avg", "exp_avg_sq")}
    assert tensors["0.step"].shape == () and tensors["0.step"].item() == 2.0
    assert json.loads((directory / "state.json").read_text()) == {"step": 2}
    assert json.loads((directory / "scheduler.json").read_text())["last_epoch"] == 2
    assert load_file(directory / "rng.safetensors")["cpu"].dtype == torch.uint8
    groups = json.loads((directory / "optimizer.json").read_text())["param_groups"]
    assert groups[0]["params"] == [0, 1, 2, 3] and groups[0]["betas"] == [0.9, 0.999]


def test_optimizer_state_is_cast_to_the_parameters_dtype(tmp_path):
    directory, _ = _saved_state(tmp_path)
    _, opt, sched = _setup(1, dtype=torch.float64)
    load_trainer_state(directory, opt, sched)
    state = opt.state_dict()["state"][0]
    assert state["exp_avg"].dtype == torch.float64
    assert state["step"].dtype == torch.float32  # torch leaves `step` alone
    assert opt.param_groups[0]["betas"] == (0.9, 0.999)  # a tuple again, as a fresh AdamW has


@pytest.mark.parametrize(
    "make",
    [
        lambda opt: LambdaLR(opt, lambda epoch: 0.9**epoch),
        lambda opt: LinearLR(opt, start_factor=0.25, total_iters=5),
        lambda opt: CosineAnnealingLR(opt, T_max=6, eta_min=1e-4),
        lambda opt: SequentialLR(opt, [LinearLR(opt, 0.5, total_iters=2), CosineAnnealingLR(opt, 4)], milestones=[2]),
    ],
    ids=["LambdaLR", "LinearLR", "CosineAnnealingLR", "SequentialLR"],
)
def test_schedulers_resume_exactly(tmp_path, make):
    def fresh():
        opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
        return opt, make(opt)

    opt, sched = fresh()
    for _ in range(3):
        opt.step()
        sched.step()
    save_trainer_state(tmp_path / "s", opt, sched, {})
    opt2, sched2 = fresh()
    load_trainer_state(tmp_path / "s", opt2, sched2)
    for _ in range(5):
        assert sched2.get_last_lr() == sched.get_last_lr()
        assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
        opt.step(), opt2.step()
        sched.step(), sched2.step()


@pytest.mark.parametrize("existing", [True, False])
def test_failed_save_leaves_previous_state_and_no_temp_dir(tmp_path, monkeypatch, existing):
    directory = tmp_path / "trainer_state"
    model, opt, sched = _setup(0)
    _train(model, opt, sched, range(2))
    if existing:
        save_trainer_state(directory, opt, sched, {"step": 2})
    before = _snapshot(directory) if existing else None
    _train(model, opt, sched, range(2, 4))

    written: list[Path] = []
    real_write_json = checkpoint.write_json

    def fail_on_last_file(path, obj):
        if Path(path).name == "state.json":
            raise OSError("disk full")
        written.append(Path(path))
        real_write_json(path, obj)

    monkeypatch.setattr(checkpoint, "write_json", fail_on_last_file)
    with pytest.raises(OSError, match="disk full"):
        save_trainer_state(directory, opt, sched, {"step": 4})
    assert written and all(p.parent != directory for p in written)  # it failed midway, inside a temp dir
    assert [p.name for p in tmp_path.iterdir()] == (["trainer_state"] if existing else [])
    if existing:
        assert _snapshot(directory) == before
        monkeypatch.undo()
        _, opt2, sched2 = _setup(1)
        assert load_trainer_state(directory, opt2, sched2) == {"step": 2}


def test_save_replaces_an_existing_state(tmp_path):
    directory, _ = _saved_state(tmp_path, steps=2)
    model, opt, sched = _setup(0)
    _train(model, opt, sched, range(3))
    save_trainer_state(directory, opt, sched, {"step": 3})
    assert [p.name for p in tmp_path.iterdir()] == ["trainer_state"]
    _, opt2, sched2 = _setup(1)
    assert load_trainer_state(directory, opt2, sched2) == {"step": 3}
    assert opt2.state_dict()["state"][0]["step"].item() == 3.0


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_missing_directory(tmp_path):
    _, opt, sched = _setup(0)
    with pytest.raises(CheckpointError, match=r"nowhere: no trainer state") as e:
        load_trainer_state(tmp_path / "nowhere", opt, sched)
    _one_line_error(e)


@pytest.mark.parametrize("name", checkpoint.TRAINER_STATE_FILES)
def test_missing_file(tmp_path, name):
    directory, _ = _saved_state(tmp_path)
    (directory / name).unlink()
    _, opt, sched = _setup(1)
    with pytest.raises(CheckpointError, match=rf"trainer_state: incomplete trainer state, missing {name}") as e:
        load_trainer_state(directory, opt, sched)
    _one_line_error(e)


def test_optimizer_with_a_different_number_of_parameters(tmp_path):
    directory, _ = _saved_state(tmp_path)
    model = _mlp(1)
    opt = torch.optim.AdamW(list(model.parameters())[:-1], lr=1e-2)
    with pytest.raises(
        CheckpointError, match=r"trainer_state: .*param group 0 saved with 4 parameters, optimizer has 3"
    ):
        load_trainer_state(directory, opt, None)

    groups = [{"params": list(model[0].parameters())}, {"params": list(model[3].parameters())}]
    with pytest.raises(CheckpointError, match=r"1 param groups saved, optimizer has 2") as e:
        load_trainer_state(directory, torch.optim.AdamW(groups), None)
    _one_line_error(e)


def test_pickle_in_place_of_optimizer_tensors_is_refused(tmp_path):
    directory, _ = _saved_state(tmp_path)
    marker = tmp_path / "pwned"
    (directory / "optimizer.safetensors").write_bytes(pickle.dumps(_RunsShellOnUnpickle(marker)))
    _, opt, sched = _setup(1)
    with pytest.raises(CheckpointError, match=r"optimizer\.safetensors: not a readable safetensors file"):
        load_trainer_state(directory, opt, sched)
    assert not marker.exists()


def test_unserialisable_scheduler_or_state_is_refused_before_writing(tmp_path):
    _, opt, _ = _setup(0)
    directory = tmp_path / "trainer_state"
    # MultiStepLR keeps its milestones in a Counter keyed by int: JSON would turn the keys into strings.
    with pytest.raises(CheckpointError, match=r"scheduler\.json: MultiStepLR.*key 2 .*not a string"):
        save_trainer_state(directory, opt, MultiStepLR(opt, milestones=[2, 4]), {})
    with pytest.raises(CheckpointError, match=r"state\.json: .*Tensor at metrics\.loss is not JSON-serialisable"):
        save_trainer_state(directory, opt, None, {"metrics": {"loss": torch.tensor(1.0)}})
    assert list(tmp_path.iterdir()) == []


def test_state_saved_without_scheduler_cannot_restore_one(tmp_path):
    _, opt, _ = _setup(0)
    save_trainer_state(tmp_path / "s", opt, None, {"step": 0})
    _, opt2, sched2 = _setup(1)
    with pytest.raises(CheckpointError, match="saved without a scheduler"):
        load_trainer_state(tmp_path / "s", opt2, sched2)
    assert load_trainer_state(tmp_path / "s", opt2, None) == {"step": 0}
