"""`pvc cluster maintenance on|off` and `pvc node confirm-fenced NAME`."""

from __future__ import annotations

import click

from cli.connection import CliError, connect, target_of
from cli.inputs import node_name
from cli.output import format_option, to_json
from pvcd.zk import schema
from pvcd.zk.base import AlreadyExists

# Outcomes after which an operator's word may allow recovery: the fencer could
# not prove the node off, the operator has checked it by other means.
CONFIRMABLE = ("ambiguous", "failed")


def register(cluster_group: click.Group, node_group: click.Group) -> None:
    cluster_group.add_command(maintenance)
    node_group.add_command(confirm_fenced)


@click.command("maintenance")
@click.argument("mode", type=click.Choice(["on", "off"]))
@format_option
@click.pass_context
def maintenance(ctx: click.Context, mode: str, output_format: str) -> None:
    """Turn maintenance mode on (no node is fenced) or off."""
    enabled = mode == "on"
    with connect(target_of(ctx.obj)) as store:
        store.ensure_path(schema.CLUSTER)
        found = store.get(schema.MAINTENANCE)
        value = {"enabled": enabled}
        if found is None:
            try:
                store.create(schema.MAINTENANCE, value)
            except AlreadyExists as exc:
                raise CliError("maintenance mode changed meanwhile; try again") from exc
        else:
            store.set(schema.MAINTENANCE, value, found.version)
    if output_format == "json":
        click.echo(to_json({"maintenance": enabled}))
    else:
        click.echo(f"Maintenance mode {'on: no node will be fenced' if enabled else 'off: fencing is active'}.")


@click.command("confirm-fenced")
@click.argument("name")
@format_option
@click.pass_context
def confirm_fenced(ctx: click.Context, name: str, output_format: str) -> None:
    """Tell the cluster NAME is really off, so its VMs may be recovered.

    Only for a fence whose outcome was ambiguous or failed: check the machine
    is powered off (or its VMs dead) by other means first.
    """
    from pvcd.zk import nodes

    node_name(name)
    with connect(target_of(ctx.obj)) as store:
        if nodes.read_node(store, name) is None:
            raise CliError(f"no node named {name!r}")
        found = store.get(schema.node_fence(name))
        record = found.value if found is not None and isinstance(found.value, dict) else {}
        outcome = record.get("outcome")
        if outcome not in CONFIRMABLE:
            raise CliError(
                f"node {name} has no ambiguous or failed fence to confirm (last outcome: {outcome or 'none'})"
            )
        if record.get("recovered"):
            raise CliError(f"the VMs of node {name} were already recovered")
        assert found is not None
        store.set(schema.node_fence(name), dict(record, confirmed_by_operator=True), found.version)
    if output_format == "json":
        click.echo(to_json({"node": name, "confirmed_by_operator": True}))
    else:
        click.echo(f"Node {name} confirmed fenced; the primary recovers its VMs at its next round.")
