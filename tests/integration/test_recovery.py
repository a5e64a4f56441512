"""Recovery of a fenced node's VMs against a real ZooKeeper (no daemons: the
cluster's records are written as the nodes and the fencer would have left them)."""

from __future__ import annotations

import uuid

import pytest

from helpers import vm_operator, vm_xml
from pvcd.cluster import vm_records as records
from pvcd.cluster.cache import read_view
from pvcd.cluster.values import StateRecord
from pvcd.cluster.vm_records import ActualState, Migration, MigrationMethod, MoveKind, MovePhase, VmState, VmStatus
from pvcd.fencing.recovery import BATCH_VMS, recover_vms
from pvcd.zk import nodes, schema, vms

DEAD = "hv1"


@pytest.fixture
def operator(zk, zookeeper):
    yield from vm_operator(zookeeper.address, zookeeper.security())


def add_node(store, name: str, total_mib: int, running: tuple[str, ...] = (), fence: str | None = None) -> None:
    """A registered node with one keepalive delivered (so it is not late), and its fence record."""
    state = StateRecord("run", "client", "ready")
    versions = nodes.register(store, name, {"name": name}, state)
    keepalive = {
        "counter": 1,
        "interval": 5,
        "memory": {"total": total_mib, "allocated": 0},
        "vcpus": {"allocated": 0},
        "load": 0.0,
        "vms": {"count": len(running), "running": list(running)},
    }
    nodes.send_keepalive(store, name, versions, state, keepalive, timeout=5)
    if fence is not None:
        found = store.get(schema.node_fence(name))
        store.set(schema.node_fence(name), {"outcome": fence, "by": "hv0"}, found.version)


def add_vm(
    operator,
    name: str,
    node: str = DEAD,
    memory_mib: int = 2048,
    selector: str | None = None,
    moving_to: str | None = None,
) -> None:
    """A VM running on `node`; with `moving_to`, one that `node` has released to that node but that has
    not arrived yet (the target has not started it)."""
    store = operator.store
    record = records.new_record(records.parse_domain_xml(vm_xml(name, memory_mib)), node)
    vms.define(store, record)
    view = operator.view(name)
    running = dict(record.to_json(), state="start", node_selector=selector)
    if moving_to is None:
        vms.VmWrite(store, view).record(records.VmRecord.from_json(running)).status(
            VmStatus(node, ActualState.RUNNING)
        ).commit()
        return
    vms.VmWrite(store, view).record(
        records.VmRecord.from_json(dict(running, state="migrate", node=moving_to, lastnode=node))
    ).status(VmStatus(node, ActualState.STOPPED, f"left {node} by simulated migration")).create_migration(
        Migration(
            uuid.uuid4().hex,
            MoveKind.MIGRATE,
            node,
            moving_to,
            MigrationMethod.LIVE,
            MovePhase.RELEASED,
            how="simulated",
        )
    ).commit()


def test_a_move_released_but_not_finished_is_placed_not_failed(operator):
    store = operator.store
    add_node(store, DEAD, 8192, running=("steady",), fence="confirmed")
    add_node(store, "hv2", 8192)
    add_node(store, "hv3", 8192)
    add_vm(operator, "steady")
    add_vm(operator, "leaving", moving_to="hv2")

    result = recover_vms(store, DEAD, "mem", read_view(store, with_vms=True))

    assert sorted(result.moved) == ["leaving", "steady"] and result.unplaced == {}
    for name in ("leaving", "steady"):
        view = operator.view(name)
        assert view.record.node in ("hv2", "hv3"), view
        assert view.record.state == VmState.START and view.migration is None
        assert view.status == VmStatus(DEAD, ActualState.STOPPED, f"node {DEAD} was fenced")
    # The move was a migrate away from the dead node: `pvc node ready hv1` may still bring it home.
    assert operator.view("leaving").record.lastnode == DEAD


def test_a_move_released_to_a_fenced_node_is_placed_elsewhere(operator):
    store = operator.store
    add_node(store, DEAD, 8192, fence="confirmed")
    add_node(store, "hv2", 8192, fence="ambiguous")  # ignores its fence: its own record still says ready
    add_node(store, "hv3", 8192)
    add_vm(operator, "leaving", moving_to="hv2")

    result = recover_vms(store, DEAD, "mem", read_view(store, with_vms=True))

    assert result.moved == {"leaving": "hv3"} and result.unplaced == {}
    view = operator.view("leaving")
    assert (view.record.node, view.record.state, view.migration) == ("hv3", VmState.START, None)


