"""Node flush and ready: decisions (pure) and the runner that carries them out.

An operator asks a node to flush or to become ready by writing the node's
command record (`/pvc/nodes/NAME/command`, `{"id": ..., "domain": "flush"}`);
the node alone acts on it and alone writes its domain state and its report
(`/pvc/nodes/NAME/flush`). The latest command wins: a `ready` arriving during
a flush stops the flush from starting more moves, lets the moves under way
finish, and then brings the VMs back.

Flush: the node plans, with the batch planner, where each of its running VMs
goes, then moves them `concurrency` at a time (`migrate`, with `lastnode` this
node). A VM that fits nowhere is shut down here with `node_autostart` set, so
it starts again when the node is ready. Domain state: `flush`, then `flushed`.

Ready: domain state `unflush`; the VMs whose `lastnode` is this node come
back (`unmigrate`, planned so the node is not overfilled), stopped VMs with
`node_autostart` start here; then `ready`.

A fenced node carries out neither: its VMs are the fencer's to recover, and
its reconciler is held, so VMs it called back would never start. Before it
acts and while it waits for moves, the runner reads the node's fence record;
a fence, or the daemon refusing a domain-state change (it refuses while the
node is fenced), ends the command at once with a `refused` report that says
why. A refused command is not run again: `pvc node ready` on a fenced node
clears the fence and sends a new one.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pvcd.cluster.cache import read_view
from pvcd.cluster.liveness import late_nodes
from pvcd.cluster.values import NodeView
from pvcd.cluster.vm_records import (
    IN_PROGRESS,
    SHOULD_RUN,
    MoveKind,
    MovePhase,
    VmRecord,
    VmState,
    VmView,
    moved,
)
from pvcd.config import DEFAULT_FLUSH_CONCURRENCY
from pvcd.placement.cluster import capacities, is_fenced, plan_requests, unknown_selector, vm_request
from pvcd.placement.planner import Plan, Unplaced
from pvcd.placement.selectors import VmRequest
from pvcd.states import DomainState
from pvcd.supervisor import Supervisor
from pvcd.zk import nodes, schema, vms
from pvcd.zk.base import AlreadyExists, Store, StoreError, StoreUnavailable, Versioned

log = logging.getLogger("pvcd.flush")

DEFAULT_MOVE_TIMEOUT = 600.0
"""How long a flush or ready waits for one move before reporting it and going on."""

POLL_INTERVAL = 0.25
"""How often a flush or ready waiting for its moves looks at its fence and at a newer command."""

PENDING_READ_INTERVAL = 1.0
"""How often a flush with nothing left to move but VMs still stopping or arriving reads the cluster again."""

RECHECK_INTERVAL = 5.0
"""How often the VMs of the moves under way are read, besides the watches that follow them."""


class CommandKind(StrEnum):
    FLUSH = "flush"
    READY = "ready"


class Trigger(StrEnum):
    COMMAND = "command"
    SHUTDOWN = "shutdown"


class Phase(StrEnum):
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    REFUSED = "refused"
    """The node is fenced: it stopped (or never started) the command; `reason` says why."""


@dataclass(frozen=True)
class Command:
    """An operator's request, identified so the node acts on each exactly once."""

    id: str
    domain: CommandKind

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "domain": str(self.domain)}

    @classmethod
    def from_json(cls, value: Any) -> Command | None:
        if not isinstance(value, dict):
            return None
        try:
            return cls(id=str(value["id"]), domain=CommandKind(value["domain"]))
        except (KeyError, ValueError):
            return None

    @classmethod
    def new(cls, domain: CommandKind) -> Command:
        return cls(id=uuid.uuid4().hex, domain=domain)


