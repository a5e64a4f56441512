"""Client network devices in real network namespaces (pvcd.network.client_interfaces).

Each test gets three namespaces, nodes `a`, `b` and `c`, whose `eth0` (a veth)
sits on a bridge in the root namespace and holds the node's cluster address:
the cluster network. The adapter runs from the test process against each
namespace, as pvcd would inside it. The test inspects the result with `ip`
and `bridge` and moves traffic with `ping`. Everything is removed at the end.

Bridged networks (a VLAN on the bridge device) cannot be built here: this
kernel has no VLAN devices. The last test checks that the kernel's refusal
comes back as an error naming the device and the network, while the other
networks are still applied. The request that would create the VLAN is
checked in tests/unit/test_client_interfaces.py.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Interface, IPv6Interface
from typing import Any

import pytest
from pyroute2 import IPRoute
from pyroute2.netns import create_socket

from helpers import wait_for
from pvcd.cluster.client_networks import ClientNetwork, parse_network
from pvcd.devcluster.netlab import sh
from pvcd.network.addresses import LeaseLost
from pvcd.network.client_interfaces import (
    Applied,
    ClientInterfaces,
    Create,
    DefaultRoute,
    Delete,
    FloodTo,
    Gateways,
    InterfaceError,
    SetMaster,
    SetMtu,
    SetUp,
    StopFlooding,
    desired_devices,
    gateway_addresses,
)

CLUSTER_MTU = 1500
OVERLAY_MTU = CLUSTER_MTU - 50
VNI = 1042
NODES = ("a", "b", "c")
CLIENT_HOST = {"a": 11, "b": 12, "c": 13}
"""Each node's own test address on the client network's bridge (pvcd never adds these; the test does, to ping)."""


@dataclass(frozen=True)
class Node:
    name: str
    netns: str
    address: IPv4Address
    """The node's cluster address, on eth0."""
    client: IPv4Interface
    client6: IPv6Interface


@dataclass
class Underlay:
    nodes: dict[str, Node]
    network: ClientNetwork
    base: int

    def apply(self, name: str, networks: list[ClientNetwork] | None = None, peers: str = "abc") -> Applied:
        """Apply `networks` (default: the managed one) on node `name`, with the nodes in `peers` as its peers,
        through a fresh adapter, as a (re)started pvcd would."""
        node = self.nodes[name]
        others = [self.nodes[peer].address for peer in peers]
        desired = desired_devices(
            self.network_list(networks), "eth0", CLUSTER_MTU, node.address, others, bridge_device="eth0"
        )
        with ClientInterfaces(node.netns) as interfaces:
            return interfaces.apply(desired)

    def network_list(self, networks: list[ClientNetwork] | None) -> list[ClientNetwork]:
        return [self.network] if networks is None else networks


