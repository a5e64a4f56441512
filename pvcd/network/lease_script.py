"""dnsmasq's lease script: records each DHCP lease change of a managed network in ZooKeeper.

dnsmasq runs it (through the wrapper `pvcd.network.dhcp.script_file` writes)
as `add|old|del MAC ADDRESS [HOSTNAME]`, with the lease's expiry in
DNSMASQ_LEASE_EXPIRES, one call at a time, as root. `add` and `old` create or
replace /pvc/networks/VNI/leases/MAC (`pvcd.zk.networks.record_lease`); `del`
removes it if it is still for that address (`pvcd.zk.networks.delete_lease`).
Those writes set the network's lease counter, so a reservation added or a
network removed meanwhile is refused and checked again instead of missing the
lease. A lease of a network that no longer exists is not recorded (its path is
not brought back): one line on stderr says so, and the exit status is 0.
Other actions (`tftp`, `arp`, ...) are ignored.

It must be quick, because dnsmasq queues every later lease change behind it:

- the `old` events dnsmasq sends for every lease it reads at start and on
  SIGHUP change nothing; a file per MAC under `--recorded` holds the lease as
  last written, and an event equal to it ends here, before kazoo is imported;
- ZooKeeper is given `connect_timeout` seconds to connect, not a session's
  patience, and then as many again for the reads and writes of the change:
  `pvcd.zk.networks` takes no timeout (and kazoo's calls wait for an answer
  for as long as the connection looks alive), so they run in a daemon thread
  the script stops waiting for (`within`), failing with one line.

A failure is one line on stderr (dnsmasq logs it) and exit status 1; nothing
else is printed, and never anything of the configuration file (it holds
passwords). ZooKeeper's hosts come from `--zookeeper`, or else from the node's
configuration (PVCD_CONFIG_FILE).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from pvcd.cluster.client_networks import InvalidNetwork, Lease, check_hostname, check_mac
from pvcd.zk.security import ZkSecurity

if TYPE_CHECKING:
    from pvcd.zk.base import Store

RECORD_ACTIONS = ("add", "old")
REMOVE_ACTION = "del"
CONNECT_TIMEOUT = 5.0
"""Seconds to reach ZooKeeper, and then again for the change's reads and writes: long enough for a server
that is busy, short enough that a cluster without quorum does not hold dnsmasq's later lease changes for a
session's length."""

T = TypeVar("T")


class LeaseScriptError(Exception):
    """The call could not be carried out; the message is the one line dnsmasq logs."""


class NoAnswer(LeaseScriptError):
    """The store's reads and writes did not finish in time (`within`)."""


@dataclass(frozen=True)
class LeaseEvent:
    """What a call of the script asks for: record the lease (`remove` False) or remove it."""

    lease: Lease
    remove: bool = False


def parse_event(argv: Sequence[str], environ: Mapping[str, str], now: float) -> LeaseEvent | None:
    """The change dnsmasq reports, or None for an action that is not a lease change.

    The expiry is DNSMASQ_LEASE_EXPIRES (seconds since the epoch, 0 for an
    infinite lease), or `now` plus DNSMASQ_TIME_REMAINING where dnsmasq was
    built without a trusted clock. A host name that DNS could not carry is
    dropped, not refused: the lease itself is still right."""
    if not argv or argv[0] not in (*RECORD_ACTIONS, REMOVE_ACTION):
        return None
    if len(argv) < 3:
        raise LeaseScriptError(f"{argv[0]}: expected MAC ADDRESS [HOSTNAME], got {len(argv) - 1} arguments")
    action, mac_text, address_text = argv[0], argv[1], argv[2]
    try:
        mac = check_mac(mac_text)
    except InvalidNetwork as exc:
        raise LeaseScriptError(f"{action}: {exc}") from None
    try:
        address = ipaddress.IPv4Address(address_text)
    except ValueError:
        raise LeaseScriptError(f"{action} {mac}: {address_text[:40]!r} is not an IPv4 address") from None
    if action == REMOVE_ACTION:
        return LeaseEvent(Lease(mac, address, None, 0), remove=True)
    try:
        hostname = check_hostname(argv[3]) if len(argv) > 3 else None
    except InvalidNetwork:
        hostname = None
    return LeaseEvent(Lease(mac, address, hostname, _expiry(action, mac, environ, now)))


def _expiry(action: str, mac: str, environ: Mapping[str, str], now: float) -> int:
    expires = environ.get("DNSMASQ_LEASE_EXPIRES")
    remaining = environ.get("DNSMASQ_TIME_REMAINING")
    try:
        if expires:
            return int(expires)
        if remaining:
            return int(now) + int(remaining)
    except ValueError:
        pass
    raise LeaseScriptError(f"{action} {mac}: dnsmasq gave no usable lease expiry")


def _recorded_path(recorded: Path | None, mac: str) -> Path | None:
    from pvcd.network.dhcp import recorded_name

    return recorded / recorded_name(mac) if recorded is not None else None


