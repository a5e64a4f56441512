"""Keepalive records: the node's figures in, one JSON value out (pure).

The record is what every other part of the cluster knows about a node's load:
the CLI shows it, and the placement code reads it. Liveness is NOT judged from
anything written here but from ZooKeeper's view of the record changing (its
version and mtime), so the record carries no wall-clock time of the node.
"""

from __future__ import annotations

from typing import Any

from pvcd.cluster.values import DomainFigures, HostMemory, StateRecord

# Collector names: the keys of the figures handed to build_keepalive.
MEMORY = "memory"
LOAD = "load"
DOMAINS = "domains"

# Share of the keepalive interval that collectors may use, so the transaction
# itself still leaves within the interval.
COLLECT_BUDGET_SHARE = 0.5


def build_keepalive(
    counter: int,
    interval: int,
    figures: dict[str, Any],
    stale: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The keepalive value for one round.

    `figures` maps collector names to their latest values (None when a collector
    has never answered). Allocated memory and vCPUs are the sums over the running
    VMs, because that is what placement must reserve against.
    """
    memory: HostMemory | None = figures.get(MEMORY)
    domains: list[DomainFigures] | None = figures.get(DOMAINS)
    load: float | None = figures.get(LOAD)
    allocated = sum(d.memory_mib for d in domains) if domains is not None else None
    return {
        "counter": counter,
        "interval": interval,
        "memory": {
            "total": memory.total_mib if memory else None,
            "used": memory.total_mib - memory.free_mib if memory else None,
            "free": memory.free_mib if memory else None,
            "allocated": allocated,
        },
        "vcpus": {"allocated": sum(d.vcpus for d in domains) if domains is not None else None},
        "load": load,
        "vms": {
            "count": len(domains) if domains is not None else None,
            "running": [d.name for d in domains] if domains is not None else [],
        },
        "stale": sorted(stale),
    }


def keepalive_log_line(node: str, record: dict[str, Any], state: StateRecord, details: bool) -> str:
    """The operator's one-line view of a keepalive."""
    line = f"Keepalive #{record['counter']} from {node}"
    if not details:
        return line
    memory = record["memory"]
    stale = f"; stale figures: {', '.join(record['stale'])}" if record["stale"] else ""
    return (
        f"{line}: daemon {state.daemon}, coordinator {state.coordinator}, domain {state.domain}; "
        f"{record['vms']['count']} VMs; memory allocated {memory['allocated']} / used {memory['used']} "
        f"/ free {memory['free']} / total {memory['total']} MiB; vCPUs allocated {record['vcpus']['allocated']}; "
        f"load {record['load']}{stale}"
    )


def cluster_log_line(states: dict[str, StateRecord]) -> str:
    """A summary of every node's daemon state, for keepalive cluster details."""
    counts: dict[str, int] = {}
    for state in states.values():
        counts[state.daemon] = counts.get(state.daemon, 0) + 1
    summary = ", ".join(f"{count} {name}" for name, count in sorted(counts.items()))
    primary = sorted(name for name, s in states.items() if s.coordinator == "primary")
    return f"Cluster: {len(states)} nodes ({summary}); primary: {', '.join(primary) or 'none'}"