@pytest.fixture
def underlay() -> Iterator[Underlay]:
    """Three node namespaces on a bridge of their own, with a random tag; all removed at the end."""
    if os.geteuid() != 0:
        pytest.fail("the client network tests need root (namespaces, veth, bridges, VXLAN): run them as root")
    tag = secrets.token_hex(3)
    bridge = f"pvcb{tag}"
    # The addresses exist only inside the namespaces, so they cannot collide with the host's or another test's.
    base = random.randrange(200, 250)
    network = parse_network(
        VNI,
        "managed",
        ipv4_network=f"10.{base}.100.0/24",
        ipv4_gateway=f"10.{base}.100.1",
        ipv6_network=f"fd00:{base}::/64",
        ipv6_gateway=f"fd00:{base}::1",
    )
    nodes = {
        name: Node(
            name,
            f"pvci-{tag}-{name}",
            IPv4Address(f"10.{base}.0.{index}"),
            IPv4Interface(f"10.{base}.100.{CLIENT_HOST[name]}/24"),
            IPv6Interface(f"fd00:{base}::{CLIENT_HOST[name]}/64"),
        )
        for index, name in enumerate(NODES, start=1)
    }
    created: list[str] = []
    try:
        sh("ip", "link", "add", bridge, "type", "bridge")
        sh("ip", "link", "set", bridge, "up")
        for node in nodes.values():
            created.append(node.netns)
            sh("ip", "netns", "add", node.netns)
            peer = f"pv{secrets.token_hex(4)}"
            sh("ip", "link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns", node.netns)
            sh("ip", "link", "set", peer, "master", bridge, "up")
            sh("ip", "-n", node.netns, "link", "set", "lo", "up")
            sh("ip", "-n", node.netns, "link", "set", "eth0", "mtu", str(CLUSTER_MTU), "up")
            sh("ip", "-n", node.netns, "address", "add", f"{node.address}/24", "dev", "eth0")
        yield Underlay(nodes, network, base)
    finally:
        for netns in created:
            subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def link(node: Node, device: str) -> dict[str, Any] | None:
    """`ip -d -j link show` of one device, or None if it does not exist."""
    result = subprocess.run(
        ["ip", "-n", node.netns, "-d", "-j", "link", "show", "dev", device], capture_output=True, text=True
    )
    return json.loads(result.stdout)[0] if result.returncode == 0 else None


def devices(node: Node) -> set[str]:
    return {entry["ifname"] for entry in json.loads(sh("ip", "-n", node.netns, "-j", "link", "show"))}


def flooded(node: Node, device: str) -> set[str]:
    """The peers the VXLAN sends broadcast and unknown unicast to: its all-zeros FDB entries."""
    entries = json.loads(sh("bridge", "-n", node.netns, "-j", "fdb", "show", "dev", device))
    return {entry["dst"] for entry in entries if entry["mac"] == "00:00:00:00:00:00"}


def kernel_state(node: Node) -> dict[str, tuple[Any, ...]]:
    """Per device: ifindex, flags, MTU, master and carrier changes (a down/up flap counts two)."""
    with IPRoute(netns=node.netns) as ipr:
        return {
            message.get("IFLA_IFNAME"): (
                message["index"],
                message["flags"],
                message.get("IFLA_MTU"),
                message.get("IFLA_MASTER"),
                message.get("IFLA_CARRIER_CHANGES"),
            )
            for message in ipr.get_links()
        }


def addresses(node: Node, device: str) -> dict[str, dict[str, Any]]:
    """Global addresses on the device, address → `ip -j` details (lifetimes, dynamic)."""
    shown = json.loads(sh("ip", "-n", node.netns, "-j", "address", "show", "dev", device))
    return {info["local"]: info for info in shown[0]["addr_info"] if info["scope"] == "global"}


def add_client_address(node: Node, device: str) -> None:
    sh("ip", "-n", node.netns, "address", "add", str(node.client), "dev", device)
    sh("ip", "-n", node.netns, "address", "add", str(node.client6), "dev", device, "nodad")


def ping(node: Node, address: object, size: int | None = None) -> bool:
    """One echo from the node's namespace; `size` with the don't-fragment bit set."""
    options = ["-M", "do", "-s", str(size)] if size is not None else []
    result = subprocess.run(
        ["ip", "netns", "exec", node.netns, "ping", "-n", "-c", "1", "-W", "1", *options, str(address)],
        capture_output=True,
        timeout=10,
    )
    return result.returncode == 0


def mac(node: Node, device: str) -> str:
    found = link(node, device)
    assert found is not None, f"{device} missing on {node.name}"
    return str(found["address"])


def neighbour(node: Node, device: str, address: object) -> str | None:
    entries = json.loads(sh("ip", "-n", node.netns, "-j", "neigh", "show", str(address), "dev", device))
    return entries[0].get("lladdr") if entries else None


def packet_socket(node: Node) -> socket.socket:
    """A raw packet socket inside the node's namespace, for gratuitous ARP (pvcd opens it in its own)."""
    return create_socket(node.netns, socket.AF_PACKET, socket.SOCK_RAW, 0, flags=0)


