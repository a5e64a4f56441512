"""The store contract: the same tests against ZooKeeper and the in-memory store.

Each test gets a `Backend`: `new()` opens another session on the same tree
(the ZooKeeper suite's server, or one `MemoryServer`), `expire(store)` makes the
server expire a session (ZooKeeper: a second client takes over the session id
and closes it, a known kazoo testing trick; memory: `expire_session()`).
Watch callbacks arrive on another thread with ZooKeeper, so every check on
them waits (`eventually`).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import pytest
from kazoo.client import KazooClient

from helpers import expire_zookeeper_session
from pvcd.devcluster.processes import wait_until
from pvcd.devcluster.zookeeper import ZooKeeperServer
from pvcd.zk import schema
from pvcd.zk import store as zookeeper_store
from pvcd.zk.base import (
    AlreadyExists,
    NotFound,
    Store,
    StoreError,
    StoreTimeout,
    StoreUnavailable,
    Unreadable,
    VersionConflict,
    Versioned,
)
from pvcd.zk.memory import MemoryServer, MemoryStore
from pvcd.zk.store import ZooKeeperStore

P = schema.ROOT + "/contract"


def eventually(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    wait_until(check, timeout, what, 0.02)


def barrier(store: Store) -> None:
    """Wait until this session's watch sees a write made now. A session's watch events come
    in order, so an event for any earlier change would have come before it: what has not
    come by then will not come (no sleep stands as that proof)."""
    seen = Recorder()
    path = f"{schema.ROOT}/barriers/{uuid.uuid4().hex}"
    store.watch_data(path, seen)
    store.create(path, 1, makepath=True)
    eventually(lambda: len(seen.calls) >= 2, "the barrier's write seen")


class Backend:
    def __init__(
        self,
        new: Callable[[], Store],
        expire: Callable[[Store], None],
        set_raw: Callable[[Store, str, bytes], None],
        outage: Callable[[Store], AbstractContextManager[None]],
    ) -> None:
        self._new = new
        self._expire = expire
        self.set_raw = set_raw
        """Write bytes that are not JSON, as a writer other than pvcd could."""
        self.outage = outage
        """While in it, the store cannot reach the server (ZooKeeper: stopped; memory: cut off)."""
        self.stores: list[Store] = []

    def new(self) -> Store:
        store = self._new()
        store.start()
        self.stores.append(store)
        return store

    def expire(self, store: Store) -> None:
        self._expire(store)

    def close(self) -> None:
        for store in self.stores:
            try:
                store.stop()
            except Exception:
                pass


def _expire_zookeeper(address: str) -> Callable[[Store], None]:
    def expire(store: Store) -> None:
        assert isinstance(store, ZooKeeperStore)
        expire_zookeeper_session(store, address)

    return expire


def _expire_memory(store: Store) -> None:
    assert isinstance(store, MemoryStore)
    store.expire_session()


def _set_raw_zookeeper(store: Store, path: str, data: bytes) -> None:
    assert isinstance(store, ZooKeeperStore)
    store.client.set(path, data)


def _set_raw_memory(store: Store, path: str, data: bytes) -> None:
    assert isinstance(store, MemoryStore)
    store.set_raw(path, data)


def _outage_zookeeper(zookeeper: ZooKeeperServer) -> Callable[[Store], AbstractContextManager[None]]:
    @contextmanager
    def outage(store: Store) -> Iterator[None]:
        states: list[str] = []
        store.add_listener(states.append)
        zookeeper.stop()
        try:
            eventually(lambda: "SUSPENDED" in states, "the client saw the connection go")
            yield
        finally:
            zookeeper.start()

    return outage


@contextmanager
def _outage_memory(store: Store) -> Iterator[None]:
    assert isinstance(store, MemoryStore)
    store.disconnect()
    try:
        yield
    finally:
        store.reconnect()


@pytest.fixture(params=["zookeeper", "memory"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "zookeeper":
        zookeeper = request.getfixturevalue("zookeeper")
        request.getfixturevalue("zk")  # an empty /pvc
        chosen = Backend(
            lambda: ZooKeeperStore(zookeeper.address, security=zookeeper.security(), session_timeout=4.0),
            _expire_zookeeper(zookeeper.address),
            _set_raw_zookeeper,
            _outage_zookeeper(zookeeper),
        )
    else:
        server = MemoryServer()
        chosen = Backend(
            lambda: MemoryStore(server, session_timeout=4.0), _expire_memory, _set_raw_memory, _outage_memory
        )
    yield chosen
    chosen.close()


@pytest.fixture
def store(backend: Backend) -> Store:
    store = backend.new()
    store.ensure_path(P)
    return store


class Recorder:
    """Every value a watch callback was called with; `stop_after` makes it return False."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.calls: list[Any] = []
        self.stop_after = stop_after
        self._lock = threading.Lock()

    def __call__(self, value: Any) -> bool | None:
        with self._lock:
            self.calls.append(value)
            if self.stop_after is not None and len(self.calls) >= self.stop_after:
                return False
        return None

    @property
    def last(self) -> Any:
        with self._lock:
            return self.calls[-1] if self.calls else "(never called)"

    def values(self) -> list[Any]:
        with self._lock:
            return [call.value if isinstance(call, Versioned) else call for call in self.calls]


