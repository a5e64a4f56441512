"""Shared fixtures: a real ZooKeeper and a real Ceph started by the suite, and node configurations.

The ZooKeeper server is started once per session on a free 127.0.0.1 port and
stopped by its PID at the end; each test gets an empty /pvc tree. It runs as the
local cluster's does, secure: TLS only (mutual) and digest credentials, so every
test that reaches it goes through both. Every generated node configuration carries
the credentials of its role, the ACL identities and the TLS files; the `pvc` CLI
(run in-process or as a subprocess) finds the operator's in the environment
(`PVC_ZOOKEEPER_CREDENTIALS`, `PVC_ZOOKEEPER_CA`, `_CERT`, `_KEY`), which the
`zookeeper` fixture sets for the whole session. The one-node
Ceph (mon, mgr, memstore OSD) is started once per session, the first time a
test asks for it, and its daemons are stopped by their PIDs at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kazoo.client import KazooClient

from ceph_helpers import LockHolder
from helpers import DaemonProcess, kazoo_client, node_document
from pvcd.config import Config, parse_config
from pvcd.devcluster import layout
from pvcd.devcluster.ceph import CephCluster, ceph_available
from pvcd.devcluster.zookeeper import ZooKeeperServer, zookeeper_available
from pvcd.zk import schema


@pytest.fixture(scope="session")
def zookeeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ZooKeeperServer]:
    if not zookeeper_available():
        pytest.fail("ZooKeeper is not installed: run the README's test command, which installs it")
    server = ZooKeeperServer.create(tmp_path_factory.mktemp("zookeeper"))
    server.start()
    environment = pytest.MonkeyPatch()
    for name, value in server.client_environment("operator").items():
        environment.setenv(name, value)
    yield server
    environment.undo()
    server.stop()


@pytest.fixture(scope="session")
def ceph_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephCluster]:
    missing = ceph_available()
    if missing is not None:
        pytest.fail(f"{missing} is not installed: run the README's test command, which installs Ceph")
    cluster = CephCluster.create(tmp_path_factory.mktemp("ceph"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def zk(zookeeper: ZooKeeperServer) -> Iterator[KazooClient]:
    """A raw kazoo client on an empty /pvc, to check what pvcd wrote: authenticated as the
    coordinator identity (it may read and write everything pvcd creates), over TLS."""
    if not zookeeper.ruok():
        zookeeper.start()
    client = kazoo_client(zookeeper)
    client.start(timeout=10)
    client.delete(schema.ROOT, recursive=True)
    yield client
    client.stop()
    client.close()


@pytest.fixture
def make_config(tmp_path: Path, zookeeper: ZooKeeperServer) -> Callable[..., Config]:
    def make(name: str = "hv1", **kwargs: Any) -> Config:
        return parse_config(node_document(tmp_path, name, zookeeper.port, zookeeper=zookeeper, **kwargs))

    return make


@pytest.fixture
def write_config(tmp_path: Path, zookeeper: ZooKeeperServer) -> Callable[..., Path]:
    def write(name: str = "hv1", **kwargs: Any) -> Path:
        document = node_document(tmp_path, name, zookeeper.port, zookeeper=zookeeper, **kwargs)
        path = layout.node_paths(tmp_path, name).config
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    return write


@pytest.fixture
def daemon_process() -> Iterator[Callable[[Path], DaemonProcess]]:
    started: list[DaemonProcess] = []

    def start(config_path: Path) -> DaemonProcess:
        process = DaemonProcess(config_path).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def holders() -> Iterator[list[LockHolder]]:
    """Ceph clients holding volume locks (tests/ceph_helpers.py) a test starts; stopped when it ends."""
    started: list[LockHolder] = []
    yield started
    for holder in started:
        holder.stop()
