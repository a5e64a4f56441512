"""The primary's record of the Ceph cluster (issue 13) against the session's real one-node Ceph and
real ZooKeeper: the record matches Ceph; a Ceph that stops answering (its mon SIGSTOPped) turns the
record stale and raises the `storage` fault, which clear once it answers again; and a real pvcd
keeps its keepalive interval meanwhile, with the storage line in its log."""

from __future__ import annotations

import json
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kazoo.client import KazooClient

import cli.main as cli_main
from helpers import DaemonProcess, node_document, wait_for
from pvcd.devcluster import layout
from pvcd.devcluster.ceph import CephCluster
from pvcd.devcluster.zookeeper import ZooKeeperServer
from pvcd.storage import Ceph, CephError
from pvcd.storage.status import FAULT, StorageStatus
from pvcd.supervisor import Supervisor
from pvcd.zk import schema
from pvcd.zk.store import ZooKeeperStore

MiB = 1 << 20
POOL = "statusvms"
CEPH_TIMEOUT = 2.0
"""Seconds per Ceph call while the mon is stopped: short, so that the tests see the failure soon."""


@pytest.fixture(scope="module")
def pool(ceph_cluster: CephCluster) -> str:
    ceph = Ceph(conf=ceph_cluster.conf, keyring=ceph_cluster.keyring, client_id="admin", timeout=20)
    ceph.create_pool(POOL, pgs=4, size=1)
    ceph.create_volume(POOL, "disk1", "64M")
    ceph.create_volume(POOL, "disk2", "8M")
    return POOL


@pytest.fixture
def store(zk: KazooClient, zookeeper: ZooKeeperServer) -> Iterator[ZooKeeperStore]:
    opened = ZooKeeperStore(zookeeper.address, security=zookeeper.security(), session_timeout=4.0)
    opened.start()
    opened.ensure_schema()
    yield opened
    opened.stop()


def record(zk: KazooClient) -> dict[str, Any] | None:
    if not zk.exists(schema.STORAGE_STATUS):
        return None
    return json.loads(zk.get(schema.STORAGE_STATUS)[0])


def faults(zk: KazooClient) -> dict[str, Any]:
    if not zk.exists(schema.FAULTS):
        return {}
    return json.loads(zk.get(schema.FAULTS)[0]) or {}


def volumes_of(found: dict[str, Any] | None, pool: str) -> dict[str, int] | None:
    if not found or not found.get("ok"):
        return None
    for entry in found["pools"]:
        if entry["name"] == pool and entry["volumes"] is not None:
            return {volume["name"]: volume["size_bytes"] for volume in entry["volumes"]}
    return None


def ceph_answers(ceph_cluster: CephCluster) -> bool:
    try:
        Ceph(conf=ceph_cluster.conf, keyring=ceph_cluster.keyring, client_id="admin", timeout=5).status()
    except CephError:
        return False
    return True


@pytest.fixture
def stopped_mon(ceph_cluster: CephCluster) -> Iterator[Callable[[], None]]:
    """`stop()` SIGSTOPs the mon; it is always continued (and answering again) after the test."""
    mon = ceph_cluster.pids["mon"]
    stopped: list[bool] = []

    def stop() -> None:
        os.kill(mon, signal.SIGSTOP)
        stopped.append(True)

    yield stop
    if stopped:
        os.kill(mon, signal.SIGCONT)
        wait_for(lambda: ceph_answers(ceph_cluster), 60, what="Ceph to answer again after SIGCONT")


def cluster_status(zookeeper: ZooKeeperServer, capsys: pytest.CaptureFixture[str], *options: str) -> str:
    """What `pvc cluster status` prints (the CLI in this process, with the suite's credentials)."""
    capsys.readouterr()
    assert cli_main.main(["--zookeeper", zookeeper.address, "cluster", "status", *options]) == 0
    return capsys.readouterr().out


