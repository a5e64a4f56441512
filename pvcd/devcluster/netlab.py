"""pvcd nodes each in its own network namespace, joined by veth pairs to a bridge.

Shared by the floating IP tests (tests/netns) and the handover benchmark
(bench/handover.py); needs root. One `Lab`:

- a bridge in the root namespace, holding ZooKeeper's address on the cluster
  network; a ZooKeeper of its own listens there (and only there);
- per node, a namespace with `eth0` (a veth whose peer is on the bridge); its
  `pvcd` adds the node's own addresses at start (upstream None, cluster
  by-id, storage static) and, as primary, the floating IPs;
- an observer namespace with an address on each network, to ping from.

Names carry a random tag and the networks a random 10.A.0.0/16 not routed
here yet, so concurrent labs never collide and nothing leaves the machine.
`teardown` stops every process by its PID and removes everything created.
"""

from __future__ import annotations

import ipaddress
import os
import random
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml
from pyroute2 import IPRoute

from pvcd.config import DnsDatabase
from pvcd.devcluster import layout
from pvcd.devcluster.processes import stop_pid, wait_until
from pvcd.devcluster.zookeeper import ZooKeeperServer
from pvcd.zk import schema
from pvcd.zk.base import Store
from pvcd.zk.security import ZkSecurity
from pvcd.zk.store import ZooKeeperStore

SESSION_TIMEOUT = 4.0
NODE_MTU = 1400
"""The nodes' configured MTU: below the veth default of 1500, so applying it shows."""
NETWORKS = ("upstream", "cluster", "storage")
ZOOKEEPER_HOST = 250
OBSERVER_HOST = 200
FLOATING_HOST = 254
STORAGE_HOST_BASE = 10


