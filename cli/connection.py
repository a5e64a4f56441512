"""Where the CLI finds ZooKeeper, and opening a bounded session there."""

from __future__ import annotations

import ipaddress
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pvcd.zk import schema

if TYPE_CHECKING:
    from pvcd.zk.base import Store

# Imported where they are used, not here: every `pvc` run imports this module,
# and kazoo (`pvcd.zk.store`) and YAML (`pvcd.config`) cost more start-up time
# than most commands take to run (`--help` and a refused argument need neither).

ZOOKEEPER_ENV = "PVC_ZOOKEEPER"
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_SESSION_TIMEOUT = 10.0


class CliError(Exception):
    """A failure to report as one line and a non-zero exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Target:
    """A checked ZooKeeper address, and where it came from (named in every message about it)."""

    hosts: str
    connect_timeout: float
    source: str


_HOST_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,252})")
_PORT = re.compile(r"[0-9]{1,5}")


def _host_problem(entry: str) -> str | None:
    """Why `entry` is not HOST[:PORT] (HOST a name, an IPv4 address or a bracketed IPv6 address), or None."""
    from pvcd.cluster.vm_records import shown

    if entry.startswith("["):
        address, bracket, rest = entry[1:].partition("]")
        if not bracket:
            return f"{shown(entry)} has no closing ']' after its IPv6 address"
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            return f"{shown(address)} is not an IPv6 address"
        if rest and not rest.startswith(":"):
            return f"{shown(entry)} has {shown(rest)} after its IPv6 address; expected [ADDRESS]:PORT"
        port = rest[1:] if rest else None
    else:
        host, colon, port_text = entry.partition(":")
        if not _HOST_NAME.fullmatch(host):
            if ":" in port_text:
                return f"{shown(entry)} looks like an IPv6 address: write it in brackets, [ADDRESS]:PORT"
            return f"{shown(host or entry)} is not a host name or address"
        port = port_text if colon else None
    if port is not None and not (_PORT.fullmatch(port) and 1 <= int(port) <= 65535):
        return f"port {shown(port)} is not a number from 1 to 65535"
    return None


def zookeeper_problem(hosts: str) -> str | None:
    """Why `hosts` is not HOST[:PORT][,HOST[:PORT]...][/CHROOT], or None (pure).

    Checked before a session is opened: kazoo fails on many mistakes with an
    exception deep inside its own code, and on a bad chroot not at all.
    """
    if not hosts.strip():
        return "it is empty"
    if not hosts.isprintable():
        return "it contains control characters"
    host_list, slash, chroot = hosts.partition("/")
    for entry in host_list.split(","):
        if not entry.strip():
            return "a host is missing (an empty entry between commas, or nothing before the chroot)"
        problem = _host_problem(entry.strip())
        if problem:
            return problem
    if slash and chroot:
        from pvcd.cluster.vm_records import shown

        for component in chroot.rstrip("/").split("/"):
            try:
                schema.validate_name(component)
            except ValueError:
                return f"the chroot {shown('/' + chroot)} has an empty or invalid path component"
    return None


def _target(hosts: str, timeout: float, source: str) -> Target:
    problem = zookeeper_problem(hosts)
    if problem:
        raise CliError(
            f"invalid ZooKeeper address from {source}: {problem}; expected HOST:PORT[,HOST:PORT...][/CHROOT]"
        )
    return Target(hosts, timeout, source)


def resolve_target(option: str | None, timeout: float | None, environ: Mapping[str, str] | None = None) -> Target:
    """--zookeeper, else $PVC_ZOOKEEPER, else the local node's configuration file."""
    environ = os.environ if environ is None else environ
    if option is not None:
        return _target(option, timeout or DEFAULT_CONNECT_TIMEOUT, "--zookeeper")
    if environ.get(ZOOKEEPER_ENV):
        return _target(environ[ZOOKEEPER_ENV], timeout or DEFAULT_CONNECT_TIMEOUT, ZOOKEEPER_ENV)
    from pvcd.config import CONFIG_ENV, DEFAULT_CONFIG_FILE, ConfigError, load_config

    path = environ.get(CONFIG_ENV) or DEFAULT_CONFIG_FILE
    if not environ.get(CONFIG_ENV) and not os.path.exists(path):
        raise CliError(f"no ZooKeeper given: use --zookeeper HOST:PORT, set {ZOOKEEPER_ENV}, or set {CONFIG_ENV}")
    try:
        config = load_config(path)
    except ConfigError as exc:
        raise CliError(f"cannot take the ZooKeeper address from {path}: {exc.problems[0]}") from exc
    return _target(config.zookeeper_hosts, timeout or config.cluster.zookeeper.connect_timeout, path)


def _check_cluster(store: Store, target: Target) -> None:
    """Refuse a ZooKeeper without a pvc cluster (a mistyped chroot, the wrong server):
    every command would otherwise find "no nodes" and "no VMs" there and succeed.
    The schema record is written when the first node registers."""
    from pvcd.cluster.vm_records import shown

    chroot = target.hosts.partition("/")[2].rstrip("/")
    where = f"no pvc cluster at ZooKeeper {shown(target.hosts)} (from {target.source})"
    if chroot and not store.exists("/"):
        raise CliError(f"{where}: its chroot /{chroot} does not exist")
    if not store.exists(schema.SCHEMA):
        under = f" under the chroot /{chroot}" if chroot else ""
        raise CliError(f"{where}: {schema.SCHEMA} does not exist{under}; no pvcd node has registered there")


@contextmanager
def connect(target: Target) -> Iterator[Store]:
    """A session on the target's ZooKeeper, which must hold a pvc cluster."""
    from pvcd.zk.store import Store, StoreUnavailable, quiet_kazoo

    quiet_kazoo()
    try:
        store = Store(target.hosts, session_timeout=DEFAULT_SESSION_TIMEOUT, connect_timeout=target.connect_timeout)
    except ValueError as exc:
        raise CliError(f"invalid ZooKeeper address from {target.source}: {exc}") from exc
    try:
        with warnings.catch_warnings():
            # kazoo warns on stderr about a missing chroot; _check_cluster says it in one line.
            warnings.simplefilter("ignore")
            store.start()
    except StoreUnavailable as exc:
        raise CliError(str(exc)) from exc
    try:
        _check_cluster(store, target)
        yield store
    finally:
        store.stop()