def test_record_matches_ceph(
    zk: KazooClient,
    store: ZooKeeperStore,
    ceph_cluster: CephCluster,
    pool: str,
    zookeeper: ZooKeeperServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ceph = Ceph(conf=ceph_cluster.conf, keyring=ceph_cluster.keyring, client_id="admin", timeout=20)
    service = StorageStatus(store, ceph, 1.0, Supervisor("hv1"))
    service.start()
    try:
        found = wait_for(lambda: volumes_of(record(zk), pool) and record(zk), 60, what="a storage record")
        assert volumes_of(found, pool) == {"disk1": 64 * MiB, "disk2": 8 * MiB}
        status = ceph.status()
        assert found["cluster"]["osds"] == {"total": 1, "up": 1, "in": 1}
        assert found["cluster"]["fsid"] == status.fsid
        assert found["usage"]["total_bytes"] == ceph.usage().total_bytes
        assert [osd["name"] for osd in found["osds"]] == ["osd.0"]
        assert {entry["name"] for entry in found["pools"]} == {p.name for p in ceph.pools()}
        assert found["error"] is None and found["partial"] is None and found["took_s"] > 0
        # The operator sees the recorded figures in `pvc cluster status`.
        shown = json.loads(cluster_status(zookeeper, capsys, "--format", "json"))["storage"]
        assert shown["cluster"]["health"] == status.health.status and shown["cluster"]["fsid"] == status.fsid
        assert [osd["name"] for osd in shown["osds"]] == ["osd.0"]
        line = next(line for line in cluster_status(zookeeper, capsys).splitlines() if line.startswith("Storage:"))
        assert f"{status.health.status}" in line and "1/1 OSDs up and in" in line and "figures " in line
        # The next refresh sees a change made meanwhile.
        ceph.create_volume(pool, "disk3", "16M")
        found = wait_for(
            lambda: (volumes_of(record(zk), pool) or {}).get("disk3") == 16 * MiB, 30, what="disk3 in the record"
        )
        assert FAULT not in faults(zk)
    finally:
        service.stop()
        ceph.remove_volume(pool, "disk3")


def test_a_ceph_that_stops_answering_makes_the_record_stale_and_raises_the_fault(
    zk: KazooClient,
    store: ZooKeeperStore,
    ceph_cluster: CephCluster,
    pool: str,
    stopped_mon: Callable[[], None],
    zookeeper: ZooKeeperServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ceph = Ceph(conf=ceph_cluster.conf, keyring=ceph_cluster.keyring, client_id="admin", timeout=CEPH_TIMEOUT)
    service = StorageStatus(store, ceph, 1.0, Supervisor("hv1"))
    service.start()
    try:
        good = wait_for(lambda: volumes_of(record(zk), pool) and record(zk), 60, what="a first storage record")
        stopped_mon()
        # One refresh under way may still finish; the next fails after its first call's timeout.
        bound = 3 * CEPH_TIMEOUT + 1.0 + 10.0
        stale = wait_for(lambda: (r := record(zk)) is not None and not r["ok"] and r, bound, what="ok false")
        assert "no answer from Ceph within 2s" in stale["error"]
        assert stale["pools"] == good["pools"] and stale["refreshed_ms"] >= good["refreshed_ms"]
        assert stale["stale_since_ms"] >= stale["refreshed_ms"]
        fault = wait_for(lambda: faults(zk).get(FAULT), 10, what="the storage fault")
        assert fault["reason"] == f"Ceph figures not refreshed: {stale['error']}"
        shown = cluster_status(zookeeper, capsys)
        assert "Storage:" in shown and "STALE (" in shown and "no answer from Ceph within 2s" in shown
        os.kill(ceph_cluster.pids["mon"], signal.SIGCONT)
        wait_for(lambda: (r := record(zk)) is not None and r["ok"], 60, what="ok again after SIGCONT")
        wait_for(lambda: FAULT not in faults(zk), 10, what="the storage fault cleared")
    finally:
        service.stop()


def storage_config(tmp_path: Path, zookeeper: ZooKeeperServer, ceph_cluster: CephCluster) -> Path:
    """A one-node pvcd.yaml with storage on, pointing at the session's Ceph."""
    document = node_document(tmp_path, "hv1", zookeeper.port, zookeeper=zookeeper)
    pvc = document["pvc"]
    pvc["functions"]["enable_storage"] = True
    pvc["system"]["configuration"]["logging"]["log_keepalive_storage_details"] = True
    pvc["system"]["storage"] = {
        "ceph_config_file": str(ceph_cluster.conf),
        "ceph_keyring": str(ceph_cluster.keyring),
        "ceph_client_id": "admin",
        "ceph_timeout": CEPH_TIMEOUT,
    }
    path = layout.node_paths(tmp_path, "hv1").config
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def test_keepalives_keep_their_interval_while_ceph_does_not_answer(
    zk: KazooClient,
    zookeeper: ZooKeeperServer,
    ceph_cluster: CephCluster,
    pool: str,
    tmp_path: Path,
    daemon_process: Callable[[Path], DaemonProcess],
    stopped_mon: Callable[[], None],
) -> None:
    daemon = daemon_process(storage_config(tmp_path, zookeeper, ceph_cluster))
    wait_for(lambda: volumes_of(record(zk), pool), 60, what="the daemon's storage record")
    wait_for(lambda: "Storage: HEALTH_" in daemon.log(), 10, what="the storage line in the daemon's log")

    mtimes: list[int] = []
    lock = threading.Lock()

    def on_keepalive(data: bytes | None, stat: Any) -> None:
        if stat is not None:
            with lock:
                mtimes.append(stat.mtime)

    zk.DataWatch(schema.node_keepalive("hv1"), on_keepalive)
    wait_for(lambda: len(mtimes) >= 2, 10, what="keepalives")
    with lock:
        first = len(mtimes)
    stopped_mon()
    # Stay stopped for at least two failed refreshes (each waits out a call's timeout).
    stale = wait_for(lambda: (r := record(zk)) is not None and not r["ok"] and r, 30, what="ok false")
    wait_for(
        lambda: (r := record(zk)) is not None and not r["ok"] and r["tried_ms"] - stale["tried_ms"] >= 2000,
        30,
        what="a second failed refresh",
    )
    wait_for(lambda: "Storage: STALE (" in daemon.log(), 10, what="the stale storage line")
    os.kill(ceph_cluster.pids["mon"], signal.SIGCONT)
    with lock:
        during = list(mtimes[first - 1 :])
    wait_for(lambda: (r := record(zk)) is not None and r["ok"], 60, what="ok again after SIGCONT")

    assert len(during) >= 4, during
    gaps = [(later - earlier) / 1000 for earlier, later in zip(during, during[1:], strict=False)]
    assert max(gaps) <= 2.5, gaps  # two intervals of 1 s, and a little for a loaded machine
    assert daemon.process is not None and daemon.process.poll() is None
