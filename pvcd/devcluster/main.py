"""`pvc-devcluster`: a whole pvcd cluster on this machine, for demos and tests."""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import threading
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pvcd.cluster.vm_records import InvalidVm, check_vm_name
from pvcd.devcluster import check, cluster, guest_image, layout
from pvcd.devcluster.processes import pid_alive
from pvcd.zk.store import quiet_kazoo

START_TIMEOUT = 60.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pvc-devcluster", description="Run a local pvcd cluster on 127.0.0.1.")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start ZooKeeper and N pvcd nodes")
    up.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3; the first 3 are coordinators)")
    up.add_argument("--workdir", type=Path, required=True, help="directory for configs, data and logs")
    up.add_argument(
        "--keepalive-interval", type=int, default=1, metavar="S", help="seconds between keepalives (default 1)"
    )
    up.add_argument(
        "--fence-intervals",
        type=int,
        default=3,
        metavar="K",
        help="missed keepalives before a node is dead (default 3)",
    )
    up.add_argument(
        "--suicide-intervals",
        type=int,
        default=0,
        metavar="K",
        help="missed keepalives before a node destroys its own VMs (default 0: never)",
    )
    up.add_argument("--successful-fence", choices=("migrate", "None"), default="migrate")
    up.add_argument("--failed-fence", choices=("migrate", "None"), default="None")
    up.add_argument(
        "--session-timeout",
        type=float,
        default=layout.Timing.session_timeout,
        metavar="S",
        help="ZooKeeper session timeout of the nodes (default %(default)s)",
    )
    up.add_argument(
        "--watchdog-timeout",
        type=int,
        metavar="S",
        help=f"seconds the chassis' watchdog waits for pvcd to pet it before it resets the host "
        f"(default {layout.WATCHDOG_INTERVALS} keepalive intervals)",
    )
    up.add_argument("--no-watchdog", action="store_true", help="give the nodes no watchdog device")
    up.add_argument(
        "--ceph-conf",
        type=Path,
        metavar="PATH",
        help="the ceph.conf of a running Ceph cluster: the nodes manage storage there (enable_storage, storage "
        "fencing); needs --ceph-keyring",
    )
    up.add_argument("--ceph-keyring", type=Path, metavar="PATH", help="the client.admin keyring for --ceph-conf")
    up.add_argument(
        "--hosts",
        choices=("test", "qemu"),
        default="test",
        help="test: each node's hypervisor is libvirt's test driver (default, fast, no root); qemu: each node is a "
        "real QEMU host in its own network, mount and UTS namespaces, on bridges for the upstream, cluster and "
        "storage networks (root)",
    )
    up.add_argument(
        "--detach", action="store_true", help="return once the cluster runs instead of staying in the foreground"
    )
    for name, text in (("status", "show what runs"), ("down", "stop everything the launcher started")):
        command = sub.add_parser(name, help=text)
        command.add_argument("--workdir", type=Path, required=True)
        command.add_argument("--format", choices=("pretty", "json"), default="pretty")
    environment = sub.add_parser(
        "env",
        help="print the shell exports that point pvc at the cluster as its operator "
        '(ZooKeeper address, credentials file, TLS CA, client certificate and key): eval "$(pvc-devcluster env ...)"',
    )
    environment.add_argument("--workdir", type=Path, required=True)
    checker = sub.add_parser(
        "check",
        help="check the chassis journals: no VM on two hosts, every VM to start "
        "runs once (exit 0 clean, 1 violations, 2 error)",
    )
    checker.add_argument("--workdir", type=Path, required=True)
    checker.add_argument("--format", choices=("pretty", "json"), default="pretty")
    guest = sub.add_parser(
        "guest-xml",
        help="print the domain XML of a tiny QEMU test guest for a --hosts qemu cluster (builds its kernel and "
        "initramfs once); its serial port counts in NODE_DIR/host/log/qemu/NAME-serial.log on the host running it",
    )
    guest.add_argument("name", help="the VM's name")
    fault = sub.add_parser("fault", help="inject a fault into one node, or several at the same moment")
    fault.add_argument("--workdir", type=Path, required=True)
    fault.add_argument("node", help="a node name, or several separated by commas (hv2,hv3) to hit them together")
    fault.add_argument(
        "kind",
        choices=cluster.FAULTS,
        help="crash: power loss (pvcd, libvirtd and every VM of the host die; it stays off until powered on through "
        "the BMC); daemon-crash: SIGKILL its pvcd only (its VMs keep running); daemon-hang/daemon-resume: "
        "SIGSTOP/SIGCONT its pvcd; cut/heal: sever/restore its link to ZooKeeper; bmc-down/bmc-up: its BMC "
        "stops/starts answering; bmc-flaky: its BMC goes silent right after its next power-off; "
        "power-off/power-on: through the chassis",
    )
    return parser


def _status(record: cluster.ClusterRecord) -> dict[str, Any]:
    return {
        "workdir": record.workdir,
        "zookeeper": {
            "address": record.zookeeper,
            "pid": record.zookeeper_pid,
            "running": bool(record.zookeeper_pid and pid_alive(record.zookeeper_pid)),
            "client_environment": record.client_environment(),
        },
        "nodes": [
            dict(
                asdict(n),
                pid=cluster.node_pid(n),
                running=cluster.node_pid(n) is not None,
                chassis=n.current() if cluster.chassis_running(n) else None,
            )
            for n in record.nodes
        ],
    }


