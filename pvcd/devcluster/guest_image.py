"""A tiny bootable guest for the QEMU hosts: Debian's kernel and a busybox initramfs.

The real-host tests must tell a live migration from a restart, so the guest does
one thing: its `/init` keeps an integer in guest memory (a shell variable),
increments it five times a second and prints `counter N` on the first serial
port. After a live migration the counter carries on from where it was; after a
restart it begins again at 1.

Why a kernel and an initramfs and no disk: the guest then has no block device at
all, so libvirt has no writable local disk to refuse a live migration for
(which only `VIR_MIGRATE_UNSAFE` would override) and no host needs a disk image
the other hosts can see; only the kernel and the initramfs must be at the same
path on every host (the cache dir is shared by all namespaced hosts). Checked
with one libvirtd (QEMU driver): the domain of `domain_xml` boots, and its
counter carries on, in the same serial log, across a save and restore.

The kernel is Debian's own, fetched with `apt-get download` at build time rather
than installed: nothing goes into /boot and the machine's packages are left
alone. Only `boot/vmlinuz-*` is taken from the package, streamed out of
`dpkg-deb --fsys-tarfile` and the stream cut there (the package goes on with
modules the guest does not need, which `dpkg-deb -x` would all write out); the
kernel has the 8250 serial console, devtmpfs and gzip initramfs built in, so no
module is needed. Busybox comes from the installed `busybox-static` package
(setup.sh installs it): a static binary needs no libraries in the initramfs.

No Debian kernel boots in 64 MiB, so the guest gets 80 MiB. The kernel is the
cloud flavour (`linux-image-cloud-amd64`), not the generic `linux-image-amd64`,
because it needs less memory and boots in less than half the time under TCG.
Measured on the build machines (Debian 6.1.0-56, QEMU 7.2, TCG, 2 cores):

- cloud: boots at 72 MiB and no lower. At 70 MiB it panics out of memory during
  boot; at 66 MiB and below QEMU resets before the kernel prints a line,
  because the bzImage decompresses itself into 51.5 MiB (its `init_size`) above
  the 16 MiB load address. After boot at 72 MiB, 18 MiB are still available, so
  the limit is the peak during boot. Boot to the first `counter` line, from
  the start of QEMU: 3.1-3.3 s wall at 72 or 80 MiB on an idle machine, 3.3 s
  when libvirtd starts the domain, up to 4.9 s while other tests load the cores.
- generic: boots at 84 MiB and no lower (80 MiB: out of memory while parsing
  the kernel's BTF; 72 MiB and below: reset before the kernel prints, its
  `init_size` being 63.6 MiB); 7.6-9.4 s to the first counter line, ~5 s of it
  spent on the xz decompression of the kernel, which TCG runs slowly.

80 MiB is the cloud minimum plus headroom, so that a kernel point release that
grows a little does not stop the guest from booting. Guest pages that are never
touched cost the host nothing, and live migration sends zero pages compactly,
so the headroom is close to free. Set `KERNEL_FLAVOUR = "amd64"` and
`GUEST_MEMORY_MIB = 96` to use the generic kernel instead.

Everything is built once into the cache dir and reused while present; the
initramfs name carries a hash of its contents so a change to the init script or
to busybox builds a new one instead of reusing a stale one. Concurrent builders
(several hosts starting at once) serialise on a lock file and every file appears
by an atomic rename, so no reader ever sees half a kernel.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import os
import re
import stat
import subprocess
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

KERNEL_FLAVOUR = "cloud-amd64"
KERNEL_METAPACKAGE = f"linux-image-{KERNEL_FLAVOUR}"
GUEST_MEMORY_MIB = 80
"""The guest's memory: the smallest the cloud kernel boots in (72 MiB) plus headroom, see above."""

BUSYBOX_PACKAGE = "busybox-static"
CMDLINE = "console=ttyS0 quiet"
"""`quiet` keeps the kernel's boot messages out of the serial log, which then holds little but counter lines."""

DEFAULT_CACHE = Path("/var/cache/pvcd-devcluster/guest-image")
"""Kept between runs: the kernel is fetched from Debian once per machine."""
HOST_SERIAL_LOG = "/var/log/libvirt/qemu/{name}-serial.log"
"""Where a guest's serial port is written on the host running it: each QEMU host has its own
/var/log/libvirt, so after a live migration the target's file carries on where the source's stopped."""
COUNTER_INTERVAL = 0.2
"""Seconds between counter lines: several a second, so a ~20 ms migration downtime cannot hide a restart."""

