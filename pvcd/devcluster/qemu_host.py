"""One simulated real host on this machine: its own network, hostname, libvirtd and QEMU guests.

The test driver (libvirt_host.py) proves the cluster's logic but cannot migrate.
A `QemuHost` is a whole hypervisor host instead, so that live migration,
power loss and fencing act on real QEMU processes:

- a network namespace `PREFIX-NAME` with `eth0` (a veth whose peer is on the
  caller's root-namespace bridge) holding the host's cluster address; libvirtd
  listens there on TCP and QEMU takes incoming migrations there, so the
  daemon's `qemu+tcp://ADDRESS/system` peer-to-peer migration crosses a link;
- while the host is on, a mount and a UTS namespace held by a `sleep` (the
  holder) in the network namespace. In it, per-host directories cover
  libvirtd's fixed directories and /etc/hosts (several libvirtd on one machine
  would otherwise share lock files, guest definitions and sockets), /sys is the
  network namespace's (as `ip netns exec` does), and the hostname is the node's
  name (libvirt refuses to migrate to a host of its own name or UUID);
- libvirtd, and any other process of the host (its `pvcd`, through `run`),
  started in those three namespaces with `nsenter --target HOLDER`: `pvcd`
  reaches its libvirtd as `qemu:///system`, as on a real node.

`power_off` is a power loss: every process in the host's network namespace
(holder, libvirtd, each guest's QEMU, `pvcd`) is SIGKILLed, so its mounts and
hostname go too. `power_on` is the boot that follows: the namespaces are set up
again, /run/libvirt starts empty and no guest runs until the cluster starts one.
The per-host directories are the host's disk and survive power cycles.

Why a process holds the mount namespace rather than a bind mount of its nsfs
file (`unshare --mount=FILE`): the kernel refuses that bind (EINVAL) when the
new namespace's ID is not above the binding process's own, to rule out loops.
On Linux 6.18 namespace IDs come from per-CPU batches, so inside any mount
namespace but the initial one (a container, a systemd unit with PrivateTmp)
the bind fails or succeeds depending on the CPU unshare runs on. It was
verified deterministic per CPU here. A holder needs no mount in the machine's
namespace, and a host whose processes are all dead leaves nothing behind but
its network namespace, its link and its directories.

The mount namespace is a copy of the machine's: it would keep every `ip netns`
namespace existing at boot alive (their /run/netns mounts), so /run/netns is
unmounted inside it.

Everything a host creates is named by `record()`; `cleanup(**record)` removes
it all after a crash of whoever created it, and is idempotent. Needs root.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import libvirt

from pvcd.devcluster.libvirt_host import PRIVATE_DIRS, SOCKETS, LibvirtdError
from pvcd.devcluster.netlab import sh
from pvcd.devcluster.processes import pid_alive, pid_cmdline

LIBVIRTD = "libvirtd"
START_TIMEOUT = 30.0
"""libvirtd's first start probes QEMU (see `QemuHost._seed_capabilities`)."""
KILL_TIMEOUT = 10.0
INTERFACE = "eth0"
HOSTS_FILE = "hosts"
LIBVIRTD_LOG = "libvirtd.log"
READY = "ready"


class HostError(Exception):
    """The host could not be set up or is not in the state asked for."""


def _libvirtd_conf(address: str, host_uuid: str) -> str:
    return (
        "# Written by pvcd.devcluster.qemu_host: the libvirtd of one simulated host, on TCP at\n"
        "# its cluster address (peer-to-peer migrations arrive there) and on /run/libvirt,\n"
        "# which is the host's own directory in its mount namespace.\n"
        "listen_tcp = 1\n"
        "listen_tls = 0\n"
        f'listen_addr = "{address}"\n'
        'auth_tcp = "none"\n'
        'auth_unix_rw = "none"\n'
        # Every host of this machine would read the same DMI UUID, and libvirt
        # refuses to migrate to a host with the source's own UUID.
        f'host_uuid = "{host_uuid}"\n'
    )


