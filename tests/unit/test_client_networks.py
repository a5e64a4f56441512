"""Client networks: every rule of the model with the line it refuses with, JSON round trips, and the
rewrite of a VM's interfaces that name a client network."""

from __future__ import annotations

import ipaddress
import re
import xml.etree.ElementTree as ElementTree

import pytest

from pvcd.cluster.client_networks import (
    MAX_VNI,
    ClientNetwork,
    Dhcp,
    InvalidNetwork,
    Ipv4,
    Lease,
    NetworkType,
    Reservation,
    bridge_name,
    check_among,
    check_hostname,
    check_mac,
    check_network,
    check_reservation,
    check_reservations_kept,
    modified,
    network_of_bridge,
    networks_of_domain,
    parse_network,
    parse_vni,
    plug_interfaces,
    vni_named,
)

IPV4 = {"ipv4_network": "10.100.0.0/24", "ipv4_gateway": "10.100.0.1"}
DHCP = {"dhcp_start": "10.100.0.100", "dhcp_end": "10.100.0.199"}
IPV6 = {"ipv6_network": "fd00:100::/64", "ipv6_gateway": "fd00:100::1"}


def managed(vni: int = 100, **options: str) -> ClientNetwork:
    return parse_network(vni, "managed", **{**IPV4, **DHCP, **options})


def test_a_full_network_parses_and_names_its_devices():
    network = parse_network(
        100, "managed", "clients", "net100.local", **IPV4, **DHCP, **IPV6, name_servers=("10.100.0.1", "fd00::53")
    )
    assert network.bridge == "vmbr100" and network.overlay == "vxlan100"
    assert network.dhcp == Dhcp(ipaddress.IPv4Address("10.100.0.100"), ipaddress.IPv4Address("10.100.0.199"))
    assert str(network.ipv4.gateway_interface) == "10.100.0.1/24"
    assert str(network.ipv6.gateway_interface) == "fd00:100::1/64"
    assert parse_network(7, "bridged").overlay == "vlan7"
    assert network.to_json() == {
        "vni": 100,
        "type": "managed",
        "description": "clients",
        "domain": "net100.local",
        "ipv4": {
            "network": "10.100.0.0/24",
            "gateway": "10.100.0.1",
            "dhcp": {"start": "10.100.0.100", "end": "10.100.0.199"},
        },
        "ipv6": {"network": "fd00:100::/64", "gateway": "fd00:100::1"},
        "name_servers": ["10.100.0.1", "fd00::53"],
    }
    assert ClientNetwork.from_json(network.to_json()) == network


