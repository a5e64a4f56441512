"""The services only the primary coordinator runs (DHCP, the DNS aggregator, ...).

They are started in registration order on takeover, after the floating IPs
are up (they may bind to them), and stopped in reverse order on relinquish,
before the floating IPs go. Each call runs in its own thread under a shared
deadline: a service that hangs must not keep the coordinator loop from
renewing its lease or from removing the floating IPs. A service that fails or
hangs is logged and left behind; the others still start or stop, because a
primary missing one service is better than a cluster without a primary.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger(__name__)


class PrimaryService(Protocol):
    """What the registry needs of a service; both calls should return within a second or two."""

    name: str

    def start(self) -> None: ...

    def stop(self) -> None: ...


def _run_bounded(action: Callable[[], None], timeout: float) -> str | None:
    """Run `action` in a daemon thread; None if it returned in time, else what went wrong."""
    failure: list[str] = []

    def run() -> None:
        try:
            action()
        except Exception as exc:
            failure.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=run, name="primary-service", daemon=True)
    thread.start()
    thread.join(max(timeout, 0.0))
    if thread.is_alive():
        return f"did not finish within {timeout:.1f}s"
    return failure[0] if failure else None


class ServiceRegistry:
    """Primary-only services, in start order."""

    def __init__(self) -> None:
        self._services: list[PrimaryService] = []
        self._running: list[PrimaryService] = []
        self._lock = threading.Lock()

    def register(self, service: PrimaryService) -> None:
        """Add a service; it starts at the next takeover (register before the role starts)."""
        with self._lock:
            if any(existing.name == service.name for existing in self._services):
                raise ValueError(f"a primary service named {service.name!r} is registered already")
            self._services.append(service)

    @property
    def names(self) -> list[str]:
        with self._lock:
            return [service.name for service in self._services]

    @property
    def running(self) -> list[str]:
        """Services started and not stopped since, in start order."""
        with self._lock:
            return [service.name for service in self._running]

    def start_all(self, budget: float) -> None:
        """Start every service in registration order, all within `budget` seconds."""
        deadline = time.monotonic() + budget
        with self._lock:
            services = list(self._services)
        for service in services:
            problem = _run_bounded(service.start, deadline - time.monotonic())
            if problem is not None:
                log.error("Primary service %s did not start: %s; the node is primary without it", service.name, problem)
                continue
            with self._lock:
                self._running.append(service)
            log.info("Primary service %s started", service.name)

    def stop_all(self, budget: float) -> None:
        """Stop the running services in reverse start order, all within `budget` seconds."""
        deadline = time.monotonic() + budget
        while True:
            with self._lock:
                if not self._running:
                    return
                service = self._running.pop()
            problem = _run_bounded(service.stop, deadline - time.monotonic())
            if problem is not None:
                log.error("Primary service %s did not stop cleanly: %s; check it by hand", service.name, problem)
            else:
                log.info("Primary service %s stopped", service.name)
