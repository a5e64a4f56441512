"""Restart a fenced node's VMs elsewhere: one plan for the whole batch.

Called by the fencer only once the policy allows it (the node is known off).
The planner places every VM of the node at once, reserving capacity as it
goes, so the batch spreads instead of piling onto the emptiest node; each VM
is then handed over in its own version-checked transaction
(`records.after_fence`), with the dead node as `lastnode` so that
`pvc node ready` can bring the VMs home.
"""

from __future__ import annotations

import logging

from pvcd.fencing.fencer import RecoveryResult
from pvcd.migration.planner import plan_batch
from pvcd.vm import placement, records
from pvcd.zk import nodes, vms
from pvcd.zk.store import Store, VersionConflict

log = logging.getLogger("pvcd.fencing")

WRITE_ATTEMPTS = 5


def _belongs_to(view: records.VmView, dead: str) -> bool:
    migration = view.migration
    return view.record.node == dead or (migration is not None and dead in (migration.source, migration.target))


def recover_vms(store: Store, dead: str, selector: str) -> RecoveryResult:
    """Plan and hand over every VM of `dead`; report where each went or why not."""
    views, _damaged = vms.read_vms(store)
    node_views = nodes.read_cluster(store)
    late = placement.late_nodes(node_views, store.server_time_ms()) | {dead}
    mine = [view for view in views.values() if _belongs_to(view, dead)]
    plan = plan_batch(
        [view.record.request() for view in mine if view.record.node == dead],
        placement.capacities(node_views, views, late),
        selector,
    )
    targets = {placed.vm: placed.node for placed in plan.placements}
    unplaced = {item.vm: item.detail or str(item.reason) for item in plan.unplaced}
    moved = {}
    for view in mine:
        replacement = targets.get(view.name)
        for _attempt in range(WRITE_ATTEMPTS):
            record, migration, status = records.after_fence(view, dead, replacement)
            try:
                vms.write_after_fence(store, view, record, migration, status)
                break
            except VersionConflict:
                fresh = vms.read_vm(store, view.name)
                if fresh is None:
                    break
                view = fresh
        else:
            unplaced[view.name] = "its record kept changing while it was being recovered"
            continue
        if record.node != dead:
            moved[view.name] = record.node
    return RecoveryResult(moved=moved, unplaced={vm: why for vm, why in unplaced.items() if vm not in moved})
