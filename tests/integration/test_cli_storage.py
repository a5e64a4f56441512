"""`pvc storage ...` against the real one-node Ceph of the session (`ceph_cluster`).

The commands run in this process (`cli.main.main`), as the other CLI tests run
them. Every command is run in both formats; every refusal is checked for its
exit status, its one line on stderr, and, through the adapter, that Ceph was
not changed. JSON answers are checked for their exact keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import cli.main as cli_main
from ceph_helpers import LockHolder
from pvcd.devcluster.ceph import MEMSTORE_BYTES, CephCluster
from pvcd.storage import Ceph

MiB = 1 << 20
TIMEOUT = 20.0
"""Seconds for one Ceph command: generous, a shared build machine can be slow."""
POOL = "clivms"
OTHER_POOL = "clicopies"

STATUS_KEYS = {"fsid", "health", "checks", "osds", "mgr_available", "pgs", "bytes"}
OSD_KEYS = {
    "id",
    "name",
    "up",
    "in",
    "crush_weight",
    "reweight",
    "total_bytes",
    "used_bytes",
    "avail_bytes",
    "utilization",
    "pgs",
}
POOL_KEYS = {
    "name",
    "id",
    "size",
    "pgs",
    "applications",
    "stored_bytes",
    "used_bytes",
    "objects",
    "percent_used",
    "max_avail_bytes",
}
VOLUME_KEYS = {"pool", "name", "size_bytes", "used_bytes", "format", "parent"}
SNAPSHOT_KEYS = {"pool", "volume", "name", "id", "size_bytes", "protected", "timestamp"}

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture(scope="module")
def ceph(ceph_cluster: CephCluster) -> Ceph:
    return Ceph(conf=ceph_cluster.conf, keyring=ceph_cluster.keyring, client_id="admin", timeout=TIMEOUT)


@pytest.fixture(scope="module")
def pools(ceph: Ceph) -> tuple[str, str]:
    """Two RBD pools for the volume and snapshot tests (made by the adapter; `pool add` is tested itself)."""
    ceph.create_pool(POOL, pgs=8, size=1)
    ceph.create_pool(OTHER_POOL, pgs=4, size=1)
    return POOL, OTHER_POOL


@pytest.fixture
def pvc(ceph_cluster: CephCluster, capsys: pytest.CaptureFixture[str]) -> Run:
    """`pvc storage --ceph-conf ... ARGS` in this process: (exit status, stdout, stderr)."""

    def run(*args: str, conf: Path | None = None, timeout: float = TIMEOUT) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli_main.main(
            [
                "storage",
                "--ceph-conf",
                str(conf or ceph_cluster.conf),
                "--ceph-keyring",
                str(ceph_cluster.keyring),
                "--ceph-id",
                "admin",
                "--ceph-timeout",
                str(timeout),
                *args,
            ]
        )
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def run_json(pvc: Run, *args: str) -> Any:
    code, out, err = pvc(*args, "--format", "json")
    assert code == 0, err
    return json.loads(out)


def refused(pvc: Run, *args: str, **options: Any) -> str:
    """Run a command that must be refused: its one line on stderr, without `pvc: `."""
    code, out, err = pvc(*args, **options)
    assert (code, out) == (1, ""), err
    assert err.startswith("pvc: ") and err.endswith("\n") and err.count("\n") == 1, err
    return err[len("pvc: ") : -1]


def state(ceph: Ceph) -> dict[str, Any]:
    """What a refused command must leave as it was: pools, and every volume of ours with its snapshots."""
    found: dict[str, Any] = {"pools": sorted((p.name, p.size, p.pg_num) for p in ceph.pools())}
    for pool in (POOL, OTHER_POOL):
        if pool in [name for name, _, _ in found["pools"]]:
            for volume in ceph.volumes(pool):
                snapshots = [(s.name, s.protected) for s in ceph.snapshots(pool, volume.name)]
                found[f"{pool}/{volume.name}"] = (volume.size_bytes, volume.parent, snapshots)
    return found


def digest(ceph: Ceph, spec: str, directory: Path) -> str:
    target = directory / f"export-{time.monotonic_ns()}"
    ceph.run("rbd", ["export", "--no-progress", spec, str(target)])
    return hashlib.sha256(target.read_bytes()).hexdigest()


def write_data(ceph: Ceph, spec: str) -> None:
    ceph.run("rbd", ["bench", "--io-type", "write", "--io-size", "1M", "--io-total", "2M", spec])


# -- status and OSDs ----------------------------------------------------------------


def test_status_and_osd_list(pvc: Run) -> None:
    status = run_json(pvc, "status")
    assert set(status) == STATUS_KEYS
    assert status["health"] in ("HEALTH_OK", "HEALTH_WARN")
    assert status["osds"] == {"total": 1, "up": 1, "in": 1}
    assert status["mgr_available"] is True
    assert set(status["bytes"]) == {"total", "used", "avail"} and status["bytes"]["total"] == MEMSTORE_BYTES
    assert all(set(check) == {"code", "severity", "summary"} for check in status["checks"])
    code, out, err = pvc("status")
    assert code == 0, err
    assert "Health:" in out and "OSDs:             1 (1 up, 1 in)" in out and "Manager:          available" in out

    (osd,) = run_json(pvc, "osd", "list")
    assert set(osd) == OSD_KEYS
    assert (osd["id"], osd["name"], osd["up"], osd["in"], osd["total_bytes"]) == (
        0,
        "osd.0",
        True,
        True,
        MEMSTORE_BYTES,
    )
    code, out, err = pvc("osd", "list")
    assert code == 0, err
    assert out.splitlines()[0].split()[:4] == ["ID", "NAME", "STATUS", "IN"]
    assert out.splitlines()[1].split()[:4] == ["0", "osd.0", "up", "in"]


# -- pools --------------------------------------------------------------------------


def test_pool_add_list_remove(pvc: Run, ceph: Ceph) -> None:
    added = run_json(pvc, "pool", "add", "cliscratch", "--pgs", "4", "--size", "1")
    assert set(added) == POOL_KEYS
    assert (added["name"], added["pgs"], added["size"], added["applications"]) == ("cliscratch", 4, 1, ["rbd"])
    assert ceph.pool("cliscratch").pg_num == 4

    listed = run_json(pvc, "pool", "list")
    assert all(set(pool) == POOL_KEYS for pool in listed)
    assert "cliscratch" in [pool["name"] for pool in listed]
    code, out, err = pvc("pool", "list")
    assert code == 0, err
    assert out.splitlines()[0].split()[:4] == ["NAME", "ID", "SIZE", "PGS"]
    assert any(line.split()[0] == "cliscratch" for line in out.splitlines()[1:])

    ceph.create_volume("cliscratch", "inside", "4M")
    before = state(ceph)
    assert refused(pvc, "pool", "add", "cliscratch", "--pgs", "4", "--size", "1") == (
        "pool 'cliscratch' already exists"
    )
    assert refused(pvc, "pool", "add", "bad/name", "--pgs", "4").startswith("invalid pool name 'bad/name': ")
    code, _, err = pvc("pool", "add", "zero", "--pgs", "0")
    assert code == 2 and "--pgs" in err
    assert refused(pvc, "pool", "remove", "cliscratch") == (
        "removing pool cliscratch destroys its 1 volume(s) and all their data: add --yes"
    )
    assert refused(pvc, "pool", "remove", "nosuchpool", "--yes") == (
        "no pool 'nosuchpool' (see 'pvc storage pool list')"
    )
    assert state(ceph) == before

    assert run_json(pvc, "pool", "remove", "cliscratch", "--yes") == {"removed": "cliscratch", "volumes": 1}
    assert "cliscratch" not in [pool.name for pool in ceph.pools()]

    code, out, err = pvc("pool", "add", "cliscratch2", "--pgs", "2", "--size", "1")
    assert (code, out, err) == (0, "Added pool cliscratch2 (2 placement groups, 1 copies)\n", "")
    code, out, err = pvc("pool", "remove", "cliscratch2", "--yes")
    assert (code, out, err) == (0, "Removed pool cliscratch2 (0 volumes)\n", "")


# -- volumes ------------------------------------------------------------------------


def test_volume_add_resize_rename_remove_list(pvc: Run, ceph: Ceph, pools: tuple[str, str]) -> None:
    pool, other = pools
    added = run_json(pvc, "volume", "add", pool, "disk1", "64M")
    assert added == {
        "pool": pool,
        "name": "disk1",
        "size_bytes": 64 * MiB,
        "used_bytes": 0,
        "format": 2,
        "parent": None,
    }
    code, out, err = pvc("volume", "add", other, "disk9", "1G")
    assert (code, out, err) == (0, f"Added volume {other}/disk9 (1.0 GiB)\n", "")
    assert ceph.volume_info(other, "disk9").size_bytes == 1 << 30

    listed = run_json(pvc, "volume", "list", pool)
    assert all(set(volume) == VOLUME_KEYS for volume in listed)
    assert [v["name"] for v in listed if v["name"] == "disk1"] == ["disk1"]
    everywhere = run_json(pvc, "volume", "list")
    assert {(pool, "disk1"), (other, "disk9")} <= {(v["pool"], v["name"]) for v in everywhere}
    code, out, err = pvc("volume", "list", pool)
    assert code == 0, err
    assert out.splitlines()[0].split() == ["POOL", "NAME", "SIZE", "USED", "PARENT"]
    assert [pool, "disk1", "64.0", "MiB", "0", "B", "-"] in [line.split() for line in out.splitlines()]

    resized = run_json(pvc, "volume", "resize", pool, "disk1", "128M")
    assert resized["size_bytes"] == 128 * MiB == ceph.volume_info(pool, "disk1").size_bytes

    before = state(ceph)
    assert refused(pvc, "volume", "resize", pool, "disk1", "32M") == (
        f"refusing to shrink {pool}/disk1 from 134217728 to 33554432 bytes without allow_shrink (--force)"
    )
    assert refused(pvc, "volume", "add", pool, "disk1", "1M").startswith(f"rbd create {pool}/disk1: ")
    assert refused(pvc, "volume", "add", "nosuchpool", "disk2", "1M") == (
        "no pool 'nosuchpool' (see 'pvc storage pool list')"
    )
    assert refused(pvc, "volume", "add", pool, "a@b", "1M").startswith("invalid volume name 'a@b': ")
    assert refused(pvc, "volume", "add", "p/q", "disk2", "1M").startswith("invalid pool name 'p/q': ")
    assert refused(pvc, "volume", "add", pool, "disk2", "0") == "invalid size '0': a volume must be larger than 0 bytes"
    assert refused(pvc, "volume", "add", pool, "disk2", "ten").startswith("invalid size 'ten': ")
    assert refused(pvc, "volume", "resize", pool, "nosuch", "1G") == (
        f"no volume 'nosuch' in pool '{pool}' (see 'pvc storage volume list {pool}')"
    )
    assert pvc("volume", "resize", pool, "disk1", "-5M")[0] == 2
    assert refused(pvc, "volume", "rename", pool, "nosuch", "x").startswith("no volume 'nosuch' in pool")
    assert refused(pvc, "volume", "rename", pool, "disk1", "bad name").startswith("invalid volume name 'bad name'")
    ceph.create_volume(pool, "taken", "1M")
    before = state(ceph)
    assert refused(pvc, "volume", "rename", pool, "disk1", "taken") == f"volume {pool}/taken already exists"
    assert refused(pvc, "volume", "remove", pool, "nosuch").startswith("no volume 'nosuch' in pool")
    assert refused(pvc, "volume", "list", "nosuchpool") == "no pool 'nosuchpool' (see 'pvc storage pool list')"
    assert state(ceph) == before

    shrunk = run_json(pvc, "volume", "resize", pool, "disk1", "32M", "--force")
    assert shrunk["size_bytes"] == 32 * MiB == ceph.volume_info(pool, "disk1").size_bytes
    code, out, err = pvc("volume", "resize", pool, "disk1", "48M")
    assert (code, out, err) == (0, f"Resized volume {pool}/disk1 to 48.0 MiB\n", "")

    renamed = run_json(pvc, "volume", "rename", pool, "disk1", "disk2")
    assert (renamed["name"], renamed["size_bytes"]) == ("disk2", 48 * MiB)
    names = [v.name for v in ceph.volumes(pool)]
    assert "disk2" in names and "disk1" not in names
    code, out, err = pvc("volume", "rename", pool, "disk2", "disk3")
    assert (code, out, err) == (0, f"Renamed volume {pool}/disk2 to {pool}/disk3\n", "")

    assert run_json(pvc, "volume", "remove", pool, "disk3") == {"pool": pool, "removed": "disk3"}
    code, out, err = pvc("volume", "remove", pool, "taken")
    assert (code, out, err) == (0, f"Removed volume {pool}/taken\n", "")
    code, out, err = pvc("volume", "remove", other, "disk9")
    assert code == 0, err
    names = [v.name for v in ceph.volumes(pool)] + [v.name for v in ceph.volumes(other)]
    assert not {"disk3", "taken", "disk9"} & set(names)
    code, out, err = pvc("volume", "list", other)
    assert (code, out, err) == (0, f"No volumes in pool {other}.\n", "")


# -- snapshots and clones -----------------------------------------------------------


def test_snapshots_and_clones(pvc: Run, ceph: Ceph, pools: tuple[str, str], tmp_path: Path) -> None:
    pool, other = pools
    original = tmp_path / "original"
    original.write_bytes(os.urandom(2 * MiB))
    ceph.run("rbd", ["import", "--no-progress", str(original), f"{pool}/base"])
    checksum = hashlib.sha256(original.read_bytes()).hexdigest()

    snapshot = run_json(pvc, "snapshot", "add", pool, "base", "s1")
    assert set(snapshot) == SNAPSHOT_KEYS
    assert (snapshot["pool"], snapshot["volume"], snapshot["name"], snapshot["size_bytes"]) == (
        pool,
        "base",
        "s1",
        2 * MiB,
    )
    assert snapshot["protected"] is False
    code, out, err = pvc("snapshot", "add", pool, "base", "s2")
    assert (code, out, err) == (0, f"Took snapshot {pool}/base@s2\n", "")
    listed = run_json(pvc, "snapshot", "list", pool, "base")
    assert [s["name"] for s in listed] == ["s1", "s2"] and all(set(s) == SNAPSHOT_KEYS for s in listed)
    code, out, err = pvc("snapshot", "list", pool, "base")
    assert code == 0, err
    assert out.splitlines()[0].split() == ["NAME", "ID", "SIZE", "PROTECTED", "TAKEN"]

    write_data(ceph, f"{pool}/base")
    assert digest(ceph, f"{pool}/base", tmp_path) != checksum
    assert run_json(pvc, "snapshot", "rollback", pool, "base", "s1") == {
        "pool": pool,
        "volume": "base",
        "rolled_back_to": "s1",
    }
    assert digest(ceph, f"{pool}/base", tmp_path) == checksum
    code, out, err = pvc("snapshot", "rollback", pool, "base", "s2")
    assert (code, out, err) == (0, f"Rolled back {pool}/base to snapshot s2\n", "")

    clone = run_json(pvc, "volume", "clone", pool, "base", "s1", "linked")
    assert set(clone) == VOLUME_KEYS
    assert (clone["pool"], clone["name"], clone["parent"]) == (
        pool,
        "linked",
        {"pool": pool, "volume": "base", "snapshot": "s1"},
    )
    code, out, err = pvc("volume", "clone", pool, "base", "s1", "elsewhere", "--pool", other, "--flatten")
    assert (code, out, err) == (0, f"Cloned {pool}/base@s1 as {other}/elsewhere\n", "")
    assert ceph.volume_info(other, "elsewhere").parent is None
    assert digest(ceph, f"{other}/elsewhere", tmp_path) == checksum
    code, out, err = pvc("volume", "list", pool)
    assert f"{pool}  linked" in out and f"{pool}/base@s1" in out

    before = state(ceph)
    assert refused(pvc, "snapshot", "remove", pool, "base", "s1").startswith(f"rbd snap unprotect {pool}/base@s1: ")
    assert refused(pvc, "snapshot", "add", pool, "base", "s1") == f"snapshot {pool}/base@s1 already exists"
    assert refused(pvc, "snapshot", "add", pool, "base", "bad@name").startswith("invalid snapshot name 'bad@name'")
    assert refused(pvc, "snapshot", "add", pool, "nosuch", "s1").startswith("no volume 'nosuch' in pool")
    assert refused(pvc, "snapshot", "rollback", pool, "base", "s9") == f"no snapshot 's9' of volume {pool}/base"
    assert refused(pvc, "snapshot", "remove", pool, "base", "s9") == f"no snapshot 's9' of volume {pool}/base"
    assert (
        refused(pvc, "snapshot", "list", "nosuchpool", "base") == "no pool 'nosuchpool' (see 'pvc storage pool list')"
    )
    assert refused(pvc, "volume", "clone", pool, "base", "s9", "c2") == f"no snapshot 's9' of volume {pool}/base"
    assert refused(pvc, "volume", "clone", pool, "base", "s1", "linked") == f"volume {pool}/linked already exists"
    assert refused(pvc, "volume", "clone", pool, "base", "s1", "c2", "--pool", "nosuchpool") == (
        "no pool 'nosuchpool' (see 'pvc storage pool list')"
    )
    assert state(ceph) == before

    assert run_json(pvc, "volume", "remove", pool, "linked") == {"pool": pool, "removed": "linked"}
    assert run_json(pvc, "snapshot", "remove", pool, "base", "s1") == {"pool": pool, "volume": "base", "removed": "s1"}
    code, out, err = pvc("snapshot", "remove", pool, "base", "s2")
    assert (code, out, err) == (0, f"Removed snapshot {pool}/base@s2\n", "")
    assert ceph.snapshots(pool, "base") == ()
    code, out, err = pvc("snapshot", "list", pool, "base")
    assert (code, out, err) == (0, f"No snapshots of {pool}/base.\n", "")
    for spec in ((pool, "base"), (other, "elsewhere")):
        assert pvc("volume", "remove", *spec)[0] == 0


# -- a volume in use ----------------------------------------------------------------


@pytest.fixture
def holder(ceph_cluster: CephCluster, ceph: Ceph, pools: tuple[str, str]) -> Iterator[LockHolder]:
    ceph.create_volume(POOL, "busy", "8M")
    ceph.create_snapshot(POOL, "busy", "before")
    started = LockHolder(ceph_cluster, POOL, "busy")
    if not started.ready.get("ready"):
        started.stop()
        pytest.fail(f"the lock holder did not start: {started.ready}")
    yield started
    started.stop()


def test_a_volume_in_use_is_not_removed_or_rolled_back(pvc: Run, ceph: Ceph, holder: LockHolder) -> None:
    (watcher,) = ceph.watchers(POOL, "busy")
    before = state(ceph)
    assert refused(pvc, "volume", "remove", POOL, "busy") == (
        f"cannot remove {POOL}/busy: it is in use by 1 client(s): {watcher.address}"
    )
    assert refused(pvc, "snapshot", "rollback", POOL, "busy", "before") == (
        f"cannot roll back {POOL}/busy: it is in use by 1 client(s): {watcher.address}"
    )
    assert state(ceph) == before
    assert ceph.locks(POOL, "busy")


# -- Ceph not answering, and where the client identity comes from -------------------


def test_a_ceph_that_does_not_answer_is_one_line_within_the_timeout(
    pvc: Run, ceph: Ceph, ceph_cluster: CephCluster, pools: tuple[str, str], tmp_path: Path
) -> None:
    """A ceph.conf whose mon address nothing listens on: every command gives up after --ceph-timeout."""
    dead = tmp_path / "ceph.conf"
    text = ceph_cluster.conf.read_text()
    assert ceph_cluster.mon_address in text
    from pvcd.devcluster.processes import free_port

    dead.write_text(text.replace(ceph_cluster.mon_address, f"127.0.0.1:{free_port()}"))
    ceph.create_volume(POOL, "quiet", "4M")
    before = state(ceph)
    for args in (
        ("status",),
        ("osd", "list"),
        ("pool", "list"),
        ("pool", "add", "never", "--pgs", "1", "--size", "1"),
        ("pool", "remove", POOL, "--yes"),
        ("volume", "list"),
        ("volume", "add", POOL, "never", "1M"),
        ("volume", "remove", POOL, "quiet"),
        ("snapshot", "add", POOL, "quiet", "never"),
    ):
        started = time.monotonic()
        line = refused(pvc, *args, conf=dead, timeout=1)
        assert "no answer from Ceph within 1s" in line, line
        assert time.monotonic() - started < 4, args
    assert state(ceph) == before
    ceph.remove_volume(POOL, "quiet")


def test_client_identity_from_the_environment(
    ceph_cluster: CephCluster, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PVC_CEPH_CONF", str(ceph_cluster.conf))
    monkeypatch.setenv("PVC_CEPH_KEYRING", str(ceph_cluster.keyring))
    monkeypatch.setenv("PVC_CEPH_ID", "admin")
    monkeypatch.setenv("PVC_CEPH_TIMEOUT", str(TIMEOUT))
    capsys.readouterr()
    assert cli_main.main(["storage", "status", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["osds"]["total"] == 1

    monkeypatch.setenv("PVC_CEPH_CONF", str(tmp_path / "missing.conf"))
    assert cli_main.main(["storage", "status"]) == 1
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == (
        "",
        f"pvc: no readable Ceph configuration at {tmp_path / 'missing.conf'}: use --ceph-conf or PVC_CEPH_CONF\n",
    )
    monkeypatch.setenv("PVC_CEPH_CONF", str(ceph_cluster.conf))
    monkeypatch.setenv("PVC_CEPH_KEYRING", str(tmp_path / "missing.keyring"))
    assert cli_main.main(["storage", "status"]) == 1
    assert capsys.readouterr().err.startswith("pvc: no readable Ceph keyring at ")
    monkeypatch.setenv("PVC_CEPH_KEYRING", str(ceph_cluster.keyring))
    monkeypatch.setenv("PVC_CEPH_ID", "bad id")
    assert cli_main.main(["storage", "status"]) == 2
    assert "'bad id' is not a Ceph client id" in capsys.readouterr().err
    monkeypatch.setenv("PVC_CEPH_ID", "admin")
    monkeypatch.setenv("PVC_CEPH_TIMEOUT", "nan")
    assert cli_main.main(["storage", "status"]) == 2
    assert "--ceph-timeout" in capsys.readouterr().err
