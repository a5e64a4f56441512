"""The DNS aggregator's records, and what to write to reach them (pure).

On the primary, PowerDNS answers for every managed client network's domain
and for the nodes' domain (the upstream network's `domain`), from the rows of
a PostgreSQL database that pvcd keeps in step with ZooKeeper. This module
says which rows there should be and how to get there from the rows there are;
`pvcd.network.dns` reads and writes the database and runs PowerDNS.

Each domain is one zone with an SOA and an NS record and an address record
per name:

- `HOSTNAME.DOMAIN` for every DHCP reservation and lease with a host name on a
  managed network with that domain;
- `NODE.NODESDOMAIN` for every node, at its upstream address;
- the name server's own name, when it falls in one of the zones, at the
  address PowerDNS listens on (the upstream floating IP), so the NS record
  resolves from the zone itself.

A name is claimed once per address family: the name server first, then the
nodes (infrastructure a client must not shadow), then reservations (an
operator's decision), then leases, the most recent lease first. So a client
that asks DHCP for a node's or a reserved host's name gets no record.

Names are stored as PowerDNS's SQL backends want them: lower case, without
the trailing dot. The SOA serial is the time in seconds (as PowerDNS's own
SOA-EDIT `EPOCH` would write it) and at least one more than before, so it
rises with every change even when two changes fall in the same second.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from pvcd.cluster.client_networks import ClientNetwork, Lease, NetworkType, Reservation

DEFAULT_TTL = 60
"""Seconds a resolver may keep an answer: leases come and go, so short."""
SOA_REFRESH = 10800
SOA_RETRY = 3600
SOA_EXPIRE = 604800
SERIAL_MODULUS = 2**32
"""SOA serials are 32-bit; time-based serials stay below this until 2106."""

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, order=True)
class Record:
    """One row of PowerDNS's `records` table, as pvcd writes it."""

    name: str
    type: str
    content: str
    ttl: int = DEFAULT_TTL


@dataclass(frozen=True)
class Soa:
    """A zone's SOA without its serial: the serial is the database's business (it only ever rises)."""

    primary: str
    hostmaster: str
    refresh: int = SOA_REFRESH
    retry: int = SOA_RETRY
    expire: int = SOA_EXPIRE
    minimum: int = DEFAULT_TTL
    """How long resolvers cache a "no such name": short, so a new lease is seen soon after an NXDOMAIN."""
    ttl: int = DEFAULT_TTL

    def content(self, serial: int) -> str:
        return f"{self.primary} {self.hostmaster} {serial} {self.refresh} {self.retry} {self.expire} {self.minimum}"

    def record(self, zone: str, serial: int) -> Record:
        return Record(zone, "SOA", self.content(serial), self.ttl)


def parse_soa(record: Record) -> tuple[Soa, int] | None:
    """The SOA and serial of a stored SOA row; None when the row is not one pvcd could have written."""
    parts = record.content.split()
    if record.type != "SOA" or len(parts) != 7:
        return None
    try:
        serial, refresh, retry, expire, minimum = (int(part) for part in parts[2:])
    except ValueError:
        return None
    return Soa(parts[0], parts[1], refresh, retry, expire, minimum, record.ttl), serial


@dataclass(frozen=True)
class Zone:
    """A zone as it should be: its SOA (without serial) and every other record."""

    name: str
    soa: Soa
    records: frozenset[Record]


@dataclass(frozen=True)
class NameServer:
    """How the zones name their server: `name` in the NS records and the SOA, `address` where
    PowerDNS listens (the upstream floating IP), published when `name` falls in a zone served."""

    name: str
    address: Address | None = None
    hostmaster: str | None = None
    """The SOA's mailbox in domain form; `hostmaster.ZONE` for each zone when None."""


@dataclass(frozen=True)
class NetworkHosts:
    """A client network with the addresses its DHCP handed out and reserved."""

    network: ClientNetwork
    leases: tuple[Lease, ...] = ()
    reservations: tuple[Reservation, ...] = ()


@dataclass(frozen=True)
class NodeHosts:
    """The nodes' names in the nodes' domain (the upstream network's) at their upstream addresses."""

    domain: str
    addresses: Mapping[str, Address] = field(default_factory=dict)


def default_nameserver(nodes_domain: str, address: Address | None) -> NameServer:
    """`pvc-dns.NODESDOMAIN` at the upstream floating IP: a name every zone's NS can point to."""
    return NameServer(name=f"pvc-dns.{_name(nodes_domain)}", address=address)


def _name(text: str) -> str:
    return text.lower().rstrip(".")


def _in_zone(name: str, zone: str) -> bool:
    return name == zone or name.endswith("." + zone)


def _address_type(address: Address) -> str:
    return "A" if address.version == 4 else "AAAA"


class _ZoneBuilder:
    """Records of one zone, each name claimed once per address type by the first to ask."""

    def __init__(self, zone: str) -> None:
        self.zone = zone
        self.addresses: dict[tuple[str, str], Address] = {}

    def claim(self, name: str, address: Address) -> None:
        if not _in_zone(name, self.zone):
            return
        self.addresses.setdefault((name, _address_type(address)), address)


