"""The DNS aggregator: PowerDNS on the primary, answering from PostgreSQL rows pvcd keeps in step.

Two parts, both used only on the primary coordinator:

- `DnsAggregator` owns the rows: it creates PowerDNS's gpgsql schema when the
  database has none, and writes what `pvcd.network.dns_records.diff` says in
  one transaction per change, SOA serials included, so PowerDNS (which reads
  the database on every query) never answers from half a change. It touches
  only the zones it created (`domains.account = 'pvcd'`): an operator's own
  zones in the same database are left alone.
- `PdnsServer` runs `pdns_server` with the gpgsql backend on that database,
  bound to the upstream floating IP; it is a primary-only service (see
  `pvcd.coordinator.services`) with a `check` that restarts it if it died.

Every database call is bounded: libpq's connect timeout, PostgreSQL's
statement and lock timeouts, and TCP keepalives and a user timeout so a
database that stops answering mid-query cannot hang the caller (the
coordinator loop must keep renewing its lease).
"""

from __future__ import annotations

import logging
import math
import os
import pwd
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import dns.exception
import dns.message
import dns.query
import psycopg2
import psycopg2.extras

from pvcd.config import DnsDatabase
from pvcd.network.dns_records import Diff, Record, StoredZone, Zone, diff
from pvcd.processes import describe_exit, pid_alive, pid_cmdline, stop_pid

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_FILE = Path("/usr/share/pdns-backend-pgsql/schema/schema.pgsql.sql")
"""PowerDNS 4.7's gpgsql schema, from Debian's pdns-backend-pgsql package."""
SCHEMA_UPGRADE_FILE = Path("/usr/share/pdns-backend-pgsql/schema/4.3.0_to_4.7.0_schema.pgsql.sql")
ACCOUNT = "pvcd"
"""`domains.account` of the zones pvcd owns; the only zones it changes or removes."""
ZONE_TYPE = "NATIVE"
"""No replication: the one PowerDNS on the primary reads the database directly."""
LOCK_KEY = 0x70766364_646E73
"""A PostgreSQL advisory lock ("pvcddns"): an old and a new primary overlapping in a handover write one at a time."""
DEFAULT_DB_TIMEOUT = 5.0
"""Seconds for one connection attempt and one statement."""

PDNS_SERVER = "pdns_server"
PDNS_USER = "pdns"
"""The system user of Debian's pdns-server package; PowerDNS drops root for it after binding port 53."""
DEFAULT_START_TIMEOUT = 5.0
STOP_TIMEOUT = 5.0
PROBE_TIMEOUT = 0.3


class DnsError(Exception):
    """The aggregator could not do its job; the message is one line an operator can act on."""


