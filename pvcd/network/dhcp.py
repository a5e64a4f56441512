"""DHCP for one managed client network: dnsmasq on the primary coordinator, its leases in ZooKeeper.

The primary runs one dnsmasq per managed network with a DHCP range, bound to
that network's bridge (`vmbrVNI`), where the primary holds the gateway. The
pieces, from pure to I/O:

- `dnsmasq_command`, `hosts_file`, `lease_file`, `script_file`: what dnsmasq is
  started with, pure (the clock is an argument);
- the network's leases and reservations are read and written through
  `pvcd.zk.networks` only (`list_leases` and `list_reservations` here,
  `record_lease` and `delete_lease` in the lease script): its writes keep the
  counters that reservation changes and network removals check;
- `DhcpServer`: one dnsmasq process, a primary-only service
  (`pvcd.coordinator.services`): `start`, `stop`, plus `check` (restart a
  dnsmasq that died, and say so) and `sync_reservations`.

Why dnsmasq is run the way it is:

- DHCP only (`--port=0`): names are served by the DNS aggregator (PowerDNS), so
  clients are told the aggregator's address, never dnsmasq's;
- `--conf-file=/dev/null`, `--no-resolv`, `--no-hosts`: nothing of the host's
  /etc/dnsmasq.conf or resolver files leaks in; everything is on the command
  line, visible in `ps` (there are no secrets in it);
- `--bind-interfaces` with exactly one `--interface`: the DHCP socket is bound
  to that bridge (SO_BINDTODEVICE), so one dnsmasq per network can run on the
  same host, and none answers on another network. `--listen-address` names the
  gateway as the issue asks; with DNS off dnsmasq opens no socket for it, so it
  starts even before the gateway is on the bridge (it answers DHCP only once an
  address of the range's subnet is there);
- `--keep-in-foreground`, not `--no-daemon`: `--no-daemon` is dnsmasq's debug
  mode (no pid file, no dropping of root); in the foreground the process we
  start is the server, stopped by its PID;
- `--dhcp-authoritative`: after a handover the new primary answers renewals of
  leases the old one granted instead of ignoring them;
- `--dhcp-leasefile` written from ZooKeeper's leases before each start (a new
  primary serves the same leases: dnsmasq offers a client the address of its
  lease, where a dnsmasq without it would pick one by hashing the MAC); not
  `--leasefile-ro`, whose `init` call would make dnsmasq's start depend on
  ZooKeeper answering the script;
- `--dhcp-script` runs `python -m pvcd.network.lease_script` through a small
  wrapper (dnsmasq passes no arguments of ours), which records each change in
  ZooKeeper; `--script-on-renewal` so the stored expiry follows renewals;
- `--dhcp-hostsfile` holds the reservations and is re-read on SIGHUP: a new
  reservation needs no restart (a client renewing another address is refused
  and asks again, getting the reserved one);
- `--quiet-dhcp` (unless `log_dhcp`): the log in the run directory (on tmpfs)
  keeps errors, not four lines per renewal.

dnsmasq drops root after start (to `nobody` unless `user` is given) and reads
the hosts file as that user, at start and on SIGHUP; one it cannot read leaves
it running without reservations, saying so only in its log. So the files are
written 0644, and `start` refuses a run directory under a directory others
cannot search (pytest's 0700 tmp_path, say) when `user` is not given. The lease
script runs as root.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pvcd.cluster.client_networks import ClientNetwork, Lease, Reservation
from pvcd.processes import describe_exit, pid_cmdline
from pvcd.zk import networks
from pvcd.zk.base import Store, StoreError, encode

log = logging.getLogger(__name__)

DEFAULT_LEASE_TIME = 3600
"""Seconds; short enough that a client whose lease a lost primary forgot asks again soon."""
MIN_LEASE_TIME = 120
"""dnsmasq's own floor: it raises shorter lease times to two minutes."""
START_TIMEOUT = 2.0
"""How long `start` waits for dnsmasq to write its pid file (it does within milliseconds)."""
STOP_TIMEOUT = 2.0
"""How long dnsmasq gets to exit on SIGTERM before SIGKILL."""


