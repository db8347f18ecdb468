"""bfloat16 autocast for the reading-mode trainers: on for bf16, off for no, a clear error otherwise."""

from __future__ import annotations

import pytest
import torch

from qa_ebm.errors import ConfigError
from qa_ebm.models.precision import autocast, check_precision

CPU = torch.device("cpu")


def test_bf16_runs_matmuls_in_bfloat16_and_no_leaves_float32():
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast(CPU, "bf16"):
        assert (a @ b).dtype == torch.bfloat16
    with autocast(CPU, "no"):
        assert (a @ b).dtype == torch.float32
    assert (a @ b).dtype == torch.float32  # the context ends with the block


def test_gradients_reach_float32_weights_under_bf16():
    layer = torch.nn.Linear(8, 2)
    with autocast(CPU, "bf16"):
        loss = layer(torch.randn(5, 8)).float().pow(2).mean()
    loss.backward()
    assert layer.weight.grad is not None and layer.weight.grad.dtype == torch.float32
    assert torch.isfinite(layer.weight.grad).all()


@pytest.mark.parametrize("bad", ["fp16", "bfloat16", "", "yes"])
def test_unknown_precision_is_refused_with_the_choices(bad):
    with pytest.raises(ConfigError, match="no, bf16"):
        check_precision(bad, "reading")
    with pytest.raises(ConfigError, match="no, bf16"), autocast(CPU, bad):
        pass


def test_bf16_on_a_cpu_without_native_bf16_warns_once(monkeypatch, caplog):
    import qa_ebm.models.precision as precision

    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: False)
    precision._warn_emulated.cache_clear()
    with caplog.at_level("WARNING", logger="qa_ebm.models.precision"):
        for _ in range(3):
            with autocast(CPU, "bf16"):
                pass
        with autocast(CPU, "no"):
            pass
    assert [r.message.count("emulated") for r in caplog.records] == [1]
    precision._warn_emulated.cache_clear()


def test_native_cpu_bf16_is_a_bool():
    from qa_ebm.models.precision import native_cpu_bf16

    assert isinstance(native_cpu_bf16(), bool)
