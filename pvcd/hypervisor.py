"""The libvirt adapter: the one place pvcd talks to the hypervisor.

The URI comes from the configuration: `qemu:///system` on real hosts; libvirt's
test driver in tests, either in-process (`test:///PATH/host.xml`, a host private
to the connection) or served by a libvirtd of its own as the local cluster does
(`test+unix:///PATH/host.xml?socket=...`), so that its VMs outlive pvcd as a
real host's do.
"""

from __future__ import annotations

import threading

import libvirt

from pvcd.cluster.values import DomainFigures, HostMemory

# libvirt prints every error to stderr by default; pvcd reports errors itself.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

MIB = 1024 * 1024


def is_test_driver(uri: str) -> bool:
    """libvirt's test driver, in-process (`test:`) or through a daemon (`test+unix:`, `test+tcp:`)."""
    return uri.split(":", 1)[0].split("+", 1)[0] == "test"


class HypervisorError(Exception):
    """A libvirt call failed; the message names the URI and libvirt's reason."""


class Hypervisor:
    """A lazily (re)opened libvirt connection shared by the daemon's threads."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()

    @property
    def simulated(self) -> bool:
        return is_test_driver(self.uri)

    def connection(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except libvirt.libvirtError:
                    pass
            try:
                self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                raise HypervisorError(f"cannot connect to libvirt at {self.uri}: {exc}") from exc
            return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.close()
                except libvirt.libvirtError:
                    pass
                self._conn = None

    def running_domains(self) -> list[DomainFigures]:
        conn = self.connection()
        try:
            domains = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
            figures = []
            for domain in domains:
                _state, _max_kib, current_kib, vcpus, _cpu_time = domain.info()
                figures.append(DomainFigures(domain.name(), domain.UUIDString(), current_kib // 1024, vcpus))
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"cannot list domains at {self.uri}: {exc}") from exc
        return sorted(figures, key=lambda d: d.name)

    def host_memory(self) -> HostMemory:
        """Total and free host memory.

        The test driver reports no free memory of its own, so its simulated host
        is modelled as a machine whose only consumers are its running VMs.
        """
        conn = self.connection()
        try:
            total_mib = conn.getInfo()[1]
            if self.simulated:
                allocated = sum(d.memory_mib for d in self.running_domains())
                return HostMemory(total_mib, max(total_mib - allocated, 0))
            return HostMemory(total_mib, conn.getFreeMemory() // MIB)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"cannot read host memory at {self.uri}: {exc}") from exc
