"""A deterministic model of a pvcd cluster, for the fence state-machine tests.

The model is ground truth plus ZooKeeper: hosts that really run VMs, a
ZooKeeper server with versions and mtimes on one virtual clock, the node
daemons' rules about keepalives, the watchdog and self-fencing, the VM
reconciler's actions, the primary's fencer, and an operator. What the cluster
*decides* comes from pvcd's own code: the fence state machine
(`pvcd.fencing.flow`), the detector (`pvcd.fencing.detector`), the recovery
plan (`pvcd.fencing.recovery`), the reconciler's decisions
(`pvcd.vm.reconcile`), the VM record rules (`pvcd.cluster.vm_records`), the placement
(`pvcd.placement.cluster`); every ZooKeeper read and write goes through pvcd's own
adapters (`pvcd.zk.nodes`, `pvcd.zk.vms`) over `Client`, an in-memory stand-in
for `pvcd.zk.store.Store`. What the model writes itself is the sequencing the
threads of `pvcd/daemon.py`, `pvcd/fencing/fencer.py` and
`pvcd/vm/reconciler.py` do: those are mirrored step for step as generators, so
that anything else can happen between two steps (see each method's docstring
for the code it mirrors). The test module says what is modelled and what not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from pvcd.cluster import vm_records as records
from pvcd.cluster.liveness import LivenessTracker, NodeStatus, Verdict, late_nodes
from pvcd.cluster.liveness import decide as detect
from pvcd.cluster.values import DomainFigures, HostMemory, NodeView, StateRecord
from pvcd.cluster.vm_records import (
    SHOULD_RUN,
    ActualState,
    InvalidVm,
    MigrationMethod,
    MoveKind,
    MovePhase,
    NothingToDo,
    VmRecord,
    VmState,
    VmStatus,
    VmView,
)
from pvcd.fencing import flow
from pvcd.fencing.fencer import node_fencing
from pvcd.fencing.flow import Fence, Next, NodeFencing, Policy, Step
from pvcd.fencing.outcome import FenceOutcome
from pvcd.fencing.recovery import BATCH_VMS, plan_recovery, recovered
from pvcd.keepalive import DOMAINS, LOAD, MEMORY, build_keepalive
from pvcd.placement import cluster as placement
from pvcd.placement.planner import plan_batch
from pvcd.states import DomainState
from pvcd.vm.reconcile import REPORT_ONLY, Act, Action, DomainInfo, decide_vm
from pvcd.vm.reconcile import decide as reconcile
from pvcd.zk import nodes, schema, vms
from pvcd.zk.base import Answered, OneShotWatch, Pending
from pvcd.zk.store import (
    AlreadyExists,
    NotFound,
    Store,
    StoreError,
    StoreUnavailable,
    Transaction,
    VersionConflict,
    Versioned,
)

# -- settings ------------------------------------------------------------------

INTERVAL_MS = 1000
"""Every node's keepalive interval."""
FENCE_INTERVALS = 3
WATCHDOG_TIMEOUT = 4
"""Seconds; the watchdog window is then 4 + 2 × 1 = 6 s after the last accepted keepalive."""
SESSION_MS = 4000
"""How long a frozen or cut primary stays primary before another coordinator takes over."""
ROUND_MS = 250
"""A `round` event: this much time passes and every live thread takes one step."""
POLICY = Policy(successful_fence=flow.MIGRATE, failed_fence=flow.MIGRATE)
SELECTOR = "mem"
NODE_MEMORY_MIB = 16384
VM_MEMORY_MIB = 1024

NODES = ("hv1", "hv2", "hv3")
WATCHDOGS: dict[str, int | None] = {"hv1": WATCHDOG_TIMEOUT, "hv2": WATCHDOG_TIMEOUT, "hv3": None}
"""hv3 has no watchdog: a failed fence of it waits for an operator even with failed_fence: migrate."""
VMS: dict[str, tuple[str, MigrationMethod]] = {
    "vm1": ("hv1", MigrationMethod.LIVE),
    "vm2": ("hv1", MigrationMethod.SHUTDOWN),
    "vm3": ("hv2", MigrationMethod.LIVE),
    "vm4": ("hv3", MigrationMethod.LIVE),
}

Steps = Generator[None, None, None]


class SafetyViolation(AssertionError):
    """The model saw something the invariants forbid."""


# -- ZooKeeper -----------------------------------------------------------------


class Server:
    """ZooKeeper's data tree: values (copied on write), versions, mtimes on the model's clock."""

    def __init__(self) -> None:
        self.now_ms = 0
        self.data: dict[str, Versioned] = {}
        self._children: dict[str, list[str]] = {}
        self.writes = 0
        """Changes so far: a read repeated with no change in between reads the same."""

    def apply(self, ops: list[tuple[Any, ...]]) -> None:
        """One multi-op: every operation applies, or none (raising like `pvcd.zk.store`)."""
        after: dict[str, Versioned | None] = {}

        def current(path: str) -> Versioned | None:
            return after[path] if path in after else self.data.get(path)

        for op in ops:
            kind, path = op[0], op[1]
            found = current(path)
            if kind == "create":
                if found is not None:
                    raise AlreadyExists(f"{path}: already exists")
                after[path] = Versioned(_copy(op[2]), 0, self.now_ms)
                continue
            if found is None:
                raise NotFound(f"{path}: does not exist")
            version = op[-1]
            if version != -1 and version != found.version:
                raise VersionConflict(f"{path}: changed by someone else")
            if kind == "set":
                after[path] = Versioned(_copy(op[2]), found.version + 1, self.now_ms)
            elif kind == "delete":
                after[path] = None
        self.writes += 1
        for path, value in after.items():
            if value is None or path not in self.data:
                self._children.clear()
            if value is None:
                del self.data[path]
            else:
                self.data[path] = value

    def children(self, path: str) -> list[str]:
        found = self._children.get(path)
        if found is None:
            prefix = path.rstrip("/") + "/"
            found = sorted({key[len(prefix) :].split("/")[0] for key in self.data if key.startswith(prefix)})
            self._children[path] = found
        return list(found)


def _copy(value: Any) -> Any:
    """Values are copied on write (one level: pvcd code builds new values, never changes nested ones)."""
    return dict(value) if isinstance(value, dict) else value


class Client(Store):
    """One node's session: pvcd's `Store` API over `Server`; refused while the node is cut off."""

    def __init__(self, server: Server, reachable: Callable[[], bool] = lambda: True) -> None:
        # Store.__init__ would start a kazoo client: nothing of it is used here.
        self.server = server
        self.reachable = reachable

    def _reach(self, path: str) -> None:
        if not self.reachable():
            raise StoreUnavailable(f"{path}: ZooKeeper unreachable (cut off)")

    @property
    def connected(self) -> bool:
        return self.reachable()

    def get(self, path: str) -> Versioned | None:
        self._reach(path)
        return self.server.data.get(path)

    def children(self, path: str) -> list[str]:
        self._reach(path)
        return self.server.children(path)

    def get_async(self, path: str, watch: OneShotWatch | None = None) -> Pending[Versioned | None]:
        return Answered(lambda: self.get(path))

    def exists(self, path: str) -> bool:
        self._reach(path)
        return path in self.server.data

    def create(self, path: str, value: Any, ephemeral: bool = False, makepath: bool = False) -> None:
        self._reach(path)
        self.server.apply([("create", path, value)])

    def set(self, path: str, value: Any, version: int) -> int:
        self._reach(path)
        self.server.apply([("set", path, value, version)])
        return self.server.data[path].version

    def ensure_path(self, path: str) -> None:
        self._reach(path)
        parts = path.strip("/").split("/")
        for end in range(1, len(parts) + 1):
            prefix = "/" + "/".join(parts[:end])
            if prefix not in self.server.data:
                self.server.apply([("create", prefix, None)])

    def transaction(self) -> Transaction:
        return FakeTransaction(self)

    def server_time_ms(self) -> int:
        self._reach(schema.CLOCK)
        return self.server.now_ms


