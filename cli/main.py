"""The `pvc` command-line tool.

Exit status: 0 success; 1 the operation failed (ZooKeeper unreachable, unknown
node, ...); 2 the command line itself is wrong.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from cli.connection import CliError, Target, connect, target_of
from cli.coordinator import claim_owner
from cli.coordinator import register as register_coordinator_commands
from cli.fencing import register as register_fencing_commands
from cli.inputs import Seconds, node_name
from cli.network import register as register_network_commands
from cli.output import format_option, key_values, table, to_json
from cli.storage import register as register_storage_commands
from cli.views import cluster_summary, node_summary
from cli.vm import register as register_vm_commands
from pvcd.zk import schema
from pvcd.zk.base import StoreError

# Start-up time is most of what a `pvc` command costs: the modules of the
# commands import kazoo (through `cli.connection.connect`), the node and VM
# readers and the planner inside the commands that use them, so `--help`, a
# refused argument and each command pay only for what they run.

MAX_CONNECT_TIMEOUT = 3600.0


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--zookeeper",
    "zookeeper",
    metavar="HOST:PORT[,...]",
    help="ZooKeeper to use (else $PVC_ZOOKEEPER, else $PVCD_CONFIG_FILE)",
)
@click.option("--timeout", type=Seconds(0.1, MAX_CONNECT_TIMEOUT), help="seconds to wait for ZooKeeper (default 5)")
@click.option(
    "--zookeeper-credentials",
    "credentials",
    metavar="FILE",
    help="file with the operator's USER:PASSWORD (else $PVC_ZOOKEEPER_CREDENTIALS, $PVC_ZOOKEEPER_AUTH, "
    "/etc/pvc/operator.credentials)",
)
@click.option("--zookeeper-ca", "ca", metavar="FILE", help="CA of the ZooKeeper servers: TLS (else $PVC_ZOOKEEPER_CA)")
@click.option(
    "--zookeeper-cert", "cert", metavar="FILE", help="client certificate for mutual TLS ($PVC_ZOOKEEPER_CERT)"
)
@click.option("--zookeeper-key", "key", metavar="FILE", help="its private key ($PVC_ZOOKEEPER_KEY)")
@click.pass_context
def pvc(
    ctx: click.Context,
    zookeeper: str | None,
    timeout: float | None,
    credentials: str | None,
    ca: str | None,
    cert: str | None,
    key: str | None,
) -> None:
    """Operate a pvcd cluster."""
    ctx.obj = {
        "zookeeper": zookeeper,
        "timeout": timeout,
        "credentials": credentials,
        "ca": ca,
        "cert": cert,
        "key": key,
    }


def _target(ctx: click.Context) -> Target:
    return target_of(ctx.obj)


@pvc.group()
def node() -> None:
    """Nodes: list, info, flush, ready, primary, secondary, confirm-fenced."""


register_coordinator_commands(node)


@node.command("list")
@format_option
@click.pass_context
def node_list(ctx: click.Context, output_format: str) -> None:
    """Every node with its states, VMs, memory and keepalive age."""
    from pvcd.zk import nodes

    with connect(_target(ctx)) as store:
        now = store.server_time_ms()
        summaries = [node_summary(v, now) for v in nodes.read_cluster(store)]
    if output_format == "json":
        click.echo(to_json(summaries))
        return
    rows = [
        [
            s["name"],
            s["daemon_state"],
            s["coordinator_state"],
            s["domain_state"],
            s["vms"],
            s["memory"]["total"],
            s["memory"]["allocated"],
            s["memory"]["free"],
            s["load"],
            "-"
            if s["keepalive"]["age_seconds"] is None
            else f"{s['keepalive']['age_seconds']:.1f}s" + (" LATE" if s["keepalive"]["late"] else ""),
        ]
        for s in summaries
    ]
    headers = [
        "NAME",
        "DAEMON",
        "COORDINATOR",
        "DOMAIN",
        "VMS",
        "MEM MiB",
        "ALLOC MiB",
        "FREE MiB",
        "LOAD",
        "KEEPALIVE AGE",
    ]
    click.echo(table(headers, rows) if rows else "No nodes registered.")


@node.command("info")
@click.argument("name")
@format_option
@click.pass_context
def node_info(ctx: click.Context, name: str, output_format: str) -> None:
    """One node in detail."""
    from pvcd.zk import nodes

    node_name(name)
    with connect(_target(ctx)) as store:
        view = nodes.read_node(store, name)
        if view is None:
            raise CliError(f"no node named {name!r}")
        now = store.server_time_ms()
        summary = node_summary(view, now)
    if output_format == "json":
        click.echo(to_json(summary))
        return
    memory = summary["memory"]
    keepalive = summary["keepalive"]
    click.echo(
        key_values(
            [
                ("Name", summary["name"]),
                ("Daemon state", summary["daemon_state"]),
                ("Coordinator state", summary["coordinator_state"]),
                ("Domain state", summary["domain_state"]),
                ("pvcd version", summary["pvcd_version"]),
                ("Hypervisor", summary["hypervisor"]),
                ("Running VMs", f"{summary['vms']}: {', '.join(summary['running_vms']) or '-'}"),
                (
                    "Memory (MiB)",
                    f"total {memory['total']}, allocated {memory['allocated']}, "
                    f"used {memory['used']}, free {memory['free']}",
                ),
                ("vCPUs allocated", summary["vcpus_allocated"]),
                ("Load (1 min)", summary["load"]),
                (
                    "Keepalive",
                    f"#{keepalive['counter']} every {keepalive['interval']}s, last {keepalive['age_seconds']}s ago"
                    + (" (LATE)" if keepalive["late"] else ""),
                ),
                ("Stale figures", keepalive["stale_figures"]),
                ("Watchdog", _watchdog_line(summary["watchdog"])),
                *[
                    (
                        f"Loop {name}",
                        f"{loop.get('failures')} failures"
                        + (" (FAILING)" if loop.get("failing") else "")
                        + f"; last: {loop.get('last_error')}",
                    )
                    for name, loop in sorted(summary["loops"].items())
                ],
                *_fence_lines(summary["fence"], now),
            ]
        )
    )


def _watchdog_line(watchdog: dict[str, Any]) -> str:
    if watchdog["armed"]:
        return f"armed, {watchdog['timeout']}s ({watchdog['device']})"
    return f"NONE: {watchdog['problem']}; a failed fence of this node waits for an operator"


def _fence_lines(fence: dict[str, Any], now_ms: int) -> list[tuple[str, Any]]:
    if fence["outcome"] is None:
        return [("Last fence", "never")]
    when = fence["finished_ms"] or fence["started_ms"]
    ago = f"{(now_ms - when) / 1000:.0f}s ago" if when else "at an unknown time"
    readied = "" if fence["pending"] else " (readied since)"
    resumed = f" (carried on by {fence['resumed_by']})" if fence["resumed_by"] else ""
    return [
        ("Last fence", f"{fence['outcome']} {ago} by {fence['by']}{resumed}{readied}"),
        ("Fence step", f"{fence['step']} (fence {fence['id']})"),
        ("Fence reason", fence["reason"]),
        (
            "VM recovery",
            f"{fence['action']}; done: {bool(fence['recovered'])}"
            + ("; confirmed by an operator" if fence["confirmed_by_operator"] else ""),
        ),
        ("Storage cut", _storage_cut_line(fence["storage"])),
    ]


def _storage_cut_line(storage: dict[str, Any] | None) -> str:
    """The fence's storage step: what was blocklisted and broken, or why not."""
    if storage is None:
        return "not reached yet"
    return f"{storage.get('outcome')}: {storage.get('reason')}"


