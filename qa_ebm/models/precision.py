"""Mixed precision for the loops that do not go through accelerate (the reading mode's trainers).

``bf16`` runs matrix products in bfloat16 under ``torch.autocast`` while the weights, the optimiser state and
the losses stay float32. On a CPU with AVX512-BF16 (or AMX) that is the cheap speed-up: measured on this
project's two-core machine (``bench/reading_precision.py``), a (4096x384)@(384x1536) matmul runs 3.9x faster,
a MiniLM-L6 training step on 16 real SQuAD windows 1.9x and answering SQuAD questions 2.2x. On a CPU without
those instructions bf16 is emulated and slower (``autocast`` warns once); keep ``no`` there.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator

import torch

from qa_ebm.errors import ConfigError

log = logging.getLogger(__name__)

PRECISIONS = ("no", "bf16")


def check_precision(mixed_precision: str, where: str) -> None:
    if mixed_precision not in PRECISIONS:
        raise ConfigError(f"{where}: mixed_precision must be one of {', '.join(PRECISIONS)}, got {mixed_precision!r}")


@functools.cache
def native_cpu_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX); False where torch cannot tell."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


@functools.cache
def _warn_emulated() -> None:
    log.warning(
        "mixed_precision=bf16 on a CPU without AVX512-BF16 or AMX: bfloat16 is emulated there and slower than "
        "float32; set mixed_precision=no"
    )


@contextlib.contextmanager
def autocast(device: torch.device, mixed_precision: str) -> Iterator[None]:
    """bfloat16 autocast on `device` when `mixed_precision` is ``bf16``; a no-op for ``no``."""
    check_precision(mixed_precision, "autocast")
    if mixed_precision == "bf16" and device.type == "cpu" and not native_cpu_bf16():
        _warn_emulated()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed_precision == "bf16"):
        yield


__all__ = ["PRECISIONS", "autocast", "check_precision", "native_cpu_bf16"]
