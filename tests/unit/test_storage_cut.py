"""Storage fencing's decisions: what is blocklisted and broken for a dead node, and what the
result read back from Ceph proves."""

from __future__ import annotations

import pytest

from pvcd.cluster.vm_records import writable_disks_on_rbd
from pvcd.fencing.storage_cut import (
    CutOutcome,
    StorageCut,
    VolumeClients,
    judge_cut,
    plan_cut,
    whole_ip_entry,
)
from pvcd.storage.addresses import ClientIdentity, address_ip, parse_addresses
from pvcd.storage.values import Lock

DEAD = "10.0.3.12"
OTHER = "10.0.3.13"
ZOMBIE_LOCK = Lock("client.4173", "auto 140", f"{DEAD}:0/478399278")
OTHER_LOCK = Lock("client.5000", "auto 141", f"{OTHER}:0/1")


def test_librados_addresses_in_every_form_it_prints():
    assert parse_addresses("127.0.0.1:0/2864415148") == ("127.0.0.1:0/2864415148",)
    assert parse_addresses("[v2:10.0.3.12:0/77,v1:10.0.3.12:0/77]") == ("10.0.3.12:0/77",)
    assert parse_addresses("[v2:[fd00::12]:0/5]") == ("[fd00::12]:0/5",)
    with pytest.raises(ValueError, match="no client address"):
        parse_addresses("nonsense")
    assert address_ip("v2:10.0.3.12:0/77") == DEAD
    assert address_ip("[fd00::12]:0/5") == "fd00::12"


def test_a_published_identity_round_trips_and_junk_is_no_identity():
    identity = ClientIdentity(("10.0.3.12:0/77",), 1234)
    assert ClientIdentity.from_json(identity.to_json()) == identity
    assert identity.to_json()["ips"] == [DEAD]
    for junk in (None, [], {"addresses": "10.0.3.12:0/77"}, {"addresses": ["x"]}, {"addresses": []}):
        assert ClientIdentity.from_json(junk) is None


def test_an_ip_of_its_own_is_cut_off_whole_and_its_locks_broken():
    volumes = [VolumeClients("vms/disk1", (), (ZOMBIE_LOCK,)), VolumeClients("vms/disk2", (), (OTHER_LOCK,))]
    plan = plan_cut([DEAD], [OTHER], volumes)
    assert plan.entries == (f"{DEAD}:0/0",)
    assert plan.locks == (("vms/disk1", ZOMBIE_LOCK),)  # another node's lock is never broken
    assert whole_ip_entry("fd00::12") == "[fd00::12]:0/0"


def test_an_ip_another_node_shares_is_cut_client_by_client():
    watcher = f"{DEAD}:0/999"
    volumes = [VolumeClients("vms/disk1", (watcher,), (ZOMBIE_LOCK,))]
    plan = plan_cut([DEAD], [DEAD, OTHER], volumes)
    assert plan.whole_ips == () and plan.shared_ips == (DEAD,)
    assert plan.entries == tuple(sorted((watcher, ZOMBIE_LOCK.address)))


def test_confirmed_only_when_the_blocklist_holds_every_entry_and_no_lock_is_left():
    plan = plan_cut([DEAD], [OTHER], [VolumeClients("vms/disk1", (), (ZOMBIE_LOCK,))])
    cut = judge_cut(plan, [f"{DEAD}:0/0"], [], all_disks_rbd=True, until_ms=99)
    assert cut.outcome is CutOutcome.CONFIRMED and cut.whole
    assert cut.broken_locks == (f"vms/disk1 (client.4173 at {ZOMBIE_LOCK.address})",)
    missing = judge_cut(plan, [], [], all_disks_rbd=True, until_ms=99)
    assert missing.outcome is CutOutcome.FAILED and not missing.whole and "not in Ceph's blocklist" in missing.reason
    held = judge_cut(plan, [f"{DEAD}:0/0"], [("vms/disk1", ZOMBIE_LOCK)], all_disks_rbd=True, until_ms=99)
    assert held.outcome is CutOutcome.FAILED and "locks still held" in held.reason


def test_whole_needs_every_ip_cut_whole_and_every_writable_disk_on_ceph():
    shared = plan_cut([DEAD], [DEAD], [])
    assert not judge_cut(shared, [], [], all_disks_rbd=True, until_ms=1).whole
    local_disks = plan_cut([DEAD], [], [])
    cut = judge_cut(local_disks, [f"{DEAD}:0/0"], [], all_disks_rbd=False, until_ms=1)
    assert cut.outcome is CutOutcome.CONFIRMED and not cut.whole and "outside Ceph" in cut.reason


def test_a_cut_round_trips_through_the_fence_record_and_junk_reads_as_none():
    cut = StorageCut(CutOutcome.CONFIRMED, "why", True, ("a:0/0",), ("vms/d (c at a)",), 5)
    assert StorageCut.from_json(cut.to_json()) == cut
    assert StorageCut.from_json({"outcome": "maybe"}) is None
    assert StorageCut.from_json("confirmed") is None


DISK = "<disk type='network' device='disk'><source protocol='rbd' name='vms/d1'/></disk>"
LOCAL = "<disk type='file' device='disk'><source file='/var/lib/x.img'/></disk>"
CDROM = "<disk type='file' device='cdrom'><source file='/iso/x.iso'/><readonly/></disk>"


@pytest.mark.parametrize(
    "devices,expected",
    [(DISK, True), (DISK + CDROM, True), (DISK + LOCAL, False), ("", True), (LOCAL, False)],
)
def test_which_guests_a_blocklist_stops_writing(devices, expected):
    xml = f"<domain type='kvm'><name>v</name><devices>{devices}</devices></domain>"
    assert writable_disks_on_rbd(xml) is expected
