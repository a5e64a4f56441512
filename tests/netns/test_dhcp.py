"""DHCP on a managed network with real dnsmasq, real busybox `udhcpc` clients and a real ZooKeeper.

The "primary" is a node namespace of the lab (pvcd.devcluster.netlab): its
`eth0` reaches the lab's ZooKeeper, and a bridge `vmbrVNI` holds the network's
gateway. Each client is a namespace of its own whose veth is on that bridge,
running `busybox udhcpc` in the foreground: its script writes every event
(bound, renew, nak, ...) with the options it received to a file the test reads,
and configures the address, so that a renewal is a real unicast request.
dnsmasq runs in the primary namespace (`ip netns exec`, which execs: the PID
the server holds is dnsmasq's), and its lease script reaches ZooKeeper from
there. Everything is stopped by its PID and removed at the end.

Needs root, as every test under tests/netns; CI runs as root.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import yaml

from dhcp_client import DhcpClient
from helpers import wait_for
from pvcd.cluster.client_networks import ClientNetwork, Dhcp, Lease, Reservation, modified, parse_network
from pvcd.devcluster.netlab import Lab, sh
from pvcd.devcluster.processes import pid_alive
from pvcd.network.dhcp import DhcpServer
from pvcd.zk import networks
from pvcd.zk.base import Store
from pvcd.zk.store import ZooKeeperStore

AGGREGATOR = ipaddress.IPv4Address("10.9.9.9")
"""The DNS aggregator's address the clients are told (nothing answers there: DNS is not tested here)."""
MTU = 1450


def managed_network(vni: int) -> ClientNetwork:
    """Network VNI on 192.168.VNI.0/24: it exists only inside the primary's and the clients' namespaces."""
    return parse_network(
        vni,
        "managed",
        domain=f"net{vni}.test",
        ipv4_network=f"192.168.{vni}.0/24",
        ipv4_gateway=f"192.168.{vni}.1",
        dhcp_start=f"192.168.{vni}.100",
        dhcp_end=f"192.168.{vni}.199",
    )


@dataclass
class Primary:
    """The lab node namespace that plays the primary: bridges with gateways, dnsmasq servers, clients."""

    lab: Lab
    netns: str
    store: Store
    workdir: Path
    servers: list[DhcpServer] = field(default_factory=list)
    clients: list[DhcpClient] = field(default_factory=list)
    run_dirs: list[Path] = field(default_factory=list)

    def add_network(self, network: ClientNetwork) -> None:
        """The network in ZooKeeper, as `pvc network add` stores it (with the counters its lease writes set),
        and its bridge with the gateway in the namespace."""
        networks.create(self.store, network)
        self.add_bridge(network)

    def add_bridge(self, network: ClientNetwork) -> None:
        """The network's bridge with the gateway in the namespace."""
        assert network.ipv4 is not None
        sh("ip", "-n", self.netns, "link", "add", network.bridge, "type", "bridge")
        sh("ip", "-n", self.netns, "link", "set", network.bridge, "up")
        sh("ip", "-n", self.netns, "address", "add", str(network.ipv4.gateway_interface), "dev", network.bridge)

    def server(self, network: ClientNetwork) -> DhcpServer:
        """A DhcpServer with a run directory of its own (a node that never served the network)."""
        # dnsmasq re-reads the hosts file as `nobody`: under pytest's 0700 tmp_path it could not.
        run_dir = Path(tempfile.mkdtemp(prefix="pvcd-dhcp-test-", dir="/tmp"))
        self.run_dirs.append(run_dir)
        run_dir.chmod(0o755)
        server = DhcpServer(
            network,
            self.store,
            run_dir / str(network.vni),
            zookeeper_hosts=self.lab.zookeeper.address if self.lab.zookeeper else None,
            dns_server=AGGREGATOR,
            mtu=MTU,
            command_prefix=["ip", "netns", "exec", self.netns],
        )
        self.servers.append(server)
        return server

    def client(self, network: ClientNetwork, hostname: str) -> DhcpClient:
        """A client namespace whose veth is on the network's bridge; udhcpc asks for the MTU too."""
        client = DhcpClient(f"pvct-{self.lab.tag}-{hostname}", hostname, self.workdir, options=("-O", "mtu", "-t", "5"))
        self.clients.append(client)
        return client.plug(self.netns, network.bridge)

    def cleanup(self) -> None:
        for client in self.clients:
            client.remove()
        for server in self.servers:
            pid = server.pid
            server.stop()
            assert pid is None or not pid_alive(pid)
        for run_dir in self.run_dirs:
            shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def primary(nodes: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Primary]:
    lab = nodes
    assert lab.zookeeper is not None
    node = lab.add_node("hv1")
    # The lease scripts dnsmasq runs take the node's ZooKeeper credentials and TLS files from its
    # configuration, which dnsmasq passes on from the environment it was started in (pvcd's).
    config = tmp_path / "hv1.yaml"
    config.write_text(yaml.safe_dump(lab.document("hv1", node.index, True), sort_keys=False))
    monkeypatch.setenv("PVCD_CONFIG_FILE", str(config))
    # The node's cluster address: the lease scripts dnsmasq runs in the namespace reach ZooKeeper with it.
    sh("ip", "-n", node.netns, "address", "add", f"{lab.host('cluster', 1)}/24", "dev", "eth0")
    store = ZooKeeperStore(lab.zookeeper.address, security=lab.zookeeper.security(), connect_timeout=10.0)
    store.start()
    found = Primary(lab, node.netns, store, tmp_path)
    try:
        yield found
    finally:
        try:
            found.cleanup()
        finally:
            store.stop()