def sh(*args: str) -> str:
    """Run a command; its stdout, or RuntimeError with its stderr."""
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def namespace_processes(netns: str) -> dict[int, list[str]]:
    """The processes in network namespace `netns` (`ip netns pids`): PID → argv (empty once gone)."""
    result = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, timeout=30)
    found: dict[int, list[str]] = {}
    for pid in (int(word) for word in result.stdout.split()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                found[pid] = [part.decode(errors="replace") for part in cmdline.read().split(b"\0") if part]
        except OSError:
            continue
    return found


def _free_subnet_base() -> int:
    """A second octet A such that nothing in 10.A.0.0/16 is routed here already."""
    routes = sh("ip", "-4", "route", "show", "table", "all")
    return random.choice([a for a in range(200, 250) if f"10.{a}." not in routes])


class NodeNamespace:
    """One node: its namespace, its `pvcd` process, its log."""

    def __init__(self, lab: Lab, name: str, index: int) -> None:
        self.lab, self.name, self.index = lab, name, index
        self.netns = f"pvct-{lab.tag}-{name}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = lab.workdir / f"{name}.log"

    def create(self) -> None:
        # A new peer name each time: a deleted namespace's veth pair goes away asynchronously.
        peer = f"pv{secrets.token_hex(4)}"
        sh("ip", "netns", "add", self.netns)
        sh("ip", "link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        sh("ip", "link", "set", peer, "master", self.lab.bridge, "up")
        sh("ip", "-n", self.netns, "link", "set", "lo", "up")
        sh("ip", "-n", self.netns, "link", "set", "eth0", "up")

    def start(self, enable_networking: bool = True) -> NodeNamespace:
        """Start (or restart) the node's `pvcd` inside its namespace."""
        config = self.lab.workdir / f"{self.name}.yaml"
        config.write_text(yaml.safe_dump(self.lab.document(self.name, self.index, enable_networking), sort_keys=False))
        env = dict(os.environ, PVCD_CONFIG_FILE=str(config), PYTHONUNBUFFERED="1")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, sys.executable, "-m", "pvcd.main"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        return self

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def mac(self) -> str:
        return sh("ip", "-n", self.netns, "-o", "link", "show", "eth0").split("link/ether ")[1].split()[0]

    def mtu(self) -> int:
        with IPRoute(netns=self.netns) as ipr:
            return ipr.get_links(ipr.link_lookup(ifname="eth0")[0])[0].get("IFLA_MTU")

    def addresses(self) -> dict[str, dict[str, int]]:
        """IPv4 address on eth0 → its kernel cache info (lifetimes)."""
        with IPRoute(netns=self.netns) as ipr:
            return {a.get("IFA_ADDRESS"): a.get("IFA_CACHEINFO") for a in ipr.get_addr(family=2, label="eth0")}

    def stop(self) -> None:
        if self.running():
            assert self.process is not None
            stop_pid(self.process.pid, sig=signal.SIGKILL, timeout=5)
            self.process.wait(timeout=5)

    def processes(self) -> dict[int, list[str]]:
        """Every process in the namespace (its `pvcd`, what that started, what it left behind): PID → argv."""
        return namespace_processes(self.netns)

    def destroy(self) -> None:
        """Stop the node's `pvcd`, then whatever is left in its namespace (a dnsmasq or PowerDNS of a
        killed pvcd outlives it, as systemd's cgroup would not let it), each by its PID; remove the namespace."""
        self.stop()
        for pid in namespace_processes(self.netns):
            stop_pid(pid, timeout=5)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)


class Lab:
    """The bridge, ZooKeeper, the observer and the node namespaces."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.dns_database: DnsDatabase | None = None
        """The DNS aggregator's database the nodes are configured with (a placeholder when None)."""
        self.run_root: Path | None = None
        """Parent of the nodes' dynamic directories when set (dnsmasq and PowerDNS drop root and must
        reach their files there: pytest's tmp_path is 0700); else each node's directory in `workdir`."""
        self.tag = secrets.token_hex(2)
        self.bridge = f"pvbr{self.tag}"
        base = _free_subnet_base()
        self.networks = {
            name: ipaddress.IPv4Network(f"10.{base}.{number}.0/24") for number, name in enumerate(NETWORKS, start=1)
        }
        self.zookeeper_ip = self.host("cluster", ZOOKEEPER_HOST)
        self.observer = f"pvct-{self.tag}-obs"
        self.zookeeper: ZooKeeperServer | None = None
        self.nodes: dict[str, NodeNamespace] = {}

    def host(self, network: str, number: int) -> ipaddress.IPv4Address:
        return self.networks[network].network_address + number

    def floating_ips(self) -> dict[str, str]:
        return {name: str(self.host(name, FLOATING_HOST)) for name in NETWORKS}

    def setup(self) -> None:
        """Create the bridge, the observer and ZooKeeper; call teardown even if this fails."""
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "link", "set", self.bridge, "up")
        sh("ip", "address", "add", f"{self.zookeeper_ip}/24", "dev", self.bridge)
        sh("ip", "netns", "add", self.observer)
        peer = f"pv{secrets.token_hex(4)}"
        sh("ip", "link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns", self.observer)
        sh("ip", "link", "set", peer, "master", self.bridge, "up")
        sh("ip", "-n", self.observer, "link", "set", "eth0", "up")
        for name in NETWORKS:
            sh("ip", "-n", self.observer, "address", "add", f"{self.host(name, OBSERVER_HOST)}/24", "dev", "eth0")
        self.zookeeper = ZooKeeperServer.create(self.workdir / "zookeeper", client_address=str(self.zookeeper_ip))
        self.zookeeper.start()

    def teardown(self) -> None:
        self.remove_nodes()
        if self.zookeeper is not None:
            self.zookeeper.stop()
        subprocess.run(["ip", "netns", "del", self.observer], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)

    def add_node(self, name: str) -> NodeNamespace:
        """Create the node's namespace; add every node before starting any (they list each other)."""
        node = NodeNamespace(self, name, len(self.nodes) + 1)
        self.nodes[name] = node  # first, so that a half-created namespace is removed too
        node.create()
        return node

    def remove_nodes(self) -> None:
        for node in self.nodes.values():
            node.destroy()
        self.nodes.clear()

    def clear_zookeeper(self) -> None:
        """An empty /pvc, for a fresh cluster on the same ZooKeeper."""
        with self.client() as store:
            store.delete_tree(schema.ROOT)

    def client(self) -> _Client:
        assert self.zookeeper is not None
        return _Client(self.zookeeper.address, self.zookeeper.security("coordinator"))

    def roles(self) -> dict[str, str]:
        """Each node's published coordinator state."""
        with self.client() as store:
            states = {name: store.get(schema.node_state(name)) for name in self.nodes}
            return {name: state.value["coordinator"] for name, state in states.items() if state is not None}

    def document(self, name: str, index: int, enable_networking: bool) -> dict[str, Any]:
        """The node's pvcd.yaml: the local cluster's, with ZooKeeper on the bridge and networks."""
        assert self.zookeeper is not None
        paths = layout.node_paths(self.workdir, name)
        paths.directory.mkdir(parents=True, exist_ok=True)
        paths.host_xml.write_text(layout.host_xml())
        names = list(self.nodes)
        keys = self.zookeeper.config_keys(layout.node_role(name, names))
        doc = layout.node_config(name, paths, names, self.zookeeper.port, zookeeper_keys=keys)
        pvc = doc["pvc"]
        for coordinator in pvc["cluster"]["coordinators"]:
            coordinator["host"] = str(self.zookeeper_ip)
        pvc["cluster"]["zookeeper"]["session_timeout"] = SESSION_TIMEOUT
        pvc["functions"]["enable_networking"] = enable_networking
        pvc["cluster"]["networks"] = {
            network: {
                "domain": f"{network}.pvc.test",
                "network": str(self.networks[network]),
                "floating_ip": f"{self.host(network, FLOATING_HOST)}/24",
            }
            for network in NETWORKS
        }
        database = self.dns_database or DnsDatabase("localhost", 5432, "pvcdns", "pvcdns", "x")
        pvc["coordinator"] = {
            "dns": {
                "database": {
                    "host": database.host,
                    "port": database.port,
                    "name": database.name,
                    "user": database.user,
                    "pass": database.password,
                }
            }
        }
        if self.run_root is not None:
            pvc["system"]["configuration"]["directories"]["dynamic_directory"] = str(self.run_root / name)
        pvc["system"]["configuration"]["networking"] = {
            "upstream": {"device": "eth0", "mtu": NODE_MTU, "address": None},
            "cluster": {"device": "eth0", "mtu": NODE_MTU, "address": "by-id"},
            "storage": {
                "device": "eth0",
                "mtu": NODE_MTU,
                "address": f"{self.host('storage', STORAGE_HOST_BASE + index)}/24",
            },
        }
        return doc

    def ping(self, address: str, timeout: float = 1.0) -> bool:
        """One ICMP echo from the observer namespace."""
        result = subprocess.run(
            ["ip", "netns", "exec", self.observer, "ping", "-n", "-c", "1", "-W", str(timeout), address],
            capture_output=True,
            timeout=timeout + 5,
        )
        return result.returncode == 0

    def observer_neighbour(self, address: str) -> str | None:
        """The MAC the observer sends to for `address`, if it has one."""
        fields = sh("ip", "-n", self.observer, "neigh", "show", address).split()
        return fields[fields.index("lladdr") + 1] if "lladdr" in fields else None

    def answers_from(self, name: str, address: str, timeout: float = 0.5) -> bool:
        """A ping from the observer is answered, and the observer sends to node `name`'s MAC."""
        return self.ping(address, timeout) and self.observer_neighbour(address) == self.nodes[name].mac()

    def floating_holders(self) -> dict[str, list[str]]:
        """For each floating IP, the nodes whose namespace holds it right now."""
        found: dict[str, list[str]] = {address: [] for address in self.floating_ips().values()}
        for name, node in self.nodes.items():
            held = node.addresses()
            for address, holders in found.items():
                if address in held:
                    holders.append(name)
        return found

    def single_holder(self) -> str | None:
        """The one node holding every floating IP while no other holds any; else None."""
        owners = {tuple(holders) for holders in self.floating_holders().values()}
        if len(owners) != 1:
            return None
        (holders,) = owners
        return holders[0] if len(holders) == 1 else None

    def wait_holder(self, name: str | None = None, timeout: float = 20.0, exclude: str | None = None) -> str:
        """Wait until one node (`name`, or any but `exclude`) is the single holder of every floating IP."""

        def check() -> str | None:
            holder = self.single_holder()
            return holder if holder is not None and holder != exclude and name in (None, holder) else None

        return wait_until(check, timeout, f"{name or 'one node'} to hold every floating IP")


