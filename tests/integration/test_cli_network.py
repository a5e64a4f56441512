"""`pvc network ...` and the client networks of `pvc vm define`, against a real ZooKeeper.

The commands run in this process (`cli.main.main`), as `test_vm_cli` runs
them; one test runs the installed `pvc` to see what an operator sees. Every
refusal is checked for its exit status, its one line and that ZooKeeper was
not written. The lease functions the DHCP lease script will call are tested
on the store directly, and so are the version checks that keep two writers
from slipping a clash in between a check and a write.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import cli.main as cli_main
from helpers import bin_path
from pvcd.cluster.client_networks import InvalidNetwork, Lease, Reservation, parse_network
from pvcd.cluster.values import StateRecord
from pvcd.zk import networks, nodes, schema
from pvcd.zk.base import Store
from pvcd.zk.store import Store as ZooKeeperStore

MAC1, MAC2, MAC3 = "52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"
READY = StateRecord("run", "secondary", "ready")


@pytest.fixture
def store(zk, zookeeper) -> Iterator[Store]:
    """A session on an empty cluster (its schema record written, as the first node writes it)."""
    session = ZooKeeperStore(zookeeper.address, security=zookeeper.security())
    session.start()
    session.ensure_schema()
    yield session
    session.stop()


@pytest.fixture
def pvc(zookeeper, capsys):
    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli_main.main(["--zookeeper", zookeeper.address, *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def run_json(pvc, *args: str) -> Any:
    code, out, err = pvc(*args, "--format", "json")
    assert code == 0, err
    return json.loads(out)


def tree(zk, path: str = schema.ROOT) -> dict[str, bytes]:
    """Every znode and value under `path`, to prove a refused command wrote nothing."""
    found = {}
    for child in zk.get_children(path):
        child_path = f"{path.rstrip('/')}/{child}"
        found[child_path] = zk.get(child_path)[0]
        found.update(tree(zk, child_path))
    return found


def add_node(store: Store, name: str) -> None:
    """A registered node with its memory reported, so `pvc vm define --node` can place a VM there."""
    versions = nodes.register(store, name, {"target_selector": "mem"}, READY)
    keepalive = {
        "counter": 1,
        "interval": 3600,
        "memory": {"total": 65536, "used": 0, "free": 65536, "allocated": 0},
        "vcpus": {"allocated": 0},
        "load": 0.0,
        "vms": {"count": 0, "running": []},
    }
    nodes.send_keepalive(store, name, versions, READY, keepalive, 10)


def domain_file(tmp_path, name: str, *interfaces: str) -> str:
    path = tmp_path / f"{name}.xml"
    path.write_text(
        f"<domain type='test'><name>{name}</name><uuid>{uuid.uuid4()}</uuid><memory unit='MiB'>256</memory>"
        "<os><type>hvm</type></os>"
        f"<devices>{''.join(interfaces)}</devices></domain>"
    )
    return str(path)


def on_network(vni: str) -> str:
    return f"<interface type='network'><source network='{vni}'/><model type='virtio'/></interface>"


def on_bridge(bridge: str) -> str:
    return f"<interface type='bridge'><source bridge='{bridge}'/></interface>"


NET100 = (
    "--type",
    "managed",
    "--description",
    "web clients",
    "--domain",
    "net100.local",
    "--ipv4-network",
    "10.100.0.0/24",
    "--ipv4-gateway",
    "10.100.0.1",
    "--dhcp-start",
    "10.100.0.100",
    "--dhcp-end",
    "10.100.0.199",
    "--ipv6-network",
    "fd00:100::/64",
    "--ipv6-gateway",
    "fd00:100::1",
    "--name-server",
    "10.100.0.1",
    "--name-server",
    "fd00:100::1",
)


def test_add_list_info_modify_remove(pvc, store, zk):
    added = run_json(pvc, "network", "add", "100", *NET100)
    assert added == {
        "vni": 100,
        "type": "managed",
        "bridge": "vmbr100",
        "description": "web clients",
        "domain": "net100.local",
        "ipv4": {
            "network": "10.100.0.0/24",
            "gateway": "10.100.0.1",
            "dhcp": {"start": "10.100.0.100", "end": "10.100.0.199"},
        },
        "ipv6": {"network": "fd00:100::/64", "gateway": "fd00:100::1"},
        "name_servers": ["10.100.0.1", "fd00:100::1"],
    }
    stored = {key: value for key, value in added.items() if key != "bridge"}
    assert json.loads(zk.get(schema.network(100))[0]) == stored
    assert zk.get_children(schema.network(100)) == sorted(["reservations", "leases"])

    code, out, err = pvc(
        "network",
        "add",
        "7",
        "--type",
        "bridged",
        "--ipv4-network",
        "192.168.7.0/24",
        "--ipv4-gateway",
        "192.168.7.254",
    )
    assert (code, out, err) == (0, "Added bridged network 7 (bridge vmbr7)\n", "")

    assert [n["vni"] for n in run_json(pvc, "network", "list")] == [7, 100]
    code, out, _ = pvc("network", "list")
    header, first, second = out.splitlines()
    assert header.split()[:4] == ["VNI", "TYPE", "BRIDGE", "IPV4"]
    assert first.split()[:6] == ["7", "bridged", "vmbr7", "192.168.7.0/24", "192.168.7.254", "-"]
    assert second.split()[:6] == [
        "100",
        "managed",
        "vmbr100",
        "10.100.0.0/24",
        "10.100.0.1",
        "10.100.0.100-10.100.0.199",
    ]

    assert run_json(pvc, "network", "info", "100") == {**added, "reservations": 0, "leases": 0}
    code, out, _ = pvc("network", "info", "100")
    assert code == 0
    assert "Bridge:       vmbr100 (on vxlan100)" in out and "DHCP:         10.100.0.100-10.100.0.199" in out
    assert "Name servers: 10.100.0.1, fd00:100::1" in out

    modified = run_json(pvc, "network", "modify", "100", "--description", "", "--dhcp-end", "10.100.0.149")
    assert modified["description"] == "" and modified["ipv4"]["dhcp"] == {
        "start": "10.100.0.100",
        "end": "10.100.0.149",
    }
    assert modified["ipv6"] == added["ipv6"] and modified["domain"] == "net100.local"
    modified = run_json(pvc, "network", "modify", "100", "--no-dhcp", "--domain", "", "--name-server", "10.0.0.53")
    assert modified["ipv4"] == {"network": "10.100.0.0/24", "gateway": "10.100.0.1", "dhcp": None}
    assert modified["domain"] is None and modified["name_servers"] == ["10.0.0.53"]
    assert zk.get(schema.network(100))[1].version == 2
    # A change that changes nothing writes nothing.
    run_json(pvc, "network", "modify", "100", "--type", "managed")
    assert zk.get(schema.network(100))[1].version == 2
    code, out, _ = pvc("network", "modify", "7", "--type", "managed")
    assert (code, out) == (0, "Network 7: modified\n")

    assert run_json(pvc, "network", "remove", "7") == {"removed": 7, "reservations": 0, "leases": 0}
    assert not zk.exists(schema.network(7))
    code, out, _ = pvc("network", "remove", "100")
    assert (code, out) == (0, "Removed network 100 (0 reservations, 0 leases)\n")
    assert zk.get_children(schema.NETWORKS) == []
    assert pvc("network", "list") == (0, "No client networks.\n", "")
    assert run_json(pvc, "network", "list") == []


def test_dhcp_list_add_remove(pvc, store, zk):
    run_json(pvc, "network", "add", "100", *NET100)
    reserved = run_json(pvc, "network", "dhcp", "add", "100", "52:54:00:AA:00:01", "10.100.0.150", "--hostname", "Web1")
    assert reserved == {"mac": "52:54:00:aa:00:01", "ipv4": "10.100.0.150", "hostname": "web1"}
    code, out, _ = pvc("network", "dhcp", "add", "100", MAC2, "10.100.0.101")
    assert (code, out) == (0, f"Network 100: 10.100.0.101 reserved for {MAC2}\n")
    assert networks.record_lease(store, 100, Lease(MAC3, parse_ip("10.100.0.120"), "db1", 1_900_000_000))
    assert networks.record_lease(store, 100, Lease(MAC2, parse_ip("10.100.0.101"), None, 0))

    entries = run_json(pvc, "network", "dhcp", "list", "100")
    assert entries == [
        {"kind": "lease", "mac": MAC2, "ipv4": "10.100.0.101", "hostname": None, "expiry": 0},
        {"kind": "reservation", "mac": MAC2, "ipv4": "10.100.0.101", "hostname": None, "expiry": None},
        {"kind": "lease", "mac": MAC3, "ipv4": "10.100.0.120", "hostname": "db1", "expiry": 1_900_000_000},
        {"kind": "reservation", "mac": "52:54:00:aa:00:01", "ipv4": "10.100.0.150", "hostname": "web1", "expiry": None},
    ]
    code, out, _ = pvc("network", "dhcp", "list", "100")
    lines = out.splitlines()
    assert lines[0].split() == ["IPV4", "MAC", "HOSTNAME", "KIND", "EXPIRES"]
    assert lines[1].split() == ["10.100.0.101", MAC2, "-", "lease", "never"]
    assert lines[2].split() == ["10.100.0.101", MAC2, "-", "reservation", "-"]
    assert lines[3].split() == ["10.100.0.120", MAC3, "db1", "lease", "2030-03-17", "17:46:40", "UTC"]
    assert run_json(pvc, "network", "info", "100")["reservations"] == 2

    assert run_json(pvc, "network", "dhcp", "remove", "100", "52:54:00:AA:00:01") == {
        "vni": 100,
        "removed": "52:54:00:aa:00:01",
    }
    code, out, _ = pvc("network", "dhcp", "remove", "100", MAC2)
    assert (code, out) == (0, f"Network 100: reservation of {MAC2} removed\n")
    assert zk.get_children(schema.network_reservations(100)) == []
    assert [e["kind"] for e in run_json(pvc, "network", "dhcp", "list", "100")] == ["lease", "lease"]

    run_json(pvc, "network", "add", "200", "--type", "managed")
    assert pvc("network", "dhcp", "list", "200") == (0, "No leases or reservations on network 200.\n", "")
    assert run_json(pvc, "network", "remove", "100") == {"removed": 100, "reservations": 0, "leases": 2}
    assert not zk.exists(schema.network(100))


def parse_ip(text: str) -> Any:
    import ipaddress

    return ipaddress.IPv4Address(text)


@pytest.fixture
def populated(pvc, store, tmp_path) -> None:
    """Network 100 (managed, DHCP, a reservation for MAC1, a lease of MAC2) used by VM web1, network 110
    (managed), network 300 (bridged, no DHCP), a node hv1."""
    run_json(pvc, "network", "add", "100", *NET100)
    run_json(
        pvc,
        "network",
        "add",
        "110",
        "--type",
        "managed",
        "--ipv4-network",
        "10.110.0.0/24",
        "--ipv4-gateway",
        "10.110.0.1",
    )
    run_json(pvc, "network", "add", "300", "--type", "bridged")
    run_json(pvc, "network", "dhcp", "add", "100", MAC1, "10.100.0.150")
    networks.record_lease(store, 100, Lease(MAC2, parse_ip("10.100.0.160"), None, 2_000_000_000))
    add_node(store, "hv1")
    run_json(pvc, "vm", "define", domain_file(tmp_path, "web1", on_network("100")), "--node", "hv1")


def ipv4(vni: int, *extra: str) -> tuple[str, ...]:
    return ("network", "add", str(vni), "--type", "managed", *extra)


REFUSALS = [
    # malformed input
    (("network", "add", "abc", "--type", "managed"), "vni 'abc' is not a whole number from 1 to 16777215"),
    (("network", "add", "0", "--type", "managed"), "vni 0 is outside 1-16777215"),
    (("network", "add", "16777216", "--type", "managed"), "vni 16777216 is outside 1-16777215"),
    (("network", "add", "5000", "--type", "bridged"), "a bridged network's vni is its VLAN id: 5000"),
    (ipv4(101, "--ipv4-network", "10.101.0.0/33", "--ipv4-gateway", "10.101.0.1"), "is not a network in CIDR form"),
    (ipv4(101, "--ipv4-network", "10.101.0.1/24", "--ipv4-gateway", "10.101.0.1"), "host bits set"),
    (ipv4(101, "--ipv6-network", "fd00:101::/200", "--ipv6-gateway", "fd00:101::1"), "not a network in CIDR form"),
    (ipv4(101, "--ipv4-network", "10.101.0.0/24"), "an IPv4 network needs both --ipv4-network and --ipv4-gateway"),
    (ipv4(101, "--ipv4-network", "10.101.0.0/24", "--ipv4-gateway", "10.102.0.1"), "IPv4 gateway 10.102.0.1 is not"),
    (ipv4(101, "--ipv6-network", "fd00:101::/64", "--ipv6-gateway", "fd00:102::1"), "IPv6 gateway fd00:102::1 is not"),
    (
        ipv4(
            101,
            "--ipv4-network",
            "10.101.0.0/24",
            "--ipv4-gateway",
            "10.101.0.1",
            "--dhcp-start",
            "10.101.0.10",
            "--dhcp-end",
            "10.101.1.10",
        ),
        "DHCP end 10.101.1.10 is not a host address of 10.101.0.0/24",
    ),
    (
        ipv4(
            101,
            "--ipv4-network",
            "10.101.0.0/24",
            "--ipv4-gateway",
            "10.101.0.1",
            "--dhcp-start",
            "10.101.0.1",
            "--dhcp-end",
            "10.101.0.10",
        ),
        "contains the gateway 10.101.0.1",
    ),
    (ipv4(101, "--dhcp-start", "10.101.0.10", "--dhcp-end", "10.101.0.20"), "DHCP needs an IPv4 network"),
    (
        (
            "network",
            "add",
            "301",
            "--type",
            "bridged",
            "--ipv4-network",
            "10.31.0.0/24",
            "--ipv4-gateway",
            "10.31.0.1",
            "--dhcp-start",
            "10.31.0.10",
            "--dhcp-end",
            "10.31.0.20",
        ),
        "DHCP is served on managed networks only",
    ),
    (ipv4(101, "--domain", "Bad_Domain"), "domain 'Bad_Domain' is not a DNS domain"),
    (ipv4(101, "--name-server", "dns1"), "name server 'dns1' is not an IP address"),
    (ipv4(101, "--description", "x" * 300), "description must be one line of at most 200 characters"),
    # clashes with what exists
    (ipv4(100), "network 100 exists already; change it with 'pvc network modify'"),
    (
        ipv4(101, "--ipv4-network", "10.100.0.0/16", "--ipv4-gateway", "10.100.200.1"),
        "10.100.0.0/16 overlaps 10.100.0.0/24 of network 100",
    ),
    (
        ipv4(101, "--ipv6-network", "fd00:100::/56", "--ipv6-gateway", "fd00:100:0:1::1"),
        "fd00:100::/56 overlaps fd00:100::/64 of network 100",
    ),
    # modify
    (("network", "modify", "999", "--description", "x"), "no client network 999 (see 'pvc network list')"),
    (("network", "modify", "100"), "nothing to change for network 100"),
    (("network", "modify", "100", "--no-dhcp", "--dhcp-start", "10.100.0.101"), "--no-dhcp switches DHCP off"),
    (("network", "modify", "100", "--ipv4-gateway", "10.100.1.1"), "IPv4 gateway 10.100.1.1 is not a host address"),
    (("network", "modify", "100", "--dhcp-end", "10.100.0.99"), "DHCP range 10.100.0.100-10.100.0.99 ends before"),
    (("network", "modify", "100", "--no-dhcp"), "network 100 has 1 DHCP reservation(s): remove them"),
    (("network", "modify", "100", "--dhcp-end", "10.100.0.149"), "reservation 10.100.0.150 of 52:54:00:00:00:01"),
    (("network", "modify", "100", "--type", "bridged"), "DHCP is served on managed networks only"),
    (
        ("network", "modify", "110", "--ipv4-network", "10.100.0.0/16", "--ipv4-gateway", "10.100.254.1"),
        "10.100.0.0/16 overlaps 10.100.0.0/24 of network 100",
    ),
    # remove, info, unknown networks
    (("network", "remove", "100"), "network 100 is used by VM web1 (an interface on bridge vmbr100)"),
    (("network", "remove", "999"), "no client network 999"),
    (("network", "remove", "x1"), "vni 'x1' is not a whole number"),
    (("network", "info", "999"), "no client network 999"),
    (("network", "dhcp", "list", "999"), "no client network 999"),
    # reservations
    (("network", "dhcp", "add", "100", "52:54:00:00:00", "10.100.0.151"), "MAC address '52:54:00:00:00' is not six"),
    (("network", "dhcp", "add", "100", MAC3, "10.100.0.x"), "reserved address '10.100.0.x' is not an IPv4 address"),
    (("network", "dhcp", "add", "100", MAC3, "10.100.0.151", "--hostname", "a_b"), "host name 'a_b' is not one DNS"),
    (("network", "dhcp", "add", "100", MAC3, "10.100.0.50"), "10.100.0.50 is outside the DHCP range"),
    (("network", "dhcp", "add", "100", MAC3, "10.100.0.150"), f"10.100.0.150 is reserved for {MAC1} already"),
    (("network", "dhcp", "add", "100", MAC1, "10.100.0.151"), f"{MAC1} already has a reservation on network 100"),
    (("network", "dhcp", "add", "100", MAC3, "10.100.0.160"), f"10.100.0.160 is leased to {MAC2}"),
    (("network", "dhcp", "add", "300", MAC3, "10.31.0.5"), "network 300 has no DHCP"),
    (("network", "dhcp", "add", "999", MAC3, "10.100.0.151"), "no client network 999"),
    (("network", "dhcp", "remove", "100", MAC3), f"{MAC3} has no reservation on network 100"),
    (("network", "dhcp", "remove", "100", "zz"), "MAC address 'zz' is not six hex pairs"),
    (("network", "dhcp", "remove", "999", MAC1), "no client network 999"),
]


@pytest.mark.parametrize("args, message", REFUSALS, ids=[" ".join(args)[:60] for args, _ in REFUSALS])
def test_bad_input_is_one_line_exit_1_and_writes_nothing(populated, pvc, zk, args, message):
    before = tree(zk)
    code, out, err = pvc(*args)
    assert code == 1, (code, err)
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("pvc: "), err
    assert message in err, err
    assert tree(zk) == before


def test_vm_define_refuses_an_interface_on_no_client_network(populated, pvc, zk, tmp_path):
    before = tree(zk)
    for interface in (on_network("555"), on_bridge("vmbr555")):
        code, out, err = pvc("vm", "define", domain_file(tmp_path, "db1", interface), "--node", "hv1")
        assert (code, out) == (1, "")
        assert err == (
            "pvc: VM db1: an interface names network 555, which is not a client network (see 'pvc network list')\n"
        )
    assert tree(zk) == before


def test_a_usage_error_is_exit_2_and_writes_nothing(populated, pvc, zk):
    before = tree(zk)
    assert pvc("network", "add", "101")[0] == 2
    assert pvc("network", "add", "101", "--type", "routed")[0] == 2
    assert pvc("network", "list", "--format", "yaml")[0] == 2
    assert tree(zk) == before


def test_vm_interfaces_are_plugged_into_client_network_bridges(populated, pvc, zk, tmp_path):
    path = domain_file(
        tmp_path,
        "app1",
        on_network("110"),
        on_bridge("vmbr300"),
        on_bridge("vmbr0"),
        on_bridge("br-upstream"),
        "<interface type='network'><source network='default'/></interface>",
    )
    run_json(pvc, "vm", "define", path, "--node", "hv1")
    dumped = run_json(pvc, "vm", "dump", "app1")["xml"]
    assert '<interface type="bridge"><source bridge="vmbr110" /><model type="virtio" /></interface>' in dumped
    for kept in ('"vmbr300"', '"vmbr0"', '"br-upstream"', '<source network="default" />'):
        assert kept in dumped
    assert "network='110'" not in dumped and 'network="110"' not in dumped

    # Untouched XML is stored as it was written.
    plain = domain_file(tmp_path, "app2", on_bridge("vmbr300"))
    run_json(pvc, "vm", "define", plain, "--node", "hv1")
    assert run_json(pvc, "vm", "dump", "app2")["xml"] == open(plain).read()

    code, _, err = pvc("network", "remove", "300")
    assert code == 1 and err == (
        "pvc: network 300 is used by VM app1 and 1 more (an interface on bridge vmbr300): remove or redefine the VMs"
        " first\n"
    )
    for vm in ("app1", "app2"):
        run_json(pvc, "vm", "remove", vm)
    assert run_json(pvc, "network", "remove", "300")["removed"] == 300

    # Removing the last VM frees the network: its reservation and lease go with it.
    run_json(pvc, "vm", "remove", "web1")
    assert run_json(pvc, "network", "remove", "100") == {"removed": 100, "reservations": 1, "leases": 1}
    assert not zk.exists(schema.network(100))


def test_the_installed_pvc_says_one_line_and_skips_a_damaged_record(populated, zookeeper, zk):
    zk.create(schema.network(42), b"not json")
    env = {k: v for k, v in os.environ.items() if k not in ("PVC_ZOOKEEPER", "PVCD_CONFIG_FILE")}

    def pvc_process(*args: str) -> subprocess.CompletedProcess[str]:
        command = [bin_path("pvc"), "--zookeeper", zookeeper.address, *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)

    listed = pvc_process("network", "list", "--format", "json")
    assert listed.returncode == 0
    assert [n["vni"] for n in json.loads(listed.stdout)] == [100, 110, 300]
    assert listed.stderr.splitlines() == [
        "pvc: Client network /pvc/networks/42 skipped, its record is damaged: "
        "/pvc/networks/42: value is not JSON (Expecting value: line 1 column 1 (char 0))"
    ]
    refused = pvc_process(
        "network", "add", "101", "--type", "managed", "--ipv4-network", "10.100.0.0/23", "--ipv4-gateway", "10.100.1.1"
    )
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr == "pvc: 10.100.0.0/23 overlaps 10.100.0.0/24 of network 100\n"
    info = pvc_process("network", "info", "42")
    assert info.returncode == 1 and info.stderr.startswith("pvc: network 42 has a damaged record: ")
    assert len(info.stderr.splitlines()) == 1
    # A damaged record can always be removed, and its vni is then free again.
    assert pvc_process("network", "remove", "42").returncode == 0
    assert not zk.exists(schema.network(42))


# -- the store adapter ----------------------------------------------------------------------


def test_damaged_records_are_skipped_with_a_warning_naming_them(populated, store, zk, caplog):
    zk.create(schema.network(42), b"{")
    zk.create(f"{schema.NETWORKS}/web", b"{}")
    zk.create(schema.network(43), json.dumps({"vni": 44, "type": "managed"}).encode())
    zk.create(schema.network(45), json.dumps({"vni": 45, "type": "managed", "domain": 5}).encode())
    zk.create(schema.network_reservation(100, MAC3), b"[]")
    zk.create(schema.network_lease(100, MAC3), json.dumps({"mac": MAC3, "ipv4": "10.100.0.170"}).encode())
    zk.create(
        schema.network_lease(100, "52:54:00:00:00:04"),
        json.dumps(Lease(MAC3, parse_ip("10.100.0.171"), None, 5).to_json()).encode(),
    )
    with caplog.at_level(logging.WARNING, logger="pvcd.zk.networks"):
        assert sorted(networks.read_networks(store)) == [100, 110, 300]
        assert sorted(networks.list_reservations(store, 100)) == [MAC1]
        assert sorted(networks.list_leases(store, 100)) == [MAC2]
    warnings = sorted(record.getMessage() for record in caplog.records)
    assert len(warnings) == 7 and all("\n" not in warning for warning in warnings)
    assert [warning.split(",")[0] for warning in warnings] == [
        "Client network /pvc/networks/42 skipped",
        "Client network /pvc/networks/43 skipped",
        "Client network /pvc/networks/45 skipped",
        "Client network /pvc/networks/web skipped",
        f"DHCP lease /pvc/networks/100/leases/{MAC3} skipped",
        "DHCP lease /pvc/networks/100/leases/52:54:00:00:00:04 skipped",
        f"DHCP reservation /pvc/networks/100/reservations/{MAC3} skipped",
    ]
    assert "its record says vni 44" in warnings[1] and "domain must be a string" in warnings[2]
    assert "'web' is not a VNI" in warnings[3] and warnings[5].endswith(f"it names MAC {MAC3}")
    # A damaged record still holds its vni; a damaged reservation its MAC.
    with pytest.raises(InvalidNetwork, match=re.escape("network 42 exists already")):
        networks.create(store, parse_network(42, "bridged"))
    with pytest.raises(
        InvalidNetwork, match=re.escape(f"{MAC3} already has a reservation on network 100 (a damaged one")
    ):
        networks.add_reservation(store, 100, Reservation(MAC3, parse_ip("10.100.0.180")))
    networks.remove_reservation(store, 100, MAC3)
    networks.add_reservation(store, 100, Reservation(MAC3, parse_ip("10.100.0.180")))


def test_leases_are_recorded_replaced_deleted_and_expired(store, zk):
    networks.create(
        store,
        parse_network(
            100,
            "managed",
            ipv4_network="10.100.0.0/24",
            ipv4_gateway="10.100.0.1",
            dhcp_start="10.100.0.100",
            dhcp_end="10.100.0.199",
        ),
    )
    counter = zk.get(schema.network_leases(100))[1].version
    first = Lease(MAC1, parse_ip("10.100.0.101"), "web1", 1000)
    assert networks.record_lease(store, 100, first) is True
    assert networks.record_lease(store, 100, first) is False
    renewed = Lease(MAC1, parse_ip("10.100.0.101"), "web1", 2000)
    assert networks.record_lease(store, 100, renewed) is True
    assert networks.list_leases(store, 100) == {MAC1: renewed}
    assert json.loads(zk.get(schema.network_lease(100, MAC1))[0]) == renewed.to_json()
    # Two writes, each counted by the leases' counter; the repeat wrote nothing.
    assert zk.get(schema.network_leases(100))[1].version == counter + 2

    networks.record_lease(store, 100, Lease(MAC2, parse_ip("10.100.0.102"), None, 1500))
    networks.record_lease(store, 100, Lease(MAC3, parse_ip("10.100.0.103"), None, 0))
    zk.set(schema.network_lease(100, MAC2), b"damaged")
    networks.record_lease(store, 100, Lease(MAC2, parse_ip("10.100.0.102"), None, 1500))
    assert sorted(networks.list_leases(store, 100)) == [MAC1, MAC2, MAC3]

    assert networks.drop_expired_leases(store, 100, now=1499) == []
    assert [lease.mac for lease in networks.drop_expired_leases(store, 100, now=1500)] == [MAC2]
    assert [lease.mac for lease in networks.drop_expired_leases(store, 100, now=10**10)] == [MAC1]
    assert sorted(networks.list_leases(store, 100)) == [MAC3]  # expiry 0: dnsmasq's infinite lease

    # A release of an address the client has left behind leaves its new lease alone.
    assert networks.delete_lease(store, 100, MAC3, parse_ip("10.100.0.199")) is False
    assert networks.delete_lease(store, 100, MAC3.upper(), parse_ip("10.100.0.103")) is True
    assert networks.delete_lease(store, 100, MAC3) is False
    assert networks.list_leases(store, 100) == {}
    with pytest.raises(networks.UnknownNetwork):
        networks.record_lease(store, 999, first)
    with pytest.raises(networks.UnknownNetwork):
        networks.drop_expired_leases(store, 999, now=0)


class StaleOnce:
    """A reader that answers its first call with what was read before a concurrent write, then reads afresh:
    the window between a writer's check and its transaction, made deterministic."""

    def __init__(self, read, stale) -> None:
        self.read = read
        self.stale = stale
        self.calls = 0

    def __call__(self, *args):
        self.calls += 1
        return self.stale if self.calls == 1 else self.read(*args)


