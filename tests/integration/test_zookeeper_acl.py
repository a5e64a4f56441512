"""ZooKeeper access control against the session's secure ZooKeeper (TLS, digest ACLs):

- an unauthenticated client (TLS, but no credentials) is refused every read and write of every
  znode a registered node left, and cannot write at the root or under /pvc;
- the BMC credentials are readable by the coordinator identity only (a node writes its own
  blind; the operator — the CLI's default identity — gets nothing), and `pvc` never shows them;
- a node with the wrong password does not join (one line, exit status 3);
- `pvcd --secure-zookeeper` converts a tree made without ACLs.
"""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import bin_path
from pvcd.cluster.values import StateRecord
from pvcd.devcluster.zookeeper import ZooKeeperServer
from pvcd.zk import nodes, schema
from pvcd.zk.base import NotAuthorized, NotFound
from pvcd.zk.security import AclIdentities, Credentials
from pvcd.zk.store import ZooKeeperStore

IPMI = {"host": "127.0.0.1", "port": 623, "user": "admin", "pass": "bmc-secret-hv1"}


def store_of(zookeeper: ZooKeeperServer, role: str | None, **changes: Any) -> ZooKeeperStore:
    security = zookeeper.security(role or "operator")
    assert security is not None, "the session's ZooKeeper runs secure"
    if role is None:
        security = dataclasses.replace(security, credentials=None, identities=None)
    security = dataclasses.replace(security, **changes)
    store = ZooKeeperStore(zookeeper.address, connect_timeout=10.0, security=security)
    store.start()
    return store


@pytest.fixture
def stores(zookeeper: ZooKeeperServer, zk: Any) -> Iterator[dict[str, ZooKeeperStore]]:
    """One store per identity (and `anonymous`: TLS without credentials) on a cluster where
    hv1 registered as a coordinator would."""
    opened = {role: store_of(zookeeper, role) for role in ("coordinator", "node", "operator")}
    opened["anonymous"] = store_of(zookeeper, None)
    state = StateRecord("init", "secondary", "ready")
    nodes.register(opened["coordinator"], "hv1", {"name": "hv1"}, state, IPMI)
    yield opened
    for store in opened.values():
        store.stop()


def tree(store: ZooKeeperStore, root: str = schema.ROOT) -> list[str]:
    found, pending = [], [root]
    while pending:
        path = pending.pop()
        found.append(path)
        pending += [f"{path}/{child}" for child in store.children(path)]
    return sorted(found)


def test_an_unauthenticated_client_is_refused_every_read_and_write(stores: dict[str, ZooKeeperStore]) -> None:
    anonymous = stores["anonymous"]
    paths = tree(stores["coordinator"])
    assert schema.node_ipmi("hv1") in paths and schema.SECURITY in paths and len(paths) > 6
    for path in paths:
        with pytest.raises(NotAuthorized):
            anonymous.get(path)
        with pytest.raises(NotAuthorized):
            anonymous.set(path, {"owned": True}, -1)
        with pytest.raises(NotAuthorized):
            anonymous.create(f"{path}/intruder", {})
        with pytest.raises(NotAuthorized):
            anonymous.children(path)
    with pytest.raises(NotAuthorized):
        anonymous.delete(schema.node_fence("hv1"))
    for parent in ("", schema.ROOT):
        with pytest.raises(NotAuthorized):
            anonymous.create(f"{parent}/intruder", {})
    acls, _stat = stores["coordinator"].client.get_acls("/")
    assert all(acl.id.scheme == "digest" for acl in acls), acls
    # Nothing changed: the records are as the node wrote them.
    assert stores["coordinator"].get(schema.node_ipmi("hv1")).value == IPMI  # type: ignore[union-attr]


def test_bmc_credentials_are_for_the_coordinators_only(stores: dict[str, ZooKeeperStore]) -> None:
    path = schema.node_ipmi("hv1")
    found = stores["coordinator"].get(path)
    assert found is not None and found.value["pass"] == "bmc-secret-hv1"
    for role in ("node", "operator"):
        with pytest.raises(NotAuthorized):
            stores[role].get(path)
    # A node re-registering writes its BMC record without reading it.
    state = StateRecord("init", "client", "ready")
    nodes.register(stores["node"], "hv1", {"name": "hv1"}, state, dict(IPMI, password_rotated=True))
    assert stores["coordinator"].get(path).value["password_rotated"] is True  # type: ignore[union-attr]
    with pytest.raises(NotAuthorized):
        stores["operator"].set(path, {"host": "evil"}, -1)
    # Everything else is open to every role.
    for role in ("node", "operator"):
        assert stores[role].get(schema.node_fence("hv1")) is not None


