"""What Ceph's JSON answers mean, as frozen values, and the validation of names and sizes.

Pure on purpose: no subprocess, no Ceph. The adapter (`pvcd.storage.ceph`)
runs the commands and hands their standard output here, so every parser is
unit-tested against answers recorded from a real Ceph 16.2 ("Pacific"), and
bad input is refused here with one line before any command runs.

Parsers raise `ValueError` with one line naming what did not make sense; the
adapter turns it into a `CephError`.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pvcd.cluster.vm_records import shown

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")
"""Pool, volume and snapshot names: Ceph allows more, but `/` and `@` separate them in an image
spec, a leading `-` reads as an option, and spaces break every table; 100 characters is plenty."""
LOCKER_PATTERN = re.compile(r"client\.[0-9]+")
SIZE_PATTERN = re.compile(r"([0-9]+)\s*(?:([KMGTP])(?:i?B)?|B)?", re.IGNORECASE)
SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


# --- validation -------------------------------------------------------------------------------


def validate_name(kind: str, name: str) -> str:
    """`name` if it is a usable pool, volume or snapshot name (`kind` says which), else ValueError."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"invalid {kind} name {shown(name) if isinstance(name, str) else repr(name)}: use 1-100 letters, "
            "digits, '_', '.', '+' or '-', not starting with a symbol"
        )
    return name


def parse_size(text: str | int) -> int:
    """A size in bytes from `1024`, `512M`, `10G`, `4KiB` or `1TB` (units are powers of 1024, as in `rbd`).

    Ceph rounds nothing for us: an RBD volume is a whole number of bytes and must not be empty."""
    if isinstance(text, bool):
        raise ValueError(f"invalid size {text!r}")
    if isinstance(text, int):
        size = text
    else:
        match = SIZE_PATTERN.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"invalid size {text!r}: use a whole number with an optional unit K, M, G, T or P")
        size = int(match.group(1)) * SIZE_UNITS[(match.group(2) or "").upper()]
    if size <= 0:
        raise ValueError(f"invalid size {text!r}: a volume must be larger than 0 bytes")
    return size


def validate_locker(locker: str) -> str:
    """`client.N`, the only form `rbd lock ls` reports a lock holder in."""
    if not LOCKER_PATTERN.fullmatch(locker):
        raise ValueError(f"invalid lock holder {locker!r}: expected client.N as `rbd lock ls` shows it")
    return locker


def validate_address(address: str) -> str:
    """A Ceph client address `IP`, `IP:PORT` or `IP:PORT/NONCE` (IPv6 in brackets), as blocklists take it."""
    rest = address
    nonce = port = None
    if "/" in rest:
        rest, nonce = rest.rsplit("/", 1)
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        if tail:
            if not tail.startswith(":"):
                raise ValueError(f"invalid client address {address!r}")
            port = tail[1:]
    elif rest.count(":") == 1:
        host, port = rest.split(":")
    else:
        host = rest
    try:
        ipaddress.ip_address(host)
        for number in (port, nonce):
            if number is not None and (not number.isdigit() or int(number) > (1 << 32)):
                raise ValueError(number)
        if port is not None and int(port) > 65535:
            raise ValueError(port)
    except ValueError:
        raise ValueError(f"invalid client address {address!r}: expected IP[:PORT[/NONCE]]") from None
    return address


# --- decoding ---------------------------------------------------------------------------------


