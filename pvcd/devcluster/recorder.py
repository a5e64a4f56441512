"""The chassis' journal writer, and the watch on its libvirtd that feeds it.

`DomainRecorder` journals when each domain of one libvirtd starts and stops
running guest code (a paused domain does not: see `_on_lifecycle`) from
libvirt's lifecycle events on the chassis' own connection: an event reaches
the chassis within a millisecond of the change (measured: -0.2..+0.4 ms from
the moment the call that caused it returned in another process). A poll of the
active domains every POLL_INTERVAL reconciles, so that a lost event cannot
leave the journal wrong for longer; a poll result is used only if no event
arrived while it ran, so it never undoes a newer event. See journal.py for
the format and why the timestamps can be trusted.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import libvirt

from pvcd.devcluster import journal

POLL_INTERVAL = 0.25
log = logging.getLogger("pvcd.devcluster.chassis")

_event_loop_lock = threading.Lock()
_event_loop_started = False


def ensure_event_loop() -> None:
    """libvirt's default event loop in a thread, once per process, before any connection opens."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


class JournalWriter:
    """Appends entries to one host's journal, one write per line."""

    def __init__(self, path: Path, host: str) -> None:
        self.path = path
        self.host = host
        self.lock = threading.Lock()
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(
        self,
        event: str,
        vm: str | None = None,
        via: str | None = None,
        detail: str | None = None,
        t: float | None = None,
    ) -> float:
        """Journal one event at `t` (now by default) and return its time."""
        with self.lock:
            when = time.monotonic() if t is None else t
            entry = journal.Entry(when, self.host, event, vm, via, detail).to_json()
            entry["wall"] = datetime.now(UTC).isoformat()
            os.write(self.fd, (json.dumps(entry) + "\n").encode())
            return when


class DomainRecorder:
    """Journals the domain starts and stops one libvirtd connection sees, until detached."""

    def __init__(self, conn: libvirt.virConnect, writer: JournalWriter) -> None:
        self.conn = conn
        self.writer = writer
        self.lock = threading.Lock()
        self.running: set[str] = set()
        self.events_seen = 0
        self.detached = threading.Event()
        self.callback_id: int | None = None
        self.poller = threading.Thread(target=self._poll_loop, name="domain-poll", daemon=True)

    def attach(self) -> None:
        self.callback_id = self.conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, None
        )
        self._poll()
        self.poller.start()

    def _on_lifecycle(self, _conn: Any, domain: libvirt.virDomain, event: int, detail: int, _opaque: Any) -> None:
        """A domain runs from its start or resume until it is paused or stops.

        During a live migration both hosts have the domain active, but only one
        runs it: the target's is started paused (STARTED, detail MIGRATED) and
        resumed at the switch-over, after the source paused its own for good.
        """
        name = domain.name()
        with self.lock:
            if self.detached.is_set():
                return
            self.events_seen += 1
            incoming = event == libvirt.VIR_DOMAIN_EVENT_STARTED and detail == libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED
            if event in (libvirt.VIR_DOMAIN_EVENT_STARTED, libvirt.VIR_DOMAIN_EVENT_RESUMED) and not incoming:
                self._started(name, "event")
            elif event in (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_SUSPENDED):
                self._stopped(name, "event")

    def _started(self, name: str, via: str) -> None:
        if name not in self.running:
            self.running.add(name)
            self.writer.write(journal.START, name, via)

    def _stopped(self, name: str, via: str, t: float | None = None) -> None:
        if name in self.running:
            self.running.discard(name)
            self.writer.write(journal.STOP, name, via, t=t)

    def _poll(self) -> None:
        with self.lock:
            seen_before = self.events_seen
        try:
            active = {domain.name() for domain in self.conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_RUNNING)}
        except libvirt.libvirtError as exc:
            if not self.detached.is_set():
                log.warning("Cannot list the domains of the host's libvirtd (%s); the next poll retries", exc)
            return
        with self.lock:
            if self.detached.is_set() or self.events_seen != seen_before:
                return
            for name in sorted(active - self.running):
                self._started(name, "poll")
            for name in sorted(self.running - active):
                self._stopped(name, "poll")

    def _poll_loop(self) -> None:
        while not self.detached.wait(POLL_INTERVAL):
            self._poll()

    def detach(self, via: str, t: float | None = None) -> list[str]:
        """Stop watching; journal a stop at `t` for every domain still running (the host went away)."""
        with self.lock:
            self.detached.set()
            stopped = sorted(self.running)
            when = time.monotonic() if t is None else t
            for name in stopped:
                self._stopped(name, via, when)
        if self.poller.is_alive() and self.poller is not threading.current_thread():
            self.poller.join(5)
        if self.callback_id is not None:
            try:
                self.conn.domainEventDeregisterAny(self.callback_id)
            except libvirt.libvirtError:
                pass
        try:
            self.conn.close()
        except libvirt.libvirtError:
            pass
        return stopped
