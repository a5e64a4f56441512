"""What the CLI shows about nodes and the cluster, computed from a snapshot (pure)."""

from __future__ import annotations

from typing import Any

from pvcd.zk.nodes import NodeView

# A keepalive older than this many intervals is flagged as late.
LATE_INTERVALS = 2


def keepalive_age(view: NodeView, now_ms: int) -> float | None:
    """Seconds since ZooKeeper last saw the node's keepalive change."""
    if view.keepalive_mtime_ms is None:
        return None
    return round(max(now_ms - view.keepalive_mtime_ms, 0) / 1000.0, 1)


def node_summary(view: NodeView, now_ms: int) -> dict[str, Any]:
    keepalive = view.keepalive
    memory = keepalive.get("memory") or {}
    vms = keepalive.get("vms") or {}
    interval = keepalive.get("interval")
    age = keepalive_age(view, now_ms)
    return {
        "name": view.name,
        "daemon_state": view.state.daemon,
        "coordinator_state": view.state.coordinator,
        "domain_state": view.state.domain,
        "vms": vms.get("count"),
        "running_vms": vms.get("running", []),
        "memory": {key: memory.get(key) for key in ("total", "used", "free", "allocated")},
        "vcpus_allocated": (keepalive.get("vcpus") or {}).get("allocated"),
        "load": keepalive.get("load"),
        "keepalive": {
            "counter": keepalive.get("counter"),
            "interval": interval,
            "age_seconds": age,
            "late": bool(age is not None and interval and age > LATE_INTERVALS * interval),
            "stale_figures": keepalive.get("stale", []),
        },
        "coordinator": bool(view.info.get("coordinator")),
        "pvcd_version": view.info.get("pvcd_version"),
        "hypervisor": view.info.get("hypervisor"),
    }


def cluster_summary(views: list[NodeView], now_ms: int, schema_version: int | None) -> dict[str, Any]:
    nodes = [node_summary(v, now_ms) for v in views]
    daemon_states: dict[str, int] = {}
    for node in nodes:
        daemon_states[node["daemon_state"]] = daemon_states.get(node["daemon_state"], 0) + 1
    totals = {
        key: sum(n["memory"][key] or 0 for n in nodes if n["daemon_state"] == "run")
        for key in ("total", "allocated")
    }
    late = [n["name"] for n in nodes if n["keepalive"]["late"] and n["daemon_state"] == "run"]
    return {
        "nodes": len(nodes),
        "daemon_states": daemon_states,
        "coordinators": [n["name"] for n in nodes if n["coordinator"]],
        "primary": next((n["name"] for n in nodes if n["coordinator_state"] == "primary"), None),
        "vms_running": sum(n["vms"] or 0 for n in nodes),
        "memory": totals,
        "late_keepalives": late,
        "schema_version": schema_version,
        "healthy": not late and all(n["daemon_state"] == "run" for n in nodes) and bool(nodes),
    }
