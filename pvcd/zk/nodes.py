"""Node records in ZooKeeper: registration, keepalive transactions, cluster reads.

A node owns its registration record, its state, its keepalive and its IPMI
record (see `schema`), and is their only writer; each write names the version
it last saw. Its fence record is written by the fencer (and cleared by an
operator's `pvc node ready`): every keepalive transaction checks that record's
version, so a node that was declared dead — even one that was only frozen and
wakes up later — finds out at its very next keepalive.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from pvcd.cluster.values import NO_FENCE, NodeView, StateRecord
from pvcd.cluster.view import NODE_PARTS, node_of, node_path
from pvcd.fencing.flow import UNFINISHED, Fence
from pvcd.zk import schema
from pvcd.zk.base import AlreadyExists, Store, as_empty


@dataclass(frozen=True)
class Versions:
    """The versions of the node's znodes after our last write (fence: last read)."""

    state: int
    keepalive: int
    counter: int
    fence: int
    fence_record: dict[str, Any] = field(default_factory=lambda: dict(NO_FENCE))
    """The fence record as read at version `fence`: the node compares its content with
    the fence it last acknowledged, so a fence declared while it was cut off is never
    taken for one it already knew."""


def register(
    store: Store, name: str, info: dict[str, Any], state: StateRecord, ipmi: dict[str, Any] | None = None
) -> Versions:
    """Create or refresh the node's records in one transaction.

    A restarting node keeps its keepalive counter so that it only ever advances,
    and keeps its fence record: only an operator clears that.
    """
    schema.validate_name(name)
    store.ensure_schema()
    existing = store.get(schema.node(name))
    if existing is None:
        try:
            store.transaction().create(schema.node(name), info).create(schema.node_state(name), state.to_json()).create(
                schema.node_keepalive(name), {"counter": 0}
            ).create(schema.node_fence(name), NO_FENCE).create(schema.node_ipmi(name), ipmi).commit()
        except AlreadyExists:
            return register(store, name, info, state, ipmi)
        return read_versions(store, name)
    versions = read_versions(store, name)
    transaction = (
        store.transaction()
        .set(schema.node(name), info, existing.version)
        .set(schema.node_state(name), state.to_json(), versions.state)
    )
    # Written blind: a node that is not a coordinator may write its BMC record but not read it.
    if store.exists(schema.node_ipmi(name)):
        transaction.set(schema.node_ipmi(name), ipmi, -1)
    else:
        transaction.create(schema.node_ipmi(name), ipmi)
    transaction.commit()
    return replace(versions, state=versions.state + 1)


def publish_info(store: Store, name: str, info: dict[str, Any]) -> None:
    """Replace the registration record (the node learnt something about itself, e.g. its watchdog)."""
    found = store.get(schema.node(name))
    if found is None:
        raise LookupError(f"node {name} is not registered")
    store.set(schema.node(name), info, found.version)


def read_versions(store: Store, name: str) -> Versions:
    """The current versions of the node's znodes, after a conflict or an outage."""
    state = store.get(schema.node_state(name))
    keepalive = store.get(schema.node_keepalive(name))
    fence = store.get(schema.node_fence(name))
    if state is None or keepalive is None:
        raise LookupError(f"node {name} is not registered")
    if fence is None:
        try:
            store.create(schema.node_fence(name), NO_FENCE)
        except AlreadyExists:
            pass
        fence = store.get(schema.node_fence(name))
        assert fence is not None
    counter = keepalive.value.get("counter", 0) if isinstance(keepalive.value, dict) else 0
    record = fence.value if isinstance(fence.value, dict) else dict(NO_FENCE)
    return Versions(state.version, keepalive.version, int(counter), fence.version, record)


class FenceInProgress(Exception):
    """The node's fence is still being carried out; it cannot be cleared now."""


def clear_fence(store: Store, name: str) -> bool:
    """An operator readies a fenced node: the fence ends, and is kept as `last`.

    Bumping the record's version also tells the node, whose next keepalive is
    refused and makes it re-read the record. Refused (FenceInProgress) while the
    fence is declared, powering off or recovering: a node readied while its VMs
    are being started elsewhere would start them too."""
    found = store.get(schema.node_fence(name))
    if found is None or not isinstance(found.value, dict) or found.value.get("outcome") is None:
        return False
    fence = Fence.from_record(found.value)
    if fence is not None and fence.step in UNFINISHED:
        raise FenceInProgress(
            f"the fence {fence.id} of node {name} is still in progress (step {fence.step}); "
            "try again once it is recovered"
        )
    store.set(schema.node_fence(name), {"outcome": None, "last": found.value}, found.version)
    return True


def read_fence(store: Store, name: str) -> dict[str, Any]:
    """The node's fence record; `{"outcome": None}` when it was never fenced or was readied."""
    found = store.get(schema.node_fence(name))
    return found.value if found is not None and isinstance(found.value, dict) else dict(NO_FENCE)


def send_keepalive(
    store: Store, name: str, versions: Versions, state: StateRecord, record: dict[str, Any], timeout: float
) -> Versions:
    """One keepalive: the node's state and figures in a single transaction,
    refused if the node's fence record changed since the node last read it.
    Bounded by `timeout`, so a black-holed connection cannot hold the keepalive loop."""
    store.transaction().check(schema.node_fence(name), versions.fence).set(
        schema.node_state(name), state.to_json(), versions.state
    ).set(schema.node_keepalive(name), record, versions.keepalive).commit(timeout)
    return replace(versions, state=versions.state + 1, keepalive=versions.keepalive + 1, counter=record["counter"])


def write_state(store: Store, name: str, versions: Versions, state: StateRecord) -> Versions:
    """Publish a state change at once rather than at the next keepalive."""
    store.set(schema.node_state(name), state.to_json(), versions.state)
    return replace(versions, state=versions.state + 1)


def read_node(store: Store, name: str) -> NodeView | None:
    """One node as `pvcd.cluster.view.node_of` assembles it, in one `get_many`; None if not registered."""
    return _assembled(store, [name])[0]


def read_cluster(store: Store) -> list[NodeView]:
    """Every registered node, sorted by name, in one `get_many`."""
    return [view for view in _assembled(store, store.children(schema.NODES)) if view is not None]


def _assembled(store: Store, names: list[str]) -> list[NodeView | None]:
    answers = iter(store.get_many([node_path(name, part) for name in names for part in NODE_PARTS]))
    return [node_of(name, {part: as_empty(next(answers)) for part in NODE_PARTS}) for name in names]
