"""The planner's input, from the cluster as ZooKeeper has it (pure).

The keepalives say what each node ran at its last keepalive, up to an
interval ago. The VM statuses are fresher (a node writes them as it acts), so
the figures are corrected with them: VMs assigned to a node but not yet
running there (a move or a start in flight) are reserved on top, so a second
plan made while the first is being carried out cannot overfill a node; VMs
that have left a node since its keepalive no longer count against it.

A node's own state record says whether it takes VMs, but a node that missed
or ignores its fence still says `ready`: the fence record, written by the
fencer, decides first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from pvcd.cluster.values import NodeView
from pvcd.cluster.vm_records import SHOULD_RUN, VmRecord, VmView
from pvcd.placement.planner import Plan, Reason, Unplaced, plan_batch
from pvcd.placement.selectors import SELECTORS, NodeCapacity, VmRequest
from pvcd.states import DomainState

NOT_ALIVE = "late"
"""The daemon state a node with a late keepalive is given for placement."""


def is_fenced(fence: Mapping[str, Any]) -> bool:
    """Whether a node's fence record says it is fenced (or being fenced): an
    outcome is set from the moment the fence is declared until an operator's
    `pvc node ready` clears it."""
    return fence.get("outcome") is not None


def capacities(
    views: Iterable[NodeView],
    vms: Mapping[str, VmView],
    late: Collection[str] = (),
    treat_as_ready: str | None = None,
) -> list[NodeCapacity]:
    """One NodeCapacity per node, with VMs on their way to it reserved.

    `treat_as_ready` names a node to plan for as if it were ready: a node
    coming back from a flush plans the return of its own VMs before it takes
    any others. A node with a fence record is `fenced` here whatever its own
    state record says, so it never receives a VM.
    """
    result = []
    for view in views:
        keepalive = view.keepalive
        memory = keepalive.get("memory") or {}
        running = set((keepalive.get("vms") or {}).get("running") or [])
        arriving = [
            vm.record
            for vm in vms.values()
            if vm.record.node == view.name and vm.record.state in SHOULD_RUN and vm.name not in running
        ]
        departed = [
            vms[name].record
            for name in running
            if name in vms and not (vms[name].status.active and vms[name].status.node == view.name)
        ]
        domain_state = view.state.domain
        if is_fenced(view.fence):
            domain_state = DomainState.FENCED
        elif view.name == treat_as_ready:
            domain_state = DomainState.READY
        result.append(
            NodeCapacity(
                name=view.name,
                daemon_state=NOT_ALIVE if view.name in late else view.state.daemon,
                domain_state=domain_state,
                memory_total_mib=int(memory.get("total") or 0),
                memory_allocated_mib=int(memory.get("allocated") or 0)
                + sum(r.memory_mib for r in arriving)
                - sum(r.memory_mib for r in departed),
                vcpus_allocated=int((keepalive.get("vcpus") or {}).get("allocated") or 0)
                + sum(r.vcpus for r in arriving)
                - sum(r.vcpus for r in departed),
                load=float(keepalive.get("load") or 0.0),
                vm_count=len(running) + len(arriving) - len(departed),
            )
        )
    return result


def unknown_selector(record: VmRecord) -> str | None:
    """The record's `node_selector` when this version does not know it, else None."""
    selector = record.node_selector
    return selector if selector is not None and selector not in SELECTORS else None


def vm_request(record: VmRecord, target: str | None = None) -> VmRequest | Unplaced:
    """The VM as the planner sees it, or why it cannot be planned.

    A record's `node_selector` is checked when it is written, but a record
    written by another version or by hand may name one this version does not
    know: that VM is planned with the cluster's selector (`unknown_selector`
    tells the caller, to log it), so one bad record never stops the plan of
    every other VM. A record the planner cannot take at all (negative memory)
    is left unplaced with the reason.
    """
    if unknown_selector(record) is not None:
        record = dataclasses.replace(record, node_selector=None)
    try:
        return record.request(target)
    except ValueError as exc:
        return Unplaced(record.name, Reason.INVALID_RECORD, f"its record cannot be planned: {exc}")


def plan_requests(requests: Iterable[VmRequest | Unplaced], nodes: Iterable[NodeCapacity], selector: str) -> Plan:
    """`plan_batch` over the VMs that can be planned; the others are listed unplaced."""
    batch = list(requests)
    plan = plan_batch((r for r in batch if isinstance(r, VmRequest)), nodes, selector)
    refused = tuple(r for r in batch if isinstance(r, Unplaced))
    return dataclasses.replace(plan, unplaced=plan.unplaced + refused) if refused else plan