# -- reads, writes, versions ----------------------------------------------------------------------


def test_values_carry_versions_and_writes_name_the_version_they_replace(store: Store) -> None:
    assert store.get(f"{P}/a") is None
    assert store.create(f"{P}/a", {"n": 1}) == f"{P}/a"
    found = store.get(f"{P}/a")
    assert found is not None and found.value == {"n": 1} and found.version == 0 and found.mtime_ms > 0
    assert store.set(f"{P}/a", {"n": 2}, 0) == 1
    with pytest.raises(VersionConflict, match=f"{P}/a"):
        store.set(f"{P}/a", {"n": 3}, 0)
    assert store.set(f"{P}/a", [1, "x", None], -1) == 2
    found = store.get(f"{P}/a")
    assert found is not None and found.value == [1, "x", None] and found.version == 2
    with pytest.raises(VersionConflict):
        store.delete(f"{P}/a", 1)
    store.delete(f"{P}/a", 2)
    assert store.get(f"{P}/a") is None and not store.exists(f"{P}/a")


def test_create_and_delete_refuse_what_does_not_fit(store: Store) -> None:
    store.create(f"{P}/a", 1)
    with pytest.raises(AlreadyExists, match=f"{P}/a"):
        store.create(f"{P}/a", 2)
    with pytest.raises(NotFound):
        store.create(f"{P}/missing/b", 1)
    with pytest.raises(NotFound):
        store.set(f"{P}/missing", 1, -1)
    with pytest.raises(NotFound):
        store.delete(f"{P}/missing")
    store.create(f"{P}/deep/er/c", "c", makepath=True)
    assert store.get(f"{P}/deep/er/c") == Versioned("c", 0, store.get(f"{P}/deep/er/c").mtime_ms)  # type: ignore[union-attr]
    with pytest.raises(StoreError) as refused:
        store.delete(f"{P}/deep")
    assert not isinstance(refused.value, (NotFound, VersionConflict, AlreadyExists))
    store.ensure_path(f"{P}/deep/er/c")  # exists already: nothing to do
    store.ensure_path(f"{P}/x/y")
    assert store.get(f"{P}/x/y") == Versioned(None, 0, store.get(f"{P}/x/y").mtime_ms)  # type: ignore[union-attr]


def test_children_are_sorted_and_a_missing_path_has_none(store: Store) -> None:
    assert store.children(f"{P}/nothing") == []
    for name in ("b", "c", "a"):
        store.create(f"{P}/{name}", None)
    assert store.children(P) == ["a", "b", "c"]
    assert store.exists(f"{P}/a") and not store.exists(f"{P}/z")


def test_sequential_names_count_per_parent(store: Store) -> None:
    store.ensure_path(f"{P}/q")
    first = store.create(f"{P}/q/n-", 1, sequential=True)
    second = store.create(f"{P}/q/n-", 2, sequential=True)
    assert first == f"{P}/q/n-0000000000" and second == f"{P}/q/n-0000000001"
    store.delete(first)
    (third,) = store.transaction().create(f"{P}/q/m-", 3, sequential=True).commit()
    assert third == f"{P}/q/m-0000000002"  # one counter per parent, advanced by creations only
    assert store.children(f"{P}/q") == ["m-0000000002", "n-0000000001"]


