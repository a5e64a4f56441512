"""Whole cluster, VMs (issue 3): 30 VMs through start, flush, ready, migrate, unmigrate and move.

Only real processes, driven as an operator would: `pvc-devcluster up --detach`
(real ZooKeeper, one `pvcd` per node, each with its own libvirtd serving
libvirt's test driver) and the `pvc` command line with `--format json`.
libvirt's test driver refuses migrations, so the nodes move VMs with
`SimulatedMigration` (see docs/vms.md): the source destroys the domain before
it releases the VM and the target starts it afresh; the handshake and the
placement are the real ones.

The ground truth of "never one VM on two hosts" is the chassis journals: every
domain start and stop on every host, on the machine's one monotonic clock,
checked by `pvc-devcluster check` at the end (and by the harness after every
test).
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from harness import Cluster, domain_xml

from helpers import wait_for

NODES = ("hv1", "hv2", "hv3")
VM_COUNT = 30
VMS = [f"vm{i}" for i in range(1, VM_COUNT + 1)]
VM_MIB = 128
SETTLE_TIMEOUT = 60


def settled(pvc: Cluster) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]] | None:
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


def settle(pvc: Cluster, what: str) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    return wait_for(lambda: settled(pvc), SETTLE_TIMEOUT, interval=0.2, what=f"{what}: every VM running on its node")


def on(vms: dict[str, dict[str, Any]], node: str) -> list[str]:
    return sorted(name for name, vm in vms.items() if vm["node"] == node)


def test_thirty_vms_through_flush_ready_and_moves_never_run_twice(make_cluster, tmp_path: Path):
    pvc = make_cluster(len(NODES))
    began = time.monotonic()
    # Define 30 VMs, ten per node, and start them.
    xml_dir = tmp_path / "xml"
    xml_dir.mkdir()
    placement = {name: NODES[i % len(NODES)] for i, name in enumerate(VMS)}
    for name in VMS:
        (xml_dir / f"{name}.xml").write_text(domain_xml(name, VM_MIB))
    defined = [pvc.json("vm", "define", str(xml_dir / f"{name}.xml"), "--node", placement[name]) for name in VMS]
    for vm in defined:
        assert (vm["state"], vm["node"], vm["memory_mib"], vm["vcpus"], vm["actual"]["state"]) == (
            "stop",
            placement[vm["name"]],
            VM_MIB,
            1,
            "stopped",
        )
    started = [pvc.json("vm", "start", name) for name in VMS]
    assert {vm["state"] for vm in started} == {"start"}
    vms, nodes = settle(pvc, "after start")
    assert {name: on(vms, name) for name in NODES} == {
        node: sorted(n for n, where in placement.items() if where == node) for node in NODES
    }
    assert all(nodes[n]["vms"] == 10 and nodes[n]["memory"]["allocated"] == 10 * VM_MIB for n in NODES)

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
    again = pvc.pvc("vm", "migrate", mover, check=False)
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
    assert pvc.pvc("vm", "unmigrate", other, check=False).returncode == 1
    assert sum(len(n["running_vms"]) for n in nodes.values()) == VM_COUNT

    # The ground truth: every VM ran on one host at a time, all the way through, and runs once now.
    report = pvc.assert_clean()
    starts = Counter(e["vm"] for node in NODES for e in pvc.journal(node) if e["event"] == "start")
    assert set(starts) == set(VMS)
    # Not a vacuous pass: the journals saw every move (10 flushed out and back, then 2 + 1 + 2 moves).
    assert sum(starts.values()) >= VM_COUNT + 2 * len(before) + 5, dict(starts)
    print(
        f"\n{time.monotonic() - began:.1f}s; journal entries {report['journals']['entries']}; "
        f"{sum(starts.values())} domain starts"
    )
