"""What a coordinator does next (pure): one observation and the time in, one step out.

The coordinator loop observes the election (one ZooKeeper round trip), asks
`decide` for the next step, carries it out, and repeats. Nothing here does I/O
or reads a clock, so the unit tests and the scenario simulator drive it with
any schedule they like.

Why there is never more than one primary (docs/coordinators.md has the long
version):

1. **Ownership** is a claim in ZooKeeper: the lowest ephemeral sequential
   child of the claims directory. Only its creator's session can hold it, and
   the server deletes it when that session ends. A coordinator claims only
   when it has just seen no claim at all.
2. **The lease.** A coordinator acts as primary (holds the floating IPs, runs
   the primary services) only while its last observation that showed its own
   claim is younger than `session_timeout × LEASE_SHARE`, counted from when
   that observation was *sent*. The server heard from the session after that
   moment, so it cannot expire the session — and let another coordinator
   claim — before `sent_at + session_timeout`. A stale answer (read after a
   SIGSTOP, say) therefore never extends the lease: time kept running.
3. **The kernel enforces the lease on the floating IPs.** They are added with
   a lifetime (`valid_lft`) that ends `ADDRESS_MARGIN` before the earliest
   moment the session could expire, and renewed after each observation. A
   primary that is frozen, killed or hung loses its floating IPs by itself,
   before anyone else may add them.
4. **Handover by release.** A planned handover is the primary relinquishing
   (services stopped, floating IPs removed) and then deleting its claim; only
   then can the successor's claim be created. While a request names a
   successor, the other coordinators stand back for `handover_grace`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from pvcd.config import MIN_SESSION_TIMEOUT_WITH_ADDRESSES
from pvcd.coordinator.claims import Claim, Handover

# Shares of the ZooKeeper session timeout S.
TICK_SHARE = 0.1
"""Observe the election every S × 0.1 (and at once when a watch fires)."""
OBSERVE_TIMEOUT_SHARE = 0.1
"""An observation not answered within S × 0.1 failed: ZooKeeper reads answer in milliseconds."""
LEASE_SHARE = 0.5
"""Act as primary only within S × 0.5 of the last confirmation: five observations
may fail in a row before a healthy primary steps down, and half the session
timeout is left to stop services and remove the floating IPs."""
STALL_SHARE = 0.25
"""No answer for S × 0.25 while the client believes it is connected: make kazoo
reconnect. Our observations count as traffic for kazoo, which then never sends
the heartbeat that would detect a silently dead server itself."""
HANDOVER_GRACE_SHARE = 1.0
"""The successor named by a handover request has S to take over before the other
coordinators stop waiting for it."""
SERVICE_BUDGET_SHARE = 0.2
"""Starting, or stopping, all primary services gets at most S × 0.2."""

ADDRESS_MARGIN = 1.0
"""Seconds between the end of a floating IP's kernel lifetime and the earliest
moment the session could expire. The kernel removes an address up to ~0.25 s
after its lifetime ends (its address timer has a coarse granularity)."""


class Step(StrEnum):
    WAIT = "wait"
    """Nothing to do until something changes (or the next tick)."""
    CLAIM = "claim"
    """The primary role is vacant and ours to take: create a claim."""
    TAKEOVER = "takeover"
    """Our claim is the primary: add the floating IPs, start the primary services."""
    HOLD = "hold"
    """Acting primary with a valid lease: renew the floating IPs' lifetimes."""
    RELINQUISH = "relinquish"
    """Stop acting as primary: stop the primary services, remove the floating IPs."""
    RELEASE = "release"
    """Delete our claim, so that another coordinator can take over."""
    PRUNE = "prune"
    """Delete our claims that lost a race: they would become primary by accident later."""
    DISCARD_HANDOVER = "discard-handover"
    """The primary deletes a handover request that does not ask it to step down."""


@dataclass(frozen=True)
class Timing:
    """Every duration of the coordinator loop, derived from the session timeout S (seconds)."""

    session_timeout: float

    @property
    def tick(self) -> float:
        return self.session_timeout * TICK_SHARE

    @property
    def observe_timeout(self) -> float:
        return self.session_timeout * OBSERVE_TIMEOUT_SHARE

    @property
    def lease(self) -> float:
        return self.session_timeout * LEASE_SHARE

    @property
    def stall(self) -> float:
        return self.session_timeout * STALL_SHARE

    @property
    def handover_grace(self) -> float:
        return self.session_timeout * HANDOVER_GRACE_SHARE

    @property
    def service_budget(self) -> float:
        return self.session_timeout * SERVICE_BUDGET_SHARE

    @property
    def can_hold_addresses(self) -> bool:
        return self.session_timeout >= MIN_SESSION_TIMEOUT_WITH_ADDRESSES


@dataclass(frozen=True)
class Observation:
    """The election as one ZooKeeper round trip saw it."""

    sent_at: float
    """Monotonic time the round trip was sent: the lease counts from here."""
    claims: tuple[Claim, ...]
    """Every claim, lowest sequence (the primary) first."""
    handover: Handover | None
    """The pending handover request; None when there is none or it is not readable."""
    handover_version: int | None
    """Version of the handover znode; None when it does not exist."""

    @property
    def owner(self) -> str | None:
        """The primary coordinator's node name; None while the role is vacant."""
        return self.claims[0].node if self.claims else None

    def owned_by(self, token: str) -> bool:
        return bool(self.claims) and self.claims[0].token == token

    def strays(self, token: str) -> tuple[Claim, ...]:
        """Claims of the process with `token` that are not the primary claim."""
        return tuple(claim for claim in self.claims[1:] if claim.token == token)


