"""Node flush and ready against a real ZooKeeper and libvirt's test driver.

Nodes run in this process (see test_vm_reconciler); moves between them use the
SimulatedMigration test double, because libvirt's test driver cannot migrate.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from functools import partial

import pytest

from helpers import vm_cluster, vm_operator, wait_for
from pvcd.cluster.values import StateRecord
from pvcd.cluster.vm_records import ActualState, VmState, VmStatus
from pvcd.states import DomainState
from pvcd.vm.flush import (
    Command,
    CommandKind,
    FlushRunner,
    Phase,
    Trigger,
    command_to_run,
    initial_domain_state,
    read_report,
    write_command,
)
from pvcd.vm.migrators import SimulatedMigration
from pvcd.zk import nodes, schema, vms


@pytest.fixture
def cluster(zk, make_config):
    yield from vm_cluster(make_config)


@pytest.fixture
def operator(zookeeper):
    yield from vm_operator(zookeeper.address, zookeeper.security())


class Sampler:
    """Samples every node's running domains until stopped; records any VM seen on two hosts."""

    def __init__(self, cluster_nodes) -> None:
        self.nodes = list(cluster_nodes.values())
        self.doubles: list[tuple[str, list[str]]] = []
        self.peak: Counter[str] = Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            where: dict[str, list[str]] = {}
            for node in self.nodes:
                running = node.running()
                self.peak[node.name] = max(self.peak[node.name], len(running))
                for name in running:
                    where.setdefault(name, []).append(node.name)
            self.doubles += [(vm, hosts) for vm, hosts in where.items() if len(hosts) > 1]
            self.samples += 1
            self._stop.wait(0.02)


def command(operator, node: str, kind: CommandKind) -> Command:
    sent = Command.new(kind)
    write_command(operator.store, node, sent)
    return sent


def finished(operator, node: str, sent: Command, phase: Phase = Phase.DONE) -> bool:
    report = read_report(operator.store, node)
    return report is not None and report.command_id == sent.id and report.phase == phase


def domain_state(operator, node: str) -> str:
    view = nodes.read_node(operator.store, node)
    return view.state.domain if view else "unknown"


def start_vms(operator, names, node="hv1", memory_mib=512):
    for name in names:
        operator.define(name, node, memory_mib=memory_mib)
        operator.set_state(name, VmState.START)
    for name in names:
        wait_for(partial(operator.settled, name, VmState.START, node, ActualState.RUNNING), 15, what=f"{name} running")


def wait_for_figures(cluster_nodes, operator, count: int) -> None:
    """Placement reads keepalives: wait until every node's keepalive shows what it runs."""

    def current() -> bool:
        for node in cluster_nodes.values():
            view = nodes.read_node(operator.store, node.name)
            if view is None or sorted(view.keepalive.get("vms", {}).get("running", [])) != sorted(node.running()):
                return False
        return sum(len(n.running()) for n in cluster_nodes.values()) == count

    wait_for(current, 15, what="keepalives to show the running VMs")


def test_flush_spreads_the_vms_and_ready_brings_them_back(cluster, operator):
    nodes_ = cluster(("hv1", "hv2", "hv3"))
    names = [f"vm{i:02d}" for i in range(12)]
    start_vms(operator, names)
    operator.define("parked", "hv1")  # stopped: stays where it is
    wait_for_figures(nodes_, operator, 12)

    with Sampler(nodes_) as sampler:
        sent = command(operator, "hv1", CommandKind.FLUSH)
        wait_for(lambda: finished(operator, "hv1", sent), 30, what="the flush to finish")
        assert domain_state(operator, "hv1") == DomainState.FLUSHED
        assert nodes_["hv1"].running() == set()
        placed = Counter(operator.view(name).record.node for name in names)
        assert set(placed) == {"hv2", "hv3"} and min(placed.values()) >= 4, f"not spread: {placed}"
        for name in names:
            view = operator.view(name)
            assert view.record.lastnode == "hv1" and view.status.state == ActualState.RUNNING
            assert name in nodes_[view.record.node].running()
        assert operator.view("parked").record.node == "hv1"
        report = read_report(operator.store, "hv1")
        assert sorted(report.moved) == names and report.left == {}

        wait_for_figures(nodes_, operator, 12)
        sent = command(operator, "hv1", CommandKind.READY)
        wait_for(lambda: finished(operator, "hv1", sent), 30, what="the ready to finish")
        assert domain_state(operator, "hv1") == DomainState.READY
        for name in names:
            back = partial(operator.settled, name, VmState.START, "hv1", ActualState.RUNNING)
            wait_for(back, 15, what=f"{name} back")
            assert operator.view(name).record.lastnode is None
        assert nodes_["hv1"].running() == set(names)
    # The sampler looked while the moves ran (a flush and a ready take several samples' time even
    # when fast); tests/cluster/test_vms_cluster.py checks the same against each host's journal.
    assert sampler.samples >= 3
    assert sampler.doubles == [], f"VMs seen running on two hosts: {sampler.doubles[:5]}"


