"""The Ansible role, run for real with `ansible-playbook -c local` on the
three-node example inventory, each node rendered into its own temporary root
(pvc_root). Package installation and systemd are switched off
(pvc_install_packages, pvc_manage_services: no APT repository and no systemd
here); the handlers still run, and skip. Every rendered pvcd.yaml must pass
`pvcd --check-config`, a second run must change nothing, and a bad group
variable must fail the play without touching the files in place.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from ansible_helpers import (
    EXAMPLE,
    NODES,
    Playbook,
    deploy_twice,
    example_inventory,
    make_pki,
    recap,
    snapshot,
    zoo_cfg,
)

from deploy_helpers import VENV_BIN
from pvcd.config import load_config
from pvcd.zk.security import digest_id


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The example inventory (with its pki/ directory made) deployed twice into fresh roots."""
    workdir = tmp_path_factory.mktemp("ansible")
    inventory = example_inventory(workdir / "inventory")
    playbook = Playbook(workdir)
    return deploy_twice(playbook, inventory)


def test_first_run_renders_every_node(deployed: dict) -> None:
    counters = recap(deployed["first"])
    assert sorted(counters) == sorted(NODES)
    for node in NODES:
        # Five directories, the softdog module file, pvcd.yaml, zoo.cfg, myid and zookeeperd's
        # environment; with ZooKeeper security (on by default): the node's and the operator's
        # credentials, the CA certificate and ZooKeeper's key store.
        assert counters[node]["failed"] == 0 and counters[node]["changed"] == 14, counters[node]
        assert sorted(deployed["after_first"][node]) == [
            "etc/default/zookeeper",
            "etc/modules-load.d/pvc-softdog.conf",
            "etc/pvc/operator.credentials",
            "etc/pvc/pvcd.yaml",
            "etc/pvc/tls/ca.pem",
            "etc/pvc/zookeeper.credentials",
            "etc/zookeeper/conf/myid",
            "etc/zookeeper/conf/server.pem",
            "etc/zookeeper/conf/zoo.cfg",
        ]


def test_every_rendered_configuration_validates(deployed: dict) -> None:
    playbook: Playbook = deployed["playbook"]
    for number, node in enumerate(NODES, start=1):
        path = playbook.root(node) / "etc/pvc/pvcd.yaml"
        check = subprocess.run(
            [str(VENV_BIN / "pvcd"), "--check-config", str(path)], capture_output=True, text=True, check=False
        )
        assert check.returncode == 0, check.stderr
        assert path.stat().st_mode & 0o777 == 0o600  # it holds passwords
        config = load_config(str(path))
        # Host variables: the node's name, BMC and static upstream address.
        assert config.node == node
        assert (config.fencing.ipmi.host, config.fencing.ipmi.user, config.fencing.ipmi.password) == (
            f"{node}-lom",
            "admin",
            f"Passw0rd-hv{number}",
        )
        assert str(config.networking.upstream.address) == f"1.1.1.1{number}/24"
        # Group variables, with by-id addresses resolved from the node's name.
        assert [c.name for c in config.cluster.coordinators] == list(NODES)
        assert str(config.networking.cluster.address) == f"10.255.0.{number}/24"
        assert (config.networking.cluster.device, config.networking.cluster.mtu) == ("ens5", 9000)
        assert config.cluster.networks.upstream.gateway is not None
        assert config.fencing.keepalive_interval == 5 and config.fencing.failed_fence is None
        assert config.fencing.watchdog is not None and config.fencing.watchdog.timeout == 30
        assert config.migration.target_selector == "mem"
        assert config.logging.log_colours is False
        assert config.is_coordinator
        # ZooKeeper security, on by default: the coordinator identity, the example's passwords
        # as digests, TLS with the CA alone (mutual TLS is off by default).
        zookeeper = config.cluster.zookeeper
        assert zookeeper.credentials_file == "/etc/pvc/zookeeper.credentials"
        assert zookeeper.acl is not None
        for role in ("coordinator", "node", "operator"):
            assert zookeeper.acl.of(role) == (digest_id(f"pvc-{role}", f"example-{role}-password"),)
        assert zookeeper.tls is not None
        assert (zookeeper.tls.ca_file, zookeeper.tls.cert_file, zookeeper.tls.key_file) == (
            "/etc/pvc/tls/ca.pem",
            None,
            None,
        )
        root = playbook.root(node)
        assert (root / "etc/pvc/zookeeper.credentials").read_text() == (
            "pvc-coordinator:example-coordinator-password\n"
        )
        assert (root / "etc/pvc/operator.credentials").read_text() == "pvc-operator:example-operator-password\n"


