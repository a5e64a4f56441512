"""Restart a fenced node's VMs elsewhere: one plan for the whole batch.

Called by the fencer only once the policy allows it (the node is known off).
The planner places every VM that no longer runs anywhere at once, reserving
capacity as it goes, so the batch spreads instead of piling onto the emptiest
node. The VMs are then handed over in batches of BATCH_VMS, each batch one
version-checked transaction (a batch in which a VM changed since the plan is
written VM by VM, each decided again on a fresh read), with the dead node as
`lastnode` so that `pvc node ready` can bring the VMs home.

Which VMs of the dead node are placed (`to_place`):

* those assigned to it, including those moving to it (`records.after_fence`
  redirects or cancels such a move);
* those it released to another node that has not started them yet: the VM
  runs nowhere, and the move is cleared in the same transaction that places
  it. Without a node for it, it is left to its move's target if that node is
  alive, unfenced and can still start it;
* those whose move away from it was requested but never acted on, when the
  move's target cannot finish it (late or fenced): the VM never left the dead
  node, so nothing runs it.

A VM the dead node released to a node that has since claimed it (its status
says that node is starting or running it) is that node's: the recovery leaves
it alone. A live migration under way is released to its target, which may
already run the VM (`records.after_fence`).

The decisions are pure (`plan_recovery`, `recovered`); `recover_vms` plans
from the cluster view it is given (the primary's cache, or a fresh read when
the cache has not caught up), writes, and logs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from pvcd.cluster import vm_records as records
from pvcd.cluster.liveness import late_nodes
from pvcd.cluster.values import NodeView
from pvcd.cluster.view import ClusterView
from pvcd.cluster.vm_records import SHOULD_RUN, ActualState, Migration, MovePhase, VmRecord, VmState, VmStatus, VmView
from pvcd.fencing.fencer import RecoveryResult
from pvcd.placement import cluster as placement
from pvcd.states import DaemonState
from pvcd.zk import schema, vms
from pvcd.zk.base import AlreadyExists, NotFound, Store, VersionConflict, encode

log = logging.getLogger("pvcd.fencing")

WRITE_ATTEMPTS = 5

Change = tuple[VmRecord, Migration | None, VmStatus]
"""A VM's record, migration (None: none, or delete it) and status, written in one transaction."""


def _moving_away(view: VmView, dead: str) -> Migration | None:
    migration = view.migration
    return migration if migration is not None and migration.source == dead else None


def _claimed_elsewhere(view: VmView, dead: str) -> bool:
    """Another node's status on the VM: it is starting or running it, so it is that node's now."""
    return view.status.active and view.status.node != dead


def involved(view: VmView, dead: str) -> bool:
    """Whether the VM's records name the dead node and the recovery must rewrite them."""
    migration = view.migration
    if view.record.node == dead:
        return True
    if migration is None or dead not in (migration.source, migration.target):
        return False
    return not (migration.source == dead and migration.phase == MovePhase.RELEASED and _claimed_elsewhere(view, dead))


def to_place(view: VmView, dead: str, can_finish: Collection[str]) -> bool:
    """Whether the planner must find the VM a node (see the module docstring)."""
    if view.record.node == dead:
        return True
    migration = _moving_away(view, dead)
    if migration is None:
        return False
    if migration.phase == MovePhase.RELEASED:
        return not _claimed_elsewhere(view, dead)
    return migration.phase == MovePhase.REQUESTED and migration.target not in can_finish


def _as_on(view: VmView, dead: str) -> VmView:
    """The VM as still on the dead node, for planning: its current node is then
    the dead one (never a candidate), and the node its cut-short move was
    heading for does not count it as arriving, so it is reserved only where
    the plan puts it."""
    return dataclasses.replace(view, record=dataclasses.replace(view.record, node=dead))


def nodes_finishing_moves(node_views: Iterable[NodeView], late: Collection[str]) -> frozenset[str]:
    """Nodes that will carry a move to them through: running, not late, not fenced."""
    return frozenset(
        view.name
        for view in node_views
        if view.state.daemon == DaemonState.RUN and view.name not in late and not placement.is_fenced(view.fence)
    )


