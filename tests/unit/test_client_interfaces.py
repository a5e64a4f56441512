"""The client network devices a node wants, the changes that get it there, and the netlink requests (pure).

The kernel side is tested in tests/netns/test_client_interfaces.py. VLAN
devices are not: this kernel has none (see /work/shared/DESIGN.md, "Facts
about the build machines"), so a bridged network's VLAN is checked here up to
the netlink message that would create it, compiled by pyroute2 without sending.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface, IPv6Interface
from pathlib import Path

import pytest
import yaml
from pyroute2 import IPBatch
from pyroute2.netlink import NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import RTM_NEWLINK
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from pvcd.cluster.client_networks import NetworkType, parse_network
from pvcd.config import parse_config
from pvcd.network.client_interfaces import (
    VXLAN_PORT,
    Bridge,
    Create,
    DefaultRoute,
    Delete,
    FloodTo,
    GatewayAddress,
    InterfaceError,
    Link,
    NetworkDevices,
    SetMaster,
    SetMtu,
    SetUp,
    StopFlooding,
    Vlan,
    Vxlan,
    create_request,
    default_route,
    desired_devices,
    failure,
    gateway_addresses,
    owned_vni,
    plan,
)

EXAMPLE = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "pvcd.yaml").read_text())
LOCAL = IPv4Address("10.2.0.1")
PEER_B = IPv4Address("10.2.0.2")
PEER_C = IPv4Address("10.2.0.3")
MANAGED = parse_network(
    100,
    "managed",
    ipv4_network="10.100.0.0/24",
    ipv4_gateway="10.100.0.1",
    ipv6_network="fd00:100::/64",
    ipv6_gateway="fd00:100::1",
)
BRIDGED = parse_network(200, "bridged")


def want(*networks, peers=(PEER_B,), cluster_mtu=1500, bridge_mtu=None):
    return desired_devices(
        networks or (MANAGED,), "eth1", cluster_mtu, LOCAL, peers, bridge_device="eth0", bridge_mtu=bridge_mtu
    )


def as_found(desired):
    """The kernel's view once `desired` is applied: its devices and flood entries, as `observe` reports them."""
    links = {}
    flooding = {}
    for index, devices in enumerate(desired.values()):
        bridge, overlay = devices.bridge, devices.overlay
        links[bridge.name] = Link(bridge.name, 10 + 2 * index, "bridge", bridge.mtu or 1500, True)
        links[overlay.name] = Link(
            overlay.name,
            11 + 2 * index,
            "vxlan" if isinstance(overlay, Vxlan) else "vlan",
            overlay.mtu or 1500,
            True,
            master=overlay.bridge,
            lower=overlay.device,
            vni=overlay.vni,
            local=overlay.local if isinstance(overlay, Vxlan) else None,
            port=overlay.port if isinstance(overlay, Vxlan) else None,
        )
        if isinstance(overlay, Vxlan):
            flooding[overlay.name] = overlay.peers
    return links, flooding


def test_a_managed_network_is_a_vxlan_over_the_cluster_device_in_a_bridge():
    devices = want(peers=(PEER_B, PEER_C, LOCAL), cluster_mtu=9000)[100]
    assert devices == NetworkDevices(
        100,
        NetworkType.MANAGED,
        Bridge("vmbr100", 100, 8950),
        # The node's own address is never a flood destination, even when the caller passes every node's.
        Vxlan("vxlan100", 100, "eth1", LOCAL, VXLAN_PORT, 8950, "vmbr100", frozenset({PEER_B, PEER_C})),
    )
    assert VXLAN_PORT == 4789


def test_a_bridged_network_is_a_vlan_on_the_bridge_device():
    assert want(BRIDGED)[200] == NetworkDevices(
        200, NetworkType.BRIDGED, Bridge("vmbr200", 200, None), Vlan("vlan200", 200, "eth0", None, "vmbr200")
    )
    assert want(BRIDGED, bridge_mtu=9000)[200].overlay.mtu == 9000


