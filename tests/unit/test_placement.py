"""Unit tests of the target selectors and the batch planner (pure, no I/O)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvcd.cluster.values import NodeView, StateRecord
from pvcd.cluster.vm_records import VmRecord, VmState
from pvcd.placement import cluster as cluster_placement
from pvcd.placement.planner import (
    Placement,
    Reason,
    Unplaced,
    batch_order,
    greedy_one_at_a_time,
    plan_batch,
    reserve,
)
from pvcd.placement.selectors import (
    SELECTORS,
    NodeCapacity,
    VmRequest,
    candidates,
    rank,
)
from pvcd.states import DomainState

GIB = 1024


def node(
    name: str,
    *,
    total: int = 64 * GIB,
    allocated: int = 0,
    vcpus: int = 0,
    load: float = 0.0,
    vms: int = 0,
    daemon: str = "run",
    domain: str = "ready",
) -> NodeCapacity:
    return NodeCapacity(name, daemon, domain, total, allocated, vcpus, load, vms)


def vm(
    name: str,
    memory: int = 4 * GIB,
    vcpus: int = 2,
    *,
    current: str | None = "dead",
    limit: tuple[str, ...] = (),
    selector: str | None = None,
    target: str | None = None,
) -> VmRequest:
    return VmRequest(name, memory, vcpus, current, limit, selector, target)


def names(ranked: list[tuple[NodeCapacity, float]]) -> list[str]:
    return [n.name for n, _ in ranked]


# --- selectors -------------------------------------------------------------

# Each node is best under exactly one selector.
MIXED = [
    node("a", allocated=8 * GIB, vcpus=40, load=9.0, vms=30),  # most memory left
    node("b", allocated=40 * GIB, vcpus=4, load=8.0, vms=20),  # fewest vCPUs
    node("c", allocated=30 * GIB, vcpus=30, load=0.5, vms=25),  # lowest load
    node("d", allocated=50 * GIB, vcpus=20, load=4.0, vms=2),  # fewest VMs
]


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("mem", ["a", "c", "b", "d"]),
        ("vcpus", ["b", "d", "c", "a"]),
        ("load", ["c", "d", "b", "a"]),
        ("vms", ["d", "b", "c", "a"]),
    ],
)
def test_each_selector_orders_by_its_figure(selector: str, expected: list[str]) -> None:
    assert names(rank(selector, vm("v"), MIXED)) == expected


def test_scores_are_the_selectors_figures() -> None:
    request = vm("v", memory=2 * GIB)
    assert rank("mem", request, MIXED)[0][1] == 64 * GIB - 8 * GIB - 2 * GIB
    assert rank("vcpus", request, MIXED)[0][1] == 4
    assert rank("load", request, MIXED)[0][1] == 0.5
    assert rank("vms", request, MIXED)[0][1] == 2


@pytest.mark.parametrize("selector", SELECTORS)
def test_ties_go_to_more_free_memory_then_name(selector: str) -> None:
    # Same vCPUs, load and VM count everywhere; "y" and "z" also tie on memory.
    nodes = [
        node("z", allocated=4 * GIB, vcpus=8, load=1.0, vms=3),
        node("x", allocated=16 * GIB, vcpus=8, load=1.0, vms=3),
        node("y", allocated=4 * GIB, vcpus=8, load=1.0, vms=3),
    ]
    assert names(rank(selector, vm("v"), nodes)) == ["y", "z", "x"]
    assert names(rank(selector, vm("v"), list(reversed(nodes)))) == ["y", "z", "x"]


def test_unknown_selector_is_rejected_naming_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="mem, vcpus, load, vms"):
        rank("random", vm("v"), MIXED)
    with pytest.raises(ValueError, match="valid selectors"):
        plan_batch([vm("v")], MIXED, "least-used")
    with pytest.raises(ValueError, match="valid selectors"):
        vm("v", selector="none")


# --- candidates ------------------------------------------------------------


def test_node_limit_is_honoured() -> None:
    assert [n.name for n in candidates(vm("v", limit=("b", "d", "ghost")), MIXED)] == ["b", "d"]


def test_empty_node_limit_means_any_node() -> None:
    assert len(candidates(vm("v", limit=()), MIXED)) == 4


def test_current_node_is_never_a_candidate() -> None:
    assert [n.name for n in candidates(vm("v", current="a"), MIXED)] == ["b", "c", "d"]


@pytest.mark.parametrize(
    ("daemon", "domain"),
    [
        ("init", "ready"),
        ("stop", "ready"),
        ("dead", "ready"),
        ("shutdown", "ready"),
        ("run", "flush"),
        ("run", "flushed"),
        ("run", "unflush"),
        ("run", "fenced"),
        ("dead", "fenced"),
    ],
)
def test_nodes_not_run_and_ready_are_never_chosen(daemon: str, domain: str) -> None:
    # The unavailable node is by far the emptiest: every selector would pick it.
    nodes = [
        node("busy", allocated=32 * GIB, vcpus=30, load=5.0, vms=10),
        node("empty", daemon=daemon, domain=domain),
    ]
    assert [n.name for n in candidates(vm("v"), nodes)] == ["busy"]
    for selector in SELECTORS:
        plan = plan_batch([vm("v1"), vm("v2")], nodes, selector)
        assert {p.node for p in plan.placements} == {"busy"}


def test_memory_must_fit_exactly_or_better() -> None:
    nodes = [node("exact", allocated=60 * GIB), node("short", allocated=60 * GIB + 1)]
    assert [n.name for n in candidates(vm("v", memory=4 * GIB), nodes)] == ["exact"]


# --- batch planner ---------------------------------------------------------


def equal_nodes(count: int = 5) -> list[NodeCapacity]:
    return [node(f"hv{i}") for i in range(1, count + 1)]


def equal_vms(count: int = 20) -> list[VmRequest]:
    return [vm(f"vm{i:02d}") for i in range(count)]


@pytest.mark.parametrize("selector", SELECTORS)
def test_a_batch_spreads_evenly(selector: str) -> None:
    plan = plan_batch(equal_vms(), equal_nodes(), selector)
    assert not plan.unplaced
    assert Counter(p.node for p in plan.placements) == {f"hv{i}": 4 for i in range(1, 6)}
    assert all(n.memory_allocated_mib == 16 * GIB and n.vm_count == 4 for n in plan.nodes)


@pytest.mark.parametrize("selector", ["mem", "vms"])
def test_greedy_baseline_piles_the_batch_onto_one_node(selector: str) -> None:
    plan = greedy_one_at_a_time(equal_vms(), equal_nodes(), selector)
    assert Counter(p.node for p in plan.placements) == {"hv1": 20}
    # 20 x 4 GiB on a 64 GiB node: the baseline overcommits, the planner never does.
    assert plan.overcommitted_nodes == ("hv1",)
    assert plan_batch(equal_vms(), equal_nodes(), selector).overcommitted_nodes == ()


def test_load_selector_spreads_by_estimated_load() -> None:
    nodes = [node("idle", load=0.0), node("warm", load=3.0)]
    vms = [vm(f"v{i}", vcpus=2) for i in range(4)]
    plan = plan_batch(vms, nodes, "load")
    # idle 0 -> 2 -> 4; warm 3 -> 5: idle, idle, warm, then idle at 4 < 5.
    assert [p.node for p in plan.placements] == ["idle", "idle", "warm", "idle"]
    assert {n.name: n.load for n in plan.nodes} == {"idle": 6.0, "warm": 5.0}
    # Without the estimate, "load" sends the whole batch to the idlest node.
    assert {p.node for p in plan_batch(vms, nodes, "load", load_per_vcpu=0.0).placements} == {"idle"}


def test_reservation_counts_every_figure_and_leaves_the_source_alone() -> None:
    nodes = [node("src", allocated=8 * GIB, vcpus=4, vms=2), node("dst", allocated=GIB, vcpus=1, load=0.5, vms=1)]
    plan = plan_batch([vm("v", memory=8 * GIB, vcpus=4, current="src")], nodes, "mem")
    assert plan.nodes == (nodes[0], node("dst", allocated=9 * GIB, vcpus=5, load=4.5, vms=2))


def test_biggest_vms_are_placed_first() -> None:
    # 4 GiB free per node; placed in input order the small VMs would split
    # across both nodes and leave no room for the 4 GiB one.
    nodes = [node("a", total=4 * GIB), node("b", total=4 * GIB)]
    vms = [vm("small1", memory=2 * GIB), vm("small2", memory=2 * GIB), vm("big", memory=4 * GIB)]
    plan = plan_batch(vms, nodes, "mem")
    assert not plan.unplaced
    assert [(p.vm, p.node) for p in plan.placements] == [("big", "a"), ("small1", "b"), ("small2", "b")]


def test_batch_order_puts_targets_first_then_biggest() -> None:
    vms = [vm("c", GIB, 1), vm("b", 8 * GIB, 1), vm("a", 8 * GIB, 4), vm("t", GIB, 1, target="x")]
    assert [v.name for v in batch_order(vms)] == ["t", "a", "b", "c"]


def test_a_vm_that_fits_nowhere_is_unplaced_and_the_rest_are_placed() -> None:
    nodes = [node("a", total=16 * GIB), node("b", total=16 * GIB, allocated=4 * GIB)]
    vms = [vm("huge", memory=32 * GIB), vm("v1"), vm("v2")]
    plan = plan_batch(vms, nodes, "mem")
    assert [p.vm for p in plan.placements] == ["v1", "v2"]
    [unplaced] = plan.unplaced
    assert unplaced.vm == "huge" and unplaced.reason is Reason.NO_MEMORY
    assert "32768 MiB" in unplaced.detail and "16384 MiB (a)" in unplaced.detail


def test_memory_runs_out_part_way_through_a_batch() -> None:
    plan = plan_batch(equal_vms(6), [node("a", total=8 * GIB), node("b", total=12 * GIB)], "mem")
    assert Counter(p.node for p in plan.placements) == {"a": 2, "b": 3}
    assert [u.reason for u in plan.unplaced] == [Reason.NO_MEMORY]
    assert plan.overcommitted_nodes == ()


def test_unplaced_reason_no_candidate_in_node_limit() -> None:
    nodes = [node("a"), node("b", domain="flushed")]
    plan = plan_batch([vm("v", limit=("b", "c")), vm("w")], nodes, "mem")
    assert [(u.vm, u.reason) for u in plan.unplaced] == [("v", Reason.NO_NODE_IN_LIMIT)]
    assert [p.vm for p in plan.placements] == ["w"]


def test_unplaced_reason_no_ready_node() -> None:
    nodes = [node("a", daemon="dead", domain="fenced"), node("b", domain="flush"), node("c")]
    plan = plan_batch([vm("v", current="c")], nodes, "mem")
    assert [(u.vm, u.reason) for u in plan.unplaced] == [("v", Reason.NO_READY_NODE)]


def test_single_vm_plan_takes_the_best_ranked_node() -> None:
    for selector in SELECTORS:
        request = vm("v", limit=("a", "b", "c"))
        [placement] = plan_batch([request], MIXED, selector).placements
        ranked = rank(selector, request, MIXED)
        assert placement == Placement("v", ranked[0][0].name, selector, tuple((n.name, s) for n, s in ranked))


def test_per_vm_selector_overrides_the_default() -> None:
    plan = plan_batch([vm("v", selector="vms"), vm("w", memory=GIB)], MIXED, "mem")
    assert {p.vm: (p.node, p.selector) for p in plan.placements} == {"v": ("d", "vms"), "w": ("a", "mem")}


def test_duplicate_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate VM names: v"):
        plan_batch([vm("v"), vm("v")], MIXED, "mem")
    with pytest.raises(ValueError, match="duplicate node names: a"):
        plan_batch([vm("v")], [node("a"), node("a")], "mem")


def test_vm_request_accepts_a_list_limit_and_rejects_negative_sizes() -> None:
    assert VmRequest("v", 1, 1, None, ["a", "b"]).node_limit == ("a", "b")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="negative"):
        vm("v", memory=-1)


# --- explicit targets ------------------------------------------------------


def test_valid_target_is_honoured_over_the_selector() -> None:
    plan = plan_batch([vm("v", target="d")], MIXED, "mem")
    [placement] = plan.placements
    assert (placement.node, placement.requested) == ("d", True)
    assert placement.scores[0][0] == "a"  # the selector's own ranking is still shown


def test_target_outside_node_limit_is_refused() -> None:
    plan = plan_batch([vm("v", limit=("a", "b"), target="c")], MIXED, "mem")
    assert plan.placements == ()
    assert [(u.reason, u.detail) for u in plan.unplaced] == [
        (Reason.TARGET_OUTSIDE_LIMIT, "requested target 'c' is outside node_limit ['a', 'b']")
    ]


def test_target_without_enough_memory_is_refused() -> None:
    plan = plan_batch([vm("v", memory=16 * GIB, target="d")], MIXED, "mem")
    assert [u.reason for u in plan.unplaced] == [Reason.TARGET_NO_MEMORY]
    assert "14336 MiB unallocated" in plan.unplaced[0].detail


@pytest.mark.parametrize(
    ("target", "reason"),
    [("ghost", Reason.TARGET_UNKNOWN), ("down", Reason.TARGET_NOT_READY), ("a", Reason.TARGET_IS_CURRENT)],
)
def test_other_invalid_targets_are_refused(target: str, reason: Reason) -> None:
    nodes = [*MIXED, node("down", daemon="stop")]
    plan = plan_batch([vm("v", current="a", target=target)], nodes, "mem")
    assert [u.reason for u in plan.unplaced] == [reason]


def test_targeted_vms_get_their_room_before_selector_placed_ones() -> None:
    nodes = [node("a", total=8 * GIB), node("b", total=4 * GIB)]
    vms = [vm("big", memory=8 * GIB), vm("pinned", memory=4 * GIB, target="a")]
    plan = plan_batch(vms, nodes, "mem")
    assert [(p.vm, p.node) for p in plan.placements] == [("pinned", "a")]
    assert [(u.vm, u.reason) for u in plan.unplaced] == [("big", Reason.NO_MEMORY)]


# --- properties ------------------------------------------------------------

NODE_NAMES = [f"n{i}" for i in range(8)]
DAEMON_STATES = ["run", "run", "run", "init", "stop", "dead"]
DOMAIN_STATES = ["ready", "ready", "ready", "flush", "flushed", "fenced"]

nodes_strategy = st.lists(
    st.builds(
        NodeCapacity,
        name=st.sampled_from(NODE_NAMES),
        daemon_state=st.sampled_from(DAEMON_STATES),
        domain_state=st.sampled_from(DOMAIN_STATES),
        memory_total_mib=st.integers(0, 64),
        memory_allocated_mib=st.integers(0, 72),
        vcpus_allocated=st.integers(0, 20),
        load=st.floats(0, 16, allow_nan=False).map(lambda x: round(x, 2)),
        vm_count=st.integers(0, 10),
    ),
    max_size=6,
    unique_by=lambda n: n.name,
)

maybe_node = st.none() | st.sampled_from([*NODE_NAMES, "ghost"])

vms_strategy = st.lists(
    st.builds(
        VmRequest,
        name=st.sampled_from([f"v{i}" for i in range(25)]),
        memory_mib=st.integers(0, 24),
        vcpus=st.integers(0, 8),
        current_node=maybe_node,
        node_limit=st.lists(st.sampled_from(NODE_NAMES), max_size=4, unique=True).map(tuple),
        selector=st.none() | st.sampled_from(SELECTORS),
        target=st.none() | maybe_node,
    ),
    max_size=20,
    unique_by=lambda v: v.name,
)


@settings(max_examples=400, deadline=None)
@given(vms=vms_strategy, nodes=nodes_strategy, default=st.sampled_from(SELECTORS))
def test_plan_properties(vms: list[VmRequest], nodes: list[NodeCapacity], default: str) -> None:
    plan = plan_batch(vms, nodes, default)

    # Every VM is placed or unplaced, exactly once.
    decided = [p.vm for p in plan.placements] + [u.vm for u in plan.unplaced]
    assert sorted(decided) == sorted(v.name for v in vms)

    # No node is taken past its memory total by the plan.
    before = {n.name: n for n in nodes}
    for after in plan.nodes:
        if after != before[after.name]:
            assert after.memory_allocated_mib <= after.memory_total_mib

    # Replaying the placements in order: each node was a candidate at that
    # moment, and the selector's best one unless explicitly requested.
    requests = {v.name: v for v in vms}
    state = {n.name: n for n in nodes}
    for placement in plan.placements:
        request = requests[placement.vm]
        current = list(state.values())
        assert placement.node in {n.name for n in candidates(request, current)}
        ranked = rank(placement.selector, request, current)
        assert placement.scores == tuple((n.name, s) for n, s in ranked)
        if placement.requested:
            assert placement.node == request.target
        else:
            assert request.target is None and placement.node == ranked[0][0].name
        state[placement.node] = reserve(state[placement.node], request)
    assert plan.nodes == tuple(state[n.name] for n in nodes)

    # Deterministic: the same input, in any order, gives the same plan.
    assert plan_batch(vms, nodes, default) == plan
    assert plan_batch(list(reversed(vms)), nodes, default) == plan


@settings(max_examples=200, deadline=None)
@given(vms=vms_strategy, nodes=nodes_strategy, default=st.sampled_from(SELECTORS))
def test_unplaced_vms_had_no_candidate_left(vms: list[VmRequest], nodes: list[NodeCapacity], default: str) -> None:
    plan = plan_batch(vms, nodes, default)
    requests = {v.name: v for v in vms}
    for unplaced in plan.unplaced:
        request = requests[unplaced.vm]
        if request.target is None:
            # Nothing can take it even after the plan (capacity only shrinks as the
            # batch is placed); the reasons other than memory hold from the start.
            assert unplaced.reason in (Reason.NO_MEMORY, Reason.NO_NODE_IN_LIMIT, Reason.NO_READY_NODE)
            assert not candidates(request, plan.nodes)
            if unplaced.reason is not Reason.NO_MEMORY:
                assert not candidates(request, nodes)
        else:
            assert unplaced.reason.value.startswith("target_")


# --- the planner's input from ZooKeeper (pvcd.placement.cluster) -------------------


def cluster_node(name: str, fence: dict | None = None, domain: str = "ready") -> NodeView:
    keepalive = {
        "interval": 5,
        "memory": {"total": 64 * GIB, "allocated": 0},
        "vcpus": {"allocated": 0},
        "load": 0.0,
        "vms": {"count": 0, "running": []},
    }
    return NodeView(name, {}, StateRecord("run", "client", domain), keepalive, 1_000_000, 3, fence or {"outcome": None})


def record(name: str, node: str = "dead", selector: str | None = None, memory: int = 4 * GIB) -> VmRecord:
    return VmRecord(
        name=name,
        uuid=f"u-{name}",
        xml="<domain/>",
        memory_mib=memory,
        vcpus=2,
        state=VmState.START,
        node=node,
        node_selector=selector,
    )


def test_a_fenced_node_that_still_says_ready_takes_no_vms() -> None:
    # hv2 ignores its fence (its own state record still says ready); hv3 has more room used.
    ignoring = cluster_node("hv2", fence={"outcome": "confirmed", "by": "hv1"})
    nodes = [ignoring, cluster_node("hv3"), cluster_node("hv4", fence={"outcome": "fencing"})]
    figures = cluster_placement.capacities(nodes, {})
    assert [n.name for n in figures if n.accepts_vms] == ["hv3"]
    plan = plan_batch([vm("v1"), vm("v2")], figures, "mem")
    assert {p.node for p in plan.placements} == {"hv3"}
    # Not even a node planning its own return may treat itself as ready while fenced.
    returning = cluster_node("hv2", {"outcome": "confirmed"}, "unflush")
    [fenced] = cluster_placement.capacities([returning], {}, treat_as_ready="hv2")
    assert not fenced.accepts_vms and fenced.domain_state == DomainState.FENCED
    # Once an operator cleared the fence (outcome None, the old one kept as `last`), it takes VMs.
    readied = cluster_node("hv2", {"outcome": None, "last": {"outcome": "confirmed"}})
    [cleared] = cluster_placement.capacities([readied], {})
    assert cleared.accepts_vms


def test_a_record_with_an_unknown_selector_is_planned_with_the_clusters() -> None:
    odd = record("odd", selector="least-used")
    assert cluster_placement.unknown_selector(odd) == "least-used"
    assert cluster_placement.unknown_selector(record("fine", selector="vms")) is None
    request = cluster_placement.vm_request(odd)
    assert isinstance(request, VmRequest) and request.selector is None
    broken = cluster_placement.vm_request(record("broken", memory=-1))
    assert isinstance(broken, Unplaced) and broken.reason == Reason.INVALID_RECORD
    plan = cluster_placement.plan_requests(
        [request, broken, cluster_placement.vm_request(record("other"))],
        cluster_placement.capacities([cluster_node("hv2")], {}),
        "mem",
    )
    assert sorted(p.vm for p in plan.placements) == ["odd", "other"]
    assert [u.vm for u in plan.unplaced] == ["broken"]
