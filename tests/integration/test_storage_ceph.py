"""pvcd.storage against a real one-node Ceph (session fixture `ceph_cluster`): every operation,
a "dead node" client cut off by the blocklist and its lock broken, and a Ceph that stops
answering making calls fail within their timeout."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import time
from pathlib import Path

import pytest

from ceph_helpers import DEBIAN_PYTHON, LockHolder
from helpers import wait_for
from pvcd.devcluster.ceph import MEMSTORE_BYTES, CephCluster
from pvcd.storage import Ceph, CephError
from pvcd.storage.values import Parent

MiB = 1 << 20
TIMEOUT = 20.0
"""Seconds for one call in these tests: generous, a shared build machine can be slow."""
POOL = "vms"


@pytest.fixture(scope="module")
def ceph(ceph_cluster: CephCluster) -> Ceph:
    return Ceph(conf=ceph_cluster.conf, keyring=ceph_cluster.keyring, client_id="admin", timeout=TIMEOUT)


@pytest.fixture(scope="module")
def pool(ceph: Ceph) -> str:
    """One RBD pool for the volume tests; it goes with the session's cluster."""
    ceph.create_pool(POOL, pgs=8, size=1)
    return POOL


def rbd(ceph: Ceph, *args: str) -> str:
    """A raw `rbd` command, for what the tests do as a VM would (write data, import, export)."""
    return ceph.run("rbd", list(args), timeout=TIMEOUT)


def digest(ceph: Ceph, spec: str, directory: Path) -> str:
    target = directory / f"export-{time.monotonic_ns()}"
    rbd(ceph, "export", "--no-progress", spec, str(target))
    return hashlib.sha256(target.read_bytes()).hexdigest()


def test_cluster_health_usage_and_osds(ceph: Ceph) -> None:
    status = ceph.status()
    assert status.health.status in ("HEALTH_OK", "HEALTH_WARN") and not status.health.errors
    assert (status.osds, status.osds_up, status.osds_in, status.mgr_available) == (1, 1, 1, True)
    usage = ceph.usage()
    assert usage.total_bytes == MEMSTORE_BYTES
    assert 0 < usage.avail_bytes <= usage.total_bytes
    (osd,) = ceph.osds()
    assert (osd.id, osd.name, osd.up, osd.in_) == (0, "osd.0", True, True)
    assert osd.total_bytes == MEMSTORE_BYTES


def test_pools_create_list_remove(ceph: Ceph) -> None:
    ceph.create_pool("scratch", pgs=4, size=1)
    pool = ceph.pool("scratch")
    assert (pool.size, pool.pg_num, pool.applications) == (1, 4, ("rbd",))
    with pytest.raises(CephError, match="^pool 'scratch' already exists$"):
        ceph.create_pool("scratch", pgs=4, size=1)
    with pytest.raises(CephError, match="^invalid pool name 'bad/name'"):
        ceph.create_pool("bad/name", pgs=4, size=1)
    with pytest.raises(CephError, match="^invalid placement group count 0"):
        ceph.create_pool("other", pgs=0, size=1)
    ceph.create_volume("scratch", "data", "8M")
    rbd(ceph, "bench", "--io-type", "write", "--io-size", "1M", "--io-total", "4M", "scratch/data")
    used = wait_for(
        lambda: (pool := ceph.pool("scratch")).stored_bytes >= MiB and pool, 20, what="ceph df to count the data"
    )
    assert used.objects > 1 and used.used_bytes >= MiB and used.percent_used > 0
    ceph.remove_pool("scratch")
    assert "scratch" not in [pool.name for pool in ceph.pools()]
    with pytest.raises(CephError, match="^no pool 'scratch'$"):
        ceph.remove_pool("scratch")


def test_volumes_create_resize_rename_remove(ceph: Ceph, pool: str) -> None:
    ceph.create_volume(pool, "disk1", "64M")
    (volume,) = [v for v in ceph.volumes(pool) if v.name == "disk1"]
    assert (volume.size_bytes, volume.used_bytes, volume.parent) == (64 * MiB, 0, None)
    rbd(ceph, "bench", "--io-type", "write", "--io-size", "1M", "--io-total", "2M", f"{pool}/disk1")
    assert next(v for v in ceph.volumes(pool) if v.name == "disk1").used_bytes >= 2 * MiB

    ceph.resize_volume(pool, "disk1", "128M")
    assert ceph.volume_info(pool, "disk1").size_bytes == 128 * MiB
    with pytest.raises(CephError, match="^refusing to shrink vms/disk1 from 134217728 to 33554432 bytes"):
        ceph.resize_volume(pool, "disk1", "32M")
    assert ceph.volume_info(pool, "disk1").size_bytes == 128 * MiB
    ceph.resize_volume(pool, "disk1", 32 * MiB, allow_shrink=True)
    assert ceph.volume_info(pool, "disk1").size_bytes == 32 * MiB

    ceph.rename_volume(pool, "disk1", "disk2")
    names = [v.name for v in ceph.volumes(pool)]
    assert "disk2" in names and "disk1" not in names

    # rbd's own error line and librbd's log line can interleave on stderr: either names the cause.
    # When librbd's line cuts rbd's in two, the part before the cut is what is left of rbd's own words.
    with pytest.raises(CephError, match=r"^rbd create vms/disk2: .*(File exists|already exists)"):
        ceph.create_volume(pool, "disk2", "1M")
    with pytest.raises(CephError, match="^invalid volume name 'a@b'"):
        ceph.create_volume(pool, "a@b", "1M")
    with pytest.raises(CephError, match="^invalid size '0'"):
        ceph.create_volume(pool, "zero", "0")
    with pytest.raises(CephError, match="^invalid size 'ten'"):
        ceph.create_volume(pool, "ten", "ten")

    ceph.remove_volume(pool, "disk2")
    assert "disk2" not in [v.name for v in ceph.volumes(pool)]
    with pytest.raises(CephError, match="^rbd info vms/disk2: .*No such file or directory"):
        ceph.remove_volume(pool, "disk2")


