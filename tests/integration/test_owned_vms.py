"""The per-node VM index (`/pvc/node_vms/NODE/VM`) against a real ZooKeeper.

Every VM write that changes which nodes must act on a VM keeps the index in
the same transaction: define, a move (both ends while it is in progress), its
end, the recovery after a fence, the removal. An index out of step (data from
before the index, or changed by hand) never makes a VM write fail.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections import Counter
from typing import Any

import pytest

from helpers import VmOperator, vm_operator, vm_xml, wait_for
from pvcd.cluster import vm_records as records
from pvcd.cluster.vm_records import ActualState, MoveKind, MovePhase, VmState
from pvcd.vm.reconcile import DomainInfo
from pvcd.vm.reconciler import VmReconciler
from pvcd.zk import schema, vms
from pvcd.zk.store import Store


@pytest.fixture
def operator(zk, zookeeper):
    yield from vm_operator(zookeeper.address, zookeeper.security())


def index(zk) -> dict[str, list[str]]:
    """Every node's index, as ZooKeeper has it (nodes with an empty index left out)."""
    if not zk.exists(schema.NODE_VMS):
        return {}
    found = {node: sorted(zk.get_children(schema.node_vms(node))) for node in zk.get_children(schema.NODE_VMS)}
    return {node: names for node, names in found.items() if names}


def finish(operator: VmOperator, name: str) -> None:
    """What the target's reconciler writes when it closes a released move."""
    view = operator.view(name)
    assert view.migration is not None
    view = vms.VmWrite(operator.store, view).migration(view.migration.released("shutdown")).commit()
    vms.VmWrite(operator.store, view).delete_migration().record(
        dataclasses.replace(view.record, state=VmState.START)
    ).commit()


def test_the_index_follows_define_move_finish_recovery_and_remove(zk, operator):
    operator.define("vm1", "hv1")
    operator.define("vm2", "hv2")
    assert index(zk) == {"hv1": ["vm1"], "hv2": ["vm2"]}

    operator.set_state("vm1", VmState.START)  # no change of who acts: the index stays as it is
    assert index(zk) == {"hv1": ["vm1"], "hv2": ["vm2"]}

    operator.move("vm1", MoveKind.MIGRATE, "hv2")  # a running VM: both ends act until the move ends
    assert operator.view("vm1").migration is not None
    assert index(zk) == {"hv1": ["vm1"], "hv2": ["vm1", "vm2"]}
    finish(operator, "vm1")
    assert index(zk) == {"hv2": ["vm1", "vm2"]}

    operator.move("vm2", MoveKind.MOVE, "hv3")  # a stopped VM moves at once
    assert operator.view("vm2").migration is None
    assert index(zk) == {"hv2": ["vm1"], "hv3": ["vm2"]}

    view = operator.view("vm1")  # hv2 is fenced while vm1 runs there: it goes to hv1
    vms.write_after_fence(operator.store, view, *records.after_fence(view, "hv2", "hv1"))
    assert index(zk) == {"hv1": ["vm1"], "hv3": ["vm2"]}

    operator.move("vm1", MoveKind.MOVE, "hv3")  # fenced mid-move: the source's entry goes with the move
    view = operator.view("vm1")
    assert view.migration is not None and view.migration.phase != MovePhase.RELEASED
    assert index(zk) == {"hv1": ["vm1"], "hv3": ["vm1", "vm2"]}
    vms.write_after_fence(operator.store, view, *records.after_fence(view, "hv1", None))
    assert index(zk) == {"hv1": ["vm1"], "hv3": ["vm1", "vm2"]}, "released by the fence: the target finishes it"
    finish(operator, "vm1")
    assert index(zk) == {"hv3": ["vm1", "vm2"]}

    operator.set_state("vm1", VmState.STOP)
    vms.remove(operator.store, operator.view("vm1"))
    vms.remove(operator.store, operator.view("vm2"))
    assert index(zk) == {}


def test_an_index_out_of_step_never_blocks_a_write_and_is_repaired(zk, operator):
    operator.define("vm1", "hv1")
    operator.define("vm2", "hv1")
    zk.delete(schema.node_vm("hv1", "vm1"))  # as if written before the index existed
    zk.create(schema.node_vm("hv2", "vm2"), makepath=True)  # a leftover entry
    operator.move("vm1", MoveKind.MOVE, "hv2")
    operator.move("vm2", MoveKind.MOVE, "hv2")
    assert index(zk) == {"hv2": ["vm1", "vm2"]}

    zk.create(schema.node_vm("hv1", "vm1"))  # left over
    zk.create(schema.node_vm("hv1", "gone"))  # of a VM that no longer exists
    zk.delete(schema.node_vm("hv2", "vm2"))  # missing
    assert vms.repair_index(operator.store, "hv1") == ([], ["gone", "vm1"])
    assert vms.repair_index(operator.store, "hv2") == (["vm2"], [])
    assert index(zk) == {"hv2": ["vm1", "vm2"]}


def test_read_owned_reads_only_the_nodes_vms(zk, operator):
    for i in range(5):
        operator.define(f"vm{i}", "hv1" if i % 2 else "hv2")
    views, damaged = vms.read_owned(operator.store, "hv1")
    assert sorted(views) == ["vm1", "vm3"] and damaged == {}
    assert vms.owned(operator.store, "hv3") == []


