"""Fences, the reconciler and the VM move handshake against a model of the cluster, under random schedules.

The model (`cluster_model`) holds the ground truth — three hosts that really
run four VMs, each host's watchdog, power and network, each host's pvcd
process — and a ZooKeeper server with a version and an mtime for every node's
keepalive, state and fence record and for every VM's record, status and
migration, all on one virtual clock. Every decision comes from pvcd's own code
and every ZooKeeper read and write goes through pvcd's adapters; the model
sequences them as the threads of `daemon.py`, `fencer.py` and `reconciler.py`
do, one ZooKeeper or libvirt operation per step, so that anything may happen
between two steps.

Modelled:

- Keepalives: a request sent, then delivered (or not: a cut node's requests do
  not arrive; a request may arrive late, after its sender gave up); accepted or
  refused on the fence record's version. The watchdog is petted only for a
  keepalive accepted within one interval of sending, and at arming (as
  `Watchdog.arm` does). A refused keepalive makes the node re-read its fence
  record and self-fence on a fence it has not acknowledged; a (re)started pvcd
  with a fence record self-fences at start. Self-fencing drains the VM actions
  under way, destroys every VM and holds the node.
- Faults: a frozen pvcd (SIGSTOP) does nothing; pvcd crashes (its VMs keep
  running, its watchdog stays armed) and restarts (systemd, at once or a while
  later), possibly hit by another fault part-way through its start (connect and
  arm the watchdog, register, first keepalive); power loss and power on; a watchdog
  not petted for its timeout power-cycles the host (every VM dies); BMCs that
  work (power off, "confirmed" — only ever for a host really off), are down
  (nothing happens, "failed") or flaky (may or may not power off, "ambiguous").
  hv3 has no watchdog, so a failed fence of it waits for an operator.
- The primary's fencer: rounds of observe / decide / carry on every fence due /
  declare at most one, step by step; a primary may die at any step, another
  takes over with an empty LivenessTracker (by event, or one session timeout
  after the primary stopped answering), and a stale term may go on for a while
  ("zombie", its `is_primary()` answering either way), as a primary frozen
  mid-fence does when it wakes up. The recovery writes one VM per step.
- The reconciler: `reconcile.decide` on a fresh read per pass, one action per VM,
  each action (claim, start, report; migrate out, release, finish a move;
  stop, shut down) step by step; live migrations move a running VM between
  hosts in one step when the target host is up, else fall back to shutdown.
- The operator: `pvc vm start|stop|shutdown`, `migrate|move|unmigrate` (with the
  CLI's checks), `pvc node ready` (refused unless the node runs with a fresh
  keepalive), and `pvc node confirm-fenced` — by an honest operator, only for a
  host really off; or by none at all.

Schedules are lists of (event, rounds after it), from BMCs drawn at the start;
about half the examples fence a node (`--hypothesis-show-statistics` lists the
paths taken: power off, watchdog window, operator, resumed fences, ...).

Checked after every event, against ground truth: no VM runs on two hosts (each
start also checks that nobody else runs it at that instant). Checked whenever a
recovery begins: the stated rule — a confirmed power off (that the BMC really
did), an operator's confirmation (given for a host really off), or the node's
watchdog window past its last accepted keepalive — and the fact it stands for:
the fenced host is off, or lost every VM since the fence was declared, or no
pvcd has registered on it since it last lost them (one that does reads the
fence first and holds). After healing (faults cleared, hosts powered on, time
passing, the operator readying nodes whose fence is over and restarting VMs left
in `fail`): every VM that should run runs on exactly its node with records that
agree, every fence is over — except, without an operator, the VMs of a node
whose fence waits for one. So the model is not vacuously safe.

Not modelled, and why: the coordinator election (test_coordinator_simulation
covers it; here a term is an event and there is one current term, plus stale
ones); the fence lock (one current term serialises fences, stale terms race it
as they would after losing their session); ZooKeeper sessions, restarts and
clock skew (one consistent server, one clock: the detector never compares two
clocks); the silence self-fence (`suicide_intervals`: it only destroys VMs, so
leaving it out shows the watchdog and fence records suffice); the flush runner
beyond `ready` turning a node ready again (no flushes, no VMs coming home);
libvirt failures other than "already running", memory shortage, guest-initiated
shutdowns; the IPMI exchange itself (`outcome.judge` has its own tests): only
what the BMC did and what pvcd concluded. The self-fence drain is taken to
finish (the daemon bounds it; issue 9 item 8).

Two defects this model found are kept below as regression tests, now that
they are fixed: a restarted pvcd armed (and so petted) its watchdog before any
keepalive, stretching its host's life past the window the fencer measures
(the daemon now arms it only after its first delivered keepalive, and starts
no VM before); and `pvc node ready` cleared a fence whose recovery was under
way (now refused until the fence is recovered).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pvcd.cluster.vm_records import MoveKind, VmState
from pvcd.fencing.flow import Fence, Step
from pvcd.states import DomainState
from pvcd.zk import nodes, vms

from .cluster_model import NODES, ROUND_MS, VMS, Model, SafetyViolation

node_index = st.integers(0, len(NODES) - 1)
coin = st.integers(0, 11)
bmc = st.sampled_from(["ok", "down", "flaky"])
faults = st.sampled_from([None, "freeze", "cut", "crash"])
# An event, then that many whole rounds (ROUND_MS each: keepalives, reconciler passes, a fencer step).
events = st.one_of(
    st.tuples(st.just("advance"), st.sampled_from([100, 500, 1000, 2000, 3000])),
    st.tuples(st.sampled_from(["tick", "send", "deliver", "pass"]), node_index),
    st.tuples(st.sampled_from(["freeze", "cut", "crash", "power_loss", "boot", "confirm", "ready"]), node_index),
    st.tuples(st.just("restart"), node_index, st.integers(0, 3), faults),
    st.tuples(st.just("bounce"), node_index, st.integers(0, 20), st.integers(0, 3), faults),
    st.tuples(st.just("act"), node_index, st.integers(0, 3)),
    st.tuples(st.just("bmc"), node_index, bmc),
    st.tuples(st.sampled_from(["fencer", "zombie"]), coin),
    st.tuples(st.just("takeover"), node_index, st.booleans()),
    st.tuples(
        st.just("vm_state"),
        st.sampled_from(sorted(VMS)),
        st.sampled_from([VmState.START, VmState.STOP, VmState.SHUTDOWN]),
    ),
    st.tuples(st.just("vm_move"), st.sampled_from(sorted(VMS)), st.sampled_from(list(MoveKind)), node_index),
)
schedules = st.tuples(
    st.tuples(bmc, bmc, bmc),  # how each node's BMC starts
    st.lists(st.tuples(events, st.integers(0, 12)), min_size=10, max_size=50),
)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
Schedule = tuple[tuple[str, str, str], list[tuple[tuple[Any, ...], int]]]


def run(model: Model, schedule: Schedule) -> None:
    """Apply the schedule, heal, and require every VM that should run to run (or say why not)."""
    bmcs, steps = schedule
    for index, mode in enumerate(bmcs):
        model.apply(("bmc", index, mode))
    try:
        for index, (step, rounds) in enumerate(steps):
            model.apply(step)
            for _ in range(rounds):
                model.apply(("round", index))
        model.heal()
    except SafetyViolation as exc:
        raise SafetyViolation("\n".join([str(exc), "the model's journal, last 60 lines:", *model.log[-60:]])) from None
    problems = model.liveness_problems()
    assert not problems, "\n".join([*problems, *model.log[-60:]])
    for what in sorted(model.stats):  # --hypothesis-show-statistics: how often each path was taken
        if what.startswith(("recovery", "fence", "bmc", "self-fence", "watchdog", "operator")):
            event(what)


@SETTINGS
@given(schedules)
def test_random_schedules_with_an_honest_operator(schedule: Schedule) -> None:
    run(Model(operator=True), schedule)


@SETTINGS
@given(schedules)
def test_random_schedules_without_an_operator(schedule: Schedule) -> None:
    model = Model(operator=False)
    run(model, schedule)
    # Nothing but a power off or a watchdog window let a VM leave a fenced node; the VMs of a node
    # whose fence waits for the operator run there or nowhere.
    assert "recovery after operator" not in model.stats
    views, _ = vms.read_vms(model.admin)
    for name, view in views.items():
        if view.record.node in model.waiting_for_operator():
            assert where(model, name) in ([], [view.record.node])


# -- scenarios (the whole-cluster cases of issue 9, item 9, in the model) ---------------


def rounds_until(model: Model, done: Callable[[], bool], limit_ms: int = 30_000) -> None:
    """Whole rounds until `done()`, failing after `limit_ms` of model time."""
    deadline = model.now_ms + limit_ms
    while not done():
        assert model.now_ms < deadline, "\n".join(model.log)
        model.apply(("round", 0))


def run_to(model: Model, ms: int) -> None:
    rounds_until(model, lambda: model.now_ms >= ms, limit_ms=ms)


def fence_step(model: Model, node: str) -> Step | None:
    fence = Fence.from_record(nodes.read_fence(model.admin, node))
    return fence.step if fence is not None else None


def where(model: Model, vm: str) -> list[str]:
    return sorted(host.name for host in model.hosts.values() if vm in host.running)


def started(model: Model) -> list[str]:
    """The model's journal of VM starts (`vm started on host`), in order."""
    return [line.split(maxsplit=1)[1] for line in model.log if " started on " in line or " live-migrated " in line]


