"""Client networks on a running node: their devices everywhere, and on the primary their DHCP and DNS.

Every node with `enable_networking` follows `/pvc/networks` and the node
registrations (watched, with a slow safety-net read) and makes its devices
what the networks ask (`client_interfaces.desired_devices`, applied
idempotently): a network added, changed or removed while the daemon runs is
applied within one round trip, and a restarted daemon changes nothing that was
right. The gateways are held by the coordinator role with the floating IPs
(`Gateways`, see `coordinator/role.py`), from `NetworkManager.current`.

On the primary, `PrimaryNetworkServices` (a primary-only service) runs one
dnsmasq per managed network with DHCP (`dhcp.py`) and the DNS aggregator
(`dns.py`: PowerDNS on the upstream floating IP, records in PostgreSQL), and
every pass reconciles them with the networks, reservations and leases in
ZooKeeper: servers of removed networks stop, a dnsmasq or PowerDNS that died
is restarted, and what failed is recorded as a cluster fault
(`dhcp-VNI`, `dns`) that `pvc cluster status` shows until a check finds it healthy again. A
node whose devices or default route cannot be set records `networks-NODE` the same way.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pvcd.cluster.client_networks import VXLAN_OVERHEAD, ClientNetwork, NetworkType
from pvcd.config import Config
from pvcd.network import client_interfaces
from pvcd.network.dhcp import DhcpServer, stop_leftovers
from pvcd.network.dns import DnsAggregator, DnsError, PdnsServer
from pvcd.network.dns_records import NetworkHosts, NodeHosts, default_nameserver, desired_zones
from pvcd.supervisor import Supervisor
from pvcd.zk import networks as stored_networks
from pvcd.zk import schema
from pvcd.zk.base import Store, StoreError
from pvcd.zk.faults import set_fault

log = logging.getLogger(__name__)

RESYNC_INTERVAL = 60.0
"""Seconds between full reads when no watch fired: the safety net for a change a watch missed."""
PRIMARY_CHECK_INTERVAL = 5.0
"""On the primary, seconds between checks of its dnsmasq and PowerDNS, and leases dropped on expiry."""
DNS_PORT = 53


def node_addresses(store: Store) -> dict[str, dict[str, str]]:
    """Each registered node's published addresses by network (`upstream`, `cluster`, ...)."""
    names = store.children(schema.NODES)
    found: dict[str, dict[str, str]] = {}
    for name, answer in zip(names, store.get_many([schema.node(name) for name in names]), strict=True):
        value = getattr(answer, "value", None)
        addresses = value.get("addresses") if isinstance(value, dict) else None
        if isinstance(addresses, dict):
            found[name] = {key: text for key, text in addresses.items() if isinstance(text, str)}
    return found


def _ipv4(text: str | None) -> ipaddress.IPv4Address | None:
    try:
        return ipaddress.IPv4Address(text) if text is not None else None
    except ValueError:
        return None


