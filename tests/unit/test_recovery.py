"""The recovery of a fenced node's VMs: which VMs are placed, where, and what is written (pure)."""

from __future__ import annotations

import pytest

from helpers import node_view, vm_view
from pvcd.cluster.values import NodeView
from pvcd.cluster.vm_records import (
    ActualState,
    Migration,
    MigrationMethod,
    MoveKind,
    MovePhase,
    VmState,
    VmStatus,
    VmView,
)
from pvcd.fencing.recovery import involved, plan_recovery, recovered, to_place

DEAD = "hv1"
NOW_MS = 1_000_000
FENCED = VmStatus(DEAD, ActualState.STOPPED, f"node {DEAD} was fenced")


def node(name: str, total: int = 8192, fence: str | None = None, mtime: int = NOW_MS, daemon: str = "run") -> NodeView:
    return node_view(name, total, state=(daemon, "client", "ready"), mtime=mtime, fence={"outcome": fence})


def vm(
    name: str,
    node_: str = DEAD,
    state: VmState = VmState.START,
    memory: int = 2048,
    lastnode: str | None = None,
    status: VmStatus | None = None,
    migration: Migration | None = None,
    selector: str | None = None,
) -> VmView:
    status = status or VmStatus(node_, ActualState.RUNNING)
    return vm_view(name, node_, state, status, memory, migration, (3, 2), lastnode=lastnode, node_selector=selector)


def move(target: str, phase: MovePhase, kind: MoveKind = MoveKind.MIGRATE, source: str = DEAD) -> Migration:
    return Migration("m1", kind, source, target, MigrationMethod.LIVE, phase)


def released_to(name: str, target: str, kind: MoveKind = MoveKind.MIGRATE, status: VmStatus | None = None) -> VmView:
    """A VM `DEAD` let go (simulated migration or shutdown) that `target` has not started yet."""
    lastnode = DEAD if kind == MoveKind.MIGRATE else None
    state = VmState.UNMIGRATE if kind == MoveKind.UNMIGRATE else VmState.MIGRATE
    return vm(
        name,
        target,
        state,
        lastnode=lastnode,
        status=status or VmStatus(DEAD, ActualState.STOPPED, "left"),
        migration=move(target, MovePhase.RELEASED, kind),
    )


def by_name(*views: VmView) -> dict[str, VmView]:
    return {view.name: view for view in views}


def test_a_released_move_that_has_not_arrived_is_placed_and_the_move_cleared() -> None:
    leaving = released_to("leaving", "hv2")
    plan = plan_recovery(
        DEAD, by_name(leaving), [node(DEAD, fence="confirmed"), node("hv2"), node("hv3")], NOW_MS, "mem"
    )
    assert plan.vms == ("leaving",) and set(plan.targets) == {"leaving"} and plan.unplaced == {}
    target = plan.targets["leaving"]
    assert target in ("hv2", "hv3")
    record, migration, status = recovered(leaving, DEAD, target, plan.can_finish)
    assert (record.node, record.state, record.lastnode, record.reason) == (target, VmState.START, DEAD, None)
    assert migration is None and status == FENCED


def test_the_target_of_a_cut_move_does_not_also_count_the_vm_as_arriving() -> None:
    # hv2 holds two 2 GiB VMs, hv3 one: all three fit only if "leaving" is reserved once.
    views = by_name(vm("a"), vm("b"), released_to("leaving", "hv2"))
    cluster = [node(DEAD, fence="confirmed"), node("hv2", total=4096), node("hv3", total=2048)]
    plan = plan_recovery(DEAD, views, cluster, NOW_MS, "mem")
    assert plan.unplaced == {}
    assert sorted(plan.targets.values()) == ["hv2", "hv2", "hv3"]


def test_a_vm_its_target_has_claimed_is_the_targets() -> None:
    for status in (VmStatus("hv2", ActualState.STARTING), VmStatus("hv2", ActualState.RUNNING, "live-migrated")):
        claimed = released_to("claimed", "hv2", status=status)
        assert not involved(claimed, DEAD)
        plan = plan_recovery(DEAD, by_name(claimed), [node(DEAD, fence="confirmed"), node("hv2")], NOW_MS, "mem")
        assert plan.vms == () and recovered(claimed, DEAD, "hv2", plan.can_finish) is None


