"""The fence flow: runs on every coordinator, acts only while that node is primary.

Each round it observes every node's keepalive version, asks the pure detector
whether a new fence is due, and asks the pure state machine (`flow`) what every
fence already in ZooKeeper needs next — including fences another primary began
and could not finish. All of it happens under one cluster-wide lock, so at most
one fence acts at a time. Every step is written to the node's fence record
before the next one starts (see `flow` and docs/fencing.md).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pvcd.cluster.cache import ClusterCache
from pvcd.cluster.liveness import LivenessTracker, NodeStatus, Verdict, decide
from pvcd.cluster.values import NodeView
from pvcd.cluster.vm_records import brief
from pvcd.config import DEFAULT_IPMI_PORT, Config
from pvcd.fencing import flow, storage_cut
from pvcd.fencing.flow import Fence, Next, NodeFencing, Policy, Step
from pvcd.fencing.ipmi import IpmiDriver, IpmiError, IpmiTarget
from pvcd.fencing.outcome import FenceOutcome
from pvcd.fencing.storage_cut import StorageCut
from pvcd.fencing.storage_fence import StorageFencer
from pvcd.supervisor import Supervisor
from pvcd.zk import schema
from pvcd.zk.base import Store, StoreError, Unreadable, VersionConflict, as_empty
from pvcd.zk.faults import set_fault

log = logging.getLogger("pvcd.fencing")

ROUND_SHARE = 0.25
"""Rounds run four times per keepalive interval, so detection lags by at most a quarter interval."""


@dataclass(frozen=True)
class RecoveryResult:
    """What became of a dead node's VMs."""

    moved: dict[str, str]
    unplaced: dict[str, str]


Recover = Callable[[str], RecoveryResult]


def ipmi_record(config: Config) -> dict[str, Any]:
    """What a node publishes about its own BMC for the fencer."""
    ipmi = config.fencing.ipmi
    return {"host": ipmi.host, "port": ipmi.port, "user": ipmi.user, "password": ipmi.password}


def check_own_bmc(config: Config, driver: IpmiDriver | None = None) -> bool:
    """At start, a node checks that the BMC the others would fence it with answers.

    A node whose BMC is unreachable cannot be fenced: if it dies, its VMs stay
    down until an operator confirms it is off. Better to say so at once.
    """
    ipmi = config.fencing.ipmi
    target = IpmiTarget(ipmi.host, ipmi.port, ipmi.user, ipmi.password)
    try:
        state = (driver or IpmiDriver()).power_state(target)
    except IpmiError as exc:
        log.warning(
            "BMC of node %s at %s does not answer (%s): this node cannot be fenced, so if it dies its VMs "
            "stay down until an operator runs 'pvc node confirm-fenced %s'",
            config.node,
            target,
            exc,
            config.node,
        )
        return False
    log.info("BMC of node %s at %s answers (power %s)", config.node, target, state)
    return True


def node_fencing(view: NodeView) -> NodeFencing | None:
    """The fencing settings the node published for itself at registration."""
    return NodeFencing.from_json(view.info.get("fencing"))


