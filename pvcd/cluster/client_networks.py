"""Client networks: the networks VMs attach to, their DHCP reservations and leases (pure values and rules).

A client network is identified by its VNI and stored in ZooKeeper as JSON
(`/pvc/networks/VNI`, see docs/zookeeper-schema.md). Every node with
networking enabled builds it: a `managed` network is a VXLAN with that VNI
over the cluster network, plugged into a bridge; a `bridged` network is a VLAN
with that id on the node's bridge device, plugged into a bridge. The primary
holds a managed network's gateway addresses and serves its DHCP and DNS.

Everything here is pure: parsing, validation with one-line reasons an
operator can act on, the names of the devices a node creates, and the part of
a VM's domain XML that names client networks (`plug_interfaces`: an interface
names a network by its VNI and is stored plugged into the network's bridge).
"""

from __future__ import annotations

import ipaddress
import re
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

MAX_VNI = 16_777_215
"""VXLAN network identifiers are 24 bits."""
MAX_VLAN = 4094
VXLAN_OVERHEAD = 50
"""Bytes a VXLAN packet adds (outer Ethernet, IPv4, UDP, VXLAN headers): a managed network's MTU is the
cluster device's less this."""
BRIDGE_PREFIX = "vmbr"
VXLAN_PREFIX = "vxlan"
VLAN_PREFIX = "vlan"
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_HOSTNAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_DOMAIN = re.compile(r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MAX_DESCRIPTION = 200
MAX_DOMAIN = 253
"""The longest DNS name (RFC 1035), dots included."""


class InvalidNetwork(ValueError):
    """A network, reservation or lease that cannot be used; the message is one line naming what is wrong."""


class NetworkType(StrEnum):
    MANAGED = "managed"
    BRIDGED = "bridged"


@dataclass(frozen=True)
class Dhcp:
    """DHCP on a managed network's IPv4 subnet: leases from `start` to `end`."""

    start: ipaddress.IPv4Address
    end: ipaddress.IPv4Address

    def to_json(self) -> dict[str, Any]:
        return {"start": str(self.start), "end": str(self.end)}


@dataclass(frozen=True)
class Ipv4:
    network: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    dhcp: Dhcp | None = None

    @property
    def gateway_interface(self) -> ipaddress.IPv4Interface:
        """The gateway address with the network's prefix, as the primary holds it on the bridge."""
        return ipaddress.IPv4Interface(f"{self.gateway}/{self.network.prefixlen}")

    def to_json(self) -> dict[str, Any]:
        return {
            "network": str(self.network),
            "gateway": str(self.gateway),
            "dhcp": self.dhcp.to_json() if self.dhcp else None,
        }


@dataclass(frozen=True)
class Ipv6:
    network: ipaddress.IPv6Network
    gateway: ipaddress.IPv6Address

    @property
    def gateway_interface(self) -> ipaddress.IPv6Interface:
        return ipaddress.IPv6Interface(f"{self.gateway}/{self.network.prefixlen}")

    def to_json(self) -> dict[str, Any]:
        return {"network": str(self.network), "gateway": str(self.gateway)}


@dataclass(frozen=True)
class ClientNetwork:
    """One client network as stored at /pvc/networks/VNI."""

    vni: int
    type: NetworkType
    description: str = ""
    domain: str | None = None
    ipv4: Ipv4 | None = None
    ipv6: Ipv6 | None = None
    name_servers: tuple[str, ...] = field(default=())

    @property
    def bridge(self) -> str:
        """The bridge VMs plug into on every node."""
        return bridge_name(self.vni)

    @property
    def overlay(self) -> str:
        """The device under the bridge: the VXLAN of a managed network, the VLAN of a bridged one."""
        return f"{VXLAN_PREFIX if self.type is NetworkType.MANAGED else VLAN_PREFIX}{self.vni}"

    @property
    def dhcp(self) -> Dhcp | None:
        return self.ipv4.dhcp if self.ipv4 else None

    def to_json(self) -> dict[str, Any]:
        return {
            "vni": self.vni,
            "type": str(self.type),
            "description": self.description,
            "domain": self.domain,
            "ipv4": self.ipv4.to_json() if self.ipv4 else None,
            "ipv6": self.ipv6.to_json() if self.ipv6 else None,
            "name_servers": list(self.name_servers),
        }

    @classmethod
    def from_json(cls, value: Any) -> ClientNetwork:
        """Parse and validate a stored network; InvalidNetwork names what is wrong."""
        if not isinstance(value, dict):
            raise InvalidNetwork(f"network record is not an object: {str(value)[:60]!r}")
        try:
            ipv4 = value.get("ipv4")
            ipv6 = value.get("ipv6")
            dhcp = ipv4.get("dhcp") if isinstance(ipv4, dict) else None
            network = cls(
                vni=_vni(value.get("vni")),
                type=_type(value.get("type")),
                description=str(value.get("description") or ""),
                domain=_domain(value.get("domain")),
                ipv4=Ipv4(
                    network=_ipv4_network(ipv4.get("network")),
                    gateway=_ipv4_address(ipv4.get("gateway"), "IPv4 gateway"),
                    dhcp=_dhcp(dhcp) if isinstance(dhcp, dict) else None,
                )
                if isinstance(ipv4, dict)
                else None,
                ipv6=Ipv6(_ipv6_network(ipv6.get("network")), _ipv6_address(ipv6.get("gateway")))
                if isinstance(ipv6, dict)
                else None,
                name_servers=_name_servers(value.get("name_servers")),
            )
        except (AttributeError, TypeError) as exc:
            raise InvalidNetwork(f"network record is not valid: {exc}") from exc
        return check_network(network)


def _dhcp(value: dict[str, Any]) -> Dhcp:
    return Dhcp(_ipv4_address(value.get("start"), "DHCP start"), _ipv4_address(value.get("end"), "DHCP end"))


def _domain(value: Any) -> str | None:
    """A stored domain as `check_network` can judge it: a string or nothing (its regex fails on anything else)."""
    if value is None or isinstance(value, str):
        return value
    raise InvalidNetwork(f"domain must be a string, got {str(value)[:30]!r}")


def _name_servers(value: Any) -> tuple[str, ...]:
    """A stored list of name servers (a bare string would otherwise be taken one character at a time)."""
    if value is None:
        return ()
    if not isinstance(value, list):
        raise InvalidNetwork(f"name_servers must be a list, got {str(value)[:30]!r}")
    return tuple(str(server) for server in value)


def parse_vni(text: str) -> int:
    """A VNI as an operator types it (decimal digits); InvalidNetwork otherwise."""
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(MAX_VNI)):
        raise InvalidNetwork(f"vni {text[:30]!r} is not a whole number from 1 to {MAX_VNI}")
    return _vni(int(text))


