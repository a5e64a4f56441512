"""Why a TLS connection to ZooKeeper would not come up, in words.

kazoo reports a failed TLS handshake (a server certificate the CA did not sign, a client
certificate the server refuses, a key that does not match) only as a connection that never came
up within the connect timeout. So before kazoo connects, the store makes one handshake of its
own, bounded: a TLS failure is reported at once, in words; a server that cannot be reached at all
is left to kazoo (another server of the ensemble may answer), and named if kazoo fails too.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass

from pvcd.zk.security import Tls


def _endpoints(hosts: str) -> list[tuple[str, int]]:
    """`h1:p1,h2:p2/chroot` → [(h1, p1), (h2, p2)] (ZooKeeper's default port when none)."""
    found = []
    for entry in hosts.partition("/")[0].split(","):
        host, _, port = entry.strip().rpartition(":") if entry.count(":") == 1 else (entry.strip(), "", "2181")
        if host:
            found.append((host.strip("[]"), int(port) if port.isdigit() else 2181))
    return found


@dataclass(frozen=True)
class Handshake:
    """What one bounded handshake found: `tls_failure` (the connection will never come up),
    `unreachable` (no server answered at the TCP level), both None when a server completed it."""

    tls_failure: str | None = None
    unreachable: str | None = None


def check_handshake(hosts: str, tls: Tls, timeout: float) -> Handshake:
    """Handshake with the servers in turn until one completes, one fails at the TLS level, or
    none answers; each attempt bounded by `timeout`."""
    try:
        context = ssl.create_default_context(cafile=tls.ca_file)
        # As kazoo's own connection: the certificate must chain to the CA; its names are not checked.
        context.check_hostname = False
        if tls.cert_file and tls.key_file:
            context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        return Handshake(tls_failure=f"the TLS files cannot be used: {exc}")
    unreachable = None
    for host, port in _endpoints(hosts):
        try:
            with socket.create_connection((host, port), timeout=timeout) as raw:
                with context.wrap_socket(raw, server_hostname=host) as wrapped:
                    wrapped.settimeout(timeout)
                    wrapped.recv(0)
            return Handshake()
        except ssl.SSLCertVerificationError as exc:
            return Handshake(
                tls_failure=f"the TLS handshake with {host}:{port} failed: {exc.verify_message} (check tls.ca_file)"
            )
        except ssl.SSLError as exc:
            return Handshake(tls_failure=f"the TLS handshake with {host}:{port} failed: {exc.reason or exc}")
        except OSError as exc:
            unreachable = f"{host}:{port}: {exc.strerror or exc}"
    return Handshake(unreachable=unreachable)
