"""Storage fencing of a dead node, decided (pure): what to blocklist, which locks to break, and
what the result proves.

A node's Ceph clients — pvcd's own and every QEMU's librbd — all talk to Ceph from the node's
storage address; the node learns that address from librados and publishes it
(`pvcd.storage.identity`). Ceph blocklists an address with a nonce (one client) or, with port and
nonce 0 (`IP:0/0`), every client from that IP: the OSDs then refuse their writes, whatever the
node's state. So:

- an IP of the dead node that no other node publishes is blocklisted as a whole: every client the
  node runs or will run is cut off, including a QEMU whose watch had lapsed while it was cut off
  from Ceph and would come back;
- an IP another node shares (every node of the local test cluster is 127.0.0.1) cannot be: only the
  clients found at that IP watching or locking the dead node's VMs' volumes are blocklisted, one by
  one;
- every lock held from one of the node's IPs on those volumes is broken, so the VMs' new hosts can
  take them.

A cut is `confirmed` when Ceph's blocklist, read back, holds every entry and no such lock is left.
It proves the node can no longer write any disk (`whole`) only when every IP the node published
was blocklisted as a whole and every disk of its VMs is an RBD volume: that is what lets a fence
whose BMC failed recover at once (see `flow.after_outcome`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pvcd.storage.addresses import address_ip
from pvcd.storage.values import Lock


class CutOutcome(StrEnum):
    CONFIRMED = "confirmed"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class VolumeClients:
    """Who uses one of the dead node's VMs' volumes, as Ceph listed it."""

    volume: str
    """`pool/volume`."""
    watchers: tuple[str, ...]
    locks: tuple[Lock, ...]


@dataclass(frozen=True)
class CutPlan:
    whole_ips: tuple[str, ...]
    """The node's IPs no other node publishes: blocklisted as a whole."""
    shared_ips: tuple[str, ...]
    """The node's IPs another node publishes too: only the clients found there."""
    entries: tuple[str, ...]
    """Every blocklist entry to add: `IP:0/0` for each whole IP, then the single clients."""
    locks: tuple[tuple[str, Lock], ...]
    """(volume, lock) for every lock held from one of the node's IPs."""


def whole_ip_entry(ip: str) -> str:
    """The blocklist entry that cuts every client of `ip` off (Ceph's IP-wide match: port and nonce 0)."""
    return f"[{ip}]:0/0" if ipaddress.ip_address(ip).version == 6 else f"{ip}:0/0"


def plan_cut(node_ips: Iterable[str], other_nodes_ips: Iterable[str], volumes: Sequence[VolumeClients]) -> CutPlan:
    """What to blocklist and which locks to break for a dead node whose clients come from `node_ips`."""
    mine = sorted(set(node_ips))
    others = set(other_nodes_ips)
    whole = tuple(ip for ip in mine if ip not in others)
    shared = tuple(ip for ip in mine if ip in others)
    singles: dict[str, None] = {}
    locks: list[tuple[str, Lock]] = []
    for clients in volumes:
        for address in (*clients.watchers, *(lock.address for lock in clients.locks)):
            if address_ip(address) in shared:
                singles[address] = None
        locks += [(clients.volume, lock) for lock in clients.locks if address_ip(lock.address) in mine]
    entries = tuple(whole_ip_entry(ip) for ip in whole) + tuple(sorted(singles))
    return CutPlan(whole, shared, entries, tuple(locks))


@dataclass(frozen=True)
class StorageCut:
    """What the storage step of a fence did and proved; kept in the fence record as `storage`."""

    outcome: CutOutcome
    reason: str
    whole: bool = False
    """The node can write no disk of any of its VMs any more (see the module's docstring)."""
    entries: tuple[str, ...] = ()
    broken_locks: tuple[str, ...] = ()
    until_ms: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": str(self.outcome),
            "reason": self.reason,
            "whole": self.whole,
            "entries": list(self.entries),
            "broken_locks": list(self.broken_locks),
            "until_ms": self.until_ms,
        }

    @classmethod
    def from_json(cls, value: object) -> StorageCut | None:
        """None for a fence without a storage step (yet), or a record this version cannot read."""
        if not isinstance(value, Mapping):
            return None
        try:
            outcome = CutOutcome(str(value.get("outcome")))
        except ValueError:
            return None
        entries, broken = value.get("entries"), value.get("broken_locks")
        until = value.get("until_ms")
        return cls(
            outcome,
            str(value.get("reason", "")),
            value.get("whole") is True,
            tuple(str(e) for e in entries) if isinstance(entries, list) else (),
            tuple(str(b) for b in broken) if isinstance(broken, list) else (),
            until if isinstance(until, int) and not isinstance(until, bool) else None,
        )


def skipped(reason: str) -> StorageCut:
    return StorageCut(CutOutcome.SKIPPED, reason)


def failed(reason: str) -> StorageCut:
    return StorageCut(CutOutcome.FAILED, reason)


def lock_label(volume: str, lock: Lock) -> str:
    return f"{volume} ({lock.locker} at {lock.address})"


def judge_cut(
    plan: CutPlan,
    blocklisted: Iterable[str],
    locks_left: Sequence[tuple[str, Lock]],
    all_disks_rbd: bool,
    until_ms: int,
) -> StorageCut:
    """The cut's outcome from Ceph's blocklist and the volumes' locks as read back after acting."""
    listed = set(blocklisted)
    missing = [entry for entry in plan.entries if entry not in listed]
    broken = tuple(lock_label(volume, lock) for volume, lock in plan.locks if (volume, lock) not in locks_left)
    if missing or locks_left:
        problems = []
        if missing:
            problems.append(f"not in Ceph's blocklist: {', '.join(missing)}")
        if locks_left:
            problems.append(f"locks still held: {', '.join(lock_label(v, lock) for v, lock in locks_left)}")
        return StorageCut(CutOutcome.FAILED, "; ".join(problems), False, plan.entries, broken, until_ms)
    whole = bool(plan.whole_ips) and not plan.shared_ips and all_disks_rbd
    if not plan.entries and not plan.locks:
        reason = "no Ceph client of the node was found on its VMs' volumes"
    else:
        reason = f"{len(plan.entries)} blocklist entries, {len(broken)} locks broken"
    if plan.shared_ips:
        reason += (
            f"; {', '.join(plan.shared_ips)} is also another node's address, so only the clients found there "
            "were blocklisted"
        )
    elif plan.whole_ips and not all_disks_rbd:
        reason += "; some of its VMs have disks outside Ceph, which a blocklist does not protect"
    if whole:
        reason += "; every client of the node is cut off"
    return StorageCut(CutOutcome.CONFIRMED, reason, whole, plan.entries, broken, until_ms)
