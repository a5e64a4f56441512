"""The DNS aggregator's records and the diff that writes them (pure: no database, no PowerDNS)."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from pvcd.cluster.client_networks import ClientNetwork, Lease, Reservation, parse_network
from pvcd.network.dns_records import (
    Diff,
    NameServer,
    NetworkHosts,
    NodeHosts,
    Record,
    Soa,
    StoredZone,
    Zone,
    default_nameserver,
    desired_zones,
    diff,
    next_serial,
    parse_soa,
)

NOW = 1_800_000_000
SERVER = NameServer("pvc-dns.nodes.test", ipaddress.IPv4Address("192.0.2.10"))
NODES = NodeHosts(
    "nodes.test",
    {"hv1": ipaddress.IPv4Address("192.0.2.1"), "hv2": ipaddress.IPv4Address("192.0.2.2")},
)


def network(vni: int = 100, domain: str | None = "net100.test", type_: str = "managed") -> ClientNetwork:
    return parse_network(
        vni, type_, domain=domain, ipv4_network=f"10.{vni % 250}.0.0/24", ipv4_gateway=f"10.{vni % 250}.0.1"
    )


def lease(mac_tail: int, address: str, hostname: str | None, expiry: int = NOW + 3600) -> Lease:
    return Lease(f"52:54:00:00:00:{mac_tail:02x}", ipaddress.IPv4Address(address), hostname, expiry)


def reservation(mac_tail: int, address: str, hostname: str | None) -> Reservation:
    return Reservation(f"52:54:00:00:01:{mac_tail:02x}", ipaddress.IPv4Address(address), hostname)


def addresses(zone: Zone) -> dict[str, str]:
    """name -> address of the zone's A and AAAA records."""
    return {record.name: record.content for record in zone.records if record.type in ("A", "AAAA")}


def applied(stored: dict[str, StoredZone], change: Diff) -> dict[str, StoredZone]:
    """The stored zones after writing `change`, as the database adapter would."""
    result = {name: set(zone.records) for name, zone in stored.items() if name not in change.remove}
    for name in change.create:
        result[name] = set()
    for zone_change in change.changes:
        result[zone_change.zone] -= set(zone_change.delete)
        result[zone_change.zone] |= set(zone_change.insert)
    return {name: StoredZone(name, frozenset(records)) for name, records in result.items()}


def test_one_zone_per_managed_domain_and_the_nodes_domain_each_with_soa_and_ns():
    zones = desired_zones(
        [
            NetworkHosts(network(100, "net100.test")),
            NetworkHosts(network(101, None)),
            NetworkHosts(parse_network(102, "bridged", domain="bridged.test")),
        ],
        NODES,
        SERVER,
    )
    assert sorted(zones) == ["net100.test", "nodes.test"], "no domain or a bridged network: no zone of ours"
    for name, zone in zones.items():
        assert Record(name, "NS", "pvc-dns.nodes.test") in zone.records
        assert zone.soa.primary == "pvc-dns.nodes.test"
        assert zone.soa.hostmaster == f"hostmaster.{name}"


def test_leases_and_reservations_with_a_hostname_get_an_address_record():
    hosts = NetworkHosts(
        network(),
        leases=(lease(1, "10.100.0.50", "web"), lease(2, "10.100.0.51", None)),
        reservations=(reservation(1, "10.100.0.60", "db"), reservation(2, "10.100.0.61", None)),
    )
    zone = desired_zones([hosts], None, SERVER)["net100.test"]
    assert addresses(zone) == {"web.net100.test": "10.100.0.50", "db.net100.test": "10.100.0.60"}


def test_a_reservation_wins_over_a_lease_of_the_same_name_whatever_the_order():
    hosts = NetworkHosts(
        network(),
        leases=(lease(1, "10.100.0.50", "web", expiry=NOW + 9999),),
        reservations=(reservation(1, "10.100.0.60", "web"),),
    )
    assert addresses(desired_zones([hosts], None, SERVER)["net100.test"]) == {"web.net100.test": "10.100.0.60"}


