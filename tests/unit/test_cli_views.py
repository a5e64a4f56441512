"""What `pvc` computes and prints from a cluster snapshot."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kazoo.hosts import collect_hosts

from cli.connection import CliError, resolve_target, zookeeper_problem
from cli.output import key_values, table, to_json
from cli.views import cluster_summary, node_summary
from pvcd.cluster.values import NodeView, StateRecord
from pvcd.coordinator.claims import Handover
from pvcd.coordinator.handover import HandoverRefused, not_alive, primary_request, secondary_request


def view(name, daemon="run", coordinator="secondary", mtime=10_000, interval=1, vms=2):
    keepalive = {
        "counter": 5,
        "interval": interval,
        "memory": {"total": 100, "used": 10, "free": 90, "allocated": 20},
        "vcpus": {"allocated": 3},
        "load": 0.5,
        "vms": {"count": vms, "running": ["x"] * vms},
        "stale": [],
    }
    return NodeView(name, {"coordinator": True}, StateRecord(daemon, coordinator, "ready"), keepalive, mtime, 5)


def test_keepalive_age_and_late_flag():
    fresh = node_summary(view("hv1", mtime=10_000), now_ms=11_500)
    assert fresh["keepalive"]["age_seconds"] == 1.5 and fresh["keepalive"]["late"] is False
    late = node_summary(view("hv1", mtime=10_000), now_ms=12_100)
    assert late["keepalive"]["late"] is True


def test_node_without_keepalive_has_no_age():
    empty = NodeView("hv1", {}, StateRecord("init", "client", "ready"), {"counter": 0}, None, 0)
    summary = node_summary(empty, now_ms=1)
    assert summary["keepalive"]["age_seconds"] is None and summary["keepalive"]["late"] is False


def test_cluster_summary():
    views = [view("hv1", coordinator="primary"), view("hv2"), view("hv3", daemon="stop")]
    summary = cluster_summary(views, now_ms=10_500, schema_version=1, primary="hv1")
    assert summary["nodes"] == 3
    assert summary["daemon_states"] == {"run": 2, "stop": 1}
    assert summary["primary"] == "hv1"
    assert summary["vms_running"] == 6
    assert summary["memory"] == {"total": 200, "allocated": 40}
    assert summary["healthy"] is False


def test_table_aligns_columns_and_right_aligns_numbers():
    text = table(["NAME", "VMS"], [["hv1", 3], ["hv10", 12], ["x", None]])
    assert text.splitlines() == ["NAME  VMS", "hv1     3", "hv10   12", "x       -"]


_json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.sampled_from(["é", "\u2028", "\ud800", '"\\'])
)
_json_keys = st.one_of(st.text(max_size=5), st.integers(), st.floats(), st.booleans(), st.none())
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=5), inner, max_size=4),
        st.dictionaries(_json_keys, inner, max_size=3),
    ),
    max_leaves=20,
)


@given(_json_values)
@settings(max_examples=300)
def test_to_json_writes_what_json_dumps_writes(value):
    try:
        expected: str | type[Exception] = json.dumps(value, indent=2, sort_keys=True)
    except TypeError:  # keys of types that cannot be sorted together
        expected = TypeError
    if expected is TypeError:
        with pytest.raises(TypeError):
            to_json(value)
    else:
        assert to_json(value) == expected


def test_to_json_refuses_what_json_dumps_refuses():
    with pytest.raises(TypeError):
        to_json({"x": object()})
    looped: list[Any] = []
    looped.append(looped)
    with pytest.raises(ValueError, match="Circular reference"):
        to_json(looped)


def test_help_imports_neither_kazoo_nor_yaml_nor_the_planner():
    """Start-up is most of what a `pvc` command costs (see cli.main): `--help`,
    and a command line refused before it connects, load none of these."""
    heavy = ("kazoo", "yaml", "libvirt", "hypothesis", "pvcd.config", "pvcd.placement.planner", "pvcd.vm.flush")
    found = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys; import cli.main; cli.main.main(['--help']); print(sorted(set({heavy!r}) & set(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert found.stdout.splitlines()[-1] == "[]"


def test_key_values():
    assert key_values([("A", 1), ("Long key", ["x", "y"])]) == "A:        1\nLong key: x, y"


def test_resolve_target_precedence(tmp_path):
    assert resolve_target("h:1", None, {"PVC_ZOOKEEPER": "e:2"}).hosts == "h:1"
    assert resolve_target(None, 3.0, {"PVC_ZOOKEEPER": "e:2"}).hosts == "e:2"
    assert resolve_target(None, 3.0, {"PVC_ZOOKEEPER": "e:2"}).connect_timeout == 3.0
    with pytest.raises(CliError) as missing:
        resolve_target(None, None, {"PVCD_CONFIG_FILE": str(tmp_path / "none.yaml")})
    assert "none.yaml" in str(missing.value)


# -- --zookeeper / $PVC_ZOOKEEPER, checked before kazoo sees them ------------------------------


@pytest.mark.parametrize(
    "hosts, problem",
    [
        ("::::", "looks like an IPv6 address: write it in brackets"),
        (":", "':' is not a host name or address"),
        ("", "it is empty"),
        ("h1:2181,,h2:2181", "a host is missing"),
        ("/pvc", "a host is missing"),
        ("host:notaport", "port 'notaport' is not a number from 1 to 65535"),
        ("host:99999", "port '99999' is not a number"),
        ("host:0", "port '0' is not a number"),
        ("host:", "port '' is not a number"),
        ("[::1", "has no closing ']'"),
        ("[nope]:2181", "'nope' is not an IPv6 address"),
        ("[::1]x", "expected [ADDRESS]:PORT"),
        ("h\x01:2181", "control characters"),
        ("h:1/a//b", "the chroot '/a//b' has an empty or invalid path component"),
        ("h:1/a/../b", "the chroot"),
        ("-h:1", "'-h' is not a host name"),
    ],
)
def test_malformed_zookeeper_addresses(hosts, problem):
    assert problem in (zookeeper_problem(hosts) or "")
    with pytest.raises(CliError) as refused:
        resolve_target(hosts, None, {})
    assert str(refused.value).startswith("invalid ZooKeeper address from --zookeeper: ")
    with pytest.raises(CliError) as by_env:
        resolve_target(None, None, {"PVC_ZOOKEEPER": hosts} if hosts else {"PVC_ZOOKEEPER": " "})
    assert "from PVC_ZOOKEEPER" in str(by_env.value)


@pytest.mark.parametrize(
    "hosts",
    ["127.0.0.1:2181", "zk1,zk2:2182,zk3.example.org:2181/pvc/prod", "[::1]:2181", "[fe80::1]", "h:1/", "localhost"],
)
def test_wellformed_zookeeper_addresses(hosts):
    assert zookeeper_problem(hosts) is None
    collect_hosts(hosts)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="ab1.:[]/,-_ \x00f", max_size=30))
def test_what_passes_the_check_kazoo_accepts(hosts):
    if zookeeper_problem(hosts) is None:
        collect_hosts(hosts)


# -- what `pvc node primary|secondary` refuses, judged on ZooKeeper's clock ----------------------


def coordinator(name, role="secondary", mtime=10_000, interval=1, daemon="run"):
    keepalive = {"counter": 5, "interval": interval}
    return NodeView(name, {"coordinator": True}, StateRecord(daemon, role, "ready"), keepalive, mtime, 5)


def test_handover_target_must_have_a_fresh_keepalive():
    cluster = {"hv1": coordinator("hv1", "primary", mtime=20_000), "hv2": coordinator("hv2", mtime=10_000)}
    assert primary_request(cluster, "hv1", None, False, "hv2", now_ms=12_000) == Handover("hv1", "hv2")
    with pytest.raises(HandoverRefused) as refused:
        primary_request(cluster, "hv1", None, False, "hv2", now_ms=22_500)
    assert str(refused.value) == "node hv2 is not alive: its last keepalive was 12.5s ago (interval 1s)"
    slow = dict(cluster, hv2=coordinator("hv2", mtime=10_000, interval=10))
    assert primary_request(slow, "hv1", None, False, "hv2", now_ms=22_500) == Handover("hv1", "hv2")


def test_handover_target_without_a_keepalive_or_interval_is_not_alive():
    never = {"hv1": coordinator("hv1", "primary"), "hv2": coordinator("hv2", mtime=None)}
    with pytest.raises(HandoverRefused, match="^node hv2 is not alive: it has sent no keepalive$"):
        primary_request(never, "hv1", None, False, "hv2", now_ms=10_000)
    silent = {"hv1": coordinator("hv1", "primary"), "hv2": coordinator("hv2", interval=None)}
    with pytest.raises(HandoverRefused, match="publishes no interval"):
        primary_request(silent, "hv1", None, False, "hv2", now_ms=10_000)


def test_a_node_clock_never_matters_only_zookeepers():
    """The node's own idea of time is not in its record; ages come from znode mtimes and now_ms."""
    ahead = {"hv1": coordinator("hv1", "primary"), "hv2": coordinator("hv2", mtime=10_000)}
    assert not_alive(ahead["hv2"], 9_000) is None  # a clock read before the keepalive: age 0
    assert not_alive(ahead["hv2"], 12_000) is None
    assert not_alive(ahead["hv2"], 12_001) == "node hv2 is not alive: its last keepalive was 2.0s ago (interval 1s)"