@pytest.mark.parametrize(
    "options, message",
    [
        ({"ipv4_network": "10.1.0.0/24"}, "an IPv4 network needs both --ipv4-network and --ipv4-gateway"),
        ({"ipv4_gateway": "10.1.0.1"}, "an IPv4 network needs both --ipv4-network and --ipv4-gateway"),
        ({"ipv6_network": "fd00::/64"}, "an IPv6 network needs both --ipv6-network and --ipv6-gateway"),
        ({**IPV4, "dhcp_start": "10.100.0.100"}, "a DHCP range needs both --dhcp-start and --dhcp-end"),
        (DHCP, "DHCP needs an IPv4 network (--ipv4-network, --ipv4-gateway)"),
        (
            {"ipv4_network": "10.1.0.0/33", "ipv4_gateway": "10.1.0.1"},
            "IPv4 network '10.1.0.0/33' is not a network in CIDR form (10.1.0.0/24)",
        ),
        (
            {"ipv4_network": "ten", "ipv4_gateway": "10.1.0.1"},
            "IPv4 network 'ten' is not a network in CIDR form (10.1.0.0/24)",
        ),
        (
            {"ipv4_network": "10.1.0.1/24", "ipv4_gateway": "10.1.0.1"},
            "IPv4 network '10.1.0.1/24' has host bits set: did you mean 10.1.0.0/24?",
        ),
        (
            {"ipv6_network": "fd00::1/64", "ipv6_gateway": "fd00::1"},
            "IPv6 network 'fd00::1/64' has host bits set: did you mean fd00::/64?",
        ),
        (
            {"ipv6_network": "fd00::/129", "ipv6_gateway": "fd00::1"},
            "IPv6 network 'fd00::/129' is not a network in CIDR form (fd00::/64)",
        ),
        (
            {"ipv4_network": "10.1.0.0/24", "ipv4_gateway": "10.1.0"},
            "IPv4 gateway '10.1.0' is not an IPv4 address",
        ),
        ({"ipv6_network": "fd00::/64", "ipv6_gateway": "fd00::g"}, "IPv6 gateway 'fd00::g' is not an IPv6 address"),
        ({**IPV4, "dhcp_start": "x", "dhcp_end": "10.100.0.9"}, "DHCP start 'x' is not an IPv4 address"),
        ({**IPV4, "dhcp_start": "10.100.0.9", "dhcp_end": "y"}, "DHCP end 'y' is not an IPv4 address"),
        (
            {"ipv4_network": "10.1.0.0/31", "ipv4_gateway": "10.1.0.1"},
            "IPv4 network 10.1.0.0/31 is too small for a gateway and clients (/30 at most)",
        ),
        (
            {"ipv4_network": "10.1.0.0/24", "ipv4_gateway": "10.2.0.1"},
            "IPv4 gateway 10.2.0.1 is not a host address of 10.1.0.0/24",
        ),
        (
            {"ipv4_network": "10.1.0.0/24", "ipv4_gateway": "10.1.0.0"},
            "IPv4 gateway 10.1.0.0 is not a host address of 10.1.0.0/24",
        ),
        (
            {"ipv4_network": "10.1.0.0/24", "ipv4_gateway": "10.1.0.255"},
            "IPv4 gateway 10.1.0.255 is not a host address of 10.1.0.0/24",
        ),
        (
            {**IPV4, "dhcp_start": "10.99.0.10", "dhcp_end": "10.100.0.20"},
            "DHCP start 10.99.0.10 is not a host address of 10.100.0.0/24",
        ),
        (
            {**IPV4, "dhcp_start": "10.100.0.10", "dhcp_end": "10.100.0.255"},
            "DHCP end 10.100.0.255 is not a host address of 10.100.0.0/24",
        ),
        (
            {**IPV4, "dhcp_start": "10.100.0.20", "dhcp_end": "10.100.0.10"},
            "DHCP range 10.100.0.20-10.100.0.10 ends before it starts",
        ),
        (
            {**IPV4, "dhcp_start": "10.100.0.1", "dhcp_end": "10.100.0.10"},
            "DHCP range 10.100.0.1-10.100.0.10 contains the gateway 10.100.0.1",
        ),
        (
            {"ipv6_network": "fd00::/64", "ipv6_gateway": "fd01::1"},
            "IPv6 gateway fd01::1 is not a host address of fd00::/64",
        ),
        (
            {"ipv6_network": "fd00::/64", "ipv6_gateway": "fd00::"},
            "IPv6 gateway fd00:: is not a host address of fd00::/64",
        ),
        ({"description": "x" * 201}, "description must be one line of at most 200 characters"),
        ({"description": "two\nlines"}, "description must be one line of at most 200 characters"),
        ({"domain": "Net_1.local"}, "domain 'Net_1.local' is not a DNS domain"),
        ({"domain": ("a" * 60 + ".") * 5 + "local"}, "is not a DNS domain"),
        ({"name_servers": ("10.0.0.1", "dns1")}, "name server 'dns1' is not an IP address"),
    ],
)
def test_each_refused_network_says_why_in_one_line(options, message):
    with pytest.raises(InvalidNetwork) as refused:
        parse_network(100, "managed", **options)
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    "vni, type_, message",
    [
        (0, "managed", f"vni 0 is outside 1-{MAX_VNI}"),
        (MAX_VNI + 1, "managed", f"vni {MAX_VNI + 1} is outside 1-{MAX_VNI}"),
        ("100", "managed", "vni must be a whole number, got '100'"),
        (True, "managed", "vni must be a whole number"),
        (100, "routed", "type must be managed or bridged, got 'routed'"),
        (4095, "bridged", "a bridged network's vni is its VLAN id: 4095 is outside 1-4094"),
    ],
)
def test_vni_and_type(vni, type_, message):
    with pytest.raises(InvalidNetwork, match=re.escape(message)):
        parse_network(vni, type_)


def test_a_bridged_network_has_no_dhcp_its_gateway_is_not_on_the_primary():
    assert parse_network(4094, "bridged", **IPV4).dhcp is None
    with pytest.raises(
        InvalidNetwork, match=re.escape("network 10 is bridged: DHCP is served on managed networks only")
    ):
        parse_network(10, "bridged", **IPV4, **DHCP)


