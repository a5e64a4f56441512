"""The primary publishes every node's states in one znode; other nodes follow that znode only."""

from __future__ import annotations

from helpers import put_value, wait_for
from pvcd.cluster.cache import ClusterCache
from pvcd.cluster.states import StatesFollower, StatesPublisher, parse_states
from pvcd.cluster.values import StateRecord
from pvcd.supervisor import Supervisor
from pvcd.zk import schema
from pvcd.zk.memory import MemoryServer, MemoryStore


def started(server: MemoryServer) -> MemoryStore:
    store = MemoryStore(server)
    store.start()
    return store


def register(store: MemoryStore, name: str, daemon: str = "run") -> None:
    put_value(store, schema.node(name), {"name": name})
    put_value(store, schema.node_state(name), StateRecord(daemon, "client", "ready").to_json())
    put_value(store, schema.node_keepalive(name), {"counter": 0, "interval": 1})


def test_the_states_are_published_on_a_change_and_only_then_and_followed_by_other_nodes():
    server = MemoryServer()
    writer, primary, other = started(server), started(server), started(server)
    writer.ensure_schema()
    for name in ("hv1", "hv2", "hv3"):
        register(writer, name)
    cache = ClusterCache(primary, with_vms=False)
    publisher = StatesPublisher(primary, cache, Supervisor("hv1"))
    follower = StatesFollower(other)
    cache.start()
    publisher.start()
    follower.start()
    try:
        wait_for(lambda: set(follower.states) == {"hv1", "hv2", "hv3"}, 5, interval=0.01, what="the states published")
        assert follower.states["hv2"] == StateRecord("run", "client", "ready")
        version = writer.get(schema.CLUSTER_STATES).version

        # Keepalives rewrite a node's records every interval without changing its states: nothing published.
        generation = cache.snapshot().generation
        for counter in range(1, 4):
            put_value(writer, schema.node_keepalive("hv3"), {"counter": counter, "interval": 1})
            put_value(writer, schema.node_state("hv3"), StateRecord("run", "client", "ready").to_json())
        wait_for(lambda: cache.snapshot().nodes["hv3"].keepalive["counter"] == 3, 5, interval=0.01, what="seen")
        assert cache.snapshot().generation > generation
        put_value(writer, schema.node_state("hv2"), StateRecord("stop", "client", "ready").to_json())
        wait_for(lambda: follower.states["hv2"].daemon == "stop", 5, interval=0.01, what="hv2's stop followed")
        assert writer.get(schema.CLUSTER_STATES).version == version + 1, "one write: hv2's change only"
    finally:
        publisher.stop()
        cache.stop()


def test_a_malformed_published_value_gives_what_can_be_read():
    assert parse_states(None) == {} and parse_states([1, 2]) == {}
    assert parse_states({"hv1": {"daemon": "run"}, "hv2": "junk"}) == {"hv1": StateRecord("run", "unknown", "unknown")}