def _qemu_conf(address: str) -> str:
    return (
        "# Written by pvcd.devcluster.qemu_host: QEMU runs as root without users, cgroups,\n"
        "# namespaces or virtlogd, and takes incoming migrations on the cluster address.\n"
        'user = "root"\n'
        'group = "root"\n'
        "dynamic_ownership = 0\n"
        'security_driver = "none"\n'
        "cgroup_controllers = [ ]\n"
        "namespaces = [ ]\n"
        'stdio_handler = "file"\n'
        f'migration_address = "{address}"\n'
        f'migration_host = "{address}"\n'
    )


def _hosts_file(name: str, address: str, peers: Mapping[str, str]) -> str:
    """The host's /etc/hosts: its own name resolves without DNS (libvirtd looks it up at start)."""
    lines = ["127.0.0.1\tlocalhost", f"{address}\t{name}"]
    lines += [f"{peer_address}\t{peer}" for peer, peer_address in peers.items() if peer != name]
    return "\n".join(lines) + "\n"


def _boot_script(root: Path, hostname: str) -> str:
    """`sh -c` script of the holder: set up the new mount + UTS namespace, say so, then hold it."""
    binds = [f"mount --bind {root / name} {target}" for name, target in PRIVATE_DIRS.items()]
    return " && ".join(
        [
            "umount -l /sys",
            "mount -t sysfs sysfs /sys",
            "{ ! mountpoint -q /run/netns || umount -l /run/netns; }",
            *binds,
            f"mount --bind {root / HOSTS_FILE} /etc/hosts",
            f"hostname {hostname}",
            f"echo {READY}",
            "exec sleep infinity",
        ]
    )


def namespace_pids(netns: str) -> list[int]:
    """Every process in network namespace `netns` (none if it does not exist)."""
    result = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        return []
    return [int(pid) for pid in result.stdout.split()]


