"""The client networks' devices on this node (pyroute2): VXLANs and VLANs, their bridges, the gateways, the
default route.

Every node with networking builds every client network (pvcd.cluster.client_networks):

- a `managed` network is a VXLAN `vxlanVNI` over the cluster network's device
  (UDP port 4789, from this node's cluster address), enslaved to a bridge
  `vmbrVNI`; both have the cluster device's MTU less the overlay's 50 bytes, so
  a full-size guest frame still fits in one packet on the cluster network. There
  is no multicast group: broadcast and unknown unicast go to every other node
  through one all-zeros FDB entry per node (head-end replication), which only
  needs the nodes' unicast addresses, kept in step as nodes come and go;
- a `bridged` network is a VLAN `vlanVNI` (id = VNI) on the node's bridge
  device, enslaved to `vmbrVNI`.

Applying is split in two so that it can be idempotent and checked without a
kernel: `desired_devices` says what should exist, `plan` compares it with what
the kernel reports (`Link`, the FDB) and lists the few changes that close the
gap, and `ClientInterfaces.apply` sends only those. A device that is right is
never touched: no delete and re-create, no down and up, the same ifindex, so
a restarted pvcd does not cut the guests' traffic. Devices of networks that
are gone are removed, but only names that pvcd owns (`vmbr`, `vxlan` or
`vlan` followed by a VNI without leading zeros, so an operator's `vmbr0`
stays).

The primary holds each managed network's gateway addresses on its bridge with
the same kernel lifetime as the floating IPs (`Gateways`, renewed by the
coordinator loop, gone on their own if the primary freezes), and the upstream
gateway is the node's default route (`ClientInterfaces.set_default_route`).
"""

from __future__ import annotations

import logging
import re
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv6Interface
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from pvcd.cluster.client_networks import (
    BRIDGE_PREFIX,
    MAX_VNI,
    VLAN_PREFIX,
    VXLAN_OVERHEAD,
    VXLAN_PREFIX,
    ClientNetwork,
    NetworkType,
)
from pvcd.config import Config
from pvcd.network.addresses import AddressError, LeaseLost, packet_sender, send_gratuitous_arp

log = logging.getLogger(__name__)

VXLAN_PORT = 4789
"""IANA's VXLAN port. Linux uses 8472 when none is given, which other VXLAN endpoints do not expect."""
FLOOD_MAC = "00:00:00:00:00:00"
"""The FDB address a VXLAN sends broadcast and unknown unicast to: one entry per remote node."""
MAIN_TABLE = 254
IFF_UP = 0x1
IFA_F_NODAD = 0x02
"""An IPv6 gateway skips duplicate address detection: it moves between nodes and must answer at once,
not after a second of being tentative."""
_EADDRNOTAVAIL = 99
_ENODEV = 19
_EOPNOTSUPP = 95
OWNED = re.compile(rf"^(?:{BRIDGE_PREFIX}|{VXLAN_PREFIX}|{VLAN_PREFIX})([1-9][0-9]{{0,7}})$")
"""Device names pvcd creates and may remove: a prefix and a VNI (no leading zero, so `vmbr0` is not ours)."""


class InterfaceError(Exception):
    """A client network device could not be made right; the message names the device and the network."""


def owned_vni(name: str) -> int | None:
    """The VNI in the name of a device pvcd owns, or None for any other device."""
    match = OWNED.fullmatch(name)
    if match is None or int(match.group(1)) > MAX_VNI:
        return None
    return int(match.group(1))


@dataclass(frozen=True)
class Bridge:
    """The bridge guests plug into; `mtu` None leaves it to the kernel (it follows its ports)."""

    name: str
    vni: int
    mtu: int | None

    def __str__(self) -> str:
        return f"bridge {self.name}" + (f" (mtu {self.mtu})" if self.mtu is not None else "")


