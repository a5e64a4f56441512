"""VM records in ZooKeeper: reads, and every write as one version-checked transaction.

The rules about *what* may be written live in `pvcd.cluster.vm_records` and the
callers; this module only makes each change atomic. Every transaction that
changes which nodes must act on a VM (`acting_nodes`) also keeps the per-node
indexes (`schema.node_vms`) in step, in the same transaction: each node watches
its own index and the VMs in it, and never the whole VM tree.
"""

from __future__ import annotations

import dataclasses
import logging

from pvcd.cluster.vm_records import (
    STATUS_NEW,
    InvalidVm,
    Migration,
    VmRecord,
    VmStatus,
    VmView,
)
from pvcd.zk import schema
from pvcd.zk.base import Store, StoreError, Transaction, Unreadable, Versioned, readable

log = logging.getLogger(__name__)


def ensure_paths(store: Store) -> None:
    store.ensure_schema()
    store.ensure_path(schema.VMS)
    store.ensure_path(schema.VM_UUIDS)


def read_vm(store: Store, name: str) -> VmView | None:
    """One VM, or None if there is no such VM. Raises InvalidVm on a damaged record."""
    record = store.get(schema.vm(name))
    if record is None:
        return None
    return view_of(record, store.get(schema.vm_status(name)), store.get(schema.vm_migration(name)))


def view_of(record: Versioned | None, status: Versioned | None, migration: Versioned | None) -> VmView | None:
    """The VM made of its three values as read (or as watched); None without a record.

    Raises InvalidVm on a damaged record."""
    if record is None:
        return None
    return VmView(
        record=VmRecord.from_json(record.value),
        record_version=record.version,
        status=VmStatus.from_json(status.value) if status else STATUS_NEW,
        status_version=status.version if status else -1,
        migration=Migration.from_json(migration.value) if migration else None,
        migration_version=migration.version if migration else None,
    )


def read_vms(store: Store) -> tuple[dict[str, VmView], dict[str, str]]:
    """Every VM by name, and the damaged ones with the reason they cannot be read.

    One bad record must not hide the others from the reconciler or the CLI.
    """
    return _read_named(store, store.children(schema.VMS))


def _read_named(store: Store, names: list[str]) -> tuple[dict[str, VmView], dict[str, str]]:
    """Read the VMs `names`: their three values each, in one `get_many`.

    A few requests for the lot (ZooKeeper: one multiRead per few hundred
    paths) instead of three per VM: what makes `pvc vm list` and a flush's one
    read of the cluster cost milliseconds per thousand VMs rather than seconds.
    """
    paths = [path for name in names for path in (schema.vm(name), schema.vm_status(name), schema.vm_migration(name))]
    values = store.get_many(paths)
    views: dict[str, VmView] = {}
    damaged: dict[str, str] = {}
    for index, name in enumerate(names):
        record, status, migration = values[3 * index : 3 * index + 3]
        try:
            view = view_of(readable(record), readable(status), readable(migration))
        except (InvalidVm, Unreadable) as exc:
            damaged[name] = str(exc)
            continue
        if view is not None:
            views[name] = view
    return views, damaged


def acting_nodes(record: VmRecord | None, migration: Migration | None) -> frozenset[str]:
    """The nodes that must act on a VM, as `pvcd.vm.reconcile.decide_vm` has it.

    The node its record assigns it to, and both ends of a move in progress: the
    source releases the VM, the target finishes the move. Any other node only
    reports a domain of the VM it finds on its host, and learns of that from
    libvirt, not from this index.
    """
    if record is None:
        return frozenset()
    found = {record.node}
    if migration is not None:
        found.update((migration.source, migration.target))
    return frozenset(node for node in found if node)


def owned(store: Store, node: str) -> list[str]:
    """The VMs in node `node`'s index, sorted."""
    return store.children(schema.node_vms(node))


