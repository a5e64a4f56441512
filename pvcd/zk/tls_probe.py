"""Why a TLS connection to ZooKeeper did not come up, in words.

kazoo reports a failed TLS handshake (a server certificate the CA did not sign, a client
certificate the server refuses, a key that does not match) only as a connection that never came
up within the connect timeout. After such a failure the store makes one handshake of its own,
bounded, to say which.
"""

from __future__ import annotations

import socket
import ssl

from pvcd.zk.security import Tls


def _endpoints(hosts: str) -> list[tuple[str, int]]:
    """`h1:p1,h2:p2/chroot` → [(h1, p1), (h2, p2)] (ZooKeeper's default port when none)."""
    found = []
    for entry in hosts.partition("/")[0].split(","):
        host, _, port = entry.strip().rpartition(":") if entry.count(":") == 1 else (entry.strip(), "", "2181")
        if host:
            found.append((host.strip("[]"), int(port) if port.isdigit() else 2181))
    return found


def describe_handshake(hosts: str, tls: Tls, timeout: float) -> str:
    """ "; <what went wrong>" for the first server whose handshake fails, "" when none does."""
    for host, port in _endpoints(hosts):
        try:
            context = ssl.create_default_context(cafile=tls.ca_file)
            if tls.cert_file and tls.key_file:
                context.load_cert_chain(tls.cert_file, tls.key_file)
        except (OSError, ssl.SSLError) as exc:
            return f"; the TLS files cannot be used: {exc}"
        try:
            with socket.create_connection((host, port), timeout=timeout) as raw:
                with context.wrap_socket(raw, server_hostname=host) as wrapped:
                    wrapped.settimeout(timeout)
                    wrapped.recv(0)
        except ssl.SSLCertVerificationError as exc:
            return f"; the TLS handshake with {host}:{port} failed: {exc.verify_message} (check tls.ca_file)"
        except ssl.SSLError as exc:
            return f"; the TLS handshake with {host}:{port} failed: {exc.reason or exc}"
        except OSError as exc:
            return f"; {host}:{port}: {exc.strerror or exc}"
    return ""
