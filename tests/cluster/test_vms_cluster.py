"""Whole cluster, VMs (issue 3): 30 VMs through start, flush, ready, migrate, unmigrate and move.

Only real processes, driven as an operator would: `pvc-devcluster up --detach`
(real ZooKeeper, one `pvcd` per node, each with its own libvirt `test:///`
host) and the `pvc` command line with `--format json`. libvirt's test driver
refuses migrations, so the nodes move VMs with `SimulatedMigration` (see
docs/vms.md): the source destroys the domain before it releases the VM and
the target starts it afresh; the handshake and the placement are the real ones.

A sampler thread runs `pvc node list` and `pvc vm list` throughout and checks
that no VM ever runs on two hosts (`TwoHostsCheck` below says how, and why a
VM named in two nodes' keepalives of one sample is not by itself a violation).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from helpers import bin_path, wait_for

INTERVAL = 1
NODES = ("hv1", "hv2", "hv3")
VM_COUNT = 30
VMS = [f"vm{i}" for i in range(1, VM_COUNT + 1)]
ACTIVE = ("starting", "running", "stopping", "migrating")
SETTLE_TIMEOUT = 60


def domain_xml(name: str) -> str:
    return (f"<domain type='test'><name>{name}</name><memory unit='MiB'>256</memory><vcpu>1</vcpu>"
            f"<os><type>hvm</type></os></domain>")


# -- the invariant: never one VM on two hosts (pure) --------------------------------------


@dataclass
class Keepalive:
    """One keepalive of one node, as seen by one or more samples.

    `lo`..`hi` bounds the moment ZooKeeper stored it, on this process' monotonic
    clock: a sample that ran from t0 to t1 and saw age A (rounded to 0.1 s) puts
    it in [t0 - A - 0.05, t1 - A + 0.05]; several samples of it narrow that.
    """

    node: str
    counter: int
    running: frozenset[str]
    stale: bool
    lo: float
    hi: float


@dataclass
class TwoHostsCheck:
    """Checks, from point samples, that no VM ran on two hosts at the same moment.

    A keepalive lists the domains its node ran when it collected them, up to a
    keepalive interval before anyone reads it. So one `pvc node list` sample may
    name a VM in two nodes' lists although it never ran on both: the source's
    keepalive from before it destroyed the VM, the target's from after it started
    it. That happens routinely during a flush (`same_sample` counts it; it is
    reported, not a failure). A violation needs evidence that overlaps in time:

    - node A's *consecutive* keepalives #i..#j (j > i) all list VM x. The test
      never moves a VM back to a node before it has seen that node's keepalive
      without it, so x stayed on A (and on no other node) from A's collection for
      #i to its collection for #j;
    - inside that window, node B's keepalive lists x (its collection moment lies
      within the window), or a `pvc vm list` says B holds x (status `starting`,
      `running`, `stopping` or `migrating` on B: only that node may run it).

    A keepalive's collection precedes its store by at most COLLECT_LAG (the
    collectors' budget is half an interval), or STALE_LAG when it or its
    predecessor reported stale domain figures (a late collector's result can be
    sent one round later). Double runs shorter than about two keepalive intervals
    cannot be told from keepalive lag by any sampler and are not claimed to be
    caught.
    """

    collect_lag: float = 0.75
    stale_lag: float = 2.5
    rounding: float = 0.05
    keepalives: dict[tuple[str, int], Keepalive] = field(default_factory=dict)
    statuses: list[tuple[str, str, float, float]] = field(default_factory=list)  # vm, node, t0, t1
    same_sample: list[tuple[float, str, list[tuple[str, int, float]]]] = field(default_factory=list)
    node_samples: int = 0
    vm_samples: int = 0
    windows_checked: int = 0

    def add_nodes(self, t0: float, t1: float, nodes: list[dict[str, Any]]) -> None:
        self.node_samples += 1
        where: dict[str, list[tuple[str, int, float]]] = {}
        for node in nodes:
            keepalive = node["keepalive"]
            counter, age = keepalive["counter"], keepalive["age_seconds"]
            if counter is None or age is None:
                continue
            lo, hi = t0 - age - self.rounding, t1 - age + self.rounding
            key = (node["name"], counter)
            known = self.keepalives.get(key)
            if known is None:
                self.keepalives[key] = Keepalive(node["name"], counter, frozenset(node["running_vms"]),
                                                 "domains" in keepalive["stale_figures"], lo, hi)
            else:
                known.lo, known.hi = max(known.lo, lo), min(known.hi, hi)
            for vm in node["running_vms"]:
                where.setdefault(vm, []).append((node["name"], counter, age))
        self.same_sample.extend((t1, vm, nodes_) for vm, nodes_ in sorted(where.items()) if len(nodes_) > 1)

    def add_vms(self, t0: float, t1: float, vms: list[dict[str, Any]]) -> None:
        self.vm_samples += 1
        for vm in vms:
            actual = vm["actual"]
            if actual["node"] is not None and actual["state"] in ACTIVE:
                self.statuses.append((vm["name"], actual["node"], t0, t1))

    def _lag(self, keepalive: Keepalive) -> float:
        before = self.keepalives.get((keepalive.node, keepalive.counter - 1))
        fresh = not keepalive.stale and before is not None and not before.stale
        return self.collect_lag if fresh else self.stale_lag

    def _windows(self) -> list[tuple[str, str, Keepalive, Keepalive, float, float]]:
        """(vm, node, first, last, start, end): the VM surely ran on the node, and nowhere else, in [start, end]."""
        windows = []
        by_node: dict[str, list[Keepalive]] = {}
        for keepalive in self.keepalives.values():
            by_node.setdefault(keepalive.node, []).append(keepalive)
        for node, keepalives in by_node.items():
            keepalives.sort(key=lambda k: k.counter)
            for vm in set().union(*(k.running for k in keepalives)):
                run: list[Keepalive] = []
                for keepalive in [*keepalives, None]:
                    if keepalive is not None and vm in keepalive.running and (
                            not run or keepalive.counter == run[-1].counter + 1):
                        run.append(keepalive)
                        continue
                    if len(run) > 1:
                        start, end = run[0].hi, run[-1].lo - self._lag(run[-1])
                        if end > start:
                            windows.append((vm, node, run[0], run[-1], start, end))
                    run = [keepalive] if keepalive is not None and vm in keepalive.running else []
        return windows

    def violations(self) -> list[str]:
        found = []
        windows = self._windows()
        self.windows_checked = len(windows)
        for vm, node, first, last, start, end in windows:
            for other in self.keepalives.values():
                if other.node != node and vm in other.running and start < other.lo - self._lag(other) and other.hi < end:
                    found.append(f"{vm} ran on {node} (keepalives #{first.counter}..#{last.counter}) and on "
                                 f"{other.node} (keepalive #{other.counter}) at once")
            for name, holder, t0, t1 in self.statuses:
                if name == vm and holder != node and start < t0 and t1 < end:
                    found.append(f"{vm} ran on {node} (keepalives #{first.counter}..#{last.counter}) while its "
                                 f"status said {holder} held it (read between {t0:.2f} and {t1:.2f})")
        return found


def _node(name: str, counter: int, age: float, running: list[str], stale: bool = False) -> dict[str, Any]:
    return {"name": name, "running_vms": running,
            "keepalive": {"counter": counter, "age_seconds": age, "stale_figures": ["domains"] if stale else []}}


def test_two_hosts_check_tells_keepalive_lag_from_a_double_run():
    """The checker itself, on made-up samples: lag is not a violation, overlapping evidence is."""
    lag = TwoHostsCheck()
    # hv1 sends keepalives at 10, 11, 12; hv2 at 10.5, 11.5, 12.5. vm1 leaves hv1 at 11.2 for hv2.
    for now in (10.6, 11.1, 11.6, 12.1, 12.6):
        nodes = []
        for name, phase, had, has in (("hv1", 0.0, True, False), ("hv2", 0.5, False, True)):
            sent = max(t for t in (10 + phase, 11 + phase, 12 + phase) if t <= now)
            counter = int(sent - phase) - 9
            on = has if sent > 11.2 else had
            nodes.append(_node(name, counter, round(now - sent, 1), ["vm1"] if on else []))
        lag.add_nodes(now - 0.05, now, nodes)
    lag.add_vms(11.25, 11.3, [{"name": "vm1", "actual": {"node": "hv2", "state": "starting"}}])
    assert lag.violations() == []
    assert lag.same_sample, "hv1's last keepalive before the move and hv2's first after it share a sample"

    double = TwoHostsCheck()
    # vm2 stays on hv1 (keepalives #1..#5 at 21..25) and hv2 runs it too (its keepalive #7 at 23): a double run.
    for counter in range(1, 6):
        double.add_nodes(19.95 + counter, 20.0 + counter, [_node("hv1", counter, 0.0, ["vm2"])])
    double.add_nodes(22.05, 22.1, [_node("hv2", 6, 0.1, [])])
    double.add_nodes(23.05, 23.1, [_node("hv2", 7, 0.1, ["vm2"])])
    assert len(double.violations()) == 1 and "vm2 ran on hv1" in double.violations()[0]

    status = TwoHostsCheck()
    for counter in range(1, 5):
        status.add_nodes(19.95 + counter, 20.0 + counter, [_node("hv1", counter, 0.0, ["vm3"])])
    status.add_vms(21.2, 21.5, [{"name": "vm3", "actual": {"node": "hv2", "state": "running"}}])
    assert len(status.violations()) == 1 and "status said hv2" in status.violations()[0]
    # A stale keepalive at the end of the window widens its lag: the same status no longer proves anything.
    stale = TwoHostsCheck()
    for counter in range(1, 4):
        stale.add_nodes(19.95 + counter, 20.0 + counter, [_node("hv1", counter, 0.0, ["vm3"], stale=counter == 3)])
    stale.add_vms(21.2, 21.5, [{"name": "vm3", "actual": {"node": "hv2", "state": "running"}}])
    assert stale.violations() == []


# -- driving the cluster --------------------------------------------------------------


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)


class Pvc:
    def __init__(self, zookeeper: str) -> None:
        self.zookeeper = zookeeper

    def __call__(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return run(bin_path("pvc"), "--zookeeper", self.zookeeper, *args, timeout=timeout)

    def json(self, *args: str, timeout: float = 90) -> Any:
        result = self(*args, "--format", "json", timeout=timeout)
        assert result.returncode == 0, f"pvc {' '.join(args)}: {result.stderr}"
        return json.loads(result.stdout)

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {n["name"]: n for n in self.json("node", "list")}

    def vms(self) -> dict[str, dict[str, Any]]:
        return {v["name"]: v for v in self.json("vm", "list")}


class Sampler(threading.Thread):
    """Samples what runs where, from the keepalives and the VM statuses, until stopped."""

    def __init__(self, pvc: Pvc) -> None:
        super().__init__(name="two-hosts-sampler", daemon=True)
        self.pvc = pvc
        self.check = TwoHostsCheck()
        self.failures: list[str] = []
        self.halt = threading.Event()

    def _sample(self, *args: str) -> tuple[float, float, Any] | None:
        t0 = time.monotonic()
        result = self.pvc(*args, "--format", "json", timeout=30)
        t1 = time.monotonic()
        if result.returncode != 0:
            self.failures.append(f"pvc {' '.join(args)}: {result.stderr.strip()}")
            return None
        return t0, t1, json.loads(result.stdout)

    def run(self) -> None:
        while not self.halt.is_set():
            if sample := self._sample("node", "list"):
                self.check.add_nodes(*sample)
            if sample := self._sample("vm", "list"):
                self.check.add_vms(*sample)

    def stop(self) -> TwoHostsCheck:
        self.halt.set()
        self.join(60)
        return self.check


@pytest.fixture
def cluster(tmp_path: Path):
    workdir = tmp_path / "cluster"
    result = run(bin_path("pvc-devcluster"), "up", "--nodes", str(len(NODES)), "--workdir", str(workdir),
                 "--keepalive-interval", str(INTERVAL), "--detach", timeout=120)
    assert result.returncode == 0, result.stderr
    yield Pvc(json.loads((workdir / "cluster.json").read_text())["zookeeper"])
    run(bin_path("pvc-devcluster"), "down", "--workdir", str(workdir), timeout=60)


def settled(pvc: Pvc) -> tuple[dict[str, dict], dict[str, dict]] | None:
    """VMs and nodes once every VM runs on its node, no move is open, and every keepalive agrees."""
    vms, nodes = pvc.vms(), pvc.nodes()
    for vm in vms.values():
        actual = vm["actual"]
        if (vm["state"], vm["migration"], actual["state"], actual["node"]) != ("start", None, "running", vm["node"]):
            return None
    for name, node in nodes.items():
        if sorted(node["running_vms"]) != sorted(v["name"] for v in vms.values() if v["node"] == name):
            return None
    return vms, nodes


def settle(pvc: Pvc, what: str) -> tuple[dict[str, dict], dict[str, dict]]:
    return wait_for(lambda: settled(pvc), SETTLE_TIMEOUT, interval=0.2, what=f"{what}: every VM running on its node")


def on(vms: dict[str, dict], node: str) -> list[str]:
    return sorted(name for name, vm in vms.items() if vm["node"] == node)


def test_thirty_vms_through_flush_ready_and_moves_never_run_twice(cluster, tmp_path: Path):
    pvc = cluster
    began = time.monotonic()
    sampler = Sampler(pvc)
    sampler.start()
    try:
        # Define 30 VMs, ten per node, and start them.
        xml_dir = tmp_path / "xml"
        xml_dir.mkdir()
        placement = {name: NODES[i % len(NODES)] for i, name in enumerate(VMS)}
        for name in VMS:
            (xml_dir / f"{name}.xml").write_text(domain_xml(name))
        with ThreadPoolExecutor(3) as pool:
            defined = list(pool.map(lambda n: pvc.json("vm", "define", str(xml_dir / f"{n}.xml"), "--node", placement[n]),
                                    VMS))
            for vm in defined:
                assert (vm["state"], vm["node"], vm["memory_mib"], vm["vcpus"], vm["actual"]["state"]) == (
                    "stop", placement[vm["name"]], 256, 1, "stopped")
            started = list(pool.map(lambda n: pvc.json("vm", "start", n), VMS))
            assert {vm["state"] for vm in started} == {"start"}
        vms, nodes = settle(pvc, "after start")
        assert {name: on(vms, name) for name in NODES} == {
            node: sorted(n for n, where in placement.items() if where == node) for node in NODES}
        assert all(nodes[n]["vms"] == 10 and nodes[n]["memory"]["allocated"] == 2560 for n in NODES)

        # Flush hv1: its VMs run elsewhere, spread by the mem selector over both other nodes.
        before = on(vms, "hv1")
        report = pvc.json("node", "flush", "hv1", "--wait", "--wait-timeout", "60")["report"]
        assert (report["kind"], report["phase"], report["left"]) == ("flush", "done", {})
        assert sorted(report["moved"]) == before
        vms, nodes = settle(pvc, "after the flush of hv1")
        assert (nodes["hv1"]["domain_state"], nodes["hv1"]["vms"], nodes["hv1"]["running_vms"]) == ("flushed", 0, [])
        landed = Counter(vms[name]["node"] for name in before)
        assert set(landed) <= {"hv2", "hv3"} and sum(landed.values()) == 10
        # hv2 and hv3 had the same free memory: the batch plan shares the ten out, it does not pile them on one.
        assert min(landed["hv2"], landed["hv3"]) >= 4, f"flushed VMs not spread: {dict(landed)}"
        assert all(vms[name]["lastnode"] == "hv1" for name in before)
        assert nodes["hv2"]["vms"] + nodes["hv3"]["vms"] == VM_COUNT

        # Ready hv1: the VMs whose lastnode is hv1 come back; the others stay where they are.
        others = {name: vms[name]["node"] for name in VMS if name not in before}
        report = pvc.json("node", "ready", "hv1", "--wait", "--wait-timeout", "60")["report"]
        assert (report["kind"], report["phase"], report["left"]) == ("ready", "done", {})
        assert sorted(report["moved"]) == before
        vms, nodes = settle(pvc, "after hv1 is ready")
        assert nodes["hv1"]["domain_state"] == "ready"
        assert on(vms, "hv1") == before and sorted(nodes["hv1"]["running_vms"]) == before
        assert all(vms[name]["lastnode"] is None for name in before)
        assert {name: vms[name]["node"] for name in others} == others

        # migrate: lastnode is recorded, and a second migrate is refused without --force.
        mover = before[0]
        vm = pvc.json("vm", "migrate", mover, "--wait", "--wait-timeout", "30")
        first_target = vm["node"]
        assert first_target != "hv1" and vm["lastnode"] == "hv1"
        assert vm["actual"]["node"] == first_target and vm["actual"]["state"] == "running"
        settle(pvc, f"after migrating {mover}")
        again = pvc("vm", "migrate", mover)
        assert again.returncode == 1 and again.stderr.startswith("pvc: ") and "already migrated" in again.stderr
        assert pvc.json("vm", "info", mover)["node"] == first_target
        third = next(n for n in NODES if n not in ("hv1", first_target))
        vm = pvc.json("vm", "migrate", mover, "--force", "--target", third, "--wait", "--wait-timeout", "30")
        assert (vm["node"], vm["lastnode"]) == (third, "hv1")
        settle(pvc, f"after migrating {mover} again with --force")

        # unmigrate: back to lastnode, which is cleared.
        vm = pvc.json("vm", "unmigrate", mover, "--wait", "--wait-timeout", "30")
        assert (vm["node"], vm["lastnode"], vm["actual"]["node"]) == ("hv1", None, "hv1")
        settle(pvc, f"after unmigrating {mover}")

        # move: permanent, lastnode cleared even when the VM had one.
        other = before[1]
        vm = pvc.json("vm", "migrate", other, "--target", "hv2", "--wait", "--wait-timeout", "30")
        assert (vm["node"], vm["lastnode"]) == ("hv2", "hv1")
        settle(pvc, f"after migrating {other}")
        vm = pvc.json("vm", "move", other, "--target", "hv3", "--wait", "--wait-timeout", "30")
        assert (vm["node"], vm["lastnode"], vm["actual"]["node"], vm["actual"]["state"]) == ("hv3", None, "hv3", "running")
        vms, nodes = settle(pvc, f"after moving {other}")
        assert pvc("vm", "unmigrate", other).returncode == 1
        assert sum(len(n["running_vms"]) for n in nodes.values()) == VM_COUNT
    finally:
        check = sampler.stop()

    elapsed = time.monotonic() - began
    violations = check.violations()
    observed = Counter(node for node, _ in check.keepalives)
    print(f"\n{elapsed:.1f}s; {check.node_samples} node samples, {check.vm_samples} VM samples; "
          f"{len(check.keepalives)} keepalives seen {dict(observed)}; {check.windows_checked} windows checked; "
          f"{len(check.same_sample)} same-sample double listings (keepalive lag); sampler failures: {len(sampler.failures)}")
    assert violations == [], "\n".join(violations)
    assert not sampler.failures, sampler.failures
    assert check.node_samples >= 20 and check.vm_samples >= 20, "the sampler took too few samples"
    # The sampler saw most keepalives of every node, so its windows cover most of the test (not a vacuous pass).
    for node in NODES:
        counters = sorted(c for n, c in check.keepalives if n == node)
        assert len(counters) >= 0.5 * (counters[-1] - counters[0] + 1), f"{node}: keepalives seen {counters}"
    assert check.windows_checked >= VM_COUNT
