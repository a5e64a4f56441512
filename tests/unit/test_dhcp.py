"""DHCP's pure parts: dnsmasq's command line and files, the lease script's reading of dnsmasq's call,
and its lease writes (`pvcd.zk.networks`) on the in-memory store (tests/netns/test_dhcp.py runs them for real)."""

from __future__ import annotations

import ipaddress
import threading
from pathlib import Path

import pytest

from pvcd.cluster.client_networks import Lease, Reservation, parse_network
from pvcd.network import lease_script
from pvcd.network.dhcp import (
    DhcpError,
    DhcpFiles,
    DhcpServer,
    dnsmasq_command,
    hosts_file,
    lease_file,
    recorded_name,
    script_file,
)
from pvcd.network.lease_script import LeaseEvent, LeaseScriptError, NoAnswer, parse_event, record, within
from pvcd.processes import describe_exit
from pvcd.zk import networks, schema
from pvcd.zk.base import VersionConflict, Versioned, encode
from pvcd.zk.memory import MemoryServer, MemoryStore

NETWORK = parse_network(
    100,
    "managed",
    domain="net100.test",
    ipv4_network="10.100.0.0/24",
    ipv4_gateway="10.100.0.1",
    dhcp_start="10.100.0.100",
    dhcp_end="10.100.0.199",
    name_servers=("10.9.9.9", "fd00::53", "10.100.0.53"),
)
FILES = DhcpFiles(Path("/run/pvc/dhcp/100"))
MAC = "52:54:00:12:34:56"
ADDRESS = ipaddress.IPv4Address("10.100.0.150")


def lease(mac: str = MAC, address: str = "10.100.0.150", hostname: str | None = "web1", expiry: int = 2000) -> Lease:
    return Lease(mac, ipaddress.IPv4Address(address), hostname, expiry)


def test_command_serves_dhcp_only_on_the_bridge_with_the_networks_options():
    command = dnsmasq_command(NETWORK, FILES, ipaddress.IPv4Address("10.0.1.254"), lease_time=600, mtu=1450)
    assert command[0] == "dnsmasq"
    assert set(command[1:]) == {
        "--conf-file=/dev/null",
        "--keep-in-foreground",
        "--port=0",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--interface=vmbr100",
        "--listen-address=10.100.0.1",
        "--except-interface=lo",
        "--dhcp-range=10.100.0.100,10.100.0.199,255.255.255.0,600",
        "--dhcp-authoritative",
        "--dhcp-option=option:router,10.100.0.1",
        # The aggregator first, then the network's own IPv4 servers (DHCPv4 cannot carry fd00::53).
        "--dhcp-option=option:dns-server,10.0.1.254,10.9.9.9,10.100.0.53",
        "--dhcp-option=option:domain-name,net100.test",
        "--dhcp-option=option:mtu,1450",
        "--dhcp-hostsfile=/run/pvc/dhcp/100/hosts",
        "--dhcp-leasefile=/run/pvc/dhcp/100/leases",
        "--dhcp-script=/run/pvc/dhcp/100/lease-script",
        "--script-on-renewal",
        "--pid-file=/run/pvc/dhcp/100/dnsmasq.pid",
        "--log-facility=-",
        "--quiet-dhcp",
    }
    assert "--no-daemon" not in command  # dnsmasq's debug mode: no pid file, root kept


def test_command_without_aggregator_domain_or_name_servers_sends_none_of_them():
    bare = parse_network(
        7, "managed", ipv4_network="10.7.0.0/16", ipv4_gateway="10.7.0.1", dhcp_start="10.7.1.0", dhcp_end="10.7.1.9"
    )
    command = dnsmasq_command(bare, FILES, None, user="dnsmasq", log_dhcp=True, dnsmasq="/usr/sbin/dnsmasq")
    assert command[0] == "/usr/sbin/dnsmasq"
    assert not [arg for arg in command if "dns-server" in arg or "domain-name" in arg or "option:mtu" in arg]
    assert "--dhcp-range=10.7.1.0,10.7.1.9,255.255.0.0,3600" in command
    assert "--user=dnsmasq" in command and "--quiet-dhcp" not in command


