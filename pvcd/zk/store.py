"""The ZooKeeper store: JSON values, version-checked writes, transactions.

A thin adapter over kazoo. It knows nothing about what the values mean; the
daemon and the CLI build their records elsewhere and hand them over as plain
JSON-able values. Every write that replaces an existing value names the version
it expects, so two writers can never silently overwrite each other.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kazoo.client import KazooClient, KazooState
from kazoo.exceptions import (
    BadVersionError,
    KazooException,
    NodeExistsError,
    NoNodeError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.retry import KazooRetry

from pvcd.zk import schema

log = logging.getLogger(__name__)


class StoreError(Exception):
    """A store operation failed; the message says which path and why."""


class StoreUnavailable(StoreError):
    """ZooKeeper could not be reached (or the session is not connected)."""


class VersionConflict(StoreError):
    """Someone else changed a value since we read it."""


class NotFound(StoreError):
    """The path does not exist."""


class AlreadyExists(StoreError):
    """The path exists already."""


def quiet_kazoo() -> None:
    """Keep kazoo's own retry chatter out of tool output; callers report failures themselves."""
    kazoo_log = logging.getLogger("kazoo")
    kazoo_log.addHandler(logging.NullHandler())
    kazoo_log.propagate = False


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
    """A value read from ZooKeeper with what the server knows about it."""

    value: Any
    version: int
    mtime_ms: int


class Transaction:
    """A multi-op ZooKeeper transaction: all operations apply, or none."""

    def __init__(self, store: Store) -> None:
        self._request = store.client.transaction()
        self._paths: list[str] = []

    def create(self, path: str, value: Any, ephemeral: bool = False) -> Transaction:
        self._request.create(path, encode(value), ephemeral=ephemeral)
        self._paths.append(path)
        return self

    def set(self, path: str, value: Any, version: int) -> Transaction:
        self._request.set_data(path, encode(value), version=version)
        self._paths.append(path)
        return self

    def check(self, path: str, version: int) -> Transaction:
        self._request.check(path, version)
        self._paths.append(path)
        return self

    def delete(self, path: str, version: int = -1) -> Transaction:
        self._request.delete(path, version=version)
        self._paths.append(path)
        return self

    def commit(self, timeout: float | None = None) -> list[Any]:
        """Apply all operations; raise naming the first operation that was refused.

        With `timeout`, give up waiting for the answer after that long (the
        transaction may still apply later: callers re-read their versions)."""
        try:
            results = self._request.commit_async().get(timeout=timeout)
        except KazooTimeoutError as exc:
            raise StoreUnavailable(f"transaction on {', '.join(self._paths)}: timed out") from exc
        except KazooException as exc:
            raise _translate(exc, ", ".join(self._paths)) from exc
        for path, result in zip(self._paths, results, strict=False):
            if isinstance(result, Exception) and not _is_rollback(result):
                raise _translate(result, path)
        return results


def _is_rollback(exc: Exception) -> bool:
    return type(exc).__name__ == "RolledBackError"


def _translate(exc: Exception, path: str) -> StoreError:
    if isinstance(exc, BadVersionError):
        return VersionConflict(f"{path}: changed by someone else")
    if isinstance(exc, NoNodeError):
        return NotFound(f"{path}: does not exist")
    if isinstance(exc, NodeExistsError):
        return AlreadyExists(f"{path}: already exists")
    name = type(exc).__name__
    if name in ("ConnectionLoss", "SessionExpiredError", "ConnectionClosedError", "OperationTimeoutError"):
        return StoreUnavailable(f"{path}: ZooKeeper connection lost ({name})")
    return StoreError(f"{path}: {name} {exc}".rstrip())


