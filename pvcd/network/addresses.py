"""Addresses on this node's devices (pyroute2), and gratuitous ARP (a raw socket).

Two kinds of address live here:

- the node's own address on each cluster network (`address: by-id` or a
  CIDR in `system.configuration.networking`), added at start and permanent;
- the floating IPs (`cluster.networks.*.floating_ip`), held only by the
  primary coordinator. They are added with a kernel lifetime (`valid_lft`)
  that the coordinator loop renews after every confirmation from ZooKeeper,
  so a primary that freezes or dies loses them on its own, before another
  coordinator may take over (pvcd.coordinator.decide, rule 3).
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from pvcd.config import NETWORK_NAMES, Config, NodeNetworking

log = logging.getLogger(__name__)

ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ARP_REQUEST = 1
ETHERNET_MIN_FRAME = 60
BROADCAST_MAC = b"\xff" * 6
_EADDRNOTAVAIL = 99


class AddressError(Exception):
    """An address could not be added or removed; the message names device and address."""


class LeaseLost(Exception):
    """The coordinator's lease ran out: the floating IPs must not be (re)added."""


@dataclass(frozen=True)
class DeviceAddress:
    """One IPv4 address on one device, with the cluster network it belongs to (for logs)."""

    network: str
    device: str
    interface: IPv4Interface

    def __str__(self) -> str:
        return f"{self.interface} on {self.device} ({self.network} network)"


def node_addresses(networking: NodeNetworking | None) -> list[DeviceAddress]:
    """The node's own addresses from its configuration; networks with `address: None` have none."""
    if networking is None:
        return []
    found = []
    for name in NETWORK_NAMES:
        network = getattr(networking, name)
        if network.address is not None:
            found.append(DeviceAddress(name, network.device, network.address))
    return found


def floating_addresses(config: Config) -> list[DeviceAddress]:
    """Each cluster network's floating IP on this node's device for that network."""
    if config.cluster.networks is None or config.networking is None:
        return []
    return [
        DeviceAddress(name, getattr(config.networking, name).device, getattr(config.cluster.networks, name).floating_ip)
        for name in NETWORK_NAMES
    ]


class Netlink:
    """Address operations over one rtnetlink socket, in the caller's network namespace."""

    def __init__(self) -> None:
        self._ipr = IPRoute()

    def close(self) -> None:
        self._ipr.close()

    def _index(self, device: str) -> int:
        found = self._ipr.link_lookup(ifname=device)
        if not found:
            raise AddressError(f"device {device} does not exist")
        return found[0]

    def replace(self, address: DeviceAddress, lifetime: int | None = None) -> None:
        """Add the address, or update it in place; `lifetime` in seconds, None for permanent."""
        index = self._index(address.device)
        lifetimes = {} if lifetime is None else {"valid_lft": lifetime, "preferred_lft": lifetime}
        try:
            self._ipr.addr(
                "replace",
                index=index,
                address=str(address.interface.ip),
                prefixlen=address.interface.network.prefixlen,
                **lifetimes,
            )
        except NetlinkError as exc:
            raise AddressError(f"cannot add {address}: {exc}") from exc

    def set_mtu(self, device: str, mtu: int) -> None:
        try:
            self._ipr.link("set", index=self._index(device), mtu=mtu)
        except NetlinkError as exc:
            raise AddressError(f"cannot set mtu {mtu} on {device}: {exc}") from exc

    def mac(self, device: str) -> bytes:
        """The device's hardware address."""
        links = self._ipr.get_links(self._index(device))
        return bytes.fromhex(links[0].get("IFLA_ADDRESS").replace(":", ""))

    def remove(self, address: DeviceAddress) -> bool:
        """Remove the address; False if it was not there."""
        index = self._index(address.device)
        try:
            self._ipr.addr(
                "del", index=index, address=str(address.interface.ip), prefixlen=address.interface.network.prefixlen
            )
        except NetlinkError as exc:
            if exc.code == _EADDRNOTAVAIL:
                return False
            raise AddressError(f"cannot remove {address}: {exc}") from exc
        return True


def device_mtus(networking: NodeNetworking | None) -> dict[str, int]:
    """The MTU of each device the node's networks use (validation made them agree)."""
    if networking is None:
        return {}
    return {network.device: network.mtu for network in (networking.upstream, networking.cluster, networking.storage)}


