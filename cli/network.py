"""`pvc network ...`: client networks, and the DHCP reservations and leases of each.

Every command checks its input completely before it writes anything: a
malformed or overlapping CIDR, a gateway or DHCP range outside its network, a
vni in use, a reservation outside the DHCP range or clashing with a lease or
another reservation, removing a network a VM's interface is plugged into, an
unknown vni: one line on stderr, exit status 1, ZooKeeper untouched. The
rules are `pvcd.cluster.client_networks`'s, so the daemon and the CLI judge a
network alike; each write is one version-checked transaction
(`pvcd.zk.networks`), tried again on a fresh read when a concurrent change
refused it.

`register(pvc)` attaches the group to the top-level CLI.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from cli.connection import CliError, Target, connect, target_of
from cli.output import format_option, key_values, table, to_json
from pvcd.cluster.client_networks import (
    ClientNetwork,
    InvalidNetwork,
    Lease,
    NetworkType,
    Reservation,
    check_mac,
    parse_network,
    parse_vni,
)
from pvcd.zk import networks

if TYPE_CHECKING:
    from pvcd.zk.base import Store


def _target(ctx: click.Context) -> Target:
    return target_of(ctx.obj)


class _Stderr(logging.Handler):
    """A record skipped by a read as the CLI's other lines: `pvc: ...` on stderr (the command still succeeds)."""

    def emit(self, record: logging.LogRecord) -> None:
        click.echo(f"pvc: {record.getMessage()}", err=True)


@contextmanager
def _session(ctx: click.Context, show_skipped: bool = False) -> Iterator[Store]:
    """A session on the cluster in which the model's refusals are one line and exit 1.

    The store adapter warns of each damaged record a read skips: a command that shows records
    (`show_skipped`) says so on stderr and succeeds; a command that writes keeps quiet about them, so that its
    answer, or its refusal, stays one line."""
    handler = _Stderr(logging.WARNING) if show_skipped else logging.NullHandler()
    logger = logging.getLogger(networks.__name__)
    logger.addHandler(handler)
    try:
        with connect(_target(ctx)) as store, _refused():
            yield store
    finally:
        logger.removeHandler(handler)


@contextmanager
def _refused() -> Iterator[None]:
    """InvalidNetwork, the model's one-line reason, as the CLI's one-line refusal (exit 1)."""
    try:
        yield
    except InvalidNetwork as exc:
        raise CliError(str(exc)) from exc


def _vni(text: str) -> int:
    with _refused():
        return parse_vni(text)


# -- what is shown (pure) -------------------------------------------------------------


def network_summary(network: ClientNetwork) -> dict[str, Any]:
    """One network for `list`, `info` and every JSON answer: the stored record and the bridge VMs plug into."""
    return {**network.to_json(), "bridge": network.bridge}


def dhcp_entries(leases: dict[str, Lease], reservations: dict[str, Reservation]) -> list[dict[str, Any]]:
    """Leases and reservations in one list ordered by address, each saying which it is (`kind`)."""
    entries = [
        {"kind": "reservation", "mac": r.mac, "ipv4": str(r.ipv4), "hostname": r.hostname, "expiry": None}
        for r in reservations.values()
    ] + [
        {"kind": "lease", "mac": lease.mac, "ipv4": str(lease.ipv4), "hostname": lease.hostname, "expiry": lease.expiry}
        for lease in leases.values()
    ]
    return sorted(entries, key=lambda e: (ipaddress.IPv4Address(e["ipv4"]), e["kind"], e["mac"]))