def test_a_network_created_meanwhile_is_seen_before_an_overlapping_one_is_written(store, monkeypatch):
    networks.ensure_paths(store)
    stale = networks._networks(store)
    networks.create(store, parse_network(100, "managed", ipv4_network="10.100.0.0/24", ipv4_gateway="10.100.0.1"))
    reader = StaleOnce(networks._networks, stale)
    monkeypatch.setattr(networks, "_networks", reader)
    overlapping = parse_network(101, "managed", ipv4_network="10.100.0.0/16", ipv4_gateway="10.100.9.1")
    with pytest.raises(InvalidNetwork, match=re.escape("overlaps 10.100.0.0/24 of network 100")):
        networks.create(store, overlapping)
    assert reader.calls == 2 and sorted(networks.read_networks(store)) == [100]


def test_a_reservation_added_meanwhile_is_seen_before_a_clashing_one_is_written(store, monkeypatch):
    networks.create(
        store,
        parse_network(
            100,
            "managed",
            ipv4_network="10.100.0.0/24",
            ipv4_gateway="10.100.0.1",
            dhcp_start="10.100.0.100",
            dhcp_end="10.100.0.199",
        ),
    )
    stale = networks._reservations(store, 100)
    networks.add_reservation(store, 100, Reservation(MAC1, parse_ip("10.100.0.150")))
    reader = StaleOnce(networks._reservations, stale)
    monkeypatch.setattr(networks, "_reservations", reader)
    with pytest.raises(InvalidNetwork, match=re.escape(f"10.100.0.150 is reserved for {MAC1} already")):
        networks.add_reservation(store, 100, Reservation(MAC2, parse_ip("10.100.0.150")))
    assert reader.calls == 2 and sorted(networks.list_reservations(store, 100)) == [MAC1]


