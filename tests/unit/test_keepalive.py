"""Keepalive records, node states and the collector deadline."""

from __future__ import annotations

import threading
import time

import pytest

from pvcd.cluster.values import DomainFigures, HostMemory, StateRecord
from pvcd.collect import Collectors
from pvcd.hostinfo import parse_meminfo
from pvcd.keepalive import DOMAINS, LOAD, MEMORY, build_keepalive, cluster_log_line, keepalive_log_line
from pvcd.states import CoordinatorState, DaemonState, TransitionError, daemon_transition, initial_coordinator_state

DOMS = [DomainFigures("a", "u1", 512, 2), DomainFigures("b", "u2", 2048, 4)]


def test_keepalive_record_sums_running_vms():
    record = build_keepalive(7, 5, {MEMORY: HostMemory(16384, 10000), LOAD: 0.25, DOMAINS: DOMS})
    assert record == {
        "counter": 7,
        "interval": 5,
        "memory": {"total": 16384, "used": 6384, "free": 10000, "allocated": 2560},
        "vcpus": {"allocated": 6},
        "load": 0.25,
        "vms": {"count": 2, "running": ["a", "b"]},
        "stale": [],
    }


def test_keepalive_record_with_figures_never_collected():
    record = build_keepalive(1, 5, {MEMORY: None, LOAD: None, DOMAINS: None}, stale=("domains", "memory"))
    assert record["memory"] == {"total": None, "used": None, "free": None, "allocated": None}
    assert record["vms"] == {"count": None, "running": []}
    assert record["stale"] == ["domains", "memory"]


def test_log_lines_with_and_without_details():
    state = StateRecord("run", "secondary", "ready")
    record = build_keepalive(3, 5, {MEMORY: HostMemory(100, 40), LOAD: 1.5, DOMAINS: DOMS[:1]})
    assert keepalive_log_line("hv1", record, state, details=False) == "Keepalive #3 from hv1"
    detailed = keepalive_log_line("hv1", record, state, details=True)
    assert "daemon run" in detailed and "1 VMs" in detailed and "load 1.5" in detailed
    states = {"hv1": state, "hv2": StateRecord("stop", "primary", "ready")}
    assert cluster_log_line(states) == "Cluster: 2 nodes (1 run, 1 stop); primary: hv2"


def test_state_record_round_trip_and_garbage():
    state = StateRecord("run", "client", "ready")
    assert StateRecord.from_json(state.to_json()) == state
    assert StateRecord.from_json("nonsense") == StateRecord("unknown", "unknown", "unknown")


@pytest.mark.parametrize(
    "current,wanted",
    [("init", "run"), ("run", "shutdown"), ("shutdown", "stop"), ("stop", "init"), ("init", "shutdown")],
)
def test_daemon_transitions_allowed(current, wanted):
    assert daemon_transition(DaemonState(current), DaemonState(wanted)) == wanted


@pytest.mark.parametrize("current,wanted", [("init", "stop"), ("run", "init"), ("stop", "run"), ("run", "run")])
def test_daemon_transitions_refused(current, wanted):
    with pytest.raises(TransitionError):
        daemon_transition(DaemonState(current), DaemonState(wanted))


def test_initial_coordinator_state():
    assert initial_coordinator_state(True) == CoordinatorState.SECONDARY
    assert initial_coordinator_state(False) == CoordinatorState.CLIENT


def test_parse_meminfo():
    text = "MemTotal:       16384000 kB\nMemFree:         1000000 kB\nMemAvailable:    8192000 kB\n"
    assert parse_meminfo(text) == HostMemory(16000, 8000)


def test_collectors_return_fresh_values():
    collectors = Collectors({"a": lambda: 1, "b": lambda: "x"})
    result = collectors.collect(1.0)
    assert result.values == {"a": 1, "b": "x"} and result.stale == ()


def test_hung_collector_keeps_last_value_and_is_not_restarted():
    release = threading.Event()
    calls = []

    def slow():
        calls.append(1)
        if len(calls) > 1:
            release.wait(10)
        return len(calls)

    collectors = Collectors({"slow": slow, "fast": lambda: "ok"})
    assert collectors.collect(1.0).values == {"slow": 1, "fast": "ok"}
    started = time.monotonic()
    second = collectors.collect(0.2)
    assert time.monotonic() - started < 1.0
    assert second.values == {"slow": 1, "fast": "ok"} and second.stale == ("slow",)
    third = collectors.collect(0.2)
    assert third.stale == ("slow",) and len(calls) == 2
    release.set()
    time.sleep(0.1)
    assert collectors.collect(1.0).values["slow"] == 2


def test_failing_collector_is_stale_not_fatal():
    def broken():
        raise OSError("libvirt went away")

    result = Collectors({"broken": broken}).collect(1.0)
    assert result.values == {"broken": None} and result.stale == ("broken",)