def apply_node_networking(networking: NodeNetworking | None) -> None:
    """Set the devices' MTUs and add the node's own addresses (idempotent);
    problems are logged, not fatal.

    A missing address shows up later as an unreachable ZooKeeper or network;
    the log line here says which device and address to look at.
    """
    mtus = device_mtus(networking)
    addresses = node_addresses(networking)
    if not mtus and not addresses:
        return
    netlink = Netlink()
    try:
        for device, mtu in sorted(mtus.items()):
            try:
                netlink.set_mtu(device, mtu)
                log.info("Device %s has mtu %d", device, mtu)
            except AddressError as exc:
                log.error("Device MTU not set: %s", exc)
        for address in addresses:
            try:
                netlink.replace(address)
                log.info("Node address %s is configured", address)
            except AddressError as exc:
                log.error("Node address not configured: %s", exc)
    finally:
        netlink.close()


def garp_frame(mac: bytes, ip: IPv4Address) -> bytes:
    """A gratuitous ARP request (RFC 5227 announcement) for `ip` at `mac`, as an Ethernet frame."""
    ethernet = BROADCAST_MAC + mac + struct.pack("!H", ETH_P_ARP)
    arp = struct.pack("!HHBBH", 1, ETH_P_IP, 6, 4, ARP_REQUEST) + mac + ip.packed + b"\x00" * 6 + ip.packed
    return (ethernet + arp).ljust(ETHERNET_MIN_FRAME, b"\x00")


def packet_sender() -> socket.socket:
    """A raw packet socket that only sends (protocol 0: it receives nothing).

    Kept open for the daemon's life: closing a packet socket waits for an RCU
    grace period (~20 ms), which a takeover should not spend.
    """
    return socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)


def send_gratuitous_arp(sender: socket.socket, device: str, mac: bytes, ip: IPv4Address) -> None:
    """Tell the segment that `ip` is now at `mac`, so neighbours update their caches."""
    try:
        sender.sendto(garp_frame(mac, ip), (device, ETH_P_ARP))
    except OSError as exc:
        raise AddressError(f"cannot send gratuitous ARP for {ip} on {device}: {exc}") from exc


class FloatingIPs:
    """The floating IPs of the primary: held under a kernel lifetime, renewed, removed.

    The coordinator loop is the only caller except `close`, which the daemon's
    shutdown may call from another thread; a lock keeps the two apart.
    """

    def __init__(self, addresses: list[DeviceAddress]) -> None:
        self.addresses = list(addresses)
        self._netlink = Netlink()
        self._sender = packet_sender()
        self._lock = threading.Lock()
        self._closed = False
        self._problems: dict[DeviceAddress, str] = {}

    def hold(self, lifetime: Callable[[], int]) -> None:
        """Add or renew every floating IP with the lifetime the lease allows right now.

        `lifetime` is asked again after each change: if it ran out meanwhile
        (the process was stopped between the check and the change), the
        address is removed at once and LeaseLost raised.
        """
        with self._lock:
            for address in self.addresses:
                seconds = 0 if self._closed else lifetime()
                if seconds < 1:
                    raise LeaseLost("the lease ran out before the floating IPs could be renewed")
                try:
                    self._netlink.replace(address, seconds)
                except AddressError as exc:
                    self._report(address, str(exc))
                    continue
                if lifetime() < 1:
                    self._remove(address)
                    raise LeaseLost(f"the lease ran out while adding {address}; removed it again")
                self._report(address, None)

    def announce(self) -> None:
        """Gratuitous ARP for every floating IP, after a takeover."""
        for address in self.addresses:
            with self._lock:
                if self._closed:
                    return
                try:
                    mac = self._netlink.mac(address.device)
                    send_gratuitous_arp(self._sender, address.device, mac, address.interface.ip)
                except AddressError as exc:
                    log.error("%s; neighbours keep the old primary's MAC until their caches expire", exc)

    def release(self) -> None:
        """Remove every floating IP (those already gone are skipped)."""
        with self._lock:
            if self._closed:
                return
            for address in self.addresses:
                self._remove(address)

    def close(self) -> None:
        """Remove every floating IP and refuse to add any again."""
        with self._lock:
            if self._closed:
                return
            for address in self.addresses:
                self._remove(address)
            self._closed = True
            self._netlink.close()
            self._sender.close()

    def _remove(self, address: DeviceAddress) -> None:
        try:
            if self._netlink.remove(address):
                log.info("Floating IP %s removed", address)
        except AddressError as exc:
            log.error("%s; remove it by hand (ip address del %s dev %s)", exc, address.interface, address.device)

    def _report(self, address: DeviceAddress, problem: str | None) -> None:
        """Log a problem once, when it appears, and once when it clears, not every renewal."""
        previous = self._problems.pop(address, None)
        if problem is not None:
            self._problems[address] = problem
            if problem != previous:
                log.error("Floating IP not held: %s", problem)
        elif previous is not None:
            log.info("Floating IP %s is held again", address)