class DhcpError(Exception):
    """DHCP cannot be served as asked; the message is one line naming what is wrong."""


# -- pure: files and command line -------------------------------------------------


@dataclass(frozen=True)
class DhcpFiles:
    """Everything one network's dnsmasq uses, under the run directory the caller gives."""

    run_dir: Path

    @property
    def hosts(self) -> Path:
        """The reservations (`--dhcp-hostsfile`), rewritten by `sync_reservations`."""
        return self.run_dir / "hosts"

    @property
    def leases(self) -> Path:
        """dnsmasq's lease database, written from ZooKeeper before each start of a term."""
        return self.run_dir / "leases"

    @property
    def pid(self) -> Path:
        return self.run_dir / "dnsmasq.pid"

    @property
    def script(self) -> Path:
        """The wrapper dnsmasq runs on every lease change."""
        return self.run_dir / "lease-script"

    @property
    def recorded(self) -> Path:
        """One file per MAC with the lease as last recorded in ZooKeeper: lets the lease script skip the
        `old` events dnsmasq sends for every lease it reads at start and on SIGHUP."""
        return self.run_dir / "recorded"

    @property
    def log(self) -> Path:
        """dnsmasq's output (`--log-facility=-`): start-up, errors, the lease script's complaints."""
        return self.run_dir / "dnsmasq.log"


def _dhcp_of(network: ClientNetwork) -> tuple[ipaddress.IPv4Network, ipaddress.IPv4Address]:
    if network.ipv4 is None or network.ipv4.dhcp is None:
        raise DhcpError(f"network {network.vni} has no IPv4 DHCP range")
    return network.ipv4.network, network.ipv4.gateway


def dnsmasq_command(
    network: ClientNetwork,
    files: DhcpFiles,
    dns_server: ipaddress.IPv4Address | None = None,
    lease_time: int = DEFAULT_LEASE_TIME,
    mtu: int | None = None,
    user: str | None = None,
    log_dhcp: bool = False,
    dnsmasq: str = "dnsmasq",
) -> list[str]:
    """dnsmasq's command line for the network (the reasons for each flag are in the module's docstring).

    Clients are told the gateway as router, the DNS aggregator's address
    (`dns_server`) followed by the network's own name servers (IPv4 ones: DHCPv4
    carries no others), the network's domain, and `mtu` when given (a managed
    network's bridge is 50 bytes below the cluster device, which a client
    sending 1500-byte frames would not know)."""
    subnet, gateway = _dhcp_of(network)
    dhcp = network.dhcp
    assert dhcp is not None
    if lease_time < MIN_LEASE_TIME:
        raise DhcpError(f"lease time {lease_time}s is below dnsmasq's minimum of {MIN_LEASE_TIME}s")
    command = [
        dnsmasq,
        "--conf-file=/dev/null",
        "--keep-in-foreground",
        "--port=0",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        f"--interface={network.bridge}",
        f"--listen-address={gateway}",
        "--except-interface=lo",
        f"--dhcp-range={dhcp.start},{dhcp.end},{subnet.netmask},{lease_time}",
        "--dhcp-authoritative",
        f"--dhcp-option=option:router,{gateway}",
    ]
    servers = [str(dns_server)] if dns_server is not None else []
    for server in network.name_servers:
        if ipaddress.ip_address(server).version == 4 and server not in servers:
            servers.append(server)
    if servers:
        command.append(f"--dhcp-option=option:dns-server,{','.join(servers)}")
    if network.domain:
        command.append(f"--dhcp-option=option:domain-name,{network.domain}")
    if mtu is not None:
        command.append(f"--dhcp-option=option:mtu,{mtu}")
    command += [
        f"--dhcp-hostsfile={files.hosts}",
        f"--dhcp-leasefile={files.leases}",
        f"--dhcp-script={files.script}",
        "--script-on-renewal",
        f"--pid-file={files.pid}",
        "--log-facility=-",
    ]
    if not log_dhcp:
        command.append("--quiet-dhcp")
    if user is not None:
        command.append(f"--user={user}")
    return command