def test_secondary_request_needs_a_live_successor():
    cluster = {"hv1": coordinator("hv1", "primary", mtime=20_000), "hv2": coordinator("hv2", mtime=10_000)}
    assert secondary_request(cluster, "hv1", None, False, "hv1", now_ms=11_000) == Handover("hv1", None)
    with pytest.raises(HandoverRefused, match="no other coordinator is ready to take over from hv1"):
        secondary_request(cluster, "hv1", None, False, "hv1", now_ms=20_500)


def test_node_and_cluster_show_the_watchdog_and_failing_loops():
    from cli.views import cluster_summary, node_summary
    from pvcd.cluster.values import NodeView, StateRecord

    def view(name: str, info: dict, keepalive: dict) -> NodeView:
        return NodeView(
            name,
            info,
            StateRecord(daemon="run", coordinator="secondary", domain="ready"),
            dict(keepalive, counter=5, interval=1),
            10_000,
            5,
        )

    armed = {"watchdog": {"device": "/dev/watchdog", "armed": True, "timeout": 30, "problem": None}}
    failing = {
        "loops": {
            "fencer": {"failures": 7, "failing": True, "last_error": "KeyError: 'x'"},
            "keepalive": {"failures": 1, "failing": False, "last_error": "OSError: y"},
        }
    }
    healthy, sick = view("hv1", armed, {}), view("hv2", {}, failing)
    assert node_summary(healthy, 10_500)["watchdog"]["armed"] is True
    assert node_summary(sick, 10_500)["watchdog"] == {
        "armed": False,
        "timeout": None,
        "device": None,
        "problem": "not published (an older pvcd?)",
    }
    assert node_summary(sick, 10_500)["loops"]["fencer"]["failing"] is True
    summary = cluster_summary([healthy, sick], 10_500, 1)
    assert summary["failing_loops"] == {"hv2": ["fencer"]} and summary["healthy"] is False


def test_last_live_migration_as_shown_by_vm_info():
    from cli.vm import last_migration_text

    stats = {"source": "hv1", "target": "hv2", "time_ms": 2480, "downtime_ms": 21, "data_bytes": 75 * 2**20}
    assert last_migration_text(stats) == "hv1 -> hv2: took 2.48 s, downtime 21 ms, 75.0 MiB sent"
    assert last_migration_text(stats | {"downtime_ms": None, "data_bytes": None}) == "hv1 -> hv2: took 2.48 s"
    assert last_migration_text(None) is None
