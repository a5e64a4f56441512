"""What `pvc vm define` and `pvc vm list` read from ZooKeeper: nothing they do not need.

Counted, not timed: each command runs in this process (`cli.main.main`) while
every ZooKeeper read of the kazoo client is counted by path. `vm define
--node` must read nothing about the other VMs, so its cost does not grow with
the cluster; placement reads one record per VM (and the status only of a VM
a keepalive says runs); `vm list` reads each VM's three values once.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator

import pytest
from kazoo.client import KazooClient

import cli.main as cli_main
from helpers import vm_xml
from pvcd.cluster import vm_records as records
from pvcd.cluster.values import StateRecord
from pvcd.zk import nodes, schema, vms
from pvcd.zk.store import Store

VMS = 60
READY = StateRecord("run", "secondary", "ready")


@pytest.fixture
def store(zk, zookeeper) -> Iterator[Store]:
    store = Store(zookeeper.address, security=zookeeper.security())
    store.start()
    yield store
    store.stop()


def add_node(store: Store, name: str, running: tuple[str, ...] = (), memory_mib: int = 64 * 1024) -> None:
    """A registered node with one keepalive (an interval long enough never to be late)."""
    versions = nodes.register(store, name, {"target_selector": "mem"}, READY)
    keepalive = {
        "counter": 1,
        "interval": 3600,
        "memory": {"total": memory_mib, "used": 0, "free": memory_mib, "allocated": 0},
        "vcpus": {"allocated": 0},
        "load": 0.0,
        "vms": {"count": len(running), "running": list(running)},
    }
    nodes.send_keepalive(store, name, versions, READY, keepalive, 10)


def define(store: Store, name: str, node: str) -> None:
    vms.define(store, records.new_record(records.parse_domain_xml(vm_xml(name)), node))


LISTED = "children of "
"""The key under which `reads` counts the listings of a path's children."""


@pytest.fixture
def reads(monkeypatch) -> Counter[str]:
    """Every ZooKeeper read, by path (a listing of children: by LISTED + path);
    kazoo's synchronous calls use these asynchronous ones."""
    counted: Counter[str] = Counter()
    for method in ("get_async", "get_children_async", "exists_async"):
        original = getattr(KazooClient, method)
        prefix = LISTED if method == "get_children_async" else ""

        def count(client, path, *args, original=original, prefix=prefix, **kwargs):
            counted[prefix + path] += 1
            return original(client, path, *args, **kwargs)

        monkeypatch.setattr(KazooClient, method, count)
    call = KazooClient._call

    def count_many(client, request, answer):  # Store.get_many's multiRead: each path it asks for
        for path in request.paths if type(request).__name__ == "_MultiRead" else ():
            counted[path] += 1
        return call(client, request, answer)

    monkeypatch.setattr(KazooClient, "_call", count_many)
    return counted


@pytest.fixture
def pvc(zookeeper, capsys, reads):
    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        reads.clear()
        code = cli_main.main(["--zookeeper", zookeeper.address, *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture
def cluster(store) -> list[str]:
    """Three nodes and VMS VMs; hv1 says it runs vm00000 and vm00001."""
    names = [f"vm{i:05d}" for i in range(VMS)]
    add_node(store, "hv1", running=("vm00000", "vm00001"))
    add_node(store, "hv2")
    add_node(store, "hv3")
    for i, name in enumerate(names):
        define(store, name, f"hv{i % 3 + 1}")
    return names


def uuid_of(store: Store, name: str) -> str:
    view = vms.read_vm(store, name)
    assert view is not None
    return view.record.uuid


def vm_paths(reads: Counter[str]) -> Counter[str]:
    """The reads of the VM tree, of the VM records' UUID index and of the per-node VM indexes."""
    prefixes = (schema.VMS + "/", schema.VM_UUIDS + "/", schema.NODE_VMS + "/")
    return Counter({path: n for path, n in reads.items() if path.startswith(prefixes)})


def test_define_on_a_node_reads_nothing_of_the_other_vms(cluster, pvc, reads, tmp_path):
    xml = tmp_path / "new.xml"
    xml.write_text(vm_xml("new"))
    code, out, err = pvc("vm", "define", str(xml), "--node", "hv2", "--limit", "hv2,hv3", "--format", "json")
    assert code == 0, err
    assert json.loads(out)["node"] == "hv2"
    touched = {path.split("/")[3] for path in vm_paths(reads) if path.startswith(schema.VMS + "/")}
    assert touched == {"new"}, vm_paths(reads)
    assert LISTED + schema.VMS not in reads  # not even the list of VMs
    # Only the nodes named: hv1 is never read.
    assert not any(path.startswith(schema.node("hv1")) for path in reads), reads


def test_placement_reads_each_record_once_and_only_the_running_vms_status(cluster, pvc, reads, tmp_path):
    xml = tmp_path / "placed.xml"
    xml.write_text(vm_xml("placed"))
    code, out, err = pvc("vm", "define", str(xml), "--format", "json")
    assert code == 0, err
    assert json.loads(out)["node"] in ("hv1", "hv2", "hv3")
    found = vm_paths(reads)
    for name in cluster:
        assert found[schema.vm(name)] == 1, name
        assert found[schema.vm_migration(name)] == 0, name
    assert {name for name in cluster if found[schema.vm_status(name)]} == {"vm00000", "vm00001"}


def test_list_reads_each_vm_once(cluster, pvc, reads):
    code, out, err = pvc("vm", "list", "--format", "json")
    assert code == 0, err
    assert [vm["name"] for vm in json.loads(out)] == cluster
    found = vm_paths(reads)
    for name in cluster:
        assert [found[schema.vm(name)], found[schema.vm_status(name)], found[schema.vm_migration(name)]] == [1, 1, 1]


def test_define_refuses_a_name_or_uuid_in_use_as_before(cluster, pvc, store, tmp_path):
    taken = uuid_of(store, "vm00004")
    for node in (("--node", "hv1"), ()):
        same_name = tmp_path / "same-name.xml"
        same_name.write_text(vm_xml("vm00004", uuid="0b9b2e7e-6f43-4c48-9d8f-3c1d0a8a6a01"))
        code, _, err = pvc("vm", "define", str(same_name), *node)
        assert (code, err) == (1, "pvc: a VM named 'vm00004' already exists\n")

        same_uuid = tmp_path / "same-uuid.xml"
        same_uuid.write_text(vm_xml("other", uuid=taken))
        code, _, err = pvc("vm", "define", str(same_uuid), *node)
        assert (code, err) == (1, f"pvc: UUID {taken} is already used by VM vm00004\n")


def test_a_damaged_vm_is_no_owner_and_the_transaction_refuses_it(cluster, pvc, store, tmp_path):
    """As when every VM was read: a VM whose record cannot be read is not listed
    as the owner of its name or UUID; the define's transaction refuses both."""
    taken = uuid_of(store, "vm00007")
    found = store.get(schema.vm("vm00007"))
    assert found is not None
    store.set(schema.vm("vm00007"), {"damaged": True}, found.version)
    for node in (("--node", "hv2"), ()):
        for name in ("vm00007", "other"):
            xml = tmp_path / f"{name}.xml"
            xml.write_text(vm_xml(name, uuid=taken))
            code, _, err = pvc("vm", "define", str(xml), *node)
            assert (code, err) == (1, f"pvc: VM {name} or its UUID {taken} was defined meanwhile\n")
