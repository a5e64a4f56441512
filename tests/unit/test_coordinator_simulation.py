"""The coordinator decisions against a model of ZooKeeper and the kernel, under random schedules.

A small, deterministic model drives the same pure functions the coordinator
loop uses (`decide`, `address_lifetime`, `track_vacancy`): a ZooKeeper server
that expires a session S after it last heard from it and deletes that
session's claims; nodes that may freeze (SIGSTOP), be cut off (their requests
never arrive), stand down, or be asked to hand over; and a kernel that keeps a
floating IP until its lifetime (plus the timer's 0.25 s slack) runs out.
Hypothesis explores interleavings, including a node deciding at one moment
and acting much later. Checked after every event: never two nodes holding
the floating IPs, and nobody deciding to act as primary, or adding the floating
IPs, unless its claim is at that moment the primary claim of a live session. After healing, one primary must
emerge, so the model is not vacuously safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from pvcd.coordinator.claims import Claim, Handover
from pvcd.coordinator.decide import Observation, Step, Timing, View, address_lifetime, decide, track_vacancy

S = 4.0
TIMING = Timing(S)
KERNEL_SLACK = 0.25
NODES = ("hv1", "hv2", "hv3")


@dataclass
class Server:
    now: float = 0.0
    sequence: int = 0
    sessions: dict[int, float] = field(default_factory=dict)  # session → last heard
    claims: list[tuple[Claim, int]] = field(default_factory=list)  # (claim, session)
    handover: Handover | None = None
    handover_version: int = 0
    next_session: int = 1

    def open_session(self) -> int:
        session, self.next_session = self.next_session, self.next_session + 1
        self.sessions[session] = self.now
        return session

    def expire(self) -> None:
        for session, heard in list(self.sessions.items()):
            if self.now >= heard + S:
                del self.sessions[session]
                self.claims = [(c, s) for c, s in self.claims if s != session]

    def owner_claim(self) -> Claim | None:
        return min(c for c, _ in self.claims) if self.claims else None


@dataclass
class Node:
    name: str
    token: str
    session: int
    acting: bool = False
    connected: bool = True
    frozen: bool = False
    cut: bool = False
    stand_down: bool = False
    observation: Observation | None = None
    vacant_since: float | None = None
    pending: tuple[Step, View] | None = None
    addresses_until: float | None = None  # the kernel's view: held until then

    def holds_addresses(self, now: float) -> bool:
        return self.addresses_until is not None and now < self.addresses_until


class Model:
    def __init__(self) -> None:
        self.server = Server()
        self.nodes = [Node(name, f"t{name}", self.server.open_session()) for name in NODES]

    @property
    def now(self) -> float:
        return self.server.now

    def view(self, node: Node) -> View:
        node.vacant_since = track_vacancy(node.vacant_since, node.observation, self.now)
        return View(
            node.name,
            node.token,
            node.acting,
            node.connected,
            node.stand_down,
            self.now,
            node.observation,
            node.vacant_since,
        )

    def reach(self, node: Node) -> bool:
        """A request from `node` reaches the server (and the server hears from its session)."""
        if node.cut:
            return False
        if node.session not in self.server.sessions:  # kazoo: LOST, then a new session
            node.observation = None
            node.session = self.server.open_session()
        self.server.sessions[node.session] = self.now
        return True

    def step(self, node: Node) -> None:
        """One loop iteration up to the decision; the action waits for `act` (maybe much later)."""
        view = self.view(node)
        if node.acting and decide(view, TIMING) is Step.RELINQUISH:
            self.execute(node, Step.RELINQUISH)
        if node.connected and self.reach(node):
            claims = tuple(sorted(c for c, _ in self.server.claims))
            version = self.server.handover_version if self.server.handover else None
            node.observation = Observation(self.now, claims, self.server.handover, version)
        view = self.view(node)
        step = decide(view, TIMING)
        if step in (Step.TAKEOVER, Step.HOLD):
            # Deciding to (go on) act as primary — services included — only while truly the owner.
            owner = self.server.owner_claim()
            assert owner is not None and owner.token == node.token, f"{node.name} acts without owning"
        node.pending = (step, view)

    def act(self, node: Node) -> None:
        if node.pending is not None:
            step, _ = node.pending
            node.pending = None
            self.execute(node, step)

    def execute(self, node: Node, step: Step) -> None:
        obs = node.observation
        if step in (Step.TAKEOVER, Step.HOLD):
            # As FloatingIPs.hold: the lifetime is computed when the address is changed.
            lifetime = 0
            if obs is not None and node.connected and obs.owned_by(node.token) and not node.stand_down:
                lifetime = address_lifetime(obs.sent_at, self.now, TIMING)
            if lifetime < 1:
                self.execute(node, Step.RELINQUISH)
                return
            owner = self.server.owner_claim()
            assert owner is not None and owner.token == node.token, f"{node.name} adds floating IPs without owning"
            node.addresses_until = self.now + lifetime + KERNEL_SLACK
            node.acting = True
        elif step is Step.RELINQUISH:
            node.acting = False
            node.addresses_until = None
        elif step is Step.CLAIM and obs is not None and self.reach(node):
            if obs.handover_version is not None:
                if self.server.handover is None or self.server.handover_version != obs.handover_version:
                    return  # the transaction's delete fails: nothing happens
                self.server.handover = None
            self.server.sequence += 1
            name = f"{node.name}~{node.token}~{self.server.sequence:010d}"
            self.server.claims.append((Claim(self.server.sequence, node.name, node.token, name), node.session))
        elif step in (Step.RELEASE, Step.PRUNE) and obs is not None and self.reach(node):
            keep = obs.claims[0] if step is Step.PRUNE and obs.claims else None
            self.server.claims = [(c, s) for c, s in self.server.claims if c.token != node.token or c == keep]
        elif step is Step.DISCARD_HANDOVER and obs is not None and self.reach(node):
            if self.server.handover_version == obs.handover_version:
                self.server.handover = None

    def request_handover(self, target: str | None) -> None:
        """What `pvc node primary|secondary` writes, when it would write anything."""
        owner = self.server.owner_claim()
        if owner is None or self.server.handover is not None or owner.node == target:
            return
        self.server.handover = Handover(owner.node, target)
        self.server.handover_version += 1

    def advance(self, seconds: float) -> None:
        self.server.now += seconds
        self.server.expire()

    def check(self) -> None:
        holders = [node.name for node in self.nodes if node.holds_addresses(self.now)]
        assert len(holders) <= 1, f"floating IPs on {holders} at t={self.now:.2f}"

    def apply(self, event: tuple) -> None:
        kind, *args = event
        node = self.nodes[args[0]] if args and isinstance(args[0], int) else None
        if kind == "advance":
            self.advance(args[0])
        elif kind == "handover":
            self.request_handover(args[0])
        elif node is not None and kind == "run" and not node.frozen:
            self.step(node)
            self.act(node)
        elif node is not None and kind in ("step", "act") and not node.frozen:
            (self.step if kind == "step" else self.act)(node)
        elif node is not None and kind == "freeze":
            node.frozen = not node.frozen
        elif node is not None and kind == "cut":
            node.cut = not node.cut
            node.connected = True
        elif node is not None and kind == "notice" and node.cut:
            node.connected = False  # kazoo reported SUSPENDED
        elif node is not None and kind == "stand_down":
            node.stand_down = True
        self.check()

    def heal_and_settle(self) -> None:
        for node in self.nodes:
            node.frozen = node.cut = False
            node.connected = True
        for _ in range(int(4 * S / 0.2)):
            self.advance(0.2)
            for node in self.nodes:
                self.step(node)
                self.act(node)
                self.check()


node_index = st.integers(0, len(NODES) - 1)
# Mostly whole loop iterations and time passing; now and then a fault, a
# decision acted on later, or an operator's request.
loop = st.tuples(st.just("run"), node_index)
time_passes = st.tuples(st.just("advance"), st.sampled_from([0.1, 0.3, 0.5, 1.0, 2.0, 4.0]))
events = st.one_of(
    loop,
    loop,
    loop,
    loop,
    time_passes,
    time_passes,
    st.tuples(st.sampled_from(["step", "act", "step", "act", "freeze", "cut", "notice"]), node_index),
    st.tuples(st.just("handover"), st.sampled_from([None, *NODES])),
    st.tuples(st.just("stand_down"), st.just(len(NODES) - 1)),  # hv3's daemon stops at some point
)
schedules = st.lists(events, min_size=30, max_size=150)


@settings(max_examples=300, deadline=None)
@given(schedules)
def test_never_two_holders_and_one_primary_after_healing(schedule):
    model = Model()
    for event in schedule:
        model.apply(event)
    model.heal_and_settle()
    candidates = [node for node in model.nodes if not node.stand_down]
    acting = [node.name for node in model.nodes if node.acting]
    assert len(acting) == (1 if candidates else 0), f"after healing, primaries: {acting}"
    if acting:
        owner = model.server.owner_claim()
        assert owner is not None and owner.node == acting[0]
        assert model.nodes[NODES.index(acting[0])].holds_addresses(model.now)


def test_frozen_primary_loses_its_addresses_before_anyone_else_may_take_them():
    model = Model()
    for _ in range(3):
        for index in range(3):
            model.apply(("step", index))
            model.apply(("act", index))
        model.apply(("advance", 0.2))
    primary = next(node for node in model.nodes if node.acting)
    primary.frozen = True
    for _ in range(40):  # 8 s: past the session timeout
        model.apply(("advance", 0.2))
        for index in range(3):
            model.apply(("step", index))
            model.apply(("act", index))
    successor = [node.name for node in model.nodes if node.acting and node is not primary]
    assert len(successor) == 1 and not primary.holds_addresses(model.now)
    primary.frozen = False
    model.apply(("step", NODES.index(primary.name)))
    assert not primary.acting and primary.addresses_until is None
