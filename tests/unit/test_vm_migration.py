"""Migrator selection, node addresses, and LiveMigration's timeout handling.

The real live migration needs two real libvirtd with QEMU, which this suite
does not start; the timeout and error paths are checked here against a stand-in
domain object (said so below), and the integration tests run LiveMigration
against libvirt's test driver, which refuses it.
"""

from __future__ import annotations

import ipaddress
import threading
from types import SimpleNamespace

import libvirt
import pytest

from pvcd.vm.migrators import (
    LIVE_FLAGS,
    LiveMigration,
    MigrationFailed,
    SimulatedMigration,
    migration_address,
    migrator_for,
    node_addresses,
)


def test_test_driver_gets_the_double_and_real_hosts_the_real_thing():
    assert isinstance(migrator_for("test:///tmp/host.xml"), SimulatedMigration)
    real = migrator_for("qemu:///system", timeout=42)
    assert isinstance(real, LiveMigration) and real.timeout == 42
    assert real.destination("10.0.0.2") == "qemu+tcp://10.0.0.2/system"
    assert LIVE_FLAGS == (
        libvirt.VIR_MIGRATE_LIVE
        | libvirt.VIR_MIGRATE_PEER2PEER
        | libvirt.VIR_MIGRATE_PERSIST_DEST
        | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    )


def _network(address):
    return SimpleNamespace(address=ipaddress.IPv4Interface(address) if address else None)


def test_node_addresses():
    without = SimpleNamespace(node="hv1", functions=SimpleNamespace(enable_networking=False), networking=None)
    assert node_addresses(without) == {"cluster": "hv1"}
    networking = SimpleNamespace(
        upstream=_network("192.168.1.11/24"), cluster=_network("10.0.0.1/24"), storage=_network(None)
    )
    with_networks = SimpleNamespace(
        node="hv1", functions=SimpleNamespace(enable_networking=True), networking=networking
    )
    assert node_addresses(with_networks) == {"upstream": "192.168.1.11", "cluster": "10.0.0.1"}


def test_migration_address():
    assert migration_address({"addresses": {"cluster": "10.0.0.2"}}, "hv2") == "10.0.0.2"
    assert migration_address({}, "hv2") == "hv2"


class StandInDomain:
    """Stands in for a libvirt domain whose migration hangs or fails (no QEMU here)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.aborted = threading.Event()
        self.calls: list[tuple[str, dict, int]] = []

    def migrateToURI3(self, uri, params, flags):
        self.calls.append((uri, params, flags))
        if self.error is not None:
            raise self.error
        self.aborted.wait(10)
        raise libvirt.libvirtError("operation aborted: migration job: canceled by client")

    def abortJob(self):
        self.aborted.set()


class StandInDomains:
    uri = "qemu:///system"

    def __init__(self, domain) -> None:
        self.domain = domain

    def lookup(self, name):
        return self.domain


def test_live_migration_that_outlasts_its_timeout_is_aborted():
    domain = StandInDomain()
    with pytest.raises(MigrationFailed, match="did not finish within 0.2s; aborted"):
        LiveMigration(timeout=0.2).migrate(StandInDomains(domain), "vm1", "10.0.0.2")
    assert domain.aborted.is_set()
    assert domain.calls == [("qemu+tcp://10.0.0.2/system", {}, LIVE_FLAGS)]


def test_live_migration_error_names_the_vm_and_target():
    domain = StandInDomain(libvirt.libvirtError("unable to connect to server"))
    with pytest.raises(MigrationFailed, match="live migration of VM vm1 to qemu\\+tcp://hv2/system failed"):
        LiveMigration(timeout=5).migrate(StandInDomains(domain), "vm1", "hv2")
    with pytest.raises(MigrationFailed, match="not defined"):
        LiveMigration(timeout=5).migrate(StandInDomains(None), "vm1", "hv2")