def with_primary(model: Model, node: str) -> Model:
    model.takeover(NODES.index(node), keep_zombie=False)
    return model


def test_daemon_crash_with_a_working_bmc_is_recovered_exactly_once() -> None:
    model = with_primary(Model(), "hv2")
    run_to(model, 2000)
    model.apply(("crash", 0))  # pvcd dies; vm1 and vm2 go on running on hv1
    rounds_until(model, lambda: fence_step(model, "hv1") is Step.RECOVERED)
    assert model.stats.get("BMC power off") == 1 and model.stats.get("recovery after confirmed power off") == 1
    rounds_until(model, lambda: all(len(where(model, vm)) == 1 for vm in ("vm1", "vm2")))
    assert where(model, "vm1") != ["hv1"] and where(model, "vm2") != ["hv1"]
    assert [line for line in started(model) if line.startswith(("vm1", "vm2"))] == [
        f"vm1 started on {where(model, 'vm1')[0]}",
        f"vm2 started on {where(model, 'vm2')[0]}",
    ]
    rounds_until(model, lambda: model.hosts["hv1"].daemon is not None and model.hosts["hv1"].daemon.running)
    assert model.hosts["hv1"].daemon is not None and model.hosts["hv1"].daemon.domain == DomainState.FENCED


def test_bmc_down_recovers_only_once_the_watchdog_window_has_passed() -> None:
    model = with_primary(Model(operator=False), "hv2")
    model.apply(("bmc", 0, "down"))
    run_to(model, 2000)
    model.apply(("crash", 0))
    rounds_until(model, lambda: fence_step(model, "hv1") is Step.WAITING_WATCHDOG)
    fence = Fence.from_record(nodes.read_fence(model.admin, "hv1"))
    assert fence is not None and fence.keepalive_mtime_ms is not None
    rounds_until(model, lambda: fence_step(model, "hv1") is Step.RECOVERED)
    # The watchdog reset hv1 (its VMs died) before the window ended, and the window before the recovery.
    assert model.hosts["hv1"].wiped_ms <= fence.keepalive_mtime_ms + 6000 <= model.now_ms
    assert model.stats.get("recovery after watchdog window") == 1 and "BMC power off" not in model.stats
    rounds_until(model, lambda: all(len(where(model, vm)) == 1 for vm in ("vm1", "vm2")))