def test_server_time_is_the_servers_and_never_goes_back(store: Store) -> None:
    times = [store.server_time_ms() for _ in range(5)]
    assert times == sorted(times)
    store.create(f"{P}/t", 1)
    written = store.get(f"{P}/t")
    assert written is not None and store.server_time_ms() >= written.mtime_ms
    assert abs(store.server_time_ms() - time.time() * 1000) < 60_000


# -- transactions -----------------------------------------------------------------------------------


def test_a_transaction_applies_everything(store: Store) -> None:
    store.create(f"{P}/a", 1)
    store.create(f"{P}/b", 1)
    results = (
        store.transaction()
        .create(f"{P}/new", {"x": 1})
        .set(f"{P}/a", 2, 0)
        .check(f"{P}/b", 0)
        .delete(f"{P}/b", 0)
        .commit(timeout=5.0)
    )
    assert results == [f"{P}/new", 1, True, True]
    assert store.get(f"{P}/a").value == 2 and store.get(f"{P}/b") is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("failing", "error"),
    [
        ("set", VersionConflict),
        ("check", VersionConflict),
        ("create", AlreadyExists),
        ("delete", NotFound),
    ],
)
def test_a_refused_transaction_applies_nothing_and_names_the_operation(
    store: Store, failing: str, error: type[StoreError]
) -> None:
    store.create(f"{P}/a", 1)
    store.create(f"{P}/b", 1)
    store.create(f"{P}/c", 1)
    transaction = store.transaction().create(f"{P}/new", 1).set(f"{P}/a", 2, 0).delete(f"{P}/c", 0)
    if failing == "set":
        transaction.set(f"{P}/b", 2, 7)
    elif failing == "check":
        transaction.check(f"{P}/b", 7)
    elif failing == "create":
        transaction.create(f"{P}/b", 2)
    else:
        transaction.delete(f"{P}/gone")
    with pytest.raises(error) as refused:
        transaction.commit()
    assert (f"{P}/gone" if failing == "delete" else f"{P}/b") in str(refused.value)
    assert store.get(f"{P}/new") is None
    assert store.get(f"{P}/a") == Versioned(1, 0, store.get(f"{P}/a").mtime_ms)  # type: ignore[union-attr]
    assert store.exists(f"{P}/c")
    assert store.children(P) == ["a", "b", "c"]


# -- sessions and ephemerals ----------------------------------------------------------------------------


def test_ephemerals_vanish_when_their_session_closes(backend: Backend, store: Store) -> None:
    other = backend.new()
    other.create(f"{P}/mine", "other", ephemeral=True)
    other.transaction().create(f"{P}/also", "other", ephemeral=True).commit()
    store.create(f"{P}/kept", "store", ephemeral=True)
    assert store.exists(f"{P}/mine") and store.exists(f"{P}/also")
    states: list[str] = []
    other.add_listener(states.append)
    other.stop()
    assert store.children(P) == ["kept"]
    eventually(lambda: states[-1:] == ["LOST"], "LOST heard at stop")


def test_ephemerals_vanish_when_their_session_expires_and_the_client_starts_a_new_one(
    backend: Backend, store: Store
) -> None:
    other = backend.new()
    states: list[str] = []
    other.add_listener(states.append)
    other.create(f"{P}/mine", "other", ephemeral=True)
    backend.expire(other)
    eventually(lambda: not store.exists(f"{P}/mine"), "the ephemeral gone")
    eventually(lambda: other.connected and "LOST" in states and states[-1] == "CONNECTED", "LOST, then CONNECTED")
    other.create(f"{P}/mine", "again", ephemeral=True)  # the new session works
    assert store.get(f"{P}/mine").value == "again"  # type: ignore[union-attr]
    assert other.negotiated_session_timeout is not None and 0 < other.negotiated_session_timeout <= 40


def test_ephemerals_cannot_have_children(store: Store) -> None:
    store.create(f"{P}/e", 1, ephemeral=True)
    with pytest.raises(StoreError):
        store.create(f"{P}/e/child", 1)


# -- persistent watches ---------------------------------------------------------------------------------


