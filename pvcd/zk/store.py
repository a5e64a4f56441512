"""The ZooKeeper implementation of the store (kazoo): the only module that imports kazoo.

A thin adapter. It knows nothing about what the values mean; the daemon and
the CLI build their records elsewhere and hand them over as plain JSON-able
values. The interface and its semantics are in `pvcd.zk.base`; the in-memory
twin is `pvcd.zk.memory`.

`Store` here names the ZooKeeper implementation (what callers construct);
type hints should name the interface, `pvcd.zk.base.Store`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Generic, TypeVar

from kazoo.client import KazooClient, KazooState, _prefix_root
from kazoo.exceptions import (
    EXCEPTIONS,
    AuthFailedError,
    BadVersionError,
    KazooException,
    LockTimeout,
    NoAuthError,
    NodeExistsError,
    NoNodeError,
    UnimplementedError,
)
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.connection import _CONNECTION_DROP
from kazoo.protocol.serialization import GetData, MultiHeader, int_struct, multiheader_struct, read_buffer, stat_struct
from kazoo.retry import KazooRetry
from kazoo.security import ACL, Id

from pvcd.zk import base, schema
from pvcd.zk.base import (
    AlreadyExists,
    Listener,
    NotAuthorized,
    NotFound,
    OneShotWatch,
    Pending,
    PersistentWatch,
    StoreError,
    StoreLock,
    StoreTimeout,
    StoreUnavailable,
    Unreadable,
    VersionConflict,
    Versioned,
    collect,
    decode,
    encode,
    versioned,
)
from pvcd.zk.security import AclIdentities, SecurityError, ZkSecurity, acl_for, security_record
from pvcd.zk.tls_probe import Handshake, check_handshake

__all__ = [
    "AlreadyExists",
    "NotFound",
    "Store",
    "StoreError",
    "StoreTimeout",
    "StoreUnavailable",
    "Transaction",
    "Unreadable",
    "VersionConflict",
    "Versioned",
    "ZooKeeperStore",
    "ZooKeeperTransaction",
    "decode",
    "encode",
    "quiet_kazoo",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

Transaction = base.Transaction


def quiet_kazoo() -> None:
    """Keep kazoo's own retry chatter out of tool output; callers report failures themselves."""
    kazoo_log = logging.getLogger("kazoo")
    kazoo_log.addHandler(logging.NullHandler())
    kazoo_log.propagate = False


class ZooKeeperTransaction(base.Transaction):
    """A multi-op ZooKeeper transaction: all operations apply, or none."""

    def __init__(self, store: ZooKeeperStore) -> None:
        self._store = store
        self._request = store.client.transaction()
        self._paths: list[str] = []

    def create(self, path: str, value: Any, ephemeral: bool = False, sequential: bool = False) -> base.Transaction:
        self._request.create(
            path, encode(value), acl=self._store.acl_of(path), ephemeral=ephemeral, sequence=sequential
        )
        self._paths.append(path)
        return self

    def set(self, path: str, value: Any, version: int) -> base.Transaction:
        self._request.set_data(path, encode(value), version=version)
        self._paths.append(path)
        return self

    def check(self, path: str, version: int) -> base.Transaction:
        self._request.check(path, version)
        self._paths.append(path)
        return self

    def delete(self, path: str, version: int = -1) -> base.Transaction:
        self._request.delete(path, version=version)
        self._paths.append(path)
        return self

    def commit(self, timeout: float | None = None) -> list[Any]:
        try:
            results = self._request.commit_async().get(timeout=timeout)
        except KazooTimeoutError as exc:
            raise StoreTimeout(f"transaction on {', '.join(self._paths)}: timed out") from exc
        except KazooException as exc:
            raise _translate(exc, ", ".join(self._paths)) from exc
        for path, result in zip(self._paths, results, strict=False):
            if isinstance(result, Exception) and not _is_rollback(result):
                raise _translate(result, path)
        return [getattr(result, "version", result) for result in results]


def _is_rollback(exc: Exception) -> bool:
    return type(exc).__name__ == "RolledBackError"


def _translate(exc: Exception, path: str) -> StoreError:
    if isinstance(exc, BadVersionError):
        return VersionConflict(f"{path}: changed by someone else")
    if isinstance(exc, NoNodeError):
        return NotFound(f"{path}: does not exist")
    if isinstance(exc, NodeExistsError):
        return AlreadyExists(f"{path}: already exists")
    if isinstance(exc, (NoAuthError, AuthFailedError)):
        return NotAuthorized(
            f"{path}: not authorized: ZooKeeper refused this client's identity (missing or wrong credentials, "
            "or an identity the znode's ACL does not grant)"
        )
    name = type(exc).__name__
    if name in ("ConnectionLoss", "SessionExpiredError", "ConnectionClosedError", "OperationTimeoutError"):
        return StoreUnavailable(f"{path}: ZooKeeper connection lost ({name})")
    return StoreError(f"{path}: {name} {exc}".rstrip())


