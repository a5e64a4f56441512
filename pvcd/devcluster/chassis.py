"""A simulated machine for one local node: power, a hypervisor, a BMC, a watchdog and a network link.

Each local node runs inside a chassis process that owns what a real host has:

- **a hypervisor** (`machines.py`): one libvirtd serving libvirt's test
  driver (`libvirt_host.py`), or with `--hosts qemu` a whole QEMU host in its
  own namespaces (`qemu_host.py`); the node's `pvcd` connects to it as a
  production node connects to qemu:///system, so the VMs live in libvirtd,
  not in `pvcd`: killing `pvcd` leaves them running;
- **power**: powering on starts a fresh libvirtd with no guest running, then
  `pvcd`; powering off kills both with SIGKILL, `pvcd` first (a power loss
  gives the daemon no last word), and so every VM of the host;
- **a BMC**: an IPMI-over-UDP server (on 127.0.0.1, or the machine's address
  on a QEMU cluster's cluster bridge), built on pyghmi's simulator,
  that drives the power above; it can be made to stop answering, at once
  (`bmc-down`) or right after its next power-off (`bmc-flaky`);
- **a watchdog**: a FIFO device `pvcd` arms and pets (`watchdog.py`); when it
  expires the chassis resets the host (power off, power on);
- **a network link to ZooKeeper**: a TCP relay the node's configuration points
  at; cutting it black-holes the traffic in both directions while the node keeps
  running, as a partition would;
- **a journal** (`journal.jsonl`, see journal.py and recorder.py): every domain
  start and stop on the host, power and watchdog events, on the machine's
  monotonic clock: the ground truth `pvc-devcluster check` reads.

Faults are asked for over a UNIX socket (`chassis.sock` in the node directory);
the chassis writes what it is doing to `chassis.json` after every change and
logs to its standard output (`chassis.log`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import libvirt
import pyghmi.ipmi.bmc as pyghmi_bmc
import pyghmi.ipmi.private.serversession as pyghmi_serversession

from pvcd.config import ConfigError, Watchdog, load_config
from pvcd.devcluster import journal, layout, watchdog
from pvcd.devcluster.libvirt_host import LibvirtdError
from pvcd.devcluster.machines import Machine, QemuMachine, TestDriverMachine
from pvcd.devcluster.qemu_cluster import HostSpec
from pvcd.devcluster.recorder import DomainRecorder, JournalWriter, ensure_event_loop

CONTROL_SOCKET = "chassis.sock"
STATE_FILE = "chassis.json"
RELAY_BUFFER = 65536
PVCD_STOP_TIMEOUT = 8.0
WATCHDOG_TICK = 0.05
"""How often an armed watchdog is checked for expiry: it fires at most this late."""

log = logging.getLogger("pvcd.devcluster.chassis")

_SHA1 = 1


def _refuse_other_than_sha1(original: Any) -> Any:
    """pyghmi's simulator accepts a SHA-256 proposal but then answers with SHA-1,
    which breaks the client's login; refusing anything but SHA-1 makes the client
    fall back to cipher suite 3, which both sides implement."""

    def create_open_session_response(self: Any, request: bytearray) -> bytearray:
        if request[12] != _SHA1:
            status_invalid_auth_algorithm = 0x11
            return bytearray([request[0], status_invalid_auth_algorithm, 0, 0]) + request[4:8]
        return original(self, request)

    return create_open_session_response


pyghmi_serversession.ServerSession.create_open_session_response = _refuse_other_than_sha1(
    pyghmi_serversession.ServerSession.create_open_session_response
)


class ChassisError(Exception):
    """The chassis cannot run; the message says why."""


@dataclass
class ChassisState:
    name: str
    chassis_pid: int
    pvcd_pid: int | None
    libvirtd_pid: int | None
    libvirt_uri: str
    power: str
    bmc: str
    link: str
    bmc_port: int
    relay_port: int
    watchdog: str
    watchdog_device: str | None
    watchdog_timeout: int | None
    watchdog_resets: int
    journal: str


class Chassis:
    def __init__(self, args: argparse.Namespace) -> None:
        self.paths = layout.NodePaths(args.name, Path(args.node_dir))
        self.directory = self.paths.directory
        self.config = Path(args.config)
        self.log = Path(args.log)
        self.lock = threading.RLock()
        self.process: subprocess.Popen[bytes] | None = None
        try:
            config = load_config(str(self.config))
        except ConfigError as exc:
            raise ChassisError(f"cannot read the node configuration: {exc.problems[0]}") from exc
        self.machine: Machine
        if args.hosts == "qemu":
            self.machine = QemuMachine(HostSpec.load(self.directory).host())
        else:
            uri = layout.chassis_libvirt_uri(self.paths)
            self.machine = TestDriverMachine(
                self.paths.libvirt_root, self.directory, uri, self.directory / "libvirtd.log"
            )
        self.recorder: DomainRecorder | None = None
        self.writer = JournalWriter(self.paths.journal, args.name)
        self.fifo, self.timer = self._watchdog(config.fencing.watchdog)
        self.state = ChassisState(
            name=args.name,
            chassis_pid=os.getpid(),
            pvcd_pid=None,
            libvirtd_pid=None,
            libvirt_uri=self.machine.uri,
            power="off",
            bmc="up",
            link="up",
            bmc_port=args.bmc_port,
            relay_port=args.relay_port,
            watchdog=watchdog.DISARMED if self.timer else watchdog.NONE,
            watchdog_device=str(self.fifo.path) if self.fifo else None,
            watchdog_timeout=int(self.timer.timeout) if self.timer else None,
            watchdog_resets=0,
            journal=str(self.paths.journal),
        )
        self.relay = Relay(args.relay_port, args.zookeeper, args.listen_address)
        ipmi = config.fencing.ipmi
        self.bmc = SimulatedBmc(self, {ipmi.user: ipmi.password}, args.bmc_port, args.listen_address)
        self.stopping = threading.Event()

    def _watchdog(self, config: Watchdog | None) -> tuple[watchdog.Fifo | None, watchdog.WatchdogTimer | None]:
        """The watchdog device the node's configuration names, if the chassis can offer it.

        Only inside the node directory: a chassis never creates device files
        elsewhere (a hand-written configuration may name /dev/watchdog).
        """
        if config is None:
            return None, None
        device = Path(config.device)
        if device.parent != self.directory:
            log.warning(
                "The node's watchdog device %s is not in %s: this chassis offers no watchdog", device, self.directory
            )
            return None, None
        try:
            return watchdog.Fifo(device), watchdog.WatchdogTimer(config.timeout)
        except watchdog.WatchdogDeviceError as exc:
            raise ChassisError(str(exc)) from exc

    # -- power ---------------------------------------------------------------

    def power_on(self) -> bool:
        """Start an empty host: its hypervisor first, then pvcd. False if the hypervisor would not start."""
        with self.lock:
            if self.state.power == "on":
                return True
            try:
                conn = self.machine.start()
            except (LibvirtdError, libvirt.libvirtError) as exc:
                self.machine.kill()
                log.error("Cannot power on: %s", exc)
                return False
            self.recorder = DomainRecorder(conn, self.writer)
            self.writer.write(journal.POWER_ON, detail=f"libvirtd pid {self.machine.pid}")
            self.recorder.attach()
            env = dict(os.environ, PVCD_CONFIG_FILE=str(self.config), PYTHONUNBUFFERED="1")
            # From the node directory: a `pvcd` folder in the caller's working
            # directory must not shadow the installed package.
            self.process = self.machine.spawn([sys.executable, "-m", "pvcd.main"], env, self.log, self.directory)
            self.state.power = "on"
            self.state.pvcd_pid = self.process.pid
            self.state.libvirtd_pid = self.machine.pid
            self._save()
            log.info(
                "Powered on: libvirtd pid %s at %s, pvcd pid %s", self.machine.pid, self.machine.uri, self.process.pid
            )
            return True

    def power_off(self, reason: str) -> None:
        """Power loss: pvcd, then libvirtd and every VM of the host, killed; the journal says which died."""
        with self.lock:
            if self.state.power == "off":
                return
            self._kill_pvcd()
            self.machine.kill()
            gone = time.monotonic()
            stopped = self.recorder.detach(reason, gone) if self.recorder else []
            self.recorder = None
            self.writer.write(journal.POWER_OFF, via=reason, t=gone)
            if self.fifo is not None and self.timer is not None:
                self.fifo.read()
                self._set_watchdog(watchdog.DISARMED, "power off", journal_it=self.timer.state == watchdog.ARMED)
                self.timer.disarm()
            self.state.power = "off"
            self.state.pvcd_pid = None
            self.state.libvirtd_pid = None
            self._save()
            log.info(
                "Powered off (%s): pvcd and libvirtd killed; VMs gone with the host: %s",
                reason,
                ", ".join(stopped) or "none",
            )

    def _kill_pvcd(self) -> None:
        if self.process is not None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGKILL)
            self.process.wait()
        self.process = None

    def reap(self) -> None:
        """Notice a pvcd or a libvirtd that died by itself: the machine stays powered on."""
        with self.lock:
            if self.process is not None and self.process.poll() is not None:
                log.warning(
                    "pvcd (pid %s) exited with status %s; the host stays on and its VMs keep running",
                    self.process.pid,
                    self.process.returncode,
                )
                self.process = None
                self.state.pvcd_pid = None
                self._save()
            status = self.machine.exited()
            if status is not None and self.state.power == "on":
                pid = self.machine.pid
                self.machine.kill()
                gone = time.monotonic()
                stopped = self.recorder.detach(journal.LIBVIRTD_EXIT, gone) if self.recorder else []
                self.recorder = None
                self.writer.write(journal.LIBVIRTD_EXIT, detail=f"status {status}", t=gone)
                self.state.libvirtd_pid = None
                self._save()
                log.error(
                    "libvirtd (pid %s) exited by itself with status %s; VMs gone with it: %s. See %s; "
                    "power-cycle the node to get a hypervisor again",
                    pid,
                    status,
                    ", ".join(stopped) or "none",
                    self.machine.log,
                )

    # -- watchdog ------------------------------------------------------------

    def _watch(self) -> None:
        """Read the watchdog device; reset the host when it expires."""
        assert self.fifo is not None and self.timer is not None
        while not self.stopping.is_set():
            readable, _, _ = select.select([self.fifo], [], [], WATCHDOG_TICK)
            with self.lock:
                data = self.fifo.read() if readable else b""
                if self.state.power != "on":
                    continue
                now = time.monotonic()
                changed = self.timer.feed(data, now)
                if changed is not None:
                    self._set_watchdog(
                        changed, "pvcd wrote 'V' (magic close)" if changed == watchdog.DISARMED else "first write"
                    )
                if self.timer.expired(now):
                    self._watchdog_reset()

    def _set_watchdog(self, state: str, why: str, journal_it: bool = True) -> None:
        self.state.watchdog = state
        if journal_it:
            event = journal.WATCHDOG_ARMED if state == watchdog.ARMED else journal.WATCHDOG_DISARMED
            self.writer.write(event, detail=why)
            log.info("Watchdog %s (%s)", state, why)
        self._save()

    def _watchdog_reset(self) -> None:
        assert self.timer is not None
        log.warning(
            "Watchdog expired: not petted for %ss; resetting the host (power off, power on)", self.timer.timeout
        )
        self.writer.write(journal.WATCHDOG_RESET, detail=f"not petted for {self.timer.timeout}s")
        self.state.watchdog_resets += 1
        self.power_off("watchdog")
        self.power_on()

    # -- faults --------------------------------------------------------------

    def handle(self, command: str) -> dict[str, Any]:
        actions = {
            "power-off": lambda: self.power_off("power-off"),
            "crash": lambda: self.power_off("power-loss"),
            "power-on": self.power_on,
            "cut": lambda: self._set_link("down"),
            "heal": lambda: self._set_link("up"),
            "bmc-down": lambda: self._set_bmc("down"),
            "bmc-up": lambda: self._set_bmc("up"),
            "bmc-flaky": lambda: self._set_bmc("flaky"),
            "status": lambda: None,
            "shutdown": self.stopping.set,
        }
        if command not in actions:
            return {"error": f"unknown chassis command {command!r}"}
        if actions[command]() is False:
            return {"error": f"{command} failed; see {self.paths.chassis_log}"}
        with self.lock:
            return asdict(self.state)

    def _set_link(self, link: str) -> None:
        with self.lock:
            self.state.link = link
            self.relay.set_cut(link == "down")
            self._save()

    def _set_bmc(self, bmc: str) -> None:
        with self.lock:
            self.state.bmc = bmc
            self._save()

    def _save(self) -> None:
        path = self.directory / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self.state), indent=2) + "\n")
        os.replace(tmp, path)

    # -- main loop -----------------------------------------------------------

    def serve(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        threading.Thread(target=self.relay.serve, name="relay", daemon=True).start()
        threading.Thread(target=self.bmc.listen, name="bmc", daemon=True).start()
        if self.fifo is not None:
            threading.Thread(target=self._watch, name="watchdog", daemon=True).start()
        if not self.power_on():
            raise ChassisError(f"the host did not power on; see {self.machine.log}")
        control_path = self.directory / CONTROL_SOCKET
        control_path.unlink(missing_ok=True)
        control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        control.bind(str(control_path))
        control.listen(8)
        control.settimeout(0.2)
        while not self.stopping.is_set():
            self.reap()
            try:
                conn, _ = control.accept()
            except TimeoutError:
                continue
            except InterruptedError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    command = conn.makefile().readline().strip()
                    conn.sendall((json.dumps(self.handle(command)) + "\n").encode())
                except OSError:
                    continue
        self.shutdown(control, control_path)

    def shutdown(self, control: socket.socket, control_path: Path) -> None:
        """Stop the node cleanly (SIGTERM to pvcd first), then its libvirtd, then everything else."""
        with self.lock:
            if self.process is not None and self.process.poll() is None:
                self.process.send_signal(signal.SIGCONT)
                self.process.terminate()
                try:
                    self.process.wait(timeout=PVCD_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None
            if self.state.power == "on":
                self.machine.stop()
                gone = time.monotonic()
                if self.recorder is not None:
                    self.recorder.detach("shutdown", gone)
                self.writer.write(journal.POWER_OFF, via="shutdown", t=gone)
            self.recorder = None
            self.state.power = "off"
            self.state.pvcd_pid = None
            self.state.libvirtd_pid = None
            self._save()
            log.info("Chassis stopped: pvcd and libvirtd stopped")
        control.close()
        control_path.unlink(missing_ok=True)


class SimulatedBmc(pyghmi_bmc.Bmc):
    """pyghmi's BMC simulator wired to the chassis' power."""

    def __init__(self, chassis: Chassis, users: dict[str, str], port: int, address: str = "127.0.0.1") -> None:
        super().__init__(users, port=port, address=address)
        self.chassis = chassis

    def _down(self) -> bool:
        return self.chassis.state.bmc == "down"

    def sessionless_data(self, data: Any, sockaddr: Any) -> Any:
        if self._down():
            return None
        return super().sessionless_data(data, sockaddr)

    def handle_raw_request(self, request: Any, session: Any) -> Any:
        if self._down():
            return None
        return super().handle_raw_request(request, session)

    def get_power_state(self) -> str:
        return self.chassis.state.power

    def power_off(self) -> None:
        self.chassis.power_off("bmc")
        if self.chassis.state.bmc == "flaky":
            # It did power the node off, but nobody will ever hear about it.
            self.chassis.handle("bmc-down")

    def power_on(self) -> None:
        self.chassis.power_on()

    def power_reset(self) -> None:
        self.chassis.power_off("bmc-reset")
        self.chassis.power_on()

    def power_cycle(self) -> None:
        self.power_reset()

    def power_shutdown(self) -> None:
        self.chassis.power_off("bmc")

    def cold_reset(self) -> None:
        """Resetting the BMC itself does not touch the host."""


class Relay:
    """A TCP relay to ZooKeeper that can black-hole its traffic."""

    def __init__(self, port: int, upstream: str, address: str = "127.0.0.1") -> None:
        host, _, upstream_port = upstream.rpartition(":")
        self.upstream = (host, int(upstream_port))
        self.listener = socket.create_server((address, port), reuse_port=False)
        self.cut = threading.Event()
        self.lock = threading.Lock()
        self.pairs: list[tuple[socket.socket, socket.socket]] = []

    def set_cut(self, cut: bool) -> None:
        if cut:
            self.cut.set()
            return
        # Connections that lost bytes while cut are garbage: close them so the
        # client reconnects through a clean one.
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for sock in pair:
                _close(sock)
        self.cut.clear()

    def serve(self) -> None:
        while True:
            client, _ = self.listener.accept()
            threading.Thread(target=self._pump, args=(client,), daemon=True).start()

    def _pump(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            _close(client)
            return
        server.settimeout(None)
        with self.lock:
            self.pairs.append((client, server))
        peers = {client: server, server: client}
        try:
            while True:
                readable, _, _ = select.select(list(peers), [], [], 0.5)
                for sock in readable:
                    data = sock.recv(RELAY_BUFFER)
                    if not data:
                        return
                    if not self.cut.is_set():
                        peers[sock].sendall(data)
        except (OSError, ValueError):
            return
        finally:
            _close(client)
            _close(server)
            with self.lock:
                if (client, server) in self.pairs:
                    self.pairs.remove((client, server))


def _close(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass


def request(node_dir: Path, command: str, timeout: float = 10.0) -> dict[str, Any]:
    """Send one command to a node's chassis and return its state (or error)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(str(node_dir / CONTROL_SOCKET))
        conn.sendall(f"{command}\n".encode())
        return json.loads(conn.makefile().readline())


def read_state(node_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((node_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pvcd-chassis", description="A simulated machine for one local pvcd node.")
    parser.add_argument("--name", required=True)
    parser.add_argument("--node-dir", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--zookeeper", required=True, help="HOST:PORT of the real ZooKeeper")
    parser.add_argument("--relay-port", type=int, required=True)
    parser.add_argument("--bmc-port", type=int, required=True)
    parser.add_argument(
        "--hosts", choices=("test", "qemu"), default="test", help="the node's hypervisor (see machines.py)"
    )
    parser.add_argument(
        "--listen-address", default="127.0.0.1", help="where the relay and the BMC listen (default 127.0.0.1)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stdout, level=logging.INFO, format=f"%(asctime)s chassis {args.name}: %(levelname)s %(message)s"
    )
    ensure_event_loop()
    try:
        Chassis(args).serve()
    except ChassisError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
