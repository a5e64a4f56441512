"""IPMI over UDP: pvcd's pyghmi driver against the chassis simulator's BMC.

The chassis is the local cluster's simulated machine: its BMC's power-off
really kills the node's pvcd, and its power-on starts it again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml

from helpers import node_document, wait_for
from pvcd.devcluster import chassis
from pvcd.devcluster.processes import free_port, pid_alive, stop_pid
from pvcd.fencing.ipmi import SENDING_OFF, IpmiDriver, IpmiError, IpmiTarget


@pytest.fixture
def machine(tmp_path, zookeeper, zk):
    relay_port, bmc_port = free_port(), free_port()
    document = node_document(tmp_path, "hv1", relay_port, zookeeper=zookeeper)
    document["pvc"]["system"]["fencing"]["ipmi"]["port"] = bmc_port
    node_dir = tmp_path / "nodes" / "hv1"
    config = node_dir / "pvcd.yaml"
    config.write_text(yaml.safe_dump(document))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pvcd.devcluster.chassis",
            "--name",
            "hv1",
            "--node-dir",
            str(node_dir),
            "--config",
            str(config),
            "--log",
            str(node_dir / "pvcd.log"),
            "--zookeeper",
            zookeeper.address,
            "--relay-port",
            str(relay_port),
            "--bmc-port",
            str(bmc_port),
        ],
        stdout=open(node_dir / "chassis.log", "ab"),
        stderr=subprocess.STDOUT,
    )
    try:  # stopped by its PID however the test ends, also when the set-up fails
        wait_for(lambda: (chassis.read_state(node_dir) or {}).get("power") == "on", 20, what="chassis power on")
        ipmi = document["pvc"]["system"]["fencing"]["ipmi"]
        target = IpmiTarget("127.0.0.1", bmc_port, ipmi["user"], ipmi["pass"])
        wait_for(lambda: _answers(target), 30, interval=0.5, what="the chassis' BMC to answer IPMI")
        yield node_dir, target
    finally:
        stop_pid(process.pid, timeout=15)
        process.wait()


def _answers(target: IpmiTarget) -> bool:
    try:
        return IpmiDriver().power_state(target) in ("on", "off")
    except IpmiError:
        return False


def keepalive_counter(zk):
    if not zk.exists("/pvc/nodes/hv1/keepalive"):
        return 0
    return json.loads(zk.get("/pvc/nodes/hv1/keepalive")[0]).get("counter", 0)


def test_node_reaches_zookeeper_through_the_chassis_link(machine, zk):
    wait_for(lambda: keepalive_counter(zk) >= 1, 20, what="a keepalive through the relay")


def test_node_checks_its_own_bmc_at_start_and_publishes_it_for_the_fencer(machine, zk):
    node_dir, target = machine
    log = node_dir / "pvcd.log"
    wait_for(
        lambda: f"BMC of node hv1 at {target} answers (power on)" in log.read_text(), 20, what="the BMC self-check"
    )
    published = json.loads(zk.get("/pvc/nodes/hv1/ipmi")[0])
    assert published == {"host": "127.0.0.1", "port": target.port, "user": target.user, "password": target.password}
    assert target.password not in log.read_text(), "the BMC password appeared in the node's log"


def test_fence_confirms_power_off_and_restarts_the_node(machine, zk):
    node_dir, target = machine
    driver = IpmiDriver(call_timeout=5, off_wait=5)
    assert driver.power_state(target) == "on"
    first_pid = chassis.read_state(node_dir)["pvcd_pid"]
    report = driver.fence(target)
    assert report.verdict.outcome == "confirmed", report
    assert not pid_alive(first_pid), "power off did not kill the node's pvcd"
    assert chassis.read_state(node_dir)["power"] == "off"
    driver.power_on(target)

    def powered_on():
        s = chassis.read_state(node_dir)
        return s if s["power"] == "on" and s["pvcd_pid"] else None

    state = wait_for(powered_on, 10, what="power on")
    assert state["pvcd_pid"] != first_pid and pid_alive(state["pvcd_pid"])


def test_wrong_password_is_a_failed_fence_and_leaks_nothing(machine):
    node_dir, target = machine
    wrong = IpmiTarget(target.host, target.port, target.user, "not-the-password")
    driver = IpmiDriver(call_timeout=5, off_wait=2)
    with pytest.raises(IpmiError) as error:
        driver.power_state(wrong)
    assert "not-the-password" not in str(error.value)
    report = driver.fence(wrong)
    assert report.verdict.outcome == "failed"
    assert "not-the-password" not in repr(report) and "not-the-password" not in repr(wrong)
    assert chassis.read_state(node_dir)["power"] == "on"


def test_bmc_that_does_not_answer_is_a_failed_fence(machine):
    node_dir, target = machine
    chassis.request(node_dir, "bmc-down")
    report = IpmiDriver(call_timeout=2, off_wait=2).fence(target)
    assert report.verdict.outcome == "failed"
    assert "no answer" in report.verdict.reason
    assert chassis.read_state(node_dir)["power"] == "on"
    chassis.request(node_dir, "bmc-up")
    assert IpmiDriver(call_timeout=5).power_state(target) == "on"


def test_second_fence_with_the_bmc_down_fails_fast_instead_of_trusting_the_old_session(machine):
    node_dir, target = machine
    driver = IpmiDriver()
    assert driver.fence(target).verdict.outcome == "confirmed"
    driver.power_on(target)
    wait_for(lambda: chassis.read_state(node_dir)["power"] == "on", 10, what="power on")
    chassis.request(node_dir, "bmc-down")
    started = time.monotonic()
    report = driver.fence(target)
    took = time.monotonic() - started
    assert report.verdict.outcome == "failed", report
    assert took < driver.call_timeout + 1, f"the second fence took {took:.1f}s"
    assert chassis.read_state(node_dir)["power"] == "on"


def test_cut_link_stops_keepalives_and_heal_restores_them(machine, zk):
    node_dir, _ = machine
    wait_for(lambda: keepalive_counter(zk) >= 1, 20, what="a first keepalive")
    chassis.request(node_dir, "cut")
    import time

    time.sleep(1.5)
    frozen = keepalive_counter(zk)
    time.sleep(3)
    assert keepalive_counter(zk) == frozen, "keepalives crossed a cut link"
    assert pid_alive(chassis.read_state(node_dir)["pvcd_pid"]), "the node must keep running while cut"
    chassis.request(node_dir, "heal")
    wait_for(lambda: keepalive_counter(zk) > frozen, 30, what="keepalives after heal")


def _stuck_worker(tmp_path, says_off: bool) -> tuple[str, ...]:
    """A stand-in for the IPMI worker that hangs the way a wedged pyghmi call would."""
    script = tmp_path / "stuck_worker.py"
    script.write_text(
        "import sys, threading\n"
        "sys.stdin.read()\n"
        + (f"print({SENDING_OFF!r}, flush=True)\n" if says_off else "")
        + "threading.Event().wait()\n"
    )
    return (sys.executable, str(script))


def test_a_worker_stuck_after_sending_off_is_an_ambiguous_fence(tmp_path):
    target = IpmiTarget("127.0.0.1", 9, "admin", "secret-password")
    driver = IpmiDriver(call_timeout=0.1, off_wait=0.1, worker=_stuck_worker(tmp_path, says_off=True))
    report = driver.fence(target)
    assert report.verdict.outcome == "ambiguous", report
    assert "no answer within" in report.steps[0] and "secret-password" not in repr(report)


def test_a_worker_stuck_before_sending_off_is_a_failed_fence(tmp_path):
    target = IpmiTarget("127.0.0.1", 9, "admin", "secret-password")
    driver = IpmiDriver(call_timeout=0.1, off_wait=0.1, worker=_stuck_worker(tmp_path, says_off=False))
    assert driver.fence(target).verdict.outcome == "failed"
    with pytest.raises(IpmiError, match="no answer within"):
        driver.power_state(target)
