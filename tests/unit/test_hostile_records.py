"""Hostile and corrupt ZooKeeper records cannot hurt a daemon (issue 14, item 4).

A valid three-node cluster (nodes, VMs with their statuses, a migration and the per-node
index, a primary claim and a handover request, maintenance and faults, client networks with
a reservation and a lease) is put in the in-memory store (`MemoryStore`, ZooKeeper's
semantics); then one record a daemon reads is replaced by junk: bytes that are not JSON,
JSON of the wrong type, the valid record with keys missing, replaced by junk or added,
huge strings, unicode, NaN and infinities, huge and negative numbers, nested junk.

Every reader a daemon runs then reads the cluster: the one-off view (`read_view`), the
watched cache's pass, the liveness judgement, the VM reconciler's reads and decisions, the
fencer's rounds (with a fake BMC), the election's observation, the client networks' readers
and the network manager's model. No exception may escape (the daemon's loops would count it
as a failure), no log line may carry a traceback or run over one short line, and what was
valid must still be read as valid: nodes hv1 and hv3 alive and never fenced, VM vm-ok in the
view, network 100 with its reservation and lease.

The regression examples the fuzzing found are kept as explicit cases at the end.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from helpers import node_document, vm_xml, wait_for
from pvcd.cluster import liveness
from pvcd.cluster import vm_records as records
from pvcd.cluster.cache import ClusterCache, read_view
from pvcd.cluster.client_networks import ClientNetwork, InvalidNetwork, Lease, Reservation
from pvcd.cluster.states import StatesFollower, parse_states
from pvcd.config import Config, parse_config
from pvcd.coordinator.claims import Handover, claims_of
from pvcd.coordinator.election import Election
from pvcd.fencing import flow
from pvcd.fencing.fencer import Fencer, RecoveryResult
from pvcd.fencing.ipmi import FenceReport, IpmiTarget
from pvcd.fencing.outcome import FenceOutcome, FenceVerdict
from pvcd.network import client_interfaces
from pvcd.network.manager import node_addresses
from pvcd.storage.status import storage_text
from pvcd.vm import reconcile
from pvcd.zk import networks, schema, vms
from pvcd.zk.base import encode
from pvcd.zk.memory import MemoryServer, MemoryStore

NODES = ("hv1", "hv2", "hv3")
ME = "hv1"
CLAIM = f"hv1{schema.CLAIM_SEPARATOR}tok{schema.CLAIM_SEPARATOR}0000000001"
MAX_LINE = 400
"""A log line about bad data is one short line, however large the bad value."""


# -- the valid cluster ---------------------------------------------------------


def node_info(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "coordinator": True,
        "pvcd_version": "0.1.0",
        "hypervisor": "test:///default",
        "pid": 1234,
        "addresses": {"cluster": f"10.255.0.{NODES.index(name) + 1}"},
        "target_selector": "mem",
        "fencing": {"keepalive_interval": 1.0, "fence_intervals": 3, "watchdog_timeout": None},
        "watchdog": {"device": None, "armed": False, "timeout": None, "problem": None},
    }


def keepalive(counter: int = 1) -> dict[str, Any]:
    return {
        "counter": counter,
        "interval": 1,
        "memory": {"total": 16384, "used": 1024, "free": 15360, "allocated": 1024},
        "vcpus": {"allocated": 2},
        "load": 0.1,
        "vms": {"count": 1, "running": ["vm-ok"]},
        "stale": [],
    }


def vm_record(name: str, node: str, state: str = "start") -> dict[str, Any]:
    record = records.new_record(records.parse_domain_xml(vm_xml(name, 128)), node).to_json()
    record["state"] = state
    return record


MIGRATION = {
    "id": "m1",
    "kind": "migrate",
    "from": "hv2",
    "to": "hv3",
    "method": "live",
    "phase": "requested",
    "previous_lastnode": None,
    "how": None,
    "stats": None,
}
FENCE_UNDER_WAY = {
    "id": "f1",
    "step": "powering-off",
    "outcome": "fencing",
    "by": "hv3",
    "recovered": False,
    "keepalive_mtime_ms": 1,
}
NETWORK_100 = {
    "vni": 100,
    "type": "managed",
    "description": "web",
    "domain": "net100.local",
    "ipv4": {
        "network": "10.100.0.0/24",
        "gateway": "10.100.0.1",
        "dhcp": {"start": "10.100.0.100", "end": "10.100.0.199"},
    },
    "ipv6": None,
    "name_servers": [],
}
NETWORK_200 = dict(
    NETWORK_100,
    vni=200,
    domain="net200.local",
    ipv4=dict(
        NETWORK_100["ipv4"],
        network="10.200.0.0/24",
        gateway="10.200.0.1",
        dhcp={"start": "10.200.0.100", "end": "10.200.0.199"},
    ),
)
MAC = "52:54:00:00:00:01"
MAC2 = "52:54:00:00:00:02"


def reservation(vni: int) -> dict[str, Any]:
    return {"mac": MAC, "ipv4": f"10.{vni}.0.150", "hostname": "web1"}


def lease(vni: int) -> dict[str, Any]:
    return {"mac": MAC2, "ipv4": f"10.{vni}.0.160", "hostname": "db1", "expiry": 0}


def cluster_values() -> dict[str, Any]:
    """Every record of the valid cluster, by path (parents first)."""
    values: dict[str, Any] = {}
    for name in NODES:
        values[schema.node(name)] = node_info(name)
        values[schema.node_state(name)] = {
            "daemon": "run",
            "coordinator": "primary" if name == ME else "secondary",
            "domain": "ready",
        }
        values[schema.node_keepalive(name)] = keepalive()
        values[schema.node_fence(name)] = {"outcome": None}
        values[schema.node_ipmi(name)] = {"host": "127.0.0.1", "port": 623, "user": "admin", "password": "secret"}
        values[schema.node_storage(name)] = {
            "addresses": [f"10.255.0.{NODES.index(name) + 1}:0/1"],
            "ips": [],
            "learned_ms": 1,
        }
    values[schema.vm("vm-ok")] = vm_record("vm-ok", "hv1")
    values[schema.vm_status("vm-ok")] = {"node": "hv1", "state": "running", "message": None}
    values[schema.vm("vm-bad")] = vm_record("vm-bad", "hv3")
    values[schema.vm_status("vm-bad")] = {"node": "hv2", "state": "running", "message": None}
    values[schema.vm_migration("vm-bad")] = MIGRATION
    values[schema.node_vm("hv1", "vm-ok")] = None
    values[schema.node_vm("hv2", "vm-bad")] = None
    values[schema.node_vm("hv3", "vm-bad")] = None
    values[f"{schema.PRIMARY}/{CLAIM}"] = {"node": "hv1"}
    values[schema.HANDOVER] = {"from": "hv1", "to": "hv3"}
    values[schema.MAINTENANCE] = {"enabled": False}
    values[schema.FAULTS] = {}
    values[schema.CLUSTER_STATES] = {
        name: {"daemon": "run", "coordinator": "secondary", "domain": "ready"} for name in NODES
    }
    values[schema.NETWORKS] = None
    for vni, network in ((100, NETWORK_100), (200, NETWORK_200)):
        values[schema.network(vni)] = network
        values[schema.network_reservations(vni)] = None
        values[schema.network_reservation(vni, MAC)] = reservation(vni)
        values[schema.network_leases(vni)] = None
        values[schema.network_lease(vni, MAC2)] = lease(vni)
    return values


TARGETS: list[tuple[str, Any]] = [
    (schema.node("hv2"), node_info("hv2")),
    (schema.node_state("hv2"), {"daemon": "run", "coordinator": "secondary", "domain": "ready"}),
    (schema.node_keepalive("hv2"), keepalive()),
    (schema.node_fence("hv2"), {"outcome": None}),
    (schema.node_fence("hv2"), FENCE_UNDER_WAY),
    (schema.node_ipmi("hv2"), {"host": "127.0.0.1", "port": 623, "user": "admin", "password": "secret"}),
    (schema.node_storage("hv2"), {"addresses": ["10.255.0.2:0/1"], "ips": [], "learned_ms": 1}),
    (schema.vm("vm-bad"), vm_record("vm-bad", "hv3")),
    (schema.vm_status("vm-bad"), {"node": "hv2", "state": "running", "message": None}),
    (schema.vm_migration("vm-bad"), MIGRATION),
    (schema.node_vm("hv2", "vm-bad"), None),
    (f"{schema.PRIMARY}/{CLAIM}", {"node": "hv1"}),
    (schema.HANDOVER, {"from": "hv1", "to": "hv3"}),
    (schema.MAINTENANCE, {"enabled": False}),
    (schema.FAULTS, {"storm": {"dead": ["hv2"], "reason": "two dead", "since_ms": 1}}),
    (schema.CLUSTER_STATES, {"hv2": {"daemon": "run", "coordinator": "secondary", "domain": "ready"}}),
    (schema.network(200), NETWORK_200),
    (schema.network_reservation(200, MAC), reservation(200)),
    (schema.network_lease(200, MAC2), lease(200)),
]


# -- junk ------------------------------------------------------------------------

huge_text = st.integers(10_000, 200_000).map(lambda n: "x" * n)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**200), 2**200),
    st.sampled_from([0, -1, 2**63, -(2**63), 10**30]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0]),
    st.text(max_size=20),
    st.sampled_from(["", " ", "\u202e\u0000", "☃" * 50, "../..", "hv1/../hv2", "\ud7ff", "run", "primary", "fencing"]),
    huge_text,
)
json_junk = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
raw_junk = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"\xff\xfe\x00", b"{", b'{"a":', b"[1,2", b"\x80abc", b"nul", b"{'single': 1}", b"\xc3\x28"]),
)


@st.composite
def mutated(draw: st.DrawFn, base: Any) -> Any:
    """The valid record with keys dropped, replaced by junk, or junk keys added (nested too)."""
    if not isinstance(base, dict) or not base:
        return draw(json_junk)
    value = dict(base)
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(("drop", "replace", "add", "nest")))
        key = draw(st.sampled_from(sorted(value))) if value else None
        if how == "drop" and key is not None:
            del value[key]
        elif how == "replace" and key is not None:
            value[key] = draw(json_junk)
        elif how == "nest" and key is not None:
            value[key] = draw(mutated(value[key]))
        else:
            value[draw(st.text(max_size=10))] = draw(json_junk)
    return value


@st.composite
def corruptions(draw: st.DrawFn) -> tuple[str, bytes]:
    """A path a daemon reads and the bytes now stored there."""
    path, base = draw(st.sampled_from(TARGETS))
    kind = draw(st.sampled_from(("raw", "json", "mutated", "mutated")))
    if kind == "raw":
        return path, draw(raw_junk)
    value = draw(json_junk) if kind == "json" else draw(mutated(base))
    return path, json.dumps(value).encode()  # NaN and Infinity as Python writes them


# -- the readers ----------------------------------------------------------------


class FakeBmc:
    """The IPMI driver: every fence confirmed at once, no worker process."""

    def __init__(self) -> None:
        self.fenced: list[IpmiTarget] = []

    def power_state(self, target: IpmiTarget) -> str:
        return "on"

    def power_on(self, target: IpmiTarget) -> None:
        pass

    def fence(self, target: IpmiTarget) -> FenceReport:
        self.fenced.append(target)
        return FenceReport(FenceVerdict(FenceOutcome.CONFIRMED, "off"), ("off",))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Config:
    workdir: Path = tmp_path_factory.mktemp("hostile")
    return parse_config(node_document(workdir, ME, 2181, names=list(NODES)))


def build(corrupt: dict[str, bytes]) -> MemoryStore:
    server = MemoryServer()
    store = MemoryStore(server)
    store.start()
    store.ensure_schema()
    for path, value in cluster_values().items():
        store.ensure_path(path.rpartition("/")[0])
        if path in corrupt:
            store.create(path, None)
            store.set_raw(path, corrupt[path])
        else:
            store.create(path, value)
            if path.endswith("/keepalive"):
                store.set(path, value, 0)  # a keepalive delivered: version 1, its mtime on ZooKeeper's clock
    return store


def read_everything(store: MemoryStore, config: Config) -> None:
    """What every loop of the daemons reads, with the checks that the valid records survive."""
    # The one-off view and the watched cache's pass read the same cluster.
    view = read_view(store, with_vms=True)
    cache = ClusterCache(store, with_vms=True)
    cache._pass(True, set(), set())
    watched = cache.snapshot()
    assert dict(watched.nodes) == dict(view.nodes) and dict(watched.vms) == dict(view.vms)
    assert set(watched.damaged_vms) == set(view.damaged_vms)
    for name in ("hv1", "hv3"):
        assert view.nodes[name].state.daemon == "run"
        assert view.nodes[name].keepalive["counter"] == 1
    assert "vm-ok" in view.vms and view.vms["vm-ok"].record.node == "hv1"
    assert set(view.vms) | set(view.damaged_vms) <= {"vm-ok", "vm-bad"}
    for reason in view.damaged_vms.values():
        assert "\n" not in reason and len(reason) < MAX_LINE
    follower = StatesFollower(store)
    follower.start()
    assert wait_for(lambda: follower.states or store.get_many([schema.CLUSTER_STATES])[0], 1.0)
    # Liveness on ZooKeeper's clock: the valid nodes are not late.
    now_ms = store.server_time_ms()
    late = liveness.late_nodes(view.node_list(), now_ms)
    assert not late & {"hv1", "hv3"}
    # The VM reconciler: its reads and its decisions on every node.
    every, damaged = vms.read_vms(store)
    assert "vm-ok" in every and set(damaged) == set(view.damaged_vms)
    for node in NODES:
        owned, _damaged = vms.read_owned(store, node)
        reconcile.decide(node, owned, {})
        domains = {name: reconcile.DomainInfo(name, view.vms[name].record.uuid, True) for name in view.vms}
        reconcile.decide(node, view.vms, domains)
    assert "vm-ok" in vms.read_owned(store, "hv1")[0]
    # The election reads the claims and the handover request.
    observation = Election(store, ME, timeout=1.0).observe(lambda _event: None)
    assert [claim.node for claim in observation.claims][:1] == ["hv1"]
    # Client networks: the readers and the network manager's model.
    found = networks.read_networks(store)
    assert 100 in found and set(found) <= {100, 200}
    assert MAC in networks.list_reservations(store, 100) and MAC2 in networks.list_leases(store, 100)
    networks.list_reservations(store, 200)
    networks.list_leases(store, 200)
    try:
        networks.read_network(store, 200)
    except InvalidNetwork:
        pass
    addresses = node_addresses(store)
    assert addresses["hv1"]["cluster"] == "10.255.0.1"
    peers = [ipaddress.IPv4Address(a["cluster"]) for a in addresses.values() if _is_ipv4(a.get("cluster"))]
    client_interfaces.desired_devices(
        [view.network for view in found.values()], "eth0", 1500, ipaddress.IPv4Address("10.255.0.1"), peers, "eth1"
    )
    # The fencer's rounds: hv2's keepalive stops, hv1's and hv3's go on; the valid nodes are never fenced.
    clock, bmc = Clock(), FakeBmc()
    fencer = Fencer(
        store,
        config,
        is_primary=lambda: True,
        recover=lambda node: RecoveryResult(moved={}, unplaced={}),
        driver=bmc,  # type: ignore[arg-type]
        clock=clock,
    )
    for counter in range(2, 5):
        fencer.run_once()
        clock.now += 10.0
        for name in ("hv1", "hv3"):
            found_keepalive = store.get(schema.node_keepalive(name))
            assert found_keepalive is not None
            store.set(schema.node_keepalive(name), keepalive(counter), found_keepalive.version)
    for name in ("hv1", "hv3"):
        fence = store.get(schema.node_fence(name))
        assert fence is not None and fence.value == {"outcome": None}
    assert all(target.host == "127.0.0.1" for target in bmc.fenced)


def _is_ipv4(text: Any) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def check_log(caplog: pytest.LogCaptureFixture, path: str, data: bytes) -> None:
    """Bad data is logged as short single lines without tracebacks; non-JSON names its path."""
    lines = [record for record in caplog.records if record.levelno >= logging.WARNING]
    for record in lines:
        message = record.getMessage()
        assert record.exc_info is None, f"traceback logged for bad data at {path}: {message}"
        assert "\n" not in message and len(message) < MAX_LINE, f"log line too long: {message[:200]}..."
    try:
        json.loads(data or b"null")  # no bytes at all: a znode with no value, not damage
    except ValueError:
        if path.startswith((schema.NODES, schema.VMS)) and path != schema.node_storage("hv2"):
            assert any(path in record.getMessage() for record in lines), f"nothing logged names {path}"


SETTINGS = settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(corruption=corruptions())
@example(corruption=(schema.node_ipmi("hv2"), b'{"host":"10.0.0.2","port":"not a port","user":"u","password":"p"}'))
@example(corruption=(schema.node_ipmi("hv2"), b'{"host":"10.0.0.2","port":Infinity,"user":"u","password":"p"}'))
@example(corruption=(schema.node_ipmi("hv2"), b'{"host":"10.0.0.2","port":623}'))
@example(
    corruption=(
        schema.node("hv2"),
        json.dumps(
            dict(
                node_info("hv2"), fencing={"keepalive_interval": 1, "fence_intervals": 3, "watchdog_timeout": math.inf}
            )
        ).encode(),
    )
)
@example(
    corruption=(
        schema.node("hv2"),
        json.dumps(dict(node_info("hv2"), fencing={"keepalive_interval": math.nan, "fence_intervals": 3})).encode(),
    )
)
@example(corruption=(schema.node_keepalive("hv2"), json.dumps(dict(keepalive(), interval="5")).encode()))
@example(
    corruption=(schema.node_fence("hv2"), json.dumps({k: v for k, v in FENCE_UNDER_WAY.items() if k != "id"}).encode())
)
@example(corruption=(schema.vm("vm-bad"), json.dumps(dict(vm_record("vm-bad", "hv3"), memory_mib=math.inf)).encode()))
@example(corruption=(schema.vm("vm-bad"), json.dumps(dict(vm_record("vm-bad", "hv3"), node_limit="hv1")).encode()))
@example(corruption=(schema.vm("vm-bad"), json.dumps(dict(vm_record("vm-bad", "hv3"), lastnode=["hv1"])).encode()))
@example(corruption=(schema.vm("vm-bad"), json.dumps("x" * 100_000).encode()))
@example(
    corruption=(schema.vm_status("vm-bad"), json.dumps({"node": 7, "state": "running", "message": {"a": 1}}).encode())
)
@example(corruption=(schema.vm_migration("vm-bad"), json.dumps(dict(MIGRATION, phase="x" * 50_000)).encode()))
def test_a_corrupt_record_is_skipped_and_everything_else_still_read(
    corruption: tuple[str, bytes], config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    path, data = corruption
    caplog.clear()
    with caplog.at_level(logging.INFO):
        read_everything(build({path: data}), config)
    check_log(caplog, path, data)


def test_the_valid_cluster_is_read_whole(config: Config, caplog: pytest.LogCaptureFixture) -> None:
    """The baseline: nothing damaged, nothing warned about, and hv2 (whose keepalive stops) fenced."""
    store = build({})
    view = read_view(store, with_vms=True)
    assert set(view.nodes) == set(NODES) and set(view.vms) == {"vm-ok", "vm-bad"} and not view.damaged_vms
    read_everything(store, config)
    fence = store.get(schema.node_fence("hv2"))
    assert fence is not None and fence.value["step"] == "recovered"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(min_size=1, max_size=300), max_size=8))
def test_junk_claim_names_are_not_claims(names: list[str]) -> None:
    claims = claims_of([*names, CLAIM])
    assert CLAIM in [claim.name for claim in claims]
    assert all(claim.sequence >= 0 and claim.node for claim in claims)


@settings(max_examples=300, deadline=None)
@given(json_junk)
def test_junk_values_never_raise_anything_but_the_documented_errors(value: Any) -> None:
    """The value parsers every reader goes through: junk is None, a default, or the one documented error."""
    Handover.from_json(value)
    flow.NodeFencing.from_json(value)
    flow.Fence.from_record(value)
    parse_states(value)
    for parse in (records.VmRecord.from_json, records.VmStatus.from_json, records.Migration.from_json):
        try:
            parse(value)
        except records.InvalidVm as exc:
            assert len(str(exc)) < MAX_LINE
    for net_parse in (ClientNetwork.from_json, Reservation.from_json, Lease.from_json):
        try:
            net_parse(value)
        except InvalidNetwork as exc:
            assert len(str(exc)) < MAX_LINE


def test_node_fencing_refuses_nan_and_infinite_settings() -> None:
    for bad in (
        {"keepalive_interval": math.nan, "fence_intervals": 3},
        {"keepalive_interval": math.inf, "fence_intervals": 3},
        {"keepalive_interval": 1, "fence_intervals": 3, "watchdog_timeout": math.inf},
        {"keepalive_interval": 1, "fence_intervals": 3, "watchdog_timeout": math.nan},
    ):
        assert flow.NodeFencing.from_json(bad) is None


def test_a_vm_record_with_wrongly_typed_fields_is_damaged_not_a_crash() -> None:
    for key, junk in (
        ("memory_mib", math.inf),
        ("memory_mib", math.nan),
        ("memory_mib", -5),
        ("vcpus", "2"),
        ("node_limit", "hv1"),
        ("lastnode", ["hv1"]),
        ("reason", {"a": 1}),
        ("node_selector", 5),
    ):
        with pytest.raises(records.InvalidVm):
            records.VmRecord.from_json(dict(vm_record("vm-bad", "hv3"), **{key: junk}))


def test_a_huge_damaged_record_gives_a_short_reason() -> None:
    with pytest.raises(records.InvalidVm) as raised:
        records.VmRecord.from_json("x" * 100_000)
    assert len(str(raised.value)) < MAX_LINE


def test_the_encoded_baseline_is_canonical_json() -> None:
    assert all(json.loads(encode(value)) == value for value in cluster_values().values())


STORAGE_RECORD = {
    "ok": True,
    "refreshed_ms": 1,
    "took_s": 0.2,
    "cluster": {"fsid": "f", "health": "HEALTH_OK", "checks": [], "osds": {"total": 1, "up": 1, "in": 1}},
    "usage": {"total_bytes": 10, "used_bytes": 1, "avail_bytes": 9},
    "osds": [{"id": 0, "name": "osd.0", "up": True, "in": True}],
    "pools": [{"name": "vms", "volumes": [{"pool": "vms", "name": "d1"}]}],
    "partial": None,
    "error": None,
    "stale_since_ms": None,
}


@settings(max_examples=200, deadline=None)
@given(st.one_of(json_junk, mutated(STORAGE_RECORD)), st.one_of(st.none(), st.floats(0, 1e12)))
def test_a_junk_storage_record_still_gives_the_storage_line(record: Any, age: float | None) -> None:
    """/pvc/storage/status feeds every node's storage log line and `pvc cluster status`: whatever it
    holds, the line is produced (a field of the wrong type reads as missing)."""
    if not isinstance(record, dict):
        record = None
    assert isinstance(storage_text(record, age), str)