@dataclass(frozen=True)
class Vxlan:
    """A managed network's overlay: `peers` are the other nodes' cluster addresses it floods to."""

    name: str
    vni: int
    device: str
    local: IPv4Address
    port: int
    mtu: int
    bridge: str
    peers: frozenset[IPv4Address] = field(default_factory=frozenset)

    def __str__(self) -> str:
        return (
            f"VXLAN {self.name} (VNI {self.vni} over {self.device} from {self.local}, port {self.port}, "
            f"mtu {self.mtu}, in {self.bridge})"
        )


@dataclass(frozen=True)
class Vlan:
    """A bridged network's VLAN on the bridge device; `mtu` None keeps the device's."""

    name: str
    vni: int
    device: str
    mtu: int | None
    bridge: str

    def __str__(self) -> str:
        return f"VLAN {self.name} (id {self.vni} on {self.device}, in {self.bridge})"


Device = Bridge | Vxlan | Vlan


def kind_of(spec: Device) -> str:
    """The kernel's name for the device's kind (IFLA_INFO_KIND)."""
    if isinstance(spec, Bridge):
        return "bridge"
    return "vxlan" if isinstance(spec, Vxlan) else "vlan"


@dataclass(frozen=True)
class NetworkDevices:
    """What one client network needs on this node."""

    vni: int
    type: NetworkType
    bridge: Bridge
    overlay: Vxlan | Vlan


def desired_devices(
    networks: Iterable[ClientNetwork],
    cluster_device: str,
    cluster_mtu: int,
    local: IPv4Address,
    peers: Iterable[IPv4Address],
    bridge_device: str,
    bridge_mtu: int | None = None,
) -> dict[int, NetworkDevices]:
    """The devices every network needs here, by VNI.

    `local` is this node's cluster address and `peers` the other nodes'
    (this node's own address among them is ignored, so the caller may pass
    every node's). `bridge_mtu` None leaves bridged networks' MTU to the
    bridge device's.
    """
    others = frozenset(peers) - {local}
    wanted: dict[int, NetworkDevices] = {}
    for network in networks:
        if network.type is NetworkType.MANAGED:
            vxlan_mtu = cluster_mtu - VXLAN_OVERHEAD
            mtu: int | None = vxlan_mtu
            overlay: Vxlan | Vlan = Vxlan(
                name=network.overlay,
                vni=network.vni,
                device=cluster_device,
                local=local,
                port=VXLAN_PORT,
                mtu=vxlan_mtu,
                bridge=network.bridge,
                peers=others,
            )
        else:
            mtu = bridge_mtu
            overlay = Vlan(name=network.overlay, vni=network.vni, device=bridge_device, mtu=mtu, bridge=network.bridge)
        wanted[network.vni] = NetworkDevices(
            network.vni, network.type, Bridge(network.bridge, network.vni, mtu), overlay
        )
    return wanted


@dataclass(frozen=True)
class Link:
    """A device as the kernel reports it: `lower` is the device a VXLAN or VLAN sits on, `vni` its VNI or VLAN id."""

    name: str
    index: int
    kind: str | None
    mtu: int
    up: bool
    master: str | None = None
    lower: str | None = None
    vni: int | None = None
    local: IPv4Address | None = None
    port: int | None = None


@dataclass(frozen=True)
class Delete:
    device: str
    vni: int
    reason: str

    def __str__(self) -> str:
        return f"remove {self.device} ({self.reason})"


@dataclass(frozen=True)
class Create:
    spec: Device

    @property
    def device(self) -> str:
        return self.spec.name

    @property
    def vni(self) -> int:
        return self.spec.vni

    def __str__(self) -> str:
        return f"create {self.spec}"


@dataclass(frozen=True)
class SetMtu:
    device: str
    vni: int
    mtu: int

    def __str__(self) -> str:
        return f"set the mtu of {self.device} to {self.mtu}"


@dataclass(frozen=True)
class SetMaster:
    device: str
    vni: int
    master: str

    def __str__(self) -> str:
        return f"put {self.device} in {self.master}"


@dataclass(frozen=True)
class SetUp:
    device: str
    vni: int

    def __str__(self) -> str:
        return f"bring {self.device} up"


