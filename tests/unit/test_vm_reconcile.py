"""The reconciler's decisions: desired state in ZooKeeper against the domains of one node."""

from __future__ import annotations

import dataclasses

import pytest

from pvcd.cluster.vm_records import (
    STATUS_NEW,
    ActualState,
    Migration,
    MigrationMethod,
    MoveKind,
    MovePhase,
    VmRecord,
    VmState,
    VmStatus,
    VmView,
)
from pvcd.vm.reconcile import Act, Action, DomainInfo, decide, decide_vm, memory_shortfall
from pvcd.vm.reconciler import _MemoryBook

UUID = "6f1c5a1e-8d0b-4d3c-9a55-0f2f6f1f7a10"
ME = "hv1"


def vm(state=VmState.START, node=ME, status=STATUS_NEW, migration=None, name="vm1") -> VmView:
    record = VmRecord(name=name, uuid=UUID, xml="<domain/>", memory_mib=512, vcpus=1, state=state, node=node)
    return VmView(record, 1, status, 1, migration, 0 if migration else None)


RUNNING_HERE = VmStatus(ME, ActualState.RUNNING)
STOPPED_HERE = VmStatus(ME, ActualState.STOPPED)
RUNNING = DomainInfo("vm1", UUID, active=True)
DEFINED = DomainInfo("vm1", UUID, active=False)
GUEST_OFF = DomainInfo("vm1", UUID, active=False, guest_shutdown=True)


def act(view, domain=None):
    action = decide_vm(ME, view, domain)
    return None if action is None else (action.act, action.then)


@pytest.mark.parametrize(
    "state, status, domain, expected",
    [
        # start
        (VmState.START, STATUS_NEW, None, (Act.START, None)),
        (VmState.START, RUNNING_HERE, RUNNING, None),
        (VmState.START, STATUS_NEW, RUNNING, (Act.REPORT_RUNNING, None)),
        (VmState.START, RUNNING_HERE, None, (Act.START, None)),  # host restarted under it
        (VmState.START, RUNNING_HERE, GUEST_OFF, (Act.GUEST_STOPPED, VmState.STOP)),
        (VmState.START, STATUS_NEW, DEFINED, (Act.START, None)),
        (VmState.START, VmStatus(ME, ActualState.STARTING), None, (Act.START, None)),
        # restart
        (VmState.RESTART, RUNNING_HERE, RUNNING, (Act.RESTART, VmState.START)),
        (VmState.RESTART, STOPPED_HERE, None, (Act.START, VmState.START)),
        # shutdown, disable, stop
        (VmState.SHUTDOWN, RUNNING_HERE, RUNNING, (Act.SHUTDOWN, VmState.STOP)),
        (VmState.SHUTDOWN, STOPPED_HERE, None, (Act.REPORT_STOPPED, VmState.STOP)),
        (VmState.DISABLE, RUNNING_HERE, RUNNING, (Act.SHUTDOWN, None)),
        (VmState.DISABLE, STOPPED_HERE, None, None),
        (VmState.STOP, RUNNING_HERE, RUNNING, (Act.STOP, None)),
        (VmState.STOP, RUNNING_HERE, None, (Act.REPORT_STOPPED, None)),
        (VmState.STOP, STOPPED_HERE, DEFINED, (Act.REPORT_STOPPED, None)),
        (VmState.STOP, STOPPED_HERE, None, None),
        (VmState.STOP, STATUS_NEW, None, None),
        # fail: the domain is left as it is, only the status follows reality
        (VmState.FAIL, RUNNING_HERE, RUNNING, None),
        (VmState.FAIL, STOPPED_HERE, RUNNING, (Act.REPORT_RUNNING, None)),
        (VmState.FAIL, RUNNING_HERE, None, (Act.REPORT_STOPPED, None)),
        (VmState.FAIL, STOPPED_HERE, None, None),
        # a finished migrate/unmigrate without its record (e.g. set by hand) settles as start
        (VmState.MIGRATE, RUNNING_HERE, RUNNING, (Act.REPORT_RUNNING, VmState.START)),
    ],
)
def test_owned_vm(state, status, domain, expected):
    assert act(vm(state=state, status=status), domain) == expected


