"""What a fence outcome allows to happen to the dead node's VMs (pure).

The one rule behind every branch: a VM is restarted elsewhere only when its old
host is known not to run it — powered off as observed by the BMC, or silent for
so long that its own self-fence has destroyed its VMs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pvcd.fencing.outcome import FenceOutcome

MIGRATE = "migrate"

# A silent node checks its own self-fence deadline once per keepalive interval,
# counting from its last successful keepalive, which is never later than when
# the fencer saw it. Waiting two more intervals than the window therefore lets
# the node's check fire, and its VMs be destroyed, before any is restarted.
SELF_FENCE_MARGIN_INTERVALS = 2


class Recovery(StrEnum):
    RECOVER = "recover"  # restart the VMs elsewhere now
    NONE = "none"  # leave the VMs where they are, by configuration
    WAIT_SELF_FENCE = "wait-self-fence"  # recover once the node's self-fence window has passed
    WAIT_OPERATOR = "wait-operator"  # ambiguous: only `pvc node confirm-fenced` allows recovery


class NodeFenceState(StrEnum):
    """What the fenced node shows until an operator readies it."""

    FENCED = "fenced"
    FENCE_FAILED = "fence-failed"
    FENCE_AMBIGUOUS = "fence-ambiguous"


@dataclass(frozen=True)
class FenceAction:
    recovery: Recovery
    node_state: NodeFenceState
    reason: str


def after_fence(
    outcome: FenceOutcome,
    successful_fence: str | None,
    failed_fence: str | None,
    suicide_intervals: int,
    interval: float,
    silent_for: float,
) -> FenceAction:
    """The action for a fence outcome, given the configured actions and how long the node has been silent."""
    if outcome is FenceOutcome.CONFIRMED:
        if successful_fence == MIGRATE:
            return FenceAction(Recovery.RECOVER, NodeFenceState.FENCED, "power off confirmed; recovering its VMs")
        return FenceAction(Recovery.NONE, NodeFenceState.FENCED, "power off confirmed; successful_fence is None")
    if outcome is FenceOutcome.AMBIGUOUS:
        return FenceAction(
            Recovery.WAIT_OPERATOR,
            NodeFenceState.FENCE_AMBIGUOUS,
            "the BMC's answers do not prove the node is off; run 'pvc node confirm-fenced' once you have checked it",
        )
    if failed_fence != MIGRATE or suicide_intervals <= 0:
        return FenceAction(Recovery.NONE, NodeFenceState.FENCE_FAILED, "fence failed; failed_fence is None")
    window = suicide_intervals * interval
    if silent_for >= window + SELF_FENCE_MARGIN_INTERVALS * interval:
        return FenceAction(
            Recovery.RECOVER,
            NodeFenceState.FENCE_FAILED,
            f"fence failed, but the node has been silent {silent_for:.0f}s, past its {window:.0f}s self-fence window",
        )
    return FenceAction(
        Recovery.WAIT_SELF_FENCE,
        NodeFenceState.FENCE_FAILED,
        f"fence failed; recovering once the node's {window:.0f}s self-fence window has passed",
    )


def should_self_fence(unreachable_for: float, suicide_intervals: int, interval: float) -> bool:
    """A node cut off from ZooKeeper for its suicide window must destroy its own VMs."""
    return suicide_intervals > 0 and unreachable_for >= suicide_intervals * interval