def read_owned(store: Store, node: str) -> tuple[dict[str, VmView], dict[str, str]]:
    """Every VM in node `node`'s index (see `read_vms`); entries without a VM are skipped."""
    return _read_named(store, owned(store, node))


def _index(store: Store, txn: Transaction, vm_name: str, before: frozenset[str], after: frozenset[str]) -> None:
    """Add to `txn` the index entries of `vm_name` that change from `before` to `after`.

    Each entry is looked at first, so that an index that was out of step (an
    entry left over, or one missing, e.g. data written before the index
    existed) never makes the VM's write fail: the write puts it right.
    """
    for node in sorted(after - before):
        path = schema.node_vm(node, vm_name)
        if not store.exists(path):
            store.ensure_path(schema.node_vms(node))
            txn.create(path, None)
    for node in sorted(before - after):
        path = schema.node_vm(node, vm_name)
        if store.exists(path):
            txn.delete(path)


def _index_unchecked(
    store: Store, txn: Transaction, vm_name: str, before: frozenset[str], after: frozenset[str]
) -> None:
    """As `_index`, trusting the index to be in step: no read per entry (see `VmWrite.stage`).
    The nodes' index folders must exist."""
    for node in sorted(after - before):
        txn.create(schema.node_vm(node, vm_name), None)
    for node in sorted(before - after):
        txn.delete(schema.node_vm(node, vm_name))


def repair_index(store: Store, node: str) -> tuple[list[str], list[str]]:
    """Make node `node`'s index match the VMs (one full read): the entries added and removed.

    Run once when the node's reconciler starts, for data written before the
    index existed or by hand. Each change is checked against the VM record's
    version, so a VM that changes meanwhile is left to its own write.
    """
    store.ensure_path(schema.node_vms(node))
    views, damaged = read_vms(store)
    indexed = set(owned(store, node))
    should = {name for name, view in views.items() if node in acting_nodes(view.record, view.migration)}
    added, removed = [], []
    for name in sorted(should - indexed):
        try:
            (
                store.transaction()
                .check(schema.vm(name), views[name].record_version)
                .create(schema.node_vm(node, name), None)
                .commit()
            )
            added.append(name)
        except StoreError as exc:
            log.info("Index of node %s: VM %s not added (%s)", node, name, exc)
    for name in sorted(indexed - should - set(damaged)):
        txn = store.transaction()
        if name in views:
            txn.check(schema.vm(name), views[name].record_version)
        try:
            txn.delete(schema.node_vm(node, name)).commit()
            removed.append(name)
        except StoreError as exc:
            log.info("Index of node %s: VM %s not removed (%s)", node, name, exc)
    return added, removed


