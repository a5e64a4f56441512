"""The whole local cluster: `pvc-devcluster` processes driven as an operator would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers import bin_path, wait_for
from pvcd.devcluster.processes import pid_alive

INTERVAL = 1


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)


def node_list(zookeeper: str) -> list[dict]:
    result = run(bin_path("pvc"), "--zookeeper", zookeeper, "node", "list", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture
def cluster(tmp_path: Path):
    """Three nodes with fencing off: these tests watch dead nodes stay dead."""
    workdir = tmp_path / "cluster"
    result = run(bin_path("pvc-devcluster"), "up", "--nodes", "3", "--workdir", str(workdir),
                 "--keepalive-interval", str(INTERVAL), "--fence-intervals", "0", "--detach", timeout=120)
    assert result.returncode == 0, result.stderr
    record = json.loads((workdir / "cluster.json").read_text())
    yield workdir, record
    run(bin_path("pvc-devcluster"), "down", "--workdir", str(workdir), timeout=60)


def test_three_nodes_run_and_a_killed_node_goes_late(cluster):
    workdir, record = cluster
    assert [n["name"] for n in record["nodes"]] == ["hv1", "hv2", "hv3"]
    for node in record["nodes"]:
        assert Path(node["config"]).exists() and Path(node["log"]).exists()
        assert pid_alive(node["pid"])
    nodes = wait_for(
        lambda: (lambda ns: ns if [n["daemon_state"] for n in ns] == ["run"] * 3 else None)(node_list(record["zookeeper"])),
        30, what="all three nodes in run",
    )
    assert [n["name"] for n in nodes] == ["hv1", "hv2", "hv3"]
    # The three coordinators elect one primary (see tests/integration/test_election.py).
    nodes = wait_for(
        lambda: (lambda ns: ns if sorted(n["coordinator_state"] for n in ns) == ["primary", "secondary", "secondary"]
                 else None)(node_list(record["zookeeper"])),
        15, what="one primary and two secondaries",
    )

    victim = record["nodes"][1]
    os.kill(victim["pid"], signal.SIGKILL)
    time.sleep(4 * INTERVAL)
    ages = {}
    for _ in range(3):
        nodes = {n["name"]: n for n in node_list(record["zookeeper"])}
        ages.setdefault("hv2", []).append(nodes["hv2"]["keepalive"]["age_seconds"])
        for name in ("hv1", "hv3"):
            assert nodes[name]["keepalive"]["age_seconds"] < 2 * INTERVAL, nodes[name]
        time.sleep(INTERVAL)
    assert ages["hv2"][0] > 2 * INTERVAL
    assert ages["hv2"][-1] > ages["hv2"][0], f"age of the killed node did not grow: {ages['hv2']}"
    assert nodes["hv2"]["keepalive"]["late"] is True
    # The killed node never wrote a clean stop: it still claims run, with a late keepalive.
    assert nodes["hv2"]["daemon_state"] == "run"

    status = run(bin_path("pvc"), "--zookeeper", record["zookeeper"], "cluster", "status", "--format", "json")
    summary = json.loads(status.stdout)
    assert summary["late_keepalives"] == ["hv2"]
    assert summary["healthy"] is False


def test_status_and_down_stop_everything(cluster):
    workdir, record = cluster
    status = run(bin_path("pvc-devcluster"), "status", "--workdir", str(workdir), "--format", "json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["zookeeper"]["running"] is True
    assert all(n["running"] for n in report["nodes"])

    down = run(bin_path("pvc-devcluster"), "down", "--workdir", str(workdir))
    assert down.returncode == 0, down.stderr
    pids = [n["pid"] for n in record["nodes"]] + [record["zookeeper_pid"]]
    assert not any(pid_alive(pid) for pid in pids)
    again = json.loads(run(bin_path("pvc-devcluster"), "status", "--workdir", str(workdir), "--format", "json").stdout)
    assert again["zookeeper"]["running"] is False
    assert not any(n["running"] for n in again["nodes"])


def test_foreground_launcher_stops_everything_on_ctrl_c(tmp_path: Path):
    workdir = tmp_path / "fg"
    launcher = subprocess.Popen(
        [bin_path("pvc-devcluster"), "up", "--nodes", "2", "--workdir", str(workdir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        lines = []
        for line in launcher.stdout:
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        assert any("Press Ctrl-C" in line for line in lines), "".join(lines)
        record = json.loads((workdir / "cluster.json").read_text())
        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(timeout=30) == 0
        pids = [n["pid"] for n in record["nodes"]] + [record["zookeeper_pid"]]
        assert not any(pid_alive(pid) for pid in pids)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            run(bin_path("pvc-devcluster"), "down", "--workdir", str(workdir))


def test_second_up_in_the_same_workdir_is_refused(cluster):
    workdir, _ = cluster
    result = run(bin_path("pvc-devcluster"), "up", "--nodes", "1", "--workdir", str(workdir), "--detach")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("pvc-devcluster: a local cluster is already running")
    assert "Traceback" not in result.stderr


def fault(workdir: Path, node: str, kind: str) -> subprocess.CompletedProcess[str]:
    return run(bin_path("pvc-devcluster"), "fault", "--workdir", str(workdir), node, kind)


def status(workdir: Path) -> dict:
    return {n["name"]: n for n in json.loads(
        run(bin_path("pvc-devcluster"), "status", "--workdir", str(workdir), "--format", "json").stdout)["nodes"]}


def test_fault_injection(cluster):
    workdir, record = cluster
    zookeeper = record["zookeeper"]
    wait_for(lambda: all(n["daemon_state"] == "run" for n in node_list(zookeeper)), 30, what="nodes in run")

    # cut: the node keeps running but its keepalives stop reaching ZooKeeper; heal restores them.
    assert fault(workdir, "hv3", "cut").returncode == 0
    time.sleep(4 * INTERVAL)
    assert status(workdir)["hv3"]["running"] is True
    assert {n["name"]: n for n in node_list(zookeeper)}["hv3"]["keepalive"]["late"] is True
    assert fault(workdir, "hv3", "heal").returncode == 0
    wait_for(lambda: not {n["name"]: n for n in node_list(zookeeper)}["hv3"]["keepalive"]["late"], 30,
             what="hv3's keepalives after heal")

    # hang/resume: SIGSTOP then SIGCONT of the node's pvcd.
    pid = status(workdir)["hv2"]["pid"]
    assert fault(workdir, "hv2", "hang").returncode == 0
    assert open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "T"
    assert fault(workdir, "hv2", "resume").returncode == 0

    # power-off through the chassis kills the node's pvcd; power-on starts a new one.
    assert fault(workdir, "hv2", "power-off").returncode == 0
    assert not pid_alive(pid) and status(workdir)["hv2"]["chassis"]["power"] == "off"
    assert fault(workdir, "hv2", "power-on").returncode == 0
    new_pid = wait_for(lambda: status(workdir)["hv2"]["pid"], 10, what="hv2 powered on")
    assert new_pid != pid

    # crash: SIGKILL of pvcd while the machine stays powered on.
    assert fault(workdir, "hv1", "crash").returncode == 0
    after = status(workdir)["hv1"]
    assert after["running"] is False and after["chassis"]["power"] == "on"

    unknown = fault(workdir, "hv9", "crash")
    assert unknown.returncode == 1 and unknown.stderr == f"pvc-devcluster: no node named 'hv9' in {workdir}\n"
