"""A one-node Ceph cluster on 127.0.0.1 for the storage tests: one mon, one mgr, one memstore OSD.

Production clusters run Ceph as system services deployed by their own tools;
the tests need a real Ceph of their own that neither depends on nor disturbs
anything on the machine. Everything is bootstrapped offline in one directory
(cephx keys made with `ceph-authtool` and seeded into the mon's auth database
at `ceph-mon --mkfs`, the OSD's store made with `ceph-osd --mkfs
--no-mon-config`), so the only command that needs the running mon is `ceph osd
new`. The daemons run in the foreground (`-f`), so the PID we record is the
daemon's own and stopping by that PID stops it.

The recipe's gotchas (see the design brief): the mon speaks msgr v2 only
(`ms bind msgr1 = false`, a v2-only monmap); a pool of size one needs `mon
allow pool size one`; removing pools needs `mon allow pool delete`; `admin
socket` is emptied for clients so that the `ceph`/`rbd` commands do not
create sockets in the cluster's run directory. The OSD keeps its objects in
memory (memstore): fast, and gone with the cluster.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvcd.devcluster.processes import free_port, pid_alive, stop_pid

START_TIMEOUT = 60.0
"""Seconds for the whole cluster to come up: the OSD is up in ~5 s on an idle machine."""
COMMAND_TIMEOUT = 20.0
"""Seconds for one bootstrap command; Ceph commands can block forever without one."""
MEMSTORE_BYTES = 1 << 30
"""The OSD's in-memory device: what `ceph df` reports as the cluster's capacity."""
MON_ID = "a"
MGR_ID = "x"
OSD_ID = 0
DAEMONS = ("mon", "mgr", "osd")
BINARIES = ("ceph-mon", "ceph-mgr", "ceph-osd", "ceph-authtool", "monmaptool", "ceph", "rbd", "rados")


def ceph_available() -> str | None:
    """None when the Ceph daemons and tools are installed, else which one is missing."""
    for binary in BINARIES:
        if shutil.which(binary) is None:
            return binary
    return None


@dataclass
class CephCluster:
    """A one-node Ceph cluster with its own directory, mon port and daemons (by PID)."""

    directory: Path
    mon_port: int
    fsid: str
    pids: dict[str, int] = field(default_factory=dict)

    @classmethod
    def create(cls, directory: Path, mon_port: int | None = None) -> CephCluster:
        """A cluster to be started in `directory` (created), its mon on a free port unless given."""
        directory.mkdir(parents=True, exist_ok=True)
        return cls(directory=directory, mon_port=mon_port or free_port(), fsid=str(uuid.uuid4()))

    @property
    def conf(self) -> Path:
        """The cluster's ceph.conf, which clients pass with `--conf`."""
        return self.directory / "ceph.conf"

    @property
    def keyring(self) -> Path:
        """The client.admin keyring, which clients pass with `--keyring`."""
        return self.directory / "admin.keyring"

    @property
    def mon_address(self) -> str:
        return f"127.0.0.1:{self.mon_port}"

    def client_args(self) -> list[str]:
        """The arguments that point a `ceph` or `rbd` command at this cluster as client.admin."""
        return ["--conf", str(self.conf), "--keyring", str(self.keyring), "--id", "admin"]

    def log_path(self, daemon: str) -> Path:
        """Where a daemon (`mon`, `mgr`, `osd`) logs."""
        name = {"mon": f"mon.{MON_ID}", "mgr": f"mgr.{MGR_ID}", "osd": f"osd.{OSD_ID}"}[daemon]
        return self.directory / "log" / f"{name}.log"

    def _data(self, daemon: str) -> Path:
        ident = {"mon": MON_ID, "mgr": MGR_ID, "osd": str(OSD_ID)}[daemon]
        return self.directory / daemon / f"ceph-{ident}"

    def _write_config(self) -> None:
        d = self.directory
        self.conf.write_text(
            f"""[global]
fsid = {self.fsid}
mon host = [v2:{self.mon_address}]
public addr = 127.0.0.1
ms bind msgr1 = false
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon data avail warn = 2
mon data avail crit = 1
mgr initial modules = iostat
mgr stats period = 1
run dir = {d}/run
crash dir = {d}/crash
log file = {d}/log/$name.log
mon cluster log file = {d}/log/cluster.log
admin socket = {d}/run/$name.asok

[mon]
mon data = {d}/mon/ceph-$id
keyring = {d}/mon/ceph-$id/keyring

[mgr]
mgr data = {d}/mgr/ceph-$id
keyring = {d}/mgr/ceph-$id/keyring

[osd]
osd data = {d}/osd/ceph-$id
keyring = {d}/osd/ceph-$id/keyring
osd objectstore = memstore
memstore device bytes = {MEMSTORE_BYTES}

[client]
keyring = {self.keyring}
admin socket =
log file =
"""
        )

    def _tool(self, *command: str) -> str:
        """Run a bootstrap command with a timeout; RuntimeError with its last stderr line when it fails."""
        try:
            result = subprocess.run(
                list(command),
                capture_output=True,
                text=True,
                timeout=COMMAND_TIMEOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"{command[0]} {command[1]}: no answer within {COMMAND_TIMEOUT:.0f}s") from exc
        if result.returncode != 0:
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            raise RuntimeError(f"{' '.join(command[:3])}: {lines[-1] if lines else f'status {result.returncode}'}")
        return result.stdout

    def _ceph(self, *args: str, timeout: int = 10) -> str:
        return self._tool("ceph", *self.client_args(), "--connect-timeout", str(timeout), *args)

    def _bootstrap(self) -> None:
        """Keys, monmap, mon store and OSD store, all made offline."""
        for sub in (
            "run",
            "log",
            "crash",
            *(str(self._data(daemon).relative_to(self.directory)) for daemon in DAEMONS),
        ):
            (self.directory / sub).mkdir(parents=True, exist_ok=True)
        self._write_config()
        authtool = "ceph-authtool"
        mon_keyring = self.directory / "mon.keyring"
        self._tool(authtool, "--create-keyring", str(mon_keyring), "--gen-key", "-n", "mon.", "--cap", "mon", "allow *")
        self._tool(
            authtool,
            "--create-keyring",
            str(self.keyring),
            "--gen-key",
            "-n",
            "client.admin",
            *("--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mgr", "allow *"),
            *("--cap", "mds", "allow *"),
        )
        mgr_keyring = self._data("mgr") / "keyring"
        self._tool(
            authtool,
            "--create-keyring",
            str(mgr_keyring),
            "--gen-key",
            "-n",
            f"mgr.{MGR_ID}",
            *("--cap", "mon", "allow profile mgr", "--cap", "osd", "allow *", "--cap", "mds", "allow *"),
        )
        osd_keyring = self._data("osd") / "keyring"
        self._tool(
            authtool,
            "--create-keyring",
            str(osd_keyring),
            "--gen-key",
            "-n",
            f"osd.{OSD_ID}",
            *("--cap", "mon", "allow profile osd", "--cap", "osd", "allow *", "--cap", "mgr", "allow profile osd"),
        )
        for keyring in (self.keyring, mgr_keyring, osd_keyring):
            self._tool(authtool, str(mon_keyring), "--import-keyring", str(keyring))
        monmap = self.directory / "monmap"
        self._tool(
            "monmaptool", "--create", "--fsid", self.fsid, "--addv", MON_ID, f"[v2:{self.mon_address}]", str(monmap)
        )
        conf = str(self.conf)
        self._tool(
            "ceph-mon", "-c", conf, "--mkfs", "-i", MON_ID, "--monmap", str(monmap), "--keyring", str(mon_keyring)
        )
        osd_uuid = str(uuid.uuid4())
        (self.directory / "osd.uuid").write_text(osd_uuid)
        self._tool("ceph-osd", "-c", conf, "-i", str(OSD_ID), "--mkfs", "--osd-uuid", osd_uuid, "--no-mon-config")

    def _spawn(self, daemon: str, binary: str, ident: str) -> None:
        with open(self.directory / "log" / f"{daemon}.out", "ab") as out:
            process = subprocess.Popen(
                [binary, "-f", "-c", str(self.conf), "-i", ident],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=self.directory,
            )
        self.pids[daemon] = process.pid
        (self.directory / f"{daemon}.pid").write_text(str(process.pid))

    def status(self, timeout: int = 5) -> dict[str, Any]:
        """`ceph status` as JSON (RuntimeError when the cluster does not answer)."""
        document: dict[str, Any] = json.loads(self._ceph("status", "--format", "json", timeout=timeout))
        return document

    def start(self) -> None:
        """Bootstrap on first start, start the daemons, and wait until the OSD is up, the mgr
        active and the health without errors (HEALTH_OK, or HEALTH_WARN with no error check)."""
        if self.pids and all(pid_alive(pid) for pid in self.pids.values()):
            return
        missing = ceph_available()
        if missing is not None:
            raise RuntimeError(f"{missing} is not installed: run setup.sh, which installs the Ceph packages")
        fresh = not (self._data("mon") / "store.db").exists()
        if fresh:
            self._bootstrap()
        deadline = time.monotonic() + START_TIMEOUT
        try:
            self._spawn("mon", "ceph-mon", MON_ID)
            self._wait(deadline, "the mon to answer", lambda status: True)
            if fresh:
                uuid_text = (self.directory / "osd.uuid").read_text().strip()
                self._ceph("osd", "new", uuid_text, str(OSD_ID))
            self._spawn("mgr", "ceph-mgr", MGR_ID)
            self._spawn("osd", "ceph-osd", str(OSD_ID))
            self._wait(deadline, "the OSD up, the mgr active and no health error", self._ready)
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _ready(status: dict[str, Any]) -> bool:
        osdmap = status.get("osdmap", {})
        osdmap = osdmap.get("osdmap", osdmap)
        health = status.get("health", {})
        errors = [c for c in health.get("checks", {}).values() if c.get("severity") == "HEALTH_ERR"]
        return (
            osdmap.get("num_up_osds") == 1
            and osdmap.get("num_in_osds") == 1
            and bool(status.get("mgrmap", {}).get("available"))
            and health.get("status") in ("HEALTH_OK", "HEALTH_WARN")
            and not errors
        )

    def _wait(self, deadline: float, what: str, ready: Any) -> None:
        last = "no answer yet"
        while time.monotonic() < deadline:
            for daemon, pid in self.pids.items():
                if not pid_alive(pid):
                    raise RuntimeError(f"ceph {daemon} exited while waiting for {what}; see {self.log_path(daemon)}")
            try:
                status = self.status(timeout=3)
            except (RuntimeError, ValueError) as exc:
                last = str(exc)
            else:
                if ready(status):
                    return
                last = f"health {status.get('health', {}).get('status')}"
            time.sleep(0.2)
        raise RuntimeError(f"Ceph in {self.directory}: timed out waiting for {what} ({last})")

    def stop(self) -> None:
        """Stop every daemon by its PID (OSD, mgr, then mon); the directory is kept."""
        for daemon in reversed(DAEMONS):
            pid = self.pids.pop(daemon, None)
            if pid is not None:
                stop_pid(pid, timeout=10.0)
            pid_file = self.directory / f"{daemon}.pid"
            if pid_file.exists():
                pid_file.unlink()