INIT_SCRIPT = f"""#!/bin/sh
# pvcd test guest: a counter in memory, printed on the serial port.
# The first echo ends the line the firmware's escape codes leave open.
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec >/dev/ttyS0 2>&1
echo
n=0
while :; do
  n=$((n + 1))
  echo "counter $n"
  sleep {COUNTER_INTERVAL}
done
"""

_KERNEL_NAME = re.compile(rf"vmlinuz-[0-9.]+-[0-9]+-{re.escape(KERNEL_FLAVOUR)}")
_COUNTER_LINE = re.compile(rb"^counter (\d+)\r?\n", re.MULTILINE)
_TAIL_BYTES = 4096
_FILE_MODE = 0o644
_DIR_MODE = 0o755

_T = TypeVar("_T")


class GuestImageError(RuntimeError):
    """The guest image cannot be built (apt cannot fetch the kernel, busybox-static is missing)."""


@dataclass(frozen=True)
class GuestImage:
    """The files QEMU boots; both are world-readable so any host's QEMU can open them."""

    kernel: Path
    initrd: Path
    cmdline: str = CMDLINE


def build(cache_dir: Path) -> GuestImage:
    """The guest image in `cache_dir`, fetched and built only for what is missing there."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(cache_dir, _DIR_MODE)
    with _locked(cache_dir / ".lock"):
        return GuestImage(kernel=_kernel(cache_dir), initrd=_initrd(cache_dir))


def domain_xml(name: str, uuid: str, image: GuestImage, serial_log: Path, memory_mib: int = GUEST_MEMORY_MIB) -> str:
    """A libvirt domain booting `image` under TCG, with its serial port appended to `serial_log`.

    `append='on'` matters for migration: the target's QEMU opens the same log path
    when the hosts share it, and would otherwise truncate what the source wrote.
    The USB controller and memory balloon libvirt would add by default are
    dropped: the guest uses neither, and each costs guest memory and migration
    state.
    """
    domain = ET.Element("domain", type="qemu")
    ET.SubElement(domain, "name").text = name
    ET.SubElement(domain, "uuid").text = uuid
    ET.SubElement(domain, "memory", unit="MiB").text = str(memory_mib)
    ET.SubElement(domain, "vcpu").text = "1"
    os_element = ET.SubElement(domain, "os")
    ET.SubElement(os_element, "type", arch="x86_64", machine="pc").text = "hvm"
    ET.SubElement(os_element, "kernel").text = str(image.kernel)
    ET.SubElement(os_element, "initrd").text = str(image.initrd)
    ET.SubElement(os_element, "cmdline").text = image.cmdline
    features = ET.SubElement(domain, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(domain, "clock", offset="utc")
    ET.SubElement(domain, "on_poweroff").text = "destroy"
    ET.SubElement(domain, "on_reboot").text = "restart"
    ET.SubElement(domain, "on_crash").text = "destroy"
    devices = ET.SubElement(domain, "devices")
    serial = ET.SubElement(devices, "serial", type="file")
    ET.SubElement(serial, "source", path=str(serial_log), append="on")
    ET.SubElement(serial, "target", port="0")
    ET.SubElement(devices, "controller", type="usb", model="none")
    ET.SubElement(devices, "memballoon", model="none")
    return ET.tostring(domain, encoding="unicode")


def host_serial_log(name: str) -> Path:
    return Path(HOST_SERIAL_LOG.format(name=name))


def read_counter(serial_log: Path) -> int | None:
    """The last counter value the guest printed, None before the first one.

    Only whole lines count: a line still being written ("counter 12" of a coming
    "counter 123") would read as a smaller value, which looks like a restart.
    """
    try:
        with open(serial_log, "rb") as log:
            size = log.seek(0, os.SEEK_END)
            start = max(0, size - _TAIL_BYTES)
            log.seek(start)
            tail = log.read()
    except FileNotFoundError:
        return None
    if start > 0:
        tail = tail[tail.find(b"\n") + 1 :]
    matches = _COUNTER_LINE.findall(tail)
    return int(matches[-1]) if matches else None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _publish(content: bytes, target: Path) -> None:
    """Put a file in place world-readable and in one rename, so readers see all of it or nothing."""
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(descriptor, "wb") as out:
            out.write(content)
        os.chmod(temporary, _FILE_MODE)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _kernel(cache_dir: Path) -> Path:
    present = sorted(path for path in cache_dir.glob("vmlinuz-*") if _KERNEL_NAME.fullmatch(path.name))
    if present:
        return present[-1]
    package = _with_apt_update_on_failure(_kernel_package)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as download_dir:
        deb = _with_apt_update_on_failure(lambda: _download(package, Path(download_dir)))
        return _extract_vmlinuz(deb, cache_dir)


def _with_apt_update_on_failure(step: Callable[[], _T]) -> _T:
    """Run an apt step; on failure refresh the package lists once and retry.

    A fresh machine (or one whose lists went stale after a point release) has no
    record of the current kernel package until `apt-get update` has run.
    """
    try:
        return step()
    except GuestImageError as failure:
        update = subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
        if update.returncode != 0:
            raise GuestImageError(f"apt-get update failed: {update.stderr.strip()}") from failure
        return step()


def _kernel_package() -> str:
    result = subprocess.run(["apt-cache", "depends", KERNEL_METAPACKAGE], capture_output=True, text=True)
    for line in result.stdout.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "Depends" and value.strip().startswith("linux-image-"):
            return value.strip()
    raise GuestImageError(f"apt-cache knows no kernel package for {KERNEL_METAPACKAGE}: {result.stderr.strip()}")


def _download(package: str, directory: Path) -> Path:
    # As root apt drops to the `_apt` user to download, which cannot write into a
    # private temporary dir; the sandbox buys nothing for a file we only unpack.
    result = subprocess.run(
        ["apt-get", "download", "-qq", "-o", "APT::Sandbox::User=root", package],
        cwd=directory,
        capture_output=True,
        text=True,
    )
    debs = sorted(directory.glob(f"{package}_*.deb"))
    if result.returncode != 0 or not debs:
        raise GuestImageError(f"apt-get download {package} failed: {result.stderr.strip()}")
    return debs[0]


def _extract_vmlinuz(deb: Path, cache_dir: Path) -> Path:
    unpack = subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert unpack.stdout is not None
    try:
        with tarfile.open(fileobj=unpack.stdout, mode="r|") as archive:
            for member in archive:
                name = member.name.removeprefix("./")
                if member.isfile() and name.startswith("boot/") and _KERNEL_NAME.fullmatch(name[len("boot/") :]):
                    content = archive.extractfile(member)
                    assert content is not None
                    target = cache_dir / Path(name).name
                    _publish(content.read(), target)
                    return target
    finally:
        # /boot comes first in the package, so the rest is not needed. Closing the
        # pipe ends dpkg-deb's decompressing child with SIGPIPE and dpkg-deb reaps
        # it before exiting; killing dpkg-deb instead would orphan that child.
        unpack.stdout.close()
        try:
            unpack.wait(timeout=30)
        except subprocess.TimeoutExpired:
            unpack.kill()
            unpack.wait()
    raise GuestImageError(f"{deb.name} holds no boot/vmlinuz-*")


def _busybox() -> Path:
    result = subprocess.run(["dpkg-query", "-L", BUSYBOX_PACKAGE], capture_output=True, text=True)
    for line in result.stdout.splitlines():
        if line.endswith("/bin/busybox"):
            return Path(line)
    raise GuestImageError(f"{BUSYBOX_PACKAGE} is not installed: run setup.sh, which installs it")


def _initrd(cache_dir: Path) -> Path:
    busybox = _busybox().read_bytes()
    init = INIT_SCRIPT.encode()
    digest = hashlib.sha256(busybox + b"\0" + init).hexdigest()[:12]
    target = cache_dir / f"initrd-{digest}.cpio.gz"
    if not target.exists():
        _publish(_gzip(_initramfs(busybox, init)), target)
    return target


def _gzip(data: bytes) -> bytes:
    """Gzip with a zero timestamp, so the same inputs give the same bytes."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed:
        compressed.write(data)
    return buffer.getvalue()


