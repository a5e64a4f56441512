"""Run the keepalive's figure collectors under a deadline.

A keepalive must leave on time even when libvirt or the kernel hangs. Each
collector runs in its own daemon thread; a collector that misses the deadline
keeps running in the background, is not started again until it returns, and
its last good figures are sent in the meantime, marked stale.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)


@dataclass
class _Run:
    thread: threading.Thread
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


@dataclass(frozen=True)
class Collected:
    """The figures of one round: fresh where possible, last known otherwise."""

    values: dict[str, Any]
    stale: tuple[str, ...]


class Collectors:
    """A fixed set of named collectors, run together once per keepalive."""

    def __init__(self, collectors: dict[str, Callable[[], Any]]) -> None:
        self._collectors = dict(collectors)
        self._running: dict[str, _Run] = {}
        self._last: dict[str, Any] = {}

    def _start(self, name: str) -> _Run:
        func = self._collectors[name]

        def target() -> None:
            try:
                run.result = func()
            except Exception as exc:  # a collector's failure is reported, never fatal
                run.error = exc
            finally:
                run.done.set()

        run = _Run(thread=threading.Thread(target=target, name=f"collect-{name}", daemon=True))
        run.thread.start()
        return run

    def collect(self, budget: float) -> Collected:
        """Collect every figure, waiting at most `budget` seconds in total."""
        deadline = time.monotonic() + budget
        for name in self._collectors:
            if name not in self._running:
                self._running[name] = self._start(name)
        stale = []
        for name in self._collectors:
            run = self._running[name]
            if not run.done.wait(max(deadline - time.monotonic(), 0)):
                log.warning("Collector '%s' did not answer within %.1fs; sending its last figures", name, budget)
                stale.append(name)
                continue
            del self._running[name]
            if run.error is not None:
                log.warning("Collector '%s' failed: %s; sending its last figures", name, run.error)
                stale.append(name)
                continue
            self._last[name] = run.result
        return Collected({name: self._last.get(name) for name in self._collectors}, tuple(stale))
