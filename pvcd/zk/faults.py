"""Cluster-wide faults the primary found (`/pvc/cluster/faults`), which `pvc cluster status` shows.

One JSON object, one key per fault (`storm`, `dhcp-100`, `dns`, ...) with at
least a `reason`. Several services of the primary report into it, so each
changes only its own key, version-checked: two writers never undo each
other's fault.
"""

from __future__ import annotations

from typing import Any

from pvcd.zk import schema
from pvcd.zk.base import AlreadyExists, Store, VersionConflict

ATTEMPTS = 5


def set_fault(store: Store, key: str, fault: dict[str, Any] | None) -> bool:
    """Record `fault` under `key`, or clear it with None; whether the stored value changed."""
    for _ in range(ATTEMPTS):
        found = store.get(schema.FAULTS)
        current = dict(found.value) if found is not None and isinstance(found.value, dict) else {}
        wanted = dict(current)
        if fault is None:
            wanted.pop(key, None)
        else:
            wanted[key] = fault
        if found is not None and wanted == current:
            return False
        try:
            if found is None:
                store.ensure_path(schema.CLUSTER)
                store.create(schema.FAULTS, wanted)
            else:
                store.set(schema.FAULTS, wanted, found.version)
            return True
        except (VersionConflict, AlreadyExists):
            continue
    raise VersionConflict(f"{schema.FAULTS} kept changing while fault {key!r} was being recorded")