def test_vm_that_fits_nowhere_is_left_stopped_with_autostart(cluster, operator):
    nodes_ = cluster(("hv1", "hv2"))
    start_vms(operator, ["small"])
    start_vms(operator, ["big"], memory_mib=10 * 1024)
    nodes_["hv2"].conn.defineXML(
        operator.view("small")
        .record.xml.replace("small", "hog")
        .replace(operator.view("small").record.uuid, "11111111-2222-3333-4444-555555555555")
        .replace("<memory unit='MiB'>512</memory>", "<memory unit='MiB'>8192</memory>")
    ).create()
    wait_for_figures(nodes_, operator, 3)

    sent = command(operator, "hv1", CommandKind.FLUSH)
    wait_for(lambda: finished(operator, "hv1", sent), 30, what="the flush to finish")
    big = operator.view("big")
    assert (big.record.node, big.record.state, big.record.node_autostart) == ("hv1", VmState.STOP, True)
    assert big.record.reason.startswith("flush of hv1: needs 10240 MiB")
    assert big.status.state == ActualState.STOPPED
    assert operator.view("small").record.node == "hv2"
    assert nodes_["hv1"].running() == set()
    assert "big" in read_report(operator.store, "hv1").left

    sent = command(operator, "hv1", CommandKind.READY)
    wait_for(lambda: finished(operator, "hv1", sent), 30, what="the ready to finish")
    wait_for(lambda: operator.settled("big", VmState.START, "hv1", ActualState.RUNNING), 15, what="big to autostart")
    wait_for(lambda: operator.settled("small", VmState.START, "hv1", ActualState.RUNNING), 15, what="small back")
    assert operator.view("big").record.node_autostart is False


class SlowSimulatedMigration(SimulatedMigration):
    """The test double, slowed down so that a ready can arrive in the middle of a flush."""

    def migrate(self, domains, vm, target_address):
        time.sleep(0.4)
        super().migrate(domains, vm, target_address)


def test_ready_cancels_a_running_flush_cleanly(cluster, operator):
    nodes_ = cluster(("hv1", "hv2"), migrators={"hv1": SlowSimulatedMigration()})
    nodes_["hv1"].flush.concurrency = 1
    names = [f"vm{i}" for i in range(8)]
    start_vms(operator, names)
    wait_for_figures(nodes_, operator, 8)

    with Sampler(nodes_) as sampler:
        flush = command(operator, "hv1", CommandKind.FLUSH)
        wait_for(lambda: len(nodes_["hv2"].running()) >= 2, 20, what="the flush to move some VMs")
        ready = command(operator, "hv1", CommandKind.READY)
        wait_for(lambda: finished(operator, "hv1", ready), 30, what="the ready to finish")
        report_moved = [name for name in names if operator.view(name).record.node == "hv1"]
        assert len(report_moved) == len(names), "every VM is home after the ready"
        for name in names:
            back = partial(operator.settled, name, VmState.START, "hv1", ActualState.RUNNING)
            wait_for(back, 15, what=f"{name} back")
    assert sampler.doubles == []
    assert sampler.peak["hv2"] < len(names), "the flush stopped moving VMs when the ready came"
    assert domain_state(operator, "hv1") == DomainState.READY
    # The flush ended as cancelled; the ready that replaced it is the node's last word.
    assert command_to_run(flush, read_report(operator.store, "hv1")) is not None
    assert command_to_run(ready, read_report(operator.store, "hv1")) is None


