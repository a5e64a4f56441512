"""The batch planner: one placement plan for many VMs at once.

A flush, the recovery of a fenced node's VMs or a mass start moves many VMs at
the same moment, and the node figures in ZooKeeper only change at the next
keepalive. Placing each VM from those figures sends every VM to the node that
looked emptiest, past its memory. The planner instead reserves each placed
VM's memory, vCPUs, VM count and estimated load on its node before placing the
next, so the batch spreads the way the selector intends, and it never places a
VM on a node without the unallocated memory for it.

Pure: the caller passes the figures in and carries the plan out (or prints it
for ``--dry-run``).
"""

from __future__ import annotations

import bisect
import dataclasses
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from pvcd.placement.selectors import (
    NodeCapacity,
    SortKey,
    VmRequest,
    allowed,
    check_selector,
    score,
    sort_key,
)

LOAD_PER_VCPU = 1.0
"""Load-average estimate added per vCPU of a placed VM.

A VM's real load is unknown until it runs; a busy vCPU is one runnable thread,
i.e. one unit of load average, so a fully busy VM adds its vCPU count. Using
that upper bound makes ``load`` spread a batch instead of sending all of it to
the node that was idlest at the last keepalive; over-estimating only spreads
more, and the next keepalive replaces the estimate with the measured load.
"""


class Reason(StrEnum):
    """Why a VM was left unplaced; the value is a stable code for JSON output."""

    NO_READY_NODE = "no_ready_node"
    NO_NODE_IN_LIMIT = "no_node_in_limit"
    NO_MEMORY = "no_memory"
    TARGET_UNKNOWN = "target_unknown"
    TARGET_NOT_READY = "target_not_ready"
    TARGET_IS_CURRENT = "target_is_current"
    TARGET_OUTSIDE_LIMIT = "target_outside_limit"
    TARGET_NO_MEMORY = "target_no_memory"
    INVALID_RECORD = "invalid_record"
    """Set by the callers (`pvcd.placement.cluster.vm_request`), never by the planner:
    the VM's record cannot be turned into a request."""


@dataclass(frozen=True)
class Placement:
    """``vm`` goes to ``node``.

    ``scores`` holds every candidate's score under ``selector`` at the moment
    the VM was placed (after the reservations of the VMs placed before it),
    best first, so a dry run can show why this node won. ``requested`` is true
    when the node was the VM's explicit target rather than the selector's pick.
    """

    vm: str
    node: str
    selector: str
    scores: tuple[tuple[str, float], ...]
    requested: bool = False


@dataclass(frozen=True)
class Unplaced:
    """``vm`` could not be placed: a stable ``reason`` code and a sentence for operators."""

    vm: str
    reason: Reason
    detail: str


@dataclass(frozen=True)
class Plan:
    """The outcome of planning a batch.

    ``placements`` are in the order they were decided (see ``batch_order``).
    ``nodes`` are the input nodes, in input order, with every placement's
    reservation added; a VM's current node keeps its figures, because the VM
    holds that memory until it has actually left.
    """

    placements: tuple[Placement, ...]
    unplaced: tuple[Unplaced, ...]
    nodes: tuple[NodeCapacity, ...]

    @property
    def overcommitted_nodes(self) -> tuple[str, ...]:
        """Nodes promised more memory than they have; always empty for ``plan_batch``."""
        return tuple(n.name for n in self.nodes if n.memory_unallocated_mib < 0)


def reserve(node: NodeCapacity, vm: VmRequest, load_per_vcpu: float = LOAD_PER_VCPU) -> NodeCapacity:
    """``node`` as it will be once ``vm`` runs on it."""
    return dataclasses.replace(
        node,
        memory_allocated_mib=node.memory_allocated_mib + vm.memory_mib,
        vcpus_allocated=node.vcpus_allocated + vm.vcpus,
        load=node.load + vm.vcpus * load_per_vcpu,
        vm_count=node.vm_count + 1,
    )


def batch_order(vms: Iterable[VmRequest]) -> list[VmRequest]:
    """The order in which the planner places a batch.

    VMs with an explicit target first: they have one acceptable node, and a
    selector-placed VM must not take the room they asked for. Then biggest
    memory first (first-fit decreasing), so large VMs still find room before
    small ones fragment the free memory; then more vCPUs, then name, so the
    order, and with it the plan, never depends on the input order.
    """
    return sorted(vms, key=lambda vm: (vm.target is None, -vm.memory_mib, -vm.vcpus, vm.name))