def desired_zones(
    networks: Iterable[NetworkHosts],
    nodes: NodeHosts | None,
    nameserver: NameServer,
    ttl: int = DEFAULT_TTL,
) -> dict[str, Zone]:
    """Every zone the aggregator serves, by name: one per managed network domain and the nodes' domain.

    Bridged networks get no zone: their addresses are not pvcd's (no DHCP of ours runs on them).
    Networks that share a domain share the zone."""
    hosted = sorted(
        (hosts for hosts in networks if hosts.network.type is NetworkType.MANAGED and hosts.network.domain is not None),
        key=lambda hosts: hosts.network.vni,
    )
    zone_names = {_name(hosts.network.domain) for hosts in hosted if hosts.network.domain is not None}
    if nodes is not None:
        zone_names.add(_name(nodes.domain))
    builders = {zone: _ZoneBuilder(zone) for zone in zone_names}

    def claim_everywhere(name: str, address: Address) -> None:
        for builder in builders.values():
            builder.claim(name, address)

    server = _name(nameserver.name)
    if nameserver.address is not None:
        claim_everywhere(server, nameserver.address)
    if nodes is not None:
        domain = _name(nodes.domain)
        for node, address in sorted(nodes.addresses.items()):
            node_name = _name(node)
            builders[domain].claim(node_name if _in_zone(node_name, domain) else f"{node_name}.{domain}", address)
    for hosts in hosted:
        assert hosts.network.domain is not None
        builder = builders[_name(hosts.network.domain)]
        for reservation in sorted(hosts.reservations, key=lambda reservation: reservation.mac):
            if reservation.hostname:
                builder.claim(f"{_name(reservation.hostname)}.{builder.zone}", reservation.ipv4)
    for hosts in hosted:
        assert hosts.network.domain is not None
        builder = builders[_name(hosts.network.domain)]
        for lease in sorted(hosts.leases, key=lambda lease: (-lease.expiry, lease.mac)):
            if lease.hostname:
                builder.claim(f"{_name(lease.hostname)}.{builder.zone}", lease.ipv4)
    zones = {}
    for zone, builder in builders.items():
        records = {Record(zone, "NS", server, ttl)}
        records.update(Record(name, kind, str(address), ttl) for (name, kind), address in builder.addresses.items())
        soa = Soa(
            primary=server,
            hostmaster=_name(nameserver.hostmaster) if nameserver.hostmaster else f"hostmaster.{zone}",
            minimum=ttl,
            ttl=ttl,
        )
        zones[zone] = Zone(zone, soa, frozenset(records))
    return zones


@dataclass(frozen=True)
class StoredZone:
    """A zone pvcd owns as the database holds it: every row, the SOA among them."""

    name: str
    records: frozenset[Record]

    @property
    def serial(self) -> int:
        """The highest serial of its SOA rows, 0 when it has none."""
        serials = [parsed[1] for parsed in map(parse_soa, self.records) if parsed is not None]
        return max(serials, default=0)


@dataclass(frozen=True)
class ZoneChange:
    """Rows to delete and insert in one zone; the SOA row is replaced by one with `serial`."""

    zone: str
    delete: tuple[Record, ...]
    insert: tuple[Record, ...]
    serial: int


@dataclass(frozen=True)
class Diff:
    """What to write to go from the stored zones to the desired ones; applied as one transaction."""

    create: tuple[str, ...] = ()
    """Zones to add (their rows are in `changes`)."""
    remove: tuple[str, ...] = ()
    """Zones to drop with all their rows."""
    changes: tuple[ZoneChange, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.create or self.remove or self.changes)


def next_serial(previous: int, now: float) -> int:
    """The serial after `previous`: the time in seconds, or one more than `previous` if that is not later."""
    return max(previous + 1, int(now)) % SERIAL_MODULUS


def diff(stored: Mapping[str, StoredZone], desired: Mapping[str, Zone], now: float) -> Diff:
    """The inserts and deletes that turn the stored zones into the desired ones.

    A zone whose rows and SOA fields are already right is left alone, serial
    included, so a resync that finds nothing to do writes nothing. Any change
    to a zone replaces its SOA with a higher serial."""
    changes = []
    for name in sorted(desired):
        zone = desired[name]
        current = stored.get(name)
        rows = current.records if current is not None else frozenset()
        soa_rows = {record for record in rows if record.type == "SOA"}
        delete = (rows - soa_rows) - zone.records
        insert = zone.records - (rows - soa_rows)
        parsed = [parse_soa(record) for record in soa_rows]
        soa_right = len(parsed) == 1 and parsed[0] is not None and parsed[0][0] == zone.soa
        if not delete and not insert and soa_right:
            continue
        serial = next_serial(current.serial if current is not None else 0, now)
        changes.append(
            ZoneChange(
                zone=name,
                delete=tuple(sorted(delete | soa_rows)),
                insert=tuple(sorted(insert | {zone.soa.record(name, serial)})),
                serial=serial,
            )
        )
    return Diff(
        create=tuple(sorted(name for name in desired if name not in stored)),
        remove=tuple(sorted(name for name in stored if name not in desired)),
        changes=tuple(changes),
    )
