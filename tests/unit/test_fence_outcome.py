"""Which fence outcomes the BMC's answers prove."""

from __future__ import annotations

import pytest

from pvcd.fencing.outcome import FenceOutcome, OffCommand, judge


@pytest.mark.parametrize(
    "off,observed,expected",
    [
        (OffCommand.ACCEPTED, ["on", "off"], FenceOutcome.CONFIRMED),
        (OffCommand.UNANSWERED, [None, "off"], FenceOutcome.CONFIRMED),
        (OffCommand.ACCEPTED, ["on", "on", "on"], FenceOutcome.FAILED),
        (OffCommand.REFUSED, [], FenceOutcome.FAILED),
        (OffCommand.ACCEPTED, [None, None], FenceOutcome.AMBIGUOUS),
        (OffCommand.UNANSWERED, [None], FenceOutcome.AMBIGUOUS),
        (OffCommand.UNANSWERED, [], FenceOutcome.AMBIGUOUS),
        (OffCommand.ACCEPTED, ["on", None], FenceOutcome.AMBIGUOUS),
    ],
)
def test_outcomes(off, observed, expected):
    assert judge(off, observed).outcome == expected


def test_only_an_observed_off_confirms():
    for off in OffCommand:
        for observed in ([], [None], ["on"], ["on", None], [None, "on"]):
            assert judge(off, observed).outcome != FenceOutcome.CONFIRMED


def test_refused_reason_names_the_error():
    verdict = judge(OffCommand.REFUSED, [], "login to BMC admin@h:623: no answer within 5s")
    assert verdict.reason == "the power-off command failed: login to BMC admin@h:623: no answer within 5s"
