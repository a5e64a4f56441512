"""The primary-only services registry: order, failures, hung services."""

from __future__ import annotations

import threading
import time

import pytest

from pvcd.coordinator.services import ServiceRegistry


class Recorder:
    def __init__(self, name: str, events: list[str], fail: str = "", hang: threading.Event | None = None) -> None:
        self.name, self.events, self.fail, self.hang = name, events, fail, hang

    def start(self) -> None:
        if self.fail == "start":
            raise RuntimeError("port in use")
        if self.hang is not None:
            self.hang.wait(10)
        self.events.append(f"start {self.name}")

    def stop(self) -> None:
        if self.fail == "stop":
            raise RuntimeError("already gone")
        self.events.append(f"stop {self.name}")


def test_started_in_order_and_stopped_in_reverse():
    events: list[str] = []
    registry = ServiceRegistry()
    for name in ("dhcp", "dns", "api"):
        registry.register(Recorder(name, events))
    registry.start_all(1.0)
    assert registry.running == ["dhcp", "dns", "api"]
    registry.stop_all(1.0)
    assert events == ["start dhcp", "start dns", "start api", "stop api", "stop dns", "stop dhcp"]
    assert registry.running == []


def test_a_failing_service_does_not_stop_the_others(caplog):
    events: list[str] = []
    registry = ServiceRegistry()
    registry.register(Recorder("dhcp", events, fail="start"))
    registry.register(Recorder("dns", events, fail="stop"))
    registry.register(Recorder("api", events))
    registry.start_all(1.0)
    assert registry.running == ["dns", "api"]
    registry.stop_all(1.0)
    assert events == ["start dns", "start api", "stop api"]
    assert "Primary service dhcp did not start: RuntimeError: port in use" in caplog.text
    assert "Primary service dns did not stop cleanly: RuntimeError: already gone" in caplog.text


def test_a_hung_service_costs_at_most_the_budget(caplog):
    events: list[str] = []
    hang = threading.Event()
    registry = ServiceRegistry()
    registry.register(Recorder("slow", events, hang=hang))
    registry.register(Recorder("fast", events))
    started = time.monotonic()
    registry.start_all(0.3)
    assert time.monotonic() - started < 1.0
    assert "did not finish within" in caplog.text
    hang.set()


def test_names_are_unique():
    registry = ServiceRegistry()
    registry.register(Recorder("dns", []))
    with pytest.raises(ValueError, match="dns"):
        registry.register(Recorder("dns", []))
    assert registry.names == ["dns"]
