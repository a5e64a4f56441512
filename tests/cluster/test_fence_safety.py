"""Fencing when the daemon dies but the host does not, in a whole local cluster.

Each node's VMs live in its chassis' libvirtd, so killing or freezing `pvcd`
leaves them running, as on a real host. Keepalive 1 s, dead after 3 missed.
The fence records are read straight from ZooKeeper (their `step`s are what is
checked); what ran where comes from the chassis journals (`pvc-devcluster
check`), and the fixture checks after every test that no VM ever ran on two
hosts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from harness import Cluster
from kazoo.client import KazooClient

from helpers import wait_for
from pvcd.zk import schema


@contextmanager
def zookeeper(cluster: Cluster) -> Iterator[KazooClient]:
    client = cluster.kazoo()
    client.start(timeout=10)
    try:
        yield client
    finally:
        client.stop()
        client.close()


def fence_record(cluster: Cluster, node: str) -> dict[str, Any]:
    with zookeeper(cluster) as client:
        return json.loads(client.get(schema.node_fence(node))[0])


AFTER_WATCHDOG = ("recovering", "recovered")
"""Where a failed fence goes from `waiting-watchdog`: at once when the window has passed by the time
the BMC gave up (a slow storage cut or BMC timeout on a loaded machine), too fast to be seen."""


def wait_for_step(cluster: Cluster, node: str, step: str, timeout: float, then: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fence record once at `step`, or at one of the steps `then` that can follow it."""
    return wait_for(
        lambda: (lambda f: f if f.get("step") in (step, *then) else None)(fence_record(cluster, node)),
        timeout,
        what=f"the fence of {node} at step {step}",
    )


def secondaries(cluster: Cluster) -> list[str]:
    primary = cluster.primary()
    return [name for name in sorted(cluster.nodes()) if name != primary]


def starts(cluster: Cluster, vm: str, after: float = 0.0) -> list[tuple[str, float]]:
    """Every start of `vm` on any host after `after`, from the journals: (host, t)."""
    found = []
    for node in cluster.nodes():
        found += [
            (node, e["t"])
            for e in cluster.journal(node)
            if e["event"] == "start" and e.get("vm") == vm and e["t"] > after
        ]
    return sorted(found, key=lambda item: item[1])


def last_stop(cluster: Cluster, node: str, vm: str) -> float:
    return max(e["t"] for e in cluster.journal(node) if e["event"] == "stop" and e.get("vm") == vm)


def running_elsewhere(cluster: Cluster, vms: list[str], dead: str) -> bool:
    where = cluster.running_where()
    return all(where.get(vm) and dead not in where[vm] for vm in vms)


def test_daemon_crash_is_fenced_the_host_powered_off_and_each_vm_recovered_once(make_cluster):
    cluster = make_cluster(3)
    victim = secondaries(cluster)[0]
    vms = cluster.define_vms(victim, 3, "dc")
    cluster.fault(victim, "daemon-crash")
    # The host lives on without its daemon: its VMs keep running in its libvirtd.
    assert cluster.domains(victim) == sorted(vms)
    wait_for(lambda: running_elsewhere(cluster, vms, victim), 40, what="the VMs running elsewhere")
    record = wait_for_step(cluster, victim, "recovered", 20)
    assert record["outcome"] == "confirmed"
    for vm in vms:
        stopped = last_stop(cluster, victim, vm)
        later = starts(cluster, vm, after=stopped)
        assert len(later) == 1 and later[0][0] != victim, f"{vm} restarted {later}"
        assert later[0][1] >= stopped
    powered_off = [e for e in cluster.journal(victim) if e["event"] == "power-off"]
    assert powered_off, "the fence did not power the host off"
    cluster.assert_clean()


def test_daemon_crash_with_the_bmc_down_recovers_after_the_watchdog_window(make_cluster):
    cluster = make_cluster(3, "--failed-fence", "migrate", "--suicide-intervals", "2", "--watchdog-timeout", "4")
    victim = secondaries(cluster)[0]
    vms = cluster.define_vms(victim, 2, "wd")
    cluster.fault(victim, "bmc-down")
    cluster.fault(victim, "daemon-crash")
    record = wait_for_step(cluster, victim, "waiting-watchdog", 30, then=AFTER_WATCHDOG)
    assert record["outcome"] == "failed"
    wait_for(lambda: running_elsewhere(cluster, vms, victim), 40, what="recovery after the watchdog window")
    record = fence_record(cluster, victim)
    assert record["step"] == "recovered"
    window = record["fencing"]["watchdog_timeout"] + 2 * record["fencing"]["keepalive_interval"]
    assert record["recovered_ms"] - record["keepalive_mtime_ms"] >= window * 1000
    # The watchdog, not the fencer, took the old copies down, and before any new one started.
    resets = [e for e in cluster.journal(victim) if e["event"] == "watchdog-reset"]
    assert resets, "the chassis watchdog never reset the host"
    for vm in vms:
        assert all(t >= last_stop(cluster, victim, vm) for _host, t in starts(cluster, vm, after=resets[0]["t"]))
    cluster.assert_clean()


