"""The coordinator loop a coordinator node's daemon runs: observe, decide, act.

One thread does everything that changes the node's role — claims, floating
IPs, primary services — so no two actions can interleave. It never blocks
for long: ZooKeeper calls are bounded (`election`), services run under a
deadline (`services`), and state changes are published from a separate
thread, because a ZooKeeper write may hang exactly when the loop must step
down. kazoo's connection listener only records the session state and wakes
the loop; the loop then decides with that state and the lease (`decide`).

After a SIGSTOP, the loop's first act on waking is that decision: its last
confirmation is now old by the monotonic clock, so the lease is over and the
only possible step is to relinquish. The floating IPs have meanwhile expired
in the kernel by themselves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from pvcd.cluster.client_networks import ClientNetwork
from pvcd.config import Config
from pvcd.coordinator.decide import (
    Observation,
    Step,
    Timing,
    View,
    address_lifetime,
    connection_stalled,
    decide,
    relinquish_reason,
    track_vacancy,
)
from pvcd.coordinator.election import Election, ElectionUnavailable
from pvcd.coordinator.services import ServiceRegistry
from pvcd.network.addresses import FloatingIPs, LeaseLost, floating_addresses
from pvcd.network.client_interfaces import Gateways
from pvcd.states import CoordinatorState, coordinator_transition
from pvcd.supervisor import Supervisor
from pvcd.zk.base import Store

log = logging.getLogger("pvcd.coordinator")

_ACTING = (CoordinatorState.TAKEOVER, CoordinatorState.PRIMARY)


class _Publisher:
    """Calls `publish` from its own thread, once per burst of requests."""

    def __init__(self, publish: Callable[[], None]) -> None:
        self._publish = publish
        self._pending = threading.Event()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="coordinator-publish", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request(self) -> None:
        self._pending.set()

    def stop(self, timeout: float) -> None:
        self._stopped = True
        self._pending.set()
        if self._thread.ident is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            self._pending.wait()
            if self._stopped:
                return
            self._pending.clear()
            try:
                self._publish()
            except Exception:
                log.exception("Publishing the coordinator state failed; the next keepalive carries it")


class CoordinatorRole:
    """Election, takeover and relinquish for one coordinator node."""

    def __init__(
        self,
        node: str,
        store: Store,
        timing: Timing,
        floating: FloatingIPs | None,
        on_state: Callable[[CoordinatorState], None],
        publish: Callable[[], None],
        supervisor: Supervisor | None = None,
    ) -> None:
        """`on_state` is called from the loop and must not block; `publish` may (it writes to ZooKeeper)."""
        self.node = node
        self.timing = timing
        self.services = ServiceRegistry()
        self.supervisor = supervisor or Supervisor(node)
        self.state = CoordinatorState.SECONDARY
        self._store = store
        self._floating = floating
        self._eligible = floating is None or timing.can_hold_addresses
        self._election = Election(store, node, timing.observe_timeout)
        self._on_state = on_state
        self._publisher = _Publisher(publish)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._unfit: dict[str, str] = {}
        self._lock = threading.Lock()
        self._connected = False
        self._observation: Observation | None = None
        self._vacant_since: float | None = None
        self._last_drop: float | None = None
        self._thread: threading.Thread | None = None
        # One bound method for every watch, so kazoo keeps one watcher per path.
        self._watch = self._on_watch
        self._gateways: Gateways | None = None
        self._client_networks: Callable[[], Iterable[ClientNetwork]] = list

    def hold_gateways(self, client_networks: Callable[[], Iterable[ClientNetwork]]) -> None:
        """As primary, also hold the managed client networks' gateways (`client_networks()` as they are now),
        under the same lease as the floating IPs. Call before `start`."""
        self._gateways = Gateways()
        self._client_networks = client_networks

    # -- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Start the loop; the store must be connected (the daemon starts us after registering).

        Every duration derives from the session timeout the server granted, not
        the configured one: a lease longer than the real session could outlive it."""
        granted = self._store.negotiated_session_timeout
        if granted is not None and granted != self.timing.session_timeout:
            self.timing = Timing(granted)
            self._eligible = self._floating is None or self.timing.can_hold_addresses
            self._election.timeout = self.timing.observe_timeout
        if not self._eligible:
            log.error(
                "Node %s will not become primary: pvc.cluster.zookeeper.session_timeout %.1fs is too short "
                "to hold floating IPs safely (at least 3s)",
                self.node,
                self.timing.session_timeout,
            )
        self._store.add_listener(self._on_session)
        with self._lock:
            self._connected = self._store.connected
        self._publisher.start()
        self._thread = threading.Thread(target=self._run, name="coordinator", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Relinquish and release the role if held; when this returns, no floating IP is held here."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error(
                    "Coordinator loop of node %s did not stop within %.1fs; removing the floating IPs anyway",
                    self.node,
                    timeout,
                )
        if self._floating is not None:
            self._floating.close()
        if self._gateways is not None:
            self._gateways.close()
        self._publisher.stop(timeout=0.5)

    def set_unfit(self, cause: str, reason: str | None) -> None:
        """Step down and stay down while `reason` holds for `cause` (the node is fenced, a loop
        keeps failing); None: that cause is over. Any remaining cause keeps the node down."""
        with self._lock:
            if self._unfit.get(cause) == reason:
                return
            if reason is None:
                self._unfit.pop(cause, None)
            else:
                self._unfit[cause] = reason
            remaining = "; ".join(self._unfit.values())
        if remaining:
            log.error("Node %s steps down and will not be primary coordinator: %s", self.node, remaining)
        else:
            log.warning("Node %s may be primary coordinator again", self.node)
        self._wake.set()

    @property
    def acting(self) -> bool:
        return self.state in _ACTING

    # -- kazoo callbacks (kazoo's threads: record and wake, nothing else) ----

    def _on_session(self, state: str) -> None:
        with self._lock:
            self._connected = state == "CONNECTED"
            if state == "LOST":
                self._observation = None
        self._wake.set()

    def _on_watch(self, _event: Any) -> None:
        self._wake.set()

    # -- the loop ------------------------------------------------------------

    def _run(self) -> None:
        self._prepare()
        while True:
            self._wake.clear()
            step = Step.WAIT
            try:
                # Time alone can end the lease (after a SIGSTOP, say): step down
                # on what is known before waiting for any ZooKeeper round trip.
                view = self._view()
                if view.acting and decide(view, self.timing) is Step.RELINQUISH:
                    self._execute(Step.RELINQUISH, view)
                self._observe()
                view = self._view()
                step = decide(view, self.timing)
                if step is Step.WAIT and self._stopping.is_set():
                    return
                progressed = self._execute(step, view)
            except Exception as exc:
                log.error("Coordinator loop of node %s failed; stepping down and carrying on", self.node)
                self.supervisor.failed("coordinator", exc)
                progressed = False
                try:
                    self._relinquish("an unexpected error in the coordinator loop", expected=False)
                except Exception:
                    log.exception(
                        "Node %s could not step down cleanly; the floating IPs expire by themselves", self.node
                    )
            else:
                self.supervisor.succeeded("coordinator")
            if step in (Step.WAIT, Step.HOLD) or not progressed:
                self._wake.wait(self.timing.tick)

    def _prepare(self) -> None:
        while not self._stopping.is_set():
            try:
                self._election.prepare()
                return
            except ElectionUnavailable as exc:
                log.warning("Coordinator loop of node %s cannot start yet: %s; retrying", self.node, exc)
                self._wake.wait(self.timing.tick)

    def _observe(self) -> None:
        with self._lock:
            connected, previous = self._connected, self._observation
        if not connected:
            return  # kazoo is reconnecting: a request now would only queue
        try:
            observation = self._election.observe(self._watch)
        except ElectionUnavailable as exc:
            now = time.monotonic()
            answered = previous.sent_at if previous is not None else None
            if connection_stalled(answered, self._last_drop, now, self.timing):
                log.warning(
                    "ZooKeeper has not answered node %s for %.1fs (%s); reconnecting",
                    self.node,
                    now - (answered or now),
                    exc,
                )
                self._last_drop = now
                self._election.drop_connection()
            return
        with self._lock:
            self._observation = observation

    def _view(self) -> View:
        now = time.monotonic()
        with self._lock:
            connected, observation = self._connected, self._observation
        self._vacant_since = track_vacancy(self._vacant_since, observation, now)
        return View(
            node=self.node,
            token=self._election.token,
            acting=self.acting,
            connected=connected,
            stand_down=self._stopping.is_set() or not self._eligible or bool(self._unfit),
            now=now,
            observation=observation,
            vacant_since=self._vacant_since,
        )

    def _execute(self, step: Step, view: View) -> bool:
        """Carry out one step; False when it could not be done (the loop then waits a tick)."""
        observation = view.observation
        try:
            if step is Step.CLAIM and observation is not None:
                self._election.claim(observation)
                log.info("Node %s claimed the vacant primary coordinator role", self.node)
            elif step is Step.TAKEOVER:
                self._takeover()
            elif step is Step.HOLD:
                self._hold()
            elif step is Step.RELINQUISH:
                reason, expected = relinquish_reason(view, self.timing)
                if self._unfit and not self._stopping.is_set():
                    reason, expected = "; ".join(self._unfit.values()), False
                self._relinquish(reason, expected)
            elif step is Step.RELEASE and observation is not None:
                self._election.release(observation)
                log.info("Node %s released the primary coordinator role", self.node)
            elif step is Step.PRUNE and observation is not None:
                self._election.prune(observation)
            elif step is Step.DISCARD_HANDOVER and observation is not None:
                self._election.discard_handover(observation)
        except ElectionUnavailable as exc:
            log.warning("Coordinator step %s of node %s not done: %s", step, self.node, exc)
            return False
        return True

    # -- takeover and relinquish -------------------------------------------

    def _lifetime(self) -> int:
        """Seconds the floating IPs may live from now; 0 when the role is not (or no longer) ours."""
        with self._lock:
            connected, observation = self._connected, self._observation
        if not connected or observation is None or not observation.owned_by(self._election.token):
            return 0
        if self._stopping.is_set():
            return 0
        return address_lifetime(observation.sent_at, time.monotonic(), self.timing)

    def _takeover(self) -> None:
        started = time.monotonic()
        self._set_state(CoordinatorState.TAKEOVER)
        if self._floating is not None:
            try:
                self._floating.hold(self._lifetime)
            except LeaseLost as exc:
                self._relinquish(str(exc), expected=False)
                return
            self._floating.announce()
        if self._gateways is not None:
            try:
                self._gateways.hold(self._client_networks(), self._lifetime)
            except LeaseLost as exc:
                self._relinquish(str(exc), expected=False)
                return
            self._gateways.announce()
        self.services.start_all(self.timing.service_budget)
        self._set_state(CoordinatorState.PRIMARY)
        addresses = ", ".join(str(a) for a in self._floating.addresses) if self._floating else "not managed"
        log.info(
            "Node %s is primary coordinator after %.0f ms (floating IPs: %s; services: %s)",
            self.node,
            (time.monotonic() - started) * 1000,
            addresses,
            ", ".join(self.services.running) or "none",
        )

    def _hold(self) -> None:
        try:
            if self._floating is not None:
                self._floating.hold(self._lifetime)
            if self._gateways is not None:
                self._gateways.hold(self._client_networks(), self._lifetime)
        except LeaseLost as exc:
            self._relinquish(str(exc), expected=False)

    def _relinquish(self, reason: str, expected: bool) -> None:
        if not self.acting:
            return
        started = time.monotonic()
        (log.info if expected else log.warning)(
            "Node %s relinquishes the primary coordinator role: %s", self.node, reason
        )
        self._set_state(CoordinatorState.RELINQUISH)
        self.services.stop_all(self.timing.service_budget)
        if self._gateways is not None:
            self._gateways.release()
        if self._floating is not None:
            self._floating.release()
        self._set_state(CoordinatorState.SECONDARY)
        log.info("Node %s is secondary coordinator after %.0f ms", self.node, (time.monotonic() - started) * 1000)

    def _set_state(self, wanted: CoordinatorState) -> None:
        self.state = coordinator_transition(self.state, wanted)
        self._on_state(wanted)
        self._publisher.request()


def coordinator_role(
    config: Config,
    store: Store,
    on_state: Callable[[CoordinatorState], None],
    publish: Callable[[], None],
    supervisor: Supervisor | None = None,
) -> CoordinatorRole | None:
    """The role for a node listed in `cluster.coordinators`; None for a client node."""
    if not config.is_coordinator:
        return None
    floating = FloatingIPs(floating_addresses(config)) if config.functions.enable_networking else None
    return CoordinatorRole(
        config.node, store, Timing(config.cluster.zookeeper.session_timeout), floating, on_state, publish, supervisor
    )
