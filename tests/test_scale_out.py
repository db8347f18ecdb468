"""Scale-out: `accelerate launch` with two CPU processes (gloo) runs train-hvae and train-ebt unchanged.

"The same run" on one and on two processes means the same config, hence the same global batch at every
step (train_*.batch_size): with two processes each trains on its half of that batch and the gradients are
averaged, as in the one-process run. Dropout and sampling noise are drawn per process, so the two loss
curves agree within a tolerance, not bitwise; a run that drops half the batch, skips the gradient average
or builds contrastive rivals from half the batch misses it (the EBT's contrastive term alone moves by
about log(8/4) = 0.7 nats when its rivals come from half the batch). A resumed two-process run, by
contrast, must equal the uninterrupted one bitwise: every process's RNG is checkpointed.

The two-process runs go through the real command line (`accelerate launch --multi_gpu` with
ACCELERATE_USE_CPU=1: `--cpu --num_processes 2` starts a single process in accelerate 1.x); the
one-process runs call the same library functions in this process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import ROOT, SMALL, sample_data, tiny_config

from qa_ebm.models.ebt import LatentModel
from qa_ebm.models.hvae import HVAE
from qa_ebm.training.checkpoint import TRAINER_STATE_FILES
from qa_ebm.training.ebt_trainer import train_ebt
from qa_ebm.training.hvae_trainer import SPLITS, train_hvae

pytestmark = pytest.mark.slow

# An eval (and a metrics line) at every step gives a loss curve to compare; checkpoints at steps 2 and 4.
CURVE = ["train_hvae.eval_every=1", "train_hvae.save_every=2", "train_ebt.eval_every=1", "train_ebt.save_every=2"]
# Gap allowed between the one- and two-process runs' metrics at each step: relative, or absolute for values
# near zero (energies). Measured here (bench/scale_out.py): train loss within 0.4 % (HVAE) and 1.1 % (EBT),
# val KL within 1.6 %, val energy within 0.005; both runs are deterministic, so this does not flake.
RTOL, ATOL = 0.03, 0.01
# Fault injection for the interrupted run: Ctrl-C in each process's step-3 forward, after the step-2 checkpoint.
INTERRUPT_AT_STEP_3 = """
import sys
from qa_ebm.cli.main import main
from qa_ebm.models.hvae import HVAE

forward, calls = HVAE.forward, [0]

def interrupted(self, *args, **kwargs):
    calls[0] += self.training
    if self.training and calls[0] == 3:
        raise KeyboardInterrupt
    return forward(self, *args, **kwargs)

HVAE.forward = interrupted
sys.exit(main(sys.argv[1:]))
"""


def cli_config() -> list[str]:
    return ["--config", str(ROOT / "configs" / "tiny.yaml"), *(f"--set={s}" for s in [*SMALL, *CURVE])]


def free_port() -> int:
    """Other test runs may be launching at the same time: never the default rendezvous port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(*args: str, script: Path | None = None) -> subprocess.CompletedProcess:
    """`accelerate launch` two CPU processes of `qa-ebm ARGS` (or of `script ARGS`)."""
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"),
        *("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
        *("--main_process_port", str(free_port())),
        *([str(script)] if script else ["-m", "qa_ebm.cli.main"]),
        *args,
    ]
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)