class VmWrite:
    """One transaction on one VM, each write checked against the versions in `view`.

    `commit` returns the view as it is after the transaction, so an action
    with several steps (claim, start, report) chains its writes without
    re-reading.
    """

    def __init__(self, store: Store, view: VmView, transaction: Transaction | None = None) -> None:
        """With `transaction`, the writes join it (several VMs in one commit: see `stage`)."""
        self._store = store
        self._txn: Transaction = transaction or store.transaction()
        self._view = view
        self._after = view

    def check_record(self) -> VmWrite:
        self._txn.check(schema.vm(self._view.name), self._view.record_version)
        return self

    def record(self, record: VmRecord) -> VmWrite:
        self._txn.set(schema.vm(self._view.name), record.to_json(), self._view.record_version)
        self._after = dataclasses.replace(self._after, record=record, record_version=self._view.record_version + 1)
        return self

    def status(self, status: VmStatus) -> VmWrite:
        path = schema.vm_status(self._view.name)
        if self._view.status_version < 0:
            self._txn.create(path, status.to_json())
        else:
            self._txn.set(path, status.to_json(), self._view.status_version)
        self._after = dataclasses.replace(self._after, status=status, status_version=self._view.status_version + 1)
        return self

    def check_status(self) -> VmWrite:
        if self._view.status_version >= 0:
            self._txn.check(schema.vm_status(self._view.name), self._view.status_version)
        return self

    def create_migration(self, migration: Migration) -> VmWrite:
        self._txn.create(schema.vm_migration(self._view.name), migration.to_json())
        self._after = dataclasses.replace(self._after, migration=migration, migration_version=0)
        return self

    def migration(self, migration: Migration) -> VmWrite:
        assert self._view.migration_version is not None, "no migration to update"
        self._txn.set(schema.vm_migration(self._view.name), migration.to_json(), self._view.migration_version)
        self._after = dataclasses.replace(
            self._after, migration=migration, migration_version=self._view.migration_version + 1
        )
        return self

    def delete_migration(self) -> VmWrite:
        assert self._view.migration_version is not None, "no migration to delete"
        self._txn.delete(schema.vm_migration(self._view.name), self._view.migration_version)
        self._after = dataclasses.replace(self._after, migration=None, migration_version=None)
        return self

    def stage(self, check_index: bool = True) -> VmView:
        """Add the index changes to the transaction without committing it; the view after it commits.

        `check_index=False` trusts the index to be in step (no read per entry),
        for a batch of many VMs: an entry out of step then makes the whole
        transaction fail, and the caller writes those VMs one by one."""
        before = acting_nodes(self._view.record, self._view.migration)
        after = acting_nodes(self._after.record, self._after.migration)
        if before != after:
            if check_index:
                _index(self._store, self._txn, self._view.name, before, after)
            else:
                _index_unchecked(self._store, self._txn, self._view.name, before, after)
        return self._after

    def commit(self) -> VmView:
        after = self.stage()
        self._txn.commit()
        return after


def define(store: Store, record: VmRecord) -> None:
    """Create the VM's record, its status and its UUID index in one transaction.

    Raises AlreadyExists when the name or the UUID is taken.
    """
    ensure_paths(store)
    txn = (
        store.transaction()
        .create(schema.vm(record.name), record.to_json())
        .create(schema.vm_status(record.name), STATUS_NEW.to_json())
        .create(schema.vm_uuid(record.uuid), {"name": record.name})
    )
    _index(store, txn, record.name, frozenset(), acting_nodes(record, None))
    txn.commit()


def remove(store: Store, view: VmView) -> None:
    """Delete the VM's values, provided nothing changed since `view` was read.

    The status version check is what makes this safe: a node that claimed the
    VM to start it has changed the status, and the removal is refused.
    """
    txn = store.transaction()
    if view.migration_version is not None:
        txn.delete(schema.vm_migration(view.name), view.migration_version)
    if view.status_version >= 0:
        txn.delete(schema.vm_status(view.name), view.status_version)
    txn.delete(schema.vm(view.name), view.record_version).delete(schema.vm_uuid(view.record.uuid))
    _index(store, txn, view.name, acting_nodes(view.record, view.migration), frozenset())
    txn.commit()


def request_move(store: Store, view: VmView, record: VmRecord, migration: Migration | None) -> VmView:
    """Change the VM's node in one transaction.

    With a migration record, the old node must release the VM before the new
    one starts it. Without one (a stopped VM), the transaction checks the
    status version instead: a node that claimed the VM to start it in the
    meantime makes the move fail rather than race it.
    """
    write = VmWrite(store, view).record(record)
    if migration is None:
        write.check_status()
    else:
        write.create_migration(migration)
    return write.commit()


def write_after_fence(
    store: Store,
    view: VmView,
    record: VmRecord,
    migration: Migration | None,
    status: VmStatus,
    transaction: Transaction | None = None,
) -> VmView:
    """Write what `records.after_fence` decided, in one transaction; with `transaction`, only
    add it there (trusting the index), and the caller commits."""
    write = VmWrite(store, view, transaction).status(status)
    if record != view.record:
        write.record(record)
    if migration is not None and migration != view.migration:
        write.migration(migration)
    elif migration is None and view.migration is not None:
        write.delete_migration()
    if transaction is not None:
        return write.stage(check_index=False)
    return write.commit()
