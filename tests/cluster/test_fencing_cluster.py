"""Fencing in a whole local cluster: real ZooKeeper, real IPMI over UDP, real processes.

Keepalive 1 s, 3 missed keepalives make a node dead. Faults are injected with
`pvc-devcluster fault`; a sampler checks throughout that no VM ever runs on two
nodes (each node's running domains, from its keepalive).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from helpers import bin_path, wait_for

INTERVAL = 1
WINDOW = 3


class Cluster:
    def __init__(self, workdir: Path, record: dict[str, Any]) -> None:
        self.workdir = workdir
        self.record = record
        self.env = dict(os.environ, PVC_ZOOKEEPER=record["zookeeper"])
        self.violations: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)

    def pvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([bin_path("pvc"), *args], capture_output=True, text=True, timeout=60, env=self.env)
        if check:
            assert result.returncode == 0, f"pvc {' '.join(args)}: {result.stderr}"
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.pvc(*args, "--format", "json").stdout)

    def fault(self, node: str, kind: str) -> None:
        self.faults([node], kind)

    def faults(self, nodes: list[str], kind: str) -> None:
        """The same fault on several nodes at the same moment, as one network or power event would."""
        result = subprocess.run([bin_path("pvc-devcluster"), "fault", "--workdir", str(self.workdir), ",".join(nodes), kind],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr

    def nodes(self) -> dict[str, dict]:
        return {n["name"]: n for n in self.json("node", "list")}

    def vms(self) -> dict[str, dict]:
        return {v["name"]: v for v in self.json("vm", "list")}

    def primary(self) -> str:
        return wait_for(lambda: next((n for n, v in self.nodes().items() if v["coordinator_state"] == "primary"), None),
                        30, what="a primary coordinator")

    def define_vms(self, node: str, count: int, prefix: str) -> list[str]:
        names = []
        for i in range(count):
            name = f"{prefix}{i}"
            xml = self.workdir / f"{name}.xml"
            xml.write_text(f"<domain type='test'><name>{name}</name><memory unit='MiB'>256</memory>"
                           "<vcpu>1</vcpu><os><type>hvm</type></os></domain>")
            self.pvc("vm", "define", str(xml), "--node", node)
            self.pvc("vm", "start", name)
            names.append(name)
        wait_for(lambda: set(names) <= set(self.nodes()[node]["running_vms"]), 30, what=f"{names} running on {node}")
        return names

    def running_where(self) -> dict[str, list[str]]:
        where: dict[str, list[str]] = {}
        for name, node in self.nodes().items():
            if node["keepalive"]["late"]:
                continue
            for vm in node["running_vms"]:
                where.setdefault(vm, []).append(name)
        return where

    def _sample(self) -> None:
        while not self._stop.wait(0.3):
            try:
                where = self.running_where()
            except (AssertionError, ValueError, subprocess.TimeoutExpired):
                continue
            self.samples += 1
            self.violations += [f"{vm} on {hosts}" for vm, hosts in where.items() if len(hosts) > 1]

    def start_sampler(self) -> None:
        self._sampler.start()

    def stop_sampler(self) -> None:
        self._stop.set()
        self._sampler.join(5)

    def log(self, node: str) -> str:
        return Path(next(n["log"] for n in self.record["nodes"] if n["name"] == node)).read_text()


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Any]:
    started: list[Cluster] = []

    def make(nodes: int = 3, *extra: str) -> Cluster:
        workdir = tmp_path / f"cluster{len(started)}"
        result = subprocess.run(
            [bin_path("pvc-devcluster"), "up", "--nodes", str(nodes), "--workdir", str(workdir),
             "--keepalive-interval", str(INTERVAL), "--fence-intervals", str(WINDOW), "--detach", *extra],
            capture_output=True, text=True, timeout=120,
        )
        assert result.returncode == 0, result.stderr
        cluster = Cluster(workdir, json.loads((workdir / "cluster.json").read_text()))
        started.append(cluster)
        cluster.primary()
        cluster.start_sampler()
        return cluster

    yield make
    for cluster in started:
        cluster.stop_sampler()
        subprocess.run([bin_path("pvc-devcluster"), "down", "--workdir", str(cluster.workdir)],
                       capture_output=True, timeout=120)
        assert cluster.violations == [], f"VMs ran on two nodes at once: {cluster.violations}"


def recovered(cluster: Cluster, vms: list[str], dead: str) -> bool:
    where = cluster.running_where()
    return all(vm in where and dead not in where[vm] for vm in vms)


def fence_of(cluster: Cluster, node: str) -> dict:
    return cluster.json("node", "info", node)["fence"]


def wait_for_outcome(cluster: Cluster, node: str, outcome: str, timeout: float) -> dict:
    return wait_for(lambda: (lambda f: f if f["outcome"] == outcome else None)(fence_of(cluster, node)),
                    timeout, what=f"a {outcome} fence of {node}")


def a_secondary(cluster: Cluster) -> str:
    primary = cluster.primary()
    return next(name for name in sorted(cluster.nodes()) if name != primary)


def test_crash_is_fenced_and_its_vms_recovered(make_cluster):
    cluster = make_cluster(3)
    victim = a_secondary(cluster)
    vms = cluster.define_vms(victim, 6, "crash")
    cluster.fault(victim, "crash")
    wait_for(lambda: recovered(cluster, vms, victim), 30, what="the crashed node's VMs running elsewhere")
    fence = fence_of(cluster, victim)
    assert fence["outcome"] == "confirmed" and fence["recovered"] is True
    assert sorted(fence["recovered_vms"]) == vms
    assert set(fence["recovered_vms"].values()) == set(cluster.nodes()) - {victim}, "the batch did not spread"
    info = cluster.vms()
    assert all(info[vm]["lastnode"] == victim for vm in vms)
    # The node was powered on again and came back fenced: it takes no VMs.
    node = wait_for(lambda: (lambda n: n if n["daemon_state"] == "run" and not n["keepalive"]["late"] else None)(
        cluster.nodes()[victim]), 30, what="the fenced node to come back")
    assert node["domain_state"] == "fenced" and node["running_vms"] == []
    assert cluster.samples > 10
    # The BMC passwords the fencer used appear in no log and no output.
    outputs = [cluster.log(name) for name in cluster.nodes()] + [
        cluster.pvc("node", "info", name, "--format", "json").stdout for name in cluster.nodes()
    ] + [cluster.pvc("node", "list").stdout, cluster.pvc("cluster", "status", "--format", "json").stdout]
    for name in cluster.nodes():
        password = yaml.safe_load(Path(next(n["config"] for n in cluster.record["nodes"] if n["name"] == name))
                                  .read_text())["pvc"]["system"]["fencing"]["ipmi"]["pass"]
        assert not any(password in text for text in outputs), f"the BMC password of {name} leaked"


def test_primary_crash_new_primary_fences_it(make_cluster):
    cluster = make_cluster(3)
    old = cluster.primary()
    vms = cluster.define_vms(old, 3, "prim")
    cluster.fault(old, "crash")
    new = wait_for(lambda: next((n for n, v in cluster.nodes().items()
                                 if v["coordinator_state"] == "primary" and n != old), None),
                   30, what="a new primary")
    wait_for(lambda: recovered(cluster, vms, old), 40, what="the old primary's VMs running elsewhere")
    fence = fence_of(cluster, old)
    assert fence["outcome"] == "confirmed" and fence["by"] == new


def test_hung_node_is_powered_off_and_never_runs_its_old_vms(make_cluster):
    cluster = make_cluster(3)
    victim = a_secondary(cluster)
    vms = cluster.define_vms(victim, 3, "hang")
    cluster.fault(victim, "hang")
    wait_for(lambda: recovered(cluster, vms, victim), 30, what="the hung node's VMs running elsewhere")
    assert fence_of(cluster, victim)["outcome"] == "confirmed"
    wait_for(lambda: not cluster.nodes()[victim]["keepalive"]["late"], 30, what="the node powered on again")
    for _ in range(5):
        node = cluster.nodes()[victim]
        assert node["domain_state"] == "fenced" and node["running_vms"] == []
        time.sleep(INTERVAL)


def test_unreachable_bmc_is_a_failed_fence_and_vms_stay(make_cluster):
    cluster = make_cluster(3)
    victim = a_secondary(cluster)
    vms = cluster.define_vms(victim, 2, "bmc")
    cluster.fault(victim, "bmc-down")
    cluster.fault(victim, "crash")
    fence = wait_for_outcome(cluster, victim, "failed", 60)
    assert fence["recovered"] is False and fence["recovery"] == "none"
    assert cluster.nodes()[victim]["domain_state"] == "fence-failed"
    for _ in range(4):
        where = cluster.running_where()
        assert not any(vm in where for vm in vms), f"VMs of a node not known off were started: {where}"
        time.sleep(INTERVAL)
    assert all(v["node"] == victim for name, v in cluster.vms().items() if name in vms)


def test_cut_node_destroys_its_vms_and_they_are_recovered_once(make_cluster):
    cluster = make_cluster(3, "--suicide-intervals", "2", "--failed-fence", "migrate")
    victim = a_secondary(cluster)
    vms = cluster.define_vms(victim, 3, "cut")
    cluster.fault(victim, "bmc-down")
    cluster.fault(victim, "cut")
    wait_for(lambda: "Self-fencing node" in cluster.log(victim), 20, what="the cut node to self-fence")
    assert "destroyed VMs: " + ", ".join(sorted(vms)) in cluster.log(victim)
    wait_for(lambda: recovered(cluster, vms, victim), 60, what="the VMs recovered after the self-fence window")
    fence = fence_of(cluster, victim)
    assert fence["outcome"] == "failed" and fence["recovered"] is True
    cluster.fault(victim, "heal")
    wait_for(lambda: not cluster.nodes()[victim]["keepalive"]["late"], 30, what="the node reachable again")
    for _ in range(4):
        node = cluster.nodes()[victim]
        assert node["running_vms"] == [] and node["domain_state"] in ("fenced", "fence-failed")
        where = cluster.running_where()
        assert all(len(where.get(vm, [])) == 1 for vm in vms)
        time.sleep(INTERVAL)


def test_two_of_five_are_fenced_one_after_the_other(make_cluster):
    cluster = make_cluster(5)
    primary = cluster.primary()
    victims = [name for name in sorted(cluster.nodes()) if name != primary][:2]
    cluster.faults(victims, "crash")
    fences = wait_for(lambda: (lambda fs: fs if all(f["outcome"] == "confirmed" for f in fs) else None)(
        [fence_of(cluster, v) for v in victims]), 60, what="both nodes fenced")
    first, second = sorted(fences, key=lambda f: f["started_ms"])
    assert second["started_ms"] >= first["finished_ms"], "two fences overlapped"


def test_three_of_five_trip_the_storm_guard(make_cluster):
    cluster = make_cluster(5)
    primary = cluster.primary()
    victims = [name for name in sorted(cluster.nodes()) if name != primary][:3]
    cluster.faults(victims, "crash")
    status = wait_for(lambda: (lambda s: s if s["faults"].get("storm") else None)(cluster.json("cluster", "status")),
                      30, what="the storm guard")
    assert sorted(status["faults"]["storm"]["dead"]) == victims
    time.sleep(2 * INTERVAL)
    assert all(fence_of(cluster, v)["outcome"] is None for v in victims), "a node was fenced during a storm"
    assert "FAULT storm" in cluster.pvc("cluster", "status").stdout


def test_maintenance_mode_prevents_fencing(make_cluster):
    cluster = make_cluster(3)
    victim = a_secondary(cluster)
    cluster.pvc("cluster", "maintenance", "on")
    cluster.fault(victim, "crash")
    time.sleep((WINDOW + 3) * INTERVAL)
    assert fence_of(cluster, victim)["outcome"] is None
    assert cluster.json("cluster", "status")["maintenance"] is True
    cluster.pvc("cluster", "maintenance", "off")
    wait_for_outcome(cluster, victim, "confirmed", 30)


def test_ambiguous_fence_waits_for_the_operator(make_cluster):
    cluster = make_cluster(3)
    victim = a_secondary(cluster)
    vms = cluster.define_vms(victim, 2, "amb")
    cluster.fault(victim, "bmc-flaky")
    cluster.fault(victim, "crash")
    fence = wait_for_outcome(cluster, victim, "ambiguous", 60)
    assert fence["recovery"] == "wait-operator" and fence["recovered"] is False
    assert cluster.nodes()[victim]["domain_state"] == "fence-ambiguous"
    time.sleep(3 * INTERVAL)
    assert not any(vm in cluster.running_where() for vm in vms), "VMs restarted without the operator"
    refused = cluster.pvc("node", "confirm-fenced", a_secondary_other_than(cluster, victim), check=False)
    assert refused.returncode == 1 and refused.stderr.startswith("pvc: node ") and "no ambiguous or failed fence" in refused.stderr
    cluster.pvc("node", "confirm-fenced", victim)
    wait_for(lambda: recovered(cluster, vms, victim), 30, what="recovery after the operator's confirmation")
    assert fence_of(cluster, victim)["confirmed_by_operator"] is True


def a_secondary_other_than(cluster: Cluster, node: str) -> str:
    primary = cluster.primary()
    return next(name for name in sorted(cluster.nodes()) if name not in (primary, node))