def test_networks_without_dhcp_and_short_leases_are_refused():
    no_dhcp = parse_network(8, "managed", ipv4_network="10.8.0.0/24", ipv4_gateway="10.8.0.1")
    with pytest.raises(DhcpError, match="network 8 has no IPv4 DHCP range"):
        dnsmasq_command(no_dhcp, FILES)
    with pytest.raises(DhcpError, match="has no IPv4 DHCP range"):
        DhcpServer(parse_network(9, "managed"), MemoryStore(), FILES.run_dir, None)
    with pytest.raises(DhcpError, match="below dnsmasq's minimum of 120s"):
        dnsmasq_command(NETWORK, FILES, lease_time=60)


def test_hosts_file_has_one_line_per_reservation_of_the_network():
    reservations = [
        Reservation("52:54:00:00:00:02", ipaddress.IPv4Address("10.100.0.120")),
        Reservation("52:54:00:00:00:01", ipaddress.IPv4Address("10.100.0.110"), "db1"),
        Reservation("52:54:00:00:00:03", ipaddress.IPv4Address("10.200.0.5"), "elsewhere"),
    ]
    assert hosts_file(NETWORK, reservations) == "52:54:00:00:00:01,10.100.0.110,db1\n52:54:00:00:00:02,10.100.0.120\n"
    assert hosts_file(NETWORK, []) == ""


def test_lease_file_keeps_the_valid_leases_of_the_network_in_dnsmasqs_format():
    leases = [
        lease("52:54:00:00:00:02", "10.100.0.102", None, 1500),
        lease("52:54:00:00:00:01", "10.100.0.101", "web1", 0),  # infinite
        lease("52:54:00:00:00:03", "10.100.0.103", "old", 999),  # expired at 1000
        lease("52:54:00:00:00:04", "10.200.0.4", "other", 1500),  # not this network's
    ]
    assert lease_file(NETWORK, leases, now=1000) == (
        "0 52:54:00:00:00:01 10.100.0.101 web1 *\n1500 52:54:00:00:00:02 10.100.0.102 * *\n"
    )


def test_script_runs_the_lease_script_with_its_arguments_then_dnsmasqs():
    text = script_file("/opt/pvc env/bin/python3", 100, "10.0.2.1:2181,10.0.2.2:2181", Path("/run/pvc/rec"))
    assert text.startswith("#!/bin/sh\n")
    assert text.endswith(
        "exec '/opt/pvc env/bin/python3' -m pvcd.network.lease_script --vni 100 --recorded /run/pvc/rec "
        '--zookeeper 10.0.2.1:2181,10.0.2.2:2181 "$@"\n'
    )
    assert "--zookeeper" not in script_file("python3", 100, None, Path("/r"))


def test_parse_add_old_and_del():
    environ = {"DNSMASQ_LEASE_EXPIRES": "5000", "DNSMASQ_TIME_REMAINING": "3600"}
    assert parse_event(["add", MAC.upper(), "10.100.0.150", "Web1"], environ, 1400) == LeaseEvent(lease(expiry=5000))
    # Built without a trusted clock, dnsmasq gives only the time remaining.
    assert parse_event(["old", MAC, "10.100.0.150"], {"DNSMASQ_TIME_REMAINING": "60"}, 1400.7) == LeaseEvent(
        lease(hostname=None, expiry=1460)
    )
    assert parse_event(["del", MAC, "10.100.0.150", "web1"], {}, 1400) == LeaseEvent(
        lease(hostname=None, expiry=0), remove=True
    )


def test_a_host_name_dns_cannot_carry_is_dropped_not_the_lease():
    event = parse_event(["add", MAC, "10.100.0.150", "bad_name!"], {"DNSMASQ_LEASE_EXPIRES": "0"}, 0)
    assert event == LeaseEvent(lease(hostname=None, expiry=0))


