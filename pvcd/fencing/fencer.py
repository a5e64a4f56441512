"""The fence flow: runs on every node, acts only while that node is primary.

Each round it observes every node's keepalive version, asks the pure detector
what to do, and carries out at most one fence under a cluster-wide ZooKeeper
lock: mark the node as being fenced (which also makes any keepalive of a merely
frozen node fail from then on), power it off over IPMI, judge the outcome, and
recover its VMs only when the policy allows.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from kazoo.exceptions import LockTimeout

from pvcd.config import DEFAULT_IPMI_PORT, Config
from pvcd.fencing.detector import LivenessTracker, NodeStatus, Verdict, decide
from pvcd.fencing.ipmi import IpmiDriver, IpmiError, IpmiTarget
from pvcd.fencing.outcome import FenceOutcome
from pvcd.fencing.policy import FenceAction, Recovery, after_fence
from pvcd.zk import nodes, schema
from pvcd.zk.store import Store, StoreError

log = logging.getLogger("pvcd.fencing")

FENCING = "fencing"
"""The outcome recorded while a fence is under way."""
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
            config.node, target, exc, config.node,
        )
        return False
    log.info("BMC of node %s at %s answers (power %s)", config.node, target, state)
    return True


def storage_fence(node: str) -> None:
    """Cut the dead node off from shared storage before its VMs start elsewhere.

    A hook: Ceph support will break the node's RBD locks and blocklist its
    client address here. Without managed storage there is nothing to cut.
    """
    log.info("Storage fencing of node %s: no managed storage to cut off", node)


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
    ) -> None:
        self.store = store
        self.config = config
        self.me = config.node
        self.is_primary = is_primary
        self.recover = recover
        self.driver = driver or IpmiDriver()
        self.clock = clock
        self.interval = config.fencing.keepalive_interval
        self.tracker = LivenessTracker()
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self._storm_logged: tuple[str, ...] = ()
        self._maintenance_logged: tuple[str, ...] = ()

    def start(self) -> None:
        # A primary term starts with no history: silence is only ever counted
        # from this node's own observations.
        self.tracker = LivenessTracker()
        self._storm_logged = ()
        self._maintenance_logged = ()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._loop, args=(self.stop_event,), name="fencer", daemon=True)
        self.thread.start()
        log.info("Fencer started on primary %s", self.me)

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(0.5)

    def _loop(self, stop_event: threading.Event) -> None:
        while not stop_event.wait(self.interval * ROUND_SHARE):
            if not self.is_primary():
                continue
            try:
                self.run_once()
            except StoreError as exc:
                log.warning("Fencing round skipped: %s", exc)

    # -- one round -------------------------------------------------------------

    def run_once(self) -> None:
        now = self.clock()
        views = nodes.read_cluster(self.store)
        fences = {view.name: view.fence for view in views}
        for view in views:
            if view.keepalive_version is not None:
                self.tracker.observe(view.name, view.keepalive_version, now)
        statuses = [
            NodeStatus(view.name, view.state.daemon, fences[view.name].get("outcome") is not None) for view in views
        ]
        maintenance = self._maintenance()
        decision = decide(
            statuses,
            self.tracker,
            now,
            self.interval,
            self.config.fencing.fence_intervals,
            self.me,
            maintenance,
            self.config.fencing.storm_guard_share,
        )
        self._record_storm(decision.dead if decision.verdict == Verdict.STORM else (), decision.reason)
        held_by_maintenance = decision.dead if decision.verdict == Verdict.MAINTENANCE else ()
        if held_by_maintenance and held_by_maintenance != self._maintenance_logged:
            log.warning("Nodes %s look dead but maintenance mode is on: not fencing", ", ".join(held_by_maintenance))
        self._maintenance_logged = held_by_maintenance
        self._resume_recoveries(fences, now)
        if decision.verdict == Verdict.FENCE and decision.target is not None:
            self._fence(decision.target)

    def _maintenance(self) -> bool:
        found = self.store.get(schema.MAINTENANCE)
        return bool(found and isinstance(found.value, dict) and found.value.get("enabled"))

    def _record_storm(self, dead: tuple[str, ...], reason: str) -> None:
        if dead == self._storm_logged:
            return
        self._storm_logged = dead
        value = {"storm": {"dead": list(dead), "reason": reason, "since_ms": self.store.server_time_ms()}} if dead else {}
        if dead:
            log.error("Storm guard: not fencing anyone: %s (nodes: %s)", reason, ", ".join(dead))
        else:
            log.info("Storm guard cleared")
        found = self.store.get(schema.FAULTS)
        if found is None:
            self.store.ensure_path(schema.CLUSTER)
            self.store.create(schema.FAULTS, value)
        else:
            self.store.set(schema.FAULTS, value, found.version)

    # -- fencing ---------------------------------------------------------------

    def _fence(self, node: str) -> None:
        lock = self.store.client.Lock(schema.FENCE_LOCK, identifier=self.me)
        try:
            if not lock.acquire(timeout=self.interval):
                return
        except LockTimeout:
            return
        try:
            self._fence_locked(node)
        finally:
            lock.release()

    def _fence_locked(self, node: str) -> None:
        before = self.store.get(schema.node_fence(node))
        keepalive = self.store.get(schema.node_keepalive(node))
        if before is None or keepalive is None or (before.value or {}).get("outcome") is not None:
            return
        silent_for = self.tracker.silent_for(node, self.clock())
        seen = self.tracker.seen.get(node)
        if seen is None or keepalive.version != seen.version or not self.is_primary():
            return
        started = self.store.server_time_ms()
        reason = f"no keepalive for {silent_for:.1f}s ({self.config.fencing.fence_intervals} intervals of {self.interval}s)"
        log.warning("Fencing node %s: %s", node, reason)
        record: dict[str, Any] = {"outcome": FENCING, "by": self.me, "started_ms": started, "reason": reason}
        self.store.set(schema.node_fence(node), record, before.version)
        version = before.version + 1
        report_steps: tuple[str, ...]
        target = self._ipmi_target(node)
        if target is None:
            outcome, why, report_steps = FenceOutcome.FAILED, "the node published no BMC address", ()
        else:
            report = self.driver.fence(target)
            outcome, why, report_steps = report.verdict.outcome, report.verdict.reason, report.steps
        action = after_fence(
            outcome,
            self.config.fencing.successful_fence,
            self.config.fencing.failed_fence,
            self.config.fencing.suicide_intervals,
            self.interval,
            self.tracker.silent_for(node, self.clock()),
        )
        log.log(
            logging.WARNING if outcome == FenceOutcome.CONFIRMED else logging.ERROR,
            "Fence of node %s: %s (%s); %s",
            node,
            outcome,
            why,
            action.reason,
        )
        record.update(
            outcome=str(outcome),
            outcome_reason=why,
            steps=list(report_steps),
            finished_ms=self.store.server_time_ms(),
            recovery=str(action.recovery),
            node_state=str(action.node_state),
            action_reason=action.reason,
            recovered=False,
        )
        self.store.set(schema.node_fence(node), record, version)
        if action.recovery == Recovery.RECOVER:
            self._recover(node)
        if outcome == FenceOutcome.CONFIRMED and target is not None:
            self._power_on(node, target)

    def _power_on(self, node: str, target: IpmiTarget) -> None:
        try:
            self.driver.power_on(target)
            log.info("Node %s powered on again; it stays fenced until 'pvc node ready %s'", node, node)
        except IpmiError as exc:
            log.error("Node %s stays powered off: %s", node, exc)

    def _ipmi_target(self, node: str) -> IpmiTarget | None:
        found = self.store.get(schema.node_ipmi(node))
        value = found.value if found is not None else None
        if not isinstance(value, dict) or not value.get("host"):
            return None
        port = int(value.get("port", DEFAULT_IPMI_PORT))
        return IpmiTarget(str(value["host"]), port, str(value["user"]), str(value["password"]))

    # -- recovery --------------------------------------------------------------

    def _resume_recoveries(self, fences: dict[str, dict[str, Any]], now: float) -> None:
        """Recoveries that waited: for the self-fence window, or for an operator's confirmation."""
        for node, record in fences.items():
            if record.get("recovered") is not False or record.get("outcome") in (None, FENCING):
                continue
            if record.get("confirmed_by_operator"):
                log.warning("Operator confirmed node %s is off; recovering its VMs", node)
                self._recover(node)
            elif record.get("recovery") == Recovery.WAIT_SELF_FENCE:
                action: FenceAction = after_fence(
                    FenceOutcome(record["outcome"]),
                    self.config.fencing.successful_fence,
                    self.config.fencing.failed_fence,
                    self.config.fencing.suicide_intervals,
                    self.interval,
                    self.tracker.silent_for(node, now),
                )
                if action.recovery == Recovery.RECOVER:
                    log.warning("Node %s: %s", node, action.reason)
                    self._recover(node)

    def _recover(self, node: str) -> None:
        if not self.is_primary():
            log.warning("Not recovering the VMs of node %s: this node is no longer primary", node)
            return
        storage_fence(node)
        result = self.recover(node)
        for vm, target in sorted(result.moved.items()):
            log.warning("Recovered VM %s of fenced node %s on node %s", vm, node, target)
        for vm, why in sorted(result.unplaced.items()):
            log.error("VM %s of fenced node %s could not be placed: %s; left stopped", vm, node, why)
        found = self.store.get(schema.node_fence(node))
        if found is None or not isinstance(found.value, dict):
            return
        record = dict(found.value, recovered=True, recovered_vms=result.moved, unplaced_vms=result.unplaced,
                      recovered_ms=self.store.server_time_ms())
        self.store.set(schema.node_fence(node), record, found.version)
