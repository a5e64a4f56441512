"""`pvc vm ...` and `pvc node flush|ready`.

Every command checks its input completely before it writes anything: a
malformed XML, an interface naming a client network that does not exist, an
unknown VM or node, a target outside the VM's node_limit or without the
memory for it is one line on stderr, exit status 1, and ZooKeeper untouched.
Writes are single version-checked transactions; if a node changed the VM in
between, the command reads it again and re-checks (a few times).

`register(pvc, node)` attaches the commands to the top-level groups.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from cli.ceph_options import ceph_options
from cli.connection import CliError, Target, connect, target_of
from cli.inputs import Seconds, node_name
from cli.output import format_option, key_values, table, to_json
from pvcd.cluster import vm_records as records
from pvcd.cluster.client_networks import InvalidNetwork, networks_of_domain, plug_interfaces
from pvcd.cluster.vm_records import (
    IN_PROGRESS,
    SHOULD_RUN,
    ActualState,
    InvalidVm,
    MigrationMethod,
    MoveKind,
    NothingToDo,
    VmState,
    VmView,
)
from pvcd.placement.selectors import check_selector
from pvcd.zk import schema, vms
from pvcd.zk.base import AlreadyExists, Unreadable, VersionConflict

if TYPE_CHECKING:
    # The node readers, the planner and the flush commands are imported by the
    # commands that use them: `pvc vm list` needs none of them (see cli.main).
    from pvcd.cluster.values import NodeView
    from pvcd.placement.planner import Plan
    from pvcd.storage import Ceph
    from pvcd.storage.values import Lock
    from pvcd.vm import flush
    from pvcd.zk.base import Store

DEFAULT_SELECTOR = "mem"
WRITE_ATTEMPTS = 3
WAIT_POLL = 0.25
DEFAULT_WAIT_TIMEOUT = 600.0
MAX_WAIT_TIMEOUT = 86400.0


def _wait_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--wait-timeout",
        type=Seconds(0.1, MAX_WAIT_TIMEOUT),
        default=DEFAULT_WAIT_TIMEOUT,
        show_default=True,
        help="seconds --wait waits before giving up (exit 1)",
    )(func)
    return click.option("--wait", is_flag=True, help="wait for the outcome and report it")(func)


def _target(ctx: click.Context) -> Target:
    return target_of(ctx.obj)


# -- what is shown (pure) -----------------------------------------------------------


def vm_summary(view: VmView) -> dict[str, Any]:
    """One VM for `list`/`info` and every JSON answer; stable keys."""
    record, status, migration = view.record, view.status, view.migration
    return {
        "name": record.name,
        "uuid": record.uuid,
        "state": str(record.state),
        "reason": record.reason,
        "node": record.node,
        "lastnode": record.lastnode,
        "node_limit": list(record.node_limit),
        "node_selector": record.node_selector,
        "node_autostart": record.node_autostart,
        "migration_method": str(record.migration_method),
        "memory_mib": record.memory_mib,
        "vcpus": record.vcpus,
        "actual": status.to_json(),
        "migration": migration.to_json() if migration else None,
        "last_migration": record.last_migration.to_json() if record.last_migration else None,
    }


def last_migration_text(stats: dict[str, Any] | None) -> str | None:
    """The last live migration as `pvc vm info` shows it; a figure libvirt did not report is left out."""
    if stats is None:
        return None
    figures = [
        f"took {stats['time_ms'] / 1000:.2f} s" if stats["time_ms"] is not None else None,
        f"downtime {stats['downtime_ms']} ms" if stats["downtime_ms"] is not None else None,
        f"{stats['data_bytes'] / 2**20:.1f} MiB sent" if stats["data_bytes"] is not None else None,
    ]
    shown = ", ".join(figure for figure in figures if figure)
    return f"{stats['source']} -> {stats['target']}" + (f": {shown}" if shown else "")


def _actual(summary: dict[str, Any]) -> str:
    actual = summary["actual"]
    return f"{actual['state']} on {actual['node']}" if actual["node"] else actual["state"]


def vm_volumes(view: VmView) -> list[records.RbdVolume]:
    """The VM's RBD volumes from its stored domain XML; CliError if the XML does not parse."""
    try:
        return list(records.rbd_volumes(view.record.xml))
    except InvalidVm as exc:
        raise CliError(f"VM {view.name}: {exc}") from exc


def lock_json(lock: Lock) -> dict[str, Any]:
    return {"locker": lock.locker, "cookie": lock.cookie, "address": lock.address}


