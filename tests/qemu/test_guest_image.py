"""The guest image of the QEMU hosts (pvcd.devcluster.guest_image), booted by QEMU itself.

The real-host tests tell a live migration from a restart by the guest's counter,
so this checks, without libvirt, that the image boots under TCG in the memory
the domains get and that the counter climbs one step at a time from 1.
"""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import wait_for
from pvcd.devcluster import guest_image
from pvcd.devcluster.guest_image import GuestImage
from pvcd.devcluster.processes import stop_pid

BOOT_TIMEOUT = 60.0
"""Boot takes ~3.5 s alone; generous because the other tests may hold both cores."""


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> GuestImage:
    return guest_image.build(tmp_path_factory.mktemp("guest-image"))


@pytest.fixture
def booted(image: GuestImage, tmp_path: Path) -> Iterator[Path]:
    """The serial log of a QEMU booting the image, stopped by its PID afterwards."""
    serial_log = tmp_path / "serial.log"
    command = [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-m",
        str(guest_image.GUEST_MEMORY_MIB),
        "-nographic",
        "-display",
        "none",
        "-nic",
        "none",
        "-no-reboot",
        "-kernel",
        str(image.kernel),
        "-initrd",
        str(image.initrd),
        "-append",
        image.cmdline,
        "-serial",
        f"file:{serial_log}",
    ]
    with open(tmp_path / "qemu.out", "wb") as output:
        qemu = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT)
    try:
        yield serial_log
    finally:
        stop_pid(qemu.pid)
        qemu.wait()


def counter_lines(serial_log: Path) -> list[int]:
    text = serial_log.read_bytes().decode(errors="replace").replace("\r", "")
    return [int(line.split()[1]) for line in text.split("\n")[:-1] if line.startswith("counter ")]


def test_the_guest_boots_and_its_counter_climbs_from_one(booted: Path) -> None:
    first = wait_for(lambda: guest_image.read_counter(booted), BOOT_TIMEOUT, what=f"a counter line in {booted}")
    later = wait_for(
        lambda: (value := guest_image.read_counter(booted)) is not None and value >= first + 5 and value,
        10.0,
        what=f"the counter to pass {first + 5} in {booted}",
    )
    assert later > first
    values = counter_lines(booted)
    assert values == list(range(1, len(values) + 1)), "the counter must climb by one from 1, never starting again"


def test_a_second_build_reuses_the_cached_files(image: GuestImage) -> None:
    stamps = (image.kernel.stat().st_mtime_ns, image.initrd.stat().st_mtime_ns)
    again = guest_image.build(image.kernel.parent)
    assert again == image
    assert (again.kernel.stat().st_mtime_ns, again.initrd.stat().st_mtime_ns) == stamps
    for path in (again.kernel, again.initrd):
        assert path.stat().st_mode & 0o444 == 0o444, f"{path} must be readable by every host's QEMU"


def test_domain_xml_boots_the_image_under_tcg_with_the_serial_port_in_a_file(image: GuestImage, tmp_path: Path) -> None:
    serial_log = tmp_path / "vm1.serial"
    uuid = "0b7e9a2c-1f6e-4f55-9d55-5b1d3c2a7e01"
    domain = ET.fromstring(guest_image.domain_xml("vm1", uuid, image, serial_log))
    assert domain.get("type") == "qemu"
    assert domain.findtext("name") == "vm1"
    assert domain.findtext("uuid") == uuid
    memory = domain.find("memory")
    assert memory is not None and memory.get("unit") == "MiB"
    assert memory.text == str(guest_image.GUEST_MEMORY_MIB)
    os_type = domain.find("os/type")
    assert os_type is not None and os_type.text == "hvm"
    assert (os_type.get("arch"), os_type.get("machine")) == ("x86_64", "pc")
    assert domain.findtext("os/kernel") == str(image.kernel)
    assert domain.findtext("os/initrd") == str(image.initrd)
    assert domain.findtext("os/cmdline") == image.cmdline
    serial = domain.find("devices/serial")
    assert serial is not None and serial.get("type") == "file"
    source = serial.find("source")
    assert source is not None and source.get("path") == str(serial_log)
    assert source.get("append") == "on"
    for absent in ("disk", "interface", "graphics"):
        assert domain.find(f"devices/{absent}") is None, f"a test guest needs no {absent}"
    custom = ET.fromstring(guest_image.domain_xml("vm2", uuid, image, serial_log, memory_mib=96))
    assert custom.findtext("memory") == "96"


def test_read_counter_takes_the_last_whole_line(tmp_path: Path) -> None:
    serial_log = tmp_path / "serial.log"
    assert guest_image.read_counter(serial_log) is None
    serial_log.write_bytes(b"\x1bc SeaBIOS\r\n")
    assert guest_image.read_counter(serial_log) is None
    serial_log.write_bytes(b"Booting from ROM..\r\ncounter 1\r\ncounter 2\r\ncounter 123\r\ncounter 12")
    assert guest_image.read_counter(serial_log) == 123, "a line still being written is not read"
    serial_log.write_bytes(b"".join(b"counter %d\r\n" % value for value in range(1, 5001)))
    assert guest_image.read_counter(serial_log) == 5000