def test_released_moves_count_once_in_the_capacity_reservation(operator):
    # hv2 has room for two VMs and hv3 for one: all three fit only if the VM released to hv2
    # is not also counted as already arriving there.
    store = operator.store
    add_node(store, DEAD, 8192, fence="confirmed")
    add_node(store, "hv2", 4096)
    add_node(store, "hv3", 2048)
    add_vm(operator, "a")
    add_vm(operator, "b")
    add_vm(operator, "leaving", moving_to="hv2")

    result = recover_vms(store, DEAD, "mem", read_view(store, with_vms=True))

    assert result.unplaced == {} and sorted(result.moved) == ["a", "b", "leaving"]
    placed = [operator.view(name).record.node for name in ("a", "b", "leaving")]
    assert sorted(placed) == ["hv2", "hv2", "hv3"]


def test_a_move_whose_target_already_claimed_it_is_left_to_the_target(operator):
    store = operator.store
    add_node(store, DEAD, 8192, fence="confirmed")
    add_node(store, "hv2", 8192)
    add_node(store, "hv3", 8192)
    add_vm(operator, "arriving", moving_to="hv2")
    view = operator.view("arriving")
    # hv2 claimed it to start it (its FINISH_MOVE): from then on no other node may start it.
    vms.VmWrite(store, view).check_record().status(VmStatus("hv2", ActualState.STARTING)).commit()
    before = operator.view("arriving")

    result = recover_vms(store, DEAD, "mem", read_view(store, with_vms=True))

    assert "arriving" not in result.moved and "arriving" not in result.unplaced
    assert operator.view("arriving") == before


def test_an_unknown_selector_in_one_record_does_not_stop_the_recovery_of_the_others(operator):
    store = operator.store
    add_node(store, DEAD, 8192, fence="confirmed")
    add_node(store, "hv2", 8192)
    add_vm(operator, "odd", selector="least-used")
    add_vm(operator, "plain")

    result = recover_vms(store, DEAD, "mem", read_view(store, with_vms=True))

    assert result.moved == {"odd": "hv2", "plain": "hv2"} and result.unplaced == {}
    for name in ("odd", "plain"):
        assert operator.view(name).record.state == VmState.START


def test_many_vms_are_written_in_batches_and_a_batch_that_changed_meanwhile_vm_by_vm(operator, zookeeper):
    store = operator.store
    count = BATCH_VMS * 2 + 7
    add_node(store, DEAD, 1024 * 1024, fence="confirmed")
    add_node(store, "hv2", 1024 * 1024)
    add_node(store, "hv3", 1024 * 1024)
    names = [f"vm{index:03d}" for index in range(count)]
    for name in names:
        add_vm(operator, name, memory_mib=128)
    cluster = read_view(store, with_vms=True)
    # After the plan's read, an operator stops one VM of the second batch: that batch's
    # transaction fails on its version check, and its VMs are decided again one by one.
    changed = names[BATCH_VMS + 3]
    view = operator.view(changed)
    vms.VmWrite(store, view).record(view.record.with_state(VmState.STOP, "stopped by the operator")).commit()
    counted = CountedTransactions(store)

    result = recover_vms(store, DEAD, "mem", cluster)

    assert result.unplaced == {} and sorted(result.moved) == names
    assert all(operator.view(name).record.node in ("hv2", "hv3") for name in names)
    assert operator.view(changed).record.state == VmState.STOP, "the operator's change is kept"
    assert operator.view(names[0]).record.state == VmState.START
    # Three batches, the second of which failed and was written VM by VM: once each, and the
    # changed VM twice (refused on the plan's version, then decided again on a fresh read).
    assert counted.commits == 3 + BATCH_VMS + 1, counted.commits
    for node in ("hv2", "hv3"):
        indexed = set(vms.owned(store, node))
        assert indexed == {name for name in names if operator.view(name).record.node == node}


class CountedTransactions:
    """Counts the transactions committed through `store`."""

    def __init__(self, store) -> None:
        self.commits = 0
        original = store.transaction

        def counted():
            transaction = original()
            commit = transaction.commit

            def counting(*args, **kwargs):
                self.commits += 1
                return commit(*args, **kwargs)

            transaction.commit = counting
            return transaction

        store.transaction = counted