def test_watch_data_reports_the_value_at_once_and_after_every_change(backend: Backend, store: Store) -> None:
    watched = Recorder()
    store.watch_data(f"{P}/w", watched)
    assert watched.calls == [None]  # at once, in the caller's thread
    writer = backend.new()
    writer.create(f"{P}/w", {"n": 1})
    eventually(lambda: watched.values() == [None, {"n": 1}], "the creation seen")
    assert watched.last.version == 0
    writer.set(f"{P}/w", {"n": 2}, 0)
    eventually(lambda: watched.values()[-1] == {"n": 2}, "the change seen")
    assert watched.last.version == 1
    writer.delete(f"{P}/w")
    eventually(lambda: watched.last is None, "the deletion seen")
    writer.create(f"{P}/w", "back")
    eventually(lambda: watched.values()[-1] == "back", "the re-creation seen")
    assert len(watched.calls) == 5


def test_watch_data_sees_a_recreation_with_the_same_value(store: Store) -> None:
    store.create(f"{P}/w", 1)
    watched = Recorder()
    store.watch_data(f"{P}/w", watched)
    store.transaction().delete(f"{P}/w").create(f"{P}/w", 1).commit()
    eventually(lambda: len(watched.calls) == 2, "the re-created node reported")
    assert watched.last.value == 1 and watched.last.version == 0


def test_watch_data_stops_when_the_callback_returns_false(store: Store) -> None:
    watched = Recorder(stop_after=2)
    store.watch_data(f"{P}/w", watched)
    store.create(f"{P}/w", 1)
    eventually(lambda: len(watched.calls) == 2, "the creation seen")
    store.set(f"{P}/w", 2, 0)
    store.delete(f"{P}/w")
    barrier(store)
    assert watched.values() == [None, 1]


def test_watch_data_reports_the_current_value_after_a_new_session(backend: Backend, store: Store) -> None:
    store.create(f"{P}/w", "same")
    watched = Recorder()
    store.watch_data(f"{P}/w", watched)
    backend.expire(store)
    eventually(lambda: len(watched.calls) == 2, "the value reported again after the new session")
    assert watched.values() == ["same", "same"]
    store.set(f"{P}/w", "changed", 0)
    eventually(lambda: watched.values()[-1] == "changed", "changes still seen on the new session")


def test_watch_children_reports_sorted_names_and_sees_the_path_created(backend: Backend, store: Store) -> None:
    watched = Recorder()
    store.watch_children(f"{P}/d", watched)
    assert watched.calls == [[]]
    writer = backend.new()
    writer.create(f"{P}/d/b", 1, makepath=True)
    eventually(lambda: watched.last == ["b"], "the creation of the path and its child seen")
    writer.create(f"{P}/d/a", 1)
    eventually(lambda: watched.last == ["a", "b"], "a second child seen")
    writer.set(f"{P}/d/a", 2, 0)  # not a change of the names
    writer.delete(f"{P}/d/b")
    eventually(lambda: watched.last == ["a"], "a deletion seen")
    writer.delete(f"{P}/d/a")
    writer.delete(f"{P}/d")
    eventually(lambda: watched.last == [], "the deletion of the path seen")
    writer.create(f"{P}/d/c", 1, makepath=True)
    eventually(lambda: watched.last == ["c"], "the path re-created and watched again")
    assert all(names == sorted(names) for names in watched.calls)
    assert ["a", "b"] in watched.calls and [] in watched.calls[1:]


def test_watch_children_stops_when_the_callback_returns_false(store: Store) -> None:
    store.ensure_path(f"{P}/d")
    watched = Recorder(stop_after=2)
    store.watch_children(f"{P}/d", watched)
    store.create(f"{P}/d/a", 1)
    eventually(lambda: len(watched.calls) == 2, "the first child seen")
    store.create(f"{P}/d/b", 1)
    barrier(store)
    assert watched.calls == [[], ["a"]]


def test_watch_children_reports_the_current_names_after_a_new_session(backend: Backend, store: Store) -> None:
    store.create(f"{P}/d/a", 1, makepath=True)
    watched = Recorder()
    store.watch_children(f"{P}/d", watched)
    other = backend.new()
    other.create(f"{P}/d/theirs", 1, ephemeral=True)
    eventually(lambda: watched.last == ["a", "theirs"], "their ephemeral seen")
    backend.expire(other)
    eventually(lambda: watched.last == ["a"], "their ephemeral gone with their session")
    backend.expire(store)
    eventually(lambda: len(watched.calls) == 4, "the names reported again after our new session")
    assert watched.calls == [["a"], ["a", "theirs"], ["a"], ["a"]]


