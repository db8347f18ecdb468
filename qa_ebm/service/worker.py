"""One thread owns the model: every call runs there, in arrival order, and stops at its deadline.

Why one worker thread rather than a lock around the model: the pipelines are not assumed thread-safe, and a
queue makes that true by construction (only this thread ever touches the weights, torch's per-thread state
such as grad mode stays in one place); a request thread just waits on a future with a timeout; and a timed-out
call can be stopped where it runs. Answers do not get faster with more threads on the same weights anyway:
torch already spreads one call over the cores (``--threads``).

Stopping a runaway call: Python cannot kill a thread, so the worker checks the running job's deadline in a
forward pre-hook on every ``nn.Module`` call (refinement and decoding are loops of module calls) and raises
:class:`DeadlineExceeded` there; the job ends within one module call of its deadline and the worker moves on
to the next. The hook is process-wide (torch's global module hook, so it reaches modules held anywhere in a
pipeline) but does nothing outside the worker thread, and it is removed by :meth:`ModelWorker.close`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

log = logging.getLogger(__name__)

T = TypeVar("T")


class DeadlineExceeded(Exception):
    """A model call ran past its deadline and was stopped (or never started)."""


@dataclass
class _Job:
    fn: Callable[[], Any]
    deadline: float  # time.monotonic()
    future: Future


class ModelWorker:
    """Runs model calls one at a time on its own thread; see the module docstring."""

    def __init__(self, name: str = "qa-ebm-model"):
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._deadline: float | None = None  # the running job's; read and written by the worker thread only
        self._busy_since: float | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._hook = torch.nn.modules.module.register_module_forward_pre_hook(self._check_deadline)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def busy_for(self) -> float | None:
        """Seconds the running call has taken so far, None when idle."""
        since = self._busy_since
        return None if since is None else time.monotonic() - since

    def run(self, fn: Callable[[], T], timeout: float) -> T:
        """fn() on the worker thread; its result or its exception. Raises DeadlineExceeded after `timeout`
        seconds, counted from now (waiting in the queue included: that is what the client waits for)."""
        deadline = time.monotonic() + timeout
        future: Future = Future()
        self._jobs.put(_Job(fn, deadline, future))
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            future.cancel()  # still queued: it never starts; running: the hook stops it at its deadline
            raise DeadlineExceeded(f"no answer within {timeout:g} s") from None

    def close(self, timeout: float | None = None) -> None:
        """Stop taking jobs once the queued ones are done (or `timeout` passes), and remove the hook."""
        self._jobs.put(None)
        self._thread.join(timeout)
        self._hook.remove()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            if not job.future.set_running_or_notify_cancel():
                continue  # its client gave up while it waited
            if time.monotonic() >= job.deadline:
                job.future.set_exception(DeadlineExceeded("its deadline passed in the queue"))
                continue
            self._deadline, self._busy_since = job.deadline, time.monotonic()
            try:
                job.future.set_result(job.fn())
            except BaseException as e:  # the client gets it (or its timeout); the worker lives on
                job.future.set_exception(e)
            finally:
                self._deadline = self._busy_since = None

    def _check_deadline(self, module: torch.nn.Module, args: Any) -> None:
        deadline = self._deadline
        if deadline is not None and time.monotonic() > deadline and threading.current_thread() is self._thread:
            raise DeadlineExceeded(f"stopped in {type(module).__name__} past its deadline")