def hosts_file(network: ClientNetwork, reservations: Iterable[Reservation]) -> str:
    """The `--dhcp-hostsfile`: one `MAC,ADDRESS[,NAME]` line per reservation inside the network, sorted."""
    subnet, _gateway = _dhcp_of(network)
    lines = [
        ",".join([reservation.mac, str(reservation.ipv4), *([reservation.hostname] if reservation.hostname else [])])
        for reservation in sorted(reservations, key=lambda r: r.mac)
        if reservation.ipv4 in subnet
    ]
    return "".join(f"{line}\n" for line in lines)


def lease_file(network: ClientNetwork, leases: Iterable[Lease], now: float) -> str:
    """dnsmasq's lease database (`EXPIRY MAC ADDRESS NAME CLIENT-ID`, `*` for none) holding the leases
    still valid at `now` (expiry 0: infinite) whose address is in the network.

    The client-id is not stored in ZooKeeper: dnsmasq matches a lease without
    one by the client's MAC."""
    subnet, _gateway = _dhcp_of(network)
    lines = [
        f"{lease.expiry} {lease.mac} {lease.ipv4} {lease.hostname or '*'} *"
        for lease in sorted(leases, key=lambda item: item.mac)
        if lease.ipv4 in subnet and (lease.expiry == 0 or lease.expiry > now)
    ]
    return "".join(f"{line}\n" for line in lines)


def script_file(python: str, vni: int, zookeeper_hosts: str | None, recorded: Path) -> str:
    """The wrapper dnsmasq runs as `--dhcp-script` (it passes only its own arguments).

    Without `zookeeper_hosts`, the lease script reads them from the node's
    configuration (PVCD_CONFIG_FILE, which dnsmasq passes on from pvcd's
    environment)."""
    arguments = [python, "-m", "pvcd.network.lease_script", "--vni", str(vni), "--recorded", str(recorded)]
    if zookeeper_hosts:
        arguments += ["--zookeeper", zookeeper_hosts]
    return (
        "#!/bin/sh\n"
        f"# Written by pvcd for network {vni}: dnsmasq's --dhcp-script (pvcd.network.lease_script).\n"
        f'exec {shlex.join(arguments)} "$@"\n'
    )


def recorded_name(mac: str) -> str:
    """A lease's file in `DhcpFiles.recorded`."""
    return mac.replace(":", "-")


# -- the process ----------------------------------------------------------------------


def _write(path: Path, text: str, mode: int = 0o644) -> bool:
    """Replace the file atomically (dnsmasq may read it at any moment); False when it held `text` already."""
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    temporary = path.with_name(f".{path.name}.new")
    temporary.write_text(text)
    temporary.chmod(mode)
    os.replace(temporary, path)
    return True


def _check_searchable(run_dir: Path) -> None:
    """dnsmasq reads the hosts file only after dropping root (at start too): under a directory others
    cannot search it would serve no reservation, and only say so in its log."""
    for directory in run_dir.absolute().parents:
        if directory.exists() and not directory.stat().st_mode & 0o001:
            raise DhcpError(
                f"dnsmasq runs as nobody and cannot reach {run_dir}: {directory} is not searchable by others"
            )


