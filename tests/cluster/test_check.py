"""`pvc-devcluster check` on crafted journal files and VM records in a real ZooKeeper.

No chassis runs here: the journals are written by hand, as a chassis would
write them, so the double run and the missing VM are known exactly.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from helpers import bin_path
from pvcd.cluster.vm_records import VmRecord, VmState
from pvcd.devcluster import cluster, layout
from pvcd.devcluster.zookeeper import ZooKeeperServer
from pvcd.zk import vms
from pvcd.zk.store import Store


def entry(t: float, host: str, event: str, vm: str | None = None) -> str:
    value = {"t": t, "wall": "2024-06-01T10:00:00+00:00", "host": host, "event": event, "via": "event"}
    if vm is not None:
        value["vm"] = vm
    return json.dumps(value) + "\n"


def write_cluster(
    workdir: Path, zookeeper: ZooKeeperServer, journals: dict[str, str], address: str | None = None
) -> None:
    """A cluster record for `zookeeper` (at `address` when given), with the operator's credentials and TLS files."""
    tls = zookeeper.tls
    assert tls.cert_file is not None and tls.key_file is not None
    record = cluster.ClusterRecord(
        str(workdir),
        address or zookeeper.address,
        None,
        str(workdir / "zookeeper"),
        1,
        3,
        zookeeper_credentials=str(zookeeper.credentials_file("operator")),
        zookeeper_tls={"ca_file": tls.ca_file, "cert_file": tls.cert_file, "key_file": tls.key_file},
    )
    for name, text in journals.items():
        paths = layout.node_paths(workdir, name)
        paths.directory.mkdir(parents=True)
        paths.journal.write_text(text)
        record.nodes.append(cluster.NodeRecord.laid_out(name, paths, bmc_port=0, relay_port=0))
    cluster.save(record)


def define(zookeeper: ZooKeeperServer, names: list[str]) -> None:
    store = Store(zookeeper.address, security=zookeeper.security())
    store.start()
    try:
        for name in names:
            vms.define(
                store,
                VmRecord(
                    name=name,
                    uuid=str(uuid.uuid4()),
                    xml=f"<domain><name>{name}</name></domain>",
                    memory_mib=128,
                    vcpus=1,
                    state=VmState.START,
                    node="hv1",
                ),
            )
    finally:
        store.stop()


def check(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [bin_path("pvc-devcluster"), "check", "--workdir", str(workdir), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def records(zookeeper: ZooKeeperServer, zk):
    """vm1, vm2 and vm3 should run (desired state `start`) in an empty /pvc."""
    define(zookeeper, ["vm1", "vm2", "vm3"])
    return zookeeper


def test_a_double_run_and_a_missing_vm_are_reported(tmp_path: Path, records: ZooKeeperServer):
    # vm1 moves from hv1 to hv2 but starts there at 15, five seconds before hv1 stops it; vm3 runs nowhere.
    write_cluster(
        tmp_path,
        records,
        {
            "hv1": entry(9, "hv1", "power-on") + entry(10, "hv1", "start", "vm1") + entry(20, "hv1", "stop", "vm1"),
            "hv2": entry(9, "hv2", "power-on") + entry(12, "hv2", "start", "vm2") + entry(15, "hv2", "start", "vm1"),
        },
    )
    result = check(tmp_path, "--format", "json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["clean"] is False
    assert report["overlaps"] == [
        {"vm": "vm1", "hosts": ["hv1", "hv2"], "start": 15.0, "end": 20.0, "ongoing": False, "seconds": 5.0}
    ]
    assert report["not_running_once"] == [{"vm": "vm3", "hosts": []}]
    assert report["running"] == {"vm1": ["hv2"], "vm2": ["hv2"]}
    assert report["should_run"] == ["vm1", "vm2", "vm3"]

    pretty = check(tmp_path)
    assert pretty.returncode == 1
    assert "vm1 on hv1 and hv2 from +6.000s to +11.000s (5.000s)" in pretty.stdout
    assert "vm3: on no host" in pretty.stdout and pretty.stdout.rstrip().endswith("NOT CLEAN")


def test_a_clean_history_exits_0(tmp_path: Path, records: ZooKeeperServer):
    write_cluster(
        tmp_path,
        records,
        {
            "hv1": entry(10, "hv1", "start", "vm1")
            + entry(11, "hv1", "start", "vm3")
            + entry(20, "hv1", "stop", "vm1"),
            "hv2": entry(12, "hv2", "start", "vm2") + entry(20.5, "hv2", "start", "vm1"),
        },
    )
    result = check(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.rstrip().endswith("Clean: no VM on two hosts, every VM that should run runs once")


def test_errors_are_one_line_and_exit_2(tmp_path: Path, zookeeper: ZooKeeperServer):
    missing = check(tmp_path / "nothing")
    assert missing.returncode == 2
    assert (
        missing.stderr == f"pvc-devcluster: no local cluster in {tmp_path / 'nothing'} "
        f"({tmp_path / 'nothing' / 'cluster.json'} does not exist)\n"
    )
    damaged = tmp_path / "damaged"
    write_cluster(damaged, zookeeper, {"hv1": entry(1, "hv1", "start", "vm1") + "{oops\n"})
    result = check(damaged)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("pvc-devcluster: damaged journal: ")
    assert "journal.jsonl:2: not JSON" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    unreachable = tmp_path / "unreachable"
    write_cluster(unreachable, zookeeper, {"hv1": entry(1, "hv1", "start", "vm1")}, address="127.0.0.1:9")
    result = check(unreachable)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("pvc-devcluster: cannot read the VM records from ZooKeeper at 127.0.0.1:9")
