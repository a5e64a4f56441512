"""Start, inspect and stop a local cluster recorded in DIR/cluster.json.

The record is the single source of truth for what the launcher started: every
process is stopped by the PID written there, and only after checking that the
PID still runs the command we started (PIDs get reused).

Each node runs inside a chassis process (`chassis.py`): the chassis owns the
node's libvirtd (its simulated host), its pvcd, its BMC simulator, its watchdog
and its link to ZooKeeper. The pvcd and libvirtd PIDs change when the node is
power-cycled, so the current ones are read from the chassis' state file;
cluster.json keeps the pvcd PID the node started with.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pvcd.config import ConfigError, parse_config
from pvcd.devcluster import chassis, layout, libvirt_host, qemu_cluster, qemu_host
from pvcd.devcluster.processes import free_port, pid_alive, pid_cmdline, stop_pid
from pvcd.devcluster.zookeeper import ZooKeeperServer
from pvcd.zk import nodes
from pvcd.zk.security import Credentials, SecurityError, Tls, ZkSecurity
from pvcd.zk.store import Store, StoreError

NODE_STOP_TIMEOUT = 15.0
CHASSIS_START_TIMEOUT = 20.0
QEMU_CHASSIS_START_TIMEOUT = 60.0
"""A QEMU host's first libvirtd probes QEMU (~2-4 s), more on a loaded machine."""
FAULTS = (
    "crash",
    "daemon-crash",
    "daemon-hang",
    "daemon-resume",
    "cut",
    "heal",
    "bmc-down",
    "bmc-up",
    "bmc-flaky",
    "power-off",
    "power-on",
)
DAEMON_SIGNALS = {"daemon-crash": signal.SIGKILL, "daemon-hang": signal.SIGSTOP, "daemon-resume": signal.SIGCONT}
"""Faults of the node's pvcd alone: its host (libvirtd and the VMs) keeps running."""


class ClusterError(Exception):
    """A launcher failure to report as one line."""


@dataclass
class NodeRecord:
    name: str
    pid: int | None
    config: str
    log: str
    libvirt_uri: str
    journal: str
    directory: str
    chassis_pid: int | None
    bmc_port: int
    relay_port: int
    host: dict[str, Any] | None = None
    """A QEMU host's names (`qemu_cluster.plan_node`), for `down`; None on the test driver."""

    @classmethod
    def laid_out(cls, name: str, paths: layout.NodePaths, bmc_port: int, relay_port: int) -> NodeRecord:
        """A node not started yet, its files where `layout` puts them."""
        return cls(
            name,
            None,
            str(paths.config),
            str(paths.log),
            layout.chassis_libvirt_uri(paths),
            str(paths.journal),
            str(paths.directory),
            None,
            bmc_port,
            relay_port,
        )

    def current(self) -> dict[str, Any]:
        """The chassis' own account of the node: power, pvcd and libvirtd PIDs, BMC, watchdog, link."""
        return chassis.read_state(Path(self.directory)) or {}


@dataclass
class ClusterRecord:
    workdir: str
    zookeeper: str
    zookeeper_pid: int | None
    zookeeper_dir: str
    keepalive_interval: int
    fence_intervals: int
    nodes: list[NodeRecord] = field(default_factory=list)
    hosts: str = "test"
    """`test` (libvirt's test driver) or `qemu` (real QEMU hosts, `qemu_cluster.py`)."""
    network: dict[str, Any] | None = None
    """A QEMU cluster's bridges (`qemu_cluster.Network`), for `down`."""
    zookeeper_credentials: str | None = None
    """The operator's `user:password` file: what a `pvc` CLI authenticates with (None: an open ZooKeeper)."""
    zookeeper_tls: dict[str, str] | None = None
    """The CA (`ca_file`) and the client certificate and key (`cert_file`, `key_file`) of a TLS ZooKeeper."""

    def client_environment(self) -> dict[str, str]:
        """What `pvc` needs in its environment to reach this cluster as its operator."""
        env = {"PVC_ZOOKEEPER": self.zookeeper}
        if self.zookeeper_credentials is not None:
            env["PVC_ZOOKEEPER_CREDENTIALS"] = self.zookeeper_credentials
        if self.zookeeper_tls is not None:
            env["PVC_ZOOKEEPER_CA"] = self.zookeeper_tls["ca_file"]
            env["PVC_ZOOKEEPER_CERT"] = self.zookeeper_tls["cert_file"]
            env["PVC_ZOOKEEPER_KEY"] = self.zookeeper_tls["key_file"]
        return env

    def client_security(self) -> ZkSecurity | None:
        """How the launcher's own clients reach ZooKeeper: as the operator (None: an open ZooKeeper)."""
        if self.zookeeper_credentials is None and self.zookeeper_tls is None:
            return None
        try:
            credentials = (
                Credentials.from_file(self.zookeeper_credentials) if self.zookeeper_credentials is not None else None
            )
        except SecurityError as exc:
            raise ClusterError(str(exc)) from exc
        return ZkSecurity(credentials, None, Tls(**self.zookeeper_tls) if self.zookeeper_tls is not None else None)

    @property
    def listen_address(self) -> str:
        """Where the chassis' relays and BMCs listen."""
        return qemu_cluster.Network(**self.network).root_address if self.network else "127.0.0.1"

    def node(self, name: str) -> NodeRecord:
        for record in self.nodes:
            if record.name == name:
                return record
        raise ClusterError(f"no node named {name!r} in {self.workdir}")