# -- one-shot watches and the bounded asynchronous calls ------------------------------------------------------


def test_asynchronous_reads_answer_and_their_watches_fire_once(backend: Backend, store: Store) -> None:
    fired: list[Any] = []
    assert store.get_async(f"{P}/h").result(5.0) is None
    assert store.children_async(f"{P}/h").result(5.0) is None
    assert store.exists_async(f"{P}/h", watch=fired.append).result(5.0) is False
    store.sync_async(P).result(5.0)
    writer = backend.new()
    writer.create(f"{P}/h", {"to": "hv2"})
    eventually(lambda: len(fired) == 1, "the exists watch fired at the creation")
    found = store.get_async(f"{P}/h").result(5.0)
    assert found is not None and found.value == {"to": "hv2"} and found.version == 0
    writer.set(f"{P}/h", 1, 0)
    barrier(store)
    assert len(fired) == 1  # one-shot
    assert store.children_async(P, watch=fired.append).result(5.0) == ["h"]
    assert store.children_async(P, watch=fired.append).result(5.0) == ["h"]  # the same callable: one watch
    writer.create(f"{P}/i", 1)
    eventually(lambda: len(fired) == 2, "the children watch fired")
    barrier(store)
    assert len(fired) == 2
    with pytest.raises(VersionConflict):
        store.delete_async(f"{P}/h", version=5).result(5.0)
    assert store.delete_async(f"{P}/h", version=1).result(5.0) is True
    assert store.delete_async(f"{P}/h").result(5.0) is False
    store.ensure_path_async(f"{P}/x/y").result(5.0)
    assert store.exists(f"{P}/x/y")


def test_drop_connection_keeps_the_session(store: Store) -> None:
    states: list[str] = []
    store.add_listener(states.append)
    store.create(f"{P}/e", 1, ephemeral=True)
    store.drop_connection()
    eventually(lambda: states[-2:] == ["SUSPENDED", "CONNECTED"] and store.connected, "SUSPENDED, then CONNECTED")
    assert store.exists(f"{P}/e") and "LOST" not in states


# -- many reads at once ---------------------------------------------------------------------------------------


def _create_many(store: Store, values: dict[str, Any]) -> None:
    """Create the paths (under existing parents), five hundred per transaction."""
    items = list(values.items())
    for start in range(0, len(items), 500):
        txn = store.transaction()
        for path, value in items[start : start + 500]:
            txn.create(path, value)
        txn.commit()


def _values(answers: list[Versioned | Unreadable | None]) -> list[Any]:
    """`get_many`'s answers, each Versioned as its value."""
    return [answer.value if isinstance(answer, Versioned) else answer for answer in answers]


def test_get_many_answers_each_path_in_order_and_none_for_a_missing_one(store: Store) -> None:
    assert store.get_many([]) == []
    store.create(f"{P}/b", {"n": "b"})
    store.create(f"{P}/a", [1, 2])
    store.set(f"{P}/a", [3], 0)
    store.create(f"{P}/empty", None)
    found = store.get_many([f"{P}/b", f"{P}/missing", f"{P}/a", f"{P}/empty", f"{P}/b", f"{P}/a/missing"], 5.0)
    assert _values(found) == [
        {"n": "b"},
        None,
        [3],
        None,
        {"n": "b"},
        None,
    ]
    assert isinstance(found[2], Versioned) and found[2].version == 1 and found[2].mtime_ms > 0
    assert found[2] == store.get(f"{P}/a") and found[3] == store.get(f"{P}/empty")


def test_get_many_answers_a_value_that_is_not_json_with_its_unreadable_in_its_place(
    backend: Backend, store: Store
) -> None:
    store.create(f"{P}/before", 1)
    store.create(f"{P}/raw", 2)
    store.create(f"{P}/after", 3)
    backend.set_raw(store, f"{P}/raw", b"not json")
    before, raw, after = store.get_many([f"{P}/before", f"{P}/raw", f"{P}/after"], 5.0)
    assert isinstance(raw, Unreadable) and raw.version == 1 and f"{P}/raw" in str(raw)
    assert isinstance(before, Versioned) and before.value == 1
    assert isinstance(after, Versioned) and after.value == 3
    with pytest.raises(Unreadable):
        store.get(f"{P}/raw")


