"""What only the in-memory store has: the injectable clock, the network as method calls,
deterministic delivery; and the election adapter running on it unchanged.

The semantics it shares with ZooKeeper are in tests/integration/test_store_contract.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from pvcd.coordinator.election import Election, ElectionUnavailable
from pvcd.zk import schema
from pvcd.zk.base import StoreUnavailable, Versioned
from pvcd.zk.memory import MemoryServer, MemoryStore


class Clock:
    def __init__(self, now_ms: int = 1_000_000) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server(clock: Clock) -> MemoryServer:
    return MemoryServer(clock)


def started(server: MemoryServer, session_timeout: float = 4.0) -> MemoryStore:
    store = MemoryStore(server, session_timeout=session_timeout)
    store.start()
    return store


def test_mtimes_and_server_time_come_from_the_injected_clock(server: MemoryServer, clock: Clock) -> None:
    store = started(server)
    assert store.negotiated_session_timeout == 4.0
    store.create("/a", 1)
    clock.now_ms += 1500
    store.set("/a", 2, 0)
    assert store.get("/a") == Versioned(2, 1, 1_001_500)
    clock.now_ms += 10
    assert store.server_time_ms() == 1_001_510


def test_a_cut_off_client_is_suspended_and_catches_up_on_reconnection(server: MemoryServer) -> None:
    store, other = started(server), started(server)
    states: list[str] = []
    seen: list[Any] = []
    store.add_listener(states.append)
    store.watch_data("/w", lambda value: seen.append(value and value.value))
    store.disconnect()
    assert states == ["SUSPENDED"] and not store.connected
    with pytest.raises(StoreUnavailable):
        store.get("/w")
    with pytest.raises(StoreUnavailable):
        store.get_async("/w").result(1.0)
    other.create("/w", "while cut")
    assert seen == [None]
    store.reconnect()
    assert states == ["SUSPENDED", "CONNECTED"]
    assert seen == [None, "while cut"]


def test_a_session_expired_while_cut_off_is_lost_on_reconnection(server: MemoryServer) -> None:
    store, other = started(server), started(server)
    store.create("/mine", 1, ephemeral=True)
    other.create("/kept", "same")
    seen: list[Any] = []
    store.watch_data("/kept", lambda value: seen.append(value and value.value))
    states: list[str] = []
    store.add_listener(states.append)
    store.disconnect()
    store.expire_session()
    assert not other.exists("/mine")
    assert states == ["SUSPENDED"]  # it cannot hear it yet
    store.reconnect()
    assert states == ["SUSPENDED", "LOST", "CONNECTED"]
    assert seen == ["same", "same"]  # the current value again on the new session
    store.create("/mine", 2, ephemeral=True)


def test_sessions_cut_off_for_a_session_timeout_expire_by_the_clock(server: MemoryServer, clock: Clock) -> None:
    store, other = started(server, session_timeout=2.0), started(server, session_timeout=2.0)
    store.create("/mine", 1, ephemeral=True)
    store.disconnect()
    clock.now_ms += 1999
    assert server.expire_stale() == []
    clock.now_ms += 1
    assert server.expire_stale() == [store.session_id]
    assert not other.exists("/mine")


def test_callbacks_run_one_at_a_time_in_order_even_when_they_write(server: MemoryServer) -> None:
    store = started(server)
    order: list[str] = []
    depth = [0]

    def on_a(value: Versioned | None) -> None:
        depth[0] += 1
        assert depth[0] == 1
        order.append(f"a={value and value.value}")
        if value is not None and value.value == 1:
            store.create("/b", "from a's callback")  # its watch runs after this callback returns
            order.append("a wrote b")
        depth[0] -= 1

    store.watch_data("/a", on_a)
    store.watch_data("/b", lambda value: order.append(f"b={value and value.value}") and None)
    store.create("/a", 1)
    assert order == ["a=None", "b=None", "a=1", "a wrote b", "b=from a's callback"]


def test_a_failing_callback_is_logged_and_the_watch_carries_on(server: MemoryServer) -> None:
    store = started(server)
    seen: list[Any] = []

    def callback(value: Versioned | None) -> None:
        seen.append(value and value.value)
        if value is not None and value.value == 1:
            raise RuntimeError("a bug in the callback")

    store.watch_data("/a", callback)
    store.create("/a", 1)
    store.set("/a", 2, 0)
    assert seen == [None, 1, 2]


def test_the_election_runs_on_the_memory_store(server: MemoryServer) -> None:
    first, second = started(server), started(server)
    one, two = Election(first, "hv1", timeout=1.0), Election(second, "hv2", timeout=1.0)
    one.prepare()
    two.prepare()
    woken: list[Any] = []
    observed = two.observe(woken.append)
    assert observed.claims == () and observed.handover is None
    one.claim(one.observe(lambda _event: None))
    assert len(woken) == 1  # the claims watch fired
    observed = two.observe(woken.append)
    assert observed.owner == "hv1" and observed.claims[0].name.endswith("0000000000")
    two.claim(observed)
    both = two.observe(woken.append)
    assert [claim.node for claim in both.claims] == ["hv1", "hv2"] and both.owned_by(one.token)
    second.create(schema.HANDOVER, {"from": "hv1", "to": "hv2"})
    request = one.observe(lambda _event: None)
    assert request.handover is not None and request.handover.target == "hv2" and request.handover_version == 0
    one.release(request)
    assert two.observe(woken.append).owned_by(two.token)
    first.set(schema.HANDOVER, "unused", 0)
    discarded = one.observe(lambda _event: None)
    assert discarded.handover is None and discarded.handover_version == 1
    one.discard_handover(discarded)
    assert not first.exists(schema.HANDOVER)
    second.disconnect()
    with pytest.raises(ElectionUnavailable, match="observing the election"):
        two.observe(woken.append)
    second.reconnect()
    second.expire_session()
    assert one.observe(lambda _event: None).claims == ()  # the claims were ephemeral


def test_a_watch_set_while_cut_off_reports_once_connected(server: MemoryServer) -> None:
    store, other = started(server), started(server)
    other.create("/d/a", 1, makepath=True)
    store.disconnect()
    seen: list[Any] = []
    names: list[list[str]] = []
    store.watch_data("/d/a", lambda value: seen.append(value and value.value))
    store.watch_children("/d", names.append)
    assert seen == [] and names == []
    store.reconnect()
    assert seen == [1] and names == [["a"]]
    other.create("/d/b", 2)
    assert names == [["a"], ["a", "b"]]
