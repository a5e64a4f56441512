"""Benchmark: what the cluster costs at realistic size, against a real ZooKeeper and real pvcd processes.

Part (a), one local cluster of 3 nodes (`pvc-devcluster up --nodes 3
--keepalive-interval 1 --detach`: ZooKeeper, and per node a chassis with its
own libvirtd serving the test driver, its pvcd, BMC and watchdog) with 1,000
VMs, then 3,000:

* idle      — ZooKeeper requests per second with nothing changing, at 0, 1,000
              and 3,000 VMs: reads (all non-write requests), data reads and
              their bytes, writes; per node; ZooKeeper's and each pvcd's CPU;
              keepalives delivered against those due;
* start     — what one `pvc vm start` of a stopped VM costs the cluster: the
              requests in a window of --window seconds after the command, less
              the idle rate measured just before over the same length (median
              of --starts), and the time from launching the command until the
              VM's domain started on its node (the chassis journal);
* cli       — wall time of `pvc vm list`, `pvc vm define FILE --node NODE`,
              `pvc vm info`, `pvc node list`, and of `pvc --help` (the
              interpreter's start-up, part of every figure);
* flush     — `pvc node flush NODE --wait` of a node running --flush-vms VMs:
              VMs moved per second (and `pvc node ready NODE --wait`, which
              brings them back), with the requests and CPU it took;
* crash     — power loss of a node running --crash-vms VMs → every one of them
              started on another host (chassis journals on CLOCK_MONOTONIC),
              with bench/failover.py's own code (keepalive 1 s x 3 missed);
* large     — --large-vms VMs in all: idle and cli again.

Part (b), --sweep N1,N2,...: for each node count, a cluster of N nodes (each its
own chassis, libvirtd and pvcd, with its own ZooKeeper session) with
--sweep-vms VMs, stopped, keepalive --sweep-keepalive seconds (default 1, dead
after 3 missed; 100 nodes on 2 cores may need 5):

* idle      — as in (a), at 0 VMs and with the VMs, and the keepalive lateness
              below;
* start     — as in (a): the reads, bytes of answers, writes and the nodes' own
              requests caused by one VM state change (`pvc vm start` of a VM
              of a node that is neither the primary nor a crash victim),
              summed over the whole cluster, and the time until the owning
              node started its domain;
* burst     — --sweep-start-burst VMs (default 50), each on another node,
              started at once in-process: the window less the idle window
              before, per change (with many nodes the idle reads vary by more
              than one change costs; a burst divides that noise); the bench
              writer's own requests counted apart; start -> domain started;
* crash     — for each count of --sweep-crash-vms (default 30,333): that many
              VMs started on one node, which then loses power → every one of
              them started elsewhere (measure_crash, as in (a)), with the other
              nodes' keepalive lateness meanwhile. A different node each time,
              not the primary, non-coordinators first: a crashed node comes
              back fenced and stays so. The crash nodes carry exactly their
              crash sets, taken out of the --sweep-vms when they fit in it (in
              addition otherwise); the other VMs go round-robin over the other
              nodes;
* memory    — RSS and PSS of every pvcd, chassis, libvirtd and of ZooKeeper
              (/proc/PID/smaps_rollup) after `up`, with each idle window and at
              the end; the load average with each.

Keepalive lateness: from ZooKeeper's transaction log (DATADIR/version-2/log.*),
read from disk by the bench, so it costs ZooKeeper nothing and misses no
keepalive: each keepalive transaction's time; a keepalive's lateness is its gap
since the node's previous one less the interval (a node silent at the end of the
window counts the time since its last one); p50, p99 and max over all
keepalives, and over the nodes of each node's worst. The keepalives delivered
per due (from the counters, as in (a)) stay as well.

How ZooKeeper is measured: its own counters, read through the four-letter
words its configuration allows (mntr, stat): `zk_cnt_readlatency` counts every
request that is not a write (getData, getChildren, exists, and the sessions'
pings), `zk_cnt_updatelatency` the writes, `*_read_per_namespace` the data
reads and their bytes. Per node: `stat` lists each client connection with the
packets it sent; each node's connection comes from its chassis' relay, whose
socket is found through /proc/net/tcp and /proc/PID/fd (so this needs the
same user as the cluster, or root). CPU: /proc/PID/stat of the ZooKeeper java
process and of each pvcd.

VMs are defined quickly with the project's own code, in-process (what `pvc vm
define --node` and `pvc vm start` call: records.new_record + zk.vms.define,
records.state_change + zk.vms.VmWrite), in a loop; if those are not there any
more (a refactor), through `pvc` subprocesses instead. Each chassis' libvirtd
test host has 16 CPUs and 3 GiB of memory: VMs get 1 MiB and 1 vCPU, so
1,000 fit (placement counts memory only).

Everything is measured through the CLI, ZooKeeper's counters, /proc and the
journals, so the bench measures the code of any version. The code measured is
the tree this file is in: the bench puts it first on PYTHONPATH for every
`pvc`, `pvc-devcluster`, chassis and pvcd it starts. To measure another
version (e.g. the commit before a change), run a copy of this file inside an
export of it (`git archive COMMIT | tar -x -C DIR`; `python DIR/bench/scale.py`).

Usage: python bench/scale.py [--parts idle,start,cli,flush,crash,large] [--vms 1000] [--large-vms 3000]
                             [--flush-vms 20] [--crash-vms 333] [--starts 3] [--window 20]
                             [--sweep 10,20] [--sweep-vms 300] [--sweep-crash-vms 30,333]
                             [--sweep-start-burst 50] [--sweep-keepalive 1] [--out FILE]

100 nodes x 3,000 VMs, part (b) alone:
    python bench/scale.py --parts none --sweep 100 --sweep-vms 3000 --sweep-keepalive 5
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
if str(BENCH_DIR) not in sys.path:
    sys.path.append(str(BENCH_DIR))
# Every `pvc`, `pvc-devcluster`, chassis and pvcd started from here runs this tree's code, as the bench itself does.
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])

import failover  # noqa: E402

from pvcd.devcluster import check, cluster, journal  # noqa: E402
from pvcd.devcluster.zookeeper import four_letter  # noqa: E402
from pvcd.zk.security import Tls, ZkSecurity  # noqa: E402

PARTS = ("idle", "start", "cli", "flush", "crash", "large")
NODES = 3
VMS = 1000
LARGE_VMS = 3000
FLUSH_VMS = 20
CRASH_VMS = 333
STARTS = 3
WINDOW_S = 20.0
"""Counter windows: a multiple of the 5 s of pvcd's periodic passes, so that each window holds as many."""
CLI_RUNS = 3
SWEEP_VMS = 300
KEEPALIVE_S = 1
FENCE_INTERVALS = 3
VM_MEMORY_MIB = 1
PARALLEL = 8
"""`pvc` subprocesses at once on the fallback path."""
UP_TIMEOUT_S = 600.0
UP_TIMEOUT_PER_NODE_S = 10.0
SWEEP_CRASH_VMS = [30, 333]
SWEEP_START_BURST = 50
DEFAULT_OUT = REPO_ROOT / "bench" / "results" / "scale.json"
CLK_TCK = os.sysconf("SC_CLK_TCK")
TARGETS = {
    "crash_to_running_s": 6.0,
    "flush_vms_per_s": 20.0,
    "idle_reads_per_node_per_s": "a few, independent of the VM count",
    "start_reads_whole_cluster": "O(1) per node that cares",
    "vm_list_s_at_3000": 0.3,
    "vm_define_s_at_3000": 0.3,
}


class BenchError(Exception):
    pass


def domain_xml(name: str) -> str:
    return (
        f"<domain type='test'><name>{name}</name><memory unit='MiB'>{VM_MEMORY_MIB}</memory>"
        "<vcpu>1</vcpu><os><type>hvm</type></os></domain>"
    )


def vm_names(prefix: str, start: int, count: int) -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(start, start + count)]


