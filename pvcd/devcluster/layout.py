"""The local cluster's files: per-node configuration and simulated hosts (pure).

Each node gets its own directory under the work directory holding its pvcd.yaml,
its dynamic directory, its log and what its chassis (`chassis.py`) keeps there:
the libvirtd of the simulated host (its socket and private configuration), the
watchdog device and the journal. Nothing here starts a process, so the layout is
testable and reusable by tests that run `pvcd` without a chassis (they give it
an in-process libvirt `test:///` host file instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

MAX_COORDINATORS = 3
HOST_MEMORY_MIB = 16384
HOST_CPUS = 16
CLUSTER_FILE = "cluster.json"
IPMI_USER = "admin"
IPMI_DEFAULT_PORT = 623
WATCHDOG_INTERVALS = 3
"""Default watchdog timeout in keepalive intervals: the fence window of the default 3 intervals."""
UNIX_PATH_MAX = 107
"""Longest path a UNIX socket can bind or connect to (sun_path less its NUL)."""


@dataclass(frozen=True)
class Timing:
    """The cluster-wide settings a local cluster is started with."""

    keepalive_interval: int = 1
    fence_intervals: int = 3
    suicide_intervals: int = 0
    successful_fence: str = "migrate"
    failed_fence: str = "None"
    # Short, so a crashed primary is replaced quickly; ZooKeeper's tick (0.5 s)
    # allows 1-10 s.
    session_timeout: float = 4.0
    # The chassis' watchdog device: off (no device in the configuration) or on
    # with `watchdog_timeout` seconds, WATCHDOG_INTERVALS keepalive intervals when None.
    watchdog: bool = True
    watchdog_timeout: int | None = None
    # A Ceph cluster the nodes use (storage on, with storage fencing): its ceph.conf and keyring.
    ceph_conf: str | None = None
    ceph_keyring: str | None = None

    @property
    def watchdog_seconds(self) -> int | None:
        """The watchdog timeout the nodes get, None without a watchdog."""
        if not self.watchdog:
            return None
        return self.watchdog_timeout or WATCHDOG_INTERVALS * self.keepalive_interval


@dataclass(frozen=True)
class NodePaths:
    name: str
    directory: Path

    @property
    def config(self) -> Path:
        return self.directory / "pvcd.yaml"

    @property
    def host_xml(self) -> Path:
        return self.directory / "host.xml"

    @property
    def log(self) -> Path:
        return self.directory / "pvcd.log"

    @property
    def dynamic(self) -> Path:
        return self.directory / "run"

    @property
    def console_logs(self) -> Path:
        return self.directory / "console"

    @property
    def libvirt_socket(self) -> Path:
        """The chassis' libvirtd listens here (its `unix_sock_dir` is the node directory)."""
        return self.directory / "libvirt-sock"

    @property
    def libvirt_root(self) -> Path:
        """The libvirtd's private /etc/libvirt, /run/libvirt, /var/lib/libvirt... (see libvirt_host.py)."""
        return self.directory / "libvirt"

    @property
    def watchdog(self) -> Path:
        """The chassis' watchdog device, a FIFO (see watchdog.py)."""
        return self.directory / "watchdog"

    @property
    def journal(self) -> Path:
        """The chassis' record of every domain start and stop on the host (see journal.py)."""
        return self.directory / "journal.jsonl"

    @property
    def chassis_log(self) -> Path:
        return self.directory / "chassis.log"

    def socket_problem(self) -> str | None:
        """Why the node's UNIX sockets cannot live in its directory, or None.

        libvirtd binds `libvirt-admin-sock` there too, the longest of the names.
        """
        longest = self.directory / "libvirt-admin-sock"
        length = len(str(longest).encode())
        if length > UNIX_PATH_MAX:
            return (
                f"the node directory {self.directory} is too long for UNIX sockets "
                f"({length} > {UNIX_PATH_MAX} bytes for {longest.name}); use a shorter --workdir"
            )
        return None


def node_names(count: int) -> list[str]:
    """hv1, hv2, ...: the trailing number lets `by-id` addressing work as on real clusters."""
    return [f"hv{i}" for i in range(1, count + 1)]


def node_role(name: str, names: list[str]) -> str:
    """The ZooKeeper identity node `name` authenticates as: the first three nodes are the
    coordinators (they fence, so they may read BMC credentials), the others plain nodes."""
    return "coordinator" if name in names[:MAX_COORDINATORS] else "node"


def node_paths(workdir: Path, name: str) -> NodePaths:
    return NodePaths(name, workdir / "nodes" / name)


