"""Where the CLI finds Ceph: `--ceph-conf`, `--ceph-keyring`, `--ceph-id` and `--ceph-timeout`,
the same on every command that talks to Ceph (`pvc vm info`, `pvc vm flush-locks`, `pvc storage ...`).

`ceph_options` adds the four options to a command and hands it one `ceph` argument, a
`pvcd.storage.Ceph` built from them (imported only when the command runs: `pvc --help`
and the commands that never reach Ceph do not pay for it). `ceph_settings_options` adds
the same options but hands over their values, a `CephSettings`, for a group that builds
the adapter later (`pvc storage`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

from cli.inputs import Seconds

if TYPE_CHECKING:
    from pvcd.storage import Ceph

DEFAULT_CONF = "/etc/ceph/ceph.conf"
DEFAULT_KEYRING = "/etc/ceph/ceph.client.admin.keyring"
DEFAULT_ID = "admin"
DEFAULT_TIMEOUT = 10.0
"""Seconds one Ceph call may take (as `pvcd.storage.ceph.DEFAULT_TIMEOUT`)."""
MAX_TIMEOUT = 3600.0
CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def client_id(ctx: click.Context, param: click.Parameter, value: str) -> str:
    if not CLIENT_ID.fullmatch(value):
        raise click.BadParameter(f"{value!r} is not a Ceph client id: use letters, digits, '_', '.' or '-'")
    return value


def ceph_client(conf: str, keyring: str, client_id: str, timeout: float) -> Ceph:
    """The Ceph adapter for these options."""
    from pvcd.storage import Ceph

    return Ceph(conf=conf, keyring=keyring, client_id=client_id, timeout=timeout)


@dataclass(frozen=True)
class CephSettings:
    """The values of the four `--ceph-*` options."""

    conf: str
    keyring: str
    client_id: str
    timeout: float

    def client(self) -> Ceph:
        """The Ceph adapter for these settings."""
        return ceph_client(self.conf, self.keyring, self.client_id, self.timeout)


def ceph_settings_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add the four Ceph options to a click command, which receives them as one `ceph_settings: CephSettings`.

    For a command (or group) that checks or passes on the settings before it builds the adapter
    (`pvc storage`); `ceph_options` builds it straight away."""

    @functools.wraps(func)
    def command(*args: Any, ceph_conf: str, ceph_keyring: str, ceph_id: str, ceph_timeout: float, **kwargs: Any) -> Any:
        return func(*args, ceph_settings=CephSettings(ceph_conf, ceph_keyring, ceph_id, ceph_timeout), **kwargs)

    options = [
        click.option(
            "--ceph-timeout",
            envvar="PVC_CEPH_TIMEOUT",
            type=Seconds(1, MAX_TIMEOUT),
            default=DEFAULT_TIMEOUT,
            show_default=True,
            help="seconds each Ceph command may take (else $PVC_CEPH_TIMEOUT)",
        ),
        click.option(
            "--ceph-id",
            envvar="PVC_CEPH_ID",
            default=DEFAULT_ID,
            show_default=True,
            callback=client_id,
            help="Ceph client id, client.ID (else $PVC_CEPH_ID)",
        ),
        click.option(
            "--ceph-keyring",
            envvar="PVC_CEPH_KEYRING",
            default=DEFAULT_KEYRING,
            show_default=True,
            metavar="FILE",
            help="keyring of the client (else $PVC_CEPH_KEYRING)",
        ),
        click.option(
            "--ceph-conf",
            envvar="PVC_CEPH_CONF",
            default=DEFAULT_CONF,
            show_default=True,
            metavar="FILE",
            help="ceph.conf of the cluster (else $PVC_CEPH_CONF)",
        ),
    ]
    decorated: Callable[..., Any] = command
    for option in options:
        decorated = option(decorated)
    return decorated


def ceph_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add the Ceph options to a click command; the command receives `ceph: Ceph` instead of them."""

    @functools.wraps(func)
    def command(*args: Any, ceph_settings: CephSettings, **kwargs: Any) -> Any:
        return func(*args, ceph=ceph_settings.client(), **kwargs)

    return ceph_settings_options(command)