def _zookeeper_access(given: str | None) -> tuple[str, float, ZkSecurity]:
    """ZooKeeper's hosts (as given, else the node's), connect timeout and the node's credentials
    and TLS files, from the node's configuration (PVCD_CONFIG_FILE, passed on by dnsmasq from
    pvcd's environment). Without a usable configuration only given hosts work, unauthenticated."""
    from pvcd.config import ConfigError, config_path_from_env, load_config
    from pvcd.zk.access import zk_security
    from pvcd.zk.security import SecurityError

    path = config_path_from_env()
    try:
        config = load_config(path)
    except ConfigError:
        if given:
            return given, CONNECT_TIMEOUT, ZkSecurity()
        raise LeaseScriptError(f"configuration {path} is not usable (see pvcd --check-config)") from None
    try:
        security = zk_security(config.cluster.zookeeper)
    except SecurityError as exc:
        raise LeaseScriptError(str(exc)) from None
    timeout = min(CONNECT_TIMEOUT, config.cluster.zookeeper.connect_timeout)
    return given or config.zookeeper_hosts, CONNECT_TIMEOUT if given else timeout, security


def within(seconds: float, work: Callable[[], T]) -> T:
    """`work()`'s answer (or its exception), run in a daemon thread; `NoAnswer` when it has not finished within
    `seconds`. The thread is then left behind: the script's process ends right after, daemon threads and all."""
    answers: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            answers.append(work())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="lease-script-store", daemon=True)
    thread.start()
    thread.join(seconds)
    if errors:
        raise errors[0]
    if answers:
        return answers[0]
    raise NoAnswer(f"ZooKeeper did not answer within {seconds:g}s")


def record(store: Store, event: LeaseEvent, vni: int, recorded: Path | None) -> str | None:
    """Carry the event out on a connected store (`pvcd.zk.networks`), and keep `recorded` in step; a note for
    stderr when it did nothing of use (the network is gone), else None. `StoreError` when the store failed."""
    from pvcd.zk import networks
    from pvcd.zk.base import encode

    lease = event.lease
    mark = _recorded_path(recorded, lease.mac)
    try:
        if event.remove:
            networks.delete_lease(store, vni, lease.mac, lease.ipv4)
        else:
            networks.record_lease(store, vni, lease)
    except networks.UnknownNetwork:
        if mark is not None:
            mark.unlink(missing_ok=True)
        if event.remove:
            return None
        return f"network {vni} no longer exists: lease of {lease.ipv4} to {lease.mac} not recorded"
    if mark is not None:
        if event.remove:
            mark.unlink(missing_ok=True)
        else:
            mark.parent.mkdir(mode=0o700, exist_ok=True)
            mark.write_bytes(encode(lease.to_json()))
    return None


def apply(event: LeaseEvent, vni: int, zookeeper: str | None, recorded: Path | None) -> str | None:
    """Carry the event out, connecting to ZooKeeper only when `recorded` does not show it done already; a note
    for stderr when it did nothing of use (network gone), else None.

    Connecting takes at most the connect timeout (`_zookeeper_access`), and `record` as long again (`within`)."""
    from pvcd.zk.base import encode

    mark = _recorded_path(recorded, event.lease.mac)
    if not event.remove and mark is not None:
        try:
            if mark.read_bytes() == encode(event.lease.to_json()):
                return None
        except OSError:
            pass
    from pvcd.zk.base import StoreError
    from pvcd.zk.store import ZooKeeperStore, quiet_kazoo

    hosts, timeout, security = _zookeeper_access(zookeeper)
    quiet_kazoo()
    store = ZooKeeperStore(hosts, session_timeout=10.0, connect_timeout=timeout, security=security)
    try:
        store.start()
    except StoreError as exc:
        raise LeaseScriptError(str(exc)) from None
    close = True
    try:
        return within(timeout, lambda: record(store, event, vni, recorded))
    except NoAnswer:
        # Closing the session would wait for the same silent server: the process ends instead.
        close = False
        raise
    except StoreError as exc:
        raise LeaseScriptError(str(exc)) from None
    finally:
        if close:
            store.stop()


def _arguments(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="pvcd.network.lease_script", description="Record a dnsmasq lease change in ZooKeeper."
    )
    parser.add_argument("--vni", type=int, required=True, help="the managed network's VNI")
    parser.add_argument("--zookeeper", help="ZooKeeper hosts (default: from PVCD_CONFIG_FILE)")
    parser.add_argument("--recorded", type=Path, help="directory of the leases as last recorded")
    return parser.parse_known_args(list(argv))


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one call; 0 when done or nothing to do, 1 after one line on stderr."""
    options, rest = _arguments(sys.argv[1:] if argv is None else argv)
    what = " ".join(rest[:3]) or "(no action)"
    try:
        event = parse_event(rest, os.environ if environ is None else environ, time.time())
        if event is None:
            return 0
        note = apply(event, options.vni, options.zookeeper, options.recorded)
    except LeaseScriptError as exc:
        print(f"pvcd lease script, network {options.vni}: {what}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"pvcd lease script, network {options.vni}: {what}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if note is not None:
        print(f"pvcd lease script: {note}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