def test_a_managed_network_is_a_vxlan_in_a_bridge_on_each_node_and_carries_traffic(underlay):
    a, b = underlay.nodes["a"], underlay.nodes["b"]
    bridge, vxlan = f"vmbr{VNI}", f"vxlan{VNI}"
    for node, peer in ((a, "b"), (b, "a")):
        applied = underlay.apply(node.name, peers=peer)
        assert applied.errors == ()
        assert [type(change) for change in applied.changes] == [Create, SetUp, Create, SetUp, FloodTo]
        found = link(node, vxlan)
        assert found is not None
        assert found["linkinfo"]["info_kind"] == "vxlan"
        info = found["linkinfo"]["info_data"]
        assert (info["id"], info["local"], info["link"], info["port"]) == (VNI, str(node.address), "eth0", 4789)
        assert (found["mtu"], found["master"], "UP" in found["flags"]) == (OVERLAY_MTU, bridge, True)
        found = link(node, bridge)
        assert found is not None
        assert (found["linkinfo"]["info_kind"], found["mtu"], "UP" in found["flags"]) == ("bridge", OVERLAY_MTU, True)
        assert flooded(node, vxlan) == {str(underlay.nodes[peer].address)}
        add_client_address(node, bridge)
    assert wait_for(lambda: ping(a, b.client.ip), 10, what="a to reach b across the VXLAN")
    assert wait_for(lambda: ping(b, a.client6.ip), 10, what="b to reach a over IPv6 across the VXLAN")
    # A frame of the overlay's full MTU crosses without fragmenting: the 50 bytes of VXLAN fit in eth0's 1500.
    assert ping(a, b.client.ip, size=OVERLAY_MTU - 28)


def test_applying_again_changes_nothing_and_drift_is_repaired_in_place(underlay):
    a = underlay.nodes["a"]
    bridge, vxlan = f"vmbr{VNI}", f"vxlan{VNI}"
    assert underlay.apply("a", peers="b").errors == ()
    before = kernel_state(a)
    fdb_before = flooded(a, vxlan)
    # A new adapter each time, as a restarted pvcd: same ifindexes, no flap, no request sent.
    assert underlay.apply("a", peers="b") == Applied((), ())
    assert underlay.apply("a", peers="ab") == Applied((), ())
    assert kernel_state(a) == before
    assert flooded(a, vxlan) == fdb_before
    sh("ip", "-n", a.netns, "link", "set", vxlan, "nomaster")
    sh("ip", "-n", a.netns, "link", "set", vxlan, "down")
    sh("ip", "-n", a.netns, "link", "set", bridge, "mtu", "1400")
    assert underlay.apply("a", peers="b").changes == (
        SetMtu(bridge, VNI, OVERLAY_MTU),
        SetMaster(vxlan, VNI, bridge),
        SetUp(vxlan, VNI),
    )
    after = kernel_state(a)
    assert {name: state[0] for name, state in after.items()} == {name: state[0] for name, state in before.items()}
    assert (after[bridge][2], after[vxlan][2]) == (OVERLAY_MTU, OVERLAY_MTU)
    assert underlay.apply("a", peers="b") == Applied((), ())


def test_flood_entries_follow_the_nodes_as_they_come_and_go(underlay):
    a, b, c = (underlay.nodes[name] for name in NODES)
    vxlan = f"vxlan{VNI}"
    for node, peers in ((a, "b"), (b, "a")):
        assert underlay.apply(node.name, peers=peers).errors == ()
        add_client_address(node, f"vmbr{VNI}")
    assert flooded(a, vxlan) == {str(b.address)}
    # c joins: the others add it, nothing else changes.
    assert underlay.apply("a").changes == (FloodTo(vxlan, VNI, c.address),)
    assert underlay.apply("b").changes == (FloodTo(vxlan, VNI, c.address),)
    assert underlay.apply("c").errors == ()
    add_client_address(c, f"vmbr{VNI}")
    assert flooded(a, vxlan) == {str(b.address), str(c.address)}
    assert flooded(c, vxlan) == {str(a.address), str(b.address)}
    assert wait_for(lambda: ping(c, a.client.ip), 10, what="c to reach a across the VXLAN")
    assert ping(c, b.client.ip)
    # c leaves.
    assert underlay.apply("a", peers="b").changes == (StopFlooding(vxlan, VNI, c.address),)
    assert flooded(a, vxlan) == {str(b.address)}