@pvc.group()
def cluster() -> None:
    """The cluster as a whole."""


register_fencing_commands(cluster, node)
register_vm_commands(pvc, node)
register_network_commands(pvc)
register_storage_commands(pvc)


@cluster.command("status")
@format_option
@click.pass_context
def cluster_status(ctx: click.Context, output_format: str) -> None:
    """Node counts by state, the primary, VMs, memory, late keepalives."""
    from pvcd.zk import nodes

    with connect(_target(ctx)) as store:
        now = store.server_time_ms()
        found = store.get(schema.SCHEMA)
        version = found.value.get("version") if found and isinstance(found.value, dict) else None
        maintenance = store.get(schema.MAINTENANCE)
        faults = store.get(schema.FAULTS)
        storage = store.get(schema.STORAGE_STATUS)
        summary = cluster_summary(
            nodes.read_cluster(store),
            now,
            version,
            maintenance=bool(maintenance and isinstance(maintenance.value, dict) and maintenance.value.get("enabled")),
            primary=claim_owner(store),
            faults=faults.value if faults and isinstance(faults.value, dict) else {},
        )
    summary["storage"] = storage.value if storage and isinstance(storage.value, dict) else None
    if output_format == "json":
        click.echo(to_json(summary))
        return
    states = ", ".join(f"{count} {state}" for state, count in sorted(summary["daemon_states"].items()))
    click.echo(
        key_values(
            [
                ("Health", "healthy" if summary["healthy"] else "degraded"),
                ("Nodes", f"{summary['nodes']} ({states or 'none'})"),
                ("Coordinators", summary["coordinators"]),
                ("Primary", summary["primary"] or "none"),
                ("VMs running", summary["vms_running"]),
                ("Memory (MiB)", f"allocated {summary['memory']['allocated']} of {summary['memory']['total']}"),
                ("Late keepalives", summary["late_keepalives"]),
                ("Fenced nodes", summary["fenced"]),
                ("Maintenance", "on (fencing disabled)" if summary["maintenance"] else "off"),
                *_storage_lines(summary["storage"], now),
                *[(f"FAULT {name}", fault.get("reason", fault)) for name, fault in sorted(summary["faults"].items())],
                *[
                    (f"FAULT loops of {node}", f"{', '.join(loops)} keep failing; the node does not stand as primary")
                    for node, loops in sorted(summary["failing_loops"].items())
                ],
                ("Schema version", summary["schema_version"]),
            ]
        )
    )


def _storage_lines(record: dict[str, Any] | None, now_ms: int) -> list[tuple[str, Any]]:
    """Ceph as the primary last recorded it; nothing when no node has `enable_storage`."""
    if record is None:
        return []
    from pvcd.storage.status import storage_text

    refreshed = record.get("refreshed_ms")
    age = max(0, now_ms - refreshed) / 1000 if isinstance(refreshed, int) else None
    return [("Storage", storage_text(record, age))]


def main(argv: list[str] | None = None) -> int:
    try:
        pvc.main(args=argv, prog_name="pvc", standalone_mode=False)
    except CliError as exc:
        click.echo(f"pvc: {exc}", err=True)
        return exc.status
    except StoreError as exc:
        click.echo(f"pvc: ZooKeeper: {exc}", err=True)
        return 1
    except click.exceptions.Abort:
        click.echo("pvc: aborted", err=True)
        return 1
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except OSError as exc:
        # Output that cannot be written (a full disk, a closed terminal); click itself
        # turns a closed pipe into exit status 1.
        click.echo(f"pvc: {exc.strerror or exc}", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
