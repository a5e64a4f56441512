"""Client networks on a three-node cluster: each `pvcd` in its own namespace (pvcd.devcluster.netlab).

Real components, all started here: ZooKeeper and PostgreSQL on the lab's
bridge address (the nodes reach both over their `eth0`), the daemons with
networking on, and on the primary the dnsmasq and PowerDNS they start. The
operator's side is the `pvc` CLI. A client is a namespace of its own whose
veth is plugged into `vmbr100` of a node that is NOT the primary: its DHCP
traffic crosses the VXLAN to the primary's dnsmasq, its pings reach the
gateway there, and its name is asked of PowerDNS on the upstream floating IP
from inside the client namespace (dnspython, through the gateway).

- the managed network's devices on every node, the gateway only on the
  primary; a lease over the VXLAN, in ZooKeeper, a ping, a name;
- a handover and a crash of the primary: each time the new primary holds the
  gateway and serves the same lease and name, the old one holds no gateway
  and runs neither dnsmasq nor PowerDNS (processes of its namespace);
- a network added, changed and removed at run time, on every node; a
  restarted `pvcd` changes nothing that was right.

Needs root, as every test under tests/netns; CI runs as root.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import IPRoute

from dhcp_client import DhcpClient
from helpers import bin_path, wait_for
from pvcd.devcluster.netlab import NODE_MTU, SESSION_TIMEOUT, Lab, namespace_processes
from pvcd.devcluster.postgres import PostgresServer, postgres_available
from pvcd.devcluster.processes import wait_until

NODES = ("hv1", "hv2", "hv3")
VNI = 100
DOMAIN = f"net{VNI}.test"
OVERLAY_MTU = NODE_MTU - 50
HOSTNAME = "client1"
DNS_PASSWORD = "dns secret"

RESOLVE = """
import sys
import dns.exception, dns.resolver
stub = dns.resolver.Resolver(configure=False)
stub.nameservers = [sys.argv[1]]
stub.lifetime = 2.0
try:
    print(stub.resolve(sys.argv[2], "A")[0])
except dns.exception.DNSException as exc:
    print(type(exc).__name__)
"""


@pytest.fixture(scope="module", autouse=True)
def require_root() -> None:
    """Before the lab (namespaces, veth, bridges, VXLAN need root): one clear line instead of `ip`'s errors."""
    if os.geteuid() != 0:
        pytest.fail("the client network cluster tests need root (namespaces, veth, bridges, VXLAN): run them as root")
    if not postgres_available():
        pytest.fail("PostgreSQL is not installed: run ./setup.sh, which installs the postgresql package")


@pytest.fixture(scope="module")
def postgres(lab: Lab) -> Iterator[PostgresServer]:
    """PostgreSQL on the lab's bridge address, where the node namespaces reach it (like ZooKeeper)."""
    directory = Path(tempfile.mkdtemp(prefix="pvcd-test-postgres-"))
    lab_network = ipaddress.ip_network(f"{lab.zookeeper_ip}/16", strict=False)
    server = PostgresServer.create(directory, address=str(lab.zookeeper_ip), clients=str(lab_network))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


class Client(DhcpClient):
    """A namespace plugged into a node's `vmbrVNI`, running `busybox udhcpc` in the foreground, that pings
    and asks names too."""

    def ping(self, address: str) -> bool:
        result = subprocess.run(
            ["ip", "netns", "exec", self.netns, "ping", "-n", "-c", "1", "-W", "1", address],
            capture_output=True,
            timeout=10,
        )
        return result.returncode == 0

    def resolve(self, server: str, name: str) -> str:
        """`name`'s A record as `server` answers it from inside the client namespace (or the error's name)."""
        result = subprocess.run(
            ["ip", "netns", "exec", self.netns, sys.executable, "-c", RESOLVE, server, name],
            capture_output=True,
            text=True,
            timeout=15,
        )
        return result.stdout.strip() or result.stderr.strip()