@pytest.mark.parametrize("bmc", ["ok", "down"])
def test_a_hung_daemon_resumed_after_its_fence_never_runs_the_old_vms_again(bmc: str) -> None:
    model = with_primary(Model(operator=False), "hv2")
    model.apply(("bmc", 0, bmc))
    run_to(model, 2000)
    model.apply(("freeze", 0))
    rounds_until(model, lambda: fence_step(model, "hv1") is Step.RECOVERED)
    if model.hosts["hv1"].daemon is not None:
        model.apply(("freeze", 0))  # SIGCONT, if the host is still the one it froze on
    run_to(model, 40_000)
    assert "hv1" not in [host for vm in ("vm1", "vm2") for host in where(model, vm)]
    assert all(len(where(model, vm)) == 1 for vm in ("vm1", "vm2"))


@pytest.mark.parametrize("steps", range(12))
def test_a_primary_killed_in_the_middle_of_a_fence_is_followed_by_one_that_finishes_it(steps: int) -> None:
    model = with_primary(Model(operator=False), "hv2")
    run_to(model, 2000)
    model.apply(("crash", 0))
    rounds_until(model, lambda: fence_step(model, "hv1") is not None)
    for _ in range(steps):
        model.apply(("fencer", 0))
    model.apply(("crash", 1))  # the primary's pvcd dies where it stood
    rounds_until(model, lambda: fence_step(model, "hv1") is Step.RECOVERED)
    rounds_until(model, lambda: all(len(where(model, vm)) == 1 for vm in ("vm1", "vm2")))
    assert model.stats["takeover"] >= 2 and "hv1" not in where(model, "vm1") + where(model, "vm2")