@pytest.mark.parametrize("action", ["tftp", "arp", "arp-old", "init", "relay-snoop"])
def test_other_actions_are_not_lease_changes(action):
    assert parse_event([action, MAC, "10.100.0.150"], {}, 0) is None
    assert parse_event([], {}, 0) is None


@pytest.mark.parametrize(
    ("argv", "environ", "message"),
    [
        (["add", MAC], {}, "expected MAC ADDRESS"),
        (["add", "06-01:23:45:67:89:ab", "10.100.0.150"], {}, "is not six hex pairs"),
        (["add", MAC, "fd00::5"], {}, "is not an IPv4 address"),
        (["add", MAC, "10.100.0.150"], {}, "no usable lease expiry"),
        (["old", MAC, "10.100.0.150"], {"DNSMASQ_LEASE_EXPIRES": "soon"}, "no usable lease expiry"),
    ],
)
def test_calls_that_cannot_be_recorded_say_why(argv, environ, message):
    with pytest.raises(LeaseScriptError, match=message):
        parse_event(argv, environ, 0)


def network_store(server: MemoryServer | None = None) -> MemoryStore:
    """A store holding NETWORK as `pvc network add` creates it (its lease and reservation counters too)."""
    store = MemoryStore(server)
    store.start()
    networks.create(store, NETWORK)
    return store


def leases_counter(store: MemoryStore, vni: int = 100) -> int:
    found = store.get(schema.network_leases(vni))
    assert found is not None
    return found.version


def test_the_script_records_then_replaces_the_lease_and_keeps_its_replay_file(tmp_path):
    store = network_store()
    assert record(store, LeaseEvent(lease()), 100, tmp_path / "recorded") is None
    assert networks.list_leases(store, 100) == {MAC: lease()}
    assert (tmp_path / "recorded" / recorded_name(MAC)).read_bytes() == encode(lease().to_json())
    renewed = lease(expiry=9000, hostname=None)
    assert record(store, LeaseEvent(renewed), 100, tmp_path / "recorded") is None
    assert networks.list_leases(store, 100) == {MAC: renewed}
    assert (tmp_path / "recorded" / recorded_name(MAC)).read_bytes() == encode(renewed.to_json())


def test_every_lease_write_sets_the_counter_reservations_and_removals_check():
    """The script writes through pvcd.zk.networks: a reservation or removal that read the leases before it
    is refused (and read again) instead of missing the lease."""
    store = network_store()
    before = leases_counter(store)
    record(store, LeaseEvent(lease()), 100, None)
    assert leases_counter(store) == before + 1
    stale = (
        store.transaction().check(schema.network_leases(100), before).create(schema.network_reservation(100, MAC), {})
    )
    with pytest.raises(VersionConflict):
        stale.commit()
    record(store, LeaseEvent(lease(expiry=0, hostname=None), remove=True), 100, None)
    assert leases_counter(store) == before + 2
    record(store, LeaseEvent(lease()), 100, None)
    assert networks.remove(store, 100) == networks.Removed(100, 0, 1)


def test_a_late_lease_of_a_removed_network_does_not_bring_its_path_back(tmp_path):
    store = network_store()
    mark = tmp_path / recorded_name(MAC)
    mark.write_bytes(b"stale")
    networks.remove(store, 100)
    assert record(store, LeaseEvent(lease()), 100, tmp_path) == (
        f"network 100 no longer exists: lease of 10.100.0.150 to {MAC} not recorded"
    )
    assert not store.exists(schema.network(100))
    assert not mark.exists()
    assert record(store, LeaseEvent(lease(expiry=0, hostname=None), remove=True), 100, tmp_path) is None
    assert not store.exists(schema.network(100))