@dataclass(frozen=True)
class Report:
    """What the node did about its last command (or its own shutdown flush).

    `command_id` is the last operator command the node took on; a flush the
    node does on its own when it shuts down keeps it, so that command is not
    run again at the next start. `moved` lists VMs sent away (flush) or
    brought back (ready); `left` the VMs that stayed, with why; `reason` why
    the command was refused.
    """

    command_id: str | None
    kind: CommandKind
    trigger: Trigger
    phase: Phase
    moved: tuple[str, ...] = ()
    left: Mapping[str, str] = field(default_factory=dict)
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "command_id": self.command_id,
            "kind": str(self.kind),
            "trigger": str(self.trigger),
            "phase": str(self.phase),
            "moved": list(self.moved),
            "left": dict(self.left),
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, value: Any) -> Report | None:
        if not isinstance(value, dict):
            return None
        try:
            return cls(
                command_id=value.get("command_id"),
                kind=CommandKind(value["kind"]),
                trigger=Trigger(value["trigger"]),
                phase=Phase(value["phase"]),
                moved=tuple(value.get("moved") or ()),
                left=dict(value.get("left") or {}),
                reason=value.get("reason"),
            )
        except (KeyError, ValueError):
            return None


# -- decisions (pure) -----------------------------------------------------------


def command_to_run(command: Command | None, report: Report | None) -> Command | None:
    """The command the node has yet to carry out, if any.

    A new command runs; so does one the node was carrying out when it
    stopped (its report still says so). A shutdown flush does not make the
    last command run again, nor does a refusal: the node was fenced, and an
    operator readies a fenced node with a new command.
    """
    if command is None:
        return None
    if report is None or report.command_id != command.id:
        return command
    if report.trigger == Trigger.COMMAND and report.phase not in (Phase.DONE, Phase.REFUSED):
        return command
    return None


def initial_domain_state(report: Report | None) -> DomainState:
    """A node that was flushed (by command or at shutdown) comes back flushed, until told `ready`.

    A refused flush never got the node flushed; the fence that refused it,
    not the report, keeps the node from taking VMs."""
    if report is not None and report.kind == CommandKind.FLUSH and report.phase != Phase.REFUSED:
        return DomainState.FLUSHED
    return DomainState.READY


def fence_refusal(node: str, fence: Mapping[str, Any]) -> str | None:
    """Why node `node` must not carry out a flush or ready, given its fence record; None if it may."""
    if not is_fenced(fence):
        return None
    return (
        f"node {node} is fenced ({fence.get('outcome')}, by {fence.get('by') or 'unknown'}): it moves no VMs; "
        f"'pvc node ready {node}' clears the fence and readies it"
    )


def vms_to_flush(me: str, views: Mapping[str, VmView]) -> list[VmRecord]:
    """The running VMs this node must send away now (moves already under way excluded)."""
    return sorted(
        (
            v.record
            for v in views.values()
            if v.record.node == me and v.migration is None and v.record.state == VmState.START
        ),
        key=lambda r: r.name,
    )


def flush_plan(
    me: str, views: Mapping[str, VmView], node_views: list[NodeView], late: frozenset[str], selector: str
) -> Plan:
    """Where this node's running VMs go; the same plan `pvc node flush --dry-run` prints."""
    requests = [vm_request(record) for record in vms_to_flush(me, views)]
    return plan_requests(requests, capacities(node_views, views, late), selector)


def flush_pending(me: str, views: Mapping[str, VmView]) -> list[str]:
    """VMs that keep the flush from being finished: still to run here, or moving from or to here."""
    pending = []
    for view in views.values():
        record, migration, status = view.record, view.migration, view.status
        moving = migration is not None and (
            (migration.source == me and migration.phase != MovePhase.RELEASED) or migration.target == me
        )
        to_run_here = record.node == me and (record.state in SHOULD_RUN or record.state == VmState.SHUTDOWN)
        still_here = status.active and status.node == me and record.state != VmState.FAIL
        if moving or to_run_here or still_here:
            pending.append(view.name)
    return sorted(pending)


