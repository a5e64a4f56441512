"""The node daemon: connect, register, keepalive loop, clean shutdown.

The loop decides nothing itself: the keepalive value is built by the pure
`keepalive` module and state changes go through the pure `states` module. This
module only sequences them and survives the world failing around it: ZooKeeper
down or restarted, libvirt hung, signals at any moment.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from pvcd import __version__, hostinfo
from pvcd.cluster.cache import ClusterCache
from pvcd.cluster.states import StatesFollower, StatesPublisher
from pvcd.cluster.values import StateRecord
from pvcd.collect import Collected, Collectors
from pvcd.config import Config
from pvcd.coordinator.role import coordinator_role
from pvcd.fencing.fencer import Fencer, check_own_bmc, ipmi_record
from pvcd.fencing.flow import Fence, NodeFencing, acknowledges
from pvcd.fencing.policy import should_self_fence
from pvcd.fencing.recovery import recover_vms
from pvcd.fencing.self_fence import destroy_all_domains, run_command
from pvcd.fencing.storage_fence import StorageFencer
from pvcd.hypervisor import Hypervisor
from pvcd.keepalive import (
    COLLECT_BUDGET_SHARE,
    DOMAINS,
    LOAD,
    MEMORY,
    build_keepalive,
    cluster_log_line,
    keepalive_log_line,
)
from pvcd.network.addresses import apply_node_networking
from pvcd.network.manager import NetworkManager
from pvcd.states import CoordinatorState, DaemonState, DomainState, daemon_transition, initial_coordinator_state
from pvcd.storage.identity import IdentityPublisher
from pvcd.storage.status import StorageFollower, StorageStatus, ceph_of
from pvcd.supervisor import Supervisor, timed
from pvcd.vm.domains import Domains
from pvcd.vm.flush import FlushRunner, initial_domain_state, read_report
from pvcd.vm.migrators import node_addresses
from pvcd.vm.reconciler import VmReconciler
from pvcd.watchdog import Watchdog, WatchdogState
from pvcd.zk import nodes
from pvcd.zk.access import zk_security
from pvcd.zk.base import NotAuthorized, Store, StoreError, StoreUnavailable, VersionConflict
from pvcd.zk.store import ZooKeeperStore

log = logging.getLogger("pvcd")
keepalive_log = logging.getLogger("pvcd.keepalive")

# A clean stop must finish within 5 s even with ZooKeeper gone; the final state
# writes get this long before the session is closed regardless.
SHUTDOWN_WRITE_TIMEOUT = 3.0
# The coordinator role stops first (relinquish, release the claim) within this.
COORDINATOR_STOP_TIMEOUT = 1.5
RECONNECT_DELAY = 1.0
EXIT_NOT_AUTHORIZED = 3
"""pvcd's exit status when ZooKeeper refuses the node's identity (2 is a bad configuration file)."""
# The self-fence clock is checked four times per keepalive interval.
SILENCE_CHECK_SHARE = 0.25
# How long a flush_on_shutdown may take before the daemon stops regardless.
FLUSH_ON_SHUTDOWN_TIMEOUT = 600.0
# A self-fence waits this long for VM actions already under way, and gives
# libvirt this long to destroy the domains, before it runs its command anyway.
SELF_FENCE_DRAIN_TIMEOUT = 5.0
SELF_FENCE_DESTROY_TIMEOUT = 10.0


def default_collectors(config: Config, hypervisor: Hypervisor | None) -> dict[str, Callable[[], Any]]:
    """The figures a keepalive carries, each from the component that knows it."""
    if hypervisor is None:
        return {MEMORY: hostinfo.host_memory, LOAD: hostinfo.load_average, DOMAINS: list}
    return {MEMORY: hypervisor.host_memory, LOAD: hostinfo.load_average, DOMAINS: hypervisor.running_domains}


class NodeDaemon:
    """One pvcd process: owns the node's ZooKeeper records and its keepalive."""

    def __init__(
        self,
        config: Config,
        collectors: dict[str, Callable[[], Any]] | None = None,
    ) -> None:
        """SecurityError (one line) when the ZooKeeper credentials file cannot be read."""
        self.config = config
        self.name = config.node
        self.stop_event = threading.Event()
        self.supervisor = Supervisor(config.node, self._on_loop_failing)
        self.watchdog = (
            Watchdog(config.fencing.watchdog.device, config.fencing.watchdog.timeout)
            if (config.fencing.watchdog is not None)
            else None
        )
        self.watchdog_state = WatchdogState(None, False, None, "no watchdog configured (pvc.system.fencing.watchdog)")
        if self.watchdog is not None:
            self.watchdog_state = WatchdogState(self.watchdog.device, False, None, "armed after the first keepalive")
        self.acknowledged_fence: str | None = None
        """The id of the last fence of this node that this daemon knows about and acted on."""
        self._self_fence_lock = threading.Lock()
        self.hypervisor = Hypervisor(config.hypervisor.libvirt_uri) if config.functions.enable_hypervisor else None
        self.collectors = Collectors(collectors or default_collectors(config, self.hypervisor))
        self.zk_security = zk_security(config.cluster.zookeeper)
        self.store: Store = ZooKeeperStore(
            config.zookeeper_hosts,
            session_timeout=config.cluster.zookeeper.session_timeout,
            connect_timeout=config.cluster.zookeeper.connect_timeout,
            security=self.zk_security,
        )
        self.state = StateRecord(
            daemon=DaemonState.INIT,
            coordinator=initial_coordinator_state(config.is_coordinator),
            domain=DomainState.READY,
        )
        self.versions: nodes.Versions | None = None
        self.interval = config.fencing.keepalive_interval
        # The coordinator role changes the state from its own threads: one lock
        # for changing the record, another for writing it (which may block).
        self._state_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self.vm_reconciler: VmReconciler | None = None
        self.flush_runner: FlushRunner | None = None
        self._shutdown_flush: threading.Thread | None = None
        self.coordinator = coordinator_role(
            config, self.store, self._set_coordinator_state, self._publish_state, self.supervisor
        )
        self.cluster: ClusterCache | None = None
        """The watched cluster view, on coordinators (with every VM, for the fencer and its recovery)."""
        self.cluster_states: StatesFollower | None = None
        """On other nodes that log the cluster's states with their keepalives: the primary's summary."""
        self.fencer: Fencer | None = None
        if self.coordinator is None and config.logging.log_keepalive_cluster_details:
            self.cluster_states = StatesFollower(self.store)
        if self.coordinator is not None:
            cluster = self.cluster = ClusterCache(self.store, with_vms=True, supervisor=self.supervisor, node=self.name)
            self.fencer = Fencer(
                self.store,
                config,
                is_primary=self._is_primary,
                recover=lambda dead: recover_vms(
                    self.store, dead, config.migration.target_selector, cluster.current(need_vms=True, caught_up=True)
                ),
                run_loop=self.supervisor.run,
                cluster=cluster,
                storage=(
                    StorageFencer(
                        self.store, ceph_of(config.storage), self.name, cluster, config.storage.blocklist_time
                    )
                    if config.functions.enable_storage
                    else None
                ),
            )
            self.coordinator.services.register(self.fencer)
            self.coordinator.services.register(StatesPublisher(self.store, cluster, self.supervisor))
            if config.functions.enable_storage:
                self.coordinator.services.register(
                    StorageStatus(self.store, ceph_of(config.storage), self.interval, self.supervisor)
                )
        self.storage_status: StorageFollower | None = None
        """With storage: the primary's last record of the Ceph cluster, for the keepalive's storage line."""
        if config.functions.enable_storage and config.logging.log_keepalive_storage_details:
            self.storage_status = StorageFollower(self.store)
        self.storage_identity = (
            IdentityPublisher(self.store, self.name, config.storage, self.supervisor)
            if config.functions.enable_storage
            else None
        )
        self.networks: NetworkManager | None = None
        if config.functions.enable_networking and config.networking is not None:
            self.networks = NetworkManager(config, self.store, self.supervisor, self.stop_event)
            if self.coordinator is not None and self.networks.primary is not None:
                self.coordinator.hold_gateways(lambda: self.networks.current if self.networks else [])
                self.coordinator.services.register(self.networks.primary)
        # When the node last delivered a keepalive (monotonic): the self-fence clock.
        self.last_delivered = time.monotonic()

    # -- lifecycle -----------------------------------------------------------

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        log.info("Received %s; shutting down node %s", signal.Signals(signum).name, self.name)
        if self.flush_runner is not None and self.config.migration.flush_on_shutdown and self._shutdown_flush is None:
            # Flush first, with keepalives still going (else the node would be fenced mid-flush);
            # a second signal stops at once.
            self._shutdown_flush = threading.Thread(target=self._flush_then_stop, name="shutdown-flush", daemon=True)
            self._shutdown_flush.start()
            return
        self.stop_event.set()

    def _flush_then_stop(self) -> None:
        assert self.flush_runner is not None
        log.info("Flushing node %s before it stops (flush_on_shutdown)", self.name)
        try:
            self.flush_runner.flush_for_shutdown(FLUSH_ON_SHUTDOWN_TIMEOUT)
        finally:
            self.stop_event.set()

    def run(self) -> int:
        """Run until asked to stop; the process exit status."""
        self._write_pid_file()
        if self.config.functions.enable_networking:
            apply_node_networking(self.config.networking)
        self.store.add_listener(self._on_connection_state)
        try:
            if not self._connect():
                return 0
            self._check_session_timeout()
            if not self._register():
                return EXIT_NOT_AUTHORIZED
            if self.storage_identity is not None:
                self.storage_identity.start()
            threading.Thread(target=check_own_bmc, args=(self.config,), name="bmc-check", daemon=True).start()
            if self.config.fencing.suicide_intervals > 0:
                self.supervisor.spawn(
                    "self-fence", self._check_silence, self.stop_event, self.interval * SILENCE_CHECK_SHARE
                )
            self._set_daemon_state(DaemonState.RUN)
            if not self._first_keepalive():
                return 0
            self._arm_watchdog()
            log.info("Node %s is running (coordinator state %s)", self.name, self.state.coordinator)
            if self.cluster is not None:
                self.cluster.start()
            if self.cluster_states is not None:
                self.cluster_states.start()
            if self.storage_status is not None:
                self.storage_status.start()
            if self.networks is not None:
                self.networks.start()
            if self.coordinator is not None:
                self.coordinator.start()
            if self.hypervisor is not None:
                self._start_vm_services()
            self._keepalive_loop()
            return 0
        finally:
            self._shutdown()

    def _connect(self) -> bool:
        """Wait for ZooKeeper, however long it takes, unless we are told to stop."""
        while not self.stop_event.is_set():
            try:
                self.store.start()
                log.info("Connected to ZooKeeper at %s", self.config.zookeeper_hosts)
                return True
            except StoreUnavailable as exc:
                log.warning("%s; retrying", exc)
                self.stop_event.wait(RECONNECT_DELAY)
        return False

    def _check_session_timeout(self) -> None:
        configured = self.config.cluster.zookeeper.session_timeout
        granted = self.store.negotiated_session_timeout
        if granted is not None and abs(granted - configured) > 0.01:
            log.warning(
                "ZooKeeper granted a %.1fs session timeout, not the configured %.1fs "
                "(pvc.cluster.zookeeper.session_timeout is outside the server's minSessionTimeout/maxSessionTimeout); "
                "pvcd uses %.1fs",
                granted,
                configured,
                granted,
            )

    def _first_keepalive(self) -> bool:
        """Deliver one keepalive before arming the watchdog or touching any VM; False if told to stop.

        Opening a watchdog pets it. The fencer counts a dead node's watchdog window
        from its last accepted keepalive, so no pet may come before the first one:
        a pvcd that armed and then died before any keepalive would reset its host
        later than the fencer expects."""
        while not self.stop_event.is_set():
            if self.keepalive_once():
                return True
            self.stop_event.wait(self.interval)
        return False

    def _arm_watchdog(self) -> None:
        if self.watchdog is None:
            log.warning(
                "Node %s has no watchdog (pvc.system.fencing.watchdog is not set): if its BMC cannot power it off "
                "when it dies, its VMs wait for an operator even with failed_fence: migrate",
                self.name,
            )
            return
        self.watchdog_state = self.watchdog.arm()
        if not self.watchdog_state.armed:
            log.error(
                "Node %s has no armed watchdog (%s): if its BMC cannot power it off when it dies, its VMs wait "
                "for an operator even with failed_fence: migrate",
                self.name,
                self.watchdog_state.problem,
            )
            return
        while not self.stop_event.is_set():
            try:
                nodes.publish_info(self.store, self.name, self._info())
                return
            except (StoreError, LookupError) as exc:
                log.warning("Cannot publish the watchdog of node %s yet: %s; retrying", self.name, exc)
                self.stop_event.wait(RECONNECT_DELAY)

    def _fencing_settings(self) -> NodeFencing:
        """What the primary judges and fences this node by: its own settings, never the primary's."""
        fencing = self.config.fencing
        return NodeFencing(
            float(fencing.keepalive_interval),
            fencing.fence_intervals,
            self.watchdog_state.timeout if self.watchdog_state.armed else None,
        )

    def _info(self) -> dict[str, Any]:
        """The registration record: what the node is, and what it is fenced by."""
        return {
            "name": self.name,
            "coordinator": self.config.is_coordinator,
            "pvcd_version": __version__,
            "hypervisor": self.config.hypervisor.libvirt_uri if self.hypervisor else None,
            "pid": os.getpid(),
            "addresses": node_addresses(self.config),
            "target_selector": self.config.migration.target_selector,
            "fencing": self._fencing_settings().to_json(),
            "watchdog": self.watchdog_state.to_json(),
        }

    def _register(self) -> bool:
        """False when ZooKeeper refuses this node's identity: it cannot join, and says why."""
        info = self._info()
        while not self.stop_event.is_set():
            try:
                # A node that was flushed (by command or at shutdown) comes back flushed;
                # one that was fenced comes back fenced, whatever else it was.
                domain = initial_domain_state(read_report(self.store, self.name))
                fence = Fence.from_record(nodes.read_fence(self.store, self.name))
                if fence is not None:
                    domain = DomainState.FENCED
                with self._state_lock:
                    self.state = replace(self.state, domain=domain)
                if fence is not None:
                    # Its VMs run elsewhere now; a host whose daemon alone restarted may still run
                    # the old copies. No self_fence_command here: it would reboot a fenced host forever.
                    self._self_fence(
                        f"it was fenced (fence {fence.id}, {fence.outcome}) before this pvcd started; "
                        f"it takes no VMs until 'pvc node ready {self.name}'",
                        fence,
                        at_start=True,
                    )
                self.versions = nodes.register(self.store, self.name, info, self.state, ipmi_record(self.config))
                self.last_delivered = time.monotonic()
                self._acknowledge(self.versions.fence_record)
                log.info("Registered node %s in ZooKeeper", self.name)
                return True
            except NotAuthorized:
                credentials = self.zk_security.credentials
                who = f"user {credentials.user}" if credentials is not None else "no credentials"
                log.error(
                    "ZooKeeper refused node %s (%s from pvc.cluster.zookeeper.credentials_file): wrong password, "
                    "or an identity the cluster's ACLs do not grant; the node does not join",
                    self.name,
                    who,
                )
                return False
            except StoreError as exc:
                log.warning("Cannot register node %s yet: %s; retrying", self.name, exc)
                self.stop_event.wait(RECONNECT_DELAY)
        return True

    def _on_connection_state(self, state: str) -> None:
        if self.stop_event.is_set():
            return
        messages = {
            "SUSPENDED": "Connection to ZooKeeper suspended; keepalives wait until it is back",
            "LOST": "ZooKeeper session lost; reconnecting with a new session",
            "CONNECTED": "Connection to ZooKeeper established",
        }
        log.warning(messages.get(state, f"ZooKeeper connection state {state}"))

    def _set_daemon_state(self, wanted: DaemonState) -> None:
        with self._state_lock:
            self.state = replace(self.state, daemon=daemon_transition(DaemonState(self.state.daemon), wanted))
        log.info("Node %s daemon state is now %s", self.name, wanted)
        self._publish_state()

    def set_domain_state(self, wanted: DomainState) -> bool:
        """Called by the flush runner; the node's state record has one writer, the daemon.

        A fenced node stays fenced until an operator has cleared its fence
        record: the change is refused (False) and the command must stop."""
        if wanted != DomainState.FENCED:
            try:
                pending = Fence.from_record(nodes.read_fence(self.store, self.name)) is not None
            except StoreError:
                pending = self.state.domain == DomainState.FENCED
            if pending:
                log.warning("Node %s stays fenced (not %s) until 'pvc node ready %s'", self.name, wanted, self.name)
                return False
        with self._state_lock:
            self.state = replace(self.state, domain=wanted)
        log.info("Node %s domain state is now %s", self.name, wanted)
        self._publish_state()
        return True

    def _is_primary(self) -> bool:
        return (
            self.coordinator is not None and self.coordinator.state == CoordinatorState.PRIMARY and self.store.connected
        )

    def _held(self) -> str | None:
        if self.state.domain == DomainState.FENCED:
            return f"node {self.name} is fenced; 'pvc node ready {self.name}' lets it take VMs again"
        return None

    def _start_vm_services(self) -> None:
        assert self.hypervisor is not None
        self.vm_reconciler = VmReconciler(
            self.store,
            Domains(self.hypervisor),
            self.name,
            shutdown_timeout=self.config.hypervisor.shutdown_timeout,
            held=self._held,
            supervisor=self.supervisor,
        )
        self.vm_reconciler.start()
        self.flush_runner = FlushRunner(
            self.store,
            self.name,
            self.set_domain_state,
            self.config.migration.target_selector,
            concurrency=self.config.migration.flush_concurrency,
            supervisor=self.supervisor,
        )
        self.flush_runner.start()

    def _set_coordinator_state(self, wanted: CoordinatorState) -> None:
        """Called by the coordinator role, which publishes the change itself."""
        with self._state_lock:
            self.state = replace(self.state, coordinator=wanted)
        log.info("Node %s coordinator state is now %s", self.name, wanted)

    def _publish_state(self) -> None:
        with self._write_lock:
            try:
                if self.versions is None:
                    versions = nodes.read_versions(self.store, self.name)
                    if not acknowledges(Fence.from_record(versions.fence_record), self.acknowledged_fence):
                        # Only the keepalive loop may take on a fence record it has not acknowledged:
                        # it self-fences first.
                        return
                    self.versions = versions
                self.versions = nodes.write_state(self.store, self.name, self.versions, self.state)
            except (StoreError, LookupError) as exc:
                self.versions = None
                log.warning(
                    "Could not publish state of node %s now (%s); the next keepalive carries it", self.name, exc
                )

    # -- keepalive -----------------------------------------------------------

    def _keepalive_loop(self) -> None:
        next_at = time.monotonic()
        while not self.stop_event.is_set():
            try:
                self.keepalive_once()
            except Exception as exc:
                self.supervisor.failed("keepalive", exc)
            else:
                self.supervisor.succeeded("keepalive")
            next_at += self.interval
            now = time.monotonic()
            if next_at < now:
                skipped = int((now - next_at) // self.interval) + 1
                log.warning("Keepalive of node %s is %d interval(s) late", self.name, skipped)
                next_at += skipped * self.interval
            self.stop_event.wait(next_at - now)

    def keepalive_once(self) -> bool:
        """Collect figures and send one keepalive transaction; True if it was sent.

        A keepalive refused because one of the node's records changed (the primary writing the
        steps of a fence this node already knows, an operator's command) is sent again at once
        after the re-read, which acknowledges any new fence first: waiting for the next interval
        would make a live node late for what is only a change of version."""
        collected = self.collectors.collect(self.interval * COLLECT_BUDGET_SHARE)
        for attempt in (1, 2):
            sent = self._send_keepalive(collected, retry=attempt == 1)
            if sent is not None:
                return sent
        return False

    def _send_keepalive(self, collected: Collected, retry: bool) -> bool | None:
        """One keepalive transaction: True if sent, False if not, None if refused for a version
        that the re-read has taken on (`retry`: worth sending again now)."""
        try:
            if self.versions is None:
                self._reread_versions()
            with self._write_lock:
                if self.versions is None:
                    return False
                record = build_keepalive(self.versions.counter + 1, self.interval, collected.values, collected.stale)
                loops = self.supervisor.to_json()
                if loops:
                    record["loops"] = loops
                sent = time.monotonic()
                self.versions = nodes.send_keepalive(
                    self.store, self.name, self.versions, self.state, record, timeout=self.interval
                )
        except VersionConflict as exc:
            self.versions = None
            again = "; re-reading its records and sending it again" if retry else "; re-reading its records"
            log.error("Keepalive of node %s refused: %s%s", self.name, exc, again)
            self._check_fence()
            return None if retry and self.versions is not None else False
        except StoreUnavailable as exc:
            self.versions = None
            log.warning("Keepalive of node %s not sent: ZooKeeper unreachable (%s)", self.name, exc)
            return False
        except (StoreError, LookupError) as exc:
            self.versions = None
            log.error("Keepalive of node %s not sent: %s", self.name, exc)
            return False
        self.last_delivered = time.monotonic()
        if self.watchdog is not None and self.last_delivered - sent <= self.interval:
            # Only a keepalive accepted within one interval of being sent proves the node
            # alive now; the fencer's watchdog window counts on this bound.
            self.watchdog.pet()
        self._log_keepalive(record)
        return True

    # -- self-fence ------------------------------------------------------------

    def _check_fence(self) -> None:
        """After a refused keepalive: was this node declared dead while it ran?"""
        try:
            self._reread_versions()
        except (StoreError, LookupError) as exc:
            self.versions = None
            log.warning("Cannot read the fence record of node %s: %s", self.name, exc)

    def _reread_versions(self) -> None:
        """Take on the versions of the node's records again, after acknowledging its fence record.

        Called without the write lock: a self-fence publishes the state."""
        versions = nodes.read_versions(self.store, self.name)
        self._acknowledge(versions.fence_record)
        with self._write_lock:
            self.versions = versions

    def _acknowledge(self, record: dict[str, Any]) -> None:
        """Compare the node's fence record with the fence this daemon last acknowledged.

        By content (the fence's id), not by version: a daemon that lost its session
        re-reads versions, and a fence declared meanwhile must not pass for one it knew.
        """
        fence = Fence.from_record(record)
        if fence is None and self.acknowledged_fence is not None:
            # Checked before `acknowledges`, for which no fence is nothing new: this node was fenced,
            # and until it hears that the fence is over it would never be primary again.
            log.warning("The fence %s of node %s was cleared by an operator", self.acknowledged_fence, self.name)
            self.acknowledged_fence = None
            if self.coordinator is not None:
                self.coordinator.set_unfit("fenced", None)
            return
        if fence is None or acknowledges(fence, self.acknowledged_fence):
            return
        self._self_fence(
            f"primary {record.get('by')} fenced it (fence {fence.id}, step {fence.step}) while it was silent: "
            f"{record.get('reason')}",
            fence,
        )

    def _check_silence(self) -> None:
        """The self-fence clock runs in its own thread: a keepalive stuck on a
        black-holed connection must not delay it."""
        suicide = self.config.fencing.suicide_intervals
        silent = time.monotonic() - self.last_delivered
        if self.state.domain != DomainState.FENCED and should_self_fence(silent, suicide, self.interval):
            self._self_fence(f"no keepalive delivered for {silent:.1f}s ({suicide} intervals of {self.interval}s)")

    def _self_fence(self, reason: str, fence: Fence | None = None, at_start: bool = False) -> None:
        """Destroy every VM of this host, then run the configured command, whatever libvirt does.

        The node is marked fenced first, so the reconciler starts nothing more;
        VM actions already under way are waited for (bounded) so that no start
        completes after the destroy; every libvirt call is bounded too.
        """
        with self._self_fence_lock:
            if fence is not None:
                self.acknowledged_fence = fence.id
            with self._state_lock:
                self.state = replace(self.state, domain=DomainState.FENCED)
            if self.coordinator is not None:
                # A fenced node must not fence anyone, least of all itself.
                self.coordinator.set_unfit("fenced", f"node {self.name} is fenced")
            if self.vm_reconciler is not None:
                self.vm_reconciler.drain(SELF_FENCE_DRAIN_TIMEOUT)
            try:
                timed(
                    f"self-fence of node {self.name}",
                    lambda: destroy_all_domains(self.hypervisor, self.name, reason),
                    SELF_FENCE_DESTROY_TIMEOUT,
                )
            except Exception as exc:
                log.critical("Self-fence of node %s: destroying its VMs failed: %s", self.name, exc)
            if not at_start:
                run_command(self.config.fencing.self_fence_command, self.name)
        if not at_start:
            self._publish_state()

    def _on_loop_failing(self, _loop: str, _error: str | None) -> None:
        """A loop that keeps failing makes a coordinator step down until it works again (the
        supervisor has logged which loop and why)."""
        if self.coordinator is None:
            return
        failing = self.supervisor.failing()
        self.coordinator.set_unfit("loops", f"its loops {', '.join(failing)} keep failing" if failing else None)

    def _log_keepalive(self, record: dict[str, Any]) -> None:
        logging_config = self.config.logging
        if not logging_config.log_keepalives:
            return
        keepalive_log.info(
            keepalive_log_line(self.name, record, self.state, logging_config.log_keepalive_cluster_details)
        )
        if logging_config.log_keepalive_cluster_details:
            if self.cluster is not None:
                states = {node.name: node.state for node in self.cluster.snapshot().node_list()}
            else:
                states = self.cluster_states.states if self.cluster_states is not None else {}
            keepalive_log.info(cluster_log_line(states))
        if self.storage_status is not None:
            keepalive_log.info(self.storage_status.log_line())

    # -- shutdown ------------------------------------------------------------

    def _shutdown(self) -> None:
        """Step down as coordinator, publish shutdown then stop, and close the session, all within the stop budget.

        The watchdog is disarmed only here, on a clean stop: a daemon that dies
        any other way leaves it armed, and the host is reset."""
        if self.flush_runner is not None:
            self.flush_runner.stop(1.0)
        if self.vm_reconciler is not None:
            self.vm_reconciler.stop(1.0)
        if self.coordinator is not None:
            self.coordinator.stop(COORDINATOR_STOP_TIMEOUT)
        if self.networks is not None:
            self.networks.stop()
        if self.storage_identity is not None:
            self.storage_identity.stop()
        if self.cluster is not None:
            self.cluster.stop(1.0)
        writer = threading.Thread(target=self._final_states, name="shutdown-states", daemon=True)
        writer.start()
        writer.join(SHUTDOWN_WRITE_TIMEOUT)
        if writer.is_alive():
            log.warning("Final state of node %s not confirmed by ZooKeeper in time", self.name)
        try:
            self.store.stop()
        except Exception as exc:  # closing a broken session must not block the exit
            log.warning("Closing the ZooKeeper session failed: %s", exc)
        if self.hypervisor is not None:
            self.hypervisor.close()
        if self.watchdog is not None:
            self.watchdog.disarm()
        self._remove_pid_file()
        log.info("Node %s stopped", self.name)

    def _final_states(self) -> None:
        if not self.store.connected:
            return
        for wanted in (DaemonState.SHUTDOWN, DaemonState.STOP):
            self._set_daemon_state(wanted)

    @property
    def _pid_file(self) -> Path:
        return Path(self.config.directories.dynamic_directory) / "pvcd.pid"

    def _write_pid_file(self) -> None:
        try:
            self._pid_file.parent.mkdir(parents=True, exist_ok=True)
            self._pid_file.write_text(f"{os.getpid()}\n")
        except OSError as exc:
            log.warning("Cannot write %s: %s", self._pid_file, exc)

    def _remove_pid_file(self) -> None:
        try:
            self._pid_file.unlink()
        except OSError:
            pass