class _Client:
    """A short-lived store session on the lab's ZooKeeper, as a context manager."""

    def __init__(self, hosts: str, security: ZkSecurity | None = None) -> None:
        self.store = ZooKeeperStore(hosts, connect_timeout=10.0, security=security)

    def __enter__(self) -> Store:
        self.store.start()
        return self.store

    def __exit__(self, *_: Any) -> None:
        self.store.stop()


class AddressSampler:
    """Reads every node namespace's addresses every `interval`, keeping the history."""

    def __init__(self, lab: Lab, interval: float = 0.05) -> None:
        self.lab = lab
        self.interval = interval
        self.samples: list[tuple[float, dict[str, set[str]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._handles = {name: IPRoute(netns=node.netns) for name, node in lab.nodes.items()}

    def __enter__(self) -> AddressSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(5)
        for handle in self._handles.values():
            handle.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            sample = {
                name: {address.get("IFA_ADDRESS") for address in handle.get_addr(family=2)}
                for name, handle in self._handles.items()
            }
            self.samples.append((time.monotonic(), sample))
            self._stop.wait(self.interval)

    def overlaps(self) -> list[tuple[float, str, list[str]]]:
        """Every sampled moment at which a floating IP was on more than one node."""
        found = []
        for at, sample in self.samples:
            for address in self.lab.floating_ips().values():
                holders = sorted(name for name, held in sample.items() if address in held)
                if len(holders) > 1:
                    found.append((at, address, holders))
        return found

    def held_by(self, name: str, since: float = 0.0) -> list[float]:
        """Sample times at which node `name` held any floating IP."""
        floating = set(self.lab.floating_ips().values())
        return [at for at, sample in self.samples if at >= since and sample.get(name, set()) & floating]
