"""The storage step of a fence, against Ceph and ZooKeeper: blocklist a dead node's Ceph clients,
break their locks on its VMs' volumes, and lift the blocklist once the node is readied.

What to cut and what the result proves is decided in `storage_cut` (pure); this module reads
what it needs (the node's published addresses, its VMs' volumes, who watches and locks them),
acts through the Ceph adapter (every call bounded by its timeout), and keeps what it blocklisted
in `schema.storage_fence(NODE)` so that any later primary can lift it.

The entries last `blocklist_time` seconds; while the node stays fenced the primary renews them
when half of that is left, so a node that is never readied stays cut off, and once it is readied
(`pvc node ready`: its fence record cleared) the primary removes them within a fencer round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from pvcd.cluster.cache import ClusterCache
from pvcd.cluster.view import ClusterView
from pvcd.cluster.vm_records import InvalidVm, RbdVolume, VmView, rbd_volumes, writable_disks_on_rbd
from pvcd.fencing.flow import Fence
from pvcd.fencing.storage_cut import StorageCut, VolumeClients, failed, judge_cut, plan_cut
from pvcd.storage.addresses import ClientIdentity
from pvcd.storage.ceph import Ceph, CephError
from pvcd.zk import schema
from pvcd.zk.base import AlreadyExists, Store, StoreError

log = logging.getLogger("pvcd.fencing")

WORKERS = 8
"""Volumes asked about at once (each question is one `rbd` process)."""


@dataclass
class _Blocklisted:
    """One node's entry of `schema.storage_fence`, as this primary knows it."""

    fence: str
    entries: tuple[str, ...]
    renew_at: float
    """Monotonic time at which the entries are renewed if the node is still fenced."""


def _vms_of(node: str, view: ClusterView) -> list[VmView]:
    """The VMs that may run on the node: assigned to it, or in a move from or to it."""
    return [
        vm
        for vm in view.vms.values()
        if vm.record.node == node or (vm.migration is not None and node in (vm.migration.source, vm.migration.target))
    ]


