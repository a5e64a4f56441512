"""A throwaway PostgreSQL server for the DNS aggregator's tests and the local cluster.

Production clusters run PostgreSQL as a system service; the tests need one of
their own, on a free port of 127.0.0.1 and a unix socket directory of its own,
so that they neither depend on nor disturb a PostgreSQL the machine may run.
The server is Debian's `postgres` binary started straight (not through
`pg_ctl`, which forks and leaves no child to wait for): the PID we record is
the postmaster's, and stopping it by that PID is a fast shutdown.

PostgreSQL refuses to run as root, so when this process is root, `initdb` and
`postgres` run as the `postgres` system user (Debian's package creates it).
That user must be able to reach the directory: pytest's `tmp_path` lives
under /tmp/pytest-of-root, which is mode 0700, so tests put the server in a
directory of its own under /tmp (see `PostgresServer.create`).

Connections of the superuser go through the unix socket (trust, and the socket
directory is private to the server's user and root); everything else connects
over TCP with a password (scram-sha-256), as pvcd and PowerDNS do in production.
"""

from __future__ import annotations

import glob
import os
import pwd
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2
from psycopg2 import sql

from pvcd.config import DnsDatabase
from pvcd.devcluster.processes import free_port, pid_alive, stop_pid

SYSTEM_USER = "postgres"
"""The OS user the server runs as when we are root (PostgreSQL will not run as root)."""
SUPERUSER = "postgres"
"""The database superuser initdb creates; it connects through the unix socket only."""
START_TIMEOUT = 30.0
CONNECT_TIMEOUT = 2
"""Seconds; libpq rounds anything below 2 up to 2."""
# Durability buys nothing for a test database and fsync on a shared build
# machine costs seconds per test; a small footprint leaves room for the rest.
SERVER_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "shared_buffers": "16MB",
    "max_connections": "30",
    "log_min_messages": "warning",
}


