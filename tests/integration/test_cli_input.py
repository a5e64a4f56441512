"""`pvc` fed bad input, as a real process: one line on stderr, a non-zero exit, no traceback,
and nothing written to ZooKeeper.

Nodes run in this process (their figures and keepalives are real); `pvc` runs
as the installed console script, so an exception that escapes it shows as the
traceback an operator would see.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from helpers import VmNode, bin_path, vm_cluster, vm_xml, wait_for, wait_for_node_figures
from pvcd.cluster import vm_records as records
from pvcd.cluster.vm_records import MAX_DOMAIN_XML_BYTES
from pvcd.zk import schema, vms
from pvcd.zk.store import Store


def run(*args: str, env: dict[str, str] | None = None, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("PVC_ZOOKEEPER", "PVCD_CONFIG_FILE")}
    environment.update(env or {})
    result = subprocess.run([bin_path("pvc"), *args], input=stdin, capture_output=True, timeout=60, env=environment)
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")
    )


def refused(result: subprocess.CompletedProcess[str], *messages: str) -> None:
    """Exit 1, exactly one short line on stderr containing each of `messages`, nothing on stdout."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pvc: "), result.stderr
    assert all(message in lines[0] for message in messages), (messages, lines[0])
    assert len(lines[0]) < 400, lines[0]
    assert result.stdout == ""


def tree(zk, path: str) -> dict[str, bytes]:
    """Every znode and value under `path`, to prove a refused command wrote nothing."""
    found = {}
    for child in zk.get_children(path):
        child_path = f"{path}/{child}"
        found[child_path] = zk.get(child_path)[0]
        found.update(tree(zk, child_path))
    return found


@pytest.fixture
def cluster(zk, make_config):
    yield from vm_cluster(make_config)


@pytest.fixture
def two_nodes(zk, cluster):
    cluster(("hv1", "hv2"))
    wait_for_node_figures(zk, ("hv1", "hv2"))


# -- where ZooKeeper is ----------------------------------------------------------------


@pytest.mark.parametrize(
    "address, problem",
    [
        ("::::", "looks like an IPv6 address"),
        (":", "is not a host name or address"),
        (",,", "a host is missing"),
        ("host:notaport", "port 'notaport' is not a number from 1 to 65535"),
        ("127.0.0.1:99999", "port '99999'"),
        ("[::1", "no closing ']'"),
        ("h:1/a//b", "chroot"),
        ("h\x01:1", "control characters"),
    ],
)
def test_malformed_zookeeper_address_is_one_line(address, problem):
    by_option = run("--zookeeper", address, "node", "list")
    refused(by_option, "pvc: invalid ZooKeeper address from --zookeeper: ", problem)
    by_env = run("node", "list", env={"PVC_ZOOKEEPER": address})
    refused(by_env, "pvc: invalid ZooKeeper address from PVC_ZOOKEEPER: ", problem)


def test_mistyped_chroot_is_no_cluster_and_writes_nothing(zk, zookeeper, cluster):
    cluster(("hv1",))
    missing = run("--zookeeper", f"{zookeeper.address}/typo", "node", "list")
    refused(
        missing,
        f"no pvc cluster at ZooKeeper '{zookeeper.address}/typo' (from --zookeeper): its chroot /typo does not exist",
    )
    assert not zk.exists("/typo"), "a command against a missing chroot created it"
    zk.create("/elsewhere")
    try:
        empty = run("node", "list", "--format", "json", env={"PVC_ZOOKEEPER": f"{zookeeper.address}/elsewhere"})
        refused(
            empty,
            f"no pvc cluster at ZooKeeper '{zookeeper.address}/elsewhere' (from PVC_ZOOKEEPER): "
            "/pvc/schema does not exist under the chroot /elsewhere",
        )
        for args in (("vm", "list"), ("cluster", "status"), ("cluster", "maintenance", "on"), ("node", "info", "hv1")):
            refused(run("--zookeeper", f"{zookeeper.address}/elsewhere", *args), "no pvc cluster at ZooKeeper")
        assert tree(zk, "/elsewhere") == {}, "a command against a wrong chroot wrote to ZooKeeper"
    finally:
        zk.delete("/elsewhere", recursive=True)
    assert not zk.exists(schema.MAINTENANCE)
    listed = run("--zookeeper", zookeeper.address, "node", "list", "--format", "json")
    assert listed.returncode == 0 and [n["name"] for n in json.loads(listed.stdout)] == ["hv1"]