class FakeTransaction(Transaction):
    def __init__(self, client: Client) -> None:  # no kazoo request behind it
        self.client = client
        self.ops: list[tuple[Any, ...]] = []

    def create(self, path: str, value: Any, ephemeral: bool = False) -> Transaction:
        self.ops.append(("create", path, value))
        return self

    def set(self, path: str, value: Any, version: int) -> Transaction:
        self.ops.append(("set", path, value, version))
        return self

    def check(self, path: str, version: int) -> Transaction:
        self.ops.append(("check", path, version))
        return self

    def delete(self, path: str, version: int = -1) -> Transaction:
        self.ops.append(("delete", path, version))
        return self

    def commit(self, timeout: float | None = None) -> list[Any]:
        self.client._reach(", ".join(str(op[1]) for op in self.ops))
        self.client.server.apply(self.ops)
        return [True] * len(self.ops)


# -- hosts and daemons ---------------------------------------------------------


@dataclass
class Keepalive:
    """A keepalive transaction on the wire: sent, not yet applied by the server."""

    daemon: Daemon
    sent_ms: int
    versions: nodes.Versions
    state: StateRecord
    record: dict[str, Any]
    abandoned: bool = False
    """The sender's call timed out (after one interval): no answer will reach it."""


@dataclass
class Daemon:
    """One pvcd process (a restart is a new one): only what the fence rules need."""

    stage: str = "connect"
    """connect → register → first → run (`NodeDaemon.run`: connect, register, deliver a first
    keepalive, then arm the watchdog and start the loops that touch VMs)."""
    frozen: bool = False
    acknowledged: str | None = None
    versions: nodes.Versions | None = None
    domain: str = DomainState.READY
    next_tick_ms: int = 0
    actions: dict[str, Steps] = field(default_factory=dict)
    """The reconciler's VM actions under way (one per VM)."""
    ready_command: bool = False
    """An operator's `pvc node ready` the flush runner has still to carry out."""
    last_pass: tuple[Any, ...] | None = None
    """What the reconciler's last pass decided on: a pass on the same input decides the same."""

    @property
    def running(self) -> bool:
        return self.stage == "run"

    def state(self) -> StateRecord:
        return StateRecord("run", "secondary", self.domain)


@dataclass
class Host:
    """A machine: its power, the VMs it really runs, its watchdog, its network, its pvcd."""

    name: str
    watchdog_timeout: int | None
    on: bool = True
    running: set[str] = field(default_factory=set)
    daemon: Daemon | None = None
    cut: bool = False
    bmc: str = "ok"
    """ok: powers off and says so; down: does nothing, says failed; flaky: ambiguous answers."""
    watchdog_armed: bool = False
    last_pet_ms: int = 0
    wiped_ms: int = -1
    """When the host last lost every VM (power off, reset, self-fence)."""
    registered_since_wipe: bool = True
    """A pvcd registered (and so may start VMs) since that moment."""
    wire: Keepalive | None = None

    def live_daemon(self) -> Daemon | None:
        """The daemon, if it can take a step now."""
        daemon = self.daemon
        return daemon if self.on and daemon is not None and not daemon.frozen else None


@dataclass
class Primary:
    """One primary term of the fencer (`Fencer.start` … `stop`), in one pvcd process."""

    node: str
    daemon: Daemon
    tracker: LivenessTracker = field(default_factory=LivenessTracker)
    round: Steps | None = None
    current: bool = True
    claims_primary: bool = True
    """What `is_primary()` answers for a stale term (a zombie): drawn by the schedule."""
    coin: int = 0


@dataclass
class FenceFacts:
    """Ground truth about one fence, kept by the model (never read by pvcd code)."""

    node: str
    declared_ms: int
    off_when_judged: bool = False
    """The host was really off when the BMC's answers were judged."""
    operator_confirmed: bool = False
    justified: str | None = None
    """Why the recovery was allowed, set when a primary first moved the fence to `recovering`."""


def vm_uuid(name: str) -> str:
    return f"u-{name}"