def record_path(workdir: Path) -> Path:
    return workdir / layout.CLUSTER_FILE


def save(record: ClusterRecord) -> None:
    path = record_path(Path(record.workdir))
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2) + "\n")
    os.replace(tmp, path)


def load(workdir: Path) -> ClusterRecord:
    path = record_path(workdir)
    try:
        raw = json.loads(path.read_text())
        raw["nodes"] = [NodeRecord(**n) for n in raw["nodes"]]
        return ClusterRecord(**raw)
    except FileNotFoundError as exc:
        raise ClusterError(f"no local cluster in {workdir} ({path} does not exist)") from exc
    except (ValueError, TypeError, KeyError) as exc:
        raise ClusterError(
            f"{path} is not a cluster record this pvc-devcluster can read ({exc}); "
            f"stop what it started by hand and remove {workdir}"
        ) from exc


def chassis_running(node: NodeRecord) -> bool:
    return (
        node.chassis_pid is not None
        and pid_alive(node.chassis_pid)
        and "pvcd.devcluster.chassis" in " ".join(pid_cmdline(node.chassis_pid))
    )


def node_pid(node: NodeRecord) -> int | None:
    """The node's pvcd PID right now, if it runs."""
    if not chassis_running(node):
        return None
    pid = node.current().get("pvcd_pid")
    return pid if pid and pid_alive(pid) else None


def start_chassis(node: NodeRecord, record: ClusterRecord) -> None:
    """Start the node's chassis, which powers the node on; wait for its pvcd and its control socket.

    From the node directory: a `pvcd` folder in the caller's working directory
    must not shadow the installed package (`python -m` puts the working
    directory first on the module path).
    """
    directory = Path(node.directory)
    (directory / chassis.STATE_FILE).unlink(missing_ok=True)
    with open(directory / "chassis.log", "ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pvcd.devcluster.chassis",
                "--name",
                node.name,
                "--node-dir",
                node.directory,
                "--config",
                node.config,
                "--log",
                node.log,
                "--zookeeper",
                record.zookeeper,
                "--relay-port",
                str(node.relay_port),
                "--bmc-port",
                str(node.bmc_port),
                "--hosts",
                record.hosts,
                "--listen-address",
                record.listen_address,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=directory,
        )
    node.chassis_pid = process.pid
    deadline = time.monotonic() + (QEMU_CHASSIS_START_TIMEOUT if node.host else CHASSIS_START_TIMEOUT)
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ClusterError(f"chassis of {node.name} exited; see {directory / 'chassis.log'}")
        pid = node.current().get("pvcd_pid")
        if pid and (directory / chassis.CONTROL_SOCKET).exists():
            node.pid = pid
            return
        time.sleep(0.1)
    raise ClusterError(f"chassis of {node.name} did not power the node on; see {directory / 'chassis.log'}")