@dataclass(frozen=True)
class RecoveryPlan:
    """What the recovery of one dead node will do, decided before anything is written.

    `vms`: every VM whose records it rewrites; `targets`: the node chosen for
    each VM placed; `unplaced`: the VMs to place that no node can take, with
    why; `can_finish`: the nodes that will finish a move to them;
    `unknown_selectors`: VMs whose record names a selector this version does
    not know (they were planned with the cluster's selector), for the log.
    """

    vms: tuple[str, ...]
    targets: Mapping[str, str]
    unplaced: Mapping[str, str]
    can_finish: frozenset[str]
    unknown_selectors: Mapping[str, str]


def plan_recovery(
    dead: str, views: Mapping[str, VmView], node_views: list[NodeView], now_ms: int, selector: str
) -> RecoveryPlan:
    """Plan the recovery of `dead`'s VMs from the cluster as read at `now_ms` (ZooKeeper's clock)."""
    late = late_nodes(node_views, now_ms) | {dead}
    can_finish = nodes_finishing_moves(node_views, late)
    mine = sorted(name for name, view in views.items() if involved(view, dead))
    placing = {name: _as_on(views[name], dead) for name in mine if to_place(views[name], dead, can_finish)}
    plan = placement.plan_requests(
        (placement.vm_request(view.record) for view in placing.values()),
        placement.capacities(node_views, {**views, **placing}, late),
        selector,
    )
    unknown = {name: placement.unknown_selector(view.record) for name, view in placing.items()}
    return RecoveryPlan(
        vms=tuple(mine),
        targets={placed.vm: placed.node for placed in plan.placements},
        unplaced={item.vm: item.detail or str(item.reason) for item in plan.unplaced},
        can_finish=can_finish,
        unknown_selectors={name: odd for name, odd in unknown.items() if odd is not None},
    )


def recovered(view: VmView, dead: str, replacement: str | None, can_finish: Collection[str]) -> Change | None:
    """What to write for one VM once `dead` is off, or None to leave the VM alone.

    `replacement` is the node the plan chose (None: none could take it).
    Evaluated again on a fresh read after every conflicting write, so a VM
    claimed by its move's target in the meantime is left to that target.
    """
    if not involved(view, dead):
        return None
    migration = _moving_away(view, dead)
    if migration is None or not to_place(view, dead, can_finish):
        return records.after_fence(view, dead, replacement)
    if replacement is None and migration.phase == MovePhase.RELEASED and migration.target in can_finish:
        return None
    return _placed_from_cut_move(view, migration, dead, replacement)


def _placed_from_cut_move(view: VmView, migration: Migration, dead: str, replacement: str | None) -> Change:
    """A VM whose move away from `dead` was cut short: it goes to `replacement` and the move ends.

    `lastnode` stays what the move set (`dead` for a migrate), or else becomes
    the node it was heading for, so `pvc vm unmigrate` can still take it there.
    """
    record = view.record
    fenced = VmStatus(dead, ActualState.STOPPED, f"node {dead} was fenced")
    if replacement is None:
        if record.state in SHOULD_RUN:
            why = f"node {dead} was fenced while moving the VM to {migration.target}, and no node could take it"
            record = record.with_state(VmState.FAIL, why)
        return dataclasses.replace(record, node=dead), None, fenced
    heading = record.lastnode or migration.target
    placed = dataclasses.replace(
        record,
        node=replacement,
        lastnode=None if heading == replacement else heading,
        state=records.state_after_fence(record.state),
        reason=None,
    )
    return placed, None, fenced


BATCH_VMS = 50
"""VMs written per transaction by a recovery."""

BATCH_BYTES = 512 * 1024
"""A batch whose records add up to more is written VM by VM: a ZooKeeper request must stay under
its 1 MiB limit (jute.maxbuffer), and domain XML can be large."""


class _KeptChanging(Exception):
    """The VM's records changed under every attempt to write its recovery."""


