"""The chassis' watchdog device: a FIFO that `pvcd` opens as it opens /dev/watchdog.

pvcd opens the device path with O_WRONLY, tries the WDIOC_SETTIMEOUT ioctl
(a FIFO answers ENOTTY; pvcd goes on with the configured timeout), writes a
byte after each keepalive that reached ZooKeeper, and on a clean stop writes
"V" and closes ("magic close"), as with Linux watchdog drivers. The rules
imitated here:

- the first byte arms the watchdog, every byte pets it;
- "V" disarms it: a Linux driver disarms on close after a "V", but the chassis
  holds the FIFO open for reading *and* writing (so its reads never see EOF
  between two writers) and so cannot see the writer close; "V" as the last
  byte read disarms until the next other byte;
- armed and not petted for `timeout` seconds: it expires, and the chassis
  resets the host (power off, power on);
- power off disarms it, and bytes written before it are dropped.

`WatchdogTimer` is the rule (pure, time is an argument); `Fifo` is the device.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

NONE = "none"
ARMED = "armed"
DISARMED = "disarmed"
MAGIC_CLOSE = b"V"
READ_SIZE = 4096


@dataclass
class WatchdogTimer:
    timeout: float
    state: str = DISARMED
    last_pet: float | None = None

    def feed(self, data: bytes, now: float) -> str | None:
        """Apply the bytes read at `now`; return the new state if it changed."""
        if not data:
            return None
        before = self.state
        if data.endswith(MAGIC_CLOSE):
            self.state, self.last_pet = DISARMED, None
        else:
            self.state, self.last_pet = ARMED, now
        return self.state if self.state != before else None

    def expired(self, now: float) -> bool:
        return self.state == ARMED and self.last_pet is not None and now - self.last_pet > self.timeout

    def disarm(self) -> None:
        self.state, self.last_pet = DISARMED, None


class WatchdogDeviceError(Exception):
    """The device path cannot be a watchdog FIFO; the message says why."""


class Fifo:
    """The device file: created if missing, held open O_RDWR and non-blocking."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            if not path.exists():
                os.mkfifo(path, 0o600)
            elif not stat.S_ISFIFO(path.stat().st_mode):
                raise WatchdogDeviceError(f"{path} exists and is not a FIFO")
            self.fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        except OSError as exc:
            raise WatchdogDeviceError(f"cannot offer a watchdog device at {path}: {exc.strerror}") from exc

    def fileno(self) -> int:
        return self.fd

    def read(self) -> bytes:
        """Everything written since the last read (b"" if nothing)."""
        chunks = []
        while True:
            try:
                chunk = os.read(self.fd, READ_SIZE)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                    break
                raise
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)