def test_pvc_shows_no_bmc_password(stores: dict[str, ZooKeeperStore], zookeeper: ZooKeeperServer) -> None:
    stores["coordinator"].set(schema.node_keepalive("hv1"), {"counter": 1}, -1)
    for args in (["node", "list"], ["node", "info", "hv1"], ["node", "info", "hv1", "--format", "json"]):
        result = subprocess.run(
            [bin_path("pvc"), "--zookeeper", zookeeper.address, *args], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert "bmc-secret-hv1" not in result.stdout + result.stderr


def test_a_node_with_the_wrong_password_does_not_join(
    zk: Any, zookeeper: ZooKeeperServer, write_config: Any, daemon_process: Any, tmp_path: Path
) -> None:
    config = write_config()
    document = yaml.safe_load(config.read_text())
    user = zookeeper.security("coordinator").credentials.user  # type: ignore[union-attr]
    wrong = tmp_path / "wrong.credentials"
    wrong.write_text(f"{user}:not-the-password\n")
    wrong.chmod(0o600)
    document["pvc"]["cluster"]["zookeeper"]["credentials_file"] = str(wrong)
    config.write_text(yaml.safe_dump(document))
    process = daemon_process(config)
    assert process.wait(timeout=30) == 3
    log = process.log()
    refused = [line for line in log.splitlines() if "ZooKeeper refused node hv1" in line]
    assert len(refused) == 1 and "does not join" in refused[0] and "not-the-password" not in log
    assert "Traceback" not in log
    assert zk.exists(schema.node("hv1")) is None


def test_secure_zookeeper_converts_a_tree_made_without_acls(
    zk: Any, zookeeper: ZooKeeperServer, write_config: Any, tmp_path: Path
) -> None:
    open_store = store_of(zookeeper, "coordinator", identities=None)
    try:
        # A cluster from before ACLs: everything world-open (written by a client without identities).
        open_store.ensure_path(schema.NODES)
        open_store.create(schema.node("old"), {"name": "old"})
        open_store.create(schema.node_ipmi("old"), IPMI)
        acls, _stat = open_store.client.get_acls(schema.node_ipmi("old"))
        assert [acl.id.scheme for acl in acls] == ["world"]
    finally:
        open_store.stop()
    result = subprocess.run(
        [bin_path("pvcd"), "--secure-zookeeper"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PVCD_CONFIG_FILE": str(write_config()), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert "ACLs set on" in result.stdout and "closed" in result.stdout
    anonymous = store_of(zookeeper, None)
    operator = store_of(zookeeper, "operator")
    try:
        for path in (schema.node("old"), schema.node_ipmi("old"), schema.ROOT):
            with pytest.raises(NotAuthorized):
                anonymous.get(path)
        with pytest.raises(NotAuthorized):
            operator.get(schema.node_ipmi("old"))
        assert operator.get(schema.node("old")).value == {"name": "old"}  # type: ignore[union-attr]
        record = operator.get(schema.SECURITY)
        assert record is not None and set(record.value["identities"]) == {"coordinator", "node", "operator"}
    finally:
        anonymous.stop()
        operator.stop()


def test_secure_zookeeper_refuses_a_node_identity_and_a_config_without_acl(
    zookeeper: ZooKeeperServer, write_config: Any, tmp_path: Path
) -> None:
    config = write_config("hv4", names=["hv1", "hv2", "hv3", "hv4"])
    result = subprocess.run(
        [bin_path("pvcd"), "--secure-zookeeper"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PVCD_CONFIG_FILE": str(config), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2 and "needs the coordinator identity" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_cli_creates_with_the_clusters_acl(stores: dict[str, ZooKeeperStore], zookeeper: ZooKeeperServer) -> None:
    """The CLI has no identities in a configuration: it learns them from /pvc/security."""
    operator = stores["operator"]
    operator.create(f"{schema.ROOT}/cli-made", {})
    acls, _stat = operator.client.get_acls(f"{schema.ROOT}/cli-made")
    assert {acl.id.id for acl in acls} == set(zookeeper.identities.to_json().values())
    with pytest.raises(NotAuthorized):
        stores["anonymous"].get(f"{schema.ROOT}/cli-made")
    with pytest.raises(NotFound):
        operator.delete(f"{schema.ROOT}/never-made")


def test_a_password_is_rotated_without_a_moment_in_which_the_cluster_is_locked_out(
    zookeeper: ZooKeeperServer, tmp_path: Path
) -> None:
    """docs/security.md's procedure, under a chroot of its own: old and new identities side by
    side, every znode given both, nodes switched to the new password, the old one dropped."""
    chroot = f"{zookeeper.address}/rotation"
    setup = store_of(zookeeper, "coordinator")
    setup.ensure_path("/rotation")
    setup.stop()
    current = zookeeper.security("coordinator")
    assert current is not None and current.credentials is not None and current.identities is not None
    old_id = current.identities.coordinator[0]
    new = Credentials(current.credentials.user, "the-new-password")
    both = dataclasses.replace(current.identities, coordinator=(new.identity, old_id))
    only_new = dataclasses.replace(current.identities, coordinator=(new.identity,))

    def store(credentials: Credentials, identities: AclIdentities) -> ZooKeeperStore:
        opened = ZooKeeperStore(
            chroot,
            connect_timeout=10.0,
            security=dataclasses.replace(current, credentials=credentials, identities=identities),
        )
        opened.start()
        return opened

    old_store = store(current.credentials, current.identities)
    old_store.ensure_schema()
    old_store.create(schema.node("hv1"), {"name": "hv1"}, makepath=True)
    old_store.create(schema.node_ipmi("hv1"), IPMI)
    old_store.stop()
    # 1. Both identities in every node's acl; the tree given both, by a coordinator still on the old password.
    step1 = store(current.credentials, both)
    assert step1.secure_tree() >= 4
    step1.stop()
    # 2. Nodes switch to the new password: they read everything, BMC records included; the old still works.
    for credentials in (new, current.credentials):
        switched = store(credentials, both)
        assert switched.get(schema.node_ipmi("hv1")).value == IPMI  # type: ignore[union-attr]
        switched.stop()
    # 3. The old identity dropped from the acl, the tree set again: the old password opens nothing.
    step3 = store(new, only_new)
    step3.secure_tree()
    assert step3.get(schema.node_ipmi("hv1")).value == IPMI  # type: ignore[union-attr]
    step3.stop()
    stale = store(current.credentials, current.identities)
    try:
        for path in (schema.node_ipmi("hv1"), schema.node("hv1")):
            with pytest.raises(NotAuthorized):
                stale.get(path)
    finally:
        stale.stop()
    cleanup = store(new, only_new)
    cleanup.delete_tree(schema.ROOT)
    cleanup.stop()