MIN_START_SECONDS = 0.5
"""What kazoo gets at least to connect after the TLS check took its share of the connect timeout."""

MULTI_READ_RESPONSE_BYTES = 512 * 1024
"""What one multiRead answer should stay under, well below ZooKeeper's 1 MB
jute.maxbuffer (the limit its own Java client puts on any answer it reads)."""

MULTI_READ_PATHS = 500
"""The most paths one multiRead asks for (a request of some 30 KB)."""

_NO_NODE = NoNodeError.code


class _MultiRead:
    """ZooKeeper's multiRead request (OpCode 22, ZooKeeper 3.6 and later) of getData
    operations without watches, as kazoo's request classes are written: kazoo's
    connection thread sends it (`serialize`) and reads its answer (`deserialize`).

    The wire format is a multi's (kazoo's `Transaction`): each operation is a
    MultiHeader and a GetData request, closed by a "done" header; the answer is,
    per operation, a MultiHeader and either the data and stat, or (header type
    -1) an error code. The answer is one (data, version, mtime) or error code per
    path, and the size of the whole answer.
    """

    type = 22

    def __init__(self, paths: tuple[str, ...]) -> None:
        self.paths = paths

    def __repr__(self) -> str:
        return f"MultiRead({len(self.paths)} paths from {self.paths[0] if self.paths else None})"

    def serialize(self) -> bytearray:
        request = bytearray()
        header = MultiHeader(GetData.type, False, -1).serialize()
        for path in self.paths:
            request += header
            request += GetData(path, None).serialize()
        return request + multiheader_struct.pack(-1, True, -1)

    @classmethod
    def deserialize(cls, data: bytes, offset: int) -> tuple[list[tuple[bytes, int, int] | int], int]:
        start = offset
        answers: list[tuple[bytes, int, int] | int] = []
        header, offset = MultiHeader.deserialize(data, offset)
        while not header.done:
            if header.type == GetData.type:
                value, offset = read_buffer(data, offset)
                stat = stat_struct.unpack_from(data, offset)
                offset += stat_struct.size
                answers.append((value or b"", stat[4], stat[3]))  # version, mtime
            else:
                answers.append(int_struct.unpack_from(data, offset)[0])
                offset += int_struct.size
            header, offset = MultiHeader.deserialize(data, offset)
        return answers, offset - start


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


class _Pending(Pending[T], Generic[T]):
    """A kazoo asynchronous result, its answer converted, its errors translated."""

    def __init__(
        self,
        path: str,
        result: Any,
        convert: Callable[[Any], T],
        missing: Callable[[], T] | None = None,
    ) -> None:
        self._path = path
        self._result = result
        self._convert = convert
        self._missing = missing

    def result(self, timeout: float | None = None) -> T:
        try:
            raw = self._result.get(timeout=timeout)
        except KazooTimeoutError as exc:
            raise StoreTimeout(f"{self._path}: ZooKeeper did not answer within {timeout or 0:.1f}s") from exc
        except NoNodeError as exc:
            if self._missing is None:
                raise _translate(exc, self._path) from exc
            return self._missing()
        except KazooException as exc:
            raise _translate(exc, self._path) from exc
        return self._convert(raw)


class _ZooKeeperLock(StoreLock):
    def __init__(self, path: str, lock: Any) -> None:
        self._path = path
        self._lock = lock

    def acquire(self, timeout: float) -> bool:
        try:
            return bool(self._lock.acquire(timeout=timeout))
        except LockTimeout:
            return False
        except KazooException as exc:
            raise _translate(exc, self._path) from exc

    def release(self) -> None:
        try:
            self._lock.release()
        except KazooException as exc:
            raise _translate(exc, self._path) from exc


