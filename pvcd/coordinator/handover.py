"""Which handover an operator's request stands for, or why it is refused (pure).

`pvc node primary NAME` and `pvc node secondary NAME` read the cluster, ask
these functions, and only then write a handover request. A refused request
changes nothing; its message is the single line the operator sees.

A crashed node's state record still says what it was doing when it died, so
a successor must also be alive: its keepalive, on ZooKeeper's clock, no older
than `pvcd.cluster.liveness` allows (not late). Handing over to a dead
node leaves the cluster without a primary until the dead
node's session expires and another coordinator takes over.
"""

from __future__ import annotations

from pvcd.cluster.liveness import is_late
from pvcd.cluster.values import NodeView
from pvcd.coordinator.claims import Handover
from pvcd.states import CoordinatorState, DaemonState


class HandoverRefused(Exception):
    """The request must not be made; the message says why, in one line."""


def _coordinator(nodes: dict[str, NodeView], name: str) -> NodeView:
    view = nodes.get(name)
    if view is None:
        raise HandoverRefused(f"no node named {name!r}")
    if not view.info.get("coordinator"):
        raise HandoverRefused(f"node {name} is not a coordinator (it is not in cluster.coordinators)")
    return view


def _ready(view: NodeView) -> bool:
    """Running, and a secondary coordinator: able to take over at once."""
    return view.state.daemon == DaemonState.RUN and view.state.coordinator == CoordinatorState.SECONDARY


def not_alive(view: NodeView, now_ms: int) -> str | None:
    """Why the node's state record cannot be trusted because its keepalive stopped, or None.

    `now_ms` is ZooKeeper's time (`Store.server_time_ms`), compared with the
    keepalive znode's mtime: never a node's own clock. The rule is
    `pvcd.cluster.liveness.is_late`, with the node's own published interval.
    """
    if view.keepalive_mtime_ms is None:
        return f"node {view.name} is not alive: it has sent no keepalive"
    interval = view.keepalive.get("interval")
    if not isinstance(interval, (int, float)) or isinstance(interval, bool) or interval <= 0:
        return f"node {view.name} is not alive: its keepalive record publishes no interval"
    if not is_late(view, now_ms):
        return None
    age_ms = max(now_ms - view.keepalive_mtime_ms, 0)
    return f"node {view.name} is not alive: its last keepalive was {age_ms / 1000:.1f}s ago (interval {interval:g}s)"


def _alive(view: NodeView, now_ms: int | None) -> bool:
    return now_ms is None or not_alive(view, now_ms) is None


def _no_pending(pending: Handover | None, exists: bool) -> None:
    if not exists:
        return
    if pending is None:
        raise HandoverRefused("an unreadable handover request is pending; the primary removes it shortly, retry then")
    raise HandoverRefused(
        f"a handover from {pending.source} to {pending.target or 'any other coordinator'} is already in progress"
    )


def primary_request(
    nodes: dict[str, NodeView],
    owner: str | None,
    pending: Handover | None,
    pending_exists: bool,
    target: str,
    now_ms: int | None = None,
) -> Handover | None:
    """The request that makes `target` primary; None when it is primary already.

    With `now_ms` (ZooKeeper's time) a target whose keepalive is late is
    refused; without it, only the nodes' state records are judged.
    """
    view = _coordinator(nodes, target)
    if owner == target:
        return None
    if owner is None:
        raise HandoverRefused("there is no primary coordinator right now; one takes over by itself as soon as it can")
    _no_pending(pending, pending_exists)
    if not _ready(view):
        raise HandoverRefused(
            f"node {target} cannot take over now (daemon {view.state.daemon}, coordinator {view.state.coordinator})"
        )
    dead = None if now_ms is None else not_alive(view, now_ms)
    if dead:
        raise HandoverRefused(dead)
    return Handover(source=owner, target=target)


def secondary_request(
    nodes: dict[str, NodeView],
    owner: str | None,
    pending: Handover | None,
    pending_exists: bool,
    name: str,
    now_ms: int | None = None,
) -> Handover | None:
    """The request that makes primary `name` step down for any other coordinator; None when it is not primary.

    With `now_ms`, coordinators whose keepalive is late do not count as ready.
    """
    _coordinator(nodes, name)
    if owner != name:
        return None
    _no_pending(pending, pending_exists)
    candidates = [view for other, view in nodes.items() if other != name and view.info.get("coordinator")]
    if not any(_ready(view) and _alive(view, now_ms) for view in candidates):
        raise HandoverRefused(f"no other coordinator is ready to take over from {name}")
    return Handover(source=name, target=None)