class Fencer:
    """A primary-only service: started on takeover with no liveness history,
    stopped on relinquish. Every step that acts re-checks that this node is
    still primary, because a fence already under way outlives a stop."""

    name = "fencer"

    def __init__(
        self,
        store: Store,
        config: Config,
        is_primary: Callable[[], bool],
        recover: Recover,
        driver: IpmiDriver | None = None,
        clock: Callable[[], float] = time.monotonic,
        run_loop: Callable[[str, Callable[[], None], threading.Event, float], None] | None = None,
        cluster: ClusterCache | None = None,
        storage: StorageFencer | None = None,
    ) -> None:
        """`run_loop(name, body, stop_event, period)` runs the rounds: the daemon's supervisor.
        `cluster`: the daemon's cache, which every round reads instead of the store (by default
        one of the fencer's own). `storage`: the storage step (None: storage is not managed)."""
        self.store = store
        self.cluster = cluster or ClusterCache(store, with_vms=False, node=config.node)
        self._own_cluster = cluster is None
        self.config = config
        self.me = config.node
        self.is_primary = is_primary
        self.recover = recover
        self.storage = storage
        self.driver = driver or IpmiDriver()
        self.clock = clock
        self.policy = Policy(config.fencing.successful_fence, config.fencing.failed_fence)
        self.run_loop = run_loop or Supervisor(config.node).run
        self.tracker = LivenessTracker()
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self._storm_logged: tuple[str, ...] = ()
        self._maintenance_logged: tuple[str, ...] = ()
        self._unjudged_logged: tuple[str, ...] = ()
        self._damaged_logged: set[str] = set()

    def start(self) -> None:
        # A primary term starts with no history: silence is only ever counted
        # from this node's own observations.
        self.tracker = LivenessTracker()
        self._storm_logged = ()
        self._maintenance_logged = ()
        self.stop_event = threading.Event()
        if self._own_cluster:
            self.cluster.start()
        period = self.config.fencing.keepalive_interval * ROUND_SHARE
        self.thread = threading.Thread(
            target=self.run_loop, args=("fencer", self._round, self.stop_event, period), name="fencer", daemon=True
        )
        self.thread.start()
        log.info("Fencer started on primary %s", self.me)

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(0.5)
        if self._own_cluster:
            self.cluster.stop()

    def _round(self) -> None:
        """One round; a ZooKeeper or BMC failure is expected now and then and skips the round,
        anything else goes to the supervisor (logged with its traceback, counted, retried)."""
        if not self.is_primary():
            return
        try:
            self.run_once()
        except (StoreError, IpmiError) as exc:
            log.warning("Fencing round skipped: %s", exc)

    # -- one round -------------------------------------------------------------

    def run_once(self) -> None:
        now = self.clock()
        cluster = self.cluster.current(need_vms=False, caught_up=False)
        views = cluster.node_list()
        by_name = {view.name: view for view in views}
        for view in views:
            if view.keepalive_version is not None:
                self.tracker.observe(view.name, view.keepalive_version, now)
        statuses = [
            NodeStatus(view.name, view.state.daemon, Fence.from_record(view.fence) is not None, node_fencing(view))
            for view in views
        ]
        self._log_unjudged(statuses)
        decision = decide(
            statuses, self.tracker, now, self.me, cluster.maintenance, self.config.fencing.storm_guard_share
        )
        self._record_storm(decision.dead if decision.verdict == Verdict.STORM else (), decision.reason)
        held_by_maintenance = decision.dead if decision.verdict == Verdict.MAINTENANCE else ()
        if held_by_maintenance and held_by_maintenance != self._maintenance_logged:
            log.warning("Nodes %s look dead but maintenance mode is on: not fencing", ", ".join(held_by_maintenance))
        self._maintenance_logged = held_by_maintenance
        due = self._due(views)
        storage_due = self.storage.due(cluster) if self.storage is not None else []
        if not due and not storage_due and decision.verdict != Verdict.FENCE:
            return
        with self._locked() as locked:
            if not locked:
                return
            for name in due:
                self._carry_on(name, by_name[name])
            if decision.verdict == Verdict.FENCE and decision.target is not None:
                self._declare(by_name[decision.target])
            if self.storage is not None and storage_due:
                self.storage.tidy(storage_due)

    def _due(self, views: list[NodeView]) -> list[str]:
        """Nodes whose fence in ZooKeeper needs a step now, whoever started it."""
        now_ms: int | None = None
        due: list[str] = []
        for view in views:
            fence = Fence.from_record(view.fence)
            if fence is None or fence.step in (Step.RECOVERED, Step.HELD):
                continue
            if fence.step is Step.WAITING_WATCHDOG and now_ms is None:
                now_ms = self.store.server_time_ms()
            if flow.next_action(fence, node_fencing(view), now_ms or 0) is not Next.NOTHING:
                due.append(view.name)
        return due

    def _log_unjudged(self, statuses: list[NodeStatus]) -> None:
        unjudged = tuple(s.name for s in statuses if s.fencing is None and s.name != self.me)
        if unjudged and unjudged != self._unjudged_logged:
            log.error(
                "Nodes %s published no usable fencing settings (an older pvcd?): they are never fenced automatically",
                ", ".join(unjudged),
            )
        self._unjudged_logged = unjudged

    def _record_storm(self, dead: tuple[str, ...], reason: str) -> None:
        if dead == self._storm_logged:
            return
        fault = {"dead": list(dead), "reason": reason, "since_ms": self.store.server_time_ms()} if dead else None
        set_fault(self.store, "storm", fault)
        if dead:
            log.error("Storm guard: not fencing anyone: %s (nodes: %s)", reason, ", ".join(dead))
        else:
            log.info("Storm guard cleared")
        self._storm_logged = dead

    # -- the lock --------------------------------------------------------------

    class _Lock:
        def __init__(self, fencer: Fencer) -> None:
            self.lock = fencer.store.lock(schema.FENCE_LOCK, fencer.me)
            self.timeout = fencer.config.fencing.keepalive_interval
            self.held = False

        def __enter__(self) -> bool:
            self.held = self.lock.acquire(timeout=self.timeout)
            return self.held

        def __exit__(self, *_exc: object) -> None:
            if self.held:
                self.lock.release()

    def _locked(self) -> Fencer._Lock:
        return Fencer._Lock(self)

    # -- the steps -------------------------------------------------------------

    def _declare(self, view: NodeView) -> None:
        """Declare the fence, in one transaction with the check that the keepalive has not moved."""
        node = view.name
        seen = self.tracker.seen.get(node)
        fencing = node_fencing(view)
        if seen is None or fencing is None or not self.is_primary():
            return
        # Only the versions matter here: a value that is not JSON is read as none (its version kept),
        # so a node that wrote junk before it died is still fenced.
        fence_found, keepalive = (
            as_empty(answer) for answer in self.store.get_many([schema.node_fence(node), schema.node_keepalive(node)])
        )
        if fence_found is None or keepalive is None or keepalive.version != seen.version:
            return
        if Fence.from_record(fence_found.value) is not None:
            return
        silent_for = self.tracker.silent_for(node, self.clock())
        reason = (
            f"no keepalive for {silent_for:.1f}s ({fencing.fence_intervals} intervals of "
            f"{fencing.keepalive_interval:g}s)"
        )
        record: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "step": str(Step.DECLARED),
            "outcome": flow.IN_PROGRESS,
            "by": self.me,
            "started_ms": self.store.server_time_ms(),
            "reason": reason,
            "keepalive_version": keepalive.version,
            "keepalive_mtime_ms": keepalive.mtime_ms,
            "fencing": fencing.to_json(),
            "recovered": False,
        }
        try:
            self.store.transaction().check(schema.node_keepalive(node), seen.version).set(
                schema.node_fence(node), record, fence_found.version
            ).commit()
        except VersionConflict:
            log.info("Not fencing node %s: its keepalive moved while the fence was being declared", node)
            return
        log.warning("Fencing node %s (fence %s): %s", node, record["id"], reason)
        self._cut_storage(node, record, fencing)

    def _carry_on(self, node: str, view: NodeView) -> None:
        """A step of a fence found in ZooKeeper: one this primary began, or one it inherited.

        Decided again under the lock from the record as it is now: it may have
        moved on (or been cleared) since the round read it."""
        found = self.store.get(schema.node_fence(node))
        fence = Fence.from_record(found.value) if found is not None else None
        if found is None or fence is None or not isinstance(found.value, dict):
            return
        if not isinstance(found.value.get("id"), str) or not found.value["id"]:
            if node not in self._damaged_logged:
                log.error(
                    "Fence record %s of node %s is damaged (no fence id): not carried on; "
                    "'pvc node confirm-fenced' or 'pvc node ready' replaces it",
                    schema.node_fence(node),
                    node,
                )
                self._damaged_logged.add(node)
            return
        self._damaged_logged.discard(node)
        now_ms = self.store.server_time_ms() if fence.step is Step.WAITING_WATCHDOG else 0
        action = flow.next_action(fence, node_fencing(view), now_ms)
        if action is Next.NOTHING:
            return
        record = dict(found.value)
        if record.get("by") != self.me and record.get("resumed_by") != self.me:
            log.warning(
                "Carrying on fence %s of node %s at step %s, begun by primary %s",
                record["id"],
                node,
                fence.step,
                brief(record.get("by")),
            )
            record["resumed_by"] = self.me
        if action is Next.CUT_STORAGE:
            self._cut_storage(node, record, node_fencing(view))
        elif action is Next.POWER_OFF:
            self._power_off(node, record, node_fencing(view))
        elif action is Next.RECOVER:
            self._recover(node, record)

    def _write(self, node: str, record: dict[str, Any]) -> dict[str, Any]:
        """Write the next step; refused when the record changed (an operator readied the node, say)."""
        found = self.store.get(schema.node_fence(node))
        if found is None or not isinstance(found.value, dict) or found.value.get("id") != record.get("id"):
            raise VersionConflict(f"{schema.node_fence(node)}: the fence {record.get('id')} is no longer current")
        self.store.set(schema.node_fence(node), record, found.version)
        return record

    def _cut_storage(self, node: str, record: dict[str, Any], fencing: NodeFencing | None) -> None:
        """Cut the node off its VMs' disks before anything else: the storage step of the fence."""
        if not self.is_primary():
            return
        if record.get("step") != Step.CUTTING_STORAGE:
            record = self._write(node, dict(record, step=str(Step.CUTTING_STORAGE)))
        if self.storage is None:
            cut = storage_cut.skipped("storage is not managed here (enable_storage is False on the primary)")
        else:
            cut = self.storage.cut(node, str(record["id"]))
        log.log(
            logging.ERROR if cut.outcome is storage_cut.CutOutcome.FAILED else logging.WARNING,
            "Fence %s of node %s: storage cut %s: %s",
            record["id"],
            node,
            cut.outcome,
            cut.reason,
        )
        record = self._write(node, dict(record, step=str(Step.POWERING_OFF), storage=cut.to_json()))
        self._power_off(node, record, fencing)

    def _power_off(self, node: str, record: dict[str, Any], fencing: NodeFencing | None) -> None:
        if not self.is_primary():
            return
        if record.get("step") != Step.POWERING_OFF:
            record = self._write(node, dict(record, step=str(Step.POWERING_OFF)))
        target = self._ipmi_target(node)
        steps: tuple[str, ...] = ()
        if target is None:
            outcome, why = FenceOutcome.FAILED, "the node published no BMC address"
        else:
            report = self.driver.fence(target)
            outcome, why, steps = report.verdict.outcome, report.verdict.reason, report.steps
        after = flow.after_outcome(outcome, self.policy, fencing, StorageCut.from_json(record.get("storage")))
        log.log(
            logging.WARNING if outcome == FenceOutcome.CONFIRMED else logging.ERROR,
            "Fence %s of node %s: %s (%s); %s",
            record["id"],
            node,
            outcome,
            why,
            after.reason,
        )
        record = self._write(
            node,
            dict(
                record,
                step=str(after.step),
                outcome=str(outcome),
                outcome_reason=why,
                steps=list(steps),
                finished_ms=self.store.server_time_ms(),
                node_state=after.node_state,
                action_reason=after.reason,
            ),
        )
        if after.step is Step.RECOVERING:
            self._recover(node, record)
        elif after.step is Step.HELD and target is not None:
            self._power_on(node, target)

    def _recover(self, node: str, record: dict[str, Any]) -> None:
        if not self.is_primary():
            log.warning("Not recovering the VMs of node %s: this node is no longer primary", node)
            return
        if record.get("step") != Step.RECOVERING:
            log.warning("Recovering the VMs of node %s: %s", node, _why_now(record))
            record = self._write(node, dict(record, step=str(Step.RECOVERING)))
        result = self.recover(node)
        for vm, target in sorted(result.moved.items()):
            log.warning("Recovered VM %s of fenced node %s on node %s", vm, node, target)
        for vm, why in sorted(result.unplaced.items()):
            log.error("VM %s of fenced node %s could not be placed: %s; left stopped", vm, node, why)
        self._write(
            node,
            dict(
                record,
                step=str(Step.RECOVERED),
                recovered=True,
                recovered_vms=result.moved,
                unplaced_vms=result.unplaced,
                recovered_ms=self.store.server_time_ms(),
            ),
        )
        # Only now, with its VMs placed elsewhere, may the node boot again (it comes back fenced).
        # A primary that dies right here leaves it off, which is safe; an operator powers it on.
        bmc = self._ipmi_target(node)
        if record.get("outcome") == FenceOutcome.CONFIRMED and bmc is not None:
            self._power_on(node, bmc)

    def _power_on(self, node: str, target: IpmiTarget) -> None:
        try:
            self.driver.power_on(target)
            log.info("Node %s powered on again; it stays fenced until 'pvc node ready %s'", node, node)
        except IpmiError as exc:
            log.error("Node %s stays powered off: %s", node, exc)

    def _ipmi_target(self, node: str) -> IpmiTarget | None:
        """The node's BMC as it published it; None (with one line saying why) when it published
        none, or a record this fencer cannot use: the fence then fails like one with a dead BMC."""
        path = schema.node_ipmi(node)
        try:
            found = self.store.get(path)
        except Unreadable as exc:
            log.error("BMC record %s of node %s is not JSON (%s): the node cannot be powered off", path, node, exc)
            return None
        value = found.value if found is not None else None
        if not isinstance(value, dict) or not value.get("host"):
            return None
        target = ipmi_target_of(value)
        if target is None:
            log.error("BMC record %s of node %s is damaged: the node cannot be powered off", path, node)
        return target


def ipmi_target_of(value: dict[str, Any]) -> IpmiTarget | None:
    """A published BMC record as the driver's target; None unless host, user and password are
    strings and the port (623 when left out) is a port number. Never shows the password."""
    host, user, password = value.get("host"), value.get("user"), value.get("password")
    port = value.get("port", DEFAULT_IPMI_PORT)
    if not all(isinstance(text, str) for text in (host, user, password)):
        return None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        return None
    return IpmiTarget(str(host), port, str(user), str(password))


def _why_now(record: dict[str, Any]) -> str:
    if record.get("confirmed_by_operator"):
        return "an operator confirmed it is off"
    if record.get("step") == Step.WAITING_WATCHDOG:
        return "its watchdog window has passed since its last keepalive"
    return f"fence step {record.get('step')}"