def vms_to_return(me: str, views: Mapping[str, VmView]) -> tuple[list[VmRecord], list[VmRecord]]:
    """VMs that left this node by migration and may come back: (running ones, stopped ones)."""
    returning = [
        v.record
        for v in views.values()
        if v.record.lastnode == me and v.record.node != me and v.migration is None and v.record.state not in IN_PROGRESS
    ]
    running = sorted((r for r in returning if r.state in SHOULD_RUN), key=lambda r: r.name)
    stopped = sorted((r for r in returning if r.state not in SHOULD_RUN), key=lambda r: r.name)
    return running, stopped


def vms_to_autostart(me: str, views: Mapping[str, VmView]) -> list[VmRecord]:
    """Stopped VMs of this node that asked to start when it is next ready."""
    return sorted(
        (
            v.record
            for v in views.values()
            if v.record.node == me
            and v.record.node_autostart
            and v.migration is None
            and v.record.state == VmState.STOP
        ),
        key=lambda r: r.name,
    )


def return_plan(
    me: str, views: Mapping[str, VmView], node_views: list[NodeView], late: frozenset[str], selector: str
) -> Plan:
    """Which returning and autostarting VMs this node can take back, without overfilling itself.

    Planned as if the node were already ready (it is `unflush` meanwhile, so
    no other node's plan sends it VMs before its own are home).
    """
    running, _ = vms_to_return(me, views)
    requests = [vm_request(record, target=me) for record in running]
    requests += [_starting_here(vm_request(record, target=me)) for record in vms_to_autostart(me, views)]
    return plan_requests(requests, capacities(node_views, views, late, treat_as_ready=me), selector)


def _starting_here(request: VmRequest | Unplaced) -> VmRequest | Unplaced:
    """A stopped VM of this node starting here is not moving: it has no current node to leave."""
    return dataclasses.replace(request, current_node=None) if isinstance(request, VmRequest) else request


# -- the runner ------------------------------------------------------------------


