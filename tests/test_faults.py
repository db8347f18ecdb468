"""Fault injection on real `qa-ebm train-*` processes: SIGINT, SIGTERM and SIGKILL at several points.

Each chain kills one run directory several times, resuming it after every kill, and ends with the final
weights and metrics.jsonl of an uninterrupted run, bit for bit (CPU, the same thread count). The faults
and what they must leave behind are listed in docs/reliability.md ("Interruption and numerical faults").
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import ROOT, SMALL, sample_data, tiny_config

from qa_ebm.training.ebt_trainer import train_ebt
from qa_ebm.training.hvae_trainer import train_hvae

pytestmark = pytest.mark.slow

HVAE_RUN = ["train_hvae.steps=30", "train_hvae.eval_every=2", "train_hvae.save_every=2"]
EBT_RUN = ["train_ebt.steps=16", "train_ebt.eval_every=2", "train_ebt.save_every=2"]
TIMEOUT = 300  # seconds a launch may take on a loaded machine before the test gives up on it

# Runs the command line in `sys.argv[2:]` and SIGKILLs itself inside checkpoint number `sys.argv[1]`
# of this process, once the model's weights are written and before the trainer state is complete.
KILL_IN_CHECKPOINT = """
import os, signal, sys
from qa_ebm.training import runs
target, calls, save_module = int(sys.argv[1]), [0], runs.save_module
def save_then_die(module, path):
    save_module(module, path)
    calls[0] += 1
    if calls[0] == target:
        os.kill(os.getpid(), signal.SIGKILL)
runs.save_module = save_then_die
from qa_ebm.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


class Launch:
    """One `qa-ebm` process, its stderr kept in a file (a pipe nobody reads would block the progress bar)."""

    def __init__(self, argv: list[str], log: Path, kill_in_checkpoint: int | None = None):
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": str(torch.get_num_threads()),  # the reference run's: the same float sums
        }
        if kill_in_checkpoint is None:
            command = [sys.executable, "-m", "qa_ebm.cli.main", *argv]
        else:
            command = [sys.executable, "-c", KILL_IN_CHECKPOINT, str(kill_in_checkpoint), *argv]
        self.log = log
        with log.open("w") as err:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=ROOT)

    def wait_for(self, condition, what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not condition():
            if self.process.poll() is not None:
                raise AssertionError(f"exited {self.process.returncode} before {what}:\n{self.stderr()[-2000:]}")
            if time.monotonic() > deadline:
                self.process.kill()
                raise AssertionError(f"no {what} after {TIMEOUT} s")
            time.sleep(0.02)

    def finish(self) -> int:
        try:
            return self.process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def stderr(self) -> str:
        return self.log.read_text(errors="replace")


def checkpoint_step(run: Path) -> int:
    """The step of the run's checkpoint; -1 while there is none (or mid-rename)."""
    try:
        return json.loads((run / "trainer_state" / "state.json").read_text())["step"]
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return -1


def interrupt(launch: Launch, run: Path, signum: int, after: int) -> int:
    """Send `signum` once a checkpoint past `after` exists; check the exit and the line; return the saved step."""
    launch.wait_for(lambda: checkpoint_step(run) > after, f"a checkpoint past step {after}")
    launch.process.send_signal(signum)
    assert launch.finish() == 128 + signum
    name = signal.Signals(signum).name
    last = launch.stderr().strip().splitlines()[-1]
    found = re.search(rf"interrupted by {name} at step (\d+); saved a checkpoint in (\S+); continue with: (.*)", last)
    assert found, last
    assert found[2] == str(run / "trainer_state") and found[3].endswith(" --resume")
    assert checkpoint_step(run) == int(found[1]) > after
    return int(found[1])


def assert_same_run(run: Path, reference: Path) -> None:
    a = load_file(str(run / "model" / "model.safetensors"))
    b = load_file(str(reference / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (run / "metrics.jsonl").read_text() == (reference / "metrics.jsonl").read_text()
    assert not list(run.parent.glob(f".{run.name}*")) and not list(run.glob(".trainer_state*"))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return sample_data(tiny_config(), tmp_path_factory.mktemp("faults") / "data")


def test_hvae_run_survives_sigint_a_sigkill_mid_checkpoint_and_a_random_sigkill(data_dir, tmp_path):
    reference = train_hvae(tiny_config(*HVAE_RUN), data_dir, tmp_path / "reference", progress=False).out
    run = tmp_path / "run"
    argv = ["train-hvae", "--config", str(ROOT / "configs" / "tiny.yaml"), "--data", str(data_dir)]
    argv += ["--out", str(run), *(a for s in [*SMALL, *HVAE_RUN] for a in ("--set", s))]

    # 1. Ctrl-C: the step under way finishes, a checkpoint is saved at that step (off the save cadence).
    stopped = interrupt(Launch(argv, tmp_path / "1.log"), run, signal.SIGINT, after=3)

    # 2. kill -9 between writing the weights and the trainer state of this launch's second checkpoint.
    killed = Launch([*argv, "--resume"], tmp_path / "2.log", kill_in_checkpoint=2)
    assert killed.finish() == -signal.SIGKILL
    first_save = stopped + 2 - stopped % 2
    assert checkpoint_step(run) == first_save  # the previous checkpoint, whole
    assert list(run.glob(".trainer_state.tmp-*"))  # the half-written one, left aside
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged[-1] == first_save + 2  # evaluated, then killed saving: resume must drop this line

    # 3. kill -9 at a random moment of a later step.
    launch = Launch([*argv, "--resume"], tmp_path / "3.log")
    launch.wait_for(lambda: checkpoint_step(run) > first_save, "a new checkpoint")
    time.sleep(random.Random(0).uniform(0.0, 0.4))
    launch.process.kill()
    assert launch.finish() == -signal.SIGKILL

    # 4. resume to the end: the uninterrupted run's weights and metrics.
    assert Launch([*argv, "--resume"], tmp_path / "4.log").finish() == 0
    assert_same_run(run, reference)


def test_ebt_run_survives_sigterm(data_dir, tmp_path):
    train_hvae(tiny_config(), data_dir, tmp_path / "hvae", progress=False)
    reference = train_ebt(tiny_config(*EBT_RUN), tmp_path / "hvae", tmp_path / "reference", progress=False).out
    run = tmp_path / "run"
    argv = ["train-ebt", "--config", str(ROOT / "configs" / "tiny.yaml"), "--hvae", str(tmp_path / "hvae")]
    argv += ["--out", str(run), *(a for s in [*SMALL, *EBT_RUN] for a in ("--set", s))]

    interrupt(Launch(argv, tmp_path / "1.log"), run, signal.SIGTERM, after=2)
    assert Launch([*argv, "--resume"], tmp_path / "2.log").finish() == 0
    assert_same_run(run, reference)  # the replay buffer too: the mcmc objective samples from it
