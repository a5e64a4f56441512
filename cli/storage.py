"""`pvc storage ...`: Ceph status, OSDs, pools, RBD volumes and snapshots.

These commands talk to Ceph directly, through `pvcd.storage.Ceph` (the `ceph`
and `rbd` commands, each with a timeout), with the client identity of the
`storage` group's options (the `--ceph-*` options of `cli.ceph_options`, which
`pvc vm info` and `pvc vm flush-locks` take too): pvcd does not record pools, volumes or snapshots
in ZooKeeper yet, so Ceph itself is the only place that knows them, and an
operator command should not wait for a daemon's next refresh to see its own
change. ZooKeeper is not needed.

Every command checks its input before it changes anything: a bad name or
size, an unknown pool or volume, shrinking without `--force`, removing or
rolling back a volume a client has open, a Ceph that does not answer within
`--ceph-timeout` — one line on stderr (`pvc: ...`), exit 1, Ceph unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import click

from cli.ceph_options import CephSettings, ceph_settings_options
from cli.connection import CliError
from cli.output import format_option, key_values, table, to_json

if TYPE_CHECKING:
    from pvcd.storage import Ceph
    from pvcd.storage.values import Snapshot

NOT_FOUND = "(2) No such file or directory"


def _ceph(ctx: click.Context) -> Ceph:
    """The adapter for the `storage` group's client identity, after checking its files are there."""
    settings: CephSettings = ctx.obj["ceph"]
    for what, path, option in (
        ("configuration", settings.conf, "--ceph-conf or PVC_CEPH_CONF"),
        ("keyring", settings.keyring, "--ceph-keyring or PVC_CEPH_KEYRING"),
    ):
        if not os.path.isfile(path) or not os.access(path, os.R_OK):
            raise CliError(f"no readable Ceph {what} at {path}: use {option}")
    return settings.client()


@contextmanager
def _refused() -> Iterator[None]:
    """CephError, the adapter's one-line reason, as the CLI's one-line refusal (exit 1)."""
    from pvcd.storage import CephError

    try:
        yield
    except CephError as exc:
        raise CliError(str(exc)) from exc


def _check_name(kind: str, name: str) -> str:
    from pvcd.storage import values

    try:
        return values.validate_name(kind, name)
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def _check_size(size: str) -> int:
    from pvcd.storage import values

    try:
        return values.parse_size(size)
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def _require_pool(ceph: Ceph, pool: str) -> None:
    if pool not in ceph.pool_names():
        raise CliError(f"no pool {pool!r} (see 'pvc storage pool list')")


def _require_volume(ceph: Ceph, pool: str, volume: str) -> None:
    """The pool and the volume exist; a clear line for either missing rather than rbd's."""
    from pvcd.storage import CephError

    _require_pool(ceph, pool)
    try:
        ceph.volume_info(pool, volume)
    except CephError as exc:
        if NOT_FOUND in str(exc):
            raise CliError(f"no volume {volume!r} in pool {pool!r} (see 'pvc storage volume list {pool}')") from exc
        raise


def _require_unused(ceph: Ceph, pool: str, volume: str, doing: str) -> None:
    watchers = ceph.watchers(pool, volume)
    if watchers:
        addresses = ", ".join(watcher.address for watcher in watchers)
        raise CliError(f"cannot {doing} {pool}/{volume}: it is in use by {len(watchers)} client(s): {addresses}")


def _emit(output_format: str, value: Any, text: str) -> None:
    click.echo(to_json(value) if output_format == "json" else text)


# -- what is shown (pure) -----------------------------------------------------------


def snapshot_summary(pool: str, volume: str, snapshot: Snapshot) -> dict[str, Any]:
    return {
        "pool": pool,
        "volume": volume,
        "name": snapshot.name,
        "id": snapshot.id,
        "size_bytes": snapshot.size_bytes,
        "protected": snapshot.protected,
        "timestamp": snapshot.timestamp,
    }


def _parent_text(summary: dict[str, Any]) -> str | None:
    parent = summary["parent"]
    return None if parent is None else f"{parent['pool']}/{parent['volume']}@{parent['snapshot']}"