def test_flush_on_shutdown_and_the_state_after_a_restart(cluster, operator):
    nodes_ = cluster(("hv1", "hv2"))
    start_vms(operator, ["vm1", "vm2"])
    wait_for_figures(nodes_, operator, 2)
    earlier = command(operator, "hv1", CommandKind.READY)
    wait_for(lambda: finished(operator, "hv1", earlier), 15, what="the earlier ready")

    report = nodes_["hv1"].flush.flush_for_shutdown(timeout=30)
    assert report.trigger == Trigger.SHUTDOWN and report.phase == Phase.DONE
    assert sorted(report.moved) == ["vm1", "vm2"]
    assert nodes_["hv1"].running() == set()
    stored = read_report(operator.store, "hv1")
    assert stored.command_id == earlier.id
    # Restarted, the node comes back flushed and does not replay the earlier ready.
    assert initial_domain_state(stored) == DomainState.FLUSHED
    assert command_to_run(earlier, stored) is None


@pytest.mark.parametrize("concurrency", [1, 3])
def test_flush_moves_at_most_concurrency_vms_at_once(cluster, operator, concurrency):
    nodes_ = cluster(("hv1", "hv2"), migrators={"hv1": SlowSimulatedMigration()})
    nodes_["hv1"].flush.concurrency = concurrency
    names = [f"vm{i}" for i in range(6)]
    start_vms(operator, names)
    wait_for_figures(nodes_, operator, 6)
    most = 0
    sent = command(operator, "hv1", CommandKind.FLUSH)
    while not finished(operator, "hv1", sent):
        moving = sum(1 for name in names if operator.view(name).migration is not None)
        most = max(most, moving)
        time.sleep(0.05)
    assert 1 <= most <= concurrency


# -- a fenced node carries out no command (runner only: no daemon, a fake domain-state callback) --------


class DomainStates:
    """The daemon's `set_domain_state`, faked: records each request and answers as told."""

    def __init__(self, applies: bool = True) -> None:
        self.applies = applies
        self.asked: list[DomainState] = []

    def __call__(self, wanted: DomainState) -> bool:
        self.asked.append(wanted)
        return self.applies


def add_node(store, name: str, running: tuple[str, ...] = ()) -> None:
    """A registered node with one keepalive delivered, so placement does not take it for late."""
    state = StateRecord("run", "client", "ready")
    versions = nodes.register(store, name, {"name": name}, state)
    keepalive = {
        "counter": 1,
        "interval": 5,
        "memory": {"total": 8192, "allocated": 512 * len(running)},
        "vcpus": {"allocated": len(running)},
        "load": 0.0,
        "vms": {"count": len(running), "running": list(running)},
    }
    nodes.send_keepalive(store, name, versions, state, keepalive, timeout=5)


def fence(store, name: str) -> None:
    found = store.get(schema.node_fence(name))
    store.set(schema.node_fence(name), {"outcome": "confirmed", "by": "hv3", "reason": "test"}, found.version)


def running_vm(operator, name: str, node: str, lastnode: str | None = None) -> None:
    """A VM recorded as running on `node` (nobody runs it: no daemon reacts to moves here)."""
    operator.define(name, node)
    view = operator.view(name)
    record = dataclasses.replace(view.record, state=VmState.START, lastnode=lastnode)
    vms.VmWrite(operator.store, view).record(record).status(VmStatus(node, ActualState.RUNNING)).commit()


def run_in_thread(runner: FlushRunner, sent: Command, timeout: float):
    """The runner's report, or None if it is still busy after `timeout` seconds."""
    box = {}
    worker = threading.Thread(target=lambda: box.setdefault("report", runner.run(sent)), daemon=True)
    worker.start()
    worker.join(timeout)
    return box.get("report")


