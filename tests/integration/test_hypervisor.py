"""The libvirt adapter against libvirt's test driver: the keepalive's figures, what
they cost in libvirt calls, and the reconnection after libvirtd restarts.

Costs are counted, never timed: a connection wrapper counts every call made on
the connection and on the domains it hands out.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import libvirt
import pytest

from helpers import vm_xml
from pvcd import hypervisor as hypervisor_module
from pvcd.cluster.values import DomainFigures, HostMemory
from pvcd.devcluster import layout
from pvcd.devcluster.libvirt_host import LIBVIRTD, Libvirtd
from pvcd.hypervisor import Hypervisor, HypervisorError

# Calls a libvirt client answers itself, without asking the driver.
LOCAL = {"name", "UUIDString", "ID", "isAlive"}


class Counted:
    """A libvirt object whose method calls are counted in `calls`; domains it returns are wrapped too."""

    def __init__(self, target: Any, calls: Counter[str], stats: Callable[[Any], dict[str, int]] | None) -> None:
        self._target = target
        self._calls = calls
        self._stats = stats

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self._calls[name] += 1
            return self._wrap(name, attribute(*args, **kwargs))

        return call

    def _wrap(self, name: str, result: Any) -> Any:
        if isinstance(result, libvirt.virDomain):
            return Counted(result, self._calls, None)
        if name == "listAllDomains":
            return [Counted(domain, self._calls, None) for domain in result]
        if name == "getAllDomainStats":
            wrapped = []
            for domain, stats in result:
                # As the QEMU driver answers (the test driver reports neither group): its figures come with the listing.
                extra = self._stats(domain) if self._stats is not None else {}
                wrapped.append((Counted(domain, self._calls, None), {**stats, **extra}))
            return wrapped
        return result


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Callable[..., tuple[Hypervisor, Counter[str]]]:
    """A Hypervisor on a private test-driver host whose libvirt calls are counted."""

    def make(uri: str, stats: Callable[[Any], dict[str, int]] | None = None) -> tuple[Hypervisor, Counter[str]]:
        calls: Counter[str] = Counter()
        real_open = libvirt.open
        monkeypatch.setattr(hypervisor_module.libvirt, "open", lambda name: Counted(real_open(name), calls, stats))
        return Hypervisor(uri), calls

    return make


@pytest.fixture
def host_uri(tmp_path: Path) -> str:
    host = tmp_path / "host.xml"
    host.write_text(layout.host_xml(memory_mib=16384))
    return f"test://{host}"


def start(conn: Any, name: str, memory_mib: int = 256, vcpus: int = 1) -> None:
    conn.defineXML(vm_xml(name, memory_mib, vcpus)).create()


def remote_calls(calls: Counter[str]) -> dict[str, int]:
    return {name: count for name, count in calls.items() if name not in LOCAL}


def test_figures_of_running_domains_and_simulated_host_memory(host_uri):
    hypervisor = Hypervisor(host_uri)
    conn = hypervisor.connection()
    start(conn, "vm-b", 1024, 2)
    start(conn, "vm-a", 512, 1)
    conn.defineXML(vm_xml("vm-off", 4096, 8))  # defined, not running: not counted
    expected = sorted(
        (DomainFigures(d.name(), d.UUIDString(), d.info()[2] // 1024, d.info()[3]) for d in conn.listAllDomains(1)),
        key=lambda d: d.name,
    )
    assert [d.name for d in expected] == ["vm-a", "vm-b"]
    assert hypervisor.running_domains() == expected
    assert hypervisor.host_memory() == HostMemory(16384, 16384 - 1536)
    # Read again (from what the adapter remembers): the same figures.
    assert hypervisor.running_domains() == expected
    # A stopped domain leaves the figures; one started again is read afresh.
    conn.lookupByName("vm-b").destroy()
    assert [d.name for d in hypervisor.running_domains()] == ["vm-a"]
    assert hypervisor.host_memory() == HostMemory(16384, 16384 - 512)
    conn.lookupByName("vm-b").create()
    assert hypervisor.running_domains() == expected
    hypervisor.close()


def test_keepalive_figures_cost_one_call_however_many_domains_run(host_uri, counted):
    hypervisor, calls = counted(host_uri)
    conn = hypervisor.connection()
    for index in range(30):
        start(conn, f"vm-{index:02d}")
    calls.clear()
    # The first reading asks the test driver about each domain once (it reports no figures in bulk)...
    assert len(hypervisor.running_domains()) == 30
    assert remote_calls(calls) == {"getAllDomainStats": 1, "info": 30}
    # ... and then no more: each keepalive's figures are one listing, for the domains as for the memory.
    for _ in range(3):
        calls.clear()
        assert len(hypervisor.running_domains()) == 30
        assert hypervisor.host_memory().free_mib == 16384 - 30 * 256
        assert remote_calls(calls) == {"getAllDomainStats": 2, "getInfo": 1}
    # A burst of starts costs one look per domain started, not per domain running.
    for index in range(30, 35):
        start(conn, f"vm-{index:02d}")
    calls.clear()
    assert len(hypervisor.running_domains()) == 35
    assert remote_calls(calls) == {"getAllDomainStats": 1, "info": 5}
    # The keepalive's collectors list together: after a burst, the domains started are asked about once.
    for index in range(35, 40):
        start(conn, f"vm-{index:02d}")
    calls.clear()
    readers = [threading.Thread(target=read) for read in (hypervisor.running_domains, hypervisor.host_memory)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    assert remote_calls(calls) == {"getAllDomainStats": 2, "getInfo": 1, "info": 5}


def test_figures_that_come_with_the_listing_need_no_look_at_each_domain(host_uri, counted):
    def qemu_like(domain: Any) -> dict[str, int]:
        _state, _max_kib, current_kib, vcpus, _cpu = domain.info()
        return {"balloon.current": current_kib, "balloon.maximum": _max_kib, "vcpu.current": vcpus}

    hypervisor, calls = counted(host_uri, stats=qemu_like)
    conn = hypervisor.connection()
    start(conn, "vm-a", 512, 2)
    start(conn, "vm-b", 2048, 4)
    calls.clear()
    figures = hypervisor.running_domains()
    assert [(d.name, d.memory_mib, d.vcpus) for d in figures] == [("vm-a", 512, 2), ("vm-b", 2048, 4)]
    assert remote_calls(calls) == {"getAllDomainStats": 1}


def test_isalive_is_asked_of_the_client_only(host_uri, counted):
    """connection() checks the client's view of the connection, no round trip: one open, however many calls."""
    hypervisor, calls = counted(host_uri)
    for _ in range(5):
        hypervisor.running_domains()
        hypervisor.host_memory()
    assert hypervisor.connection() is hypervisor.connection()
    assert remote_calls(calls) == {"getAllDomainStats": 10, "getInfo": 5}


