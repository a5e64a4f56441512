"""A simulated machine for one local node: power, a BMC, and a network link.

Each local node runs inside a chassis process that owns three things a real
host has:

- **power**: the node's `pvcd` is the chassis' child; powering off kills it with
  SIGKILL (its simulated VMs die with it, as on a real host) and powering on
  starts it again;
- **a BMC**: an IPMI-over-UDP server on 127.0.0.1, built on pyghmi's simulator,
  that drives the power above; it can be made to stop answering, at once
  (`bmc-down`) or right after its next power-off (`bmc-flaky`);
- **a network link to ZooKeeper**: a TCP relay the node's configuration points
  at; cutting it black-holes the traffic in both directions while the node keeps
  running, as a partition would.

Faults are asked for over a UNIX socket (`chassis.sock` in the node directory);
the chassis writes what it is doing to `chassis.json` after every change.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyghmi.ipmi.bmc as pyghmi_bmc
import pyghmi.ipmi.private.serversession as pyghmi_serversession

from pvcd.config import load_config

CONTROL_SOCKET = "chassis.sock"
STATE_FILE = "chassis.json"
RELAY_BUFFER = 65536

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


@dataclass
class ChassisState:
    name: str
    chassis_pid: int
    pvcd_pid: int | None
    power: str
    bmc: str
    link: str
    bmc_port: int
    relay_port: int


class Chassis:
    def __init__(self, args: argparse.Namespace) -> None:
        self.directory = Path(args.node_dir)
        self.config = Path(args.config)
        self.log = Path(args.log)
        self.lock = threading.RLock()
        self.process: subprocess.Popen[bytes] | None = None
        self.state = ChassisState(
            name=args.name,
            chassis_pid=os.getpid(),
            pvcd_pid=None,
            power="off",
            bmc="up",
            link="up",
            bmc_port=args.bmc_port,
            relay_port=args.relay_port,
        )
        self.relay = Relay(args.relay_port, args.zookeeper)
        ipmi = load_config(str(self.config)).fencing.ipmi
        self.bmc = SimulatedBmc(self, {ipmi.user: ipmi.password}, args.bmc_port)
        self.stopping = threading.Event()

    # -- power ---------------------------------------------------------------

    def power_on(self) -> None:
        with self.lock:
            if self.state.power == "on":
                return
            env = dict(os.environ, PVCD_CONFIG_FILE=str(self.config), PYTHONUNBUFFERED="1")
            with open(self.log, "ab") as log:
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "pvcd.main"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                )
            self.state.power = "on"
            self.state.pvcd_pid = self.process.pid
            self._save()

    def power_off(self) -> None:
        with self.lock:
            if self.process is not None:
                if self.process.poll() is None:
                    self.process.send_signal(signal.SIGKILL)
                self.process.wait()
            self.process = None
            self.state.power = "off"
            self.state.pvcd_pid = None
            self._save()

    def reap(self) -> None:
        """Collect a pvcd that died by itself: the machine stays powered on."""
        with self.lock:
            if self.process is not None and self.process.poll() is not None:
                self._save()

    # -- faults --------------------------------------------------------------

    def handle(self, command: str) -> dict[str, Any]:
        actions = {
            "power-off": self.power_off,
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
        actions[command]()
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
        control_path = self.directory / CONTROL_SOCKET
        if control_path.exists():
            control_path.unlink()
        control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        control.bind(str(control_path))
        control.listen(8)
        control.settimeout(0.2)
        threading.Thread(target=self.relay.serve, name="relay", daemon=True).start()
        threading.Thread(target=self.bmc.listen, name="bmc", daemon=True).start()
        self.power_on()
        while not self.stopping.is_set():
            self.reap()
            try:
                conn, _ = control.accept()
            except (TimeoutError, socket.timeout):
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
        """Stop the node cleanly (SIGTERM first), then everything else."""
        with self.lock:
            if self.process is not None and self.process.poll() is None:
                self.process.send_signal(signal.SIGCONT)
                self.process.terminate()
                try:
                    self.process.wait(timeout=8)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.process = None
            self.state.power = "off"
            self.state.pvcd_pid = None
            self._save()
        control.close()
        control_path.unlink(missing_ok=True)


class SimulatedBmc(pyghmi_bmc.Bmc):
    """pyghmi's BMC simulator wired to the chassis' power."""

    def __init__(self, chassis: Chassis, users: dict[str, str], port: int) -> None:
        super().__init__(users, port=port, address="127.0.0.1")
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
        self.chassis.power_off()
        if self.chassis.state.bmc == "flaky":
            # It did power the node off, but nobody will ever hear about it.
            self.chassis.handle("bmc-down")

    def power_on(self) -> None:
        self.chassis.power_on()

    def power_reset(self) -> None:
        self.chassis.power_off()
        self.chassis.power_on()

    def power_cycle(self) -> None:
        self.power_reset()

    def power_shutdown(self) -> None:
        self.chassis.power_off()

    def cold_reset(self) -> None:
        """Resetting the BMC itself does not touch the host."""


class Relay:
    """A TCP relay to ZooKeeper that can black-hole its traffic."""

    def __init__(self, port: int, upstream: str) -> None:
        host, _, upstream_port = upstream.rpartition(":")
        self.upstream = (host, int(upstream_port))
        self.listener = socket.create_server(("127.0.0.1", port), reuse_port=False)
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
    Chassis(parser.parse_args(argv)).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
