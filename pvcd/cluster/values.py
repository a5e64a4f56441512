"""Value types of the cluster's nodes, as stored in the coordination store and as read back.

Kept apart from the adapters that produce them (libvirt, ZooKeeper), so that
pure code and the CLI can hold them without importing either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

NO_FENCE: dict[str, Any] = {"outcome": None}
"""The fence record of a node that was never fenced, or was readied since."""


@dataclass(frozen=True)
class DomainFigures:
    """What a running VM takes from its host."""

    name: str
    uuid: str
    memory_mib: int
    vcpus: int


@dataclass(frozen=True)
class HostMemory:
    total_mib: int
    free_mib: int


@dataclass(frozen=True)
class StateRecord:
    """The node's own states, written in the same transaction as its keepalive."""

    daemon: str
    coordinator: str
    domain: str

    def to_json(self) -> dict[str, str]:
        return {"daemon": self.daemon, "coordinator": self.coordinator, "domain": self.domain}

    @classmethod
    def from_json(cls, value: Any) -> StateRecord:
        value = value if isinstance(value, dict) else {}
        return cls(
            daemon=str(value.get("daemon", "unknown")),
            coordinator=str(value.get("coordinator", "unknown")),
            domain=str(value.get("domain", "unknown")),
        )


@dataclass(frozen=True)
class NodeView:
    """One node as a reader of the cluster sees it."""

    name: str
    info: dict[str, Any]
    state: StateRecord
    keepalive: dict[str, Any]
    keepalive_mtime_ms: int | None
    keepalive_version: int | None
    fence: dict[str, Any] = field(default_factory=lambda: dict(NO_FENCE))