class StorageFencer:
    """Runs on the primary, called by the fencer under its fence lock."""

    def __init__(
        self,
        store: Store,
        ceph: Ceph,
        me: str,
        cluster: ClusterCache,
        blocklist_seconds: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.ceph = ceph
        self.me = me
        self.cluster = cluster
        self.blocklist_seconds = blocklist_seconds
        self.clock = clock
        self._known: dict[str, _Blocklisted] | None = None

    # -- the cut -------------------------------------------------------------------------------

    def cut(self, node: str, fence_id: str) -> StorageCut:
        identity = self._identity(node)
        if identity is None:
            return failed(f"node {node} never published its Ceph client address, so there is nothing to cut off")
        others = self._other_ips(node, identity)
        view = self.cluster.current(need_vms=True, caught_up=True)
        vms = _vms_of(node, view)
        volumes: dict[RbdVolume, None] = {}
        all_rbd = True
        for vm in vms:
            try:
                volumes.update(dict.fromkeys(rbd_volumes(vm.record.xml)))
                all_rbd = all_rbd and writable_disks_on_rbd(vm.record.xml)
            except InvalidVm as exc:
                log.error("VM %s of node %s: its disks cannot be read (%s); not cut off", vm.name, node, exc)
                all_rbd = False
        shared = bool(set(identity.ips) & others)
        try:
            clients = self._clients(list(volumes), with_watchers=shared)
            plan = plan_cut(identity.ips, others, clients)
            until_ms = self.store.server_time_ms() + self.blocklist_seconds * 1000
            self._remember(node, fence_id, plan.entries)
            for entry in plan.entries:
                self.ceph.blocklist_add(entry, self.blocklist_seconds)
            for volume, lock in plan.locks:
                pool, _, name = volume.partition("/")
                self.ceph.break_lock(pool, name, lock)
            listed = {entry.address for entry in self.ceph.blocklist()}
            left = self._locks_left(plan.locks)
        except (CephError, StoreError) as exc:
            return failed(str(exc))
        return judge_cut(plan, listed, left, all_rbd, until_ms)

    def _identity(self, node: str) -> ClientIdentity | None:
        found = self.store.get(schema.node_storage(node))
        return ClientIdentity.from_json(found.value) if found is not None else None

    def _other_ips(self, node: str, identity: ClientIdentity) -> set[str]:
        """The IPs other nodes' clients use. If this primary's own are unknown, the dead node's
        count as shared: the primary must never cut itself off."""
        ips: set[str] = set()
        names = [name for name in self.store.children(schema.NODES) if name != node]
        for name, found in zip(names, self.store.get_many([schema.node_storage(n) for n in names]), strict=True):
            other = ClientIdentity.from_json(getattr(found, "value", None))
            if other is not None:
                ips.update(other.ips)
            elif name == self.me:
                ips.update(identity.ips)
        return ips

    def _clients(self, volumes: Sequence[RbdVolume], with_watchers: bool) -> list[VolumeClients]:
        def ask(volume: RbdVolume) -> VolumeClients:
            watchers = self.ceph.watchers(volume.pool, volume.volume) if with_watchers else ()
            locks = self.ceph.locks(volume.pool, volume.volume)
            return VolumeClients(str(volume), tuple(w.address for w in watchers), locks)

        if not volumes:
            return []
        with ThreadPoolExecutor(min(WORKERS, len(volumes))) as pool:
            return list(pool.map(ask, volumes))

    def _locks_left(self, broken: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
        volumes = sorted({volume for volume, _lock in broken})
        still: list[tuple[str, Any]] = []
        for volume in volumes:
            pool, _, name = volume.partition("/")
            held = set(self.ceph.locks(pool, name))
            still += [(v, lock) for v, lock in broken if v == volume and lock in held]
        return still

    # -- lifting and renewing ------------------------------------------------------------------

    def _remember(self, node: str, fence_id: str, entries: tuple[str, ...]) -> None:
        """Record the entries before adding them: a primary that dies in between leaves a record
        the next one lifts, never an entry nobody knows of."""
        known = self._load()
        previous = known.get(node)
        if previous is not None and previous.fence != fence_id:
            entries = tuple(dict.fromkeys((*previous.entries, *entries)))
        value = {"fence": fence_id, "entries": list(entries), "blocklist_seconds": self.blocklist_seconds}
        path = schema.storage_fence(node)
        try:
            self.store.create(path, value, makepath=True)
        except AlreadyExists:
            self.store.set(path, value, -1)
        known[node] = _Blocklisted(fence_id, entries, self.clock() + self.blocklist_seconds / 2)

    def _load(self) -> dict[str, _Blocklisted]:
        """What earlier primaries blocklisted: read once per primary term, then kept up to date here."""
        if self._known is None:
            known: dict[str, _Blocklisted] = {}
            names = self.store.children(schema.STORAGE_FENCES) if self.store.exists(schema.STORAGE_FENCES) else []
            for name in names:
                found = self.store.get(schema.storage_fence(name))
                value = found.value if found is not None and isinstance(found.value, dict) else {}
                entries = value.get("entries")
                known[name] = _Blocklisted(
                    str(value.get("fence", "")),
                    tuple(str(e) for e in entries) if isinstance(entries, list) else (),
                    self.clock(),
                )
            self._known = known
        return self._known

    def due(self, view: ClusterView) -> list[str]:
        """Nodes whose blocklist entries need lifting (readied) or renewing (still fenced)."""
        known = self._load()
        now = self.clock()
        due = []
        for name, entry in sorted(known.items()):
            node = view.nodes.get(name)
            readied = node is None or Fence.from_record(node.fence) is None
            if readied or now >= entry.renew_at:
                due.append(name)
        return due

    def tidy(self, nodes: Sequence[str]) -> None:
        """Lift the entries of readied nodes; renew those of nodes still fenced."""
        known = self._load()
        for name in nodes:
            entry = known.get(name)
            if entry is None:
                continue
            found = self.store.get(schema.node_fence(name))
            fenced = found is not None and Fence.from_record(found.value) is not None
            try:
                if fenced:
                    for address in entry.entries:
                        self.ceph.blocklist_add(address, self.blocklist_seconds)
                    entry.renew_at = self.clock() + self.blocklist_seconds / 2
                    log.info("Node %s is still fenced: its Ceph blocklist entries renewed", name)
                    continue
                for address in entry.entries:
                    self.ceph.blocklist_remove(address)
                self.store.delete(schema.storage_fence(name))
            except (CephError, StoreError) as exc:
                log.warning("Blocklist entries of node %s not updated yet: %s; trying again", name, exc)
                continue
            del known[name]
            log.warning(
                "Node %s was readied: its Ceph clients are no longer blocklisted (%s)",
                name,
                ", ".join(entry.entries) or "no entries",
            )
