"""Helpers shared by the test modules (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pvcd.devcluster import layout
from pvcd.devcluster.processes import stop_pid, wait_until

if TYPE_CHECKING:
    from kazoo.client import KazooClient

    from pvcd.devcluster.zookeeper import ZooKeeperServer


def node_document(
    workdir: Path,
    name: str,
    zookeeper_port: int,
    names: list[str] | None = None,
    keepalive_interval: int = 1,
    fence_intervals: int = 3,
    zookeeper: ZooKeeperServer | None = None,
    **timing: Any,
) -> dict[str, Any]:
    """A node's pvcd.yaml document, as the local cluster launcher writes it; `timing`
    overrides other fields of the launcher's `Timing` (fence actions, intervals).

    `zookeeper`: the secure server whose credentials (of the node's role), ACL identities
    and TLS files the document carries (the session's, for every test that runs pvcd)."""
    paths = layout.node_paths(workdir, name)
    paths.directory.mkdir(parents=True, exist_ok=True)
    paths.host_xml.write_text(layout.host_xml())
    timing = layout.Timing(keepalive_interval=keepalive_interval, fence_intervals=fence_intervals, **timing)
    names = names or [name]
    keys = zookeeper.config_keys(layout.node_role(name, names)) if zookeeper is not None else None
    return layout.node_config(name, paths, names, zookeeper_port, timing, zookeeper_keys=keys)


def kazoo_client(zookeeper: ZooKeeperServer, role: str = "coordinator", **kwargs: Any) -> KazooClient:
    """A raw kazoo client of the secure test ZooKeeper (not started): TLS with the client
    certificate, authenticated as `role`."""
    from kazoo.client import KazooClient

    security = zookeeper.security(role)
    if security is None:
        return KazooClient(hosts=zookeeper.address, **kwargs)
    assert security.credentials is not None and security.tls is not None
    return KazooClient(
        hosts=kwargs.pop("hosts", zookeeper.address),
        auth_data=[("digest", security.credentials.auth)],
        use_ssl=True,
        ca=security.tls.ca_file,
        certfile=security.tls.cert_file,
        keyfile=security.tls.key_file,
        **kwargs,
    )


class DaemonProcess:
    """A real `pvcd` process for one node, stopped by its PID at the end of the test."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.log_path = config_path.parent / "pvcd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        env = dict(os.environ, PVCD_CONFIG_FILE=str(self.config_path), PYTHONUNBUFFERED="1")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pvcd.main"], stdout=log, stderr=subprocess.STDOUT, env=env
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_pid(self.process.pid, sig=signal.SIGKILL, timeout=5)
            self.process.wait(timeout=5)


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll until `predicate` returns a truthy value; fail the test naming `what` otherwise."""
    try:
        return wait_until(predicate, timeout, what, interval)
    except TimeoutError as exc:
        pytest.fail(str(exc))


def bin_path(name: str) -> str:
    """A console script of this package, next to the running interpreter."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


def vm_xml(name: str, memory_mib: int = 512, vcpus: int = 1, uuid: str | None = None, domain_type: str = "test") -> str:
    """A domain XML libvirt's test driver accepts."""
    import uuid as uuid_module

    return (
        f"<domain type='{domain_type}'><name>{name}</name><uuid>{uuid or uuid_module.uuid4()}</uuid>"
        f"<memory unit='MiB'>{memory_mib}</memory><vcpu>{vcpus}</vcpu><os><type>hvm</type></os></domain>"
    )


class VmNode:
    """A NodeDaemon in a thread of this process — with the VM reconciler and flush
    runner the daemon starts itself — so a test can reach the node's private
    libvirt test host."""

    def __init__(self, config: Any, migrator: Any = None, shutdown_timeout: float = 2) -> None:
        import dataclasses
        import threading

        from pvcd.daemon import NodeDaemon

        config = dataclasses.replace(
            config, hypervisor=dataclasses.replace(config.hypervisor, shutdown_timeout=shutdown_timeout)
        )
        self.daemon = NodeDaemon(config)
        self.name = self.daemon.name
        self.migrator = migrator
        self.thread = threading.Thread(target=self.daemon.run, daemon=True)

    def start(self) -> VmNode:
        self.thread.start()
        wait_for(
            lambda: self.daemon.flush_runner is not None and self.daemon.vm_reconciler is not None,
            15,
            what=f"node {self.name} to register and start its VM services",
        )
        if self.migrator is not None:
            self.daemon.vm_reconciler.migrator = self.migrator
        return self

    @property
    def reconciler(self) -> Any:
        return self.daemon.vm_reconciler

    @property
    def flush(self) -> Any:
        return self.daemon.flush_runner

    def stop(self) -> None:
        self.daemon.stop_event.set()
        self.thread.join(10)

    @property
    def conn(self) -> Any:
        return self.daemon.hypervisor.connection()

    def running(self) -> set[str]:
        """One listing of the active domains: a domain undefined between a listing and a
        per-domain state query would otherwise raise "domain not found"."""
        import libvirt

        return {d.name() for d in self.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)}

    def defined(self) -> set[str]:
        return {d.name() for d in self.conn.listAllDomains()}


class VmOperator:
    """What `pvc vm` does, through its own ZooKeeper session, without the CLI around it."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def define(self, name: str, node: str, memory_mib: int = 512, **options: Any) -> None:
        from pvcd.cluster import vm_records as records
        from pvcd.zk import vms

        xml = options.pop("xml", None) or vm_xml(name, memory_mib)
        vms.define(self.store, records.new_record(records.parse_domain_xml(xml), node, **options))

    def view(self, name: str) -> Any:
        from pvcd.zk import vms

        view = vms.read_vm(self.store, name)
        assert view is not None, f"no VM {name}"
        return view

    def set_state(self, name: str, state: Any) -> None:
        from pvcd.cluster import vm_records as records
        from pvcd.zk import vms

        view = self.view(name)
        vms.VmWrite(self.store, view).record(records.state_change(view, state)).commit()

    def move(self, name: str, kind: Any, target: str | None = None, force: bool = False) -> None:
        import uuid

        from pvcd.cluster import vm_records as records
        from pvcd.zk import vms

        view = self.view(name)
        target = records.move_target(view, kind, target, force)
        assert target is not None
        lastnode = records.next_lastnode(view.record, kind, target)
        record, migration = records.moved(view, kind, target, uuid.uuid4().hex, lastnode)
        vms.request_move(self.store, view, record, migration)

    def settled(self, name: str, state: Any, node: str, actual: Any) -> bool:
        from pvcd.cluster.vm_records import ActualState

        view = self.view(name)
        return bool(
            view.record.state == state
            and view.record.node == node
            and view.migration is None
            and view.status.state == actual
            and (actual == ActualState.STOPPED or view.status.node == node)
        )


def vm_cluster(make_config: Callable[..., Any], shutdown_timeout: float = 2) -> Any:
    """Body of a `cluster` fixture: yields start(names, migrators) -> {name: VmNode}; stops them after."""
    started: list[VmNode] = []

    def start(names: tuple[str, ...] = ("hv1", "hv2"), migrators: dict[str, Any] | None = None) -> dict[str, VmNode]:
        for name in names:
            node = VmNode(make_config(name, names=list(names)), (migrators or {}).get(name), shutdown_timeout)
            started.append(node.start())
        return {node.name: node for node in started}

    yield start
    for node in started:
        node.stop()


def vm_operator(address: str, security: Any = None) -> Any:
    """Body of an `operator` fixture: a VmOperator with its own ZooKeeper session."""
    from pvcd.zk.store import Store

    store = Store(address, security=security)
    store.start()
    yield VmOperator(store)
    store.stop()


def put_value(store: Any, path: str, value: Any) -> None:
    """Create `path` (and its parents) with `value`, or replace its value whatever its version."""
    from pvcd.zk.base import AlreadyExists

    store.ensure_path(path.rsplit("/", 1)[0])
    try:
        store.create(path, value)
    except AlreadyExists:
        store.set(path, value, -1)


def expire_zookeeper_session(store: Any, address: str) -> None:
    """Expire the ZooKeeper store's session from outside, as ZooKeeper does to a client cut off
    too long; return once the store is connected on a new session."""
    from kazoo.client import KazooClient

    states: list[str] = []
    store.add_listener(states.append)
    session_id, password = store.client.client_id
    tls = store.security.tls
    other = KazooClient(
        hosts=address,
        client_id=(session_id, password),
        use_ssl=tls is not None,
        ca=tls.ca_file if tls is not None else None,
        certfile=tls.cert_file if tls is not None else None,
        keyfile=tls.key_file if tls is not None else None,
    )
    other.start(timeout=10)
    other.stop()
    other.close()
    wait_for(lambda: "LOST" in states and states[-1] == "CONNECTED", 15, what="a new session after the expiry")


def vm_view(
    name: str,
    node: str,
    state: Any,
    status: Any,
    memory_mib: int = 1024,
    migration: Any = None,
    versions: tuple[int, int] = (1, 1),
    **record: Any,
) -> Any:
    """A VM as the pure decisions see it (record, status, migration), without a store."""
    from pvcd.cluster.vm_records import VmRecord, VmView

    fields = {"uuid": f"u-{name}", "xml": "<domain/>", "vcpus": 1, **record}
    built = VmRecord(name=name, memory_mib=memory_mib, state=state, node=node, **fields)
    return VmView(built, versions[0], status, versions[1], migration, 0 if migration else None)


def node_view(
    name: str,
    total: int = 8192,
    allocated: int = 0,
    running: tuple[str, ...] = (),
    state: tuple[str, str, str] = ("run", "client", "ready"),
    mtime: int = 1_000_000,
    interval: int = 5,
    load: float = 0.0,
    fence: dict[str, Any] | None = None,
) -> Any:
    """A node as the pure decisions see it: its state, and a keepalive at `mtime`."""
    from pvcd.cluster.values import NO_FENCE, NodeView, StateRecord

    keepalive = {
        "interval": interval,
        "memory": {"total": total, "allocated": allocated},
        "vcpus": {"allocated": len(running)},
        "load": load,
        "vms": {"count": len(running), "running": list(running)},
    }
    return NodeView(name, {}, StateRecord(*state), keepalive, mtime, 3, dict(fence or NO_FENCE))


def wait_for_node_figures(zk: KazooClient, names: tuple[str, ...], timeout: float = 15) -> None:
    """Wait until each node's keepalive carries its memory figures (placement needs them)."""
    import json

    from pvcd.zk import schema

    def ready(name: str) -> bool:
        if not zk.exists(schema.node_keepalive(name)):
            return False
        return bool(json.loads(zk.get(schema.node_keepalive(name))[0]).get("memory", {}).get("total"))

    wait_for(lambda: all(ready(name) for name in names), timeout, what=f"the figures of {', '.join(names)}")