def test_of_two_leases_of_one_name_the_most_recent_wins():
    hosts = NetworkHosts(
        network(),
        leases=(lease(1, "10.100.0.50", "web", expiry=NOW + 10), lease(2, "10.100.0.51", "web", expiry=NOW + 20)),
    )
    assert addresses(desired_zones([hosts], None, SERVER)["net100.test"]) == {"web.net100.test": "10.100.0.51"}


def test_nodes_in_the_nodes_domain_with_the_name_server_and_ipv6_as_aaaa():
    nodes = NodeHosts(
        "Nodes.Test.",
        {"hv1": ipaddress.IPv4Address("192.0.2.1"), "HV2.nodes.test": ipaddress.IPv6Address("2001:db8::2")},
    )
    zone = desired_zones([], nodes, SERVER)["nodes.test"]
    assert addresses(zone) == {
        "hv1.nodes.test": "192.0.2.1",
        "hv2.nodes.test": "2001:db8::2",
        "pvc-dns.nodes.test": "192.0.2.10",
    }
    assert Record("hv2.nodes.test", "AAAA", "2001:db8::2") in zone.records


def test_a_client_cannot_shadow_a_node_or_the_name_server_in_a_shared_domain():
    hosts = NetworkHosts(
        network(100, "nodes.test"),
        leases=(lease(1, "10.100.0.50", "hv1"), lease(2, "10.100.0.51", "pvc-dns"), lease(3, "10.100.0.52", "web")),
    )
    zones = desired_zones([hosts], NODES, SERVER)
    assert list(zones) == ["nodes.test"]
    assert addresses(zones["nodes.test"]) == {
        "hv1.nodes.test": "192.0.2.1",
        "hv2.nodes.test": "192.0.2.2",
        "pvc-dns.nodes.test": "192.0.2.10",
        "web.nodes.test": "10.100.0.52",
    }


def test_networks_sharing_a_domain_share_one_zone():
    zones = desired_zones(
        [
            NetworkHosts(network(100, "lab.test"), leases=(lease(1, "10.100.0.50", "a"),)),
            NetworkHosts(network(101, "lab.test"), leases=(lease(2, "10.101.0.50", "b"),)),
        ],
        None,
        default_nameserver("nodes.test", None),
    )
    assert addresses(zones["lab.test"]) == {"a.lab.test": "10.100.0.50", "b.lab.test": "10.101.0.50"}
    assert Record("lab.test", "NS", "pvc-dns.nodes.test") in zones["lab.test"].records


def test_from_nothing_every_zone_is_created_with_a_time_serial_and_a_second_diff_is_empty():
    desired = desired_zones([NetworkHosts(network(), leases=(lease(1, "10.100.0.50", "web"),))], NODES, SERVER)
    first = diff({}, desired, NOW)
    assert first.create == ("net100.test", "nodes.test")
    assert first.remove == ()
    assert {change.zone: change.serial for change in first.changes} == {"net100.test": NOW, "nodes.test": NOW}
    stored = applied({}, first)
    for name, zone in desired.items():
        assert stored[name].records == zone.records | {zone.soa.record(name, NOW)}
    assert diff(stored, desired, NOW + 5).empty, "nothing to do: nothing written, serial untouched"


def test_a_changed_lease_replaces_its_record_and_the_soa_with_a_higher_serial():
    before = desired_zones([NetworkHosts(network(), leases=(lease(1, "10.100.0.50", "web"),))], None, SERVER)
    stored = applied({}, diff({}, before, NOW))
    after = desired_zones([NetworkHosts(network(), leases=(lease(1, "10.100.0.77", "web"),))], None, SERVER)
    change = diff(stored, after, NOW)  # same second: the serial still rises
    assert change.create == () and change.remove == ()
    (zone_change,) = change.changes
    soa = before["net100.test"].soa
    assert zone_change.delete == tuple(
        sorted([Record("web.net100.test", "A", "10.100.0.50"), soa.record("net100.test", NOW)])
    )
    assert zone_change.insert == tuple(
        sorted([Record("web.net100.test", "A", "10.100.0.77"), soa.record("net100.test", NOW + 1)])
    )
    assert zone_change.serial == NOW + 1
    assert applied(stored, change)["net100.test"].serial == NOW + 1


