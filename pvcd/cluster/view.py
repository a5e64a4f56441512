"""The cluster at one moment: an immutable snapshot every loop and the CLI read (pure).

Built from the raw values of the coordination store's znodes (`Versioned`, or
None for a missing one) by the watched cache (`pvcd.cluster.cache`) or by a
one-off read (the CLI); nothing here reads or watches anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pvcd.cluster.values import NO_FENCE, NodeView, StateRecord
from pvcd.cluster.vm_records import InvalidVm, VmView
from pvcd.zk import schema
from pvcd.zk.base import Versioned
from pvcd.zk.vms import view_of

NODE_PARTS: tuple[str, ...] = ("info", "state", "keepalive", "fence")
"""The znodes of a node the view holds (its IPMI record, with the BMC password, is never cached)."""

VM_PARTS: tuple[str, ...] = ("record", "status", "migration")


def node_path(name: str, part: str) -> str:
    """The znode of one part of node `name`."""
    if part == "info":
        return schema.node(name)
    if part == "state":
        return schema.node_state(name)
    if part == "keepalive":
        return schema.node_keepalive(name)
    return schema.node_fence(name)


def vm_path(name: str, part: str) -> str:
    """The znode of one part of VM `name`."""
    if part == "record":
        return schema.vm(name)
    if part == "status":
        return schema.vm_status(name)
    return schema.vm_migration(name)


def node_of(name: str, values: Mapping[str, Versioned | None]) -> NodeView | None:
    """Node `name` from the values of its parts (keyed by part); None while it has no registration record."""
    info = values.get("info")
    if info is None:
        return None
    state = values.get("state")
    keepalive = values.get("keepalive")
    fence = values.get("fence")
    return NodeView(
        name=name,
        info=info.value if isinstance(info.value, dict) else {},
        state=StateRecord.from_json(state.value if state else None),
        keepalive=keepalive.value if keepalive and isinstance(keepalive.value, dict) else {},
        keepalive_mtime_ms=keepalive.mtime_ms if keepalive and keepalive.version > 0 else None,
        keepalive_version=keepalive.version if keepalive else None,
        fence=fence.value if fence is not None and isinstance(fence.value, dict) else dict(NO_FENCE),
    )


def vm_of(values: Mapping[str, Versioned | None]) -> VmView | None:
    """The VM from the values of its parts; None without a record. Raises InvalidVm on a damaged one."""
    return view_of(values.get("record"), values.get("status"), values.get("migration"))


def _flag(value: Versioned | None, key: str) -> bool:
    return bool(value is not None and isinstance(value.value, dict) and value.value.get(key))


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class ClusterView:
    """Nodes, VMs and the cluster-wide records as they stood at `generation`.

    `with_vms` says whether the VMs are part of it (a node's cache may follow
    the nodes only); `damaged_vms` lists VM records that cannot be read, with
    why, so one bad record never hides the others.
    """

    nodes: Mapping[str, NodeView] = field(default_factory=lambda: _frozen({}))
    vms: Mapping[str, VmView] = field(default_factory=lambda: _frozen({}))
    damaged_vms: Mapping[str, str] = field(default_factory=lambda: _frozen({}))
    maintenance: bool = False
    faults: Mapping[str, Any] = field(default_factory=lambda: _frozen({}))
    with_vms: bool = False
    generation: int = 0

    def node_list(self) -> list[NodeView]:
        """Every registered node, sorted by name."""
        return [self.nodes[name] for name in sorted(self.nodes)]


def assemble(
    node_values: Mapping[str, Mapping[str, Versioned | None]],
    vm_values: Mapping[str, Mapping[str, Versioned | None]] | None,
    maintenance: Versioned | None,
    faults: Versioned | None,
    generation: int = 0,
) -> ClusterView:
    """The view made of raw values: per node and per VM, their parts' values."""
    nodes: dict[str, NodeView] = {}
    for name, parts in node_values.items():
        view = node_of(name, parts)
        if view is not None:
            nodes[name] = view
    vms: dict[str, VmView] = {}
    damaged: dict[str, str] = {}
    for name, parts in (vm_values or {}).items():
        try:
            vm = vm_of(parts)
        except InvalidVm as exc:
            damaged[name] = str(exc)
            continue
        if vm is not None:
            vms[name] = vm
    return ClusterView(
        nodes=_frozen(nodes),
        vms=_frozen(vms),
        damaged_vms=_frozen(damaged),
        maintenance=_flag(maintenance, "enabled"),
        faults=_frozen(faults.value if faults is not None and isinstance(faults.value, dict) else {}),
        with_vms=vm_values is not None,
        generation=generation,
    )
