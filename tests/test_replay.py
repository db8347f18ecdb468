import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from qa_ebm.errors import CheckpointError, ConfigError
from qa_ebm.training.replay import ReplayBuffer

SHAPE = (3, 2)  # (1+S, D)


def _rows(values):
    """Rows whose every entry is the row's value, so a drawn row says which push it came from."""
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1).expand(-1, *SHAPE).clone()


def _fresh(n, generator):
    return torch.full((n, *SHAPE), -1.0)


def _ids(y):
    return y[:, 0, 0].tolist()


def _buffer(capacity=4, reinit_prob=0.0, seed=0):
    return ReplayBuffer(capacity, SHAPE, reinit_prob=reinit_prob, generator=torch.Generator().manual_seed(seed))


def test_fifo_eviction_keeps_the_newest_rows():
    buf = _buffer(capacity=4)
    buf.push(_rows([0, 1, 2]))
    buf.push(_rows([3, 4]))  # wraps: 0 is evicted
    assert len(buf) == 4
    assert _ids(buf.state_dict()["y"]) == [1, 2, 3, 4]
    buf.push(_rows([5, 6, 7, 8, 9, 10]))  # larger than the capacity: only the last 4 stay
    assert _ids(buf.state_dict()["y"]) == [7, 8, 9, 10]
    assert buf.num_pushed == 11


def test_reinit_prob_zero_draws_only_stored_rows():
    buf = _buffer(capacity=8, reinit_prob=0.0)
    buf.push(_rows(range(8)))
    batch = buf.sample(64, _fresh)
    assert not bool(batch.fresh.any())
    assert set(_ids(batch.y)) <= set(range(8))
    assert len(set(_ids(batch.y))) > 4  # uniform draws, not one row repeated


def test_reinit_prob_one_draws_only_fresh_rows():
    buf = _buffer(capacity=8, reinit_prob=1.0)
    buf.push(_rows(range(8)))
    batch = buf.sample(16, _fresh)
    assert bool(batch.fresh.all())
    assert _ids(batch.y) == [-1.0] * 16
    assert bool(batch.mask.all())


def test_intermediate_reinit_prob_mixes_rows():
    buf = _buffer(capacity=8, reinit_prob=0.3)
    buf.push(_rows(range(8)))
    batch = buf.sample(400, _fresh)
    share = batch.fresh.float().mean().item()
    assert 0.2 < share < 0.4
    # Fresh rows are exactly the init_fn rows.
    assert torch.equal(batch.y[:, 0, 0] == -1.0, batch.fresh)


def test_too_few_entries_gives_fresh_rows():
    buf = _buffer(capacity=8, reinit_prob=0.0)
    batch = buf.sample(4, _fresh)  # empty buffer
    assert bool(batch.fresh.all())
    buf.push(_rows([1, 2]))
    assert bool(buf.sample(4, _fresh).fresh.all())  # 2 stored rows cannot fill a batch of 4
    buf.push(_rows([3, 4]))
    assert not bool(buf.sample(4, _fresh).fresh.any())


def test_a_buffer_smaller_than_the_batch_is_still_used_once_full():
    buf = _buffer(capacity=2, reinit_prob=0.0)
    buf.push(_rows([1, 2]))
    batch = buf.sample(8, _fresh)
    assert not bool(batch.fresh.any())
    assert set(_ids(batch.y)) == {1.0, 2.0}


def test_masks_travel_with_their_rows():
    buf = _buffer(capacity=4)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)
    buf.push(_rows([0, 1, 2, 3]), mask)
    batch = buf.sample(32, _fresh)
    for row_id, row_mask in zip(_ids(batch.y), batch.mask, strict=True):
        assert torch.equal(row_mask, mask[int(row_id)])


def test_push_stores_detached_cpu_copies():
    buf = _buffer(capacity=2)
    y = _rows([1, 2]).requires_grad_(True)
    buf.push(y * 1.0)
    y.data.fill_(7.0)
    stored = buf.state_dict()["y"]
    assert _ids(stored) == [1, 2]
    assert not stored.requires_grad
    sample = buf.sample(2, _fresh)
    sample.y.fill_(9.0)  # writing into a batch must not reach the buffer
    assert _ids(buf.state_dict()["y"]) == [1, 2]


def test_sampling_is_deterministic_given_the_generator():
    def draw(seed):
        buf = _buffer(capacity=16, reinit_prob=0.5, seed=seed)
        buf.push(_rows(range(16)))
        return [buf.sample(8, lambda n, g: torch.randn(n, *SHAPE, generator=g)).y for _ in range(3)]

    a, b, c = draw(0), draw(0), draw(1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_state_round_trip_through_safetensors_and_json(tmp_path):
    buf = _buffer(capacity=4, reinit_prob=0.5, seed=3)
    masks = torch.rand(6, 3, generator=torch.Generator().manual_seed(0)) > 0.5
    buf.push(_rows([0, 1, 2]), masks[:3])
    buf.push(_rows([3, 4, 5]), masks[3:])  # the ring wraps: its oldest row is no longer in slot 0
    buf.sample(5, _fresh)  # advance the generator
    state = buf.state_dict()
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    ints = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
    save_file(tensors, str(tmp_path / "replay.safetensors"))
    (tmp_path / "replay.json").write_text(json.dumps(ints))

    restored = _buffer(capacity=4, reinit_prob=0.5, seed=99)
    restored.load_state_dict(
        {**load_file(str(tmp_path / "replay.safetensors")), **json.loads((tmp_path / "replay.json").read_text())}
    )
    assert len(restored) == 4 and restored.num_pushed == 6
    assert torch.equal(restored.state_dict()["y"], state["y"])
    assert torch.equal(restored.state_dict()["mask"], state["mask"])
    # The resumed buffer draws what the original draws next, and evicts in the same order.
    assert torch.equal(restored.sample(8, _fresh).y, buf.sample(8, _fresh).y)
    restored.push(_rows([6]))
    buf.push(_rows([6]))
    assert _ids(restored.state_dict()["y"]) == _ids(buf.state_dict()["y"]) == [3, 4, 5, 6]


def test_empty_state_round_trip():
    state = _buffer().state_dict()
    restored = _buffer(seed=5)
    restored.load_state_dict(state)
    assert len(restored) == 0


def test_load_rejects_other_shapes_and_missing_keys():
    state = _buffer().state_dict()
    other = ReplayBuffer(4, (3, 5))
    with pytest.raises(CheckpointError, match=r"expects \(3, 5\)"):
        other.load_state_dict(state)
    with pytest.raises(CheckpointError, match="missing"):
        _buffer().load_state_dict({"y": state["y"]})


def test_bad_arguments():
    with pytest.raises(ConfigError, match="capacity"):
        ReplayBuffer(0, SHAPE)
    with pytest.raises(ConfigError, match="reinit_prob"):
        ReplayBuffer(4, SHAPE, reinit_prob=1.5)
    with pytest.raises(ValueError, match="push expects y"):
        _buffer().push(torch.zeros(2, 3, 3))
    with pytest.raises(ValueError, match="init_fn"):
        _buffer().sample(2, lambda n, g: torch.zeros(n, 1))