def test_a_cut_move_no_node_can_take_is_left_to_a_target_that_can_still_start_it() -> None:
    leaving = released_to("leaving", "hv2")
    # hv2 is flushing (no candidate) but alive: it finishes moves to it, so it keeps the VM.
    flushing = node_view("hv2", state=("run", "client", "flush"), mtime=NOW_MS)
    plan = plan_recovery(DEAD, by_name(leaving), [node(DEAD, fence="confirmed"), flushing], NOW_MS, "mem")
    assert "leaving" in plan.unplaced and "hv2" in plan.can_finish
    assert recovered(leaving, DEAD, None, plan.can_finish) is None


@pytest.mark.parametrize("target", [node("hv2", fence="ambiguous"), node("hv2", mtime=NOW_MS - 60_000)])
def test_a_cut_move_to_a_fenced_or_late_target_goes_elsewhere_or_fails(target: NodeView) -> None:
    leaving = released_to("leaving", "hv2")
    plan = plan_recovery(DEAD, by_name(leaving), [node(DEAD, fence="confirmed"), target, node("hv3")], NOW_MS, "mem")
    assert plan.targets == {"leaving": "hv3"} and "hv2" not in plan.can_finish
    alone = plan_recovery(DEAD, by_name(leaving), [node(DEAD, fence="confirmed"), target], NOW_MS, "mem")
    assert alone.targets == {} and "leaving" in alone.unplaced
    record, migration, status = recovered(leaving, DEAD, None, alone.can_finish)
    assert (record.node, record.state) == (DEAD, VmState.FAIL) and "moving the VM to hv2" in (record.reason or "")
    assert migration is None and status == FENCED


def test_a_cut_unmigrate_keeps_the_home_it_was_heading_for() -> None:
    going_home = released_to("home", "hv2", kind=MoveKind.UNMIGRATE)
    record, _, _ = recovered(going_home, DEAD, "hv3", frozenset({"hv2", "hv3"}))
    assert (record.node, record.lastnode, record.state) == ("hv3", "hv2", VmState.START)
    record, _, _ = recovered(going_home, DEAD, "hv2", frozenset({"hv2", "hv3"}))
    assert (record.node, record.lastnode) == ("hv2", None)


def test_a_requested_move_is_released_to_a_live_target_and_placed_when_the_target_is_fenced() -> None:
    asked = vm("asked", "hv2", VmState.MIGRATE, lastnode=DEAD, migration=move("hv2", MovePhase.REQUESTED))
    assert not to_place(asked, DEAD, {"hv2"})
    record, migration, _ = recovered(asked, DEAD, None, {"hv2"})
    assert record.node == "hv2" and migration is not None and migration.phase == MovePhase.RELEASED
    assert to_place(asked, DEAD, set())
    plan = plan_recovery(
        DEAD, by_name(asked), [node(DEAD, fence="confirmed"), node("hv2", fence="failed"), node("hv3")], NOW_MS, "mem"
    )
    assert plan.targets == {"asked": "hv3"}
    # A live migration under way may already have moved the VM: it stays with its target.
    live = vm("live", "hv2", VmState.MIGRATE, migration=move("hv2", MovePhase.MIGRATING))
    assert involved(live, DEAD) and not to_place(live, DEAD, set())


def test_recovery_never_places_on_the_dead_node_or_a_fenced_one() -> None:
    views = by_name(*(vm(f"v{i}") for i in range(6)))
    cluster = [node(DEAD), node("hv2", fence="confirmed"), node("hv3", fence="fencing"), node("hv4", total=6144)]
    plan = plan_recovery(DEAD, views, cluster, NOW_MS, "mem")
    assert set(plan.targets.values()) == {"hv4"} and len(plan.targets) == 3
    assert sorted(plan.unplaced) == ["v3", "v4", "v5"]


def test_an_unknown_selector_falls_back_to_the_clusters_and_a_broken_record_stays_unplaced() -> None:
    views = by_name(vm("odd", selector="least-used"), vm("broken", memory=-5), vm("plain"))
    plan = plan_recovery(DEAD, views, [node(DEAD, fence="confirmed"), node("hv2")], NOW_MS, "mem")
    assert plan.targets == {"odd": "hv2", "plain": "hv2"}
    assert plan.unknown_selectors == {"odd": "least-used"}
    assert "cannot be planned" in plan.unplaced["broken"]
    record, _, _ = recovered(views["broken"], DEAD, None, plan.can_finish)
    assert (record.node, record.state) == (DEAD, VmState.FAIL)