@pytest.mark.parametrize("text", ["", "abc", "-1", "1e3", "+5", " 5", "٣", "0", "16777216", "9" * 40])
def test_parse_vni_refuses_what_is_not_a_vni(text):
    with pytest.raises(InvalidNetwork) as refused:
        parse_vni(text)
    assert "vni" in str(refused.value) and len(str(refused.value)) < 80


def test_parse_vni():
    assert parse_vni("100") == 100 and parse_vni(str(MAX_VNI)) == MAX_VNI and parse_vni("007") == 7


def test_check_among():
    net100 = managed(100, **IPV6)
    others = {100: net100}
    with pytest.raises(
        InvalidNetwork, match=re.escape("network 100 exists already; change it with 'pvc network modify'")
    ):
        check_among(managed(100), others)
    check_among(managed(100, ipv4_network="10.100.0.0/23"), others, replacing=True)
    with pytest.raises(InvalidNetwork, match=re.escape("10.100.0.0/16 overlaps 10.100.0.0/24 of network 100")):
        check_among(managed(101, ipv4_network="10.100.0.0/16", dhcp_start="10.100.5.1", dhcp_end="10.100.5.9"), others)
    with pytest.raises(InvalidNetwork, match=re.escape("fd00:100::/48 overlaps fd00:100::/64 of network 100")):
        check_among(parse_network(101, "managed", ipv6_network="fd00:100::/48", ipv6_gateway="fd00:100::1"), others)
    net102 = parse_network(102, "managed", ipv4_network="10.102.0.0/24", ipv4_gateway="10.102.0.1")
    with pytest.raises(InvalidNetwork, match=re.escape("10.100.0.0/14 overlaps 10.102.0.0/24 of network 102")):
        check_among(managed(100, ipv4_network="10.100.0.0/14"), {**others, 102: net102}, replacing=True)
    net101 = {"ipv4_network": "10.101.0.0/24", "ipv4_gateway": "10.101.0.1"}
    check_among(parse_network(101, "managed", **net101), others)
    check_among(parse_network(101, "bridged"), others)


def test_modified_validates_again():
    network = managed()
    assert modified(network, description="new").description == "new"
    with pytest.raises(InvalidNetwork, match=re.escape("description must be one line")):
        modified(network, description="a\nb")
    with pytest.raises(InvalidNetwork, match=re.escape("DHCP is served on managed networks only")):
        modified(network, type=NetworkType.BRIDGED)
    assert check_network(network) is network


@pytest.mark.parametrize(
    "value, message",
    [
        ([], "network record is not an object: '[]'"),
        ({"vni": "7", "type": "managed"}, "vni must be a whole number"),
        ({"vni": 7, "type": "managed", "domain": 5}, "domain must be a string, got '5'"),
        ({"vni": 7, "type": "managed", "name_servers": "10.1.0.1"}, "name_servers must be a list"),
        ({"vni": 7, "type": "managed", "name_servers": 5}, "name_servers must be a list"),
        ({"vni": 7, "type": "managed", "ipv4": {"gateway": "10.1.0.1"}}, "IPv4 network 'None' is not a network"),
        (
            {"vni": 7, "type": "managed", "ipv4": {"network": "10.1.0.0/24", "gateway": "10.1.0.1", "dhcp": {}}},
            "DHCP start 'None' is not an IPv4 address",
        ),
        ({"vni": 7, "type": "managed", "ipv4": {"network": "10.1.0.0/24"}}, "IPv4 gateway 'None' is not an IPv4"),
        ({"vni": 7, "type": "managed", "ipv6": {"network": "fd00::/64", "gateway": "fd01::1"}}, "not a host address"),
        ({"vni": 7, "type": "managed", "ipv4": {"network": 5, "gateway": "x"}}, "IPv4 network '5' is not a network"),
        (
            {
                "vni": 7,
                "type": "bridged",
                "ipv4": {
                    "network": "10.1.0.0/24",
                    "gateway": "10.1.0.1",
                    "dhcp": {"start": "10.1.0.5", "end": "10.1.0.9"},
                },
            },
            "DHCP is served on managed networks only",
        ),
    ],
)
def test_a_damaged_record_is_invalid_network_never_another_error(value, message):
    with pytest.raises(InvalidNetwork, match=re.escape(message)):
        ClientNetwork.from_json(value)


