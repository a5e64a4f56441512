"""Simulated real hosts (pvcd.devcluster.qemu_host): a real QEMU guest live-migrated between two
namespaced libvirtd with the daemon's own `LiveMigration`, then a power loss and a boot of the target.

Needs root (namespaces, veth, bridges, mounts), libvirtd and qemu-system-x86, as CI has them: without
them the tests fail saying what is missing. Each test removes every namespace, link, mount, process
and directory it created, whatever happened (the fixtures' `finally`).

The guest has no disk: SeaBIOS finds nothing to boot and waits, in 64 MiB of guest memory, which is
all a live migration needs to move.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from helpers import wait_for
from pvcd.cluster.vm_records import JobFigures
from pvcd.devcluster.netlab import sh
from pvcd.devcluster.processes import pid_alive, pid_cmdline
from pvcd.devcluster.qemu_host import QemuHost, cleanup, namespace_pids
from pvcd.hypervisor import Hypervisor
from pvcd.vm.domains import Domains
from pvcd.vm.migrators import LiveMigration

MakeHost = Callable[[str], QemuHost]

GUEST = "counter"
GUEST_XML = f"""\
<domain type='qemu'>
  <name>{GUEST}</name>
  <uuid>{{uuid}}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
  <devices><memballoon model='none'/></devices>
</domain>
"""


@pytest.fixture(scope="module")
def capabilities_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """QEMU capabilities probed by the first host, shared by the others of this module."""
    return tmp_path_factory.mktemp("qemu-capabilities")


@pytest.fixture
def make_host(tmp_path: Path, capabilities_cache: Path) -> Iterator[MakeHost]:
    """Hosts on one bridge with a random name and a random 10.A.0.0/24; all removed at the end."""
    missing = [tool for tool in ("libvirtd", "qemu-system-x86_64", "nsenter", "unshare") if shutil.which(tool) is None]
    if os.geteuid() != 0:
        missing.insert(0, "root")
    if missing:
        pytest.fail(f"simulated QEMU hosts need {', '.join(missing)}: run the tests as root after setup.sh")
    tag = secrets.token_hex(2)
    bridge = f"pqbr{tag}"
    routes = sh("ip", "-4", "route", "show", "table", "all")
    base = random.choice([a for a in range(200, 250) if f"10.{a}." not in routes])
    hosts: list[QemuHost] = []

    def make(name: str) -> QemuHost:
        address = f"10.{base}.0.{11 + len(hosts)}/24"
        host = QemuHost(name, tmp_path / name, f"pqt{tag}", bridge, address, capabilities_cache=capabilities_cache)
        hosts.append(host)  # first, so that a half-created host is removed too
        host.create()
        host.power_on()
        return host

    try:
        sh("ip", "link", "add", bridge, "type", "bridge")
        sh("ip", "link", "set", bridge, "up")
        # The test reaches the hosts' libvirtd from here: over the bridge, never the default route.
        sh("ip", "address", "add", f"10.{base}.0.1/24", "dev", bridge)
        yield make
    finally:
        # Every callback runs even if one raises; the bridge goes last.
        with contextlib.ExitStack() as teardown:
            teardown.callback(subprocess.run, ["ip", "link", "del", bridge], capture_output=True)
            for host in hosts:
                teardown.callback(host.destroy)
    for host in hosts:
        assert namespace_pids(host.netns) == []
        assert host.netns not in sh("ip", "netns", "list")
        assert not host.root.exists()
        assert str(tmp_path) not in Path("/proc/self/mountinfo").read_text()


def qemu_pids(host: QemuHost) -> list[int]:
    """The host's QEMU processes (each guest's)."""
    return [pid for pid in host.pids() if (pid_cmdline(pid) or [""])[0].endswith("qemu-system-x86_64")]


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def running(host: QemuHost) -> list[str]:
    connection = libvirt.open(host.uri)
    try:
        return [domain.name() for domain in connection.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)]
    finally:
        connection.close()


class JobWatcher:
    """Samples the source domain's `jobStats()` while the migration runs: what `pvc vm info` could show live."""

    def __init__(self, domain: libvirt.virDomain) -> None:
        self.domain = domain
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> JobWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                stats = self.domain.jobStats()
            except libvirt.libvirtError:
                return  # the domain has left this host
            if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) != libvirt.VIR_DOMAIN_JOB_NONE:
                self.samples.append(stats)
            self._stop.wait(0.02)


