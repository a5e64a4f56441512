"""The watched cluster view on a real ZooKeeper: kazoo's events, a dropped connection, an expired session.

tests/unit/test_cluster_cache.py drives the same cache through random changes
on the in-memory store; this checks the parts only kazoo can show: its event
types and paths, and that it drops every watch when the connection drops.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from helpers import expire_zookeeper_session, put_value, vm_xml, wait_for
from pvcd.cluster import vm_records as records
from pvcd.cluster.cache import ClusterCache, read_view
from pvcd.zk import schema, vms
from pvcd.zk.store import ZooKeeperStore


@pytest.fixture
def stores(zookeeper, zk) -> Iterator[tuple[ZooKeeperStore, ZooKeeperStore]]:
    opened = [ZooKeeperStore(zookeeper.address, security=zookeeper.security(), session_timeout=4.0) for _ in range(2)]
    for store in opened:
        store.start()
    opened[0].ensure_schema()
    yield opened[0], opened[1]
    for store in opened:
        store.stop()


def define(store: ZooKeeperStore, name: str, node: str) -> None:
    vms.define(store, records.new_record(records.parse_domain_xml(vm_xml(name, 128)), node))


def converged(cache: ClusterCache, store: ZooKeeperStore) -> bool:
    mine, truth = cache.snapshot(), read_view(store, with_vms=True)
    return (dict(mine.nodes), dict(mine.vms), dict(mine.damaged_vms), mine.maintenance) == (
        dict(truth.nodes),
        dict(truth.vms),
        dict(truth.damaged_vms),
        truth.maintenance,
    )


def test_the_cache_follows_changes_a_dropped_connection_and_an_expired_session(stores, zookeeper):
    writer, mine = stores
    for name in ("hv1", "hv2"):
        put_value(writer, schema.node(name), {"name": name})
        put_value(writer, schema.node_keepalive(name), {"counter": 0, "interval": 1})
    define(writer, "vm1", "hv1")
    cache = ClusterCache(mine, with_vms=True)
    cache.start()
    try:
        assert cache.wait_loaded(10)
        wait_for(lambda: converged(cache, writer), 10, what="the first load")

        before, generation = cache.reads, cache.snapshot().generation
        put_value(writer, schema.node_keepalive("hv2"), {"counter": 1, "interval": 1})
        view = cache.wait_newer(generation, 10)
        assert view.nodes["hv2"].keepalive["counter"] == 1
        assert cache.reads - before == 1, "one changed znode, one read"

        define(writer, "vm2", "hv2")
        put_value(writer, schema.MAINTENANCE, {"enabled": True})
        wait_for(lambda: converged(cache, writer), 10, what="a new VM and maintenance seen")
        assert cache.snapshot().maintenance and cache.snapshot().vms["vm2"].record.node == "hv2"

        mine.drop_connection()
        put_value(writer, schema.node_state("hv1"), {"daemon": "run", "coordinator": "client", "domain": "flush"})
        writer.delete_tree(schema.vm("vm1"))
        wait_for(lambda: converged(cache, writer), 15, what="what changed around a dropped connection")
        assert "vm1" not in cache.snapshot().vms

        expire_zookeeper_session(mine, zookeeper.address)
        define(writer, "vm3", "hv1")
        wait_for(lambda: converged(cache, writer), 15, what="what changed around an expired session")
        assert set(cache.snapshot().vms) == {"vm2", "vm3"}
    finally:
        cache.stop()
