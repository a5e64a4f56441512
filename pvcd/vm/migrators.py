"""Moving a running VM off this node: real live migration, and the test double.

The source node calls a `Migrator` while it holds the VM; whatever happens,
the reconciler releases the VM to the target only once it no longer runs
here. Which migrator a node uses follows from its libvirt URI:

* `LiveMigration` (every real hypervisor): libvirt's peer-to-peer live
  migration to the target's cluster-network address. When it returns, the VM
  runs on the target and is gone from here.
* `SimulatedMigration` (only for `test:` URIs): libvirt's test driver refuses
  every migration, so in the local cluster and the test suite this TEST DOUBLE
  destroys the domain here and the target starts it afresh from the XML in
  ZooKeeper. It proves the handshake and the placement, not libvirt's
  migration; the real path is exercised between two real libvirtd.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any, Protocol

import libvirt

from pvcd.cluster.vm_records import JobFigures
from pvcd.config import Config
from pvcd.hypervisor import is_test_driver
from pvcd.vm.domains import DomainError, Domains

log = logging.getLogger(__name__)

DEFAULT_MIGRATION_TIMEOUT = 300.0
LIVE_FLAGS = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PEER2PEER
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
)


class MigrationFailed(Exception):
    """The VM could not be migrated; it still runs here (the caller may fall back to shutdown)."""


class Migrator(Protocol):
    how: str
    """What the release record says the source did."""
    leaves_running: bool
    """Whether the VM runs on the target once `migrate` returns."""

    def migrate(self, domains: Domains, vm: str, target_address: str) -> JobFigures | None:
        """Move the VM; what the hypervisor reported about the migration, if anything."""
        ...


class LiveMigration:
    """libvirt live migration, peer to peer, straight to the target's libvirtd.

    `migrateToURI3` blocks for the whole migration, so it runs in its own
    thread; if it outlasts `timeout`, the job is aborted and the VM stays here.
    """

    how = "live"
    leaves_running = True

    def __init__(
        self, timeout: float = DEFAULT_MIGRATION_TIMEOUT, uri_template: str = "qemu+tcp://{address}/system"
    ) -> None:
        self.timeout = timeout
        self.uri_template = uri_template

    def destination(self, target_address: str) -> str:
        return self.uri_template.format(address=target_address)

    def migrate(self, domains: Domains, vm: str, target_address: str) -> JobFigures | None:
        domain = domains.lookup(vm)
        if domain is None:
            raise MigrationFailed(f"VM {vm} is not defined at {domains.uri}")
        uri = self.destination(target_address)
        outcome: dict[str, BaseException] = {}

        def run() -> None:
            try:
                domain.migrateToURI3(uri, {}, LIVE_FLAGS)
            except BaseException as exc:  # handed to the waiting thread
                outcome["error"] = exc

        worker = threading.Thread(target=run, name=f"migrate-{vm}", daemon=True)
        worker.start()
        worker.join(self.timeout)
        if worker.is_alive():
            try:
                domain.abortJob()
            except libvirt.libvirtError as exc:
                log.warning("Aborting the live migration of VM %s to %s failed: %s", vm, uri, exc)
            worker.join(30)
            raise MigrationFailed(
                f"live migration of VM {vm} to {uri} did not finish within {self.timeout:g}s; aborted"
            )
        error = outcome.get("error")
        if isinstance(error, libvirt.libvirtError):
            raise MigrationFailed(f"live migration of VM {vm} to {uri} failed: {error.get_error_message() or error}")
        if error is not None:
            raise MigrationFailed(f"live migration of VM {vm} to {uri} failed: {error!r}")
        return completed_job(uri, vm)


def completed_job(uri: str, vm: str) -> JobFigures | None:
    """libvirt's statistics of the migration that just brought `vm` to the libvirtd at `uri`.

    Read on the destination: the source's domain is gone with
    UNDEFINE_SOURCE. libvirt hands completed statistics out once unless asked
    to keep them. The migration has succeeded whatever happens here, so a
    failure only costs the figures.
    """
    try:
        conn = libvirt.open(uri)
        try:
            stats = conn.lookupByName(vm).jobStats(
                libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED
            )
        finally:
            conn.close()
    except libvirt.libvirtError as exc:
        log.warning("VM %s live-migrated to %s, but its migration statistics are unreadable: %s", vm, uri, exc)
        return None

    def figure(key: str) -> int | None:
        value = stats.get(key)
        return int(value) if isinstance(value, int) and value >= 0 else None

    return JobFigures(
        time_ms=figure(libvirt.VIR_DOMAIN_JOB_TIME_ELAPSED),
        downtime_ms=figure(libvirt.VIR_DOMAIN_JOB_DOWNTIME),
        data_bytes=figure(libvirt.VIR_DOMAIN_JOB_DATA_PROCESSED),
    )


class SimulatedMigration:
    """TEST DOUBLE for libvirt's test driver, which cannot migrate.

    Destroys and undefines the domain here; the target node then starts the
    VM from its ZooKeeper XML, as after a shutdown-migrate. The VM does not
    keep its memory, but the ordering is exactly the real one: gone here
    before it starts there.
    """

    how = "simulated"
    leaves_running = False

    def migrate(self, domains: Domains, vm: str, target_address: str) -> JobFigures | None:
        try:
            domains.destroy(vm)
            domains.undefine(vm)
        except DomainError as exc:
            raise MigrationFailed(f"simulated migration of VM {vm}: {exc}") from exc
        return None


def migrator_for(uri: str, timeout: float = DEFAULT_MIGRATION_TIMEOUT) -> Migrator:
    """The migrator for a libvirt URI: the test double only for libvirt's test driver."""
    if is_test_driver(uri):
        log.info(
            "libvirt URI %s is libvirt's test driver, which cannot migrate: live migrations from this node "
            "use the SimulatedMigration test double (destroy here, start from the ZooKeeper XML on the target)",
            uri,
        )
        return SimulatedMigration()
    return LiveMigration(timeout)


def node_addresses(config: Config) -> dict[str, str]:
    """The node's address on each cluster network, for its registration record.

    Other nodes live-migrate to the `cluster` address; without networking
    configured, the node name is all they have (it must resolve).
    """
    addresses: dict[str, str] = {}
    networking = config.networking if config.functions.enable_networking else None
    if networking is not None:
        for network in ("upstream", "cluster", "storage"):
            address = getattr(networking, network).address
            if address is not None:
                addresses[network] = str(address.ip)
    addresses.setdefault("cluster", config.node)
    return addresses


def migration_address(info: Mapping[str, Any], node: str) -> str:
    """Where to live-migrate to: the node's published cluster address, else its name."""
    addresses = info.get("addresses")
    if isinstance(addresses, Mapping) and isinstance(addresses.get("cluster"), str):
        return addresses["cluster"]
    return node
