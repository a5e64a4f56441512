"""The coordination store: what the daemon and the CLI need from it, and nothing of how.

One abstract `Store` and its implementations (Patroni's dcs pattern):
`pvcd.zk.store.ZooKeeperStore` (kazoo, production) and
`pvcd.zk.memory.MemoryStore` (one process, an injectable clock: unit tests and
the scenario simulator). Both pass the same contract tests
(tests/integration/test_store_contract.py). Nothing outside the ZooKeeper
implementation imports kazoo.

The semantics are ZooKeeper's:

- a path holds one JSON value with a version (0 when created, +1 per set) and
  the server's modification time (`mtime_ms`, the server's clock, never a node's);
- every write that replaces a value names the version it expects
  (`VersionConflict` otherwise); a transaction applies all of its operations or
  none, and its error names the operation that was refused;
- an ephemeral path belongs to the session that created it and vanishes when the
  session is closed or expires; a sequential create appends a ten-digit counter
  kept by the parent;
- watches: `watch_data`/`watch_children` call back at once and after every change
  (until the callback returns False), and again with the current value after a
  new session; the one-shot watches of the `*_async` reads fire once, at the next
  change of what they read;
- connection listeners hear "CONNECTED", "SUSPENDED" (connection lost, the
  session may survive) and "LOST" (the session expired: its ephemerals are gone);
- the `*_async` calls return a `Pending` that is waited for with a bound, so a
  caller that must act on time (the election) never waits out an outage;
- `get_many` reads many paths at once, without watches (ZooKeeper: one
  multiRead request per few hundred paths instead of one request per path).

Values are JSON; `encode` is canonical so equal values are equal bytes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pvcd.zk import schema

T = TypeVar("T")

log = logging.getLogger(__name__)


class StoreError(Exception):
    """A store operation failed; the message says which path and why."""


class StoreUnavailable(StoreError):
    """The store could not be reached (or the session is not connected)."""


class StoreTimeout(StoreUnavailable):
    """The store did not answer within the time the caller allowed."""


class NotAuthorized(StoreError):
    """ZooKeeper refused the operation to this client's identity (no credentials, wrong ones, or
    an ACL that does not grant it)."""


class VersionConflict(StoreError):
    """Someone else changed a value since we read it."""


class NotFound(StoreError):
    """The path does not exist."""


class AlreadyExists(StoreError):
    """The path exists already."""


class Unreadable(StoreError):
    """The value at a path is not JSON (not written by pvcd); its version lets a writer replace or delete it."""

    def __init__(self, message: str, version: int, mtime_ms: int, zxid: int | None = None) -> None:
        super().__init__(message)
        self.version = version
        self.mtime_ms = mtime_ms
        self.zxid = zxid


def encode(value: Any) -> bytes:
    """Canonical JSON, so equal values are equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def decode(data: bytes, path: str) -> Any:
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError as exc:
        raise StoreError(f"{path}: value is not JSON ({exc})") from exc


@dataclass(frozen=True)
class Versioned:
    """A value read from the store with what the server knows about it."""

    value: Any
    version: int
    mtime_ms: int
    zxid: int | None = field(default=None, compare=False)
    """The transaction that last changed it (mzxid), where the store says: tells one change from another
    even when a deleted value was created again with the same version."""


def versioned(data: bytes, path: str, version: int, mtime_ms: int, zxid: int | None = None) -> Versioned:
    """A value as read, or `Unreadable` (with the version) when it is not JSON."""
    try:
        return Versioned(decode(data, path), version, mtime_ms, zxid)
    except StoreError as exc:
        raise Unreadable(str(exc), version, mtime_ms, zxid) from exc


DataCallback = Callable[[Versioned | None], bool | None]
"""`watch_data`'s callback: the value now (None: no such path); returning False stops the watch."""

ChildrenCallback = Callable[[list[str]], bool | None]
"""`watch_children`'s callback: the sorted child names now; returning False stops the watch."""

OneShotWatch = Callable[[Any], None]
"""Called once, at the next change of what was read (the argument describes the
event, for logging only). Passing the same callable again keeps one watch per path."""

Listener = Callable[[str], None]
"""Called with "CONNECTED", "SUSPENDED" or "LOST" (on the store's own thread: record and wake, nothing else)."""