def decode(text: str, what: str) -> Any:
    """One JSON document from a command's output; ValueError naming the command otherwise."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what}: not JSON ({exc.msg} at position {exc.pos})") from None


def decode_all(text: str, what: str) -> list[Any]:
    """Every JSON document printed back to back: `ceph osd blocklist ls` prints two arrays
    (addresses, then ranges) with nothing between them, which `json.loads` refuses."""
    decoder = json.JSONDecoder()
    documents: list[Any] = []
    position = 0
    text = text.strip()
    while position < len(text):
        try:
            document, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{what}: not JSON ({exc.msg} at position {exc.pos})") from None
        documents.append(document)
        while position < len(text) and text[position].isspace():
            position += 1
    return documents


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError(f"{what}: expected a JSON array, got {type(value).__name__}")
    return value


def _int(mapping: Mapping[str, Any], key: str, what: str, default: int | None = None) -> int:
    value = mapping.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what}: {key} missing or not a number")
    return int(value)


def _flag(value: Any) -> bool:
    """Ceph reports some booleans as the strings "true"/"false" (`rbd snap ls` protected)."""
    return value is True or value == "true"


# --- cluster ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HealthCheck:
    """One active health check: `POOL_APP_NOT_ENABLED`, HEALTH_WARN, its one-line summary."""

    code: str
    severity: str
    summary: str


@dataclass(frozen=True)
class Health:
    status: str
    checks: tuple[HealthCheck, ...]

    @property
    def errors(self) -> tuple[HealthCheck, ...]:
        return tuple(check for check in self.checks if check.severity == "HEALTH_ERR")


@dataclass(frozen=True)
class ClusterStatus:
    """`ceph status`: health, OSD counts, whether a mgr is active, and the raw usage figures."""

    fsid: str
    health: Health
    osds: int
    osds_up: int
    osds_in: int
    mgr_available: bool
    pgs: int
    total_bytes: int
    used_bytes: int
    avail_bytes: int


def parse_health(document: Any, what: str = "ceph health") -> Health:
    health = _mapping(document, what)
    status = health.get("status")
    if not isinstance(status, str):
        raise ValueError(f"{what}: no health status")
    checks = []
    for code, check in sorted(_mapping(health.get("checks", {}), what).items()):
        check = _mapping(check, what)
        summary = check.get("summary", {})
        message = summary.get("message", "") if isinstance(summary, Mapping) else str(summary)
        checks.append(HealthCheck(code=code, severity=str(check.get("severity", "")), summary=str(message)))
    return Health(status=status, checks=tuple(checks))


def parse_status(text: str) -> ClusterStatus:
    what = "ceph status"
    document = _mapping(decode(text, what), what)
    osdmap = _mapping(document.get("osdmap", {}), what)
    osdmap = _mapping(osdmap.get("osdmap", osdmap), what)  # nested one level deeper before Pacific
    pgmap = _mapping(document.get("pgmap", {}), what)
    mgrmap = _mapping(document.get("mgrmap", {}), what)
    return ClusterStatus(
        fsid=str(document.get("fsid", "")),
        health=parse_health(document.get("health"), what),
        osds=_int(osdmap, "num_osds", what),
        osds_up=_int(osdmap, "num_up_osds", what),
        osds_in=_int(osdmap, "num_in_osds", what),
        mgr_available=bool(mgrmap.get("available", False)),
        pgs=_int(pgmap, "num_pgs", what, 0),
        total_bytes=_int(pgmap, "bytes_total", what, 0),
        used_bytes=_int(pgmap, "bytes_used", what, 0),
        avail_bytes=_int(pgmap, "bytes_avail", what, 0),
    )


@dataclass(frozen=True)
class PoolUsage:
    """A pool's line of `ceph df`: what is stored (before replication) and what it uses raw."""

    name: str
    id: int
    stored_bytes: int
    used_bytes: int
    objects: int
    percent_used: float
    max_avail_bytes: int


@dataclass(frozen=True)
class ClusterUsage:
    """`ceph df`: the raw capacity and every pool's usage."""

    total_bytes: int
    used_bytes: int
    avail_bytes: int
    pools: tuple[PoolUsage, ...]


def parse_df(text: str) -> ClusterUsage:
    what = "ceph df"
    document = _mapping(decode(text, what), what)
    stats = _mapping(document.get("stats"), what)
    pools = []
    for entry in _list(document.get("pools", []), what):
        entry = _mapping(entry, what)
        pool_stats = _mapping(entry.get("stats"), what)
        pools.append(
            PoolUsage(
                name=str(entry.get("name")),
                id=_int(entry, "id", what),
                stored_bytes=_int(pool_stats, "stored", what, 0),
                used_bytes=_int(pool_stats, "bytes_used", what, 0),
                objects=_int(pool_stats, "objects", what, 0),
                percent_used=float(pool_stats.get("percent_used", 0.0)),
                max_avail_bytes=_int(pool_stats, "max_avail", what, 0),
            )
        )
    return ClusterUsage(
        total_bytes=_int(stats, "total_bytes", what),
        used_bytes=_int(stats, "total_used_raw_bytes", what, stats.get("total_used_bytes", 0)),
        avail_bytes=_int(stats, "total_avail_bytes", what),
        pools=tuple(pools),
    )


