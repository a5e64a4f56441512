"""The per-node VM index (`/pvc/node_vms/NODE/VM`) against a real ZooKeeper.

Every VM write that changes which nodes must act on a VM keeps the index in
the same transaction: define, a move (both ends while it is in progress), its
end, the recovery after a fence, the removal. An index out of step (data from
before the index, or changed by hand) never makes a VM write fail.
"""

from __future__ import annotations

import dataclasses

import pytest

from helpers import VmOperator, vm_operator
from pvcd.vm import records
from pvcd.vm.records import MoveKind, MovePhase, VmState
from pvcd.zk import schema, vms


@pytest.fixture
def operator(zk, zookeeper):
    yield from vm_operator(zookeeper.address)


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
