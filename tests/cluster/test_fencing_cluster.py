"""Fencing in a whole local cluster: real ZooKeeper, real IPMI over UDP, real processes.

Keepalive 1 s, 3 missed keepalives make a node dead. Faults are injected with
`pvc-devcluster fault` (`crash` is a power loss: the node's pvcd, its libvirtd
and its VMs die). The harness (conftest.py) checks the chassis journals after
every test: no VM ever ran on two hosts.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from harness import WINDOW, Cluster

from helpers import wait_for


def recovered(cluster: Cluster, vms: list[str], dead: str) -> bool:
    where = cluster.running_where()
    return all(vm in where and dead not in where[vm] for vm in vms)


def fence_of(cluster: Cluster, node: str) -> dict:
    return cluster.json("node", "info", node)["fence"]


def fenced_at(cluster: Cluster, node: str) -> float:
    """When the node's host last lost power, on the journals' clock."""
    return max(e["t"] for e in cluster.journal(node) if e["event"] == "power-off")


def wait_for_outcome(cluster: Cluster, node: str, outcome: str, timeout: float) -> dict:
    return wait_for(
        lambda: (lambda f: f if f["outcome"] == outcome else None)(fence_of(cluster, node)),
        timeout,
        what=f"a {outcome} fence of {node}",
    )


def a_secondary(cluster: Cluster) -> str:
    primary = cluster.primary()
    return next(name for name in sorted(cluster.nodes()) if name != primary)


def test_crash_is_fenced_and_its_vms_recovered(make_cluster):
    cluster = make_cluster(3)
    victim = a_secondary(cluster)
    vms = cluster.define_vms(victim, 6, "crash")
    cluster.fault(victim, "crash")
    wait_for(lambda: recovered(cluster, vms, victim), 30, what="the crashed node's VMs running elsewhere")
    fence = wait_for_outcome(cluster, victim, "confirmed", 10)
    assert fence["recovered"] is True
    assert sorted(fence["recovered_vms"]) == vms
    assert set(fence["recovered_vms"].values()) == set(cluster.nodes()) - {victim}, "the batch did not spread"
    info = cluster.vms()
    assert all(info[vm]["lastnode"] == victim for vm in vms)
    # The node was powered on again and came back fenced: it takes no VMs.
    node = wait_for(
        lambda: (lambda n: n if n["daemon_state"] == "run" and not n["keepalive"]["late"] else None)(
            cluster.nodes()[victim]
        ),
        30,
        what="the fenced node to come back",
    )
    assert node["domain_state"] == "fenced" and node["running_vms"] == []
    # The journal: the power loss stopped each VM on the victim, each started once elsewhere afterwards.
    power_off = next(e["t"] for e in cluster.journal(victim) if e["event"] == "power-off")
    stops = {e["vm"]: e for e in cluster.journal(victim) if e["event"] == "stop"}
    assert sorted(stops) == vms and {e["via"] for e in stops.values()} == {"power-loss"}
    starts = [
        (e["vm"], name, e["t"])
        for name in cluster.nodes()
        if name != victim
        for e in cluster.journal(name)
        if e["event"] == "start"
    ]
    assert sorted(vm for vm, _, _ in starts) == vms and all(t > power_off for _, _, t in starts)
    cluster.assert_clean()
    # Readied, the fenced coordinator takes VMs again and may be primary again.
    cluster.pvc("node", "ready", victim, "--wait")
    cluster.pvc("node", "primary", victim)
    wait_for(lambda: cluster.primary() == victim, 30, what=f"the readied {victim} to become primary")
    # The BMC passwords the fencer used appear in no log and no output.
    outputs = (
        [cluster.log(name) for name in cluster.nodes()]
        + [cluster.pvc("node", "info", name, "--format", "json").stdout for name in cluster.nodes()]
        + [cluster.pvc("node", "list").stdout, cluster.pvc("cluster", "status", "--format", "json").stdout]
    )
    for name in cluster.nodes():
        password = yaml.safe_load(
            Path(next(n["config"] for n in cluster.record["nodes"] if n["name"] == name)).read_text()
        )["pvc"]["system"]["fencing"]["ipmi"]["pass"]
        assert not any(password in text for text in outputs), f"the BMC password of {name} leaked"


def test_primary_crash_new_primary_fences_it(make_cluster):
    cluster = make_cluster(3)
    old = cluster.primary()
    vms = cluster.define_vms(old, 3, "prim")
    cluster.fault(old, "crash")
    new = wait_for(
        lambda: next((n for n, v in cluster.nodes().items() if v["coordinator_state"] == "primary" and n != old), None),
        30,
        what="a new primary",
    )
    wait_for(lambda: recovered(cluster, vms, old), 40, what="the old primary's VMs running elsewhere")
    fence = fence_of(cluster, old)
    assert fence["outcome"] == "confirmed" and fence["by"] == new


def test_hung_node_is_powered_off_and_never_runs_its_old_vms(make_cluster):
    cluster = make_cluster(3)
    victim = a_secondary(cluster)
    vms = cluster.define_vms(victim, 3, "hang")
    cluster.fault(victim, "daemon-hang")
    wait_for(lambda: recovered(cluster, vms, victim), 30, what="the hung node's VMs running elsewhere")
    assert fence_of(cluster, victim)["outcome"] == "confirmed"
    wait_for(lambda: not cluster.nodes()[victim]["keepalive"]["late"], 30, what="the node powered on again")
    cluster.wait_keepalives(victim, 5)
    node = cluster.nodes()[victim]
    assert node["domain_state"] == "fenced" and node["running_vms"] == []
    assert cluster.domains(victim) == []
    assert not any(e["event"] == "start" for e in cluster.journal(victim) if e["t"] > fenced_at(cluster, victim))
    cluster.assert_clean()


def test_unreachable_bmc_is_a_failed_fence_and_vms_stay(make_cluster):
    cluster = make_cluster(3)
    victim = a_secondary(cluster)
    vms = cluster.define_vms(victim, 2, "bmc")
    cluster.fault(victim, "bmc-down")
    cluster.fault(victim, "crash")
    fence = wait_for_outcome(cluster, victim, "failed", 60)
    assert fence["recovered"] is not True
    assert cluster.nodes()[victim]["domain_state"] == "fence-failed"
    cluster.wait_keepalives(cluster.primary(), 4)
    where = cluster.running_where()
    assert not any(vm in where for vm in vms), f"VMs of a node not known off were started: {where}"
    assert all(v["node"] == victim for name, v in cluster.vms().items() if name in vms)


def test_cut_node_destroys_its_vms_and_they_are_recovered_once(make_cluster):
    cluster = make_cluster(3, "--suicide-intervals", "2", "--failed-fence", "migrate")
    victim = a_secondary(cluster)
    vms = cluster.define_vms(victim, 3, "cut")
    cluster.fault(victim, "bmc-down")
    cluster.fault(victim, "cut")
    destroyed = "destroyed VMs: " + ", ".join(sorted(vms))
    wait_for(lambda: destroyed in cluster.log(victim), 20, what="the cut node to self-fence and destroy its VMs")
    wait_for(lambda: recovered(cluster, vms, victim), 60, what="the VMs recovered after the self-fence window")
    fence = fence_of(cluster, victim)
    assert fence["outcome"] == "failed" and fence["recovered"] is True
    cluster.fault(victim, "heal")
    wait_for(lambda: not cluster.nodes()[victim]["keepalive"]["late"], 30, what="the node reachable again")
    cluster.wait_keepalives(victim, 4)
    node = cluster.nodes()[victim]
    assert node["running_vms"] == [] and node["domain_state"] in ("fenced", "fence-failed")
    cluster.assert_clean()


def test_two_of_five_are_fenced_one_after_the_other(make_cluster):
    cluster = make_cluster(5)
    primary = cluster.primary()
    victims = [name for name in sorted(cluster.nodes()) if name != primary][:2]
    cluster.faults(victims, "crash")
    fences = wait_for(
        lambda: (lambda fs: fs if all(f["outcome"] == "confirmed" for f in fs) else None)(
            [fence_of(cluster, v) for v in victims]
        ),
        60,
        what="both nodes fenced",
    )
    first, second = sorted(fences, key=lambda f: f["started_ms"])
    assert second["started_ms"] >= first["finished_ms"], "two fences overlapped"


def test_three_of_five_trip_the_storm_guard(make_cluster):
    cluster = make_cluster(5)
    primary = cluster.primary()
    victims = [name for name in sorted(cluster.nodes()) if name != primary][:3]
    cluster.faults(victims, "crash")
    status = wait_for(
        lambda: (lambda s: s if s["faults"].get("storm") else None)(cluster.json("cluster", "status")),
        30,
        what="the storm guard",
    )
    assert sorted(status["faults"]["storm"]["dead"]) == victims
    cluster.wait_keepalives(primary, 2)
    assert all(fence_of(cluster, v)["outcome"] is None for v in victims), "a node was fenced during a storm"
    assert "FAULT storm" in cluster.pvc("cluster", "status").stdout


def test_maintenance_mode_prevents_fencing(make_cluster):
    cluster = make_cluster(3)
    victim = a_secondary(cluster)
    cluster.pvc("cluster", "maintenance", "on")
    cluster.fault(victim, "crash")
    cluster.wait_keepalives(cluster.primary(), WINDOW + 3)
    assert fence_of(cluster, victim)["outcome"] is None
    assert cluster.json("cluster", "status")["maintenance"] is True
    cluster.pvc("cluster", "maintenance", "off")
    wait_for_outcome(cluster, victim, "confirmed", 30)


def test_ambiguous_fence_waits_for_the_operator(make_cluster):
    """The host must be on for the BMC's power-off to trip it: the daemon dies, not the host. Without a
    watchdog, or it would reset the host before the fence."""
    cluster = make_cluster(3, "--no-watchdog")
    victim = a_secondary(cluster)
    vms = cluster.define_vms(victim, 2, "amb")
    cluster.fault(victim, "bmc-flaky")
    cluster.fault(victim, "daemon-crash")
    fence = wait_for_outcome(cluster, victim, "ambiguous", 60)
    assert fence["recovered"] is not True
    assert cluster.nodes()[victim]["domain_state"] == "fence-ambiguous"
    cluster.wait_keepalives(cluster.primary(), 3)
    assert not any(vm in cluster.running_where() for vm in vms), "VMs restarted without the operator"
    refused = cluster.pvc("node", "confirm-fenced", a_secondary_other_than(cluster, victim), check=False)
    assert refused.returncode == 1 and refused.stderr.startswith("pvc: node ")
    assert "no ambiguous or failed fence" in refused.stderr
    cluster.pvc("node", "confirm-fenced", victim)
    wait_for(lambda: recovered(cluster, vms, victim), 30, what="recovery after the operator's confirmation")
    assert fence_of(cluster, victim)["confirmed_by_operator"] is True


def a_secondary_other_than(cluster: Cluster, node: str) -> str:
    primary = cluster.primary()
    return next(name for name in sorted(cluster.nodes()) if name not in (primary, node))