def _initramfs(busybox: bytes, init: bytes) -> bytes:
    """The newc cpio archive the kernel unpacks as its root file system.

    /dev/console is in the archive itself: the kernel opens it for /init's
    standard streams before /init can mount devtmpfs.
    """
    archive = _Cpio()
    for directory in ("bin", "dev", "proc", "sys", "tmp"):
        archive.add(directory, stat.S_IFDIR | 0o755)
    archive.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    archive.add("bin/busybox", stat.S_IFREG | 0o755, busybox)
    archive.add("bin/sh", stat.S_IFLNK | 0o777, b"busybox")
    archive.add("init", stat.S_IFREG | 0o755, init)
    return archive.finish()


class _Cpio:
    """A writer for the "newc" cpio format (what the kernel's initramfs unpacker reads)."""

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._inode = 0

    def add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        self._inode += 1
        encoded = name.encode() + b"\0"
        nlink = 2 if stat.S_ISDIR(mode) else 1
        fields = (self._inode, mode, 0, 0, nlink, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        self._out.write(b"070701" + b"".join(b"%08X" % field for field in fields))
        self._out.write(encoded)
        self._pad()
        self._out.write(data)
        self._pad()

    def finish(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return self._out.getvalue()

    def _pad(self) -> None:
        self._out.write(b"\0" * (-self._out.tell() % 4))
