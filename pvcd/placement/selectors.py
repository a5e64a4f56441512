"""Target selectors: which node should receive a VM.

Pure functions over a snapshot of node figures. No I/O and no clock: the caller
reads the figures from the last keepalives and acts on the answer, so the same
code runs in the daemon, in the CLI's ``--dry-run`` and in the simulator.

Four selectors, named as in ``system.migration.target_selector``:

* ``mem``   — most memory left after placing the VM (total - allocated - VM);
* ``vcpus`` — fewest allocated vCPUs;
* ``load``  — lowest load average;
* ``vms``   — fewest VMs.

Every selector breaks ties the same way: more unallocated memory first, then
node name (lexical). A ranking is therefore a total order; two runs over the
same figures always give the same answer, which the planner, the tests and an
operator comparing two dry runs all rely on.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

SELECTORS: tuple[str, ...] = ("mem", "vcpus", "load", "vms")

DAEMON_RUN = "run"
DOMAIN_READY = "ready"

SortKey = tuple[float, int, str]


def check_selector(selector: str) -> str:
    """Return ``selector`` if it is known, else raise ValueError naming the valid ones.

    The configuration loader rejects unknown names first; reaching this with a
    bad name is a programming error, and it must fail loudly rather than fall
    back to some default placement.
    """
    if selector not in SELECTORS:
        raise ValueError(f"unknown target selector {selector!r}; valid selectors: {', '.join(SELECTORS)}")
    return selector


@dataclass(frozen=True)
class NodeCapacity:
    """One node's figures as the selectors see them (from its last keepalive).

    ``memory_allocated_mib`` is the memory promised to the node's VMs, not the
    memory the host reports as used: a VM may grow into all it was given, so
    placement budgets against allocation.
    """

    name: str
    daemon_state: str
    domain_state: str
    memory_total_mib: int
    memory_allocated_mib: int
    vcpus_allocated: int
    load: float
    vm_count: int

    @property
    def memory_unallocated_mib(self) -> int:
        """Memory not yet promised to any VM; negative if the node is already overcommitted."""
        return self.memory_total_mib - self.memory_allocated_mib

    @property
    def accepts_vms(self) -> bool:
        """Only a running daemon on a ready (not flushing, flushed or fenced) node takes VMs."""
        return self.daemon_state == DAEMON_RUN and self.domain_state == DOMAIN_READY


@dataclass(frozen=True)
class VmRequest:
    """A VM to place.

    ``node_limit`` restricts the nodes it may run on (empty: any node).
    ``selector`` overrides the cluster's default selector for this VM (the VM's
    ``node_selector``; None: use the default). ``target`` asks for one node
    explicitly; the planner checks it like any other candidate.
    """

    name: str
    memory_mib: int
    vcpus: int
    current_node: str | None
    node_limit: tuple[str, ...] = ()
    selector: str | None = None
    target: str | None = None

    def __post_init__(self) -> None:
        # The limit arrives as a JSON list from the store; keep the request hashable.
        object.__setattr__(self, "node_limit", tuple(self.node_limit or ()))
        if self.memory_mib < 0 or self.vcpus < 0:
            raise ValueError(f"VM {self.name!r}: memory and vCPUs must not be negative")
        if self.selector is not None:
            check_selector(self.selector)


def allowed(vm: VmRequest, node: NodeCapacity) -> bool:
    """Whether ``node`` may take ``vm`` at all, memory aside: run+ready, not its current node, in its limit."""
    return node.accepts_vms and node.name != vm.current_node and (not vm.node_limit or node.name in vm.node_limit)


def fits(vm: VmRequest, node: NodeCapacity) -> bool:
    """Whether the node's unallocated memory holds the whole VM: the one check that prevents overcommit."""
    return node.memory_unallocated_mib >= vm.memory_mib


def candidates(vm: VmRequest, nodes: Iterable[NodeCapacity]) -> list[NodeCapacity]:
    """The nodes ``vm`` may be placed on, in input order."""
    return [node for node in nodes if allowed(vm, node) and fits(vm, node)]


def sort_key(selector: str, node: NodeCapacity) -> SortKey:
    """The ordering key of ``node`` under ``selector``; smaller is better.

    It does not depend on the VM being placed: "most memory left after the VM"
    orders nodes exactly as "most unallocated memory" does. That lets the
    planner keep one sorted order per selector for a whole batch instead of
    sorting again for every VM.
    """
    check_selector(selector)
    unallocated = node.memory_unallocated_mib
    primary: float
    if selector == "mem":
        primary = -unallocated
    elif selector == "vcpus":
        primary = node.vcpus_allocated
    elif selector == "load":
        primary = node.load
    else:
        primary = node.vm_count
    return (primary, -unallocated, node.name)


def score(selector: str, vm: VmRequest, node: NodeCapacity) -> float:
    """The figure the selector compares, in its natural unit, for printing a plan.

    ``mem``: MiB left after the VM (higher is better); ``vcpus``: allocated
    vCPUs, ``load``: load average, ``vms``: VM count (lower is better).
    """
    check_selector(selector)
    if selector == "mem":
        return node.memory_unallocated_mib - vm.memory_mib
    if selector == "vcpus":
        return node.vcpus_allocated
    if selector == "load":
        return node.load
    return node.vm_count


def rank(selector: str, vm: VmRequest, nodes: Iterable[NodeCapacity]) -> list[tuple[NodeCapacity, float]]:
    """The candidates for ``vm`` with their scores, best first (empty if none)."""
    check_selector(selector)
    ordered = sorted(candidates(vm, nodes), key=lambda node: sort_key(selector, node))
    return [(node, score(selector, vm, node)) for node in ordered]