def test_optional_parts_of_a_record():
    network = ClientNetwork.from_json({"vni": 7, "type": "bridged"})
    assert network == ClientNetwork(7, NetworkType.BRIDGED)
    assert network.dhcp is None and network.name_servers == ()
    assert ClientNetwork.from_json(network.to_json()) == network
    without_dhcp = ClientNetwork.from_json(
        {"vni": 8, "type": "managed", "ipv4": {"network": "10.8.0.0/24", "gateway": "10.8.0.1", "dhcp": None}}
    )
    assert without_dhcp.ipv4 == Ipv4(ipaddress.IPv4Network("10.8.0.0/24"), ipaddress.IPv4Address("10.8.0.1"))


# -- reservations and leases ---------------------------------------------------------------


def reservation(mac: str, ipv4: str, hostname: str | None = None) -> Reservation:
    return Reservation.from_json({"mac": mac, "ipv4": ipv4, "hostname": hostname})


def lease(mac: str, ipv4: str, expiry: int = 2_000_000_000) -> Lease:
    return Lease.from_json({"mac": mac, "ipv4": ipv4, "hostname": None, "expiry": expiry})


MAC1, MAC2, MAC3 = "52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"


def test_mac_and_hostname():
    assert check_mac("52:54:00:AB:cd:EF") == "52:54:00:ab:cd:ef"
    for bad in ("52:54:00:ab:cd", "52-54-00-ab-cd-ef", "52:54:00:ab:cd:eg", None, "x" * 100):
        with pytest.raises(InvalidNetwork, match=re.escape("is not six hex pairs")):
            check_mac(bad)
    assert check_hostname(None) is None and check_hostname("") is None
    assert check_hostname("Web-1") == "web-1"
    for bad in ("web_1", "-web", "web.example", "a" * 64):
        with pytest.raises(InvalidNetwork, match=re.escape("is not one DNS label")):
            check_hostname(bad)


def test_reservation_and_lease_records():
    reserved = reservation("52:54:00:AA:00:01", "10.100.0.150", "Web1")
    assert reserved == Reservation("52:54:00:aa:00:01", ipaddress.IPv4Address("10.100.0.150"), "web1")
    assert Reservation.from_json(reserved.to_json()) == reserved
    leased = lease(MAC1, "10.100.0.120", 0)
    assert Lease.from_json(leased.to_json()) == leased
    for value, message in [
        ("x", "reservation is not an object"),
        ({"mac": "x", "ipv4": "10.0.0.1"}, "MAC address 'x' is not six hex pairs"),
        ({"mac": MAC1, "ipv4": "10.0.0"}, "reserved address '10.0.0' is not an IPv4 address"),
        ({"mac": MAC1, "ipv4": "10.0.0.1", "hostname": "a b"}, "host name 'a b' is not one DNS label"),
    ]:
        with pytest.raises(InvalidNetwork, match=re.escape(message)):
            Reservation.from_json(value)
    for value, message in [
        (None, "lease is not an object"),
        ({"mac": MAC1, "ipv4": "10.0.0.1"}, "lease expiry must be seconds since the epoch, got 'None'"),
        ({"mac": MAC1, "ipv4": "10.0.0.1", "expiry": True}, "lease expiry must be seconds since the epoch"),
        ({"mac": MAC1, "ipv4": "10.0.0.1", "expiry": -1}, "lease expiry must be seconds since the epoch"),
        ({"mac": MAC1, "ipv4": "fd00::1", "expiry": 5}, "leased address 'fd00::1' is not an IPv4 address"),
    ]:
        with pytest.raises(InvalidNetwork, match=re.escape(message)):
            Lease.from_json(value)


def test_check_reservation():
    network = managed()
    reservations = {MAC1: reservation(MAC1, "10.100.0.150")}
    leases = {MAC2: lease(MAC2, "10.100.0.160"), MAC3: lease(MAC3, "10.100.0.170")}
    check_reservation(network, reservation("52:54:00:00:00:09", "10.100.0.151"), reservations, leases)
    # A client's own lease does not stand in the way of its reservation.
    check_reservation(network, reservation(MAC3, "10.100.0.170"), reservations, leases)
    cases = [
        (parse_network(100, "managed", **IPV4), reservation(MAC3, "10.100.0.150"), "network 100 has no DHCP"),
        (network, reservation(MAC3, "10.100.0.50"), "10.100.0.50 is outside the DHCP range 10.100.0.100-10.100.0.199"),
        (network, reservation(MAC3, "10.100.0.200"), "is outside the DHCP range"),
        (network, reservation(MAC1, "10.100.0.151"), f"{MAC1} already has a reservation on network 100"),
        (network, reservation(MAC3, "10.100.0.150"), f"10.100.0.150 is reserved for {MAC1} already"),
        (network, reservation(MAC3, "10.100.0.160"), f"10.100.0.160 is leased to {MAC2}"),
    ]
    for target, reserved, message in cases:
        with pytest.raises(InvalidNetwork, match=re.escape(message)):
            check_reservation(target, reserved, reservations, leases)