def volumes_json(volumes: list[records.RbdVolume], locks: dict[records.RbdVolume, Any] | None = None) -> list[Any]:
    """`volumes` of a VM's JSON: each with its locks, or `locks` null where Ceph was not asked
    (every answer but `pvc vm info`) or did not answer (`locks_error` says why)."""
    found = locks or {}
    return [
        {
            "pool": volume.pool,
            "volume": volume.volume,
            "locks": found[volume] if isinstance(found.get(volume), list) else None,
            "locks_error": found[volume] if isinstance(found.get(volume), str) else None,
        }
        for volume in volumes
    ]


def volume_lines(volumes: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """The volumes and their locks as `pvc vm info` shows them (pure): one line per volume,
    or a single line when Ceph could not say anything about any of them."""
    lines: list[tuple[str, Any]] = [("RBD volumes", ", ".join(f"{v['pool']}/{v['volume']}" for v in volumes) or "none")]
    if not volumes:
        return lines
    errors = {v["locks_error"] for v in volumes}
    if all(v["locks"] is None for v in volumes) and len(errors) == 1:
        return [*lines, ("Locks", f"unknown: {errors.pop()}")]
    for v in volumes:
        if v["locks"] is None:
            shown = f"unknown: {v['locks_error']}"
        else:
            shown = "; ".join(f"{lock['locker']} at {lock['address']}" for lock in v["locks"]) or "none"
        lines.append((f"Locks {v['pool']}/{v['volume']}", shown))
    return lines


NO_ANSWER = "no answer from Ceph"
"""What every CephError of a call that timed out or found no monitor says (pvcd.storage.ceph)."""


def _read_locks(ceph: Ceph, volumes: list[records.RbdVolume]) -> dict[records.RbdVolume, Any]:
    """Each volume's locks (a list), or why they are unknown (a string). Once Ceph has not
    answered, the other volumes are not asked: each would only wait out its timeout again."""
    from pvcd.storage import CephError

    found: dict[records.RbdVolume, Any] = {}
    silent: str | None = None
    for volume in volumes:
        if silent is not None:
            found[volume] = silent
            continue
        try:
            found[volume] = [lock_json(lock) for lock in ceph.locks(volume.pool, volume.volume)]
        except CephError as exc:
            found[volume] = f"Ceph: {exc}"
            if NO_ANSWER in str(exc):
                silent = found[volume]
    return found


def plan_json(plan: Plan) -> dict[str, Any]:
    return {
        "placements": [
            {
                "vm": p.vm,
                "node": p.node,
                "selector": p.selector,
                "requested": p.requested,
                "scores": [{"node": node, "score": score} for node, score in p.scores],
            }
            for p in plan.placements
        ],
        "unplaced": [{"vm": u.vm, "reason": str(u.reason), "detail": u.detail} for u in plan.unplaced],
    }


def plan_text(plan: Plan) -> str:
    lines = []
    for p in plan.placements:
        scores = ", ".join(f"{node} {score:g}" for node, score in p.scores)
        how = "requested" if p.requested else f"selector {p.selector}"
        lines.append(f"{p.vm} -> {p.node} ({how}; scores: {scores})")
    for u in plan.unplaced:
        lines.append(f"{u.vm}: not placed ({u.reason}): {u.detail}")
    return "\n".join(lines) or "Nothing to move."


# -- reading ----------------------------------------------------------------------


def _view(store: Store, name: str) -> VmView:
    """The VM named `name`; CliError for a name no VM can have, or no such VM.

    A name today's rule refuses is still looked up when an earlier pvc could
    have stored it, so that such a VM can be stopped and removed."""
    refused: InvalidVm | None = None
    try:
        try:
            records.check_vm_name(name)
        except InvalidVm as exc:
            if not records.may_be_stored(name):
                raise
            refused = exc
        view = vms.read_vm(store, name)
    except InvalidVm as exc:
        raise CliError(str(exc)) from exc
    if view is None:
        raise CliError(str(refused) if refused else f"no VM named {records.shown(name)}")
    return view


def _node(store: Store, name: str) -> NodeView:
    from pvcd.zk import nodes

    view = nodes.read_node(store, node_name(name))
    if view is None:
        raise CliError(f"no node named {name!r}")
    return view


def _read_domain_file(path: str) -> str:
    """The domain XML in `path` (`-`: standard input), refused in one line if it cannot be
    read, is not UTF-8 text, or is larger than a VM record may be; never read beyond that."""
    limit = records.MAX_DOMAIN_XML_BYTES
    try:
        if path == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(path, "rb") as stream:
                data = stream.read(limit + 1)
    except OSError as exc:
        raise CliError(f"cannot read {records.shown(path)}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise CliError(
            f"{records.shown(path)}: larger than {limit} bytes ({limit // 1024} KiB), the most a domain XML may have"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        offset = exc.start + len(data) - len(exc.object)  # the decoder does not count a byte-order mark
        raise CliError(f"{records.shown(path)}: not UTF-8 text (byte {data[offset]:#04x} at offset {offset})") from exc


def _plugged(spec: records.DomainSpec) -> records.DomainSpec:
    """The domain with each interface that names a client network by VNI plugged into the network's bridge
    (`client_networks.plug_interfaces`): no node's libvirt knows a network called '100', only pvcd's bridge."""
    xml, _ = plug_interfaces(spec.xml)
    if xml == spec.xml:
        return spec
    records.check_domain_xml_size(len(xml.encode("utf-8", "surrogatepass")))
    return dataclasses.replace(spec, xml=xml)


def _check_networks(store: Store, spec: records.DomainSpec) -> None:
    """Refuse a VM whose interface names a client network that does not exist: its node could build no
    bridge for it, and the VM would fail only when started. Only the networks named are read."""
    from pvcd.zk import networks

    for vni in sorted(networks_of_domain(spec.xml)):
        try:
            found = networks.read_network(store, vni)
        except InvalidNetwork as exc:
            raise CliError(f"VM {spec.name}: {exc}") from exc
        if found is None:
            raise CliError(
                f"VM {spec.name}: an interface names network {vni}, which is not a client network"
                " (see 'pvc network list')"
            )


def _memory_total(view: NodeView) -> int | None:
    """The node's memory in MiB as its keepalive reported it; None before it has."""
    total = (view.keepalive.get("memory") or {}).get("total")
    return total if isinstance(total, int) and not isinstance(total, bool) else None


def _selector(node_view: NodeView | None) -> str:
    """The cluster default selector, as the VM's node published it (else `mem`)."""
    selector = node_view.info.get("target_selector") if node_view else None
    return selector if isinstance(selector, str) else DEFAULT_SELECTOR


def _cluster(store: Store) -> tuple[list[NodeView], dict[str, VmView], frozenset[str]]:
    """Every node and every VM (record, status and migration), and the late nodes."""
    from pvcd.cluster.liveness import late_nodes
    from pvcd.zk import nodes

    node_views = nodes.read_cluster(store)
    all_vms, _ = vms.read_vms(store)
    return node_views, all_vms, late_nodes(node_views, store.server_time_ms())


def _for_placement(store: Store) -> tuple[list[NodeView], dict[str, VmView], frozenset[str]]:
    """What `placement.cluster.capacities` looks at, and no more: `_cluster`
    without any VM's migration, and without the status of a VM that no node's
    keepalive says it runs. One read per VM instead of three, all of them sent
    before the first answer is awaited (as `vms.read_vms` does).

    A VM whose record cannot be read is left out, as `vms.read_vms` leaves it
    out; so is a VM named in a keepalive whose status cannot be read.
    """
    from pvcd.cluster.liveness import late_nodes
    from pvcd.zk import nodes

    node_views = nodes.read_cluster(store)
    running = {name for view in node_views for name in _running(view)}
    asked = [
        (
            store.get_async(schema.vm(name)),
            store.get_async(schema.vm_status(name)) if name in running else None,
        )
        for name in store.children(schema.VMS)
    ]
    found: dict[str, VmView] = {}
    for record, status in asked:
        try:
            view = vms.view_of(record.result(), status.result() if status else None, None)
        except (InvalidVm, Unreadable):
            continue
        if view is not None:
            found[view.name] = view
    return node_views, found, late_nodes(node_views, store.server_time_ms())


def _running(view: NodeView) -> list[str]:
    """The VMs the node's keepalive says it runs, as `placement.cluster.capacities` reads them."""
    running = (view.keepalive.get("vms") or {}).get("running") or []
    return [name for name in running if isinstance(name, str)]


def _readable_vm(store: Store, name: str) -> VmView | None:
    """The VM named `name`; None if there is none or it cannot be read (`vms.read_vms` lists neither)."""
    try:
        return vms.read_vm(store, name)
    except (InvalidVm, Unreadable):
        return None


def _uuid_owner(store: Store, uuid: str) -> str | None:
    """The VM whose record has this UUID, found through the UUID index that
    `vms.define` and `vms.remove` write in the same transactions as the records.

    An index entry that names no readable VM with this UUID names no owner:
    the define's own transaction then refuses the UUID, as it did when the
    owner was looked for among every VM."""
    try:
        found = store.get(schema.vm_uuid(uuid))
    except Unreadable:
        return None
    name = found.value.get("name") if found is not None and isinstance(found.value, dict) else None
    if not isinstance(name, str) or not records.may_be_stored(name):
        return None
    view = _readable_vm(store, name)
    return name if view is not None and view.record.uuid == uuid else None


def _retrying(store: Store, name: str, attempt: Callable[[VmView], VmView | None]) -> VmView | None:
    """Run `attempt` on a fresh read until it is not refused by a concurrent change."""
    for _ in range(WRITE_ATTEMPTS):
        try:
            return attempt(_view(store, name))
        except VersionConflict:
            time.sleep(0.1)
    raise CliError(f"VM {name} keeps changing under this command; try again")


# -- waiting ----------------------------------------------------------------------


def _wait_until(store: Store, name: str, done: Callable[[VmView], bool], timeout: float, what: str) -> VmView:
    deadline = time.monotonic() + timeout
    while True:
        view = _view(store, name)
        if view.record.state == VmState.FAIL and view.migration is None:
            raise CliError(f"VM {name} failed: {view.record.reason}")
        if done(view):
            return view
        if time.monotonic() > deadline:
            raise CliError(
                f"VM {name}: gave up waiting for {what} after {timeout:g}s"
                f" (now {view.record.state}, {view.status.state})"
            )
        time.sleep(WAIT_POLL)


def _running_on_node(view: VmView) -> bool:
    return (
        view.record.state == VmState.START
        and view.migration is None
        and view.status.state == ActualState.RUNNING
        and view.status.node == view.record.node
    )


def _stopped(view: VmView) -> bool:
    return view.record.state in (VmState.STOP, VmState.DISABLE) and view.status.state == ActualState.STOPPED


def _settled_after_move(view: VmView) -> bool:
    if view.migration is not None or view.record.state in IN_PROGRESS:
        return False
    return view.record.state != VmState.START or _running_on_node(view)


def _emit(view: VmView, output_format: str, message: str) -> None:
    if output_format == "json":
        click.echo(to_json({**vm_summary(view), "volumes": volumes_json(vm_volumes(view))}))
    else:
        click.echo(message)


# -- the vm group --------------------------------------------------------------------


@click.group("vm")
def vm_group() -> None:
    """VMs: define, list, info, start/stop, migrate, move, remove, dump."""


@vm_group.command("define")
@click.argument("xml_file", metavar="FILE.xml")
@click.option("--node", help="node to define it on (default: chosen by the target selector)")
@click.option("--limit", "node_limit", help="comma-separated nodes the VM may run on")
@click.option("--selector", "node_selector", help="target selector for this VM (mem, vcpus, load, vms)")
@click.option("--autostart", is_flag=True, help="start the VM when its node is next ready")
@click.option(
    "--method",
    "migration_method",
    type=click.Choice([str(m) for m in MigrationMethod]),
    default="live",
    show_default=True,
    help="live: live-migrate (falls back to shutdown); shutdown: stop, move, start",
)
@format_option
@click.pass_context
def vm_define(
    ctx: click.Context,
    xml_file: str,
    node: str | None,
    node_limit: str | None,
    node_selector: str | None,
    autostart: bool,
    migration_method: str,
    output_format: str,
) -> None:
    """Define a VM from a libvirt domain XML (FILE.xml, or - for standard input; it starts stopped)."""
    try:
        spec = _plugged(records.parse_domain_xml(_read_domain_file(xml_file)))
        if node_selector is not None:
            check_selector(node_selector)
    except (InvalidVm, InvalidNetwork, ValueError) as exc:
        raise CliError(str(exc)) from exc
    # Each node once: a repeated name adds nothing but size to the record.
    limit = tuple(dict.fromkeys(node_name(n.strip()) for n in (node_limit or "").split(",") if n.strip()))
    if node is not None:
        node_name(node)
    with connect(_target(ctx)) as store:
        _check_networks(store, spec)
        if node is None:
            node_views, all_vms, late = _for_placement(store)
        else:
            # Nothing to plan: only the nodes named and the VM's own name and UUID are
            # read, however many VMs the cluster has.
            from pvcd.zk import nodes

            named = (nodes.read_node(store, n) for n in dict.fromkeys((*limit, node)))
            node_views = [v for v in named if v is not None]
        by_name = {v.name: v for v in node_views}
        unknown = [n for n in (*limit, *([node] if node else [])) if n not in by_name]
        if unknown:
            raise CliError(f"no node named {unknown[0]!r}")
        if node is not None and limit and node not in limit:
            raise CliError(f"node {node} is outside the VM's node_limit {list(limit)}")
        if node is not None:
            try:
                records.check_fits_node(spec.name, spec.memory_mib, node, _memory_total(by_name[node]))
            except InvalidVm as exc:
                raise CliError(str(exc)) from exc
        if _readable_vm(store, spec.name) is not None:
            raise CliError(f"a VM named {spec.name!r} already exists")
        owner = _uuid_owner(store, spec.uuid)
        if owner is not None:
            raise CliError(f"UUID {spec.uuid} is already used by VM {owner}")
        if node is None:
            from pvcd.placement.cluster import capacities
            from pvcd.placement.planner import plan_batch

            request = records.new_record(spec, "", limit, node_selector).request()
            plan = plan_batch([request], capacities(node_views, all_vms, late), node_selector or _selector(None))
            if plan.unplaced:
                raise CliError(f"VM {spec.name}: no node to define it on: {plan.unplaced[0].detail}")
            node = plan.placements[0].node
        try:
            record = records.new_record(spec, node, limit, node_selector, autostart, migration_method)
            vms.define(store, record)
        except InvalidVm as exc:
            raise CliError(str(exc)) from exc
        except AlreadyExists as exc:
            raise CliError(f"VM {spec.name} or its UUID {spec.uuid} was defined meanwhile") from exc
        view = _view(store, spec.name)
    _emit(view, output_format, f"Defined VM {spec.name} ({spec.uuid}) on {node}, stopped")


@vm_group.command("list")
@click.option("--node", help="only VMs assigned to this node")
@click.option("--state", type=click.Choice([str(s) for s in VmState]), help="only VMs in this state")
@format_option
@click.pass_context
def vm_list(ctx: click.Context, node: str | None, state: str | None, output_format: str) -> None:
    """Every VM with its state, node and what actually runs."""
    if node is not None:
        node_name(node)
    with connect(_target(ctx)) as store:
        all_vms, damaged = vms.read_vms(store)
    summaries = [
        vm_summary(v)
        for _, v in sorted(all_vms.items())
        if (node is None or v.record.node == node) and (state is None or v.record.state == state)
    ]
    for name, problem in sorted(damaged.items()):
        click.echo(f"pvc: VM {name} has a damaged record: {problem}", err=True)
    if output_format == "json":
        click.echo(to_json(summaries))
        return
    rows = [
        [
            s["name"],
            s["state"],
            s["node"],
            s["lastnode"],
            _actual(s),
            s["memory_mib"],
            s["vcpus"],
            f"{s['migration']['from']} -> {s['migration']['to']} ({s['migration']['phase']})"
            if s["migration"]
            else None,
            s["reason"],
        ]
        for s in summaries
    ]
    headers = ["NAME", "STATE", "NODE", "LASTNODE", "ACTUAL", "MEM MiB", "VCPUS", "MOVING", "REASON"]
    click.echo(table(headers, rows) if rows else "No VMs defined.")


@vm_group.command("info")
@click.argument("name")
@ceph_options
@format_option
@click.pass_context
def vm_info(ctx: click.Context, name: str, output_format: str, ceph: Ceph) -> None:
    """One VM in detail, with its RBD volumes and who holds locks on them.

    When Ceph does not answer, the locks are shown as unknown: the rest is still shown."""
    with connect(_target(ctx)) as store:
        view = _view(store, name)
    volumes = vm_volumes(view)
    summary = {**vm_summary(view), "volumes": volumes_json(volumes, _read_locks(ceph, volumes) if volumes else None)}
    if output_format == "json":
        click.echo(to_json(summary))
        return
    migration = summary["migration"]
    click.echo(
        key_values(
            [
                ("Name", summary["name"]),
                ("UUID", summary["uuid"]),
                ("State", summary["state"] + (f" ({summary['reason']})" if summary["reason"] else "")),
                ("Node", summary["node"]),
                ("Last node", summary["lastnode"]),
                (
                    "Actual",
                    _actual(summary) + (f": {summary['actual']['message']}" if summary["actual"]["message"] else ""),
                ),
                (
                    "Moving",
                    f"{migration['kind']} {migration['from']} -> {migration['to']}, {migration['phase']}"
                    if migration
                    else None,
                ),
                ("Memory (MiB)", summary["memory_mib"]),
                ("vCPUs", summary["vcpus"]),
                ("Node limit", summary["node_limit"]),
                ("Node selector", summary["node_selector"] or "cluster default"),
                ("Autostart", summary["node_autostart"]),
                ("Migration method", summary["migration_method"]),
                ("Last live migration", last_migration_text(summary["last_migration"])),
                *volume_lines(summary["volumes"]),
            ]
        )
    )


@vm_group.command("dump")
@click.argument("name")
@format_option
@click.pass_context
def vm_dump(ctx: click.Context, name: str, output_format: str) -> None:
    """The VM's libvirt domain XML, as stored."""
    with connect(_target(ctx)) as store:
        view = _view(store, name)
    if output_format == "json":
        click.echo(to_json({"name": view.name, "xml": view.record.xml}))
    else:
        click.echo(view.record.xml)


def _state_command(wanted: VmState, done: Callable[[VmView], bool], help_text: str) -> click.Command:
    @click.argument("name")
    @_wait_options
    @format_option
    @click.pass_context
    def command(ctx: click.Context, name: str, wait: bool, wait_timeout: float, output_format: str) -> None:
        with connect(_target(ctx)) as store:

            def attempt(view: VmView) -> VmView:
                return vms.VmWrite(store, view).record(records.state_change(view, wanted)).commit()

            try:
                view = _retrying(store, name, attempt)
                message = f"VM {name}: {wanted} requested on {view.record.node}"  # type: ignore[union-attr]
            except NothingToDo as exc:
                view, message = _view(store, name), str(exc)
            except InvalidVm as exc:
                raise CliError(str(exc)) from exc
            assert view is not None
            if not wait:
                _emit(view, output_format, message)
                return
            view = _wait_until(store, name, done, wait_timeout, str(wanted))
            _emit(view, output_format, f"VM {name} is {view.record.state}: {_actual(vm_summary(view))}")

    command.__doc__ = help_text
    return click.command(str(wanted))(command)


for _state, _done, _help in (
    (VmState.START, _running_on_node, "Start the VM on its node."),
    (
        VmState.RESTART,
        lambda v: v.record.state != VmState.RESTART and _running_on_node(v),
        "Shut the VM down and start it again.",
    ),
    (VmState.SHUTDOWN, _stopped, "Shut the VM down gracefully (destroyed after the node's shutdown_timeout)."),
    (VmState.STOP, _stopped, "Stop the VM at once (pull the plug)."),
    (VmState.DISABLE, _stopped, "Shut the VM down and keep it out of service (flush leaves it where it is)."),
):
    vm_group.add_command(_state_command(_state, _done, _help))


def _move(
    ctx: click.Context,
    name: str,
    kind: MoveKind,
    target: str | None,
    force: bool,
    dry_run: bool,
    wait: bool,
    wait_timeout: float,
    output_format: str,
) -> None:
    with connect(_target(ctx)) as store:
        if target is not None:
            _node(store, target)

        def attempt(view: VmView) -> VmView | None:
            try:
                wanted = records.move_target(view, kind, target, force)
            except InvalidVm as exc:
                raise CliError(str(exc)) from exc
            from pvcd.placement.cluster import capacities
            from pvcd.placement.planner import plan_batch

            node_views, all_vms, late = _for_placement(store)
            current = next((v for v in node_views if v.name == view.record.node), None)
            plan = plan_batch(
                [view.record.request(wanted)],
                capacities(node_views, all_vms, late),
                view.record.node_selector or _selector(current),
            )
            if dry_run:
                click.echo(to_json(plan_json(plan)) if output_format == "json" else plan_text(plan))
                return None
            source = view.record.node
            if records.needs_handshake(view) and (current is None or current.state.daemon != "run" or source in late):
                # Only the node that may run the VM can release it; a move from a dead
                # node would wait forever (recovering a dead node's VMs is fencing's job).
                state = current.state.daemon if current else "not registered"
                raise CliError(
                    f"VM {name}: its node {source} is not running ({state}, or its keepalive is late); "
                    f"it must release the VM before it can move"
                )
            if plan.unplaced and (view.record.state in SHOULD_RUN or wanted is None):
                raise CliError(f"VM {name}: {plan.unplaced[0].detail}")
            if plan.unplaced:
                # A stopped VM needs no free memory to change node, only a real node inside
                # its limit that could ever run it.
                assert wanted is not None
                target_view = _node(store, wanted)
                if view.record.node_limit and wanted not in view.record.node_limit:
                    raise CliError(f"VM {name}: {wanted} is outside node_limit {list(view.record.node_limit)}")
                try:
                    records.check_fits_node(name, view.record.memory_mib, wanted, _memory_total(target_view))
                except InvalidVm as exc:
                    raise CliError(str(exc)) from exc
                destination = wanted
            else:
                destination = plan.placements[0].node
            assert destination is not None
            lastnode = records.next_lastnode(view.record, kind, destination)
            record, migration = records.moved(view, kind, destination, uuid.uuid4().hex, lastnode)
            return vms.request_move(store, view, record, migration)

        view = _retrying(store, name, attempt)
        if view is None:
            return
        if not wait:
            _emit(view, output_format, f"VM {name}: {kind} to {view.record.node} requested")
            return
        view = _wait_until(store, name, _settled_after_move, wait_timeout, f"the {kind}")
        _emit(
            view, output_format, f"VM {name} is {view.record.state} on {view.record.node}: {_actual(vm_summary(view))}"
        )


@vm_group.command("migrate")
@click.argument("name")
@click.option("--target", help="node to migrate to (default: chosen by the target selector)")
@click.option("--force", is_flag=True, help="migrate again although already migrated (lastnode is kept)")
@click.option("--dry-run", is_flag=True, help="print the placement with every candidate's score; change nothing")
@_wait_options
@format_option
@click.pass_context
def vm_migrate(
    ctx: click.Context,
    name: str,
    target: str | None,
    force: bool,
    dry_run: bool,
    wait: bool,
    wait_timeout: float,
    output_format: str,
) -> None:
    """Migrate the VM to another node, remembering this one as lastnode."""
    _move(ctx, name, MoveKind.MIGRATE, target, force, dry_run, wait, wait_timeout, output_format)


@vm_group.command("unmigrate")
@click.argument("name")
@_wait_options
@format_option
@click.pass_context
def vm_unmigrate(ctx: click.Context, name: str, wait: bool, wait_timeout: float, output_format: str) -> None:
    """Return a migrated VM to its lastnode."""
    _move(ctx, name, MoveKind.UNMIGRATE, None, False, False, wait, wait_timeout, output_format)


@vm_group.command("move")
@click.argument("name")
@click.option("--target", help="node to move to (default: chosen by the target selector)")
@click.option("--dry-run", is_flag=True, help="print the placement with every candidate's score; change nothing")
@_wait_options
@format_option
@click.pass_context
def vm_move(
    ctx: click.Context,
    name: str,
    target: str | None,
    dry_run: bool,
    wait: bool,
    wait_timeout: float,
    output_format: str,
) -> None:
    """Move the VM to another node for good (lastnode is cleared)."""
    _move(ctx, name, MoveKind.MOVE, target, False, dry_run, wait, wait_timeout, output_format)


@vm_group.command("remove")
@click.argument("name")
@format_option
@click.pass_context
def vm_remove(ctx: click.Context, name: str, output_format: str) -> None:
    """Remove a stopped VM from the cluster."""
    with connect(_target(ctx)) as store:

        def attempt(view: VmView) -> VmView:
            if view.migration is not None or view.status.active or view.record.state in SHOULD_RUN | {VmState.SHUTDOWN}:
                where = f" on {view.status.node}" if view.status.active else ""
                raise CliError(
                    f"VM {name} is {view.record.state} ({view.status.state}{where}); stop it first: pvc vm stop {name}"
                )
            vms.remove(store, view)
            return view

        view = _retrying(store, name, attempt)
    assert view is not None
    if output_format == "json":
        click.echo(to_json({"removed": name, "uuid": view.record.uuid}))
    else:
        click.echo(f"Removed VM {name}")


def _lock_holders(view: VmView) -> list[records.RbdVolume]:
    """The volumes whose locks `flush-locks` may break; CliError while the VM may be running
    (or is about to be started, or is moving), and for a VM without RBD volumes."""
    if view.migration is not None or records.needs_handshake(view):
        where = f" on {view.status.node}" if view.status.active else ""
        raise CliError(
            f"VM {view.name} is {view.record.state} ({view.status.state}{where}); its locks may be live: "
            f"stop it first: pvc vm stop {view.name}"
        )
    volumes = vm_volumes(view)
    if not volumes:
        raise CliError(f"VM {view.name} has no RBD volumes: no locks to flush")
    return volumes


@vm_group.command("flush-locks")
@click.argument("name")
@ceph_options
@format_option
@click.pass_context
def vm_flush_locks(ctx: click.Context, name: str, output_format: str, ceph: Ceph) -> None:
    """Break the locks held on a stopped VM's RBD volumes (stale locks of a crashed or fenced node).

    Refused while the VM runs, starts, stops or moves. Ceph blocklists each holder's
    address when its lock is broken (rbd_blocklist_on_break_lock)."""
    from pvcd.storage import CephError

    with connect(_target(ctx)) as store:
        view = _view(store, name)
        volumes = _lock_holders(view)
        try:
            held = [(volume, ceph.locks(volume.pool, volume.volume)) for volume in volumes]
        except CephError as exc:
            raise CliError(f"VM {name}: nothing broken: {exc}") from exc
        if any(locks for _, locks in held):
            # A node may have started the VM while Ceph was asked: look again before breaking.
            _lock_holders(_view(store, name))
        broken: list[dict[str, Any]] = []
        for volume, locks in held:
            for lock in locks:
                try:
                    ceph.break_lock(volume.pool, volume.volume, lock)
                except CephError as exc:
                    before = ", ".join(f"{b['pool']}/{b['volume']} {b['locker']}" for b in broken) or "none"
                    raise CliError(f"VM {name}: {exc} (broken before: {before})") from exc
                broken.append({"pool": volume.pool, "volume": volume.volume, **lock_json(lock)})
    if output_format == "json":
        click.echo(to_json({"vm": name, "volumes": [str(v) for v in volumes], "broken": broken}))
    elif broken:
        held_by = "; ".join(f"{b['pool']}/{b['volume']} held by {b['locker']} at {b['address']}" for b in broken)
        click.echo(f"VM {name}: broke {len(broken)} lock(s): {held_by}")
    else:
        click.echo(f"VM {name}: no locks held on {', '.join(str(v) for v in volumes)}")


# -- node flush / ready ---------------------------------------------------------------


def _node_command(
    ctx: click.Context,
    name: str,
    kind: flush.CommandKind,
    wait: bool,
    wait_timeout: float,
    output_format: str,
    dry_run: bool = False,
) -> None:
    from pvcd.cluster.liveness import late_nodes
    from pvcd.vm import flush
    from pvcd.zk import nodes

    with connect(_target(ctx)) as store:
        view = _node(store, name)
        if dry_run:
            node_views, all_vms, late = _cluster(store)
            plan = flush.flush_plan(name, all_vms, node_views, late, _selector(view))
            click.echo(to_json(plan_json(plan)) if output_format == "json" else plan_text(plan))
            return
        if view.state.daemon != "run":
            raise CliError(f"node {name} is not running (daemon {view.state.daemon}); it cannot {kind}")
        if name in late_nodes([view], store.server_time_ms()):
            raise CliError(f"node {name}'s keepalive is late; it cannot {kind} until it keeps alive again")
        try:
            cleared = kind == flush.CommandKind.READY and nodes.clear_fence(store, name)
        except nodes.FenceInProgress as exc:
            raise CliError(str(exc)) from exc
        if cleared:
            click.echo(f"Node {name}: its fence is cleared; it takes VMs again", err=True)
        command = flush.Command.new(kind)
        flush.write_command(store, name, command)
        if not wait:
            _emit_report(output_format, {"node": name, "command": command.to_json()}, f"Node {name}: {kind} requested")
            return
        report = _wait_for_report(store, name, command, wait_timeout)
    if report.phase == flush.Phase.REFUSED:
        raise CliError(f"node {name}: {kind} refused: {report.reason}")
    summary = {"node": name, "command": command.to_json(), "report": report.to_json()}
    moved = ", ".join(report.moved) or "none"
    left = "; ".join(f"{vm}: {why}" for vm, why in sorted(report.left.items()))
    _emit_report(
        output_format,
        summary,
        f"Node {name}: {kind} {report.phase}; moved: {moved}" + (f"; left: {left}" if left else ""),
    )


def _wait_for_report(store: Store, name: str, command: flush.Command, timeout: float) -> flush.Report:
    from pvcd.vm import flush

    deadline = time.monotonic() + timeout
    while True:
        report = flush.read_report(store, name)
        if report is not None and report.command_id == command.id and report.phase != flush.Phase.RUNNING:
            return report
        if time.monotonic() > deadline:
            raise CliError(f"node {name}: gave up waiting for the {command.domain} after {timeout:g}s")
        time.sleep(WAIT_POLL)


def _emit_report(output_format: str, value: dict[str, Any], text: str) -> None:
    click.echo(to_json(value) if output_format == "json" else text)


@click.command("flush")
@click.argument("name")
@click.option(
    "--dry-run", is_flag=True, help="print where each VM would go with every candidate's score; change nothing"
)
@_wait_options
@format_option
@click.pass_context
def node_flush(
    ctx: click.Context, name: str, dry_run: bool, wait: bool, wait_timeout: float, output_format: str
) -> None:
    """Move every running VM off the node; its domain state goes flush -> flushed."""
    from pvcd.vm import flush

    _node_command(ctx, name, flush.CommandKind.FLUSH, wait, wait_timeout, output_format, dry_run)


@click.command("ready")
@click.argument("name")
@_wait_options
@format_option
@click.pass_context
def node_ready(ctx: click.Context, name: str, wait: bool, wait_timeout: float, output_format: str) -> None:
    """Take VMs again: those migrated away from the node come back, autostart VMs start."""
    from pvcd.vm import flush

    _node_command(ctx, name, flush.CommandKind.READY, wait, wait_timeout, output_format)


def register(pvc_group: click.Group, node_group: click.Group) -> None:
    """Attach `pvc vm ...` and `pvc node flush|ready`."""
    pvc_group.add_command(vm_group)
    node_group.add_command(node_flush)
    node_group.add_command(node_ready)
