"""The fence state machine: what each verdict leads to, and how any primary carries a fence on."""

from __future__ import annotations

import pytest

from pvcd.fencing.flow import (
    UNFINISHED,
    Fence,
    Next,
    NodeFencing,
    Policy,
    Step,
    acknowledges,
    after_outcome,
    next_action,
    watchdog_expired,
)
from pvcd.fencing.outcome import FenceOutcome
from pvcd.fencing.storage_cut import CutOutcome, StorageCut, failed

WATCHDOG = NodeFencing(keepalive_interval=1, fence_intervals=3, watchdog_timeout=4)
NO_WATCHDOG = NodeFencing(keepalive_interval=1, fence_intervals=3, watchdog_timeout=None)
MIGRATE_ALL = Policy("migrate", "migrate")


def fence(step: Step, mtime: int | None = 10_000, confirmed: bool = False) -> Fence:
    return Fence("f1", step, "failed", mtime, confirmed)


@pytest.mark.parametrize(
    "outcome,policy,node,step,state",
    [
        (FenceOutcome.CONFIRMED, MIGRATE_ALL, NO_WATCHDOG, Step.RECOVERING, "fenced"),
        (FenceOutcome.CONFIRMED, Policy(None, "migrate"), WATCHDOG, Step.HELD, "fenced"),
        (FenceOutcome.AMBIGUOUS, MIGRATE_ALL, WATCHDOG, Step.WAITING_OPERATOR, "fence-ambiguous"),
        (FenceOutcome.FAILED, Policy("migrate", None), WATCHDOG, Step.WAITING_OPERATOR, "fence-failed"),
        (FenceOutcome.FAILED, MIGRATE_ALL, NO_WATCHDOG, Step.WAITING_OPERATOR, "fence-failed"),
        (FenceOutcome.FAILED, MIGRATE_ALL, None, Step.WAITING_OPERATOR, "fence-failed"),
        (FenceOutcome.FAILED, MIGRATE_ALL, WATCHDOG, Step.WAITING_WATCHDOG, "fence-failed"),
    ],
)
def test_after_outcome(outcome, policy, node, step, state):
    after = after_outcome(outcome, policy, node)
    assert (after.step, after.node_state) == (step, state)


def test_a_failed_fence_without_watchdog_says_why_it_waits():
    assert "no armed watchdog" in after_outcome(FenceOutcome.FAILED, MIGRATE_ALL, NO_WATCHDOG).reason


def test_watchdog_window_counts_from_the_last_accepted_keepalive_on_zookeepers_clock():
    # timeout 4 s + one interval for the pet bound + one interval of margin = 6 s
    assert WATCHDOG.watchdog_window == 6
    assert not watchdog_expired(fence(Step.WAITING_WATCHDOG), WATCHDOG, 10_000 + 5_999)
    assert watchdog_expired(fence(Step.WAITING_WATCHDOG), WATCHDOG, 10_000 + 6_000)
    assert not watchdog_expired(fence(Step.WAITING_WATCHDOG), NO_WATCHDOG, 10_000 + 10**9)
    assert not watchdog_expired(fence(Step.WAITING_WATCHDOG, mtime=None), WATCHDOG, 10**12)


@pytest.mark.parametrize(
    "step,confirmed,now,expected",
    [
        (Step.DECLARED, False, 0, Next.CUT_STORAGE),
        (Step.CUTTING_STORAGE, False, 0, Next.CUT_STORAGE),
        (Step.POWERING_OFF, False, 0, Next.POWER_OFF),
        (Step.RECOVERING, False, 0, Next.RECOVER),
        (Step.RECOVERED, True, 10**12, Next.NOTHING),
        (Step.HELD, True, 10**12, Next.NOTHING),
        (Step.WAITING_OPERATOR, False, 10**12, Next.NOTHING),
        (Step.WAITING_OPERATOR, True, 0, Next.RECOVER),
        (Step.WAITING_WATCHDOG, False, 15_999, Next.NOTHING),
        (Step.WAITING_WATCHDOG, False, 16_000, Next.RECOVER),
        (Step.WAITING_WATCHDOG, True, 0, Next.RECOVER),
    ],
)
def test_next_action(step, confirmed, now, expected):
    assert next_action(fence(step, confirmed=confirmed), WATCHDOG, now) == expected


