"""The watched cluster view converges to the store's contents, reading only what changed.

Runs on the in-memory store (same semantics as ZooKeeper, checked by the store
contract tests): random writes by another session, interleaved with the cache's
own connection dropping, coming back and its session expiring; afterwards the
cache's snapshot must equal a fresh read of the store. tests/integration has
the same cache on a real ZooKeeper.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import put_value, vm_xml, wait_for
from pvcd.cluster import vm_records as records
from pvcd.cluster.cache import ClusterCache, read_view
from pvcd.cluster.view import ClusterView
from pvcd.zk import schema
from pvcd.zk.base import NotFound, Store
from pvcd.zk.memory import MemoryServer, MemoryStore

NODES = ("hv1", "hv2", "hv3")
VMS = ("vm1", "vm2", "vm3", "vm4")


def started(server: MemoryServer) -> MemoryStore:
    store = MemoryStore(server)
    store.start()
    return store


@contextmanager
def cluster(with_vms: bool = True) -> Iterator[tuple[MemoryStore, MemoryStore, ClusterCache]]:
    """A writer's session, the cache's own session, and the cache (started, stopped at the end)."""
    server = MemoryServer()
    writer, cache_store = started(server), started(server)
    writer.ensure_schema()
    cache = ClusterCache(cache_store, with_vms=with_vms)
    yield writer, cache_store, cache
    cache.stop()


def vm_record(name: str, node: str) -> dict[str, Any]:
    return records.new_record(records.parse_domain_xml(vm_xml(name, 128)), node).to_json()


def same(cache: ClusterCache, store: Store) -> bool:
    mine, truth = cache.snapshot(), read_view(store, with_vms=cache.with_vms)
    return _content(mine) == _content(truth)


def _content(view: ClusterView) -> tuple[Any, ...]:
    return (dict(view.nodes), dict(view.vms), dict(view.damaged_vms), view.maintenance, dict(view.faults))


node_part = st.sampled_from(("state", "keepalive", "fence"))
all_node_parts = st.sampled_from(("info", "state", "keepalive", "fence"))
values = st.one_of(
    st.none(),
    st.integers(),
    st.dictionaries(st.sampled_from(("daemon", "counter", "outcome", "interval")), st.integers(0, 3), max_size=2),
)
operations = st.one_of(
    st.tuples(
        st.just("node"), st.sampled_from(NODES), st.sampled_from(("info", "state", "keepalive", "fence")), values
    ),
    st.tuples(st.just("drop-node-part"), st.sampled_from(NODES), node_part, st.none()),
    st.tuples(st.just("drop-node"), st.sampled_from(NODES), st.none(), st.none()),
    st.tuples(st.just("vm"), st.sampled_from(VMS), st.sampled_from(NODES), st.none()),
    st.tuples(st.just("vm-damaged"), st.sampled_from(VMS), st.none(), values),
    st.tuples(st.just("vm-status"), st.sampled_from(VMS), st.sampled_from(("running", "stopped")), st.none()),
    st.tuples(st.just("vm-migration"), st.sampled_from(VMS), st.booleans(), st.none()),
    st.tuples(st.just("drop-vm"), st.sampled_from(VMS), st.none(), st.none()),
    st.tuples(st.just("maintenance"), st.booleans(), st.none(), st.none()),
    st.tuples(st.just("faults"), st.none(), st.none(), values),
    st.tuples(st.sampled_from(("disconnect", "reconnect", "expire")), st.none(), st.none(), st.none()),
)


def apply(writer: Store, cache_store: MemoryStore, op: tuple[Any, ...]) -> None:
    kind, a, b, c = op
    if kind == "node":
        path = schema.node(a) if b == "info" else f"{schema.node(a)}/{b}"
        put_value(writer, path, c)
    elif kind == "drop-node-part":
        try:
            writer.delete(f"{schema.node(a)}/{b}")
        except NotFound:
            pass
    elif kind == "drop-node":
        writer.delete_tree(schema.node(a))
    elif kind == "vm":
        put_value(writer, schema.vm(a), vm_record(a, b))
    elif kind == "vm-damaged":
        put_value(writer, schema.vm(a), c)
    elif kind == "vm-status":
        if writer.exists(schema.vm(a)):
            put_value(writer, schema.vm_status(a), {"state": b, "node": "hv1"})
    elif kind == "vm-migration":
        if not writer.exists(schema.vm(a)):
            return
        if b:
            migration = {"id": "m1", "kind": "migrate", "source": "hv1", "target": "hv2", "phase": "requested"}
            put_value(writer, schema.vm_migration(a), migration)
        else:
            try:
                writer.delete(schema.vm_migration(a))
            except NotFound:
                pass
    elif kind == "drop-vm":
        writer.delete_tree(schema.vm(a))
    elif kind == "maintenance":
        put_value(writer, schema.MAINTENANCE, {"enabled": a})
    elif kind == "faults":
        put_value(writer, schema.FAULTS, c)
    elif kind == "disconnect":
        cache_store.disconnect()
    elif kind == "reconnect":
        cache_store.reconnect()
    elif kind == "expire":
        cache_store.expire_session()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(operations, max_size=40), st.booleans())
def test_the_cache_converges_to_the_store_after_changes_drops_and_expiries(ops, with_vms):
    with cluster(with_vms) as (writer, cache_store, cache):
        cache.start()
        for op in ops:
            apply(writer, cache_store, op)
        cache_store.reconnect()
        wait_for(lambda: same(cache, writer), 5, interval=0.01, what="the cache to converge")


def test_one_change_costs_one_read_whatever_the_number_of_vms():
    with cluster() as (writer, _cache_store, cache):
        for name in NODES:
            put_value(writer, schema.node(name), {"name": name})
            put_value(writer, schema.node_keepalive(name), {"counter": 0, "interval": 1})
        for index in range(300):
            put_value(writer, schema.vm(f"vm{index}"), vm_record(f"vm{index}", NODES[index % 3]))
        cache.start()
        assert cache.wait_loaded(5)
        wait_for(lambda: same(cache, writer), 5, interval=0.01, what="the first load")
        assert len(cache.snapshot().vms) == 300
        before, generation = cache.reads, cache.snapshot().generation
        writer.set(schema.node_keepalive("hv2"), {"counter": 1, "interval": 1}, -1)
        view = cache.wait_newer(generation, 5)
        assert view.nodes["hv2"].keepalive["counter"] == 1
        assert cache.reads - before == 1
        before, generation = cache.reads, view.generation
        writer.set(schema.vm("vm7"), vm_record("vm7", "hv3"), -1)
        view = cache.wait_newer(generation, 5)
        assert view.vms["vm7"].record.node == "hv3"
        assert cache.reads - before == 1


def test_a_vm_removed_leaves_the_view_and_comes_back_when_defined_again():
    with cluster() as (writer, _cache_store, cache):
        put_value(writer, schema.vm("vm1"), vm_record("vm1", "hv1"))
        put_value(writer, schema.vm_status("vm1"), {"state": "stopped"})
        cache.start()
        wait_for(lambda: "vm1" in cache.snapshot().vms, 5, interval=0.01, what="vm1 in the view")
        writer.delete_tree(schema.vm("vm1"))
        wait_for(lambda: "vm1" not in cache.snapshot().vms, 5, interval=0.01, what="vm1 gone from the view")
        put_value(writer, schema.vm("vm1"), vm_record("vm1", "hv2"))
        wait_for(lambda: same(cache, writer), 5, interval=0.01, what="vm1 back in the view")
        assert cache.snapshot().vms["vm1"].record.node == "hv2"


@pytest.mark.parametrize(
    "module", ["pvcd.cluster.values", "pvcd.cluster.vm_records", "pvcd.cluster.view", "pvcd.cluster.liveness"]
)
def test_the_value_types_import_no_hypervisor_store_client_or_yaml(module):
    found = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys, {module}; print(sorted({{'libvirt', 'kazoo', 'yaml'}} & set(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert found == "[]", f"{module} imports {found}"


def test_a_cache_behind_its_changes_is_not_taken_for_the_cluster_by_a_plan_that_needs_it_caught_up():
    with cluster() as (writer, _cache_store, cache):
        put_value(writer, schema.node("hv1"), {"name": "hv1"})
        put_value(writer, schema.node_keepalive("hv1"), {"counter": 1, "interval": 1})
        cache.start()
        wait_for(lambda: same(cache, writer), 5, interval=0.01, what="the first load")
        cache.stop()  # its thread stops: what it hears from now on it does not read
        put_value(writer, schema.node_keepalive("hv1"), {"counter": 2, "interval": 1})
        assert cache.snapshot().nodes["hv1"].keepalive["counter"] == 1
        assert cache.current(need_vms=False, caught_up=False).nodes["hv1"].keepalive["counter"] == 1
        assert cache.current(need_vms=False, caught_up=True).nodes["hv1"].keepalive["counter"] == 2