def _volume(ceph: Ceph, pool: str, name: str) -> dict[str, Any]:
    from pvcd.storage import values

    for volume in ceph.volumes(pool):
        if volume.name == name:
            return values.volume_summary(volume)
    raise CliError(f"no volume {name!r} in pool {pool!r}")


# -- the storage group --------------------------------------------------------------


@click.group("storage")
@ceph_settings_options
@click.pass_context
def storage_group(ctx: click.Context, ceph_settings: CephSettings) -> None:
    """Ceph storage: status; osd list; pool, volume and snapshot add|remove|list|...

    Talks to Ceph directly (the ceph and rbd commands), not through ZooKeeper."""
    ctx.ensure_object(dict)
    ctx.obj["ceph"] = ceph_settings


@storage_group.command("status")
@format_option
@click.pass_context
def storage_status(ctx: click.Context, output_format: str) -> None:
    """The Ceph cluster's health, OSD counts and raw usage."""
    from pvcd.storage import values

    ceph = _ceph(ctx)
    with _refused():
        status = ceph.status()
        summary = dict(
            values.cluster_summary(status),
            bytes={"total": status.total_bytes, "used": status.used_bytes, "avail": status.avail_bytes},
        )
    if output_format == "json":
        click.echo(to_json(summary))
        return
    used = summary["bytes"]
    osds = summary["osds"]
    click.echo(
        key_values(
            [
                ("Health", summary["health"]),
                *[(f"{check['severity']} {check['code']}", check["summary"]) for check in summary["checks"]],
                ("OSDs", f"{osds['total']} ({osds['up']} up, {osds['in']} in)"),
                ("Manager", "available" if summary["mgr_available"] else "NOT AVAILABLE"),
                ("Placement groups", summary["pgs"]),
                (
                    "Raw space",
                    f"used {values.size_text(used['used'])} of {values.size_text(used['total'])}, "
                    f"{values.size_text(used['avail'])} available",
                ),
                ("fsid", summary["fsid"]),
            ]
        )
    )


# -- OSDs ---------------------------------------------------------------------------


@storage_group.group("osd")
def osd_group() -> None:
    """The cluster's OSDs (list)."""


@osd_group.command("list")
@format_option
@click.pass_context
def osd_list(ctx: click.Context, output_format: str) -> None:
    """Every OSD: up/down, in/out, weights, usage and placement groups."""
    from pvcd.storage import values

    ceph = _ceph(ctx)
    with _refused():
        summaries = [values.osd_summary(osd) for osd in ceph.osds()]
    if output_format == "json":
        click.echo(to_json(summaries))
        return
    rows = [
        [
            s["id"],
            s["name"],
            "up" if s["up"] else "DOWN",
            "in" if s["in"] else "OUT",
            s["crush_weight"],
            s["reweight"],
            values.size_text(s["total_bytes"]),
            values.size_text(s["used_bytes"]),
            s["utilization"],
            s["pgs"],
        ]
        for s in summaries
    ]
    headers = ["ID", "NAME", "STATUS", "IN", "WEIGHT", "REWEIGHT", "SIZE", "USED", "USE %", "PGS"]
    click.echo(table(headers, rows) if rows else "No OSDs.")


# -- pools --------------------------------------------------------------------------


@storage_group.group("pool")
def pool_group() -> None:
    """Pools: add, remove, list."""


@pool_group.command("add")
@click.argument("name")
@click.option("--pgs", type=click.IntRange(1, 32768), required=True, help="placement groups (1 to 32768)")
@click.option("--size", type=click.IntRange(1, 10), default=3, show_default=True, help="copies of each object")
@format_option
@click.pass_context
def pool_add(ctx: click.Context, name: str, pgs: int, size: int, output_format: str) -> None:
    """Add a replicated pool NAME for RBD volumes."""
    from pvcd.storage import values

    _check_name("pool", name)
    ceph = _ceph(ctx)
    with _refused():
        ceph.create_pool(name, pgs=pgs, size=size)
        summary = values.pool_summary(ceph.pool(name))
    _emit(output_format, summary, f"Added pool {name} ({pgs} placement groups, {size} copies)")


