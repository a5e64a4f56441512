"""A standalone ZooKeeper server on 127.0.0.1, for the local cluster and the tests.

It may listen on another local address instead (`client_address`): the
network namespace tests put it on a bridge their namespaces can reach.

Debian's zookeeper package ships no usable service wrapper without systemd, so the
server is started straight from its jar. The data directory survives a stop, which
lets a test stop and restart the same server to simulate a ZooKeeper outage.

Secure mode (the default): ZooKeeper listens only on a TLS port (`secureClientPort`,
Netty, mutual TLS: a client must present a certificate the cluster's CA signed) and
every pvcd client authenticates with digest credentials. The server's directory
holds what that takes, made once and kept across restarts:

- `tls/`: a CA (`ca.pem`, its key `ca.key`), the server's key and certificate in one
  PEM (`server.pem`, whose subject alternative names cover 127.0.0.1, `client_address`
  and the `extra_addresses` clients reach it by: a chassis relay's address, say), and
  one client certificate and key every local client shares (`client.pem`, `client.key`);
- `credentials/<role>`: `role:password` (random) of each role of `pvcd.zk.security`,
  mode 0600.

The four-letter words (`ruok`, `stat`, `mntr`, `srvr`) are answered on the TLS port
too: `four_letter` speaks them over TLS with the client certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvcd.devcluster.processes import free_port, pid_alive, stop_pid
from pvcd.zk.security import ROLES, AclIdentities, Credentials, Tls, ZkSecurity

ZOOKEEPER_JAR = "/usr/share/java/zookeeper.jar"
NETTY_CODEC_JAR = "/usr/share/java/netty-codec.jar"
"""Debian's zookeeper.jar manifest omits it, and Netty's TLS handler needs it (without it every
TLS client times out with `NoClassDefFoundError: io/netty/handler/codec/...` in the server log)."""
JAVA = "java"
START_TIMEOUT = 30.0
# A short tick lets sessions expire within a couple of seconds in tests; the
# negotiated session timeout is bounded to [2, 20] ticks by the server.
TICK_MS = 500
FOUR_LETTER_TIMEOUT = 2.0
CERTIFICATE_DAYS = 3650
FOUR_LETTER_WORDS = "ruok,srvr,stat,mntr"


@dataclass
class ZooKeeperServer:
    """One ZooKeeper server process with its own directory and port."""

    directory: Path
    port: int
    pid: int | None = None
    client_address: str = "127.0.0.1"
    secure: bool = True
    """TLS only (mutual) and digest credentials for every role (see the module's docstring)."""
    extra_addresses: tuple[str, ...] = field(default_factory=tuple)
    """Other addresses clients reach this server by (relays), in its certificate."""

    @property
    def address(self) -> str:
        return f"{self.client_address}:{self.port}"

    @classmethod
    def create(
        cls,
        directory: Path,
        port: int | None = None,
        client_address: str = "127.0.0.1",
        secure: bool = True,
        extra_addresses: tuple[str, ...] | list[str] = (),
    ) -> ZooKeeperServer:
        directory = directory.resolve()
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "data").mkdir(exist_ok=True)
        server = cls(
            directory=directory,
            port=port or free_port(),
            client_address=client_address,
            secure=secure,
            extra_addresses=tuple(extra_addresses),
        )
        if secure:
            server._make_secrets()
        return server

    # -- the secrets of secure mode ------------------------------------------------

    @property
    def tls_directory(self) -> Path:
        return self.directory / "tls"

    @property
    def tls(self) -> Tls:
        """The CA, and the client certificate and key every local client presents (mutual TLS)."""
        return Tls(
            str(self.tls_directory / "ca.pem"),
            str(self.tls_directory / "client.pem"),
            str(self.tls_directory / "client.key"),
        )

    def credentials_file(self, role: str) -> Path:
        """The `user:password` file of `role` (one of `pvcd.zk.security.ROLES`), mode 0600."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
        return self.directory / "credentials" / role

    def credentials(self, role: str) -> Credentials:
        return Credentials.from_file(self.credentials_file(role))

    @property
    def identities(self) -> AclIdentities:
        return AclIdentities(**{role: (self.credentials(role).identity,) for role in ROLES})

    def security(self, role: str = "coordinator") -> ZkSecurity | None:
        """How a client of `role` reaches this server (None when it is not in secure mode)."""
        if not self.secure:
            return None
        return ZkSecurity(self.credentials(role), self.identities, self.tls)

    def config_keys(self, role: str = "coordinator") -> dict[str, Any]:
        """The `pvc.cluster.zookeeper` keys of a pvcd.yaml whose node authenticates as `role`
        (none when the server is not in secure mode)."""
        if not self.secure:
            return {}
        tls = self.tls
        return {
            "credentials_file": str(self.credentials_file(role)),
            "acl": self.identities.to_json(),
            "tls": {"ca_file": tls.ca_file, "cert_file": tls.cert_file, "key_file": tls.key_file},
        }

    def client_environment(self, role: str = "operator") -> dict[str, str]:
        """The environment a `pvc` CLI needs to reach this server as `role`."""
        if not self.secure:
            return {}
        tls = self.tls
        assert tls.cert_file is not None and tls.key_file is not None
        return {
            "PVC_ZOOKEEPER_CREDENTIALS": str(self.credentials_file(role)),
            "PVC_ZOOKEEPER_CA": tls.ca_file,
            "PVC_ZOOKEEPER_CERT": tls.cert_file,
            "PVC_ZOOKEEPER_KEY": tls.key_file,
        }

    def _addresses(self) -> list[str]:
        found: list[str] = []
        for address in ("127.0.0.1", self.client_address, *self.extra_addresses):
            if address not in found:
                found.append(address)
        return found

    def _make_secrets(self) -> None:
        """The credentials of every role, and the CA, server and client certificates, unless
        made already; the server certificate again when it does not cover every address."""
        credentials = self.directory / "credentials"
        credentials.mkdir(mode=0o700, exist_ok=True)
        for role in ROLES:
            path = self.credentials_file(role)
            if not path.exists():
                _write_private(path, f"{role}:{secrets.token_urlsafe(24)}\n".encode())
        self.tls_directory.mkdir(mode=0o700, exist_ok=True)
        _certificates(self.tls_directory, self._addresses())

    # -- the process ---------------------------------------------------------------

    def _write_config(self) -> Path:
        config = self.directory / "zoo.cfg"
        lines = [
            f"tickTime={TICK_MS}",
            f"dataDir={self.directory / 'data'}",
            "admin.enableServer=false",
            f"4lw.commands.whitelist={FOUR_LETTER_WORDS}",
            "maxClientCnxns=0",
        ]
        if self.secure:
            self._make_secrets()
            lines += [
                f"secureClientPort={self.port}",
                f"secureClientPortAddress={self.client_address}",
                "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory",
                f"ssl.keyStore.location={self.tls_directory / 'server.pem'}",
                "ssl.keyStore.type=PEM",
                f"ssl.trustStore.location={self.tls_directory / 'ca.pem'}",
                "ssl.trustStore.type=PEM",
                "ssl.clientAuth=need",
                "ssl.hostnameVerification=false",
            ]
        else:
            lines += [f"clientPort={self.port}", f"clientPortAddress={self.client_address}"]
        config.write_text("\n".join([*lines, ""]))
        return config

    def start(self) -> None:
        """Start the server and wait until it answers `ruok`."""
        if self.pid is not None and pid_alive(self.pid):
            return
        config = self._write_config()
        log = open(self.directory / "zookeeper.log", "ab")
        command = [
            JAVA,
            "-Xmx128m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-cp",
            f"{self.directory}:{ZOOKEEPER_JAR}:{NETTY_CODEC_JAR}",
            "org.apache.zookeeper.server.quorum.QuorumPeerMain",
            str(config),
        ]
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.directory,
        )
        log.close()
        self.pid = process.pid
        (self.directory / "zookeeper.pid").write_text(str(process.pid))
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"ZooKeeper exited with status {process.returncode}; see {self.directory / 'zookeeper.log'}"
                )
            if self.ruok():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"ZooKeeper did not answer on {self.address} within {START_TIMEOUT:.0f}s")

    def four_letter(self, word: str, timeout: float = FOUR_LETTER_TIMEOUT) -> str:
        """The server's answer to a four-letter word (`ruok`, `stat`, `mntr`, `srvr`), over TLS in
        secure mode; OSError (ssl.SSLError among them) when it cannot be asked."""
        return four_letter(self.client_address, self.port, word, self.tls if self.secure else None, timeout)

    def ruok(self) -> bool:
        """True when the server answers the `ruok` four-letter word with `imok`."""
        try:
            return self.four_letter("ruok", timeout=1.0) == "imok"
        except (OSError, ValueError):
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server by its PID; the data directory is kept."""
        if self.pid is not None:
            stop_pid(self.pid, sig=sig, timeout=10.0)
            self.pid = None
        pid_file = self.directory / "zookeeper.pid"
        if pid_file.exists():
            pid_file.unlink()


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret readable by its owner alone (created 0600, never wider for a moment)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def _certificates(directory: Path, addresses: list[str]) -> None:
    """`ca.pem`/`ca.key`, `server.pem` (key and certificate) for `addresses`, and
    `client.pem`/`client.key`, in `directory`; what exists and fits is kept."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def new_key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    until = now + datetime.timedelta(days=CERTIFICATE_DAYS)

    ca_cert_path, ca_key_path = directory / "ca.pem", directory / "ca.key"
    if ca_cert_path.exists() and ca_key_path.exists():
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
        made_ca = False
    else:
        ca_key = new_key()
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name("pvc local cluster CA"))
            .issuer_name(name("pvc local cluster CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write_private(ca_key_path, key_pem(ca_key))
        ca_cert_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        made_ca = True

    def issue(common_name: str, usage: Any, sans: list[x509.GeneralName]) -> tuple[bytes, bytes]:
        key = new_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common_name))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return key_pem(key), cert.public_bytes(serialization.Encoding.PEM)

    server_path = directory / "server.pem"
    wanted = {ipaddress.ip_address(address) for address in addresses}
    covered: set[Any] = set()
    if server_path.exists() and not made_ca:
        server_cert = x509.load_pem_x509_certificate(server_path.read_bytes())
        try:
            san = server_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            covered = set(san.get_values_for_type(x509.IPAddress))
        except x509.ExtensionNotFound:
            pass
    if made_ca or not wanted <= covered:
        sans: list[x509.GeneralName] = [x509.DNSName("localhost")]
        sans += [x509.IPAddress(address) for address in sorted(wanted | covered, key=str)]
        key, cert = issue("zookeeper", ExtendedKeyUsageOID.SERVER_AUTH, sans)
        _write_private(server_path, key + cert)
    client_cert_path, client_key_path = directory / "client.pem", directory / "client.key"
    if made_ca or not (client_cert_path.exists() and client_key_path.exists()):
        key, cert = issue("pvc-client", ExtendedKeyUsageOID.CLIENT_AUTH, [])
        _write_private(client_key_path, key)
        client_cert_path.write_bytes(cert)


def zookeeper_available() -> bool:
    """Whether the ZooKeeper jar and a Java runtime are installed here."""
    return os.path.exists(ZOOKEEPER_JAR) and any(
        os.access(os.path.join(d, JAVA), os.X_OK) for d in os.environ.get("PATH", "").split(os.pathsep)
    )


def four_letter(host: str, port: int, word: str, tls: Tls | None, timeout: float = FOUR_LETTER_TIMEOUT) -> str:
    """A ZooKeeper server's answer to a four-letter word, over TLS with the client certificate
    when `tls` is given (a secure server answers on its TLS port only)."""
    with socket.create_connection((host, port), timeout=timeout) as raw:
        conn: socket.socket = raw
        if tls is not None:
            context = ssl.create_default_context(cafile=tls.ca_file)
            if tls.cert_file is not None and tls.key_file is not None:
                context.load_cert_chain(tls.cert_file, tls.key_file)
            conn = context.wrap_socket(raw, server_hostname=host)
        with conn:
            conn.settimeout(timeout)
            conn.sendall(word.encode())
            chunks = []
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")
