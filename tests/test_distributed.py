"""training/distributed.py in one process: batch shares, seeds, the launch check, per-process RNG in checkpoints.

The several-process behaviour itself is tested end to end in tests/test_scale_out.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from qa_ebm.errors import ConfigError, OutputExistsError
from qa_ebm.training.checkpoint import load_trainer_state, save_trainer_state
from qa_ebm.training.distributed import check_launch, launch_state, on_main, process_seed, share_of


def test_shares_are_contiguous_blocks_that_cover_the_batch_in_rank_order():
    rows = np.arange(10, 20)
    shares = [share_of(rows, r, 3) for r in range(3)]
    assert np.array_equal(np.concatenate([s.rows for s in shares]), rows)
    assert [len(s.rows) for s in shares] == [4, 3, 3]
    assert all(np.array_equal(s.batch[s.part], s.rows) and s.total == 10 for s in shares)
    one = share_of(rows)
    assert np.array_equal(one.rows, rows) and one.part == slice(0, 10)


def test_a_batch_shorter_than_the_processes_leaves_none_empty():
    shares = [share_of(np.array([7]), r, 2) for r in range(2)]
    assert [s.rows.tolist() for s in shares] == [[7], [7]]


def test_launches_the_trainers_would_get_wrong_are_refused(monkeypatch):
    from accelerate.utils import DistributedType

    two = SimpleNamespace(distributed_type=DistributedType.MULTI_CPU, num_processes=2)
    check_launch(two, "train_hvae", 16, "no")
    with pytest.raises(ConfigError, match=r"train_hvae\.batch_size=15 .* multiple of 2"):
        check_launch(two, "train_hvae", 15, "no")
    fsdp = SimpleNamespace(distributed_type=DistributedType.FSDP, num_processes=2)
    with pytest.raises(ConfigError, match="FSDP shards the model"):
        check_launch(fsdp, "train_hvae", 16, "no")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(ConfigError, match=r"--set train_ebt\.mixed_precision=bf16"):
        check_launch(two, "train_ebt", 16, "no")
    check_launch(two, "train_ebt", 16, "bf16")


def test_process_zero_keeps_the_seed_and_the_others_get_their_own():
    assert process_seed(123, 0) == 123
    assert process_seed(123, 1) == process_seed(123, 1) != process_seed(123, 2)
    assert len({process_seed(s, 1) for s in range(100)} & set(range(100))) == 0


def test_on_main_in_one_process_returns_or_raises_as_called():
    assert on_main(lambda: 42) == 42
    with pytest.raises(OutputExistsError):
        on_main(lambda: (_ for _ in ()).throw(OutputExistsError("x")))


def test_processes_that_accelerate_does_not_see_are_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # launched as two, but no process group: each would train alone
    with pytest.raises(ConfigError, match="ACCELERATE_USE_CPU=1"):
        launch_state()


def test_each_process_resumes_its_own_rng_state(tmp_path):
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([param], lr=0.1)
    torch.manual_seed(0)
    main_state = torch.get_rng_state()
    torch.manual_seed(1)
    other_state = torch.get_rng_state()
    save_trainer_state(
        tmp_path / "s", optimizer, None, {"step": 1}, rng={"cpu": main_state, "process1.cpu": other_state}
    )

    load_trainer_state(tmp_path / "s", optimizer, None, process_index=1)
    assert torch.equal(torch.get_rng_state(), other_state)
    load_trainer_state(tmp_path / "s", optimizer, None)
    assert torch.equal(torch.get_rng_state(), main_state)
    load_trainer_state(tmp_path / "s", optimizer, None, process_index=2)  # more processes than were saved
    assert torch.equal(torch.get_rng_state(), main_state)
