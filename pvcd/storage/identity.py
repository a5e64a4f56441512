"""This node's Ceph client identity: the address Ceph sees its clients at, learned from librados
and published in ZooKeeper for the fencer (`schema.node_storage`).

Every client on a host — pvcd's `ceph`/`rbd` calls, each QEMU's librbd — connects from the host's
address on the way to the mons (the storage network), each with a nonce of its own. What the
fencer needs is that IP: blocklisting it as a whole cuts every client of the host off
(`pvcd.fencing.storage_cut`). Asking librados (`rados_getaddrs`) rather than reading the
configuration gives the address Ceph itself records, whatever the routing picked.

librados is Debian's `python3-rados`, which loads only in Debian's interpreter, so the question
runs in a process of its own (`rados_address.py` under /usr/bin/python3) with a deadline.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from pvcd.config import Storage
from pvcd.storage.addresses import ClientIdentity, parse_addresses
from pvcd.storage.ceph import CephError, run_bounded
from pvcd.supervisor import Supervisor
from pvcd.zk import schema
from pvcd.zk.base import AlreadyExists, Store, StoreError

log = logging.getLogger("pvcd.storage")

SYSTEM_PYTHON = "/usr/bin/python3"
"""The interpreter Debian's `rados` binding is built for."""
ADDRESS_SCRIPT = Path(__file__).with_name("rados_address.py")
RETRY_SECONDS = 5.0
"""Between attempts while Ceph cannot be asked (not running yet, unreachable)."""
REFRESH_SECONDS = 600.0
"""Between checks once published: an address changes only when the host's network does."""


def learn(storage: Storage) -> tuple[str, ...]:
    """Ask librados which address this host's Ceph clients have; CephError (one line) otherwise."""
    seconds = storage.ceph_timeout
    command = [
        SYSTEM_PYTHON,
        str(ADDRESS_SCRIPT),
        storage.ceph_config_file,
        storage.ceph_keyring,
        storage.ceph_client_id,
        str(seconds),
    ]
    what = "librados client address"
    # The connect timeout inside plus a margin for the interpreter's start.
    returncode, stdout, stderr = run_bounded(command, what, seconds + 5.0)
    try:
        answer = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        detail = (stderr.strip().splitlines() or [f"exited with status {returncode}"])[-1]
        raise CephError(f"{what}: {detail}") from None
    if returncode != 0 or not isinstance(answer, dict) or "addresses" not in answer:
        error = answer.get("error") if isinstance(answer, dict) else None
        raise CephError(f"{what}: {error or f'exited with status {returncode}'}")
    try:
        return parse_addresses(str(answer["addresses"]))
    except ValueError as exc:
        raise CephError(f"{what}: {exc}") from None


class IdentityPublisher:
    """Learns the node's Ceph client addresses and keeps them published (retrying while Ceph
    cannot be asked); runs on every node with `enable_storage`, under the daemon's supervisor."""

    name = "storage-identity"

    def __init__(self, store: Store, node: str, storage: Storage, supervisor: Supervisor) -> None:
        self.store = store
        self.node = node
        self.storage = storage
        self.supervisor = supervisor
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._published: tuple[str, ...] | None = None
        self._failure: str | None = None

    def start(self) -> None:
        self._stop = threading.Event()
        self._thread = self.supervisor.spawn(self.name, self._round, self._stop, 0.0)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)

    def _round(self) -> None:
        self._stop.wait(self._publish_once())

    def _publish_once(self) -> float:
        """One attempt; the seconds to wait before the next."""
        try:
            addresses = learn(self.storage)
        except CephError as exc:
            if str(exc) != self._failure:
                log.warning(
                    "Cannot learn node %s's Ceph client address (%s); the fencer cannot cut this node off its "
                    "storage until it can; retrying every %gs",
                    self.node,
                    exc,
                    RETRY_SECONDS,
                )
            self._failure = str(exc)
            return RETRY_SECONDS
        self._failure = None
        identity = ClientIdentity(addresses, self.store.server_time_ms())
        if addresses != self._published:
            try:
                self._write(identity)
            except StoreError as exc:
                log.warning("Node %s's Ceph client address not published yet: %s; retrying", self.node, exc)
                return RETRY_SECONDS
            log.info(
                "Node %s's Ceph clients are at %s (published for storage fencing)", self.node, ", ".join(identity.ips)
            )
            self._published = addresses
        return REFRESH_SECONDS

    def _write(self, identity: ClientIdentity) -> None:
        path = schema.node_storage(self.node)
        try:
            self.store.create(path, identity.to_json())
        except AlreadyExists:
            self.store.set(path, identity.to_json(), -1)


def read_identity(store: Store, node: str) -> ClientIdentity | None:
    found = store.get(schema.node_storage(node))
    return ClientIdentity.from_json(found.value) if found is not None else None
