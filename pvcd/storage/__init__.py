"""Ceph storage: pools, RBD volumes, snapshots, locks and the OSD blocklist.

`pvcd.storage.ceph` drives the `ceph` and `rbd` commands (every call with a
timeout); `pvcd.storage.values` is what their JSON answers mean.
"""

from pvcd.storage.ceph import Ceph, CephError

__all__ = ["Ceph", "CephError"]
