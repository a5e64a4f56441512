"""Flush and ready decisions, and the node figures the planner gets (pure); following moves (in-memory store)."""

from __future__ import annotations

from helpers import node_view, vm_view, wait_for
from pvcd.cluster.liveness import late_nodes
from pvcd.cluster.vm_records import (
    STATUS_NEW,
    ActualState,
    Migration,
    MigrationMethod,
    MoveKind,
    MovePhase,
    VmState,
    VmStatus,
)
from pvcd.placement.cluster import capacities
from pvcd.states import DomainState
from pvcd.vm.flush import (
    Command,
    CommandKind,
    Phase,
    Report,
    Trigger,
    _MoveWatches,
    command_to_run,
    fence_refusal,
    flush_pending,
    flush_plan,
    initial_domain_state,
    return_plan,
    vms_to_autostart,
    vms_to_flush,
    vms_to_return,
)
from pvcd.zk import schema
from pvcd.zk.memory import MemoryServer, MemoryStore

ME = "hv1"


def vm(name, state=VmState.START, node=ME, memory=1024, lastnode=None, autostart=False, status=None, migration=None):
    if status is None:
        status = VmStatus(node, ActualState.RUNNING) if state == VmState.START else STATUS_NEW
    return vm_view(name, node, state, status, memory, migration, lastnode=lastnode, node_autostart=autostart)


def node(name, total=8192, allocated=0, running=(), domain="ready", daemon="run", mtime=1_000_000, interval=5):
    return node_view(name, total, allocated, tuple(running), (daemon, "client", domain), mtime, interval, load=0.5)


def views(*items):
    return {v.name: v for v in items}


def test_commands_run_once_and_resume_after_a_restart():
    flush = Command("c1", CommandKind.FLUSH)
    assert command_to_run(None, None) is None
    assert command_to_run(flush, None) == flush
    done = Report("c1", CommandKind.FLUSH, Trigger.COMMAND, Phase.DONE)
    assert command_to_run(flush, done) is None
    interrupted = Report("c1", CommandKind.FLUSH, Trigger.COMMAND, Phase.RUNNING)
    assert command_to_run(flush, interrupted) == flush
    assert command_to_run(Command("c2", CommandKind.READY), done) == Command("c2", CommandKind.READY)
    # A flush the node did when it shut down does not replay the operator's last command.
    shutdown = Report("c1", CommandKind.FLUSH, Trigger.SHUTDOWN, Phase.CANCELLED)
    assert command_to_run(flush, shutdown) is None


def test_a_refused_command_is_final():
    ready = Command("c1", CommandKind.READY)
    refused = Report("c1", CommandKind.READY, Trigger.COMMAND, Phase.REFUSED, reason="node hv1 is fenced")
    assert command_to_run(ready, refused) is None
    # The operator's `pvc node ready` on a fenced node clears the fence and sends a new command.
    assert command_to_run(Command("c2", CommandKind.READY), refused) == Command("c2", CommandKind.READY)
    # A flush refused before it flushed anything does not bring the node back flushed.
    assert initial_domain_state(Report("c", CommandKind.FLUSH, Trigger.COMMAND, Phase.REFUSED)) == DomainState.READY
    assert Report.from_json(refused.to_json()) == refused


def test_a_fenced_node_may_carry_out_no_command():
    assert fence_refusal(ME, {"outcome": None}) is None
    assert fence_refusal(ME, {"outcome": None, "last": {"outcome": "confirmed"}}) is None
    for outcome in ("fencing", "confirmed", "ambiguous", "failed"):
        reason = fence_refusal(ME, {"outcome": outcome, "by": "hv3"})
        assert reason is not None and f"node {ME} is fenced ({outcome}, by hv3)" in reason
        assert f"pvc node ready {ME}" in reason


def test_initial_domain_state():
    assert initial_domain_state(None) == DomainState.READY
    assert initial_domain_state(Report("c", CommandKind.READY, Trigger.COMMAND, Phase.DONE)) == DomainState.READY
    assert initial_domain_state(Report(None, CommandKind.FLUSH, Trigger.SHUTDOWN, Phase.DONE)) == DomainState.FLUSHED


def test_json_round_trips():
    command = Command.new(CommandKind.READY)
    assert Command.from_json(command.to_json()) == command
    assert Command.from_json({"id": "x", "domain": "explode"}) is None
    report = Report("c", CommandKind.FLUSH, Trigger.COMMAND, Phase.DONE, ("a",), {"b": "why"})
    assert Report.from_json(report.to_json()) == report


def move(source, target, phase=MovePhase.REQUESTED):
    return Migration("m", MoveKind.MIGRATE, source, target, MigrationMethod.LIVE, phase)


