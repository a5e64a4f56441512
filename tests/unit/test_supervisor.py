"""The loop supervisor: errors logged once with a traceback, counted, retried, failing loops reported."""

from __future__ import annotations

import logging
import threading

import pytest

from helpers import wait_for
from pvcd.supervisor import FAILING_AFTER, MAX_BACKOFF, Supervisor, backoff, timed


def test_backoff_grows_and_is_bounded():
    assert backoff(0.25, 1) == 0.25
    assert backoff(0.25, 3) == 1.0
    assert backoff(0.25, 100) == MAX_BACKOFF
    assert backoff(30.0, 5) == 30.0  # never shorter than the loop's own period


def test_a_loop_that_raises_keeps_running_and_logs_the_traceback_once(caplog):
    caplog.set_level(logging.ERROR, logger="pvcd.supervisor")
    calls = []
    stop = threading.Event()

    def body() -> None:
        calls.append(1)
        if len(calls) <= 3:
            raise RuntimeError("boom")

    supervisor = Supervisor("hv1")
    thread = supervisor.spawn("test-loop", body, stop, 0.01)
    wait_for(lambda: len(calls) >= 6, 10, what="the loop to carry on after its failures")
    stop.set()
    thread.join(5)
    with_traceback = [r for r in caplog.records if r.exc_info]
    assert len(with_traceback) == 1 and "Loop test-loop of node hv1 failed" in with_traceback[0].getMessage()
    assert supervisor.to_json() == {"test-loop": {"failures": 3, "failing": False, "last_error": "RuntimeError: boom"}}


def test_a_loop_failing_in_a_row_is_reported_once_and_again_when_it_recovers():
    events: list[tuple[str, str | None]] = []
    supervisor = Supervisor("hv1", lambda loop, error: events.append((loop, error)))
    for _ in range(FAILING_AFTER + 2):
        supervisor.failed("fencer", ValueError("no"))
    assert events == [("fencer", "ValueError: no")]
    assert supervisor.failing() == ["fencer"]
    supervisor.succeeded("fencer")
    assert events == [("fencer", "ValueError: no"), ("fencer", None)]
    assert supervisor.failing() == []
    assert supervisor.to_json()["fencer"]["failures"] == FAILING_AFTER + 2


def test_timed_gives_up_on_a_hung_call_and_passes_errors_on():
    release = threading.Event()
    finished, value = timed("hung call", lambda: release.wait(10), 0.2)
    release.set()
    assert (finished, value) == (False, None)
    assert timed("quick call", lambda: 42, 5) == (True, 42)
    with pytest.raises(KeyError):
        timed("failing call", lambda: {}["x"], 5)
