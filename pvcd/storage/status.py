"""The Ceph cluster's figures in ZooKeeper: the primary reads them, every node logs them.

`StorageStatus` is a primary-only service. Every keepalive interval its own
thread (never the keepalive's: a Ceph that does not answer must not delay a
keepalive) reads health, usage, OSDs, pools and each pool's volumes through
the Ceph adapter, and writes one JSON record at `schema.STORAGE_STATUS`. One
refresh at a time: one that takes longer than the interval is followed by the
next as soon as it ends. Every Ceph call has its own timeout, and the whole
refresh a deadline of `DEADLINE_INTERVALS` intervals (at least `MIN_DEADLINE`
seconds): past it, the remaining pools' volumes are not read and the record
says the figures are partial.

A refresh that fails keeps the previous figures, marks them `ok: false` with
the error line and since when they are stale, and sets the cluster fault
`storage` (`pvc cluster status`); the next successful refresh clears it.

`StorageFollower` is what any node with `enable_storage` knows of that
record: a data watch kept in memory, so the keepalive's storage line is built
without a Ceph call and without a read.

The record's shape, the operator's line and the fault are pure functions.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pvcd.config import Storage as StorageConfig
from pvcd.storage import values
from pvcd.storage.ceph import Ceph, CephError
from pvcd.storage.values import ClusterStatus, ClusterUsage, Osd, Pool, Volume
from pvcd.supervisor import Supervisor
from pvcd.zk import schema
from pvcd.zk.base import AlreadyExists, Store, Versioned
from pvcd.zk.faults import set_fault

log = logging.getLogger(__name__)

FAULT = "storage"
"""The cluster fault (`/pvc/cluster/faults`) a failed refresh sets."""
DEADLINE_INTERVALS = 3
"""A refresh stops reading further pools' volumes after this many keepalive intervals ..."""
MIN_DEADLINE = 10.0
"""... or this many seconds, whichever is longer (a few `rbd` calls per pool take a second or two)."""
STOP_JOIN = 1.0
"""Seconds `stop` waits for the refresher thread; one stuck in a Ceph call finishes on its own
(within that call's timeout) and writes nothing once stopped."""

PoolFigures = tuple[Pool, Sequence[Volume] | None]
"""A pool and its volumes (None: not read, the refresh's deadline had passed)."""


# --- the record (pure) ------------------------------------------------------------------------


def usage_json(usage: ClusterUsage) -> dict[str, Any]:
    return {"total_bytes": usage.total_bytes, "used_bytes": usage.used_bytes, "avail_bytes": usage.avail_bytes}


def pool_json(pool: Pool, volumes: Sequence[Volume] | None) -> dict[str, Any]:
    """The pool as `pvc storage pool list` shows it, with its volumes (None: not read in time)."""
    return dict(
        values.pool_summary(pool),
        volumes=None if volumes is None else [values.volume_summary(volume) for volume in volumes],
    )


def build_record(
    refreshed_ms: int,
    took_s: float,
    status: ClusterStatus,
    usage: ClusterUsage,
    osds: Sequence[Osd],
    pools: Sequence[PoolFigures],
    partial: str | None = None,
) -> dict[str, Any]:
    """The record of a refresh that read the cluster (`partial`: why some pools' volumes are missing)."""
    return {
        "ok": True,
        "refreshed_ms": refreshed_ms,
        "took_s": round(took_s, 3),
        "cluster": values.cluster_summary(status),
        "usage": usage_json(usage),
        "osds": [values.osd_summary(osd) for osd in osds],
        "pools": [pool_json(pool, volumes) for pool, volumes in pools],
        "partial": partial,
        "error": None,
        "stale_since_ms": None,
    }


def failed_record(previous: Mapping[str, Any] | None, error: str, now_ms: int, took_s: float) -> dict[str, Any]:
    """The record of a refresh that failed: the previous figures (if any) kept, with `ok` false,
    the error line, when the refresh was tried, and since when the figures are stale."""
    record: dict[str, Any] = dict(previous) if previous else {}
    for key in ("refreshed_ms", "cluster", "usage", "osds", "pools", "partial"):
        record.setdefault(key, None)
    stale_since = record.get("stale_since_ms") if not record.get("ok", True) else None
    record.update(
        ok=False,
        error=error,
        tried_ms=now_ms,
        took_s=round(took_s, 3),
        stale_since_ms=stale_since if isinstance(stale_since, int) else now_ms,
    )
    return record