class DnsSchemaError(DnsError):
    """The database holds a PowerDNS schema this PowerDNS cannot use."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def connect(database: DnsDatabase, timeout: float = DEFAULT_DB_TIMEOUT) -> Any:
    """A psycopg2 connection whose every wait is bounded by about `timeout` seconds.

    libpq's connect_timeout takes whole seconds (at least 2); statement_timeout
    and lock_timeout bound work on the server; keepalives and tcp_user_timeout
    bound a server or network that goes silent, which no server-side timeout
    can. The caller closes the connection."""
    millis = max(1, int(timeout * 1000))
    try:
        return psycopg2.connect(
            host=database.host,
            port=database.port,
            dbname=database.name,
            user=database.user,
            password=database.password,
            connect_timeout=max(2, math.ceil(timeout)),
            options=(
                f"-c statement_timeout={millis} -c lock_timeout={millis} "
                f"-c idle_in_transaction_session_timeout={millis * 2}"
            ),
            keepalives=1,
            keepalives_idle=max(1, math.ceil(timeout)),
            keepalives_interval=1,
            keepalives_count=3,
            tcp_user_timeout=millis,
            application_name="pvcd-dns",
        )
    except psycopg2.Error as exc:
        raise DnsError(
            f"cannot connect to the DNS database {database.name} on {database.host}:{database.port}: {_one_line(exc)}"
        ) from exc


class DnsAggregator:
    """The zones pvcd owns in PowerDNS's database: schema, reading, and writing changes."""

    def __init__(
        self, database: DnsDatabase, timeout: float = DEFAULT_DB_TIMEOUT, schema_file: Path = SCHEMA_FILE
    ) -> None:
        self.database = database
        self.timeout = timeout
        self.schema_file = schema_file

    def _transaction(self, work: Callable[[Any], T], what: str) -> T:
        """Run `work(cursor)` in one transaction under the advisory lock; DnsError names `what` on failure."""
        connection = connect(self.database, self.timeout)
        try:
            with connection, connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
                return work(cursor)
        except psycopg2.Error as exc:
            raise DnsError(f"{what} failed in {self.database.name} on {self.database.host}: {_one_line(exc)}") from exc
        finally:
            connection.close()

    def ensure_schema(self) -> bool:
        """Create PowerDNS's tables if the database has none; True if it did.

        Checked and created in one locked transaction, so two nodes starting
        at once cannot both create it. A schema from before PowerDNS 4.7 (no
        `domains.catalog`) is refused with the upgrade script to apply: pvcd
        does not migrate an operator's database."""

        def work(cursor: Any) -> bool:
            cursor.execute("SELECT to_regclass('domains') IS NOT NULL")
            if cursor.fetchone()[0]:
                cursor.execute(
                    "SELECT 1 FROM information_schema.columns "
                    "WHERE table_name = 'domains' AND column_name = 'catalog' AND table_schema = current_schema()"
                )
                if cursor.fetchone() is None:
                    raise DnsSchemaError(
                        f"the DNS database {self.database.name} has a PowerDNS schema older than 4.7 "
                        f"(domains has no catalog column): apply {SCHEMA_UPGRADE_FILE}"
                    )
                return False
            try:
                schema = self.schema_file.read_text()
            except OSError as exc:
                raise DnsError(
                    f"cannot read PowerDNS's schema {self.schema_file} (package pdns-backend-pgsql): {exc}"
                ) from exc
            cursor.execute(schema)
            return True

        created = self._transaction(work, "creating the PowerDNS schema")
        if created:
            log.info("Created the PowerDNS schema in %s from %s", self.database.name, self.schema_file)
        return created

    @staticmethod
    def _read(cursor: Any) -> tuple[dict[str, StoredZone], dict[str, int], dict[tuple[str, Record], list[int]]]:
        """pvcd's zones as stored, their ids, and the row ids of each stored record."""
        cursor.execute(
            "SELECT d.id, d.name, r.id, COALESCE(r.name, ''), COALESCE(r.type, ''), COALESCE(r.content, ''), "
            "COALESCE(r.ttl, 0) FROM domains d LEFT JOIN records r ON r.domain_id = d.id WHERE d.account = %s",
            (ACCOUNT,),
        )
        ids: dict[str, int] = {}
        records: dict[str, set[Record]] = defaultdict(set)
        rows: dict[tuple[str, Record], list[int]] = defaultdict(list)
        for domain_id, zone, row_id, name, kind, content, ttl in cursor.fetchall():
            ids[zone] = domain_id
            if row_id is None:
                continue
            record = Record(name, kind, content, ttl)
            records[zone].add(record)
            rows[(zone, record)].append(row_id)
        stored = {zone: StoredZone(zone, frozenset(records[zone])) for zone in ids}
        return stored, ids, rows

    def stored(self) -> dict[str, StoredZone]:
        """The zones pvcd owns, as the database holds them now."""
        return self._transaction(lambda cursor: self._read(cursor)[0], "reading the DNS zones")

    def sync(self, desired: Mapping[str, Zone], now: float | None = None) -> Diff:
        """Make pvcd's zones what `desired` says, in one transaction; the diff it applied (empty if none was needed).

        The stored rows are read inside the same locked transaction as the
        writes, so the diff is computed against what is really there. A
        desired zone that exists under another account is an operator's: it
        is left alone and logged, the other zones are still written."""
        moment = time.time() if now is None else now

        def work(cursor: Any) -> Diff:
            cursor.execute(
                "SELECT name, account FROM domains WHERE name = ANY(%s) AND account IS DISTINCT FROM %s",
                (list(desired), ACCOUNT),
            )
            foreign = {name: account for name, account in cursor.fetchall()}
            for name, account in sorted(foreign.items()):
                log.warning("DNS zone %s belongs to account %r, not pvcd: left alone", name, account)
            wanted = {name: zone for name, zone in desired.items() if name not in foreign}
            stored, ids, rows = self._read(cursor)
            change = diff(stored, wanted, moment)
            if change.empty:
                return change
            for name in change.remove:
                cursor.execute("DELETE FROM domains WHERE name = %s AND account = %s", (name, ACCOUNT))
            for name in change.create:
                cursor.execute(
                    "INSERT INTO domains (name, type, account) VALUES (%s, %s, %s) RETURNING id",
                    (name, ZONE_TYPE, ACCOUNT),
                )
                ids[name] = cursor.fetchone()[0]
            for zone_change in change.changes:
                doomed = [row for record in zone_change.delete for row in rows[(zone_change.zone, record)]]
                if doomed:
                    cursor.execute("DELETE FROM records WHERE id = ANY(%s)", (doomed,))
                psycopg2.extras.execute_values(
                    cursor,
                    "INSERT INTO records (domain_id, name, type, content, ttl, prio, disabled, auth) VALUES %s",
                    [
                        (ids[zone_change.zone], record.name, record.type, record.content, record.ttl, 0, False, True)
                        for record in zone_change.insert
                    ],
                )
            return change

        applied = self._transaction(work, "writing the DNS records")
        if not applied.empty:
            log.info(
                "DNS records written: zones added %s, removed %s, changed %s",
                list(applied.create),
                list(applied.remove),
                {change.zone: change.serial for change in applied.changes},
            )
        return applied


