"""Client networks in ZooKeeper: reads, and every write as one version-checked transaction.

The rules about *what* may be written live in `pvcd.cluster.client_networks`;
this module reads what they need and makes each change atomic. The layout
(docs/zookeeper-schema.md):

    /pvc/networks                       null; its version counts the networks' creations, changes, removals
    /pvc/networks/VNI                   the network (`ClientNetwork.to_json`)
    /pvc/networks/VNI/reservations      null; its version counts the changes of the reservations
    /pvc/networks/VNI/reservations/MAC  a reservation (`Reservation.to_json`)
    /pvc/networks/VNI/leases            null; its version counts the changes of the leases
    /pvc/networks/VNI/leases/MAC        a lease (`Lease.to_json`)

Why the counters: a rule that spans several znodes (no two networks overlap,
no two reservations share an address, a reservation clashes with no lease, a
changed DHCP range keeps every reservation) is checked on what was read, and
the write is a transaction that sets the parent's value with the version read.
Whoever changed the set of children meanwhile set it too, so the write is
refused (`VersionConflict`) and tried again on a fresh read: two operators,
or an operator and the DHCP lease script, can never slip a clash in between
the check and the write. ZooKeeper's own child version (`cversion`) cannot be
checked in a transaction, hence the explicit counters.

A damaged record read by a list (not JSON, or not a valid network,
reservation or lease) is skipped with a one-line warning naming its path, so
one bad value never hides the others.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from pvcd.cluster.client_networks import (
    ClientNetwork,
    InvalidNetwork,
    Lease,
    Reservation,
    check_among,
    check_mac,
    check_reservation,
    check_reservations_kept,
    networks_of_domain,
    vni_named,
)
from pvcd.zk import schema
from pvcd.zk.base import AlreadyExists, NotFound, Store, StoreError, Unreadable, VersionConflict, readable

log = logging.getLogger(__name__)

ATTEMPTS = 5
"""Fresh reads and tries of one write refused because someone else changed what it checked; each refusal means
another write succeeded, so a few are plenty."""


class UnknownNetwork(InvalidNetwork):
    """No client network has this VNI."""

    def __init__(self, vni: int) -> None:
        super().__init__(f"no client network {vni} (see 'pvc network list')")
        self.vni = vni


class NetworkInUse(InvalidNetwork):
    """A VM's interface is plugged into the network's bridge."""


class Contended(StoreError):
    """A write was refused by concurrent changes on every attempt."""


@dataclass(frozen=True)
class NetworkView:
    """A network as read, with the version its next write checks."""

    network: ClientNetwork
    version: int

    @property
    def vni(self) -> int:
        return self.network.vni


class _Keyed(Protocol):
    @property
    def mac(self) -> str: ...


K = TypeVar("K", bound=_Keyed)


def ensure_paths(store: Store) -> None:
    store.ensure_schema()
    store.ensure_path(schema.NETWORKS)


# -- reads ----------------------------------------------------------------------------


def _version(store: Store, path: str) -> int | None:
    """The version of `path` (also of a value that is not JSON), None when it does not exist."""
    try:
        found = store.get(path)
    except Unreadable as exc:
        return exc.version
    return found.version if found is not None else None


def _networks(store: Store) -> tuple[int | None, dict[int, NetworkView]]:
    """The version of /pvc/networks, read first, and every readable network.

    The version comes first so that a network created after the children were
    listed makes the caller's write, which sets /pvc/networks at that version,
    fail rather than miss it."""
    counter = _version(store, schema.NETWORKS)
    names = store.children(schema.NETWORKS)
    found: dict[int, NetworkView] = {}
    paths = [f"{schema.NETWORKS}/{name}" for name in names]
    for name, path, answer in zip(names, paths, store.get_many(paths), strict=True):
        vni = vni_named(name)
        try:
            if vni is None:
                raise InvalidNetwork(f"{name[:30]!r} is not a VNI")
            value = readable(answer)
            if value is None:
                continue
            network = ClientNetwork.from_json(value.value)
            if network.vni != vni:
                raise InvalidNetwork(f"its record says vni {network.vni}")
        except (InvalidNetwork, Unreadable) as exc:
            log.warning("Client network %s skipped, its record is damaged: %s", path, exc)
            continue
        found[vni] = NetworkView(network, value.version)
    return counter, found


def read_networks(store: Store) -> dict[int, NetworkView]:
    """Every client network by VNI (damaged records skipped, each with a warning)."""
    return _networks(store)[1]


def read_network(store: Store, vni: int) -> NetworkView | None:
    """One network, None when there is none; InvalidNetwork naming the damage when its record cannot be used."""
    try:
        found = store.get(schema.network(vni))
    except Unreadable as exc:
        raise InvalidNetwork(f"network {vni} has a damaged record: {exc}") from exc
    if found is None:
        return None
    try:
        network = ClientNetwork.from_json(found.value)
    except InvalidNetwork as exc:
        raise InvalidNetwork(f"network {vni} has a damaged record: {exc}") from exc
    if network.vni != vni:
        raise InvalidNetwork(f"network {vni} has a damaged record: it says vni {network.vni}")
    return NetworkView(network, found.version)


def _existing(store: Store, vni: int) -> NetworkView:
    view = read_network(store, vni)
    if view is None:
        raise UnknownNetwork(vni)
    return view


def _records(
    store: Store, parent: str, parse: Callable[[Any], K], what: str
) -> tuple[int | None, dict[str, tuple[K, int]]]:
    """The version of `parent` (read first, see `_networks`) and its readable children by MAC, with their
    versions; (None, {}) when `parent` does not exist."""
    counter = _version(store, parent)
    if counter is None:
        return None, {}
    names = store.children(parent)
    found: dict[str, tuple[K, int]] = {}
    for name, answer in zip(names, store.get_many([f"{parent}/{name}" for name in names]), strict=True):
        try:
            value = readable(answer)
            if value is None:
                continue
            record = parse(value.value)
            if record.mac != name:
                raise InvalidNetwork(f"it names MAC {record.mac}")
        except (InvalidNetwork, Unreadable) as exc:
            log.warning("DHCP %s %s/%s skipped, its record is damaged: %s", what, parent, name, exc)
            continue
        found[name] = (record, value.version)
    return counter, found


def _reservations(store: Store, vni: int) -> tuple[int | None, dict[str, tuple[Reservation, int]]]:
    return _records(store, schema.network_reservations(vni), Reservation.from_json, "reservation")


def _leases(store: Store, vni: int) -> tuple[int | None, dict[str, tuple[Lease, int]]]:
    return _records(store, schema.network_leases(vni), Lease.from_json, "lease")


def list_reservations(store: Store, vni: int) -> dict[str, Reservation]:
    """The network's reservations by MAC ({} for a network without any, or none at all)."""
    return {mac: record for mac, (record, _) in _reservations(store, vni)[1].items()}


