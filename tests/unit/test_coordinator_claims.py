"""Claims, handover requests, what an operator may ask for, and the coordinator states (pure)."""

from __future__ import annotations

import pytest

from pvcd.cluster.values import NodeView, StateRecord
from pvcd.coordinator.claims import Claim, Handover, claims_of, parse_claim
from pvcd.coordinator.handover import HandoverRefused, primary_request, secondary_request
from pvcd.states import CoordinatorState as C
from pvcd.states import TransitionError, coordinator_transition
from pvcd.zk import schema


def test_claim_names_round_trip_through_the_schema_prefix():
    prefix = schema.primary_claim_prefix("hv1", "ab12")
    assert prefix == f"{schema.PRIMARY}/hv1~ab12~"
    name = prefix.rsplit("/", 1)[1] + "0000000042"
    assert parse_claim(name) == Claim(42, "hv1", "ab12", name)


@pytest.mark.parametrize("name", ["lock", "hv1~ab12", "hv1~ab12~x1", "~ab12~0000000001", "hv1~~0000000001"])
def test_foreign_children_are_not_claims(name):
    assert parse_claim(name) is None


def test_lowest_sequence_comes_first_whatever_the_names():
    claims = claims_of(["zz~1~0000000007", "aa~2~0000000009", "junk", "mm~3~0000000003"])
    assert [c.node for c in claims] == ["mm", "zz", "aa"]


def test_handover_json():
    assert Handover("hv1", "hv2").to_json() == {"from": "hv1", "to": "hv2"}
    assert Handover.from_json({"from": "hv1", "to": None}) == Handover("hv1", None)
    for garbage in (None, "x", {}, {"from": 3}, {"from": "hv1", "to": 5}):
        assert Handover.from_json(garbage) is None


@pytest.mark.parametrize(
    "current,wanted",
    [
        (C.SECONDARY, C.TAKEOVER),
        (C.TAKEOVER, C.PRIMARY),
        (C.TAKEOVER, C.RELINQUISH),
        (C.PRIMARY, C.RELINQUISH),
        (C.RELINQUISH, C.SECONDARY),
    ],
)
def test_coordinator_transitions_allowed(current, wanted):
    assert coordinator_transition(current, wanted) == wanted


@pytest.mark.parametrize(
    "current,wanted",
    [
        (C.SECONDARY, C.PRIMARY),
        (C.PRIMARY, C.SECONDARY),
        (C.CLIENT, C.TAKEOVER),
        (C.RELINQUISH, C.PRIMARY),
        (C.SECONDARY, C.CLIENT),
    ],
)
def test_coordinator_transitions_refused(current, wanted):
    with pytest.raises(TransitionError):
        coordinator_transition(current, wanted)


# -- what `pvc node primary|secondary` may ask ------------------------------


def node(name: str, coordinator: bool = True, daemon: str = "run", role: str = "secondary") -> NodeView:
    return NodeView(
        name, {"name": name, "coordinator": coordinator}, StateRecord(daemon, role, "ready"), {}, None, None
    )


NODES = {
    "hv1": node("hv1", role="primary"),
    "hv2": node("hv2"),
    "hv3": node("hv3", daemon="stop"),
    "hv4": node("hv4", coordinator=False, role="client"),
}


def test_primary_request_names_the_current_primary_and_the_target():
    assert primary_request(NODES, "hv1", None, False, "hv2") == Handover("hv1", "hv2")
    assert primary_request(NODES, "hv1", None, False, "hv1") is None


@pytest.mark.parametrize(
    "target,owner,pending,exists,message",
    [
        ("hv9", "hv1", None, False, "no node named 'hv9'"),
        ("hv4", "hv1", None, False, "node hv4 is not a coordinator"),
        ("hv3", "hv1", None, False, "node hv3 cannot take over now (daemon stop"),
        ("hv2", None, None, False, "there is no primary coordinator right now"),
        ("hv2", "hv1", Handover("hv1", "hv3"), True, "a handover from hv1 to hv3 is already in progress"),
        ("hv2", "hv1", None, True, "an unreadable handover request is pending"),
    ],
)
def test_primary_requests_refused(target, owner, pending, exists, message):
    with pytest.raises(HandoverRefused, match="^" + message.replace("(", r"\(")):
        primary_request(NODES, owner, pending, exists, target)


def test_secondary_request_lets_any_other_coordinator_take_over():
    assert secondary_request(NODES, "hv1", None, False, "hv1") == Handover("hv1", None)
    assert secondary_request(NODES, "hv1", None, False, "hv2") is None


def test_secondary_requests_refused():
    with pytest.raises(HandoverRefused, match="not a coordinator"):
        secondary_request(NODES, "hv1", None, False, "hv4")
    with pytest.raises(HandoverRefused, match="no node named"):
        secondary_request(NODES, "hv1", None, False, "hv9")
    alone = {"hv1": NODES["hv1"], "hv3": NODES["hv3"], "hv4": NODES["hv4"]}
    with pytest.raises(HandoverRefused, match="no other coordinator is ready to take over from hv1"):
        secondary_request(alone, "hv1", None, False, "hv1")
