"""A DHCP client for the namespace tests: a namespace of its own running `busybox udhcpc` in the foreground.

Its veth peer is a port of a bridge in another namespace (a node's `vmbrVNI`).
The udhcpc script configures the address it is given (so that a renewal is a
real unicast request), optionally the default route through the router, and
writes every event (bound, renew, nak, ...) with the options received to a file
the test reads. Its files (script, events, udhcpc's output) go to `workdir`,
named after the client's hostname.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from helpers import wait_for
from pvcd.devcluster.netlab import sh
from pvcd.devcluster.processes import stop_pid

DEFAULT_ROUTE = '\n    [ -n "$router" ] && ip route replace default via "$router" dev "$interface"'

UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
  deconfig) ip -4 addr flush dev "$interface" ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"ROUTE ;;
esac
printf '%s\\t%s\\t%s\\t%s\\t%s\\t%s\\n' "$1" "${ip:-}" "${router:-}" "${dns:-}" "${domain:-}" "${mtu:-}" >> EVENTS
"""


def random_mac() -> str:
    return "52:54:00:" + ":".join(f"{byte:02x}" for byte in secrets.token_bytes(3))


@dataclass
class Event:
    """One run of the script; `mtu` is empty unless udhcpc asked for it (`-O mtu`)."""

    kind: str
    ip: str
    router: str
    dns: str
    domain: str
    mtu: str


@dataclass
class DhcpClient:
    """Namespace `netns` with an `eth0` of MAC `mac`; udhcpc sends `hostname` (option 12).

    `options` are further udhcpc options (`-O mtu`, `-t TRIES`); `default_route` has the script route
    through the router it is given."""

    netns: str
    hostname: str
    workdir: Path
    mac: str = field(default_factory=random_mac)
    options: Sequence[str] = ()
    default_route: bool = False
    process: subprocess.Popen[bytes] | None = None
    events_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.events_path = self.workdir / f"{self.hostname}.events"

    def plug(self, host_netns: str, bridge: str, mtu: int | None = None) -> Self:
        """Create the namespace; its `eth0`'s veth peer becomes a port of `bridge` in `host_netns`."""
        peer = f"pv{secrets.token_hex(4)}"
        with_mtu = ["mtu", str(mtu)] if mtu is not None else []
        sh("ip", "netns", "add", self.netns)
        sh("ip", "-n", host_netns, "link", "add", peer, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
        sh("ip", "-n", host_netns, "link", "set", "dev", peer, *with_mtu, "master", bridge, "up")
        sh("ip", "-n", self.netns, "link", "set", "lo", "up")
        sh("ip", "-n", self.netns, "link", "set", "eth0", "address", self.mac, *with_mtu, "up")
        return self

    def start(self) -> Self:
        """A new udhcpc: a fresh DISCOVER, asking for no address in particular."""
        script = self.workdir / f"{self.hostname}.sh"
        text = UDHCPC_SCRIPT.replace("ROUTE", DEFAULT_ROUTE if self.default_route else "")
        script.write_text(text.replace("EVENTS", str(self.events_path)))
        script.chmod(0o755)
        with open(self.workdir / f"{self.hostname}.log", "ab") as log:
            self.process = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, "busybox", "udhcpc", "-f", "-i", "eth0", "-s", str(script)]
                + ["-x", f"hostname:{self.hostname}", "-T", "1", "-A", "1", *self.options],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self

    def events(self) -> list[Event]:
        try:
            lines = self.events_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [Event(*line.split("\t")) for line in lines]

    def wait(self, kind: str, ip: str | None = None, after: int = 0, timeout: float = 30) -> Event:
        """The first `kind` event (bound, renew, nak; for address `ip`) after the first `after` events."""

        def found() -> Event | None:
            return next((e for e in self.events()[after:] if e.kind == kind and ip in (None, e.ip)), None)

        return wait_for(found, timeout, what=f"{self.hostname}: a DHCP {kind} event{f' for {ip}' if ip else ''}")

    def renew(self) -> int:
        """Ask udhcpc to renew now (SIGUSR1, a unicast request to the server); the events before, for `wait`."""
        count = len(self.events())
        assert self.process is not None
        self.process.send_signal(signal.SIGUSR1)
        return count

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            stop_pid(self.process.pid, timeout=5)
            self.process.wait(timeout=5)

    def remove(self) -> None:
        """Stop udhcpc and delete the namespace (its veth with it)."""
        self.stop()
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
