"""Where the CLI finds ZooKeeper, and opening a bounded session there."""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from pvcd.config import CONFIG_ENV, DEFAULT_CONFIG_FILE, ConfigError, load_config
from pvcd.zk.store import Store, StoreUnavailable

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
    hosts: str
    connect_timeout: float
    source: str


def resolve_target(option: str | None, timeout: float | None, environ: Mapping[str, str] | None = None) -> Target:
    """--zookeeper, else $PVC_ZOOKEEPER, else the local node's configuration file."""
    environ = os.environ if environ is None else environ
    if option:
        return Target(option, timeout or DEFAULT_CONNECT_TIMEOUT, "--zookeeper")
    if environ.get(ZOOKEEPER_ENV):
        return Target(environ[ZOOKEEPER_ENV], timeout or DEFAULT_CONNECT_TIMEOUT, ZOOKEEPER_ENV)
    path = environ.get(CONFIG_ENV) or DEFAULT_CONFIG_FILE
    if not environ.get(CONFIG_ENV) and not os.path.exists(path):
        raise CliError(f"no ZooKeeper given: use --zookeeper HOST:PORT, set {ZOOKEEPER_ENV}, or set {CONFIG_ENV}")
    try:
        config = load_config(path)
    except ConfigError as exc:
        raise CliError(f"cannot take the ZooKeeper address from {path}: {exc.problems[0]}") from exc
    return Target(config.zookeeper_hosts, timeout or config.cluster.zookeeper.connect_timeout, path)


@contextmanager
def connect(target: Target) -> Iterator[Store]:
    store = Store(target.hosts, session_timeout=DEFAULT_SESSION_TIMEOUT, connect_timeout=target.connect_timeout)
    try:
        store.start()
    except StoreUnavailable as exc:
        raise CliError(str(exc)) from exc
    except ValueError as exc:
        raise CliError(f"invalid ZooKeeper address {target.hosts!r} (from {target.source}): {exc}") from exc
    try:
        yield store
    finally:
        store.stop()