def _vni(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidNetwork(f"vni must be a whole number, got {str(value)[:30]!r}")
    if not 1 <= value <= MAX_VNI:
        raise InvalidNetwork(f"vni {value} is outside 1-{MAX_VNI}")
    return value


def _type(value: Any) -> NetworkType:
    try:
        return NetworkType(value)
    except ValueError:
        raise InvalidNetwork(f"type must be managed or bridged, got {str(value)[:30]!r}") from None


def _ipv4_network(value: Any) -> ipaddress.IPv4Network:
    try:
        return ipaddress.IPv4Network(str(value))
    except ValueError:
        _host_bits(value, ipaddress.IPv4Network, "IPv4")
        raise InvalidNetwork(f"IPv4 network {str(value)[:40]!r} is not a network in CIDR form (10.1.0.0/24)") from None


def _ipv6_network(value: Any) -> ipaddress.IPv6Network:
    try:
        return ipaddress.IPv6Network(str(value))
    except ValueError:
        _host_bits(value, ipaddress.IPv6Network, "IPv6")
        raise InvalidNetwork(f"IPv6 network {str(value)[:40]!r} is not a network in CIDR form (fd00::/64)") from None


def _host_bits(value: Any, kind: type[ipaddress.IPv4Network] | type[ipaddress.IPv6Network], family: str) -> None:
    """Name the network meant when `value` is an address with a prefix (10.1.0.1/24), the commonest slip."""
    try:
        meant = kind(str(value), strict=False)
    except ValueError:
        return
    raise InvalidNetwork(f"{family} network {str(value)[:45]!r} has host bits set: did you mean {meant}?")


def _ipv4_address(value: Any, what: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(str(value))
    except ValueError:
        raise InvalidNetwork(f"{what} {str(value)[:40]!r} is not an IPv4 address") from None


def _ipv6_address(value: Any) -> ipaddress.IPv6Address:
    try:
        return ipaddress.IPv6Address(str(value))
    except ValueError:
        raise InvalidNetwork(f"IPv6 gateway {str(value)[:40]!r} is not an IPv6 address") from None


def parse_network(
    vni: Any,
    type_: str,
    description: str = "",
    domain: str | None = None,
    ipv4_network: str | None = None,
    ipv4_gateway: str | None = None,
    dhcp_start: str | None = None,
    dhcp_end: str | None = None,
    ipv6_network: str | None = None,
    ipv6_gateway: str | None = None,
    name_servers: tuple[str, ...] = (),
) -> ClientNetwork:
    """A network from an operator's words (the CLI's options), validated."""
    if (ipv4_network is None) != (ipv4_gateway is None):
        raise InvalidNetwork("an IPv4 network needs both --ipv4-network and --ipv4-gateway")
    if (ipv6_network is None) != (ipv6_gateway is None):
        raise InvalidNetwork("an IPv6 network needs both --ipv6-network and --ipv6-gateway")
    if (dhcp_start is None) != (dhcp_end is None):
        raise InvalidNetwork("a DHCP range needs both --dhcp-start and --dhcp-end")
    if dhcp_start is not None and ipv4_network is None:
        raise InvalidNetwork("DHCP needs an IPv4 network (--ipv4-network, --ipv4-gateway)")
    ipv4 = (
        Ipv4(
            _ipv4_network(ipv4_network),
            _ipv4_address(ipv4_gateway, "IPv4 gateway"),
            Dhcp(_ipv4_address(dhcp_start, "DHCP start"), _ipv4_address(dhcp_end, "DHCP end"))
            if dhcp_start is not None
            else None,
        )
        if ipv4_network is not None
        else None
    )
    ipv6 = Ipv6(_ipv6_network(ipv6_network), _ipv6_address(ipv6_gateway)) if ipv6_network is not None else None
    network = ClientNetwork(
        vni=_vni(vni),
        type=_type(type_),
        description=description,
        domain=domain,
        ipv4=ipv4,
        ipv6=ipv6,
        name_servers=tuple(name_servers),
    )
    return check_network(network)


def check_network(network: ClientNetwork) -> ClientNetwork:
    """The network itself is consistent; InvalidNetwork names the first thing that is not."""
    if network.type is NetworkType.BRIDGED and network.vni > MAX_VLAN:
        raise InvalidNetwork(f"a bridged network's vni is its VLAN id: {network.vni} is outside 1-{MAX_VLAN}")
    if len(network.description) > MAX_DESCRIPTION or "\n" in network.description:
        raise InvalidNetwork(f"description must be one line of at most {MAX_DESCRIPTION} characters")
    if network.domain is not None and (len(network.domain) > MAX_DOMAIN or not _DOMAIN.fullmatch(network.domain)):
        raise InvalidNetwork(f"domain {network.domain[:60]!r} is not a DNS domain (lower-case labels, e.g. net1.local)")
    for server in network.name_servers:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise InvalidNetwork(f"name server {server[:40]!r} is not an IP address") from None
    if network.ipv4 is not None:
        ipv4 = network.ipv4
        if ipv4.network.prefixlen > 30:
            raise InvalidNetwork(f"IPv4 network {ipv4.network} is too small for a gateway and clients (/30 at most)")
        if not _usable(ipv4.gateway, ipv4.network):
            raise InvalidNetwork(f"IPv4 gateway {ipv4.gateway} is not a host address of {ipv4.network}")
        if ipv4.dhcp is not None:
            start, end = ipv4.dhcp.start, ipv4.dhcp.end
            for address, what in ((start, "DHCP start"), (end, "DHCP end")):
                if not _usable(address, ipv4.network):
                    raise InvalidNetwork(f"{what} {address} is not a host address of {ipv4.network}")
            if start > end:
                raise InvalidNetwork(f"DHCP range {start}-{end} ends before it starts")
            if start <= ipv4.gateway <= end:
                raise InvalidNetwork(f"DHCP range {start}-{end} contains the gateway {ipv4.gateway}")
            if network.type is NetworkType.BRIDGED:
                raise InvalidNetwork(
                    f"network {network.vni} is bridged: DHCP is served on managed networks only (their gateway is"
                    " on the primary)"
                )
    if network.ipv6 is not None:
        ipv6 = network.ipv6
        if ipv6.gateway not in ipv6.network or ipv6.gateway == ipv6.network.network_address:
            raise InvalidNetwork(f"IPv6 gateway {ipv6.gateway} is not a host address of {ipv6.network}")
    return network


def _usable(address: ipaddress.IPv4Address, network: ipaddress.IPv4Network) -> bool:
    return address in network and address not in (network.network_address, network.broadcast_address)


def check_among(network: ClientNetwork, others: dict[int, ClientNetwork], replacing: bool = False) -> None:
    """The network can join the others: its vni is free (unless `replacing`) and its subnets overlap none."""
    if network.vni in others and not replacing:
        raise InvalidNetwork(f"network {network.vni} exists already; change it with 'pvc network modify'")
    for other in others.values():
        if other.vni == network.vni:
            continue
        for mine, theirs in ((network.ipv4, other.ipv4), (network.ipv6, other.ipv6)):
            if mine is not None and theirs is not None and mine.network.overlaps(theirs.network):
                raise InvalidNetwork(f"{mine.network} overlaps {theirs.network} of network {other.vni}")


def modified(network: ClientNetwork, **changes: Any) -> ClientNetwork:
    """The network with some fields changed, validated again."""
    return check_network(replace(network, **changes))


@dataclass(frozen=True)
class Reservation:
    """A fixed IPv4 address (and name) for one MAC on a managed network (/pvc/networks/VNI/reservations/MAC)."""

    mac: str
    ipv4: ipaddress.IPv4Address
    hostname: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"mac": self.mac, "ipv4": str(self.ipv4), "hostname": self.hostname}

    @classmethod
    def from_json(cls, value: Any) -> Reservation:
        if not isinstance(value, dict):
            raise InvalidNetwork(f"reservation is not an object: {str(value)[:60]!r}")
        return cls(
            mac=check_mac(value.get("mac")),
            ipv4=_ipv4_address(value.get("ipv4"), "reserved address"),
            hostname=check_hostname(value.get("hostname")),
        )


@dataclass(frozen=True)
class Lease:
    """An address dnsmasq handed out (/pvc/networks/VNI/leases/MAC); `expiry` in seconds since the epoch."""

    mac: str
    ipv4: ipaddress.IPv4Address
    hostname: str | None
    expiry: int

    def to_json(self) -> dict[str, Any]:
        return {"mac": self.mac, "ipv4": str(self.ipv4), "hostname": self.hostname, "expiry": self.expiry}

    @classmethod
    def from_json(cls, value: Any) -> Lease:
        if not isinstance(value, dict):
            raise InvalidNetwork(f"lease is not an object: {str(value)[:60]!r}")
        expiry = value.get("expiry")
        if isinstance(expiry, bool) or not isinstance(expiry, int) or expiry < 0:
            raise InvalidNetwork(f"lease expiry must be seconds since the epoch, got {str(expiry)[:30]!r}")
        return cls(
            mac=check_mac(value.get("mac")),
            ipv4=_ipv4_address(value.get("ipv4"), "leased address"),
            hostname=check_hostname(value.get("hostname")),
            expiry=expiry,
        )


def check_mac(value: Any) -> str:
    text = str(value).lower()
    if not _MAC.fullmatch(text):
        raise InvalidNetwork(f"MAC address {str(value)[:30]!r} is not six hex pairs (52:54:00:12:34:56)")
    return text


def check_hostname(value: Any) -> str | None:
    """A client's host name as DNS will carry it (one label), or None."""
    if value is None or value == "":
        return None
    text = str(value).lower()
    if not _HOSTNAME.fullmatch(text):
        raise InvalidNetwork(f"host name {str(value)[:63]!r} is not one DNS label (letters, digits, '-')")
    return text


def check_reservation(
    network: ClientNetwork, reservation: Reservation, reservations: dict[str, Reservation], leases: dict[str, Lease]
) -> None:
    """A reservation fits the network: inside its DHCP range, its address and MAC free of others' reservations and
    leases (a lease of the same MAC may be replaced)."""
    dhcp = network.dhcp
    if dhcp is None:
        raise InvalidNetwork(f"network {network.vni} has no DHCP: add a range with 'pvc network modify'")
    if not dhcp.start <= reservation.ipv4 <= dhcp.end:
        raise InvalidNetwork(f"{reservation.ipv4} is outside the DHCP range {dhcp.start}-{dhcp.end} of {network.vni}")
    if reservation.mac in reservations:
        raise InvalidNetwork(f"{reservation.mac} already has a reservation on network {network.vni}")
    for other in reservations.values():
        if other.ipv4 == reservation.ipv4:
            raise InvalidNetwork(f"{reservation.ipv4} is reserved for {other.mac} already")
    for lease in leases.values():
        if lease.ipv4 == reservation.ipv4 and lease.mac != reservation.mac:
            raise InvalidNetwork(f"{reservation.ipv4} is leased to {lease.mac}")


def check_reservations_kept(network: ClientNetwork, reservations: dict[str, Reservation]) -> None:
    """A changed network still holds every reservation it has: a reservation outside the DHCP range (or on a
    network without DHCP) would be stored but never served, so the operator removes it first."""
    if not reservations:
        return
    dhcp = network.dhcp
    if dhcp is None:
        raise InvalidNetwork(
            f"network {network.vni} has {len(reservations)} DHCP reservation(s): remove them before DHCP goes"
            f" ('pvc network dhcp remove {network.vni} MAC')"
        )
    for mac, reservation in sorted(reservations.items()):
        if not dhcp.start <= reservation.ipv4 <= dhcp.end:
            raise InvalidNetwork(
                f"reservation {reservation.ipv4} of {mac} would be outside the DHCP range {dhcp.start}-{dhcp.end};"
                f" remove it first ('pvc network dhcp remove {network.vni} {mac}')"
            )


# -- VM interfaces ----------------------------------------------------------------------


def bridge_name(vni: int) -> str:
    """The bridge of client network `vni` on every node (`ClientNetwork.bridge`)."""
    return f"{BRIDGE_PREFIX}{vni}"


def vni_named(text: str | None) -> int | None:
    """The VNI `text` spells as `str(vni)` does, or None: '0', '007' or a number past MAX_VNI name no client
    network, so an operator's own network or bridge of such a name is left alone (and a znode of such a name
    under /pvc/networks is no network's)."""
    if not text or not (text.isascii() and text.isdigit()) or text[0] == "0" or len(text) > len(str(MAX_VNI)):
        return None
    vni = int(text)
    return vni if vni <= MAX_VNI else None


def network_of_bridge(name: str | None) -> int | None:
    """The VNI whose bridge `name` is (`vmbrVNI` exactly as `bridge_name` spells it), or None for any other bridge
    (one an operator built by hand, such as vmbr0, which no client network can have)."""
    if not name or not name.startswith(BRIDGE_PREFIX):
        return None
    return vni_named(name[len(BRIDGE_PREFIX) :])


class _NoDoctype(ElementTree.TreeBuilder):
    """Domain XML has no DTD; entities declared in one would make what is stored differ from what was checked."""

    def doctype(self, name: str, pubid: str | None, system: str | None) -> None:
        raise InvalidNetwork("domain XML: a <!DOCTYPE> (DTD or entity declarations) is not allowed")


def _domain_root(text: str) -> ElementTree.Element:
    try:
        return ElementTree.fromstring(text, parser=ElementTree.XMLParser(target=_NoDoctype(insert_comments=True)))
    except ElementTree.ParseError as exc:
        raise InvalidNetwork(f"malformed domain XML: {exc}") from exc


def _interfaces(root: ElementTree.Element) -> list[tuple[ElementTree.Element, ElementTree.Element, int]]:
    """Each interface that names a client network, with its <source> and the VNI it names: either
    `<interface type='network'><source network='VNI'/>` or `<interface type='bridge'><source bridge='vmbrVNI'/>`."""
    found = []
    for interface in root.iterfind("devices/interface"):
        source = interface.find("source")
        if source is None:
            continue
        kind = interface.get("type")
        if kind == "network":
            vni = vni_named(source.get("network"))
        elif kind == "bridge":
            vni = network_of_bridge(source.get("bridge"))
        else:
            vni = None
        if vni is not None:
            found.append((interface, source, vni))
    return found


def plug_interfaces(text: str) -> tuple[str, frozenset[int]]:
    """The domain XML with every interface that names a client network by its VNI plugged into that network's
    bridge, and the VNIs its interfaces name.

    libvirt on a node knows no network called '100', only the bridge pvcd builds for it, so
    `<interface type='network'><source network='100'/>` is stored as `<interface type='bridge'><source
    bridge='vmbr100'/>` (the source's other attributes, such as a portgroup, mean nothing on a bridge and go).
    Interfaces that name a bridge already, or any other network or bridge, are kept as they are. An XML with
    nothing to rewrite is returned unchanged, byte for byte; a rewritten one is serialized again (comments
    kept, namespace prefixes renamed by ElementTree: libvirt reads them by URI)."""
    root = _domain_root(text)
    found = _interfaces(root)
    rewritten = False
    for interface, source, vni in found:
        if interface.get("type") == "network":
            interface.set("type", "bridge")
            source.attrib.clear()
            source.set("bridge", bridge_name(vni))
            rewritten = True
    vnis = frozenset(vni for _, _, vni in found)
    return (ElementTree.tostring(root, encoding="unicode") if rewritten else text), vnis


def networks_of_domain(text: str) -> frozenset[int]:
    """The client networks a stored domain XML's interfaces name (see `plug_interfaces`); InvalidNetwork when
    the XML cannot be read."""
    return frozenset(vni for _, _, vni in _interfaces(_domain_root(text)))