def test_from_nothing_each_network_gets_its_bridge_then_its_overlay_inside_then_flooding():
    desired = want(MANAGED, BRIDGED, peers=(PEER_C, PEER_B))
    bridge100, vxlan100 = desired[100].bridge, desired[100].overlay
    bridge200, vlan200 = desired[200].bridge, desired[200].overlay
    assert plan(desired, {}, {}) == [
        Create(bridge100),
        SetUp("vmbr100", 100),
        Create(vxlan100),
        SetUp("vxlan100", 100),
        FloodTo("vxlan100", 100, PEER_B),
        FloodTo("vxlan100", 100, PEER_C),
        Create(bridge200),
        SetUp("vmbr200", 200),
        Create(vlan200),
        SetUp("vlan200", 200),
    ]


def test_devices_that_are_right_are_left_alone():
    desired = want(MANAGED, BRIDGED, peers=(PEER_B, PEER_C))
    links, flooding = as_found(desired)
    # A guest's tap in the bridge, the node's own devices: not pvcd's to touch.
    links["vnet0"] = Link("vnet0", 30, "tun", 1450, True, master="vmbr100")
    links["eth1"] = Link("eth1", 2, None, 1500, True)
    assert plan(desired, links, flooding) == []


def test_drift_is_repaired_in_place():
    desired = want()
    links, flooding = as_found(desired)
    links["vmbr100"] = replace(links["vmbr100"], mtu=1500)
    links["vxlan100"] = replace(links["vxlan100"], master=None, up=False, mtu=1400)
    assert plan(desired, links, flooding) == [
        SetMtu("vmbr100", 100, 1450),
        SetMtu("vxlan100", 100, 1450),
        SetMaster("vxlan100", 100, "vmbr100"),
        SetUp("vxlan100", 100),
    ]


def test_flood_entries_follow_the_nodes():
    desired = want(peers=(PEER_B, PEER_C))
    links, _ = as_found(desired)
    assert plan(desired, links, {"vxlan100": frozenset({PEER_B, IPv4Address("10.2.0.9")})}) == [
        FloodTo("vxlan100", 100, PEER_C),
        StopFlooding("vxlan100", 100, IPv4Address("10.2.0.9")),
    ]


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"vni": 101}, "VNI 101 instead of 100"),
        ({"lower": "eth0"}, "device eth0 instead of eth1"),
        ({"local": IPv4Address("10.2.0.7")}, "local address 10.2.0.7 instead of 10.2.0.1"),
        ({"port": 8472}, "port 8472 instead of 4789"),
        ({"kind": "veth"}, "it is a veth, not a vxlan"),
    ],
)
def test_a_vxlan_the_kernel_cannot_change_in_place_is_recreated(change, why):
    desired = want()
    links, flooding = as_found(desired)
    links["vxlan100"] = replace(links["vxlan100"], **change)
    changes = plan(desired, links, flooding)
    assert changes[1:] == [Create(desired[100].overlay), SetUp("vxlan100", 100), FloodTo("vxlan100", 100, PEER_B)]
    assert isinstance(changes[0], Delete) and changes[0].device == "vxlan100"
    assert why in changes[0].reason


def test_a_bridge_that_is_not_a_bridge_is_recreated():
    desired = want()
    links, flooding = as_found(desired)
    links["vmbr100"] = replace(links["vmbr100"], kind="dummy")
    assert plan(desired, links, flooding) == [
        Delete("vmbr100", 100, "it is a dummy, not a bridge; re-created"),
        Create(desired[100].bridge),
        SetUp("vmbr100", 100),
    ]


def test_only_pvcds_devices_of_networks_gone_are_removed_overlays_first():
    links, flooding = as_found(want(MANAGED, BRIDGED))
    for name in ("vmbr0", "vmbr007", "vmbrlan", "vxlan99999999", "vlan", "eth0"):
        links[name] = Link(name, 50, "bridge", 1500, True)
    assert plan({}, links, flooding) == [
        Delete("vlan200", 200, "network 200 does not exist"),
        Delete("vxlan100", 100, "network 100 does not exist"),
        Delete("vmbr100", 100, "network 100 does not exist"),
        Delete("vmbr200", 200, "network 200 does not exist"),
    ]


def test_a_network_changed_from_managed_to_bridged_keeps_its_bridge():
    links, flooding = as_found(want())
    bridged = replace(MANAGED, type=NetworkType.BRIDGED)
    desired = want(bridged, bridge_mtu=1450)
    assert plan(desired, links, flooding) == [
        Delete("vxlan100", 100, "network 100 does not use it"),
        Create(desired[100].overlay),
        SetUp("vlan100", 100),
    ]


