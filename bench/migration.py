"""Benchmark: live migration, flush and crash-to-running of real QEMU guests in a local 3-node cluster.

The test-driver benches (failover.py, scale.py) prove the logic but no
hypervisor moves a byte there. This one measures what an operator of real hosts
waits for, on `pvc-devcluster up --hosts qemu` (root): every node a real QEMU
host in its own namespaces with its own libvirtd, the guests the tiny TCG
counter guests of `pvcd.devcluster.guest_image` (Debian's cloud kernel and a
busybox initramfs, 80 MiB, no disk). A guest prints `counter N` five times a
second on its serial port, which each host's libvirtd writes into that host's
own log directory: after a live migration the target's log carries on from the
source's last value, after a restart it begins again at 1. That file, not a
record in ZooKeeper, is what says a guest runs; every timing below ends when
the bench saw the guest's counter there (polled every 50 ms, so a figure is at
most ~0.25 s after the guest resumed: one counter period plus one poll).

Parts (`--parts`, default all):

* migrate — one guest live-migrated back and forth between hv1 and hv2,
            `--migrations` times (default 5): per migration the wall time of
            `pvc vm migrate NAME --target N --force --wait` (the command's own,
            with its interpreter start-up; --force because a migrated guest has
            a lastnode and pvc refuses to migrate it again without), the time
            until the guest counted on the
            target, and libvirt's completed-job figures the target recorded
            (`pvc vm info`'s `last_migration`: time_ms, downtime_ms,
            data_bytes). A migration fails unless the counter carried on (the
            target's first value is above the source's last, by at most 5: a
            line cut in two at the switch-over is lost) and `last_migration`
            names this move.
* flush   — 5 guests (`--flush-guests`) on hv1; `pvc node flush hv1 --wait`
            until every guest counts on hv2 or hv3 (counter carried on, one host
            each, none left on hv1 per the journals), then `pvc node ready hv1
            --wait` brings them back live (timed and checked the same way);
            `--flush-runs` times (default 3) with hv1's flush concurrency as
            configured (the devcluster writes no `flush_concurrency`, so
            pvcd's default, 16), then as many with it at 1 (serial).
            `pvc.system.migration.flush_concurrency` is read by pvcd at start
            and only the flushed node's own value matters (its FlushRunner
            requests the moves); `pvc-devcluster up` has no option for it, so
            the bench sets it in hv1's pvcd.yaml (the file the chassis starts
            pvcd with at every power-on) while hv1 runs no guest, powers hv1
            off through its chassis and lets the cluster do what it does with a
            dead host: the fencer powers it off and on again, it comes back
            `fenced`, and `pvc node ready hv1` takes it back. The bench checks
            that a new pvcd runs and reports the value it reads.
* crash   — 3 guests (`--crash-guests`) on hv3 (the primary coordinator is
            handed to hv1 first if hv3 holds it, so the crash never waits for a
            new primary); right after one of hv3's keepalives (the whole
            K x F window of silence has to pass: the worst case for detection)
            `pvc-devcluster fault hv3 crash` (power loss: hv3's pvcd, libvirtd
            and QEMU processes die), run in-process as failover.py does so that
            no interpreter start-up sits between t0 and the fault. Timed: t0 to
            every guest counting again on hv1 or hv2 with its counter restarted
            (first value at most 3: booted afresh, ~3 s of kernel boot under
            TCG included), to every domain started (the chassis journals), to
            the fence started and confirmed (the fence record, ZooKeeper's
            clock converted as in failover.py). A run fails if a guest did not
            restart, restarted twice or on two hosts, or `pvc-devcluster check`
            is not clean for its guests. Between runs the guests are removed,
            hv3 (powered on again by the fencer) is made ready, the cluster is
            left to settle. `--crash-runs` (default 3).

The cluster runs with keepalive every 1 s, dead after 3 missed
(`--keepalive-interval`, `--fence-intervals`; what the QEMU cluster tests use)
and a watchdog of 2 x K x F as failover.py gives it, so that a pvcd delayed by
the guests' load on 2 cores is not reset by its chassis mid-benchmark.

Load: the machine's load average at the start and at the end, the number of
cores, and what else ran: any pytest (the test suite) and any other local
cluster's chassis seen at the start, between parts and at the end, go into the
JSON's `load`. `--wait-idle S` first waits up to S seconds for no pytest to
run. Everything the bench starts is stopped at the end (`pvc-devcluster down`
in a `finally`), also on Ctrl-C or SIGTERM; the cluster's files are kept when
something failed.

Exit status: 0 when every run of every part passed, 1 otherwise, 2 when the
bench cannot run here (not root, no QEMU).

Usage: python bench/migration.py [--quick] [--parts migrate,flush,crash] [--migrations 5] [--flush-runs 3]
                                 [--crash-runs 3] [--flush-guests 5] [--crash-guests 3] [--keepalive-interval 1]
                                 [--fence-intervals 3] [--wait-idle S] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import types
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
if str(BENCH_DIR) not in sys.path:
    sys.path.append(str(BENCH_DIR))

import failover  # noqa: E402

from pvcd.config import DEFAULT_FLUSH_CONCURRENCY, ConfigError, load_config, parse_config  # noqa: E402
from pvcd.devcluster import cluster, guest_image, journal, qemu_cluster  # noqa: E402
from pvcd.devcluster.processes import pid_cmdline  # noqa: E402

PARTS = ("migrate", "flush", "crash")
NODES = 3
MIGRATIONS = 5
FLUSH_RUNS = 3
CRASH_RUNS = 3
FLUSH_GUESTS = 5
CRASH_GUESTS = 3
KEEPALIVE_S = 1
FENCE_INTERVALS = 3
SERIAL_CONCURRENCY = 1
MIGRATE_PAIR = ("hv1", "hv2")
FLUSH_NODE = "hv1"
CRASH_NODE = "hv3"
IMAGE_CACHE = Path("/var/cache/pvcd-tests/guest-image")
"""The QEMU cluster tests' cache: the kernel is fetched from Debian once per machine, for both."""
SERIAL = "/var/log/libvirt/qemu/{name}-serial.log"
"""Where a guest's serial port is written, inside the host running it (each host has its own)."""
POLL_S = 0.05
BOOT_TIMEOUT_S = 90.0
"""A guest boots in ~3.3 s idle; several at once on 2 loaded cores take far longer."""
MOVE_TIMEOUT_S = 300.0
"""--wait-timeout of one migrate, flush or ready: several TCG guests moving on 2 cores."""
COUNT_AFTER_S = 30.0
"""How long after the command returned a moved guest may take to print on its new host."""
CARRY_SLACK = 5
"""The target's first value is at most this much above the source's last (a line cut at the switch-over is lost)."""
RESTART_MAX = 3
"""A first value at most this on the new host: the guest booted afresh (the counter starts at 1)."""
UP_TIMEOUT_S = 300.0
DOWN_TIMEOUT_S = 180.0
DEFAULT_OUT_DIR = REPO_ROOT / "bench" / "results"
_LINE = re.compile(rb"^counter (\d+)\r?\n", re.MULTILINE)
"""A whole counter line only: a line still being written ("counter 12" of a coming 123) would look like a restart."""


