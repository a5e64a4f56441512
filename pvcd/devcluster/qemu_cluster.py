"""The local cluster with real hosts: bridges, one `QemuHost` per node, and the nodes' configuration.

`pvc-devcluster up --hosts qemu` (root) makes every node a `QemuHost` (its
own network namespace, hostname, libvirtd on TCP and QEMU guests). The
upstream, cluster and storage networks are three bridges in the machine's
namespace, each on a random 10.A.N.0/24 not routed here yet, so nothing
leaves the machine. Each node has one link per network (`eth0` cluster,
`eth1` upstream, `eth2` storage) and `pvcd` runs with networking enabled: it
sets its own addresses (cluster `by-id`, storage static, upstream none) and,
as primary, the floating IPs.

The machine's own side of the cluster bridge holds `ROOT_HOST`: every node's
chassis listens there with its ZooKeeper relay (to the one ZooKeeper on
127.0.0.1) and its BMC, so ZooKeeper and the BMCs are reached over the cluster
network, as on real hosts.

The host's cluster address is on `eth0` from creation, as a real host's
operating system sets it before libvirtd starts (libvirtd listens there); the
node's `pvcd` finds it present.

Everything created is named in the cluster record, so that `down` removes it
all, also after a crash of the launcher (`remove`).
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import secrets
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pvcd.devcluster import layout, qemu_host
from pvcd.devcluster.netlab import sh

NETWORKS = ("cluster", "upstream", "storage")
"""In the order of the nodes' links: eth0, eth1, eth2 (eth0 is QemuHost's own)."""
ROOT_HOST = 250
"""The machine's address on each bridge: the chassis' relays and BMCs listen on the cluster one."""
FLOATING_HOST = 254
STORAGE_HOST_BASE = 100
NODE_MTU = 1500
SESSION_TIMEOUT = 6.0
"""A little above the test-driver cluster's: QEMU guests load the 2 cores."""
SHUTDOWN_TIMEOUT = 10
"""`hypervisor.shutdown_timeout`: the test guests ignore ACPI shutdown, so every shutdown ends in a destroy."""


class QemuClusterError(Exception):
    """The real-host cluster cannot be built; the message says why."""


def require_root() -> None:
    if os.geteuid() != 0:
        raise QemuClusterError("--hosts qemu needs root: it creates network namespaces, bridges, a libvirtd per host")
    tools = ("libvirtd", "qemu-system-x86_64", "nsenter", "unshare", "ip")
    missing = [tool for tool in tools if not shutil.which(tool)]
    if missing:
        raise QemuClusterError(f"--hosts qemu needs {', '.join(missing)}: run ./setup.sh first")


@dataclass(frozen=True)
class Network:
    """The three bridges of one real-host cluster (JSON in the cluster record)."""

    tag: str
    base: int
    """The second octet: the networks are 10.BASE.1-3.0/24."""

    @classmethod
    def choose(cls) -> Network:
        routes = sh("ip", "-4", "route", "show", "table", "all")
        free = [a for a in range(150, 200) if f"10.{a}." not in routes]
        if not free:
            raise QemuClusterError("no free 10.150-199.0.0/16 for the cluster's networks")
        return cls(tag=secrets.token_hex(2), base=random.choice(free))

    @property
    def netns_prefix(self) -> str:
        return f"pvq{self.tag}"

    def bridge(self, network: str) -> str:
        return f"pvq{self.tag}{network[0]}"

    def subnet(self, network: str) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.{self.base}.{NETWORKS.index(network) + 1}.0/24")

    def host(self, network: str, number: int) -> ipaddress.IPv4Address:
        return self.subnet(network).network_address + number

    @property
    def root_address(self) -> str:
        """Where the chassis' relays and BMCs listen."""
        return str(self.host("cluster", ROOT_HOST))

    def create(self) -> None:
        """The bridges, each with the machine's address; call `remove` even if this fails."""
        for network in NETWORKS:
            bridge = self.bridge(network)
            sh("ip", "link", "add", bridge, "type", "bridge")
            sh("ip", "address", "add", f"{self.host(network, ROOT_HOST)}/24", "dev", bridge)
            sh("ip", "link", "set", bridge, "up")

    def remove(self) -> None:
        for network in NETWORKS:
            subprocess.run(["ip", "link", "del", self.bridge(network)], capture_output=True)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class HostSpec:
    """What a chassis needs to power a node's `QemuHost` (JSON in the node directory)."""

    name: str
    root: str
    netns_prefix: str
    bridge: str
    address: str
    peers: dict[str, str]
    capabilities_cache: str

    def host(self, veth: str | None = None) -> qemu_host.QemuHost:
        return qemu_host.QemuHost(
            self.name,
            Path(self.root),
            self.netns_prefix,
            self.bridge,
            self.address,
            peers=self.peers,
            capabilities_cache=Path(self.capabilities_cache),
            veth=veth,
        )

    def save(self, directory: Path) -> None:
        (directory / HOST_SPEC_FILE).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path) -> HostSpec:
        return cls(**json.loads((directory / HOST_SPEC_FILE).read_text()))


