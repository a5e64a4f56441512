"""The watchdog adapter against a device that behaves as the local cluster's does (a FIFO).

A real /dev/watchdog cannot be used here: arming it would reset this machine.
The FIFO takes the same open/write/magic-close protocol; the ioctls fail on it
as on any non-watchdog file, which the adapter must survive.
"""

from __future__ import annotations

import os
import select

from pvcd.watchdog import MAGIC_CLOSE, Watchdog


def drain(fd: int) -> bytes:
    data = b""
    while select.select([fd], [], [], 0.2)[0]:
        data += os.read(fd, 4096)
    return data


def test_arm_pet_and_magic_close(tmp_path):
    device = tmp_path / "watchdog"
    os.mkfifo(device)
    reader = os.open(device, os.O_RDWR | os.O_NONBLOCK)
    try:
        watchdog = Watchdog(str(device), 7)
        state = watchdog.arm()
        assert (state.armed, state.timeout, state.problem) == (True, 7, None)
        assert drain(reader) == b"\0"  # arming pets once
        watchdog.pet()
        watchdog.pet()
        assert drain(reader) == b"\0\0"
        watchdog.disarm()
        assert drain(reader) == MAGIC_CLOSE
        watchdog.pet()  # after the close: nothing is written, nothing raised
        assert drain(reader) == b""
    finally:
        os.close(reader)


def test_a_missing_device_is_reported_not_raised(tmp_path):
    state = Watchdog(str(tmp_path / "nowhere"), 7).arm()
    assert state.armed is False and state.timeout is None
    assert state.problem is not None and "cannot open" in state.problem