def test_get_many_reads_thousands_of_paths_in_few_requests(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    values = {f"{P}/v{index:05d}": {"index": index, "pad": "x" * (index % 300)} for index in range(2500)}
    _create_many(store, values)
    paths = [path for path in values for path in (path, f"{path}-missing")]
    requests: list[Any] = []
    if isinstance(store, ZooKeeperStore):
        call = store.client._call
        monkeypatch.setattr(
            store.client, "_call", lambda request, answer: (requests.append(request), call(request, answer))
        )
    found = store.get_many(paths, 10.0)
    assert _values(found) == [None if path.endswith("-missing") else values[path] for path in paths]
    assert {answer.version for answer in found if isinstance(answer, Versioned)} == {0}
    if isinstance(store, ZooKeeperStore):
        assert 2 <= len(requests) <= 20, f"{len(requests)} requests for {len(paths)} paths"


def test_get_many_reads_values_bigger_than_an_answers_budget(store: Store) -> None:
    big = {f"{P}/big{index}": "x" * 600_000 + str(index) for index in range(3)}  # 1.8 MB between them
    small = {f"{P}/small{index}": index for index in range(300)}
    _create_many(store, small)
    for path, value in big.items():
        store.create(path, value)
    paths = list(small)[:100] + list(big) + list(small)[100:]
    assert _values(store.get_many(paths, 10.0)) == [{**small, **big}[path] for path in paths]
    again = store.get_many(paths, 10.0)  # chunks sized after the big answer
    assert _values(again) == [{**small, **big}[path] for path in paths]


def test_get_many_without_the_server_is_unavailable_not_a_hang(backend: Backend, store: Store) -> None:
    _create_many(store, {f"{P}/o{index}": index for index in range(1200)})
    paths = [f"{P}/o{index}" for index in range(1200)]
    with backend.outage(store):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match=f"{P}/o0"):
            store.get_many(paths, 2.0)
        assert time.monotonic() - started < 5.0
    eventually(lambda: store.connected, "connected again", timeout=20.0)
    assert _values(store.get_many(paths, 10.0)) == list(range(1200))


# -- locks ----------------------------------------------------------------------------------------------------


def test_a_lock_is_exclusive_and_acquiring_it_times_out(backend: Backend, store: Store) -> None:
    other = backend.new()
    mine, theirs = store.lock(f"{P}/lock", "me"), other.lock(f"{P}/lock", "them")
    assert mine.acquire(timeout=5.0)
    started = time.monotonic()
    assert theirs.acquire(timeout=0.5) is False
    assert 0.4 <= time.monotonic() - started < 5.0
    assert store.children(f"{P}/lock") != [] and len(store.children(f"{P}/lock")) == 1  # the timed-out contender left
    mine.release()
    assert theirs.acquire(timeout=5.0)
    assert mine.acquire(timeout=0.2) is False
    theirs.release()
    assert mine.acquire(timeout=5.0)
    mine.release()


def test_a_waiting_lock_is_granted_on_release_and_when_the_holder_goes(backend: Backend, store: Store) -> None:
    holder = backend.new()
    held = holder.lock(f"{P}/lock", "holder")
    assert held.acquire(timeout=5.0)
    granted: list[bool] = []
    waiter = threading.Thread(target=lambda: granted.append(store.lock(f"{P}/lock", "me").acquire(timeout=10.0)))
    waiter.start()
    eventually(lambda: len(store.children(f"{P}/lock")) >= 2, "the waiter's contender queued behind the holder")
    holder.stop()  # its session closes: its contender node goes
    waiter.join(15)
    assert granted == [True]


def test_delete_tree_deletes_everything_under_a_path(store: Store) -> None:
    store.create(f"{P}/t/a/b", 1, makepath=True)
    store.create(f"{P}/t/c", 1)
    store.delete_tree(f"{P}/t")
    assert not store.exists(f"{P}/t") and store.exists(P)
    store.delete_tree(f"{P}/t")  # nothing to delete: nothing to do


# -- ZooKeeper only: values pvcd did not write ------------------------------------------------------------------


