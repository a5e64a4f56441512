"""The fencer against a real ZooKeeper and a real BMC simulator over UDP.

The "dead node" here is only its records in ZooKeeper plus a BMC whose power
state the test reads; whole-cluster tests (tests/cluster) kill real processes.
This level lets a test put a fence in exactly the step a crashed primary left it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from helpers import wait_for
from pvcd.cluster.values import StateRecord
from pvcd.devcluster.processes import free_port, stop_pid
from pvcd.fencing.fencer import Fencer, RecoveryResult
from pvcd.fencing.flow import NodeFencing
from pvcd.fencing.ipmi import IpmiDriver, IpmiError, IpmiTarget
from pvcd.zk import nodes, schema
from pvcd.zk.store import Store

PASSWORD = "hv2-bmc"


class Machine:
    """The BMC simulator's process and the power state it keeps in a file."""

    def __init__(self, state_file: Path) -> None:
        self.state_file = state_file

    @property
    def state(self) -> dict[str, Any]:
        return json.loads(self.state_file.read_text())

    def bmc_down(self) -> None:
        self.state_file.write_text(json.dumps(dict(self.state, bmc="down")))

    def power_off(self) -> None:
        self.state_file.write_text(json.dumps(dict(self.state, power="off")))


@pytest.fixture
def bmc(tmp_path):
    port = free_port()
    state_file = tmp_path / "bmc.json"
    process = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).parent.parent / "bmc_sim.py"),
            str(port),
            "admin",
            PASSWORD,
            str(state_file),
        ]
    )
    machine = Machine(state_file)
    try:  # stopped by its PID however the test ends, also when the set-up fails
        wait_for(lambda: state_file.exists(), 10, what="the BMC simulator")
        wait_for(
            lambda: answers(IpmiTarget("127.0.0.1", port, "admin", PASSWORD)),
            30,
            interval=0.5,
            what="the BMC simulator to answer IPMI",
        )
        yield machine, port
    finally:
        stop_pid(process.pid, timeout=5)
        process.wait()


def answers(target: IpmiTarget) -> bool:
    try:
        return IpmiDriver().power_state(target) == "on"
    except IpmiError:
        return False


@dataclass
class Recoveries:
    calls: list[str] = field(default_factory=list)

    def __call__(self, node: str) -> RecoveryResult:
        self.calls.append(node)
        return RecoveryResult(moved={"vm1": "hv3"}, unplaced={})


@pytest.fixture
def store(zookeeper, zk):
    store = Store(zookeeper.address, security=zookeeper.security())
    store.start()
    yield store
    store.stop()


def register_dead_node(store: Store, bmc_port: int, fencing: NodeFencing) -> None:
    info = {"name": "hv2", "fencing": fencing.to_json()}
    ipmi = {"host": "127.0.0.1", "port": bmc_port, "user": "admin", "password": PASSWORD}
    nodes.register(store, "hv2", info, StateRecord(daemon="run", coordinator="client", domain="ready"), ipmi)


def fence_record(zk) -> dict[str, Any]:
    return json.loads(zk.get(schema.node_fence("hv2"))[0])


def put_fence(zk, record: dict[str, Any]) -> None:
    zk.set(schema.node_fence("hv2"), json.dumps(record).encode())


def declared_by_hv1(keepalive_mtime_ms: int) -> dict[str, Any]:
    """The fence record of hv2 as hv1 leaves it once it has declared the fence."""
    return {
        "id": "f1",
        "step": "declared",
        "outcome": "fencing",
        "by": "hv1",
        "recovered": False,
        "keepalive_mtime_ms": keepalive_mtime_ms,
    }


def make_fencer(store: Store, make_config, recoveries: Recoveries, **config: Any) -> Fencer:
    return Fencer(
        store,
        make_config("hv1", **config),
        is_primary=lambda: True,
        recover=recoveries,
        driver=IpmiDriver(off_wait=3.0),
    )


WATCHDOG = NodeFencing(keepalive_interval=1, fence_intervals=3, watchdog_timeout=2)


def test_a_fence_left_at_powering_off_by_a_dead_primary_is_finished(store, zk, bmc, make_config):
    machine, port = bmc
    register_dead_node(store, port, WATCHDOG)
    put_fence(
        zk,
        {
            "id": "f-old",
            "step": "powering-off",
            "outcome": "fencing",
            "by": "hv3",
            "recovered": False,
            "keepalive_mtime_ms": 1,
        },
    )
    recoveries = Recoveries()
    make_fencer(store, make_config, recoveries).run_once()
    record = fence_record(zk)
    assert (record["id"], record["step"], record["outcome"]) == ("f-old", "recovered", "confirmed")
    assert record["by"] == "hv3" and record["resumed_by"] == "hv1"
    assert recoveries.calls == ["hv2"]
    # Powered off by the fence, on again only after the recovery.
    assert (machine.state["offs"], machine.state["ons"], machine.state["power"]) == (1, 1, "on")