def test_a_node_fenced_while_cut_off_comes_back_fenced_with_no_vms() -> None:
    model = with_primary(Model(operator=True), "hv1")
    model.apply(("bmc", 2, "flaky"))
    run_to(model, 2000)
    model.apply(("cut", 2))  # hv3: no watchdog; its BMC answers but does not power it off
    rounds_until(model, lambda: fence_step(model, "hv3") is not None)
    while fence_step(model, "hv3") in (Step.DECLARED, Step.CUTTING_STORAGE, Step.POWERING_OFF):
        model.apply(("fencer", 2))  # coin 2: the BMC does nothing and answers ambiguously
    assert fence_step(model, "hv3") is Step.WAITING_OPERATOR and model.hosts["hv3"].running == {"vm4"}
    model.apply(("cut", 2))
    rounds_until(model, lambda: not model.hosts["hv3"].running)
    daemon = model.hosts["hv3"].daemon
    assert daemon is not None and daemon.domain == DomainState.FENCED
    run_to(model, 30_000)
    assert where(model, "vm4") == [] and fence_step(model, "hv3") is Step.WAITING_OPERATOR  # the host is on
    model.apply(("power_loss", 2))  # the operator powers it off, then confirms
    model.apply(("confirm", 2))
    rounds_until(model, lambda: where(model, "vm4") != [])
    assert where(model, "vm4") != ["hv3"]


def test_a_failed_fence_of_a_node_without_watchdog_waits_for_the_operator() -> None:
    model = with_primary(Model(operator=False), "hv1")
    model.apply(("bmc", 2, "down"))
    run_to(model, 2000)
    model.apply(("crash", 2))
    rounds_until(model, lambda: fence_step(model, "hv3") is Step.WAITING_OPERATOR)
    run_to(model, 60_000)
    assert where(model, "vm4") == ["hv3"] and fence_step(model, "hv3") is Step.WAITING_OPERATOR
    model.heal()
    assert model.waiting_for_operator() == {"hv3"} and not model.liveness_problems()


