"""A Ceph client in a process of its own that opens an RBD volume, takes its exclusive lock and
writes to it on request: the "VM on a dead node" of the storage fencing tests.

Run by Debian's /usr/bin/python3, the only interpreter the `rados`/`rbd` bindings load in
(the test venv does not see the system site-packages). The `rbd` command cannot stand in:
`rbd lock add` exits at once, so nothing would be left for a blocklist to cut off.

Protocol, one JSON object a line: on start it prints {"ready": true, "address": ADDR} once it
holds the lock and a first write went through (or {"ready": false, "error": ...} and exits);
then each `write` line on stdin gets {"write": "ok"}, {"write": "error", "reason": ...} or
{"write": "timeout"} (a write that did not finish within the given seconds). EOF ends it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any

import rados
import rbd

BLOCK = b"pvcd" * 1024


def say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def write_within(image: Any, seconds: float) -> dict[str, Any]:
    """One 4 KiB write, in a thread so that a write librbd never answers is reported, not waited on."""
    outcome: dict[str, Any] = {"write": "timeout"}

    def write() -> None:
        try:
            image.write(BLOCK, 0)
            image.flush()
            outcome.update(write="ok")
        except Exception as exc:  # every librbd failure is an outcome to report
            outcome.update(write="error", reason=f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    thread.join(seconds)
    return dict(outcome)


def main() -> None:
    conf, keyring, pool, volume, seconds = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5])
    try:
        cluster = rados.Rados(conffile=conf, rados_id="admin", conf={"keyring": keyring})
        cluster.connect(timeout=int(seconds))
        image = rbd.Image(cluster.open_ioctx(pool), volume)
        image.lock_acquire(rbd.RBD_LOCK_MODE_EXCLUSIVE)
        first = write_within(image, seconds)
        if first["write"] != "ok":
            raise RuntimeError(f"first write: {first}")
    except Exception as exc:
        say({"ready": False, "error": f"{type(exc).__name__}: {exc}"})
        os._exit(1)
    say({"ready": True, "address": cluster.get_addrs()})
    for line in sys.stdin:
        if line.strip() == "write":
            say(write_within(image, seconds))
    # librbd's shutdown can block on a blocklisted connection: leave without it.
    os._exit(0)


if __name__ == "__main__":
    main()