def chassis_libvirt_uri(paths: NodePaths) -> str:
    """The URI of the chassis' libvirtd: libvirt's test driver served by a daemon, as qemu:///system is.

    `default` and not a host file: libvirt's test driver gives every connection
    to a host *file* a private host of its own, so the chassis (which journals
    the domains) and pvcd would not see the same VMs, and the VMs would die with
    pvcd's connection. The `default` host is shared by all connections to one
    libvirtd and lives while any connection is open; the chassis keeps one open
    for as long as the host is powered on. It has 16 CPUs and 3 GiB of memory.
    """
    return f"test+unix:///default?socket={quote(str(paths.libvirt_socket), safe='/')}"


def host_xml(memory_mib: int = HOST_MEMORY_MIB, cpus: int = HOST_CPUS) -> str:
    """A libvirt test-driver host with no VMs, its own memory and CPUs."""
    return (
        "<node>\n"
        f"  <cpu><mhz>2000</mhz><model>x86_64</model><active>{cpus}</active><max>{cpus}</max>"
        f"<total>{cpus}</total><nodes>1</nodes><sockets>1</sockets><cores>{cpus}</cores><threads>1</threads></cpu>\n"
        f"  <memory>{memory_mib * 1024}</memory>\n"
        "</node>\n"
    )


def node_config(
    name: str,
    paths: NodePaths,
    names: list[str],
    zookeeper_port: int,
    timing: Timing = Timing(),
    bmc_port: int = IPMI_DEFAULT_PORT,
    in_chassis: bool = False,
    zookeeper_keys: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The pvcd.yaml document of one local node.

    `in_chassis`: the node runs in a chassis (`pvc-devcluster`), so its
    hypervisor is the chassis' libvirtd and, unless `timing` turns it off, it
    gets the chassis' watchdog device. Without a chassis (tests that run pvcd
    alone) the node opens its own in-process test-driver host from `host.xml`
    and has no watchdog.

    The first three nodes are coordinators; every coordinator entry points at
    `zookeeper_port` on 127.0.0.1 — the node's own link (its chassis' relay) to
    the one local ZooKeeper — which the mapping form of a coordinator entry
    allows. Networking is off: the local cluster runs in the host's network
    namespace. The BMC is the node's chassis simulator at `bmc_port`.

    `zookeeper_keys`: more `pvc.cluster.zookeeper` keys, those of a secure ZooKeeper
    (`ZooKeeperServer.config_keys(node_role(name, names))`: credentials, ACL identities, TLS).
    """
    coordinators = [
        {"name": coordinator, "host": "127.0.0.1", "port": zookeeper_port} for coordinator in names[:MAX_COORDINATORS]
    ]
    document: dict[str, Any] = {
        "pvc": {
            "node": name,
            "functions": {
                "enable_hypervisor": True,
                "enable_networking": False,
                "enable_storage": False,
                "enable_api": False,
            },
            "cluster": {
                "coordinators": coordinators,
                "zookeeper": {"session_timeout": timing.session_timeout, **(zookeeper_keys or {})},
            },
            "system": {
                "fencing": {
                    "intervals": {
                        "keepalive_interval": timing.keepalive_interval,
                        "fence_intervals": timing.fence_intervals,
                        "suicide_intervals": timing.suicide_intervals,
                    },
                    "actions": {"successful_fence": timing.successful_fence, "failed_fence": timing.failed_fence},
                    "ipmi": {"host": "127.0.0.1", "port": bmc_port, "user": IPMI_USER, "pass": f"{name}-bmc"},
                },
                "migration": {"target_selector": "mem"},
                "configuration": {
                    "directories": {
                        "dynamic_directory": str(paths.dynamic),
                        "log_directory": str(paths.directory),
                        "console_log_directory": str(paths.console_logs),
                    },
                    "logging": {
                        "file_logging": False,
                        "stdout_logging": True,
                        "log_colours": False,
                        "log_dates": True,
                        "log_keepalives": True,
                        "log_keepalive_cluster_details": True,
                        "log_keepalive_storage_details": False,
                        "console_log_lines": 1000,
                    },
                },
                "hypervisor": {"libvirt_uri": chassis_libvirt_uri(paths) if in_chassis else f"test://{paths.host_xml}"},
            },
        }
    }
    if timing.ceph_conf is not None and timing.ceph_keyring is not None:
        document["pvc"]["functions"]["enable_storage"] = True
        document["pvc"]["system"]["configuration"]["logging"]["log_keepalive_storage_details"] = True
        document["pvc"]["system"]["storage"] = {
            "ceph_config_file": timing.ceph_conf,
            "ceph_keyring": timing.ceph_keyring,
            "ceph_client_id": "admin",
        }
    watchdog = timing.watchdog_seconds
    if in_chassis and watchdog is not None:
        document["pvc"]["system"]["fencing"]["watchdog"] = {"device": str(paths.watchdog), "timeout": watchdog}
    return document