# -- what one VM change costs ------------------------------------------------------


class FakeDomains:
    """A libvirt host in a dict (`pvcd.vm.domains.Domains`'s interface): no libvirt reads to count."""

    uri = "test:///default"

    def __init__(self) -> None:
        self.domains: dict[str, DomainInfo] = {}

    def list(self) -> dict[str, DomainInfo]:
        return dict(self.domains)

    def info(self, name: str) -> DomainInfo | None:
        return self.domains.get(name)

    def is_running(self, name: str) -> bool:
        return name in self.domains and self.domains[name].active

    def free_memory_mib(self) -> int:
        return 1 << 20

    def start(self, name: str, xml: str) -> None:
        self.domains[name] = DomainInfo(name, records.parse_domain_xml(xml).uuid, True)

    def shutdown(self, name: str, timeout: float, stop: object = None) -> str:
        self.domains.pop(name, None)
        return "shut down"

    def destroy(self, name: str) -> None:
        self.domains.pop(name, None)

    def undefine(self, name: str) -> None:
        if name in self.domains and not self.domains[name].active:
            del self.domains[name]


class CountedStore:
    """A store session whose ZooKeeper reads (the watches' included) are counted."""

    def __init__(self, address: str, security: Any = None) -> None:
        self.store = Store(address, security=security)
        self.store.start()
        self.reads: Counter[str] = Counter()
        client = self.store.client
        for method in ("get_async", "get_children_async", "exists_async"):  # kazoo's synchronous calls use these
            original = getattr(client, method)

            def counted(path: str, *args: object, original=original, method=method, **kwargs: object) -> object:
                self.reads[f"{method} {path}"] += 1
                return original(path, *args, **kwargs)

            setattr(client, method, counted)
        call = client._call

        def count_many(request: object, answer: object) -> object:  # Store.get_many's multiRead: each path
            for path in getattr(request, "paths", ()) if type(request).__name__ == "_MultiRead" else ():
                self.reads[f"get_async {path}"] += 1
            return call(request, answer)

        client._call = count_many

    def total(self) -> int:
        return sum(self.reads.values())


@pytest.fixture
def reconcilers(zookeeper):
    started: list[tuple[VmReconciler, CountedStore]] = []

    def start(*names: str) -> dict[str, tuple[VmReconciler, CountedStore]]:
        for name in names:
            counted = CountedStore(zookeeper.address, security=zookeeper.security())
            reconciler = VmReconciler(counted.store, FakeDomains(), name, shutdown_timeout=1)  # type: ignore[arg-type]
            reconciler.start()
            started.append((reconciler, counted))
        return {reconciler.node: (reconciler, counted) for reconciler, counted in started}

    yield start
    for reconciler, counted in started:
        reconciler.stop()
        counted.store.stop()


VMS = 500


def watches_current(reconciler: VmReconciler, operator: VmOperator) -> bool:
    """The event that shows a node's watches have delivered every change: its views equal ZooKeeper's
    (read through the operator's own, uncounted session)."""
    views, _damaged = reconciler.owned_views()
    return all(vms.read_vm(operator.store, name) == view for name, view in views.items())


def test_one_vm_change_costs_a_bounded_number_of_reads_on_its_node_only(zk, operator, reconcilers):
    for i in range(VMS):
        name = f"vm{i:03d}"
        xml = vm_xml(name, uuid=str(uuid.UUID(int=i + 1)))
        operator.define(name, "hv1" if i % 2 else "hv2", xml=xml)
    nodes = reconcilers("hv1", "hv2", "hv3")
    hv1, hv2 = nodes["hv1"][0], nodes["hv2"][0]
    wait_for(
        lambda: len(hv1.owned_views()[0]) == VMS // 2 and len(hv2.owned_views()[0]) == VMS // 2,
        30,
        what="every node to watch its VMs",
    )
    wait_for(
        lambda: all(watches_current(reconciler, operator) for reconciler, _ in nodes.values()),
        60,
        what="every watched view as ZooKeeper has it",
    )
    before = {name: counted.total() for name, (_reconciler, counted) in nodes.items()}
    reads_before = Counter(nodes["hv1"][1].reads)

    operator.set_state("vm001", VmState.START)
    wait_for(lambda: operator.settled("vm001", VmState.START, "hv1", ActualState.RUNNING), 10, what="vm001 running")
    wait_for(lambda: watches_current(hv1, operator), 10, what="hv1's watches to have re-read what the start wrote")
    cost = {name: counted.total() - before[name] for name, (_reconciler, counted) in nodes.items()}

    full = CountedStore(operator.store.hosts, operator.store.security)
    vms.read_vms(full.store)  # what one pass of the reconciler cost before: the whole VM tree
    print(f"\nreads for one `start` with {VMS} VMs: {cost}; one full read of the VM tree: {full.total()}")
    full.store.stop()
    assert cost["hv1"] <= 12, nodes["hv1"][1].reads - reads_before  # typically 5 to 9
    assert cost["hv2"] == 0 and cost["hv3"] == 0
    assert full.total() > VMS * 3