def plan_batch(
    vms: Iterable[VmRequest],
    nodes: Iterable[NodeCapacity],
    default_selector: str,
    *,
    load_per_vcpu: float = LOAD_PER_VCPU,
) -> Plan:
    """Place every VM of the batch, reserving capacity as it goes.

    Each VM uses its own selector or ``default_selector``. Guarantees: a VM
    goes only to a candidate (run+ready, not its current node, inside its
    node_limit, with the unallocated memory for it once the VMs placed before
    it are counted), so no node is ever taken past its memory total; every VM
    is in exactly one of ``placements`` and ``unplaced``; the same input gives
    the same plan. Raises ValueError on an unknown selector or on duplicate
    VM or node names.
    """
    check_selector(default_selector)
    vm_list = list(vms)
    node_list = list(nodes)
    _check_unique("VM", [vm.name for vm in vm_list])
    _check_unique("node", [node.name for node in node_list])

    state = _Reservations(node_list, load_per_vcpu)
    placements: list[Placement] = []
    unplaced: list[Unplaced] = []
    for vm in batch_order(vm_list):
        selector = vm.selector or default_selector
        ranked = state.ranked(selector, vm)
        if vm.target is not None:
            outcome = _requested(vm, vm.target, selector, ranked, state.nodes)
        elif ranked:
            outcome = Placement(vm.name, ranked[0][0], selector, tuple(ranked))
        else:
            outcome = _why_unplaced(vm, state.nodes)
        if isinstance(outcome, Placement):
            state.reserve(outcome.node, vm)
            placements.append(outcome)
        else:
            unplaced.append(outcome)
    return Plan(tuple(placements), tuple(unplaced), tuple(state.nodes))


def greedy_one_at_a_time(
    vms: Iterable[VmRequest],
    nodes: Iterable[NodeCapacity],
    default_selector: str,
) -> Plan:
    """BASELINE ONLY, never used by the daemon: placement as systems do it today.

    Each VM, in input order, goes to the selector's best allowed node judged
    from the same stale figures (the last keepalive): nothing is reserved and
    memory is not checked, so a batch piles onto one node. Explicit targets
    are ignored. The returned ``nodes`` add up where the VMs landed, so the
    benchmark and the tests can count the overcommitted nodes.
    """
    check_selector(default_selector)
    node_list = list(nodes)
    index = {node.name: i for i, node in enumerate(node_list)}
    after = list(node_list)
    placements: list[Placement] = []
    unplaced: list[Unplaced] = []
    for vm in vms:
        selector = vm.selector or default_selector
        options = sorted(
            (node for node in node_list if allowed(vm, node)),
            key=lambda node: sort_key(selector, node),
        )
        if not options:
            unplaced.append(_why_unplaced(vm, node_list))
            continue
        scores = tuple((node.name, score(selector, vm, node)) for node in options)
        placements.append(Placement(vm.name, options[0].name, selector, scores))
        i = index[options[0].name]
        after[i] = reserve(after[i], vm)
    return Plan(tuple(placements), tuple(unplaced), tuple(after))