def list_leases(store: Store, vni: int) -> dict[str, Lease]:
    """The network's leases by MAC, as the DHCP server last recorded them (expired ones until dropped)."""
    return {mac: record for mac, (record, _) in _leases(store, vni)[1].items()}


def users(store: Store, vni: int) -> list[str]:
    """The VMs whose domain XML plugs an interface into network `vni`'s bridge, sorted.

    A VM whose record cannot be read is not counted (`vms.read_vms` leaves it out, and no node can start it)."""
    from pvcd.zk import vms

    found = []
    views, _ = vms.read_vms(store)
    for name, view in views.items():
        try:
            if vni in networks_of_domain(view.record.xml):
                found.append(name)
        except InvalidNetwork as exc:
            log.warning("VM %s: its domain XML cannot be read for its networks: %s", name, exc)
    return sorted(found)


# -- networks -------------------------------------------------------------------------


def _contended(what: str) -> Contended:
    return Contended(f"{what}: refused {ATTEMPTS} times by concurrent changes; try again")


def create(store: Store, network: ClientNetwork) -> NetworkView:
    """Store a new network with empty reservations and leases, in one transaction.

    Refused (InvalidNetwork) when its vni is taken, also by a damaged record
    or by a network created meanwhile, or when a subnet overlaps another
    network's (`check_among`)."""
    ensure_paths(store)
    exists = f"network {network.vni} exists already; change it with 'pvc network modify'"
    for _ in range(ATTEMPTS):
        counter, current = _networks(store)
        check_among(network, {vni: view.network for vni, view in current.items()})
        try:
            (
                store.transaction()
                .set(schema.NETWORKS, None, -1 if counter is None else counter)
                .create(schema.network(network.vni), network.to_json())
                .create(schema.network_reservations(network.vni), None)
                .create(schema.network_leases(network.vni), None)
                .commit()
            )
        except AlreadyExists as exc:
            raise InvalidNetwork(exists) from exc
        except VersionConflict:
            continue
        return NetworkView(network, 0)
    raise _contended(f"adding network {network.vni}")