@pool_group.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help="yes, remove the pool and every volume in it")
@format_option
@click.pass_context
def pool_remove(ctx: click.Context, name: str, yes: bool, output_format: str) -> None:
    """Remove pool NAME and everything in it (refused without --yes)."""
    _check_name("pool", name)
    ceph = _ceph(ctx)
    with _refused():
        _require_pool(ceph, name)
        volumes = len(ceph.volumes(name))
        if not yes:
            raise CliError(f"removing pool {name} destroys its {volumes} volume(s) and all their data: add --yes")
        ceph.remove_pool(name)
    _emit(output_format, {"removed": name, "volumes": volumes}, f"Removed pool {name} ({volumes} volumes)")


@pool_group.command("list")
@format_option
@click.pass_context
def pool_list(ctx: click.Context, output_format: str) -> None:
    """Every pool with its copies, placement groups and usage."""
    from pvcd.storage import values

    ceph = _ceph(ctx)
    with _refused():
        summaries = [values.pool_summary(pool) for pool in ceph.pools()]
    if output_format == "json":
        click.echo(to_json(summaries))
        return
    rows = [
        [
            s["name"],
            s["id"],
            s["size"],
            s["pgs"],
            s["applications"],
            values.size_text(s["stored_bytes"]),
            values.size_text(s["used_bytes"]),
            s["objects"],
            s["percent_used"],
            values.size_text(s["max_avail_bytes"]),
        ]
        for s in summaries
    ]
    headers = ["NAME", "ID", "SIZE", "PGS", "APPLICATIONS", "STORED", "USED", "OBJECTS", "USE %", "MAX AVAIL"]
    click.echo(table(headers, rows) if rows else "No pools.")


# -- volumes ------------------------------------------------------------------------


@storage_group.group("volume")
def volume_group() -> None:
    """RBD volumes: add, resize, rename, clone, remove, list."""


@volume_group.command("add")
@click.argument("pool")
@click.argument("name")
@click.argument("size")
@format_option
@click.pass_context
def volume_add(ctx: click.Context, pool: str, name: str, size: str, output_format: str) -> None:
    """Add volume NAME of SIZE (bytes, or 512M, 10G, 1T: powers of 1024) in POOL."""
    from pvcd.storage import values

    _check_name("pool", pool)
    _check_name("volume", name)
    size_bytes = _check_size(size)
    ceph = _ceph(ctx)
    with _refused():
        _require_pool(ceph, pool)
        ceph.create_volume(pool, name, size_bytes)
        summary = _volume(ceph, pool, name)
    _emit(output_format, summary, f"Added volume {pool}/{name} ({values.size_text(size_bytes)})")


@volume_group.command("resize")
@click.argument("pool")
@click.argument("name")
@click.argument("size")
@click.option("--force", is_flag=True, help="allow shrinking, which destroys the data past the new end")
@format_option
@click.pass_context
def volume_resize(ctx: click.Context, pool: str, name: str, size: str, force: bool, output_format: str) -> None:
    """Resize volume NAME in POOL to SIZE (shrinking only with --force)."""
    from pvcd.storage import values

    _check_name("pool", pool)
    _check_name("volume", name)
    size_bytes = _check_size(size)
    ceph = _ceph(ctx)
    with _refused():
        _require_volume(ceph, pool, name)
        ceph.resize_volume(pool, name, size_bytes, allow_shrink=force)
        summary = _volume(ceph, pool, name)
    _emit(output_format, summary, f"Resized volume {pool}/{name} to {values.size_text(size_bytes)}")