def expiry_text(expiry: int | None) -> str | None:
    """A lease's end as an operator reads it (UTC); 0 is dnsmasq's infinite lease."""
    if expiry is None:
        return None
    if expiry == 0:
        return "never"
    return datetime.fromtimestamp(expiry, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _dhcp_text(summary: dict[str, Any]) -> str | None:
    ipv4 = summary["ipv4"]
    if ipv4 is None or ipv4["dhcp"] is None:
        return None
    return f"{ipv4['dhcp']['start']}-{ipv4['dhcp']['end']}"


def _emit(output_format: str, value: Any, text: str) -> None:
    click.echo(to_json(value) if output_format == "json" else text)


# -- the network group ----------------------------------------------------------------


@click.group("network")
def network_group() -> None:
    """Client networks: add, modify, remove, list, info; dhcp list|add|remove."""


def _network_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The network's settings, the same on `add` and `modify`."""
    options = [
        click.option("--description", help="one line of at most 200 characters"),
        click.option("--domain", help="DNS domain of the network's clients (e.g. net100.local; '' to clear)"),
        click.option("--ipv4-network", metavar="CIDR", help="IPv4 subnet, e.g. 10.100.0.0/24"),
        click.option("--ipv4-gateway", metavar="IP", help="IPv4 gateway, a host address of the subnet"),
        click.option("--dhcp-start", metavar="IP", help="first address DHCP hands out (managed networks)"),
        click.option("--dhcp-end", metavar="IP", help="last address DHCP hands out"),
        click.option("--ipv6-network", metavar="CIDR", help="IPv6 subnet, e.g. fd00:100::/64"),
        click.option("--ipv6-gateway", metavar="IP", help="IPv6 gateway, a host address of the subnet"),
        click.option(
            "--name-server",
            "name_servers",
            metavar="IP",
            multiple=True,
            help="name server handed to clients (repeat for several; on modify, replaces the list)",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


_TYPE_CHOICE = click.Choice([str(t) for t in NetworkType])


@network_group.command("add")
@click.argument("vni")
@click.option(
    "--type",
    "type_",
    type=_TYPE_CHOICE,
    required=True,
    help="managed: a VXLAN over the cluster network, gateway and DHCP on the primary; bridged: a VLAN on the "
    "nodes' bridge device",
)
@_network_options
@format_option
@click.pass_context
def network_add(
    ctx: click.Context,
    vni: str,
    type_: str,
    description: str | None,
    domain: str | None,
    ipv4_network: str | None,
    ipv4_gateway: str | None,
    dhcp_start: str | None,
    dhcp_end: str | None,
    ipv6_network: str | None,
    ipv6_gateway: str | None,
    name_servers: tuple[str, ...],
    output_format: str,
) -> None:
    """Add client network VNI (for a bridged network, VNI is its VLAN id)."""
    with _refused():
        network = parse_network(
            _vni(vni),
            type_,
            description or "",
            domain or None,
            ipv4_network,
            ipv4_gateway,
            dhcp_start,
            dhcp_end,
            ipv6_network,
            ipv6_gateway,
            name_servers,
        )
    with _session(ctx) as store:
        view = networks.create(store, network)
    _emit(
        output_format,
        network_summary(view.network),
        f"Added {view.network.type} network {view.vni} (bridge {view.network.bridge})",
    )


@network_group.command("modify")
@click.argument("vni")
@click.option("--type", "type_", type=_TYPE_CHOICE, help="managed or bridged")
@_network_options
@click.option("--no-dhcp", is_flag=True, help="switch DHCP off (the network must have no reservations)")
@format_option
@click.pass_context
def network_modify(
    ctx: click.Context,
    vni: str,
    type_: str | None,
    description: str | None,
    domain: str | None,
    ipv4_network: str | None,
    ipv4_gateway: str | None,
    dhcp_start: str | None,
    dhcp_end: str | None,
    ipv6_network: str | None,
    ipv6_gateway: str | None,
    name_servers: tuple[str, ...],
    no_dhcp: bool,
    output_format: str,
) -> None:
    """Change client network VNI: the options given replace what is stored, the rest is kept."""
    number = _vni(vni)
    settings = (
        type_,
        description,
        domain,
        ipv4_network,
        ipv4_gateway,
        dhcp_start,
        dhcp_end,
        ipv6_network,
        ipv6_gateway,
    )
    if all(value is None for value in settings) and not name_servers and not no_dhcp:
        raise CliError(f"nothing to change for network {number}: give the settings to change (pvc network modify -h)")
    if no_dhcp and (dhcp_start is not None or dhcp_end is not None):
        raise CliError("--no-dhcp switches DHCP off: it cannot go with --dhcp-start or --dhcp-end")

    def change(current: ClientNetwork) -> ClientNetwork:
        """The stored network with the options laid over it, validated as `add` validates a new one."""
        ipv4, ipv6, dhcp = current.ipv4, current.ipv6, current.dhcp
        return parse_network(
            current.vni,
            type_ or str(current.type),
            current.description if description is None else description,
            current.domain if domain is None else (domain or None),
            ipv4_network if ipv4_network is not None else (str(ipv4.network) if ipv4 else None),
            ipv4_gateway if ipv4_gateway is not None else (str(ipv4.gateway) if ipv4 else None),
            None if no_dhcp else (dhcp_start if dhcp_start is not None else (str(dhcp.start) if dhcp else None)),
            None if no_dhcp else (dhcp_end if dhcp_end is not None else (str(dhcp.end) if dhcp else None)),
            ipv6_network if ipv6_network is not None else (str(ipv6.network) if ipv6 else None),
            ipv6_gateway if ipv6_gateway is not None else (str(ipv6.gateway) if ipv6 else None),
            name_servers or current.name_servers,
        )

    with _session(ctx) as store:
        view = networks.modify(store, number, change)
    _emit(output_format, network_summary(view.network), f"Network {number}: modified")


@network_group.command("remove")
@click.argument("vni")
@format_option
@click.pass_context
def network_remove(ctx: click.Context, vni: str, output_format: str) -> None:
    """Remove client network VNI with its DHCP reservations and leases (refused while a VM uses it)."""
    number = _vni(vni)
    with _session(ctx) as store:
        removed = networks.remove(store, number)
    _emit(
        output_format,
        {"removed": removed.vni, "reservations": removed.reservations, "leases": removed.leases},
        f"Removed network {removed.vni} ({removed.reservations} reservations, {removed.leases} leases)",
    )


@network_group.command("list")
@format_option
@click.pass_context
def network_list(ctx: click.Context, output_format: str) -> None:
    """Every client network with its subnets, gateways and DHCP range."""
    with _session(ctx, show_skipped=True) as store:
        found = networks.read_networks(store)
    summaries = [network_summary(view.network) for _, view in sorted(found.items())]
    if output_format == "json":
        click.echo(to_json(summaries))
        return
    rows = [
        [
            s["vni"],
            s["type"],
            s["bridge"],
            s["ipv4"]["network"] if s["ipv4"] else None,
            s["ipv4"]["gateway"] if s["ipv4"] else None,
            _dhcp_text(s),
            s["ipv6"]["network"] if s["ipv6"] else None,
            s["ipv6"]["gateway"] if s["ipv6"] else None,
            s["domain"],
            s["description"] or None,
        ]
        for s in summaries
    ]
    headers = ["VNI", "TYPE", "BRIDGE", "IPV4", "IPV4 GATEWAY", "DHCP", "IPV6", "IPV6 GATEWAY", "DOMAIN", "DESCRIPTION"]
    click.echo(table(headers, rows) if rows else "No client networks.")


@network_group.command("info")
@click.argument("vni")
@format_option
@click.pass_context
def network_info(ctx: click.Context, vni: str, output_format: str) -> None:
    """One client network in detail, with how many reservations and leases it has."""
    number = _vni(vni)
    with _session(ctx, show_skipped=True) as store:
        view = networks.read_network(store, number)
        if view is None:
            raise networks.UnknownNetwork(number)
        reservations = networks.list_reservations(store, number)
        leases = networks.list_leases(store, number)
    summary = {**network_summary(view.network), "reservations": len(reservations), "leases": len(leases)}
    if output_format == "json":
        click.echo(to_json(summary))
        return
    ipv4, ipv6 = summary["ipv4"] or {}, summary["ipv6"] or {}
    click.echo(
        key_values(
            [
                ("VNI", summary["vni"]),
                ("Type", summary["type"]),
                ("Bridge", f"{summary['bridge']} (on {view.network.overlay})"),
                ("Description", summary["description"] or None),
                ("Domain", summary["domain"]),
                ("IPv4 network", ipv4.get("network")),
                ("IPv4 gateway", ipv4.get("gateway")),
                ("DHCP", _dhcp_text(summary) or "off"),
                ("IPv6 network", ipv6.get("network")),
                ("IPv6 gateway", ipv6.get("gateway")),
                ("Name servers", summary["name_servers"]),
                ("Reservations", summary["reservations"]),
                ("Leases", summary["leases"]),
            ]
        )
    )


# -- DHCP -----------------------------------------------------------------------------


@network_group.group("dhcp")
def dhcp_group() -> None:
    """DHCP of a managed network: its leases and reservations (list, add, remove)."""


@dhcp_group.command("list")
@click.argument("vni")
@format_option
@click.pass_context
def dhcp_list(ctx: click.Context, vni: str, output_format: str) -> None:
    """The network's leases and reservations, ordered by address; KIND says which each is."""
    number = _vni(vni)
    with _session(ctx, show_skipped=True) as store:
        if networks.read_network(store, number) is None:
            raise networks.UnknownNetwork(number)
        entries = dhcp_entries(networks.list_leases(store, number), networks.list_reservations(store, number))
    if output_format == "json":
        click.echo(to_json(entries))
        return
    rows = [[e["ipv4"], e["mac"], e["hostname"], e["kind"], expiry_text(e["expiry"])] for e in entries]
    headers = ["IPV4", "MAC", "HOSTNAME", "KIND", "EXPIRES"]
    click.echo(table(headers, rows) if rows else f"No leases or reservations on network {number}.")


@dhcp_group.command("add")
@click.argument("vni")
@click.argument("mac")
@click.argument("ip")
@click.option("--hostname", help="the client's host name (one DNS label)")
@format_option
@click.pass_context
def dhcp_add(ctx: click.Context, vni: str, mac: str, ip: str, hostname: str | None, output_format: str) -> None:
    """Reserve address IP for the client with MAC (inside the network's DHCP range)."""
    number = _vni(vni)
    with _refused():
        reservation = Reservation.from_json({"mac": mac, "ipv4": ip, "hostname": hostname})
    with _session(ctx) as store:
        networks.add_reservation(store, number, reservation)
    _emit(
        output_format,
        reservation.to_json(),
        f"Network {number}: {reservation.ipv4} reserved for {reservation.mac}"
        + (f" ({reservation.hostname})" if reservation.hostname else ""),
    )


@dhcp_group.command("remove")
@click.argument("vni")
@click.argument("mac")
@format_option
@click.pass_context
def dhcp_remove(ctx: click.Context, vni: str, mac: str, output_format: str) -> None:
    """Remove the reservation of MAC (its current lease, if any, runs out as usual)."""
    number = _vni(vni)
    with _refused():
        mac = check_mac(mac)
    with _session(ctx) as store:
        networks.remove_reservation(store, number, mac)
    _emit(output_format, {"vni": number, "removed": mac}, f"Network {number}: reservation of {mac} removed")


def register(pvc_group: click.Group) -> None:
    """Attach `pvc network ...`."""
    pvc_group.add_command(network_group)
