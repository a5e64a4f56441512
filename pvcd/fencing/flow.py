"""The fence of one node as a resumable state machine (pure).

A fence lives in the node's fence record in ZooKeeper, and every step is
written there before the next one starts, so that any primary — the one that
began the fence or the one that took over after it died — reads the record and
carries on from where it stands. Nothing here does I/O or reads a clock: the
fencer passes ZooKeeper's time in.

Steps::

    declared ─► cutting-storage ─► powering-off ─┬─► recovering ─► recovered
                                                 ├─► waiting-watchdog ─► recovering
                                                 ├─► waiting-operator ─► recovering
                                                 └─► held (no recovery by configuration)

`cutting-storage` blocklists the node's Ceph clients and breaks their locks on its VMs' volumes
(`storage_cut`); its result is written as the record's `storage` together with the next step.
Without managed storage it records `skipped`.

The BMC's verdict (`outcome`: confirmed, failed, ambiguous) is written in the
same write as the step it leads to, so no record ever holds an outcome whose
consequence is undecided.

Invariants, and why:

- A VM of the fenced node is restarted elsewhere only once its host is known
  not to run it: the BMC confirmed the power off, an operator confirmed it, or
  the node's own armed watchdog has had time to reset the host since the last
  keepalive ZooKeeper accepted from it, or — with `failed_fence: migrate` and a BMC that failed —
  the storage step proved every Ceph client of the node cut off and every disk of its VMs on
  Ceph, so that a node still running cannot write any of them. Nothing else (a self-fence thread
  inside the very daemon that may be hung, an IPMI answer that proves nothing)
  allows it.
- Resuming is always safe to repeat: powering off a node twice is harmless,
  and the recovery only moves VMs still assigned to the dead node.
- A fence is declared only if the node's keepalive has not moved since it was
  judged dead; the fencer checks that in the same ZooKeeper transaction that
  writes `declared`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeGuard

from pvcd.fencing.outcome import FenceOutcome
from pvcd.fencing.storage_cut import CutOutcome, StorageCut

MIGRATE = "migrate"
IN_PROGRESS = "fencing"
"""The `outcome` a record carries until the BMC's answers are judged."""
WATCHDOG_MARGIN_INTERVALS = 1
"""Beyond the watchdog's timeout and the pet bound: scheduling slack on the dead host."""


class Step(StrEnum):
    DECLARED = "declared"
    CUTTING_STORAGE = "cutting-storage"
    POWERING_OFF = "powering-off"
    WAITING_WATCHDOG = "waiting-watchdog"
    WAITING_OPERATOR = "waiting-operator"
    HELD = "held"
    RECOVERING = "recovering"
    RECOVERED = "recovered"


UNFINISHED = frozenset({Step.DECLARED, Step.CUTTING_STORAGE, Step.POWERING_OFF, Step.RECOVERING})
"""Steps a primary must carry on from at once, whoever started them."""


class Next(StrEnum):
    """What the fencer does next for one fence."""

    CUT_STORAGE = "cut-storage"
    POWER_OFF = "power-off"
    RECOVER = "recover"
    NOTHING = "nothing"


@dataclass(frozen=True)
class NodeFencing:
    """The fencing settings a node publishes for itself.

    The primary judges and fences every node by that node's own settings, so a
    cluster in the middle of a configuration change never fences a node by a
    window the node itself does not keep.
    """

    keepalive_interval: float
    fence_intervals: int
    watchdog_timeout: int | None
    """Seconds; None when the node has no armed watchdog."""

    @property
    def fence_window(self) -> float:
        return self.keepalive_interval * self.fence_intervals

    @property
    def watchdog_window(self) -> float | None:
        """Seconds after its last accepted keepalive by which the host must have been reset.

        The node pets its watchdog only within one keepalive interval of sending
        a keepalive that ZooKeeper accepted, so its last pet came at most one
        interval after that keepalive; the watchdog then fires within its timeout.
        """
        if self.watchdog_timeout is None:
            return None
        return self.watchdog_timeout + (1 + WATCHDOG_MARGIN_INTERVALS) * self.keepalive_interval

    def to_json(self) -> dict[str, Any]:
        return {
            "keepalive_interval": self.keepalive_interval,
            "fence_intervals": self.fence_intervals,
            "watchdog_timeout": self.watchdog_timeout,
        }

    @classmethod
    def from_json(cls, value: object) -> NodeFencing | None:
        """None when the node published nothing usable: such a node is never fenced automatically."""
        if not isinstance(value, dict):
            return None
        interval, intervals, watchdog = (
            value.get("keepalive_interval"),
            value.get("fence_intervals"),
            value.get("watchdog_timeout"),
        )
        if not _number(interval) or interval <= 0 or not isinstance(intervals, int) or isinstance(intervals, bool):
            return None
        if intervals < 0 or (watchdog is not None and (not _number(watchdog) or watchdog <= 0)):
            return None
        return cls(float(interval), intervals, None if watchdog is None else int(watchdog))


def _number(value: object) -> TypeGuard[int | float]:
    """A finite number (JSON as Python reads it may hold NaN and infinities)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Policy:
    """The cluster's configured fence actions (`successful_fence`, `failed_fence`)."""

    successful_fence: str | None
    failed_fence: str | None


