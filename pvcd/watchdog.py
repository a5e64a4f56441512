"""The host watchdog: armed at start, petted only after a delivered keepalive.

A node whose daemon dies, hangs, or loses ZooKeeper stops petting, and the
watchdog (Linux softdog or a hardware one; in the local cluster, the chassis'
FIFO) resets the host, which kills its VMs. That is what lets the primary
restart a dead node's VMs when its BMC does not answer: after the node's
watchdog window the host cannot still run them (docs/fencing.md).

Linux semantics: opening the device arms it, any write pets it, and writing
"V" before closing (the magic close) disarms it on a clean stop.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("pvcd.watchdog")

WDIOC_SETTIMEOUT = 0xC0045706
WDIOC_GETTIMEOUT = 0x80045707
MAGIC_CLOSE = b"V"
PET = b"\0"


@dataclass(frozen=True)
class WatchdogState:
    """What the node publishes about its watchdog."""

    device: str | None
    armed: bool
    timeout: int | None
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"device": self.device, "armed": self.armed, "timeout": self.timeout, "problem": self.problem}


class Watchdog:
    def __init__(self, device: str, timeout: int) -> None:
        self.device = device
        self.timeout = timeout
        self._fd: int | None = None

    def arm(self) -> WatchdogState:
        """Open the device (which arms it) and set its timeout; never raises."""
        try:
            self._fd = os.open(self.device, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            return WatchdogState(self.device, False, None, f"cannot open {self.device}: {exc.strerror}")
        timeout = self._set_timeout()
        self.pet()
        log.info("Watchdog %s armed with a %ds timeout; petted after every delivered keepalive", self.device, timeout)
        return WatchdogState(self.device, True, timeout)

    def _set_timeout(self) -> int:
        """The timeout the device really has: a driver may round or clamp what we ask for.

        A device that takes no ioctl (the local cluster's FIFO) reads the
        timeout from the same configuration file, so it is the configured one.
        """
        assert self._fd is not None
        try:
            fcntl.ioctl(self._fd, WDIOC_SETTIMEOUT, struct.pack("i", self.timeout))
            granted = struct.unpack("i", fcntl.ioctl(self._fd, WDIOC_GETTIMEOUT, struct.pack("i", 0)))[0]
        except OSError as exc:
            if exc.errno not in (errno.ENOTTY, errno.EINVAL):
                log.warning("Watchdog %s: cannot set its timeout (%s); assuming %ds", self.device, exc, self.timeout)
            return self.timeout
        if granted != self.timeout:
            log.warning(
                "Watchdog %s runs with a %ds timeout, not the configured %ds", self.device, granted, self.timeout
            )
        return int(granted)

    def pet(self) -> None:
        if self._fd is None:
            return
        try:
            os.write(self._fd, PET)
        except BlockingIOError:
            pass  # a full FIFO already holds pets its reader has not drained
        except OSError as exc:
            log.error("Watchdog %s: pet failed (%s); the host will be reset if this persists", self.device, exc)

    def disarm(self) -> None:
        """The magic close: on a clean stop the host must not be reset."""
        if self._fd is None:
            return
        try:
            os.write(self._fd, MAGIC_CLOSE)
            log.info("Watchdog %s disarmed (clean stop)", self.device)
        except OSError as exc:
            log.error("Watchdog %s could not be disarmed (%s): the host will be reset", self.device, exc)
        finally:
            os.close(self._fd)
            self._fd = None
