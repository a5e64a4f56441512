"""What a node must do so that libvirt matches ZooKeeper for its VMs (pure).

`decide` compares the VMs in ZooKeeper with the domains on this node's
libvirt host and returns one action per VM that needs one. It never reads a
clock or does I/O: the reconciler hands the actions to the domain adapter.

The rules that keep a VM from running on two hosts (docs/vms.md):

* a node starts a VM only if the record assigns it to that node and the
  status says no other node may have it running;
* the target of a move starts the VM only after the source has released it;
* a domain this node runs but ZooKeeper does not assign to it is reported,
  never adopted nor killed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from pvcd.cluster.vm_records import ActualState, MovePhase, VmState, VmView


@dataclass(frozen=True)
class DomainInfo:
    """A domain as this node's libvirt has it.

    `guest_shutdown`: the domain is shut off because the guest shut itself
    down (libvirt's shutoff reason), as opposed to never started or destroyed.
    """

    name: str
    uuid: str
    active: bool
    guest_shutdown: bool = False


class Act(StrEnum):
    START = "start"
    """Claim the VM in its status, define and start the domain, report it running."""
    SHUTDOWN = "shutdown"
    """Ask the guest to shut down, destroy it after the timeout, undefine, report stopped."""
    STOP = "stop"
    """Destroy at once, undefine, report stopped."""
    RESTART = "restart"
    """Shut down as above, then start."""
    REPORT_RUNNING = "report_running"
    """The domain runs as wanted; bring the status (and a finished request's state) up to date."""
    REPORT_STOPPED = "report_stopped"
    """Nothing runs as wanted; undefine a leftover inactive domain and bring the status up to date."""
    GUEST_STOPPED = "guest_stopped"
    """The guest shut itself down: respect that, record `stop` with the reason."""
    MIGRATE_OUT = "migrate_out"
    """Source of a move with the domain running: migrate it (or shut it down) and release it."""
    RELEASE = "release"
    """Source of a move with nothing running here: release it at once."""
    FINISH_MOVE = "finish_move"
    """Target of a released move: start the VM if it should run, then close the move."""
    BLOCKED = "blocked"
    """Assigned here and wanted running, but its status says another node may run it: report, wait."""
    UNMANAGED = "unmanaged"
    """A domain here that ZooKeeper does not assign to this node: report, never touch."""


REPORT_ONLY = frozenset({Act.BLOCKED, Act.UNMANAGED})


@dataclass(frozen=True)
class Action:
    """One thing to do for one VM (or unmanaged domain) named `vm`.

    `then` is the desired state to record once the action succeeded (None:
    leave the record's state alone). `note` is the operator-facing reason.
    """

    act: Act
    vm: str
    then: VmState | None = None
    note: str = ""


def decide(me: str, vms: Mapping[str, VmView], domains: Mapping[str, DomainInfo]) -> list[Action]:
    """Every action node `me` should take now, sorted by VM name."""
    actions = []
    for name, view in vms.items():
        action = decide_vm(me, view, domains.get(name))
        if action is not None:
            actions.append(action)
    for name, domain in domains.items():
        if name not in vms:
            state = "runs" if domain.active else "is defined (not running)"
            actions.append(Action(Act.UNMANAGED, name, note=f"domain {name} {state} here but is not a pvcd VM"))
    return sorted(actions, key=lambda action: action.vm)


def decide_vm(me: str, view: VmView, domain: DomainInfo | None) -> Action | None:
    """The action node `me` takes for one VM, or None when libvirt and ZooKeeper agree."""
    record, migration = view.record, view.migration
    if domain is not None and domain.uuid != record.uuid:
        return Action(
            Act.UNMANAGED,
            record.name,
            note=f"a different domain named {record.name} (UUID {domain.uuid}, VM has {record.uuid}) is defined here",
        )
    if migration is not None and migration.source == me:
        return _source(view, domain)
    if record.node != me:
        if domain is None:
            return None
        where = f"ZooKeeper assigns it to {record.node}"
        if domain.active:
            return Action(Act.UNMANAGED, record.name, note=f"VM {record.name} runs here but {where}")
        return Action(Act.UNMANAGED, record.name, note=f"VM {record.name} is defined (not running) here but {where}")
    if migration is not None:
        if migration.phase != MovePhase.RELEASED:
            return None
        return _blocked_elsewhere(me, view) or Action(Act.FINISH_MOVE, record.name)
    return _owned(me, view, domain)


def _source(view: VmView, domain: DomainInfo | None) -> Action | None:
    """This node is the source of a move: let the VM go, exactly once."""
    migration = view.migration
    assert migration is not None
    if migration.phase == MovePhase.RELEASED:
        if domain is not None and domain.active:
            return Action(
                Act.UNMANAGED,
                view.name,
                note=f"VM {view.name} runs here but was released to {migration.target}",
            )
        return None
    if domain is not None and domain.active:
        return Action(Act.MIGRATE_OUT, view.name, note=f"{migration.kind} to {migration.target}")
    return Action(Act.RELEASE, view.name, note=f"{migration.kind} to {migration.target}; not running here")


def _owned(me: str, view: VmView, domain: DomainInfo | None) -> Action | None:
    record, status = view.record, view.status
    running = domain is not None and domain.active
    state = record.state
    if state in (VmState.START, VmState.MIGRATE, VmState.UNMIGRATE):
        then = None if state == VmState.START else VmState.START
        if running:
            if then is not None or status.node != me or status.state != ActualState.RUNNING:
                return Action(Act.REPORT_RUNNING, record.name, then=then)
            return None
        if domain is not None and domain.guest_shutdown and status.node == me and status.state == ActualState.RUNNING:
            return Action(Act.GUEST_STOPPED, record.name, then=VmState.STOP, note="the guest shut itself down")
        return _blocked_elsewhere(me, view) or Action(Act.START, record.name, then=then)
    if state == VmState.RESTART:
        if running:
            return Action(Act.RESTART, record.name, then=VmState.START)
        return _blocked_elsewhere(me, view) or Action(Act.START, record.name, then=VmState.START)
    if state in (VmState.SHUTDOWN, VmState.DISABLE):
        then = VmState.STOP if state == VmState.SHUTDOWN else None
        if running:
            return Action(Act.SHUTDOWN, record.name, then=then)
        return _settle_stopped(me, view, domain, then)
    if state == VmState.STOP:
        if running:
            return Action(Act.STOP, record.name)
        return _settle_stopped(me, view, domain, None)
    # fail: leave the domain as it is for the operator; only keep the status truthful.
    if running:
        if status.node != me or status.state != ActualState.RUNNING:
            return Action(Act.REPORT_RUNNING, record.name)
        return None
    return _settle_stopped(me, view, domain, None)


def _settle_stopped(me: str, view: VmView, domain: DomainInfo | None, then: VmState | None) -> Action | None:
    """Nothing runs here, as wanted: tidy up only what is this node's to tidy."""
    status = view.status
    stale_status = status.active and status.node == me
    if domain is not None or stale_status or then is not None:
        return Action(Act.REPORT_STOPPED, view.name, then=then)
    return None


def _blocked_elsewhere(me: str, view: VmView) -> Action | None:
    """Refuse to start a VM whose status says another node may still run it."""
    status = view.status
    if status.active and status.node != me:
        return Action(
            Act.BLOCKED,
            view.name,
            note=f"VM {view.name} is assigned here but {status.node} reports it {status.state}; not starting it",
        )
    return None


def memory_shortfall(vm: str, need_mib: int, free_mib: int, node: str) -> str | None:
    """Why the VM cannot start on this host for lack of memory, or None if it fits."""
    if need_mib > free_mib:
        return f"not enough memory on {node}: VM {vm} needs {need_mib} MiB, {free_mib} MiB free"
    return None