class Pending(ABC, Generic[T]):
    """The answer to an asynchronous call, waited for with a bound."""

    @abstractmethod
    def result(self, timeout: float | None = None) -> T:
        """The answer; `StoreTimeout` when none came within `timeout` seconds,
        another `StoreError` when the store refused the request."""


class Answered(Pending[T], Generic[T]):
    """An answer known at once: what a store that answers in-process (no network) returns."""

    def __init__(self, func: Callable[[], T]) -> None:
        self._error: StoreError | None = None
        self._value: T | None = None
        try:
            self._value = func()
        except StoreError as exc:
            self._error = exc

    def result(self, timeout: float | None = None) -> T:
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


def readable(answer: Versioned | Unreadable | None) -> Versioned | None:
    """One of `Store.get_many`'s answers as `get` has it: its `Unreadable` raised."""
    if isinstance(answer, Unreadable):
        raise answer
    return answer


def as_empty(answer: Versioned | Unreadable | None) -> Versioned | None:
    """One of `Store.get_many`'s answers, a value that is not JSON taken as present with no value
    (its version kept): for readers of many records that must not stop at one foreign value."""
    if isinstance(answer, Unreadable):
        return Versioned(None, answer.version, answer.mtime_ms)
    return answer


def collect(asked: Sequence[Pending[Versioned | None]], timeout: float | None) -> list[Versioned | Unreadable | None]:
    """The answers of reads sent together, waited for `timeout` seconds in all;
    a value that is not JSON is answered with its `Unreadable` (see `Store.get_many`)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    answers: list[Versioned | Unreadable | None] = []
    for pending in asked:
        try:
            answers.append(pending.result(None if deadline is None else max(0.0, deadline - time.monotonic())))
        except Unreadable as exc:
            answers.append(exc)
    return answers


class StoreLock(ABC):
    """An exclusive lock shared by every session of the cluster."""

    @abstractmethod
    def acquire(self, timeout: float) -> bool:
        """Wait at most `timeout` seconds for the lock; False when it was not granted."""

    @abstractmethod
    def release(self) -> None:
        """Give the lock up (closing the session gives it up too)."""


class Transaction(ABC):
    """A multi-op transaction: all operations apply, or none."""

    @abstractmethod
    def create(self, path: str, value: Any, ephemeral: bool = False, sequential: bool = False) -> Transaction: ...

    @abstractmethod
    def set(self, path: str, value: Any, version: int) -> Transaction: ...

    @abstractmethod
    def check(self, path: str, version: int) -> Transaction: ...

    @abstractmethod
    def delete(self, path: str, version: int = -1) -> Transaction: ...

    @abstractmethod
    def commit(self, timeout: float | None = None) -> list[Any]:
        """Apply all operations; raise naming the first operation that was refused.

        Returns one result per operation: the created path (create), the new
        version (set), True (check, delete). With `timeout`, give up waiting for
        the answer after that long (`StoreTimeout`; the transaction may still
        apply later: callers re-read their versions)."""


class Store(ABC):
    """A session with the coordination store, with typed JSON access to pvcd's paths."""

    session_timeout: float
    """Seconds, as requested."""
    negotiated_session_timeout: float | None
    """Seconds, as the server granted it at the last session (re)establishment; None before."""

    # -- the session -------------------------------------------------------------

    @abstractmethod
    def start(self) -> None:
        """Open a session (`StoreUnavailable` when the store cannot be reached in time)."""

    @abstractmethod
    def stop(self) -> None:
        """Close the session (ephemeral paths vanish now, not at session expiry)."""

    @property
    @abstractmethod
    def connected(self) -> bool: ...

    @abstractmethod
    def add_listener(self, listener: Listener) -> None:
        """Call `listener` with "CONNECTED"/"SUSPENDED"/"LOST" on session changes."""

    @abstractmethod
    def drop_connection(self) -> None:
        """Drop the connection and reconnect (to another server if there is one).

        The session survives; pending requests fail at once. For a client that
        suspects a server of having silently stopped answering."""

    # -- reads -------------------------------------------------------------------

    @abstractmethod
    def get(self, path: str) -> Versioned | None:
        """The value at `path`, or None when the path does not exist (`Unreadable` when it is not JSON)."""

    def get_many(self, paths: Sequence[str], timeout: float | None = None) -> list[Versioned | Unreadable | None]:
        """The values at `paths`, in their order, read without watches.

        One answer per path: its `Versioned`, None when the path does not exist,
        or, for a value that is not JSON, the `Unreadable` error itself, returned
        rather than raised, so that one foreign value never hides the others
        (`readable` raises it, as `get` does). No answer is left out.

        Raises `StoreTimeout` when the answers did not all come within `timeout`
        seconds (the whole call; None: as long as `get` waits), `StoreUnavailable`
        when the connection was lost meanwhile, another `StoreError` for a path
        the store refused. Not one snapshot: each value is as of its own read,
        as with pipelined `get_async`s (all are at least as new as anything this
        session wrote or read before the call).

        This default sends every `get_async` before awaiting the first answer;
        implementations may batch (ZooKeeper: multiRead)."""
        return collect([self.get_async(path) for path in paths], timeout)

    @abstractmethod
    def children(self, path: str) -> list[str]:
        """The sorted child names ([] when the path does not exist)."""

    @abstractmethod
    def exists(self, path: str) -> bool: ...

    @abstractmethod
    def server_time_ms(self) -> int:
        """The store's own clock (an mtime it just wrote), so ages never depend on a node's clock."""

    # -- writes ------------------------------------------------------------------

    @abstractmethod
    def create(
        self, path: str, value: Any, ephemeral: bool = False, makepath: bool = False, sequential: bool = False
    ) -> str:
        """Create `path` (`AlreadyExists`, or `NotFound` for a missing parent unless
        `makepath`); return the path created (with its counter when `sequential`)."""

    @abstractmethod
    def set(self, path: str, value: Any, version: int) -> int:
        """Replace the value if it is still at `version` (-1: any); return the new version."""

    @abstractmethod
    def delete(self, path: str, version: int = -1) -> None:
        """Delete `path` if it is still at `version` (-1: any); `NotFound` when it does not exist."""

    def delete_tree(self, path: str) -> None:
        """Delete `path` and everything under it (children first; nothing when it does not exist)."""
        for child in self.children(path):
            self.delete_tree(f"{path.rstrip('/')}/{child}")
        try:
            self.delete(path)
        except NotFound:
            pass

    @abstractmethod
    def ensure_path(self, path: str) -> None:
        """Create `path` and its parents where missing (with null values)."""

    @abstractmethod
    def transaction(self) -> Transaction: ...

    def ensure_schema(self) -> None:
        """Create the root layout, or refuse to touch data of another schema version."""
        for path in (schema.ROOT, schema.NODES):
            self.ensure_path(path)
        try:
            self.create(schema.SCHEMA, {"version": schema.SCHEMA_VERSION})
        except AlreadyExists:
            pass
        found = self.get(schema.SCHEMA)
        version = (found.value or {}).get("version") if found and isinstance(found.value, dict) else None
        if version != schema.SCHEMA_VERSION:
            raise StoreError(
                f"{schema.SCHEMA}: cluster data has schema version {version!r}, "
                f"this pvcd understands {schema.SCHEMA_VERSION}"
            )

    # -- watches and locks -------------------------------------------------------

    def watch_data(self, path: str, callback: DataCallback) -> None:
        """Call `callback` at once with the value at `path` (None: no such path), then
        after every change of it (set, create, delete) with the new value, and again
        with the current value after a new session; returning False stops the watch.
        A value that is not JSON is reported with value None (and its version).
        While the store is unreachable the watch waits: its first call comes once
        the session is connected again.

        Callbacks run on the store's own thread, one at a time."""
        self._start_watch(PersistentWatch(self, path, data=callback))

    def watch_children(self, path: str, callback: ChildrenCallback) -> None:
        """As `watch_data`, with the sorted child names of `path` ([] while it does
        not exist: its creation is seen)."""
        self._start_watch(PersistentWatch(self, path, children=callback))

    @abstractmethod
    def _start_watch(self, watch: PersistentWatch) -> None:
        """Keep `watch` to tell it of every connection state (`on_state`), then `start` it."""

    def run_soon(self, func: Callable[[], None]) -> None:
        """Run `func` where a watch may read without holding up the store's event delivery."""
        func()

    @abstractmethod
    def lock(self, path: str, identifier: str) -> StoreLock:
        """An exclusive lock at `path`; `identifier` names the holder to other sessions."""

    # -- bounded asynchronous calls ----------------------------------------------

    @abstractmethod
    def sync_async(self, path: str) -> Pending[None]:
        """Bring the server we talk to up to date with the leader (reads sent after it see the latest writes)."""

    @abstractmethod
    def get_async(self, path: str, watch: OneShotWatch | None = None) -> Pending[Versioned | None]:
        """The value (None: no such path); `watch` fires at its next change (only if the path exists)."""

    @abstractmethod
    def children_async(self, path: str, watch: OneShotWatch | None = None) -> Pending[list[str] | None]:
        """The sorted child names (None: no such path); `watch` fires at the next change of them."""

    @abstractmethod
    def exists_async(self, path: str, watch: OneShotWatch | None = None) -> Pending[bool]:
        """Whether the path exists; `watch` fires at its next creation, change or deletion."""

    @abstractmethod
    def delete_async(self, path: str, version: int = -1) -> Pending[bool]:
        """Delete `path` if it is at `version`: True, or False when it did not exist."""

    @abstractmethod
    def ensure_path_async(self, path: str) -> Pending[None]:
        """As `ensure_path`."""


