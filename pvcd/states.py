"""The node's state machines: pure, so the simulator and the tests share them."""

from __future__ import annotations

from enum import StrEnum


class DaemonState(StrEnum):
    INIT = "init"
    RUN = "run"
    SHUTDOWN = "shutdown"
    STOP = "stop"


class CoordinatorState(StrEnum):
    CLIENT = "client"
    SECONDARY = "secondary"
    TAKEOVER = "takeover"
    PRIMARY = "primary"
    RELINQUISH = "relinquish"


class DomainState(StrEnum):
    """Whether the node takes VMs; flush and fencing move it out of `ready`."""

    READY = "ready"


_DAEMON_TRANSITIONS: dict[DaemonState, frozenset[DaemonState]] = {
    DaemonState.INIT: frozenset({DaemonState.RUN, DaemonState.SHUTDOWN}),
    DaemonState.RUN: frozenset({DaemonState.SHUTDOWN}),
    DaemonState.SHUTDOWN: frozenset({DaemonState.STOP}),
    DaemonState.STOP: frozenset({DaemonState.INIT}),
}


class TransitionError(ValueError):
    pass


def daemon_transition(current: DaemonState, wanted: DaemonState) -> DaemonState:
    """The daemon walks init → run → shutdown → stop; anything else is a bug."""
    if wanted not in _DAEMON_TRANSITIONS[current]:
        raise TransitionError(f"daemon state cannot go from {current} to {wanted}")
    return wanted


def initial_coordinator_state(is_coordinator: bool) -> CoordinatorState:
    """A coordinator starts as secondary until an election makes it primary."""
    return CoordinatorState.SECONDARY if is_coordinator else CoordinatorState.CLIENT
