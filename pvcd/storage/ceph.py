"""Ceph pools, RBD volumes, snapshots, locks and the OSD blocklist, through the `ceph`, `rbd` and `rados` commands.

Why commands and not the Python bindings (`rados`, `rbd`): the bindings are
Debian's `python3-rados`/`python3-rbd`, built for Debian's interpreter only,
and pvcd runs in a venv that does not see the system site-packages; and the
bindings' calls can block forever (removing an image whose lock a live
client holds, any call while the mon does not answer) with no way to give up
from Python short of abandoning a thread that keeps its Ceph connection. A
command runs in a process of its own: it gets a deadline, and on expiry its
whole process group is killed, which always frees the caller. The cost is a
process start (~0.3 s for `ceph`, a tenth of that for `rbd` and `rados`) per call, which is fine for
operator commands and a periodic refresh.

Every call has a timeout: the subprocess's (killed on expiry), plus
`--connect-timeout` for `ceph` and `--client_mount_timeout` /
`--rados_mon_op_timeout` for both, so that a mon that does not answer makes
the tool itself give up first with its own message. Failures raise
`CephError` with one line: the command and what went wrong (Ceph's own error
line, or "no answer from Ceph within Ns").

What each JSON answer means is parsed by `pvcd.storage.values` (pure, tested
against recorded answers); bad names and sizes are refused there before any
command runs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pvcd.storage import values
from pvcd.storage.values import (
    BlocklistEntry,
    ClusterStatus,
    ClusterUsage,
    Lock,
    Osd,
    Pool,
    Snapshot,
    Volume,
    VolumeInfo,
    Watcher,
)

DEFAULT_TIMEOUT = 10.0
"""Seconds for one command when the caller gives none."""
BLOCKLIST_DEFAULT_SECONDS = 3600
"""How long a blocklist entry lasts unless the caller says (Ceph's own default is one hour too)."""
VALUE_OPTIONS = frozenset({"--size", "--format", "--io-type", "--io-size", "--io-total"})
"""Options whose value does not help say which command failed (sizes, formats)."""
NO_ANSWER = ("timed out", "ETIMEDOUT", "couldn't connect", "error connecting")
"""What the tools say when their own connect or mon timeout expired first."""
LOG_PREFIX = re.compile(r"\d{4}-\d\d-\d\dT\S+ [0-9a-f]+ +-?\d+ ")
"""The prefix of a Ceph library log line on stderr (`2026-11-27T12:08:23.104+0000 7efd... -1 msg`)."""


T = TypeVar("T")


class CephError(Exception):
    """A Ceph command failed, timed out, or answered something we could not read; one line."""


def _describe(tool: str, args: Sequence[str]) -> str:
    """The command for an error line: the tool and its words (`rbd create vms/disk1`), without
    the options whose values are only sizes and formats."""
    words = [tool]
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = arg in VALUE_OPTIONS
        else:
            words.append(arg)
    return " ".join(words[:6])


def _error_line(stderr: str, returncode: int) -> str:
    """The line of a failed command's stderr that says why: the tool's own `rbd: ...` or
    `Error EXXX: ...` line, else the last message, without Ceph's log prefix.

    The tool and its library write to stderr independently, so a library log line can begin in
    the middle of the tool's own line (`rbd: create error: <log line>` then `(17) File exists`):
    each line is cut where a log prefix begins, and the first words of the next line that does
    not begin with a prefix are joined back to the tool's cut line."""
    tool_lines: list[str] = []
    messages: list[str] = []
    cut = False
    for line in stderr.splitlines():
        own, *logged = LOG_PREFIX.split(line)
        if own.strip():
            if cut:
                tool_lines[-1] = f"{tool_lines[-1]} {own.strip()}"
            else:
                tool_lines.append(own.strip())
        cut = bool(logged) and (cut or bool(own.strip())) and bool(tool_lines)
        messages += [message.strip() for message in logged if message.strip()]
    for line in reversed(tool_lines):
        if line.startswith(("rbd: ", "Error ", "error ")):
            return line
    remaining = tool_lines + messages
    return remaining[-1] if remaining else f"exited with status {returncode}"


def run_bounded(command: Sequence[str], what: str, seconds: float) -> tuple[int, str, str]:
    """Run `command` in a session of its own and return (status, stdout, stderr); CephError when it
    cannot start or outlives `seconds` — then its whole process group is killed (and reaped), so
    nothing keeps holding a Ceph connection behind the caller's back."""
    try:
        process = subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    except OSError as exc:
        raise CephError(f"{what}: cannot run {command[0]}: {exc.strerror}") from None
    try:
        stdout, stderr = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.communicate()
        raise CephError(f"{what}: no answer from Ceph within {seconds:g}s") from None
    return process.returncode, stdout, stderr


@dataclass(frozen=True)
class Ceph:
    """A Ceph cluster as one client identity sees it: `ceph.conf`, keyring and id come from the
    caller (pvcd's configuration, or a test cluster's `client_args`)."""

    conf: Path | str | None = None
    keyring: Path | str | None = None
    client_id: str | None = None
    timeout: float = DEFAULT_TIMEOUT

    def _client_args(self, timeout: float) -> list[str]:
        args = []
        if self.conf is not None:
            args += ["--conf", str(self.conf)]
        if self.keyring is not None:
            args += ["--keyring", str(self.keyring)]
        if self.client_id is not None:
            args += ["--id", self.client_id]
        seconds = str(max(1, int(timeout)))
        return [*args, "--client_mount_timeout", seconds, "--rados_mon_op_timeout", seconds]

    def run(self, tool: str, args: Sequence[str], timeout: float | None = None) -> str:
        """Run `tool` (`ceph`, `rbd` or `rados`) with `args` and return its stdout; CephError otherwise.

        The tool runs in a session of its own, so that on expiry the whole process group is
        killed (and reaped) and nothing keeps holding a Ceph connection behind our back."""
        seconds = self.timeout if timeout is None else timeout
        command = [tool, *self._client_args(seconds)]
        if tool == "ceph":
            command += ["--connect-timeout", str(max(1, int(seconds)))]
        command += list(args)
        what = _describe(tool, args)
        returncode, stdout, stderr = run_bounded(command, what, seconds)
        if returncode != 0:
            reason = _error_line(stderr, returncode)
            if any(sign in reason for sign in NO_ANSWER):
                reason = f"no answer from Ceph within {seconds:g}s ({reason})"
            raise CephError(f"{what}: {reason}")
        return stdout

    def _json(self, tool: str, args: Sequence[str], timeout: float | None = None) -> str:
        return self.run(tool, [*args, "--format", "json"], timeout)

    # --- cluster ------------------------------------------------------------------------------

    def status(self) -> ClusterStatus:
        """Health, OSD counts and raw usage (`ceph status`)."""
        return _parsed(values.parse_status, self._json("ceph", ["status"]))

    def usage(self) -> ClusterUsage:
        """Raw capacity and every pool's usage (`ceph df`)."""
        return _parsed(values.parse_df, self._json("ceph", ["df"]))

    def osds(self) -> tuple[Osd, ...]:
        """Every OSD, up/down, in/out, with its usage (`ceph osd df`)."""
        return _parsed(values.parse_osd_df, self._json("ceph", ["osd", "df"]))

    # --- pools --------------------------------------------------------------------------------

    def pools(self) -> tuple[Pool, ...]:
        """Every pool with its size, placement groups and usage."""
        settings = _parsed(values.parse_pool_details, self._json("ceph", ["osd", "pool", "ls", "detail"]))
        return values.join_pools(settings, self.usage())

    def pool_names(self) -> tuple[str, ...]:
        """The names of every pool: `rados lspools`, a tenth of the time `ceph osd pool ls` takes
        (no Python interpreter to start), for the checks that only need a name."""
        return values.parse_pool_names(self.run("rados", ["lspools"]))

    def pool(self, name: str) -> Pool:
        """One pool; CephError when there is no such pool."""
        _valid(values.validate_name, "pool", name)
        for pool in self.pools():
            if pool.name == name:
                return pool
        raise CephError(f"no pool {name!r}")

    def create_pool(self, name: str, pgs: int, size: int = 3) -> None:
        """A replicated pool of `pgs` placement groups and `size` copies, initialised for RBD.

        A size of one needs `--yes-i-really-mean-it` (and `mon allow pool size one`): that is
        what a one-node test cluster has."""
        _valid(values.validate_name, "pool", name)
        if not isinstance(pgs, int) or isinstance(pgs, bool) or not 1 <= pgs <= 32768:
            raise CephError(f"invalid placement group count {pgs!r}: use 1 to 32768")
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= 10:
            raise CephError(f"invalid pool size {size!r}: use 1 to 10 copies")
        if name in self.pool_names():
            raise CephError(f"pool {name!r} already exists")
        self.run("ceph", ["osd", "pool", "create", name, str(pgs), str(pgs), "replicated"])
        size_args = ["osd", "pool", "set", name, "size", str(size)]
        self.run("ceph", [*size_args, "--yes-i-really-mean-it"] if size == 1 else size_args)
        self.run("rbd", ["pool", "init", name])

    def remove_pool(self, name: str) -> None:
        """Remove a pool and everything in it (the cluster must allow it: `mon allow pool delete`)."""
        _valid(values.validate_name, "pool", name)
        if name not in self.pool_names():
            raise CephError(f"no pool {name!r}")
        self.run("ceph", ["osd", "pool", "rm", name, name, "--yes-i-really-really-mean-it"])

    # --- volumes ------------------------------------------------------------------------------

    def volumes(self, pool: str) -> tuple[Volume, ...]:
        """The pool's volumes with their size and usage (`rbd ls -l` and `rbd du`)."""
        _valid(values.validate_name, "pool", pool)
        ls_text = self._json("rbd", ["ls", "-l", "--pool", pool])
        du_text = self._json("rbd", ["du", "--pool", pool])
        return _parsed(values.parse_volume_list, pool, ls_text, du_text)

    def volume_info(self, pool: str, volume: str) -> VolumeInfo:
        return _parsed(values.parse_volume_info, self._json("rbd", ["info", _spec(pool, volume)]))

    def create_volume(self, pool: str, volume: str, size: str | int) -> None:
        """A volume of `size` (bytes, or `10G` and the like)."""
        spec = _spec(pool, volume)
        size_bytes = _valid(values.parse_size, size)
        self.run("rbd", ["create", "--size", f"{size_bytes}B", "--no-progress", spec])

    def resize_volume(self, pool: str, volume: str, size: str | int, allow_shrink: bool = False) -> None:
        """Grow a volume, or shrink it only with `allow_shrink`: shrinking destroys the data past the end."""
        spec = _spec(pool, volume)
        size_bytes = _valid(values.parse_size, size)
        current = self.volume_info(pool, volume).size_bytes
        if size_bytes < current and not allow_shrink:
            raise CephError(
                f"refusing to shrink {spec} from {current} to {size_bytes} bytes without allow_shrink (--force)"
            )
        args = ["resize", "--size", f"{size_bytes}B", "--no-progress", spec]
        self.run("rbd", [*args, "--allow-shrink"] if size_bytes < current else args)

    def rename_volume(self, pool: str, volume: str, new_name: str) -> None:
        self.run("rbd", ["rename", _spec(pool, volume), _spec(pool, new_name)])

    def clone_volume(
        self, pool: str, volume: str, snapshot: str, new_pool: str, new_name: str, flatten: bool = False
    ) -> None:
        """A copy-on-write clone of `volume@snapshot` as `new_pool/new_name`.

        The snapshot is protected first (format-1 clones require it, and a protected snapshot cannot be
        removed from under its clones); `flatten` copies the parent's data so the clone stands alone."""
        source = _snap_spec(pool, volume, snapshot)
        target = _spec(new_pool, new_name)
        if not any(snap.name == snapshot and snap.protected for snap in self.snapshots(pool, volume)):
            self.run("rbd", ["snap", "protect", source])
        self.run("rbd", ["clone", source, target])
        if flatten:
            self.run("rbd", ["flatten", "--no-progress", target])

    def watchers(self, pool: str, volume: str) -> tuple[Watcher, ...]:
        """The clients that have the volume open (`rbd status`)."""
        return _parsed(values.parse_watchers, self._json("rbd", ["status", _spec(pool, volume)]))

    def remove_volume(self, pool: str, volume: str) -> None:
        """Remove a volume that no client has open; its snapshots go with it.

        Refused while a client has it open: `rbd rm` then hangs forever on the holder's lock."""
        spec = _spec(pool, volume)
        info = self.volume_info(pool, volume)
        watchers = self.watchers(pool, volume)
        if watchers:
            addresses = ", ".join(watcher.address for watcher in watchers)
            raise CephError(f"volume {spec} is in use by {len(watchers)} client(s): {addresses}")
        if info.snapshot_count:
            for snap in self.snapshots(pool, volume):
                if snap.protected:
                    self.run("rbd", ["snap", "unprotect", _snap_spec(pool, volume, snap.name)])
            self.run("rbd", ["snap", "purge", "--no-progress", spec])
        self.run("rbd", ["rm", "--no-progress", spec])

    # --- snapshots ----------------------------------------------------------------------------

    def snapshots(self, pool: str, volume: str) -> tuple[Snapshot, ...]:
        return _parsed(values.parse_snapshots, self._json("rbd", ["snap", "ls", _spec(pool, volume)]))

    def create_snapshot(self, pool: str, volume: str, snapshot: str) -> None:
        self.run("rbd", ["snap", "create", "--no-progress", _snap_spec(pool, volume, snapshot)])

    def rollback_snapshot(self, pool: str, volume: str, snapshot: str) -> None:
        """Put the volume's data back as it was at the snapshot (the volume should not be in use)."""
        self.run("rbd", ["snap", "rollback", "--no-progress", _snap_spec(pool, volume, snapshot)])

    def remove_snapshot(self, pool: str, volume: str, snapshot: str) -> None:
        """Remove a snapshot, unprotecting it first; refused by Ceph while clones still depend on it."""
        spec = _snap_spec(pool, volume, snapshot)
        if any(snap.name == snapshot and snap.protected for snap in self.snapshots(pool, volume)):
            self.run("rbd", ["snap", "unprotect", spec])
        self.run("rbd", ["snap", "rm", "--no-progress", spec])

    # --- locks and the blocklist --------------------------------------------------------------

    def locks(self, pool: str, volume: str) -> tuple[Lock, ...]:
        """Who holds a lock on the volume: holder, cookie and the holder's address."""
        return _parsed(values.parse_locks, self._json("rbd", ["lock", "ls", _spec(pool, volume)]))

    def break_lock(self, pool: str, volume: str, lock: Lock) -> None:
        """Remove another client's lock. Ceph also blocklists the holder's address for an hour
        (`rbd_blocklist_on_break_lock`), so never break a lock this process itself holds."""
        _valid(values.validate_locker, lock.locker)
        self.run("rbd", ["lock", "rm", _spec(pool, volume), lock.cookie, lock.locker])

    def blocklist(self) -> tuple[BlocklistEntry, ...]:
        return _parsed(values.parse_blocklist, self._json("ceph", ["osd", "blocklist", "ls"]))

    def blocklist_add(self, address: str, seconds: int = BLOCKLIST_DEFAULT_SECONDS) -> None:
        """Cut a client address off the OSDs for `seconds`: its next write fails."""
        _valid(values.validate_address, address)
        if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds <= 0:
            raise CephError(f"invalid blocklist duration {seconds!r}: use a whole number of seconds above 0")
        self.run("ceph", ["osd", "blocklist", "add", address, str(seconds)])

    def blocklist_remove(self, address: str) -> None:
        _valid(values.validate_address, address)
        self.run("ceph", ["osd", "blocklist", "rm", address])


def _valid(check: Callable[..., T], *args: Any) -> T:
    """Run a validation of `pvcd.storage.values`, its ValueError becoming a CephError (one line)."""
    try:
        return check(*args)
    except ValueError as exc:
        raise CephError(str(exc)) from None


def _parsed(parser: Callable[..., T], *texts: str) -> T:
    """Parse a command's answer, a surprising answer becoming a CephError (one line)."""
    try:
        return parser(*texts)
    except ValueError as exc:
        raise CephError(str(exc)) from None


def _spec(pool: str, volume: str) -> str:
    """`pool/volume`, after checking both names (so nothing odd reaches a command line)."""
    return f"{_valid(values.validate_name, 'pool', pool)}/{_valid(values.validate_name, 'volume', volume)}"


def _snap_spec(pool: str, volume: str, snapshot: str) -> str:
    return f"{_spec(pool, volume)}@{_valid(values.validate_name, 'snapshot', snapshot)}"