def test_owned_names():
    assert [owned_vni(name) for name in ("vmbr1", "vxlan16777215", "vlan4094", "vmbr16777216", "vmbr0", "vmbr01")] == [
        1,
        16777215,
        4094,
        None,
        None,
        None,
    ]


def test_vxlan_request():
    vxlan = want()[100].overlay
    assert create_request(vxlan, {"eth1": 3, "vmbr100": 7}) == {
        "ifname": "vxlan100",
        "kind": "vxlan",
        "vxlan_id": 100,
        "vxlan_link": 3,
        "vxlan_local": "10.2.0.1",
        "vxlan_port": 4789,
        "vxlan_learning": 1,
        "master": 7,
        "mtu": 1450,
    }


def compiled(request):
    """The netlink message pyroute2 would send for `IPRoute.link("add", **request)`, decoded again."""
    batch = IPBatch()
    try:
        batch.link("add", **request)
        message = ifinfmsg(bytes(batch.batch))
    finally:
        batch.close()
    message.decode()
    return message


def test_vlan_request_up_to_the_netlink_message():
    """This kernel has no VLAN devices (creating one is refused with EOPNOTSUPP), so a bridged network's VLAN
    is checked up to the RTM_NEWLINK message that creates it: pyroute2's IPBatch compiles it without sending."""
    vlan = want(BRIDGED, bridge_mtu=9000)[200].overlay
    request = create_request(vlan, {"eth0": 2, "vmbr200": 9})
    assert request == {"ifname": "vlan200", "kind": "vlan", "link": 2, "vlan_id": 200, "master": 9, "mtu": 9000}
    message = compiled(request)
    assert message["header"]["type"] == RTM_NEWLINK
    assert message["header"]["flags"] == NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
    assert message.get("IFLA_IFNAME") == "vlan200"
    assert message.get("IFLA_LINK") == 2
    assert message.get("IFLA_MASTER") == 9
    assert message.get("IFLA_MTU") == 9000
    assert message.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "vlan"
    assert message.get_nested("IFLA_LINKINFO", "IFLA_INFO_DATA", "IFLA_VLAN_ID") == 200


def test_a_request_for_a_missing_device_names_it_and_the_network():
    with pytest.raises(InterfaceError, match=r"^network 200: cannot create VLAN vlan200 .*device eth0 does not exist"):
        create_request(want(BRIDGED)[200].overlay, {"vmbr200": 9})


def test_a_refused_vlan_says_the_kernel_has_none():
    vlan = want(BRIDGED)[200].overlay
    error = failure(Create(vlan), NetlinkError(95))
    assert str(error) == (
        "network 200: cannot create VLAN vlan200 (id 200 on eth0, in vmbr200): Operation not supported (errno 95); "
        "this kernel has no vlan devices (the 8021q module)"
    )
    assert str(failure(FloodTo("vxlan100", 100, PEER_B), NetlinkError(22))) == (
        "network 100: cannot flood vxlan100 to 10.2.0.2: Invalid argument (errno 22)"
    )


def test_gateways_of_a_managed_network_with_its_prefixes():
    assert gateway_addresses(MANAGED) == [
        GatewayAddress(100, "vmbr100", IPv4Interface("10.100.0.1/24")),
        GatewayAddress(100, "vmbr100", IPv6Interface("fd00:100::1/64")),
    ]
    assert str(gateway_addresses(MANAGED)[0]) == "gateway 10.100.0.1/24 on vmbr100 (network 100)"
    assert gateway_addresses(replace(MANAGED, ipv6=None)) == [gateway_addresses(MANAGED)[0]]
    assert gateway_addresses(replace(MANAGED, type=NetworkType.BRIDGED)) == []


def test_the_upstream_gateway_is_the_default_route_on_the_upstream_device():
    assert default_route(parse_config(EXAMPLE)) == DefaultRoute(IPv4Address("1.1.1.1"), "ens4")
    without = copy.deepcopy(EXAMPLE)
    del without["pvc"]["cluster"]["networks"]["upstream"]["gateway"]
    assert default_route(parse_config(without)) is None