class _Refused(Exception):
    """The node is fenced: the command stops where it is."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class _Progress:
    """What a command has done so far; a refusal reports it as it stands."""

    moved: list[str] = field(default_factory=list)
    left: dict[str, str] = field(default_factory=dict)


class FlushRunner:
    """Carries out this node's flush and ready commands, one at a time, in a thread.

    `set_domain_state` is the daemon's: the node's state record has one
    writer, and it is the daemon. It returns False when it refuses the change
    because the node is fenced, and the command then stops.
    """

    def __init__(
        self,
        store: Store,
        node: str,
        set_domain_state: Callable[[DomainState], bool],
        selector: str,
        concurrency: int = DEFAULT_FLUSH_CONCURRENCY,
        move_timeout: float = DEFAULT_MOVE_TIMEOUT,
        poll_interval: float = POLL_INTERVAL,
        supervisor: Supervisor | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"flush concurrency must be at least 1, got {concurrency}")
        self.store = store
        self.node = node
        self.set_domain_state = set_domain_state
        self.selector = selector
        self.concurrency = concurrency
        self.move_timeout = move_timeout
        self.poll_interval = poll_interval
        self.supervisor = supervisor or Supervisor(node)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- thread control ------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self.store.watch_data(schema.node_command(self.node), self._on_command)
        self._wake.set()
        self._thread = threading.Thread(target=self._loop, name=f"flush-{self.node}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop; a flush under way stops starting moves (those started finish on their own)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _on_command(self, _value: Versioned | None) -> bool:
        if self._stop.is_set():
            return False
        self._wake.set()
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(5.0)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                command = command_to_run(self._command(), read_report(self.store, self.node))
                if command is not None:
                    self.run(command)
            except StoreUnavailable as exc:
                log.warning("Node %s cannot read its commands: ZooKeeper unreachable (%s)", self.node, exc)
                self._stop.wait(1.0)
                self._wake.set()
            except Exception as exc:  # never let a bug end the node's command handling: counted, retried
                self.supervisor.failed("flush-runner", exc)
                self._stop.wait(1.0)
            else:
                self.supervisor.succeeded("flush-runner")

    def _command(self) -> Command | None:
        found = self.store.get(schema.node_command(self.node))
        return Command.from_json(found.value) if found else None

    def run(self, command: Command) -> Report:
        log.info("Node %s: %s requested (command %s)", self.node, command.domain, command.id)
        if command.domain == CommandKind.FLUSH:
            return self.flush(command.id, Trigger.COMMAND, functools.partial(self._superseded, command.id))
        return self.ready(command.id)

    def _superseded(self, command_id: str) -> bool:
        if self._stop.is_set():
            return True
        current = self._command()
        return current is not None and current.id != command_id

    # -- the fence -----------------------------------------------------------

    def _check_fence(self) -> None:
        """Raise _Refused if the node's fence record says it is fenced."""
        reason = fence_refusal(self.node, nodes.read_fence(self.store, self.node))
        if reason is not None:
            raise _Refused(reason)

    def _enter(self, state: DomainState) -> None:
        """Ask the daemon for a domain state; it refuses while the node is fenced."""
        if not self.set_domain_state(state):
            raise _Refused(f"node {self.node} is fenced: the daemon refused domain state {state}")

    def _refused(
        self, command_id: str | None, kind: CommandKind, trigger: Trigger, reason: str, progress: _Progress
    ) -> Report:
        report = Report(
            command_id, kind, trigger, Phase.REFUSED, tuple(sorted(progress.moved)), dict(progress.left), reason
        )
        self._write(report)
        log.warning(
            "Node %s: %s (%s) not carried out: %s%s",
            self.node,
            kind,
            f"command {command_id}" if trigger == Trigger.COMMAND else "at shutdown",
            reason,
            f"; left: {', '.join(f'{k} ({v})' for k, v in sorted(progress.left.items()))}" if progress.left else "",
        )
        return report

    # -- flush ---------------------------------------------------------------

    def flush_for_shutdown(self, timeout: float) -> Report:
        """Flush before the daemon stops (`flush_on_shutdown`), giving up after `timeout` seconds."""
        report = read_report(self.store, self.node)
        deadline = time.monotonic() + timeout
        return self.flush(report.command_id if report else None, Trigger.SHUTDOWN, lambda: time.monotonic() > deadline)

    def flush(self, command_id: str | None, trigger: Trigger, cancelled: Callable[[], bool]) -> Report:
        """Move every running VM away, then report `flushed`; stop early if `cancelled()` or fenced."""
        progress = _Progress()
        try:
            return self._flush(command_id, trigger, cancelled, progress)
        except _Refused as refused:
            return self._refused(command_id, CommandKind.FLUSH, trigger, refused.reason, progress)

    def _flush(
        self, command_id: str | None, trigger: Trigger, cancelled: Callable[[], bool], progress: _Progress
    ) -> Report:
        self._check_fence()
        self._enter(DomainState.FLUSH)
        self._write(Report(command_id, CommandKind.FLUSH, trigger, Phase.RUNNING))
        deadline = time.monotonic() + self.move_timeout
        while True:
            self._check_fence()
            if cancelled():
                report = Report(
                    command_id, CommandKind.FLUSH, trigger, Phase.CANCELLED, tuple(progress.moved), progress.left
                )
                log.info("Node %s: flush cancelled after moving %d VMs", self.node, len(progress.moved))
                self._write(report)
                return report
            cluster = read_view(self.store, with_vms=True)
            views, node_views = dict(cluster.vms), cluster.node_list()
            plan = flush_plan(
                self.node, views, node_views, late_nodes(node_views, self.store.server_time_ms()), self.selector
            )
            if plan.placements or plan.unplaced:
                self._log_plan(plan, views)
                for unplaced in plan.unplaced:
                    reason = f"flush of {self.node}: {unplaced.detail}"
                    if self._leave_stopped(views[unplaced.vm], reason):
                        progress.left[unplaced.vm] = reason
                self._carry_out([(p.vm, p.node) for p in plan.placements], MoveKind.MIGRATE, cancelled, progress)
                deadline = time.monotonic() + self.move_timeout
                continue
            pending = flush_pending(self.node, views)
            if not pending or time.monotonic() > deadline:
                for name in pending:
                    progress.left.setdefault(name, "still moving or stopping when the flush ended")
                break
            # VMs still stopping or arriving: the cluster is read again a while later, fence and command meanwhile.
            read_again = time.monotonic() + PENDING_READ_INTERVAL
            while not self._stop.wait(self.poll_interval) and time.monotonic() < read_again:
                self._check_fence()
                if cancelled():
                    break
        self._enter(DomainState.FLUSHED)
        report = Report(
            command_id, CommandKind.FLUSH, trigger, Phase.DONE, tuple(sorted(progress.moved)), progress.left
        )
        self._write(report)
        log.info(
            "Node %s is flushed: %d VMs moved away%s",
            self.node,
            len(progress.moved),
            f"; left: {', '.join(f'{k} ({v})' for k, v in sorted(progress.left.items()))}" if progress.left else "",
        )
        return report

    def _leave_stopped(self, view: VmView, reason: str) -> bool:
        """A VM the flush cannot place: shut it down here, to start again when the node is ready."""
        record = dataclasses.replace(view.record, state=VmState.SHUTDOWN, node_autostart=True, reason=reason)
        try:
            vms.VmWrite(self.store, view).record(record).commit()
        except StoreError as exc:
            log.warning("VM %s: could not mark it to stay on %s (%s); the flush plans again", view.name, self.node, exc)
            return False
        log.warning(
            "VM %s fits on no other node: shutting it down on %s with autostart set (%s)", view.name, self.node, reason
        )
        return True

    def _log_plan(self, plan: Plan, views: Mapping[str, VmView]) -> None:
        for placement in plan.placements:
            odd = unknown_selector(views[placement.vm].record)
            log.info(
                "Flush of %s: VM %s goes to %s (selector %s%s)",
                self.node,
                placement.vm,
                placement.node,
                placement.selector,
                f"; its own selector {odd!r} is unknown to this version" if odd else "",
            )

    # -- ready ---------------------------------------------------------------

    def ready(self, command_id: str) -> Report:
        """Bring back the VMs that left this node, start its autostart VMs, then report `ready`."""
        progress = _Progress()
        try:
            return self._ready(command_id, progress)
        except _Refused as refused:
            return self._refused(command_id, CommandKind.READY, Trigger.COMMAND, refused.reason, progress)

    def _ready(self, command_id: str, progress: _Progress) -> Report:
        self._check_fence()
        self._enter(DomainState.UNFLUSH)
        self._write(Report(command_id, CommandKind.READY, Trigger.COMMAND, Phase.RUNNING))
        cluster = read_view(self.store, with_vms=True)
        views, node_views = dict(cluster.vms), cluster.node_list()
        plan = return_plan(
            self.node, views, node_views, late_nodes(node_views, self.store.server_time_ms()), self.selector
        )
        _, stopped = vms_to_return(self.node, views)
        autostart = {r.name for r in vms_to_autostart(self.node, views)}
        progress.left.update({u.vm: f"stays where it is: {u.detail}" for u in plan.unplaced})
        for unplaced in plan.unplaced:
            log.warning("VM %s does not come back to %s: %s", unplaced.vm, self.node, unplaced.detail)
        returning = [(p.vm, self.node) for p in plan.placements if p.vm not in autostart]
        returning += [(r.name, self.node) for r in stopped]
        self._carry_out(returning, MoveKind.UNMIGRATE, functools.partial(self._superseded, command_id), progress)
        for placement in plan.placements:
            if placement.vm in autostart:
                self._check_fence()
                if self._autostart(views[placement.vm]):
                    progress.moved.append(placement.vm)
        self._enter(DomainState.READY)
        report = Report(
            command_id, CommandKind.READY, Trigger.COMMAND, Phase.DONE, tuple(sorted(progress.moved)), progress.left
        )
        self._write(report)
        log.info("Node %s is ready: %d VMs back or started", self.node, len(progress.moved))
        return report

    def _autostart(self, view: VmView) -> bool:
        record = dataclasses.replace(view.record, state=VmState.START, node_autostart=False, reason=None)
        try:
            vms.VmWrite(self.store, view).record(record).commit()
        except StoreError as exc:
            log.warning("VM %s: autostart on %s skipped (%s)", view.name, self.node, exc)
            return False
        log.info("VM %s: starting on %s (autostart)", view.name, self.node)
        return True

    # -- moving VMs, a bounded number at a time --------------------------------

    def _carry_out(
        self, moves: list[tuple[str, str]], kind: MoveKind, cancelled: Callable[[], bool], progress: _Progress
    ) -> None:
        """Request the moves, at most `concurrency` under way; add the arrived and the left (with why) to `progress`.

        Each move under way is followed by a watch on its VM's migration: the
        move is over when that is gone (or is another move's), and only then is
        the VM read, once, to see where it ended. Every `poll_interval` the
        runner looks at its fence and at `cancelled()`, and every
        `RECHECK_INTERVAL` it reads the VMs still moving (a safety net; the
        watches see every change). Once cancelled, no more moves start, but
        those under way are waited for (up to the move timeout), so whatever
        runs next sees every VM settled. Once the node is fenced nothing is
        waited for: the moves under way are the fence recovery's to settle.
        """
        pending = list(moves)
        in_flight: dict[str, tuple[str, str, float]] = {}
        follow = _MoveWatches(self.store)
        last_recheck = time.monotonic()
        try:
            while pending or in_flight:
                follow.changed.clear()
                if self._stop.is_set():
                    progress.left.update({vm: "the node stopped before it moved" for vm, _ in pending})
                    break
                try:
                    self._check_fence()
                except _Refused:
                    progress.left.update({vm: "not moved: the node was fenced" for vm, _ in pending})
                    progress.left.update(
                        {vm: "moving when the node was fenced; the fence recovery settles it" for vm in in_flight}
                    )
                    raise
                if pending and cancelled():
                    progress.left.update({vm: "cancelled before it moved" for vm, _ in pending})
                    pending = []
                while pending and len(in_flight) < self.concurrency:
                    vm, target = pending.pop(0)
                    move_id = self._request(vm, target, kind)
                    if move_id is None:
                        progress.left[vm] = "changed meanwhile; not moved"
                    else:
                        in_flight[vm] = (move_id, target, time.monotonic())
                        follow.add(vm, move_id)
                ended = follow.ended()
                now = time.monotonic()
                if now - last_recheck >= RECHECK_INTERVAL:
                    ended |= set(in_flight)
                    last_recheck = now
                ended &= set(in_flight)
                for vm, view in _read_now(self.store, sorted(ended)).items():
                    move_id, target, started = in_flight[vm]
                    if view is None:
                        progress.left[vm] = "removed while moving"
                    elif view.migration is None or view.migration.id != move_id:
                        if view.record.state == VmState.FAIL:
                            progress.left[vm] = view.record.reason or "failed"
                        elif view.record.node != target:
                            progress.left[vm] = f"ended on {view.record.node}, not {target}"
                        else:
                            progress.moved.append(vm)
                    else:
                        continue  # still moving (a recheck)
                    del in_flight[vm]
                    follow.drop(vm)
                for vm, (_move_id, _target, started) in list(in_flight.items()):
                    if now - started > self.move_timeout:
                        progress.left[vm] = f"still moving after {self.move_timeout:g}s"
                        del in_flight[vm]
                        follow.drop(vm)
                if in_flight and not follow.ended_pending():
                    follow.changed.wait(self.poll_interval)
        finally:
            follow.close()

    def _request(self, vm: str, target: str, kind: MoveKind) -> str | None:
        """Ask for one move if the VM is still as planned; the move's id, or None."""
        view = vms.read_vm(self.store, vm)
        if view is None or view.migration is not None or view.record.state in IN_PROGRESS:
            return None
        if kind == MoveKind.MIGRATE and (view.record.node != self.node or view.record.state != VmState.START):
            return None
        if kind == MoveKind.UNMIGRATE and (view.record.lastnode != self.node or view.record.node == self.node):
            return None
        move_id = uuid.uuid4().hex
        lastnode = self.node if kind == MoveKind.MIGRATE else None
        record, migration = moved(view, kind, target, move_id, lastnode)
        try:
            vms.request_move(self.store, view, record, migration)
        except StoreError as exc:
            log.warning("VM %s: %s to %s not requested (%s)", vm, kind, target, exc)
            return None
        log.info("VM %s: %s from %s to %s requested", vm, kind, view.record.node, target)
        return move_id if migration is not None else f"direct-{move_id}"

    def _write(self, report: Report) -> None:
        try:
            write_report(self.store, self.node, report)
        except StoreError as exc:
            log.warning("Node %s could not write its flush report: %s", self.node, exc)