def modify(store: Store, vni: int, change: Callable[[ClientNetwork], ClientNetwork]) -> NetworkView:
    """Replace network `vni` with `change(network)` (which validates it), checked against the other networks
    and its own reservations; one transaction, checked against the version read. Nothing is written when the
    change changes nothing."""
    for _ in range(ATTEMPTS):
        counter, others = _networks(store)
        before = _existing(store, vni)
        after = change(before.network)
        if after == before.network:
            return before
        check_among(after, {other: view.network for other, view in others.items()}, replacing=True)
        reservations_version, reservations = _reservations(store, vni)
        check_reservations_kept(after, {mac: record for mac, (record, _) in reservations.items()})
        txn = (
            store.transaction()
            .set(schema.NETWORKS, None, -1 if counter is None else counter)
            .set(schema.network(vni), after.to_json(), before.version)
        )
        if reservations_version is not None:
            txn.check(schema.network_reservations(vni), reservations_version)
        try:
            txn.commit()
        except VersionConflict:
            continue
        return NetworkView(after, before.version + 1)
    raise _contended(f"modifying network {vni}")


def _subtree(store: Store, path: str) -> list[str]:
    """Every path under `path`, children before their parents (the order a transaction deletes them in)."""
    found: list[str] = []
    for child in store.children(path):
        found.extend(_subtree(store, f"{path}/{child}"))
        found.append(f"{path}/{child}")
    return found


@dataclass(frozen=True)
class Removed:
    """What `remove` deleted with the network."""

    vni: int
    reservations: int
    leases: int


def remove(store: Store, vni: int) -> Removed:
    """Delete network `vni` with its reservations and leases in one transaction.

    Refused (NetworkInUse) while a VM's interface is plugged into its bridge. A
    damaged record is removed all the same (its VNI is all the check needs),
    so an operator can always clear it. A lease or reservation written
    meanwhile changes a counter the transaction checks, so nothing is left
    behind under a network that no longer exists."""
    for _ in range(ATTEMPTS):
        counter = _version(store, schema.NETWORKS)
        version = _version(store, schema.network(vni))
        if version is None:
            raise UnknownNetwork(vni)
        using = users(store, vni)
        if using:
            more = f" and {len(using) - 1} more" if len(using) > 1 else ""
            raise NetworkInUse(
                f"network {vni} is used by VM {using[0]}{more} (an interface on bridge vmbr{vni}):"
                " remove or redefine the VMs first"
            )
        counts: dict[str, int] = {}
        txn = store.transaction().set(schema.NETWORKS, None, -1 if counter is None else counter)
        for parent in (schema.network_reservations(vni), schema.network_leases(vni)):
            parent_version = _version(store, parent)
            if parent_version is not None:
                txn.check(parent, parent_version)
            counts[parent] = len(store.children(parent))
        for path in _subtree(store, schema.network(vni)):
            txn.delete(path)
        txn.delete(schema.network(vni), version)
        try:
            txn.commit()
        except (VersionConflict, NotFound):
            continue
        return Removed(vni, counts[schema.network_reservations(vni)], counts[schema.network_leases(vni)])
    raise _contended(f"removing network {vni}")


# -- reservations ---------------------------------------------------------------------


def add_reservation(store: Store, vni: int, reservation: Reservation) -> Reservation:
    """Reserve an address for a MAC, checked (`check_reservation`) against the network and its current
    reservations and leases; the transaction checks all three were not changed meanwhile."""
    for _ in range(ATTEMPTS):
        view = _existing(store, vni)
        reservations_version, reservations = _reservations(store, vni)
        leases_version, leases = _leases(store, vni)
        if reservations_version is None or leases_version is None:
            raise InvalidNetwork(
                f"network {vni} has a damaged record (no reservations or leases): remove it and add it again"
            )
        check_reservation(
            view.network,
            reservation,
            {mac: record for mac, (record, _) in reservations.items()},
            {mac: record for mac, (record, _) in leases.items()},
        )
        try:
            (
                store.transaction()
                .check(schema.network(vni), view.version)
                .set(schema.network_reservations(vni), None, reservations_version)
                .check(schema.network_leases(vni), leases_version)
                .create(schema.network_reservation(vni, reservation.mac), reservation.to_json())
                .commit()
            )
        except AlreadyExists as exc:
            # Only a damaged record (skipped by the read) can be there: a valid one fails the check above.
            raise InvalidNetwork(
                f"{reservation.mac} already has a reservation on network {vni} (a damaged one: remove it)"
            ) from exc
        except VersionConflict:
            continue
        return reservation
    raise _contended(f"reserving {reservation.ipv4} on network {vni}")