def kill_namespace(netns: str, timeout: float = KILL_TIMEOUT) -> None:
    """SIGKILL every process in `netns` until none is left (one may fork while we kill)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid in namespace_pids(netns) if pid_alive(pid)]
        if not alive:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"processes {alive} of network namespace {netns} survived SIGKILL for {timeout:g}s")
        for pid in alive:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)


def cleanup(netns: str, veth: str, root: str | Path) -> None:
    """Remove everything a `QemuHost` created, from its `record()`: processes, namespace, link, directory.

    Safe to call any number of times, and on a host half created or already
    destroyed: a launcher that crashed leaves only these names behind.
    """
    kill_namespace(netns)
    subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=30)
    # Gone with the namespace's end of the pair, unless the namespace is still held somewhere.
    subprocess.run(["ip", "link", "del", veth], capture_output=True, timeout=30)
    if Path(root).exists():
        shutil.rmtree(root)


class QemuHost:
    """One simulated hypervisor host: its namespaces, per-host libvirt directories, libvirtd and processes."""

    def __init__(
        self,
        name: str,
        root: Path,
        netns_prefix: str,
        bridge: str,
        address: str | ipaddress.IPv4Interface,
        peers: Mapping[str, str] | None = None,
        capabilities_cache: Path | None = None,
        veth: str | None = None,
    ) -> None:
        """`address` is the cluster address with its prefix ("10.1.0.11/24"); `peers` (name -> address)
        go into the host's /etc/hosts; `capabilities_cache` is a directory shared by the hosts of this
        machine (see `_seed_capabilities`). `destroy` removes `root` and everything in it."""
        self.name = name
        self.root = root
        self.netns = f"{netns_prefix}-{name}"
        self.bridge = bridge
        self.address = ipaddress.IPv4Interface(address)
        self.peers = dict(peers or {})
        self.capabilities_cache = capabilities_cache
        # A new peer name each time: a deleted namespace's veth pair goes away asynchronously.
        self.veth = veth or f"pq{secrets.token_hex(4)}"
        self.holder: subprocess.Popen[str] | None = None
        """The `sleep` holding the mount and UTS namespaces while the host is on."""
        self.libvirtd: subprocess.Popen[bytes] | None = None
        """The reaper running libvirtd (pvcd.devcluster.reaper)."""
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def ip(self) -> str:
        return str(self.address.ip)

    @property
    def uri(self) -> str:
        """libvirtd's URI from this machine's own namespaces: the host's socket seen from outside."""
        return f"qemu+unix:///system?socket={self.root / 'run' / SOCKETS[0]}"

    @property
    def tcp_uri(self) -> str:
        """libvirtd's URI from the other hosts, as the daemon's live migration names it."""
        return f"qemu+tcp://{self.ip}/system"

    @property
    def log(self) -> Path:
        """libvirtd's output, and the holder's errors."""
        return self.root / LIBVIRTD_LOG

    @property
    def _libvirtd_conf(self) -> Path:
        return self.root / "etc" / "libvirtd.conf"

    @property
    def _capabilities(self) -> Path:
        return self.root / "cache" / "qemu" / "capabilities"

    def record(self) -> dict[str, str]:
        """What `cleanup` needs to remove this host without this object (JSON-friendly)."""
        return {"netns": self.netns, "veth": self.veth, "root": str(self.root)}

    def create(self) -> None:
        """Create the host's directories, configuration, network namespace and link; it is off.

        Call `destroy` even if this fails: it removes whatever was created.
        """
        for name in PRIVATE_DIRS:
            (self.root / name).mkdir(parents=True, exist_ok=True)
        # The guests' log directory, which Debian's libvirt-daemon-system package creates.
        (self.root / "log" / "qemu").mkdir(exist_ok=True)
        for target in PRIVATE_DIRS.values():
            # Mount points only; Debian's libvirt-daemon-system would create them.
            Path(target).mkdir(parents=True, exist_ok=True)
        (self.root / HOSTS_FILE).write_text(_hosts_file(self.name, self.ip, self.peers))
        self._libvirtd_conf.write_text(_libvirtd_conf(self.ip, str(uuid.uuid4())))
        (self.root / "etc" / "qemu.conf").write_text(_qemu_conf(self.ip))
        sh("ip", "netns", "add", self.netns)
        sh("ip", "link", "add", self.veth, "type", "veth", "peer", "name", INTERFACE, "netns", self.netns)
        sh("ip", "link", "set", self.veth, "master", self.bridge, "up")
        sh("ip", "-n", self.netns, "link", "set", "lo", "up")
        sh("ip", "-n", self.netns, "address", "add", str(self.address), "dev", INTERFACE)
        sh("ip", "-n", self.netns, "link", "set", INTERFACE, "up")

    def pids(self) -> list[int]:
        """Every process of the host: whatever runs in its network namespace."""
        return namespace_pids(self.netns)

    def libvirtd_pid(self) -> int | None:
        """libvirtd's own PID (the reaper's child), while it runs."""
        config = str(self._libvirtd_conf)
        for pid in self.pids():
            command = pid_cmdline(pid)
            if command and command[0].endswith(LIBVIRTD) and config in command:
                return pid
        return None

    def running(self) -> bool:
        """Whether the host is on: its holder and libvirtd (under its reaper) run."""
        return all(process is not None and process.poll() is None for process in (self.holder, self.libvirtd))

    def _nsenter(self) -> list[str]:
        if self.holder is None or self.holder.poll() is not None:
            raise HostError(f"host {self.name} is off")
        return ["nsenter", f"--target={self.holder.pid}", "--mount", "--uts", "--net"]

    def _boot_cleanly(self) -> None:
        """What a reboot does to the disk: /run starts empty, so no guest is believed running.

        Autostart links go too: where a guest runs is the cluster's decision, never libvirt's.
        """
        for directory in (self.root / "run", self.root / "etc" / "qemu" / "autostart"):
            if directory.exists():
                for entry in directory.iterdir():
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()

    def _seed_capabilities(self) -> None:
        """Copy the shared QEMU capabilities into a host that has none yet.

        libvirtd probes every QEMU binary (qemu-system-x86 ships two) at its
        first start, ~2 s on this machine, and the first guest start or
        incoming migration waits for it. The files describe this machine's QEMU
        binaries, so its hosts can share them; libvirt probes again if they do
        not match (it checks the binaries' ctime and the kernel).
        """
        shared = self.capabilities_cache
        if shared is None or not shared.is_dir():
            return
        self._capabilities.mkdir(parents=True, exist_ok=True)
        if any(self._capabilities.iterdir()):
            return
        for source in shared.glob("*.xml"):
            shutil.copy2(source, self._capabilities / source.name)

    def _share_capabilities(self) -> None:
        """Publish this host's probed capabilities for the hosts that start after it."""
        shared = self.capabilities_cache
        if shared is None:
            return
        shared.mkdir(parents=True, exist_ok=True)
        if any(shared.glob("*.xml")):
            return
        for source in self._capabilities.glob("*.xml"):
            partial = shared / f".{source.name}.{secrets.token_hex(4)}"
            shutil.copy2(source, partial)
            # Atomic: a host starting meanwhile copies whole files or none.
            os.replace(partial, shared / source.name)

    def _boot(self) -> None:
        """Start the holder and wait until the namespaces it holds are set up."""
        command = [
            "nsenter",
            f"--net=/run/netns/{self.netns}",
            "unshare",
            "--mount",
            "--uts",
            "--propagation",
            "private",
            "sh",
            "-c",
            _boot_script(self.root, self.name),
        ]
        with open(self.log, "ab") as log:
            # nsenter, unshare and sh exec: the PID is the holder's own.
            self.holder = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True
            )
        assert self.holder.stdout is not None
        ready, _, _ = select.select([self.holder.stdout], [], [], START_TIMEOUT)
        line = self.holder.stdout.readline().strip() if ready else ""
        self.holder.stdout.close()
        if line != READY:
            raise HostError(f"host {self.name}: setting up its mount and UTS namespaces failed; see {self.log}")

    def power_on(self) -> None:
        """Boot: set up the namespaces, start libvirtd, return once it can take guests. No guest runs.

        "Can take guests" is its QEMU driver having probed QEMU: until then a
        guest start or an incoming migration waits (see `_seed_capabilities`).
        """
        if self.holder is not None or self.libvirtd is not None:
            raise HostError(f"host {self.name} is already on")
        try:
            self._boot_cleanly()
            self._seed_capabilities()
            self._boot()
            self._start_libvirtd()
        except BaseException:
            self.power_off()
            raise
        self._share_capabilities()

    def _start_libvirtd(self) -> None:
        command = [
            *self._nsenter(),
            sys.executable,
            "-m",
            "pvcd.devcluster.reaper",
            LIBVIRTD,
            "--listen",
            "--config",
            str(self._libvirtd_conf),
            "--pid-file",
            str(self.root / "run" / "libvirtd.pid"),
        ]
        with open(self.log, "ab") as log:
            self.libvirtd = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.libvirtd.poll() is not None:
                raise LibvirtdError(f"libvirtd of host {self.name} exited at start; see {self.log}")
            try:
                connection = libvirt.open(self.uri)
                break
            except libvirt.libvirtError as exc:
                if time.monotonic() > deadline:
                    raise LibvirtdError(
                        f"libvirtd of host {self.name} did not answer within {START_TIMEOUT:g}s ({exc}); see {self.log}"
                    ) from exc
            time.sleep(0.05)
        try:
            connection.getCapabilities()
        except libvirt.libvirtError as exc:
            raise LibvirtdError(f"libvirtd of host {self.name} could not probe QEMU ({exc}); see {self.log}") from exc
        finally:
            connection.close()

    def run(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a process of the host (its `pvcd`) in its namespaces; `power_off` kills it.

        Its stdout and stderr are appended to `log` (discarded without one),
        and it runs in `cwd` (a path it sees in the host's mount namespace).
        The returned process's PID is the program's own (nsenter execs it).
        """
        command = [*self._nsenter(), *([f"--wd={cwd}"] if cwd is not None else []), *argv]
        output = open(log, "ab") if log is not None else None
        try:
            process = subprocess.Popen(
                command,
                stdout=output or subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=dict(env) if env is not None else None,
            )
        finally:
            if output is not None:
                output.close()
        self.processes.append(process)
        return process

    def power_off(self) -> None:
        """Power loss: SIGKILL every process of the host and return once all are gone."""
        kill_namespace(self.netns)
        for process in (*self.processes, self.libvirtd, self.holder):
            if process is not None:
                process.wait(timeout=KILL_TIMEOUT)
        self.processes.clear()
        self.libvirtd = None
        self.holder = None

    def destroy(self) -> None:
        """Kill everything and remove the namespace, the link and the host's directory."""
        try:
            self.power_off()
        finally:
            cleanup(**self.record())
