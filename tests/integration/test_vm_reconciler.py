"""The VM reconciler against a real ZooKeeper and libvirt's test driver.

Each node is a NodeDaemon running in a thread of this process with its own
simulated libvirt host (a test:/// host is private to the connection that
opened it, so only the node's own Hypervisor can see its domains), plus the
node's VmReconciler, wired as the daemon wires it. Moves between nodes use
the SimulatedMigration test double (libvirt's test driver cannot migrate),
except where a test says it exercises the real LiveMigration class.
"""

from __future__ import annotations

import pytest

from helpers import VmNode, vm_cluster, vm_operator, vm_xml, wait_for
from pvcd.cluster.vm_records import ActualState, MoveKind, VmState
from pvcd.vm.migrators import LiveMigration

SHUTDOWN_TIMEOUT = 2


@pytest.fixture
def cluster(zk, make_config):
    yield from vm_cluster(make_config, SHUTDOWN_TIMEOUT)


@pytest.fixture
def operator(zookeeper):
    yield from vm_operator(zookeeper.address, zookeeper.security())


def test_lifecycle_on_one_node(cluster, operator):
    hv1 = cluster(("hv1",))["hv1"]
    operator.define("vm1", "hv1")
    assert operator.view("vm1").record.state == VmState.STOP
    assert hv1.defined() == set()

    operator.set_state("vm1", VmState.START)
    wait_for(lambda: operator.settled("vm1", VmState.START, "hv1", ActualState.RUNNING), 10, what="vm1 running")
    assert hv1.running() == {"vm1"}

    operator.set_state("vm1", VmState.SHUTDOWN)
    wait_for(lambda: operator.settled("vm1", VmState.STOP, "hv1", ActualState.STOPPED), 10, what="vm1 shut down")
    assert hv1.defined() == set(), "a stopped VM is not left defined in libvirt"

    operator.set_state("vm1", VmState.START)
    wait_for(lambda: hv1.running() == {"vm1"}, 10, what="vm1 started again")
    uuid_before = hv1.conn.lookupByName("vm1").ID()
    operator.set_state("vm1", VmState.RESTART)
    wait_for(
        lambda: (
            operator.settled("vm1", VmState.START, "hv1", ActualState.RUNNING)
            and hv1.conn.lookupByName("vm1").ID() != uuid_before
        ),
        10,
        what="vm1 restarted",
    )

    operator.set_state("vm1", VmState.STOP)
    wait_for(lambda: operator.settled("vm1", VmState.STOP, "hv1", ActualState.STOPPED), 10, what="vm1 stopped")
    assert hv1.defined() == set()

    operator.set_state("vm1", VmState.START)
    wait_for(lambda: hv1.running() == {"vm1"}, 10, what="vm1 started")
    operator.set_state("vm1", VmState.DISABLE)
    wait_for(lambda: operator.settled("vm1", VmState.DISABLE, "hv1", ActualState.STOPPED), 10, what="vm1 disabled")


def test_failures_put_the_vm_in_fail_and_the_node_carries_on(cluster, operator):
    hv1 = cluster(("hv1",))["hv1"]
    bad = vm_xml("bad").replace("<type>hvm</type>", "<type>nonsense</type>")
    operator.define("bad", "hv1", xml=bad)
    operator.define("huge", "hv1", memory_mib=64 * 1024)
    operator.define("good", "hv1")
    for name in ("bad", "huge", "good"):
        operator.set_state(name, VmState.START)

    wait_for(lambda: operator.view("bad").record.state == VmState.FAIL, 10, what="bad to fail")
    wait_for(lambda: operator.view("huge").record.state == VmState.FAIL, 10, what="huge to fail")
    wait_for(lambda: operator.settled("good", VmState.START, "hv1", ActualState.RUNNING), 10, what="good running")
    assert "unknown OS type" in operator.view("bad").record.reason
    assert operator.view("huge").record.reason.startswith("not enough memory on hv1: VM huge needs 65536 MiB, ")
    assert operator.view("bad").status.state == ActualState.STOPPED
    assert hv1.defined() == {"good"}, "a failed start leaves nothing defined"


def test_unmanaged_domain_is_reported_never_touched(cluster, operator):
    hv1 = cluster(("hv1",))["hv1"]
    hv1.conn.defineXML(vm_xml("stray")).create()
    operator.define("elsewhere", "hv2")
    hv1.conn.defineXML(operator.view("elsewhere").record.xml).create()
    wait_for(lambda: {"stray", "elsewhere"} <= set(hv1.reconciler.reports), 10, what="the reports")
    assert "not a pvcd VM" in hv1.reconciler.reports["stray"]
    assert "assigns it to hv2" in hv1.reconciler.reports["elsewhere"]
    assert hv1.running() == {"stray", "elsewhere"}
    assert operator.view("elsewhere").record.state == VmState.STOP


