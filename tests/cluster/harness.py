"""The whole-cluster harness: a real local cluster (`pvc-devcluster up`) driven as an operator would.

`Cluster` wraps one cluster: the `pvc` and `pvc-devcluster` commands (`pvc`
and the journal check run in this process: the same code, without an
interpreter start per poll), and the ground truth of what ran where, from the
chassis journals through the checker of `pvc-devcluster check` (each domain
start and stop on each host, on the machine's one monotonic clock). The `make_cluster` fixture (conftest.py)
checks every cluster it started when the test ends.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import libvirt
from kazoo.client import KazooClient

import cli.main as cli_main
from helpers import bin_path, wait_for
from pvcd.devcluster import check as devcluster_check
from pvcd.devcluster import cluster as devcluster
from pvcd.zk.security import Credentials

INTERVAL = 1
WINDOW = 3
CLIENT_VARIABLES = (
    "PVC_ZOOKEEPER",
    "PVC_ZOOKEEPER_CREDENTIALS",
    "PVC_ZOOKEEPER_AUTH",
    "PVC_ZOOKEEPER_CA",
    "PVC_ZOOKEEPER_CERT",
    "PVC_ZOOKEEPER_KEY",
)
"""What points `pvc` at a ZooKeeper; the suite's own values must not leak into a cluster's."""
CLI_LOCK = threading.Lock()
"""The in-process `pvc` swaps this process's environment and standard streams: one call at a time."""


def domain_xml(name: str, memory_mib: int = 128) -> str:
    """A small VM: a chassis host (libvirt's shared test host) has 3 GiB and 16 CPUs."""
    return (
        f"<domain type='test'><name>{name}</name><memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>"
        "<os><type>hvm</type></os></domain>"
    )


def client_environment(record: dict[str, Any]) -> dict[str, str]:
    """What `pvc` needs in its environment to reach the cluster of `record` (cluster.json) as its operator."""
    env = {"PVC_ZOOKEEPER": record["zookeeper"]}
    if record.get("zookeeper_credentials"):
        env["PVC_ZOOKEEPER_CREDENTIALS"] = record["zookeeper_credentials"]
    tls = record.get("zookeeper_tls")
    if tls:
        env.update(
            PVC_ZOOKEEPER_CA=tls["ca_file"], PVC_ZOOKEEPER_CERT=tls["cert_file"], PVC_ZOOKEEPER_KEY=tls["key_file"]
        )
    return env


