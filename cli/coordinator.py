"""`pvc node primary NAME` and `pvc node secondary NAME`: planned coordinator handovers.

The tool never writes a node's state: it writes a handover request that the
primary acts on (relinquish, then release its claim, so the floating IPs are
never on two nodes at once), then waits until the role has moved and the new
primary says so. A request that must be refused is refused before anything
is written (pvcd.coordinator.handover).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import click

from cli.connection import CliError, connect, target_of
from cli.inputs import node_name
from cli.output import format_option, key_values, to_json
from pvcd.zk import schema

if TYPE_CHECKING:
    from pvcd.cluster.values import NodeView
    from pvcd.coordinator.claims import Handover
    from pvcd.zk.base import Store

    _Planner = Callable[[dict[str, NodeView], str | None, Handover | None, bool, str, int], Handover | None]

HANDOVER_WAIT = 15.0
POLL_INTERVAL = 0.02


def register(node_group: click.Group) -> None:
    """Attach the commands to `pvc node`."""
    node_group.add_command(node_primary)
    node_group.add_command(node_secondary)


def claim_owner(store: Store) -> str | None:
    """The primary as the election says: the owner of the lowest live claim (a crashed
    primary still says `primary` in its state record until it is fenced)."""
    from pvcd.coordinator.claims import claims_of

    claims = claims_of(store.children(schema.PRIMARY))
    return claims[0].node if claims else None


def _primary_now(store: Store, name: str) -> bool:
    """`name` holds the primary claim and has published that it is primary."""
    from pvcd.states import CoordinatorState
    from pvcd.zk import nodes

    if claim_owner(store) != name:
        return False
    view = nodes.read_node(store, name)
    return view is not None and view.state.coordinator == CoordinatorState.PRIMARY


def _handover(ctx: click.Context, name: str, plan: _Planner, output_format: str) -> None:
    from pvcd.coordinator.claims import Handover
    from pvcd.coordinator.handover import HandoverRefused
    from pvcd.zk import nodes
    from pvcd.zk.base import AlreadyExists

    node_name(name)
    target = target_of(ctx.obj)
    with connect(target) as store:
        views = {view.name: view for view in nodes.read_cluster(store)}
        owner = claim_owner(store)
        found = store.get(schema.HANDOVER)
        # Read after the nodes, so that the time the reads took can only make a keepalive look older.
        now = store.server_time_ms()
        try:
            pending = Handover.from_json(found.value) if found else None
            request = plan(views, owner, pending, found is not None, name, now)
        except HandoverRefused as exc:
            raise CliError(str(exc)) from exc
        if request is None:
            _report(output_format, owner, owner, 0.0, changed=False)
            return
        started = time.monotonic()
        try:
            store.create(schema.HANDOVER, request.to_json())
        except AlreadyExists as exc:
            raise CliError("another handover request was made meanwhile; retry when it is done") from exc
        successor = _wait(store, request, started + HANDOVER_WAIT)
    _report(output_format, successor, request.source, time.monotonic() - started, changed=True)


def _wait(store: Store, request: Handover, deadline: float) -> str:
    """The new primary once it has taken over; CliError when that takes longer than HANDOVER_WAIT."""
    while True:
        owner = claim_owner(store)
        moved = owner != request.source and request.target in (None, owner)
        if owner is not None and moved and _primary_now(store, owner):
            return owner
        if time.monotonic() > deadline:
            wanted = request.target or "another coordinator"
            raise CliError(
                f"handover requested, but {wanted} is not primary after {HANDOVER_WAIT:.0f}s "
                f"(primary: {owner or 'none'}); see the coordinators' logs"
            )
        time.sleep(POLL_INTERVAL)


def _report(output_format: str, primary: str | None, previous: str | None, seconds: float, changed: bool) -> None:
    if output_format == "json":
        click.echo(
            to_json({"primary": primary, "previous": previous, "changed": changed, "seconds": round(seconds, 3)})
        )
    elif changed:
        click.echo(key_values([("Primary", primary), ("Previous primary", previous), ("Handover", f"{seconds:.2f}s")]))
    else:
        click.echo(f"Nothing to do: the primary coordinator is {primary or 'none'}")


@click.command("primary")
@click.argument("name")
@format_option
@click.pass_context
def node_primary(ctx: click.Context, name: str, output_format: str) -> None:
    """Hand the primary coordinator role to NAME (a planned handover)."""
    from pvcd.coordinator.handover import primary_request

    _handover(ctx, name, primary_request, output_format)


@click.command("secondary")
@click.argument("name")
@format_option
@click.pass_context
def node_secondary(ctx: click.Context, name: str, output_format: str) -> None:
    """Make primary NAME step down; another coordinator takes over."""
    from pvcd.coordinator.handover import secondary_request

    _handover(ctx, name, secondary_request, output_format)
