"""What a fence attempt proved, decided from what the BMC said (pure).

Only an observed power-off proves a node can no longer run its VMs. An answer
that is missing or unreadable after the off command was sent proves nothing
either way, and is kept apart as `ambiguous` so that no VM is restarted on the
strength of it without an operator.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class FenceOutcome(StrEnum):
    CONFIRMED = "confirmed"
    FAILED = "failed"
    AMBIGUOUS = "ambiguous"


class OffCommand(StrEnum):
    """How the power-off request itself went."""

    REFUSED = "refused"  # never reached the BMC or was rejected: nothing was done
    ACCEPTED = "accepted"  # the BMC acknowledged it
    UNANSWERED = "unanswered"  # sent, but no answer: it may or may not have happened


@dataclass(frozen=True)
class FenceVerdict:
    outcome: FenceOutcome
    reason: str


def judge(off: OffCommand, observed: list[str | None], off_error: str = "") -> FenceVerdict:
    """The outcome, from the off command's fate and the power states polled after it.

    `observed` holds each poll's answer: "on", "off", or None when the poll got
    no readable answer.
    """
    if "off" in observed:
        return FenceVerdict(FenceOutcome.CONFIRMED, "the BMC reported the power off")
    if off is OffCommand.REFUSED:
        return FenceVerdict(FenceOutcome.FAILED, f"the power-off command failed: {off_error}".rstrip(": "))
    if observed and all(state == "on" for state in observed):
        return FenceVerdict(FenceOutcome.FAILED, f"the BMC kept reporting power on after {len(observed)} polls")
    if any(state == "on" for state in observed):
        return FenceVerdict(
            FenceOutcome.AMBIGUOUS, "the BMC reported power on and then stopped answering; the node may still run"
        )
    return FenceVerdict(
        FenceOutcome.AMBIGUOUS,
        "the power-off command was sent but the BMC never answered a power-state query; the node may still run",
    )