@dataclass(frozen=True)
class Osd:
    """An OSD of `ceph osd df`: up/down, in/out (its reweight is above 0), and its usage."""

    id: int
    name: str
    up: bool
    in_: bool
    crush_weight: float
    reweight: float
    total_bytes: int
    used_bytes: int
    avail_bytes: int
    utilization: float
    pgs: int


def parse_osd_df(text: str) -> tuple[Osd, ...]:
    what = "ceph osd df"
    document = _mapping(decode(text, what), what)
    osds = []
    for node in _list(document.get("nodes", []), what):
        node = _mapping(node, what)
        if node.get("type", "osd") != "osd":
            continue
        reweight = float(node.get("reweight", 0.0))
        osds.append(
            Osd(
                id=_int(node, "id", what),
                name=str(node.get("name", f"osd.{node.get('id')}")),
                up=node.get("status") == "up",
                in_=reweight > 0,
                crush_weight=float(node.get("crush_weight", 0.0)),
                reweight=reweight,
                total_bytes=_int(node, "kb", what, 0) * 1024,
                used_bytes=_int(node, "kb_used", what, 0) * 1024,
                avail_bytes=_int(node, "kb_avail", what, 0) * 1024,
                utilization=float(node.get("utilization", 0.0)),
                pgs=_int(node, "pgs", what, 0),
            )
        )
    return tuple(sorted(osds, key=lambda osd: osd.id))


# --- pools ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolSettings:
    """A pool's line of `ceph osd pool ls detail`: replication and placement groups."""

    name: str
    id: int
    size: int
    min_size: int
    pg_num: int
    applications: tuple[str, ...]


@dataclass(frozen=True)
class Pool:
    """A pool as `pvc storage pool list` shows it: its settings and its usage."""

    name: str
    id: int
    size: int
    pg_num: int
    applications: tuple[str, ...]
    stored_bytes: int
    used_bytes: int
    objects: int
    percent_used: float
    max_avail_bytes: int


def parse_pool_details(text: str) -> tuple[PoolSettings, ...]:
    what = "ceph osd pool ls detail"
    pools = []
    for entry in _list(decode(text, what), what):
        entry = _mapping(entry, what)
        pools.append(
            PoolSettings(
                name=str(entry.get("pool_name")),
                id=_int(entry, "pool_id", what, entry.get("pool")),
                size=_int(entry, "size", what),
                min_size=_int(entry, "min_size", what, 0),
                pg_num=_int(entry, "pg_num", what),
                applications=tuple(sorted(_mapping(entry.get("application_metadata", {}), what))),
            )
        )
    return tuple(pools)


def parse_pool_names(text: str) -> tuple[str, ...]:
    """`rados lspools`: one pool name per line (it has no JSON output; a pool name has no newline)."""
    return tuple(line for line in text.splitlines() if line)


def join_pools(settings: tuple[PoolSettings, ...], usage: ClusterUsage) -> tuple[Pool, ...]:
    """Pools from their settings, with the usage `ceph df` gives for them (zero when it has none yet)."""
    by_name = {pool.name: pool for pool in usage.pools}
    pools = []
    for pool in settings:
        used = by_name.get(pool.name)
        pools.append(
            Pool(
                name=pool.name,
                id=pool.id,
                size=pool.size,
                pg_num=pool.pg_num,
                applications=pool.applications,
                stored_bytes=used.stored_bytes if used else 0,
                used_bytes=used.used_bytes if used else 0,
                objects=used.objects if used else 0,
                percent_used=used.percent_used if used else 0.0,
                max_avail_bytes=used.max_avail_bytes if used else 0,
            )
        )
    return tuple(sorted(pools, key=lambda pool: pool.name))