def test_removing_a_network_removes_its_devices_and_nothing_else(underlay):
    a = underlay.nodes["a"]
    bridge, vxlan = f"vmbr{VNI}", f"vxlan{VNI}"
    assert underlay.apply("a", peers="b").errors == ()
    # An operator's bridge with pvcd's prefix but no VNI, and a guest's interface in the network's bridge.
    sh("ip", "-n", a.netns, "link", "add", "vmbr0", "type", "bridge")
    sh("ip", "-n", a.netns, "link", "add", "vnet0", "type", "veth", "peer", "name", "vnet1")
    sh("ip", "-n", a.netns, "link", "set", "vnet0", "master", bridge)
    applied = underlay.apply("a", networks=[])
    assert applied.changes == (
        Delete(vxlan, VNI, f"network {VNI} does not exist"),
        Delete(bridge, VNI, f"network {VNI} does not exist"),
    )
    assert devices(a) == {"lo", "eth0", "vmbr0", "vnet0", "vnet1"}
    assert underlay.apply("a", networks=[]) == Applied((), ())


def test_gateway_addresses_are_held_with_kernel_lifetimes(underlay):
    a, b = underlay.nodes["a"], underlay.nodes["b"]
    bridge = f"vmbr{VNI}"
    network = underlay.network
    gateway4, gateway6 = str(network.ipv4.gateway), str(network.ipv6.gateway)
    for node, peers in ((a, "b"), (b, "a")):
        assert underlay.apply(node.name, peers=peers).errors == ()
    add_client_address(b, bridge)
    gateways = Gateways(netns=a.netns, sender=packet_socket(a))
    try:
        gateways.hold([network], lambda: 30)
        assert gateways.held == frozenset(gateway_addresses(network))
        held = addresses(a, bridge)
        assert set(held) == {gateway4, gateway6}
        for address in (gateway4, gateway6):
            assert held[address]["dynamic"] is True
            assert 0 < held[address]["valid_life_time"] <= 30
            assert 0 < held[address]["preferred_life_time"] <= 30
        assert (held[gateway4]["prefixlen"], held[gateway6]["prefixlen"]) == (24, 64)
        assert wait_for(lambda: ping(b, gateway4), 10, what="b to reach the IPv4 gateway on a")
        assert wait_for(lambda: ping(b, gateway6), 10, what="b to reach the IPv6 gateway on a")
        # Renewed in place, as the floating IPs at each lease confirmation.
        gateways.hold([network], lambda: 600)
        assert all(info["valid_life_time"] > 30 for info in addresses(a, bridge).values())
        # A primary that stops renewing loses them on its own.
        gateways.hold([network], lambda: 2)
        wait_for(lambda: addresses(a, bridge) == {}, 10, what="the kernel to expire the gateways")
        gateways.hold([network], lambda: 30)
        assert set(addresses(a, bridge)) == {gateway4, gateway6}
        # The network is gone (or its gateway changed): its old addresses go at the next renewal.
        gateways.hold([], lambda: 30)
        assert addresses(a, bridge) == {}
        gateways.hold([network], lambda: 30)
        gateways.release()
        assert addresses(a, bridge) == {}
        assert gateways.held == frozenset()
        # The lease ran out while the first address was being added: it is removed again.
        answers = iter([30, 0])
        with pytest.raises(LeaseLost):
            gateways.hold([network], lambda: next(answers))
        assert addresses(a, bridge) == {}
    finally:
        gateways.close()
    assert addresses(a, bridge) == {}


