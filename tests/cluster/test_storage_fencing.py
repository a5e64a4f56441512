"""Storage fencing in a whole local cluster whose nodes use the session's one-node Ceph.

The VM of the node that dies has its disk on an RBD volume. A separate Ceph client process holds
that volume's lock and writes to it, standing in for the VM's QEMU on the dead host (the chassis'
libvirt test driver opens no disk). All nodes of the local cluster reach Ceph from 127.0.0.1,
so the fencer cuts the dead node's clients off one by one (an IP-wide entry would cut off the
survivors too) — which also means the cut never proves the whole node cut off, and a failed
fence still waits for the watchdog (tests/unit/test_fence_flow.py covers the rule where it does).
"""

from __future__ import annotations

import json

import pytest
from harness import Cluster
from test_fence_safety import AFTER_WATCHDOG, fence_record, running_elsewhere, secondaries, wait_for_step, zookeeper

from ceph_helpers import LockHolder
from helpers import wait_for
from pvcd.devcluster.ceph import CephCluster
from pvcd.storage import Ceph
from pvcd.zk import schema

POOL = "fencing"


@pytest.fixture(scope="module")
def ceph(ceph_cluster: CephCluster) -> Ceph:
    ceph = Ceph(conf=ceph_cluster.conf, keyring=ceph_cluster.keyring, client_id="admin", timeout=20.0)
    if POOL not in [pool.name for pool in ceph.pools()]:
        ceph.create_pool(POOL, pgs=8, size=1)
    return ceph


def rbd_domain_xml(name: str, volume: str) -> str:
    return (
        f"<domain type='test'><name>{name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>"
        "<os><type>hvm</type></os><devices>"
        f"<disk type='network' device='disk'><source protocol='rbd' name='{POOL}/{volume}'/>"
        "<target dev='vda' bus='virtio'/></disk></devices></domain>"
    )


def published_ips(cluster: Cluster) -> dict[str, list[str]]:
    found = {}
    with zookeeper(cluster) as client:
        for node in cluster.nodes():
            if client.exists(schema.node_storage(node)):
                found[node] = json.loads(client.get(schema.node_storage(node))[0])["ips"]
    return found


def test_a_dead_nodes_disk_client_is_cut_off_its_lock_broken_and_its_vm_recovered_once(
    make_cluster, ceph: Ceph, ceph_cluster: CephCluster, holders: list[LockHolder]
):
    cluster = make_cluster(
        3,
        "--failed-fence",
        "migrate",
        "--suicide-intervals",
        "2",
        "--watchdog-timeout",
        "4",
        "--ceph-conf",
        str(ceph_cluster.conf),
        "--ceph-keyring",
        str(ceph_cluster.keyring),
    )
    # Every node learns its Ceph client address from librados and publishes it.
    ips = wait_for(
        lambda: (lambda found: found if len(found) == 3 else None)(published_ips(cluster)),
        30,
        what="every node's Ceph client address",
    )
    assert all(found == ["127.0.0.1"] for found in ips.values()), ips
    victim = secondaries(cluster)[0]
    ceph.create_volume(POOL, "zombie-disk", "16M")
    xml = cluster.workdir / "zombie.xml"
    xml.write_text(rbd_domain_xml("zombie", "zombie-disk"))
    cluster.pvc("vm", "define", str(xml), "--node", victim)
    cluster.pvc("vm", "start", "zombie")
    wait_for(lambda: cluster.running_where().get("zombie") == [victim], 30, what="zombie running on the victim")
    qemu = LockHolder(ceph_cluster, POOL, "zombie-disk")  # the VM's QEMU on the victim
    holders.append(qemu)
    assert qemu.ready.get("ready"), qemu.ready
    (lock,) = ceph.locks(POOL, "zombie-disk")

    # pvcd dies, the host and its VM live on, and its BMC does not answer: the fence fails.
    cluster.fault(victim, "bmc-down")
    cluster.fault(victim, "daemon-crash")
    record = wait_for_step(cluster, victim, "waiting-watchdog", 40, then=AFTER_WATCHDOG)
    assert record["outcome"] == "failed"
    storage = record["storage"]
    assert storage["outcome"] == "confirmed", storage
    assert lock.address in storage["entries"] and storage["whole"] is False
    assert storage["broken_locks"] == [f"{POOL}/zombie-disk ({lock.locker} at {lock.address})"]
    # The zombie can no longer write its disk, and holds no lock on it.
    assert lock.address in [entry.address for entry in ceph.blocklist()]
    outcome = qemu.write()
    assert outcome["write"] in ("error", "timeout"), f"the cut-off client could still write: {outcome}"
    assert ceph.locks(POOL, "zombie-disk") == ()

    # The watchdog resets the host; the VM then starts once elsewhere, and its new QEMU gets the lock.
    wait_for(lambda: running_elsewhere(cluster, ["zombie"], victim), 40, what="zombie recovered elsewhere")
    assert fence_record(cluster, victim)["step"] == "recovered"
    heir = LockHolder(ceph_cluster, POOL, "zombie-disk")
    holders.append(heir)
    assert heir.ready.get("ready"), f"the VM's new host could not lock its disk: {heir.ready}"
    assert heir.write() == {"write": "ok"}
    info = cluster.json("vm", "info", "zombie")
    assert info["node"] != victim
    cluster.assert_clean()

    # Readied, the node's clients are no longer blocklisted.
    wait_for(
        lambda: cluster.nodes()[victim]["daemon_state"] == "run" and not cluster.nodes()[victim]["keepalive"]["late"],
        60,
        what="the reset node back",
    )
    cluster.wait_keepalives(victim, 2)
    cluster.pvc("node", "ready", victim, "--wait")
    wait_for(
        lambda: lock.address not in [entry.address for entry in ceph.blocklist()],
        30,
        what="the readied node's blocklist entry lifted",
    )
    with zookeeper(cluster) as client:
        assert not client.exists(schema.storage_fence(victim))
