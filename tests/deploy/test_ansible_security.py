"""ZooKeeper security in the Ansible role (issue 14): a three-node cluster rendered with ACLs and
mutual TLS on, whose pvcd.yaml files validate and carry the digests of the inventory's passwords
(`pvcd.zk.security.digest_id`), whose zoo.cfg listens on a TLS port only, whose secrets are mode
0600 and never in the play's output (even with --diff), and that actually runs: a ZooKeeper started
from a coordinator's rendered zoo.cfg and zookeeperd environment (its class path) accepts pvcd
clients built from the rendered pvcd.yaml and credentials files, and refuses a client without
credentials or without a client certificate. The role refuses to run with a password or a TLS
file missing, turns security off only when told so explicitly, and supports a password rotation.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import importlib.util
import shlex
import shutil
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from ansible_helpers import ANSIBLE, NODES, Playbook, deploy_twice, example_inventory, recap, snapshot, zoo_cfg

from deploy_helpers import VENV_BIN
from helpers import wait_for
from pvcd.cluster.values import StateRecord
from pvcd.config import load_config
from pvcd.devcluster.processes import free_port, stop_pid
from pvcd.devcluster.zookeeper import JAVA, zookeeper_available
from pvcd.zk import nodes, schema
from pvcd.zk.access import zk_security
from pvcd.zk.base import NotAuthorized, StoreError
from pvcd.zk.security import Credentials, digest_id
from pvcd.zk.store import ZooKeeperStore

PASSWORDS = {
    "coordinator": "c00rd:inator pass",  # a colon and a space: the password is everything after the user's colon
    "node": "n0de-Pässwort",
    "operator": "0perator/secret+",
}
USERS = {"coordinator": "pvc-coordinator", "node": "pvc-node", "operator": "pvc-operator"}
SECRET_FILES = (
    "etc/pvc/pvcd.yaml",
    "etc/pvc/zookeeper.credentials",
    "etc/pvc/operator.credentials",
    "etc/pvc/tls/client.key",
    "etc/zookeeper/conf/server.pem",
)


def secured_playbook(workdir: Path, **extra: Any) -> Playbook:
    """The role with mutual TLS on and this module's passwords."""
    return Playbook(workdir, **{"pvc_zookeeper_mutual_tls": True, "pvc_zookeeper_passwords": PASSWORDS, **extra})


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The example inventory with mutual TLS, deployed twice with --diff."""
    workdir = tmp_path_factory.mktemp("ansible-secure")
    inventory = example_inventory(workdir / "inventory")
    playbook = secured_playbook(workdir)
    return deploy_twice(playbook, inventory, "pvc.yml", "--diff")


def test_the_digest_filter_is_zookeepers_digest() -> None:
    spec = importlib.util.spec_from_file_location(
        "pvc_zookeeper_filters", ANSIBLE / "roles/pvc/filter_plugins/pvc_zookeeper.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    digest = module.FilterModule().filters()["pvc_zookeeper_digest"]
    for user, password in [("pvc-node", "secret"), ("a", "b:c:d"), ("x.y_z", "ünï ©ode"), ("u", "=" * 300)]:
        assert digest(user, password) == digest_id(user, password)
    expected = base64.b64encode(hashlib.sha1(b"pvc-node:secret").digest()).decode()  # ZooKeeper's own
    assert digest("pvc-node", "secret") == f"pvc-node:{expected}"


def test_every_node_gets_the_identities_digests_and_tls_files(secured: dict[str, Any]) -> None:
    playbook: Playbook = secured["playbook"]
    for node in NODES:
        root = playbook.root(node)
        path = root / "etc/pvc/pvcd.yaml"
        check = subprocess.run(
            [str(VENV_BIN / "pvcd"), "--check-config", str(path)], capture_output=True, text=True, check=False
        )
        assert check.returncode == 0, check.stderr
        settings = load_config(str(path)).cluster.zookeeper
        assert settings.acl is not None
        for role in USERS:
            assert settings.acl.of(role) == (digest_id(USERS[role], PASSWORDS[role]),)
        assert settings.credentials_file == "/etc/pvc/zookeeper.credentials"
        assert settings.tls is not None
        assert (settings.tls.ca_file, settings.tls.cert_file, settings.tls.key_file) == (
            "/etc/pvc/tls/ca.pem",
            "/etc/pvc/tls/client.pem",
            "/etc/pvc/tls/client.key",
        )
        # Every node is a coordinator: the coordinator identity; the operator's for the CLI.
        own = Credentials.from_file(root / "etc/pvc/zookeeper.credentials")
        assert settings.acl.role_of(own) == "coordinator"
        operator = Credentials.from_file(root / "etc/pvc/operator.credentials")
        assert settings.acl.role_of(operator) == "operator"
        inventory: Path = secured["inventory"]
        assert (root / "etc/pvc/tls/ca.pem").read_bytes() == (inventory / "pki/ca.crt").read_bytes()
        assert (root / "etc/pvc/tls/client.pem").read_bytes() == (inventory / "pki/client.crt").read_bytes()
        keystore = (root / "etc/zookeeper/conf/server.pem").read_text()
        assert (inventory / f"pki/{node}.key").read_text().strip() in keystore
        assert (inventory / f"pki/{node}.crt").read_text().strip() in keystore


def test_zookeeper_listens_on_tls_only_and_requires_client_certificates(secured: dict[str, Any]) -> None:
    playbook: Playbook = secured["playbook"]
    for node in NODES:
        conf = playbook.root(node) / "etc/zookeeper/conf"
        settings = zoo_cfg(conf / "zoo.cfg")
        assert "clientPort" not in settings
        assert settings["secureClientPort"] == "2181"
        assert settings["serverCnxnFactory"] == "org.apache.zookeeper.server.NettyServerCnxnFactory"
        assert settings["ssl.keyStore.location"] == "/etc/zookeeper/conf/server.pem"
        assert settings["ssl.keyStore.type"] == "PEM"
        assert settings["ssl.trustStore.location"] == "/etc/pvc/tls/ca.pem"
        assert settings["ssl.trustStore.type"] == "PEM"
        assert settings["ssl.clientAuth"] == "need"
        # zookeeperd's environment: Netty's codec on the class path (Debian's jar manifest omits it).
        environment = (playbook.root(node) / "etc/default/zookeeper").read_text()
        classpath = shell_value(environment, "CLASSPATH").split(":")
        assert "/usr/share/java/netty-codec.jar" in classpath and "/usr/share/java/zookeeper.jar" in classpath


def test_secrets_are_root_only_and_never_in_the_output(secured: dict[str, Any]) -> None:
    playbook: Playbook = secured["playbook"]
    for node in NODES:
        root = playbook.root(node)
        for name in SECRET_FILES:
            assert (root / name).stat().st_mode & 0o777 == 0o600, name
        for name in ("etc/pvc/zookeeper.credentials", "etc/pvc/operator.credentials", "etc/pvc/tls/client.key"):
            assert (root / name).stat().st_uid == 0, name
    inventory: Path = secured["inventory"]
    keys = [(inventory / "pki" / f"{name}.key").read_text().splitlines()[1] for name in (*NODES, "client")]
    for output in (secured["first"], secured["second"]):
        for secret in [*PASSWORDS.values(), *keys, "Passw0rd-hv1"]:
            assert secret not in output
        assert "BEGIN PRIVATE KEY" not in output


def test_a_second_run_changes_nothing(secured: dict[str, Any]) -> None:
    playbook: Playbook = secured["playbook"]
    counters = recap(secured["second"])
    for node in NODES:
        assert counters[node]["changed"] == 0 and counters[node]["failed"] == 0, counters[node]
        assert snapshot(playbook.root(node)) == secured["after_first"][node]


@pytest.mark.parametrize(
    ("passwords", "message"),
    [
        ({"coordinator": "a", "operator": "c"}, "missing or empty: pvc_zookeeper_passwords.node."),
        ({"coordinator": "a", "node": "", "operator": "c"}, "missing or empty: pvc_zookeeper_passwords.node."),
        ({}, "missing or empty: pvc_zookeeper_passwords.coordinator, pvc_zookeeper_passwords.node, "),
        ({"coordinator": "a\nb", "node": "b", "operator": "c"}, "a password must be one line"),
    ],
)
def test_a_missing_password_fails_the_play_with_a_clear_message(
    secured: dict[str, Any], tmp_path: Path, passwords: dict[str, str], message: str
) -> None:
    playbook = secured_playbook(tmp_path, pvc_zookeeper_passwords=passwords)
    result = playbook.run(secured["inventory"])
    assert result.returncode != 0
    assert "ZooKeeper security is on (pvc_zookeeper_security)" in result.stdout
    assert message in result.stdout
    assert "Set pvc_zookeeper_security to false" in result.stdout
    for node in NODES:
        assert recap(result.stdout)[node]["failed"] == 1
        assert not playbook.root(node).exists()  # nothing written


def test_a_missing_tls_file_fails_the_play_with_a_clear_message(secured: dict[str, Any], tmp_path: Path) -> None:
    inventory = tmp_path / "inventory"
    shutil.copytree(secured["inventory"], inventory)
    (inventory / "pki/pvc-hv2.key").unlink()
    (inventory / "pki/client.crt").unlink()
    playbook = secured_playbook(tmp_path)
    result = playbook.run(inventory)
    assert result.returncode != 0
    counters = recap(result.stdout)
    for node in NODES:
        assert counters[node]["failed"] == 1
    assert f"pvc_zookeeper_tls_server_key = {inventory}/pki/pvc-hv2.key" in result.stdout
    assert f"pvc_zookeeper_tls_client_cert = {inventory}/pki/client.crt" in result.stdout
    assert f"pvc_zookeeper_tls_server_key = {inventory}/pki/pvc-hv1.key" not in result.stdout


def test_security_is_off_only_when_set_false_explicitly(secured: dict[str, Any], tmp_path: Path) -> None:
    refused = Playbook(tmp_path / "refused", pvc_zookeeper_security="off please").run(secured["inventory"])
    assert refused.returncode != 0
    assert "pvc_zookeeper_security must be true or false" in refused.stdout

    playbook = Playbook(tmp_path / "open", pvc_zookeeper_security=False, pvc_zookeeper_passwords={})
    result = playbook.run(secured["inventory"])
    assert result.returncode == 0, result.stdout[-4000:]
    root = playbook.root("pvc-hv1")
    settings = zoo_cfg(root / "etc/zookeeper/conf/zoo.cfg")
    assert settings["clientPort"] == "2181"
    assert not any(key.startswith("ssl.") or key == "secureClientPort" for key in settings)
    config = load_config(str(root / "etc/pvc/pvcd.yaml"))
    zookeeper = config.cluster.zookeeper
    assert (zookeeper.credentials_file, zookeeper.acl, zookeeper.tls) == (None, None, None)
    assert not (root / "etc/pvc/zookeeper.credentials").exists() and not (root / "etc/pvc/tls").exists()


def test_a_password_rotation_grants_both_identities(secured: dict[str, Any], tmp_path: Path) -> None:
    """docs/security.md's rotation, step 2: the new password in the credentials files, the old one
    still granted."""
    new = dict(PASSWORDS, node="the-new-node-password")
    playbook = secured_playbook(
        tmp_path, pvc_zookeeper_passwords=new, pvc_zookeeper_rotating_passwords={"node": PASSWORDS["node"]}
    )
    result = playbook.run(secured["inventory"], "pvc.yml", "--limit", "pvc-hv1")
    assert result.returncode == 0, result.stdout[-4000:]
    settings = load_config(str(playbook.root("pvc-hv1") / "etc/pvc/pvcd.yaml")).cluster.zookeeper
    assert settings.acl is not None
    assert settings.acl.of("node") == (digest_id("pvc-node", new["node"]), digest_id("pvc-node", PASSWORDS["node"]))
    assert settings.acl.of("coordinator") == (digest_id("pvc-coordinator", PASSWORDS["coordinator"]),)


# -- the rendered cluster runs ----------------------------------------------------------------------


def shell_value(text: str, name: str) -> str:
    """The value a shell gives `name` in an environment file of VAR=value lines."""
    for line in text.splitlines():
        if line.startswith(f"{name}="):
            words = shlex.split(line.partition("=")[2])
            assert len(words) == 1, line
            return words[0]
    raise AssertionError(f"{name} is not set")


class RenderedZooKeeper:
    """One coordinator's rendered ZooKeeper, standalone on 127.0.0.1: its zoo.cfg with the paths
    under the node's root, its own data directory and a free port, no peers; started with the
    class path of the rendered zookeeperd environment."""

    def __init__(self, root: Path, workdir: Path) -> None:
        self.root, self.workdir = root, workdir
        self.port = free_port()
        self.pid: int | None = None
        (workdir / "data").mkdir(parents=True)
        settings = zoo_cfg(root / "etc/zookeeper/conf/zoo.cfg")
        settings = {key: value for key, value in settings.items() if not key.startswith("server.")}
        settings["dataDir"] = str(workdir / "data")
        settings["secureClientPort"] = str(self.port)
        settings["secureClientPortAddress"] = "127.0.0.1"
        settings["tickTime"] = "500"
        for key in ("ssl.keyStore.location", "ssl.trustStore.location"):
            settings[key] = f"{root}{settings[key]}"
        self.config = workdir / "zoo.cfg"
        self.config.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
        classpath = shell_value((root / "etc/default/zookeeper").read_text(), "CLASSPATH").split(":")
        self.classpath = ":".join(str(workdir) if entry == "/etc/zookeeper/conf" else entry for entry in classpath)

    def start(self) -> None:
        with open(self.workdir / "zookeeper.log", "ab") as log:
            process = subprocess.Popen(
                [
                    JAVA,
                    "-Xmx128m",
                    "-XX:+UseSerialGC",
                    "-XX:TieredStopAtLevel=1",
                    "-cp",
                    self.classpath,
                    "org.apache.zookeeper.server.quorum.QuorumPeerMain",
                    str(self.config),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.workdir,
            )
        self.pid = process.pid

        def answers() -> bool:
            assert process.poll() is None, self.log()
            return self.ruok()

        wait_for(answers, 30, interval=0.2, what=f"ZooKeeper from the rendered zoo.cfg on 127.0.0.1:{self.port}")

    def ruok(self) -> bool:
        """`ruok` answered `imok` over TLS, with the rendered CA and client certificate."""
        tls = self.root / "etc/pvc/tls"
        context = ssl.create_default_context(cafile=str(tls / "ca.pem"))
        context.check_hostname = False  # as kazoo: the chain is verified, not the name
        context.load_cert_chain(str(tls / "client.pem"), str(tls / "client.key"))
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as raw:
                with context.wrap_socket(raw) as conn:
                    conn.sendall(b"ruok")
                    return conn.recv(16) == b"imok"
        except OSError:
            return False

    def log(self) -> str:
        return (self.workdir / "zookeeper.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.pid is not None:
            stop_pid(self.pid, timeout=10.0)
            self.pid = None


def local_config(root: Path, port: int, workdir: Path) -> Path:
    """The node's rendered pvcd.yaml, reaching the local server, with the files under its root."""
    document = yaml.safe_load((root / "etc/pvc/pvcd.yaml").read_text())
    cluster = document["pvc"]["cluster"]
    cluster["coordinators"] = [{"name": document["pvc"]["node"], "host": "127.0.0.1", "port": port}]
    zookeeper = cluster["zookeeper"]
    zookeeper["credentials_file"] = f"{root}{zookeeper['credentials_file']}"
    zookeeper["tls"] = {key: f"{root}{value}" for key, value in zookeeper["tls"].items()}
    path = workdir / "pvcd.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture
