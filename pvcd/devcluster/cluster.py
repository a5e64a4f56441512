"""Start, inspect and stop a local cluster recorded in DIR/cluster.json.

The record is the single source of truth for what the launcher started: every
process is stopped by the PID written there, and only after checking that the
PID still runs the command we started (PIDs get reused).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from pvcd.devcluster import layout
from pvcd.devcluster.processes import pid_alive, pid_cmdline, stop_pid
from pvcd.devcluster.zookeeper import ZooKeeperServer
from pvcd.zk import nodes
from pvcd.zk.store import Store, StoreError

NODE_STOP_TIMEOUT = 10.0


class ClusterError(Exception):
    """A launcher failure to report as one line."""


@dataclass
class NodeRecord:
    name: str
    pid: int | None
    config: str
    log: str
    host_xml: str


@dataclass
class ClusterRecord:
    workdir: str
    zookeeper: str
    zookeeper_pid: int | None
    zookeeper_dir: str
    keepalive_interval: int
    fence_intervals: int
    nodes: list[NodeRecord] = field(default_factory=list)

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
        raise ClusterError(f"{path} is not a cluster record: {exc}") from exc


def node_running(node: NodeRecord) -> bool:
    """Alive and still the pvcd we started (same configuration file)."""
    return node.pid is not None and pid_alive(node.pid) and node.config in " ".join(pid_cmdline(node.pid) + _env_of(node.pid))


def _env_of(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            return [part.decode(errors="replace") for part in environ.read().split(b"\0")]
    except OSError:
        return []


def start_node(node: NodeRecord) -> int:
    """Start the node's pvcd; its output goes to the node's log file."""
    env = dict(os.environ, PVCD_CONFIG_FILE=node.config, PYTHONUNBUFFERED="1")
    with open(node.log, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "pvcd.main"],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    node.pid = process.pid
    return process.pid


def stop_node(node: NodeRecord, timeout: float = NODE_STOP_TIMEOUT) -> None:
    if node_running(node):
        assert node.pid is not None
        stop_pid(node.pid, timeout=timeout)
    node.pid = None


def up(workdir: Path, count: int, keepalive_interval: int, fence_intervals: int) -> ClusterRecord:
    """Start ZooKeeper and `count` nodes; return once the record is written."""
    if count < 1:
        raise ClusterError(f"--nodes must be at least 1, got {count}")
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if record_path(workdir).exists():
        existing = load(workdir)
        if any(node_running(n) for n in existing.nodes) or (
            existing.zookeeper_pid and pid_alive(existing.zookeeper_pid)
        ):
            raise ClusterError(f"a local cluster is already running in {workdir}; run 'pvc-devcluster down' first")
    server = ZooKeeperServer.create(workdir / "zookeeper")
    try:
        server.start()
    except RuntimeError as exc:
        raise ClusterError(str(exc)) from exc
    record = ClusterRecord(
        workdir=str(workdir),
        zookeeper=server.address,
        zookeeper_pid=server.pid,
        zookeeper_dir=str(server.directory),
        keepalive_interval=keepalive_interval,
        fence_intervals=fence_intervals,
    )
    names = layout.node_names(count)
    for name in names:
        paths = layout.node_paths(workdir, name)
        paths.directory.mkdir(parents=True, exist_ok=True)
        paths.host_xml.write_text(layout.host_xml())
        document = layout.node_config(name, paths, names, server.port, keepalive_interval, fence_intervals)
        paths.config.write_text(yaml.safe_dump(document, sort_keys=False))
        record.nodes.append(NodeRecord(name, None, str(paths.config), str(paths.log), str(paths.host_xml)))
    for node in record.nodes:
        start_node(node)
    save(record)
    return record


def wait_until_running(record: ClusterRecord, timeout: float) -> list[str]:
    """Wait until every node reports `run`; return the names that did not."""
    deadline = time.monotonic() + timeout
    pending = [n.name for n in record.nodes]
    store = Store(record.zookeeper, connect_timeout=5.0)
    try:
        store.start()
    except StoreError:
        return pending
    try:
        while pending and time.monotonic() < deadline:
            views = {v.name: v for v in nodes.read_cluster(store)}
            pending = [
                name for name in pending
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
    for node in record.nodes:
        stop_node(node)
    if record.zookeeper_pid:
        server = ZooKeeperServer(Path(record.zookeeper_dir), int(record.zookeeper.rsplit(":", 1)[1]), record.zookeeper_pid)
        if "QuorumPeerMain" in " ".join(pid_cmdline(record.zookeeper_pid)):
            server.stop()
        record.zookeeper_pid = None
    save(record)
    return record