@dataclass(frozen=True)
class FloodTo:
    """Append an all-zeros FDB entry: the VXLAN floods to this node too."""

    device: str
    vni: int
    peer: IPv4Address

    def __str__(self) -> str:
        return f"flood {self.device} to {self.peer}"


@dataclass(frozen=True)
class StopFlooding:
    device: str
    vni: int
    peer: IPv4Address

    def __str__(self) -> str:
        return f"stop flooding {self.device} to {self.peer}"


Change = Delete | Create | SetMtu | SetMaster | SetUp | FloodTo | StopFlooding


def _mismatch(spec: Device, link: Link) -> str | None:
    """Why an existing device cannot be changed in place into `spec` (the kernel cannot change a VXLAN's VNI,
    device, address or port, nor any device's kind), or None when it can be kept."""
    kind = kind_of(spec)
    wrong: list[str] = []
    if isinstance(spec, Vxlan):
        wrong = [
            f"{what} {have} instead of {want}"
            for what, have, want in (
                ("VNI", link.vni, spec.vni),
                ("device", link.lower, spec.device),
                ("local address", link.local, spec.local),
                ("port", link.port, spec.port),
            )
            if have != want
        ]
    elif isinstance(spec, Vlan):
        wrong = [
            f"{what} {have} instead of {want}"
            for what, have, want in (("VLAN id", link.vni, spec.vni), ("device", link.lower, spec.device))
            if have != want
        ]
    if link.kind != kind:
        return f"it is a {link.kind or 'device of no kind'}, not a {kind}; re-created"
    if wrong:
        return f"it has {', '.join(wrong)}; re-created"
    return None


def plan(
    desired: Mapping[int, NetworkDevices], links: Mapping[str, Link], flooding: Mapping[str, frozenset[IPv4Address]]
) -> list[Change]:
    """The changes that make the kernel's devices (`links`, by name, pvcd's own at least) and VXLAN flood
    entries (`flooding`, by device) what `desired` says, in the order to make them; none when they are right.

    Unwanted devices go first (overlays before bridges, so no bridge is
    removed with a port still in it that another step would touch), then each
    network's bridge, its overlay (inside the bridge) and the flood entries.
    Devices that are not pvcd's are never touched, even inside its bridges
    (the guests' taps).
    """
    wanted: dict[str, Device] = {}
    for devices in desired.values():
        wanted[devices.bridge.name] = devices.bridge
        wanted[devices.overlay.name] = devices.overlay
    changes: list[Change] = []
    recreated: set[str] = set()
    for name in sorted(links, key=lambda name: (name.startswith(BRIDGE_PREFIX), name)):
        vni = owned_vni(name)
        if vni is None:
            continue
        spec = wanted.get(name)
        if spec is None:
            reason = f"network {vni} does not exist" if vni not in desired else f"network {vni} does not use it"
            changes.append(Delete(name, vni, reason))
            continue
        problem = _mismatch(spec, links[name])
        if problem is not None:
            changes.append(Delete(name, vni, problem))
            recreated.add(name)
    for vni, devices in sorted(desired.items()):
        for spec in (devices.bridge, devices.overlay):
            link = None if spec.name in recreated else links.get(spec.name)
            if link is None:
                changes += [Create(spec), SetUp(spec.name, vni)]
                flooded: frozenset[IPv4Address] = frozenset()
            else:
                if spec.mtu is not None and link.mtu != spec.mtu:
                    changes.append(SetMtu(spec.name, vni, spec.mtu))
                if not isinstance(spec, Bridge) and link.master != spec.bridge:
                    changes.append(SetMaster(spec.name, vni, spec.bridge))
                if not link.up:
                    changes.append(SetUp(spec.name, vni))
                flooded = flooding.get(spec.name, frozenset())
            if isinstance(spec, Vxlan):
                changes += [FloodTo(spec.name, vni, peer) for peer in sorted(spec.peers - flooded)]
                changes += [StopFlooding(spec.name, vni, peer) for peer in sorted(flooded - spec.peers)]
    return changes


