"""Domain operations on this node's libvirt host: the reconciler's hands.

A thin adapter over `Hypervisor.connection()`. Every libvirt failure becomes a
`DomainError` whose message names the VM, the host and libvirt's reason, so
the reconciler can put it straight into the VM's `fail` reason.

A VM is defined in libvirt only while it runs on this node (plus the moment
around a start or stop): ZooKeeper holds the definition, and a domain left
defined on a node the VM has left would only confuse operators.
"""

from __future__ import annotations

import threading
import time

import libvirt

from pvcd.hypervisor import Hypervisor, HypervisorError
from pvcd.vm.reconcile import DomainInfo

SHUTDOWN_POLL = 0.5


class DomainError(Exception):
    """A domain operation failed; the message is fit for an operator."""


class Domains:
    """The domains of one libvirt host."""

    def __init__(self, hypervisor: Hypervisor) -> None:
        self.hypervisor = hypervisor

    @property
    def uri(self) -> str:
        return self.hypervisor.uri

    def _conn(self) -> libvirt.virConnect:
        try:
            return self.hypervisor.connection()
        except HypervisorError as exc:
            raise DomainError(str(exc)) from exc

    def _error(self, doing: str, name: str, exc: libvirt.libvirtError) -> DomainError:
        return DomainError(f"{doing} VM {name} at {self.uri} failed: {exc.get_error_message() or exc}")

    def list(self) -> dict[str, DomainInfo]:
        """Every domain libvirt knows on this host, running or only defined.

        Two listings (every domain, then the running ones) and one look per
        domain that is not running, however many run: a domain's name and UUID
        come with the listing. Each domain is as libvirt had it at some moment
        during the call, as when each was asked in turn; one undefined
        meanwhile is left out.
        """
        conn = self._conn()
        try:
            every = conn.listAllDomains(0)
            running = {domain.UUIDString() for domain in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)}
        except libvirt.libvirtError as exc:
            raise DomainError(f"listing domains at {self.uri} failed: {exc.get_error_message() or exc}") from exc
        found: dict[str, DomainInfo] = {}
        for domain in every:
            uuid = domain.UUIDString()
            if uuid in running:
                found[domain.name()] = DomainInfo(name=domain.name(), uuid=uuid, active=True)
                continue
            try:
                info = _info(domain)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    continue  # undefined since the listing
                raise DomainError(f"listing domains at {self.uri} failed: {exc.get_error_message() or exc}") from exc
            found[info.name] = info
        return found

    def info(self, name: str) -> DomainInfo | None:
        """One domain as `list` shows it, or None."""
        domain = self.lookup(name)
        if domain is None:
            return None
        try:
            return _info(domain)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise self._error("inspecting", name, exc) from exc

    def lookup(self, name: str) -> libvirt.virDomain | None:
        try:
            return self._conn().lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise self._error("looking up", name, exc) from exc

    def is_running(self, name: str) -> bool:
        domain = self.lookup(name)
        return domain is not None and self._active(domain, name)

    def _active(self, domain: libvirt.virDomain, name: str) -> bool:
        """Whether the domain runs; a domain that vanished meanwhile does not."""
        try:
            return bool(domain.isActive())
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return False
            raise self._error("checking", name, exc) from exc

    def free_memory_mib(self) -> int:
        try:
            return self.hypervisor.host_memory().free_mib
        except HypervisorError as exc:
            raise DomainError(str(exc)) from exc

    def start(self, name: str, xml: str) -> None:
        """Define the domain from `xml` (replacing an inactive definition) and start it.

        A definition that cannot start is removed again, so a failed start
        leaves nothing behind.
        """
        existing = self.lookup(name)
        if existing is not None and self._active(existing, name):
            return
        if existing is not None:
            self._undefine(existing, name)
        try:
            domain = self._conn().defineXML(xml)
        except libvirt.libvirtError as exc:
            raise self._error("defining", name, exc) from exc
        try:
            domain.create()
        except libvirt.libvirtError as exc:
            error = self._error("starting", name, exc)
            try:
                self._undefine(domain, name)
            except DomainError:
                pass
            raise error from exc

    def shutdown(self, name: str, timeout: float, stop: threading.Event | None = None) -> str:
        """Ask the guest to shut down; destroy it if it has not within `timeout` seconds.

        Returns what happened, for the log. `stop` (the daemon stopping) cuts
        the wait short and destroys: a node going away must not leave it running.
        """
        domain = self.lookup(name)
        if domain is None or not self._active(domain, name):
            self.undefine(name)
            return "was not running"
        try:
            domain.shutdown()
        except libvirt.libvirtError as exc:
            if self._active(domain, name):
                self.destroy(name)
                self.undefine(name)
                return f"destroyed: the guest refused to shut down ({exc.get_error_message()})"
        deadline = time.monotonic() + timeout
        while self._active(domain, name):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (stop is not None and stop.is_set()):
                self.destroy(name)
                self.undefine(name)
                return f"destroyed: still running after the {timeout:g}s shutdown timeout"
            if stop is not None:
                stop.wait(min(SHUTDOWN_POLL, remaining))
            else:
                time.sleep(min(SHUTDOWN_POLL, remaining))
        self.undefine(name)
        return "shut down"

    def destroy(self, name: str) -> None:
        """Stop at once (pull the plug); no-op if not running."""
        domain = self.lookup(name)
        if domain is None:
            return
        try:
            if self._active(domain, name):
                domain.destroy()
        except libvirt.libvirtError as exc:
            if self._active(domain, name):
                raise self._error("destroying", name, exc) from exc

    def undefine(self, name: str) -> None:
        """Remove the definition of a stopped domain; no-op if there is none."""
        domain = self.lookup(name)
        if domain is not None:
            self._undefine(domain, name)

    def _undefine(self, domain: libvirt.virDomain, name: str) -> None:
        try:
            if not domain.isPersistent():
                return
            try:
                # A UEFI guest's NVRAM holds its boot settings: keep it for its next start here.
                domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_KEEP_NVRAM)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_INVALID_ARG:
                    raise
                domain.undefine()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return
            raise self._error("undefining", name, exc) from exc


def _info(domain: libvirt.virDomain) -> DomainInfo:
    state, reason = domain.state()
    return DomainInfo(
        name=domain.name(),
        uuid=domain.UUIDString(),
        active=bool(domain.isActive()),
        guest_shutdown=state == libvirt.VIR_DOMAIN_SHUTOFF and reason == libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN,
    )