class _Reservations:
    """The planner's working copy of the node figures, updated as VMs are placed.

    Keeps one sorted list of (sort key, node index) per selector in use,
    holding only the nodes that accept VMs (their states do not change during
    a plan). The sort keys do not depend on the VM, so ranking a VM is one walk
    down that list, and a reservation moves only the one node it changed (two
    binary searches) instead of sorting every node again for the next VM.
    """

    def __init__(self, nodes: list[NodeCapacity], load_per_vcpu: float) -> None:
        self.nodes = nodes.copy()
        self._load_per_vcpu = load_per_vcpu
        self._index = {node.name: i for i, node in enumerate(nodes)}
        self._names = [node.name for node in nodes]
        self._unallocated = [node.memory_unallocated_mib for node in nodes]
        self._orders: dict[str, list[tuple[SortKey, int]]] = {}

    def _order(self, selector: str) -> list[tuple[SortKey, int]]:
        order = self._orders.get(selector)
        if order is None:
            order = sorted((sort_key(selector, node), i) for i, node in enumerate(self.nodes) if node.accepts_vms)
            self._orders[selector] = order
        return order

    def ranked(self, selector: str, vm: VmRequest) -> list[tuple[str, float]]:
        """(node name, score) of every candidate for ``vm``, best first; same as ``selectors.rank``.

        Runs once per VM over every node, so it reads plain lists rather than
        the dataclasses: this loop is most of a batch's planning time.
        """
        limit = frozenset(vm.node_limit)
        need = vm.memory_mib
        current = vm.current_node
        names = self._names
        unallocated = self._unallocated
        chosen = (
            (key, i)
            for key, i in self._order(selector)
            if unallocated[i] >= need and names[i] != current and (not limit or names[i] in limit)
        )
        if selector == "mem":
            return [(names[i], unallocated[i] - need) for _, i in chosen]
        # For the other selectors the first element of the key is the score itself.
        return [(names[i], key[0]) for key, i in chosen]

    def reserve(self, name: str, vm: VmRequest) -> None:
        i = self._index[name]
        old = self.nodes[i]
        new = reserve(old, vm, self._load_per_vcpu)
        self.nodes[i] = new
        self._unallocated[i] = new.memory_unallocated_mib
        for selector, order in self._orders.items():
            del order[bisect.bisect_left(order, (sort_key(selector, old), i))]
            bisect.insort(order, (sort_key(selector, new), i))


def _requested(
    vm: VmRequest, target: str, selector: str, ranked: list[tuple[str, float]], nodes: Sequence[NodeCapacity]
) -> Placement | Unplaced:
    """Honour ``target`` (the VM's explicit request) if it is a candidate, else say precisely why not."""
    if any(name == target for name, _ in ranked):
        return Placement(vm.name, target, selector, tuple(ranked), requested=True)
    node = next((n for n in nodes if n.name == target), None)
    if node is None:
        return Unplaced(vm.name, Reason.TARGET_UNKNOWN, f"requested target {target!r} is not a node of the cluster")
    if not node.accepts_vms:
        return Unplaced(
            vm.name,
            Reason.TARGET_NOT_READY,
            f"requested target {node.name!r} is {node.daemon_state}/{node.domain_state}, not run/ready",
        )
    if node.name == vm.current_node:
        return Unplaced(vm.name, Reason.TARGET_IS_CURRENT, f"VM already runs on requested target {node.name!r}")
    if vm.node_limit and node.name not in vm.node_limit:
        return Unplaced(
            vm.name,
            Reason.TARGET_OUTSIDE_LIMIT,
            f"requested target {node.name!r} is outside node_limit {list(vm.node_limit)}",
        )
    return Unplaced(
        vm.name,
        Reason.TARGET_NO_MEMORY,
        f"needs {vm.memory_mib} MiB; requested target {node.name!r} has {node.memory_unallocated_mib} MiB unallocated",
    )


def _why_unplaced(vm: VmRequest, nodes: Sequence[NodeCapacity]) -> Unplaced:
    """Name the first filter that left ``vm`` without a candidate."""
    ready = [n for n in nodes if n.accepts_vms and n.name != vm.current_node]
    if not ready:
        return Unplaced(vm.name, Reason.NO_READY_NODE, "no node other than its current one is run/ready")
    limited = [n for n in ready if allowed(vm, n)]
    if not limited:
        return Unplaced(vm.name, Reason.NO_NODE_IN_LIMIT, f"no run/ready node in node_limit {list(vm.node_limit)}")
    roomiest = min(limited, key=lambda n: (-n.memory_unallocated_mib, n.name))
    return Unplaced(
        vm.name,
        Reason.NO_MEMORY,
        f"needs {vm.memory_mib} MiB; most unallocated on an allowed node is "
        f"{roomiest.memory_unallocated_mib} MiB ({roomiest.name})",
    )


def _check_unique(kind: str, names: list[str]) -> None:
    """Names identify VMs and nodes in the plan; a duplicate is a caller's bug, not something to guess around."""
    duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicates:
        raise ValueError(f"duplicate {kind} names: {', '.join(duplicates)}")