# --- volumes and snapshots --------------------------------------------------------------------


@dataclass(frozen=True)
class Parent:
    """The snapshot a cloned volume was made from (gone once the clone is flattened)."""

    pool: str
    volume: str
    snapshot: str


@dataclass(frozen=True)
class Volume:
    """An RBD image: its provisioned size, what it really uses (`rbd du`), and its parent if a clone."""

    pool: str
    name: str
    size_bytes: int
    used_bytes: int
    format: int
    parent: Parent | None


def _parent(value: Any, what: str) -> Parent | None:
    if not value:
        return None
    parent = _mapping(value, what)
    return Parent(
        pool=str(parent.get("pool", "")), volume=str(parent.get("image", "")), snapshot=str(parent.get("snapshot", ""))
    )


def parse_volume_list(pool: str, ls_text: str, du_text: str) -> tuple[Volume, ...]:
    """Volumes from `rbd ls -l` (sizes, parents) and `rbd du` (usage); the snapshot lines both
    print are skipped: snapshots are listed per volume."""
    what = "rbd ls"
    du_what = "rbd du"
    used: dict[str, int] = {}
    for entry in _list(_mapping(decode(du_text, du_what), du_what).get("images", []), du_what):
        entry = _mapping(entry, du_what)
        if "snapshot" not in entry:
            used[str(entry.get("name"))] = _int(entry, "used_size", du_what, 0)
    volumes = []
    for entry in _list(decode(ls_text, what), what):
        entry = _mapping(entry, what)
        if "snapshot" in entry:
            continue
        name = str(entry.get("image"))
        volumes.append(
            Volume(
                pool=pool,
                name=name,
                size_bytes=_int(entry, "size", what),
                used_bytes=used.get(name, 0),
                format=_int(entry, "format", what, 2),
                parent=_parent(entry.get("parent"), what),
            )
        )
    return tuple(sorted(volumes, key=lambda volume: volume.name))


@dataclass(frozen=True)
class VolumeInfo:
    """`rbd info`: what resize, clone and remove decisions need about one volume."""

    name: str
    size_bytes: int
    snapshot_count: int
    features: tuple[str, ...]
    parent: Parent | None


def parse_volume_info(text: str) -> VolumeInfo:
    what = "rbd info"
    entry = _mapping(decode(text, what), what)
    return VolumeInfo(
        name=str(entry.get("name")),
        size_bytes=_int(entry, "size", what),
        snapshot_count=_int(entry, "snapshot_count", what, 0),
        features=tuple(str(feature) for feature in _list(entry.get("features", []), what)),
        parent=_parent(entry.get("parent"), what),
    )


@dataclass(frozen=True)
class Snapshot:
    name: str
    id: int
    size_bytes: int
    protected: bool
    timestamp: str


def parse_snapshots(text: str) -> tuple[Snapshot, ...]:
    what = "rbd snap ls"
    snapshots = []
    for entry in _list(decode(text, what), what):
        entry = _mapping(entry, what)
        snapshots.append(
            Snapshot(
                name=str(entry.get("name")),
                id=_int(entry, "id", what),
                size_bytes=_int(entry, "size", what),
                protected=_flag(entry.get("protected")),
                timestamp=str(entry.get("timestamp", "")),
            )
        )
    return tuple(snapshots)


@dataclass(frozen=True)
class Watcher:
    """A client that has a volume open (`rbd status`): a running VM, or a dead node's leftover."""

    address: str
    client: str


def parse_watchers(text: str) -> tuple[Watcher, ...]:
    what = "rbd status"
    document = _mapping(decode(text, what), what)
    watchers = []
    for entry in _list(document.get("watchers", []), what):
        entry = _mapping(entry, what)
        watchers.append(Watcher(address=str(entry.get("address")), client=f"client.{entry.get('client')}"))
    return tuple(watchers)


# --- locks and the blocklist ------------------------------------------------------------------