def lease_of(store: Store, vni: int, mac: str) -> Callable[[], Lease | None]:
    return lambda: networks.list_leases(store, vni).get(mac)


def hosts_reads(server: DhcpServer) -> int:
    """How often dnsmasq has read its reservations (it logs each read, even with --quiet-dhcp)."""
    return server.files.log.read_text().count(f"read {server.files.hosts}\n")


def script_complaints(server: DhcpServer) -> list[str]:
    """The lease script's failures, as dnsmasq logged them (its stderr) in this term's logs."""
    logs = [server.files.log, server.files.log.with_name(f"{server.files.log.name}.1")]
    return [line for log in logs if log.exists() for line in log.read_text().splitlines() if "lease script" in line]


def test_lease_reservation_restart_and_handover(primary: Primary) -> None:
    network = managed_network(100)
    primary.add_network(network)
    server = primary.server(network)
    server.start()
    assert server.running() and server.problem is None
    client = primary.client(network, "client1").start()

    # A first lease, with the network's options; dnsmasq's lease script records it in ZooKeeper.
    bound = client.wait("bound")
    first = ipaddress.IPv4Address(bound.ip)
    assert network.dhcp is not None and network.dhcp.start <= first <= network.dhcp.end
    options = (bound.router, bound.dns, bound.domain, bound.mtu)
    assert options == ("192.168.100.1", str(AGGREGATOR), "net100.test", str(MTU))
    lease = wait_for(lease_of(primary.store, 100, client.mac), 15, what="the lease in ZooKeeper")
    assert (lease.ipv4, lease.hostname) == (first, "client1")
    assert lease.expiry > 0

    # A reservation of another address: the client's next request (a renewal, refused) gets it.
    reserved = network.dhcp.start if first != network.dhcp.start else network.dhcp.start + 1
    networks.add_reservation(primary.store, 100, Reservation(client.mac, reserved, "web1"))
    reads = hosts_reads(server)
    assert server.sync_reservations()
    # SIGHUP is asynchronous: a renewal sent before dnsmasq re-read the file would keep the old address.
    wait_for(lambda: hosts_reads(server) > reads, 5, what="dnsmasq to re-read the reservations")
    assert not server.sync_reservations()  # unchanged: no SIGHUP
    before = client.renew()
    client.wait("nak", after=before)
    client.wait("bound", str(reserved), after=before)
    wait_for(
        lambda: (
            (found := lease_of(primary.store, 100, client.mac)()) is not None
            and (found.ipv4, found.hostname) == (reserved, "web1")
        ),
        15,
        what="the reserved address's lease in ZooKeeper (and the old one's del not removing it)",
    )

    # dnsmasq dies: the check restarts it and says what happened; the client renews with the new one.
    killed = server.pid
    assert killed is not None
    os.kill(killed, signal.SIGKILL)
    wait_for(lambda: not server.running(), 5, what="dnsmasq to die")
    problem = server.check()
    assert problem is not None
    assert "DHCP on network 100 (vmbr100) stopped: dnsmasq (killed by SIGKILL" in problem
    assert problem.endswith("restarted (restart 1 since this node became primary)")
    assert server.problem == problem and server.restarts == 1
    assert server.running() and server.pid != killed
    assert server.check() is None
    before = client.renew()
    client.wait("renew", str(reserved), after=before)

    # Handover: the reservation is gone, this server stops, a server that never saw the client starts
    # from ZooKeeper. Without the lease it would offer the first address again (dnsmasq picks a new
    # client's address by hashing its MAC); with it, a fresh request gets the leased address.
    networks.remove_reservation(primary.store, 100, client.mac)
    server.sync_reservations()
    client.stop()
    server.stop()
    assert script_complaints(server) == []
    assert not server.running() and not pid_alive(killed)
    successor = primary.server(network)
    successor.start()
    assert successor.running() and successor.problem is None
    assert [line.split()[1:3] for line in successor.files.leases.read_text().splitlines()] == [
        [client.mac, str(reserved)]
    ]
    before = len(client.events())
    client.start()
    assert client.wait("bound", after=before).ip == str(reserved)
    assert reserved != first
    assert script_complaints(successor) == []


