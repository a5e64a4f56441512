"""The coordinator election against a real ZooKeeper: node daemons in this process.

Networking is off here (`enable_networking: False`): the election, the states
and the primary-only services work without touching any address; the floating
IPs are tested with each node in its own network namespace (tests/netns).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import bin_path, node_document, wait_for
from pvcd.config import parse_config
from pvcd.coordinator.claims import claims_of
from pvcd.daemon import NodeDaemon
from pvcd.devcluster.chassis import Relay
from pvcd.devcluster.processes import free_port
from pvcd.zk import schema

SESSION_TIMEOUT = 2.0
NAMES = ["hv1", "hv2", "hv3", "hv4"]  # the first three are coordinators


class Events:
    """What the nodes' primary-only services did, in order, with a monotonic time each."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[float, str, str]] = []

    def add(self, node: str, what: str) -> None:
        with self.lock:
            self.items.append((time.monotonic(), node, what))

    def of(self, node: str) -> list[str]:
        with self.lock:
            return [what for _, n, what in self.items if n == node]

    def first(self, node: str, what: str, after: float = 0.0) -> float | None:
        with self.lock:
            return next((t for t, n, w in self.items if n == node and w == what and t >= after), None)


class Service:
    def __init__(self, node: str, name: str, events: Events) -> None:
        self.node, self.name, self.events = node, name, events

    def start(self) -> None:
        self.events.add(self.node, f"start {self.name}")

    def stop(self) -> None:
        self.events.add(self.node, f"stop {self.name}")


def document(tmp_path: Path, name: str, port: int, zookeeper: Any, **changes: Any) -> dict[str, Any]:
    doc = node_document(tmp_path, name, port, names=NAMES, zookeeper=zookeeper)
    doc["pvc"]["cluster"]["zookeeper"]["session_timeout"] = changes.get("session_timeout", SESSION_TIMEOUT)
    return doc


@pytest.fixture
def cluster(zk, zookeeper, tmp_path):
    """Start node daemons in threads; each coordinator runs two recording primary services."""
    events = Events()
    started: list[tuple[NodeDaemon, threading.Thread]] = []

    def start(name: str, port: int | None = None) -> NodeDaemon:
        daemon = NodeDaemon(parse_config(document(tmp_path, name, port or zookeeper.port, zookeeper)))
        if daemon.coordinator is not None:
            for service in ("dhcp", "dns"):
                daemon.coordinator.services.register(Service(name, service, events))
        thread = threading.Thread(target=daemon.run, daemon=True)
        thread.start()
        started.append((daemon, thread))
        return daemon

    start.events = events  # type: ignore[attr-defined]
    yield start
    for daemon, _ in started:
        daemon.stop_event.set()
    for _, thread in started:
        thread.join(10)


def owner(zk) -> str | None:
    claims = claims_of(zk.get_children(schema.PRIMARY)) if zk.exists(schema.PRIMARY) else []
    return claims[0].node if claims else None


def roles(zk, names=NAMES) -> dict[str, str]:
    found = {}
    for name in names:
        if zk.exists(schema.node_state(name)):
            found[name] = json.loads(zk.get(schema.node_state(name))[0])["coordinator"]
    return found


def primaries(zk) -> list[str]:
    return [name for name, role in roles(zk).items() if role == "primary"]


