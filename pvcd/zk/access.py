"""How this node reaches ZooKeeper: its configured credentials, ACL identities and TLS files.

The one place that reads the credentials file named in `pvcd.yaml` (the configuration itself is
validated without I/O): the daemon, the DHCP lease script and the local cluster's tools build
their store's security here.
"""

from __future__ import annotations

from pvcd.config import ZooKeeperSettings
from pvcd.zk.security import Credentials, ZkSecurity


def zk_security(settings: ZooKeeperSettings) -> ZkSecurity:
    """SecurityError (one line naming the file) when the credentials file cannot be used."""
    credentials = Credentials.from_file(settings.credentials_file) if settings.credentials_file else None
    return ZkSecurity(credentials, settings.acl, settings.tls)