HOST_SPEC_FILE = "qemu-host.json"


def node_document(document: dict[str, Any], network: Network, index: int, relay_port: int) -> dict[str, Any]:
    """A test-driver node's pvcd.yaml (`layout.node_config`) turned into a real host's."""
    pvc = document["pvc"]
    for coordinator in pvc["cluster"]["coordinators"]:
        coordinator["host"] = network.root_address
        coordinator["port"] = relay_port
    pvc["cluster"]["zookeeper"]["session_timeout"] = SESSION_TIMEOUT
    pvc["functions"]["enable_networking"] = True
    pvc["cluster"]["networks"] = {
        name: {
            "domain": f"{name}.pvc.local",
            "network": str(network.subnet(name)),
            "floating_ip": f"{network.host(name, FLOATING_HOST)}/24",
        }
        for name in NETWORKS
    }
    pvc["coordinator"] = {
        "dns": {"database": {"host": "localhost", "port": 5432, "name": "pvcdns", "user": "pvcdns", "pass": "unused"}}
    }
    pvc["system"]["configuration"]["networking"] = {
        "cluster": {"device": "eth0", "mtu": NODE_MTU, "address": "by-id"},
        "upstream": {"device": "eth1", "mtu": NODE_MTU, "address": None},
        "storage": {
            "device": "eth2",
            "mtu": NODE_MTU,
            "address": f"{network.host('storage', STORAGE_HOST_BASE + index)}/24",
        },
    }
    pvc["system"]["fencing"]["ipmi"]["host"] = network.root_address
    pvc["system"]["hypervisor"] = {"libvirt_uri": "qemu:///system", "shutdown_timeout": SHUTDOWN_TIMEOUT}
    return document


def plan_node(spec: HostSpec) -> dict[str, Any]:
    """Names for everything `build_node` will create, for the cluster record before anything exists."""
    return {**spec.host().record(), "veths": [f"pq{secrets.token_hex(4)}" for _ in NETWORKS[1:]]}


def build_node(spec: HostSpec, network: Network, record: dict[str, Any]) -> None:
    """Create the host (off) with its cluster link, then its upstream and storage links."""
    host = spec.host(veth=record["veth"])
    host.create()
    for number, (name, veth) in enumerate(zip(NETWORKS[1:], record["veths"], strict=True), start=1):
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", f"eth{number}", "netns", host.netns)
        sh("ip", "link", "set", veth, "master", network.bridge(name), "up")
        sh("ip", "-n", host.netns, "link", "set", f"eth{number}", "up")


def remove_node(record: dict[str, Any]) -> None:
    """Remove a node's host, links and directories; idempotent, needs no live object."""
    qemu_host.cleanup(record["netns"], record["veth"], record["root"])
    for veth in record.get("veths", []):
        subprocess.run(["ip", "link", "del", veth], capture_output=True)


def capabilities_cache(workdir: Path) -> Path:
    return workdir / "qemu-capabilities"


def host_spec(
    workdir: Path, paths: layout.NodePaths, network: Network, address: str, peers: dict[str, str]
) -> HostSpec:
    return HostSpec(
        name=paths.name,
        root=str(paths.directory / "host"),
        netns_prefix=network.netns_prefix,
        bridge=network.bridge("cluster"),
        address=address,
        peers=peers,
        capabilities_cache=str(capabilities_cache(workdir)),
    )