def create_request(spec: Device, indexes: Mapping[str, int]) -> dict[str, Any]:
    """The arguments of pyroute2's `IPRoute.link("add", ...)` that create `spec`, inside its bridge.

    `indexes` maps device names to ifindexes. A pure function, so the request
    for a VLAN can be checked on a kernel without VLAN devices (the tests
    compile it to its netlink message with pyroute2's IPBatch).
    """

    def index(device: str) -> int:
        if device not in indexes:
            raise InterfaceError(f"network {spec.vni}: cannot create {spec}: device {device} does not exist")
        return indexes[device]

    request: dict[str, Any] = {"ifname": spec.name, "kind": kind_of(spec)}
    if isinstance(spec, Vxlan):
        request |= {
            "vxlan_id": spec.vni,
            "vxlan_link": index(spec.device),
            "vxlan_local": str(spec.local),
            "vxlan_port": spec.port,
            "vxlan_learning": 1,
            "master": index(spec.bridge),
        }
    elif isinstance(spec, Vlan):
        request |= {"link": index(spec.device), "vlan_id": spec.vni, "master": index(spec.bridge)}
    if spec.mtu is not None:
        request["mtu"] = spec.mtu
    return request


def failure(change: Change, error: Exception) -> InterfaceError:
    """The one-line error for a change the kernel refused, naming the device and the network."""
    if isinstance(error, InterfaceError):
        return error
    reason = _reason(error) if isinstance(error, NetlinkError) else str(error)
    hint = ""
    if isinstance(change, Create) and isinstance(error, NetlinkError) and error.code == _EOPNOTSUPP:
        kind = kind_of(change.spec)
        hint = f"; this kernel has no {kind} devices" + (" (the 8021q module)" if kind == "vlan" else "")
    return InterfaceError(f"network {change.vni}: cannot {change}: {reason}{hint}")


def _reason(error: NetlinkError) -> str:
    return f"{error.args[1]} (errno {error.code})"


@dataclass(frozen=True)
class Applied:
    """What `ClientInterfaces.apply` did and what it could not do (one error per network at most: a network's
    later changes are skipped after its first failure, the other networks go on)."""

    changes: tuple[Change, ...]
    errors: tuple[InterfaceError, ...]


@dataclass(frozen=True)
class GatewayAddress:
    """One gateway address of a managed network, held by the primary on the network's bridge."""

    vni: int
    device: str
    interface: IPv4Interface | IPv6Interface

    def __str__(self) -> str:
        return f"gateway {self.interface} on {self.device} (network {self.vni})"


def gateway_addresses(network: ClientNetwork) -> list[GatewayAddress]:
    """A managed network's IPv4 and IPv6 gateways with the network's prefix; none for a bridged network, whose
    router is outside the cluster."""
    if network.type is not NetworkType.MANAGED:
        return []
    interfaces: list[IPv4Interface | IPv6Interface] = []
    if network.ipv4 is not None:
        interfaces.append(network.ipv4.gateway_interface)
    if network.ipv6 is not None:
        interfaces.append(network.ipv6.gateway_interface)
    return [GatewayAddress(network.vni, network.bridge, interface) for interface in interfaces]


@dataclass(frozen=True)
class DefaultRoute:
    gateway: IPv4Address
    device: str

    def __str__(self) -> str:
        return f"default route via {self.gateway} on {self.device}"


def default_route(config: Config) -> DefaultRoute | None:
    """The upstream network's `gateway` as the node's default route, on the upstream device; None when the
    configuration names no gateway (the operating system's route is then left alone)."""
    if config.cluster.networks is None or config.networking is None:
        return None
    gateway = config.cluster.networks.upstream.gateway
    if gateway is None:
        return None
    return DefaultRoute(gateway, config.networking.upstream.device)


