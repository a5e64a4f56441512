"""The node daemon against a real ZooKeeper and libvirt's test driver."""

from __future__ import annotations

import json
import signal
import threading
import time

import pytest

from helpers import wait_for
from pvcd.cluster.values import DomainFigures, HostMemory
from pvcd.daemon import NodeDaemon
from pvcd.keepalive import DOMAINS, LOAD, MEMORY
from pvcd.zk import schema

VM_XML = """<domain type='test'>
  <name>{name}</name>
  <memory unit='MiB'>{memory}</memory>
  <vcpu>{vcpus}</vcpu>
  <os><type>hvm</type></os>
</domain>"""


def read(zk, path):
    data, stat = zk.get(path)
    return json.loads(data), stat


def counter(zk, name="hv1"):
    if not zk.exists(schema.node_keepalive(name)):
        return 0
    return read(zk, schema.node_keepalive(name))[0].get("counter", 0)


@pytest.fixture
def running_daemon(make_config):
    """A NodeDaemon in a thread of this process, so the test can reach its libvirt host."""
    started = []

    def start(config=None, collectors=None):
        daemon = NodeDaemon(config or make_config(), collectors=collectors)
        thread = threading.Thread(target=daemon.run, daemon=True)
        thread.start()
        started.append((daemon, thread))
        return daemon

    yield start
    for daemon, thread in started:
        daemon.stop_event.set()
        thread.join(10)


def test_registration_and_keepalive_contents(zk, running_daemon):
    daemon = running_daemon()
    wait_for(lambda: counter(zk) >= 1, 10, what="first keepalive")

    info, _ = read(zk, schema.node("hv1"))
    assert info["name"] == "hv1"
    assert info["coordinator"] is True
    assert info["hypervisor"].startswith("test:///")
    # The only coordinator is elected primary (see test_election.py).
    wait_for(lambda: read(zk, schema.node_state("hv1"))[0]["coordinator"] == "primary", 10, what="hv1 to be primary")
    state, _ = read(zk, schema.node_state("hv1"))
    assert state == {"daemon": "run", "coordinator": "primary", "domain": "ready"}

    conn = daemon.hypervisor.connection()
    for name, memory, vcpus in (("vm-a", 512, 2), ("vm-b", 1024, 1)):
        conn.defineXML(VM_XML.format(name=name, memory=memory, vcpus=vcpus)).create()
    before = counter(zk)
    wait_for(lambda: counter(zk) >= before + 2, 10, what="keepalives after starting VMs")

    keepalive, keepalive_stat = read(zk, schema.node_keepalive("hv1"))
    _, state_stat = read(zk, schema.node_state("hv1"))
    assert keepalive["vms"] == {"count": 2, "running": ["vm-a", "vm-b"]}
    assert keepalive["memory"]["total"] == 16384
    assert keepalive["memory"]["allocated"] == 1536
    assert keepalive["memory"]["free"] == 16384 - 1536
    assert keepalive["memory"]["used"] == 1536
    assert keepalive["vcpus"]["allocated"] == 3
    assert isinstance(keepalive["load"], float)
    assert keepalive["interval"] == 1
    assert keepalive["stale"] == []
    # State and figures are written by one transaction: the same zxid changed both.
    assert keepalive_stat.mzxid == state_stat.mzxid


def test_counter_advances_every_interval(zk, running_daemon):
    running_daemon()
    wait_for(lambda: counter(zk) >= 1, 10, what="first keepalive")
    first = counter(zk)
    time.sleep(3.5)
    # 1 s interval: about 3 more in 3.5 s; allow for a loaded machine but require progress.
    assert counter(zk) >= first + 2


def test_restarted_daemon_keeps_counting(zk, make_config, running_daemon):
    config = make_config()
    daemon = running_daemon(config)
    wait_for(lambda: counter(zk) >= 2, 10, what="keepalives")
    daemon.stop_event.set()
    wait_for(lambda: read(zk, schema.node_state("hv1"))[0]["daemon"] == "stop", 10, what="state stop")
    reached = counter(zk)
    running_daemon(config)
    wait_for(lambda: counter(zk) > reached, 10, what="counter to advance after restart")
    assert read(zk, schema.node_state("hv1"))[0]["daemon"] == "run"


def test_hung_collector_does_not_delay_keepalive(zk, make_config, running_daemon):
    release = threading.Event()
    calls = []

    def hung_domains():
        calls.append(time.monotonic())
        release.wait(30)
        return [DomainFigures("late-vm", "u", 256, 1)]

    collectors = {
        MEMORY: lambda: HostMemory(8192, 4096),
        LOAD: lambda: 0.5,
        DOMAINS: hung_domains,
    }
    running_daemon(make_config(), collectors=collectors)
    wait_for(lambda: counter(zk) >= 3, 10, what="three keepalives despite a hung collector")
    keepalive, _ = read(zk, schema.node_keepalive("hv1"))
    assert keepalive["stale"] == ["domains"]
    assert keepalive["memory"]["total"] == 8192
    assert keepalive["vms"]["count"] is None
    # A collector still busy is not started again: one thread, not one per keepalive.
    assert len(calls) == 1
    release.set()
    wait_for(
        lambda: read(zk, schema.node_keepalive("hv1"))[0]["vms"]["running"] == ["late-vm"],
        10,
        what="the collector's figures once it answers",
    )
    assert read(zk, schema.node_keepalive("hv1"))[0]["stale"] == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_clean_shutdown_on_signal(zk, zookeeper, write_config, daemon_process, sig):
    process = daemon_process(write_config())
    wait_for(lambda: counter(zk) >= 2, 15, what="keepalives from the pvcd process")
    connections_before = _alive_connections(zookeeper)
    started = time.monotonic()
    process.signal(sig)
    status = process.wait(timeout=10)
    elapsed = time.monotonic() - started
    assert status == 0
    assert elapsed < 5, f"shutdown took {elapsed:.1f}s"
    assert read(zk, schema.node_state("hv1"))[0]["daemon"] == "stop"
    log = process.log()
    assert "daemon state is now shutdown" in log and "daemon state is now stop" in log
    assert "Traceback" not in log
    # The session was closed, not left to expire.
    wait_for(lambda: _alive_connections(zookeeper) < connections_before, 5, what="the session to close")


