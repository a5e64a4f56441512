"""A VM's RBD volumes from its domain XML (`vm_records.rbd_volumes`), and how `pvc vm info`
shows them with their locks (`cli.vm.volumes_json`, `volume_lines`): pure."""

from __future__ import annotations

import pytest

from cli.vm import volume_lines, volumes_json
from pvcd.cluster.vm_records import InvalidVm, RbdVolume, rbd_volumes


def domain(*disks: str) -> str:
    return (
        "<domain type='kvm'><name>vm1</name><memory unit='MiB'>512</memory>"
        f"<devices>{''.join(disks)}<interface type='bridge'><source bridge='br0'/></interface></devices></domain>"
    )


def rbd_disk(name: str, device: str = "disk", protocol: str = "rbd", disk_type: str = "network") -> str:
    return (
        f"<disk type='{disk_type}' device='{device}'><driver name='qemu' type='raw'/>"
        f"<auth username='libvirt'><secret type='ceph' uuid='2a5b08e4-3dbc-4b2a-9a0c-4e4d4c3d5a6b'/></auth>"
        f"<source protocol='{protocol}' name='{name}'><host name='10.0.0.1' port='6789'/></source>"
        f"<target dev='vda' bus='virtio'/></disk>"
    )


FILE_DISK = "<disk type='file' device='disk'><source file='/var/lib/libvirt/images/a.qcow2'/><target dev='vdb'/></disk>"


def test_no_devices_and_no_disks() -> None:
    assert rbd_volumes("<domain type='kvm'><name>a</name><memory>1</memory></domain>") == ()
    assert rbd_volumes(domain()) == ()


def test_file_and_other_network_disks_are_not_rbd_volumes() -> None:
    assert rbd_volumes(domain(FILE_DISK)) == ()
    assert rbd_volumes(domain(rbd_disk("target/lun", protocol="iscsi"), rbd_disk("vms/x", disk_type="volume"))) == ()


def test_rbd_disks_in_order_each_once_cdrom_included() -> None:
    xml = domain(
        rbd_disk("vms/root"),
        FILE_DISK,
        rbd_disk("fast/data"),
        rbd_disk("images/installer", device="cdrom"),
        rbd_disk("vms/root"),
    )
    assert rbd_volumes(xml) == (
        RbdVolume("vms", "root"),
        RbdVolume("fast", "data"),
        RbdVolume("images", "installer"),
    )
    assert str(rbd_volumes(xml)[0]) == "vms/root"


def test_snapshots_namespaces_and_odd_names_are_left_out() -> None:
    xml = domain(
        rbd_disk("vms/base@gold"),
        rbd_disk("vms/ns1/disk"),
        rbd_disk("novolume"),
        rbd_disk("/disk"),
        rbd_disk("vms/"),
        rbd_disk("vms/kept"),
    )
    assert rbd_volumes(xml) == (RbdVolume("vms", "kept"),)


def test_a_source_without_a_name_and_a_disk_without_a_source() -> None:
    xml = domain(
        "<disk type='network' device='disk'><source protocol='rbd'/></disk>",
        "<disk type='network' device='disk'><target dev='vda'/></disk>",
    )
    assert rbd_volumes(xml) == ()


def test_disks_outside_devices_are_not_the_vms() -> None:
    xml = domain(rbd_disk("vms/a")).replace("</domain>", f"<metadata>{rbd_disk('vms/meta')}</metadata></domain>")
    assert rbd_volumes(xml) == (RbdVolume("vms", "a"),)


def test_malformed_xml_is_invalid_vm() -> None:
    with pytest.raises(InvalidVm, match="malformed domain XML"):
        rbd_volumes("<domain type='kvm'><devices>")


LOCK = {"locker": "client.4151", "cookie": "auto 1", "address": "127.0.0.1:0/2211"}


def test_volumes_json_locks_known_unknown_and_not_asked() -> None:
    volumes = [RbdVolume("vms", "a"), RbdVolume("vms", "b")]
    assert volumes_json(volumes) == [
        {"pool": "vms", "volume": "a", "locks": None, "locks_error": None},
        {"pool": "vms", "volume": "b", "locks": None, "locks_error": None},
    ]
    answers = {volumes[0]: [LOCK], volumes[1]: "Ceph: rbd lock ls vms/b: no such image"}
    assert volumes_json(volumes, answers) == [
        {"pool": "vms", "volume": "a", "locks": [LOCK], "locks_error": None},
        {"pool": "vms", "volume": "b", "locks": None, "locks_error": "Ceph: rbd lock ls vms/b: no such image"},
    ]


def test_volume_lines() -> None:
    assert volume_lines([]) == [("RBD volumes", "none")]
    a = {"pool": "vms", "volume": "a", "locks": [LOCK], "locks_error": None}
    b = {"pool": "vms", "volume": "b", "locks": [], "locks_error": None}
    assert volume_lines([a, b]) == [
        ("RBD volumes", "vms/a, vms/b"),
        ("Locks vms/a", "client.4151 at 127.0.0.1:0/2211"),
        ("Locks vms/b", "none"),
    ]
    silent = "Ceph: no answer from Ceph within 2s"
    unknown = [{**a, "locks": None, "locks_error": silent}, {**b, "locks": None, "locks_error": silent}]
    assert volume_lines(unknown) == [("RBD volumes", "vms/a, vms/b"), ("Locks", f"unknown: {silent}")]
    mixed = [a, {**b, "locks": None, "locks_error": "Ceph: no such image"}]
    assert volume_lines(mixed)[2] == ("Locks vms/b", "unknown: Ceph: no such image")