class PrimaryNetworkServices:
    """DHCP and the DNS aggregator for the client networks, run while this node is primary."""

    name = "client-networks"

    def __init__(self, config: Config, store: Store, run_root: Path, wake: Callable[[], None]) -> None:
        assert config.networking is not None and config.cluster.networks is not None
        self.config = config
        self.store = store
        self.run_root = run_root
        self._wake = wake
        upstream = config.cluster.networks.upstream
        self.dns_address = upstream.floating_ip.ip
        self.nodes_domain = upstream.domain
        self.overlay_mtu = config.networking.cluster.mtu - VXLAN_OVERHEAD
        assert config.coordinator is not None
        database = config.coordinator.dns_database
        self.database_name = database.name
        self.pdns = PdnsServer(database, run_root / "dns", str(self.dns_address), DNS_PORT)
        self.aggregator = DnsAggregator(database)
        self.dhcp: dict[int, DhcpServer] = {}
        self.active = False
        self._schema_ready = False
        self._dns_started = False
        self._lock = threading.Lock()
        self.stop_leftovers()

    def stop_leftovers(self) -> None:
        """Stop the dnsmasq and PowerDNS an earlier pvcd of this node left running (by their pid files).

        Under systemd a pvcd that dies takes them with it (its cgroup is
        killed), but one run otherwise would leave them running while another
        node is primary, and a pvcd that restarts as secondary never starts a
        server of that run directory, so nothing else would stop them. A new
        daemon has started none yet: whatever the pid files name is a leftover."""
        stop_leftovers(self.run_root / "dhcp")
        self.pdns.stop()

    def start(self) -> None:
        with self._lock:
            self.active = True
            self._schema_ready = False
        self._wake()

    def stop(self) -> None:
        with self._lock:
            self.active = False
            servers, self.dhcp = list(self.dhcp.values()), {}
            for server in servers:
                server.stop()
            self.pdns.stop()
            self._dns_started = False

    def reconcile(self, networks: Mapping[int, ClientNetwork], addresses: Mapping[str, Mapping[str, str]]) -> None:
        """Make DHCP and DNS follow the networks; a failure of one network's server leaves the others alone."""
        with self._lock:
            if not self.active:
                return
            hosts = [self._dhcp(network) for network in networks.values() if network.type is NetworkType.MANAGED]
            for vni in sorted(set(self.dhcp) - {h.network.vni for h in hosts if h.network.dhcp is not None}):
                log.info("Client network %s has no DHCP any more: stopping its dnsmasq", vni)
                self.dhcp.pop(vni).stop()
                set_fault(self.store, f"dhcp-{vni}", None)
            self._dns(hosts, addresses)

    def _dhcp(self, network: ClientNetwork) -> NetworkHosts:
        """Start, update and check the network's dnsmasq; its leases and reservations, for DNS."""
        vni = network.vni
        leases = stored_networks.list_leases(self.store, vni)
        reservations = stored_networks.list_reservations(self.store, vni)
        if network.dhcp is not None:
            server = self.dhcp.get(vni)
            if server is None:
                server = self.dhcp[vni] = DhcpServer(
                    network,
                    self.store,
                    self.run_root / "dhcp" / str(vni),
                    self.config.zookeeper_hosts,
                    dns_server=self.dns_address,
                    mtu=self.overlay_mtu,
                )
                server.start()
            else:
                server.update_network(network)
                server.sync_reservations(reservations.values())
            problem = server.check()
            set_fault(self.store, f"dhcp-{vni}", {"reason": problem} if problem else None)
            stored_networks.drop_expired_leases(self.store, vni, int(time.time()))
        return NetworkHosts(network, tuple(leases.values()), tuple(reservations.values()))

    def _dns(self, hosts: list[NetworkHosts], addresses: Mapping[str, Mapping[str, str]]) -> None:
        """The aggregator serves the managed networks' names: it runs while there is one."""
        if not hosts:
            if self._dns_started:
                log.info("No managed client network any more: stopping the DNS aggregator")
                self.pdns.stop()
                self._dns_started = False
            set_fault(self.store, "dns", None)
            return
        if not self._dns_started:
            self.pdns.start()
            self._dns_started = True
        problem: str | None = None
        try:
            if not self._schema_ready:
                if self.aggregator.ensure_schema():
                    log.info("Created the DNS aggregator's schema in database %s", self.database_name)
                self._schema_ready = True
            nodes = None
            if self.nodes_domain is not None:
                upstream = {
                    name: ipaddress.ip_address(found["upstream"])
                    for name, found in addresses.items()
                    if "upstream" in found
                }
                nodes = NodeHosts(self.nodes_domain, upstream)
            nameserver = default_nameserver(self.nodes_domain or "pvc.local", self.dns_address)
            self.aggregator.sync(desired_zones(hosts, nodes, nameserver))
        except DnsError as exc:
            problem = f"DNS records not updated: {exc}"
            log.error("DNS aggregator: %s", problem)
        problem = self.pdns.check() or problem
        set_fault(self.store, "dns", {"reason": problem} if problem else None)