class _Again(Exception):
    """A watch's read raced with the path's creation: read again."""


class PersistentWatch:
    """`watch_data` and `watch_children` over the store's one-shot watches (for both stores).

    Each read leaves a one-shot watch; its event triggers the next read. A read
    that fails for a lost connection is repeated at the next CONNECTED (the
    store's one-shot watches are gone by then); after a new session the
    callback hears the current state even if it did not change.
    """

    def __init__(
        self, store: Store, path: str, data: DataCallback | None = None, children: ChildrenCallback | None = None
    ) -> None:
        self._store = store
        self.path = path
        self._data = data
        self._children = children
        self._lock = threading.RLock()  # the in-memory store may deliver an event inside the read that caused it
        self.stopped = False
        self._last: Any = None
        self._initial = True
        self._losses = 0
        """Sessions lost so far (written by the store's connection thread only: never under a lock)."""
        self._losses_seen = -1

    def start(self) -> None:
        self._read()

    def on_state(self, state: str) -> None:
        if state == "LOST":
            self._losses += 1
        elif state == "CONNECTED" and not self.stopped:
            self._store.run_soon(self._read)

    def _on_event(self, event: Any) -> None:
        if getattr(event, "type", None) == "NONE":
            return  # a connection event: the CONNECTED that follows reads again
        self._read()

    def _read(self) -> None:
        with self._lock:
            if self.stopped:
                return
            initial, self._initial = self._initial, False
            losses = self._losses
            try:
                key, value = self._fetch_settled()
            except StoreUnavailable:
                log.debug("Watch on %s: read failed; reading again once connected", self.path, exc_info=True)
                return
            except Exception:
                if initial:
                    self.stopped = True
                    raise
                log.exception("Watch on %s: read failed; reading again once connected", self.path)
                return
            if losses == self._losses_seen and key == self._last:
                return
            self._last, self._losses_seen = key, losses
            try:
                if self._deliver(value) is False:
                    self.stopped = True
            except Exception:
                if initial:
                    raise
                log.exception("Watch callback for %s failed; the watch carries on", self.path)

    def _fetch_settled(self) -> tuple[Any, Any]:
        while True:
            try:
                return self._fetch()
            except _Again:
                continue

    def _fetch(self) -> tuple[Any, Any]:
        """(what tells this state from the last one delivered, the value to deliver)."""
        store, path, watch = self._store, self.path, self._on_event
        if self._children is not None:
            names = store.children_async(path, watch=watch).result()
            if names is None:
                if store.exists_async(path, watch=watch).result():
                    raise _Again()
                return (False, ()), []
            return (True, tuple(names)), names
        try:
            value = store.get_async(path, watch=watch).result()
        except Unreadable as exc:
            log.warning("Watch on %s: %s; reported as None", path, exc)
            return (exc.zxid, exc.version, exc.mtime_ms), Versioned(None, exc.version, exc.mtime_ms, exc.zxid)
        if value is None:
            if store.exists_async(path, watch=watch).result():
                raise _Again()
            return None, None
        return (value.zxid, value.version, value.mtime_ms), value

    def _deliver(self, value: Any) -> bool | None:
        if self._children is not None:
            return self._children(list(value))
        assert self._data is not None
        return self._data(value)
