"""Dead-node detection, the storm guard, and the self-fence window."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pvcd.cluster.liveness import LivenessTracker, NodeStatus, Verdict, dead_nodes, decide
from pvcd.fencing.flow import NodeFencing
from pvcd.fencing.policy import should_self_fence

INTERVAL = 5
WINDOW = 6


def cluster(
    n: int,
    states: dict[str, str] | None = None,
    pending: tuple[str, ...] = (),
    interval: float = INTERVAL,
    window: int = WINDOW,
    own: dict[str, NodeFencing | None] | None = None,
) -> list[NodeStatus]:
    states = states or {}
    own = own or {}
    fencing = NodeFencing(interval, window, None)
    return [
        NodeStatus(name, states.get(name, "run"), name in pending, own.get(name, fencing))
        for name in (f"hv{i}" for i in range(1, n + 1))
    ]


def tracker_with(n: int, now: float, silent: dict[str, float]) -> LivenessTracker:
    tracker = LivenessTracker()
    for i in range(1, n + 1):
        name = f"hv{i}"
        tracker.observe(name, 1, now - silent.get(name, 0.0))
    return tracker


def test_a_node_is_dead_only_after_the_whole_window():
    now = 1000.0
    tracker = tracker_with(3, now, {"hv2": INTERVAL * WINDOW - 0.1, "hv3": INTERVAL * WINDOW})
    assert dead_nodes(cluster(3), tracker, now, me="hv1") == ["hv3"]


def test_silence_is_measured_from_when_the_watcher_saw_the_version_change():
    tracker = LivenessTracker()
    tracker.observe("hv2", 7, now=100.0)
    tracker.observe("hv2", 7, now=125.0)  # the same version again: still silent since 100
    assert tracker.silent_for("hv2", 131.0) == 31.0
    tracker.observe("hv2", 8, now=131.0)
    assert tracker.silent_for("hv2", 131.0) == 0.0


def test_unknown_stopped_and_self_are_never_dead():
    now = 1000.0
    tracker = tracker_with(4, now, {"hv1": 999, "hv2": 999, "hv3": 999})
    tracker.forget("hv4")
    nodes = cluster(4, states={"hv2": "stop", "hv3": "shutdown"})
    assert dead_nodes(nodes, tracker, now, me="hv1") == []


def test_fence_intervals_zero_disables_fencing_of_that_node():
    tracker = tracker_with(3, 1000.0, {"hv3": 1e6})
    assert decide(cluster(3, window=0), tracker, 1000.0, "hv1", maintenance=False).verdict == Verdict.NOTHING


def test_each_node_is_judged_by_its_own_published_window():
    now = 1000.0
    tracker = tracker_with(4, now, {"hv2": 10.0, "hv3": 10.0, "hv4": 1e6})
    own = {"hv2": NodeFencing(1, 3, None), "hv3": NodeFencing(5, 6, None), "hv4": None}
    assert dead_nodes(cluster(4, own=own), tracker, now, me="hv1") == ["hv2"]


def test_maintenance_blocks_fencing():
    tracker = tracker_with(3, 1000.0, {"hv3": 1e6})
    decision = decide(cluster(3), tracker, 1000.0, "hv1", maintenance=True)
    assert decision.verdict == Verdict.MAINTENANCE and decision.dead == ("hv3",) and decision.target is None


def test_one_fence_at_a_time_in_name_order():
    tracker = tracker_with(5, 1000.0, {"hv4": 1e6, "hv2": 1e6})
    decision = decide(cluster(5), tracker, 1000.0, "hv1", maintenance=False)
    assert decision.verdict == Verdict.FENCE and decision.target == "hv2" and decision.dead == ("hv2", "hv4")
    after = decide(cluster(5, pending=("hv2",)), tracker, 1000.0, "hv1", maintenance=False)
    assert after.target == "hv4"


def test_storm_guard_three_of_five():
    tracker = tracker_with(5, 1000.0, {"hv2": 1e6, "hv3": 1e6, "hv4": 1e6})
    decision = decide(cluster(5), tracker, 1000.0, "hv1", maintenance=False)
    assert decision.verdict == Verdict.STORM and decision.target is None
    assert "3 of 5" in decision.reason


def test_storm_share_is_configurable():
    tracker = tracker_with(5, 1000.0, {"hv2": 1e6, "hv3": 1e6})
    assert decide(cluster(5), tracker, 1000.0, "hv1", False, storm_share=0.3).verdict == Verdict.STORM


@given(st.lists(st.floats(min_value=0, max_value=100), min_size=2, max_size=12), st.integers(1, 10))
def test_never_more_than_one_target_and_never_a_live_node(silences, fence_intervals):
    n = len(silences)
    now = 500.0
    tracker = tracker_with(n, now, {f"hv{i + 1}": s for i, s in enumerate(silences)})
    decision = decide(cluster(n, interval=1.0, window=fence_intervals), tracker, now, "hv1", maintenance=False)
    if decision.target is not None:
        assert tracker.silent_for(decision.target, now) >= fence_intervals
        assert decision.target != "hv1"
        assert len(decision.dead) <= 0.5 * n


def test_self_fence_window():
    assert not should_self_fence(100, 0, 5)
    assert not should_self_fence(14.9, 3, 5)
    assert should_self_fence(15, 3, 5)


def test_storm_guard_counts_nodes_about_to_be_dead():
    # hv2 crossed the window; hv3 and hv4 fell silent a moment later, as a partition would do.
    now = 1000.0
    tracker = tracker_with(5, now, {"hv2": 3.0, "hv3": 2.5, "hv4": 2.2})
    decision = decide(cluster(5, interval=1.0, window=3), tracker, now, "hv1", maintenance=False)
    assert decision.verdict == Verdict.STORM and decision.dead == ("hv2", "hv3", "hv4")


def test_one_late_neighbour_does_not_make_a_storm():
    now = 1000.0
    tracker = tracker_with(5, now, {"hv2": 3.0, "hv3": 2.5})
    decision = decide(cluster(5, interval=1.0, window=3), tracker, now, "hv1", maintenance=False)
    assert decision.verdict == Verdict.FENCE and decision.target == "hv2"