def test_a_fence_left_recovering_is_recovered_once_more_and_the_node_powered_on(store, zk, bmc, make_config):
    machine, port = bmc
    register_dead_node(store, port, WATCHDOG)
    machine.power_off()
    put_fence(zk, {"id": "f-old", "step": "recovering", "outcome": "confirmed", "by": "hv3", "recovered": False})
    recoveries = Recoveries()
    fencer = make_fencer(store, make_config, recoveries)
    fencer.run_once()
    fencer.run_once()
    assert fence_record(zk)["step"] == "recovered"
    assert recoveries.calls == ["hv2"]
    assert machine.state["power"] == "on"


def test_a_fence_is_not_declared_when_the_keepalive_moved(store, zk, bmc, make_config):
    machine, port = bmc
    register_dead_node(store, port, WATCHDOG)
    fencer = make_fencer(store, make_config, Recoveries())
    view = next(v for v in nodes.read_cluster(store) if v.name == "hv2")
    assert view.keepalive_version is not None
    fencer.tracker.observe("hv2", view.keepalive_version, 0.0)
    # The node delivers a keepalive between the fencer's judgement and its declaration.
    keepalive = store.get(schema.node_keepalive("hv2"))
    assert keepalive is not None
    store.set(schema.node_keepalive("hv2"), {"counter": 1}, keepalive.version)
    fencer._declare(view)
    assert fence_record(zk) == {"outcome": None}
    assert machine.state["offs"] == 0


def test_a_failed_fence_waits_for_the_watchdog_window_on_zookeepers_clock(store, zk, bmc, make_config):
    machine, port = bmc
    register_dead_node(store, port, WATCHDOG)
    machine.bmc_down()
    recoveries = Recoveries()
    fencer = make_fencer(store, make_config, recoveries, failed_fence="migrate", suicide_intervals=2)
    keepalive = store.get(schema.node_keepalive("hv2"))
    assert keepalive is not None
    put_fence(zk, declared_by_hv1(keepalive.mtime_ms))
    fencer.run_once()
    record = fence_record(zk)
    assert (record["outcome"], record["step"]) == ("failed", "waiting-watchdog")
    assert recoveries.calls == []

    def recovered() -> bool:
        fencer.run_once()
        return fence_record(zk)["step"] == "recovered"

    wait_for(recovered, 30, interval=0.5, what="recovery once the watchdog window passed")
    record = fence_record(zk)
    assert record["recovered_ms"] - keepalive.mtime_ms >= WATCHDOG.watchdog_window * 1000  # type: ignore[operator]
    assert recoveries.calls == ["hv2"]


def test_a_failed_fence_of_a_node_without_watchdog_waits_for_an_operator(store, zk, bmc, make_config):
    machine, port = bmc
    register_dead_node(store, port, NodeFencing(1, 3, None))
    machine.bmc_down()
    recoveries = Recoveries()
    fencer = make_fencer(store, make_config, recoveries, failed_fence="migrate", suicide_intervals=2)
    put_fence(zk, declared_by_hv1(1))
    fencer.run_once()
    record = fence_record(zk)
    assert (record["outcome"], record["step"]) == ("failed", "waiting-operator")
    assert "no armed watchdog" in record["action_reason"]
    fencer.run_once()
    assert recoveries.calls == []
    put_fence(zk, dict(record, confirmed_by_operator=True))
    fencer.run_once()
    assert fence_record(zk)["step"] == "recovered" and recoveries.calls == ["hv2"]


def test_a_zookeeper_error_taking_the_fence_lock_does_not_stop_fencing(store, zk, bmc, make_config, monkeypatch):
    machine, port = bmc
    register_dead_node(store, port, WATCHDOG)
    put_fence(zk, {"id": "f1", "step": "declared", "outcome": "fencing", "by": "hv3", "recovered": False})
    real_lock = store.client.Lock
    failures = []

    def flaky_lock(*args: Any, **kwargs: Any) -> Any:
        if not failures:
            failures.append(1)
            raise RuntimeError("simulated failure while taking the fence lock")
        return real_lock(*args, **kwargs)

    monkeypatch.setattr(store.client, "Lock", flaky_lock)
    fencer = make_fencer(store, make_config, Recoveries())
    fencer.start()
    try:
        wait_for(lambda: fence_record(zk)["step"] == "recovered", 30, what="the fence finished after the failure")
    finally:
        fencer.stop()
    assert failures == [1]
