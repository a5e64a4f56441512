"""Process helpers for the local cluster: free ports and stopping by PID.

Everything the launcher starts is stopped by the PID it recorded, so these helpers
must cope with processes that are not our children (a later `down` command) and
with zombies (children nobody reaped yet).
"""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
from typing import Any

from pvcd.processes import pid_alive, pid_cmdline, stop_pid

__all__ = ["free_port", "pid_alive", "pid_cmdline", "stop_pid", "wait_until"]

PORT_FLOOR = 10000
"""The lowest port handed out; the highest is just below the kernel's ephemeral range."""


_handed_out: set[int] = set()
"""Ports this process handed out: never twice, whether or not their server has bound them yet."""


def _ephemeral_floor() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as stream:
            return int(stream.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, below the kernel's ephemeral range.

    Between this check and the server's own bind, an outgoing connection could take a port of
    the ephemeral range (with a hundred local nodes, each with its connections, it happens):
    ports outside it are taken only by servers that ask for them."""
    ceiling = _ephemeral_floor()
    for _attempt in range(200):
        port = random.randrange(PORT_FLOOR, max(ceiling, PORT_FLOOR + 1))
        if port in _handed_out:
            continue  # given to a server of ours that may not have bound it yet
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            _handed_out.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll until `predicate` is truthy and return its value; TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
