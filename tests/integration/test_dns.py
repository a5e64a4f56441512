"""The DNS aggregator against a real PostgreSQL and a real PowerDNS, both started here.

PostgreSQL is started once for the module (initdb as the `postgres` user when
we are root, 127.0.0.1 on a free port, its own socket directory) and stopped by
its PID at the end; each test gets a database of its own. PowerDNS runs on
127.0.0.1 on a free port (53 and the floating IP in production), and the
checks resolve through it with dnspython as a client would.

Both live in directories of their own under /tmp rather than pytest's
tmp_path: PostgreSQL and PowerDNS drop root, and /tmp/pytest-of-root is 0700.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import pwd
import shutil
import signal
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.resolver
import psycopg2
import pytest

from helpers import wait_for
from pvcd.cluster.client_networks import Lease, parse_network
from pvcd.config import DnsDatabase
from pvcd.devcluster.postgres import PostgresServer, postgres_available
from pvcd.devcluster.processes import free_port
from pvcd.network.dns import SCHEMA_UPGRADE_FILE, DnsAggregator, DnsError, DnsSchemaError, PdnsServer
from pvcd.network.dns_records import NameServer, NetworkHosts, NodeHosts, Zone, desired_zones

PASSWORD = " pass #word:with\\all'of it "
"""Blanks at both ends, " #", ':' and '\\': what PowerDNS's own config file would mangle."""
NETWORK = parse_network(100, "managed", domain="net100.test", ipv4_network="10.100.0.0/24", ipv4_gateway="10.100.0.1")
NODES = NodeHosts("nodes.test", {"hv1": ipaddress.IPv4Address("192.0.2.1"), "hv2": ipaddress.IPv4Address("192.0.2.2")})
SERVER = NameServer("pvc-dns.nodes.test", ipaddress.IPv4Address("192.0.2.10"))
_databases = itertools.count()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    if not postgres_available():
        pytest.fail("PostgreSQL is not installed: run ./setup.sh, which installs the postgresql package")
    directory = Path(tempfile.mkdtemp(prefix="pvcd-test-postgres-"))
    server = PostgresServer.create(directory)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def database(postgres: PostgresServer) -> DnsDatabase:
    return postgres.create_database(f"pvcdns_{next(_databases)}", "pvcdns", PASSWORD)


@pytest.fixture
def run_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="pvcd-test-pdns-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def pdns(database: DnsDatabase, run_dir: Path) -> Iterator[PdnsServer]:
    server = PdnsServer(database, run_dir, "127.0.0.1", port=free_port())
    yield server
    server.stop()


def resolver(server: PdnsServer) -> dns.resolver.Resolver:
    """A stub resolver asking only our PowerDNS, without a cache of its own."""
    stub = dns.resolver.Resolver(configure=False)
    stub.nameservers = [server.address]
    stub.port = server.port
    stub.lifetime = 3.0
    return stub


def address_of(server: PdnsServer, name: str) -> str:
    return str(resolver(server).resolve(name, "A")[0])


def serial_of(server: PdnsServer, zone: str) -> int:
    return int(resolver(server).resolve(zone, "SOA")[0].serial)


def zones(*leases: Lease) -> dict[str, Zone]:
    return desired_zones([NetworkHosts(NETWORK, leases=leases)], NODES, SERVER)


def lease(address: str, hostname: str = "web") -> Lease:
    return Lease("52:54:00:12:34:56", ipaddress.IPv4Address(address), hostname, 1_900_000_000)


def query(database: DnsDatabase, statement: str) -> list[tuple[object, ...]]:
    connection = psycopg2.connect(
        host=database.host, port=database.port, dbname=database.name, user=database.user, password=database.password
    )
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(statement)
            return list(cursor.fetchall()) if cursor.description else []
    finally:
        connection.close()