def stop_chassis(node: NodeRecord, timeout: float = NODE_STOP_TIMEOUT) -> None:
    """Stop the chassis, which stops its pvcd (SIGTERM first) and its libvirtd; then whatever a dead chassis left."""
    if chassis_running(node):
        assert node.chassis_pid is not None
        stop_pid(node.chassis_pid, timeout=timeout)
    state = node.current()
    pid = state.get("pvcd_pid")
    if pid and pid_alive(pid) and node.config in " ".join(_env_of(pid)):
        stop_pid(pid, timeout=timeout)
    libvirtd = state.get("libvirtd_pid")
    if node.host is not None:
        # Whatever a dead chassis left of the host: every process in its namespace.
        qemu_host.kill_namespace(node.host["netns"])
    elif libvirtd:
        paths = layout.NodePaths(node.name, Path(node.directory))
        libvirt_host.stop_orphan(libvirtd, libvirt_host.Libvirtd.config_path(paths.libvirt_root))
    node.chassis_pid = None


def _env_of(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            return [part.decode(errors="replace") for part in environ.read().split(b"\0")]
    except OSError:
        return []


def fault(record: ClusterRecord, name: str, kind: str) -> dict[str, Any]:
    """Inject a fault into one node, as the chassis or the kernel would see it."""
    node = record.node(name)
    if kind not in FAULTS:
        raise ClusterError(f"unknown fault {kind!r}; one of {', '.join(FAULTS)}")
    if not chassis_running(node):
        raise ClusterError(f"node {name} is not running (its chassis is stopped)")
    if kind in DAEMON_SIGNALS:
        pid = node.current().get("pvcd_pid")
        if not pid or not pid_alive(pid):
            raise ClusterError(f"node {name} has no running pvcd to {kind.removeprefix('daemon-')}")
        os.kill(pid, DAEMON_SIGNALS[kind])
        return node.current()
    answer = chassis.request(Path(node.directory), kind)
    if "error" in answer:
        raise ClusterError(answer["error"])
    return answer


def up(workdir: Path, count: int, timing: layout.Timing, hosts: str = "test") -> ClusterRecord:
    """Start ZooKeeper and `count` nodes; return once the record is written.

    `hosts`: `test` (each node's hypervisor is libvirt's test driver) or
    `qemu` (each node a real QEMU host in its own namespaces; needs root).
    """
    if count < 1:
        raise ClusterError(f"--nodes must be at least 1, got {count}")
    if hosts == "qemu":
        try:
            qemu_cluster.require_root()
        except qemu_cluster.QemuClusterError as exc:
            raise ClusterError(str(exc)) from exc
    workdir = workdir.resolve()
    problem = layout.node_paths(workdir, layout.node_names(count)[-1]).socket_problem()
    if problem:
        raise ClusterError(problem)
    workdir.mkdir(parents=True, exist_ok=True)
    if record_path(workdir).exists():
        existing = load(workdir)
        if any(chassis_running(n) for n in existing.nodes) or (
            existing.zookeeper_pid and pid_alive(existing.zookeeper_pid)
        ):
            raise ClusterError(f"a local cluster is already running in {workdir}; run 'pvc-devcluster down' first")
        if existing.network is not None:
            down(workdir)  # a crashed launcher's namespaces and bridges
    # A QEMU cluster's nodes reach ZooKeeper through their chassis' relays on the cluster
    # bridge: the server's certificate must name that address too.
    network = qemu_cluster.Network.choose() if hosts == "qemu" else None
    server = ZooKeeperServer.create(
        workdir / "zookeeper", extra_addresses=(network.root_address,) if network is not None else ()
    )
    try:
        server.start()
    except RuntimeError as exc:
        raise ClusterError(str(exc)) from exc
    tls = server.tls
    assert tls.cert_file is not None and tls.key_file is not None
    record = ClusterRecord(
        workdir=str(workdir),
        zookeeper=server.address,
        zookeeper_pid=server.pid,
        zookeeper_dir=str(server.directory),
        keepalive_interval=timing.keepalive_interval,
        fence_intervals=timing.fence_intervals,
        hosts=hosts,
        zookeeper_credentials=str(server.credentials_file("operator")),
        zookeeper_tls={"ca_file": tls.ca_file, "cert_file": tls.cert_file, "key_file": tls.key_file},
    )
    try:
        _lay_out(record, layout.node_names(count), timing, server, network)
        for node in record.nodes:
            start_chassis(node, record)
    except (ClusterError, RuntimeError, OSError) as exc:
        # Nothing of a cluster that did not start may keep running.
        save(record)
        down(workdir)
        raise exc if isinstance(exc, ClusterError) else ClusterError(f"the cluster did not start: {exc}") from exc
    save(record)
    return record


def _lay_out(
    record: ClusterRecord,
    names: list[str],
    timing: layout.Timing,
    server: ZooKeeperServer,
    network: qemu_cluster.Network | None = None,
) -> None:
    """Every node's directory and pvcd.yaml (with the ZooKeeper credentials of its role, the
    cluster's ACL identities and TLS files) and, on a QEMU cluster, its bridges and hosts (off).

    The record is saved before each thing is created, so that `down` finds it
    whatever fails next."""
    workdir = Path(record.workdir)
    if network is not None:
        record.network = network.to_json()
        save(record)
        network.create()
    addresses: dict[str, str] = {}
    for index, name in enumerate(names, start=1):
        paths = layout.node_paths(workdir, name)
        paths.directory.mkdir(parents=True, exist_ok=True)
        # A new cluster's ground truth starts empty: an earlier run's hosts are gone.
        paths.journal.unlink(missing_ok=True)
        relay_port, bmc_port = free_port(), free_port()
        document = layout.node_config(
            name,
            paths,
            names,
            relay_port,
            timing,
            bmc_port,
            in_chassis=True,
            zookeeper_keys=server.config_keys(layout.node_role(name, names)),
        )
        if network is not None:
            document = qemu_cluster.node_document(document, network, index, relay_port)
        try:
            config = parse_config(document)
        except ConfigError as exc:
            raise ClusterError(f"the node configuration would be invalid: {exc.problems[0]}") from exc
        if network is not None:
            assert config.networking is not None and config.networking.cluster.address is not None
            addresses[name] = str(config.networking.cluster.address)
        paths.config.write_text(yaml.safe_dump(document, sort_keys=False))
        record.nodes.append(NodeRecord.laid_out(name, paths, bmc_port, relay_port))
    if network is None:
        return
    peers = {name: address.split("/")[0] for name, address in addresses.items()}
    for node in record.nodes:
        paths = layout.node_paths(workdir, node.name)
        spec = qemu_cluster.host_spec(workdir, paths, network, addresses[node.name], peers)
        spec.save(paths.directory)
        node.host = qemu_cluster.plan_node(spec)
        node.libvirt_uri = spec.host().uri
        save(record)
        qemu_cluster.build_node(spec, network, node.host)


def wait_until_running(record: ClusterRecord, timeout: float) -> list[str]:
    """Wait until every node reports `run`; return the names that did not."""
    deadline = time.monotonic() + timeout
    pending = [n.name for n in record.nodes]
    store = Store(record.zookeeper, connect_timeout=5.0, security=record.client_security())
    try:
        store.start()
    except StoreError:
        return pending
    try:
        while pending and time.monotonic() < deadline:
            views = {v.name: v for v in nodes.read_cluster(store)}
            pending = [
                name
                for name in pending
                if name not in views or views[name].state.daemon != "run" or not views[name].keepalive_mtime_ms
            ]
            if pending:
                time.sleep(0.2)
    finally:
        store.stop()
    return pending


def down(workdir: Path) -> ClusterRecord:
    """Stop every node, then ZooKeeper, each by its recorded PID."""
    record = load(workdir.resolve())
    # The chassis stop at once: each waits for its own pvcd and hypervisor, not for the others'.
    with ThreadPoolExecutor(max_workers=max(1, len(record.nodes))) as pool:
        list(pool.map(stop_chassis, record.nodes))
    for node in record.nodes:
        if node.host is not None:
            qemu_cluster.remove_node(node.host)
    if record.network is not None:
        qemu_cluster.Network(**record.network).remove()
    if record.zookeeper_pid:
        port = int(record.zookeeper.rsplit(":", 1)[1])
        server = ZooKeeperServer(Path(record.zookeeper_dir), port, record.zookeeper_pid)
        if "QuorumPeerMain" in " ".join(pid_cmdline(record.zookeeper_pid)):
            server.stop()
        record.zookeeper_pid = None
    save(record)
    return record
