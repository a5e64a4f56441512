"""Helpers shared by the test modules (importable because pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from pvcd.devcluster import layout
from pvcd.devcluster.processes import stop_pid


def node_document(
    workdir: Path,
    name: str,
    zookeeper_port: int,
    names: list[str] | None = None,
    keepalive_interval: int = 1,
    fence_intervals: int = 3,
) -> dict[str, Any]:
    """A node's pvcd.yaml document, as the local cluster launcher writes it."""
    paths = layout.node_paths(workdir, name)
    paths.directory.mkdir(parents=True, exist_ok=True)
    paths.host_xml.write_text(layout.host_xml())
    return layout.node_config(name, paths, names or [name], zookeeper_port, keepalive_interval, fence_intervals)


class DaemonProcess:
    """A real `pvcd` process for one node, stopped by its PID at the end of the test."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.log_path = config_path.parent / "pvcd.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> "DaemonProcess":
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
    """Poll until `predicate` returns a truthy value; fail naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def bin_path(name: str) -> str:
    """A console script of this package, next to the running interpreter."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)