def test_the_schema_is_created_when_missing_and_left_alone_after(database: DnsDatabase):
    aggregator = DnsAggregator(database)
    assert aggregator.ensure_schema() is True
    assert aggregator.ensure_schema() is False, "a second call finds the tables and creates nothing"
    tables = {row[0] for row in query(database, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"domains", "records", "domainmetadata", "cryptokeys", "tsigkeys", "comments", "supermasters"} <= tables
    query(database, "ALTER TABLE domains DROP COLUMN catalog")
    with pytest.raises(DnsSchemaError, match=str(SCHEMA_UPGRADE_FILE)):
        aggregator.ensure_schema()


def test_names_resolve_through_powerdns_and_follow_each_change(database: DnsDatabase, pdns: PdnsServer):
    aggregator = DnsAggregator(database)
    aggregator.ensure_schema()
    first = aggregator.sync(zones(lease("10.100.0.50")), now=1_000)
    assert first.create == ("net100.test", "nodes.test")
    pdns.start()
    assert pdns.running(), pdns.problem
    assert address_of(pdns, "web.net100.test") == "10.100.0.50"
    assert address_of(pdns, "hv1.nodes.test") == "192.0.2.1"
    assert address_of(pdns, "pvc-dns.nodes.test") == "192.0.2.10"
    assert {str(ns.target) for ns in resolver(pdns).resolve("net100.test", "NS")} == {"pvc-dns.nodes.test."}
    serial = serial_of(pdns, "net100.test")
    assert serial >= 1_000

    moved = aggregator.sync(zones(lease("10.100.0.77")))
    assert [change.zone for change in moved.changes] == ["net100.test"], "the nodes' zone is not rewritten"
    # The new address and the new SOA were written by one transaction: the rows carry the same xmin.
    writers = query(
        database,
        "SELECT DISTINCT xmin::text FROM records "
        "WHERE name = 'web.net100.test' OR (type = 'SOA' AND name = 'net100.test')",
    )
    assert len(writers) == 1
    assert address_of(pdns, "web.net100.test") == "10.100.0.77", "seen as soon as the transaction committed"
    assert serial_of(pdns, "net100.test") > serial
    assert aggregator.sync(zones(lease("10.100.0.77"))).empty, "a resync that finds nothing to do writes nothing"

    aggregator.sync(zones())
    with pytest.raises(dns.resolver.NXDOMAIN):
        resolver(pdns).resolve("web.net100.test", "A")
    assert address_of(pdns, "hv2.nodes.test") == "192.0.2.2"

    aggregator.sync(desired_zones([], NODES, SERVER))
    response = dns.query.udp(dns.message.make_query("net100.test", "SOA"), pdns.address, timeout=3, port=pdns.port)
    assert response.rcode() == dns.rcode.REFUSED, "a removed zone is no longer served"


def test_the_password_stays_in_private_files_and_powerdns_drops_root(database: DnsDatabase, pdns: PdnsServer):
    DnsAggregator(database).ensure_schema()
    pdns.start()
    assert pdns.running(), pdns.problem
    assert pdns.pid is not None
    command = Path(f"/proc/{pdns.pid}/cmdline").read_bytes().decode()
    assert database.password not in command
    assert database.password not in pdns.config_path.read_text()
    for path in (pdns.config_path, pdns.passfile):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    if os.geteuid() == 0:
        assert pdns.passfile.stat().st_uid == pwd.getpwnam("pdns").pw_uid
        assert Path(f"/proc/{pdns.pid}").stat().st_uid == pwd.getpwnam("pdns").pw_uid


def test_a_killed_powerdns_is_restarted_by_the_check_and_a_stopped_one_is_not(database: DnsDatabase, pdns: PdnsServer):
    aggregator = DnsAggregator(database)
    aggregator.ensure_schema()
    aggregator.sync(zones(lease("10.100.0.50")))
    pdns.start()
    assert pdns.running(), pdns.problem
    assert pdns.check() is None, "running: nothing to do"
    first_pid = pdns.pid
    assert first_pid is not None
    os.kill(first_pid, signal.SIGKILL)
    wait_for(lambda: not pdns.running(), 5, what="PowerDNS to die")
    problem = pdns.check()
    assert problem is not None
    assert "killed by SIGKILL" in problem and "restarted (restart 1 since this node became primary)" in problem
    assert pdns.problem == problem, "kept for the cluster status"
    assert pdns.running() and pdns.pid != first_pid
    assert address_of(pdns, "web.net100.test") == "10.100.0.50"
    assert pdns.check() is None
    pdns.stop()
    assert not pdns.running()
    assert pdns.check() is None, "stopped on purpose: stays stopped"
    assert not pdns.running()
    assert not pdns.pid_path.exists()


def test_a_powerdns_left_by_a_crashed_pvcd_is_replaced(database: DnsDatabase, run_dir: Path):
    aggregator = DnsAggregator(database)
    aggregator.ensure_schema()
    aggregator.sync(zones())
    port = free_port()
    orphan = PdnsServer(database, run_dir, "127.0.0.1", port=port)
    orphan.start()
    assert orphan.running(), orphan.problem
    orphan_pid = orphan.pid
    replacement = PdnsServer(database, run_dir, "127.0.0.1", port=port)
    try:
        replacement.start()
        assert replacement.running(), replacement.problem
        assert not orphan.running(), "stopped by the PID the first one recorded"
        assert replacement.pid != orphan_pid
        assert address_of(replacement, "hv1.nodes.test") == "192.0.2.1"
    finally:
        orphan.stop()
        replacement.stop()


def test_powerdns_without_its_database_says_why_and_the_check_keeps_trying(database: DnsDatabase, run_dir: Path):
    unreachable = DnsDatabase("127.0.0.1", free_port(), database.name, database.user, database.password)
    server = PdnsServer(unreachable, run_dir, "127.0.0.1", port=free_port())
    try:
        server.start()
        assert not server.running()
        assert server.problem is not None
        assert server.problem.startswith("DNS aggregator (PowerDNS) did not start: pdns_server exited with status")
        assert "gpgsql" in server.problem, "PowerDNS's own last log line"
        problem = server.check()
        assert problem is not None and "not restarted" in problem
        assert not server.running()
    finally:
        server.stop()


def test_an_operators_zone_of_the_same_name_is_left_alone(database: DnsDatabase, caplog: pytest.LogCaptureFixture):
    aggregator = DnsAggregator(database)
    aggregator.ensure_schema()
    query(database, "INSERT INTO domains (name, type, account) VALUES ('nodes.test', 'NATIVE', 'operator')")
    applied = aggregator.sync(zones(lease("10.100.0.50")))
    assert applied.create == ("net100.test",)
    assert "DNS zone nodes.test belongs to account 'operator', not pvcd: left alone" in caplog.text
    assert query(database, "SELECT account FROM domains WHERE name = 'nodes.test'") == [("operator",)]
    assert sorted(aggregator.stored()) == ["net100.test"]
    aggregator.sync({})
    assert query(database, "SELECT name, account FROM domains") == [("nodes.test", "operator")]


def test_an_unreachable_database_is_one_line_within_the_timeout(postgres: PostgresServer):
    unreachable = DnsDatabase("127.0.0.1", free_port(), "pvcdns", "pvcdns", "x")
    with pytest.raises(DnsError, match="cannot connect to the DNS database pvcdns on 127.0.0.1"):
        DnsAggregator(unreachable, timeout=2).ensure_schema()