class ZooKeeperStore(base.Store):
    """A ZooKeeper session with typed JSON access to pvcd's paths."""

    _multi_read = True
    """False once a server refused multiRead (older than ZooKeeper 3.6): `get_many` reads path by path."""
    _bytes_per_path = 1024
    """The mean size of a value in the answers to the last `get_many`: what its chunks are sized by."""
    identities: AclIdentities | None = None
    """The role identities new znodes are given (None: ZooKeeper's default, open to the world)."""

    def __init__(
        self,
        hosts: str,
        session_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        security: ZkSecurity | None = None,
    ) -> None:
        """`security`: credentials, ACL identities and TLS (None: an open ZooKeeper, plain TCP)."""
        self.hosts = hosts
        self.session_timeout = session_timeout
        self.connect_timeout = connect_timeout
        self.security = security or ZkSecurity()
        self.identities: AclIdentities | None = self.security.identities
        self._listeners: list[Listener] = []
        self._watches: list[PersistentWatch] = []
        self._watches_lock = threading.Lock()
        self.negotiated_session_timeout = None
        self.client = self._new_client()

    def _new_client(self) -> KazooClient:
        # Once connected, a session is re-established for as long as it takes; the
        # first connection is bounded by the connect timeout in start().
        retry = KazooRetry(max_tries=-1, max_delay=1.0)
        credentials, tls = self.security.credentials, self.security.tls
        client = KazooClient(
            hosts=self.hosts,
            timeout=self.session_timeout,
            connection_retry=retry,
            command_retry=None,
            auth_data=[("digest", credentials.auth)] if credentials is not None else None,
            default_acl=self._acl_list(schema.ROOT),
            use_ssl=tls is not None,
            ca=tls.ca_file if tls is not None else None,
            certfile=tls.cert_file if tls is not None else None,
            keyfile=tls.key_file if tls is not None else None,
            verify_certs=True,
        )
        client.add_listener(self._on_state)
        self._capture_negotiated_timeout(client)
        return client

    def _acl_list(self, path: str) -> list[ACL] | None:
        if self.identities is None:
            return None
        return [ACL(perms, Id("digest", identity)) for identity, perms in acl_for(path, self.identities)]

    def acl_of(self, path: str) -> list[ACL] | None:
        """The ACL a znode created at `path` gets (None: kazoo's default, world-open without identities)."""
        return self._acl_list(path)

    def _on_state(self, state: Any) -> None:
        """kazoo's connection thread: tell the listeners, then the watches."""
        name = str(state)
        for listener in list(self._listeners):
            try:
                listener(name)
            except Exception:
                log.exception("Connection listener failed on %s", name)
        with self._watches_lock:
            self._watches = [watch for watch in self._watches if not watch.stopped]
            watches = list(self._watches)
        for watch in watches:
            watch.on_state(name)

    def _add_watch(self, watch: PersistentWatch) -> None:
        with self._watches_lock:
            self._watches.append(watch)

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

    # -- the session -------------------------------------------------------------

    def start(self) -> None:
        """Open a session; a failed attempt leaves the store ready for another."""
        deadline = time.monotonic() + self.connect_timeout
        handshake = Handshake()
        if self.security.tls is not None:
            # kazoo would report a failed TLS handshake only as a connection that never came up.
            handshake = check_handshake(self.hosts, self.security.tls, self.connect_timeout)
            if handshake.tls_failure is not None:
                raise StoreUnavailable(f"cannot reach ZooKeeper at {self.hosts}: {handshake.tls_failure}")
        try:
            self.client.start(timeout=max(deadline - time.monotonic(), MIN_START_SECONDS))
        except KazooTimeoutError as exc:
            # kazoo has stopped and closed the client; the next attempt needs a new one.
            self.client = self._new_client()
            why = f"; {handshake.unreachable}" if handshake.unreachable else ""
            raise StoreUnavailable(
                f"cannot reach ZooKeeper at {self.hosts} within {self.connect_timeout:g}s{why}"
            ) from exc
        except AuthFailedError as exc:
            self.client = self._new_client()
            raise NotAuthorized(f"ZooKeeper at {self.hosts} refused this client's credentials") from exc
        if self.identities is None and self.security.credentials is not None:
            self._learn_identities()

    def _learn_identities(self) -> None:
        """A client without the ACL identities in its configuration (the CLI) takes the cluster's,
        so that what it creates is as protected as what the daemons create."""
        try:
            found = self.get(schema.SECURITY)
        except StoreError:
            return
        if found is None:
            return
        try:
            self.identities = AclIdentities.from_json(
                found.value.get("identities") if isinstance(found.value, dict) else None
            )
        except SecurityError as exc:
            log.warning("%s; new znodes get ZooKeeper's default ACL", exc)
            return
        self.client.default_acl = self._acl_list(schema.ROOT)

    def ensure_schema(self) -> None:
        """The schema, and with ACL identities: `/pvc/security`, and the root and `/pvc` closed to
        everyone but the cluster's identities."""
        super().ensure_schema()
        if self.identities is None:
            return
        record = security_record(self.identities)
        try:
            self.create(schema.SECURITY, record)
        except AlreadyExists:
            found = self.get(schema.SECURITY)
            if found is None or found.value != record:
                self.set(schema.SECURITY, record, -1)
        closed = self._acl_list(schema.ROOT)
        for path in ("/", schema.ROOT):
            acls, _stat = self._call(path, partial(self.client.get_acls, path))
            if any(acl.id.scheme == "world" for acl in acls):
                self._call(path, partial(self.client.set_acls, path, closed))

    def secure_tree(self) -> int:
        """Give the root and every znode under `/pvc` the ACL pvcd gives it at creation (an existing
        cluster made before ACLs, or a password rotation: `pvcd --secure-zookeeper`); the number of
        znodes set."""
        if self.identities is None:
            raise NotAuthorized("no ACL identities configured (pvc.cluster.zookeeper.acl)")
        count = 0
        pending = [schema.ROOT]
        while pending:
            path = pending.pop()
            self._call(path, partial(self.client.set_acls, path, self._acl_list(path)))
            count += 1
            pending += [f"{path}/{child}" for child in self.children(path)]
        self._call("/", partial(self.client.set_acls, "/", self._acl_list(schema.ROOT)))
        self.ensure_schema()
        return count + 1

    def stop(self) -> None:
        """Close the session (ephemeral nodes vanish now, not at session expiry)."""
        try:
            self.client.stop()
        finally:
            self.client.close()

    @property
    def connected(self) -> bool:
        return bool(self.client.state == KazooState.CONNECTED)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def drop_connection(self) -> None:
        """kazoo's own connection-drop request (the one its test suite uses).

        kazoo counts every request sent as a heartbeat and never checks that
        requests are answered, so a server that silently stopped answering goes
        unnoticed by kazoo itself."""
        self.client._call(_CONNECTION_DROP, self.client.handler.async_result())

    # -- reads and writes --------------------------------------------------------

    def _call(self, path: str, func: Callable[[], Any]) -> Any:
        try:
            return func()
        except KazooTimeoutError as exc:
            raise StoreUnavailable(f"{path}: ZooKeeper did not answer") from exc
        except KazooException as exc:
            raise _translate(exc, path) from exc

    def get(self, path: str) -> Versioned | None:
        try:
            data, stat = self._call(path, lambda: self.client.get(path))
        except NotFound:
            return None
        return versioned(data, path, stat.version, stat.mtime, stat.mzxid)

    def get_many(self, paths: Sequence[str], timeout: float | None = None) -> list[Versioned | Unreadable | None]:
        """`base.Store.get_many` in multiRead requests, all sent before the first answer is awaited.

        Chunks of paths sized so that each answer stays under
        `MULTI_READ_RESPONSE_BYTES` at the mean value size of the previous read;
        an answer over it is read all the same. A chunk the server refuses for
        any reason but the connection (a limit on answers, say) is read again
        with one get per path. A server older than 3.6 answers multiRead with
        "unimplemented" (and closes the connection): the store remembers it and
        reads with one get per path from then on.
        """
        paths = list(paths)
        if not paths:
            return []
        if not self._multi_read or type(self).get_async is not ZooKeeperStore.get_async:
            return super().get_many(paths, timeout)  # a subclass that reads otherwise (a test double) reads its way
        deadline = None if timeout is None else time.monotonic() + timeout
        size = max(16, min(MULTI_READ_PATHS, MULTI_READ_RESPONSE_BYTES // self._bytes_per_path))
        chroot = self.client.chroot
        asked = []
        for start in range(0, len(paths), size):
            chunk = paths[start : start + size]
            answer = self.client.handler.async_result()
            self.client._call(_MultiRead(tuple(_prefix_root(chroot, path) for path in chunk)), answer)
            asked.append((chunk, answer))
        values: list[Versioned | Unreadable | None] = []
        read_bytes = 0
        for chunk, answer in asked:
            try:
                answers, size_read = answer.get(timeout=_remaining(deadline))
            except KazooTimeoutError as exc:
                raise StoreTimeout(
                    f"{chunk[0]} and {len(paths) - 1} other paths: ZooKeeper did not answer within {timeout or 0:.1f}s"
                ) from exc
            except UnimplementedError:
                log.info("ZooKeeper does not know multiRead (older than 3.6): reading one path per request")
                self._multi_read = False
                return self._get_many_after_refusal(paths, deadline)
            except Exception as exc:
                # The connection lost, or this chunk refused (a limit on answers, say) or
                # its answer unreadable (kazoo's deserialize raised): only the first fails the read.
                error = _translate(exc, f"{chunk[0]} and {len(paths) - 1} other paths")
                if isinstance(error, StoreUnavailable):
                    raise error from exc
                log.warning("multiRead of %d paths failed (%r): one get per path", len(chunk), exc)
                values += super().get_many(chunk, _remaining(deadline))
                continue
            read_bytes += size_read
            for path, found in zip(chunk, answers, strict=True):
                if isinstance(found, int):
                    if found == _NO_NODE:
                        values.append(None)
                        continue
                    raise _translate(EXCEPTIONS[found](), path)
                data, version, mtime = found
                try:
                    values.append(versioned(data, path, version, mtime))
                except Unreadable as exc:
                    values.append(exc)
        self._bytes_per_path = max(64, read_bytes // len(paths))
        return values

    def _get_many_after_refusal(self, paths: list[str], deadline: float | None) -> list[Versioned | Unreadable | None]:
        """One get per path, after a server refused multiRead: it closes the
        connection after refusing, and gets sent meanwhile are lost with it: they
        are sent again (up to twice) once kazoo has a new connection."""
        attempts = 3
        while True:
            attempts -= 1
            try:
                return collect([self.get_async(path) for path in paths], _remaining(deadline))
            except StoreTimeout:
                raise
            except StoreUnavailable:
                if not attempts:
                    raise
                time.sleep(0.05)

    def children(self, path: str) -> list[str]:
        try:
            return sorted(self._call(path, lambda: self.client.get_children(path)))
        except NotFound:
            return []

    def exists(self, path: str) -> bool:
        return self._call(path, lambda: self.client.exists(path)) is not None

    def create(
        self, path: str, value: Any, ephemeral: bool = False, makepath: bool = False, sequential: bool = False
    ) -> str:
        created = self._call(
            path,
            lambda: self.client.create(
                path,
                encode(value),
                acl=self.acl_of(path),
                ephemeral=ephemeral,
                makepath=makepath,
                sequence=sequential,
            ),
        )
        return str(created)

    def set(self, path: str, value: Any, version: int) -> int:
        stat = self._call(path, lambda: self.client.set(path, encode(value), version=version))
        return int(stat.version)

    def delete(self, path: str, version: int = -1) -> None:
        self._call(path, lambda: self.client.delete(path, version=version))

    def ensure_path(self, path: str) -> None:
        self._call(path, lambda: self.client.ensure_path(path))

    def transaction(self) -> base.Transaction:
        return ZooKeeperTransaction(self)

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
        return int(stat.mtime)

    # -- watches and locks -------------------------------------------------------

    def _start_watch(self, watch: PersistentWatch) -> None:
        self._add_watch(watch)  # first: a CONNECTED during the first read is not missed
        watch.start()

    def run_soon(self, func: Callable[[], None]) -> None:
        self.client.handler.spawn(func)

    def lock(self, path: str, identifier: str) -> StoreLock:
        return _ZooKeeperLock(path, self.client.Lock(path, identifier=identifier))

    # -- bounded asynchronous calls ----------------------------------------------

    def sync_async(self, path: str) -> Pending[None]:
        return _Pending(path, self.client.sync_async(path), lambda _raw: None)

    def get_async(self, path: str, watch: OneShotWatch | None = None) -> Pending[Versioned | None]:
        def convert(raw: Any) -> Versioned | None:
            data, stat = raw
            return versioned(data, path, stat.version, stat.mtime, stat.mzxid)

        return _Pending(path, self.client.get_async(path, watch=watch), convert, missing=lambda: None)

    def children_async(self, path: str, watch: OneShotWatch | None = None) -> Pending[list[str] | None]:
        return _Pending(
            path, self.client.get_children_async(path, watch=watch), lambda raw: sorted(raw), missing=lambda: None
        )

    def exists_async(self, path: str, watch: OneShotWatch | None = None) -> Pending[bool]:
        return _Pending(path, self.client.exists_async(path, watch=watch), lambda raw: raw is not None)

    def delete_async(self, path: str, version: int = -1) -> Pending[bool]:
        return _Pending(path, self.client.delete_async(path, version=version), lambda _raw: True, missing=lambda: False)

    def ensure_path_async(self, path: str) -> Pending[None]:
        return _Pending(path, self.client.ensure_path_async(path), lambda _raw: None)


Store = ZooKeeperStore
"""The ZooKeeper implementation under its former name (what callers construct)."""