def test_one_dnsmasq_per_network_each_on_its_own_bridge(primary: Primary) -> None:
    managed = [managed_network(101), managed_network(102)]
    clients = []
    for network in managed:
        primary.add_network(network)
        primary.server(network).start()
        clients.append(primary.client(network, f"client{network.vni}").start())
    assert all(server.running() for server in primary.servers)
    for network, client in zip(managed, clients, strict=True):
        address = ipaddress.IPv4Address(client.wait("bound").ip)
        assert network.ipv4 is not None and address in network.ipv4.network
        lease = wait_for(lease_of(primary.store, network.vni, client.mac), 15, what=f"the lease on {network.vni}")
        assert (lease.ipv4, lease.hostname) == (address, client.hostname)
    # Each lease only under its own network.
    assert [sorted(networks.list_leases(primary.store, n.vni)) for n in managed] == [[c.mac] for c in clients]
    # The script's lease writes keep the counters: the network goes with its lease in one transaction.
    assert networks.remove(primary.store, 101) == networks.Removed(101, 0, 1)


def test_a_failed_start_is_reported_and_retried_and_a_leftover_is_stopped(primary: Primary) -> None:
    network = managed_network(103)
    networks.create(primary.store, network)
    server = primary.server(network)
    # No bridge yet: dnsmasq refuses to start; start says so instead of raising (the registry must still
    # call stop at relinquish), and the check tries again.
    server.start()
    assert not server.running()
    assert server.problem is not None and "unknown interface vmbr103" in server.problem
    failed = server.check()
    assert failed is not None and "not restarted" in failed
    primary.add_bridge(network)
    restarted = server.check()
    assert restarted is not None and restarted.endswith("restarted (restart 1 since this node became primary)")
    assert server.running()

    # A pvcd that died left its dnsmasq behind: the next server of the same run directory stops it first.
    leftover = server.pid
    assert leftover is not None
    successor = DhcpServer(
        network,
        primary.store,
        server.files.run_dir,
        zookeeper_hosts=None,
        command_prefix=["ip", "netns", "exec", primary.netns],
    )
    primary.servers.append(successor)
    successor.start()
    assert successor.running() and successor.pid != leftover
    wait_for(lambda: not server.running(), 5, what="the leftover dnsmasq to be stopped")

    # A changed range restarts dnsmasq with it; an unchanged record changes nothing.
    assert network.ipv4 is not None
    wider = modified(
        network, ipv4=replace(network.ipv4, dhcp=Dhcp(network.ipv4.network[50], network.ipv4.network[199]))
    )
    before = successor.pid
    assert successor.update_network(wider)
    assert successor.running() and successor.pid != before
    assert "--dhcp-range=192.168.103.50,192.168.103.199,255.255.255.0,3600" in successor.command()
    assert not successor.update_network(wider)