def test_del_of_an_old_address_leaves_the_macs_new_lease(tmp_path):
    store = network_store()
    moved = lease(address="10.100.0.170")
    record(store, LeaseEvent(moved), 100, tmp_path)
    record(store, LeaseEvent(lease(hostname=None, expiry=0), remove=True), 100, tmp_path)
    assert networks.list_leases(store, 100) == {MAC: moved}
    record(store, LeaseEvent(lease(address="10.100.0.170", hostname=None, expiry=0), remove=True), 100, tmp_path)
    assert networks.list_leases(store, 100) == {}
    assert not (tmp_path / recorded_name(MAC)).exists()
    assert record(store, LeaseEvent(moved, remove=True), 100, tmp_path) is None


def test_leases_that_are_not_leases_are_left_out():
    store = network_store()
    networks.record_lease(store, 100, lease())
    store.create(schema.network_lease(100, "garbage"), {"mac": "nope"})
    assert networks.list_leases(store, 100) == {MAC: lease()}


def test_the_server_starts_from_the_stores_leases_and_reservations(tmp_path):
    """What a new primary's dnsmasq is given, read through pvcd.zk.networks (damaged records left out)."""
    store = network_store()
    networks.record_lease(store, 100, lease(expiry=5000))
    networks.record_lease(store, 100, lease("52:54:00:00:00:09", "10.100.0.109", None, 10))  # expired at 1000
    networks.add_reservation(store, 100, Reservation("52:54:00:00:00:01", ipaddress.IPv4Address("10.100.0.110")))
    store.create(schema.network_reservation(100, "garbage"), {"mac": "nope"})
    server = DhcpServer(
        NETWORK, store, tmp_path / "run", None, user="nobody", dnsmasq="/nonexistent/dnsmasq", clock=lambda: 1000
    )
    server.start()
    assert server.problem is not None and not server.running()  # no dnsmasq here: the files are what is tested
    assert server.files.leases.read_text() == f"5000 {MAC} 10.100.0.150 web1 *\n"
    assert server.files.hosts.read_text() == "52:54:00:00:00:01,10.100.0.110\n"
    assert sorted(path.name for path in server.files.recorded.iterdir()) == [
        recorded_name("52:54:00:00:00:09"),
        recorded_name(MAC),
    ]
    server.stop()


def test_the_script_reports_a_gone_networks_lease_in_one_line_and_succeeds(tmp_path, capsys, monkeypatch):
    """What dnsmasq runs, end to end on the in-memory store: a lease recorded; then a lease of the network,
    removed meanwhile, not recorded, said in one line, exit status 0 (dnsmasq has nothing to retry)."""
    server = MemoryServer()
    store = network_store(server)
    monkeypatch.setattr("pvcd.zk.store.ZooKeeperStore", lambda hosts, **_: MemoryStore(server))
    argv = ["--vni", "100", "--recorded", str(tmp_path), "--zookeeper", "zk:2181"]
    environ = {"DNSMASQ_LEASE_EXPIRES": "2000"}
    assert lease_script.main([*argv, "add", MAC, "10.100.0.150", "web1"], environ) == 0
    assert capsys.readouterr() == ("", "")
    assert networks.list_leases(store, 100) == {MAC: lease()}
    networks.remove(store, 100)
    assert lease_script.main([*argv, "add", MAC, "10.100.0.160", "web1"], environ) == 0
    assert capsys.readouterr() == (
        "",
        f"pvcd lease script: network 100 no longer exists: lease of 10.100.0.160 to {MAC} not recorded\n",
    )
    assert not store.exists(schema.network(100))


class Silent(MemoryStore):
    """A store whose server stopped answering reads (kazoo would wait for as long as the connection looks alive)."""

    def __init__(self, server: MemoryServer) -> None:
        super().__init__(server)
        self.answer = threading.Event()
        self.stopped = False

    def get(self, path: str) -> Versioned | None:
        self.answer.wait(10)
        return super().get(path)

    def stop(self) -> None:
        self.stopped = True
        super().stop()