def postgres_bindir() -> Path | None:
    """The directory of Debian's PostgreSQL server binaries (initdb, postgres), newest version first."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda path: int(Path(path).parent.parent.name) if Path(path).parent.parent.name.isdigit() else 0,
        reverse=True,
    )
    return Path(candidates[0]).parent if candidates else None


def postgres_available() -> bool:
    """Whether the PostgreSQL server binaries are installed (and, as root, their system user exists)."""
    if postgres_bindir() is None:
        return False
    if os.geteuid() != 0:
        return True
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        return False
    return True


@dataclass
class PostgresServer:
    """One PostgreSQL server with its own data directory, TCP port and socket directory."""

    directory: Path
    port: int
    address: str = "127.0.0.1"
    pid: int | None = None
    clients: str | None = None
    """A network (CIDR) whose hosts may also connect over TCP with a password, beyond initdb's
    loopback-only rules: the node namespaces of a network lab reach the server on the lab's bridge."""

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def socket_dir(self) -> Path:
        return self.directory / "socket"

    @property
    def log_path(self) -> Path:
        return self.directory / "postgres.log"

    @classmethod
    def create(
        cls, directory: Path, port: int | None = None, address: str = "127.0.0.1", clients: str | None = None
    ) -> PostgresServer:
        """A server in `directory`, which the `postgres` user must be able to reach when we are root.

        The directory is handed to that user: the data and socket directories
        must belong to the server's user, and initdb wants an empty one."""
        directory.mkdir(parents=True, exist_ok=True)
        server = cls(directory=directory, port=port or free_port(), address=address, clients=clients)
        server.socket_dir.mkdir(mode=0o700, exist_ok=True)
        owner = _run_as()
        if owner is not None:
            for path in (directory, server.socket_dir):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        return server

    def _initdb(self, bindir: Path) -> None:
        """Create the cluster once; a restart of the same server keeps its data (like a real outage)."""
        if (self.data_dir / "PG_VERSION").exists():
            return
        with open(self.log_path, "ab") as log:
            result = subprocess.run(
                [
                    str(bindir / "initdb"),
                    "--pgdata",
                    str(self.data_dir),
                    "--username",
                    SUPERUSER,
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.directory,
                timeout=120,
                **_user_arguments(),
            )
        if result.returncode != 0:
            raise RuntimeError(f"initdb exited with status {result.returncode}; see {self.log_path}")

    def _allow_clients(self) -> None:
        """Let `clients` connect over TCP with a password (pg_hba.conf is read at start)."""
        if self.clients is None:
            return
        hba = self.data_dir / "pg_hba.conf"
        rule = f"host all all {self.clients} scram-sha-256"
        text = hba.read_text()
        if rule not in text.splitlines():
            hba.write_text(text.rstrip("\n") + "\n" + rule + "\n")

    def start(self) -> None:
        """Start the server (creating its cluster the first time) and wait until it accepts connections."""
        if self.pid is not None and pid_alive(self.pid):
            return
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (Debian package postgresql)")
        self._initdb(bindir)
        self._allow_clients()
        settings = dict(
            SERVER_SETTINGS,
            listen_addresses=self.address,
            port=str(self.port),
            unix_socket_directories=str(self.socket_dir),
        )
        command = [str(bindir / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            command += ["-c", f"{key}={value}"]
        with open(self.log_path, "ab") as log:
            process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.directory,
                start_new_session=True,
                **_user_arguments(),
            )
        self.pid = process.pid
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                self.pid = None
                raise RuntimeError(f"PostgreSQL exited with status {process.returncode}; see {self.log_path}")
            if self.ready():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"PostgreSQL did not accept connections within {START_TIMEOUT:.0f}s; see {self.log_path}")

    def superuser_connection(self, dbname: str = "postgres") -> Any:
        """A psycopg2 connection of the superuser through the unix socket (the caller closes it)."""
        return psycopg2.connect(
            host=str(self.socket_dir),
            port=self.port,
            user=SUPERUSER,
            dbname=dbname,
            connect_timeout=CONNECT_TIMEOUT,
            application_name="pvcd-devcluster",
        )

    def ready(self) -> bool:
        """True when the superuser can connect and run a query."""
        try:
            connection = self.superuser_connection()
        except psycopg2.OperationalError:
            return False
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
                return bool(cursor.fetchone() == (1,))
        except psycopg2.Error:
            return False
        finally:
            connection.close()

    def create_database(self, name: str, user: str, password: str) -> DnsDatabase:
        """A role that logs in with `password` and a database it owns, as the DNS aggregator's
        configuration names them (the role and database are created if missing, the password is set)."""
        connection = self.superuser_connection()
        # CREATE DATABASE cannot run inside a transaction block.
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,))
                verb = "ALTER" if cursor.fetchone() else "CREATE"
                cursor.execute(
                    sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(user), sql.Literal(password))
                )
                cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cursor.fetchone() is None:
                    cursor.execute(
                        sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(user))
                    )
        finally:
            connection.close()
        return DnsDatabase(host=self.address, port=self.port, name=name, user=user, password=password)

    def stop(self, sig: int = signal.SIGINT) -> None:
        """Stop the server by its PID: SIGINT is PostgreSQL's fast shutdown (SIGTERM would wait for
        every client to disconnect, and a PowerDNS still connected would hold it up)."""
        if self.pid is not None:
            stop_pid(self.pid, sig=sig, timeout=15.0)
            self.pid = None


def _run_as() -> pwd.struct_passwd | None:
    """The system user the server runs as: `postgres` when we are root, else ourselves (None)."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwnam(SYSTEM_USER)


def _user_arguments() -> dict[str, Any]:
    """subprocess arguments that drop root for PostgreSQL's programs, which refuse to run as root."""
    owner = _run_as()
    if owner is None:
        return {}
    return {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": [], "env": _environment(owner)}


def _environment(owner: pwd.struct_passwd) -> dict[str, str]:
    """A minimal environment for the server's user: root's HOME and PG* variables are none of its business."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": owner.pw_dir,
        "USER": owner.pw_name,
        "LOGNAME": owner.pw_name,
        "LANG": "C.UTF-8",
    }
