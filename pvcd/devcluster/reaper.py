"""Run one command as a child subreaper that reaps every orphan at once: `python -m pvcd.devcluster.reaper CMD...`.

libvirtd starts each guest's QEMU double-forked, so QEMU's parent is whatever
reaps orphans, normally PID 1. When libvirtd stops a guest (the source side of
every live migration), it waits until `kill(pid, 0)` fails, and a zombie still
answers it: libvirt then waits for PID 1 to reap. Where PID 1 reaps lazily (a
sandbox's init that reaps every ~2 s was measured to add 1.2-1.8 s to each
migration), that delay would be charged to libvirt. Under this reaper the
orphans of one host are its children and are reaped as soon as they exit.

It exits with the command's status once the command is gone; orphans still
running then (guests outliving their libvirtd, as on a real host) fall back to
PID 1. SIGTERM, SIGINT and SIGHUP are passed on to the command. Standard
library only, so it starts fast and small.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m pvcd.devcluster.reaper COMMAND [ARG...]", file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(error)}")
    child = os.fork()
    if child == 0:
        try:
            os.execvp(argv[0], argv)
        except OSError as exc:
            print(f"reaper: cannot run {argv[0]}: {exc}", file=sys.stderr)
        os._exit(127)

    def forward(number: int, _frame: object) -> None:
        try:
            os.kill(child, number)
        except ProcessLookupError:
            pass

    for sig in FORWARDED:
        signal.signal(sig, forward)
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 0
        if pid == child:
            return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