class Store:
    """A ZooKeeper session with typed JSON access to pvcd's paths."""

    def __init__(
        self,
        hosts: str,
        session_timeout: float = 10.0,
        connect_timeout: float = 5.0,
    ) -> None:
        self.hosts = hosts
        self.session_timeout = session_timeout
        self.connect_timeout = connect_timeout
        self._listeners: list[Callable[[str], None]] = []
        self.negotiated_session_timeout: float | None = None
        """Seconds, as the server granted it at the last session (re)establishment; None before."""
        self.client = self._new_client()

    def _new_client(self) -> KazooClient:
        # Once connected, a session is re-established for as long as it takes; the
        # first connection is bounded by the connect timeout in start().
        retry = KazooRetry(max_tries=-1, max_delay=1.0)
        client = KazooClient(
            hosts=self.hosts,
            timeout=self.session_timeout,
            connection_retry=retry,
            command_retry=None,
        )
        for listener in self._listeners:
            client.add_listener(lambda state, listener=listener: listener(str(state)))
        self._capture_negotiated_timeout(client)
        return client

    def _capture_negotiated_timeout(self, client: KazooClient) -> None:
        """Learn the session timeout the server granted.

        The server clamps the requested timeout to its own minimum and maximum,
        and every lease pvcd derives from the session must use what was granted.
        kazoo computes it when a session is established but does not keep it;
        its connection handler returns the read timeout, two thirds of it.
        """
        connection = client._connection
        establish = connection._connect

        def connect(*args: Any) -> Any:
            read_timeout_ms, connect_timeout_ms = establish(*args)
            self.negotiated_session_timeout = read_timeout_ms * 1.5 / 1000.0
            return read_timeout_ms, connect_timeout_ms

        connection._connect = connect

    def start(self) -> None:
        """Open a session; a failed attempt leaves the store ready for another."""
        try:
            self.client.start(timeout=self.connect_timeout)
        except KazooTimeoutError as exc:
            # kazoo has stopped and closed the client; the next attempt needs a new one.
            self.client = self._new_client()
            raise StoreUnavailable(
                f"cannot reach ZooKeeper at {self.hosts} within {self.connect_timeout:g}s"
            ) from exc

    def stop(self) -> None:
        """Close the session (ephemeral nodes vanish now, not at session expiry)."""
        try:
            self.client.stop()
        finally:
            self.client.close()

    @property
    def connected(self) -> bool:
        return self.client.state == KazooState.CONNECTED

    def add_listener(self, listener: Callable[[str], None]) -> None:
        """Call `listener` with "CONNECTED"/"SUSPENDED"/"LOST" on session changes."""
        self._listeners.append(listener)
        self.client.add_listener(lambda state: listener(str(state)))

    def _call(self, path: str, func: Callable[[], Any]) -> Any:
        try:
            return func()
        except KazooTimeoutError as exc:
            raise StoreUnavailable(f"{path}: ZooKeeper did not answer") from exc
        except KazooException as exc:
            raise _translate(exc, path) from exc

    def get(self, path: str) -> Versioned | None:
        """The value at `path`, or None when the path does not exist."""
        try:
            data, stat = self._call(path, lambda: self.client.get(path))
        except NotFound:
            return None
        return Versioned(decode(data, path), stat.version, stat.mtime)

    def children(self, path: str) -> list[str]:
        try:
            return sorted(self._call(path, lambda: self.client.get_children(path)))
        except NotFound:
            return []

    def exists(self, path: str) -> bool:
        return self._call(path, lambda: self.client.exists(path)) is not None

    def create(self, path: str, value: Any, ephemeral: bool = False, makepath: bool = False) -> None:
        self._call(path, lambda: self.client.create(path, encode(value), ephemeral=ephemeral, makepath=makepath))

    def set(self, path: str, value: Any, version: int) -> int:
        """Replace the value if it is still at `version`; return the new version."""
        stat = self._call(path, lambda: self.client.set(path, encode(value), version=version))
        return stat.version

    def ensure_path(self, path: str) -> None:
        self._call(path, lambda: self.client.ensure_path(path))

    def transaction(self) -> Transaction:
        return Transaction(self)

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

    def server_time_ms(self) -> int:
        """ZooKeeper's own clock, read from the mtime of a write we just made.

        Ages shown to operators compare ZooKeeper timestamps with ZooKeeper's clock,
        so a client whose clock is off still reports the right age.
        """
        try:
            stat = self._call(schema.CLOCK, lambda: self.client.set(schema.CLOCK, b"{}"))
        except NotFound:
            self.ensure_path(schema.ROOT)
            try:
                self.create(schema.CLOCK, {})
            except AlreadyExists:
                pass
            stat = self._call(schema.CLOCK, lambda: self.client.set(schema.CLOCK, b"{}"))
        return stat.mtime
