"""The coordinator's decision function, its lease and its timings (pure)."""

from __future__ import annotations

import pytest

from pvcd.coordinator.claims import Claim, Handover
from pvcd.coordinator.decide import (
    ADDRESS_MARGIN,
    Observation,
    Step,
    Timing,
    View,
    address_lifetime,
    connection_stalled,
    decide,
    may_claim,
    relinquish_reason,
    track_vacancy,
)

S = 4.0
TIMING = Timing(S)
ME, TOKEN = "hv1", "aaaa"


def claim(node: str, token: str, sequence: int) -> Claim:
    return Claim(sequence, node, token, f"{node}~{token}~{sequence:010d}")


MINE = claim(ME, TOKEN, 5)
THEIRS = claim("hv2", "bbbb", 3)


def observation(*claims: Claim, handover: Handover | None = None, version: int | None = None, sent_at: float = 100.0):
    if handover is not None and version is None:
        version = 0
    return Observation(sent_at=sent_at, claims=tuple(sorted(claims)), handover=handover, handover_version=version)


def view(
    obs: Observation | None,
    now: float = 100.1,
    acting: bool = False,
    connected: bool = True,
    stand_down: bool = False,
    vacant_since: float | None = None,
) -> View:
    return View(
        node=ME,
        token=TOKEN,
        acting=acting,
        connected=connected,
        stand_down=stand_down,
        now=now,
        observation=obs,
        vacant_since=vacant_since,
    )


def test_timings_are_shares_of_the_session_timeout():
    timing = Timing(10)
    assert (timing.tick, timing.observe_timeout, timing.lease, timing.stall) == (1.0, 1.0, 5.0, 2.5)
    assert timing.handover_grace == 10 and timing.service_budget == 2.0
    assert Timing(3).can_hold_addresses and not Timing(2.9).can_hold_addresses


# -- a secondary -------------------------------------------------------------


def test_vacant_role_is_claimed():
    assert decide(view(observation()), TIMING) is Step.CLAIM


def test_a_coordinator_that_starts_while_a_primary_exists_stays_secondary():
    assert decide(view(observation(THEIRS)), TIMING) is Step.WAIT


def test_own_primary_claim_leads_to_takeover():
    assert decide(view(observation(MINE)), TIMING) is Step.TAKEOVER


def test_claim_of_a_previous_life_is_not_ours():
    # Same node name, another process (token): wait for that session to expire.
    assert decide(view(observation(claim(ME, "old0", 2))), TIMING) is Step.WAIT


def test_nothing_without_an_observation_or_a_connection():
    assert decide(view(None), TIMING) is Step.WAIT
    assert decide(view(observation(), connected=False), TIMING) is Step.WAIT
    assert decide(view(observation(MINE), connected=False), TIMING) is Step.WAIT


def test_no_claim_or_takeover_on_a_stale_observation():
    stale = 100.0 + TIMING.lease
    assert decide(view(observation(), now=stale), TIMING) is Step.WAIT
    assert decide(view(observation(MINE), now=stale), TIMING) is Step.WAIT


def test_lost_race_claims_are_pruned_first():
    assert decide(view(observation(THEIRS, claim(ME, TOKEN, 9))), TIMING) is Step.PRUNE
    assert decide(view(observation(MINE, claim(ME, TOKEN, 9))), TIMING) is Step.PRUNE


def test_stand_down_never_claims_and_releases_an_owned_claim():
    assert decide(view(observation(), stand_down=True), TIMING) is Step.WAIT
    assert decide(view(observation(MINE), stand_down=True), TIMING) is Step.RELEASE


# -- the acting primary ----------------------------------------------------


def test_primary_holds_while_the_lease_holds():
    assert decide(view(observation(MINE), now=100.0 + TIMING.lease - 0.01, acting=True), TIMING) is Step.HOLD


@pytest.mark.parametrize(
    "case",
    ["suspended", "lease over", "claim gone", "claim overtaken", "stopping", "no observation"],
)
def test_primary_relinquishes(case):
    kwargs = {
        "suspended": dict(obs=observation(MINE), connected=False),
        "lease over": dict(obs=observation(MINE), now=100.0 + TIMING.lease),
        "claim gone": dict(obs=observation()),
        "claim overtaken": dict(obs=observation(THEIRS)),
        "stopping": dict(obs=observation(MINE), stand_down=True),
        "no observation": dict(obs=None),
    }[case]
    obs = kwargs.pop("obs")
    assert decide(view(obs, acting=True, **kwargs), TIMING) is Step.RELINQUISH