def test_gratuitous_arp_moves_the_gateway_to_the_new_primary(underlay):
    a, b, c = (underlay.nodes[name] for name in NODES)
    bridge = f"vmbr{VNI}"
    gateway = underlay.network.ipv4.gateway
    for node in (a, b, c):
        assert underlay.apply(node.name, peers="abc").errors == ()
    add_client_address(b, bridge)
    old, new = Gateways(netns=a.netns, sender=packet_socket(a)), Gateways(netns=c.netns, sender=packet_socket(c))
    try:
        old.hold([underlay.network], lambda: 30)
        assert wait_for(lambda: ping(b, gateway), 10, what="b to reach the gateway on a")
        assert neighbour(b, bridge, gateway) == mac(a, bridge)
        old.release()
        new.hold([underlay.network], lambda: 30)
        new.announce()
        wait_for(lambda: neighbour(b, bridge, gateway) == mac(c, bridge), 5, what="b to learn the gateway's new MAC")
        assert ping(b, gateway)
    finally:
        old.close()
        new.close()


def test_the_upstream_gateway_is_the_default_route_set_only_when_different(underlay):
    a = underlay.nodes["a"]
    base = underlay.base

    def defaults() -> list[tuple[str, int]]:
        routes = json.loads(sh("ip", "-n", a.netns, "-j", "route", "show", "default"))
        return sorted((route["gateway"], route.get("metric", 0)) for route in routes)

    with ClientInterfaces(a.netns) as interfaces:
        route = DefaultRoute(IPv4Address(f"10.{base}.0.254"), "eth0")
        assert interfaces.set_default_route(route) is True
        assert defaults() == [(f"10.{base}.0.254", 0)]
        assert interfaces.set_default_route(route) is False
        # Another route with a metric of its own (a DHCP client's, say) is neither mistaken for ours nor touched.
        sh("ip", "-n", a.netns, "route", "add", "default", "via", f"10.{base}.0.252", "metric", "100")
        assert interfaces.set_default_route(route) is False
        assert interfaces.set_default_route(DefaultRoute(IPv4Address(f"10.{base}.0.253"), "eth0")) is True
        assert defaults() == [(f"10.{base}.0.252", 100), (f"10.{base}.0.253", 0)]
        with pytest.raises(InterfaceError) as refused:
            interfaces.set_default_route(DefaultRoute(IPv4Address("10.99.0.1"), "eth0"))
        assert str(refused.value) == (
            "cannot set the default route via 10.99.0.1 on eth0: Network is unreachable (errno 101)"
        )
        with pytest.raises(InterfaceError, match="device eth9 does not exist"):
            interfaces.set_default_route(DefaultRoute(IPv4Address(f"10.{base}.0.254"), "eth9"))
    assert defaults() == [(f"10.{base}.0.252", 100), (f"10.{base}.0.253", 0)]


def test_this_kernel_refuses_a_bridged_networks_vlan_with_an_error_naming_it_and_the_network(underlay):
    """This kernel has no VLAN devices (see the module's docstring), so a bridged network cannot be built
    here: the refusal must name the device and the network, and the other networks are still applied."""
    a = underlay.nodes["a"]
    bridged = parse_network(7, "bridged")
    applied = underlay.apply("a", networks=[bridged, underlay.network], peers="b")
    assert [str(error) for error in applied.errors] == [
        "network 7: cannot create VLAN vlan7 (id 7 on eth0, in vmbr7): Operation not supported (errno 95); "
        "this kernel has no vlan devices (the 8021q module)"
    ]
    assert {change.vni for change in applied.changes} == {7, VNI}
    assert {"vmbr7", f"vmbr{VNI}", f"vxlan{VNI}"} <= devices(a)
    assert "vlan7" not in devices(a)
    again = underlay.apply("a", networks=[bridged, underlay.network], peers="b")
    assert (again.changes, [str(error) for error in again.errors]) == ((), [str(error) for error in applied.errors])