@pytest.mark.parametrize("state", [VmState.START, VmState.RESTART])
def test_never_starts_a_vm_another_node_reports_active(state):
    for other in (ActualState.STARTING, ActualState.RUNNING, ActualState.STOPPING, ActualState.MIGRATING):
        action = decide_vm(ME, vm(state=state, status=VmStatus("hv2", other)), None)
        assert action is not None and action.act == Act.BLOCKED
        assert "hv2" in action.note


def test_a_stopped_status_elsewhere_does_not_block():
    assert act(vm(status=VmStatus("hv2", ActualState.STOPPED))) == (Act.START, None)


def test_domain_of_a_vm_assigned_elsewhere_is_reported_never_touched():
    action = decide_vm(ME, vm(node="hv2", status=VmStatus("hv2", ActualState.RUNNING)), RUNNING)
    assert action is not None and action.act == Act.UNMANAGED and "assigns it to hv2" in action.note
    action = decide_vm(ME, vm(node="hv2"), DEFINED)
    assert action is not None and action.act == Act.UNMANAGED and "not running" in action.note
    assert decide_vm(ME, vm(node="hv2"), None) is None


def test_same_name_different_uuid_is_not_ours():
    impostor = DomainInfo("vm1", "00000000-0000-0000-0000-000000000001", active=True)
    action = decide_vm(ME, vm(), impostor)
    assert action is not None and action.act == Act.UNMANAGED and "different domain" in action.note


def test_unknown_domains_are_reported():
    actions = decide(ME, {}, {"stray": DomainInfo("stray", UUID, active=True)})
    assert actions == [Action(Act.UNMANAGED, "stray", note="domain stray runs here but is not a pvcd VM")]


def move(phase=MovePhase.REQUESTED, source=ME, target="hv2", method=MigrationMethod.LIVE) -> Migration:
    return Migration("m1", MoveKind.MIGRATE, source, target, method, phase)


def test_source_of_a_move():
    moving = vm(state=VmState.MIGRATE, node="hv2", status=RUNNING_HERE, migration=move())
    assert act(moving, RUNNING) == (Act.MIGRATE_OUT, None)
    assert act(moving, None) == (Act.RELEASE, None)
    assert act(moving, DEFINED) == (Act.RELEASE, None)
    # A node restarted in the middle of a live migration picks it up again.
    assert act(dataclasses.replace(moving, migration=move(MovePhase.MIGRATING)), RUNNING) == (Act.MIGRATE_OUT, None)
    released = dataclasses.replace(moving, migration=move(MovePhase.RELEASED))
    assert act(released, None) is None
    assert act(released, RUNNING)[0] == Act.UNMANAGED


def test_target_waits_for_the_release():
    for phase in (MovePhase.REQUESTED, MovePhase.MIGRATING):
        incoming = vm(
            state=VmState.MIGRATE, status=VmStatus("hv2", ActualState.RUNNING), migration=move(phase, "hv2", ME)
        )
        # Not even a domain of its own (an incoming live migration) makes it act early.
        assert act(incoming, None) is None
        assert act(incoming, RUNNING) is None
    released = vm(
        state=VmState.MIGRATE,
        status=VmStatus("hv2", ActualState.STOPPED),
        migration=move(MovePhase.RELEASED, "hv2", ME),
    )
    assert act(released) == (Act.FINISH_MOVE, None)
    live = vm(
        state=VmState.MIGRATE, status=VmStatus(ME, ActualState.RUNNING), migration=move(MovePhase.RELEASED, "hv2", ME)
    )
    assert act(live, RUNNING) == (Act.FINISH_MOVE, None)


def test_released_move_still_blocked_if_someone_else_reports_it_active():
    odd = vm(
        state=VmState.MIGRATE,
        status=VmStatus("hv3", ActualState.RUNNING),
        migration=move(MovePhase.RELEASED, "hv2", ME),
    )
    assert act(odd)[0] == Act.BLOCKED