@dataclass
class Cluster:
    lab: Lab
    workdir: Path
    clients: list[Client] = field(default_factory=list)

    def pvc(self, *args: str) -> Any:
        """`pvc --zookeeper … ARGS --format json`; its parsed answer (the command must succeed)."""
        assert self.lab.zookeeper is not None
        env = {k: v for k, v in os.environ.items() if k not in ("PVC_ZOOKEEPER", "PVCD_CONFIG_FILE")}
        env.update(self.lab.zookeeper.client_environment("operator"))  # the lab's own CA and credentials
        result = subprocess.run(
            [bin_path("pvc"), "--zookeeper", self.lab.zookeeper.address, *args, "--format", "json"],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )
        assert result.returncode == 0, f"pvc {' '.join(args)}: {result.stderr}"
        return json.loads(result.stdout) if result.stdout.strip() else None

    def wait_roles(self, primary: str | None = None, exclude: str | None = None, timeout: float = 30) -> str:
        """Wait until one node (`primary`, or any but `exclude`) holds the floating IPs and publishes primary,
        and the other nodes whose `pvcd` runs publish secondary (a killed one's record stays as it left it)."""
        holder = self.lab.wait_holder(primary, timeout=timeout, exclude=exclude)
        running = {name for name, node in self.lab.nodes.items() if node.running()}

        def settled() -> bool:
            roles = {name: role for name, role in self.lab.roles().items() if name in running}
            return roles == {name: "primary" if name == holder else "secondary" for name in running}

        try:
            wait_until(settled, timeout, "", 0.1)
        except TimeoutError:
            pytest.fail(
                f"{holder} primary and the other running nodes secondary: after {timeout}s, roles {self.lab.roles()}"
                f", floating IPs held by {self.lab.floating_holders()}"
            )
        return holder

    def client(self, node: str, vni: int, hostname: str) -> Client:
        """A client namespace whose veth peer is a port of `vmbrVNI` in node `node`'s namespace; the script
        routes through the gateway (for DNS on the upstream floating IP)."""
        client = Client(
            f"pvct-{self.lab.tag}-{hostname}", hostname, self.workdir, options=("-t", "10"), default_route=True
        )
        self.clients.append(client)
        return client.plug(self.lab.nodes[node].netns, f"vmbr{vni}", mtu=OVERLAY_MTU)

    def cleanup(self) -> None:
        for client in self.clients:
            client.remove()


@pytest.fixture
def cluster(nodes: Lab, postgres: PostgresServer, tmp_path: Path) -> Iterator[Cluster]:
    """Three nodes with networking on and the DNS aggregator's database; everything removed afterwards."""
    lab = nodes
    # dnsmasq and PowerDNS drop root and must reach their run directories: not under pytest's 0700 tmp_path.
    run_root = Path(tempfile.mkdtemp(prefix="pvcd-test-netlab-run-"))
    run_root.chmod(0o755)
    lab.run_root = run_root
    lab.dns_database = postgres.create_database(f"pvcdns_{lab.tag}_{secrets.token_hex(2)}", "pvcdns", DNS_PASSWORD)
    found = Cluster(lab, tmp_path)
    try:
        for name in NODES:
            lab.add_node(name)
        for node in lab.nodes.values():
            node.start()
        yield found
    finally:
        try:
            found.cleanup()
            lab.remove_nodes()
        finally:
            lab.run_root = lab.dns_database = None
            shutil.rmtree(run_root, ignore_errors=True)


def link(netns: str, device: str) -> dict[str, Any] | None:
    """`ip -j -d link show` of `device` in `netns`; None if it does not exist."""
    result = subprocess.run(
        ["ip", "-n", netns, "-j", "-d", "link", "show", "dev", device], capture_output=True, text=True, timeout=30
    )
    if result.returncode != 0:
        return None
    found: list[dict[str, Any]] = json.loads(result.stdout)
    return found[0] if found else None


def global_addresses(netns: str, device: str) -> set[str]:
    """The global-scope addresses (IPv4 and IPv6) on `device` in `netns`; empty if it does not exist."""
    result = subprocess.run(
        ["ip", "-n", netns, "-j", "address", "show", "dev", device], capture_output=True, text=True, timeout=30
    )
    if result.returncode != 0 or not result.stdout.strip():
        return set()
    return {
        info["local"]
        for entry in json.loads(result.stdout)
        for info in entry.get("addr_info", [])
        if info.get("scope") == "global"
    }


def devices_ok(netns: str, vni: int) -> str | None:
    """What is wrong with network `vni`'s VXLAN and bridge in `netns`; None when they are as pvcd must make them."""
    vxlan, bridge = link(netns, f"vxlan{vni}"), link(netns, f"vmbr{vni}")
    if vxlan is None or bridge is None:
        return f"vxlan{vni} {'present' if vxlan else 'missing'}, vmbr{vni} {'present' if bridge else 'missing'}"
    kinds = (vxlan.get("linkinfo", {}).get("info_kind"), bridge.get("linkinfo", {}).get("info_kind"))
    seen = (kinds, vxlan["linkinfo"].get("info_data", {}).get("id"), vxlan["mtu"], bridge["mtu"], vxlan.get("master"))
    wanted = (("vxlan", "bridge"), vni, OVERLAY_MTU, OVERLAY_MTU, f"vmbr{vni}")
    if seen != wanted:
        return f"(kinds, VNI, VXLAN MTU, bridge MTU, master) {seen} != {wanted}"
    if "UP" not in vxlan.get("flags", []) or "UP" not in bridge.get("flags", []):
        return f"not both up: {vxlan.get('flags')}, {bridge.get('flags')}"
    return None


