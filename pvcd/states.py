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
    """Whether the node takes VMs; flush and fencing move it out of `ready`.

    Only `ready` takes VMs. `flush`: its VMs are being moved away; `flushed`:
    they are gone; `unflush`: VMs that left during a flush are coming back,
    and the node turns `ready` when they are home; `fenced`: the node was
    fenced (or fenced itself) and waits for an operator's `pvc node ready`.
    """

    READY = "ready"
    FLUSH = "flush"
    FLUSHED = "flushed"
    UNFLUSH = "unflush"
    FENCED = "fenced"


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


# A coordinator's work happens in `takeover` (floating IPs added, primary
# services started) and `relinquish` (the reverse), so every other node can see
# a handover in progress; a client never changes.
_COORDINATOR_TRANSITIONS: dict[CoordinatorState, frozenset[CoordinatorState]] = {
    CoordinatorState.CLIENT: frozenset(),
    CoordinatorState.SECONDARY: frozenset({CoordinatorState.TAKEOVER}),
    CoordinatorState.TAKEOVER: frozenset({CoordinatorState.PRIMARY, CoordinatorState.RELINQUISH}),
    CoordinatorState.PRIMARY: frozenset({CoordinatorState.RELINQUISH}),
    CoordinatorState.RELINQUISH: frozenset({CoordinatorState.SECONDARY}),
}


def coordinator_transition(current: CoordinatorState, wanted: CoordinatorState) -> CoordinatorState:
    """secondary → takeover → primary → relinquish → secondary; anything else is a bug."""
    if wanted not in _COORDINATOR_TRANSITIONS[current]:
        raise TransitionError(f"coordinator state cannot go from {current} to {wanted}")
    return wanted