def launched(*args: str) -> subprocess.CompletedProcess:
    result = launch(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scale_out")
    data = sample_data(tiny_config(), root / "data")
    runs = {"data": data, **{name: root / name for name in ("hvae1", "hvae2", "ebt1", "ebt2")}}
    train_hvae(tiny_config(*CURVE), data, runs["hvae1"], progress=False)
    hvae = launched("train-hvae", *cli_config(), "--data", str(data), "--out", str(runs["hvae2"]))
    # Both energy models learn the same latents (the two-process HVAE's), so they differ only by how they trained.
    train_ebt(tiny_config(*CURVE), runs["hvae2"], runs["ebt1"], progress=False)
    ebt = launched("train-ebt", *cli_config(), "--hvae", str(runs["hvae2"]), "--out", str(runs["ebt2"]))
    return {**runs, "hvae2_stdout": hvae.stdout, "ebt2_stdout": ebt.stdout}


def assert_same_loss_curve(one: list[dict], two: list[dict], val_keys: tuple[str, ...]) -> None:
    assert [m["step"] for m in two] == [m["step"] for m in one] == [1, 2, 3, 4]  # one line per eval, not per process
    for a, b in zip(one, two, strict=True):
        for key in ("train_loss", *val_keys):
            assert b[key] == pytest.approx(a[key], rel=RTOL, abs=ATOL), (a["step"], key)


def assert_written_once(run: Path, stdout: str) -> None:
    """One writer: no temp file or directory left behind, a complete checkpoint, one summary line."""
    leftovers = [p for p in run.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]
    assert leftovers == []
    assert not list(run.parent.glob(f".{run.name}.old-*"))
    state = run / "trainer_state"
    assert sorted(p.name for p in state.iterdir()) == sorted(
        {*TRAINER_STATE_FILES, "model.safetensors"}
        | ({"replay.safetensors"} if (state / "replay.safetensors").exists() else set())
    )
    assert json.loads((state / "state.json").read_text())["step"] == 4
    assert {"cpu", "process1.cpu"} <= set(weights(state / "rng.safetensors"))  # each process's RNG, for --resume
    assert json.loads((run / "manifest.json").read_text())["step"] == 4
    assert stdout.count("stopped at step 4") == 1


def test_hvae_on_two_processes_matches_one_process(runs):
    one, two = metrics(runs["hvae1"]), metrics(runs["hvae2"])
    assert_same_loss_curve(one, two, ("val_token_nll", "val_kl_g", "val_kl_l"))
    assert_written_once(runs["hvae2"], runs["hvae2_stdout"])
    loaded = HVAE.from_pretrained(runs["hvae2"] / "model").state_dict()
    assert loaded.keys() >= weights(runs["hvae1"] / "model" / "model.safetensors").keys()


def test_hvae_on_two_processes_exports_latents_once_for_every_split(runs):
    two, one = runs["hvae2"] / "latents", runs["hvae1"] / "latents"
    expected = sorted(f"{split}.{ext}" for split in SPLITS for ext in ("json", "safetensors"))
    assert sorted(p.name for p in two.iterdir()) == expected
    for split in SPLITS:
        ids = json.loads((two / f"{split}.json").read_text())["ids"]
        assert ids == json.loads((one / f"{split}.json").read_text())["ids"]  # every answer, once, in order
        assert weights(two / f"{split}.safetensors")["mu_g"].shape[0] == len(ids)


def test_ebt_on_two_processes_matches_one_process(runs):
    one, two = metrics(runs["ebt1"]), metrics(runs["ebt2"])
    # train_contrast: each example's rivals come from the whole batch, not from its process's half.
    assert_same_loss_curve(one, two, ("train_contrast", "val_mse_refined", "val_energy_gold"))
    assert_written_once(runs["ebt2"], runs["ebt2_stdout"])
    model = LatentModel.from_pretrained(runs["ebt2"] / "model")
    assert model.spec.hvae_run == LatentModel.from_pretrained(runs["ebt1"] / "model").spec.hvae_run


def test_interrupted_two_process_run_resumes_to_the_uninterrupted_weights(runs, tmp_path):
    script = tmp_path / "interrupt.py"
    script.write_text(textwrap.dedent(INTERRUPT_AT_STEP_3))
    out = tmp_path / "hvae"
    args = ("train-hvae", *cli_config(), "--data", str(runs["data"]), "--out", str(out))
    assert launch(*args, script=script).returncode != 0
    assert json.loads((out / "trainer_state" / "state.json").read_text())["step"] == 2
    assert not (out / "model").exists()

    launched(*args, "--resume")
    assert [m["step"] for m in metrics(out)] == [1, 2, 3, 4]
    a, b = weights(runs["hvae2"] / "model" / "model.safetensors"), weights(out / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert metrics(out)[-1]["train_loss"] == metrics(runs["hvae2"])[-1]["train_loss"]