def pvc(zookeeper, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PVC_ZOOKEEPER", "PVCD_CONFIG_FILE")}
    return subprocess.run(
        [bin_path("pvc"), "--zookeeper", zookeeper.address, *args], capture_output=True, text=True, timeout=30, env=env
    )


def wait_primary(zk, name: str | None = None, timeout: float = 15) -> str:
    """The node holding the primary claim once it has also published that it is primary."""

    def check() -> str | None:
        holder = owner(zk)
        if holder is not None and roles(zk).get(holder) == "primary" and name in (None, holder):
            return holder
        return None

    return wait_for(check, timeout, interval=0.05, what=f"{name or 'one node'} to be primary")


def ipv4_addresses() -> str:
    return subprocess.run(["ip", "-4", "-o", "address"], capture_output=True, text=True).stdout


def test_one_primary_among_the_coordinators_and_no_address_touched(zk, zookeeper, cluster):
    addresses_before = ipv4_addresses()
    for name in NAMES:
        cluster(name)
    primary = wait_primary(zk)
    wait_for(
        lambda: sorted(roles(zk).values()) == ["client", "primary", "secondary", "secondary"],
        10,
        what="the other nodes' states",
    )
    assert roles(zk)["hv4"] == "client"
    events = cluster.events
    assert events.of(primary) == ["start dhcp", "start dns"]
    assert all(events.of(name) == [] for name in NAMES if name != primary)

    listed = json.loads(pvc(zookeeper, "node", "list", "--format", "json").stdout)
    assert {n["name"]: n["coordinator_state"] for n in listed} == roles(zk)
    info = pvc(zookeeper, "node", "info", primary)
    assert "Coordinator state: primary" in " ".join(info.stdout.split())
    # enable_networking is False: the election ran and no address changed.
    assert ipv4_addresses() == addresses_before


def test_a_coordinator_started_later_stays_secondary(zk, cluster):
    cluster("hv1")
    wait_primary(zk, "hv1")
    cluster("hv2")
    wait_for(lambda: roles(zk).get("hv2") == "secondary", 10, what="hv2 to register")
    time.sleep(SESSION_TIMEOUT)
    assert primaries(zk) == ["hv1"] and owner(zk) == "hv1"


def test_planned_handover_both_ways(zk, zookeeper, cluster):
    for name in ("hv1", "hv2", "hv3"):
        cluster(name)
    first = wait_primary(zk)
    second = next(name for name in ("hv1", "hv2", "hv3") if name != first)
    wait_for(lambda: roles(zk).get(second) == "secondary", 10, what=f"{second} to be secondary")
    events = cluster.events
    for old, new in ((first, second), (second, first)):
        asked = time.monotonic()
        result = pvc(zookeeper, "node", "primary", new, "--format", "json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["primary"] == new and report["previous"] == old and report["changed"]
        assert primaries(zk) == [new] and owner(zk) == new
        assert not zk.exists(schema.HANDOVER)
        # The old primary stopped its services (in reverse order) before the new one started any.
        stopped = events.first(old, "stop dhcp", after=asked)
        started = events.first(new, "start dhcp", after=asked)
        assert stopped is not None and started is not None and stopped <= started
        assert events.of(old)[-2:] == ["stop dns", "stop dhcp"]
        assert events.of(new)[-2:] == ["start dhcp", "start dns"]
        wait_for(lambda old=old: roles(zk).get(old) == "secondary", 5, what=f"{old} to publish secondary")

    result = pvc(zookeeper, "node", "primary", first)
    assert result.returncode == 0 and "Nothing to do: the primary coordinator is " + first in result.stdout


def test_secondary_command_lets_another_coordinator_take_over(zk, zookeeper, cluster):
    for name in ("hv1", "hv2", "hv3"):
        cluster(name)
    old = wait_primary(zk)
    wait_for(lambda: list(roles(zk).values()).count("secondary") == 2, 10, what="two secondaries")
    result = pvc(zookeeper, "node", "secondary", old)
    assert result.returncode == 0, result.stderr
    new = wait_primary(zk)
    assert new != old
    # The old primary does not take the role back.
    time.sleep(SESSION_TIMEOUT)
    assert primaries(zk) == [new] and owner(zk) == new and roles(zk)[old] == "secondary"


@pytest.mark.parametrize(
    "args,message",
    [
        (("primary", "hv9"), "pvc: no node named 'hv9'"),
        (("primary", "hv4"), "pvc: node hv4 is not a coordinator (it is not in cluster.coordinators)"),
        (("secondary", "hv4"), "pvc: node hv4 is not a coordinator (it is not in cluster.coordinators)"),
        (("secondary", "nobody"), "pvc: no node named 'nobody'"),
    ],
)
def test_refused_requests_change_nothing(zk, zookeeper, cluster, args, message):
    for name in ("hv1", "hv2", "hv4"):
        cluster(name)
    primary = wait_primary(zk)
    wait_for(lambda: len(roles(zk)) == 3, 10, what="three nodes")
    result = pvc(zookeeper, "node", *args)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [message]
    assert not zk.exists(schema.HANDOVER)
    assert primaries(zk) == [primary] and owner(zk) == primary


def test_stopped_primary_hands_over_at_once(zk, cluster):
    daemons = {name: cluster(name) for name in ("hv1", "hv2")}
    primary = wait_primary(zk)
    other = "hv2" if primary == "hv1" else "hv1"
    wait_for(lambda: roles(zk).get(other) == "secondary", 10, what=f"{other} to be secondary")
    stopped = time.monotonic()
    daemons[primary].stop_event.set()
    wait_primary(zk, other, timeout=10)
    # Released explicitly: no waiting for the session to expire.
    assert time.monotonic() - stopped < SESSION_TIMEOUT
    assert cluster.events.first(primary, "stop dhcp", after=stopped) <= cluster.events.first(
        other, "start dhcp", after=stopped
    )


def test_killed_primary_is_replaced_only_after_its_session_expires(zk, zookeeper, tmp_path, cluster, daemon_process):
    import yaml

    path = tmp_path / "hv1.yaml"
    path.write_text(yaml.safe_dump(document(tmp_path, "hv1", zookeeper.port, zookeeper)))
    process = daemon_process(path)
    wait_primary(zk, "hv1")
    cluster("hv2")
    wait_for(lambda: roles(zk).get("hv2") == "secondary", 10, what="hv2 to be secondary")
    claim_gone = threading.Event()
    zk.ChildrenWatch(schema.PRIMARY, lambda children: claim_gone.set() if not claims_of(children) else None)
    killed = time.monotonic()
    process.signal(signal.SIGKILL)
    wait_primary(zk, "hv2", timeout=SESSION_TIMEOUT + 10)
    took_over = cluster.events.first("hv2", "start dhcp")
    assert claim_gone.is_set()
    # Not before the killed primary's session could have expired (its last sign of life was before the kill).
    assert took_over - killed >= SESSION_TIMEOUT * 0.9


def test_primary_cut_from_zookeeper_steps_down_before_its_session_expires(zk, zookeeper, cluster):
    relay = Relay(free_port(), zookeeper.address)

    def serve() -> None:
        try:
            relay.serve()
        except OSError:
            pass

    threading.Thread(target=serve, daemon=True).start()
    try:
        cut_node = cluster("hv1", port=relay.listener.getsockname()[1])
        wait_primary(zk, "hv1")
        cluster("hv2")
        wait_for(lambda: roles(zk).get("hv2") == "secondary", 10, what="hv2 to be secondary")
        claim_gone: list[float] = []
        zk.ChildrenWatch(schema.PRIMARY, lambda c: claim_gone.append(time.monotonic()) if not claims_of(c) else None)
        cut = time.monotonic()
        relay.set_cut(True)
        wait_primary(zk, "hv2", timeout=SESSION_TIMEOUT + 10)
        relinquished = cluster.events.first("hv1", "stop dhcp", after=cut)
        took_over = cluster.events.first("hv2", "start dhcp", after=cut)
        assert relinquished is not None and claim_gone
        # hv1 stopped acting within its lease, before ZooKeeper could expire its session ...
        assert relinquished - cut < SESSION_TIMEOUT
        assert relinquished < claim_gone[0]
        # ... and hv2 took over only once that session (hv1's claim) was gone.
        assert took_over >= claim_gone[0]
        assert cut_node.coordinator.state == "secondary"
        relay.set_cut(False)
        wait_for(lambda: cut_node.store.connected, 15, what="hv1 to reconnect with a new session")
        time.sleep(SESSION_TIMEOUT)
        assert primaries(zk) == ["hv2"] and owner(zk) == "hv2"
        assert cluster.events.of("hv1")[-2:] == ["stop dns", "stop dhcp"]
    finally:
        relay.set_cut(False)
        relay.listener.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="the floating IP adapter opens a raw packet socket, which needs root")
def test_too_short_a_session_timeout_for_floating_ips_never_becomes_primary(zk, zookeeper, caplog):
    from ipaddress import IPv4Interface

    from pvcd.coordinator.decide import Timing
    from pvcd.coordinator.role import CoordinatorRole
    from pvcd.network.addresses import DeviceAddress, FloatingIPs
    from pvcd.zk.store import Store

    store = Store(zookeeper.address, security=zookeeper.security(), session_timeout=SESSION_TIMEOUT)
    store.start()
    # Never added: the role refuses to take over, so the address stays a description.
    floating = FloatingIPs([DeviceAddress("cluster", "lo", IPv4Interface("127.0.0.77/8"))])
    states = []
    role = CoordinatorRole("hv1", store, Timing(SESSION_TIMEOUT), floating, states.append, lambda: None)
    try:
        role.start()
        time.sleep(SESSION_TIMEOUT)
        assert owner(zk) is None and states == [] and role.state == "secondary"
        assert "session_timeout 2.0s is too short to hold floating IPs safely" in caplog.text
    finally:
        role.stop(2)
        store.stop()