def test_a_value_that_is_not_json_is_unreadable_with_its_version(zookeeper: Any, zk: KazooClient) -> None:
    zk.create(f"{P}/raw", b"not json", makepath=True)
    zk.set(f"{P}/raw", b"still not json")
    store = ZooKeeperStore(zookeeper.address, security=zookeeper.security())
    store.start()
    try:
        with pytest.raises(Unreadable) as refused:
            store.get(f"{P}/raw")
        assert refused.value.version == 1 and f"{P}/raw" in str(refused.value)
        with pytest.raises(Unreadable):
            store.get_async(f"{P}/raw").result(5.0)
        seen: list[Versioned | None] = []
        store.watch_data(f"{P}/raw", seen.append)
        assert seen == [Versioned(None, 1, seen[0].mtime_ms)]  # type: ignore[union-attr]
        store.set(f"{P}/raw", {"now": "json"}, 1)
        eventually(lambda: len(seen) == 2 and seen[-1] is not None and seen[-1].value == {"now": "json"}, "the fix")
    finally:
        store.stop()


# -- ZooKeeper only: get_many's requests ------------------------------------------------------------------------


def test_get_many_waits_for_a_silent_server_only_as_long_as_it_is_told(
    zookeeper: ZooKeeperServer, zk: KazooClient
) -> None:
    zk.ensure_path(P)
    for index in range(10):
        zk.create(f"{P}/s{index}", b"1")
    store = ZooKeeperStore(zookeeper.address, security=zookeeper.security(), session_timeout=10.0)
    store.start()
    assert zookeeper.pid is not None
    os.kill(zookeeper.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(StoreTimeout):
            store.get_many([f"{P}/s{index}" for index in range(10)] * 200, 1.0)
        assert 0.9 <= time.monotonic() - started < 3.0
    finally:
        os.kill(zookeeper.pid, signal.SIGCONT)
        store.stop()


def test_get_many_reads_path_by_path_from_a_server_without_multi_read(
    zookeeper: ZooKeeperServer, zk: KazooClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ZooKeeper before 3.6 answers multiRead "unimplemented" and closes the connection,
    as 3.8 does with an operation code it does not know."""
    zk.ensure_path(P)
    for index in range(1200):
        zk.create(f"{P}/u{index}", str(index).encode())
    monkeypatch.setattr(zookeeper_store._MultiRead, "type", 99)
    store = ZooKeeperStore(zookeeper.address, security=zookeeper.security())
    store.start()
    try:
        paths = [f"{P}/u{index}" for index in range(1200)] + [f"{P}/missing"]
        expected = [*range(1200), None]
        assert _values(store.get_many(paths, 10.0)) == expected
        assert store._multi_read is False  # remembered: no more multiRead on this store
        assert _values(store.get_many(paths, 10.0)) == expected
    finally:
        store.stop()


def test_get_many_reads_a_chunk_whose_answer_is_refused_path_by_path(
    zookeeper: ZooKeeperServer, zk: KazooClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An answer over ZooKeeper's 1 MB jute.maxbuffer, refused as ZooKeeper's own client
    would refuse it: the chunk is read again with one get per path, the others are not."""
    zk.ensure_path(P)
    for index in range(1000):
        zk.create(f"{P}/c{index}", b'"' + (b"x" * 300_000 if 700 <= index < 704 else b"") + str(index).encode() + b'"')
    real = zookeeper_store._MultiRead.deserialize
    refused: list[int] = []

    def limited(data: bytes, offset: int) -> Any:
        if len(data) - offset > 0xFFFFF:
            refused.append(len(data) - offset)
            raise ValueError("Packet len is out of range")
        return real(data, offset)

    monkeypatch.setattr(zookeeper_store._MultiRead, "deserialize", staticmethod(limited))
    store = ZooKeeperStore(zookeeper.address, security=zookeeper.security())
    store.start()
    try:
        paths = [f"{P}/c{index}" for index in range(1000)]
        expected = [("x" * 300_000 if 700 <= index < 704 else "") + str(index) for index in range(1000)]
        store._bytes_per_path = 64  # as after reading small values: chunks of the most paths
        assert _values(store.get_many(paths, 10.0)) == expected
        assert len(refused) == 1 and store._multi_read  # one chunk refused; multiRead still used
    finally:
        store.stop()