def test_decide_is_sorted_and_complete():
    views = {
        "b": vm(name="b"),
        "a": vm(name="a", state=VmState.STOP),
        "c": vm(name="c", node="hv2"),
    }
    domains = {"a": DomainInfo("a", UUID, active=True)}
    assert [(a.act, a.vm) for a in decide(ME, views, domains)] == [(Act.STOP, "a"), (Act.START, "b")]


def test_memory_shortfall():
    assert memory_shortfall("vm1", 512, 512, ME) is None
    assert memory_shortfall("vm1", 1024, 512, ME) == "not enough memory on hv1: VM vm1 needs 1024 MiB, 512 MiB free"


# -- the free-memory check of concurrent starts ---------------------------------------


class FakeHost:
    """Free memory as libvirt reports it: total less what runs; counts the readings."""

    def __init__(self, total_mib: int) -> None:
        self.total_mib = total_mib
        self.running_mib = 0
        self.readings = 0

    def free_mib(self) -> int:
        self.readings += 1
        return self.total_mib - self.running_mib


def test_concurrent_starts_never_count_the_same_free_memory():
    host = FakeHost(1000)
    book = _MemoryBook(host.free_mib, max_age=3600)
    first, why = book.reserve("vm1", 600, ME)
    assert first is not None and why is None
    # vm1 is not running yet (libvirt does not count it): its reservation does.
    second, why = book.reserve("vm2", 600, ME)
    assert second is None
    assert why == "not enough memory on hv1: VM vm2 needs 600 MiB, 400 MiB free"
    third, _ = book.reserve("vm3", 400, ME)
    assert third is not None, "what is left after the reservations fits"
    fourth, why = book.reserve("vm4", 1, ME)
    assert fourth is None and "0 MiB free" in (why or "")


def test_a_burst_of_starts_shares_one_reading_and_a_new_reading_counts_the_finished_ones():
    host = FakeHost(1000)
    book = _MemoryBook(host.free_mib, max_age=3600)
    a, _ = book.reserve("vm1", 100, ME)
    b, _ = book.reserve("vm2", 100, ME)
    assert a is not None and b is not None
    assert host.readings == 1, "a start while another is under way uses the same reading"
    host.running_mib += 100
    book.settle(a)  # vm1 runs now
    c, _ = book.reserve("vm3", 100, ME)
    assert c is not None and host.readings == 1
    # vm3 does not fit on the old reading (vm1 counted as reserved, vm2 and vm3 under way): read again.
    d, why = book.reserve("vm4", 750, ME)
    assert host.readings == 2
    # The new reading counts vm1 as running; vm2 and vm3 are still reserved: 1000 - 100 - 200 = 700 free.
    assert d is None and "700 MiB free" in (why or "")
    book.cancel(c)  # vm3 never started
    d, _ = book.reserve("vm4", 750 - 50, ME)
    assert d is not None


def test_a_start_with_none_under_way_reads_afresh():
    """Memory taken outside pvcd (another domain, a host process) since the last start is seen."""
    host = FakeHost(1000)
    book = _MemoryBook(host.free_mib, max_age=3600)
    first, _ = book.reserve("vm1", 100, ME)
    assert first is not None
    host.running_mib += 100
    book.settle(first)
    host.running_mib += 800  # a domain pvcd does not manage
    second, why = book.reserve("vm2", 200, ME)
    assert second is None and "100 MiB free" in (why or "")
    assert host.readings == 2


def test_a_burst_of_passes_takes_at_most_a_quarter_of_a_core():
    from pvcd.vm.reconciler import MAX_PASS_PAUSE, PASS_DUTY, pass_pause

    for cpu in (0.0005, 0.01, 0.1):
        pause = pass_pause(cpu)
        assert cpu / (cpu + pause) == pytest.approx(PASS_DUTY)
    assert pass_pause(10.0) == MAX_PASS_PAUSE  # one costly pass never makes the node deaf for long
    assert pass_pause(-0.1) == 0.0
