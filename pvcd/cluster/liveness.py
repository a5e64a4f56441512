"""When a node counts as late, and when as dead (pure): the one definition of both.

*Late* (placement, handover, the CLI): ZooKeeper has not seen the node's
keepalive change for LATE_INTERVALS of the node's own published interval, on
ZooKeeper's clock (the znode's mtime against the server's time). A late node
gets no VMs and is not handed the primary role, but nothing is done to it.

*Dead* (the fencer): judged only from what the watcher itself saw: the version
of each node's keepalive znode and the moment, on the watcher's monotonic
clock, that it first saw that version. No node's wall clock is ever compared
with another's, so clock skew can neither kill a healthy node nor hide a dead
one. A watcher that has just started (a new primary) has no history: it counts
silence from its first observation, which delays a fence but can never hasten
one. A dead node is fenced.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum

from pvcd.cluster.values import NodeView
from pvcd.fencing.flow import NodeFencing

DEFAULT_STORM_GUARD_SHARE = 0.5
"""Default for `pvc.system.fencing.storm_guard_share`: the share of nodes that may look dead at once."""

EXPECTS_KEEPALIVES = frozenset({"init", "run"})
"""Daemon states in which a node is expected to send keepalives: one that stopped cleanly is not dead."""

LATE_INTERVALS = 2
"""A keepalive older than this many intervals makes its node late."""


def keepalive_age_ms(view: NodeView, now_ms: int) -> int | None:
    """How long ago ZooKeeper last saw the node's keepalive change; None before its first keepalive."""
    if view.keepalive_mtime_ms is None:
        return None
    return now_ms - view.keepalive_mtime_ms


def is_late(view: NodeView, now_ms: int) -> bool:
    """Late: no keepalive yet, or none for LATE_INTERVALS of its own interval (see the module)."""
    age = keepalive_age_ms(view, now_ms)
    interval = view.keepalive.get("interval")
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not math.isfinite(interval):
        interval = 0  # a keepalive that does not say its interval: late as soon as it is not brand new
    return age is None or age > LATE_INTERVALS * interval * 1000


def late_nodes(views: Iterable[NodeView], now_ms: int) -> frozenset[str]:
    """The late nodes among `views` (a crashed node still says `run`: only its keepalive's age shows it)."""
    return frozenset(view.name for view in views if is_late(view, now_ms))


@dataclass(frozen=True)
class Seen:
    version: int
    at: float


@dataclass
class LivenessTracker:
    """The last keepalive version seen per node and when it was first seen."""

    seen: dict[str, Seen] = field(default_factory=dict)

    def observe(self, node: str, version: int, now: float) -> None:
        last = self.seen.get(node)
        if last is None or last.version != version:
            self.seen[node] = Seen(version, now)

    def forget(self, node: str) -> None:
        self.seen.pop(node, None)

    def silent_for(self, node: str, now: float) -> float:
        last = self.seen.get(node)
        return 0.0 if last is None else max(now - last.at, 0.0)


@dataclass(frozen=True)
class NodeStatus:
    """What the detector needs to know about a node besides its keepalives."""

    name: str
    daemon_state: str
    fence_pending: bool  # the node has a fence already: never fence twice
    fencing: NodeFencing | None
    """The node's own published settings; None (nothing usable published): never judged dead."""


class Verdict(StrEnum):
    NOTHING = "nothing"
    MAINTENANCE = "maintenance"
    STORM = "storm"
    FENCE = "fence"


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    dead: tuple[str, ...] = ()
    target: str | None = None
    reason: str = ""


def suspect_window(fencing: NodeFencing) -> float:
    """Silence after which a node counts towards the storm guard.

    Nodes cut off together by one network fault fall silent within a moment
    of each other; counting the nearly-dead as well as the dead lets the guard
    see them together, instead of fencing the first one a fraction of a second
    before the others' windows run out.
    """
    window = fencing.fence_window
    return max(window - fencing.keepalive_interval, window / 2)


def dead_nodes(
    nodes: list[NodeStatus],
    tracker: LivenessTracker,
    now: float,
    me: str,
    suspects: bool = False,
) -> list[str]:
    """Nodes expected to send keepalives whose keepalive has not moved for their own
    fence window (keepalive_interval × fence_intervals), or with `suspects` their
    storm-guard window. A node with fence_intervals 0 is never dead."""
    return sorted(
        node.name
        for node in nodes
        if node.name != me
        and node.fencing is not None
        and node.fencing.fence_intervals > 0
        and node.daemon_state in EXPECTS_KEEPALIVES
        and node.name in tracker.seen
        and tracker.silent_for(node.name, now)
        >= (suspect_window(node.fencing) if suspects else node.fencing.fence_window)
    )


def decide(
    nodes: list[NodeStatus],
    tracker: LivenessTracker,
    now: float,
    me: str,
    maintenance: bool,
    storm_share: float = DEFAULT_STORM_GUARD_SHARE,
) -> Decision:
    """What the primary should do about dead nodes this round: at most one new fence."""
    dead = dead_nodes(nodes, tracker, now, me)
    if not dead:
        return Decision(Verdict.NOTHING)
    if maintenance:
        return Decision(Verdict.MAINTENANCE, tuple(dead), reason="maintenance mode is on")
    suspects = dead_nodes(nodes, tracker, now, me, suspects=True)
    if len(suspects) > storm_share * len(nodes):
        return Decision(
            Verdict.STORM,
            tuple(suspects),
            reason=f"{len(suspects)} of {len(nodes)} nodes look dead at once (more than {storm_share:.0%}); "
            "this looks like a network or ZooKeeper problem, not dead hosts",
        )
    pending = {node.name for node in nodes if node.fence_pending}
    candidates = [name for name in dead if name not in pending]
    if not candidates:
        return Decision(Verdict.NOTHING, tuple(dead), reason="every dead node already has a fence outcome")
    return Decision(Verdict.FENCE, tuple(dead), target=candidates[0])
