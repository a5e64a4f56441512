"""`pvc vm ...` and `pvc node flush|ready` against a real ZooKeeper and in-process nodes.

The commands run in this process through `cli.main.main` (with `cli.vm`
registered as the top-level CLI registers it), so each test can also look at
the nodes' private libvirt test hosts. Moves use the SimulatedMigration test
double: libvirt's test driver cannot migrate.
"""

from __future__ import annotations

import json

import pytest

import cli.main as cli_main
from cli import vm as cli_vm
from helpers import vm_cluster, vm_xml, wait_for
from pvcd.zk import schema


@pytest.fixture
def cluster(zk, make_config):
    yield from vm_cluster(make_config)


@pytest.fixture
def pvc(zookeeper, capsys):
    cli_vm.register(cli_main.pvc, cli_main.node)

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli_main.main(["--zookeeper", zookeeper.address, *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def run_json(pvc, *args: str):
    code, out, err = pvc(*args, "--format", "json")
    assert code == 0, err
    return json.loads(out)


def tree(zk, path: str) -> dict[str, bytes]:
    """Every value under `path`, to prove a refused command wrote nothing."""
    if not zk.exists(path):
        return {}
    found = {path: zk.get(path)[0]}
    for child in zk.get_children(path):
        found.update(tree(zk, f"{path}/{child}"))
    return found


def vm_file(tmp_path, name: str, memory_mib: int = 512, text: str | None = None):
    path = tmp_path / f"{name}.xml"
    path.write_text(text if text is not None else vm_xml(name, memory_mib))
    return str(path)


def test_define_list_info_dump(cluster, pvc, tmp_path):
    cluster(("hv1", "hv2"))
    xml_path = vm_file(tmp_path, "web1")
    defined = run_json(
        pvc,
        "vm",
        "define",
        xml_path,
        "--node",
        "hv2",
        "--limit",
        "hv1,hv2",
        "--selector",
        "vms",
        "--autostart",
        "--method",
        "shutdown",
    )
    assert defined["name"] == "web1" and defined["node"] == "hv2" and defined["state"] == "stop"
    assert defined["node_limit"] == ["hv1", "hv2"] and defined["node_selector"] == "vms"
    assert defined["node_autostart"] is True and defined["migration_method"] == "shutdown"
    assert defined["memory_mib"] == 512 and defined["vcpus"] == 1
    assert defined["actual"]["state"] == "stopped"

    code, out, _ = pvc("vm", "list")
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:5] == ["NAME", "STATE", "NODE", "LASTNODE", "ACTUAL"]
    assert row.split()[:3] == ["web1", "stop", "hv2"]
    assert [v["name"] for v in run_json(pvc, "vm", "list", "--node", "hv2")] == ["web1"]
    assert run_json(pvc, "vm", "list", "--node", "hv1") == []

    assert run_json(pvc, "vm", "info", "web1") == defined
    code, out, _ = pvc("vm", "dump", "web1")
    assert code == 0 and out.strip() == open(xml_path).read().strip()

    # Without --node the selector picks a node.
    chosen = run_json(pvc, "vm", "define", vm_file(tmp_path, "web2"))
    assert chosen["node"] in ("hv1", "hv2")


def test_bad_input_is_one_line_exit_1_and_writes_nothing(cluster, pvc, zk, tmp_path):
    cluster(("hv1", "hv2"))
    run_json(pvc, "vm", "define", vm_file(tmp_path, "db1"), "--node", "hv1", "--limit", "hv1")
    run_json(pvc, "vm", "define", vm_file(tmp_path, "app1"), "--node", "hv1")
    assert pvc("vm", "start", "app1", "--wait", "--wait-timeout", "15")[0] == 0
    run_json(pvc, "vm", "migrate", "app1", "--target", "hv2", "--wait")
    watched = [schema.VMS, schema.VM_UUIDS, schema.node_command("hv1"), schema.node_command("hv9")]
    before = {path: tree(zk, path) for path in watched}

    cases = [
        (
            ("vm", "define", vm_file(tmp_path, "broken", text="<domain type='test'><name>x</name>")),
            "malformed domain XML",
        ),
        (("vm", "define", vm_file(tmp_path, "db1")), "already exists"),
        (("vm", "define", vm_file(tmp_path, "x1"), "--node", "hv9"), "no node named 'hv9'"),
        (("vm", "define", vm_file(tmp_path, "x2"), "--limit", "hv1,hv9"), "no node named 'hv9'"),
        (("vm", "define", vm_file(tmp_path, "x3"), "--node", "hv2", "--limit", "hv1"), "outside the VM's node_limit"),
        (("vm", "define", vm_file(tmp_path, "x4", memory_mib=64 * 1024)), "no node to define it on: needs 65536 MiB"),
        (("vm", "define", vm_file(tmp_path, "x5"), "--selector", "cheapest"), "unknown target selector"),
        (("vm", "start", "nope"), "no VM named 'nope'"),
        (("vm", "info", "nope"), "no VM named 'nope'"),
        (("vm", "restart", "db1"), "restart needs it to be start"),
        (("vm", "migrate", "db1", "--target", "hv9"), "no node named 'hv9'"),
        (("vm", "migrate", "db1", "--target", "hv2"), "outside node_limit"),
        (("vm", "move", "db1", "--target", "hv1"), "already on hv1"),
        (("vm", "migrate", "app1", "--target", "hv1"), "already migrated from hv1"),
        (("vm", "unmigrate", "db1"), "has not been migrated"),
        (("vm", "remove", "app1"), "stop it first"),
        (("node", "flush", "hv9"), "no node named 'hv9'"),
    ]
    for args, message in cases:
        code, out, err = pvc(*args)
        assert code == 1, (args, out, err)
        assert err.count("\n") == 1 and message in err, (args, err)
        assert {path: tree(zk, path) for path in watched} == before, f"{args} wrote to ZooKeeper"


def test_not_enough_memory_anywhere_for_a_migration(cluster, pvc, tmp_path):
    nodes_ = cluster(("hv1", "hv2"))
    run_json(pvc, "vm", "define", vm_file(tmp_path, "big", 12 * 1024), "--node", "hv1")
    assert pvc("vm", "start", "big", "--wait", "--wait-timeout", "15")[0] == 0
    nodes_["hv2"].conn.defineXML(vm_xml("hog", 8 * 1024)).create()
    wait_for(lambda: run_json(pvc, "node", "info", "hv2")["memory"]["allocated"] == 8192, 10, what="hv2's keepalive")
    code, _, err = pvc("vm", "migrate", "big")
    assert code == 1 and "needs 12288 MiB; most unallocated on an allowed node is 8192 MiB (hv2)" in err
    code, _, err = pvc("vm", "migrate", "big", "--target", "hv2")
    assert code == 1 and "requested target 'hv2' has 8192 MiB unallocated" in err
    assert run_json(pvc, "vm", "info", "big")["node"] == "hv1"


def test_start_migrate_unmigrate_move_with_wait(cluster, pvc, tmp_path):
    nodes_ = cluster(("hv1", "hv2", "hv3"))
    run_json(pvc, "vm", "define", vm_file(tmp_path, "vm1"), "--node", "hv1")
    started = run_json(pvc, "vm", "start", "vm1", "--wait", "--wait-timeout", "15")
    assert started["actual"] == {"node": "hv1", "state": "running", "message": None}
    assert nodes_["hv1"].running() == {"vm1"}

    plan = run_json(pvc, "vm", "migrate", "vm1", "--dry-run")
    [placement] = plan["placements"]
    assert {s["node"] for s in placement["scores"]} == {"hv2", "hv3"}
    assert all(isinstance(s["score"], (int, float)) for s in placement["scores"])
    code, out, _ = pvc("vm", "migrate", "vm1", "--dry-run")
    assert code == 0 and out.startswith("vm1 -> ") and "scores: hv" in out
    assert run_json(pvc, "vm", "info", "vm1")["node"] == "hv1", "a dry run changes nothing"

    migrated = run_json(pvc, "vm", "migrate", "vm1", "--target", "hv2", "--wait", "--wait-timeout", "15")
    assert (migrated["node"], migrated["lastnode"], migrated["state"]) == ("hv2", "hv1", "start")
    assert migrated["actual"]["node"] == "hv2" and migrated["actual"]["state"] == "running"
    assert nodes_["hv2"].running() == {"vm1"} and nodes_["hv1"].running() == set()

    back = run_json(pvc, "vm", "unmigrate", "vm1", "--wait", "--wait-timeout", "15")
    assert (back["node"], back["lastnode"]) == ("hv1", None)
    code, out, _ = pvc("vm", "move", "vm1", "--target", "hv3", "--wait", "--wait-timeout", "15")
    assert code == 0 and out.strip().startswith("VM vm1 is start on hv3: running on hv3")
    assert run_json(pvc, "vm", "info", "vm1")["lastnode"] is None

    code, out, _ = pvc("vm", "start", "vm1")
    assert code == 0 and out.strip() == "VM vm1 is already start"
    assert run_json(pvc, "vm", "stop", "vm1", "--wait", "--wait-timeout", "15")["actual"]["state"] == "stopped"
    code, out, _ = pvc("vm", "remove", "vm1")
    assert code == 0 and out.strip() == "Removed VM vm1"
    assert run_json(pvc, "vm", "list") == []


def test_start_failure_is_reported_by_wait(cluster, pvc, tmp_path):
    cluster(("hv1",))
    bad = vm_xml("bad").replace("<type>hvm</type>", "<type>nonsense</type>")
    run_json(pvc, "vm", "define", vm_file(tmp_path, "bad", text=bad), "--node", "hv1")
    code, _, err = pvc("vm", "start", "bad", "--wait", "--wait-timeout", "15")
    assert code == 1 and "VM bad failed:" in err and "unknown OS type" in err


def test_node_flush_and_ready(cluster, pvc, tmp_path):
    nodes_ = cluster(("hv1", "hv2", "hv3"))
    for i in range(4):
        run_json(pvc, "vm", "define", vm_file(tmp_path, f"vm{i}"), "--node", "hv1")
        run_json(pvc, "vm", "start", f"vm{i}", "--wait", "--wait-timeout", "15")
    wait_for(lambda: run_json(pvc, "node", "info", "hv1")["vms"] == 4, 10, what="hv1's keepalive")

    plan = run_json(pvc, "node", "flush", "hv1", "--dry-run")
    assert sorted(p["vm"] for p in plan["placements"]) == ["vm0", "vm1", "vm2", "vm3"]
    assert {p["node"] for p in plan["placements"]} == {"hv2", "hv3"}

    flushed = run_json(pvc, "node", "flush", "hv1", "--wait", "--wait-timeout", "30")
    assert flushed["report"]["phase"] == "done" and sorted(flushed["report"]["moved"]) == ["vm0", "vm1", "vm2", "vm3"]
    assert run_json(pvc, "node", "info", "hv1")["domain_state"] == "flushed"
    assert nodes_["hv1"].running() == set()

    code, out, _ = pvc("node", "ready", "hv1", "--wait", "--wait-timeout", "30")
    assert code == 0 and out.startswith("Node hv1: ready done; moved: vm0, vm1, vm2, vm3")
    assert run_json(pvc, "node", "info", "hv1")["domain_state"] == "ready"
    wait_for(lambda: nodes_["hv1"].running() == {"vm0", "vm1", "vm2", "vm3"}, 15, what="the VMs back on hv1")


def test_flush_and_ready_of_a_node_that_is_not_keeping_alive_are_refused_in_words(cluster, pvc, zk):
    nodes_ = cluster(("hv1", "hv2"))
    nodes_["hv1"].stop()
    before = tree(zk, schema.node("hv1"))
    for kind in ("flush", "ready"):
        code, _, err = pvc("node", kind, "hv1")
        assert (code, err) == (1, f"pvc: node hv1 is not running (daemon stop); it cannot {kind}\n")
    assert tree(zk, schema.node("hv1")) == before
    # Its daemon state still says `run` (a daemon that hung, say), but no keepalive comes.
    state = json.loads(zk.get(schema.node_state("hv1"))[0])
    zk.set(schema.node_state("hv1"), json.dumps(dict(state, daemon="run")).encode())
    before = tree(zk, schema.node("hv1"))
    wait_for(lambda: run_json(pvc, "node", "info", "hv1")["keepalive"]["late"], 15, what="hv1's keepalive late")
    code, _, err = pvc("node", "ready", "hv1")
    assert (code, err) == (1, "pvc: node hv1's keepalive is late; it cannot ready until it keeps alive again\n")
    assert tree(zk, schema.node("hv1")) == before


def test_running_vm_cannot_move_off_a_node_that_is_gone(cluster, pvc, tmp_path):
    nodes_ = cluster(("hv1", "hv2"))
    run_json(pvc, "vm", "define", vm_file(tmp_path, "vm1"), "--node", "hv1")
    run_json(pvc, "vm", "start", "vm1", "--wait", "--wait-timeout", "15")
    nodes_["hv1"].stop()
    code, _, err = pvc("vm", "migrate", "vm1", "--target", "hv2")
    assert code == 1 and "its node hv1 is not running (stop" in err
    assert run_json(pvc, "vm", "info", "vm1")["node"] == "hv1"