def test_a_live_migration_cut_short_by_the_sources_fence_runs_the_vm_once() -> None:
    model = with_primary(Model(), "hv2")
    run_to(model, 2000)
    model.apply(("vm_move", "vm1", MoveKind.MIGRATE, 2))
    rounds_until(
        model,
        lambda: (
            (view := vms.read_vm(model.admin, "vm1")) is not None
            and view.migration is not None
            and str(view.migration.phase) == "migrating"
        ),
    )
    model.apply(("act", 0, 0))  # libvirt moves vm1 to hv3 …
    model.apply(("freeze", 0))  # … and hv1's pvcd never releases it
    assert where(model, "vm1") == ["hv3"]
    rounds_until(model, lambda: fence_step(model, "hv1") is Step.RECOVERED)
    rounds_until(model, lambda: (view := vms.read_vm(model.admin, "vm1")) is not None and view.migration is None)
    assert where(model, "vm1") == ["hv3"] and started(model).count("vm1 live-migrated from hv1 on hv3") == 1


# -- defects found by the model (fixed) ------------------------------------------------


def test_a_restarted_pvcd_that_dies_before_its_first_keepalive_does_not_extend_the_window() -> None:
    model = with_primary(Model(operator=False), "hv2")
    model.apply(("bmc", 0, "down"))
    run_to(model, 2000)  # hv1's last accepted keepalive: t=2.0 s
    model.apply(("crash", 0))  # vm1 and vm2 keep running; the watchdog would reset hv1 by t=2+1+4
    run_to(model, 5250)  # systemd restarts pvcd 3.25 s later …
    # … it connects and dies before a keepalive: no pet, so the reset stays due by 7 (2 + 1 + 4)
    model.apply(("restart", 0, 1, "crash"))
    rounds_until(model, lambda: fence_step(model, "hv1") is Step.WAITING_WATCHDOG)  # declared at 5.5, BMC down
    run_to(model, 8000)  # the fencer's window: 2.0 + 4 + 2 × 1 = 8.0
    model._check_host_cleared = lambda node, record: None  # type: ignore[method-assign]  # ground truth only
    for _ in range(6):
        model.apply(("fencer", 0))  # recovery at 8.0: hv1 was reset by 7.0
    for _ in range(4):
        for index in (1, 2):
            model.apply(("pass", index))
            model.apply(("act", index, 0))
    run_to(model, 12_000)


def test_pvc_node_ready_during_the_recovery_is_refused() -> None:
    model = with_primary(Model(operator=False), "hv2")
    model.apply(("bmc", 0, "down"))
    run_to(model, 1000)
    model.apply(("cut", 0))  # hv1 cut off: no keepalive arrives, its watchdog resets it at t=5
    rounds_until(model, lambda: fence_step(model, "hv1") is Step.WAITING_WATCHDOG)
    model.apply(("cut", 0))  # it boots again, finds its fence, holds; its keepalives are fresh
    rounds_until(model, lambda: fence_step(model, "hv1") is Step.RECOVERING)
    model.apply(("fencer", 0))  # the recovery plans vm1 and vm2 for other nodes
    model.apply(("ready", 0))  # pvc node ready hv1: refused, the fence is recovering
    model.apply(("tick", 0))  # hv1 learns it (refused keepalive), its flush runner makes it ready
    model.apply(("tick", 0))
    model.apply(("pass", 0))
    for _ in range(3):
        model.apply(("act", 0, 0))  # hv1 claims and starts vm1
    run_to(model, 20_000)  # the recovery moves vm1 and vm2; hv1 stays fenced
    assert fence_step(model, "hv1") is Step.RECOVERED


def test_the_model_finds_no_double_run_when_every_vm_stays_put() -> None:
    """A sanity check of the model itself: a healthy cluster left alone keeps every VM where it is."""
    model = Model()
    run_to(model, 30_000)
    assert {vm: where(model, vm) for vm in VMS} == {vm: [node] for vm, (node, _) in VMS.items()}
    assert "fence declared" not in model.stats and model.now_ms // ROUND_MS == 120
