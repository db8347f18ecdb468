"""Timing helpers shared by the bench scripts: warm-up, repeats, robust summaries, peak RSS, machine.

The machine these run on is small and shared, so a single timing means little. Every figure is the
median of several repeats after a warm-up, reported with the 5th/95th percentiles and the relative
spread ((p95 - p05) / median); comparisons are ratios of figures taken in the same process, interleaved.

    from bench.timing import time_fn, machine_info, peak_rss_mb, reset_peak_rss, summarise

    stats = time_fn(lambda: model(x), warmup=2, repeats=10)   # seconds per call
    stats["median"], stats["p05"], stats["p95"], stats["spread"], stats["n"]

`sync` is called after each call when given (e.g. `torch.cuda.synchronize`), so asynchronous
devices are timed to completion.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def summarise(samples: list[float]) -> dict:
    """Median, 5th / 95th percentiles, relative spread ((p95 - p05) / median) and count of `samples`."""
    if not samples:
        raise ValueError("summarise needs at least one sample")
    values = np.asarray(samples, dtype=float)
    median = float(np.median(values))
    p05, p95 = (float(v) for v in np.percentile(values, [5, 95]))
    return {
        "median": median,
        "p05": p05,
        "p95": p95,
        "spread": (p95 - p05) / median if median > 0 else 0.0,
        "n": len(samples),
    }


def time_fn(
    fn: Callable[[], object], warmup: int = 2, repeats: int = 10, sync: Callable[[], None] | None = None
) -> dict:
    """Seconds per call of `fn`: `warmup` untimed calls, then `summarise` over `repeats` timed calls."""
    for _ in range(warmup):
        fn()
        if sync is not None:
            sync()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        samples.append(time.perf_counter() - t0)
    return summarise(samples)


def peak_rss_mb() -> float:
    """Peak resident set size of this process, in MiB: since the last `reset_peak_rss()` where Linux allows it
    (VmHWM), else since the process started (ru_maxrss: KiB on Linux, bytes on macOS)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 2**10
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def current_rss_mb() -> float:
    """Resident set size of this process now, in MiB (Linux; 0.0 where /proc is absent)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 2**10
    except (OSError, StopIteration):
        return 0.0


def reset_peak_rss() -> bool:
    """Start `peak_rss_mb()` afresh from the current RSS (Linux >= 4.0: /proc/self/clear_refs); False if not."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def save_results(out: Path, name: str, result: dict, markdown: str) -> None:
    """`result` as out/NAME.json (for scripts) and `markdown` as out/NAME.md (for people)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{name}.md").write_text(markdown)


def machine_info() -> dict:
    """What a reader needs to compare these figures with theirs: CPU, core count, threads, versions."""
    import torch

    cpu = platform.processor() or "unknown"
    try:  # the model name is more telling than the architecture platform.processor() gives on Linux
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_avg_1_5_15": list(load) if load else None,
    }


def machine_line(m: dict) -> str:
    """One markdown line describing `machine_info()`'s result, for the head of a results table."""
    device = f", GPU {m['cuda']}" if m.get("cuda") else ""
    load = f", load average {m['load_avg_1_5_15'][0]:.1f}" if m.get("load_avg_1_5_15") else ""
    return (
        f"machine: {m['cpu']}, {m['cpus']} CPUs, torch {m['torch']} with {m['torch_threads']} threads"
        f"{device}, Python {m['python']}, {m['platform']}{load}"
    )