class BenchError(Exception):
    """A run or the set-up went wrong; the message says what, for the JSON and stderr."""


def stats(values: list[float], digits: int = 3) -> dict[str, Any] | None:
    """Median, min and max: the median is the figure, min-max shows the spread on a shared 2-core machine."""
    if not values:
        return None
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "n": len(values),
    }


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def carried_on(before: int | None, after: int | None) -> str | None:
    """None if a live move carried the counter on; else why not (a restart, a gap, nothing seen)."""
    if before is None:
        return "no counter on the source"
    if after is None:
        return f"no counter on the target after the source's {before}"
    if after <= RESTART_MAX < before:
        return f"restarted: {before} on the source, then {after} on the target"
    if not before < after <= before + CARRY_SLACK:
        return f"did not carry on: {before} on the source, then {after} on the target"
    return None


# -- what else runs ----------------------------------------------------------------------------------------------


def other_activity(own_workdir: Path | None) -> dict[str, Any]:
    """Test runs and other local clusters sharing the cores: the figures mean little without this."""
    return {"loadavg": loadavg(), "pytest": pytest_runs(), "other_cluster_nodes": len(other_chassis(own_workdir))}


def pytest_runs() -> list[str]:
    """The command lines of running pytest processes (their clusters' processes only name pytest's tmp dirs)."""
    found = subprocess.run(["pgrep", "-f", "pytest"], capture_output=True, text=True, check=False)
    runs = set()
    for pid in map(int, found.stdout.split()):
        argv = pid_cmdline(pid) or []
        names = [Path(arg).name for arg in argv]
        if pid != os.getpid() and ("pytest" in names or any(a == "-m" and b == "pytest" for a, b in pairwise(argv))):
            runs.add(" ".join(argv))
    return sorted(runs)


