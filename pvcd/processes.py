"""Processes pvcd and its tools did not necessarily start themselves: alive, what runs, stopping by PID.

A primary's dnsmasq and PowerDNS, like the local cluster's servers, are
stopped by the PID recorded for them, after checking that the PID still runs
the command that was started (PIDs get reused), and may have been left by an
earlier process: they are not always our children, and may be zombies.
"""

from __future__ import annotations

import os
import signal
import time


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    _reap(pid)
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def pid_cmdline(pid: int) -> list[str]:
    """The command line of a process, empty when it is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return [part.decode(errors="replace") for part in cmdline.read().split(b"\0") if part]
    except OSError:
        return []


def stop_pid(pid: int, sig: int = signal.SIGTERM, timeout: float = 10.0) -> bool:
    """Send `sig`, wait up to `timeout`, then SIGKILL. True if it had to be killed."""
    if not pid_alive(pid):
        return False
    try:
        os.kill(pid, sig)
        if sig != signal.SIGKILL:
            os.kill(pid, signal.SIGCONT)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return False
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    while pid_alive(pid):
        time.sleep(0.05)
    return True


def describe_exit(returncode: int) -> str:
    """A process's exit status in words, for a log line or a fault."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"