def test_no_cluster_at_all_and_an_empty_cluster_differ(zk, zookeeper):
    none = run("--zookeeper", zookeeper.address, "node", "list")
    refused(none, f"no pvc cluster at ZooKeeper '{zookeeper.address}' (from --zookeeper): /pvc/schema does not exist")
    assert not zk.exists(schema.ROOT), "pvc created /pvc on a ZooKeeper without a cluster"
    zk.create(schema.SCHEMA, json.dumps({"version": schema.SCHEMA_VERSION}).encode(), makepath=True)
    zk.create(schema.NODES)
    empty = run("--zookeeper", zookeeper.address, "node", "list")
    assert empty.returncode == 0 and empty.stdout == "No nodes registered.\n", empty.stderr
    assert json.loads(run("--zookeeper", zookeeper.address, "node", "list", "--format", "json").stdout) == []


# -- VM input ---------------------------------------------------------------------------


def domain(name: str, memory_mib: int = 512, extra: str = "") -> str:
    return vm_xml(name, memory_mib).replace("</domain>", f"{extra}</domain>")


def test_bad_vm_input_is_refused_and_writes_nothing(zk, zookeeper, two_nodes, tmp_path: Path):
    ok = tmp_path / "ok.xml"
    ok.write_text(domain("keep1"))
    assert run("--zookeeper", zookeeper.address, "vm", "define", str(ok), "--node", "hv1").returncode == 0
    stored = tree(zk, schema.VMS), tree(zk, schema.VM_UUIDS)

    def file(name: str, content: str | bytes) -> str:
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)

    huge = "b" * 100_000
    cases = [
        (("define", file("ctrl.xml", domain("bad&#9;name"))), "VM name 'bad\\tname' cannot be used"),
        (("define", file("long.xml", domain("a" * 100_000))), "cannot be used: it is longer than 64 characters"),
        (("define", file("uni.xml", domain("wébé☃"))), "VM name 'wébé☃' cannot be used"),
        (
            ("define", file("big.xml", domain("big1", extra=f"<description>{'x' * 2_000_000}</description>"))),
            f"larger than {MAX_DOMAIN_XML_BYTES} bytes",
        ),
        (
            ("define", file("mem.xml", domain("mem1", 64 * 1024)), "--node", "hv1"),
            "VM mem1 needs 65536 MiB of memory; node hv1 has only 16384 MiB in total",
        ),
        (("define", file("empty.xml", "")), "domain XML is empty"),
        (("define", file("binary.xml", b"\x00\xff\xfe<domain")), "not UTF-8 text (byte 0xff at offset 1)"),
        (("define", file("half.xml", domain("half1")[:-20])), "malformed domain XML"),
        (("define", file("dtd.xml", "<!DOCTYPE d [<!ENTITY a 'x'>]>" + domain("dtd1"))), "<!DOCTYPE>"),
        (("define", file("num.xml", domain("num1").replace(">512<", ">1_000<"))), "'1_000' is not a whole number"),
        (("define", str(tmp_path)), "Is a directory"),
        (("define", str(tmp_path / "missing.xml")), "No such file or directory"),
        (("define", str(ok), "--node", "hv\x01"), "invalid node name 'hv\\x01'"),
        (("define", str(ok), "--limit", f"hv1,{huge}"), "(100000 characters)"),
        (("info", huge), "VM name 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb'... (100000 characters) cannot be used"),
        (("start", "bad\x01name"), "VM name 'bad\\x01name' cannot be used"),
        (("stop", "a\x7f"), "cannot be used"),
        (("remove", "x\ny"), "cannot be used"),
        (("dump", "_x"), "cannot be used"),
        (("info", "wébé"), "VM name 'wébé' cannot be used"),
        (("migrate", "keep1", "--target", "hv\x01"), "invalid node name"),
        (("migrate", huge), "(100000 characters)"),
        (("move", "keep1\t"), "cannot be used"),
        (("unmigrate", "."), "cannot be used"),
        (("list", "--node", huge), "invalid node name"),
    ]
    for args, message in cases:
        refused(run("--zookeeper", zookeeper.address, "vm", *args), message)
        assert (tree(zk, schema.VMS), tree(zk, schema.VM_UUIDS)) == stored, f"{args[:2]} wrote to ZooKeeper"
    refused(
        run("--zookeeper", zookeeper.address, "vm", "define", "-", stdin=b"x" * (3 * 1024 * 1024)),
        f"'-': larger than {MAX_DOMAIN_XML_BYTES} bytes",
    )
    for command in (
        ("node", "info"),
        ("node", "flush"),
        ("node", "ready"),
        ("node", "primary"),
        ("node", "secondary"),
        ("node", "confirm-fenced"),
    ):
        refused(run("--zookeeper", zookeeper.address, *command, huge), "invalid node name")
        refused(run("--zookeeper", zookeeper.address, *command, "hv\x01"), "invalid node name 'hv\\x01'")
    assert (tree(zk, schema.VMS), tree(zk, schema.VM_UUIDS)) == stored