def test_check_reservations_kept():
    reservations = {MAC1: reservation(MAC1, "10.100.0.150")}
    check_reservations_kept(managed(), reservations)
    check_reservations_kept(parse_network(100, "managed", **IPV4), {})
    with pytest.raises(InvalidNetwork, match=re.escape("network 100 has 1 DHCP reservation")):
        check_reservations_kept(parse_network(100, "managed", **IPV4), reservations)
    with pytest.raises(
        InvalidNetwork, match=re.escape(f"reservation 10.100.0.150 of {MAC1} would be outside the DHCP range")
    ):
        check_reservations_kept(managed(dhcp_end="10.100.0.149"), reservations)


# -- VM interfaces ---------------------------------------------------------------------------


def domain(*interfaces: str, extra: str = "") -> str:
    return (
        "<domain type='kvm'><name>web1</name><memory unit='MiB'>512</memory>"
        f"<devices>{''.join(interfaces)}{extra}</devices></domain>"
    )


def test_names_of_client_networks():
    assert bridge_name(100) == "vmbr100"
    assert network_of_bridge("vmbr100") == 100 and network_of_bridge(f"vmbr{MAX_VNI}") == MAX_VNI
    for other in ("vmbr0", "vmbr007", f"vmbr{MAX_VNI + 1}", "vmbr", "br0", "vmbr1a", "xvmbr1", None, ""):
        assert network_of_bridge(other) is None, other
    assert vni_named("42") == 42
    for other in ("default", "0", "042", "4 2", "٣", None, "1" * 30):
        assert vni_named(other) is None, other


def test_an_interface_naming_a_network_by_vni_is_plugged_into_its_bridge():
    text = domain(
        "<interface type='network'><source network='100' portgroup='x'/><mac address='52:54:00:00:00:01'/>"
        "<model type='virtio'/></interface>",
        "<interface type='bridge'><source bridge='vmbr200'/></interface>",
        extra="<!-- kept -->",
    )
    plugged, vnis = plug_interfaces(text)
    assert vnis == frozenset({100, 200})
    interfaces = ElementTree.fromstring(plugged).findall("devices/interface")
    assert [(i.get("type"), i.find("source").attrib) for i in interfaces] == [
        ("bridge", {"bridge": "vmbr100"}),
        ("bridge", {"bridge": "vmbr200"}),
    ]
    assert interfaces[0].find("mac").get("address") == "52:54:00:00:00:01"
    assert interfaces[0].find("model").get("type") == "virtio"
    assert "<!-- kept -->" in plugged
    assert networks_of_domain(plugged) == vnis
    assert plug_interfaces(plugged) == (plugged, vnis)


def test_other_interfaces_are_left_as_they_are_byte_for_byte():
    text = domain(
        "<interface type='bridge'><source bridge='vmbr0'/></interface>",
        "<interface type='bridge'><source bridge='br-upstream'/></interface>",
        "<interface type='network'><source network='default'/></interface>",
        "<interface type='network'><source network='042'/></interface>",
        "<interface type='user'/>",
        "<interface type='direct'><source dev='eth0' mode='bridge'/></interface>",
        "<interface type='bridge'><source bridge='vmbr300'/></interface>",
    )
    assert plug_interfaces(text) == (text, frozenset({300}))
    assert plug_interfaces(domain()) == (domain(), frozenset())
    no_devices = "<domain type='kvm'><name>a</name></domain>"
    assert plug_interfaces(no_devices) == (no_devices, frozenset())


def test_unreadable_domain_xml():
    with pytest.raises(InvalidNetwork, match=re.escape("malformed domain XML")):
        plug_interfaces("<domain>")
    with pytest.raises(InvalidNetwork, match=re.escape("malformed domain XML")):
        networks_of_domain("")
    with pytest.raises(InvalidNetwork, match=re.escape("<!DOCTYPE>")):
        plug_interfaces('<!DOCTYPE domain [<!ENTITY n "100">]><domain/>')