@contextmanager
def operator_environment(record: dict[str, Any]) -> Iterator[None]:
    """`client_environment` in this process's environment for the duration (the suite's own
    ZooKeeper variables are put back after)."""
    wanted = client_environment(record)
    saved = {key: os.environ.get(key) for key in (*wanted, *CLIENT_VARIABLES)}
    for key in CLIENT_VARIABLES:
        os.environ.pop(key, None)
    os.environ.update(wanted)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class Cluster:
    def __init__(self, workdir: Path, record: dict[str, Any]) -> None:
        self.workdir = workdir
        self.record = record
        self.stopped = False

    def kazoo(self, role: str | None = "coordinator") -> KazooClient:
        """A raw kazoo client (not started) of the cluster's ZooKeeper, over TLS and authenticated as
        `role` (the coordinators': it may read everything, BMC credentials included; None: no credentials)."""
        tls = self.record.get("zookeeper_tls")
        if tls is None:
            return KazooClient(hosts=self.record["zookeeper"])
        auth = None
        if role is not None:
            auth = [("digest", Credentials.from_file(Path(self.record["zookeeper_dir"]) / "credentials" / role).auth)]
        return KazooClient(
            hosts=self.record["zookeeper"],
            auth_data=auth,
            use_ssl=True,
            ca=tls["ca_file"],
            certfile=tls["cert_file"],
            keyfile=tls["key_file"],
        )

    # -- tools -----------------------------------------------------------------

    def pvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """`pvc ARGS` as the cluster's operator, run in this process: the same code and output as
        the command (`cli.main.main`, which `pvc` calls), without an interpreter start per call; the
        tests poll with it, and a process each time would take a core from the cluster under test."""
        out, err = io.StringIO(), io.StringIO()
        with CLI_LOCK, operator_environment(self.record), redirect_stdout(out), redirect_stderr(err):
            code = cli_main.main(list(args))
        result = subprocess.CompletedProcess(["pvc", *args], code, out.getvalue(), err.getvalue())
        if check:
            assert result.returncode == 0, f"pvc {' '.join(args)}: {result.stderr}"
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.pvc(*args, "--format", "json").stdout)

    def devcluster(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [bin_path("pvc-devcluster"), *args, "--workdir", str(self.workdir)],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def down(self) -> subprocess.CompletedProcess[str]:
        self.stopped = True
        return self.devcluster("down", timeout=120)

    def fault(self, node: str, kind: str) -> None:
        self.faults([node], kind)

    def faults(self, nodes: list[str], kind: str) -> None:
        """The same fault on several nodes at the same moment, as one network or power event would."""
        result = subprocess.run(
            [bin_path("pvc-devcluster"), "fault", "--workdir", str(self.workdir), ",".join(nodes), kind],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr

    # -- what the cluster says ---------------------------------------------------

    def nodes(self) -> dict[str, dict]:
        return {n["name"]: n for n in self.json("node", "list")}

    def vms(self) -> dict[str, dict]:
        return {v["name"]: v for v in self.json("vm", "list")}

    def primary(self) -> str:
        return wait_for(
            lambda: next((n for n, v in self.nodes().items() if v["coordinator_state"] == "primary"), None),
            30,
            what="a primary coordinator",
        )

    def wait_keepalives(self, node: str, count: int, timeout: float | None = None) -> None:
        """Wait until `node` has sent `count` more keepalives: its loops have run that many rounds since."""
        start = self.nodes()[node]["keepalive"]["counter"] or 0
        wait_for(
            lambda: (self.nodes()[node]["keepalive"]["counter"] or 0) >= start + count,
            timeout or (count + 10) * INTERVAL,
            what=f"{count} more keepalives of {node}",
        )

    def log(self, node: str) -> str:
        return Path(self.node_record(node)["log"]).read_text()

    def node_record(self, node: str) -> dict[str, Any]:
        return next(n for n in self.record["nodes"] if n["name"] == node)

    def chassis(self, node: str) -> dict[str, Any]:
        return json.loads((Path(self.node_record(node)["directory"]) / "chassis.json").read_text())

    # -- ground truth --------------------------------------------------------------

    def check(self) -> dict[str, Any]:
        """The journal checker's report (what `pvc-devcluster check --format json` prints), made in
        this process for the same reason as `pvc`."""
        return devcluster_check.check(devcluster.load(self.workdir.resolve()))

    def assert_clean(self, everything_runs: bool = True) -> dict[str, Any]:
        """No VM ever ran on two hosts; with `everything_runs`, each VM to start runs on exactly one host now."""
        report = self.check()
        assert report["overlaps"] == [], f"VMs ran on two hosts at once: {report['overlaps']}"
        if everything_runs:
            assert report["not_running_once"] == [], f"VMs not running once: {report['not_running_once']}"
        return report

    def running_where(self) -> dict[str, list[str]]:
        """VM -> the hosts it runs on now, from the journals."""
        return self.check()["running"]

    def journal(self, node: str) -> list[dict[str, Any]]:
        text = Path(self.node_record(node)["journal"]).read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def domains(self, node: str) -> list[str]:
        """The domains the node's libvirtd runs, asked directly on its socket."""
        conn = libvirt.open(self.node_record(node)["libvirt_uri"])
        try:
            return sorted(d.name() for d in conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE))
        finally:
            conn.close()

    # -- VMs -------------------------------------------------------------------------

    def define_vms(self, node: str, count: int, prefix: str) -> list[str]:
        names = []
        for i in range(count):
            name = f"{prefix}{i}"
            xml = self.workdir / f"{name}.xml"
            xml.write_text(domain_xml(name))
            self.pvc("vm", "define", str(xml), "--node", node)
            self.pvc("vm", "start", name)
            names.append(name)
        wait_for(
            lambda: all(self.running_where().get(vm) == [node] for vm in names), 30, what=f"{names} running on {node}"
        )
        return names
