"""The whole local cluster: `pvc-devcluster` processes driven as an operator would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from harness import Cluster

from helpers import bin_path, wait_for
from pvcd.devcluster.processes import pid_alive

INTERVAL = 1


def run(*args: str, timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, cwd=cwd)


@pytest.fixture
def cluster(make_cluster) -> Cluster:
    """Three nodes with fencing and watchdogs off: these tests watch dead nodes stay dead."""
    return make_cluster(3, "--no-watchdog", fence_intervals=0)


def process_state(pid: int) -> str:
    return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]


def test_three_nodes_run_and_a_killed_node_goes_late(cluster: Cluster):
    assert [n["name"] for n in cluster.record["nodes"]] == ["hv1", "hv2", "hv3"]
    for node in cluster.record["nodes"]:
        assert Path(node["config"]).exists() and Path(node["log"]).exists()
        assert pid_alive(node["pid"])
    nodes = wait_for(
        lambda: (lambda ns: ns if [n["daemon_state"] for n in ns.values()] == ["run"] * 3 else None)(cluster.nodes()),
        30,
        what="all three nodes in run",
    )
    assert list(nodes) == ["hv1", "hv2", "hv3"]
    # The three coordinators elect one primary (see tests/integration/test_election.py).
    wait_for(
        lambda: (
            sorted(n["coordinator_state"] for n in cluster.nodes().values()) == ["primary", "secondary", "secondary"]
        ),
        15,
        what="one primary and two secondaries",
    )

    os.kill(cluster.node_record("hv2")["pid"], signal.SIGKILL)
    wait_for(lambda: cluster.nodes()["hv2"]["keepalive"]["late"], 10, what="hv2 late")
    ages = []
    for _ in range(3):
        nodes = cluster.nodes()
        ages.append(nodes["hv2"]["keepalive"]["age_seconds"])
        for name in ("hv1", "hv3"):
            assert nodes[name]["keepalive"]["age_seconds"] < 2 * INTERVAL, nodes[name]
        time.sleep(INTERVAL)
    assert ages[0] > 2 * INTERVAL
    assert ages[-1] > ages[0], f"age of the killed node did not grow: {ages}"
    # The killed node never wrote a clean stop: it still claims run, with a late keepalive.
    assert nodes["hv2"]["daemon_state"] == "run"

    summary = cluster.json("cluster", "status")
    assert summary["late_keepalives"] == ["hv2"]
    assert summary["healthy"] is False


def test_status_and_down_stop_everything(cluster: Cluster):
    status = cluster.devcluster("status", "--format", "json")
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["zookeeper"]["running"] is True
    assert all(n["running"] for n in report["nodes"])
    machines = [n["chassis"] for n in report["nodes"]]
    assert all(m["power"] == "on" and pid_alive(m["libvirtd_pid"]) for m in machines)
    assert {m["watchdog"] for m in machines} == {"none"}

    down = cluster.down()
    assert down.returncode == 0, down.stderr
    pids = (
        [n["pid"] for n in cluster.record["nodes"]]
        + [cluster.record["zookeeper_pid"]]
        + [pid for m in machines for pid in (m["chassis_pid"], m["libvirtd_pid"])]
    )
    assert not any(pid_alive(pid) for pid in pids)
    again = json.loads(cluster.devcluster("status", "--format", "json").stdout)
    assert again["zookeeper"]["running"] is False
    assert not any(n["running"] for n in again["nodes"])
    # Their hosts were shut down: the journals end with a power-off.
    assert all(cluster.journal(name)[-1]["event"] == "power-off" for name in ("hv1", "hv2", "hv3"))


def test_foreground_launcher_stops_everything_on_ctrl_c(tmp_path: Path):
    workdir = tmp_path / "fg"
    launcher = subprocess.Popen(
        [bin_path("pvc-devcluster"), "up", "--nodes", "2", "--workdir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        assert launcher.stdout is not None
        for line in launcher.stdout:
            lines.append(line)
            if "Press Ctrl-C" in line:
                break
        assert any("Press Ctrl-C" in line for line in lines), "".join(lines)
        record = json.loads((workdir / "cluster.json").read_text())
        libvirtds = [
            json.loads((Path(n["directory"]) / "chassis.json").read_text())["libvirtd_pid"] for n in record["nodes"]
        ]
        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(timeout=30) == 0
        pids = [n["pid"] for n in record["nodes"]] + [record["zookeeper_pid"]] + libvirtds
        assert not any(pid_alive(pid) for pid in pids)
    finally:
        if launcher.poll() is None:
            launcher.kill()
            run(bin_path("pvc-devcluster"), "down", "--workdir", str(workdir))


def test_second_up_in_the_same_workdir_is_refused(cluster: Cluster):
    result = run(bin_path("pvc-devcluster"), "up", "--nodes", "1", "--workdir", str(cluster.workdir), "--detach")
    assert result.returncode == 1
    assert result.stderr.strip().startswith("pvc-devcluster: a local cluster is already running")
    assert "Traceback" not in result.stderr


def test_fault_injection(cluster: Cluster):
    wait_for(lambda: all(n["daemon_state"] == "run" for n in cluster.nodes().values()), 30, what="nodes in run")

    # cut: the node keeps running but its keepalives stop reaching ZooKeeper; heal restores them.
    cluster.fault("hv3", "cut")
    wait_for(lambda: cluster.nodes()["hv3"]["keepalive"]["late"], 10, what="hv3 late while cut")
    assert pid_alive(cluster.chassis("hv3")["pvcd_pid"])
    cluster.fault("hv3", "heal")
    wait_for(lambda: not cluster.nodes()["hv3"]["keepalive"]["late"], 30, what="hv3's keepalives after heal")

    # daemon-hang/daemon-resume: SIGSTOP then SIGCONT of the node's pvcd alone.
    pid = cluster.chassis("hv2")["pvcd_pid"]
    cluster.fault("hv2", "daemon-hang")
    assert process_state(pid) == "T"
    cluster.fault("hv2", "daemon-resume")
    assert process_state(pid) != "T"

    # power-off through the chassis kills the node's pvcd and its libvirtd; power-on starts new ones.
    libvirtd = cluster.chassis("hv2")["libvirtd_pid"]
    cluster.fault("hv2", "power-off")
    assert not pid_alive(pid) and not pid_alive(libvirtd) and cluster.chassis("hv2")["power"] == "off"
    cluster.fault("hv2", "power-on")
    machine = wait_for(
        lambda: (lambda m: m if m["pvcd_pid"] else None)(cluster.chassis("hv2")), 10, what="hv2 powered on"
    )
    assert machine["pvcd_pid"] != pid and machine["libvirtd_pid"] != libvirtd and pid_alive(machine["libvirtd_pid"])

    # daemon-crash: SIGKILL of pvcd while the host (libvirtd) stays on.
    machine = cluster.chassis("hv1")
    cluster.fault("hv1", "daemon-crash")
    wait_for(lambda: not pid_alive(machine["pvcd_pid"]), 5, what="hv1's pvcd gone")
    after = cluster.chassis("hv1")
    assert after["power"] == "on" and after["libvirtd_pid"] == machine["libvirtd_pid"]
    assert pid_alive(machine["libvirtd_pid"])

    # crash: a power loss; the host stays off until powered on through the BMC.
    machine = cluster.chassis("hv3")
    cluster.fault("hv3", "crash")
    after = cluster.chassis("hv3")
    assert after["power"] == "off" and after["pvcd_pid"] is None and after["libvirtd_pid"] is None
    assert not pid_alive(machine["pvcd_pid"]) and not pid_alive(machine["libvirtd_pid"])
    assert cluster.journal("hv3")[-1]["event"] == "power-off" and cluster.journal("hv3")[-1]["via"] == "power-loss"

    unknown = run(bin_path("pvc-devcluster"), "fault", "--workdir", str(cluster.workdir), "hv9", "crash")
    assert unknown.returncode == 1 and unknown.stderr == f"pvc-devcluster: no node named 'hv9' in {cluster.workdir}\n"


def test_a_crashed_daemon_leaves_its_vms_running_and_a_power_loss_kills_them(cluster: Cluster):
    vms = cluster.define_vms("hv2", 3, "keep")
    cluster.fault("hv2", "daemon-crash")
    wait_for(lambda: cluster.nodes()["hv2"]["keepalive"]["late"], 10, what="hv2 late after its pvcd died")
    # The host lives on: its libvirtd still runs the VMs, and the journal has no stop.
    assert cluster.domains("hv2") == vms
    assert not any(e["event"] == "stop" for e in cluster.journal("hv2"))
    report = cluster.assert_clean()
    assert all(report["running"][vm] == ["hv2"] for vm in vms)

    # A power loss takes libvirtd, and every VM with it: the journal records each stop.
    libvirtd = cluster.chassis("hv2")["libvirtd_pid"]
    cluster.fault("hv2", "crash")
    assert not pid_alive(libvirtd)
    stops = [e for e in cluster.journal("hv2") if e["event"] == "stop"]
    assert sorted(e["vm"] for e in stops) == vms and {e["via"] for e in stops} == {"power-loss"}
    report = cluster.check()
    assert report["overlaps"] == []
    assert report["not_running_once"] == [{"vm": vm, "hosts": []} for vm in vms]
    assert cluster.devcluster("check").returncode == 1


class Petter(threading.Thread):
    """A watchdog writer, as pvcd is one: pets every 0.2 s until told to stop."""

    def __init__(self, device: str) -> None:
        super().__init__(daemon=True)
        self.fd = os.open(device, os.O_WRONLY)
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.2):
            os.write(self.fd, b"\0")

    def finish(self, last: bytes) -> None:
        self.halt.set()
        self.join(5)
        os.write(self.fd, last)
        os.close(self.fd)


def test_the_watchdog_resets_a_host_that_stops_petting_it_and_not_one_that_disarmed_it(make_cluster):
    """Fencing off, so only the watchdog acts; pvcd is killed first so that this test is its only writer."""
    cluster = make_cluster(2, "--watchdog-timeout", "3", fence_intervals=0)
    vms = cluster.define_vms("hv2", 2, "dog")
    machine = cluster.chassis("hv2")
    assert (machine["watchdog_device"], machine["watchdog_timeout"]) == (
        str(Path(cluster.node_record("hv2")["directory"]) / "watchdog"),
        3,
    )
    cluster.fault("hv2", "daemon-crash")
    petter = Petter(machine["watchdog_device"])
    petter.start()
    wait_for(lambda: cluster.chassis("hv2")["watchdog"] == "armed", 5, what="the watchdog armed")

    # Magic close: "V" disarms it; nothing happens within the timeout and a margin.
    petter.finish(b"V")
    wait_for(lambda: cluster.chassis("hv2")["watchdog"] == "disarmed", 5, what="the watchdog disarmed")
    disarmed_at = cluster.journal("hv2")[-1]["t"]
    with pytest.raises(pytest.fail.Exception, match="a watchdog reset"):
        wait_for(
            lambda: any(e["event"] == "watchdog-reset" for e in cluster.journal("hv2")), 3 + 2, what="a watchdog reset"
        )
    assert cluster.domains("hv2") == vms

    # Armed again, then no more pets: the chassis resets the host within the timeout (and its check tick).
    writer = os.open(machine["watchdog_device"], os.O_WRONLY)
    os.write(writer, b"\0")
    os.close(writer)
    reset = wait_for(
        lambda: next((e for e in cluster.journal("hv2") if e["event"] == "watchdog-reset"), None),
        3 + 3,
        what="the watchdog reset",
    )
    assert reset["t"] > disarmed_at
    # The reset is journaled first, the stops and the power-off as the chassis carries them out.
    wait_for(
        lambda: any(e["event"] == "power-off" and e["t"] >= reset["t"] for e in cluster.journal("hv2")),
        10,
        what="the power-off of the reset journaled",
    )
    events = [(e["event"], e.get("vm"), e.get("via")) for e in cluster.journal("hv2") if e["t"] >= reset["t"]]
    assert events[: len(vms) + 2] == [("watchdog-reset", None, None)] + [("stop", vm, "watchdog") for vm in vms] + [
        ("power-off", None, "watchdog")
    ]
    after = wait_for(
        lambda: (lambda m: m if m["pvcd_pid"] and m["power"] == "on" else None)(cluster.chassis("hv2")),
        10,
        what="hv2 powered on again",
    )
    assert after["watchdog_resets"] == 1
    assert after["libvirtd_pid"] != machine["libvirtd_pid"] and not pid_alive(machine["libvirtd_pid"])
    assert (
        "Watchdog expired: not petted for 3s; resetting the host"
        in (Path(cluster.node_record("hv2")["directory"]) / "chassis.log").read_text()
    )


def test_a_pvcd_folder_in_the_working_directory_does_not_shadow_the_package(make_cluster, tmp_path: Path):
    bogus = tmp_path / "cwd"
    (bogus / "pvcd").mkdir(parents=True)
    (bogus / "pvcd" / "__init__.py").write_text("raise ImportError('a bogus pvcd package in the working directory')\n")
    cluster = make_cluster(1, "--no-watchdog", fence_intervals=0, cwd=bogus)
    assert cluster.nodes()["hv1"]["daemon_state"] == "run"
    assert "bogus" not in cluster.log("hv1")


def test_the_local_zookeeper_wants_tls_and_credentials_and_pvc_devcluster_env_gives_them(cluster: Cluster):
    """Issue 14: the nodes authenticate as their role over mutual TLS; `pvc-devcluster env` is all `pvc` needs;
    a client without credentials reads nothing."""
    from kazoo.exceptions import NoAuthError

    from pvcd.zk import schema

    record = cluster.record
    zookeeper_dir = Path(record["zookeeper_dir"])
    assert record["zookeeper_credentials"] == str(zookeeper_dir / "credentials" / "operator")
    assert "clientPort=" not in (zookeeper_dir / "zoo.cfg").read_text().replace("secureClientPort=", "")
    for node in record["nodes"]:
        keys = yaml.safe_load(Path(node["config"]).read_text())["pvc"]["cluster"]["zookeeper"]
        assert keys["credentials_file"] == str(zookeeper_dir / "credentials" / "coordinator")
        assert keys["tls"] == record["zookeeper_tls"]
        assert set(keys["acl"]) == {"coordinator", "node", "operator"}

    exports = cluster.devcluster("env")
    assert exports.returncode == 0, exports.stderr
    bare = {k: v for k, v in os.environ.items() if not k.startswith(("PVC_", "PVCD_"))}
    listed = subprocess.run(
        ["sh", "-c", f'{exports.stdout}\n"$1" node list --format json', "sh", bin_path("pvc")],
        capture_output=True,
        text=True,
        timeout=60,
        env=bare,
    )
    assert listed.returncode == 0, listed.stderr
    assert [n["name"] for n in json.loads(listed.stdout)] == ["hv1", "hv2", "hv3"]
    without_tls = run(bin_path("pvc"), "--zookeeper", record["zookeeper"], "--timeout", "2", "node", "list")
    assert without_tls.returncode == 1 and "cannot reach ZooKeeper" in without_tls.stderr

    anonymous = cluster.kazoo(role=None)  # TLS with the client certificate, but no credentials
    anonymous.start(timeout=10)
    try:
        with pytest.raises(NoAuthError):
            anonymous.get_children(schema.ROOT)
        with pytest.raises(NoAuthError):
            anonymous.create("/intruder", b"")
    finally:
        anonymous.stop()
        anonymous.close()