class _MoveWatches:
    """Watches on the migrations of the moves a flush or ready waits for.

    The callbacks (on the store's thread) only note that a move is over and
    set `changed`; the runner reads the VM itself. A move without a migration
    (a stopped VM changes node at once) is over as soon as it is requested.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self.changed = threading.Event()
        self._lock = threading.Lock()
        self._following: dict[str, str] = {}
        self._ended: set[str] = set()
        self._closed = False

    def add(self, vm: str, move_id: str) -> None:
        with self._lock:
            self._following[vm] = move_id
        self.store.watch_data(schema.vm_migration(vm), functools.partial(self._on_migration, vm, move_id))

    def _on_migration(self, vm: str, move_id: str, value: Versioned | None) -> bool:
        with self._lock:
            if self._closed or self._following.get(vm) != move_id:
                return False  # no longer waited for: this watch ends
            current = value.value if value is not None else None
            if isinstance(current, dict) and current.get("id") == move_id:
                return True
            self._ended.add(vm)
        self.changed.set()
        return False

    def ended(self) -> set[str]:
        """The VMs whose move ended since the last call."""
        with self._lock:
            ended, self._ended = self._ended, set()
        return ended

    def ended_pending(self) -> bool:
        with self._lock:
            return bool(self._ended)

    def drop(self, vm: str) -> None:
        with self._lock:
            self._following.pop(vm, None)
            self._ended.discard(vm)

    def close(self) -> None:
        """Every watch ends at its next event."""
        with self._lock:
            self._closed = True
            self._following.clear()


def _read_now(store: Store, names: list[str]) -> dict[str, VmView | None]:
    """The VMs `names` (None: removed), every read sent before the first answer is awaited."""
    asked = [
        (
            name,
            store.get_async(schema.vm(name)),
            store.get_async(schema.vm_status(name)),
            store.get_async(schema.vm_migration(name)),
        )
        for name in names
    ]
    return {
        name: vms.view_of(record.result(), status.result(), migration.result())
        for name, record, status, migration in asked
    }


def read_report(store: Store, node: str) -> Report | None:
    found = store.get(schema.node_flush(node))
    return Report.from_json(found.value) if found else None


def write_report(store: Store, node: str, report: Report) -> None:
    """The node's report has one writer, the node itself, so the latest simply replaces it."""
    try:
        store.create(schema.node_flush(node), report.to_json())
    except AlreadyExists:
        store.set(schema.node_flush(node), report.to_json(), -1)


def write_command(store: Store, node: str, command: Command) -> None:
    """The operator's request; the latest command replaces any earlier one (a ready cancels a flush)."""
    try:
        store.create(schema.node_command(node), command.to_json())
    except AlreadyExists:
        store.set(schema.node_command(node), command.to_json(), -1)