def _alive_connections(zookeeper) -> int:
    for line in zookeeper.four_letter("mntr").splitlines():
        key, _, value = line.partition("\t")
        if key == "zk_num_alive_connections":
            return int(value)
    raise AssertionError("mntr did not report zk_num_alive_connections")


def test_zookeeper_outage_and_restart(zk, zookeeper, write_config, daemon_process):
    process = daemon_process(write_config())
    wait_for(lambda: counter(zk) >= 2, 15, what="keepalives before the outage")
    zk.stop()
    zookeeper.stop()
    time.sleep(4)
    assert process.process.poll() is None, "pvcd exited while ZooKeeper was down"
    zookeeper.start()
    zk.start(timeout=15)
    reached = counter(zk)
    wait_for(lambda: counter(zk) >= reached + 2, 30, what="keepalives to resume after ZooKeeper came back")
    log = process.log()
    assert "Traceback" not in log
    assert "ZooKeeper unreachable" in log or "suspended" in log


def test_daemon_waits_for_zookeeper_at_start(zk, zookeeper, write_config, daemon_process):
    zk.stop()
    zookeeper.stop()
    process = daemon_process(write_config())
    wait_for(lambda: "retrying" in process.log(), 20, what="pvcd to report it is retrying")
    assert process.process.poll() is None
    zookeeper.start()
    zk.start(timeout=15)
    wait_for(lambda: counter(zk) >= 1, 30, what="registration once ZooKeeper is up")


@pytest.mark.parametrize("log_keepalives,details", [(False, False), (True, False), (True, True)])
def test_keepalive_log_lines_follow_the_logging_keys(zk, make_config, running_daemon, caplog, log_keepalives, details):
    import dataclasses

    config = make_config()
    logging_settings = dataclasses.replace(
        config.logging, log_keepalives=log_keepalives, log_keepalive_cluster_details=details
    )
    caplog.set_level("INFO", logger="pvcd")
    running_daemon(dataclasses.replace(config, logging=logging_settings))
    wait_for(lambda: counter(zk) >= 2, 10, what="keepalives")
    time.sleep(0.3)
    lines = [r.getMessage() for r in caplog.records if r.name == "pvcd.keepalive"]
    if not log_keepalives:
        assert lines == []
        return
    assert any(line.startswith("Keepalive #") for line in lines)
    assert any("memory allocated" in line for line in lines) == details
    assert any(line.startswith("Cluster: 1 nodes") for line in lines) == details


def test_unanswered_bmc_is_reported_at_start(zk, make_config, running_daemon, caplog):
    caplog.set_level("INFO", logger="pvcd")
    config = make_config()
    running_daemon(config)
    # Nothing answers IPMI on 127.0.0.1:623 here.
    wait_for(
        lambda: any("does not answer" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records),
        30,
        what="the BMC warning",
    )
    message = next(r.getMessage() for r in caplog.records if "does not answer" in r.getMessage())
    assert message.startswith("BMC of node hv1 at admin@127.0.0.1:623 does not answer")
    assert config.fencing.ipmi.password not in message


def test_a_keepalive_refused_for_a_changed_record_is_sent_again_at_once(zk, make_config, running_daemon, caplog):
    """The primary writing a fence's next step (or an operator's command) bumps the version a
    keepalive checks: the refused keepalive is sent again after the re-read, not one interval
    later, so that the node does not look late for it. A 30 s interval keeps the daemon's own loop
    out of the way while this test sends keepalives."""
    daemon = running_daemon(make_config(keepalive_interval=30))
    wait_for(lambda: counter(zk) >= 1 and daemon.versions is not None, 20, what="first keepalive")
    # Settled: primary, its state published (which bumps the state's version too).
    wait_for(lambda: read(zk, schema.node_state("hv1"))[0]["coordinator"] == "primary", 20, what="hv1 primary")
    wait_for(lambda: daemon.keepalive_once(), 10, what="a keepalive accepted")
    reached = counter(zk)
    fence, _ = zk.get(schema.node_fence("hv1"))
    zk.set(schema.node_fence("hv1"), fence)  # the same record, a new version
    assert daemon.keepalive_once() is True
    assert counter(zk) == reached + 1
    assert "refused: /pvc/nodes/hv1/fence: changed by someone else; re-reading its records and sending it again" in (
        caplog.text
    )
    # Refused twice in a row (a record changing again meanwhile): it waits for the next interval.
    zk.set(schema.node_fence("hv1"), fence)
    sets = [0]
    original = daemon._reread_versions

    def changed_again() -> None:
        original()
        if sets[0] == 0:
            sets[0] += 1
            zk.set(schema.node_fence("hv1"), fence)

    daemon._reread_versions = changed_again
    assert daemon.keepalive_once() is False
    assert counter(zk) == reached + 1
