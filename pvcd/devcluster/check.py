"""`pvc-devcluster check`: every chassis journal against the VM records in ZooKeeper.

The journals say what really ran where (journal.py); ZooKeeper says which VMs
should run (desired state `start`). The transitional states (`migrate`,
`unmigrate`, `restart`) are left out on purpose: a VM in one of them may
rightly run nowhere for a moment. Run it while the cluster runs: after `down`
every host is off and every VM that should run is reported missing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pvcd.cluster.vm_records import VmState
from pvcd.devcluster import journal
from pvcd.devcluster.cluster import ClusterRecord
from pvcd.zk import vms
from pvcd.zk.security import ZkSecurity
from pvcd.zk.store import Store, StoreError

ZOOKEEPER_TIMEOUT = 5.0


class CheckError(Exception):
    """The check could not be made; the message says why."""


def read_journals(record: ClusterRecord) -> list[journal.Entry]:
    entries: list[journal.Entry] = []
    for node in record.nodes:
        path = Path(node.journal)
        try:
            text = path.read_text()
        except FileNotFoundError as exc:
            raise CheckError(f"node {node.name} has no journal at {path} (was its chassis ever started?)") from exc
        except OSError as exc:
            raise CheckError(f"cannot read the journal of node {node.name} at {path}: {exc.strerror}") from exc
        try:
            entries.extend(journal.parse(text, str(path)))
        except journal.JournalError as exc:
            raise CheckError(f"damaged journal: {exc}") from exc
    return entries


def desired(zookeeper: str, security: ZkSecurity | None = None) -> tuple[list[str], dict[str, str]]:
    """The VMs whose desired state is `start`, and the records that cannot be read (name -> why)."""
    store = Store(zookeeper, connect_timeout=ZOOKEEPER_TIMEOUT, security=security)
    try:
        store.start()
        views, damaged = vms.read_vms(store)
    except StoreError as exc:
        raise CheckError(f"cannot read the VM records from ZooKeeper at {zookeeper}: {exc}") from exc
    finally:
        store.stop()
    return sorted(name for name, view in views.items() if view.record.state == VmState.START), damaged


def check(record: ClusterRecord) -> dict[str, Any]:
    """The report of `pvc-devcluster check --format json`."""
    entries = read_journals(record)
    should_run, damaged = desired(record.zookeeper, record.client_security())
    report = journal.analyse(entries, should_run).to_json(time.monotonic())
    report["should_run"] = should_run
    report["unreadable_vms"] = damaged
    return report


def _since(t: float | None, origin: float | None) -> str:
    return f"+{t - origin:.3f}s" if t is not None and origin is not None else "?"


def render(report: dict[str, Any]) -> str:
    """The report for a person: times relative to the first journal entry."""
    origin = report["journals"]["first"]
    counts = ", ".join(f"{host} ({count})" for host, count in report["journals"]["entries"].items()) or "none"
    span = (report["journals"]["last"] or 0) - (origin or 0)
    lines = [f"Journal entries: {counts}, over {span:.1f}s; {len(report['should_run'])} VMs should run"]
    if report["overlaps"]:
        lines.append("VMs that ran on two hosts at once:")
        for overlap in report["overlaps"]:
            first, second = overlap["hosts"]
            until = "still running on both" if overlap["ongoing"] else f"to {_since(overlap['end'], origin)}"
            lines.append(
                f"  {overlap['vm']} on {first} and {second} from {_since(overlap['start'], origin)} "
                f"{until} ({overlap['seconds']:.3f}s)"
            )
    if report["not_running_once"]:
        lines.append("VMs that should run and do not run on exactly one host:")
        for misplaced in report["not_running_once"]:
            lines.append(f"  {misplaced['vm']}: on {', '.join(misplaced['hosts']) or 'no host'}")
    for name, why in sorted(report["unreadable_vms"].items()):
        lines.append(f"VM record {name} cannot be read, not checked: {why}")
    lines.append("Clean: no VM on two hosts, every VM that should run runs once" if report["clean"] else "NOT CLEAN")
    return "\n".join(lines)