def remove_reservation(store: Store, vni: int, mac: str) -> None:
    """Delete the reservation of `mac` (a damaged one too)."""
    mac = check_mac(mac)
    for _ in range(ATTEMPTS):
        if _version(store, schema.network(vni)) is None:
            raise UnknownNetwork(vni)
        counter = _version(store, schema.network_reservations(vni))
        version = _version(store, schema.network_reservation(vni, mac))
        if counter is None or version is None:
            raise InvalidNetwork(f"{mac} has no reservation on network {vni}")
        try:
            (
                store.transaction()
                .set(schema.network_reservations(vni), None, counter)
                .delete(schema.network_reservation(vni, mac), version)
                .commit()
            )
        except (VersionConflict, NotFound):
            continue
        return
    raise _contended(f"removing the reservation of {mac} on network {vni}")


# -- leases ---------------------------------------------------------------------------


def _lease_write(store: Store, vni: int, what: str, write: Callable[[int, dict[str, tuple[Lease, int]]], bool]) -> bool:
    """Run `write(counter, leases)` on fresh reads until its transaction is not refused by a concurrent change;
    its answer (whether it wrote) is returned."""
    for _ in range(ATTEMPTS):
        counter, leases = _leases(store, vni)
        if counter is None:
            raise UnknownNetwork(vni)
        try:
            return write(counter, leases)
        except (VersionConflict, AlreadyExists, NotFound):
            continue
    raise _contended(f"{what} on network {vni}")


def record_lease(store: Store, vni: int, lease: Lease) -> bool:
    """Create or replace the lease of `lease.mac` (the DHCP server's lease script); False when it was
    recorded already as it is (a server that restarts reports every lease again).

    `UnknownNetwork` when the network's leases parent does not exist: a lease script running late never brings
    a removed network's path back. Like every function here it takes no timeout (the lease script bounds its
    calls itself, `pvcd.network.lease_script.within`)."""
    path = schema.network_lease(vni, lease.mac)

    def write(counter: int, leases: dict[str, tuple[Lease, int]]) -> bool:
        txn = store.transaction().set(schema.network_leases(vni), None, counter)
        if lease.mac in leases:
            known, version = leases[lease.mac]
            if known == lease:
                return False
            txn.set(path, lease.to_json(), version)
        else:
            damaged = _version(store, path)
            if damaged is None:
                txn.create(path, lease.to_json())
            else:
                txn.set(path, lease.to_json(), damaged)
        txn.commit()
        return True

    return _lease_write(store, vni, f"recording the lease of {lease.mac}", write)


def delete_lease(store: Store, vni: int, mac: str, ipv4: ipaddress.IPv4Address | None = None) -> bool:
    """Delete the lease of `mac` (a damaged one too); False when there is none.

    With `ipv4`, only while the lease is still for that address: dnsmasq may report a client's move to a new
    address as the new lease before the old one's release, which must not delete the new lease.
    `UnknownNetwork` when the network's leases parent does not exist."""
    mac = check_mac(mac)
    path = schema.network_lease(vni, mac)

    def write(counter: int, leases: dict[str, tuple[Lease, int]]) -> bool:
        version = _version(store, path)
        if version is None:
            return False
        if ipv4 is not None and mac in leases and leases[mac][0].ipv4 != ipv4:
            return False
        store.transaction().set(schema.network_leases(vni), None, counter).delete(path, version).commit()
        return True

    return _lease_write(store, vni, f"deleting the lease of {mac}", write)


def drop_expired_leases(store: Store, vni: int, now: int) -> list[Lease]:
    """Delete the leases that expired at `now` (seconds since the epoch) in one transaction, each checked
    against the version read, so a lease renewed meanwhile stays; the leases dropped. An expiry of 0 is
    dnsmasq's infinite lease, which never expires."""
    dropped: list[Lease] = []

    def write(counter: int, leases: dict[str, tuple[Lease, int]]) -> bool:
        expired = [(lease, version) for lease, version in leases.values() if 0 < lease.expiry <= now]
        dropped[:] = [lease for lease, _ in expired]
        if not expired:
            return False
        txn = store.transaction().set(schema.network_leases(vni), None, counter)
        for lease, version in expired:
            txn.delete(schema.network_lease(vni, lease.mac), version)
        txn.commit()
        return True

    _lease_write(store, vni, "dropping expired leases", write)
    return sorted(dropped, key=lambda lease: lease.mac)
