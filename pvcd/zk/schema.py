"""Every ZooKeeper path pvcd uses, and the schema version.

One module owns the layout so that the daemon, the CLI and the tests can never
disagree about where a fact lives. `docs/zookeeper-schema.md` describes the value
stored at each path; change both together and bump SCHEMA_VERSION when an
existing value changes shape.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

ROOT = "/pvc"
SCHEMA = f"{ROOT}/schema"
CLOCK = f"{ROOT}/clock"
NODES = f"{ROOT}/nodes"


def node(name: str) -> str:
    """The node's registration record: static facts written when the daemon starts."""
    return f"{NODES}/{name}"


def node_state(name: str) -> str:
    """The node's daemon and coordinator state, written only by that node."""
    return f"{node(name)}/state"


def node_keepalive(name: str) -> str:
    """The node's latest keepalive: counter and resource figures."""
    return f"{node(name)}/keepalive"


def validate_name(name: str) -> str:
    """Reject names that would escape their parent znode."""
    if not name or "/" in name or name in (".", "..") or name.strip() != name:
        raise ValueError(f"invalid name for a ZooKeeper path component: {name!r}")
    return name