def test_records_read_safely():
    assert Fence.from_record({"outcome": None}) is None
    assert Fence.from_record("garbage") is None
    unknown = Fence.from_record({"outcome": "failed", "step": "exploded", "id": "x"})
    assert unknown is not None and unknown.step == Step.WAITING_OPERATOR
    old_in_progress = Fence.from_record({"outcome": "fencing"})
    assert old_in_progress is not None and old_in_progress.step == Step.DECLARED
    assert Fence.from_record({"outcome": "confirmed", "recovered": True}).step == Step.RECOVERED  # type: ignore[union-attr]


def test_node_fencing_from_json_refuses_nonsense():
    assert NodeFencing.from_json(WATCHDOG.to_json()) == WATCHDOG
    assert NodeFencing.from_json(NO_WATCHDOG.to_json()) == NO_WATCHDOG
    for bad in (
        None,
        [],
        {"keepalive_interval": "5", "fence_intervals": 6},
        {"keepalive_interval": 0, "fence_intervals": 6},
        {"keepalive_interval": 5, "fence_intervals": True},
        {"keepalive_interval": 5, "fence_intervals": -1},
        {"keepalive_interval": 5, "fence_intervals": 6, "watchdog_timeout": 0},
    ):
        assert NodeFencing.from_json(bad) is None


def test_a_node_knows_a_fence_by_its_id_not_by_a_record_version():
    current = Fence("new", Step.RECOVERING, "confirmed", 1)
    assert acknowledges(None, None)
    assert acknowledges(current, "new")
    assert not acknowledges(current, "old")
    assert not acknowledges(current, None)


WHOLE = StorageCut(CutOutcome.CONFIRMED, "cut", whole=True, entries=("10.0.3.12:0/0",))
PARTIAL = StorageCut(CutOutcome.CONFIRMED, "cut", whole=False, entries=("10.0.3.12:0/77",))


@pytest.mark.parametrize(
    "outcome,policy,node,storage,step",
    [
        # The rule: failed_fence migrate + BMC failed + every client cut off and every disk on Ceph.
        (FenceOutcome.FAILED, MIGRATE_ALL, NO_WATCHDOG, WHOLE, Step.RECOVERING),
        (FenceOutcome.FAILED, MIGRATE_ALL, WATCHDOG, WHOLE, Step.RECOVERING),
        # Only some clients cut (an IP shared with another node): the watchdog rule as before.
        (FenceOutcome.FAILED, MIGRATE_ALL, WATCHDOG, PARTIAL, Step.WAITING_WATCHDOG),
        (FenceOutcome.FAILED, MIGRATE_ALL, NO_WATCHDOG, PARTIAL, Step.WAITING_OPERATOR),
        (FenceOutcome.FAILED, MIGRATE_ALL, WATCHDOG, failed("no answer from Ceph within 10s"), Step.WAITING_WATCHDOG),
        # failed_fence None, or an ambiguous BMC, still wait for the operator whatever storage proved.
        (FenceOutcome.FAILED, Policy("migrate", None), WATCHDOG, WHOLE, Step.WAITING_OPERATOR),
        (FenceOutcome.AMBIGUOUS, MIGRATE_ALL, WATCHDOG, WHOLE, Step.WAITING_OPERATOR),
        # A confirmed power off needs nothing from storage.
        (FenceOutcome.CONFIRMED, MIGRATE_ALL, NO_WATCHDOG, failed("no answer"), Step.RECOVERING),
    ],
)
def test_a_storage_cut_that_covers_the_node_lets_a_failed_fence_recover_at_once(outcome, policy, node, storage, step):
    after = after_outcome(outcome, policy, node, storage)
    assert after.step == step
    if step is Step.RECOVERING and outcome is FenceOutcome.FAILED:
        assert "blocklisted" in after.reason


def test_the_storage_step_comes_first_and_is_resumed_by_any_primary():
    assert next_action(fence(Step.DECLARED), WATCHDOG, 0) is Next.CUT_STORAGE
    assert next_action(fence(Step.CUTTING_STORAGE), WATCHDOG, 0) is Next.CUT_STORAGE
    assert Step.CUTTING_STORAGE in UNFINISHED