@volume_group.command("rename")
@click.argument("pool")
@click.argument("name")
@click.argument("new_name", metavar="NEW")
@format_option
@click.pass_context
def volume_rename(ctx: click.Context, pool: str, name: str, new_name: str, output_format: str) -> None:
    """Rename volume NAME in POOL to NEW."""
    _check_name("pool", pool)
    _check_name("volume", name)
    _check_name("volume", new_name)
    ceph = _ceph(ctx)
    with _refused():
        _require_volume(ceph, pool, name)
        if any(volume.name == new_name for volume in ceph.volumes(pool)):
            raise CliError(f"volume {pool}/{new_name} already exists")
        ceph.rename_volume(pool, name, new_name)
        summary = _volume(ceph, pool, new_name)
    _emit(output_format, summary, f"Renamed volume {pool}/{name} to {pool}/{new_name}")


@volume_group.command("clone")
@click.argument("pool")
@click.argument("name")
@click.argument("snapshot")
@click.argument("new_name", metavar="NEW")
@click.option("--pool", "new_pool", metavar="POOL", help="pool of the clone (default: POOL)")
@click.option("--flatten", is_flag=True, help="copy the data, so the clone does not depend on the snapshot")
@format_option
@click.pass_context
def volume_clone(
    ctx: click.Context,
    pool: str,
    name: str,
    snapshot: str,
    new_name: str,
    new_pool: str | None,
    flatten: bool,
    output_format: str,
) -> None:
    """Clone volume NAME's SNAPSHOT in POOL as volume NEW (copy-on-write; the snapshot is protected)."""
    target_pool = pool if new_pool is None else new_pool
    _check_name("pool", pool)
    _check_name("volume", name)
    _check_name("snapshot", snapshot)
    _check_name("pool", target_pool)
    _check_name("volume", new_name)
    ceph = _ceph(ctx)
    with _refused():
        _require_volume(ceph, pool, name)
        if not any(snap.name == snapshot for snap in ceph.snapshots(pool, name)):
            raise CliError(f"no snapshot {snapshot!r} of volume {pool}/{name}")
        if target_pool != pool:
            _require_pool(ceph, target_pool)
        if any(volume.name == new_name for volume in ceph.volumes(target_pool)):
            raise CliError(f"volume {target_pool}/{new_name} already exists")
        ceph.clone_volume(pool, name, snapshot, target_pool, new_name, flatten=flatten)
        summary = _volume(ceph, target_pool, new_name)
    _emit(output_format, summary, f"Cloned {pool}/{name}@{snapshot} as {target_pool}/{new_name}")


@volume_group.command("remove")
@click.argument("pool")
@click.argument("name")
@format_option
@click.pass_context
def volume_remove(ctx: click.Context, pool: str, name: str, output_format: str) -> None:
    """Remove volume NAME in POOL with its snapshots (refused while a client has it open)."""
    _check_name("pool", pool)
    _check_name("volume", name)
    ceph = _ceph(ctx)
    with _refused():
        _require_volume(ceph, pool, name)
        _require_unused(ceph, pool, name, "remove")
        ceph.remove_volume(pool, name)
    _emit(output_format, {"pool": pool, "removed": name}, f"Removed volume {pool}/{name}")


@volume_group.command("list")
@click.argument("pool", required=False)
@format_option
@click.pass_context
def volume_list(ctx: click.Context, pool: str | None, output_format: str) -> None:
    """The volumes of POOL, or of every RBD pool, with size, usage and parent."""
    from pvcd.storage import values

    if pool is not None:
        _check_name("pool", pool)
    ceph = _ceph(ctx)
    with _refused():
        if pool is not None:
            _require_pool(ceph, pool)
            pools = [pool]
        else:
            pools = [found.name for found in ceph.pools() if "rbd" in found.applications]
        summaries = [values.volume_summary(volume) for name in pools for volume in ceph.volumes(name)]
    if output_format == "json":
        click.echo(to_json(summaries))
        return
    rows = [
        [s["pool"], s["name"], values.size_text(s["size_bytes"]), values.size_text(s["used_bytes"]), _parent_text(s)]
        for s in summaries
    ]
    headers = ["POOL", "NAME", "SIZE", "USED", "PARENT"]
    where = f" in pool {pool}" if pool is not None else ""
    click.echo(table(headers, rows) if rows else f"No volumes{where}.")


# -- snapshots ----------------------------------------------------------------------


@storage_group.group("snapshot")
def snapshot_group() -> None:
    """Snapshots of RBD volumes: add, rollback, remove, list."""