def _last_line(path: Path) -> str:
    """The last non-empty line of dnsmasq's log, to say why it stopped."""
    try:
        with open(path, "rb") as stream:
            stream.seek(max(0, os.path.getsize(path) - 4096))
            lines = [line.strip() for line in stream.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


class DhcpServer:
    """One managed network's dnsmasq, run while this node is primary.

    A primary-only service (`name`, `start`, `stop`). `check` is for the
    coordinator's loop: a dnsmasq that died is started again and the failure
    returned (and kept in `problem`) for `pvc cluster status`.

    `start` raises nothing for a dnsmasq that would not start or a store that
    did not answer: it records the problem and `check` tries again. Raising
    would keep the registry from calling `stop` at relinquish, and a later
    successful `check` would then leave a dnsmasq on a secondary.

    `command_prefix` runs dnsmasq under a wrapper (the tests use
    `ip netns exec NS`, which execs: the PID stays dnsmasq's).
    """

    def __init__(
        self,
        network: ClientNetwork,
        store: Store,
        run_dir: Path,
        zookeeper_hosts: str | None,
        dns_server: ipaddress.IPv4Address | None = None,
        lease_time: int = DEFAULT_LEASE_TIME,
        mtu: int | None = None,
        user: str | None = None,
        log_dhcp: bool = False,
        dnsmasq: str = "dnsmasq",
        python: str = sys.executable,
        command_prefix: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        _dhcp_of(network)
        self.network = network
        self.name = f"dhcp-{network.vni}"
        self.files = DhcpFiles(run_dir)
        self._store = store
        self._zookeeper_hosts = zookeeper_hosts
        self._dns_server = dns_server
        self._lease_time = lease_time
        self._mtu = mtu
        self._user = user
        self._log_dhcp = log_dhcp
        self._dnsmasq = dnsmasq
        self._python = python
        self._prefix = list(command_prefix)
        self._clock = clock
        self._lock = threading.RLock()
        self._process: subprocess.Popen[bytes] | None = None
        self._wanted = False
        self._prepared = False
        self.problem: str | None = None
        """The last failure of this term (cleared by `start`): what `pvc cluster status` shows."""
        self.restarts = 0
        """dnsmasq restarts by `check` since `start`."""

    def command(self) -> list[str]:
        return self._prefix + dnsmasq_command(
            self.network,
            self.files,
            self._dns_server,
            self._lease_time,
            self._mtu,
            self._user,
            self._log_dhcp,
            self._dnsmasq,
        )

    @property
    def pid(self) -> int | None:
        with self._lock:
            process = self._process
            return process.pid if process is not None and process.poll() is None else None

    def running(self) -> bool:
        with self._lock:
            return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Serve DHCP: the files from ZooKeeper's leases and reservations, then dnsmasq."""
        with self._lock:
            self._wanted = True
            self.problem = None
            self.restarts = 0
            self._prepared = False
            if self.running():
                return
            try:
                self._prepare()
                self._spawn()
            except (DhcpError, StoreError, OSError) as exc:
                self.problem = f"DHCP on network {self.network.vni} ({self.network.bridge}) did not start: {exc}"
                log.error("%s; retried at the next check", self.problem)
                return
            log.info("DHCP on network %d (%s) started, PID %d", self.network.vni, self.network.bridge, self.pid)

    def stop(self) -> None:
        """Stop dnsmasq (SIGTERM, then SIGKILL) by its PID; no restart until the next `start`."""
        with self._lock:
            self._wanted = False
            self._terminate()
            self._stop_leftover()

    def check(self) -> str | None:
        """Start dnsmasq again if it should run and does not; the problem in one line, or None if all was well."""
        with self._lock:
            if not self._wanted or self.running():
                return None
            if self._process is not None:
                how = describe_exit(self._process.returncode)
                said = _last_line(self.files.log)
                reason = f"dnsmasq ({how}{': ' + said if said else ''})"
            else:
                reason = "dnsmasq had not started"
            self._process = None
            try:
                if not self._prepared:
                    self._prepare()
                self._spawn()
            except (DhcpError, StoreError, OSError) as exc:
                outcome = f"not restarted: {exc}"
            else:
                self.restarts += 1
                outcome = f"restarted (restart {self.restarts} since this node became primary)"
            self.problem = f"DHCP on network {self.network.vni} ({self.network.bridge}) stopped: {reason}; {outcome}"
            log.error("%s", self.problem)
            return self.problem

    def sync_reservations(self, reservations: Iterable[Reservation] | None = None) -> bool:
        """Write the reservations (read from the store when not given) and make dnsmasq re-read them (SIGHUP).

        True when the hosts file changed; `StoreError` when the store did not
        answer (nothing changed then). dnsmasq re-reads the file soon after, not
        before this returns, and applies a reservation to a client at its next
        request: a renewal of another address is refused, and the client's new
        request gets the reserved address."""
        with self._lock:
            if reservations is None:
                reservations = networks.list_reservations(self._store, self.network.vni).values()
            self.files.run_dir.mkdir(parents=True, exist_ok=True)
            changed = _write(self.files.hosts, hosts_file(self.network, reservations))
            if changed and self.running():
                assert self._process is not None
                self._process.send_signal(signal.SIGHUP)
            return changed

    def update_network(self, network: ClientNetwork) -> bool:
        """Take a changed network record; dnsmasq is restarted (with its own leases) when its command
        line changes. True when it was restarted, or tried to be: a dnsmasq that would not start is
        recorded in `problem`, and `check` tries again."""
        with self._lock:
            if network.vni != self.network.vni:
                raise DhcpError(f"server of network {self.network.vni} cannot serve network {network.vni}")
            _dhcp_of(network)
            before = self.command()
            self.network = network
            if before == self.command() or not self.running():
                return False
            self._terminate()
            try:
                self._spawn()
            except (DhcpError, OSError) as exc:
                self.problem = f"DHCP on network {network.vni} ({network.bridge}) did not restart: {exc}"
                log.error("%s; retried at the next check", self.problem)
            return True

    def _prepare(self) -> None:
        """Write every file dnsmasq reads, the leases and reservations as ZooKeeper has them now."""
        vni = self.network.vni
        if self._user is None:
            _check_searchable(self.files.run_dir)
        leases = networks.list_leases(self._store, vni)
        reservations = networks.list_reservations(self._store, vni)
        files = self.files
        files.run_dir.mkdir(parents=True, exist_ok=True)
        files.run_dir.chmod(0o755)
        _write(files.leases, lease_file(self.network, leases.values(), self._clock()))
        _write(files.hosts, hosts_file(self.network, reservations.values()))
        _write(files.script, script_file(self._python, vni, self._zookeeper_hosts, files.recorded), mode=0o755)
        files.recorded.mkdir(mode=0o700, exist_ok=True)
        for stale in files.recorded.iterdir():
            stale.unlink()
        for lease in leases.values():
            (files.recorded / recorded_name(lease.mac)).write_bytes(encode(lease.to_json()))
        if files.log.exists():
            os.replace(files.log, files.log.with_name(f"{files.log.name}.1"))
        self._prepared = True

    def _spawn(self) -> None:
        """Start dnsmasq and wait for its pid file: written once its sockets are open."""
        self._stop_leftover()
        self.files.pid.unlink(missing_ok=True)
        with open(self.files.log, "ab") as output:
            process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._process = process
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                said = _last_line(self.files.log)
                raise DhcpError(f"dnsmasq {describe_exit(process.returncode)} at start: {said}")
            try:
                if int(self.files.pid.read_text().strip() or 0) == process.pid:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        raise DhcpError(f"dnsmasq (PID {process.pid}) wrote no pid file within {START_TIMEOUT:g}s")

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._remove_pid_file(process.pid)

    def _remove_pid_file(self, pid: int) -> None:
        """Remove the pid file if it names `pid` (dnsmasq leaves it behind; another server of the run
        directory may have written its own since)."""
        try:
            if int(self.files.pid.read_text().strip()) == pid:
                self.files.pid.unlink()
        except (OSError, ValueError):
            pass

    def _stop_leftover(self) -> None:
        """Stop a dnsmasq of this run directory that an earlier pvcd left behind (found by its pid file)."""
        own = self._process.pid if self._process is not None else None
        stop_leftover(self.files, f"network {self.network.vni}", own)


def stop_leftover(files: DhcpFiles, what: str, own: int | None = None) -> None:
    """Stop the dnsmasq that `files`' pid file names, if it is one of this run directory and not `own`."""
    try:
        pid = int(files.pid.read_text().strip())
    except (OSError, ValueError):
        return
    if pid == own:
        return
    if f"--dhcp-leasefile={files.leases}" in pid_cmdline(pid):
        log.warning("Stopping dnsmasq PID %d left behind for %s", pid, what)
        try:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while pid_cmdline(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if pid_cmdline(pid):
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        if int(files.pid.read_text().strip()) == pid:
            files.pid.unlink()
    except (OSError, ValueError):
        pass


def stop_leftovers(root: Path) -> None:
    """Stop every dnsmasq an earlier pvcd left running in the run directories under `root` (one per VNI)."""
    try:
        run_dirs = sorted(path for path in root.iterdir() if path.is_dir())
    except OSError:
        return
    for run_dir in run_dirs:
        stop_leftover(DhcpFiles(run_dir), f"network {run_dir.name}")