def test_live_migration_power_loss_and_boot(make_host: MakeHost) -> None:
    source, target = make_host("hva"), make_host("hvb")
    connection = libvirt.open(source.uri)
    domain = connection.defineXML(GUEST_XML.format(uuid=uuid.uuid4()))
    domain.create()
    (source_qemu,) = qemu_pids(source)
    assert qemu_pids(target) == []
    # QEMU is orphaned by libvirtd's double fork: the host's reaper adopts and reaps it at once.
    assert source.libvirtd is not None
    assert parent_pid(source_qemu) == source.libvirtd.pid

    started = time.monotonic()
    with JobWatcher(domain) as watcher:
        figures = LiveMigration(timeout=60).migrate(Domains(Hypervisor(source.uri)), GUEST, target.ip)
    wall = time.monotonic() - started
    connection.close()

    # It runs on the target, in the target's namespace, and nothing of it is left on the source.
    assert running(target) == [GUEST]
    assert running(source) == []
    wait_for(lambda: not pid_alive(source_qemu), 10, what="the source's QEMU to exit")
    assert qemu_pids(source) == []
    (target_qemu,) = qemu_pids(target)
    assert target_qemu not in source.pids()
    target_connection = libvirt.open(target.uri)
    migrated = target_connection.lookupByName(GUEST)
    assert migrated.isPersistent()  # VIR_MIGRATE_PERSIST_DEST
    with pytest.raises(libvirt.libvirtError):
        libvirt.open(source.uri).lookupByName(GUEST)  # VIR_MIGRATE_UNDEFINE_SOURCE

    # libvirt's figures of the migration: live on the source while it runs, and afterwards on the
    # target as the completed incoming job (the source's domain is undefined by then), which is
    # what LiveMigration returned. libvirt forgets completed figures once read, unless asked to
    # keep them (LiveMigration asks).
    assert watcher.samples, "the source answered no jobStats() while migrating"
    assert all(sample["operation"] == libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT for sample in watcher.samples)
    keep = libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED
    completed = migrated.jobStats(keep)
    assert migrated.jobStats(keep) == completed
    assert migrated.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED) == completed
    assert migrated.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)["type"] == libvirt.VIR_DOMAIN_JOB_NONE
    target_connection.close()
    assert completed["type"] == libvirt.VIR_DOMAIN_JOB_COMPLETED
    assert completed["operation"] == libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN
    assert completed["memory_total"] >= 64 * 1024 * 1024  # the guest's RAM, plus its ROMs
    assert completed["memory_remaining"] == 0
    assert 0 <= completed["downtime"] < 1000
    assert 0 < completed["time_elapsed"] <= wall * 1000
    assert figures == JobFigures(completed["time_elapsed"], completed["downtime"], completed["data_processed"])
    print(
        f"live migration: {wall:.2f}s wall, time_elapsed {completed['time_elapsed']} ms, "
        f"downtime {completed['downtime']} ms, {completed['memory_processed']} bytes sent; "
        f"{len(watcher.samples)} live jobStats samples on the source"
    )

    # Power loss: the guest's QEMU and libvirtd die with the host.
    target_libvirtd = target.libvirtd_pid()
    assert target_libvirtd is not None
    target.power_off()
    assert not pid_alive(target_qemu)
    assert not pid_alive(target_libvirtd)
    assert target.pids() == []
    with pytest.raises(libvirt.libvirtError):
        libvirt.open(target.uri)
    assert source.running()

    # Boot: libvirtd answers again, the guest stays defined but nothing runs it.
    target.power_on()
    assert target.libvirtd_pid() not in (None, target_libvirtd)
    assert running(target) == []
    assert qemu_pids(target) == []
    assert [domain.name() for domain in libvirt.open(target.uri).listAllDomains()] == [GUEST]


PROBE = """\
import os, signal, socket, sys
import libvirt
connection = libvirt.open("qemu:///system")
print(socket.gethostname(), connection.getHostname(), os.readlink("/proc/self/ns/net"),
      len(connection.listAllDomains()), open("/sys/class/net/eth0/address").read().strip(), flush=True)
signal.pause()
"""


def test_run_power_off_and_cleanup_after_a_crash(make_host: MakeHost, tmp_path: Path) -> None:
    host = make_host("hvc")
    log = tmp_path / "probe.log"
    probe = host.run([sys.executable, "-c", PROBE], env=dict(os.environ), log=log)
    fields = wait_for(lambda: log.exists() and log.read_text().split(), 15, what="the probe's line")
    netns_inode = os.stat(f"/run/netns/{host.netns}").st_ino
    mac = sh("ip", "-n", host.netns, "-o", "link", "show", "eth0").split("link/ether ")[1].split()[0]
    # Its hostname, its libvirtd at qemu:///system, its network namespace and that namespace's /sys.
    assert fields == ["hvc", "hvc", f"net:[{netns_inode}]", "0", mac]
    assert probe.pid in host.pids()

    host.power_off()
    assert not pid_alive(probe.pid)
    host.power_on()
    host.run([sys.executable, "-c", PROBE], env=dict(os.environ))
    libvirtd = host.libvirtd_pid()
    assert libvirtd is not None
    processes = host.pids()

    # As after a crash of the launcher: only the recorded names are left, and cleanup is idempotent.
    record = host.record()
    cleanup(**record)
    cleanup(**record)
    assert not any(pid_alive(pid) for pid in processes)
    assert host.netns not in sh("ip", "netns", "list")
    assert record["veth"] not in sh("ip", "-o", "link", "show")
    assert not Path(record["root"]).exists()
    assert record["root"] not in Path("/proc/self/mountinfo").read_text()