def other_chassis(own_workdir: Path | None) -> list[int]:
    """The chassis (one per node) of local clusters other than the bench's own."""
    found = subprocess.run(["pgrep", "-f", "pvcd.devcluster.chassis"], capture_output=True, text=True, check=False)
    pids = []
    for pid in map(int, found.stdout.split()):
        argv = pid_cmdline(pid) or []
        if "pvcd.devcluster.chassis" in argv and (own_workdir is None or str(own_workdir) not in " ".join(argv)):
            pids.append(pid)
    return pids


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def wait_idle(limit: float) -> float:
    """Wait up to `limit` s for no pytest to run (the test suite shares the 2 cores); the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < limit and other_activity(None)["pytest"]:
        time.sleep(5)
    return time.monotonic() - started


# -- guests' serial logs -------------------------------------------------------------------------------------------


class SerialLogs:
    """Each host's serial log of each guest, read from outside the hosts (under the node's host root)."""

    def __init__(self, record: cluster.ClusterRecord) -> None:
        inside = Path(SERIAL.format(name="NAME")).parent.relative_to("/var/log/libvirt")
        self.dirs = {node.name: Path(node.directory) / "host" / "log" / inside for node in record.nodes}

    def path(self, host: str, guest: str) -> Path:
        return self.dirs[host] / Path(SERIAL.format(name=guest)).name

    def size(self, host: str, guest: str) -> int:
        try:
            return self.path(host, guest).stat().st_size
        except FileNotFoundError:
            return 0

    def values(self, host: str, guest: str, offset: int = 0) -> list[int]:
        """The whole counter lines the guest printed on `host` after byte `offset`, in order.

        An offset inside a line leaves a fragment that `_LINE` (anchored at a
        line start, ending in a newline) does not match."""
        try:
            with open(self.path(host, guest), "rb") as log:
                log.seek(offset)
                data = log.read()
        except FileNotFoundError:
            return []
        return [int(value) for value in _LINE.findall(data)]

    def last(self, host: str, guest: str) -> int | None:
        found = self.values(host, guest)
        return found[-1] if found else None


@dataclass
class Seen:
    host: str
    t: float
    first: int


class Watch:
    """The first new counter line of each guest on any of `hosts`, with when the bench saw it.

    Offsets are taken at creation: whatever a guest printed there before (a ping-pong returns to a host whose
    log already holds its earlier stay) does not count."""

    def __init__(self, logs: SerialLogs, guests: list[str], hosts: list[str]) -> None:
        self.logs = logs
        self.guests = guests
        self.offsets = {(host, guest): logs.size(host, guest) for host in hosts for guest in guests}
        self.seen: dict[str, Seen] = {}
        self.elsewhere: dict[str, set[str]] = {}
        """Guests that printed on a second host of `hosts` too: a double run, or a restart elsewhere."""

    def poll(self) -> None:
        now = time.monotonic()
        for (host, guest), offset in self.offsets.items():
            found = self.seen.get(guest)
            if found is not None and found.host == host:
                continue
            values = self.logs.values(host, guest, offset)
            if not values:
                continue
            if found is None:
                self.seen[guest] = Seen(host, now, values[0])
            else:
                self.elsewhere.setdefault(guest, set()).add(host)

    def done(self) -> bool:
        return len(self.seen) == len(self.guests)

    def missing(self) -> list[str]:
        return [guest for guest in self.guests if guest not in self.seen]


# -- the bench -------------------------------------------------------------------------------------------------------


class MigrationBench(failover.Bench):
    """failover.py's Bench (commands, ZooKeeper, journals, fences, cleanup) with real guests and their counters."""

    def __init__(self, workdir: Path, interval: int, intervals: int, image: guest_image.GuestImage) -> None:
        super().__init__(workdir, interval, intervals)
        self.image = image
        self.logs = SerialLogs(self.cluster)
        self.handover_refusals: list[str] = []
        """`pvc node primary` calls that failed before the crash part found a primary other than the victim."""

    # -- guests -------------------------------------------------------------------

    def define_guests(self, node: str, names: list[str]) -> None:
        """Define and start the guests on `node`; return once each counts there (booted)."""
        for name in names:
            xml = self.workdir / f"{name}.xml"
            xml.write_text(guest_image.domain_xml(name, str(uuid.uuid4()), self.image, Path(SERIAL.format(name=name))))
        self.pvc_all([["vm", "define", str(self.workdir / f"{name}.xml"), "--node", node] for name in names])
        self.pvc_all([["vm", "start", name] for name in names])
        failover.wait_until(
            lambda: all(self.logs.values(node, name) for name in names),
            BOOT_TIMEOUT_S + 10 * len(names),
            f"{', '.join(names)} counting on {node}",
            poll=0.5,
        )

    def remove_guests(self, names: list[str]) -> None:
        self.pvc_all([["vm", "stop", name, "--wait", "--wait-timeout", "60"] for name in names])
        self.pvc_all([["vm", "remove", name] for name in names])

    def where(self) -> dict[str, list[str]]:
        """VM -> the hosts it runs on now, from the chassis journals (each host's libvirtd)."""
        return journal.running(journal.runs(self.entries()))

    def migration_stats(self, name: str) -> dict[str, Any]:
        info = json.loads(self.pvc("vm", "info", name, "--format", "json"))
        stats_ = info.get("last_migration")
        return stats_ if isinstance(stats_, dict) else {}

    def check_clean(self, names: list[str]) -> tuple[dict[str, Any], list[str]]:
        """`pvc-devcluster check`, and what in it concerns `names` (an earlier run's overlap is that run's)."""
        checked = self.devcluster_check()
        problems = []
        if checked.get("error"):
            problems.append(f"pvc-devcluster check failed: {checked['error']}")
        overlaps = [o for o in checked.get("overlaps", []) if o.get("vm") in names]
        if overlaps:
            problems.append(f"ran on two hosts at once: {json.dumps(overlaps)}")
        not_once = [v for v in checked.get("not_running_once", []) if v.get("vm") in names]
        if not_once:
            problems.append(f"not running exactly once: {json.dumps(not_once)}")
        return checked, problems

    def run_watched(self, args: list[str], watch: Watch, timeout: float) -> dict[str, Any]:
        """A `pvc` command, timed, while `watch` polls the serial logs; until both are done (or time is up)."""
        t0 = time.monotonic()
        process = subprocess.Popen(
            [failover.tool("pvc"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env
        )
        ended: float | None = None
        try:
            while True:
                now = time.monotonic()
                if ended is None and process.poll() is not None:
                    ended = now
                watch.poll()
                if ended is not None and (watch.done() or process.returncode != 0 or now > ended + COUNT_AFTER_S):
                    break
                if ended is None and now > t0 + timeout:
                    process.kill()
                    process.wait()
                    ended = time.monotonic()
                    break
                time.sleep(POLL_S)
        finally:
            if process.poll() is None:
                process.kill()
            out, err = process.communicate()
        return {
            "t0": t0,
            "command_s": ended - t0 if ended is not None else None,
            "exit": process.returncode,
            "stdout": out,
            "stderr": err.strip(),
        }

    # -- part 1: live migration ---------------------------------------------------

    def migrate_once(self, name: str, source: str, target: str) -> dict[str, Any]:
        watch = Watch(self.logs, [name], [target])
        ran = self.run_watched(
            # --force: after its first move the guest has a lastnode, and pvc refuses to migrate a migrated VM
            # without it; migrating back to that lastnode ("home") clears it, as an unmigrate would.
            ["vm", "migrate", name, "--target", target, "--force", "--wait", "--wait-timeout", str(MOVE_TIMEOUT_S)],
            watch,
            MOVE_TIMEOUT_S + 30,
        )
        errors = []
        if ran["exit"] != 0:
            errors.append(f"pvc vm migrate exited {ran['exit']}: {ran['stderr'] or ran['stdout'].strip()}")
        seen = watch.seen.get(name)
        before = self.logs.last(source, name)
        problem = carried_on(before, seen.first if seen else None)
        if problem:
            errors.append(problem)
        stats_ = self.migration_stats(name)
        if (stats_.get("source"), stats_.get("target")) != (source, target):
            errors.append(f"last_migration is not this move: {json.dumps(stats_)}")
        where = self.where().get(name)
        if where != [target]:
            errors.append(f"runs on {where} per the journals, not on {target}")
        return {
            "source": source,
            "target": target,
            "command_s": rounded(ran["command_s"]),
            "counting_s": rounded(seen.t - ran["t0"]) if seen else None,
            "time_ms": stats_.get("time_ms"),
            "downtime_ms": stats_.get("downtime_ms"),
            "data_bytes": stats_.get("data_bytes"),
            "counter": {"source_last": before, "target_first": seen.first if seen else None},
            "errors": errors,
        }

    def migrations(self, count: int) -> dict[str, Any]:
        name = "mig1"
        first, second = MIGRATE_PAIR
        self.define_guests(first, [name])
        runs = []
        where = first
        for number in range(1, count + 1):
            target = second if where == first else first
            run = self.migrate_once(name, where, target)
            runs.append(run)
            print(f"  migrate {number}/{count}: {describe_migration(run)}", flush=True)
            now = self.where().get(name) or []
            if len(now) != 1:
                raise BenchError(f"{name} runs on {now} after migration {number}; stopping the part")
            where = now[0]
        _, problems = self.check_clean([name])
        self.remove_guests([name])
        ok = [r for r in runs if not r["errors"]]
        return {
            "guest": name,
            "pair": list(MIGRATE_PAIR),
            "failed_runs": sum(1 for r in runs if r["errors"]) + (1 if problems else 0),
            "check_problems": problems,
            "seconds": {
                "command": stats([r["command_s"] for r in ok if r["command_s"] is not None]),
                "counting": stats([r["counting_s"] for r in ok if r["counting_s"] is not None]),
                "libvirt_time": stats([r["time_ms"] / 1000 for r in ok if r["time_ms"] is not None]),
            },
            "downtime_ms": stats([float(r["downtime_ms"]) for r in ok if r["downtime_ms"] is not None], 1),
            "data_mib": stats([r["data_bytes"] / 2**20 for r in ok if r["data_bytes"] is not None], 2),
            "runs": runs,
        }

    # -- part 2: flush -------------------------------------------------------------

    def flush_once(self, node: str, names: list[str]) -> dict[str, Any]:
        others = [n.name for n in self.cluster.nodes if n.name != node]
        watch = Watch(self.logs, names, others)
        ran = self.run_watched(
            ["node", "flush", node, "--wait", "--wait-timeout", str(MOVE_TIMEOUT_S), "--format", "json"],
            watch,
            MOVE_TIMEOUT_S + 30,
        )
        errors = self._command_errors("flush", ran, names)
        guests: dict[str, dict[str, Any]] = {}
        for name in names:
            seen = watch.seen.get(name)
            problem = carried_on(self.logs.last(node, name), seen.first if seen else None)
            if problem:
                errors.append(f"{name}: {problem}")
            if name in watch.elsewhere:
                errors.append(f"{name} printed on {seen.host if seen else '?'} and {sorted(watch.elsewhere[name])}")
            stats_ = self.migration_stats(name)
            if stats_.get("source") != node or (seen and stats_.get("target") != seen.host):
                errors.append(f"{name}: last_migration is not this move: {json.dumps(stats_)}")
            guests[name] = {
                "target": seen.host if seen else None,
                "counting_s": rounded(seen.t - ran["t0"]) if seen else None,
                "time_ms": stats_.get("time_ms"),
                "downtime_ms": stats_.get("downtime_ms"),
            }
        where = self.where()
        wrong = {name: where.get(name) for name in names if where.get(name) != [guests[name]["target"]]}
        if wrong:
            errors.append(f"per the journals not where their counters are: {wrong}")
        seen_times = [s.t for s in watch.seen.values()]
        return {
            "command_s": rounded(ran["command_s"]),
            "counting_s": rounded(max(seen_times) - ran["t0"]) if watch.done() else None,
            "libvirt_time_sum_s": rounded(sum(g["time_ms"] or 0 for g in guests.values()) / 1000),
            "downtime_max_ms": max((g["downtime_ms"] or 0 for g in guests.values()), default=None),
            "placed": {host: sorted(n for n, g in guests.items() if g["target"] == host) for host in others},
            "guests": guests,
            "errors": errors,
        }

    def ready_once(self, node: str, names: list[str], sources: dict[str, str | None]) -> dict[str, Any]:
        watch = Watch(self.logs, names, [node])
        ran = self.run_watched(
            ["node", "ready", node, "--wait", "--wait-timeout", str(MOVE_TIMEOUT_S), "--format", "json"],
            watch,
            MOVE_TIMEOUT_S + 30,
        )
        errors = self._command_errors("ready", ran, names)
        for name in names:
            seen = watch.seen.get(name)
            source = sources.get(name)
            problem = carried_on(self.logs.last(source, name) if source else None, seen.first if seen else None)
            if problem:
                errors.append(f"{name}: {problem}")
        where = self.where()
        away = {name: where.get(name) for name in names if where.get(name) != [node]}
        if away:
            errors.append(f"not back on {node} per the journals: {away}")
        return {
            "command_s": rounded(ran["command_s"]),
            "counting_s": rounded(max(s.t for s in watch.seen.values()) - ran["t0"]) if watch.done() else None,
            "errors": errors,
        }

    def _command_errors(self, kind: str, ran: dict[str, Any], names: list[str]) -> list[str]:
        if ran["exit"] != 0:
            return [f"pvc node {kind} exited {ran['exit']}: {ran['stderr'] or ran['stdout'].strip()}"]
        try:
            report = json.loads(ran["stdout"])["report"]
        except (ValueError, KeyError, TypeError):
            return [f"pvc node {kind}: unreadable report {ran['stdout'][:200]!r}"]
        errors = []
        if report.get("phase") != "done":
            errors.append(f"{kind} report phase {report.get('phase')}: {report.get('reason')}")
        if sorted(report.get("moved") or []) != sorted(names):
            errors.append(f"{kind} moved {report.get('moved')}, not {names}")
        if report.get("left"):
            errors.append(f"{kind} left {report['left']}")
        return errors

    def flush_series(self, label: str, node: str, guests: int, runs: int) -> dict[str, Any]:
        """`runs` flushes of `node` with `guests` guests on it, each followed by a ready that brings them back."""
        config = load_config(self.cluster.node(node).config)
        concurrency = config.migration.flush_concurrency
        names = [f"fl{label[0]}{i}" for i in range(1, guests + 1)]
        self.define_guests(node, names)
        results = []
        for number in range(1, runs + 1):
            self.wait_quiet()
            flushed = self.flush_once(node, names)
            print(f"  flush {label} ({concurrency} at a time) {number}/{runs}: {describe_flush(flushed)}", flush=True)
            if any(flushed["guests"][n]["target"] is None for n in names):
                results.append({"flush": flushed, "ready": None, "errors": flushed["errors"]})
                raise BenchError(f"flush {label}: not every guest left {node}: {'; '.join(flushed['errors'])}")
            back = self.ready_once(node, names, {n: flushed["guests"][n]["target"] for n in names})
            print(f"  ready {label} {number}/{runs}: {describe_flush(back)}", flush=True)
            results.append({"flush": flushed, "ready": back, "errors": flushed["errors"] + back["errors"]})
            if back["errors"]:
                raise BenchError(f"ready {label}: the guests did not all come back: {'; '.join(back['errors'])}")
        _, problems = self.check_clean(names)
        self.remove_guests(names)
        ok = [r for r in results if not r["errors"]]
        return {
            "node": node,
            "guests": guests,
            "flush_concurrency": concurrency,
            "flush_concurrency_set_in_pvcd_yaml": _configured(self.cluster.node(node).config),
            "failed_runs": sum(1 for r in results if r["errors"]) + (1 if problems else 0),
            "check_problems": problems,
            "seconds": {
                "flush_command": stats([r["flush"]["command_s"] for r in ok if r["flush"]["command_s"] is not None]),
                "flush_counting": stats([r["flush"]["counting_s"] for r in ok if r["flush"]["counting_s"] is not None]),
                "flush_libvirt_time_sum": stats([r["flush"]["libvirt_time_sum_s"] for r in ok]),
                "ready_command": stats([r["ready"]["command_s"] for r in ok if r["ready"]["command_s"] is not None]),
                "ready_counting": stats([r["ready"]["counting_s"] for r in ok if r["ready"]["counting_s"] is not None]),
            },
            "flush_downtime_max_ms": stats([float(r["flush"]["downtime_max_ms"] or 0) for r in ok], 1),
            "runs": results,
        }

    def set_flush_concurrency(self, node: str, value: int) -> dict[str, Any]:
        """Give `node`'s pvcd `flush_concurrency: value`: edit its pvcd.yaml, then a power cycle (see the top).

        The node must run no guest: they would be lost with its power. The power-off goes through the chassis
        (as `pvc-devcluster fault NODE power-off`); the cluster then fences the silent node, which the fencer
        powers on again, and `pvc node ready` clears the fence."""
        record = self.cluster.node(node)
        path = Path(record.config)
        document = yaml.safe_load(path.read_text())
        document["pvc"]["system"]["migration"]["flush_concurrency"] = value
        try:
            parse_config(document)
        except ConfigError as exc:
            raise BenchError(f"flush_concurrency {value} makes {path} invalid: {exc.problems[0]}") from exc
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        old_pid = record.current().get("pvcd_pid")
        old_fence = self.fence_record(node).get("id")
        started = time.monotonic()
        try:
            cluster.fault(self.cluster, node, "power-off")
        except cluster.ClusterError as exc:
            raise BenchError(f"power-off {node}: {exc}") from exc
        fence = failover.wait_until(
            lambda: (lambda r: r if r.get("id") != old_fence and r.get("recovered_ms") else None)(
                self.fence_record(node)
            ),
            self.window + 90,
            f"the fence of {node} to power it on again",
        )
        failover.wait_until(
            lambda: (lambda n: n["daemon_state"] == "run" and not n["keepalive"]["late"])(self.summaries()[node]),
            90,
            f"{node} running again",
        )
        self.pvc("node", "ready", node, "--wait", "--wait-timeout", "60")
        self.wait_quiet()
        new_pid = record.current().get("pvcd_pid")
        if not new_pid or new_pid == old_pid:
            raise BenchError(f"{node}: no new pvcd after the power cycle (pid {old_pid} -> {new_pid})")
        effective = load_config(str(path)).migration.flush_concurrency
        return {
            "node": node,
            "flush_concurrency": effective,
            "pvcd_pid": [old_pid, new_pid],
            "fence_outcome": fence.get("outcome"),
            "seconds": round(time.monotonic() - started, 1),
        }

    # -- part 3: crash ---------------------------------------------------------------

    def ensure_not_primary(self, victim: str) -> str | None:
        """Hand the primary role away from `victim`: a crashed primary adds an election to the fence."""
        nodes_now = self.wait_quiet()
        if nodes_now[victim]["coordinator_state"] != "primary":
            return None
        # A node may refuse the role (seen here: one fenced earlier and readied since stays unfit for it until its
        # pvcd restarts), so each other node is asked in turn; one that claims the vacant role meanwhile is as good.
        refused = []
        for successor in sorted(name for name in nodes_now if name != victim):
            try:
                self.pvc("node", "primary", successor)
                break
            except failover.BenchError as exc:
                refused.append(str(exc))
                if self.primary() not in (None, victim):
                    break
        primary = failover.wait_until(
            lambda: (lambda p: p if p not in (None, victim) else None)(self.primary()),
            60,
            f"a primary other than {victim} ({'; '.join(refused)})",
        )
        self.wait_quiet()
        self.handover_refusals.extend(refused)
        return str(primary)

    def primary(self) -> str | None:
        return next((n for n, s in self.summaries().items() if s["coordinator_state"] == "primary"), None)

    def crash_once(self, number: int, victim: str, guests: int) -> dict[str, Any]:
        handed_to = self.ensure_not_primary(victim)
        names = [f"cr{number}g{i}" for i in range(1, guests + 1)]
        self.define_guests(victim, names)
        others = [n.name for n in self.cluster.nodes if n.name != victim]
        keepalive_ms = self.next_keepalive(victim)
        watch = Watch(self.logs, names, others)
        fault = self.inject(victim, "crash")
        t0, offset = fault["t0"], fault["offset_ms"]
        deadline = t0 + self.window + BOOT_TIMEOUT_S + 60
        while not watch.done() and time.monotonic() < deadline:
            watch.poll()
            time.sleep(POLL_S)
        errors = []
        if not watch.done():
            errors.append(f"not counting on {' or '.join(others)} in time: {', '.join(watch.missing())}")
        # Lines printed shortly after the first count too: a second boot would show as a second host or a drop.
        time.sleep(1.0)
        watch.poll()
        for name, seen in watch.seen.items():
            if seen.first > RESTART_MAX:
                errors.append(f"{name}: first value {seen.first} on {seen.host}, not a fresh boot")
            values = self.logs.values(seen.host, name)
            if any(b <= a for a, b in zip(values, values[1:], strict=False)):
                errors.append(f"{name}: its counter went back on {seen.host} (booted twice)")
            if name in watch.elsewhere:
                errors.append(f"{name} printed on {seen.host} and {sorted(watch.elsewhere[name])}")
        started = self.moved(victim, names, t0) or {}
        old = self.wait_old_stopped(victim, names, t0)
        if len(old) != len(names):
            errors.append(f"old copies on {victim} not seen stopping: {sorted(set(names) - set(old))}")
        fence = self.wait_fence_done(victim)
        _, problems = self.check_clean(names)
        errors.extend(problems)
        where = self.where()
        wrong = {n: where.get(n) for n, s in watch.seen.items() if where.get(n) != [s.host]}
        if wrong:
            errors.append(f"per the journals not where their counters are: {wrong}")

        def mono(ms: float) -> float:
            return (ms - offset) / 1000.0

        run = {
            "victim": victim,
            "primary_handed_to": handed_to,
            "guests": len(names),
            "placed_on": {name: seen.host for name, seen in sorted(watch.seen.items())},
            "first_values": {name: seen.first for name, seen in sorted(watch.seen.items())},
            "counting_s": rounded(max(s.t for s in watch.seen.values()) - t0) if watch.done() else None,
            "first_counting_s": rounded(min(s.t for s in watch.seen.values()) - t0) if watch.seen else None,
            "started_s": rounded(max(t for _, t in started.values()) - t0) if len(started) == len(names) else None,
            "detect_s": rounded(mono(fence["started_ms"]) - t0),
            "fence_s": rounded((fence["finished_ms"] - fence["started_ms"]) / 1000),
            "fence_outcome": fence.get("outcome"),
            "after_keepalive_s": rounded(t0 - mono(keepalive_ms)),
            "clock_offset_error_ms": round(fault["offset_error_ms"], 1),
            "errors": errors,
        }
        self.cleanup(victim, names)
        return run


def _configured(config_path: str) -> bool:
    """Whether the node's pvcd.yaml sets flush_concurrency itself (else pvcd's default applies)."""
    document = yaml.safe_load(Path(config_path).read_text())
    return "flush_concurrency" in ((document.get("pvc") or {}).get("system") or {}).get("migration", {})


def describe_migration(run: dict[str, Any]) -> str:
    figures = (
        f"{run['source']} -> {run['target']}: command {_s(run['command_s'])}, counting {_s(run['counting_s'])}, "
        f"libvirt {run['time_ms']} ms, downtime {run['downtime_ms']} ms, "
        f"counter {run['counter']['source_last']} -> {run['counter']['target_first']}"
    )
    return figures + (f"; FAILED: {'; '.join(run['errors'])}" if run["errors"] else "")


def describe_flush(run: dict[str, Any]) -> str:
    text = f"command {_s(run['command_s'])}, all counting {_s(run['counting_s'])}"
    if "placed" in run:
        text += f", libvirt sum {_s(run['libvirt_time_sum_s'])}, placed {run['placed']}"
    return text + (f"; FAILED: {'; '.join(run['errors'])}" if run["errors"] else "")


def describe_crash(run: dict[str, Any]) -> str:
    text = (
        f"{run['victim']} crashed: all counting elsewhere {_s(run['counting_s'])} "
        f"(first {_s(run['first_counting_s'])}), "
        f"domains started {_s(run['started_s'])}, detect {_s(run['detect_s'])} + fence {_s(run['fence_s'])}, "
        f"first values {run['first_values']}"
    )
    return text + (f"; FAILED: {'; '.join(run['errors'])}" if run["errors"] else "")


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}s"


# -- the cluster's lifetime ------------------------------------------------------------------------------------------


@contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """SIGTERM as Ctrl-C, so that the `finally` that stops the cluster runs for either."""

    def interrupt(signum: int, frame: types.FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def start_cluster(workdir: Path, interval: int, intervals: int, watchdog_timeout: int) -> None:
    """`pvc-devcluster up --hosts qemu --detach`, in a session of its own.

    Its own session: a Ctrl-C meant for the bench must not kill it half-way (what it built would then be known only
    to a partial cluster.json); the bench waits for it to finish, and `down` then removes everything."""
    process = subprocess.Popen(
        [
            failover.tool("pvc-devcluster"),
            "up",
            "--hosts",
            "qemu",
            "--nodes",
            str(NODES),
            "--workdir",
            str(workdir),
            "--keepalive-interval",
            str(interval),
            "--fence-intervals",
            str(intervals),
            "--watchdog-timeout",
            str(watchdog_timeout),
            "--detach",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, err = process.communicate(timeout=UP_TIMEOUT_S)
    except BaseException:
        try:
            process.wait(timeout=UP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
        raise
    if process.returncode != 0:
        raise BenchError(f"pvc-devcluster up: {err.strip()}")


def stop_cluster(workdir: Path) -> str | None:
    """`pvc-devcluster down`, deaf to Ctrl-C meanwhile (a second one must not leave the hosts behind)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if not (workdir / "cluster.json").exists():
            return None
        down = subprocess.run(
            [failover.tool("pvc-devcluster"), "down", "--workdir", str(workdir)],
            capture_output=True,
            text=True,
            timeout=DOWN_TIMEOUT_S,
            start_new_session=True,
        )
        return None if down.returncode == 0 else down.stderr.strip()
    finally:
        signal.signal(signal.SIGINT, previous)


# -- report ----------------------------------------------------------------------------------------------------------


def cell(part: dict[str, Any] | None, unit: str = "s", digits: int = 2) -> str:
    if part is None:
        return "-"
    return f"{part['median']:.{digits}f} {unit} ({part['min']:.{digits}f}-{part['max']:.{digits}f})"


def print_table(report: dict[str, Any]) -> None:
    settings = report["settings"]
    rows: list[tuple[str, str, str, str]] = []
    results = report["results"]
    if "migrate" in results:
        m = results["migrate"]
        runs, fails = str(len(m["runs"])), str(m["failed_runs"])
        rows += [
            ("live migration: pvc vm migrate --wait", runs, fails, cell(m["seconds"]["command"])),
            ("live migration: t0 -> counting on target", runs, fails, cell(m["seconds"]["counting"])),
            ("live migration: libvirt time_ms", runs, fails, cell(m["seconds"]["libvirt_time"])),
            ("live migration: libvirt downtime_ms", runs, fails, cell(m["downtime_ms"], "ms", 0)),
            ("live migration: data sent", runs, fails, cell(m["data_mib"], "MiB", 1)),
        ]
    for label, f in results.get("flush", {}).items():
        runs, fails = str(len(f["runs"])), str(f["failed_runs"])
        head = f"flush {f['guests']} guests, {f['flush_concurrency']} at a time ({label})"
        rows += [
            (f"{head}: flush --wait", runs, fails, cell(f["seconds"]["flush_command"])),
            (f"{head}: all counting elsewhere", runs, fails, cell(f["seconds"]["flush_counting"])),
            (f"{head}: sum of libvirt times", runs, fails, cell(f["seconds"]["flush_libvirt_time_sum"])),
            (f"{head}: ready --wait (back)", runs, fails, cell(f["seconds"]["ready_command"])),
        ]
    if "crash" in results:
        c = results["crash"]
        runs, fails = str(len(c["runs"])), str(c["failed_runs"])
        head = f"crash of {settings['crash_node']}, {settings['crash_guests']} guests"
        rows += [
            (f"{head}: all counting elsewhere", runs, fails, cell(c["seconds"]["counting"])),
            (f"{head}: all domains started", runs, fails, cell(c["seconds"]["started"])),
            (f"{head}: fence started (detect)", runs, fails, cell(c["seconds"]["detect"])),
            (f"{head}: fence (IPMI off confirmed)", runs, fails, cell(c["seconds"]["fence"])),
        ]
    print()
    print(
        f"Migration benchmark: {NODES}-node QEMU cluster (TCG guests, {settings['guest_memory_mib']} MiB), keepalive "
        f"{settings['keepalive_interval']} s, dead after {settings['fence_intervals']} missed; median (min-max):"
    )
    width = max(len(r[0]) for r in rows) if rows else 40
    header = f"{'measure':<{width}}  {'runs':>4}  {'fails':>5}  median (min-max)"
    print(header)
    print("-" * len(header))
    for name, runs, fails, value in rows:
        print(f"{name:<{width}}  {runs:>4}  {fails:>5}  {value}")
    load = report["load"]
    print(
        f"Load: {load['cpus']} cores; load average {load['loadavg_start']} at the start, {load['loadavg_end']} at the "
        f"end; {load['note']}"
    )
    if report.get("error"):
        print(f"Stopped early: {report['error']}")


def summarize_crash(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if not r["errors"]]
    return {
        "failed_runs": len(runs) - len(ok),
        "seconds": {
            key: stats([r[f"{key}_s"] for r in ok if r[f"{key}_s"] is not None])
            for key in ("counting", "first_counting", "started", "detect", "fence", "after_keepalive")
        },
        "runs": runs,
    }


def load_note(samples: list[dict[str, Any]], waited: float | None) -> str:
    tests = sorted({t for s in samples for t in s["pytest"]})
    clusters = max((s["other_cluster_nodes"] for s in samples), default=0)
    parts = []
    if tests:
        parts.append(f"the test suite ran meanwhile (pytest: {'; '.join(tests)})")
    if clusters:
        parts.append(f"another local cluster ran meanwhile (up to {clusters} chassis)")
    if not parts:
        parts.append("no pytest and no other local cluster seen at the start, between parts or at the end")
    if waited is not None:
        parts.append(f"waited {waited:.0f}s for pytest to be idle first")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one run of each (a smoke run)")
    parser.add_argument(
        "--parts", default=",".join(PARTS), help=f"comma-separated parts to run (default {','.join(PARTS)})"
    )
    parser.add_argument("--migrations", type=int, default=MIGRATIONS, help=f"live migrations (default {MIGRATIONS})")
    parser.add_argument(
        "--flush-runs", type=int, default=FLUSH_RUNS, help=f"flushes per concurrency (default {FLUSH_RUNS})"
    )
    parser.add_argument("--crash-runs", type=int, default=CRASH_RUNS, help=f"host crashes (default {CRASH_RUNS})")
    parser.add_argument(
        "--flush-guests", type=int, default=FLUSH_GUESTS, help=f"guests on the flushed node (default {FLUSH_GUESTS})"
    )
    parser.add_argument(
        "--crash-guests", type=int, default=CRASH_GUESTS, help=f"guests on the crashed node (default {CRASH_GUESTS})"
    )
    parser.add_argument("--keepalive-interval", type=int, default=KEEPALIVE_S, help=f"seconds (default {KEEPALIVE_S})")
    parser.add_argument(
        "--fence-intervals",
        type=int,
        default=FENCE_INTERVALS,
        help=f"missed keepalives before a node is dead (default {FENCE_INTERVALS})",
    )
    parser.add_argument(
        "--wait-idle", type=float, default=0.0, metavar="S", help="first wait up to S seconds for no pytest to run"
    )
    parser.add_argument("--out", type=Path, help="JSON results (default bench/results/migration-TIMESTAMP.json)")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not parts or any(p not in PARTS for p in parts):
        parser.error(f"--parts: a comma-separated list of {', '.join(PARTS)}")
    if args.quick:
        args.migrations = args.flush_runs = args.crash_runs = 1
    if min(args.migrations, args.flush_runs, args.crash_runs, args.flush_guests, args.crash_guests) < 1:
        parser.error("runs and guests must be at least 1")
    if args.keepalive_interval < 1 or args.fence_intervals < 1:
        parser.error("--keepalive-interval and --fence-intervals must be at least 1")
    try:
        qemu_cluster.require_root()
        failover.tool("pvc"), failover.tool("pvc-devcluster")
        image = guest_image.build(IMAGE_CACHE)
    except (qemu_cluster.QemuClusterError, failover.BenchError, guest_image.GuestImageError) as exc:
        print(f"bench/migration.py: {exc}", file=sys.stderr)
        return 2

    waited = wait_idle(args.wait_idle) if args.wait_idle > 0 else None
    started = datetime.datetime.now(datetime.UTC)
    out = args.out or DEFAULT_OUT_DIR / f"migration-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    watchdog_timeout = failover.watchdog_timeout_for(args.keepalive_interval, args.fence_intervals, None)
    workdir = Path(tempfile.mkdtemp(prefix="pvcd-migration-"))
    samples = [other_activity(workdir)]
    load_start = loadavg()
    results: dict[str, Any] = {}
    reconfigured: dict[str, Any] | None = None
    error: str | None = None
    interrupted = False
    bench: MigrationBench | None = None
    print(
        f"bench/migration.py: {NODES}-node QEMU cluster in {workdir}, keepalive {args.keepalive_interval}s x "
        f"{args.fence_intervals}, watchdog {watchdog_timeout}s; parts {', '.join(parts)}; load {load_start}",
        flush=True,
    )

    def between_parts() -> None:
        samples.append(other_activity(workdir))

    steps: dict[str, Callable[[MigrationBench], None]] = {}

    def migrate(b: MigrationBench) -> None:
        results["migrate"] = b.migrations(args.migrations)

    def flush(b: MigrationBench) -> None:
        nonlocal reconfigured
        results["flush"] = {}
        results["flush"]["default"] = b.flush_series("default", FLUSH_NODE, args.flush_guests, args.flush_runs)
        between_parts()
        reconfigured = b.set_flush_concurrency(FLUSH_NODE, SERIAL_CONCURRENCY)
        print(f"  {FLUSH_NODE} restarted with flush_concurrency {reconfigured['flush_concurrency']}", flush=True)
        results["flush"]["serial"] = b.flush_series("serial", FLUSH_NODE, args.flush_guests, args.flush_runs)

    def crash(b: MigrationBench) -> None:
        runs = []
        try:
            for number in range(1, args.crash_runs + 1):
                run = b.crash_once(number, CRASH_NODE, args.crash_guests)
                runs.append(run)
                print(f"  crash {number}/{args.crash_runs}: {describe_crash(run)}", flush=True)
        finally:
            results["crash"] = summarize_crash(runs)

    steps.update(migrate=migrate, flush=flush, crash=crash)
    with signals_as_interrupt():
        try:
            start_cluster(workdir, args.keepalive_interval, args.fence_intervals, watchdog_timeout)
            bench = MigrationBench(workdir, args.keepalive_interval, args.fence_intervals, image)
            bench.wait_quiet()
            for part in parts:
                print(f"{part}:", flush=True)
                steps[part](bench)
                between_parts()
        except (BenchError, failover.BenchError, cluster.ClusterError) as exc:
            error = str(exc)
            print(f"bench/migration.py: {error}", file=sys.stderr, flush=True)
        except KeyboardInterrupt:
            interrupted = True
            error = "interrupted"
            print("bench/migration.py: interrupted; stopping the cluster", file=sys.stderr, flush=True)
        finally:
            if bench is not None:
                bench.close()
            down_error = stop_cluster(workdir)
            if down_error:
                print(f"pvc-devcluster down --workdir {workdir}: {down_error}", file=sys.stderr)

    samples.append(other_activity(None))
    failed = error is not None or any(_failed(part) for part in results.values())
    if failed:
        print(f"cluster files (serial logs, journals, pvcd.log) kept in {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    report = {
        "benchmark": "migration",
        "date": started.isoformat(timespec="seconds"),
        "duration_s": round((datetime.datetime.now(datetime.UTC) - started).total_seconds()),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "settings": {
            "nodes": NODES,
            "hosts": "qemu",
            "parts": parts,
            "quick": args.quick,
            "migrations": args.migrations,
            "migrate_pair": list(MIGRATE_PAIR),
            "flush_runs": args.flush_runs,
            "flush_node": FLUSH_NODE,
            "flush_guests": args.flush_guests,
            "flush_concurrency_default": DEFAULT_FLUSH_CONCURRENCY,
            "flush_concurrency_serial": SERIAL_CONCURRENCY,
            "crash_runs": args.crash_runs,
            "crash_node": CRASH_NODE,
            "crash_guests": args.crash_guests,
            "keepalive_interval": args.keepalive_interval,
            "fence_intervals": args.fence_intervals,
            "dead_after_s": args.keepalive_interval * args.fence_intervals,
            "watchdog_timeout_s": watchdog_timeout,
            "guest_memory_mib": guest_image.GUEST_MEMORY_MIB,
            "guest_kernel": image.kernel.name,
            "counter_interval_s": guest_image.COUNTER_INTERVAL,
            "poll_s": POLL_S,
        },
        "load": {
            "cpus": os.cpu_count(),
            "loadavg_start": load_start,
            "loadavg_end": loadavg(),
            "samples": samples,
            "waited_for_idle_s": None if waited is None else round(waited),
            "note": load_note(samples, waited),
        },
        "measured": {
            "command": "wall time of the pvc command (time.monotonic() around the subprocess, interpreter start-up "
            "included)",
            "counting": "t0 (just before the command, or the fault) -> the bench saw the guest's next counter line in "
            "its new host's serial log (every guest, for a flush or a crash); polled every 50 ms",
            "libvirt": "pvc vm info's last_migration: libvirt's completed-job time_ms, downtime_ms, data_bytes",
            "carried_on": f"a live move passes when the target's first value is above the source's last by at most "
            f"{CARRY_SLACK}; a crash run when each guest's first value on its new host is at most {RESTART_MAX}",
            "crash": "t0 just after one of the victim's keepalives; started = the chassis journals' domain start; "
            "detect/fence = the fence record's started_ms/finished_ms (ZooKeeper clock converted)",
            "flush_concurrency": "set in the flushed node's pvcd.yaml, read by its pvcd at start (power cycle)",
        },
        "flush_reconfigured": reconfigured,
        "handover_refusals": bench.handover_refusals if bench is not None else [],
        "error": error,
        "workdir_kept": str(workdir) if failed else None,
        "results": results,
    }
    print_table(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {out}")
    if interrupted:
        return 130
    return 1 if failed else 0


def _failed(part: dict[str, Any]) -> bool:
    if "failed_runs" in part:
        return bool(part["failed_runs"])
    return any(_failed(sub) for sub in part.values() if isinstance(sub, dict))


if __name__ == "__main__":
    sys.exit(main())