def fault_of(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The cluster fault for a record: None when the last refresh worked."""
    if record.get("ok"):
        return None
    return {"reason": f"Ceph figures not refreshed: {record.get('error')}", "since_ms": record.get("stale_since_ms")}


def _age_text(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.1f}h"


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _mappings(value: Any) -> list[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def figures_text(record: Mapping[str, Any]) -> str:
    """Health; OSDs; raw space; pools and volumes, from a record that has figures (pure). Whatever
    the record holds, this returns a line: a field of the wrong type reads as missing."""
    cluster = _mapping(record.get("cluster"))
    parts = [str(cluster.get("health", "HEALTH_UNKNOWN"))]
    checks = [str(check.get("code")) for check in _mappings(cluster.get("checks"))]
    if checks:
        parts[0] += f" ({', '.join(checks)})"
    osds = _mappings(record.get("osds"))
    up = sum(1 for osd in osds if osd.get("up") is True)
    in_ = sum(1 for osd in osds if osd.get("in") is True)
    if up == in_ == len(osds):
        parts.append(f"{up}/{len(osds)} OSDs up and in")
    else:
        parts.append(f"{up}/{len(osds)} OSDs up, {in_}/{len(osds)} in")
    usage = _mapping(record.get("usage"))
    total = _count(usage.get("total_bytes"))
    used = _count(usage.get("used_bytes"))
    percent = f" ({100 * used / total:.0f}%)" if total else ""
    parts.append(f"{values.size_text(used)} used of {values.size_text(total)}{percent}")
    pools = _mappings(record.get("pools"))
    volumes = sum(len(_mappings(pool.get("volumes"))) for pool in pools)
    parts.append(f"{len(pools)} pools, {volumes} volumes")
    if record.get("partial"):
        parts.append(f"partial: {record['partial']}")
    return "; ".join(parts)


def storage_text(record: Mapping[str, Any] | None, age_s: float | None) -> str:
    """What the last record says of Ceph (`age_s`: how old its figures are now): the keepalive's
    storage line and `pvc cluster status` both show it."""
    if record is None:
        return "no figures: the primary has not recorded any yet"
    has_figures = record.get("cluster") is not None
    if not record.get("ok"):
        error = record.get("error") or "unknown error"
        if not has_figures:
            return f"no figures: {error}"
        age = f"figures {_age_text(age_s)} old" if age_s is not None else "figures of unknown age"
        return f"STALE ({error}); {age}: {figures_text(record)}"
    age = f"; figures {_age_text(age_s)} old" if age_s is not None else ""
    return f"{figures_text(record)}{age}"


# --- reading Ceph -----------------------------------------------------------------------------


def read_figures(
    ceph: Ceph, deadline: float, clock: Any = time.monotonic
) -> tuple[ClusterStatus, ClusterUsage, tuple[Osd, ...], list[PoolFigures], str | None]:
    """Read everything from Ceph (CephError on any failed call); past `deadline` (on `clock`), the
    remaining pools' volumes are skipped and the last value says so."""
    status = ceph.status()
    usage = ceph.usage()
    osds = ceph.osds()
    pools: list[PoolFigures] = []
    skipped: list[str] = []
    # The pools' settings joined with the usage just read, rather than `ceph.pools()`, which reads `ceph df` again.
    try:
        settings = values.parse_pool_details(ceph.run("ceph", ["osd", "pool", "ls", "detail", "--format", "json"]))
    except ValueError as exc:
        raise CephError(str(exc)) from None
    for pool in values.join_pools(settings, usage):
        if skipped or clock() >= deadline:
            skipped.append(pool.name)
            pools.append((pool, None))
        elif "rbd" in pool.applications:
            pools.append((pool, ceph.volumes(pool.name)))
        else:
            pools.append((pool, []))
    partial = None
    if skipped:
        partial = f"refresh deadline passed: volumes of {len(skipped)} pool(s) not read ({', '.join(skipped)})"
    return status, usage, osds, pools, partial


class StorageStatus:
    """A primary-only service: refreshes the Ceph cluster's record in ZooKeeper every interval."""

    name = "storage-status"

    def __init__(self, store: Store, ceph: Ceph, interval: float, supervisor: Supervisor) -> None:
        self.store = store
        self.ceph = ceph
        self.interval = float(interval)
        self.supervisor = supervisor
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._previous: dict[str, Any] | None = None
        self._next_at = 0.0
        self.deadline = max(DEADLINE_INTERVALS * self.interval, MIN_DEADLINE)
        """Seconds a refresh may spend before it reads no further pools' volumes."""
        self.refreshes = 0
        """Refreshes written since the process started (for tests and the log)."""

    def start(self) -> None:
        stop = self._stop = threading.Event()
        self._previous = None
        self._next_at = time.monotonic()
        self._thread = self.supervisor.spawn(self.name, lambda: self._round(stop), stop, 0.0)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(STOP_JOIN)

    def _round(self, stop: threading.Event) -> None:
        """Wait for the next refresh time (waking to notice a stop), then refresh once."""
        remaining = self._next_at - time.monotonic()
        if remaining > 0:
            stop.wait(remaining)
            return
        started = time.monotonic()
        # The next refresh is one interval after this one started, or at once after it if it ran long.
        self._next_at = started + self.interval
        self.refresh(stop)

    def refresh(self, stop: threading.Event | None = None) -> dict[str, Any] | None:
        """Read Ceph and write the record (and the fault); the record written, None when stopped first."""
        if self._previous is None:
            found = self.store.get(schema.STORAGE_STATUS)
            self._previous = dict(found.value) if found is not None and isinstance(found.value, dict) else {}
        started = time.monotonic()
        try:
            status, usage, osds, pools, partial = read_figures(self.ceph, started + self.deadline)
        except CephError as exc:
            error: str | None = str(exc)
        else:
            error = None
        took = time.monotonic() - started
        if stop is not None and stop.is_set():
            return None
        now_ms = self.store.server_time_ms()
        if error is None:
            record = build_record(now_ms, took, status, usage, osds, pools, partial)
        else:
            record = failed_record(self._previous, error, now_ms, took)
            if self._previous.get("ok", True):
                log.error("Ceph figures not refreshed (the last ones are kept, marked stale): %s", error)
        if error is None and self._previous.get("ok") is False:
            log.warning("Ceph figures refreshed again after %.1fs", took)
        self._write(record)
        self._previous = record
        set_fault(self.store, FAULT, fault_of(record))
        self.refreshes += 1
        return record

    def _write(self, record: dict[str, Any]) -> None:
        try:
            self.store.create(schema.STORAGE_STATUS, record, makepath=True)
        except AlreadyExists:
            self.store.set(schema.STORAGE_STATUS, record, -1)


class StorageFollower:
    """The last storage record, kept up to date by a data watch; read by the keepalive's log line."""

    def __init__(self, store: Store, clock: Any = time.monotonic) -> None:
        self.store = store
        self.clock = clock
        self._lock = threading.Lock()
        self._record: dict[str, Any] | None = None
        self._figures_at: float | None = None
        """When the record's figures were read, on this node's monotonic clock."""

    def start(self) -> None:
        self.store.watch_data(schema.STORAGE_STATUS, self._on_record)

    def _on_record(self, found: Versioned | None) -> None:
        record = dict(found.value) if found is not None and isinstance(found.value, dict) else None
        figures_at = None
        if record is not None and found is not None and isinstance(record.get("refreshed_ms"), int):
            # Both times are ZooKeeper's: how much older the figures were than the write, then this node's clock.
            figures_at = self.clock() - max(0, found.mtime_ms - record["refreshed_ms"]) / 1000
        with self._lock:
            self._record = record
            self._figures_at = figures_at

    def log_line(self) -> str:
        with self._lock:
            record, figures_at = self._record, self._figures_at
        age = self.clock() - figures_at if figures_at is not None else None
        return f"Storage: {storage_text(record, age)}"


def ceph_of(storage: StorageConfig) -> Ceph:
    """The Ceph adapter for the configuration's `pvc.system.storage` section."""
    return Ceph(
        conf=storage.ceph_config_file,
        keyring=storage.ceph_keyring,
        client_id=storage.ceph_client_id,
        timeout=storage.ceph_timeout,
    )


__all__ = [
    "FAULT",
    "StorageFollower",
    "StorageStatus",
    "build_record",
    "ceph_of",
    "failed_record",
    "fault_of",
    "figures_text",
    "read_figures",
    "storage_text",
]