@dataclass(frozen=True)
class Fence:
    """The part of a fence record the state machine reads."""

    id: str
    step: Step
    outcome: str | None
    keepalive_mtime_ms: int | None
    confirmed_by_operator: bool = False

    @classmethod
    def from_record(cls, record: object) -> Fence | None:
        """None for a node with no fence (never fenced, or readied), or a record this version cannot read."""
        if not isinstance(record, dict) or record.get("outcome") is None:
            return None
        try:
            step = Step(record["step"]) if "step" in record else _step_of_unstepped(record)
        except ValueError:
            step = Step.WAITING_OPERATOR
        mtime = record.get("keepalive_mtime_ms")
        return cls(
            id=str(record.get("id", "")),
            step=step,
            outcome=record["outcome"] if isinstance(record["outcome"], str) else None,
            keepalive_mtime_ms=mtime if isinstance(mtime, int) and not isinstance(mtime, bool) else None,
            confirmed_by_operator=record.get("confirmed_by_operator") is True,
        )


def _step_of_unstepped(record: dict[str, Any]) -> Step:
    """Records written before fences had steps: read them the safe way."""
    if record.get("outcome") == IN_PROGRESS:
        return Step.DECLARED
    return Step.RECOVERED if record.get("recovered") is True else Step.WAITING_OPERATOR


@dataclass(frozen=True)
class AfterOutcome:
    """Where a judged fence goes, and why (the operator reads the reason)."""

    step: Step
    node_state: str
    reason: str


def after_outcome(
    outcome: FenceOutcome, policy: Policy, node: NodeFencing | None, storage: StorageCut | None = None
) -> AfterOutcome:
    """The step that follows the BMC's verdict (and, for a failed one, what the storage step proved)."""
    if outcome is FenceOutcome.CONFIRMED:
        if policy.successful_fence == MIGRATE:
            return AfterOutcome(Step.RECOVERING, "fenced", "power off confirmed; recovering its VMs")
        return AfterOutcome(Step.HELD, "fenced", "power off confirmed; successful_fence is None, its VMs stay stopped")
    if outcome is FenceOutcome.AMBIGUOUS:
        return AfterOutcome(
            Step.WAITING_OPERATOR,
            "fence-ambiguous",
            "the BMC's answers do not prove the node is off; run 'pvc node confirm-fenced' once you have checked it",
        )
    if policy.failed_fence != MIGRATE:
        return AfterOutcome(
            Step.WAITING_OPERATOR,
            "fence-failed",
            "fence failed and failed_fence is None; "
            "run 'pvc node confirm-fenced' once you have checked the node is off",
        )
    if storage is not None and storage.outcome is CutOutcome.CONFIRMED and storage.whole:
        return AfterOutcome(
            Step.RECOVERING,
            "fence-failed",
            "fence failed, but every Ceph client of the node is blocklisted and all its VMs' disks are on Ceph, "
            "so it can write none of them; recovering its VMs",
        )
    window = node.watchdog_window if node is not None else None
    if window is None:
        return AfterOutcome(
            Step.WAITING_OPERATOR,
            "fence-failed",
            "fence failed and the node has no armed watchdog, so nothing proves it stopped its VMs; "
            "run 'pvc node confirm-fenced' once you have checked it is off",
        )
    return AfterOutcome(
        Step.WAITING_WATCHDOG,
        "fence-failed",
        f"fence failed; recovering once the node's watchdog has reset it ({window:.0f}s after its last keepalive)",
    )


def watchdog_expired(fence: Fence, node: NodeFencing | None, now_ms: int) -> bool:
    """Has the dead node's watchdog surely reset it? Measured on ZooKeeper's clock from its last accepted keepalive."""
    window = node.watchdog_window if node is not None else None
    if window is None or fence.keepalive_mtime_ms is None:
        return False
    return now_ms - fence.keepalive_mtime_ms >= window * 1000


def next_action(fence: Fence, node: NodeFencing | None, now_ms: int) -> Next:
    """What the primary does next for a fence it finds in ZooKeeper (its own, or one it inherited)."""
    if fence.step in (Step.DECLARED, Step.CUTTING_STORAGE):
        return Next.CUT_STORAGE
    if fence.step is Step.POWERING_OFF:
        return Next.POWER_OFF
    if fence.step is Step.RECOVERING:
        return Next.RECOVER
    if fence.step is Step.WAITING_OPERATOR and fence.confirmed_by_operator:
        return Next.RECOVER
    if fence.step is Step.WAITING_WATCHDOG and (fence.confirmed_by_operator or watchdog_expired(fence, node, now_ms)):
        return Next.RECOVER
    return Next.NOTHING


def acknowledges(fence: Fence | None, acknowledged_id: str | None) -> bool:
    """Does a node that acknowledged `acknowledged_id` already know about this fence?

    A node compares what the fence is, not the version of its record: a node
    that lost its session re-reads versions, and must not take a fence that was
    declared meanwhile for a change it already knew about.
    """
    return fence is None or fence.id == acknowledged_id
