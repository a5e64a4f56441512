"""The hypervisor of one simulated host: a libvirtd serving libvirt's test driver.

A real node's VMs live in its hypervisor, not in `pvcd`: the daemon can die and
its guests keep running. So each chassis starts one libvirtd for its node and
`pvcd` connects to it (`layout.chassis_libvirt_uri`) as a production node
connects to `qemu:///system`. Killing the libvirtd kills every VM of the host.

Several libvirtd run on one machine, one per node, and a privileged libvirtd
keeps its state in fixed places: each of its drivers takes a lock file under
/run/libvirt (a second daemon exits with "Failed to acquire pid file
'/run/libvirt/network/driver.pid'"), and reads and writes /etc/libvirt,
/var/lib/libvirt, /var/cache/libvirt and /var/log/libvirt. `--config` moves only
libvirtd.conf. Each daemon therefore runs in a private mount namespace where
per-node directories are bind-mounted over those five (`unshare -m
--propagation private`; the mounts never reach the machine's own namespace).

libvirtd's QEMU driver loads even though no guest ever uses it, and it exits
the whole daemon ("Driver state initialization failed") unless the system user
`libvirt-qemu` exists (setup.sh creates it); qemu.conf keeps it from touching
users, cgroups, namespaces or virtlogd. Starting takes ~0.2 s; the D-Bus, DMI
and dmidecode errors libvirtd logs at start are harmless here.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import libvirt

from pvcd.devcluster.processes import pid_cmdline, stop_pid

LIBVIRTD = "libvirtd"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
PRIVATE_DIRS = {
    "etc": "/etc/libvirt",
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "cache": "/var/cache/libvirt",
    "log": "/var/log/libvirt",
}
"""Per-node directory (under the node's libvirt root) -> where libvirtd sees it."""
SOCKETS = ("libvirt-sock", "libvirt-sock-ro", "libvirt-admin-sock")

QEMU_CONF = """\
# Written by pvc-devcluster: this libvirtd serves libvirt's test driver; its QEMU
# driver only has to load, without touching users, cgroups, namespaces or virtlogd.
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
"""

# libvirt prints every error to stderr by default; the chassis reports errors itself.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


class LibvirtdError(Exception):
    """libvirtd did not start; the message says why and where its log is."""


def _libvirtd_conf(socket_dir: Path) -> str:
    return (
        "# Written by pvc-devcluster: one libvirtd per simulated host, reachable only through\n"
        "# its UNIX sockets in the node directory (its pid file is given by --pid-file).\n"
        f'unix_sock_dir = "{socket_dir}"\n'
        "listen_tcp = 0\n"
        "listen_tls = 0\n"
    )


def _mount_script() -> str:
    """`sh -c` script: bind $1..$5 over libvirtd's fixed directories, then exec the rest."""
    binds = [f'mount --bind "${index}" {target}' for index, target in enumerate(PRIVATE_DIRS.values(), 1)]
    return " && ".join([*binds, f"shift {len(binds)}", 'exec "$@"'])


class Libvirtd:
    """One libvirtd for one node: its private directories, its process, its connection URI."""

    def __init__(self, root: Path, socket_dir: Path, uri: str, log: Path) -> None:
        self.root = root
        self.socket_dir = socket_dir
        self.uri = uri
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid_file(self) -> Path:
        return self.root / "libvirtd.pid"

    @property
    def config(self) -> Path:
        return self.config_path(self.root)

    @staticmethod
    def config_path(root: Path) -> Path:
        """libvirtd.conf of the daemon whose private directories are under `root` (it is on its command line)."""
        return root / "etc" / "libvirtd.conf"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def _prepare(self) -> None:
        for name, target in PRIVATE_DIRS.items():
            (self.root / name).mkdir(parents=True, exist_ok=True)
            # The mount points themselves: empty directories that Debian's
            # libvirt-daemon-system would create; nothing is written into them.
            Path(target).mkdir(parents=True, exist_ok=True)
        self.config.write_text(_libvirtd_conf(self.socket_dir))
        (self.root / "etc" / "qemu.conf").write_text(QEMU_CONF)
        # Left behind by a libvirtd that was killed: a fresh host starts clean.
        for stale in (self.pid_file, *(self.socket_dir / name for name in SOCKETS)):
            stale.unlink(missing_ok=True)

    def start(self) -> libvirt.virConnect:
        """Start libvirtd and return a connection to it, opened once it answers.

        The caller keeps that connection for as long as the host is on: the
        test driver's shared host lives only while a connection to it is open.
        """
        self._prepare()
        command = [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            _mount_script(),
            "libvirtd-mounts",
            *(str(self.root / name) for name in PRIVATE_DIRS),
            LIBVIRTD,
            "--config",
            str(self.config),
            "--pid-file",
            str(self.pid_file),
        ]
        with open(self.log, "ab") as log:
            # unshare and sh exec: the PID we get is libvirtd's own.
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                self.process = None
                raise LibvirtdError(f"libvirtd exited at start; see {self.log}")
            try:
                return libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                if time.monotonic() > deadline:
                    self.kill()
                    raise LibvirtdError(
                        f"libvirtd did not answer on {self.uri} within {START_TIMEOUT:g}s ({exc}); see {self.log}"
                    ) from exc
            time.sleep(0.02)

    def exited(self) -> int | None:
        """The exit status if libvirtd died by itself (the chassis did not stop it), else None."""
        if self.process is None:
            return None
        return self.process.poll()

    def kill(self) -> None:
        """Power loss: SIGKILL, and wait until it is gone (every VM of the host with it)."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None

    def stop(self) -> None:
        """A clean stop (SIGTERM, SIGKILL after STOP_TIMEOUT)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        self.kill()


def stop_orphan(pid: int, config: Path) -> None:
    """Kill a libvirtd left by a chassis that died, if `pid` still runs the one it started."""
    command = pid_cmdline(pid)
    if command and command[0].endswith(LIBVIRTD) and str(config) in command:
        stop_pid(pid, signal.SIGKILL)