@dataclass(frozen=True)
class View:
    """Everything `decide` looks at: the node's own situation and its last observation."""

    node: str
    token: str
    """This process's claim token (see `claims`)."""
    acting: bool
    """In takeover or primary: floating IPs and primary services may be up."""
    connected: bool
    """The ZooKeeper client reports its session connected."""
    stand_down: bool
    """Must not hold the role: the daemon is stopping, or the node cannot hold floating IPs safely."""
    now: float
    observation: Observation | None
    """The last successful observation on the current session, None before the first."""
    vacant_since: float | None
    """Since when this node has seen no claim at all (see `track_vacancy`)."""


def lease_holds(view: View, timing: Timing) -> bool:
    """The last observation is recent enough to act on (see the module docstring, rule 2)."""
    observation = view.observation
    return view.connected and observation is not None and view.now - observation.sent_at < timing.lease


def address_lifetime(sent_at: float, now: float, timing: Timing) -> int:
    """Whole seconds a floating IP may live from `now`, on the confirmation sent at `sent_at`.

    0 once the lease is over: the floating IPs must not be added or renewed.
    Otherwise the lifetime ends ADDRESS_MARGIN before the earliest moment the
    server could expire the session (rule 3).
    """
    if now - sent_at >= timing.lease:
        return 0
    return max(0, math.floor(sent_at + timing.session_timeout - ADDRESS_MARGIN - now))


def track_vacancy(previous: float | None, observation: Observation | None, now: float) -> float | None:
    """When this node first saw the role vacant, carried from one observation to the next."""
    if observation is None:
        return previous
    if observation.claims:
        return None
    return now if previous is None else previous


def connection_stalled(last_sent_answered: float | None, last_drop: float | None, now: float, timing: Timing) -> bool:
    """Whether to make the ZooKeeper client reconnect (see STALL_SHARE), at most once per stall period."""
    if last_sent_answered is None or now - last_sent_answered < timing.stall:
        return False
    return last_drop is None or now - last_drop >= timing.stall


def _stale_handover(observation: Observation, node: str) -> bool:
    """A request the owner `node` must delete: unreadable, or not asking it to step down."""
    if observation.handover_version is None:
        return False
    handover = observation.handover
    return handover is None or handover.source != node or handover.target == node


def _step_down_request(observation: Observation | None, node: str) -> Handover | None:
    """The handover request asking `node` to step down, if there is one."""
    handover = observation.handover if observation else None
    if handover is not None and handover.source == node and handover.target != node:
        return handover
    return None


def may_claim(view: View, timing: Timing) -> bool:
    """Whether this node may claim the vacant role, given any handover request.

    The named successor may claim at once; with no successor named, any
    coordinator but the one stepping down may. Everyone else stands back for
    the handover grace, so that a successor that died does not leave the
    cluster without a primary.
    """
    observation = view.observation
    handover = observation.handover if observation else None
    if handover is None or handover.target == view.node:
        return True
    if handover.target is None and handover.source != view.node:
        return True
    return view.vacant_since is not None and view.now - view.vacant_since >= timing.handover_grace


def decide(view: View, timing: Timing) -> Step:
    """The next step of the coordinator with this view. Safety checks come first."""
    observation = view.observation
    lease = lease_holds(view, timing)
    owned = lease and observation is not None and observation.owned_by(view.token)
    stepping_down = _step_down_request(observation, view.node) is not None
    if view.acting:
        if observation is None or not owned or view.stand_down or stepping_down:
            return Step.RELINQUISH
        if _stale_handover(observation, view.node):
            return Step.DISCARD_HANDOVER
        if observation.strays(view.token):
            return Step.PRUNE
        return Step.HOLD
    if observation is None or not lease:
        return Step.WAIT
    if observation.strays(view.token):
        return Step.PRUNE
    if owned:
        if view.stand_down or stepping_down:
            return Step.RELEASE
        if _stale_handover(observation, view.node):
            return Step.DISCARD_HANDOVER
        return Step.TAKEOVER
    if observation.claims or view.stand_down:
        return Step.WAIT
    return Step.CLAIM if may_claim(view, timing) else Step.WAIT


def relinquish_reason(view: View, timing: Timing) -> tuple[str, bool]:
    """Why `decide` said RELINQUISH, for the log; and whether it was asked for (a handover, a stop)."""
    observation = view.observation
    if view.stand_down:
        return "the daemon is stopping", True
    request = _step_down_request(observation, view.node)
    if request is not None:
        return f"an operator asked for a handover to {request.target or 'another coordinator'}", True
    if not view.connected:
        return "the ZooKeeper connection is suspended; the session may expire", False
    if observation is None:
        return "the ZooKeeper session was lost", False
    if not lease_holds(view, timing):
        age = view.now - observation.sent_at
        return f"no confirmation from ZooKeeper for {age:.1f}s (lease {timing.lease:.1f}s)", False
    return f"its claim is no longer the primary one (primary: {observation.owner or 'none'})", False
