"""ZooKeeper over TLS (issue 14): the session's server listens on a TLS port alone and asks every
client for a certificate its CA signed (mutual TLS). A client that does not trust the server, one
that brings no certificate or one the CA did not sign, and one speaking plain TCP are refused
within the connect timeout, and the store's message says why when it can.
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import pytest

from pvcd.devcluster.zookeeper import ZooKeeperServer
from pvcd.zk.security import Tls, ZkSecurity
from pvcd.zk.store import StoreUnavailable, ZooKeeperStore

CONNECT_TIMEOUT = 2.0
SLACK = 0.5
"""Beyond the connect timeout: kazoo's own stop after it gave up (a TLS failure is reported at once)."""


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> ZooKeeperServer:
    """Another cluster's secrets (never started): a CA, a client certificate and key of its own."""
    return ZooKeeperServer.create(tmp_path_factory.mktemp("stranger"))


def refusal(zookeeper: ZooKeeperServer, tls: Tls | None) -> tuple[str, float]:
    """The store's StoreUnavailable message for a client with the coordinator's credentials and
    `tls`, and how long it took to come."""
    security = zookeeper.security("coordinator")
    assert security is not None
    store = ZooKeeperStore(
        zookeeper.address,
        connect_timeout=CONNECT_TIMEOUT,
        security=ZkSecurity(security.credentials, security.identities, tls),
    )
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as refused:
        store.start()
    elapsed = time.monotonic() - started
    store.client.close()
    return str(refused.value), elapsed


def test_the_session_server_is_secure_and_a_secure_client_connects_at_once(zookeeper: ZooKeeperServer) -> None:
    config = (zookeeper.directory / "zoo.cfg").read_text()
    assert f"secureClientPort={zookeeper.port}" in config
    assert "clientPort=" not in config.replace("secureClientPort=", "")
    assert "ssl.clientAuth=need" in config
    for role in ("coordinator", "node", "operator"):
        assert zookeeper.credentials_file(role).stat().st_mode & 0o777 == 0o600
    assert (zookeeper.directory / "tls" / "ca.key").stat().st_mode & 0o777 == 0o600
    assert zookeeper.four_letter("ruok") == "imok"
    assert "zk_version" in zookeeper.four_letter("mntr")
    store = ZooKeeperStore(zookeeper.address, connect_timeout=CONNECT_TIMEOUT, security=zookeeper.security())
    started = time.monotonic()
    store.start()
    try:
        assert time.monotonic() - started < 1.0
        assert store.connected
    finally:
        store.stop()


def test_a_client_that_does_not_trust_the_servers_ca_fails_naming_the_tls_failure(
    zookeeper: ZooKeeperServer, stranger: ZooKeeperServer
) -> None:
    tls = zookeeper.tls
    message, elapsed = refusal(zookeeper, Tls(stranger.tls.ca_file, tls.cert_file, tls.key_file))
    assert elapsed < CONNECT_TIMEOUT, elapsed
    assert message.startswith(f"cannot reach ZooKeeper at {zookeeper.address}: "), message
    assert f"the TLS handshake with {zookeeper.address} failed: " in message, message
    assert "local issuer certificate" in message and "tls.ca_file" in message, message
    assert "\n" not in message


def test_a_client_without_a_certificate_is_refused(zookeeper: ZooKeeperServer) -> None:
    message, elapsed = refusal(zookeeper, Tls(zookeeper.tls.ca_file))
    assert elapsed < CONNECT_TIMEOUT, elapsed
    assert f"the TLS handshake with {zookeeper.address} failed: " in message, message
    assert "CERTIFICATE" in message.upper(), message


def test_a_client_certificate_another_ca_signed_is_refused(
    zookeeper: ZooKeeperServer, stranger: ZooKeeperServer
) -> None:
    stranger_tls = stranger.tls
    message, elapsed = refusal(zookeeper, Tls(zookeeper.tls.ca_file, stranger_tls.cert_file, stranger_tls.key_file))
    assert elapsed < CONNECT_TIMEOUT, elapsed
    assert f"the TLS handshake with {zookeeper.address} failed: " in message, message


def test_plain_tcp_to_the_tls_port_fails_within_the_connect_timeout(zookeeper: ZooKeeperServer) -> None:
    message, elapsed = refusal(zookeeper, None)
    assert elapsed < CONNECT_TIMEOUT + SLACK, elapsed
    assert message == f"cannot reach ZooKeeper at {zookeeper.address} within {CONNECT_TIMEOUT:g}s", message
    # The port speaks nothing but TLS: a four-letter word in the clear gets no answer.
    with socket.create_connection((zookeeper.client_address, zookeeper.port), timeout=CONNECT_TIMEOUT) as conn:
        conn.sendall(b"ruok")
        try:
            assert conn.recv(16) != b"imok"
        except (TimeoutError, ConnectionResetError):
            pass


def test_a_tls_client_with_the_wrong_ca_cannot_ask_even_a_four_letter_word(
    zookeeper: ZooKeeperServer, stranger: ZooKeeperServer
) -> None:
    context = ssl.create_default_context(cafile=stranger.tls.ca_file)
    with socket.create_connection((zookeeper.client_address, zookeeper.port), timeout=CONNECT_TIMEOUT) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            context.wrap_socket(raw, server_hostname=zookeeper.client_address)


def test_the_server_certificate_names_every_address_clients_use(tmp_path: Path) -> None:
    """A relay's address (a QEMU cluster's chassis on its cluster bridge) is added to the
    certificate when the server is made again with it; the CA and the credentials stay."""
    first = ZooKeeperServer.create(tmp_path / "zk")
    ca = Path(first.tls.ca_file).read_bytes()
    password = first.credentials_file("node").read_text()
    again = ZooKeeperServer.create(tmp_path / "zk", extra_addresses=("10.150.1.250",))
    assert Path(again.tls.ca_file).read_bytes() == ca
    assert again.credentials_file("node").read_text() == password

    from cryptography import x509

    certificate = x509.load_pem_x509_certificates((tmp_path / "zk" / "tls" / "server.pem").read_bytes())[0]
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(address) for address in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "10.150.1.250"}
    keys = again.config_keys("node")
    assert keys["credentials_file"] == str(tmp_path.resolve() / "zk" / "credentials" / "node")
    assert keys["acl"] == again.identities.to_json()
    assert keys["tls"] == {
        "ca_file": again.tls.ca_file,
        "cert_file": again.tls.cert_file,
        "key_file": again.tls.key_file,
    }