def _link(message: Any, names: Mapping[int, str]) -> Link:
    """A Link from an RTM_NEWLINK message; `names` maps ifindexes to names (for the master and lower device)."""
    kind = message.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
    master = message.get("IFLA_MASTER")
    lower = vni = local = port = None
    if kind == "vxlan":
        lower = message.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA", "IFLA_VXLAN_LINK")
        vni = message.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA", "IFLA_VXLAN_ID")
        local = message.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA", "IFLA_VXLAN_LOCAL")
        port = message.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA", "IFLA_VXLAN_PORT")
    elif kind == "vlan":
        lower = message.get("IFLA_LINK")
        vni = message.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA", "IFLA_VLAN_ID")
    return Link(
        name=message.get("IFLA_IFNAME"),
        index=message["index"],
        kind=kind,
        mtu=message.get("IFLA_MTU"),
        up=bool(message["flags"] & IFF_UP),
        master=names.get(master) if master else None,
        lower=names.get(lower) if lower else None,
        vni=vni,
        local=IPv4Address(local) if local else None,
        port=port,
    )


class ClientInterfaces:
    """The client network devices over one rtnetlink socket, in `netns` (None: the caller's namespace)."""

    def __init__(self, netns: str | None = None) -> None:
        self._ipr = IPRoute(netns=netns) if netns is not None else IPRoute()

    def close(self) -> None:
        self._ipr.close()

    def __enter__(self) -> ClientInterfaces:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _indexes(self) -> dict[str, int]:
        return {message.get("IFLA_IFNAME"): message["index"] for message in self._ipr.get_links()}

    def _index(self, device: str) -> int | None:
        found = self._ipr.link_lookup(ifname=device)
        return found[0] if found else None

    def observe(self) -> tuple[dict[str, Link], dict[str, frozenset[IPv4Address]]]:
        """pvcd's devices by name, and the peers each of its VXLANs floods to."""
        messages = list(self._ipr.get_links())
        names = {message["index"]: message.get("IFLA_IFNAME") for message in messages}
        links = {
            link.name: link
            for link in (_link(message, names) for message in messages)
            if owned_vni(link.name) is not None
        }
        vxlans = {link.index: link.name for link in links.values() if link.kind == "vxlan"}
        flooding: dict[str, set[IPv4Address]] = {name: set() for name in vxlans.values()}
        for entry in self._ipr.fdb("dump"):
            name = vxlans.get(entry["ifindex"])
            destination = entry.get("NDA_DST")
            if name is not None and destination and entry.get("NDA_LLADDR") == FLOOD_MAC:
                flooding[name].add(IPv4Address(destination))
        return links, {name: frozenset(peers) for name, peers in flooding.items()}

    def apply(self, desired: Mapping[int, NetworkDevices]) -> Applied:
        """Make this node's client network devices what `desired` says, touching only what differs.

        Every change is logged. A change the kernel refuses is logged and
        returned as an error, and that network's later changes are skipped;
        the other networks are still applied. Calling it again with the same
        `desired` changes nothing.
        """
        links, flooding = self.observe()
        done: list[Change] = []
        errors: list[InterfaceError] = []
        failed: set[int] = set()
        for change in plan(desired, links, flooding):
            if change.vni in failed:
                continue
            try:
                self._execute(change)
            except (NetlinkError, InterfaceError) as exc:
                error = failure(change, exc)
                log.error("Client network device not configured: %s", error)
                errors.append(error)
                failed.add(change.vni)
                continue
            log.info("Client network %d: %s", change.vni, change)
            done.append(change)
        return Applied(tuple(done), tuple(errors))

    def _execute(self, change: Change) -> None:
        if isinstance(change, Create):
            self._ipr.link("add", **create_request(change.spec, self._indexes()))
            return
        index = self._index(change.device)
        if index is None:
            if isinstance(change, Delete):
                return
            raise InterfaceError(f"network {change.vni}: cannot {change}: device {change.device} does not exist")
        if isinstance(change, Delete):
            try:
                self._ipr.link("del", index=index)
            except NetlinkError as exc:
                if exc.code != _ENODEV:
                    raise
        elif isinstance(change, SetMtu):
            self._ipr.link("set", index=index, mtu=change.mtu)
        elif isinstance(change, SetMaster):
            master = self._index(change.master)
            if master is None:
                raise InterfaceError(f"network {change.vni}: cannot {change}: device {change.master} does not exist")
            self._ipr.link("set", index=index, master=master)
        elif isinstance(change, SetUp):
            self._ipr.link("set", index=index, state="up")
        elif isinstance(change, FloodTo):
            self._ipr.fdb("append", ifindex=index, lladdr=FLOOD_MAC, dst=str(change.peer))
        else:
            self._ipr.fdb("del", ifindex=index, lladdr=FLOOD_MAC, dst=str(change.peer))

    def hold_gateway(self, address: GatewayAddress, lifetime: int) -> None:
        """Add the gateway address, or renew it in place, valid and preferred for `lifetime` seconds."""
        index = self._index(address.device)
        if index is None:
            raise InterfaceError(f"cannot add {address}: device {address.device} does not exist")
        extra = {"flags": IFA_F_NODAD} if address.interface.version == 6 else {}
        try:
            self._ipr.addr(
                "replace",
                index=index,
                family=_family(address),
                address=str(address.interface.ip),
                prefixlen=address.interface.network.prefixlen,
                valid_lft=lifetime,
                preferred_lft=lifetime,
                **extra,
            )
        except NetlinkError as exc:
            raise InterfaceError(f"cannot add {address}: {_reason(exc)}") from exc

    def remove_gateway(self, address: GatewayAddress) -> bool:
        """Remove the gateway address; False if it (or its bridge) was not there."""
        index = self._index(address.device)
        if index is None:
            return False
        try:
            self._ipr.addr(
                "del",
                index=index,
                family=_family(address),
                address=str(address.interface.ip),
                prefixlen=address.interface.network.prefixlen,
            )
        except NetlinkError as exc:
            if exc.code == _EADDRNOTAVAIL:
                return False
            raise InterfaceError(f"cannot remove {address}: {_reason(exc)}") from exc
        return True

    def announce_gateway(self, sender: socket.socket, address: GatewayAddress) -> None:
        """Gratuitous ARP for an IPv4 gateway, so the network's guests send to this node's bridge at once.

        IPv6 gateways are not announced: guests find them again through
        neighbour discovery when their cache entry goes stale.
        """
        if address.interface.version != 4:
            return
        index = self._index(address.device)
        if index is None:
            raise InterfaceError(f"cannot announce {address}: device {address.device} does not exist")
        mac = bytes.fromhex(self._ipr.get_links(index)[0].get("IFLA_ADDRESS").replace(":", ""))
        try:
            send_gratuitous_arp(sender, address.device, mac, IPv4Address(address.interface.ip))
        except AddressError as exc:
            raise InterfaceError(f"{exc} (network {address.vni})") from exc

    def set_default_route(self, route: DefaultRoute) -> bool:
        """Make `route` the main table's IPv4 default route (metric 0), only if it is not already; True if it
        changed.

        Replacing an identical route would be harmless to traffic but shows in
        the kernel's route notifications and logs at every restart.
        """
        index = self._index(route.device)
        if index is None:
            raise InterfaceError(f"cannot set the {route}: device {route.device} does not exist")
        for current in self._ipr.get_default_routes(family=socket.AF_INET, table=MAIN_TABLE):
            if current.get("RTA_TABLE") != MAIN_TABLE or current.get("RTA_PRIORITY") not in (None, 0):
                continue
            if current.get("RTA_GATEWAY") == str(route.gateway) and current.get("RTA_OIF") == index:
                return False
        try:
            self._ipr.route(
                "replace",
                dst_len=0,  # the default route: no destination prefix
                gateway=str(route.gateway),
                oif=index,
                table=MAIN_TABLE,
                family=socket.AF_INET,
            )
        except NetlinkError as exc:
            raise InterfaceError(f"cannot set the {route}: {_reason(exc)}") from exc
        log.info("The node's %s", route)
        return True


