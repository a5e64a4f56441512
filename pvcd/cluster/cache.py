"""The cluster, kept up to date by watches: one reader per daemon, read as immutable snapshots.

Every znode the view holds (each node's registration, state, keepalive and
fence; with `with_vms` each VM's record, status and migration; maintenance and
faults) is read once with a one-shot watch left on it. When a watch fires,
only that znode is read again, and the read leaves the next watch: nothing is
re-read that did not change, and nothing is read on a timer. A new member of
the node or VM folders (seen by a watch on the folder's children) is read
whole; a member gone is dropped.

Reads are pipelined: the cache's thread sends every read it has to make
before it waits for the first answer, so loading 3,000 VMs takes a few round
trips, not 9,000.

A lost connection makes the next pass read everything again, with new
watches: kazoo drops every one-shot watch when the connection drops (not only
when the session is lost), so nothing else would tell the cache what changed
meanwhile.

Snapshots (`pvcd.cluster.view.ClusterView`) are replaced, never changed, so
a loop reads one consistent picture for a whole round without locking.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from pvcd.cluster.values import NodeView
from pvcd.cluster.view import NODE_PARTS, VM_PARTS, ClusterView, assemble, node_of, node_path, vm_of, vm_path
from pvcd.cluster.vm_records import InvalidVm, VmView
from pvcd.supervisor import Supervisor
from pvcd.zk import schema
from pvcd.zk.base import OneShotWatch, Pending, Store, StoreError, StoreUnavailable, Unreadable, Versioned, as_empty

log = logging.getLogger(__name__)

LOOP = "cluster-cache"

READ_WINDOW = 200
"""Reads the cache has outstanding at most. The session is shared with the keepalive and the
election, whose requests queue behind the cache's: thousands of reads sent at once (after a
recovery changed hundreds of VMs) kept the election's probe waiting for over a second, and the
coordinator dropped its connection."""


@dataclass(frozen=True)
class _Member:
    """Which member a watched znode belongs to: a node's or VM's part, or a cluster-wide record."""

    kind: str
    """"node", "vm" or "cluster"."""
    name: str
    part: str


def _classify(path: str) -> _Member | None:
    """The member and part of a path the cache watches; None for any other path."""
    if path == schema.MAINTENANCE:
        return _Member("cluster", "maintenance", "")
    if path == schema.FAULTS:
        return _Member("cluster", "faults", "")
    for folder, kind, parts in ((schema.NODES, "node", NODE_PARTS), (schema.VMS, "vm", VM_PARTS)):
        if not path.startswith(folder + "/"):
            continue
        rest = path[len(folder) + 1 :].split("/")
        if len(rest) == 1:
            return _Member(kind, rest[0], parts[0])
        if len(rest) == 2 and rest[1] in parts[1:]:
            return _Member(kind, rest[0], rest[1])
    return None


def _read(pending: Pending[Versioned | None], path: str) -> Versioned | None:
    """A read's answer; a value that is not JSON counts as present with no value (its version kept)."""
    try:
        return pending.result()
    except Unreadable as exc:
        log.warning("Cluster view: %s is not JSON (%s); read as empty", path, exc)
        return as_empty(exc)