def test_vm_from_standard_input_with_a_byte_order_mark_and_a_repetitive_limit(zk, zookeeper, two_nodes):
    repeated = ",".join(["hv2"] * 20_000 + ["hv1"])
    defined = run(
        "--zookeeper",
        zookeeper.address,
        "vm",
        "define",
        "-",
        "--node",
        "hv2",
        "--limit",
        repeated,
        "--format",
        "json",
        stdin=b"\xef\xbb\xbf" + domain("bom1").encode(),
    )
    assert defined.returncode == 0, defined.stderr
    assert json.loads(defined.stdout)["name"] == "bom1"
    assert json.loads(defined.stdout)["node_limit"] == ["hv2", "hv1"]
    dumped = run("--zookeeper", zookeeper.address, "vm", "dump", "bom1")
    assert dumped.stdout.startswith("<domain")


def test_a_vm_an_older_pvc_stored_under_a_name_now_refused_stays_manageable(zk, zookeeper, two_nodes, tmp_path):
    """Names were only checked to be one path component before: such VMs can still be seen and removed."""
    record = records.new_record(records.parse_domain_xml(domain("legacy")), "hv1")
    store = Store(zookeeper.address, security=zookeeper.security())
    store.start()
    try:
        vms.define(store, dataclasses.replace(record, name="old vm é"))
    finally:
        store.stop()
    info = run("--zookeeper", zookeeper.address, "vm", "info", "old vm é", "--format", "json")
    assert info.returncode == 0 and json.loads(info.stdout)["name"] == "old vm é", info.stderr
    removed = run("--zookeeper", zookeeper.address, "vm", "remove", "old vm é")
    assert removed.returncode == 0 and removed.stdout == "Removed VM old vm é\n", removed.stderr
    refused(run("--zookeeper", zookeeper.address, "vm", "info", "old vm é"), "VM name 'old vm é' cannot be used")


# -- handing the primary role to a crashed coordinator ------------------------------------


@pytest.fixture
def primary(zk, make_config):
    """hv1, a coordinator of the two-coordinator cluster hv1, hv2, running in this process."""
    node = VmNode(make_config("hv1", names=["hv1", "hv2"])).start()
    yield node
    node.stop()