def test_a_lease_recorded_meanwhile_is_seen_before_a_clashing_reservation_is_written(store, monkeypatch):
    networks.create(
        store,
        parse_network(
            100,
            "managed",
            ipv4_network="10.100.0.0/24",
            ipv4_gateway="10.100.0.1",
            dhcp_start="10.100.0.100",
            dhcp_end="10.100.0.199",
        ),
    )
    stale = networks._leases(store, 100)
    networks.record_lease(store, 100, Lease(MAC1, parse_ip("10.100.0.150"), None, 10**10))
    reader = StaleOnce(networks._leases, stale)
    monkeypatch.setattr(networks, "_leases", reader)
    with pytest.raises(InvalidNetwork, match=re.escape(f"10.100.0.150 is leased to {MAC1}")):
        networks.add_reservation(store, 100, Reservation(MAC2, parse_ip("10.100.0.150")))
    assert networks.list_reservations(store, 100) == {}


def test_a_reservation_added_meanwhile_stops_a_range_that_would_leave_it_out(store, monkeypatch):
    networks.create(
        store,
        parse_network(
            100,
            "managed",
            ipv4_network="10.100.0.0/24",
            ipv4_gateway="10.100.0.1",
            dhcp_start="10.100.0.100",
            dhcp_end="10.100.0.199",
        ),
    )
    stale = networks._reservations(store, 100)
    networks.add_reservation(store, 100, Reservation(MAC1, parse_ip("10.100.0.190")))
    monkeypatch.setattr(networks, "_reservations", StaleOnce(networks._reservations, stale))
    narrower = parse_network(
        100,
        "managed",
        ipv4_network="10.100.0.0/24",
        ipv4_gateway="10.100.0.1",
        dhcp_start="10.100.0.100",
        dhcp_end="10.100.0.149",
    )
    with pytest.raises(
        InvalidNetwork, match=re.escape("reservation 10.100.0.190 of 52:54:00:00:00:01 would be outside")
    ):
        networks.modify(store, 100, lambda _: narrower)
    assert networks.read_network(store, 100).network.dhcp.end == parse_ip("10.100.0.199")


def test_a_lease_recorded_during_a_removal_is_removed_with_the_network(store, monkeypatch):
    networks.create(
        store,
        parse_network(
            100,
            "managed",
            ipv4_network="10.100.0.0/24",
            ipv4_gateway="10.100.0.1",
            dhcp_start="10.100.0.100",
            dhcp_end="10.100.0.199",
        ),
    )
    users = networks.users
    recorded = []

    def users_then_a_lease(store_: Store, vni: int) -> list[str]:
        found = users(store_, vni)
        if not recorded:
            recorded.append(networks.record_lease(store, 100, Lease(MAC1, parse_ip("10.100.0.150"), None, 10**10)))
        return found

    monkeypatch.setattr(networks, "users", users_then_a_lease)
    assert networks.remove(store, 100) == networks.Removed(100, 0, 1)
    assert recorded == [True] and not store.exists(schema.network(100))
