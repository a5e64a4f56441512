"""The Ansible role, run for real with `ansible-playbook -c local` on the
three-node example inventory, each node rendered into its own temporary root
(pvc_root). Package installation and systemd are switched off
(pvc_install_packages, pvc_manage_services: no APT repository and no systemd
here); the handlers still run, and skip. Every rendered pvcd.yaml must pass
`pvcd --check-config`, a second run must change nothing, and a bad group
variable must fail the play without touching the files in place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy_helpers import REPO, VENV_BIN
from pvcd.config import load_config

ANSIBLE = REPO / "ansible"
EXAMPLE = ANSIBLE / "inventory" / "example"
NODES = ("pvc-hv1", "pvc-hv2", "pvc-hv3")


class Playbook:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.roots = workdir / "roots"
        self.extra_vars = workdir / "vars.json"
        self.extra_vars.write_text(
            json.dumps(
                {
                    "pvc_root": f"{self.roots}/{{{{ inventory_hostname }}}}",
                    "pvc_install_packages": False,
                    "pvc_manage_services": False,
                    "pvc_pvcd_binary": str(VENV_BIN / "pvcd"),
                    "ansible_python_interpreter": str(VENV_BIN / "python"),
                    "ansible_become": False,
                }
            )
        )

    def root(self, node: str) -> Path:
        return self.roots / node

    def run(self, inventory: Path, playbook: str = "pvc.yml", *options: str) -> subprocess.CompletedProcess[str]:
        program = VENV_BIN / "ansible-playbook"
        if not program.exists():
            pytest.fail("ansible-playbook is missing: run ./setup.sh test (it installs the test extras)")
        env = dict(
            os.environ,
            ANSIBLE_HOME=str(self.workdir / "ansible-home"),
            ANSIBLE_LOCAL_TEMP=str(self.workdir / "ansible-tmp"),
            ANSIBLE_REMOTE_TEMP=str(self.workdir / "ansible-remote-tmp"),
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_RETRY_FILES_ENABLED="0",
            ANSIBLE_STDOUT_CALLBACK="default",
            ANSIBLE_CONFIG=str(self.workdir / "no-ansible.cfg"),  # ignore any ansible.cfg around
        )
        return subprocess.run(
            [
                str(program),
                "-i",
                str(inventory),
                "-c",
                "local",
                "-e",
                f"@{self.extra_vars}",
                *options,
                str(ANSIBLE / playbook),
            ],
            cwd=self.workdir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=300,
            check=False,
        )


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP counters per host."""
    counters = {}
    for host, fields in re.findall(r"^(\S+)\s+: (ok=.*)$", output, re.M):
        counters[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", fields)}
    return counters


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The example inventory deployed twice into fresh roots."""
    playbook = Playbook(tmp_path_factory.mktemp("ansible"))
    first = playbook.run(EXAMPLE)
    assert first.returncode == 0, first.stdout[-6000:]
    after_first = {node: snapshot(playbook.root(node)) for node in NODES}
    second = playbook.run(EXAMPLE)
    assert second.returncode == 0, second.stdout[-6000:]
    return {"playbook": playbook, "first": first.stdout, "second": second.stdout, "after_first": after_first}


def test_first_run_renders_every_node(deployed: dict) -> None:
    counters = recap(deployed["first"])
    assert sorted(counters) == sorted(NODES)
    for node in NODES:
        # Three directories, the softdog module file, pvcd.yaml, zoo.cfg and myid.
        assert counters[node]["failed"] == 0 and counters[node]["changed"] == 7, counters[node]
        assert sorted(deployed["after_first"][node]) == [
            "etc/modules-load.d/pvc-softdog.conf",
            "etc/pvc/pvcd.yaml",
            "etc/zookeeper/conf/myid",
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


def test_zookeeper_configuration_on_the_coordinators(deployed: dict) -> None:
    playbook: Playbook = deployed["playbook"]
    ids = set()
    for node in NODES:
        conf = playbook.root(node) / "etc/zookeeper/conf"
        lines = (conf / "zoo.cfg").read_text().splitlines()
        settings = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
        assert {k: v for k, v in settings.items() if k.startswith("server.")} == {
            "server.1": "pvc-hv1:2888:3888",
            "server.2": "pvc-hv2:2888:3888",
            "server.3": "pvc-hv3:2888:3888",
        }
        assert settings["clientPort"] == "2181"
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
    shutil.copytree(EXAMPLE, inventory)
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
    """A fourth node: its own pvcd.yaml, and no ZooKeeper configuration."""
    inventory = tmp_path / "inventory"
    shutil.copytree(EXAMPLE, inventory)
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
    assert sorted(snapshot(root)) == ["etc/modules-load.d/pvc-softdog.conf", "etc/pvc/pvcd.yaml"]
    config = load_config(str(root / "etc/pvc/pvcd.yaml"))
    assert config.node == "pvc-hv4" and not config.is_coordinator
    assert config.networking.upstream.address is None  # the group default


def test_playbooks_pass_the_syntax_check(tmp_path: Path) -> None:
    playbook = Playbook(tmp_path)
    for name in ("pvc.yml", "upgrade.yml"):
        result = playbook.run(EXAMPLE, name, "--syntax-check")
        assert result.returncode == 0, result.stdout