def test_the_scripts_store_calls_are_bounded(tmp_path, capsys, monkeypatch):
    """pvcd.zk.networks takes no timeout: the script waits the connect timeout again for the change, then fails
    in one line, without waiting on the silent server to close the session either."""
    server = MemoryServer()
    network_store(server)
    silent = Silent(server)
    monkeypatch.setattr("pvcd.zk.store.ZooKeeperStore", lambda hosts, **_: silent)
    monkeypatch.setattr(lease_script, "CONNECT_TIMEOUT", 0.2)
    argv = ["--vni", "100", "--recorded", str(tmp_path), "--zookeeper", "zk:2181", "add", MAC, "10.100.0.150"]
    try:
        assert lease_script.main(argv, {"DNSMASQ_LEASE_EXPIRES": "2000"}) == 1
        assert capsys.readouterr() == (
            "",
            f"pvcd lease script, network 100: add {MAC} 10.100.0.150: ZooKeeper did not answer within 0.2s\n",
        )
        assert not silent.stopped
        assert not (tmp_path / recorded_name(MAC)).exists()
    finally:
        silent.answer.set()
    with pytest.raises(NoAnswer, match=r"^ZooKeeper did not answer within 0.1s$"):
        within(0.1, lambda: threading.Event().wait(2))
    assert within(5, lambda: 42) == 42
    with pytest.raises(KeyError):
        within(5, lambda: {}["missing"])


def test_an_event_equal_to_the_recorded_lease_needs_no_zookeeper(tmp_path, capsys):
    """dnsmasq replays every lease at start and on SIGHUP: those calls end before any connection
    (the ZooKeeper named here does not exist)."""
    (tmp_path / recorded_name(MAC)).write_bytes(encode(lease(expiry=5000).to_json()))
    argv = ["--vni", "100", "--recorded", str(tmp_path), "--zookeeper", "127.0.0.1:1"]
    status = lease_script.main([*argv, "old", MAC, "10.100.0.150", "web1"], {"DNSMASQ_LEASE_EXPIRES": "5000"})
    assert (status, capsys.readouterr()) == (0, ("", ""))
    assert lease_script.main([*argv, "tftp", "1234", "/srv/tftp/x"], {}) == 0


def test_failures_are_one_line_on_stderr_without_the_configurations_secrets(tmp_path, capsys, monkeypatch):
    config = tmp_path / "pvcd.yaml"
    config.write_text("pvc:\n  node: hv1\n  coordinator:\n    dns:\n      database:\n        pass: hunter2secret\n")
    monkeypatch.setenv("PVCD_CONFIG_FILE", str(config))
    status = lease_script.main(["--vni", "100", "add", MAC, "10.100.0.150"], {"DNSMASQ_LEASE_EXPIRES": "5000"})
    err = capsys.readouterr().err
    assert status == 1
    assert err == (
        f"pvcd lease script, network 100: add {MAC} 10.100.0.150: "
        f"configuration {config} is not usable (see pvcd --check-config)\n"
    )
    assert lease_script.main(["--vni", "100", "add", "nonsense", "10.100.0.150"], {}) == 1
    assert capsys.readouterr().err.count("\n") == 1


def test_a_run_directory_nobody_can_reach_is_refused_before_dnsmasq_starts(tmp_path):
    """dnsmasq would start, read no reservations as `nobody`, and only log it."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    server = DhcpServer(NETWORK, network_store(), locked / "run", None, dnsmasq="/nonexistent/dnsmasq")
    server.start()
    assert not server.running()
    assert server.problem is not None
    assert server.problem.startswith("DHCP on network 100 (vmbr100) did not start: dnsmasq runs as nobody")
    assert server.problem.endswith(f"{locked} is not searchable by others")
    assert not (locked / "run").exists()
    problem = server.check()
    assert problem is not None and "; not restarted: dnsmasq runs as nobody" in problem
    server.stop()
    assert server.check() is None


def test_exit_statuses_in_words():
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(2) == "exited with status 2"
