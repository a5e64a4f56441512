"""A VM's RBD volumes and their locks: `pvc vm info` and `pvc vm flush-locks` against a real
ZooKeeper and the session's one-node Ceph (`ceph_cluster`).

The VM is only defined, never started (nodes are registered in ZooKeeper, no daemon runs):
its status is set through the store, as a node would set it. The "stale lock" is held by
tests/ceph_lock_holder.py, a separate Ceph client process.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cli.main as cli_main
from ceph_helpers import LockHolder
from pvcd.cluster.values import StateRecord
from pvcd.cluster.vm_records import ActualState, VmState, VmStatus
from pvcd.devcluster.ceph import CephCluster
from pvcd.storage import Ceph
from pvcd.zk import nodes, schema, vms
from pvcd.zk.store import Store

TIMEOUT = 20.0
POOL = "vmdisks"
READY = StateRecord("run", "secondary", "ready")


@pytest.fixture(scope="module")
def ceph(ceph_cluster: CephCluster) -> Ceph:
    client = Ceph(conf=ceph_cluster.conf, keyring=ceph_cluster.keyring, client_id="admin", timeout=TIMEOUT)
    if POOL not in [pool.name for pool in client.pools()]:
        client.create_pool(POOL, pgs=8, size=1)
    return client


@pytest.fixture
def store(zk: Any, zookeeper: Any) -> Iterator[Store]:
    store = Store(zookeeper.address, security=zookeeper.security())
    store.start()
    versions = nodes.register(store, "hv1", {"target_selector": "mem"}, READY)
    keepalive = {
        "counter": 1,
        "interval": 3600,
        "memory": {"total": 65536, "used": 0, "free": 65536, "allocated": 0},
        "vcpus": {"allocated": 0},
        "load": 0.0,
        "vms": {"count": 0, "running": []},
    }
    nodes.send_keepalive(store, "hv1", versions, READY, keepalive, 10)
    yield store
    store.stop()


@pytest.fixture
def pvc(zookeeper: Any, capsys: pytest.CaptureFixture[str]) -> Any:
    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli_main.main(["--zookeeper", zookeeper.address, *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def ceph_args(cluster: CephCluster) -> list[str]:
    return ["--ceph-conf", str(cluster.conf), "--ceph-keyring", str(cluster.keyring), "--ceph-id", "admin"]


def domain(name: str, *rbd_names: str) -> str:
    disks = "".join(
        f"<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
        f"<source protocol='rbd' name='{rbd_name}'><host name='127.0.0.1'/></source>"
        f"<target dev='vd{chr(ord('a') + i)}' bus='virtio'/></disk>"
        for i, rbd_name in enumerate(rbd_names)
    )
    return (
        f"<domain type='test'><name>{name}</name><uuid>{uuid.uuid4()}</uuid><memory unit='MiB'>256</memory>"
        f"<vcpu>1</vcpu><os><type>hvm</type></os><devices>{disks}</devices></domain>"
    )


def define(pvc: Any, tmp_path: Path, name: str, *rbd_names: str) -> dict[str, Any]:
    path = tmp_path / f"{name}.xml"
    path.write_text(domain(name, *rbd_names))
    code, out, err = pvc("vm", "define", str(path), "--node", "hv1", "--format", "json")
    assert code == 0, err
    defined: dict[str, Any] = json.loads(out)
    return defined


def set_status(store: Store, name: str, state: ActualState) -> None:
    view = vms.read_vm(store, name)
    assert view is not None
    vms.VmWrite(store, view).status(VmStatus(node="hv1", state=state)).commit()


def tree(zk: Any, path: str) -> dict[str, bytes]:
    if not zk.exists(path):
        return {}
    found = {path: zk.get(path)[0]}
    for child in zk.get_children(path):
        found.update(tree(zk, f"{path}/{child}"))
    return found


def test_info_shows_the_lock_and_flush_locks_breaks_it_only_while_stopped(
    ceph: Ceph, ceph_cluster: CephCluster, store: Store, pvc: Any, zk: Any, tmp_path: Path, holders: list[LockHolder]
) -> None:
    ceph.create_volume(POOL, "web1-root", "16M")
    defined = define(pvc, tmp_path, "web1", f"{POOL}/web1-root", f"{POOL}/web1-root@gold")
    assert defined["volumes"] == [{"pool": POOL, "volume": "web1-root", "locks": None, "locks_error": None}]
    holder = LockHolder(ceph_cluster, POOL, "web1-root")
    holders.append(holder)
    assert holder.ready.get("ready"), holder.ready
    (lock,) = ceph.locks(POOL, "web1-root")

    code, out, err = pvc("vm", "info", "web1", *ceph_args(ceph_cluster), "--format", "json")
    assert code == 0, err
    lock_json = {"locker": lock.locker, "cookie": lock.cookie, "address": lock.address}
    assert json.loads(out)["volumes"] == [
        {"pool": POOL, "volume": "web1-root", "locks": [lock_json], "locks_error": None}
    ]
    code, out, err = pvc("vm", "info", "web1", *ceph_args(ceph_cluster))
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert any(line.split() == ["RBD", "volumes:", f"{POOL}/web1-root"] for line in lines), out
    assert any(line.split() == ["Locks", f"{POOL}/web1-root:", lock.locker, "at", lock.address] for line in lines), out

    # Refused while its node says it runs (or starts, stops, migrates): nothing changed anywhere.
    for state in (ActualState.RUNNING, ActualState.STARTING, ActualState.MIGRATING, ActualState.STOPPING):
        set_status(store, "web1", state)
        code, out, err = pvc("vm", "flush-locks", "web1", *ceph_args(ceph_cluster))
        assert (code, out) == (1, "")
        assert err == (
            f"pvc: VM web1 is stop ({state} on hv1); its locks may be live: stop it first: pvc vm stop web1\n"
        )
        assert ceph.locks(POOL, "web1-root") == (lock,)
    set_status(store, "web1", ActualState.STOPPED)
    before = tree(zk, schema.VMS)

    code, out, err = pvc("vm", "flush-locks", "web1", *ceph_args(ceph_cluster))
    assert code == 0, err
    assert out == f"VM web1: broke 1 lock(s): {POOL}/web1-root held by {lock.locker} at {lock.address}\n"
    assert ceph.locks(POOL, "web1-root") == ()
    assert tree(zk, schema.VMS) == before, "flush-locks writes nothing to ZooKeeper"
    code, out, err = pvc("vm", "info", "web1", *ceph_args(ceph_cluster), "--format", "json")
    assert code == 0 and json.loads(out)["volumes"][0]["locks"] == []

    code, out, err = pvc("vm", "flush-locks", "web1", *ceph_args(ceph_cluster), "--format", "json")
    assert code == 0, err
    assert json.loads(out) == {"vm": "web1", "volumes": [f"{POOL}/web1-root"], "broken": []}
    code, out, _ = pvc("vm", "flush-locks", "web1", *ceph_args(ceph_cluster))
    assert (code, out) == (0, f"VM web1: no locks held on {POOL}/web1-root\n")


def test_a_vm_that_should_run_is_refused_too(
    ceph: Ceph, ceph_cluster: CephCluster, store: Store, pvc: Any, tmp_path: Path
) -> None:
    """Desired state start with the status still stopped: its node may start it any moment."""
    ceph.create_volume(POOL, "app1-root", "16M")
    define(pvc, tmp_path, "app1", f"{POOL}/app1-root")
    view = vms.read_vm(store, "app1")
    assert view is not None

    vms.VmWrite(store, view).record(dataclasses.replace(view.record, state=VmState.START)).commit()
    code, out, err = pvc("vm", "flush-locks", "app1", *ceph_args(ceph_cluster))
    assert (code, out) == (1, "")
    assert err.startswith("pvc: VM app1 is start (stopped); its locks may be live") and err.count("\n") == 1


def test_a_vm_without_rbd_disks(ceph_cluster: CephCluster, store: Store, pvc: Any, tmp_path: Path) -> None:
    define(pvc, tmp_path, "plain")
    code, out, err = pvc("vm", "flush-locks", "plain", *ceph_args(ceph_cluster))
    assert (code, out, err) == (1, "", "pvc: VM plain has no RBD volumes: no locks to flush\n")
    # No volumes, nothing to ask Ceph: its options do not matter.
    code, out, err = pvc("vm", "info", "plain", "--ceph-conf", "/nonexistent/ceph.conf", "--format", "json")
    assert code == 0 and json.loads(out)["volumes"] == [], err
    code, out, err = pvc("vm", "info", "plain", "--ceph-conf", "/nonexistent/ceph.conf")
    assert code == 0 and err == "" and "Locks" not in out
    assert any(line.split() == ["RBD", "volumes:", "none"] for line in out.splitlines()), out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_info_when_ceph_is_unreachable(
    ceph: Ceph, ceph_cluster: CephCluster, store: Store, pvc: Any, tmp_path: Path
) -> None:
    ceph.create_volume(POOL, "db1-root", "16M")
    define(pvc, tmp_path, "db1", f"{POOL}/db1-root", f"{POOL}/db1-data")

    # No configuration file at all.
    code, out, err = pvc("vm", "info", "db1", "--ceph-conf", str(tmp_path / "missing.conf"), "--format", "json")
    assert code == 0, err
    volumes = json.loads(out)["volumes"]
    assert [(v["volume"], v["locks"]) for v in volumes] == [("db1-root", None), ("db1-data", None)]
    assert all("unable to open config file" in v["locks_error"] for v in volumes)

    # A monitor that is not there: one timeout, not one per volume, and one line.
    silent = tmp_path / "silent.conf"
    silent.write_text(ceph_cluster.conf.read_text().replace(ceph_cluster.mon_address, f"127.0.0.1:{free_port()}"))
    args = ["--ceph-conf", str(silent), "--ceph-keyring", str(ceph_cluster.keyring), "--ceph-timeout", "1"]
    code, out, err = pvc("vm", "info", "db1", *args)
    assert code == 0 and err == "", err
    locks = [line for line in out.splitlines() if line.startswith("Locks")]
    assert len(locks) == 1 and "unknown: Ceph: rbd lock ls vmdisks/db1-root: no answer from Ceph" in locks[0], out
    assert any(line.split()[:2] == ["Name:", "db1"] for line in out.splitlines())

    # flush-locks needs Ceph: one line, nothing broken.
    code, out, err = pvc("vm", "flush-locks", "db1", *args)
    assert (
        (code, out) == (1, "") and err.startswith("pvc: VM db1: nothing broken: rbd lock ls") and err.count("\n") == 1
    )
