"""Figures about the machine pvcd runs on, read from the kernel."""

from __future__ import annotations

import os

from pvcd.cluster.values import HostMemory


def load_average() -> float:
    """The 1-minute load average."""
    return round(os.getloadavg()[0], 2)


def parse_meminfo(text: str) -> HostMemory:
    """Total and available memory from the text of /proc/meminfo (values in KiB)."""
    fields: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            fields[key.strip()] = int(parts[0])
    total = fields.get("MemTotal", 0)
    available = fields.get("MemAvailable", fields.get("MemFree", 0))
    return HostMemory(total // 1024, available // 1024)


def host_memory() -> HostMemory:
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        return parse_meminfo(meminfo.read())