def test_handover_to_a_crashed_coordinator_is_refused(zk, zookeeper, write_config, daemon_process, primary):
    zk.create(schema.MAINTENANCE, json.dumps({"enabled": True}).encode(), makepath=True)  # no fencing noise
    wait_for(
        lambda: (
            zk.exists(schema.node_state("hv1"))
            and json.loads(zk.get(schema.node_state("hv1"))[0])["coordinator"] == "primary"
        ),
        15,
        what="hv1 primary",
    )
    crashed = daemon_process(write_config("hv2", names=["hv1", "hv2"]))
    wait_for(
        lambda: (
            zk.exists(schema.node_state("hv2"))
            and json.loads(zk.get(schema.node_state("hv2"))[0])["coordinator"] == "secondary"
            and json.loads(zk.get(schema.node_keepalive("hv2"))[0]).get("counter", 0) >= 1
        ),
        20,
        what="hv2 secondary",
    )
    crashed.signal(signal.SIGKILL)

    def late() -> bool:
        listed = json.loads(run("--zookeeper", zookeeper.address, "node", "list", "--format", "json").stdout)
        return {n["name"]: n["keepalive"]["late"] for n in listed} == {"hv1": False, "hv2": True}

    wait_for(late, 15, interval=0.5, what="hv2's keepalive to be late")
    state = json.loads(zk.get(schema.node_state("hv2"))[0])
    assert (state["daemon"], state["coordinator"]) == ("run", "secondary"), "the crashed node's record is stale"

    result = run("--zookeeper", zookeeper.address, "node", "primary", "hv2")
    refused(result, "node hv2 is not alive: its last keepalive was ")
    assert result.stderr.rstrip().endswith("s ago (interval 1s)")
    assert not zk.exists(schema.HANDOVER), "a handover request was written"
    refused(
        run("--zookeeper", zookeeper.address, "node", "secondary", "hv1", "--format", "json"),
        "no other coordinator is ready to take over from hv1",
    )
    assert not zk.exists(schema.HANDOVER)
    assert json.loads(zk.get(schema.node_state("hv1"))[0])["coordinator"] == "primary"


@pytest.mark.parametrize("timeout", ["inf", "nan", "1e308", "0"])
def test_timeouts_that_never_end_or_overflow_are_usage_errors(zookeeper, timeout):
    result = run("--zookeeper", zookeeper.address, "--timeout", timeout, "node", "list")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "is not a number of seconds from 0.1 to 3600" in result.stderr


def test_wait_timeout_nan_is_a_usage_error(zookeeper):
    result = run("--zookeeper", zookeeper.address, "vm", "start", "vm1", "--wait", "--wait-timeout", "nan")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "'nan' is not a number of seconds from 0.1 to 86400" in result.stderr


def test_output_that_cannot_be_written_is_one_line(zk, zookeeper, cluster):
    cluster(("hv1",))
    environment = {k: v for k, v in os.environ.items() if k not in ("PVC_ZOOKEEPER", "PVCD_CONFIG_FILE")}
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [bin_path("pvc"), "--zookeeper", zookeeper.address, "node", "list"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env=environment,
        )
    assert result.returncode == 1 and result.stderr == "pvc: No space left on device\n"


def test_a_stopped_vm_cannot_move_to_a_node_smaller_than_it(zk, zookeeper, two_nodes):
    """A stopped VM needs no free memory to change node, but the node must be able to run it one day."""
    store = Store(zookeeper.address, security=zookeeper.security())
    store.start()
    try:
        vms.define(store, records.new_record(records.parse_domain_xml(domain("huge", 64 * 1024)), "hv1"))
    finally:
        store.stop()
    stored = tree(zk, schema.VMS)
    for command in ("move", "migrate"):
        refused(
            run("--zookeeper", zookeeper.address, "vm", command, "huge", "--target", "hv2"),
            "VM huge needs 65536 MiB of memory; node hv2 has only 16384 MiB in total",
        )
    assert tree(zk, schema.VMS) == stored
    small = run("--zookeeper", zookeeper.address, "vm", "define", "-", "--node", "hv1", stdin=domain("small").encode())
    assert small.returncode == 0, small.stderr
    moved = run("--zookeeper", zookeeper.address, "vm", "move", "small", "--target", "hv2", "--format", "json")
    assert moved.returncode == 0 and json.loads(moved.stdout)["node"] == "hv2", moved.stderr