def _print_status(status: dict[str, Any], output_format: str) -> None:
    if output_format == "json":
        print(json.dumps(status, indent=2))
        return
    zk = status["zookeeper"]
    print(f"ZooKeeper {zk['address']} pid {zk['pid']} {'running' if zk['running'] else 'stopped'}")
    for node in status["nodes"]:
        machine = node["chassis"] or {}
        print(
            f"{node['name']:<6} pid {str(node['pid']):<8} {'running' if node['running'] else 'stopped':<8} "
            f"power {machine.get('power', 'off'):<4} libvirtd {str(machine.get('libvirtd_pid')):<8} "
            f"BMC {machine.get('bmc', '-')}:{node['bmc_port']:<6} link {machine.get('link', '-'):<5} "
            f"watchdog {machine.get('watchdog', '-'):<9} config {node['config']}  log {node['log']}"
        )


def _up(args: argparse.Namespace) -> int:
    if args.keepalive_interval < 1:
        raise cluster.ClusterError(f"--keepalive-interval must be a positive integer, got {args.keepalive_interval}")
    if args.fence_intervals < 0:
        raise cluster.ClusterError(f"--fence-intervals must be a non-negative integer, got {args.fence_intervals}")
    if args.watchdog_timeout is not None and args.no_watchdog:
        raise cluster.ClusterError("--watchdog-timeout and --no-watchdog exclude each other")
    if (args.ceph_conf is None) != (args.ceph_keyring is None):
        raise cluster.ClusterError("--ceph-conf and --ceph-keyring go together")
    for option, path in (("--ceph-conf", args.ceph_conf), ("--ceph-keyring", args.ceph_keyring)):
        if path is not None and not path.is_file():
            raise cluster.ClusterError(f"{option} {path}: no such file")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    timing = layout.Timing(
        keepalive_interval=args.keepalive_interval,
        fence_intervals=args.fence_intervals,
        suicide_intervals=args.suicide_intervals,
        successful_fence=args.successful_fence,
        failed_fence=args.failed_fence,
        session_timeout=args.session_timeout,
        watchdog=not args.no_watchdog,
        watchdog_timeout=args.watchdog_timeout,
        ceph_conf=str(args.ceph_conf.resolve()) if args.ceph_conf is not None else None,
        ceph_keyring=str(args.ceph_keyring.resolve()) if args.ceph_keyring is not None else None,
    )
    record = cluster.up(args.workdir, args.nodes, timing, hosts=args.hosts)
    late = cluster.wait_until_running(record, START_TIMEOUT)
    if late:
        cluster.down(args.workdir)
        logs = ", ".join(record.node(n).log for n in late)
        raise cluster.ClusterError(f"nodes {', '.join(late)} did not reach state run; see {logs}")
    kind = "real QEMU hosts" if record.hosts == "qemu" else "test-driver hosts"
    print(f"Local cluster of {len(record.nodes)} {kind} running; ZooKeeper at {record.zookeeper}")
    env = record.client_environment()
    if len(env) > 1:
        print("pvc reaches it (TLS, the operator's credentials) with this environment:")
        for line in _exports(env):
            print(f"  {line}")
        print(f'  or: eval "$(pvc-devcluster env --workdir {record.workdir})"; pvc node list')
    else:
        print(f"  pvc --zookeeper {record.zookeeper} node list")
    if args.detach:
        print(f"  pvc-devcluster down --workdir {record.workdir}")
        return 0
    print("Press Ctrl-C to stop it.")
    stop.wait()
    cluster.down(args.workdir)
    print("Local cluster stopped.")
    return 0


def _exports(env: dict[str, str]) -> list[str]:
    return [f"export {name}={shlex.quote(value)}" for name, value in env.items()]


def _check(args: argparse.Namespace) -> int:
    """Exit 0 when clean, 1 on violations, 2 when the check cannot be made."""
    try:
        report = check.check(cluster.load(args.workdir.resolve()))
    except (cluster.ClusterError, check.CheckError) as exc:
        print(f"pvc-devcluster: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.format == "json" else check.render(report))
    return 0 if report["clean"] else 1


def _guest_xml(name: str) -> int:
    try:
        check_vm_name(name)
    except InvalidVm as exc:
        print(f"pvc-devcluster: {exc}", file=sys.stderr)
        return 2
    try:
        image = guest_image.build(guest_image.DEFAULT_CACHE)
    except guest_image.GuestImageError as exc:
        print(f"pvc-devcluster: cannot build the guest image: {exc}", file=sys.stderr)
        return 1
    print(guest_image.domain_xml(name, str(uuid.uuid4()), image, guest_image.host_serial_log(name)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    quiet_kazoo()
    if args.command == "check":
        return _check(args)
    if args.command == "guest-xml":
        return _guest_xml(args.name)
    try:
        if args.command == "up":
            return _up(args)
        if args.command == "env":
            print("\n".join(_exports(cluster.load(args.workdir.resolve()).client_environment())))
            return 0
        if args.command == "status":
            _print_status(_status(cluster.load(args.workdir.resolve())), args.format)
            return 0
        if args.command == "fault":
            record = cluster.load(args.workdir.resolve())
            names = [name for name in args.node.split(",") if name]
            for name in names:
                record.node(name)
            # Checked first, then applied back to back: one power or network event hits them all at once.
            states = {name: cluster.fault(record, name, args.kind) for name in names}
            for name, state in states.items():
                print(
                    f"{name}: {args.kind} done; power {state.get('power')}, BMC {state.get('bmc')}, "
                    f"link {state.get('link')}, pvcd pid {state.get('pvcd_pid')}, "
                    f"libvirtd pid {state.get('libvirtd_pid')}, watchdog {state.get('watchdog')}"
                )
            return 0
        record = cluster.down(args.workdir)
        _print_status(_status(record), args.format)
        return 0
    except cluster.ClusterError as exc:
        print(f"pvc-devcluster: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
