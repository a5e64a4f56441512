"""Where the CLI finds ZooKeeper, and opening a bounded session there."""

from __future__ import annotations

import ipaddress
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from pvcd.zk import schema
from pvcd.zk.security import Credentials, SecurityError, Tls, ZkSecurity

if TYPE_CHECKING:
    from pvcd.zk.base import Store

# Imported where they are used, not here: every `pvc` run imports this module,
# and kazoo (`pvcd.zk.store`) and YAML (`pvcd.config`) cost more start-up time
# than most commands take to run (`--help` and a refused argument need neither).

ZOOKEEPER_ENV = "PVC_ZOOKEEPER"
CREDENTIALS_ENV = "PVC_ZOOKEEPER_CREDENTIALS"
"""The path of the operator's `user:password` file."""
AUTH_ENV = "PVC_ZOOKEEPER_AUTH"
"""The operator's `user:password` itself, for where a file is awkward (never put it on a command line)."""
TLS_ENV = {"ca": "PVC_ZOOKEEPER_CA", "cert": "PVC_ZOOKEEPER_CERT", "key": "PVC_ZOOKEEPER_KEY"}
DEFAULT_CREDENTIALS_FILE = "/etc/pvc/operator.credentials"
"""The operator identity's credentials the Ansible role writes on every node (mode 0600), used when
nothing else names any."""
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
    security: ZkSecurity = ZkSecurity()


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


def resolve_target(
    option: str | None,
    timeout: float | None,
    environ: Mapping[str, str] | None = None,
    access: Mapping[str, str | None] | None = None,
) -> Target:
    """--zookeeper, else $PVC_ZOOKEEPER, else the local node's configuration file; the credentials
    and TLS files from the options in `access`, else the environment (see `security_of`)."""
    environ = os.environ if environ is None else environ
    access = access or {}
    if option is not None:
        target = _target(option, timeout or DEFAULT_CONNECT_TIMEOUT, "--zookeeper")
        return replace(target, security=security_of(access, environ, None))
    if environ.get(ZOOKEEPER_ENV):
        target = _target(environ[ZOOKEEPER_ENV], timeout or DEFAULT_CONNECT_TIMEOUT, ZOOKEEPER_ENV)
        return replace(target, security=security_of(access, environ, None))
    from pvcd.config import CONFIG_ENV, DEFAULT_CONFIG_FILE, ConfigError, load_config

    path = environ.get(CONFIG_ENV) or DEFAULT_CONFIG_FILE
    if not environ.get(CONFIG_ENV) and not os.path.exists(path):
        raise CliError(f"no ZooKeeper given: use --zookeeper HOST:PORT, set {ZOOKEEPER_ENV}, or set {CONFIG_ENV}")
    try:
        config = load_config(path)
    except ConfigError as exc:
        raise CliError(f"cannot take the ZooKeeper address from {path}: {exc.problems[0]}") from exc
    target = _target(config.zookeeper_hosts, timeout or config.cluster.zookeeper.connect_timeout, path)
    return replace(target, security=security_of(access, environ, config.cluster.zookeeper.tls))


def security_of(access: Mapping[str, str | None], environ: Mapping[str, str], node_tls: Tls | None) -> ZkSecurity:
    """The operator's identity and TLS files.

    Credentials: --zookeeper-credentials FILE, else $PVC_ZOOKEEPER_CREDENTIALS (a file), else
    $PVC_ZOOKEEPER_AUTH (user:password), else /etc/pvc/operator.credentials when it exists, else
    none (an open ZooKeeper). TLS: --zookeeper-ca/-cert/-key, else $PVC_ZOOKEEPER_CA/CERT/KEY,
    else the local node's configuration when the address came from it."""
    try:
        credentials = None
        named = access.get("credentials") or environ.get(CREDENTIALS_ENV)
        if named:
            credentials = Credentials.from_file(named)
        elif environ.get(AUTH_ENV):
            credentials = Credentials.parse(environ[AUTH_ENV], f"${AUTH_ENV}")
        elif os.path.exists(DEFAULT_CREDENTIALS_FILE):
            credentials = Credentials.from_file(DEFAULT_CREDENTIALS_FILE)
    except SecurityError as exc:
        raise CliError(str(exc)) from exc
    files = {name: access.get(name) or environ.get(variable) or None for name, variable in TLS_ENV.items()}
    if (files["cert"] is None) != (files["key"] is None):
        raise CliError(
            f"a TLS client certificate and its key go together: give both --zookeeper-cert and --zookeeper-key "
            f"(or ${TLS_ENV['cert']} and ${TLS_ENV['key']})"
        )
    if files["ca"] is None and files["cert"] is not None:
        raise CliError(f"a TLS client certificate needs the CA too: --zookeeper-ca (or ${TLS_ENV['ca']})")
    for name, file in files.items():
        if file is not None and not os.path.isfile(file):
            raise CliError(f"--zookeeper-{name} {file}: no such file")
    tls = Tls(files["ca"], files["cert"], files["key"]) if files["ca"] is not None else node_tls
    return ZkSecurity(credentials, None, tls)


def target_of(obj: Mapping[str, Any]) -> Target:
    """The target of a `pvc` command, from the options its group stored in the click context."""
    return resolve_target(obj["zookeeper"], obj["timeout"], access=obj)


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
    from pvcd.zk.store import Store, StoreError, quiet_kazoo

    quiet_kazoo()
    try:
        store = Store(
            target.hosts,
            session_timeout=DEFAULT_SESSION_TIMEOUT,
            connect_timeout=target.connect_timeout,
            security=target.security,
        )
    except ValueError as exc:
        raise CliError(f"invalid ZooKeeper address from {target.source}: {exc}") from exc
    try:
        with warnings.catch_warnings():
            # kazoo warns on stderr about a missing chroot; _check_cluster says it in one line.
            warnings.simplefilter("ignore")
            store.start()
    except StoreError as exc:
        raise CliError(str(exc)) from exc
    try:
        _check_cluster(store, target)
        yield store
    finally:
        store.stop()