def r(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- processes --------------------------------------------------------------------------------------------------


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a process so far (/proc/PID/stat), None if it is gone."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int | None) -> float | None:
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def memory_kib(pid: int | None) -> tuple[int, int] | None:
    """RSS and PSS of a process in KiB (/proc/PID/smaps_rollup), None if it is gone.

    PSS shares each shared page among the processes that map it: their sum is what they take together."""
    if not pid:
        return None
    found = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                key, _, rest = line.partition(":")
                if key in ("Rss", "Pss"):
                    found[key] = int(rest.split()[0])
    except (OSError, ValueError):
        return None
    return (found["Rss"], found["Pss"]) if len(found) == 2 else None


def mem_available_mib() -> float | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def socket_inodes(pid: int) -> set[int]:
    found = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                found.add(int(link[8:-1]))
    except OSError:
        pass
    return found


def client_ports_by_inode(server_port: int) -> dict[int, int]:
    """Socket inode -> local port of every TCP connection to `server_port` on this host."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, remote, inode = parts[1], parts[2], int(parts[9])
            if int(remote.rsplit(":", 1)[1], 16) == server_port and inode:
                found[inode] = int(local.rsplit(":", 1)[1], 16)
    return found


# -- ZooKeeper's counters ---------------------------------------------------------------------------------------


@dataclass
class Snapshot:
    t: float
    reads: int
    writes: int
    packets: int
    data_reads: int
    data_bytes: int
    zk_cpu_s: float | None
    by_node: dict[str, int] = field(default_factory=dict)
    """Packets each node's connections sent ZooKeeper so far."""
    ports: dict[int, tuple[str, int]] = field(default_factory=dict)
    """Client port -> (its node, or "-" for any other client; packets so far)."""
    pvcd_cpu_s: dict[str, float | None] = field(default_factory=dict)


class ZooKeeper:
    """ZooKeeper's counters through the four-letter words, and its process' CPU."""

    def __init__(self, address: str, pid: int | None, tls: dict[str, str] | None = None) -> None:
        host, port = address.rsplit(":", 1)
        self.host, self.port, self.pid = host, int(port), pid
        self.tls = tls
        """The cluster's CA and client certificate: its ZooKeeper answers the words over TLS only."""

    def four(self, command: str) -> str:
        return four_letter(self.host, self.port, command, Tls(**self.tls) if self.tls is not None else None, 10.0)

    def mntr(self) -> dict[str, float]:
        values = {}
        for line in self.four("mntr").splitlines():
            key, _, value = line.partition("\t")
            try:
                values[key] = float(value)
            except ValueError:
                continue
        return values

    def clients(self) -> dict[int, int]:
        """Client port -> packets received from that connection (`stat`)."""
        found = {}
        for line in self.four("stat").splitlines():
            line = line.strip()
            if line.startswith("/") and "recved=" in line:
                port = int(line.split("[", 1)[0].rsplit(":", 1)[1])
                found[port] = int(line.split("recved=", 1)[1].split(",", 1)[0])
        return found

    def snapshot(self, owners: Callable[[], dict[int, str]], pvcds: Callable[[], dict[str, int | None]]) -> Snapshot:
        pids = pvcds()
        pvcd_cpu = {name: cpu_seconds(pid) for name, pid in pids.items()}
        values = self.mntr()
        clients = self.clients()
        zk_cpu = cpu_seconds(self.pid)
        t = time.monotonic()
        by_port = owners()
        ports = {port: (by_port.get(port, "-"), count) for port, count in clients.items()}
        by_node: dict[str, int] = {}
        for node, count in ports.values():
            by_node[node] = by_node.get(node, 0) + count
        per_namespace = [(k, v) for k, v in values.items() if k.endswith("_read_per_namespace")]
        namespaces_cnt = sum(v for k, v in per_namespace if k.startswith("zk_cnt_"))
        namespaces_sum = sum(v for k, v in per_namespace if k.startswith("zk_sum_"))
        return Snapshot(
            t=t,
            reads=int(values.get("zk_cnt_readlatency", 0)),
            writes=int(values.get("zk_cnt_updatelatency", 0)),
            packets=int(values.get("zk_packets_received", 0)),
            data_reads=int(namespaces_cnt),
            data_bytes=int(namespaces_sum),
            zk_cpu_s=zk_cpu,
            by_node=by_node,
            ports=ports,
            pvcd_cpu_s=pvcd_cpu,
        )


def delta(a: Snapshot, b: Snapshot) -> dict[str, Any]:
    """What happened between two snapshots: totals, per node, CPU."""
    per_node: dict[str, int] = {}
    others = 0
    for port, (node, count) in b.ports.items():
        before = a.ports.get(port)
        grew = count - before[1] if before is not None and before[0] == node else count
        if node != "-":
            per_node[node] = per_node.get(node, 0) + max(grew, 0)
        elif before is not None:
            # A connection of no node that lasted the whole window: the bench's own writer, if open.
            others += max(grew, 0)
    cpu: dict[str, float | None] = {}
    for name, after in b.pvcd_cpu_s.items():
        before_cpu = a.pvcd_cpu_s.get(name)
        cpu[name] = after - before_cpu if after is not None and before_cpu is not None and after >= before_cpu else None
    return {
        "seconds": b.t - a.t,
        "reads": b.reads - a.reads,
        "writes": b.writes - a.writes,
        "packets": b.packets - a.packets,
        "data_reads": b.data_reads - a.data_reads,
        "data_bytes": b.data_bytes - a.data_bytes,
        "zk_cpu_s": (b.zk_cpu_s - a.zk_cpu_s) if a.zk_cpu_s is not None and b.zk_cpu_s is not None else None,
        "node_requests": dict(sorted(per_node.items())),
        "other_requests": others,
        "pvcd_cpu_s": dict(sorted(cpu.items())),
    }


def rates(d: dict[str, Any], nodes: int) -> dict[str, Any]:
    s = d["seconds"]
    node_rates = {n: c / s for n, c in d["node_requests"].items()}
    cpu = [c for c in d["pvcd_cpu_s"].values() if c is not None]
    return {
        "window_s": r(s, 2),
        "reads_per_s": r(d["reads"] / s, 1),
        "reads_per_node_per_s": r(d["reads"] / s / nodes, 1),
        "data_reads_per_s": r(d["data_reads"] / s, 1),
        "data_kib_per_s": r(d["data_bytes"] / s / 1024, 1),
        "writes_per_s": r(d["writes"] / s, 2),
        "node_requests_per_s": {n: r(v, 1) for n, v in node_rates.items()},
        "node_requests_per_s_max": r(max(node_rates.values()), 1) if node_rates else None,
        "zk_cpu_percent": r(100 * d["zk_cpu_s"] / s, 1) if d["zk_cpu_s"] is not None else None,
        "pvcd_cpu_percent_each": {n: r(100 * c / s, 1) if c is not None else None for n, c in d["pvcd_cpu_s"].items()},
        "pvcd_cpu_percent_total": r(100 * sum(cpu) / s, 1) if cpu else None,
    }


# -- keepalive lateness, from ZooKeeper's transaction log ------------------------------------------------------

TXN_LOG_MAGIC = 0x5A4B4C47
"""'ZKLG': the first four bytes of a ZooKeeper transaction log file."""
TXN_SET_DATA = 5
TXN_MULTI = 14
KEEPALIVE_SUFFIX = "/keepalive"


class TxnLog:
    """Every keepalive write of every node, with ZooKeeper's own time of it, read from its transaction log.

    ZooKeeper logs each transaction before it applies it, with the leader's wall-clock time (the znode's mtime):
    reading the log costs ZooKeeper nothing (no request, no session), and misses no keepalive, however many
    nodes there are. A node's keepalive is one multi transaction (check fence, set state, set keepalive); a
    plain setData of a keepalive znode counts as well. The log files (`version-2/log.ZXID`) are preallocated
    with zeros; a file is read up to its first empty entry, and again from there on the next call.
    """

    def __init__(self, data_dir: Path) -> None:
        self.directory = data_dir / "version-2"
        self.offsets: dict[Path, int] = {}
        self.times: dict[str, list[int]] = {}
        """Node -> the ZooKeeper times (ms) of its keepalive writes so far, in log order."""

    def read(self) -> dict[str, list[int]]:
        for path in sorted(self.directory.glob("log.*"), key=lambda p: int(p.suffix[1:], 16)):
            with open(path, "rb") as log:
                offset = self.offsets.get(path)
                if offset is None:
                    header = log.read(16)
                    if len(header) < 16 or struct.unpack(">i", header[:4])[0] != TXN_LOG_MAGIC:
                        continue
                    offset = 16
                log.seek(offset)
                while True:
                    head = log.read(12)
                    if len(head) < 12:
                        break
                    _crc, length = struct.unpack(">qi", head)
                    if length <= 0:
                        break
                    body = log.read(length + 1)
                    if len(body) < length + 1 or body[-1] != 0x42:  # 'B', end of record: not all written yet
                        break
                    offset += 12 + length + 1
                    self._entry(body[:-1])
                self.offsets[path] = offset
        return self.times

    def _entry(self, txn: bytes) -> None:
        # TxnHeader: clientId (long), cxid (int), zxid (long), time (long), type (int).
        t, kind = struct.unpack_from(">qi", txn, 20)
        paths = []
        if kind == TXN_SET_DATA:
            paths.append(self._string(txn, 32))
        elif kind == TXN_MULTI:
            (count,) = struct.unpack_from(">i", txn, 32)
            at = 36
            for _ in range(count):
                sub, size = struct.unpack_from(">ii", txn, at)
                if sub == TXN_SET_DATA:
                    paths.append(self._string(txn, at + 8))
                at += 8 + size
        for path in paths:
            if path.endswith(KEEPALIVE_SUFFIX):
                node = path[: -len(KEEPALIVE_SUFFIX)].rsplit("/", 1)[-1]
                self.times.setdefault(node, []).append(t)

    @staticmethod
    def _string(txn: bytes, at: int) -> str:
        (size,) = struct.unpack_from(">i", txn, at)
        return txn[at + 4 : at + 4 + size].decode(errors="replace")


def percentile(values: list[float], share: float) -> float | None:
    """The value below which `share` of `values` lie (nearest rank)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def keepalive_lateness(
    times: dict[str, list[int]], start_ms: float, end_ms: float, interval: float, skip: set[str] | None = None
) -> dict[str, Any]:
    """How late the nodes' keepalives were between two wall-clock times (ms), from their ZooKeeper times.

    A keepalive's lateness is its gap since the node's keepalive before, less the interval (the daemon keeps a
    fixed schedule: on time, every gap is one interval); a node silent at the end of the window counts the gap
    since its last keepalive as well. Per keepalive: p50, p99 and max over every keepalive of every node; per
    node: its largest lateness, then p50, p99 and max of those over the nodes."""
    lateness: list[float] = []
    worst: dict[str, float] = {}
    for node, stamps in sorted(times.items()):
        if skip and node in skip:
            continue
        before = [t for t in stamps if t < start_ms]
        inside = [t for t in stamps if start_ms <= t <= end_ms]
        mine = [before[-1], *inside] if before else inside
        gaps = [(b - a) / 1000 for a, b in zip(mine, mine[1:], strict=False)]
        tail = (end_ms - mine[-1]) / 1000 if mine else (end_ms - start_ms) / 1000
        if tail > interval:
            gaps.append(tail)
        late = [max(0.0, g - interval) for g in gaps]
        lateness.extend(late)
        worst[node] = max(late, default=0.0)
    per_node = list(worst.values())
    latest = max(worst, key=lambda n: worst[n]) if worst else None
    return {
        "source": "ZooKeeper's transaction log: each keepalive's time (ms), gap since the node's previous one",
        "interval_s": interval,
        "window_s": r((end_ms - start_ms) / 1000, 2),
        "nodes": len(worst),
        "keepalives": len(lateness),
        "lateness_s": {
            "p50": r(percentile(lateness, 0.5)),
            "p99": r(percentile(lateness, 0.99)),
            "max": r(max(lateness, default=0.0)),
        },
        "node_max_lateness_s": {
            "p50": r(percentile(per_node, 0.5)),
            "p99": r(percentile(per_node, 0.99)),
            "max": r(max(per_node, default=0.0)),
            "node": latest,
        },
        "late_keepalives": sum(1 for x in lateness if x >= interval),
        "nodes_late_once": sum(1 for x in per_node if x >= interval),
    }


# -- writing many VMs fast --------------------------------------------------------------------------------------


class InProcessWriter:
    """`pvc vm define --node` and `pvc vm start` without their start-up and whole-cluster checks:
    the same record functions and the same transactions, in a loop over one ZooKeeper session."""

    kind = "in-process (records.new_record + zk.vms.define; records.state_change + zk.vms.VmWrite)"

    def __init__(self, zookeeper: str, security: ZkSecurity | None) -> None:
        from pvcd.cluster import vm_records as records
        from pvcd.zk import vms
        from pvcd.zk.store import Store

        self._records, self._vms = records, vms
        self._store = Store(zookeeper, security=security)
        self._store.start()

    def close(self) -> None:
        self._store.stop()

    def define(self, name: str, node: str) -> None:
        spec = self._records.parse_domain_xml(domain_xml(name))
        self._vms.define(self._store, self._records.new_record(spec, node))

    def start(self, name: str) -> None:
        view = self._vms.read_vm(self._store, name)
        if view is None:
            raise BenchError(f"VM {name} vanished")
        record = self._records.state_change(view, self._records.VmState.START)
        self._vms.VmWrite(self._store, view).record(record).commit()


class SubprocessWriter:
    """The fallback: `pvc vm define FILE --node NODE` and `pvc vm start NAME`, PARALLEL at a time."""

    kind = "pvc subprocesses"

    def __init__(self, runner: Cli) -> None:
        self._cli = runner
        self._pending: list[list[str]] = []

    def close(self) -> None:
        self.flush()

    def define(self, name: str, node: str) -> None:
        path = self._cli.workdir / f"{name}.xml"
        path.write_text(domain_xml(name))
        self._pending.append(["vm", "define", str(path), "--node", node])
        if len(self._pending) >= PARALLEL:
            self.flush()

    def start(self, name: str) -> None:
        self._pending.append(["vm", "start", name])
        if len(self._pending) >= PARALLEL:
            self.flush()

    def flush(self) -> None:
        group, self._pending = self._pending, []
        running = [(c, self._cli.popen(c)) for c in group]
        for command, process in running:
            out, err = process.communicate(timeout=600)
            if process.returncode != 0:
                raise BenchError(f"pvc {' '.join(command)}: {err.strip() or out.strip()}")


# -- one cluster ------------------------------------------------------------------------------------------------


class Cli:
    def __init__(self, workdir: Path, environment: dict[str, str]) -> None:
        """`environment`: what `pvc` needs to reach the cluster (address, credentials, TLS files)."""
        self.workdir = workdir
        self.env = dict(os.environ, **environment)

    def popen(self, args: list[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [failover.tool("pvc"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env
        )

    def run(self, *args: str, timeout: float = 600) -> tuple[str, float]:
        """Output and wall time of one `pvc` command."""
        t = time.monotonic()
        result = subprocess.run(
            [failover.tool("pvc"), *args], capture_output=True, text=True, timeout=timeout, env=self.env
        )
        took = time.monotonic() - t
        if result.returncode != 0:
            raise BenchError(f"pvc {' '.join(args)}: {result.stderr.strip() or result.stdout.strip()}")
        return result.stdout, took


class Cluster:
    """One local cluster started with `pvc-devcluster up`, stopped by `close` whatever happened."""

    def __init__(self, nodes: int, keepalive: int = KEEPALIVE_S, fence_intervals: int = FENCE_INTERVALS) -> None:
        self.count = nodes
        self.keepalive = keepalive
        self.fence_intervals = fence_intervals
        self.workdir = Path(tempfile.mkdtemp(prefix=f"pvcd-scale-{nodes}-", dir="/tmp"))
        self.started = False
        self.writer: InProcessWriter | SubprocessWriter | None = None
        self.failover: failover.Bench | None = None
        self.vms: dict[str, str] = {}
        """Every VM the bench defined -> the node it was defined on."""
        self.notes: list[str] = []
        self.not_ready: set[str] = set()
        """Nodes left out of service on purpose (a crashed node that came back): may stay fenced, not ready."""

    def up(self) -> None:
        t = time.monotonic()
        self.mem_available_before_mib = mem_available_mib()
        result = subprocess.run(
            [
                failover.tool("pvc-devcluster"),
                "up",
                "--nodes",
                str(self.count),
                "--workdir",
                str(self.workdir),
                "--keepalive-interval",
                str(self.keepalive),
                "--fence-intervals",
                str(self.fence_intervals),
                "--watchdog-timeout",
                str(2 * self.keepalive * self.fence_intervals),
                "--detach",
            ],
            capture_output=True,
            text=True,
            timeout=UP_TIMEOUT_S + UP_TIMEOUT_PER_NODE_S * self.count,
        )
        self.started = True
        if result.returncode != 0:
            raise BenchError(f"pvc-devcluster up: {result.stderr.strip()}")
        self.record = cluster.load(self.workdir)
        self.zk = ZooKeeper(self.record.zookeeper, self.record.zookeeper_pid, self.record.zookeeper_tls)
        self.cli = Cli(self.workdir, self.record.client_environment())
        self.txn_log = TxnLog(Path(self.record.zookeeper_dir) / "data")
        self.up_s = time.monotonic() - t
        self.wait_quiet(timeout=120 + 3 * self.count)
        self.quiet_s = time.monotonic() - t

    def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception as exc:  # the cluster must come down whatever happened
                print(f"  closing the writer: {exc}", file=sys.stderr)
        if self.failover is not None:
            self.failover.close()
        if not self.started:
            return
        down = subprocess.run(
            [failover.tool("pvc-devcluster"), "down", "--workdir", str(self.workdir)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if down.returncode != 0:
            print(f"pvc-devcluster down --workdir {self.workdir}: {down.stderr.strip()}", file=sys.stderr)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- what runs ---------------------------------------------------------------------------------------------

    def pvcd_pids(self) -> dict[str, int | None]:
        return {n.name: cluster.node_pid(n) for n in self.record.nodes}

    def connection_owners(self) -> dict[int, str]:
        """Client port of each connection to ZooKeeper -> the node whose chassis relays it."""
        ports = client_ports_by_inode(self.zk.port)
        owners = {}
        for node in self.record.nodes:
            if node.chassis_pid is None:
                continue
            for inode in socket_inodes(node.chassis_pid):
                if inode in ports:
                    owners[ports[inode]] = node.name
        return owners

    def snapshot(self) -> Snapshot:
        return self.zk.snapshot(self.connection_owners, self.pvcd_pids)

    def memory(self) -> dict[str, Any]:
        """RSS and PSS of every process of the cluster, by kind, in MiB; and the machine's available memory.

        RSS counts the pages shared between processes (the interpreter, libvirt's libraries) once per process;
        PSS divides them among the processes sharing them, so the PSS total is what the cluster takes."""
        kinds: dict[str, list[tuple[int, int]]] = {"pvcd": [], "chassis": [], "libvirtd": [], "zookeeper": []}
        for node in self.record.nodes:
            state = node.current() if cluster.chassis_running(node) else {}
            for kind, pid in (
                ("pvcd", state.get("pvcd_pid")),
                ("chassis", node.chassis_pid),
                ("libvirtd", state.get("libvirtd_pid")),
            ):
                found = memory_kib(pid)
                if found is not None:
                    kinds[kind].append(found)
        found = memory_kib(self.zk.pid)
        if found is not None:
            kinds["zookeeper"].append(found)
        by_kind = {
            kind: {
                "processes": len(values),
                "rss_mib": r(sum(v[0] for v in values) / 1024, 1),
                "pss_mib": r(sum(v[1] for v in values) / 1024, 1),
            }
            for kind, values in kinds.items()
        }
        nodes_pss = sum(v[1] for kind in ("pvcd", "chassis", "libvirtd") for v in kinds[kind]) / 1024
        available = mem_available_mib()
        return {
            "by_kind": by_kind,
            "rss_mib_total": r(sum(v[0] for values in kinds.values() for v in values) / 1024, 1),
            "pss_mib_total": r(sum(v[1] for values in kinds.values() for v in values) / 1024, 1),
            "pss_mib_per_node": r(nodes_pss / self.count, 1),
            "mem_available_mib": r(available, 0),
            "mem_available_before_up_mib": r(self.mem_available_before_mib, 0),
            "mem_used_since_up_mib": r(self.mem_available_before_mib - available, 0)
            if available is not None and self.mem_available_before_mib is not None
            else None,
        }

    def node_journal(self, node: str) -> list[journal.Entry]:
        """One node's chassis journal (reading all of them, as often as a start is polled, costs with 100)."""
        path = Path(self.record.node(node).journal)
        try:
            return journal.parse(path.read_text(), str(path))
        except (OSError, journal.JournalError) as exc:
            raise BenchError(f"cannot read the journal of {node}: {exc}") from exc

    def node_list(self) -> list[dict[str, Any]]:
        out, _ = self.cli.run("node", "list", "--format", "json")
        nodes: list[dict[str, Any]] = json.loads(out)
        return nodes

    def quiet(self) -> list[dict[str, Any]] | None:
        try:
            nodes = self.node_list()
        except BenchError:
            return None
        if len(nodes) != self.count or [n["coordinator_state"] for n in nodes].count("primary") != 1:
            return None
        # A crashed node that came back stays fenced (its fence pending) until made ready.
        if any(
            n["daemon_state"] != "run"
            or n["keepalive"]["late"]
            or (n["name"] not in self.not_ready and (n["fence"]["pending"] or n["domain_state"] != "ready"))
            for n in nodes
        ):
            return None
        return nodes

    def wait_quiet(self, timeout: float = 300) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = failover.wait_until(self.quiet, timeout, "the cluster to be quiet", poll=1.0)
        return found

    def roles(self) -> tuple[str, list[str]]:
        """The primary, and the other nodes sorted."""
        nodes = self.wait_quiet()
        primary = next(n["name"] for n in nodes if n["coordinator_state"] == "primary")
        return primary, sorted(n["name"] for n in nodes if n["name"] != primary)

    def running(self) -> dict[str, list[str]]:
        return journal.running(journal.runs(check.read_journals(self.record)))

    def wait_running(self, names: list[str], node: str | None, timeout: float) -> float:
        """Wait until every VM runs on `node` (any one node if None), per the journals; the time it took."""
        t = time.monotonic()
        wanted = set(names)

        def done() -> bool:
            where = self.running()
            return all(len(where.get(n, [])) == 1 and (node is None or where[n] == [node]) for n in wanted)

        failover.wait_until(done, timeout, f"{len(names)} VMs running" + (f" on {node}" if node else ""), poll=0.5)
        return time.monotonic() - t

    # -- writing VMs -------------------------------------------------------------------------------------------

    def get_writer(self) -> InProcessWriter | SubprocessWriter:
        if self.writer is None:
            try:
                self.writer = InProcessWriter(self.record.zookeeper, self.record.client_security())
            except (ImportError, AttributeError, TypeError) as exc:
                self.notes.append(f"in-process writer not available ({exc}); VMs written with pvc subprocesses")
                self.writer = SubprocessWriter(self.cli)
        return self.writer

    def define(self, names: list[str], nodes: list[str]) -> float:
        """Define `names`, round-robin over `nodes`; the seconds it took."""
        t = time.monotonic()
        writer = self.get_writer()
        for index, name in enumerate(names):
            node = nodes[index % len(nodes)]
            try:
                writer.define(name, node)
            except (AttributeError, TypeError) as exc:
                if not isinstance(writer, InProcessWriter):
                    raise
                self.notes.append(f"in-process define failed ({exc}); VMs written with pvc subprocesses")
                writer.close()
                writer = self.writer = SubprocessWriter(self.cli)
                writer.define(name, node)
            self.vms[name] = node
        if isinstance(writer, SubprocessWriter):
            writer.flush()
        return time.monotonic() - t

    def start(self, names: list[str]) -> float:
        t = time.monotonic()
        writer = self.get_writer()
        for name in names:
            writer.start(name)
        if isinstance(writer, SubprocessWriter):
            writer.flush()
        return time.monotonic() - t

    def release_writer(self) -> None:
        """No ZooKeeper session of the bench's own during the measurements."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# -- the measurements -------------------------------------------------------------------------------------------


def keepalive_counters(c: Cluster) -> dict[str, int]:
    return {n["name"]: int(n["keepalive"]["counter"] or 0) for n in c.node_list()}


SETTLE_SAMPLE_S = 3.0
SETTLE_TIMEOUT_S = 120.0


def wait_settled(c: Cluster) -> float:
    """Wait (bounded) until ZooKeeper's read rate stops falling: two consecutive samples within 8 %
    (or 2 reads/s per node) of each other. Right after thousands of VMs were defined or started the
    nodes are still reading them in; an idle window must not measure that tail. Returns the wait."""
    began = time.monotonic()
    previous: float | None = None
    last = c.snapshot()
    while time.monotonic() - began < SETTLE_TIMEOUT_S:
        time.sleep(SETTLE_SAMPLE_S)
        now = c.snapshot()
        rate = (now.reads - last.reads) / max(now.t - last.t, 1e-6)
        last = now
        if previous is not None and abs(rate - previous) <= max(0.08 * previous, 2.0 * c.count):
            break
        previous = rate
    return time.monotonic() - began


def measure_idle(c: Cluster, window: float, label: str) -> dict[str, Any]:
    c.release_writer()
    c.wait_quiet()
    settled_s = wait_settled(c)
    before_ka, t_ka = keepalive_counters(c), time.monotonic()
    a = c.snapshot()
    wall_a = time.time()
    time.sleep(window)
    b = c.snapshot()
    wall_b = time.time()
    after_ka, t_ka2 = keepalive_counters(c), time.monotonic()
    due = (t_ka2 - t_ka) / c.keepalive
    delivered = {n: r((after_ka.get(n, 0) - v) / due, 2) for n, v in before_ka.items()}
    result = {
        "label": label,
        "vms": len(c.vms),
        "nodes": c.count,
        "settled_after_s": r(settled_s, 1),
        **rates(delta(a, b), c.count),
        "keepalives_delivered_per_due": delivered,
        "keepalives_delivered_per_due_min": min((v for v in delivered.values() if v is not None), default=None),
        "keepalive_lateness": keepalive_lateness(c.txn_log.read(), wall_a * 1000, wall_b * 1000, c.keepalive),
        "pvcd_rss_mib": {n: r(rss_mib(p), 1) for n, p in c.pvcd_pids().items()},
        "zk_rss_mib": r(rss_mib(c.zk.pid), 1),
        "memory": c.memory(),
        "loadavg": loadavg(),
    }
    lateness = result["keepalive_lateness"]
    if c.count > 10:
        per_node = (
            f"node requests/s max {result['node_requests_per_s_max']}, "
            f"keepalives delivered/due min {result['keepalives_delivered_per_due_min']}"
        )
    else:
        per_node = (
            f"node requests/s {result['node_requests_per_s']}, keepalives delivered/due "
            f"{result['keepalives_delivered_per_due']}"
        )
    print(
        f"  idle, {c.count} nodes, {len(c.vms)} VMs: {result['reads_per_s']} reads/s "
        f"({result['reads_per_node_per_s']}/node), {result['data_kib_per_s']} KiB/s, {per_node}, ZooKeeper CPU "
        f"{result['zk_cpu_percent']}%, pvcd CPU {result['pvcd_cpu_percent_total']}% in all; keepalive lateness "
        f"p50/p99/max {lateness['lateness_s']['p50']}/{lateness['lateness_s']['p99']}/"
        f"{lateness['lateness_s']['max']} s over {lateness['keepalives']} keepalives; memory PSS "
        f"{result['memory']['pss_mib_total']} MiB ({result['memory']['pss_mib_per_node']} per node), "
        f"load average {result['loadavg']}",
        flush=True,
    )
    return result


def measure_start(c: Cluster, names: list[str], window: float) -> dict[str, Any]:
    """Each VM: an idle window, then `pvc vm start` and a window of the same length from the command.

    The cost of a start is its window less the idle rate over the same time; the idle rate is the median over
    every idle window of the series (pvcd's periodic passes make one window differ from the next by up to a
    pass of every node: the spread is reported).
    """
    c.release_writer()
    windows: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = []
    for name in names:
        node = c.vms[name]
        c.wait_quiet()
        a = c.snapshot()
        time.sleep(window)
        b = c.snapshot()
        base = delta(a, b)
        t0 = time.monotonic()
        _, cli_s = c.cli.run("vm", "start", name)
        acted: float | None = None
        while time.monotonic() < t0 + max(window, 120):
            started = [e.t for e in c.node_journal(node) if e.event == journal.START and e.vm == name and e.t >= t0]
            if started:
                acted = min(started) - t0
                break
            time.sleep(0.05)
        remaining = t0 + window - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
        d = delta(b, c.snapshot())
        windows.append(
            (
                base,
                d,
                {
                    "vm": name,
                    "node": node,
                    "cli_s": r(cli_s),
                    "start_to_domain_started_s": r(acted),
                    "window_s": r(d["seconds"], 2),
                },
            )
        )
        print(
            f"  start {name} on {node}: {d['reads']} reads in {d['seconds']:.1f} s after the command, "
            f"{base['reads']} in the idle window before; domain started {r(acted)} s after the command",
            flush=True,
        )

    def idle_rate(value: Callable[[dict[str, Any]], float | None]) -> float | None:
        found = [v / base["seconds"] for base, _, _ in windows if (v := value(base)) is not None]
        return median(found)

    def extra(d: dict[str, Any], value: Callable[[dict[str, Any]], float | None]) -> float | None:
        now, rate = value(d), idle_rate(value)
        return None if now is None or rate is None else now - rate * d["seconds"]

    def pvcd_total(x: dict[str, Any]) -> float | None:
        cpu = [v for v in x["pvcd_cpu_s"].values() if v is not None]
        return sum(cpu) if len(cpu) == len(x["pvcd_cpu_s"]) else None

    def node_getter(node: str) -> Callable[[dict[str, Any]], float | None]:
        return lambda x: x["node_requests"].get(node)

    def nodes_total(x: dict[str, Any]) -> float | None:
        return float(sum(x["node_requests"].values())) if x["node_requests"] else None

    runs: list[dict[str, Any]] = []
    for _, d, meta in windows:
        runs.append(
            {
                **meta,
                "reads": r(extra(d, lambda x: x["reads"]), 0),
                "data_reads": r(extra(d, lambda x: x["data_reads"]), 0),
                "data_kib": r((extra(d, lambda x: x["data_bytes"]) or 0) / 1024, 1),
                "writes": r(extra(d, lambda x: x["writes"]), 0),
                "node_requests": {n: r(extra(d, node_getter(n)), 0) for n in d["node_requests"]},
                "node_requests_sum": r(extra(d, nodes_total), 0),
                "zk_cpu_s": r(extra(d, lambda x: x["zk_cpu_s"]), 2),
                "pvcd_cpu_s": r(extra(d, pvcd_total), 2),
                "reads_in_window": d["reads"],
            }
        )
    idle_reads = [base["reads"] / base["seconds"] * window for base, _, _ in windows]

    def med(key: str) -> float | None:
        return r(median([float(x[key]) for x in runs if x[key] is not None]), 2)

    result: dict[str, Any] = {
        "vms": len(c.vms),
        "nodes": c.count,
        "window_s": window,
        "runs": runs,
        "idle_reads_per_window": [r(x, 0) for x in idle_reads],
        "idle_reads_per_window_spread": r(max(idle_reads) - min(idle_reads), 0) if idle_reads else None,
        "median": {
            k: med(k)
            for k in (
                "reads",
                "data_reads",
                "data_kib",
                "writes",
                "node_requests_sum",
                "zk_cpu_s",
                "pvcd_cpu_s",
                "start_to_domain_started_s",
                "cli_s",
            )
        },
    }
    result["reads_per_node_median"] = r((result["median"]["reads"] or 0) / c.count, 0)
    for run in runs:
        print(
            f"  start {run['vm']}: +{run['reads']} reads, +{run['data_kib']} KiB, "
            f"+{run['node_requests_sum']} requests from the nodes, "
            f"ZooKeeper +{run['zk_cpu_s']} CPU-s, pvcd +{run['pvcd_cpu_s']} CPU-s",
            flush=True,
        )
    print(f"  idle windows before them: {result['idle_reads_per_window']} reads", flush=True)
    return result


def measure_start_batch(c: Cluster, names: list[str], window: float) -> dict[str, Any]:
    """A burst of VM state changes at once (`pvc vm start`'s code, in-process), each VM on another node: the
    requests of the window less those of the idle window just before, divided by the changes.

    With many nodes the idle reads (every node following every keepalive) are thousands per window and vary
    by more than one change costs; a burst of K changes divides that noise by K. The bench's writer session
    is open through both windows (its pings cancel out); its own requests (3 reads and a transaction per
    start) are counted from its connection and reported apart."""
    c.release_writer()
    c.wait_quiet()
    c.get_writer()  # its session open from here on: its connection is in both windows
    time.sleep(1.0)
    a = c.snapshot()
    time.sleep(window)
    b = c.snapshot()
    t0 = time.monotonic()
    c.start(names)
    issued_s = time.monotonic() - t0
    acted: dict[str, float] = {}
    by_node: dict[str, list[str]] = {}
    for name in names:
        by_node.setdefault(c.vms[name], []).append(name)
    while len(acted) < len(names) and time.monotonic() < t0 + max(window, 120):
        for node, mine in by_node.items():
            if all(n in acted for n in mine):
                continue
            for e in c.node_journal(node):
                if e.event == journal.START and e.vm in mine and e.t >= t0 and e.vm not in acted:
                    acted[e.vm] = e.t - t0
        time.sleep(0.1)
    remaining = t0 + window - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
    after = c.snapshot()
    c.release_writer()
    base, d = delta(a, b), delta(b, after)
    k = len(names)

    def per_change(value: Callable[[dict[str, Any]], float | None]) -> float | None:
        now, idle = value(d), value(base)
        if now is None or idle is None:
            return None
        return (now - idle / base["seconds"] * d["seconds"]) / k

    def nodes_total(x: dict[str, Any]) -> float:
        return float(sum(x["node_requests"].values()))

    def pvcd_total(x: dict[str, Any]) -> float | None:
        cpu = [v for v in x["pvcd_cpu_s"].values() if v is not None]
        return sum(cpu) if len(cpu) == len(x["pvcd_cpu_s"]) else None

    times = sorted(acted.values())
    result: dict[str, Any] = {
        "vms": len(c.vms),
        "nodes": c.count,
        "changes": k,
        "on_nodes": len(by_node),
        "window_s": r(d["seconds"], 2),
        "issued_s": r(issued_s, 2),
        "writer": c.writer.kind if c.writer is not None else "in-process",
        "acted": len(acted),
        "start_to_domain_started_s": {
            "p50": r(percentile(times, 0.5)),
            "max": r(max(times, default=None)) if times else None,
        },
        "per_change": {
            "reads": r(per_change(lambda x: x["reads"]), 1),
            "data_reads": r(per_change(lambda x: x["data_reads"]), 1),
            "data_kib": r((per_change(lambda x: x["data_bytes"]) or 0) / 1024, 2),
            "writes": r(per_change(lambda x: x["writes"]), 2),
            "node_requests": r(per_change(nodes_total), 1),
            "bench_writer_requests": r(per_change(lambda x: x["other_requests"]), 1),
            "zk_cpu_s": r(per_change(lambda x: x["zk_cpu_s"]), 3),
            "pvcd_cpu_s": r(per_change(pvcd_total), 3),
        },
        "reads_in_window": d["reads"],
        "reads_in_idle_window": base["reads"],
    }
    x = result["per_change"]
    print(
        f"  burst of {k} starts on {len(by_node)} nodes: per change +{x['reads']} reads "
        f"(the bench's writer {x['bench_writer_requests']} requests of them), +{x['data_kib']} KiB, "
        f"+{x['node_requests']} requests from the nodes, ZooKeeper +{x['zk_cpu_s']} CPU-s, pvcd "
        f"+{x['pvcd_cpu_s']} CPU-s; {len(acted)}/{k} domains started, p50 "
        f"{result['start_to_domain_started_s']['p50']} s, last {result['start_to_domain_started_s']['max']} s "
        f"after the first command ({d['reads']} reads in the window, {base['reads']} in the idle one before)",
        flush=True,
    )
    if len(acted) < k:
        c.notes.append(f"burst: {k - len(acted)} of {k} domains not started within the wait")
    return result


def time_cli(c: Cluster, runs: int, node: str, prefix: str) -> dict[str, Any]:
    c.release_writer()
    c.wait_quiet()
    some = sorted(c.vms)[0]
    times: dict[str, list[float]] = {
        "pvc --help": [],
        "pvc vm list": [],
        "pvc vm list --format json": [],
        "pvc vm info": [],
        "pvc node list": [],
        "pvc vm define --node": [],
    }
    for index in range(runs):
        times["pvc --help"].append(c.cli.run("--help")[1])
        times["pvc vm list"].append(c.cli.run("vm", "list")[1])
        times["pvc vm list --format json"].append(c.cli.run("vm", "list", "--format", "json")[1])
        times["pvc vm info"].append(c.cli.run("vm", "info", some)[1])
        times["pvc node list"].append(c.cli.run("node", "list")[1])
        name = f"{prefix}{len(c.vms):05d}d{index}"
        path = c.workdir / f"{name}.xml"
        path.write_text(domain_xml(name))
        times["pvc vm define --node"].append(c.cli.run("vm", "define", str(path), "--node", node)[1])
        c.vms[name] = node
    result: dict[str, Any] = {
        "vms": len(c.vms),
        "runs": runs,
        "median_s": {k: r(median(v)) for k, v in times.items()},
        "all_s": {k: [r(x) for x in v] for k, v in times.items()},
    }
    print(f"  cli at {len(c.vms)} VMs (median of {runs}, s): {result['median_s']}", flush=True)
    return result


def measure_flush(c: Cluster, node: str, names: list[str], timeout: float) -> dict[str, Any]:
    c.release_writer()
    c.wait_quiet()
    result: dict[str, Any] = {"node": node, "running_vms": len(names), "vms": len(c.vms)}
    for command in ("flush", "ready"):
        a = c.snapshot()
        t0 = time.monotonic()
        error = None
        try:
            c.cli.run("node", command, node, "--wait", "--wait-timeout", str(timeout), timeout=timeout + 60)
        except (BenchError, subprocess.TimeoutExpired) as exc:
            error = str(exc)
        took = time.monotonic() - t0
        b = c.snapshot()
        where = c.running()
        moved = sum(1 for n in names if (where.get(n) != [node]) == (command == "flush") and len(where.get(n, [])) == 1)
        d = delta(a, b)
        cpu = [v for v in d["pvcd_cpu_s"].values() if v is not None]
        result[command] = {
            "seconds": r(took, 2),
            "vms_moved": moved,
            "vms_per_s": r(moved / took, 3),
            "error": error,
            "reads": d["reads"],
            "reads_per_vm": r(d["reads"] / moved, 0) if moved else None,
            "zk_cpu_s": r(d["zk_cpu_s"], 2),
            "pvcd_cpu_s": r(sum(cpu), 2),
            "pvcd_cpu_s_per_vm": r(sum(cpu) / moved, 2) if moved else None,
        }
        print(
            f"  {command} {node}: {moved}/{len(names)} VMs in {took:.1f} s ({result[command]['vms_per_s']} VMs/s),"
            f" {d['reads']} reads, pvcd {result[command]['pvcd_cpu_s']} CPU-s" + (f"; {error}" if error else ""),
            flush=True,
        )
        if error:
            break
    return result


class CrashBench(failover.Bench):
    """bench/failover.py's Bench, reading each chassis journal again only when it changed: it polls every 50 ms,
    and with 100 nodes re-reading every journal at that rate would compete with the recovery it measures."""

    def __init__(self, workdir: Path, interval: int, intervals: int) -> None:
        super().__init__(workdir, interval, intervals)
        self._journals: dict[str, tuple[tuple[int, int], list[journal.Entry]]] = {}

    def entries(self) -> list[journal.Entry]:
        found: list[journal.Entry] = []
        for node in self.cluster.nodes:
            path = Path(node.journal)
            try:
                info = path.stat()
                key = (info.st_size, info.st_mtime_ns)
                cached = self._journals.get(node.name)
                if cached is None or cached[0] != key:
                    cached = (key, journal.parse(path.read_text(), str(path)))
                    self._journals[node.name] = cached
            except (OSError, journal.JournalError) as exc:
                raise failover.BenchError(f"cannot read the journal of {node.name}: {exc}") from exc
            found.extend(cached[1])
        return found


def measure_crash(c: Cluster, victim: str, names: list[str]) -> dict[str, Any]:
    """bench/failover.py's fault and journal reading: power loss of `victim` -> every VM started elsewhere."""
    c.release_writer()
    c.wait_quiet()
    c.failover = bench = CrashBench(c.workdir, c.keepalive, c.fence_intervals)
    a = c.snapshot()
    keepalive_ms = bench.next_keepalive(victim)
    wall_offset = time.time() - time.monotonic()
    fault = bench.inject(victim, "crash")
    t0 = fault["t0"]
    new = bench.wait_recovered(victim, names, t0)
    b = c.snapshot()
    t_recovered = time.monotonic()
    fence = bench.wait_fence_done(victim)
    offset = fault["offset_ms"]

    def mono(ms: float) -> float:
        return (ms - offset) / 1000.0

    starts = sorted(t for _, t in new.values())
    d = delta(a, b)
    result = {
        "victim": victim,
        "vms": len(names),
        "vms_in_cluster": len(c.vms),
        "keepalive_interval": c.keepalive,
        "fence_intervals": c.fence_intervals,
        "total_s": r(starts[-1] - t0),
        "first_s": r(starts[0] - t0),
        "detect_s": r(mono(fence["started_ms"]) - t0),
        "fence_s": r((fence["finished_ms"] - fence["started_ms"]) / 1000),
        "restart_s": r(starts[-1] - mono(fence["finished_ms"])),
        "after_keepalive_s": r(t0 - mono(keepalive_ms)),
        "placed_on": {h: sum(1 for host, _ in new.values() if host == h) for h in sorted({h for h, _ in new.values()})},
        "reads_during": d["reads"],
        "data_kib_during": r(d["data_bytes"] / 1024, 1),
        "writes_during": d["writes"],
        "zk_cpu_s_during": r(d["zk_cpu_s"], 2),
        "pvcd_cpu_s_during": r(sum(v for v in d["pvcd_cpu_s"].values() if v is not None), 2),
        # The other nodes' keepalives while they detected the crash and started its VMs.
        "keepalive_lateness_others": keepalive_lateness(
            c.txn_log.read(), (t0 + wall_offset) * 1000, (t_recovered + wall_offset) * 1000, c.keepalive, {victim}
        ),
        # Issue 10's 6 s is 1 s x 3 + 3 s; with another keepalive interval, the same K x F + 3 s.
        "target_s": c.keepalive * c.fence_intervals + failover.TARGET_SLACK_S,
        "loadavg": loadavg(),
    }
    lateness = result["keepalive_lateness_others"]
    print(
        f"  crash of {victim} with {len(names)} running VMs: all running elsewhere after {result['total_s']} s "
        f"(detect {result['detect_s']} + fence {result['fence_s']} + restart {result['restart_s']}); "
        f"first after {result['first_s']} s; on {len(result['placed_on'])} nodes; the others' keepalives "
        f"meanwhile late by p99 {lateness['lateness_s']['p99']} s, max {lateness['lateness_s']['max']} s",
        flush=True,
    )
    # The victim powers on again; let it rejoin before anything else is measured. It is not made ready: that
    # would bring every VM back, which is a flush's cost again (measured by `flush`).
    c.not_ready.add(victim)
    try:
        c.wait_quiet()
    except failover.BenchError as exc:
        result["rejoin_error"] = str(exc)
    bench.close()
    c.failover = None
    return result


# -- the parts --------------------------------------------------------------------------------------------------


def part_a(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"nodes": NODES}
    c = Cluster(NODES)
    try:
        c.up()
        out["up_s"] = r(c.up_s, 1)
        primary, others = c.roles()
        victim, flushed = others[0], others[-1]
        out["roles"] = {"primary": primary, "crash_victim": victim, "flushed": flushed}
        if "idle" in args.parts:
            out["idle_0"] = measure_idle(c, args.window, "0 VMs")
        # 1,000 VMs round-robin over the nodes, stopped; then the crash victim's and the flush node's set started.
        names = vm_names("sc", 0, args.vms)
        define_s = c.define(names, [primary, victim, flushed])
        out["define_bulk"] = {
            "vms": len(names),
            "seconds": r(define_s, 1),
            "per_vm_ms": r(1000 * define_s / len(names), 1),
            "writer": c.get_writer().kind,
        }
        print(f"  defined {len(names)} VMs in {define_s:.1f} s ({c.get_writer().kind})", flush=True)
        on = {n: [v for v in names if c.vms[v] == n] for n in (primary, victim, flushed)}
        crash_set = on[victim][: args.crash_vms] if "crash" in args.parts else []
        flush_set = on[flushed][: args.flush_vms] if "flush" in args.parts else []
        to_start = crash_set + flush_set
        if to_start:
            t = time.monotonic()
            c.start(to_start)
            c.release_writer()
            waited = c.wait_running(to_start, None, 1800)
            took = time.monotonic() - t
            out["start_bulk"] = {
                "vms": len(to_start),
                "seconds": r(took, 1),
                "waited_for_journal_s": r(waited, 1),
                "vms_per_s": r(len(to_start) / took, 2),
            }
            print(
                f"  started {len(to_start)} VMs ({len(crash_set)} on {victim}, {len(flush_set)} on {flushed}) "
                f"in {took:.1f} s",
                flush=True,
            )
        if "idle" in args.parts:
            out["idle_1"] = measure_idle(c, args.window, f"{len(c.vms)} VMs, {len(to_start)} running")
        if "start" in args.parts and args.starts:
            stopped = [v for v in on[primary]][: args.starts]
            out["start"] = measure_start(c, stopped, args.window)
        if "cli" in args.parts:
            out["cli_1"] = time_cli(c, args.cli_runs, primary, "sc")
        if flush_set:
            out["flush"] = measure_flush(c, flushed, flush_set, args.flush_timeout)
        if crash_set:
            out["crash"] = measure_crash(c, victim, crash_set)
        if "large" in args.parts and args.large_vms > len(c.vms):
            more = vm_names("sc", len(names) + 100, args.large_vms - len(c.vms))
            define_s = c.define(more, [primary, victim, flushed])
            out["define_bulk_large"] = {
                "vms": len(more),
                "seconds": r(define_s, 1),
                "per_vm_ms": r(1000 * define_s / len(more), 1),
            }
            print(f"  defined {len(more)} more VMs in {define_s:.1f} s", flush=True)
            if "idle" in args.parts:
                out["idle_large"] = measure_idle(c, args.window, f"{len(c.vms)} VMs")
            if "cli" in args.parts:
                out["cli_large"] = time_cli(c, args.cli_runs, primary, "sc")
    except (BenchError, cluster.ClusterError, failover.BenchError, subprocess.TimeoutExpired) as exc:
        out["error"] = str(exc)
        print(f"  part (a) stopped: {exc}", file=sys.stderr, flush=True)
    finally:
        out["notes"] = c.notes
        c.close()
    return out


def crash_victims(c: Cluster, primary: str, count: int) -> list[str]:
    """Nodes to crash in (b): not the primary; nodes that are no coordinator first (a crash then costs no
    ZooKeeper-quorum member of the cluster's own, only a hypervisor), then the secondary coordinators."""
    nodes = c.node_list()
    clients = sorted((n["name"] for n in nodes if n["coordinator_state"] == "client"), key=node_number)
    others = sorted((n["name"] for n in nodes if n["name"] != primary and n["name"] not in clients), key=node_number)
    return [*clients, *others][:count]


def node_number(name: str) -> tuple[int, str]:
    digits = "".join(ch for ch in name if ch.isdigit())
    return (int(digits) if digits else 0, name)


def burst_vms(c: Cluster, skip_nodes: list[str], skip_vms: set[str], count: int) -> list[str]:
    """`count` stopped VMs, each of another node as long as there are nodes (not those in `skip_nodes`)."""
    by_node: dict[str, list[str]] = {}
    for name in sorted(c.vms):
        if c.vms[name] not in skip_nodes and name not in skip_vms:
            by_node.setdefault(c.vms[name], []).append(name)
    chosen: list[str] = []
    while len(chosen) < count and any(by_node.values()):
        for node in sorted(by_node, key=node_number):
            if by_node[node] and len(chosen) < count:
                chosen.append(by_node[node].pop(0))
    return chosen


def part_b(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    for count in args.sweep:
        out: dict[str, Any] = {
            "nodes": count,
            "vms": args.sweep_vms,
            "keepalive_interval": args.sweep_keepalive,
            "fence_intervals": args.sweep_fence_intervals,
        }
        print(
            f"(b) {count} nodes, {args.sweep_vms} VMs, keepalive {args.sweep_keepalive} s "
            f"x {args.sweep_fence_intervals}",
            flush=True,
        )
        c = Cluster(count, keepalive=args.sweep_keepalive, fence_intervals=args.sweep_fence_intervals)
        try:
            c.up()
            out["up_s"] = r(c.up_s, 1)
            out["up_to_quiet_s"] = r(c.quiet_s, 1)
            out["memory_up"] = c.memory()
            print(
                f"  up in {c.up_s:.0f} s, quiet after {c.quiet_s:.0f} s; memory PSS "
                f"{out['memory_up']['pss_mib_total']} MiB ({out['memory_up']['pss_mib_per_node']} per node), "
                f"RSS {out['memory_up']['rss_mib_total']} MiB; load average {loadavg()}",
                flush=True,
            )
            primary, others = c.roles()
            nodes = [primary, *others]
            # The crash victims carry exactly their crash sets, out of the --sweep-vms when they fit in it
            # (in addition otherwise); every other VM goes round-robin over the other nodes.
            crash_counts = list(args.sweep_crash_vms)
            victims = crash_victims(c, primary, len(crash_counts)) if crash_counts else []
            if len(victims) < len(crash_counts):
                c.notes.append(f"only {len(victims)} nodes to crash for {len(crash_counts)} crash sets")
                crash_counts = crash_counts[: len(victims)]
            names = vm_names("sw", 0, args.sweep_vms)
            if sum(crash_counts) <= len(names):
                crash_sets, taken = [], 0
                for k in crash_counts:
                    crash_sets.append(names[taken : taken + k])
                    taken += k
                rest = names[taken:]
            else:
                crash_sets, taken = [], len(names)
                for k in crash_counts:
                    crash_sets.append(vm_names("sw", taken, k))
                    taken += k
                rest = names
                c.notes.append(
                    f"the crash sets ({'+'.join(map(str, crash_counts))} VMs) do not fit in --sweep-vms "
                    f"{args.sweep_vms}: defined in addition"
                )
            out["crash_victims"] = dict(zip(victims, crash_counts, strict=False))
            out["idle_0"] = measure_idle(c, args.window, "0 VMs")
            spread = [n for n in nodes if n not in victims] or nodes
            define_s = c.define(rest, spread)
            for victim, crash_set in zip(victims, crash_sets, strict=False):
                define_s += c.define(crash_set, [victim])
            out["vms"] = len(c.vms)
            out["define_bulk"] = {
                "vms": len(c.vms),
                "seconds": r(define_s, 1),
                "per_vm_ms": r(1000 * define_s / max(len(c.vms), 1), 1),
                "writer": c.get_writer().kind,
            }
            print(f"  defined {len(c.vms)} VMs in {define_s:.1f} s ({c.get_writer().kind})", flush=True)
            out["idle"] = measure_idle(c, args.window, f"{len(c.vms)} VMs")
            if args.starts:
                # VMs of nodes other than the primary and the victims: the owning node is one of many.
                candidates = [v for v in sorted(c.vms) if c.vms[v] not in (primary, *victims)][: args.starts]
                out["start"] = measure_start(c, candidates, args.window)
            if args.sweep_start_burst:
                used = {x["vm"] for x in (out.get("start") or {}).get("runs", [])}
                out["start_burst"] = measure_start_batch(
                    c, burst_vms(c, [primary, *victims], used, args.sweep_start_burst), args.window
                )
            out["crash"] = []
            for victim, crash_set in zip(victims, crash_sets, strict=False):
                t = time.monotonic()
                c.start(crash_set)
                c.release_writer()
                waited = c.wait_running(crash_set, victim, 300 + 2 * len(crash_set))
                took = time.monotonic() - t
                print(f"  started {len(crash_set)} VMs on {victim} in {took:.1f} s", flush=True)
                crash = measure_crash(c, victim, crash_set)
                crash["start_bulk"] = {
                    "vms": len(crash_set),
                    "seconds": r(took, 1),
                    "waited_for_journal_s": r(waited, 1),
                }
                out["crash"].append(crash)
            out["memory_end"] = c.memory()
        except (BenchError, cluster.ClusterError, failover.BenchError, subprocess.TimeoutExpired) as exc:
            out["error"] = str(exc)
            print(f"  {count} nodes stopped: {exc}", file=sys.stderr, flush=True)
        finally:
            out["notes"] = c.notes
            out["loadavg"] = loadavg()
            c.close()
        results.append(out)
    return results


# -- report -----------------------------------------------------------------------------------------------------


def get(d: dict[str, Any] | None, *keys: str) -> Any:
    for key in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        value = f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
    return f"{value}{unit}"


def print_table(report: dict[str, Any]) -> None:
    a = report.get("a") or {}
    rows = []
    for key in ("idle_0", "idle_1", "idle_large"):
        if key in a:
            rows.append(
                (
                    f"idle reads/s, whole cluster / per node ({a[key]['vms']} VMs)",
                    f"{fmt(a[key]['reads_per_s'])} / {fmt(a[key]['reads_per_node_per_s'])}"
                    f" (node requests/s {a[key]['node_requests_per_s']}); ZooKeeper CPU "
                    f"{fmt(a[key]['zk_cpu_percent'], '%')}; {fmt(a[key]['data_kib_per_s'])} KiB/s",
                )
            )
    if "start" in a:
        m = a["start"]["median"]
        rows.append(
            (
                "one `pvc vm start`: ZooKeeper reads, whole cluster (median)",
                f"{fmt(m['reads'])} reads, {fmt(m['data_kib'])} KiB, ZooKeeper {fmt(m['zk_cpu_s'])} CPU-s, "
                f"pvcd {fmt(m['pvcd_cpu_s'])} CPU-s; domain started {fmt(m['start_to_domain_started_s'])} s "
                "after the command",
            )
        )
    for key in ("cli_1", "cli_large"):
        if key in a:
            m = a[key]["median_s"]
            rows.append(
                (
                    f"`pvc vm list` / `pvc vm define` at {a[key]['vms']} VMs",
                    f"{fmt(m['pvc vm list'], ' s')} / {fmt(m['pvc vm define --node'], ' s')} "
                    f"(`pvc --help` {fmt(m['pvc --help'], ' s')}, "
                    f"`pvc node list` {fmt(m['pvc node list'], ' s')})",
                )
            )
    if "flush" in a:
        f = a["flush"]
        for command in ("flush", "ready"):
            if command in f:
                x = f[command]
                rows.append(
                    (
                        f"`pvc node {command} --wait`, {f['running_vms']} running VMs",
                        f"{fmt(x['seconds'], ' s')}, {fmt(x['vms_per_s'])} VMs/s, "
                        f"{fmt(x['pvcd_cpu_s_per_vm'])} pvcd CPU-s and {fmt(x['reads_per_vm'])} reads per VM"
                        + (f" ({x['error']})" if x["error"] else ""),
                    )
                )
    if "crash" in a:
        x = a["crash"]
        rows.append(
            (
                f"crash of a node with {x['vms']} VMs -> all running elsewhere "
                f"({x['keepalive_interval']} s x {x['fence_intervals']})",
                f"{fmt(x['total_s'], ' s')} (detect {fmt(x['detect_s'])} + fence {fmt(x['fence_s'])} + "
                f"restart {fmt(x['restart_s'])})",
            )
        )
    for key in ("define_bulk", "start_bulk", "define_bulk_large"):
        if key in a:
            rows.append(
                (
                    f"bench set-up: {key.replace('_', ' ')}",
                    f"{a[key]['vms'] if 'vms' in a[key] else ''} VMs in {fmt(a[key]['seconds'], ' s')}",
                )
            )
    if rows:
        print()
        print(f"(a) {NODES} nodes, keepalive {KEEPALIVE_S} s:")
        width = max(len(label) for label, _ in rows)
        for label, value in rows:
            print(f"  {label:<{width}}  {value}")
        if a.get("error"):
            print(f"  stopped early: {a['error']}")
    sweep = report.get("b") or []
    if sweep:
        print_sweep(sweep)


def print_rows(title: str, header: list[str], rows: list[list[str]]) -> None:
    if not rows:
        return
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    print()
    print(title)
    print("  " + "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  " + "  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def lateness_cell(lateness: dict[str, Any] | None) -> str:
    x = (lateness or {}).get("lateness_s") or {}
    return f"{fmt(x.get('p50'))}/{fmt(x.get('p99'))}/{fmt(x.get('max'))}" if x else "-"


def print_sweep(sweep: list[dict[str, Any]]) -> None:
    setup, idle_rows, start_rows, burst_rows, crash_rows = [], [], [], [], []
    for s in sweep:
        memory = s.get("memory_end") or s.get("memory_up") or {}
        setup.append(
            [
                str(s["nodes"]),
                str(s["vms"]),
                f"{s['keepalive_interval']} s",
                fmt(s.get("up_s")),
                fmt(s.get("up_to_quiet_s")),
                fmt(memory.get("pss_mib_total")),
                fmt(memory.get("pss_mib_per_node")),
                fmt(memory.get("rss_mib_total")),
                " ".join(map(str, s.get("loadavg") or [])),
                f"stopped: {s['error']}" if s.get("error") else "",
            ]
        )
        for key in ("idle_0", "idle"):
            idle = s.get(key)
            if not idle:
                continue
            idle_rows.append(
                [
                    str(s["nodes"]),
                    str(idle["vms"]),
                    fmt(idle.get("reads_per_s")),
                    fmt(idle.get("reads_per_node_per_s")),
                    fmt(idle.get("data_kib_per_s")),
                    fmt(idle.get("writes_per_s")),
                    fmt(idle.get("zk_cpu_percent")),
                    fmt(idle.get("pvcd_cpu_percent_total")),
                    lateness_cell(idle.get("keepalive_lateness")),
                    fmt(get(idle, "keepalive_lateness", "node_max_lateness_s", "p99")),
                    fmt(idle.get("keepalives_delivered_per_due_min")),
                    " ".join(map(str, idle.get("loadavg") or [])),
                ]
            )
        start = get(s, "start", "median")
        if start:
            start_rows.append(
                [
                    str(s["nodes"]),
                    str(get(s, "start", "vms")),
                    fmt(start.get("reads")),
                    fmt(get(s, "start", "reads_per_node_median")),
                    fmt(start.get("data_kib")),
                    fmt(start.get("node_requests_sum")),
                    fmt(start.get("writes")),
                    fmt(start.get("zk_cpu_s")),
                    fmt(start.get("pvcd_cpu_s")),
                    fmt(start.get("start_to_domain_started_s")),
                    str(len(get(s, "start", "runs") or [])),
                ]
            )
        burst = s.get("start_burst")
        if burst:
            x = burst["per_change"]
            burst_rows.append(
                [
                    str(s["nodes"]),
                    str(burst["vms"]),
                    f"{burst['changes']} on {burst['on_nodes']}",
                    fmt(x.get("reads")),
                    fmt(x.get("bench_writer_requests")),
                    fmt(x.get("data_kib")),
                    fmt(x.get("node_requests")),
                    fmt(x.get("writes")),
                    fmt(x.get("zk_cpu_s")),
                    fmt(x.get("pvcd_cpu_s")),
                    f"{fmt(get(burst, 'start_to_domain_started_s', 'p50'))}/"
                    f"{fmt(get(burst, 'start_to_domain_started_s', 'max'))}",
                ]
            )
        for crash in s.get("crash") or []:
            crash_rows.append(
                [
                    str(s["nodes"]),
                    str(crash["vms"]),
                    str(crash["vms_in_cluster"]),
                    f"{crash['keepalive_interval']}x{crash['fence_intervals']}",
                    fmt(crash.get("total_s")),
                    fmt(crash.get("detect_s")),
                    fmt(crash.get("fence_s")),
                    fmt(crash.get("restart_s")),
                    fmt(crash.get("first_s")),
                    str(len(crash.get("placed_on") or {})),
                    lateness_cell(crash.get("keepalive_lateness_others")),
                    fmt(crash.get("target_s")),
                ]
            )
    print_rows(
        "(b) clusters",
        ["nodes", "VMs", "keepalive", "up s", "quiet s", "PSS MiB", "PSS/node", "RSS MiB", "load avg", ""],
        setup,
    )
    print_rows(
        "(b) idle, whole cluster (keepalive lateness: gap since the node's previous keepalive less the interval)",
        [
            "nodes",
            "VMs",
            "reads/s",
            "per node",
            "KiB/s",
            "writes/s",
            "ZK CPU%",
            "pvcd CPU%",
            "late p50/p99/max s",
            "node max p99",
            "delivered/due min",
            "load avg",
        ],
        idle_rows,
    )
    print_rows(
        "(b) one `pvc vm start` (one VM state change), whole cluster less idle, median",
        [
            "nodes",
            "VMs",
            "reads",
            "per node",
            "KiB read",
            "node requests",
            "writes",
            "ZK CPU-s",
            "pvcd CPU-s",
            "start->acting s",
            "starts",
        ],
        start_rows,
    )
    print_rows(
        "(b) a burst of VM starts, each on another node: per state change, whole cluster less idle",
        [
            "nodes",
            "VMs",
            "changes",
            "reads",
            "bench's own",
            "KiB read",
            "node requests",
            "writes",
            "ZK CPU-s",
            "pvcd CPU-s",
            "start->acting p50/max s",
        ],
        burst_rows,
    )
    print_rows(
        "(b) crash of a node -> all its VMs running elsewhere (chassis journals)",
        [
            "nodes",
            "VMs",
            "in cluster",
            "K x F",
            "total s",
            "detect",
            "fence",
            "restart",
            "first",
            "onto nodes",
            "others late p50/p99/max s",
            "target s",
        ],
        crash_rows,
    )


def parse_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every number must be at least 1")
    return values


def parse_counts(text: str) -> list[int]:
    return [] if text.strip() in ("none", "") else parse_list(text)


def parse_parts(text: str) -> list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS + ("none",)]
    if unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a comma-separated list of {', '.join(PARTS)} (or none)")
    return [p for p in parts if p != "none"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--parts",
        type=parse_parts,
        default=list(PARTS),
        help=f"parts of (a) to run, comma-separated, or none (default {','.join(PARTS)})",
    )
    parser.add_argument("--vms", type=int, default=VMS, help=f"VMs in (a) (default {VMS})")
    parser.add_argument(
        "--large-vms", type=int, default=LARGE_VMS, help=f"VMs in all for `large` (default {LARGE_VMS})"
    )
    parser.add_argument(
        "--flush-vms", type=int, default=FLUSH_VMS, help=f"running VMs on the flushed node (default {FLUSH_VMS})"
    )
    parser.add_argument("--flush-timeout", type=float, default=600.0, help="--wait-timeout of flush and ready")
    parser.add_argument(
        "--crash-vms",
        type=int,
        default=CRASH_VMS,
        help=f"running VMs on the node that loses power (default {CRASH_VMS})",
    )
    parser.add_argument("--starts", type=int, default=STARTS, help=f"`pvc vm start` measured (default {STARTS})")
    parser.add_argument(
        "--window", type=float, default=WINDOW_S, help=f"seconds of each counter window (default {WINDOW_S:g})"
    )
    parser.add_argument("--cli-runs", type=int, default=CLI_RUNS, help=f"runs of each CLI command (default {CLI_RUNS})")
    parser.add_argument("--sweep", type=parse_list, default=[], help="(b): node counts, e.g. 10,20 (default none)")
    parser.add_argument(
        "--sweep-vms", type=int, default=SWEEP_VMS, help=f"VMs in each (b) cluster (default {SWEEP_VMS})"
    )
    parser.add_argument(
        "--sweep-crash-vms",
        type=parse_counts,
        default=SWEEP_CRASH_VMS,
        help="(b): crash one node carrying each of these many running VMs, a different node each, or none "
        f"(default {','.join(map(str, SWEEP_CRASH_VMS))})",
    )
    parser.add_argument(
        "--sweep-start-burst",
        type=int,
        default=SWEEP_START_BURST,
        help="(b): VMs started at once, each on another node, to measure the cost per state change apart from "
        f"the idle reads' noise (default {SWEEP_START_BURST}; 0: none)",
    )
    parser.add_argument(
        "--sweep-keepalive",
        type=int,
        default=KEEPALIVE_S,
        help=f"(b): keepalive interval of the nodes in seconds (default {KEEPALIVE_S}; 100 nodes on 2 cores may "
        "need 5)",
    )
    parser.add_argument(
        "--sweep-fence-intervals",
        type=int,
        default=FENCE_INTERVALS,
        help=f"(b): keepalives missed before a node is dead (default {FENCE_INTERVALS}; issue 10's 5 s x 6 is "
        "--sweep-keepalive 5 --sweep-fence-intervals 6)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON results (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if args.sweep_keepalive < 1:
        parser.error("--sweep-keepalive must be at least 1")
    if args.sweep_fence_intervals < 1:
        parser.error("--sweep-fence-intervals must be at least 1")
    try:
        failover.tool("pvc"), failover.tool("pvc-devcluster")
    except failover.BenchError as exc:
        print(f"bench/scale.py: {exc}", file=sys.stderr)
        return 2
    started = datetime.datetime.now(datetime.UTC)
    t0 = time.monotonic()
    load_before = loadavg()
    import pvcd

    report: dict[str, Any] = {
        "benchmark": "scale",
        "date": started.isoformat(timespec="seconds"),
        "code": str(Path(pvcd.__file__).resolve().parent.parent),
        "settings": {
            "nodes": NODES,
            "vms": args.vms,
            "large_vms": args.large_vms,
            "flush_vms": args.flush_vms,
            "crash_vms": args.crash_vms,
            "starts": args.starts,
            "window_s": args.window,
            "cli_runs": args.cli_runs,
            "parts": args.parts,
            "sweep": args.sweep,
            "sweep_vms": args.sweep_vms,
            "sweep_crash_vms": args.sweep_crash_vms,
            "sweep_start_burst": args.sweep_start_burst,
            "sweep_keepalive_interval_s": args.sweep_keepalive,
            "sweep_fence_intervals": args.sweep_fence_intervals,
            "keepalive_interval_s": KEEPALIVE_S,
            "fence_intervals": FENCE_INTERVALS,
            "vm_memory_mib": VM_MEMORY_MIB,
            "vm_vcpus": 1,
            "domain_type": "test",
        },
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "loadavg_before": load_before,
        "targets": TARGETS,
        "measured": {
            "reads": "zk_cnt_readlatency: every request that is not a write (getData, getChildren, exists, pings)",
            "data_reads": "zk_cnt_*_read_per_namespace (data and child-list reads); "
            "data KiB: zk_sum_*_read_per_namespace",
            "writes": "zk_cnt_updatelatency",
            "node_requests": "`stat`: packets received on each node's connection (all requests incl. writes and "
            "pings), attributed through the chassis relay's socket in /proc",
            "zk_cpu": "/proc/PID/stat utime+stime of the ZooKeeper java process",
            "start": "counters over --window s from launching `pvc vm start` less the idle rate of the window just "
            "before; includes the CLI's own requests",
            "start_to_domain_started_s": "launching `pvc vm start` -> the chassis journal's start of the domain",
            "crash": "bench/failover.py: power loss right after a keepalive -> last VM started elsewhere (journals)",
            "keepalive_lateness": "ZooKeeper's transaction log (version-2/log.*), read by the bench from disk: "
            "each keepalive's time; lateness = gap since the node's previous keepalive less the interval "
            "(a node silent at the window's end: the time since its last one); no request to ZooKeeper",
            "node_requests_sum": "(start) packets from every node's connection in the window, less idle: what the "
            "nodes, not the CLI, asked of ZooKeeper for the change (reads, writes, pings)",
            "start_burst": "(b) --sweep-start-burst VMs started at once in-process (each on another node); the "
            "window less the idle window before, divided by the changes; the bench writer's own requests "
            "(3 reads + 1 transaction per start) are in the reads and counted apart from its connection",
            "memory": "/proc/PID/smaps_rollup of every pvcd, chassis, libvirtd and ZooKeeper: RSS, and PSS "
            "(shared pages divided among their processes: the sum is what the cluster takes)",
        },
    }
    if args.parts:
        print(f"(a) {NODES} nodes, {args.vms} VMs, parts {','.join(args.parts)}", flush=True)
        report["a"] = part_a(args)
    if args.sweep:
        report["b"] = part_b(args)
    report["duration_s"] = round(time.monotonic() - t0)
    report["loadavg_after"] = loadavg()
    print_table(report)
    print(f"\n{report['duration_s']} s; load average before {load_before}, after {report['loadavg_after']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.out}")
    failed = bool((report.get("a") or {}).get("error")) or any(s.get("error") for s in report.get("b") or [])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