class Model:
    """The cluster. `apply(event)` runs one event, then checks the invariants."""

    def __init__(self, operator: bool = True) -> None:
        """`operator`: an honest operator who confirms a fence only when the host is off, or none."""
        self.server = Server()
        self.operator = operator
        self.hosts = {name: Host(name, WATCHDOGS[name]) for name in NODES}
        self.admin = Client(self.server)
        self.primary: Primary | None = None
        self.vacant_since: int | None = 0
        self.zombies: list[Primary] = []
        self.fences: dict[str, FenceFacts] = {}
        self.next_id = 0
        self.stats: dict[str, int] = {}
        self.log: list[str] = []
        self._cluster: tuple[int, list[NodeView]] = (-1, [])
        self._setup()

    # -- set-up --------------------------------------------------------------

    @property
    def now_ms(self) -> int:
        return self.server.now_ms

    def count(self, what: str) -> None:
        self.stats[what] = self.stats.get(what, 0) + 1

    def note(self, line: str) -> None:
        self.log.append(f"{self.now_ms / 1000:7.2f} {line}")

    def client(self, host: Host) -> Client:
        return Client(self.server, lambda: not host.cut and host.on)

    def info(self, host: Host) -> dict[str, Any]:
        """`NodeDaemon._info`: the watchdog timeout is published once the watchdog is armed."""
        timeout = host.watchdog_timeout if host.watchdog_armed else None
        fencing = NodeFencing(INTERVAL_MS / 1000, FENCE_INTERVALS, timeout)
        return {
            "name": host.name,
            "fencing": fencing.to_json(),
            "addresses": {"cluster": host.name},
            "target_selector": SELECTOR,
        }

    def _setup(self) -> None:
        self.admin.ensure_schema()
        vms.ensure_paths(self.admin)
        for name, (node, method) in VMS.items():
            record = VmRecord(
                name=name,
                uuid=vm_uuid(name),
                xml="<domain/>",
                memory_mib=VM_MEMORY_MIB,
                vcpus=1,
                state=VmState.START,
                node=node,
                migration_method=method,
            )
            vms.define(self.admin, record)
            view = vms.read_vm(self.admin, name)
            assert view is not None
            vms.VmWrite(self.admin, view).status(VmStatus(node, ActualState.RUNNING)).commit()
            self.hosts[node].running.add(name)
        for host in self.hosts.values():
            host.daemon = Daemon()
            self._connect(host)
            self._register(host)
            self.tick(host)

    # -- ground truth ----------------------------------------------------------

    def _start_vm(self, host: Host, vm: str, how: str) -> None:
        elsewhere = sorted(h.name for h in self.hosts.values() if vm in h.running and h is not host)
        if elsewhere:
            raise SafetyViolation(f"t={self.now_ms}ms: {vm} {how} on {host.name} while it runs on {elsewhere}")
        host.running.add(vm)
        self.note(f"{vm} {how} on {host.name}")

    def _wipe(self, host: Host, why: str) -> None:
        if host.running:
            self.note(f"{host.name} {why}: {sorted(host.running)} die")
        host.running.clear()
        host.wiped_ms = self.now_ms
        host.registered_since_wipe = False
        self.count(why)

    def _kill_daemon(self, host: Host) -> None:
        if self.primary is not None and self.primary.daemon is host.daemon:
            self.primary = None  # a primary that dies mid-fence: its round ends where it stood
            self.vacant_since = self.now_ms
        host.daemon = None

    def _power_off(self, host: Host, why: str) -> None:
        if not host.on:
            return
        self._wipe(host, why)
        self._kill_daemon(host)
        host.on = False
        host.watchdog_armed = False
        host.wire = None

    def _power_on(self, host: Host) -> None:
        if host.on:
            return
        host.on = True
        host.daemon = Daemon(next_tick_ms=self.now_ms)
        self.note(f"{host.name} powered on")

    def _watchdogs(self) -> None:
        for host in self.hosts.values():
            if host.on and host.watchdog_armed and host.watchdog_timeout is not None:
                fires = host.last_pet_ms + host.watchdog_timeout * 1000
                if self.now_ms >= fires:
                    at, self.server.now_ms = self.server.now_ms, fires
                    self._power_off(host, "watchdog reset")
                    self._power_on(host)  # a reset: the host boots again at once, empty
                    self.server.now_ms = at

    def check(self) -> None:
        """After every event: no VM runs on two hosts."""
        seen: dict[str, str] = {}
        for host in self.hosts.values():
            for vm in host.running:
                if vm in seen:
                    raise SafetyViolation(f"t={self.now_ms}ms: {vm} runs on {seen[vm]} and {host.name}")
                seen[vm] = host.name
        self.check_index()

    def check_index(self) -> None:
        """The per-node VM indexes name exactly the nodes that must act on each VM."""
        data = self.server.data
        indexed = {
            (parts[3], parts[4])
            for path in data
            if path.startswith(schema.NODE_VMS + "/") and len(parts := path.split("/")) == 5
        }
        wanted = set()
        for name in self.server.children(schema.VMS):
            record, migration = data.get(schema.vm(name)), data.get(schema.vm_migration(name))
            if record is None:
                continue
            acting = vms.acting_nodes(
                records.VmRecord.from_json(record.value),
                records.Migration.from_json(migration.value) if migration else None,
            )
            wanted |= {(node, name) for node in acting}
        if indexed != wanted:
            raise SafetyViolation(f"t={self.now_ms}ms: index {sorted(indexed ^ wanted)} out of step")

    # -- the node daemon (pvcd/daemon.py) ------------------------------------------

    def _connect(self, host: Host) -> None:
        """`NodeDaemon.run`: connect to ZooKeeper (the watchdog is armed only after the first keepalive)."""
        daemon = host.daemon
        assert daemon is not None
        daemon.stage = "register"

    def _register(self, host: Host) -> None:
        """`NodeDaemon._register`: a node with a fence record self-fences at start, then registers."""
        daemon = host.daemon
        assert daemon is not None
        store = self.client(host)
        fence = Fence.from_record(nodes.read_fence(store, host.name))
        daemon.domain = DomainState.FENCED if fence is not None else DomainState.READY
        if fence is not None:
            self._self_fence(host, fence, at_start=True)
        daemon.versions = nodes.register(store, host.name, self.info(host), daemon.state(), None)
        self._acknowledge(host, daemon.versions.fence_record)
        daemon.stage = "first"
        daemon.next_tick_ms = self.now_ms
        host.registered_since_wipe = True

    def tick(self, host: Host, deliver: bool = True) -> None:
        """One iteration of the daemon's start-up or keepalive loop; `deliver`: the request arrives at once."""
        daemon = host.live_daemon()
        if daemon is None:
            return
        if daemon.stage == "connect":
            if not host.cut:
                self._connect(host)
            return
        if daemon.stage == "register":
            if not host.cut:
                self._register(host)
            return
        daemon.next_tick_ms = self.now_ms + INTERVAL_MS
        self._flush_runner(host)
        wire = host.wire
        if wire is not None and wire.daemon is daemon and not wire.abandoned:
            if self.now_ms - wire.sent_ms <= INTERVAL_MS:
                if deliver:
                    self.deliver(host)
                return
            wire.abandoned = True  # send_keepalive(timeout=interval) gave up: StoreUnavailable
            daemon.versions = None
        self._send(host)
        if deliver:
            self.deliver(host)

    def _send(self, host: Host) -> None:
        """`NodeDaemon.keepalive_once` up to the commit (re-reading versions first if it has none)."""
        daemon = host.daemon
        assert daemon is not None
        if daemon.versions is None:
            if host.cut:
                return
            daemon.versions = nodes.read_versions(self.client(host), host.name)
            self._acknowledge(host, daemon.versions.fence_record)
        versions = daemon.versions
        if versions is None:
            return
        figures = {
            MEMORY: HostMemory(NODE_MEMORY_MIB, NODE_MEMORY_MIB - VM_MEMORY_MIB * len(host.running)),
            DOMAINS: [DomainFigures(vm, vm_uuid(vm), VM_MEMORY_MIB, 1) for vm in sorted(host.running)],
            LOAD: 0.0,
        }
        record = build_keepalive(versions.counter + 1, INTERVAL_MS // 1000, figures)
        host.wire = Keepalive(daemon, self.now_ms, versions, daemon.state(), record)

    def deliver(self, host: Host) -> None:
        """The keepalive on the wire reaches ZooKeeper (unless the node is cut off) and its sender hears back.

        `NodeDaemon.keepalive_once`: accepted within one interval of sending → pet the watchdog;
        refused → re-read the records (`_check_fence`), which self-fences on an unknown fence.
        An answer its sender cannot take (dead, frozen, timed out) is lost: it re-reads next time.
        """
        wire = host.wire
        if wire is None or host.cut or not host.on:
            return
        host.wire = None
        try:
            versions: nodes.Versions | None = nodes.send_keepalive(
                self.admin, host.name, wire.versions, wire.state, wire.record, INTERVAL_MS / 1000
            )
        except VersionConflict:
            versions = None
        daemon = wire.daemon
        if daemon is not host.daemon or daemon.frozen or wire.abandoned:
            if daemon is host.daemon:
                daemon.versions = None
            return
        if versions is None:
            self.count("keepalive refused")
            daemon.versions = nodes.read_versions(self.client(host), host.name)
            self._acknowledge(host, daemon.versions.fence_record)
            return
        daemon.versions = versions
        if self.now_ms - wire.sent_ms > INTERVAL_MS:
            return
        if daemon.stage == "first":
            self._arm(host)
        elif host.watchdog_armed:
            host.last_pet_ms = self.now_ms

    def _arm(self, host: Host) -> None:
        """`NodeDaemon._arm_watchdog` after the first delivered keepalive: open (a pet), publish, start the VM loops."""
        daemon = host.daemon
        assert daemon is not None
        if host.watchdog_timeout is not None:
            host.last_pet_ms = self.now_ms
            host.watchdog_armed = True
            nodes.publish_info(self.client(host), host.name, self.info(host))
        daemon.stage = "run"

    def _acknowledge(self, host: Host, record: dict[str, Any]) -> None:
        """`NodeDaemon._acknowledge`: a fence this daemon has not acknowledged makes it self-fence."""
        daemon = host.daemon
        assert daemon is not None
        fence = Fence.from_record(record)
        if flow.acknowledges(fence, daemon.acknowledged):
            return
        if fence is None:
            daemon.acknowledged = None
            return
        self._self_fence(host, fence)

    def _self_fence(self, host: Host, fence: Fence, at_start: bool = False) -> None:
        """`NodeDaemon._self_fence`: held first, actions under way drained, every VM destroyed, state published."""
        daemon = host.daemon
        assert daemon is not None
        daemon.acknowledged = fence.id
        daemon.domain = DomainState.FENCED
        for vm in sorted(daemon.actions):
            self._drain(daemon.actions.pop(vm))
        self.note(f"{host.name} self-fences (fence {fence.id})")
        self._wipe(host, "self-fence")
        if not at_start:
            self._publish(host)

    def _publish(self, host: Host) -> None:
        """`NodeDaemon._publish_state`."""
        daemon = host.daemon
        assert daemon is not None
        store = self.client(host)
        try:
            if daemon.versions is None:
                versions = nodes.read_versions(store, host.name)
                if not flow.acknowledges(Fence.from_record(versions.fence_record), daemon.acknowledged):
                    return  # only the keepalive loop takes on an unacknowledged fence
                daemon.versions = versions
            daemon.versions = nodes.write_state(store, host.name, daemon.versions, daemon.state())
        except (StoreError, LookupError):
            daemon.versions = None

    def _flush_runner(self, host: Host) -> None:
        """The part of `pvc node ready` the node carries out: ready again once its fence is cleared
        (`NodeDaemon.set_domain_state` refuses while a fence record is there). The unflush
        (VMs coming home) is not modelled."""
        daemon = host.daemon
        if daemon is None or not daemon.running or not daemon.ready_command or host.cut:
            return
        if Fence.from_record(nodes.read_fence(self.client(host), host.name)) is not None:
            return
        daemon.ready_command = False
        daemon.domain = DomainState.READY
        self._publish(host)

    # -- the VM reconciler (pvcd/vm/reconciler.py) ------------------------------

    def _domains(self, host: Host) -> dict[str, DomainInfo]:
        return {vm: DomainInfo(vm, vm_uuid(vm), True) for vm in host.running}

    def reconcile_pass(self, host: Host) -> None:
        """`VmReconciler.run_once`: decide on the VMs in the node's index (and those of domains no
        owned VM claims), submit one action per VM not already busy."""
        daemon = host.live_daemon()
        if daemon is None or not daemon.running or host.cut or daemon.domain == DomainState.FENCED:
            return
        store = self.client(host)
        views, _damaged = vms.read_owned(store, host.name)
        versions = tuple((name, v.record_version, v.status_version, v.migration_version) for name, v in views.items())
        seen = (versions, frozenset(host.running), frozenset(daemon.actions), daemon.domain)
        if seen == daemon.last_pass:
            return  # the real loop passes on every change of the VMs it owns: nothing new to decide
        daemon.last_pass = seen
        domains = self._domains(host)
        for name in sorted(domains.keys() - views.keys()):  # domains no owned VM claims: read on demand
            other = vms.read_vm(store, name)
            if other is not None:
                views[name] = other
        for action in reconcile(host.name, views, domains):
            if action.act not in REPORT_ONLY and action.vm not in daemon.actions:
                daemon.actions[action.vm] = self._execute(host, action)

    def act(self, host: Host, which: int | None = None) -> None:
        """One step of one (or, with None, of every) action under way on `host`."""
        daemon = host.live_daemon()
        if daemon is None or not daemon.actions:
            return
        names = sorted(daemon.actions)
        for vm in names if which is None else [names[which % len(names)]]:
            steps = daemon.actions.get(vm)
            if steps is not None and not self._step(steps):
                daemon.actions.pop(vm, None)
                daemon.last_pass = None  # an action that ends wakes the reconciler

    def _step(self, steps: Steps) -> bool:
        """Run one step; False once the steps are over (done, or ended by a ZooKeeper error)."""
        try:
            next(steps)
        except StopIteration:
            return False
        except StoreError:  # VmReconciler._execute / Fencer._round: logged, the next pass or round retries
            return False
        return True

    def _drain(self, steps: Steps) -> None:
        while self._step(steps):
            pass

    def _execute(self, host: Host, action: Action) -> Steps:
        """`VmReconciler._execute`: decide again on a fresh read, then carry the action out."""
        store = self.client(host)
        fresh = vms.read_vm(store, action.vm)
        if fresh is None:
            return
        domain = self._domains(host).get(action.vm)
        if decide_vm(host.name, fresh, domain) != action:
            return
        handlers: dict[Act, Callable[[Host, Action, VmView], Steps]] = {
            Act.START: self._start,
            Act.RESTART: self._restart,
            Act.SHUTDOWN: self._shutdown,
            Act.STOP: self._stop_now,
            Act.REPORT_RUNNING: self._report_running,
            Act.REPORT_STOPPED: self._report_stopped,
            Act.MIGRATE_OUT: self._migrate_out,
            Act.RELEASE: self._release,
            Act.FINISH_MOVE: self._finish_move,
        }
        yield
        yield from handlers[action.act](host, action, fresh)

    def _status(self, host: Host, state: ActualState, message: str | None = None) -> VmStatus:
        return VmStatus(host.name, state, message)

    def _start(self, host: Host, action: Action, view: VmView) -> Steps:
        started = yield from self._start_domain(host, view)
        if started is None:
            return
        write = vms.VmWrite(self.client(host), started).status(self._status(host, ActualState.RUNNING))
        if action.then is not None:
            write.record(started.record.with_state(action.then))
        write.commit()

    def _start_domain(self, host: Host, view: VmView) -> Generator[None, None, VmView | None]:
        """Claim the VM (status `starting`, checked against the record version decided on), then start it."""
        view = (
            vms.VmWrite(self.client(host), view)
            .check_record()
            .status(self._status(host, ActualState.STARTING))
            .commit()
        )
        yield
        if view.name in host.running:  # libvirt: the domain already exists
            yield from self._fail(host, view, "domain already running")
            return None
        self._start_vm(host, view.name, "started")
        yield
        return view

    def _fail(self, host: Host, view: VmView, reason: str) -> Steps:
        running = view.name in host.running
        write = vms.VmWrite(self.client(host), view).record(view.record.with_state(VmState.FAIL, reason))
        if view.migration is not None and view.migration.target == host.name:
            write.delete_migration()
        write.status(self._status(host, ActualState.RUNNING if running else ActualState.STOPPED, reason)).commit()
        yield

    def _restart(self, host: Host, action: Action, view: VmView) -> Steps:
        view = (
            vms.VmWrite(self.client(host), view).status(self._status(host, ActualState.STOPPING, "restarting")).commit()
        )
        yield
        host.running.discard(view.name)
        yield
        yield from self._start(host, action, view)

    def _shutdown(self, host: Host, action: Action, view: VmView) -> Steps:
        view = vms.VmWrite(self.client(host), view).status(self._status(host, ActualState.STOPPING)).commit()
        yield
        host.running.discard(view.name)
        yield
        self._stopped(host, view, action, "shut down")

    def _stop_now(self, host: Host, action: Action, view: VmView) -> Steps:
        host.running.discard(view.name)
        yield
        self._stopped(host, view, action, "destroyed")

    def _stopped(self, host: Host, view: VmView, action: Action, outcome: str) -> None:
        write = vms.VmWrite(self.client(host), view).status(self._status(host, ActualState.STOPPED, outcome))
        if action.then is not None:
            write.record(view.record.with_state(action.then, view.record.reason))
        write.commit()

    def _report_running(self, host: Host, action: Action, view: VmView) -> Steps:
        write = vms.VmWrite(self.client(host), view).status(self._status(host, ActualState.RUNNING))
        if action.then is not None:
            write.record(view.record.with_state(action.then))
        write.commit()
        yield

    def _report_stopped(self, host: Host, action: Action, view: VmView) -> Steps:
        write = vms.VmWrite(self.client(host), view)
        if not view.status.active or view.status.node == host.name:
            write.status(self._status(host, ActualState.STOPPED, view.status.message))
        if action.then is not None:
            write.record(view.record.with_state(action.then, view.record.reason))
        write.commit()
        yield

    def _migrate_out(self, host: Host, action: Action, view: VmView) -> Steps:
        """Source of a move with the VM running: live-migrate (libvirt moves it at once, if the
        target host is up) or shut it down, then release it."""
        migration = view.migration
        assert migration is not None
        store = self.client(host)
        if migration.method == MigrationMethod.LIVE:
            view = (
                vms.VmWrite(store, view)
                .migration(dataclasses.replace(migration, phase=MovePhase.MIGRATING))
                .status(self._status(host, ActualState.MIGRATING, f"migrating to {migration.target}"))
                .commit()
            )
            yield
            target = self.hosts[migration.target]
            if target.on and view.name in host.running:
                host.running.discard(view.name)
                self._start_vm(target, view.name, f"live-migrated from {host.name}")
                yield
                self._release_now(host, view, "live", VmStatus(migration.target, ActualState.RUNNING, "live-migrated"))
                return
        view = vms.VmWrite(store, view).status(self._status(host, ActualState.STOPPING, "moving")).commit()
        yield
        host.running.discard(view.name)
        yield
        self._release_now(host, view, "shutdown", self._status(host, ActualState.STOPPED, "moved"))

    def _release(self, host: Host, action: Action, view: VmView) -> Steps:
        status = view.status
        if status.active and status.node != host.name:
            self._release_now(host, view, "not_running", None)
        else:
            self._release_now(host, view, "not_running", self._status(host, ActualState.STOPPED, status.message))
        yield

    def _release_now(self, host: Host, view: VmView, how: str, status: VmStatus | None) -> None:
        migration = view.migration
        assert migration is not None
        write = vms.VmWrite(self.client(host), view).migration(migration.released(how))
        if status is not None:
            write.status(status)
        write.commit()

    def _finish_move(self, host: Host, action: Action, view: VmView) -> Steps:
        migration = view.migration
        assert migration is not None
        record = view.record
        then = VmState.START if record.state in (VmState.MIGRATE, VmState.UNMIGRATE) else record.state
        if view.name in host.running:
            status = self._status(host, ActualState.RUNNING, f"arrived from {migration.source}")
        elif record.state in SHOULD_RUN:
            started = yield from self._start_domain(host, view)
            if started is None:
                return
            view = started
            status = self._status(host, ActualState.RUNNING, f"started after a move from {migration.source}")
        else:
            status = view.status
        write = (
            vms.VmWrite(self.client(host), view).delete_migration().record(dataclasses.replace(view.record, state=then))
        )
        if status != view.status:
            write.status(status)
        write.commit()

    # -- the fencer (pvcd/fencing/fencer.py) ---------------------------------------

    def _alive(self, term: Primary) -> bool:
        """The term's pvcd process still exists (frozen or not)."""
        host = self.hosts[term.node]
        return host.on and host.daemon is term.daemon

    def _is_primary(self, term: Primary) -> bool:
        host = self.hosts[term.node]
        return (term.current or term.claims_primary) and not host.cut and self._alive(term)

    def step_fencer(self, term: Primary, coin: int) -> None:
        """One step of the term's fencer: a new round (`Fencer.run_once`) when none is under way."""
        if not self._alive(term) or term.daemon.frozen:
            return
        term.coin = coin
        if term.round is None:
            if not self._is_primary(term):
                return
            term.round = self._fencer_round(term)
        if not self._step(term.round):
            term.round = None

    def _fencer_round(self, term: Primary) -> Steps:
        """`Fencer.run_once`: observe, decide, carry on every fence due, then declare at most one."""
        store = self.client(self.hosts[term.node])
        now = self.now_ms / 1000
        views = self._read_cluster(store)
        by_name = {view.name: view for view in views}
        for view in views:
            if view.keepalive_version is not None:
                term.tracker.observe(view.name, view.keepalive_version, now)
        statuses = [
            NodeStatus(view.name, view.state.daemon, Fence.from_record(view.fence) is not None, node_fencing(view))
            for view in views
        ]
        decision = detect(statuses, term.tracker, now, term.node, False)
        if decision.verdict == Verdict.STORM:
            self.count("storm")
        due = []
        for view in views:
            fence = Fence.from_record(view.fence)
            if fence is None or fence.step in (Step.RECOVERED, Step.HELD):
                continue
            action = flow.next_action(fence, node_fencing(view), store.server_time_ms())
            if action is not Next.NOTHING:
                due.append((view.name, action))
        if not due and decision.verdict != Verdict.FENCE:
            return
        yield  # the fence lock
        for name, action in due:
            yield from self._carry_on(term, name, action, by_name[name])
        if decision.verdict == Verdict.FENCE and decision.target is not None:
            yield from self._declare(term, by_name[decision.target])

    def _read_cluster(self, store: Client) -> list[NodeView]:
        """`nodes.read_cluster`, read again only when ZooKeeper changed since the last read."""
        if self._cluster[0] != self.server.writes:
            self._cluster = (self.server.writes, nodes.read_cluster(store))
        else:
            store.get(schema.NODES)  # the same reachability as the reads it stands for
        return self._cluster[1]

    def _declare(self, term: Primary, view: NodeView) -> Steps:
        """`Fencer._declare`: one transaction that checks the keepalive has not moved since it was judged."""
        store = self.client(self.hosts[term.node])
        node = view.name
        seen = term.tracker.seen.get(node)
        fencing = node_fencing(view)
        if seen is None or fencing is None or not self._is_primary(term):
            return
        fence_found = store.get(schema.node_fence(node))
        keepalive = store.get(schema.node_keepalive(node))
        if fence_found is None or keepalive is None or keepalive.version != seen.version:
            return
        if Fence.from_record(fence_found.value) is not None:
            return
        self.next_id += 1
        record: dict[str, Any] = {
            "id": f"f{self.next_id}",
            "step": str(Step.DECLARED),
            "outcome": flow.IN_PROGRESS,
            "by": term.node,
            "keepalive_version": keepalive.version,
            "keepalive_mtime_ms": keepalive.mtime_ms,
            "fencing": fencing.to_json(),
            "recovered": False,
        }
        yield
        try:
            store.transaction().check(schema.node_keepalive(node), seen.version).set(
                schema.node_fence(node), record, fence_found.version
            ).commit()
        except VersionConflict:
            self.count("declaration refused")
            return
        self.fences[record["id"]] = FenceFacts(node, self.now_ms)
        self.note(f"{term.node} declares fence {record['id']} of {node}")
        self.count("fence declared")
        yield
        yield from self._power_off_step(term, node, record, fencing)

    def _carry_on(self, term: Primary, node: str, action: Next, view: NodeView) -> Steps:
        """`Fencer._carry_on`: the fence as it is now in ZooKeeper, whoever began it."""
        found = self.client(self.hosts[term.node]).get(schema.node_fence(node))
        if found is None or not isinstance(found.value, dict) or Fence.from_record(found.value) is None:
            return
        record = dict(found.value)
        if record.get("by") != term.node and record.get("resumed_by") != term.node:
            record["resumed_by"] = term.node
            self.count("fence resumed")
        if action in (Next.CUT_STORAGE, Next.POWER_OFF):  # no storage here: its step is skipped
            yield from self._power_off_step(term, node, record, node_fencing(view))
        elif action is Next.RECOVER:
            yield from self._recover(term, node, record)

    def _write(self, term: Primary, node: str, record: dict[str, Any]) -> dict[str, Any]:
        """`Fencer._write`: refused unless the record still holds the same fence."""
        store = self.client(self.hosts[term.node])
        found = store.get(schema.node_fence(node))
        if found is None or not isinstance(found.value, dict) or found.value.get("id") != record.get("id"):
            raise VersionConflict(f"the fence {record.get('id')} is no longer current")
        store.set(schema.node_fence(node), record, found.version)
        return record

    def _bmc_fence(self, term: Primary, node: str) -> FenceOutcome:
        """The BMC: `ok` powers the host off and confirms; `down` does nothing (failed);
        `flaky` may or may not power it off, and answers so that pvcd judges it ambiguous
        (or confirmed when a poll saw it off). Confirmed only ever when the host is off."""
        host = self.hosts[node]
        if host.bmc == "down":
            return FenceOutcome.FAILED
        choice = term.coin % 3 if host.bmc == "flaky" else 0
        if choice < 2:
            self._power_off(host, "BMC power off")
        if choice == 0:
            assert not host.on
            return FenceOutcome.CONFIRMED
        return FenceOutcome.AMBIGUOUS

    def _power_off_step(self, term: Primary, node: str, record: dict[str, Any], fencing: NodeFencing | None) -> Steps:
        """`Fencer._power_off`: powering-off written, the BMC asked, its verdict written with the next step."""
        if not self._is_primary(term):
            return
        record = self._write(term, node, dict(record, step=str(Step.POWERING_OFF)))
        yield
        outcome = self._bmc_fence(term, node)
        facts = self.fences.get(str(record["id"]))
        if facts is not None and not self.hosts[node].on:
            facts.off_when_judged = True
        self.count(f"bmc {outcome}")
        yield
        after = flow.after_outcome(outcome, POLICY, fencing)
        record = self._write(
            term, node, dict(record, step=str(after.step), outcome=str(outcome), node_state=after.node_state)
        )
        self.note(f"fence {record['id']} of {node}: {outcome} → {after.step}")
        if after.step is Step.RECOVERING:
            self._justify(node, record, "confirmed power off")
            yield from self._recover(term, node, record)
        elif after.step is Step.HELD:
            self._power_on(self.hosts[node])

    def _justify(self, node: str, record: dict[str, Any], why: str) -> None:
        """The stated rule, checked when a fence first moves to `recovering`: a confirmed power off
        (which the BMC gives only for a host really off), an operator's confirmation (given only
        for a host really off), or the node's watchdog window past its last accepted keepalive."""
        facts = self.fences[str(record["id"])]
        fence = Fence.from_record(record)
        assert fence is not None
        if facts.justified is not None:
            # Carried on from an action decided before another term finished it: recovering the
            # same fence again moves only what is still on the node (`flow`: safe to repeat).
            self.count("recovery repeated")
            return
        window = (record.get("fencing") or {}).get("watchdog_timeout")
        expired = (
            window is not None
            and fence.keepalive_mtime_ms is not None
            and (
                self.now_ms - fence.keepalive_mtime_ms
                >= (window + (1 + flow.WATCHDOG_MARGIN_INTERVALS) * INTERVAL_MS / 1000) * 1000
            )
        )
        if fence.outcome == FenceOutcome.CONFIRMED and facts.off_when_judged:
            allowed = "confirmed power off"
        elif fence.confirmed_by_operator and facts.operator_confirmed:
            allowed = "operator"
        elif fence.step is Step.WAITING_WATCHDOG and expired:
            allowed = "watchdog window"
        else:
            raise SafetyViolation(
                f"t={self.now_ms}ms: fence {fence.id} of {node} recovers ({why}) without a "
                f"confirmed power off, an operator's confirmation or an expired window: {record}"
            )
        facts.justified = facts.justified or allowed
        self.count(f"recovery after {allowed}")

    def _recover(self, term: Primary, node: str, record: dict[str, Any]) -> Steps:
        """`Fencer._recover`, with `recovery.recover_vms` step by step (one batch per step; a batch
        that changed meanwhile one VM per step)."""
        if not self._is_primary(term):
            return
        if record.get("step") != Step.RECOVERING:
            self._justify(node, record, f"resumed at {record.get('step')}")
            record = self._write(term, node, dict(record, step=str(Step.RECOVERING)))
            yield
        elif self.fences[str(record["id"])].justified is None:
            raise SafetyViolation(
                f"t={self.now_ms}ms: fence {record['id']} of {node} is recovering, "
                "but no term ever had a reason to recover it"
            )
        self._check_host_cleared(node, record)
        self.note(
            f"{term.node} recovers the VMs of {node} (fence {record['id']}, last keepalive at "
            f"{record.get('keepalive_mtime_ms')}ms)"
        )
        store = self.client(self.hosts[term.node])
        views, _damaged = vms.read_vms(store)
        plan = plan_recovery(node, views, nodes.read_cluster(store), store.server_time_ms(), SELECTOR)
        for target in sorted(set(plan.targets.values())):
            store.ensure_path(schema.node_vms(target))
        yield
        for start in range(0, len(plan.vms), BATCH_VMS):
            batch = plan.vms[start : start + BATCH_VMS]
            transaction = store.transaction()
            staged = 0
            for name in batch:
                change = recovered(views[name], node, plan.targets.get(name), plan.can_finish)
                if change is not None:
                    vms.write_after_fence(store, views[name], *change, transaction)
                    staged += 1
            if staged:
                try:
                    transaction.commit()
                    self.count("vm batch recovered")
                    yield
                    continue
                except (VersionConflict, NotFound, AlreadyExists):
                    self.count("vm batch changed meanwhile")
            yield
            for name in batch:
                view: VmView | None = views[name]
                for _attempt in range(5):
                    assert view is not None
                    change = recovered(view, node, plan.targets.get(name), plan.can_finish)
                    if change is None:
                        break
                    try:
                        vms.write_after_fence(store, view, *change)
                        self.count("vm recovered")
                        break
                    except (VersionConflict, NotFound, AlreadyExists):
                        view = vms.read_vm(store, name)
                        if view is None:
                            break
                yield
        self._write(term, node, dict(record, step=str(Step.RECOVERED), recovered=True))
        self.note(f"fence {record['id']} of {node} recovered")
        yield
        if record.get("outcome") == FenceOutcome.CONFIRMED:
            self._power_on(self.hosts[node])

    def _check_host_cleared(self, node: str, record: dict[str, Any]) -> None:
        """Ground truth when a recovery begins: the fenced host is off, or has lost every VM since the
        fence was declared, or no pvcd has registered on it since it last lost them (one that does
        reads the fence first and holds). Otherwise it may still run, or start, the VMs placed elsewhere."""
        facts = self.fences[str(record["id"])]
        host = self.hosts[node]
        if not host.on or host.wiped_ms >= facts.declared_ms or not host.registered_since_wipe:
            return
        raise SafetyViolation(
            f"t={self.now_ms}ms: recovering {node} (fence {record['id']} declared at {facts.declared_ms}ms, "
            f"{facts.justified}) but the host is on, last cleared at {host.wiped_ms}ms, and its pvcd "
            f"(stage {host.daemon.stage if host.daemon else 'dead'}) may run VMs: {sorted(host.running)}"
        )

    # -- primaries -----------------------------------------------------------------

    def _candidates(self) -> list[Host]:
        return [
            h
            for h in self.hosts.values()
            if h.live_daemon() is not None and not h.cut and h.daemon is not None and h.daemon.running
        ]

    def takeover(self, index: int, keep_zombie: bool) -> None:
        """Another coordinator (or the same one, in a new term) becomes primary, with no liveness history.
        The old term's round under way is dropped, or (`keep_zombie`) goes on as a stale term."""
        candidates = self._candidates()
        if not candidates:
            return
        old = self.primary
        if old is not None and keep_zombie and old.round is not None:
            old.current = False
            self.zombies.append(old)
        chosen = candidates[index % len(candidates)]
        assert chosen.daemon is not None
        self.primary = Primary(chosen.name, chosen.daemon)
        self.vacant_since = None
        self.count("takeover")
        self.note(f"{self.primary.node} becomes primary")

    def _elect(self, coin: int) -> None:
        """The coordinators elect a new primary one session timeout after the last one stopped answering."""
        term = self.primary
        if term is not None:
            if self._alive(term) and not term.daemon.frozen and not self.hosts[term.node].cut:
                self.vacant_since = None
                return
            if self.vacant_since is None:
                self.vacant_since = self.now_ms
        if self.vacant_since is not None and self.now_ms - self.vacant_since >= SESSION_MS:
            self.takeover(coin, keep_zombie=True)

    def step_zombie(self, coin: int) -> None:
        if not self.zombies:
            return
        term = self.zombies[coin % len(self.zombies)]
        term.claims_primary = coin % 2 == 0
        self.step_fencer(term, coin // 2)
        if term.round is None or not self._alive(term):
            self.zombies.remove(term)

    # -- the operator ----------------------------------------------------------------

    def confirm(self, node: str) -> None:
        """`pvc node confirm-fenced`, by an honest operator: only when the host is really off."""
        host = self.hosts[node]
        if not self.operator or host.on:
            return
        found = self.admin.get(schema.node_fence(node))
        record = found.value if found is not None and isinstance(found.value, dict) else {}
        if found is None or record.get("outcome") not in ("ambiguous", "failed") or record.get("recovered"):
            return
        self.admin.set(schema.node_fence(node), dict(record, confirmed_by_operator=True), found.version)
        self.fences[str(record["id"])].operator_confirmed = True
        self.count("operator confirmed")
        self.note(f"operator confirms fence {record['id']} of {node}")

    def set_vm_state(self, vm: str, wanted: VmState) -> None:
        """`pvc vm start|stop|shutdown|disable`."""
        view = vms.read_vm(self.admin, vm)
        assert view is not None
        try:
            vms.VmWrite(self.admin, view).record(records.state_change(view, wanted)).commit()
        except (InvalidVm, NothingToDo):
            return
        self.note(f"operator: {vm} {wanted}")

    def move_vm(self, vm: str, kind: MoveKind, target: str) -> None:
        """`pvc vm migrate|move|unmigrate` (cli/vm.py `_move`) to an explicit node."""
        view = vms.read_vm(self.admin, vm)
        assert view is not None
        try:
            wanted = records.move_target(view, kind, target, force=True)
        except InvalidVm:
            return
        node_views = nodes.read_cluster(self.admin)
        all_vms, _ = vms.read_vms(self.admin)
        late = late_nodes(node_views, self.now_ms)
        current = next((v for v in node_views if v.name == view.record.node), None)
        if records.needs_handshake(view) and (
            current is None or current.state.daemon != "run" or view.record.node in late
        ):
            return
        plan = plan_batch([view.record.request(wanted)], placement.capacities(node_views, all_vms, late), SELECTOR)
        if plan.unplaced:
            return
        destination = plan.placements[0].node
        lastnode = records.next_lastnode(view.record, kind, destination)
        self.next_id += 1
        record, migration = records.moved(view, kind, destination, f"m{self.next_id}", lastnode)
        try:
            vms.request_move(self.admin, view, record, migration)
        except (VersionConflict, NotFound, AlreadyExists):
            return
        self.note(f"operator: {kind} {vm} {view.record.node} → {destination}")
        self.count("move requested")

    def ready(self, node: str) -> None:
        """`pvc node ready` (cli/vm.py `_node_command`): refused unless the node runs with a fresh
        keepalive; any fence record is cleared, and the node's flush runner told."""
        view = nodes.read_node(self.admin, node)
        if view is None or view.state.daemon != "run" or node in late_nodes([view], self.now_ms):
            return
        try:
            cleared = nodes.clear_fence(self.admin, node)
        except nodes.FenceInProgress:
            return  # refused while the fence is declared, powering off or recovering
        if cleared:
            daemon = self.hosts[node].daemon
            if daemon is not None:
                daemon.ready_command = True
            self.note(f"operator readies {node}")

    # -- events ------------------------------------------------------------------------

    def advance(self, ms: int) -> None:
        self.server.now_ms += ms
        self._watchdogs()

    def round(self, coin: int) -> None:
        """ROUND_MS pass, and every thread that can run takes one step."""
        self.advance(ROUND_MS)
        for host in self.hosts.values():
            daemon = host.live_daemon()
            if daemon is not None and (not daemon.running or self.now_ms >= daemon.next_tick_ms):
                self.tick(host)
            self.reconcile_pass(host)
            self.act(host)
        self._elect(coin)
        if self.primary is not None:
            self.step_fencer(self.primary, coin)

    def apply(self, event: tuple[Any, ...]) -> None:
        kind, *args = event
        host = self.hosts[NODES[args[0] % len(NODES)]] if args and kind in HOST_EVENTS else None
        if kind == "round":
            self.round(args[0])
        elif kind == "advance":
            self.advance(args[0])
        elif kind == "fencer" and self.primary is not None:
            self.step_fencer(self.primary, args[0])
        elif kind == "zombie":
            self.step_zombie(args[0])
        elif kind == "takeover":
            self.takeover(args[0], args[1])
        elif kind == "vm_state":
            self.set_vm_state(args[0], args[1])
        elif kind == "vm_move":
            self.move_vm(args[0], args[1], NODES[args[2] % len(NODES)])
        elif host is not None:
            self._host_event(kind, host, args[1:])
        self.check()

    def _host_event(self, kind: str, host: Host, args: list[Any]) -> None:
        daemon = host.live_daemon()
        if kind == "tick":
            self.tick(host)
        elif kind == "send" and daemon is not None and daemon.running and host.wire is None:
            self._send(host)
        elif kind == "deliver":
            self.deliver(host)
        elif kind == "pass":
            self.reconcile_pass(host)
        elif kind == "act":
            self.act(host, args[0] if args else 0)
        elif kind == "freeze" and host.daemon is not None:
            host.daemon.frozen = not host.daemon.frozen
        elif kind == "cut":
            host.cut = not host.cut
        elif kind == "crash" and host.daemon is not None:
            self.note(f"pvcd of {host.name} crashes")
            self._kill_daemon(host)
        elif kind == "restart" and host.on and host.daemon is None:
            # systemd restarts pvcd; it gets through `steps` stages of its start, then `fault` strikes
            host.daemon = Daemon()
            self.note(f"pvcd of {host.name} restarts")
            steps, fault = (args[0], args[1]) if len(args) == 2 else (0, None)
            for _ in range(steps):
                self.tick(host)
            if fault is not None:
                self._host_event(fault, host, [])
        elif kind == "bounce" and host.daemon is not None:
            # pvcd crashes, and systemd restarts it `rounds` rounds later (as "restart" above)
            self._host_event("crash", host, [])
            for index in range(args[0]):
                self.round(index)
            self._host_event("restart", host, args[1:])
        elif kind == "power_loss":
            self._power_off(host, "power loss")
        elif kind == "boot":
            self._power_on(host)
        elif kind == "bmc":
            host.bmc = args[0]
        elif kind == "confirm":
            self.confirm(host.name)
        elif kind == "ready":
            self.ready(host.name)

    # -- healing --------------------------------------------------------------------------

    def settle(self, ms: int, until: Callable[[], bool] = lambda: False) -> None:
        """Time passes with every thread running to completion each round, until `until()` holds."""
        for index in range(ms // ROUND_MS):
            if index % 4 == 0 and until():
                return
            self.advance(ROUND_MS)
            for host in self.hosts.values():
                daemon = host.live_daemon()
                if daemon is not None and (not daemon.running or self.now_ms >= daemon.next_tick_ms):
                    self.tick(host)
                self.reconcile_pass(host)
                for _ in range(20):
                    daemon = host.live_daemon()
                    if daemon is None or not daemon.actions:
                        break
                    self.act(host)
            self._elect(0)
            term = self.primary
            for _ in range(50):
                if term is None or self.primary is not term:
                    break
                self.step_fencer(term, 0)
                if term.round is None:
                    break
            self.check()

    def heal(self) -> None:
        """Every fault cleared: stale terms finish, daemons thaw and reconnect, crashed ones restart,
        BMCs answer, hosts are powered on. The honest operator confirms fences that wait for them
        (powering the host off by hand first); then every node whose fence is over is readied and
        VMs left in `fail` are started again."""
        for term in self.zombies:
            term.claims_primary = False
            term.daemon.frozen = False
            for _ in range(50):
                if term.round is None or not self._alive(term):
                    break
                self.step_fencer(term, 0)
                self.check()
        self.zombies.clear()
        for host in self.hosts.values():
            host.cut = False
            host.bmc = "ok"
            if host.daemon is not None:
                host.daemon.frozen = False
            elif host.on:
                host.daemon = Daemon(next_tick_ms=self.now_ms)
            if not host.on:
                self.confirm(host.name)
        self.check()
        for _ in range(4):
            if self.operator:
                for host in self.hosts.values():
                    fence = Fence.from_record(nodes.read_fence(self.admin, host.name))
                    if fence is not None and fence.step is Step.WAITING_OPERATOR and not fence.confirmed_by_operator:
                        self._power_off(host, "operator power off")
                        self.confirm(host.name)
            self.settle(30_000, self._fences_settled)
            for host in self.hosts.values():
                self._power_on(host)
                fence = Fence.from_record(nodes.read_fence(self.admin, host.name))
                if fence is not None and fence.step in (Step.RECOVERED, Step.HELD):
                    self.ready(host.name)
            for vm in VMS:
                view = vms.read_vm(self.admin, vm)
                if view is not None and view.record.state == VmState.FAIL:
                    self.set_vm_state(vm, VmState.START)
            self.settle(10_000, lambda: not self.liveness_problems())
            if not self.liveness_problems():
                break
        self.check()

    def _fences_settled(self) -> bool:
        """No fence is under way: each is over or waits for an operator who has not confirmed."""
        for name in NODES:
            fence = Fence.from_record(nodes.read_fence(self.admin, name))
            if fence is None or fence.step in (Step.RECOVERED, Step.HELD):
                continue
            if fence.step is Step.WAITING_OPERATOR and not fence.confirmed_by_operator:
                continue
            return False
        return True

    def waiting_for_operator(self) -> set[str]:
        """Nodes whose fence waits for an operator (who never came)."""
        waiting = set()
        for name in NODES:
            fence = Fence.from_record(nodes.read_fence(self.admin, name))
            if fence is not None and fence.step is Step.WAITING_OPERATOR and not fence.confirmed_by_operator:
                waiting.add(name)
        return waiting

    def liveness_problems(self) -> list[str]:
        """After `heal`: every VM that should run runs exactly once, on its node, with the records agreeing;
        a node whose fence waits for an operator that never came keeps its VMs (stopped)."""
        problems = []
        waiting = self.waiting_for_operator()
        if self.operator and waiting:
            problems.append(f"fences still wait for the operator: {sorted(waiting)}")
        for name in NODES:
            fence = Fence.from_record(nodes.read_fence(self.admin, name))
            if fence is not None and name not in waiting:
                problems.append(f"{name} still has fence {fence.id} at {fence.step}")
            daemon = self.hosts[name].daemon
            if daemon is None or not daemon.running or not self.hosts[name].on:
                problems.append(f"{name} is not up")
            elif daemon.domain != DomainState.READY and name not in waiting:
                problems.append(f"{name} is {daemon.domain}")
        views, _ = vms.read_vms(self.admin)
        for name, view in sorted(views.items()):
            where = sorted(h.name for h in self.hosts.values() if name in h.running)
            record = view.record
            if record.node in waiting or (view.migration is not None and view.migration.source in waiting):
                continue
            if view.migration is not None:
                problems.append(f"{name} still moving: {view.migration}")
            if record.state in SHOULD_RUN:
                status = view.status
                if where != [record.node] or (status.node, status.state) != (record.node, ActualState.RUNNING):
                    problems.append(
                        f"{name} should run on {record.node} ({record.state}): runs on {where}, status {view.status}"
                    )
            elif record.state == VmState.FAIL:
                problems.append(f"{name} left in fail: {record.reason}")
            elif where:
                problems.append(f"{name} is {record.state} but runs on {where}")
        return problems


HOST_EVENTS = frozenset(
    {
        "tick",
        "send",
        "deliver",
        "pass",
        "act",
        "freeze",
        "cut",
        "crash",
        "restart",
        "power_loss",
        "boot",
        "bmc",
        "confirm",
        "ready",
        "bounce",
    }
)