@pytest.fixture
def libvirtd(tmp_path: Path) -> Iterator[Libvirtd]:
    """A libvirtd serving the test driver's `default` host, as the local cluster's chassis runs one."""
    # As the local cluster's chassis (tests/cluster): `./setup.sh test` installs libvirtd, and CI runs as
    # root. Missing either is a broken set-up, reported as a failure rather than hidden as a skip.
    missing = [
        what
        for what, ok in (
            ("root", os.geteuid() == 0),
            (LIBVIRTD, shutil.which(LIBVIRTD)),
            ("unshare", shutil.which("unshare")),
        )
        if not ok
    ]
    assert not missing, f"a libvirtd of its own needs {', '.join(missing)} (run the suite as `./setup.sh test` does)"
    directory = tmp_path / "host"
    directory.mkdir()
    uri = f"test+unix:///default?socket={quote(str(directory / 'libvirt-sock'), safe='/')}"
    daemon = Libvirtd(directory / "libvirt", directory, uri, directory / "libvirtd.log")
    yield daemon
    daemon.stop()


def test_reconnects_when_libvirtd_restarted(libvirtd):
    holder = libvirtd.start()  # the default host lives while a connection is open
    hypervisor = Hypervisor(libvirtd.uri)
    try:
        start(hypervisor.connection(), "vm-a")
        assert [d.name for d in hypervisor.running_domains()] == ["test", "vm-a"]
        first = hypervisor.connection()

        libvirtd.kill()  # every VM of the host dies with it
        for read in (hypervisor.running_domains, hypervisor.host_memory):
            with pytest.raises(HypervisorError, match="cannot connect to libvirt at test\\+unix"):
                read()

        holder = libvirtd.start()
        # The first call after the restart answers: it fails on the dead connection, reconnects, asks again.
        assert [d.name for d in hypervisor.running_domains()] == ["test"]
        assert hypervisor.connection() is not first

        second = hypervisor.connection()
        libvirtd.kill()
        holder = libvirtd.start()
        # The connection still looks alive (the client has not noticed): the real call fails, and is made again.
        assert second.isAlive()
        # The default host: 3 GiB, and its one domain `test` runs with 2 GiB.
        assert hypervisor.host_memory() == HostMemory(3072, 3072 - 2048)
        assert hypervisor.connection() is not second
    finally:
        hypervisor.close()
        try:
            holder.close()
        except libvirt.libvirtError:
            pass
