"""Helpers of the Ansible role's tests: the role run for real with `ansible-playbook -c local`,
each node rendered into its own temporary root (pvc_root), package installation and systemd
switched off; and a copy of the example inventory with the TLS files ZooKeeper security needs,
made with the openssl commands docs/install.md gives.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from deploy_helpers import REPO, VENV_BIN

ANSIBLE = REPO / "ansible"
EXAMPLE = ANSIBLE / "inventory" / "example"
NODES = ("pvc-hv1", "pvc-hv2", "pvc-hv3")

# docs/install.md, "ZooKeeper security": the CA, a server certificate per coordinator and the
# client certificate of mutual TLS, run in the inventory's pki/ directory. Keep the two alike.
PKI_SCRIPT = r"""
set -e
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
  -subj "/CN=pvc ZooKeeper CA" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" -keyout ca.key -out ca.crt
for name in $COORDINATORS; do
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$name" \
    -keyout "$name.key" -out "$name.csr"
  printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\n' "$name" > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
    -extfile "$name.ext" -out "$name.crt"
done
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=pvc-client" \
  -keyout client.key -out client.csr
printf 'extendedKeyUsage=clientAuth\n' > client.ext
openssl x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
  -extfile client.ext -out client.crt
chmod 600 ./*.key
rm -f ./*.csr ./*.ext
"""


def make_pki(directory: Path, coordinators: Iterable[str] = NODES) -> Path:
    """The CA, the coordinators' server certificates and keys, and a client certificate and key
    in `directory` (docs/install.md's commands)."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is missing: run ./setup.sh test")
    directory.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["bash", "-c", PKI_SCRIPT],
        cwd=directory,
        env=dict(os.environ, COORDINATORS=" ".join(coordinators)),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return directory


def example_inventory(directory: Path) -> Path:
    """A copy of the example inventory at `directory`, with its pki/ directory made."""
    shutil.copytree(EXAMPLE, directory)
    make_pki(directory / "pki")
    return directory


def _zookeeper_user() -> str:
    """The owner of ZooKeeper's key store: the package's user where it exists, root elsewhere."""
    try:
        pwd.getpwnam("zookeeper")
    except KeyError:
        return "root"
    return "zookeeper"


class Playbook:
    def __init__(self, workdir: Path, **extra: object) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.roots = workdir / "roots"
        self.extra_vars = workdir / "vars.json"
        self.extra_vars.write_text(
            json.dumps(
                {
                    "pvc_root": f"{self.roots}/{{{{ inventory_hostname }}}}",
                    "pvc_install_packages": False,
                    "pvc_manage_services": False,
                    "pvc_pvcd_binary": str(VENV_BIN / "pvcd"),
                    "pvc_zookeeper_user": _zookeeper_user(),
                    "ansible_python_interpreter": str(VENV_BIN / "python"),
                    "ansible_become": False,
                    **extra,
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


def zoo_cfg(path: Path) -> dict[str, str]:
    """The settings of a rendered zoo.cfg."""
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def deploy_twice(playbook: Playbook, inventory: Path, *args: str) -> dict[str, Any]:
    """Run the role twice (the second run must change nothing): both outputs, and each node's
    files after the first run."""
    first = playbook.run(inventory, *args)
    assert first.returncode == 0, first.stdout[-6000:]
    after_first = {node: snapshot(playbook.root(node)) for node in NODES}
    second = playbook.run(inventory, *args)
    assert second.returncode == 0, second.stdout[-6000:]
    return {
        "playbook": playbook,
        "inventory": inventory,
        "first": first.stdout,
        "second": second.stdout,
        "after_first": after_first,
    }
