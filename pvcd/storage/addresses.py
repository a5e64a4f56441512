"""Ceph client addresses as a node publishes them (pure): what librados says, and the IPs in it.

A client address is `IP:PORT/NONCE` (`[IPv6]:PORT/NONCE`), maybe with its protocol (`v2:`); a
client that only connects out has port 0. The nonce tells the clients of one host apart; the IP is
the host.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

_ADDRESS = re.compile(r"(?:(?:v1|v2|any):)?(\[[0-9a-fA-F:.]+\]|[0-9.]+):(\d+)/(\d+)")


def parse_addresses(text: str) -> tuple[str, ...]:
    """The client addresses in what `rados_getaddrs` prints: `IP:PORT/NONCE`, or a vector
    `[v2:IP:PORT/NONCE,v1:IP:PORT/NONCE]`; each once, without the protocol, in order."""
    found: dict[str, None] = {}
    for host, port, nonce in _ADDRESS.findall(text):
        ip = host.strip("[]")
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            continue
        found[f"{host}:{port}/{nonce}"] = None
    if not found:
        raise ValueError(f"no client address in librados' answer {text[:200]!r}")
    return tuple(found)


def address_ip(address: str) -> str:
    """The IP of a client address (`IP:PORT/NONCE`, `[IPv6]:PORT/NONCE`, with or without `v2:`)."""
    found = _ADDRESS.search(address)
    if found is None:
        return address
    return found.group(1).strip("[]")


@dataclass(frozen=True)
class ClientIdentity:
    """What a node publishes: its client addresses as librados gave them, and their IPs."""

    addresses: tuple[str, ...]
    learned_ms: int | None = None

    @property
    def ips(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(address_ip(address) for address in self.addresses))

    def to_json(self) -> dict[str, Any]:
        return {"addresses": list(self.addresses), "ips": list(self.ips), "learned_ms": self.learned_ms}

    @classmethod
    def from_json(cls, value: object) -> ClientIdentity | None:
        """None when the node published nothing usable (no storage, or an unreadable record)."""
        if not isinstance(value, dict) or not isinstance(value.get("addresses"), list):
            return None
        addresses = tuple(str(a) for a in value["addresses"] if isinstance(a, str) and _ADDRESS.search(a))
        learned = value.get("learned_ms")
        if not addresses:
            return None
        return cls(addresses, learned if isinstance(learned, int) and not isinstance(learned, bool) else None)
