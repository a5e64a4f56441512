"""Floating IPs with each node's `pvcd` in its own network namespace (pvcd.devcluster.netlab).

The invariant is sampled every 50 ms in every namespace while faults happen:
a floating IP is never on two nodes at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from functools import partial

import pytest

from helpers import bin_path, wait_for
from pvcd.devcluster.netlab import NODE_MTU, SESSION_TIMEOUT, AddressSampler, Lab, sh

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="network namespace tests need root (namespaces, veth, bridges); CI runs as root"
)

COORDINATORS = ("hv1", "hv2", "hv3")


def start(lab: Lab, names=COORDINATORS, enable_networking: bool = True) -> None:
    for name in names:
        lab.add_node(name)
    for node in lab.nodes.values():
        node.start(enable_networking)


def pvc(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    assert lab.zookeeper is not None
    env = {k: v for k, v in os.environ.items() if k not in ("PVC_ZOOKEEPER", "PVCD_CONFIG_FILE")}
    env.update(lab.zookeeper.client_environment("operator"))  # the lab's own CA and credentials
    return subprocess.run(
        [bin_path("pvc"), "--zookeeper", lab.zookeeper.address, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def test_floating_ips_only_on_the_primary_and_they_answer_ping(nodes):
    lab = nodes
    start(lab)
    primary = lab.wait_holder(timeout=30)
    wait_for(lambda: sorted(lab.roles().values()) == ["primary", "secondary", "secondary"], 30, what="every node")
    floating = set(lab.floating_ips().values())
    for index, name in enumerate(COORDINATORS, start=1):
        held = lab.nodes[name].addresses()
        # The node's own addresses, applied at start: upstream None, cluster by-id, storage static.
        own = {str(lab.host("cluster", index)), str(lab.host("storage", 10 + index))}
        assert set(held) == own | (floating if name == primary else set())
        assert lab.nodes[name].mtu() == NODE_MTU
    for address in floating:
        # Held under a kernel lifetime shorter than the session timeout (the lease).
        assert lab.nodes[primary].addresses()[address]["ifa_valid"] < SESSION_TIMEOUT
        assert wait_for(partial(lab.answers_from, primary, address), 5, what=f"{address} to answer ping")
    assert lab.roles()[primary] == "primary"


def test_killed_primary_is_replaced(nodes):
    lab = nodes
    start(lab)
    old = lab.wait_holder(timeout=30)
    wait_for(lambda: sorted(lab.roles().values()) == ["primary", "secondary", "secondary"], 10, what="two secondaries")
    with AddressSampler(lab) as sampler:
        lab.nodes[old].signal(signal.SIGKILL)
        new = lab.wait_holder(exclude=old, timeout=SESSION_TIMEOUT + 15)
    assert sampler.overlaps() == []
    # The dead node's namespace lost the floating IPs by itself (their kernel lifetime ran out).
    assert all(old not in holders for holders in lab.floating_holders().values())
    for address in lab.floating_ips().values():
        assert wait_for(partial(lab.answers_from, new, address), 5, what=f"{address} to answer from {new}")


def test_planned_handover_both_ways(nodes):
    lab = nodes
    start(lab, names=("hv1", "hv2"))
    first = lab.wait_holder(timeout=30)
    second = "hv2" if first == "hv1" else "hv1"
    wait_for(lambda: lab.roles().get(second) == "secondary", 10, what=f"{second} to be secondary")
    cluster_ip = lab.floating_ips()["cluster"]
    assert wait_for(lambda: lab.answers_from(first, cluster_ip), 5, what="the first primary to answer")
    with AddressSampler(lab) as sampler:
        for old, new in ((first, second), (second, first)):
            result = pvc(lab, "node", "primary", new)
            assert result.returncode == 0, result.stderr
            assert lab.wait_holder(timeout=2) == new
            # Gratuitous ARP moved the observer's cache to the new primary's MAC.
            for address in lab.floating_ips().values():
                assert wait_for(partial(lab.answers_from, new, address), 5, what=f"{address} to answer from {new}")
            assert lab.roles() == {new: "primary", old: "secondary"}
    assert sampler.overlaps() == []


def test_primary_paused_past_its_session_timeout_never_takes_the_ips_back(nodes):
    lab = nodes
    start(lab, names=("hv1", "hv2"))
    old = lab.wait_holder(timeout=30)
    new = "hv2" if old == "hv1" else "hv1"
    wait_for(lambda: lab.roles().get(new) == "secondary", 10, what=f"{new} to be secondary")
    floating = set(lab.floating_ips().values())
    with AddressSampler(lab) as sampler:
        paused = time.monotonic()
        lab.nodes[old].signal(signal.SIGSTOP)
        try:
            assert lab.wait_holder(new, timeout=SESSION_TIMEOUT + 15) == new
            time.sleep(1.0)
        finally:
            lab.nodes[old].signal(signal.SIGCONT)
        wait_for(lambda: "is secondary coordinator" in lab.nodes[old].log(), 10, what=f"{old} to step down")
        wait_for(lambda: lab.roles().get(old) == "secondary", 15, what=f"{old} to publish secondary")
        time.sleep(SESSION_TIMEOUT)
    assert sampler.overlaps() == []
    gone = next(at for at, sample in sampler.samples if at >= paused and not sample[old] & floating)
    assert [at for at in sampler.held_by(old, since=paused) if at > gone] == [], f"{old} took floating IPs back"
    assert lab.nodes[old].running()
    assert lab.wait_holder(timeout=1) == new
    assert lab.roles() == {new: "primary", old: "secondary"}
    # On waking it stepped down on its own: for an expired lease or a suspended session,
    # whichever it noticed first.
    log = lab.nodes[old].log()
    assert (
        "relinquishes the primary coordinator role: no confirmation from ZooKeeper" in log
        or "relinquishes the primary coordinator role: the ZooKeeper connection is suspended" in log
    ), log


def test_election_only_without_networking(nodes):
    lab = nodes
    for name in COORDINATORS:
        lab.add_node(name)
    # Networking is the operating system's business here: the test gives each
    # node its cluster address, and pvcd must not touch any address.
    for index, node in enumerate(lab.nodes.values(), start=1):
        sh("ip", "-n", node.netns, "address", "add", f"{lab.host('cluster', index)}/24", "dev", "eth0")
    before = {name: set(node.addresses()) for name, node in lab.nodes.items()}
    for node in lab.nodes.values():
        node.start(enable_networking=False)
    wait_for(lambda: sorted(lab.roles().values()) == ["primary", "secondary", "secondary"], 30, what="an election")
    time.sleep(SESSION_TIMEOUT / 2)
    assert {name: set(node.addresses()) for name, node in lab.nodes.items()} == before
    assert all(holders == [] for holders in lab.floating_holders().values())


def test_floating_ip_lifetimes_in_the_kernel(nodes):
    """The adapter alone, in a namespace without pvcd: lifetimes, the post-check, close."""
    from ipaddress import IPv4Interface

    from pyroute2.netns import popns, pushns

    from pvcd.network.addresses import DeviceAddress, FloatingIPs, LeaseLost

    lab = nodes
    node = lab.add_node("hv1")
    address = DeviceAddress("cluster", "eth0", IPv4Interface(f"{lab.floating_ips()['cluster']}/24"))
    pushns(node.netns)
    try:
        floating = FloatingIPs([address])  # its sockets stay in the namespace they were opened in
    finally:
        popns()
    try:
        floating.hold(lambda: 1)
        assert node.addresses()[str(address.interface.ip)]["ifa_valid"] == 1
        # Nobody renews it: the kernel removes it by itself.
        wait_for(lambda: str(address.interface.ip) not in node.addresses(), 3, what="the kernel to expire it")
        # The lease ran out between the check and the change: added, then removed at once.
        answers = iter([2, 0])
        with pytest.raises(LeaseLost):
            floating.hold(lambda: next(answers))
        assert str(address.interface.ip) not in node.addresses()
        with pytest.raises(LeaseLost):
            floating.hold(lambda: 0)
        assert str(address.interface.ip) not in node.addresses()
        floating.hold(lambda: 3)
        floating.announce()
    finally:
        floating.close()
    assert str(address.interface.ip) not in node.addresses()
    with pytest.raises(LeaseLost):
        floating.hold(lambda: 3)