@dataclass(frozen=True)
class Lock:
    """A lock on a volume: who holds it (`client.N`), its cookie, and the holder's address, which is
    what a blocklist entry cuts off."""

    locker: str
    cookie: str
    address: str


def parse_locks(text: str) -> tuple[Lock, ...]:
    """`rbd lock ls`: a list of {id, locker, address} in Pacific; an object keyed by cookie before."""
    what = "rbd lock ls"
    document = decode(text, what)
    locks = []
    if isinstance(document, Mapping):
        for cookie, entry in document.items():
            entry = _mapping(entry, what)
            locks.append(Lock(locker=str(entry.get("locker")), cookie=str(cookie), address=str(entry.get("address"))))
    else:
        for entry in _list(document, what):
            entry = _mapping(entry, what)
            locks.append(
                Lock(locker=str(entry.get("locker")), cookie=str(entry.get("id")), address=str(entry.get("address")))
            )
    return tuple(locks)


@dataclass(frozen=True)
class BlocklistEntry:
    """A blocklisted client address (or address range) and when the entry expires (Ceph's UTC stamp)."""

    address: str
    until: str
    range: bool = False


def parse_blocklist(text: str) -> tuple[BlocklistEntry, ...]:
    """`ceph osd blocklist ls`: the address entries, then (Pacific 16.2.7+) a second array of range entries."""
    what = "ceph osd blocklist ls"
    documents = decode_all(text, what)
    entries = []
    for index, document in enumerate(documents):
        for entry in _list(document, what):
            entry = _mapping(entry, what)
            entries.append(
                BlocklistEntry(address=str(entry.get("addr")), until=str(entry.get("until")), range=index > 0)
            )
    return tuple(entries)


# --- as JSON: one shape for `pvc storage --format json` and the primary's record ---------------


def size_text(count: int | float) -> str:
    """Bytes as an operator reads them: `12.0 GiB`, `100 GiB`, `512 B` (powers of 1024); one
    rendering for `pvc storage` and the storage log line."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            break
        value /= 1024
    if unit == "B" or value >= 100:
        return f"{value:.0f} {unit}"
    return f"{value:.1f} {unit}"


def cluster_summary(status: ClusterStatus) -> dict[str, Any]:
    """The cluster's health and counts as `pvc storage status` shows them and `/pvc/storage/status`
    keeps them (under `cluster`)."""
    return {
        "fsid": status.fsid,
        "health": status.health.status,
        "checks": [
            {"code": check.code, "severity": check.severity, "summary": check.summary} for check in status.health.checks
        ],
        "osds": {"total": status.osds, "up": status.osds_up, "in": status.osds_in},
        "mgr_available": status.mgr_available,
        "pgs": status.pgs,
    }


def osd_summary(osd: Osd) -> dict[str, Any]:
    """An OSD as `pvc storage osd list` shows it and `/pvc/storage/status` keeps it."""
    return {
        "id": osd.id,
        "name": osd.name,
        "up": osd.up,
        "in": osd.in_,
        "crush_weight": osd.crush_weight,
        "reweight": osd.reweight,
        "total_bytes": osd.total_bytes,
        "used_bytes": osd.used_bytes,
        "avail_bytes": osd.avail_bytes,
        "utilization": osd.utilization,
        "pgs": osd.pgs,
    }


def pool_summary(pool: Pool) -> dict[str, Any]:
    return {
        "name": pool.name,
        "id": pool.id,
        "size": pool.size,
        "pgs": pool.pg_num,
        "applications": list(pool.applications),
        "stored_bytes": pool.stored_bytes,
        "used_bytes": pool.used_bytes,
        "objects": pool.objects,
        "percent_used": pool.percent_used,
        "max_avail_bytes": pool.max_avail_bytes,
    }


def volume_summary(volume: Volume) -> dict[str, Any]:
    parent = volume.parent
    return {
        "pool": volume.pool,
        "name": volume.name,
        "size_bytes": volume.size_bytes,
        "used_bytes": volume.used_bytes,
        "format": volume.format,
        "parent": None
        if parent is None
        else {"pool": parent.pool, "volume": parent.volume, "snapshot": parent.snapshot},
    }
