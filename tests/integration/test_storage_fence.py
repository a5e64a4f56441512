"""The storage step of a fence against the session's real Ceph and ZooKeeper, for a dead node whose
IP no other node shares: its whole IP blocklisted (`IP:0/0`), the cut `whole` when every disk of
its VMs is on Ceph, the entry renewed while the node stays fenced and lifted once it is readied.

The dead node publishes 127.0.0.7 (the test's own clients are at 127.0.0.1, so the IP-wide entry
cuts nothing else off); the cluster view is handed in built, with the dead node's VMs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from helpers import node_view, vm_view
from pvcd.cluster.view import ClusterView
from pvcd.cluster.vm_records import ActualState, VmState, VmStatus
from pvcd.devcluster.ceph import CephCluster
from pvcd.fencing.storage_cut import CutOutcome
from pvcd.fencing.storage_fence import StorageFencer
from pvcd.storage import Ceph
from pvcd.storage.addresses import ClientIdentity
from pvcd.zk import schema
from pvcd.zk.store import ZooKeeperStore

POOL = "cutting"
DEAD_IP = "127.0.0.7"
FENCE = {"id": "f-1", "step": "cutting-storage", "outcome": "fencing"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class View:
    """The primary's cluster cache as the storage step asks it: one view of every VM."""

    def __init__(self, view: ClusterView) -> None:
        self.view = view

    def current(self, need_vms: bool, caught_up: bool) -> ClusterView:
        assert need_vms and caught_up, "the cut must see every VM of the node, up to date"
        return self.view


def rbd_xml(*disks: str, local: bool = False) -> str:
    devices = "".join(
        f"<disk type='network' device='disk'><source protocol='rbd' name='{POOL}/{disk}'/></disk>" for disk in disks
    )
    if local:
        devices += "<disk type='file' device='disk'><source file='/var/lib/x.img'/></disk>"
    return f"<domain type='kvm'><name>v</name><devices>{devices}</devices></domain>"


@pytest.fixture(scope="module")
def ceph(ceph_cluster: CephCluster) -> Ceph:
    ceph = Ceph(conf=ceph_cluster.conf, keyring=ceph_cluster.keyring, client_id="admin", timeout=20.0)
    ceph.create_pool(POOL, pgs=8, size=1)
    ceph.create_volume(POOL, "dead-disk", "8M")
    return ceph


@pytest.fixture
def store(zookeeper: Any) -> Iterator[ZooKeeperStore]:
    store = ZooKeeperStore(zookeeper.address, security=zookeeper.security(), connect_timeout=10.0)
    store.start()
    store.delete_tree(schema.ROOT)
    store.ensure_schema()
    for node, address in (("hvdead", f"{DEAD_IP}:0/11"), ("hvme", "127.0.0.1:0/12")):
        store.create(schema.node(node), {}, makepath=True)
        store.create(schema.node_fence(node), FENCE if node == "hvdead" else {"outcome": None})
        store.create(schema.node_storage(node), ClientIdentity((address,), 1).to_json())
    yield store
    store.delete_tree(schema.ROOT)
    store.stop()


def fencer(store: ZooKeeperStore, ceph: Ceph, xml: str, clock: Clock) -> StorageFencer:
    status = VmStatus("hvdead", ActualState.RUNNING)
    vm = vm_view("guest", "hvdead", VmState.START, status, xml=xml)
    nodes = {"hvdead": node_view("hvdead", fence=FENCE), "hvme": node_view("hvme")}
    view = ClusterView(nodes=nodes, vms={"guest": vm}, with_vms=True)
    return StorageFencer(store, ceph, "hvme", View(view), 600, clock)  # type: ignore[arg-type]


def entries(ceph: Ceph) -> list[str]:
    return [entry.address for entry in ceph.blocklist()]


def test_an_ip_of_its_own_is_blocklisted_whole_renewed_while_fenced_and_lifted_when_readied(
    store: ZooKeeperStore, ceph: Ceph
) -> None:
    clock = Clock()
    storage = fencer(store, ceph, rbd_xml("dead-disk"), clock)
    cut = storage.cut("hvdead", "f-1")
    assert cut.outcome is CutOutcome.CONFIRMED and cut.whole, cut
    assert cut.entries == (f"{DEAD_IP}:0/0",)
    assert f"{DEAD_IP}:0/0" in entries(ceph)
    recorded = store.get(schema.storage_fence("hvdead"))
    assert recorded is not None and recorded.value["entries"] == [f"{DEAD_IP}:0/0"]

    # Still fenced when half the entry's time is left: renewed, not lifted.
    view = ClusterView(nodes={"hvdead": node_view("hvdead", fence=FENCE)}, with_vms=True)
    assert storage.due(view) == []
    clock.now += 301
    assert storage.due(view) == ["hvdead"]
    storage.tidy(["hvdead"])
    assert f"{DEAD_IP}:0/0" in entries(ceph) and storage.due(view) == []

    # Readied (its fence record cleared): a new primary's fencer finds the record and lifts the entry.
    store.set(schema.node_fence("hvdead"), {"outcome": None, "last": FENCE}, -1)
    successor = fencer(store, ceph, rbd_xml("dead-disk"), Clock())
    readied = ClusterView(nodes={"hvdead": node_view("hvdead")}, with_vms=True)
    assert successor.due(readied) == ["hvdead"]
    successor.tidy(["hvdead"])
    assert f"{DEAD_IP}:0/0" not in entries(ceph)
    assert store.get(schema.storage_fence("hvdead")) is None


def test_a_vm_with_a_disk_outside_ceph_makes_the_cut_not_whole(store: ZooKeeperStore, ceph: Ceph) -> None:
    storage = fencer(store, ceph, rbd_xml("dead-disk", local=True), Clock())
    cut = storage.cut("hvdead", "f-1")
    try:
        assert cut.outcome is CutOutcome.CONFIRMED and not cut.whole
        assert "outside Ceph" in cut.reason
    finally:
        ceph.blocklist_remove(f"{DEAD_IP}:0/0")


def test_a_node_that_published_no_address_is_a_failed_cut(store: ZooKeeperStore, ceph: Ceph) -> None:
    store.delete(schema.node_storage("hvdead"))
    cut = fencer(store, ceph, rbd_xml("dead-disk"), Clock()).cut("hvdead", "f-1")
    assert cut.outcome is CutOutcome.FAILED and "never published" in cut.reason


def test_a_primary_without_an_address_of_its_own_never_cuts_a_whole_ip(store: ZooKeeperStore, ceph: Ceph) -> None:
    store.delete(schema.node_storage("hvme"))
    cut = fencer(store, ceph, rbd_xml("dead-disk"), Clock()).cut("hvdead", "f-1")
    assert cut.outcome is CutOutcome.CONFIRMED and not cut.whole
    assert f"{DEAD_IP}:0/0" not in entries(ceph)
