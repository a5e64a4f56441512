"""Every loop of the daemon runs under one supervisor: no thread dies silently.

A loop body that raises is logged with its traceback the first time that error
appears (later repeats are one line with a count, so a loop failing every tick
cannot flood the log), counted, and retried after a backoff that grows but is
bounded. A loop that fails FAILING_AFTER times in a row is *failing*: the
daemon is told once (it steps down as coordinator and records the fault that
`pvc cluster status` shows), and told again when the loop recovers.
The counts are published with every keepalive (`pvc node info`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("pvcd.supervisor")

FAILING_AFTER = 5
"""Consecutive failures after which a loop counts as failing."""
MAX_BACKOFF = 10.0
"""Seconds: the longest a failed loop waits before it runs again."""


def backoff(period: float, consecutive: int) -> float:
    """How long to wait after the `consecutive`-th failure in a row (pure)."""
    return min(max(period, 0.05) * 2 ** max(consecutive - 1, 0), max(MAX_BACKOFF, period))


@dataclass
class LoopHealth:
    failures: int = 0
    consecutive: int = 0
    last_error: str | None = None
    failing: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"failures": self.failures, "failing": self.failing, "last_error": self.last_error}


class Supervisor:
    """Runs loops, counts their failures, and reports loops that keep failing."""

    def __init__(self, node: str, on_failing: Callable[[str, str | None], None] | None = None) -> None:
        """`on_failing(loop, error)` is called once when a loop starts failing, and with
        error None once it recovers; it must not block for long."""
        self.node = node
        self.on_failing = on_failing
        self._lock = threading.Lock()
        self._health: dict[str, LoopHealth] = {}
        self._seen: set[tuple[str, str]] = set()

    def spawn(self, name: str, body: Callable[[], None], stop: threading.Event, period: float) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(name, body, stop, period), name=name, daemon=True)
        thread.start()
        return thread

    def run(self, name: str, body: Callable[[], None], stop: threading.Event, period: float) -> None:
        """Call `body` every `period` seconds until `stop` is set, whatever it raises."""
        wait = period
        while not stop.wait(wait):
            try:
                body()
            except Exception as exc:
                wait = backoff(period, self.failed(name, exc))
            else:
                self.succeeded(name)
                wait = period

    def failed(self, name: str, exc: BaseException) -> int:
        """Record one failure of loop `name` (for loops that catch their own errors); the count in a row."""
        error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            health = self._health.setdefault(name, LoopHealth())
            health.failures += 1
            health.consecutive += 1
            health.last_error = error
            first = (name, error) not in self._seen
            self._seen.add((name, error))
            became_failing = health.consecutive >= FAILING_AFTER and not health.failing
            if became_failing:
                health.failing = True
            consecutive = health.consecutive
        if first:
            log.error("Loop %s of node %s failed; retrying: %s", name, self.node, error, exc_info=exc)
        else:
            log.error("Loop %s of node %s failed again (%d in a row): %s", name, self.node, consecutive, error)
        if became_failing:
            log.critical(
                "Loop %s of node %s keeps failing (%d times in a row): %s", name, self.node, consecutive, error
            )
            if self.on_failing is not None:
                self.on_failing(name, error)
        return consecutive

    def succeeded(self, name: str) -> None:
        with self._lock:
            health = self._health.get(name)
            if health is None or health.consecutive == 0:
                return
            recovered = health.failing
            health.consecutive = 0
            health.failing = False
        if recovered:
            log.warning("Loop %s of node %s works again", name, self.node)
            if self.on_failing is not None:
                self.on_failing(name, None)

    def failing(self) -> list[str]:
        with self._lock:
            return sorted(name for name, health in self._health.items() if health.failing)

    def to_json(self) -> dict[str, Any]:
        """The loops that ever failed, for the keepalive record."""
        with self._lock:
            return {name: health.to_json() for name, health in sorted(self._health.items())}


def timed(what: str, func: Callable[[], Any], timeout: float) -> tuple[bool, Any]:
    """Run `func` in a daemon thread for at most `timeout` seconds: (finished, result).

    For calls that may hang (libvirt on a wedged host) when giving up is better
    than waiting: the thread is abandoned, not killed.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = func()
        except Exception as exc:
            box["error"] = exc

    worker = threading.Thread(target=run, name=what, daemon=True)
    started = time.monotonic()
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        log.error("%s did not finish within %.1fs; carrying on without it", what, time.monotonic() - started)
        return False, None
    if "error" in box:
        raise box["error"]
    return True, box.get("value")
