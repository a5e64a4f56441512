"""The libvirt adapter: the one place pvcd talks to the hypervisor.

The URI comes from the configuration: `qemu:///system` on real hosts; libvirt's
test driver in tests, either in-process (`test:///PATH/host.xml`, a host private
to the connection) or served by a libvirtd of its own as the local cluster does
(`test+unix:///PATH/host.xml?socket=...`), so that its VMs outlive pvcd as a
real host's do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import libvirt

from pvcd.cluster.values import DomainFigures, HostMemory

# libvirt prints every error to stderr by default; pvcd reports errors itself.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

MIB = 1024 * 1024

T = TypeVar("T")


def is_test_driver(uri: str) -> bool:
    """libvirt's test driver, in-process (`test:`) or through a daemon (`test+unix:`, `test+tcp:`)."""
    return uri.split(":", 1)[0].split("+", 1)[0] == "test"


class HypervisorError(Exception):
    """A libvirt call failed; the message names the URI and libvirt's reason."""


class Hypervisor:
    """A lazily (re)opened libvirt connection shared by the daemon's threads.

    The figures a keepalive carries (`running_domains`, `host_memory`) cost a
    bounded number of libvirt calls however many VMs run: one bulk listing with
    the figures of every running domain, plus, on the test driver only, one
    call per domain started since the last listing (see `running_domains`).
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        # The test driver's figures of running domains, by (UUID, domain ID):
        # a domain's ID is new at each start, so an entry is one run of one domain.
        self._figures: dict[tuple[str, int], DomainFigures] = {}
        # One listing at a time: the keepalive's two collectors list together,
        # and after a burst of starts the second must not ask again about each
        # domain the first is asking about.
        self._listing_lock = threading.Lock()

    @property
    def simulated(self) -> bool:
        return is_test_driver(self.uri)

    def connection(self) -> libvirt.virConnect:
        """The open connection, reopened if libvirt found it broken.

        `isAlive` asks the client library, not libvirtd (no round trip: ~0.4 µs
        over `test+unix:`, against ~70 µs for any real call), and turns false
        once a call has failed on a broken connection. So a dead libvirtd shows
        as the failure of a real call, and the next caller gets a fresh
        connection; the hypervisor's own calls retry once at once (`_call`).
        """
        with self._lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except libvirt.libvirtError:
                    pass
                self._close_locked()
            try:
                self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                raise HypervisorError(f"cannot connect to libvirt at {self.uri}: {exc}") from exc
            return self._conn

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except libvirt.libvirtError:
                pass
            self._conn = None

    def _call(self, doing: str, call: Callable[[libvirt.virConnect], T]) -> T:
        """`call` on the connection; once more on a fresh one if the connection broke under it
        (libvirtd restarted), so a restarted libvirtd costs no keepalive its figures."""
        conn = self.connection()
        try:
            return call(conn)
        except libvirt.libvirtError as exc:
            if _alive(conn):
                raise HypervisorError(f"cannot {doing} at {self.uri}: {exc}") from exc
        try:
            return call(self.connection())
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"cannot {doing} at {self.uri}: {exc}") from exc

    def running_domains(self) -> list[DomainFigures]:
        """Name, UUID, current memory and vCPUs of every running domain, by name.

        One bulk call (`getAllDomainStats`, balloon and vCPU groups, running
        domains only, without waiting on a busy domain): `balloon.current` and
        `vcpu.current` are what `virDomainGetInfo` reports as the domain's
        memory and vCPUs. The test driver answers these groups with nothing, so
        a domain without them is asked with `info()` once per run (its figures
        cannot change while it runs on the test driver unless someone resizes it
        live, which pvcd never does) and remembered until it stops: a listing
        costs one call plus one per domain started since the last.
        """
        return sorted(self._call("list domains", self._running_figures), key=lambda d: d.name)

    def _running_figures(self, conn: libvirt.virConnect) -> list[DomainFigures]:
        with self._listing_lock:
            return self._list_running(conn)

    def _list_running(self, conn: libvirt.virConnect) -> list[DomainFigures]:
        flags = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE | libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_NOWAIT
        listing = conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_VCPU, flags)
        known = self._figures
        figures: list[DomainFigures] = []
        asked: dict[tuple[str, int], DomainFigures] = {}
        for domain, stats in listing:
            uuid = domain.UUIDString()
            if "balloon.current" in stats and "vcpu.current" in stats:
                figures.append(
                    DomainFigures(domain.name(), uuid, stats["balloon.current"] // 1024, stats["vcpu.current"])
                )
                continue
            key = (uuid, domain.ID())
            figure = known.get(key)
            if figure is None:
                try:
                    _state, _max_kib, current_kib, vcpus, _cpu_time = domain.info()
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                        continue  # undefined since the listing: it no longer runs
                    raise
                figure = DomainFigures(domain.name(), uuid, current_kib // 1024, vcpus)
            asked[key] = figure
            figures.append(figure)
        # Only domains running now are remembered: no more entries than running domains.
        self._figures = asked
        return figures

    def host_memory(self) -> HostMemory:
        """Total and free host memory.

        The test driver reports no free memory of its own, so its simulated host
        is modelled as a machine whose only consumers are its running VMs (their
        figures as `running_domains` reads them, at the same cost).
        """

        def read(conn: libvirt.virConnect) -> HostMemory:
            total_mib = conn.getInfo()[1]
            if self.simulated:
                allocated = sum(d.memory_mib for d in self._running_figures(conn))
                return HostMemory(total_mib, max(total_mib - allocated, 0))
            return HostMemory(total_mib, conn.getFreeMemory() // MIB)

        return self._call("read host memory", read)


def _alive(conn: libvirt.virConnect) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False