def test_zookeeper_configuration_on_the_coordinators(deployed: dict) -> None:
    playbook: Playbook = deployed["playbook"]
    ids = set()
    for node in NODES:
        conf = playbook.root(node) / "etc/zookeeper/conf"
        settings = zoo_cfg(conf / "zoo.cfg")
        assert {k: v for k, v in settings.items() if k.startswith("server.")} == {
            "server.1": "pvc-hv1:2888:3888",
            "server.2": "pvc-hv2:2888:3888",
            "server.3": "pvc-hv3:2888:3888",
        }
        # TLS only (security is on by default), without client certificates.
        assert "clientPort" not in settings and settings["secureClientPort"] == "2181"
        assert settings["ssl.clientAuth"] == "none"
        assert settings["admin.enableServer"] == "false"
        assert settings["dataDir"] == "/var/lib/zookeeper"
        myid = (conf / "myid").read_text()
        assert myid == f"{NODES.index(node) + 1}\n"
        ids.add(myid)
    assert len(ids) == 3


def test_handlers_are_notified_on_change_only(deployed: dict) -> None:
    for handler in ("Restart pvcd", "Restart zookeeper"):
        assert f"RUNNING HANDLER [pvc : {handler}]" in deployed["first"]
        assert f"RUNNING HANDLER [pvc : {handler}]" not in deployed["second"]


def test_second_run_changes_nothing(deployed: dict) -> None:
    playbook: Playbook = deployed["playbook"]
    counters = recap(deployed["second"])
    assert sorted(counters) == sorted(NODES)
    for node in NODES:
        assert counters[node]["changed"] == 0 and counters[node]["failed"] == 0, counters[node]
        assert snapshot(playbook.root(node)) == deployed["after_first"][node]


def test_bad_group_variable_fails_and_keeps_the_previous_file(deployed: dict, tmp_path: Path) -> None:
    playbook: Playbook = deployed["playbook"]
    inventory = tmp_path / "inventory"
    shutil.copytree(deployed["inventory"], inventory)
    group_vars = inventory / "group_vars" / "pvc.yml"
    text = group_vars.read_text()
    assert "keepalive_interval: 5\n" in text
    group_vars.write_text(text.replace("keepalive_interval: 5\n", "keepalive_interval: five\n"))

    result = playbook.run(inventory)

    assert result.returncode != 0
    assert "pvc.system.fencing.intervals.keepalive_interval: must be a positive integer, got 'five'" in result.stdout
    for node in NODES:
        assert recap(result.stdout)[node]["failed"] == 1
        assert snapshot(playbook.root(node)) == deployed["after_first"][node]


def test_a_node_that_is_not_a_coordinator(tmp_path: Path) -> None:
    """A fourth node: its own pvcd.yaml with the node identity, and no ZooKeeper configuration."""
    inventory = tmp_path / "inventory"
    shutil.copytree(EXAMPLE, inventory)
    make_pki(inventory / "pki", coordinators=())  # the CA (and a client certificate) only
    hosts = yaml.safe_load((inventory / "hosts.yml").read_text())
    hosts["all"]["children"]["pvc"]["hosts"]["pvc-hv4"] = None
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    (inventory / "host_vars" / "pvc-hv4.yml").write_text(
        "pvc_ipmi_host: pvc-hv4-lom\npvc_ipmi_user: admin\npvc_ipmi_password: secret\n"
    )
    playbook = Playbook(tmp_path)

    result = playbook.run(inventory, "pvc.yml", "--limit", "pvc-hv4")

    assert result.returncode == 0, result.stdout[-4000:]
    root = playbook.root("pvc-hv4")
    assert sorted(snapshot(root)) == [
        "etc/modules-load.d/pvc-softdog.conf",
        "etc/pvc/operator.credentials",
        "etc/pvc/pvcd.yaml",
        "etc/pvc/tls/ca.pem",
        "etc/pvc/zookeeper.credentials",
    ]
    config = load_config(str(root / "etc/pvc/pvcd.yaml"))
    assert config.node == "pvc-hv4" and not config.is_coordinator
    assert (root / "etc/pvc/zookeeper.credentials").read_text() == "pvc-node:example-node-password\n"
    assert config.networking.upstream.address is None  # the group default


def test_playbooks_pass_the_syntax_check(tmp_path: Path) -> None:
    playbook = Playbook(tmp_path)
    for name in ("pvc.yml", "upgrade.yml"):
        result = playbook.run(EXAMPLE, name, "--syntax-check")
        assert result.returncode == 0, result.stdout