@pytest.fixture
def bare(zk, operator):
    """Two nodes' records, hv1 and hv2, and no daemon."""
    add_node(operator.store, "hv1")
    add_node(operator.store, "hv2", running=("away",))
    yield operator


def test_a_ready_left_from_before_a_crash_is_not_carried_out_while_the_node_is_fenced(bare):
    operator = bare
    running_vm(operator, "away", "hv2", lastnode="hv1")
    operator.define("parked", "hv2")
    view = operator.view("parked")
    vms.VmWrite(operator.store, view).record(dataclasses.replace(view.record, lastnode="hv1")).commit()
    sent = command(operator, "hv1", CommandKind.READY)
    fence(operator.store, "hv1")  # hv1 crashed and was fenced; its restarted pvcd finds the ready
    states = DomainStates(applies=False)  # the daemon refuses every change while fenced
    runner = FlushRunner(operator.store, "hv1", states, "mem", move_timeout=5, poll_interval=0.05)

    assert command_to_run(runner._command(), read_report(operator.store, "hv1")) == sent
    report = run_in_thread(runner, sent, timeout=3)

    assert report is not None, "the runner is still waiting for moves a fenced node can never finish"
    assert states.asked == [], "a fenced node must not even try to change its domain state"
    away, parked = operator.view("away"), operator.view("parked")
    assert (away.record.node, away.migration, away.record.state) == ("hv2", None, VmState.START)
    assert (parked.record.node, parked.migration) == ("hv2", None)
    assert report.phase == "refused" and "fenced" in report.to_json()["reason"]
    stored = read_report(operator.store, "hv1")
    assert stored == report and command_to_run(sent, stored) is None, "a refused command is not run again"
    assert initial_domain_state(stored) == DomainState.READY


def test_a_refused_domain_state_change_stops_the_command(bare):
    operator = bare
    running_vm(operator, "away", "hv2", lastnode="hv1")
    running_vm(operator, "here", "hv1")
    states = DomainStates(applies=False)  # fenced as far as the daemon knows, record not read yet
    runner = FlushRunner(operator.store, "hv1", states, "mem", move_timeout=5, poll_interval=0.05)

    for kind in (CommandKind.READY, CommandKind.FLUSH):
        sent = command(operator, "hv1", kind)
        report = run_in_thread(runner, sent, timeout=3)
        assert report is not None and report.phase == Phase.REFUSED, report
        assert "refused" in report.reason
    assert operator.view("away").migration is None and operator.view("here").migration is None
    assert (operator.view("here").record.node, operator.view("away").record.node) == ("hv1", "hv2")


def test_a_node_fenced_in_the_middle_of_a_flush_stops_waiting_for_its_moves(bare):
    operator = bare
    running_vm(operator, "here", "hv1")
    states = DomainStates()
    runner = FlushRunner(operator.store, "hv1", states, "mem", move_timeout=30, poll_interval=0.05)
    sent = command(operator, "hv1", CommandKind.FLUSH)
    box = {}
    worker = threading.Thread(target=lambda: box.setdefault("report", runner.run(sent)), daemon=True)
    worker.start()
    # No daemon releases the VM: the move stays requested until the node is fenced.
    wait_for(lambda: operator.view("here").migration is not None, 5, what="the flush to request the move")
    fence(operator.store, "hv1")
    worker.join(3)

    report = box.get("report")
    assert report is not None, "the runner still waits for a move after its node was fenced"
    assert report.phase == Phase.REFUSED and "fenced" in report.reason
    assert "here" in report.left
    assert DomainState.FLUSHED not in states.asked


def test_a_fenced_node_does_not_flush_at_shutdown(bare):
    operator = bare
    running_vm(operator, "here", "hv1")
    fence(operator.store, "hv1")
    states = DomainStates()
    runner = FlushRunner(operator.store, "hv1", states, "mem", move_timeout=5, poll_interval=0.05)

    report = runner.flush_for_shutdown(timeout=3)

    assert report.phase == Phase.REFUSED and report.trigger == Trigger.SHUTDOWN
    assert states.asked == [] and operator.view("here").migration is None
