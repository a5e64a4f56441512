"""The in-memory implementation of the store: ZooKeeper's semantics in one process.

For unit tests and the scenario simulator: a `MemoryServer` holds the tree
(values, versions, mtimes from an injectable clock, ephemerals owned by
sessions, sequential counters, one-shot watches); each `MemoryStore` is one
client session on it, with the same interface and the same behaviour as
`pvcd.zk.store.ZooKeeperStore` (tests/integration/test_store_contract.py runs
the same tests on both).

What the network would do is a method call here: `disconnect()` (SUSPENDED;
requests fail with `StoreUnavailable`), `reconnect()` (CONNECTED, or LOST then
CONNECTED on a new session when the session expired meanwhile),
`expire_session()` (the server drops the session: its ephemerals vanish and
everyone's watches fire; the client hears LOST, then CONNECTED on a new session,
as kazoo does) and `MemoryServer.expire_stale()` (expire the sessions of
clients cut off for longer than their session timeout, by the clock).

Delivery: watch callbacks and connection listeners run one at a time, in
order, on the thread that caused them (the first caller drains a queue the
others append to); nothing runs while the server's lock is held, so a callback
may call the store.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from pvcd.zk import base, schema
from pvcd.zk.base import (
    AlreadyExists,
    Answered,
    Listener,
    NotFound,
    OneShotWatch,
    Pending,
    PersistentWatch,
    StoreError,
    StoreLock,
    StoreUnavailable,
    Unreadable,
    VersionConflict,
    Versioned,
    encode,
    versioned,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class WatchEvent:
    """What a one-shot watch is called with (as kazoo's WatchedEvent: type, state, path)."""

    type: str
    """"CREATED", "DELETED", "CHANGED", "CHILD" or "NONE" (the connection was lost: read again)."""
    state: str
    path: str | None


@dataclass(frozen=True)
class _Node:
    data: bytes
    version: int
    mtime_ms: int
    mzxid: int
    cversion: int = 0
    """Children created so far: the next sequential suffix (ZooKeeper's deletions do not advance it)."""
    owner: int | None = None
    """The session id of an ephemeral node."""


@dataclass
class _Session:
    id: int
    client: MemoryStore
    ephemerals: set[str] = field(default_factory=set)
    cut_since_ms: int | None = None
    """Server time at which its client was cut off (None: connected)."""


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def _check_path(path: str) -> None:
    if not path.startswith("/") or (path != "/" and path.endswith("/")) or "//" in path:
        raise StoreError(f"{path}: not a valid path")


class MemoryServer:
    """The tree and the sessions, shared by the `MemoryStore` clients of one simulated cluster."""

    def __init__(self, clock: Callable[[], int] | None = None) -> None:
        self.clock: Callable[[], int] = clock or (lambda: int(time.time() * 1000))
        """Milliseconds: the server's clock, for mtimes and session expiry."""
        self._lock = threading.Lock()
        self.changed = threading.Condition(self._lock)
        """Notified after every change (locks wait on it)."""
        self._nodes: dict[str, _Node] = {"/": _Node(b"", 0, 0, 0)}
        self._children: dict[str, set[str]] = defaultdict(set)
        self._sessions: dict[int, _Session] = {}
        self._session_ids = itertools.count(1)
        self._zxid = 0
        self._queue: deque[Callable[[], None]] = deque()
        self._delivering = False
        self._delivery_lock = threading.Lock()

    # -- delivery (outside the lock, one at a time) ------------------------------

    def _deliver(self, calls: list[Callable[[], None]]) -> None:
        with self._delivery_lock:
            self._queue.extend(calls)
            if self._delivering:
                return
            self._delivering = True
        while True:
            with self._delivery_lock:
                if not self._queue:
                    self._delivering = False
                    return
                call = self._queue.popleft()
            try:
                call()
            except Exception:
                log.exception("A store callback failed")

    # -- sessions ----------------------------------------------------------------

    def _open(self, client: MemoryStore) -> int:
        with self._lock:
            session = _Session(next(self._session_ids), client)
            self._sessions[session.id] = session
            return session.id

    def alive(self, session_id: int | None) -> bool:
        with self._lock:
            return session_id in self._sessions

    def _close(self, session_id: int | None) -> None:
        """End a session: delete its ephemerals (firing everyone's watches)."""
        with self._lock:
            session = self._sessions.pop(session_id, None) if session_id is not None else None
            if session is None:
                return
            undo: list[Callable[[], None]] = []
            events: list[tuple[str, str]] = []
            for path in sorted(session.ephemerals, reverse=True):
                if path in self._nodes:
                    self._remove(path, undo, events)
            calls = self._fire(events)
            self.changed.notify_all()
        self._deliver(calls)

    def _cut(self, session_id: int | None, cut: bool) -> None:
        with self._lock:
            session = self._sessions.get(session_id) if session_id is not None else None
            if session is not None:
                session.cut_since_ms = self.clock() if cut else None

    def expire_stale(self) -> list[int]:
        """Expire the sessions whose clients have been cut off for a session timeout or longer."""
        now = self.clock()
        with self._lock:
            stale = [
                session
                for session in self._sessions.values()
                if session.cut_since_ms is not None
                and now - session.cut_since_ms >= session.client.session_timeout * 1000
            ]
        for session in stale:
            session.client.expire_session()
        return [session.id for session in stale]

    # -- the tree (the lock held) ------------------------------------------------

    def _put(self, path: str, node: _Node, undo: list[Callable[[], None]]) -> None:
        previous = self._nodes.get(path)
        self._nodes[path] = node
        if previous is None:
            parent = _parent(path)
            self._children[parent].add(path.rsplit("/", 1)[1])
            undo.append(lambda: self._undo_create(path))
        else:
            undo.append(lambda: self._nodes.__setitem__(path, previous))

    def _undo_create(self, path: str) -> None:
        del self._nodes[path]
        self._children[_parent(path)].discard(path.rsplit("/", 1)[1])

    def _remove(self, path: str, undo: list[Callable[[], None]], events: list[tuple[str, str]]) -> None:
        node = self._nodes.pop(path)
        name = path.rsplit("/", 1)[1]
        self._children[_parent(path)].discard(name)
        owner = self._sessions.get(node.owner) if node.owner is not None else None
        if owner is not None:
            owner.ephemerals.discard(path)

        def restore() -> None:
            self._nodes[path] = node
            self._children[_parent(path)].add(name)
            if owner is not None:
                owner.ephemerals.add(path)

        undo.append(restore)
        events += [("DELETED", path), ("CHILD", _parent(path))]

    def _touch_parent(self, path: str, undo: list[Callable[[], None]]) -> None:
        parent = _parent(path)
        node = self._nodes[parent]
        self._nodes[parent] = replace(node, cversion=node.cversion + 1)
        undo.append(lambda: self._nodes.__setitem__(parent, node))

    def _op_create(
        self,
        session_id: int | None,
        path: str,
        data: bytes,
        ephemeral: bool,
        sequential: bool,
        undo: list[Callable[[], None]],
        events: list[tuple[str, str]],
    ) -> str:
        _check_path(path)
        parent = _parent(path)
        parent_node = self._nodes.get(parent)
        if parent_node is None:
            raise NotFound(f"{path}: parent {parent} does not exist")
        if parent_node.owner is not None:
            raise StoreError(f"{path}: the parent {parent} is ephemeral and cannot have children")
        if sequential:
            path = f"{path}{parent_node.cversion:010d}"
        if path in self._nodes:
            raise AlreadyExists(f"{path}: already exists")
        owner = session_id if ephemeral else None
        self._put(path, _Node(data, 0, self.clock(), self._zxid, owner=owner), undo)
        self._touch_parent(path, undo)
        if owner is not None:
            self._sessions[owner].ephemerals.add(path)
            undo.append(lambda: self._sessions[owner].ephemerals.discard(path))
        events += [("CREATED", path), ("CHILD", parent)]
        return path

    def _op_set(
        self, path: str, data: bytes, version: int, undo: list[Callable[[], None]], events: list[tuple[str, str]]
    ) -> int:
        node = self._op_check(path, version)
        changed = replace(node, data=data, version=node.version + 1, mtime_ms=self.clock(), mzxid=self._zxid)
        self._put(path, changed, undo)
        events.append(("CHANGED", path))
        return node.version + 1

    def _op_check(self, path: str, version: int) -> _Node:
        node = self._nodes.get(path)
        if node is None:
            raise NotFound(f"{path}: does not exist")
        if version != -1 and node.version != version:
            raise VersionConflict(f"{path}: changed by someone else")
        return node

    def _op_delete(
        self, path: str, version: int, undo: list[Callable[[], None]], events: list[tuple[str, str]]
    ) -> None:
        if path == "/":
            raise StoreError("/: the root cannot be deleted")
        self._op_check(path, version)
        if self._children.get(path):
            raise StoreError(f"{path}: has children")
        self._remove(path, undo, events)

    def _fire(self, events: list[tuple[str, str]]) -> list[Callable[[], None]]:
        """The one-shot watches the events trigger (removed now, called after the lock is released)."""
        calls: list[Callable[[], None]] = []
        for kind, path in events:
            for session in list(self._sessions.values()):
                client = session.client
                if kind == "CHILD":
                    watchers = client._child_watchers.pop(path, set())
                elif kind == "DELETED":
                    watchers = client._data_watchers.pop(path, set()) | client._child_watchers.pop(path, set())
                else:
                    watchers = client._data_watchers.pop(path, set())
                event = WatchEvent(kind, "CONNECTED", path)
                calls += [lambda watch=watch, event=event: watch(event) for watch in watchers]  # type: ignore[misc]
        return calls

    def apply(self, session_id: int | None, ops: list[tuple[Any, ...]]) -> list[Any]:
        """Apply operations all or none; raise the first refusal, naming its path."""
        with self._lock:
            if session_id not in self._sessions:
                raise StoreUnavailable("the session has expired")
            self._zxid += 1
            undo: list[Callable[[], None]] = []
            events: list[tuple[str, str]] = []
            results: list[Any] = []
            try:
                for op in ops:
                    kind, path = op[0], op[1]
                    if kind == "create":
                        results.append(self._op_create(session_id, path, op[2], op[3], op[4], undo, events))
                    elif kind == "set":
                        results.append(self._op_set(path, op[2], op[3], undo, events))
                    elif kind == "check":
                        self._op_check(path, op[2])
                        results.append(True)
                    elif kind == "delete":
                        self._op_delete(path, op[2], undo, events)
                        results.append(True)
                    else:
                        raise StoreError(f"{path}: unknown operation {kind}")
            except StoreError:
                for action in reversed(undo):
                    action()
                raise
            calls = self._fire(events)
            self.changed.notify_all()
        self._deliver(calls)
        return results

    def read(self, path: str) -> Versioned | None:
        """The value (None: no such path; `Unreadable` when it is not JSON)."""
        with self._lock:
            node = self._nodes.get(path)
            if node is None:
                return None
        return versioned(node.data, path, node.version, node.mtime_ms, node.mzxid)

    def present(self, path: str) -> bool:
        """Whether `path` exists, whatever its value (ZooKeeper's `exists` reads no data)."""
        with self._lock:
            return path in self._nodes

    def read_many(self, paths: Sequence[str]) -> list[Versioned | Unreadable | None]:
        """The values at `paths` (None: no such path; the `Unreadable` when not JSON), at one instant."""
        with self._lock:
            nodes = [self._nodes.get(path) for path in paths]
        answers: list[Versioned | Unreadable | None] = []
        for path, node in zip(paths, nodes, strict=True):
            try:
                answers.append(None if node is None else versioned(node.data, path, node.version, node.mtime_ms))
            except Unreadable as exc:
                answers.append(exc)
        return answers

    def read_children(self, path: str) -> list[str] | None:
        with self._lock:
            if path not in self._nodes:
                return None
            return sorted(self._children.get(path, ()))

    def _watch(self, client: MemoryStore, path: str, watch: OneShotWatch, kind: str) -> bool:
        """Leave a one-shot watch: "data" (get: only if the path exists), "exists", "child"."""
        with self._lock:
            exists = path in self._nodes
            if kind == "child":
                if exists:
                    client._child_watchers[path].add(watch)
            elif exists or kind == "exists":
                client._data_watchers[path].add(watch)
            return exists


class MemoryTransaction(base.Transaction):
    def __init__(self, store: MemoryStore) -> None:
        self._store = store
        self._ops: list[tuple[Any, ...]] = []

    def create(self, path: str, value: Any, ephemeral: bool = False, sequential: bool = False) -> base.Transaction:
        self._ops.append(("create", path, encode(value), ephemeral, sequential))
        return self

    def set(self, path: str, value: Any, version: int) -> base.Transaction:
        self._ops.append(("set", path, encode(value), version))
        return self

    def check(self, path: str, version: int) -> base.Transaction:
        self._ops.append(("check", path, version))
        return self

    def delete(self, path: str, version: int = -1) -> base.Transaction:
        self._ops.append(("delete", path, version))
        return self

    def commit(self, timeout: float | None = None) -> list[Any]:
        paths = ", ".join(str(op[1]) for op in self._ops)
        return self._store._apply(paths, self._ops)


class _MemoryLock(StoreLock):
    """kazoo's lock recipe: an ephemeral sequential contender node; the lowest holds the lock."""

    def __init__(self, store: MemoryStore, path: str, identifier: str) -> None:
        self._store = store
        self._path = path
        self._identifier = identifier
        self._prefix = f"{uuid.uuid4().hex}__lock__"
        self._node: str | None = None

    def _contenders(self) -> list[str]:
        names = self._store.children(self._path)
        return sorted(names, key=lambda name: name.rsplit("__lock__", 1)[-1])

    def acquire(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        self._store.ensure_path(self._path)
        self._node = self._store.create(
            f"{self._path}/{self._prefix}", self._identifier, ephemeral=True, sequential=True
        )
        name = self._node.rsplit("/", 1)[1]
        server = self._store.server
        while True:
            contenders = self._contenders()
            if name not in contenders:
                self._node = None
                raise StoreUnavailable(f"{self._path}: our contender node vanished (session lost)")
            if contenders[0] == name:
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.release()
                return False
            with server.changed:
                if self._contenders_unchanged(contenders):
                    server.changed.wait(remaining)

    def _contenders_unchanged(self, contenders: list[str]) -> bool:
        # The server lock is held: read the children directly, not through the store.
        server = self._store.server
        return sorted(server._children.get(self._path, ()), key=lambda n: n.rsplit("__lock__", 1)[-1]) == contenders

    def release(self) -> None:
        node, self._node = self._node, None
        if node is None:
            return
        try:
            self._store.delete(node)
        except NotFound:
            pass


class MemoryStore(base.Store):
    """One client session on a `MemoryServer` (a new server of its own when none is given)."""

    def __init__(
        self,
        server: MemoryServer | None = None,
        session_timeout: float = 10.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.server = server or MemoryServer()
        self.session_timeout = session_timeout
        self.connect_timeout = connect_timeout
        self.negotiated_session_timeout = None
        self.session_id: int | None = None
        self.state = "LOST"
        """"CONNECTED", "SUSPENDED" (cut off, the session may survive) or "LOST" (no session)."""
        self._reachable = True
        self._started = False
        self._losses = 0
        self._listeners: list[Listener] = []
        self._watches: list[PersistentWatch] = []
        self._data_watchers: dict[str, set[OneShotWatch]] = defaultdict(set)
        self._child_watchers: dict[str, set[OneShotWatch]] = defaultdict(set)

    # -- the session -------------------------------------------------------------

    def start(self) -> None:
        if not self._reachable:
            raise StoreUnavailable(f"cannot reach the in-memory store within {self.connect_timeout:g}s (cut off)")
        self._started = True
        self._new_session()

    def stop(self) -> None:
        self._started = False
        session, self.session_id = self.session_id, None
        self._losses += 1
        self._reset_watchers()
        self.server._close(session)
        self._change("LOST")

    @property
    def connected(self) -> bool:
        return self.state == "CONNECTED"

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def drop_connection(self) -> None:
        if self.state != "CONNECTED":
            return
        self._change("SUSPENDED")
        self._reset_watchers()
        self._change("CONNECTED")

    # -- what the network would do (tests, the simulator) ------------------------

    def disconnect(self) -> None:
        """Cut this client off: SUSPENDED; requests fail until `reconnect`."""
        self._reachable = False
        self.server._cut(self.session_id, True)
        if self.state == "CONNECTED":
            self._change("SUSPENDED")
            self._reset_watchers()

    def reconnect(self) -> None:
        """Reach the server again: CONNECTED on the same session, or LOST then
        CONNECTED on a new one when the session expired meanwhile."""
        self._reachable = True
        if not self._started:
            return
        if self.server.alive(self.session_id):
            self.server._cut(self.session_id, False)
            if self.state != "CONNECTED":
                self._change("CONNECTED")
            return
        self._lose_session()

    def set_raw(self, path: str, data: bytes, version: int = -1) -> int:
        """Write bytes that need not be JSON, as a writer other than pvcd could (tests)."""
        (new_version,) = self._apply(path, [("set", path, data, version)])
        return int(new_version)

    def expire_session(self) -> None:
        """The server expires this client's session: its ephemerals vanish now. A
        connected client hears LOST, then CONNECTED on a new session; a cut-off one
        hears it when it reconnects."""
        self.server._close(self.session_id)
        if self._reachable and self._started:
            self._lose_session()

    def _lose_session(self) -> None:
        self.session_id = None
        self._reset_watchers()
        self._losses += 1
        self._change("LOST")
        self._new_session()

    def _new_session(self) -> None:
        self.session_id = self.server._open(self)
        self.negotiated_session_timeout = self.session_timeout
        self._change("CONNECTED")

    def _change(self, state: str) -> None:
        if state == self.state:
            return
        self.state = state
        calls: list[Callable[[], None]] = [lambda listener=listener: listener(state) for listener in self._listeners]  # type: ignore[misc]
        self._watches = [watch for watch in self._watches if not watch.stopped]
        calls += [lambda watch=watch: watch.on_state(state) for watch in self._watches]  # type: ignore[misc]
        self.server._deliver(calls)

    def _reset_watchers(self) -> None:
        """As kazoo on a lost connection: every one-shot watch fires with a NONE event and is gone."""
        watchers = [watch for found in self._data_watchers.values() for watch in found]
        watchers += [watch for found in self._child_watchers.values() for watch in found]
        self._data_watchers.clear()
        self._child_watchers.clear()
        event = WatchEvent("NONE", self.state, None)
        self.server._deliver([lambda watch=watch: watch(event) for watch in watchers])  # type: ignore[misc]

    def _reach(self, path: str) -> None:
        if self.state != "CONNECTED" or not self.server.alive(self.session_id):
            raise StoreUnavailable(f"{path}: the in-memory store is not connected ({self.state})")

    def _apply(self, paths: str, ops: list[tuple[Any, ...]]) -> list[Any]:
        self._reach(paths)
        return self.server.apply(self.session_id, ops)

    # -- reads -------------------------------------------------------------------

    def get(self, path: str) -> Versioned | None:
        self._reach(path)
        return self.server.read(path)

    def get_many(self, paths: Sequence[str], timeout: float | None = None) -> list[Versioned | Unreadable | None]:
        if not paths:
            return []
        self._reach(f"{paths[0]} and {len(paths) - 1} other paths")
        return self.server.read_many(paths)

    def children(self, path: str) -> list[str]:
        self._reach(path)
        return self.server.read_children(path) or []

    def exists(self, path: str) -> bool:
        self._reach(path)
        return self.server.present(path)

    def server_time_ms(self) -> int:
        """As ZooKeeper: the mtime of a write just made."""
        try:
            self.set(schema.CLOCK, {}, -1)
        except NotFound:
            self.ensure_path(schema.ROOT)
            try:
                self.create(schema.CLOCK, {})
            except AlreadyExists:
                pass
            self.set(schema.CLOCK, {}, -1)
        found = self.get(schema.CLOCK)
        assert found is not None
        return found.mtime_ms

    # -- writes ------------------------------------------------------------------

    def create(
        self, path: str, value: Any, ephemeral: bool = False, makepath: bool = False, sequential: bool = False
    ) -> str:
        if makepath:
            self.ensure_path(_parent(path))
        (created,) = self._apply(path, [("create", path, encode(value), ephemeral, sequential)])
        return str(created)

    def set(self, path: str, value: Any, version: int) -> int:
        (new_version,) = self._apply(path, [("set", path, encode(value), version)])
        return int(new_version)

    def delete(self, path: str, version: int = -1) -> None:
        self._apply(path, [("delete", path, version)])

    def ensure_path(self, path: str) -> None:
        _check_path(path)
        parts = [part for part in path.split("/") if part]
        for end in range(1, len(parts) + 1):
            prefix = "/" + "/".join(parts[:end])
            if self.exists(prefix):
                continue
            try:
                self._apply(prefix, [("create", prefix, b"", False, False)])
            except AlreadyExists:
                pass

    def transaction(self) -> base.Transaction:
        return MemoryTransaction(self)

    # -- watches and locks -------------------------------------------------------

    def _start_watch(self, watch: PersistentWatch) -> None:
        self._watches.append(watch)
        watch.start()

    def lock(self, path: str, identifier: str) -> StoreLock:
        return _MemoryLock(self, path, identifier)

    # -- bounded asynchronous calls (answered at once) ---------------------------

    def sync_async(self, path: str) -> Pending[None]:
        return Answered(lambda: self._reach(path))

    def get_async(self, path: str, watch: OneShotWatch | None = None) -> Pending[Versioned | None]:
        def call() -> Versioned | None:
            self._reach(path)
            if watch is not None:
                self.server._watch(self, path, watch, "data")
            return self.server.read(path)

        return Answered(call)

    def children_async(self, path: str, watch: OneShotWatch | None = None) -> Pending[list[str] | None]:
        def call() -> list[str] | None:
            self._reach(path)
            if watch is not None:
                self.server._watch(self, path, watch, "child")
            return self.server.read_children(path)

        return Answered(call)

    def exists_async(self, path: str, watch: OneShotWatch | None = None) -> Pending[bool]:
        def call() -> bool:
            self._reach(path)
            if watch is not None:
                return self.server._watch(self, path, watch, "exists")
            return self.server.present(path)

        return Answered(call)

    def delete_async(self, path: str, version: int = -1) -> Pending[bool]:
        def call() -> bool:
            try:
                self.delete(path, version)
            except NotFound:
                return False
            return True

        return Answered(call)

    def ensure_path_async(self, path: str) -> Pending[None]:
        return Answered(lambda: self.ensure_path(path))
