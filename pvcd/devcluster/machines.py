"""The hypervisor side of a chassis: a libvirtd serving the test driver, or a whole QEMU host.

The chassis (`chassis.py`) powers a node on and off the same way whichever
host it has; what differs is where libvirtd and the node's `pvcd` run and what
a power loss kills:

- `TestDriverMachine`: a libvirtd serving libvirt's test driver
  (`libvirt_host.py`), `pvcd` a child of the chassis in the machine's own
  namespaces;
- `QemuMachine`: a `QemuHost` (`qemu_host.py`): libvirtd with QEMU and `pvcd`
  in the host's namespaces; a power loss kills every process of the host.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import libvirt

from pvcd.devcluster.libvirt_host import Libvirtd, LibvirtdError
from pvcd.devcluster.qemu_host import HostError, QemuHost


class Machine(Protocol):
    uri: str
    """libvirt's URI from the chassis, for the journal's domain recorder."""
    log: Path
    """The hypervisor's own log."""

    @property
    def pid(self) -> int | None:
        """libvirtd's PID while it runs."""
        ...

    def start(self) -> libvirt.virConnect:
        """Power on the hypervisor (no guest runs); a connection the chassis keeps while it is on."""
        ...

    def kill(self) -> None:
        """Power loss: the hypervisor and every guest die at once."""
        ...

    def stop(self) -> None:
        """The chassis stops for good."""
        ...

    def exited(self) -> int | None:
        """libvirtd's exit status if it died by itself, else None."""
        ...

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
        """Start the node's `pvcd` where this host's processes run."""
        ...


class TestDriverMachine(Libvirtd):
    """A libvirtd serving the test driver; `pvcd` runs beside the chassis."""

    def start(self) -> libvirt.virConnect:
        """libvirt's default test host starts with a running domain `test`; a real host powers on with none."""
        conn = super().start()
        try:
            for domain in conn.listAllDomains():
                if domain.isActive():
                    domain.destroy()
                if domain.isPersistent():
                    domain.undefine()
        except libvirt.libvirtError:
            self.kill()
            raise
        return conn

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as output:
            return subprocess.Popen(
                list(argv), stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=dict(env), cwd=cwd
            )


class QemuMachine:
    """A `QemuHost`, created by the launcher; the chassis only powers it."""

    def __init__(self, host: QemuHost) -> None:
        self.host = host
        self.uri = host.uri
        self.log = host.log

    @property
    def pid(self) -> int | None:
        return self.host.libvirtd_pid() if self.host.running() else None

    def start(self) -> libvirt.virConnect:
        try:
            self.host.power_on()
            return libvirt.open(self.uri)
        except (HostError, libvirt.libvirtError) as exc:
            self.host.power_off()
            raise LibvirtdError(f"host {self.host.name} did not power on: {exc}") from exc

    def kill(self) -> None:
        self.host.power_off()

    def stop(self) -> None:
        self.host.power_off()

    def exited(self) -> int | None:
        libvirtd = self.host.libvirtd
        return libvirtd.poll() if libvirtd is not None else None

    def spawn(self, argv: Sequence[str], env: Mapping[str, str], log: Path, cwd: Path) -> subprocess.Popen[bytes]:
        return self.host.run(argv, env=env, log=log, cwd=cwd)