def _snapshot_args(pool: str, volume: str, name: str) -> None:
    _check_name("pool", pool)
    _check_name("volume", volume)
    _check_name("snapshot", name)


def _require_snapshot(ceph: Ceph, pool: str, volume: str, name: str) -> None:
    _require_volume(ceph, pool, volume)
    if not any(snap.name == name for snap in ceph.snapshots(pool, volume)):
        raise CliError(f"no snapshot {name!r} of volume {pool}/{volume}")


@snapshot_group.command("add")
@click.argument("pool")
@click.argument("volume")
@click.argument("name")
@format_option
@click.pass_context
def snapshot_add(ctx: click.Context, pool: str, volume: str, name: str, output_format: str) -> None:
    """Take snapshot NAME of VOLUME in POOL."""
    _snapshot_args(pool, volume, name)
    ceph = _ceph(ctx)
    with _refused():
        _require_volume(ceph, pool, volume)
        if any(snap.name == name for snap in ceph.snapshots(pool, volume)):
            raise CliError(f"snapshot {pool}/{volume}@{name} already exists")
        ceph.create_snapshot(pool, volume, name)
        (snapshot,) = [snap for snap in ceph.snapshots(pool, volume) if snap.name == name]
    _emit(output_format, snapshot_summary(pool, volume, snapshot), f"Took snapshot {pool}/{volume}@{name}")


@snapshot_group.command("rollback")
@click.argument("pool")
@click.argument("volume")
@click.argument("name")
@format_option
@click.pass_context
def snapshot_rollback(ctx: click.Context, pool: str, volume: str, name: str, output_format: str) -> None:
    """Put VOLUME's data back as it was at snapshot NAME (refused while a client has it open)."""
    _snapshot_args(pool, volume, name)
    ceph = _ceph(ctx)
    with _refused():
        _require_snapshot(ceph, pool, volume, name)
        _require_unused(ceph, pool, volume, "roll back")
        ceph.rollback_snapshot(pool, volume, name)
    _emit(
        output_format,
        {"pool": pool, "volume": volume, "rolled_back_to": name},
        f"Rolled back {pool}/{volume} to snapshot {name}",
    )


@snapshot_group.command("remove")
@click.argument("pool")
@click.argument("volume")
@click.argument("name")
@format_option
@click.pass_context
def snapshot_remove(ctx: click.Context, pool: str, volume: str, name: str, output_format: str) -> None:
    """Remove snapshot NAME of VOLUME (refused by Ceph while clones depend on it)."""
    _snapshot_args(pool, volume, name)
    ceph = _ceph(ctx)
    with _refused():
        _require_snapshot(ceph, pool, volume, name)
        ceph.remove_snapshot(pool, volume, name)
    _emit(
        output_format,
        {"pool": pool, "volume": volume, "removed": name},
        f"Removed snapshot {pool}/{volume}@{name}",
    )


@snapshot_group.command("list")
@click.argument("pool")
@click.argument("volume")
@format_option
@click.pass_context
def snapshot_list(ctx: click.Context, pool: str, volume: str, output_format: str) -> None:
    """The snapshots of VOLUME in POOL."""
    from pvcd.storage import values

    _check_name("pool", pool)
    _check_name("volume", volume)
    ceph = _ceph(ctx)
    with _refused():
        _require_volume(ceph, pool, volume)
        summaries = [snapshot_summary(pool, volume, snap) for snap in ceph.snapshots(pool, volume)]
    if output_format == "json":
        click.echo(to_json(summaries))
        return
    rows = [
        [s["name"], s["id"], values.size_text(s["size_bytes"]), "yes" if s["protected"] else "no", s["timestamp"]]
        for s in summaries
    ]
    headers = ["NAME", "ID", "SIZE", "PROTECTED", "TAKEN"]
    click.echo(table(headers, rows) if rows else f"No snapshots of {pool}/{volume}.")


def register(pvc_group: click.Group) -> None:
    """Attach `pvc storage ...`."""
    pvc_group.add_command(storage_group)