class NetworkManager:
    """The node's client networks: devices on every node, services on the primary."""

    def __init__(self, config: Config, store: Store, supervisor: Supervisor, stop: threading.Event) -> None:
        assert config.networking is not None
        self.config = config
        self.store = store
        self.supervisor = supervisor
        self.stop_event = stop
        self.node = config.node
        networking = config.networking
        self.cluster_device = networking.cluster.device
        self.cluster_mtu = networking.cluster.mtu
        self.local = networking.cluster.address.ip if networking.cluster.address is not None else None
        self.bridge_device = networking.upstream.device
        self.interfaces = client_interfaces.ClientInterfaces()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._networks: dict[int, ClientNetwork] = {}
        self._watched: set[int] = set()
        self._problems: list[str] = []
        self.primary: PrimaryNetworkServices | None = None
        if config.is_coordinator and config.cluster.networks is not None:
            run_root = Path(config.directories.dynamic_directory) / "networks"
            self.primary = PrimaryNetworkServices(config, store, run_root, self._wake.set)

    @property
    def current(self) -> list[ClientNetwork]:
        """The networks as last read (for the gateways the coordinator holds)."""
        with self._lock:
            return list(self._networks.values())

    def start(self) -> None:
        if self.local is None:
            log.error(
                "Node %s has no cluster address: client networks cannot be built here (the VXLANs need one)",
                self.node,
            )
        self.store.watch_children(schema.NETWORKS, self._changed)
        self.store.watch_children(schema.NODES, self._changed)
        self.supervisor.spawn("client-networks", self._pass, self.stop_event, 0.0)

    def stop(self) -> None:
        self._wake.set()
        self.interfaces.close()

    def _default_route(self) -> str | None:
        """The upstream gateway as default route; what failed (the upstream device may have no address on the
        gateway's network yet), retried every pass rather than stopping the daemon."""
        route = client_interfaces.default_route(self.config)
        if route is None:
            return None
        try:
            self.interfaces.set_default_route(route)
        except client_interfaces.InterfaceError as exc:
            return str(exc)
        return None

    def _report(self, errors: list[str]) -> None:
        """This node's network problems as a cluster fault (`networks-NODE`), logged when they change."""
        route = self._default_route()
        problems = [*errors, *([route] if route else [])]
        if problems != self._problems:
            for problem in problems:
                log.error("Client networks on node %s: %s", self.node, problem)
            if not problems:
                log.info("Client networks on node %s are as configured again", self.node)
            self._problems = problems
        set_fault(self.store, f"networks-{self.node}", {"reason": "; ".join(problems)} if problems else None)

    def _changed(self, _value: Any) -> bool:
        self._wake.set()
        return not self.stop_event.is_set()

    def _watch(self, vnis: set[int]) -> None:
        """Watch each new network's record, reservations and leases: a change of any wakes the loop."""
        for vni in sorted(vnis - self._watched):
            self._watched.add(vni)

            def changed(_value: Any, vni: int = vni) -> bool:
                self._wake.set()
                alive = vni in self._watched and not self.stop_event.is_set()
                return alive

            self.store.watch_data(schema.network(vni), changed)
            self.store.watch_children(schema.network_reservations(vni), changed)
            self.store.watch_children(schema.network_leases(vni), changed)
        self._watched &= vnis

    def _pass(self) -> None:
        interval = PRIMARY_CHECK_INTERVAL if self.primary is not None and self.primary.active else RESYNC_INTERVAL
        self._wake.wait(interval)
        self._wake.clear()
        if self.stop_event.is_set():
            return
        try:
            networks = {vni: view.network for vni, view in stored_networks.read_networks(self.store).items()}
            addresses = node_addresses(self.store)
        except StoreError as exc:
            log.warning("Client networks of node %s not updated: %s; retrying", self.node, exc)
            return
        with self._lock:
            self._networks = networks
        self._watch(set(networks))
        errors: list[str] = []
        if self.local is not None:
            peers = [address for found in addresses.values() if (address := _ipv4(found.get("cluster"))) is not None]
            desired = client_interfaces.desired_devices(
                networks.values(), self.cluster_device, self.cluster_mtu, self.local, peers, self.bridge_device
            )
            errors = [str(error) for error in self.interfaces.apply(desired).errors]
        self._report(errors)
        if self.primary is not None:
            self.primary.reconcile(networks, addresses)