def test_snapshots_rollback_and_clones(ceph: Ceph, pool: str, tmp_path: Path) -> None:
    original = tmp_path / "original"
    original.write_bytes(os.urandom(2 * MiB))
    rbd(ceph, "import", "--no-progress", str(original), f"{pool}/base")
    checksum = hashlib.sha256(original.read_bytes()).hexdigest()

    ceph.create_snapshot(pool, "base", "s1")
    (snap,) = ceph.snapshots(pool, "base")
    assert (snap.name, snap.size_bytes, snap.protected) == ("s1", 2 * MiB, False)
    rbd(ceph, "bench", "--io-type", "write", "--io-size", "1M", "--io-total", "2M", f"{pool}/base")
    assert digest(ceph, f"{pool}/base", tmp_path) != checksum
    ceph.rollback_snapshot(pool, "base", "s1")
    assert digest(ceph, f"{pool}/base", tmp_path) == checksum

    ceph.clone_volume(pool, "base", "s1", pool, "linked")
    assert ceph.snapshots(pool, "base")[0].protected
    linked = next(v for v in ceph.volumes(pool) if v.name == "linked")
    assert linked.parent == Parent(pool=pool, volume="base", snapshot="s1")
    ceph.clone_volume(pool, "base", "s1", pool, "standalone", flatten=True)
    assert ceph.volume_info(pool, "standalone").parent is None
    assert digest(ceph, f"{pool}/standalone", tmp_path) == checksum

    with pytest.raises(CephError, match="^rbd snap unprotect vms/base@s1: "):
        ceph.remove_snapshot(pool, "base", "s1")
    ceph.remove_volume(pool, "linked")
    ceph.remove_snapshot(pool, "base", "s1")
    assert ceph.snapshots(pool, "base") == ()
    ceph.create_snapshot(pool, "base", "s2")
    ceph.remove_volume(pool, "base")
    ceph.remove_volume(pool, "standalone")
    assert {"base", "linked", "standalone"}.isdisjoint(v.name for v in ceph.volumes(pool))


def test_dead_client_blocklisted_and_its_lock_broken(
    ceph: Ceph, ceph_cluster: CephCluster, pool: str, holders: list[LockHolder]
) -> None:
    if not Path(DEBIAN_PYTHON).exists():
        pytest.fail(f"{DEBIAN_PYTHON} (Debian's python3, with python3-rbd) is missing")
    ceph.create_volume(pool, "guest", "16M")
    dead = LockHolder(ceph_cluster, pool, "guest")
    holders.append(dead)
    assert dead.ready.get("ready"), f"the first client could not lock the volume: {dead.ready}"
    (lock,) = ceph.locks(pool, "guest")
    assert lock.locker.startswith("client.") and lock.address.startswith("127.0.0.1:")
    assert lock.address.rsplit("/", 1)[1] in dead.ready["address"]
    assert dead.write() == {"write": "ok"}

    rival = LockHolder(ceph_cluster, pool, "guest")
    holders.append(rival)
    assert rival.ready.get("ready") is False, "a second client took the lock the first one holds"
    with pytest.raises(CephError, match=r"^volume vms/guest is in use by \d client\(s\): .*" + re.escape(lock.address)):
        ceph.remove_volume(pool, "guest")

    ceph.blocklist_add(lock.address, 600)
    assert lock.address in [entry.address for entry in ceph.blocklist()]
    outcome = dead.write()
    assert outcome["write"] == "error", f"the blocklisted client could still write: {outcome}"

    ceph.break_lock(pool, "guest", lock)
    assert ceph.locks(pool, "guest") == ()
    survivor = LockHolder(ceph_cluster, pool, "guest")
    holders.append(survivor)
    assert survivor.ready.get("ready"), f"no other client could lock the volume after the break: {survivor.ready}"
    (new_lock,) = ceph.locks(pool, "guest")
    assert new_lock.address != lock.address
    assert survivor.write() == {"write": "ok"}

    ceph.blocklist_remove(lock.address)
    assert lock.address not in [entry.address for entry in ceph.blocklist()]
    with pytest.raises(CephError, match="^invalid client address 'nowhere'"):
        ceph.blocklist_add("nowhere", 60)


def test_a_ceph_that_does_not_answer_fails_within_the_timeout(ceph_cluster: CephCluster, pool: str) -> None:
    quick = Ceph(conf=ceph_cluster.conf, keyring=ceph_cluster.keyring, client_id="admin", timeout=2)
    mon = ceph_cluster.pids["mon"]
    os.kill(mon, signal.SIGSTOP)
    try:
        for call in (quick.status, lambda: quick.volumes(pool)):
            started = time.monotonic()
            with pytest.raises(CephError, match="no answer from Ceph within 2s"):
                call()
            assert time.monotonic() - started < 4
    finally:
        os.kill(mon, signal.SIGCONT)
    wait_for(lambda: _answers(quick), 30, what="Ceph to answer again after SIGCONT")


def _answers(ceph: Ceph) -> bool:
    try:
        ceph.status()
    except CephError:
        return False
    return True
