"""What `pvc` computes and prints from a cluster snapshot."""

from __future__ import annotations

from cli.connection import CliError, resolve_target
from cli.output import key_values, table
from cli.views import cluster_summary, node_summary
from pvcd.keepalive import StateRecord
from pvcd.zk.nodes import NodeView

import pytest


def view(name, daemon="run", coordinator="secondary", mtime=10_000, interval=1, vms=2):
    keepalive = {"counter": 5, "interval": interval, "memory": {"total": 100, "used": 10, "free": 90, "allocated": 20},
                 "vcpus": {"allocated": 3}, "load": 0.5, "vms": {"count": vms, "running": ["x"] * vms}, "stale": []}
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


def test_key_values():
    assert key_values([("A", 1), ("Long key", ["x", "y"])]) == "A:        1\nLong key: x, y"


def test_resolve_target_precedence(tmp_path):
    assert resolve_target("h:1", None, {"PVC_ZOOKEEPER": "e:2"}).hosts == "h:1"
    assert resolve_target(None, 3.0, {"PVC_ZOOKEEPER": "e:2"}).hosts == "e:2"
    assert resolve_target(None, 3.0, {"PVC_ZOOKEEPER": "e:2"}).connect_timeout == 3.0
    with pytest.raises(CliError) as missing:
        resolve_target(None, None, {"PVCD_CONFIG_FILE": str(tmp_path / "none.yaml")})
    assert "none.yaml" in str(missing.value)