def test_relinquish_reasons_name_the_cause():
    assert "suspended" in relinquish_reason(view(observation(MINE), acting=True, connected=False), TIMING)[0]
    text, expected = relinquish_reason(view(observation(MINE), now=103.0, acting=True), TIMING)
    assert "no confirmation from ZooKeeper for 3.0s" in text and not expected
    assert "primary: hv2" in relinquish_reason(view(observation(THEIRS), acting=True), TIMING)[0]
    assert relinquish_reason(view(observation(MINE), acting=True, stand_down=True), TIMING)[1]
    assert relinquish_reason(view(None, acting=True), TIMING)[0] == "the ZooKeeper session was lost"


# -- planned handover ------------------------------------------------------

TO_HV2 = Handover(source=ME, target="hv2")
TO_ANY = Handover(source=ME, target=None)


@pytest.mark.parametrize("request_", [TO_HV2, TO_ANY])
def test_primary_asked_to_step_down_relinquishes_then_releases(request_):
    obs = observation(MINE, handover=request_)
    assert decide(view(obs, acting=True), TIMING) is Step.RELINQUISH
    text, expected = relinquish_reason(view(obs, acting=True), TIMING)
    assert expected and ("hv2" in text if request_.target else "another coordinator" in text)
    assert decide(view(obs, acting=False), TIMING) is Step.RELEASE


def test_the_stepping_down_primary_does_not_claim_again_within_the_grace():
    obs = observation(handover=TO_HV2)
    assert decide(view(obs, vacant_since=100.0), TIMING) is Step.WAIT
    assert decide(view(obs, vacant_since=100.0 - TIMING.handover_grace), TIMING) is Step.CLAIM
    assert decide(view(observation(handover=TO_ANY), vacant_since=100.0), TIMING) is Step.WAIT


def test_only_the_named_successor_claims_within_the_grace():
    def as_node(node: str, request_: Handover, vacant_since: float) -> bool:
        v = View(
            node=node,
            token="t" + node,
            acting=False,
            connected=True,
            stand_down=False,
            now=100.1,
            observation=observation(handover=request_),
            vacant_since=vacant_since,
        )
        return may_claim(v, TIMING)

    assert as_node("hv2", TO_HV2, 100.0)
    assert not as_node("hv3", TO_HV2, 100.0)
    assert as_node("hv3", TO_HV2, 100.1 - TIMING.handover_grace)
    assert as_node("hv3", TO_ANY, 100.0) and as_node("hv2", TO_ANY, 100.0)


@pytest.mark.parametrize(
    "request_",
    [Handover("hv3", "hv2"), Handover(ME, ME), None],
    ids=["names another primary", "hands over to itself", "unreadable"],
)
def test_primary_discards_handover_requests_not_meant_for_it(request_):
    obs = observation(MINE, handover=request_, version=4)
    assert decide(view(obs, acting=True), TIMING) is Step.DISCARD_HANDOVER
    assert decide(view(obs, acting=False), TIMING) is Step.DISCARD_HANDOVER


def test_unreadable_request_does_not_stop_a_claim():
    assert decide(view(observation(handover=None, version=2)), TIMING) is Step.CLAIM


# -- lease arithmetic ------------------------------------------------------


def test_address_lifetime_ends_before_the_session_could_expire():
    sent_at = 100.0
    for now in (100.0, 100.01, 100.5, 101.0, 101.99):
        lifetime = address_lifetime(sent_at, now, TIMING)
        assert lifetime >= 1
        assert now + lifetime <= sent_at + S - ADDRESS_MARGIN
    assert address_lifetime(sent_at, 100.0, Timing(10)) == 9


def test_address_lifetime_is_zero_once_the_lease_is_over():
    assert address_lifetime(100.0, 100.0 + TIMING.lease, TIMING) == 0
    assert address_lifetime(100.0, 150.0, TIMING) == 0


def test_vacancy_is_tracked_from_the_first_vacant_observation():
    assert track_vacancy(None, observation(), 5.0) == 5.0
    assert track_vacancy(5.0, observation(), 9.0) == 5.0
    assert track_vacancy(5.0, observation(THEIRS), 9.0) is None
    assert track_vacancy(5.0, None, 9.0) == 5.0


def test_stalled_connection_is_dropped_at_most_once_per_stall_period():
    stall = TIMING.stall
    assert not connection_stalled(None, None, 100.0, TIMING)
    assert not connection_stalled(100.0, None, 100.0 + stall - 0.01, TIMING)
    assert connection_stalled(100.0, None, 100.0 + stall, TIMING)
    assert not connection_stalled(100.0, 101.0, 101.0 + stall / 2, TIMING)
    assert connection_stalled(100.0, 101.0, 101.0 + stall, TIMING)