def test_hung_daemon_that_resumes_after_its_fence_never_runs_its_old_vms_again(make_cluster):
    cluster = make_cluster(3, "--no-watchdog", "--failed-fence", "migrate", "--suicide-intervals", "2")
    victim = secondaries(cluster)[0]
    vms = cluster.define_vms(victim, 2, "hang")
    cluster.fault(victim, "bmc-down")
    cluster.fault(victim, "daemon-hang")
    record = wait_for_step(cluster, victim, "waiting-operator", 40)
    assert record["outcome"] == "failed" and "no armed watchdog" in record["action_reason"]
    assert cluster.domains(victim) == sorted(vms)  # frozen daemon, live host: nobody may start them elsewhere
    cluster.fault(victim, "daemon-resume")
    wait_for(lambda: cluster.domains(victim) == [], 20, what="the resumed node to destroy its VMs")
    wait_for(lambda: f"fence {record['id']}" in cluster.log(victim), 20, what="the node to acknowledge its fence")
    cluster.wait_keepalives(victim, 3)
    assert cluster.nodes()[victim]["running_vms"] == []
    assert all(starts(cluster, vm, after=last_stop(cluster, victim, vm)) == [] for vm in vms)
    # The operator has checked: now, and only now, the VMs come back, once each.
    cluster.pvc("node", "confirm-fenced", victim)
    wait_for(lambda: running_elsewhere(cluster, vms, victim), 30, what="recovery after the confirmation")
    cluster.assert_clean()


def test_a_node_fenced_while_cut_off_comes_back_fenced_with_no_vms(make_cluster):
    cluster = make_cluster(3, "--no-watchdog")
    victim = secondaries(cluster)[0]
    vms = cluster.define_vms(victim, 2, "cut")
    cluster.fault(victim, "bmc-down")
    cluster.fault(victim, "cut")
    record = wait_for_step(cluster, victim, "waiting-operator", 40)
    cluster.fault(victim, "heal")
    wait_for(lambda: cluster.domains(victim) == [], 30, what="the healed node to destroy its VMs")
    wait_for(lambda: f"fence {record['id']}" in cluster.log(victim), 20, what="the node to acknowledge its fence")
    cluster.wait_keepalives(victim, 3)
    node = cluster.nodes()[victim]
    assert node["running_vms"] == [] and node["domain_state"] in ("fenced", "fence-failed")
    assert all(starts(cluster, vm, after=last_stop(cluster, victim, vm)) == [] for vm in vms)
    cluster.assert_clean(everything_runs=False)


def test_the_next_primary_finishes_a_fence_the_old_one_died_in(make_cluster):
    cluster = make_cluster(4)
    old_primary = cluster.primary()
    victim = "hv4"
    vms = cluster.define_vms(victim, 2, "mid")
    # A BMC that does not answer keeps the fence in its power-off step for seconds.
    cluster.fault(victim, "bmc-down")
    cluster.fault(victim, "daemon-crash")
    record = wait_for_step(cluster, victim, "powering-off", 30)
    assert record["by"] == old_primary
    cluster.fault(old_primary, "crash")
    cluster.fault(victim, "bmc-up")
    wait_for(lambda: running_elsewhere(cluster, vms, victim), 60, what="the next primary to recover the VMs")
    record = wait_for_step(cluster, victim, "recovered", 30)
    assert record["id"] == fence_record(cluster, victim)["id"]
    assert record["by"] == old_primary and record["resumed_by"] not in (None, old_primary)
    assert record["outcome"] == "confirmed"
    cluster.assert_clean(everything_runs=False)


def test_a_vm_the_fencer_cannot_place_does_not_stop_fencing(make_cluster):
    cluster = make_cluster(4)
    first, second = [n for n in secondaries(cluster) if n != "hv1"][-2:]
    good = cluster.define_vms(first, 2, "good")
    with zookeeper(cluster) as client:
        path = schema.vm(good[0])
        record = json.loads(client.get(path)[0])
        record["node_selector"] = "no-such-selector"
        client.set(path, json.dumps(record).encode())
    cluster.fault(first, "crash")
    wait_for(lambda: running_elsewhere(cluster, good, first), 40, what="the first node's VMs recovered")
    wait_for_step(cluster, first, "recovered", 20)
    more = cluster.define_vms(second, 1, "more")
    cluster.fault(second, "crash")
    wait_for(lambda: running_elsewhere(cluster, more, second), 40, what="the second node's VMs recovered")
    assert fence_record(cluster, second)["outcome"] == "confirmed"
    cluster.assert_clean()
