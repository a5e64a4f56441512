"""Ground truth of what ran where: the chassis journals and their analysis (pure).

Each chassis appends one JSON object per line to its node's `journal.jsonl`
whenever a domain of its host starts or stops running guest code, and for
power and watchdog events (`recorder.py` writes them). A paused domain does
not run: a live migration's target holds the guest paused until the
switch-over, after the source has paused it for good, so a live migration is
one run ending on the source and the next beginning on the target.

    {"t": 5123.004711, "wall": "2024-06-01T10:00:00.123456+00:00", "host": "hv1",
     "event": "start", "vm": "vm1", "via": "event"}

`t` is CLOCK_MONOTONIC (`time.monotonic()`), which on Linux is one clock for
the whole machine: the journals of all chassis compare directly, whatever the
node clocks say. `via` tells how the chassis learnt of it: a libvirt lifecycle
`event`, its reconciling `poll`, or the host's end (`power-off`, `power-loss`,
`bmc`, `watchdog`, `shutdown`, `libvirtd-exit`).

A chassis journals a start or a stop when it learns of it, never before it
happened (events arrive within a millisecond; the poll only catches a lost
one). So a journaled run may begin and end slightly late: a double run is
never hidden by an early stop, and one shorter than the event delay could be
missed.

This module only reads: from entries to runs (one VM on one host from a start
to its stop), to overlaps (one VM on two hosts at once) and to the VMs that
should run but do not run on exactly one host. Time is an argument.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

START = "start"
STOP = "stop"
POWER_ON = "power-on"
POWER_OFF = "power-off"
WATCHDOG_ARMED = "watchdog-armed"
WATCHDOG_DISARMED = "watchdog-disarmed"
WATCHDOG_RESET = "watchdog-reset"
LIBVIRTD_EXIT = "libvirtd-exit"
DOMAIN_EVENTS = frozenset({START, STOP})
EVENTS = DOMAIN_EVENTS | {POWER_ON, POWER_OFF, WATCHDOG_ARMED, WATCHDOG_DISARMED, WATCHDOG_RESET, LIBVIRTD_EXIT}


class JournalError(ValueError):
    """A journal line that is not an entry; the message names the file and line."""


@dataclass(frozen=True)
class Entry:
    t: float
    host: str
    event: str
    vm: str | None = None
    via: str | None = None
    detail: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            key: value
            for key, value in (
                ("t", self.t),
                ("host", self.host),
                ("event", self.event),
                ("vm", self.vm),
                ("via", self.via),
                ("detail", self.detail),
            )
            if value is not None
        }


def parse_line(line: str, where: str) -> Entry:
    try:
        value = json.loads(line)
    except ValueError as exc:
        raise JournalError(f"{where}: not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise JournalError(f"{where}: not a JSON object")
    t, host, event, vm = value.get("t"), value.get("host"), value.get("event"), value.get("vm")
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t):
        raise JournalError(f"{where}: 't' must be a number of seconds, got {t!r}")
    if not isinstance(host, str) or not host:
        raise JournalError(f"{where}: 'host' must be a node name, got {host!r}")
    if event not in EVENTS:
        raise JournalError(f"{where}: unknown event {event!r}")
    if event in DOMAIN_EVENTS and (not isinstance(vm, str) or not vm):
        raise JournalError(f"{where}: a {event} needs the VM's name in 'vm', got {vm!r}")
    via, detail = value.get("via"), value.get("detail")
    return Entry(
        float(t),
        host,
        event,
        vm if isinstance(vm, str) else None,
        via if isinstance(via, str) else None,
        detail if isinstance(detail, str) else None,
    )


def parse(text: str, source: str) -> list[Entry]:
    """Every entry of one journal file; a chassis killed mid-write may leave a last partial line, skipped."""
    lines = text.split("\n")
    complete, last = lines[:-1], lines[-1]
    entries = [parse_line(line, f"{source}:{number}") for number, line in enumerate(complete, 1) if line.strip()]
    if last.strip():
        try:
            entries.append(parse_line(last, f"{source}:{len(lines)}"))
        except JournalError:
            pass
    return entries


@dataclass(frozen=True)
class Run:
    """VM `vm` ran on `host` from `start` to `end` (None: it still runs)."""

    vm: str
    host: str
    start: float
    end: float | None


def runs(entries: Iterable[Entry]) -> list[Run]:
    """The runs the entries describe.

    A start of a VM that already runs, or a stop of one that does not, adds
    nothing (the poll may confirm what an event said). A power-off ends every
    run of its host: the chassis journals those stops itself, but a journal
    that lost them must not show VMs outliving their host.
    """
    open_runs: dict[tuple[str, str], float] = {}
    done: list[Run] = []

    def close(key: tuple[str, str], t: float) -> None:
        done.append(Run(key[1], key[0], open_runs.pop(key), t))

    for entry in sorted(entries, key=lambda e: e.t):
        if entry.event == START and entry.vm is not None:
            open_runs.setdefault((entry.host, entry.vm), entry.t)
        elif entry.event == STOP and entry.vm is not None and (entry.host, entry.vm) in open_runs:
            close((entry.host, entry.vm), entry.t)
        elif entry.event == POWER_OFF:
            for key in [key for key in open_runs if key[0] == entry.host]:
                close(key, entry.t)
    still = [Run(vm, host, start, None) for (host, vm), start in open_runs.items()]
    return sorted(done + still, key=lambda r: (r.vm, r.start, r.host))


@dataclass(frozen=True)
class Overlap:
    """VM `vm` ran on both `hosts` from `start` to `end` (None: it still does)."""

    vm: str
    hosts: tuple[str, str]
    start: float
    end: float | None

    def to_json(self, now: float) -> dict[str, Any]:
        end = self.end if self.end is not None else now
        return {
            "vm": self.vm,
            "hosts": list(self.hosts),
            "start": self.start,
            "end": self.end,
            "ongoing": self.end is None,
            "seconds": round(end - self.start, 6),
        }


def overlaps(all_runs: Iterable[Run]) -> list[Overlap]:
    """Every interval in which one VM ran on two hosts (touching ends do not overlap)."""
    by_vm: dict[str, list[Run]] = {}
    for run in all_runs:
        by_vm.setdefault(run.vm, []).append(run)
    found = []
    for vm, vm_runs in sorted(by_vm.items()):
        for index, first in enumerate(vm_runs):
            for second in vm_runs[index + 1 :]:
                if first.host == second.host:
                    continue
                start = max(first.start, second.start)
                ends = [run.end for run in (first, second) if run.end is not None]
                end = min(ends) if ends else None
                if end is None or start < end:
                    hosts = tuple(sorted((first.host, second.host)))
                    found.append(Overlap(vm, (hosts[0], hosts[1]), start, end))
    return sorted(found, key=lambda o: (o.start, o.vm, o.hosts))


def running(all_runs: Iterable[Run]) -> dict[str, list[str]]:
    """VM -> the hosts it runs on now (runs without an end)."""
    where: dict[str, list[str]] = {}
    for run in all_runs:
        if run.end is None:
            where.setdefault(run.vm, []).append(run.host)
    return {vm: sorted(hosts) for vm, hosts in sorted(where.items())}


@dataclass(frozen=True)
class Misplaced:
    """A VM that should run and does not run on exactly one host: on none, or on several."""

    vm: str
    hosts: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"vm": self.vm, "hosts": list(self.hosts)}


def not_running_once(should_run: Iterable[str], where: Mapping[str, list[str]]) -> list[Misplaced]:
    return [Misplaced(vm, tuple(where.get(vm, ()))) for vm in sorted(set(should_run)) if len(where.get(vm, ())) != 1]


@dataclass(frozen=True)
class Report:
    """The verdict on a set of journals, and what it was drawn from."""

    overlaps: list[Overlap]
    misplaced: list[Misplaced]
    running: dict[str, list[str]]
    entries: dict[str, int] = field(default_factory=dict)
    first: float | None = None
    last: float | None = None

    @property
    def clean(self) -> bool:
        return not self.overlaps and not self.misplaced

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "now": now,
            "overlaps": [overlap.to_json(now) for overlap in self.overlaps],
            "not_running_once": [misplaced.to_json() for misplaced in self.misplaced],
            "running": self.running,
            "journals": {"entries": self.entries, "first": self.first, "last": self.last},
        }


def analyse(entries: list[Entry], should_run: Iterable[str]) -> Report:
    """Overlaps over the whole journal, and the VMs of `should_run` not on exactly one host now."""
    all_runs = runs(entries)
    where = running(all_runs)
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry.host] = counts.get(entry.host, 0) + 1
    times = [entry.t for entry in entries]
    return Report(
        overlaps(all_runs),
        not_running_once(should_run, where),
        where,
        dict(sorted(counts.items())),
        min(times, default=None),
        max(times, default=None),
    )
