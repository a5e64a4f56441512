"""A standalone ZooKeeper server on 127.0.0.1, for the local cluster and the tests.

It may listen on another local address instead (`client_address`): the
network namespace tests put it on a bridge their namespaces can reach.

Debian's zookeeper package ships no usable service wrapper without systemd, so the
server is started straight from its jar. The data directory survives a stop, which
lets a test stop and restart the same server to simulate a ZooKeeper outage.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pvcd.devcluster.processes import free_port, pid_alive, stop_pid

ZOOKEEPER_JAR = "/usr/share/java/zookeeper.jar"
JAVA = "java"
START_TIMEOUT = 30.0
# A short tick lets sessions expire within a couple of seconds in tests; the
# negotiated session timeout is bounded to [2, 20] ticks by the server.
TICK_MS = 500


@dataclass
class ZooKeeperServer:
    """One ZooKeeper server process with its own directory and port."""

    directory: Path
    port: int
    pid: int | None = None
    client_address: str = "127.0.0.1"

    @property
    def address(self) -> str:
        return f"{self.client_address}:{self.port}"

    @classmethod
    def create(cls, directory: Path, port: int | None = None, client_address: str = "127.0.0.1") -> ZooKeeperServer:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "data").mkdir(exist_ok=True)
        return cls(directory=directory, port=port or free_port(), client_address=client_address)

    def _write_config(self) -> Path:
        config = self.directory / "zoo.cfg"
        config.write_text(
            "\n".join(
                [
                    f"tickTime={TICK_MS}",
                    f"dataDir={self.directory / 'data'}",
                    f"clientPort={self.port}",
                    f"clientPortAddress={self.client_address}",
                    "admin.enableServer=false",
                    "4lw.commands.whitelist=ruok,srvr,stat,mntr",
                    "maxClientCnxns=0",
                    "",
                ]
            )
        )
        return config

    def start(self) -> None:
        """Start the server and wait until it answers `ruok`."""
        if self.pid is not None and pid_alive(self.pid):
            return
        config = self._write_config()
        log = open(self.directory / "zookeeper.log", "ab")
        command = [
            JAVA,
            "-Xmx128m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-cp",
            f"{self.directory}:{ZOOKEEPER_JAR}",
            "org.apache.zookeeper.server.quorum.QuorumPeerMain",
            str(config),
        ]
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.directory,
        )
        log.close()
        self.pid = process.pid
        (self.directory / "zookeeper.pid").write_text(str(process.pid))
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"ZooKeeper exited with status {process.returncode}; see {self.directory / 'zookeeper.log'}"
                )
            if self.ruok():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"ZooKeeper did not answer on {self.address} within {START_TIMEOUT:.0f}s")

    def ruok(self) -> bool:
        """True when the server answers the `ruok` four-letter word with `imok`."""
        try:
            with socket.create_connection((self.client_address, self.port), timeout=1.0) as conn:
                conn.sendall(b"ruok")
                return conn.recv(16) == b"imok"
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server by its PID; the data directory is kept."""
        if self.pid is not None:
            stop_pid(self.pid, sig=sig, timeout=10.0)
            self.pid = None
        pid_file = self.directory / "zookeeper.pid"
        if pid_file.exists():
            pid_file.unlink()


def zookeeper_available() -> bool:
    """Whether the ZooKeeper jar and a Java runtime are installed here."""
    return os.path.exists(ZOOKEEPER_JAR) and any(
        os.access(os.path.join(d, JAVA), os.X_OK) for d in os.environ.get("PATH", "").split(os.pathsep)
    )