def _conninfo_quote(value: str) -> str:
    """A libpq connection-string value, quoted so spaces and quotes survive."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _pgpass_escape(value: str) -> str:
    """A field of a libpq password file: ':' and '\\' escaped."""
    return value.replace("\\", "\\\\").replace(":", "\\:")


def _write_private(path: Path, text: str, owner: pwd.struct_passwd | None) -> None:
    """Write `text` to a file only its owner can read, whatever mode a previous file had."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(descriptor, 0o600)
        if owner is not None:
            os.fchown(descriptor, owner.pw_uid, owner.pw_gid)
        os.write(descriptor, text.encode())
    finally:
        os.close(descriptor)


def _default_user() -> str | None:
    """`pdns` when we are root and it exists, so PowerDNS does not answer the network as root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(PDNS_USER)
    except KeyError:
        return None
    return PDNS_USER


class PdnsServer:
    """`pdns_server` with the gpgsql backend, run by pvcd on the primary (a primary-only service).

    Everything is in `run_dir`: `pdns.conf` (mode 0600, read by PowerDNS
    while still root), the database password in a libpq password file
    `pgpass` (mode 0600, owned by the user PowerDNS drops to, since the
    backend connects after dropping root), the control socket, the log and
    the PID file. The password is never on a command line, and goes through
    a password file rather than `gpgsql-password` because PowerDNS's config
    parser strips surrounding blanks and anything after " #" from values.

    The zone cache is off (`zone-cache-refresh-interval=0`, or zones created
    by SQL answer REFUSED until the next refresh) and so are the packet and
    query caches: a lease's name must resolve as soon as its transaction
    commits. PowerDNS exits if the database is unreachable when it starts;
    `check` restarts it.

    The run directory's parents must be traversable by PowerDNS's user
    (`/run/pvc` is; a directory under /tmp/pytest-of-root is not)."""

    name = "dns-aggregator"

    def __init__(
        self,
        database: DnsDatabase,
        run_dir: Path,
        address: str,
        port: int = 53,
        binary: str = PDNS_SERVER,
        user: str | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        self.database = database
        self.run_dir = run_dir
        self.address = address
        self.port = port
        self.binary = binary
        self.user = user if user is not None else _default_user()
        self.start_timeout = start_timeout
        self.restarts = 0
        """PowerDNS restarts by `check` since `start`."""
        self.problem: str | None = None
        """The last failure of this term (cleared by `start`): what the cluster status shows."""
        self._process: subprocess.Popen[bytes] | None = None
        self._wanted = False
        self._lock = threading.Lock()

    @property
    def config_path(self) -> Path:
        return self.run_dir / "pdns.conf"

    @property
    def passfile(self) -> Path:
        return self.run_dir / "pgpass"

    @property
    def socket_dir(self) -> Path:
        return self.run_dir / "socket"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "pdns.log"

    @property
    def pid_path(self) -> Path:
        return self.run_dir / "pdns_server.pid"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def config_text(self) -> str:
        """pdns.conf as written: every setting PowerDNS uses, none of them secret."""
        settings = {
            "launch": "gpgsql",
            "gpgsql-host": self.database.host,
            "gpgsql-port": str(self.database.port),
            "gpgsql-dbname": self.database.name,
            "gpgsql-user": self.database.user,
            "gpgsql-extra-connection-parameters": f"passfile={_conninfo_quote(str(self.passfile))}",
            "gpgsql-dnssec": "no",
            "local-address": self.address,
            "local-port": str(self.port),
            "zone-cache-refresh-interval": "0",
            "cache-ttl": "0",
            "query-cache-ttl": "0",
            "negquery-cache-ttl": "0",
            "security-poll-suffix": "",
            "daemon": "no",
            "guardian": "no",
            "write-pid": "no",
            "socket-dir": str(self.socket_dir),
            "disable-syslog": "yes",
            "log-timestamp": "yes",
            "version-string": "anonymous",
        }
        if self.user is not None:
            settings["setuid"] = self.user
            settings["setgid"] = self.user
        return "".join(f"{key}={value}\n" for key, value in settings.items())

    def _write_files(self) -> None:
        password = self.database.password
        if any(character in password for character in "\r\n\0"):
            raise DnsError("the DNS database password contains a line break or NUL, which no libpq password file holds")
        owner = pwd.getpwnam(self.user) if self.user is not None else None
        # Traversable (not listable) by PowerDNS's user, which reads the password file after dropping root.
        self.run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o711)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        _write_private(self.config_path, self.config_text(), None)
        _write_private(self.passfile, f"*:*:*:*:{_pgpass_escape(password)}\n", owner)

    def _stop_leftover(self) -> None:
        """Stop a PowerDNS of this run directory that an earlier pvcd started and did not stop (it crashed)."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return
        command = pid_cmdline(pid)
        ours = bool(command) and command[0].endswith(PDNS_SERVER) and f"--config-dir={self.run_dir}" in command
        if pid_alive(pid) and ours:
            log.warning("Stopping PowerDNS (PID %d) left behind by an earlier pvcd", pid)
            stop_pid(pid, timeout=STOP_TIMEOUT)
        self.pid_path.unlink(missing_ok=True)

    def _probe(self) -> bool:
        """True when something answers DNS on our address and port (REFUSED for "." is an answer)."""
        try:
            dns.query.udp(dns.message.make_query(".", "SOA"), self.address, timeout=PROBE_TIMEOUT, port=self.port)
        except (dns.exception.DNSException, OSError):
            return False
        return True

    def _last_log_line(self) -> str:
        """PowerDNS's last message: the last line that starts one (libpq's hints continue it indented)."""
        try:
            lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if line[:1].strip()]
        except OSError:
            return "no log"
        return lines[-1] if lines else "empty log"

    def _start(self) -> None:
        """Spawn PowerDNS and wait until it answers; DnsError with its last log line if it exits or stays silent."""
        if self._process is not None and self._process.poll() is None:
            return
        self._stop_leftover()
        self._write_files()
        with open(self.log_path, "ab") as log_file:
            self._process = subprocess.Popen(
                [self.binary, f"--config-dir={self.run_dir}"],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.run_dir,
            )
        self.pid_path.write_text(f"{self._process.pid}\n")
        deadline = time.monotonic() + self.start_timeout
        while True:
            status = self._process.poll()
            if status is not None:
                raise DnsError(f"pdns_server {describe_exit(status)}: {self._last_log_line()}")
            if self._probe():
                log.info("PowerDNS (PID %d) answers on %s port %d", self._process.pid, self.address, self.port)
                return
            if time.monotonic() > deadline:
                self._stop()
                raise DnsError(
                    f"pdns_server did not answer on {self.address} port {self.port} within {self.start_timeout}s "
                    f"(log {self.log_path})"
                )
            time.sleep(0.05)

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT)
        if process is not None:
            self._forget_pid(process.pid)

    def _forget_pid(self, pid: int) -> None:
        """Remove the PID file if it is still this process's (a successor may have written its own)."""
        try:
            if int(self.pid_path.read_text().strip()) == pid:
                self.pid_path.unlink()
        except (OSError, ValueError):
            pass

    def start(self) -> None:
        """Serve DNS: start PowerDNS and wait until it answers.

        Raises nothing when PowerDNS will not start (its database down, the
        address not there yet): the reason goes to `problem` and `check` tries
        again. Raising would keep the service registry from calling `stop` at
        relinquish, and a later successful `check` would leave PowerDNS
        answering on a secondary."""
        with self._lock:
            self._wanted = True
            self.problem = None
            self.restarts = 0
            try:
                self._start()
            except (DnsError, OSError) as exc:
                self.problem = f"DNS aggregator (PowerDNS) did not start: {exc}"
                log.error("%s; retried at the next check", self.problem)

    def stop(self) -> None:
        """Stop PowerDNS by its PID (SIGTERM, SIGKILL after a few seconds); no restart until the next `start`."""
        with self._lock:
            self._wanted = False
            self._stop()
            self._stop_leftover()

    def running(self) -> bool:
        with self._lock:
            return self._process is not None and self._process.poll() is None

    def check(self) -> str | None:
        """Start PowerDNS again if it should run and does not; the problem in one line, or None if all was well.

        For the coordinator's periodic loop, which shows the problem in the
        cluster status; a failed restart is tried again at the next check."""
        with self._lock:
            if not self._wanted or (self._process is not None and self._process.poll() is None):
                return None
            if self._process is not None and self._process.returncode is not None:
                reason = f"pdns_server {describe_exit(self._process.returncode)}: {self._last_log_line()}"
            else:
                reason = self.problem or "pdns_server was not running"
            self._process = None
            try:
                self._start()
            except (DnsError, OSError) as exc:
                outcome = f"not restarted: {exc}"
            else:
                self.restarts += 1
                outcome = f"restarted (restart {self.restarts} since this node became primary)"
            self.problem = f"DNS aggregator (PowerDNS) stopped: {reason}; {outcome}"
            log.error("%s", self.problem)
            return self.problem
