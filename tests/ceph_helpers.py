"""Test helpers for the session's Ceph: `LockHolder`, tests/ceph_lock_holder.py started in
Debian's python (a client that has a volume open and holds its exclusive lock, as a VM would).

Shared by tests/integration/test_storage_ceph.py, test_cli_storage.py and test_vm_disks.py.
"""

from __future__ import annotations

import json
import selectors
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pvcd.devcluster.ceph import CephCluster

DEBIAN_PYTHON = "/usr/bin/python3"
"""Debian's python3, the only interpreter the `rados`/`rbd` bindings load in."""
HOLDER = Path(__file__).resolve().parent / "ceph_lock_holder.py"


class LockHolder:
    """tests/ceph_lock_holder.py in Debian's python: a client holding a volume's exclusive lock.

    Starting it waits (up to 30s) for its first line, `ready`: {"ready": true, "address": ...}
    once it holds the lock, {"ready": false, "error": ...} if it could not take it."""

    def __init__(self, cluster: CephCluster, pool: str, volume: str) -> None:
        self.process = subprocess.Popen(
            [DEBIAN_PYTHON, str(HOLDER), str(cluster.conf), str(cluster.keyring), pool, volume, "8"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self.ready = self.read(30)

    def read(self, timeout: float) -> dict[str, Any]:
        """The holder's next line, failing the test if none comes within `timeout`."""
        assert self.process.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                pytest.fail(f"the lock holder said nothing within {timeout}s")
        line = self.process.stdout.readline()
        if not line:
            pytest.fail(f"the lock holder exited ({self.process.poll()}) without a word")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def write(self) -> dict[str, Any]:
        """Ask the holder for one write through its lock; its answer ({"write": "ok"|"error"|"timeout"})."""
        assert self.process.stdin is not None
        self.process.stdin.write("write\n")
        self.process.stdin.flush()
        return self.read(20)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