def test_guest_shutting_itself_down_is_recorded_as_stop(cluster, operator):
    hv1 = cluster(("hv1",))["hv1"]
    operator.define("vm1", "hv1")
    operator.set_state("vm1", VmState.START)
    wait_for(lambda: operator.settled("vm1", VmState.START, "hv1", ActualState.RUNNING), 10, what="vm1 running")
    hv1.conn.lookupByName("vm1").shutdown()  # as if from inside the guest
    wait_for(lambda: operator.settled("vm1", VmState.STOP, "hv1", ActualState.STOPPED), 10, what="vm1 recorded stopped")
    assert operator.view("vm1").record.reason == "the guest shut itself down on hv1"
    assert hv1.defined() == set()


def _only_on(nodes: dict[str, VmNode], name: str, where: str) -> bool:
    return all((name in node.running()) == (node.name == where) for node in nodes.values())


def test_migrate_unmigrate_move(cluster, operator):
    nodes = cluster(("hv1", "hv2", "hv3"))
    operator.define("vm1", "hv1")
    operator.set_state("vm1", VmState.START)
    wait_for(lambda: operator.settled("vm1", VmState.START, "hv1", ActualState.RUNNING), 10, what="vm1 on hv1")

    operator.move("vm1", MoveKind.MIGRATE, "hv2")
    wait_for(lambda: operator.settled("vm1", VmState.START, "hv2", ActualState.RUNNING), 10, what="vm1 on hv2")
    assert _only_on(nodes, "vm1", "hv2")
    assert operator.view("vm1").record.lastnode == "hv1"

    operator.move("vm1", MoveKind.MIGRATE, "hv3", force=True)
    wait_for(lambda: operator.settled("vm1", VmState.START, "hv3", ActualState.RUNNING), 10, what="vm1 on hv3")
    assert operator.view("vm1").record.lastnode == "hv1", "a forced re-migration keeps the home node"

    operator.move("vm1", MoveKind.UNMIGRATE)
    wait_for(lambda: operator.settled("vm1", VmState.START, "hv1", ActualState.RUNNING), 10, what="vm1 back on hv1")
    assert operator.view("vm1").record.lastnode is None
    assert _only_on(nodes, "vm1", "hv1")

    operator.move("vm1", MoveKind.MOVE, "hv3")
    wait_for(lambda: operator.settled("vm1", VmState.START, "hv3", ActualState.RUNNING), 10, what="vm1 moved to hv3")
    assert operator.view("vm1").record.lastnode is None
    assert _only_on(nodes, "vm1", "hv3")
    assert all(node.reconciler.reports == {} for node in nodes.values())


def test_stopped_vm_moves_without_starting(cluster, operator):
    nodes = cluster(("hv1", "hv2"))
    operator.define("vm1", "hv1")
    operator.move("vm1", MoveKind.MIGRATE, "hv2")
    view = operator.view("vm1")
    assert view.migration is None, "a stopped VM changes node directly"
    assert (view.record.node, view.record.lastnode, view.record.state) == ("hv2", "hv1", VmState.STOP)
    operator.set_state("vm1", VmState.START)
    wait_for(lambda: operator.settled("vm1", VmState.START, "hv2", ActualState.RUNNING), 10, what="vm1 on hv2")
    assert _only_on(nodes, "vm1", "hv2")


def test_real_live_migration_class_falls_back_to_shutdown_migrate(cluster, operator):
    """hv1 uses the real LiveMigration: the test driver refuses it, and the VM moves by shutdown instead."""
    nodes = cluster(("hv1", "hv2"), migrators={"hv1": LiveMigration(timeout=10)})
    operator.define("vm1", "hv1")
    operator.set_state("vm1", VmState.START)
    wait_for(lambda: operator.settled("vm1", VmState.START, "hv1", ActualState.RUNNING), 10, what="vm1 on hv1")
    operator.move("vm1", MoveKind.MIGRATE, "hv2")
    wait_for(lambda: operator.settled("vm1", VmState.START, "hv2", ActualState.RUNNING), 10, what="vm1 on hv2")
    assert _only_on(nodes, "vm1", "hv2")
    assert "shutdown" in operator.view("vm1").status.message


def test_shutdown_method_and_start_failure_on_the_target(cluster, operator):
    nodes = cluster(("hv1", "hv2"))
    operator.define("vm1", "hv1", migration_method="shutdown")
    operator.set_state("vm1", VmState.START)
    wait_for(lambda: operator.settled("vm1", VmState.START, "hv1", ActualState.RUNNING), 10, what="vm1 on hv1")
    operator.move("vm1", MoveKind.MIGRATE, "hv2")
    wait_for(lambda: operator.settled("vm1", VmState.START, "hv2", ActualState.RUNNING), 10, what="vm1 on hv2")
    assert "shutdown move" in operator.view("vm1").status.message

    # A VM that cannot start on the target ends up failed there, the move closed.
    nodes["hv1"].conn.defineXML(vm_xml("hog", 16 * 1024 - 256)).create()
    operator.move("vm1", MoveKind.UNMIGRATE)
    wait_for(lambda: operator.view("vm1").record.state == VmState.FAIL, 10, what="vm1 to fail on hv1")
    view = operator.view("vm1")
    assert view.migration is None and view.record.node == "hv1"
    assert "not enough memory on hv1" in view.record.reason
    assert not any("vm1" in node.running() for node in nodes.values())
