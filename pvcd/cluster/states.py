"""Every node's states in one znode, published by the primary from its cluster view.

A node that logs the cluster's state with each keepalive (the
`log_keepalive_cluster_details` key) would otherwise have to follow every other
node's records: with N nodes, N² reads per keepalive interval for the cluster.
The primary already follows them (its cache); it writes `schema.CLUSTER_STATES`
only when a state changes, and the other nodes watch that one znode.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from pvcd.cluster.cache import ClusterCache
from pvcd.cluster.values import StateRecord
from pvcd.cluster.view import ClusterView
from pvcd.supervisor import Supervisor
from pvcd.zk import schema
from pvcd.zk.base import AlreadyExists, Store, StoreError, Versioned

log = logging.getLogger(__name__)

WAIT = 1.0
"""Seconds the publisher waits for a newer view before it looks again (only to notice a stop)."""


def states_of(view: ClusterView) -> dict[str, dict[str, str]]:
    """The published value: each node's states as `StateRecord.to_json` has them (pure)."""
    return {name: node.state.to_json() for name, node in sorted(view.nodes.items())}


def parse_states(value: Any) -> dict[str, StateRecord]:
    """The states from the published value; a malformed entry is skipped (pure)."""
    if not isinstance(value, Mapping):
        return {}
    return {str(name): StateRecord.from_json(state) for name, state in value.items() if isinstance(state, Mapping)}


class StatesPublisher:
    """A primary-only service: writes every node's states whenever the primary's view of them changes."""

    name = "cluster-states"

    def __init__(self, store: Store, cluster: ClusterCache, supervisor: Supervisor) -> None:
        self.store = store
        self.cluster = cluster
        self.supervisor = supervisor
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._written: dict[str, dict[str, str]] | None = None

    def start(self) -> None:
        self._stop = threading.Event()
        self._written = None
        self._thread = self.supervisor.spawn(self.name, self._publish, self._stop, 0.0)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(WAIT + 1.0)

    def _publish(self) -> None:
        """One round: once the view has changed (bounded wait), write the states if they did."""
        if not self.cluster.wait_loaded(WAIT):
            self._stop.wait(WAIT)
            return
        view = self.cluster.snapshot()
        if states_of(view) == self._written:
            view = self.cluster.wait_newer(view.generation, WAIT)
        states = states_of(view)
        if states == self._written or self._stop.is_set():
            return
        try:
            try:
                self.store.create(schema.CLUSTER_STATES, states, makepath=True)
            except AlreadyExists:
                self.store.set(schema.CLUSTER_STATES, states, -1)
        except StoreError as exc:
            log.warning("Cluster states not published: %s; trying again", exc)
            self._written = None
            self._stop.wait(WAIT)
            return
        self._written = states


class StatesFollower:
    """What a node that is not a coordinator knows of the cluster's states: the published znode, watched."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.states: dict[str, StateRecord] = {}

    def start(self) -> None:
        self.store.watch_data(schema.CLUSTER_STATES, self._on_states)

    def _on_states(self, value: Versioned | None) -> None:
        self.states = parse_states(value.value if value is not None else None)