def recover_vms(store: Store, dead: str, selector: str, cluster: ClusterView) -> RecoveryResult:
    """Plan once and hand over every VM of `dead`, in batched transactions; report where each went or why not.

    `cluster` holds every VM (the primary's cache, or a fresh read). A VM
    that changed since is caught by its transaction's version checks: its
    batch is written again VM by VM, each decided afresh on a fresh read."""
    views, damaged = dict(cluster.vms), dict(cluster.damaged_vms)
    plan = plan_recovery(dead, views, cluster.node_list(), store.server_time_ms(), selector)
    for name, odd in sorted(plan.unknown_selectors.items()):
        log.warning(
            "VM %s of fenced node %s names target selector %r, which this version does not know; "
            "placed with the cluster's selector %s",
            name,
            dead,
            odd,
            selector,
        )
    for name, problem in sorted(damaged.items()):
        log.error("VM %s has a damaged record and is not recovered if it ran on node %s: %s", name, dead, problem)
    moved: dict[str, str] = {}
    unplaced = dict(plan.unplaced)
    for node in sorted(set(plan.targets.values())):
        store.ensure_path(schema.node_vms(node))  # a batch trusts the index: its folders must exist
    for batch in _batches(plan.vms):
        for name, now in _write_batch(store, [views[name] for name in batch], dead, plan).items():
            if isinstance(now, str):
                unplaced[name] = now
            elif now is None or now.record.node != dead:
                unplaced.pop(name, None)
                if now is not None:
                    moved[name] = now.record.node
            else:
                unplaced.setdefault(name, "no node could take the VM")
    return RecoveryResult(moved=moved, unplaced=unplaced)


def _batches(names: Iterable[str]) -> Iterable[list[str]]:
    batch: list[str] = []
    for name in names:
        batch.append(name)
        if len(batch) == BATCH_VMS:
            yield batch
            batch = []
    if batch:
        yield batch


def _write_batch(store: Store, batch: list[VmView], dead: str, plan: RecoveryPlan) -> dict[str, VmView | None | str]:
    """Each VM as it ends up (None: removed meanwhile; a string: why it was not written).

    One transaction for the batch while it stays under BATCH_BYTES; if any VM
    in it changed meanwhile, the batch is written VM by VM instead."""
    results: dict[str, VmView | None | str] = {}
    transaction = store.transaction()
    staged: dict[str, VmView] = {}
    size = 0
    for view in batch:
        change = recovered(view, dead, plan.targets.get(view.name), plan.can_finish)
        if change is None:
            results[view.name] = view
            continue
        record, migration, status = change
        size += len(encode(record.to_json()))
        staged[view.name] = vms.write_after_fence(store, view, record, migration, status, transaction)
    if not staged:
        return results
    if size <= BATCH_BYTES:
        try:
            transaction.commit()
        except (VersionConflict, NotFound, AlreadyExists) as exc:
            log.info(
                "Recovery of node %s: a batch of %d VMs changed meanwhile (%s); writing them one by one",
                dead,
                len(staged),
                exc,
            )
        else:
            results.update(staged)
            return results
    for view in batch:
        if view.name in staged:
            try:
                results[view.name] = _hand_over(store, view, dead, plan)
            except _KeptChanging:
                results[view.name] = "its record kept changing while it was being recovered"
    return results


def _hand_over(store: Store, view: VmView, dead: str, plan: RecoveryPlan) -> VmView | None:
    """Write the VM's change, deciding again on a fresh read after a conflict.

    Returns the VM as it ends up (a VM left alone as read, e.g. to its move's
    target), or None when it was removed meanwhile.
    """
    for _attempt in range(WRITE_ATTEMPTS):
        change = recovered(view, dead, plan.targets.get(view.name), plan.can_finish)
        if change is None:
            return view
        record, migration, status = change
        try:
            return vms.write_after_fence(store, view, record, migration, status)
        except (VersionConflict, NotFound, AlreadyExists):
            fresh = vms.read_vm(store, view.name)
            if fresh is None:
                return None
            view = fresh
    raise _KeptChanging(view.name)
