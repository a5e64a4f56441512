"""The local cluster's files: per-node configuration and simulated hosts (pure).

Each node gets its own directory under the work directory holding its pvcd.yaml,
its libvirt `test:///` host file, its dynamic directory and its log. Nothing
here starts a process, so the layout is testable and reusable by the fencing
work (BMC simulators get their ports recorded next to the nodes').
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAX_COORDINATORS = 3
HOST_MEMORY_MIB = 16384
HOST_CPUS = 16
CLUSTER_FILE = "cluster.json"
IPMI_USER = "admin"
IPMI_DEFAULT_PORT = 623


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


def node_names(count: int) -> list[str]:
    """hv1, hv2, ...: the trailing number lets `by-id` addressing work as on real clusters."""
    return [f"hv{i}" for i in range(1, count + 1)]


def node_paths(workdir: Path, name: str) -> NodePaths:
    return NodePaths(name, workdir / "nodes" / name)


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
) -> dict[str, Any]:
    """The pvcd.yaml document of one local node.

    The first three nodes are coordinators; every coordinator entry points at
    `zookeeper_port` on 127.0.0.1 — the node's own link (its chassis' relay) to
    the one local ZooKeeper — which the mapping form of a coordinator entry
    allows. Networking is off: the local cluster runs in the host's network
    namespace. The BMC is the node's chassis simulator at `bmc_port`.
    """
    coordinators = [
        {"name": coordinator, "host": "127.0.0.1", "port": zookeeper_port}
        for coordinator in names[:MAX_COORDINATORS]
    ]
    return {
        "pvc": {
            "node": name,
            "functions": {
                "enable_hypervisor": True,
                "enable_networking": False,
                "enable_storage": False,
                "enable_api": False,
            },
            "cluster": {"coordinators": coordinators, "zookeeper": {"session_timeout": timing.session_timeout}},
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
                "hypervisor": {"libvirt_uri": f"test://{paths.host_xml}"},
            },
        }
    }