def test_a_zone_no_longer_wanted_is_removed_and_the_others_are_not_touched():
    both = desired_zones([NetworkHosts(network())], NODES, SERVER)
    stored = applied({}, diff({}, both, NOW))
    change = diff(stored, desired_zones([], NODES, SERVER), NOW + 60)
    assert change == Diff(remove=("net100.test",))


def test_a_changed_soa_field_or_a_broken_soa_row_is_rewritten():
    desired = desired_zones([], NODES, SERVER)
    stored = applied({}, diff({}, desired, NOW))
    renamed = desired_zones([], NODES, NameServer("ns1.nodes.test", ipaddress.IPv4Address("192.0.2.10")))
    (change,) = diff(stored, renamed, NOW + 100).changes
    assert Record("nodes.test", "SOA", renamed["nodes.test"].soa.content(NOW + 100)) in change.insert
    broken = {"nodes.test": StoredZone("nodes.test", stored["nodes.test"].records | {Record("nodes.test", "SOA", "x")})}
    (repair,) = diff(broken, desired, NOW + 100).changes
    assert Record("nodes.test", "SOA", "x") in repair.delete
    assert repair.serial == NOW + 100
    assert (
        len(
            [
                record
                for record in applied(broken, diff(broken, desired, NOW + 100))["nodes.test"].records
                if record.type == "SOA"
            ]
        )
        == 1
    )


def test_soa_content_round_trips_and_foreign_content_is_not_parsed():
    soa = Soa("ns.example", "hostmaster.example", 1, 2, 3, 4, ttl=5)
    assert parse_soa(soa.record("example", 42)) == (soa, 42)
    assert parse_soa(Record("example", "SOA", "ns.example hostmaster.example 42")) is None
    assert parse_soa(Record("example", "A", "192.0.2.1")) is None


def test_serials_follow_the_clock_and_always_rise():
    assert next_serial(0, NOW) == NOW
    assert next_serial(NOW, NOW) == NOW + 1
    assert next_serial(NOW + 50, NOW) == NOW + 51, "a serial from a faster clock still rises"


_names = st.sampled_from(["a", "b", "c", "web", "db"])
_octets = st.integers(min_value=2, max_value=250)


@st.composite
def _world(draw: st.DrawFn) -> dict[str, Zone]:
    hosts = []
    for vni in draw(st.sets(st.integers(min_value=1, max_value=5), max_size=3)):
        domain = draw(st.sampled_from(["one.test", "two.test", "nodes.test"]))
        leases = tuple(
            lease(index, f"10.{vni}.0.{octet}", name)
            for index, (name, octet) in enumerate(draw(st.lists(st.tuples(_names, _octets), max_size=4)))
        )
        reservations = tuple(
            reservation(index, f"10.{vni}.1.{octet}", name)
            for index, (name, octet) in enumerate(draw(st.lists(st.tuples(_names, _octets), max_size=2)))
        )
        hosts.append(NetworkHosts(network(vni, domain), leases, reservations))
    nodes = NODES if draw(st.booleans()) else None
    return desired_zones(hosts, nodes, SERVER)


@given(_world(), _world(), st.integers(min_value=0, max_value=100))
def test_applying_the_diff_reaches_the_desired_zones_with_rising_serials(before, after, elapsed):
    stored = applied({}, diff({}, before, NOW))
    change = diff(stored, after, NOW + elapsed)
    result = applied(stored, change)
    assert sorted(result) == sorted(after)
    for name, zone in after.items():
        assert {record for record in result[name].records if record.type != "SOA"} == zone.records
        assert len([record for record in result[name].records if record.type == "SOA"]) == 1
        if name in stored and result[name].records != stored[name].records:
            assert result[name].serial > stored[name].serial
    assert diff(result, after, NOW + elapsed + 1).empty
