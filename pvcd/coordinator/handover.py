"""Which handover an operator's request stands for, or why it is refused (pure).

`pvc node primary NAME` and `pvc node secondary NAME` read the cluster, ask
these functions, and only then write a handover request. A refused request
changes nothing; its message is the single line the operator sees.
"""

from __future__ import annotations

from pvcd.coordinator.claims import Handover
from pvcd.states import CoordinatorState, DaemonState
from pvcd.zk.nodes import NodeView


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


def _no_pending(pending: Handover | None, exists: bool) -> None:
    if not exists:
        return
    if pending is None:
        raise HandoverRefused("an unreadable handover request is pending; the primary removes it shortly, retry then")
    raise HandoverRefused(
        f"a handover from {pending.source} to {pending.target or 'any other coordinator'} is already in progress"
    )


def primary_request(
    nodes: dict[str, NodeView], owner: str | None, pending: Handover | None, pending_exists: bool, target: str
) -> Handover | None:
    """The request that makes `target` primary; None when it is primary already."""
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
    return Handover(source=owner, target=target)


def secondary_request(
    nodes: dict[str, NodeView], owner: str | None, pending: Handover | None, pending_exists: bool, name: str
) -> Handover | None:
    """The request that makes primary `name` step down for any other coordinator; None when it is not primary."""
    _coordinator(nodes, name)
    if owner != name:
        return None
    _no_pending(pending, pending_exists)
    if not any(_ready(view) for other, view in nodes.items() if other != name and view.info.get("coordinator")):
        raise HandoverRefused(f"no other coordinator is ready to take over from {name}")
    return Handover(source=name, target=None)