def rendered_zookeeper(secured: dict[str, Any], tmp_path: Path) -> Iterator[RenderedZooKeeper]:
    if not zookeeper_available() or shutil.which("openssl") is None:
        pytest.fail("ZooKeeper (Debian's zookeeper package), Java or openssl is missing: run ./setup.sh test")
    server = RenderedZooKeeper(secured["playbook"].root("pvc-hv1"), tmp_path / "zookeeper")
    try:
        server.start()
        yield server
    finally:
        server.stop()


def test_the_rendered_cluster_runs_and_refuses_the_unauthenticated(
    secured: dict[str, Any], rendered_zookeeper: RenderedZooKeeper, tmp_path: Path
) -> None:
    root = secured["playbook"].root("pvc-hv1")
    config = load_config(str(local_config(root, rendered_zookeeper.port, tmp_path)))
    settings = config.cluster.zookeeper
    security = zk_security(settings)
    assert security.credentials is not None and security.tls is not None and security.tls.cert_file is not None

    def store_with(**changes: Any) -> ZooKeeperStore:
        store = ZooKeeperStore(
            config.zookeeper_hosts, connect_timeout=10.0, security=dataclasses.replace(security, **changes)
        )
        store.start()
        return store

    coordinator = store_with()
    opened = [coordinator]
    try:
        coordinator.ensure_schema()
        nodes.register(
            coordinator,
            "pvc-hv1",
            {"name": "pvc-hv1"},
            StateRecord("init", "secondary", "ready"),
            {"host": "pvc-hv1-lom", "port": 623, "user": "admin", "pass": "Passw0rd-hv1"},
        )
        assert coordinator.get(schema.SCHEMA) is not None
        assert coordinator.get(schema.node_ipmi("pvc-hv1")) is not None

        # The operator's credentials file, as the pvc CLI reads it: the schema, not the BMC.
        operator_credentials = Credentials.from_file(root / "etc/pvc/operator.credentials")
        operator = store_with(credentials=operator_credentials, identities=None)
        opened.append(operator)
        assert operator.get(schema.SCHEMA) is not None
        with pytest.raises(NotAuthorized):
            operator.get(schema.node_ipmi("pvc-hv1"))

        # TLS with the client certificate, but no credentials: refused every read and write.
        anonymous = store_with(credentials=None, identities=None)
        opened.append(anonymous)
        for path in (schema.ROOT, schema.SCHEMA, schema.node_ipmi("pvc-hv1")):
            with pytest.raises(NotAuthorized):
                anonymous.get(path)
        with pytest.raises(NotAuthorized):
            anonymous.create(f"{schema.ROOT}/intruder", {})
        with pytest.raises(NotAuthorized):
            anonymous.create("/intruder", {})

        # Mutual TLS: the right credentials without a client certificate do not get in.
        assert security.tls is not None
        without_certificate = dataclasses.replace(security.tls, cert_file=None, key_file=None)
        store = ZooKeeperStore(
            config.zookeeper_hosts,
            connect_timeout=3.0,
            security=dataclasses.replace(security, tls=without_certificate),
        )
        with pytest.raises(StoreError):
            store.start()
    finally:
        for opened_store in opened:
            opened_store.stop()