class ClusterCache:
    """This daemon's picture of the cluster; `snapshot()` is the latest, `wait_newer` waits for the next."""

    def __init__(self, store: Store, with_vms: bool, supervisor: Supervisor | None = None, node: str = "") -> None:
        """`with_vms`: follow every VM too (coordinators, which recover a fenced node's VMs);
        without it only nodes and the cluster-wide records."""
        self.store = store
        self.with_vms = with_vms
        self.supervisor = supervisor or Supervisor(node)
        self._changed = threading.Condition()
        # Guarded by _changed: what the watches and the session asked for.
        self._dirty: set[str] = set()
        self._dirty_folders: set[str] = set()
        self._reload = True
        self._connected = True
        self._passing = False
        """A pass is reading: what it reads is not in the snapshot yet."""
        # Owned by the cache's thread.
        self._members: dict[str, set[str]] = {"node": set(), "vm": set()}
        self._values: dict[str, Versioned | None] = {}
        self._nodes: dict[str, NodeView] = {}
        self._vms: dict[str, VmView] = {}
        self._damaged: dict[str, str] = {}
        self._cluster: dict[str, Versioned | None] = {}
        self._view = ClusterView(with_vms=with_vms)
        self._loaded = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.reads = 0
        """ZooKeeper reads made so far (for the tests and the benchmark)."""

    # -- thread control ------------------------------------------------------

    def start(self) -> None:
        self.store.add_listener(self._on_session)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=LOOP, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- what readers call ---------------------------------------------------

    def snapshot(self) -> ClusterView:
        """The latest view (empty, generation 0, until the first load completed)."""
        return self._view

    @property
    def loaded(self) -> bool:
        return self._loaded

    def current(self, need_vms: bool, caught_up: bool) -> ClusterView:
        """The snapshot if it can be trusted, otherwise one fresh read of the store.

        Never trusted while not loaded, cut off, or about to read everything again (its
        keepalive times could then be far behind and make every node look late). With
        `caught_up` (a recovery's plan) it must also have read every change it has heard of;
        without (the fencer's rounds, which a slightly old picture only delays) it need not."""
        with self._changed:
            behind = self._passing or bool(self._dirty) or bool(self._dirty_folders)
            trusted = (
                self._loaded
                and self._connected
                and not self._reload
                and not (caught_up and behind)
                and (self.with_vms or not need_vms)
            )
            view = self._view
        return view if trusted else read_view(self.store, need_vms)

    def wait_newer(self, generation: int, timeout: float) -> ClusterView:
        """The first view newer than `generation`, or the current one after `timeout` seconds."""
        with self._changed:
            self._changed.wait_for(lambda: self._view.generation > generation or self._stop.is_set(), timeout)
            return self._view

    def wait_loaded(self, timeout: float) -> bool:
        """Whether the first full load completed within `timeout` seconds."""
        with self._changed:
            return self._changed.wait_for(lambda: self._loaded or self._stop.is_set(), timeout) and self._loaded

    # -- what the store calls (record and wake, nothing else) ----------------

    def _on_session(self, state: str) -> None:
        with self._changed:
            if (
                state != "CONNECTED"
            ):  # kazoo drops every one-shot watch of a lost connection, not only of a lost session
                self._reload = True
            self._connected = state == "CONNECTED"
            self._changed.notify_all()

    def _on_event(self, event: Any) -> None:
        path = getattr(event, "path", None)
        if not path:
            return  # a session event: the listener decides what to read again
        with self._changed:
            if path in (schema.NODES, schema.VMS):
                self._dirty_folders.add(path)
            else:
                self._dirty.add(path)
            self._changed.notify_all()

    # -- the cache's thread --------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            with self._changed:
                self._changed.wait_for(self._has_work, 5.0)
                if self._stop.is_set():
                    return
                if not self._has_work():
                    continue
                reload, dirty, folders = self._reload, self._dirty, self._dirty_folders
                self._reload, self._dirty, self._dirty_folders = False, set(), set()
                self._passing = True
            try:
                self._pass(reload, dirty, folders)
            except StoreError as exc:
                self._passing = False
                with self._changed:
                    self._reload = self._reload or reload
                    self._dirty |= dirty
                    self._dirty_folders |= folders
                if not isinstance(exc, StoreUnavailable):
                    log.warning("Cluster view not brought up to date: %s; trying again", exc)
                self._stop.wait(0.2)
            except Exception as exc:  # a bug must not end the view: counted, retried with everything read again
                with self._changed:
                    self._reload = True
                    self._passing = False
                self.supervisor.failed(LOOP, exc)
                self._stop.wait(1.0)
            else:
                self.supervisor.succeeded(LOOP)

    def _has_work(self) -> bool:
        if self._stop.is_set():
            return True
        return self._connected and (self._reload or bool(self._dirty) or bool(self._dirty_folders))

    def _pass(self, reload: bool, dirty: set[str], folders: set[str]) -> None:
        """Read what changed (or everything), then publish a new view."""
        watch: OneShotWatch = self._on_event
        if reload:
            folders = {schema.NODES, schema.VMS} if self.with_vms else {schema.NODES}
            dirty = {schema.MAINTENANCE, schema.FAULTS}
        listed = {folder: self.store.children_async(folder, watch=watch) for folder in sorted(folders)}
        self.reads += len(listed)
        for folder, pending in listed.items():
            kind = "node" if folder == schema.NODES else "vm"
            names = pending.result()
            if names is None:  # not created yet: its creation is watched for, and then listed
                self.reads += 1
                if self.store.exists_async(folder, watch=watch).result():
                    with self._changed:
                        self._dirty_folders.add(folder)
                names = []
            found = set(names)
            for name in self._members[kind] - found:
                self._drop(kind, name)
            dirty |= self._paths_of(kind, found if reload else found - self._members[kind])
            self._members[kind] = found
        self._read_paths(dirty, watch)
        self._publish(reload)

    def _paths_of(self, kind: str, names: set[str]) -> set[str]:
        if kind == "node":
            return {node_path(name, part) for name in names for part in NODE_PARTS}
        return {vm_path(name, part) for name in names for part in VM_PARTS}

    def _drop(self, kind: str, name: str) -> None:
        for path in self._paths_of(kind, {name}):
            self._values.pop(path, None)
        if kind == "node":
            self._nodes.pop(name, None)
        else:
            self._vms.pop(name, None)
            self._damaged.pop(name, None)

    def _read_paths(self, paths: set[str], watch: OneShotWatch) -> None:
        """Read `paths` with a watch on each, READ_WINDOW requests at a time."""
        wanted: list[tuple[str, _Member]] = []
        for path in sorted(paths):
            member = _classify(path)
            if member is not None and self._wanted(member):
                wanted.append((path, member))
        for start in range(0, len(wanted), READ_WINDOW):
            self._read_window(wanted[start : start + READ_WINDOW], watch)

    def _read_window(self, wanted: list[tuple[str, _Member]], watch: OneShotWatch) -> None:
        """Read `wanted`, every request sent before any answer is awaited.

        A missing znode gets an existence watch instead, so its creation is
        seen; one created between the two requests is read again."""
        asked = [(path, member, self.store.get_async(path, watch=watch)) for path, member in wanted]
        self.reads += len(asked)
        results = [(path, member, _read(pending, path)) for path, member, pending in asked]
        missing = [(path, self.store.exists_async(path, watch=watch)) for path, _m, value in results if value is None]
        self.reads += len(missing)
        changed: set[tuple[str, str]] = set()
        for path, member, value in results:
            self._values[path] = value
            changed.add((member.kind, member.name))
        for path, pending in missing:
            if pending.result():
                with self._changed:
                    self._dirty.add(path)
        for kind, name in changed:
            self._rebuild(kind, name)

    def _wanted(self, member: _Member) -> bool:
        if member.kind == "cluster":
            return True
        return member.name in self._members[member.kind]

    def _rebuild(self, kind: str, name: str) -> None:
        if kind == "cluster":
            self._cluster[name] = self._values.get(schema.MAINTENANCE if name == "maintenance" else schema.FAULTS)
            return
        if kind == "node":
            node = node_of(name, {part: self._values.get(node_path(name, part)) for part in NODE_PARTS})
            if node is None:
                self._nodes.pop(name, None)
            else:
                self._nodes[name] = node
            return
        self._damaged.pop(name, None)
        try:
            vm = vm_of({part: self._values.get(vm_path(name, part)) for part in VM_PARTS})
        except InvalidVm as exc:
            self._vms.pop(name, None)
            self._damaged[name] = str(exc)
            return
        if vm is None:
            self._vms.pop(name, None)
        else:
            self._vms[name] = vm

    def _publish(self, loaded: bool) -> None:
        maintenance = self._cluster.get("maintenance")
        faults = self._cluster.get("faults")
        view = ClusterView(
            nodes=MappingProxyType(dict(self._nodes)),
            vms=MappingProxyType(dict(self._vms)),
            damaged_vms=MappingProxyType(dict(self._damaged)),
            maintenance=bool(maintenance and isinstance(maintenance.value, dict) and maintenance.value.get("enabled")),
            faults=MappingProxyType(dict(faults.value) if faults and isinstance(faults.value, dict) else {}),
            with_vms=self.with_vms,
            generation=self._view.generation + 1,
        )
        with self._changed:
            self._view = view
            self._passing = False
            if loaded:
                self._loaded = True
            self._changed.notify_all()


def read_view(store: Store, with_vms: bool) -> ClusterView:
    """The cluster as it is now, in one `get_many` and without watches (the CLI's view)."""
    node_names = store.children(schema.NODES)
    vm_names = store.children(schema.VMS) if with_vms else []
    paths = [schema.MAINTENANCE, schema.FAULTS]
    paths += [node_path(name, part) for name in node_names for part in NODE_PARTS]
    paths += [vm_path(name, part) for name in vm_names for part in VM_PARTS]
    values: dict[str, Versioned | None] = {}
    for path, answer in zip(paths, store.get_many(paths), strict=True):
        if isinstance(answer, Unreadable):
            log.warning("Cluster view: %s is not JSON (%s); read as empty", path, answer)
        values[path] = as_empty(answer)
    return assemble(
        {name: {part: values[node_path(name, part)] for part in NODE_PARTS} for name in node_names},
        {name: {part: values[vm_path(name, part)] for part in VM_PARTS} for name in vm_names} if with_vms else None,
        values[schema.MAINTENANCE],
        values[schema.FAULTS],
    )
