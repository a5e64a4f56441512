"""What the CLI shows about nodes and the cluster, computed from a snapshot (pure)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pvcd.cluster.values import NodeView


def keepalive_age(view: NodeView, now_ms: int) -> float | None:
    """Seconds since ZooKeeper last saw the node's keepalive change."""
    if view.keepalive_mtime_ms is None:
        return None
    return round(max(now_ms - view.keepalive_mtime_ms, 0) / 1000.0, 1)


def fence_summary(record: dict[str, Any]) -> dict[str, Any]:
    """The node's current fence, or the last one before an operator readied it."""
    current = record if record.get("outcome") is not None else record.get("last") or {}
    return {
        "pending": record.get("outcome") is not None,
        "id": current.get("id"),
        "step": current.get("step"),
        "outcome": current.get("outcome"),
        "reason": current.get("outcome_reason") or current.get("reason"),
        "by": current.get("by"),
        "resumed_by": current.get("resumed_by"),
        "started_ms": current.get("started_ms"),
        "finished_ms": current.get("finished_ms"),
        "action": current.get("action_reason"),
        "node_state": current.get("node_state"),
        "recovered": current.get("recovered"),
        "recovered_vms": current.get("recovered_vms", {}),
        "unplaced_vms": current.get("unplaced_vms", {}),
        "confirmed_by_operator": bool(current.get("confirmed_by_operator")),
        "storage": current.get("storage") if isinstance(current.get("storage"), dict) else None,
    }


def watchdog_summary(info: dict[str, Any]) -> dict[str, Any]:
    """The node's watchdog as it published it; a node that published none has none."""
    watchdog = info.get("watchdog")
    if not isinstance(watchdog, dict):
        return {"armed": False, "timeout": None, "device": None, "problem": "not published (an older pvcd?)"}
    return {key: watchdog.get(key) for key in ("armed", "timeout", "device", "problem")}


def loop_summary(keepalive: dict[str, Any]) -> dict[str, Any]:
    """Per loop of the daemon: failures counted by its supervisor, and whether it keeps failing."""
    loops = keepalive.get("loops")
    if not isinstance(loops, dict):
        return {}
    return {name: value for name, value in loops.items() if isinstance(value, dict)}


def node_summary(view: NodeView, now_ms: int) -> dict[str, Any]:
    from pvcd.cluster.liveness import is_late  # imported here: every `pvc` run imports this module

    keepalive = view.keepalive
    memory = keepalive.get("memory") or {}
    vms = keepalive.get("vms") or {}
    interval = keepalive.get("interval")
    age = keepalive_age(view, now_ms)
    fence = fence_summary(view.fence)
    return {
        "name": view.name,
        "daemon_state": view.state.daemon,
        "coordinator_state": view.state.coordinator,
        # A fenced node cannot say so itself while it is down: its fence record does.
        "domain_state": (fence["node_state"] or fence["outcome"]) if fence["pending"] else view.state.domain,
        "vms": vms.get("count"),
        "running_vms": vms.get("running", []),
        "memory": {key: memory.get(key) for key in ("total", "used", "free", "allocated")},
        "vcpus_allocated": (keepalive.get("vcpus") or {}).get("allocated"),
        "load": keepalive.get("load"),
        "keepalive": {
            "counter": keepalive.get("counter"),
            "interval": interval,
            "age_seconds": age,
            "late": bool(age is not None and interval and is_late(view, now_ms)),
            "stale_figures": keepalive.get("stale", []),
        },
        "fence": fence,
        "watchdog": watchdog_summary(view.info),
        "loops": loop_summary(keepalive),
        "coordinator": bool(view.info.get("coordinator")),
        "pvcd_version": view.info.get("pvcd_version"),
        "hypervisor": view.info.get("hypervisor"),
    }


def cluster_summary(
    views: list[NodeView],
    now_ms: int,
    schema_version: int | None,
    maintenance: bool = False,
    faults: dict[str, Any] | None = None,
    primary: str | None = None,
) -> dict[str, Any]:
    nodes = [node_summary(v, now_ms) for v in views]
    daemon_states: dict[str, int] = {}
    for node in nodes:
        daemon_states[node["daemon_state"]] = daemon_states.get(node["daemon_state"], 0) + 1
    totals = {
        key: sum(n["memory"][key] or 0 for n in nodes if n["daemon_state"] == "run") for key in ("total", "allocated")
    }
    late = [n["name"] for n in nodes if n["keepalive"]["late"] and n["daemon_state"] == "run"]
    failing = {n["name"]: sorted(name for name, loop in n["loops"].items() if loop.get("failing")) for n in nodes}
    failing = {node: loops for node, loops in failing.items() if loops}
    return {
        "nodes": len(nodes),
        "daemon_states": daemon_states,
        "coordinators": [n["name"] for n in nodes if n["coordinator"]],
        "primary": primary,
        "vms_running": sum(n["vms"] or 0 for n in nodes),
        "memory": totals,
        "late_keepalives": late,
        "schema_version": schema_version,
        "maintenance": maintenance,
        "faults": faults or {},
        "fenced": [n["name"] for n in nodes if n["fence"]["pending"]],
        "failing_loops": failing,
        "healthy": not late
        and not faults
        and not failing
        and bool(nodes)
        and all(n["daemon_state"] == "run" and not n["fence"]["pending"] for n in nodes),
    }