def test_what_a_flush_moves_and_waits_for():
    state = views(
        vm("run"),
        vm("stopped", state=VmState.STOP),
        vm("failed", state=VmState.FAIL, status=VmStatus(ME, ActualState.RUNNING)),
        vm("elsewhere", node="hv2"),
        vm("leaving", state=VmState.MIGRATE, node="hv2", migration=move(ME, "hv2")),
        vm(
            "left",
            state=VmState.MIGRATE,
            node="hv2",
            status=VmStatus(ME, ActualState.STOPPED),
            migration=move(ME, "hv2", MovePhase.RELEASED),
        ),
        vm("stopping", state=VmState.SHUTDOWN),
    )
    assert [r.name for r in vms_to_flush(ME, state)] == ["run"]
    assert flush_pending(ME, state) == ["leaving", "run", "stopping"]


def test_flush_plan_spreads_and_excludes_the_flushing_node():
    state = views(*(vm(f"v{i}") for i in range(4)))
    cluster = [
        node(ME, allocated=4096, running=list(state), domain="flush"),
        node("hv2"),
        node("hv3"),
    ]
    plan = flush_plan(ME, state, cluster, frozenset(), "mem")
    assert sorted(p.node for p in plan.placements) == ["hv2", "hv2", "hv3", "hv3"]
    assert plan.unplaced == ()


def test_late_nodes_are_no_candidates():
    cluster = [node("hv2", mtime=1_000_000), node("hv3", mtime=1_009_000), node("hv4", mtime=None)]
    assert late_nodes(cluster, now_ms=1_011_000) == frozenset({"hv2", "hv4"})
    state = views(vm("v"))
    plan = flush_plan(ME, state, [node(ME, domain="flush")] + cluster, frozenset({"hv2", "hv4"}), "mem")
    assert [p.node for p in plan.placements] == ["hv3"]


def test_capacities_count_vms_on_their_way_and_forget_those_gone():
    state = views(
        vm("arriving", node="hv2", status=VmStatus(ME, ActualState.STOPPED)),
        vm("gone", node="hv3", status=VmStatus("hv3", ActualState.RUNNING)),
        vm("staying", node="hv2", status=VmStatus("hv2", ActualState.RUNNING)),
    )
    [hv2] = capacities([node("hv2", allocated=2048, running=["gone", "staying"])], state)
    # +1024 for "arriving" (assigned, not running yet), -1024 for "gone" (runs on hv3 now).
    assert hv2.memory_allocated_mib == 2048
    assert hv2.vm_count == 2
    [flushing] = capacities([node(ME, domain="unflush")], {}, treat_as_ready=ME)
    assert flushing.accepts_vms


def test_what_comes_back_on_ready():
    state = views(
        vm("back", node="hv2", lastnode=ME, status=VmStatus("hv2", ActualState.RUNNING)),
        vm("back-stopped", state=VmState.STOP, node="hv2", lastnode=ME),
        vm("busy", state=VmState.RESTART, node="hv2", lastnode=ME),
        vm("not-mine", node="hv2", lastnode="hv3"),
        vm("auto", state=VmState.STOP, autostart=True),
        vm("manual", state=VmState.STOP),
    )
    running, stopped = vms_to_return(ME, state)
    assert [r.name for r in running] == ["back"]
    assert [r.name for r in stopped] == ["back-stopped"]
    assert [r.name for r in vms_to_autostart(ME, state)] == ["auto"]
    cluster = [node(ME, domain="unflush", total=1536), node("hv2", allocated=2048, running=["back", "not-mine"])]
    plan = return_plan(ME, state, cluster, frozenset(), "mem")
    # Room for one 1024 MiB VM only: the planner takes one of the two, the other stays where it is.
    assert len(plan.placements) == 1 and len(plan.unplaced) == 1
    assert plan.placements[0].node == ME


# -- following the moves under way (in-memory store) ----------------------------------------


def test_a_move_is_over_when_its_migration_is_gone_or_is_another_moves():
    store = MemoryStore(MemoryServer())
    store.start()
    try:
        for vm in ("vm1", "vm2", "vm3"):
            store.ensure_path(schema.vm(vm))
            store.create(schema.vm_migration(vm), {"id": f"move-{vm}", "phase": "requested"})
        follow = _MoveWatches(store)
        for vm in ("vm1", "vm2", "vm3"):
            follow.add(vm, f"move-{vm}")
        follow.add("vm4", "direct-1")  # a stopped VM's move: no migration, over at once
        assert follow.ended() == {"vm4"}

        store.set(schema.vm_migration("vm1"), {"id": "move-vm1", "phase": "released"}, -1)  # same move, going on
        store.set(schema.vm_migration("vm2"), {"id": "someone-else", "phase": "requested"}, -1)
        store.delete(schema.vm_migration("vm3"))
        ended: set[str] = set()
        # The store's events come in order: once vm3's deletion is seen, vm1's change was seen before it.
        wait_for(lambda: ended.update(follow.ended()) or "vm3" in ended, 5, what="the end of vm3's move")
        assert ended == {"vm2", "vm3"} and follow.changed.is_set()

        follow.drop("vm1")
        follow.close()
    finally:
        store.stop()