def _family(address: GatewayAddress) -> int:
    return socket.AF_INET if address.interface.version == 4 else socket.AF_INET6


class Gateways:
    """The managed networks' gateway addresses on the primary: held under the coordinator's kernel lifetime,
    renewed with the floating IPs, removed on relinquish.

    The coordinator loop calls `hold` with the networks as they are now: a
    network removed, or a gateway changed, since the last call loses its old
    address at once. Addresses of a pvcd that died are not tracked by the next
    one; their lifetime removes them. `close` may come from the daemon's
    shutdown thread, so a lock keeps it apart from the loop (as in FloatingIPs).
    """

    def __init__(self, netns: str | None = None, sender: socket.socket | None = None) -> None:
        self._interfaces = ClientInterfaces(netns)
        self._sender = sender if sender is not None else packet_sender()
        self._lock = threading.Lock()
        self._closed = False
        self._held: set[GatewayAddress] = set()
        self._problems: dict[GatewayAddress, str] = {}

    @property
    def held(self) -> frozenset[GatewayAddress]:
        """The addresses the last `hold` added or renewed."""
        with self._lock:
            return frozenset(self._held)

    def hold(self, networks: Iterable[ClientNetwork], lifetime: Callable[[], int]) -> None:
        """Add or renew every managed network's gateways with the lifetime the lease allows right now, and remove
        those of networks no longer given.

        As with the floating IPs, `lifetime` is asked again after each change:
        if it ran out meanwhile, the address is removed at once and LeaseLost
        raised. A bridge that does not exist yet (the network is still being
        applied) is logged once and tried again at the next renewal.
        """
        wanted = [address for network in networks for address in gateway_addresses(network)]
        with self._lock:
            for address in sorted(self._held - set(wanted), key=str):
                self._remove(address)
            for address in wanted:
                seconds = 0 if self._closed else lifetime()
                if seconds < 1:
                    raise LeaseLost("the lease ran out before the gateways could be renewed")
                try:
                    self._interfaces.hold_gateway(address, seconds)
                except InterfaceError as exc:
                    self._held.discard(address)
                    self._report(address, str(exc))
                    continue
                self._held.add(address)
                if lifetime() < 1:
                    self._remove(address)
                    raise LeaseLost(f"the lease ran out while adding {address}; removed it again")
                self._report(address, None)

    def announce(self) -> None:
        """Gratuitous ARP for every IPv4 gateway held, after a takeover."""
        with self._lock:
            if self._closed:
                return
            for address in sorted(self._held, key=str):
                try:
                    self._interfaces.announce_gateway(self._sender, address)
                except InterfaceError as exc:
                    log.error("%s; guests keep the old primary's MAC until their caches expire", exc)

    def release(self) -> None:
        """Remove every gateway held (on relinquish)."""
        with self._lock:
            for address in sorted(self._held, key=str):
                self._remove(address)

    def close(self) -> None:
        """Remove every gateway and refuse to add any again."""
        with self._lock:
            if self._closed:
                return
            for address in sorted(self._held, key=str):
                self._remove(address)
            self._closed = True
            self._interfaces.close()
            self._sender.close()

    def _remove(self, address: GatewayAddress) -> None:
        self._held.discard(address)
        self._problems.pop(address, None)
        try:
            if self._interfaces.remove_gateway(address):
                log.info("Client network %s removed", address)
        except InterfaceError as exc:
            log.error("%s; remove it by hand (ip address del %s dev %s)", exc, address.interface, address.device)

    def _report(self, address: GatewayAddress, problem: str | None) -> None:
        """Log a problem once when it appears and once when it clears, not at every renewal."""
        previous = self._problems.pop(address, None)
        if problem is not None:
            self._problems[address] = problem
            if problem != previous:
                log.error("Client network gateway not held: %s", problem)
        elif previous is not None:
            log.info("Client network %s is held again", address)