def devices_everywhere(lab: Lab, vni: int) -> dict[str, str | None]:
    return {name: devices_ok(node.netns, vni) for name, node in lab.nodes.items()}


def gateways(vni: int) -> set[str]:
    return {f"192.168.{vni}.1", f"fd00:{vni}::1"}


def gateway_holders(lab: Lab, vni: int) -> dict[str, set[str]]:
    """For each node, the gateway addresses of network `vni` its `vmbrVNI` holds."""
    return {name: global_addresses(node.netns, f"vmbr{vni}") & gateways(vni) for name, node in lab.nodes.items()}


def parent(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return int(stat.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def dnsmasq_pids(netns: str, vni: int) -> list[int]:
    """The dnsmasq servers of network `vni` in `netns` (not the helper each forks to run its lease script)."""
    found = [
        pid
        for pid, argv in namespace_processes(netns).items()
        if argv and argv[0].endswith("dnsmasq") and f"--interface=vmbr{vni}" in argv
    ]
    return [pid for pid in found if parent(pid) not in found]


def pdns_pids(netns: str) -> list[int]:
    return [pid for pid, argv in namespace_processes(netns).items() if argv and argv[0].endswith("pdns_server")]


def served_by(lab: Lab, vni: int) -> dict[str, tuple[int, int, bool]]:
    """Per node: its dnsmasq count for `vni`, its PowerDNS count, whether it holds the gateways."""
    holders = gateway_holders(lab, vni)
    return {
        name: (len(dnsmasq_pids(node.netns, vni)), len(pdns_pids(node.netns)), holders[name] == gateways(vni))
        for name, node in lab.nodes.items()
    }


def wait_serving(lab: Lab, primary: str, why: str, vni: int = VNI, timeout: float = 20) -> None:
    """Until `primary` holds the gateways and runs one dnsmasq (for `vni`) and one PowerDNS, and no other node
    holds a gateway or runs either; on timeout, fail with what each node had."""
    expected = {name: (1, 1, True) if name == primary else (0, 0, False) for name in lab.nodes}
    seen: list[Any] = [None]

    def check() -> bool:
        seen[0] = (served_by(lab, vni), gateway_holders(lab, vni))
        return bool(seen[0][0] == expected and not any(seen[0][1][name] for name in lab.nodes if name != primary))

    try:
        wait_until(check, timeout, "", 0.1)
    except TimeoutError:
        pytest.fail(
            f"{primary} alone to serve network {vni} {why}: after {timeout}s, per node (dnsmasq, PowerDNS, gateways "
            f"held) {seen[0][0]}, gateway addresses {seen[0][1]}"
        )


def add_network(cluster: Cluster, vni: int, **extra: str) -> Any:
    options = {
        "--domain": f"net{vni}.test",
        "--ipv4-network": f"192.168.{vni}.0/24",
        "--ipv4-gateway": f"192.168.{vni}.1",
        "--dhcp-start": f"192.168.{vni}.100",
        "--dhcp-end": f"192.168.{vni}.199",
        "--ipv6-network": f"fd00:{vni}::/64",
        "--ipv6-gateway": f"fd00:{vni}::1",
        **extra,
    }
    return cluster.pvc("network", "add", str(vni), "--type", "managed", *(w for o in options.items() for w in o))


def test_devices_dhcp_dns_and_gateway_through_handover_and_crash(cluster: Cluster) -> None:
    lab = cluster.lab
    first = cluster.wait_roles()
    answer = add_network(cluster, VNI)
    assert answer["bridge"] == f"vmbr{VNI}"

    # The VXLAN and its bridge on every node; the gateways only on the primary, with pvcd's DHCP and DNS.
    wait_for(lambda: set(devices_everywhere(lab, VNI).values()) == {None}, 15, what="vxlan100 and vmbr100 everywhere")
    wait_serving(lab, first, "once added")
    assert all(node.mtu() == NODE_MTU for node in lab.nodes.values())

    # A client on a secondary's bridge: its DHCP crosses the VXLAN to the primary's dnsmasq.
    host = next(name for name in NODES if name != first)
    client = cluster.client(host, VNI, HOSTNAME).start()
    bound = client.wait("bound")
    leased = ipaddress.IPv4Address(bound.ip)
    upstream_floating = lab.floating_ips()["upstream"]
    assert leased in ipaddress.ip_network(f"192.168.{VNI}.0/24") and leased.packed[-1] in range(100, 200)
    assert (bound.router, bound.dns, bound.domain) == (f"192.168.{VNI}.1", upstream_floating, DOMAIN)

    def lease_listed() -> bool:
        entries = cluster.pvc("network", "dhcp", "list", str(VNI))
        wanted = {"kind": "lease", "mac": client.mac, "ipv4": str(leased), "hostname": HOSTNAME}
        return any({key: entry[key] for key in wanted} == wanted and entry["expiry"] for entry in entries)

    wait_for(lease_listed, 15, what="the lease in ZooKeeper (pvc network dhcp list)")
    wait_for(lambda: client.ping(f"192.168.{VNI}.1"), 10, what="the client to ping the gateway")
    name = f"{HOSTNAME}.{DOMAIN}"
    wait_for(
        lambda: client.resolve(upstream_floating, name) == str(leased),
        20,
        interval=0.5,
        what=f"{name} to resolve to {leased} through PowerDNS on {upstream_floating}",
    )

    # The primary's dnsmasq dies: a check restarts it, and `pvc cluster status` shows why until the next
    # check finds it running.
    (killed,) = dnsmasq_pids(lab.nodes[first].netns, VNI)
    os.kill(killed, signal.SIGKILL)

    def faulted() -> Any:
        answer = cluster.pvc("cluster", "status")
        return answer if f"dhcp-{VNI}" in answer["faults"] else None

    status = wait_for(
        faulted,
        15,
        interval=0.2,
        what=f"the dhcp-{VNI} fault in pvc cluster status",
    )
    reason = status["faults"][f"dhcp-{VNI}"]["reason"]
    assert "killed by SIGKILL" in reason and "restarted" in reason and status["healthy"] is False, status
    wait_for(
        lambda: f"dhcp-{VNI}" not in cluster.pvc("cluster", "status")["faults"],
        20,
        what=f"the dhcp-{VNI} fault to clear once the new dnsmasq runs",
    )
    assert (
        killed not in dnsmasq_pids(lab.nodes[first].netns, VNI) and len(dnsmasq_pids(lab.nodes[first].netns, VNI)) == 1
    )

    def client_served(why: str) -> None:
        """The client renews the same address (from whichever dnsmasq now answers), pings the gateway, and
        its name resolves."""
        before = client.renew()
        assert client.wait("renew", after=before).ip == str(leased)
        wait_for(lambda: client.ping(f"192.168.{VNI}.1"), 10, what=f"the gateway to answer after the {why}")
        wait_for(
            lambda: client.resolve(upstream_floating, name) == str(leased),
            15,
            interval=0.5,
            what=f"{name} to resolve after the {why}",
        )

    # A planned handover to the third node: the old primary stops everything at once.
    second = next(name for name in NODES if name not in (first, host))
    cluster.pvc("node", "primary", second)
    assert cluster.wait_roles(second, timeout=15) == second
    wait_serving(lab, second, "after the handover")
    client_served("handover")

    # The primary's pvcd is killed: another node takes over by itself, the dead one's gateways expire
    # in its kernel (their lifetime is the lease's).
    lab.nodes[second].signal(signal.SIGKILL)
    third = cluster.wait_roles(exclude=second, timeout=SESSION_TIMEOUT + 20)
    wait_for(lambda: not gateway_holders(lab, VNI)[second], SESSION_TIMEOUT + 2, what=f"{second}'s gateways to expire")
    holders = gateway_holders(lab, VNI)
    assert holders == {name: gateways(VNI) if name == third else set() for name in NODES}
    client_served("crash")
    # Its pvcd comes back (systemd's Restart=), as secondary: it stops the dnsmasq and PowerDNS the killed
    # one left behind (systemd would have killed them with the cgroup; the lab has no cgroup per node).
    lab.nodes[second].start()
    assert cluster.wait_roles(third, timeout=30) == third
    wait_serving(lab, third, f"after {second} restarted")
    client_served(f"restart of {second}")
    assert wait_for(lease_listed, 5, what="the lease still in ZooKeeper")


class NamespaceSampler:
    """Every 50 ms, the links (name → ifindex) and global addresses of one namespace, kept in order."""

    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.samples: list[tuple[dict[str, int], set[tuple[int, str]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> NamespaceSampler:
        self._thread.start()
        wait_for(lambda: self.samples, 5, what=f"a first sample of {self.netns}")
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        with IPRoute(netns=self.netns) as ipr:
            while not self._stop.is_set():
                links = {link.get("IFLA_IFNAME"): link["index"] for link in ipr.get_links()}
                addresses = {
                    (address["index"], address.get("IFA_ADDRESS"))
                    for address in ipr.get_addr()
                    if address["scope"] == 0  # global
                }
                self.samples.append((links, addresses))
                self._stop.wait(0.05)


def test_networks_change_at_run_time_everywhere_and_a_restart_changes_nothing(cluster: Cluster) -> None:
    lab = cluster.lab
    primary = cluster.wait_roles()
    add_network(cluster, VNI)
    wait_for(lambda: set(devices_everywhere(lab, VNI).values()) == {None}, 15, what="vxlan100 and vmbr100 everywhere")
    wait_serving(lab, primary, "once added")
    indexes = {name: (link(node.netns, "vxlan100"), link(node.netns, "vmbr100")) for name, node in lab.nodes.items()}
    before = {
        name: (vxlan["ifindex"], bridge["ifindex"]) for name, (vxlan, bridge) in indexes.items() if vxlan and bridge
    }
    primary_netns = lab.nodes[primary].netns
    (dnsmasq100,) = dnsmasq_pids(primary_netns, VNI)

    # A secondary's pvcd restarts (a clean stop, then a start): while it is down and after, nothing of what
    # it built changes in its namespace — no device recreated, no address removed or added.
    restarted = next(name for name in NODES if name != primary)
    node = lab.nodes[restarted]
    with NamespaceSampler(node.netns) as sampler:
        node.signal(signal.SIGTERM)
        assert node.process is not None and node.process.wait(timeout=30) == 0
        node.start()
        assert cluster.wait_roles(primary, timeout=30) == primary
        # A network added now is applied by the restarted pvcd's network loop, which reads every network
        # in each pass: once vxlan101 is there, that loop has made its decisions about network 100 too.
        add_network(cluster, 101)
        wait_for(lambda: set(devices_everywhere(lab, 101).values()) == {None}, 15, what="vxlan101 everywhere")
    first_links, first_addresses = sampler.samples[0]
    for links, addresses in sampler.samples:
        assert {name: links.get(name) for name in ("eth0", "vxlan100", "vmbr100")} == {
            name: first_links.get(name) for name in ("eth0", "vxlan100", "vmbr100")
        }
        assert addresses == first_addresses, f"addresses of {restarted} changed during its restart"
    assert (first_links["vxlan100"], first_links["vmbr100"]) == before[restarted]
    assert "Client network 100" not in node.log().split("Received SIGTERM")[1]

    # The second network: devices on every node, its gateways and dnsmasq on the primary only.
    wait_serving(lab, primary, "once added", vni=101)
    (dnsmasq101,) = dnsmasq_pids(primary_netns, 101)

    # Its DHCP range is changed: the primary's dnsmasq follows (a new one, with the new range).
    answer = cluster.pvc("network", "modify", "101", "--dhcp-start", "192.168.101.50", "--dhcp-end", "192.168.101.60")
    assert answer["ipv4"]["dhcp"] == {"start": "192.168.101.50", "end": "192.168.101.60"}

    def new_range() -> bool:
        found = dnsmasq_pids(primary_netns, 101)
        argv = namespace_processes(primary_netns).get(found[0], []) if len(found) == 1 else []
        return found != [dnsmasq101] and any(
            arg.startswith("--dhcp-range=192.168.101.50,192.168.101.60,") for arg in argv
        )

    wait_for(new_range, 15, what="the primary's dnsmasq of network 101 restarted with the new range")

    # It is removed: its devices go from every node, its dnsmasq and gateways from the primary.
    cluster.pvc("network", "remove", "101")
    wait_for(
        lambda: all(
            link(node.netns, "vxlan101") is None and link(node.netns, "vmbr101") is None for node in lab.nodes.values()
        ),
        15,
        what="vxlan101 and vmbr101 removed from every node",
    )
    wait_for(lambda: not dnsmasq_pids(primary_netns, 101), 10, what="the dnsmasq of network 101 to stop")
    assert gateway_holders(lab, 101) == {name: set() for name in NODES}

    # Network 100 went through all of it untouched: same devices everywhere, same dnsmasq.
    after = {name: (link(n.netns, "vxlan100") or {}, link(n.netns, "vmbr100") or {}) for name, n in lab.nodes.items()}
    assert {name: (vxlan.get("ifindex"), bridge.get("ifindex")) for name, (vxlan, bridge) in after.items()} == before
    assert dnsmasq_pids(primary_netns, VNI) == [dnsmasq100]
    wait_serving(lab, primary, "at the end")
