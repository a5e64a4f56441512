"""Benchmark: primary coordinator handover, planned and after a crash.

Three coordinators, each `pvcd` in its own network namespace joined to a
bridge (pvcd.devcluster.netlab: needs root and ZooKeeper), with a ZooKeeper
session timeout of 4 s. An observer namespace pings the cluster network's
floating IP. Median over the runs of:

* planned: from launching `pvc node primary X` until the floating IP answers
  a ping from X (the observer's neighbour entry is X's MAC before and after
  the ping, so the reply can only have come from X);
* crash: from SIGKILL of the primary until the floating IP answers a ping
  from the new primary.

Targets: planned ≤ 1 s; crash ≤ session timeout + 1 s. The figure `pvc`
itself reports (request written → new primary published) is recorded too.

Usage: python bench/handover.py [--out FILE] [--runs N]   (as root)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from pvcd.devcluster.netlab import SESSION_TIMEOUT, Lab  # noqa: E402
from pvcd.devcluster.processes import wait_until  # noqa: E402
from pvcd.devcluster.zookeeper import zookeeper_available  # noqa: E402

COORDINATORS = ("hv1", "hv2", "hv3")
RUNS = 5
PLANNED_TARGET = 1.0
CRASH_TARGET = SESSION_TIMEOUT + 1.0
PING_TIMEOUT = 0.2
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "handover.json"


def answered_from(lab: Lab, address: str, mac: str) -> bool:
    """A ping answered while the observer's neighbour entry is `mac` before and after it."""
    return (
        lab.observer_neighbour(address) == mac
        and lab.ping(address, PING_TIMEOUT)
        and lab.observer_neighbour(address) == mac
    )


def wait_answer(lab: Lab, address: str, macs: dict[str, str], exclude: str | None, timeout: float) -> tuple[str, float]:
    """The node (not `exclude`) whose MAC answers for `address`, and when (monotonic)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, mac in macs.items():
            if name != exclude and answered_from(lab, address, mac):
                return name, time.monotonic()
    raise TimeoutError(f"{address} did not answer from a node other than {exclude} within {timeout}s")


def settle(lab: Lab, address: str, macs: dict[str, str]) -> str:
    """Wait for one primary holding every floating IP, two secondaries, and the observer pointing at it."""
    primary = lab.wait_holder(timeout=30)
    wait_until(lambda: sorted(lab.roles().values()) == ["primary", "secondary", "secondary"], 30, "two secondaries")
    wait_until(
        lambda: lab.ping(address, PING_TIMEOUT) and lab.observer_neighbour(address) == macs[primary],
        10,
        f"{primary} to answer for {address}",
    )
    return primary


def planned_run(lab: Lab, address: str, macs: dict[str, str], pvc: list[str]) -> dict[str, float | str]:
    old = settle(lab, address, macs)
    new = COORDINATORS[(COORDINATORS.index(old) + 1) % len(COORDINATORS)]
    started = time.monotonic()
    command = subprocess.Popen([*pvc, "node", "primary", new, "--format", "json"], stdout=subprocess.PIPE, text=True)
    answered_by, answered = wait_answer(lab, address, {new: macs[new]}, None, 10)
    output, _ = command.communicate(timeout=30)
    if command.returncode != 0:
        raise RuntimeError(f"pvc node primary {new} failed with status {command.returncode}")
    return {"from": old, "to": answered_by, "seconds": answered - started, "pvc_seconds": json.loads(output)["seconds"]}


def crash_run(lab: Lab, address: str, macs: dict[str, str]) -> dict[str, float | str]:
    old = settle(lab, address, macs)
    started = time.monotonic()
    lab.nodes[old].signal(signal.SIGKILL)
    new, answered = wait_answer(lab, address, macs, old, SESSION_TIMEOUT + 20)
    killed = lab.nodes[old].process
    assert killed is not None  # it was running: it just received the signal
    killed.wait(timeout=10)
    lab.nodes[old].start()
    return {"from": old, "to": new, "seconds": answered - started}


def summary(runs: list[dict[str, float | str]], key: str = "seconds") -> float:
    return round(statistics.median(float(run[key]) for run in runs), 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    parser.add_argument("--runs", type=int, default=RUNS, help=f"runs of each kind (default {RUNS})")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print(
            "bench/handover.py: run as root (it creates network namespaces, veth pairs and a bridge)", file=sys.stderr
        )
        return 2
    if not zookeeper_available():
        print("bench/handover.py: ZooKeeper is not installed; run ./setup.sh test once", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="pvcd-handover-") as workdir:
        lab = Lab(Path(workdir))
        try:
            lab.setup()
            assert lab.zookeeper is not None
            for name in COORDINATORS:
                lab.add_node(name)
            for node in lab.nodes.values():
                node.start()
            macs = {name: node.mac() for name, node in lab.nodes.items()}
            address = lab.floating_ips()["cluster"]
            tls = lab.zookeeper.tls
            pvc = [
                str(Path(sys.executable).parent / "pvc"),
                "--zookeeper",
                lab.zookeeper.address,
                "--zookeeper-credentials",
                str(lab.zookeeper.credentials_file("operator")),
                "--zookeeper-ca",
                tls.ca_file,
                "--zookeeper-cert",
                str(tls.cert_file),
                "--zookeeper-key",
                str(tls.key_file),
            ]
            planned = [planned_run(lab, address, macs, pvc) for _ in range(args.runs)]
            crash = [crash_run(lab, address, macs) for _ in range(args.runs)]
        finally:
            lab.teardown()

    results = {
        "benchmark": "handover",
        "coordinators": len(COORDINATORS),
        "session_timeout": SESSION_TIMEOUT,
        "runs": args.runs,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "planned": {
            "median_seconds": summary(planned),
            "pvc_reported_median_seconds": summary(planned, "pvc_seconds"),
            "target_seconds": PLANNED_TARGET,
            "met": summary(planned) <= PLANNED_TARGET,
            "runs": [{**run, "seconds": round(float(run["seconds"]), 3)} for run in planned],
        },
        "crash": {
            "median_seconds": summary(crash),
            "target_seconds": CRASH_TARGET,
            "met": summary(crash) <= CRASH_TARGET,
            "runs": [{**run, "seconds": round(float(run["seconds"]), 3)} for run in crash],
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"Primary coordinator handover, {len(COORDINATORS)} coordinators in network namespaces, "
        f"session timeout {SESSION_TIMEOUT:g}s, median of {args.runs}:"
    )
    print(
        f"  planned (pvc node primary X -> floating IP answers from X): {results['planned']['median_seconds']:.3f}s "
        f"(target <= {PLANNED_TARGET:g}s; "
        f"inside the cluster: {results['planned']['pvc_reported_median_seconds']:.3f}s)"
    )
    print(
        f"  crash   (SIGKILL primary -> floating IP answers from the new primary): "
        f"{results['crash']['median_seconds']:.3f}s (target <= {CRASH_TARGET:g}s)"
    )
    print(f"Results written to {args.out}")
    return 0 if results["planned"]["met"] and results["crash"]["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
