"""ZooKeeper access control and TLS (pure): who a client authenticates as, which identity may do
what with each znode, and the TLS files of a connection.

Authentication is ZooKeeper's `digest` scheme: a client adds `user:password` to its session, and
an ACL entry names an identity as `user:base64(sha1(user:password))`, so that ACLs (and the
configuration that lists them) never hold a password. Three identities, one per role:

- `coordinator` — the coordinators' daemons: everything, including the nodes' BMC credentials,
  which only a fencer needs;
- `node` — every other node's daemon: everything but reading BMC credentials (it writes its
  own at registration);
- `operator` — the `pvc` CLI's default identity: everything but BMC credentials.

Unauthenticated clients get nothing: every znode pvcd creates carries only these entries, and
the tree's root and `/pvc` are given the same when the schema is created.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pvcd.zk import schema

ROLES = ("coordinator", "node", "operator")
MAX_IDENTITIES_PER_ROLE = 2
"""The current identity, and the previous one while a password is rotated."""
READ, WRITE, CREATE, DELETE, ADMIN = 1, 2, 4, 8, 16
ALL = READ | WRITE | CREATE | DELETE | ADMIN
_USER = re.compile(r"[A-Za-z0-9_.-]{1,64}")
DIGEST_IDENTITY = re.compile(r"[A-Za-z0-9_.-]{1,64}:[A-Za-z0-9+/]{27}=")


class SecurityError(ValueError):
    """A credentials file or ACL identity that cannot be used; one line naming what is wrong."""


def digest_id(user: str, password: str) -> str:
    """The ACL identity of `user:password` in ZooKeeper's digest scheme."""
    hashed = hashlib.sha1(f"{user}:{password}".encode()).digest()  # ZooKeeper's scheme: SHA-1
    return f"{user}:{base64.b64encode(hashed).decode()}"


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str = field(repr=False)

    @property
    def auth(self) -> str:
        """What the session adds for the digest scheme."""
        return f"{self.user}:{self.password}"

    @property
    def identity(self) -> str:
        return digest_id(self.user, self.password)

    @classmethod
    def parse(cls, text: str, source: str) -> Credentials:
        """`user:password` on one line (the password may hold colons, not line breaks)."""
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) != 1:
            raise SecurityError(f"{source}: expected one line USER:PASSWORD, found {len(lines)} lines")
        user, colon, password = lines[0].strip().partition(":")
        if not colon or not _USER.fullmatch(user) or not password:
            raise SecurityError(f"{source}: expected USER:PASSWORD (user: letters, digits, _ . -; a password)")
        return cls(user, password)

    @classmethod
    def from_file(cls, path: str | Path) -> Credentials:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise SecurityError(f"{path}: cannot read ZooKeeper credentials: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise SecurityError(f"{path}: cannot read ZooKeeper credentials: not UTF-8 text") from None
        return cls.parse(text, str(path))


@dataclass(frozen=True)
class AclIdentities:
    """The digest identities of each role (`user:digest`), the same on every node.

    Usually one per role; two while a password is rotated (old and new: docs/security.md), so
    that nodes with either can work. A single identity may be given as a string."""

    coordinator: tuple[str, ...]
    node: tuple[str, ...]
    operator: tuple[str, ...]

    def __post_init__(self) -> None:
        for role in ROLES:
            value = getattr(self, role)
            if isinstance(value, str):
                object.__setattr__(self, role, (value,))

    def of(self, role: str) -> tuple[str, ...]:
        identities: tuple[str, ...] = getattr(self, role)
        return identities

    def to_json(self) -> dict[str, str | list[str]]:
        return {role: self.of(role)[0] if len(self.of(role)) == 1 else list(self.of(role)) for role in ROLES}

    @classmethod
    def from_json(cls, value: object, source: str = schema.SECURITY) -> AclIdentities:
        if not isinstance(value, Mapping):
            raise SecurityError(f"{source}: expected a mapping of {', '.join(ROLES)} to USER:DIGEST identities")
        identities = {}
        for role in ROLES:
            try:
                identities[role] = parse_identities(value.get(role))
            except ValueError as exc:
                raise SecurityError(f"{source}: {role}: {exc}") from None
        return cls(**identities)

    def role_of(self, credentials: Credentials) -> str | None:
        """The role these credentials authenticate as, or None when they match none."""
        identity = credentials.identity
        return next((role for role in ROLES if identity in self.of(role)), None)


def parse_identities(value: object) -> tuple[str, ...]:
    """A role's identities as configured: one `USER:DIGEST`, or a list of up to two while its
    password is rotated; ValueError saying what is expected."""
    listed = [value] if isinstance(value, str) else value
    if (
        not isinstance(listed, list)
        or not 1 <= len(listed) <= MAX_IDENTITIES_PER_ROLE
        or not all(isinstance(item, str) and DIGEST_IDENTITY.fullmatch(item) for item in listed)
    ):
        raise ValueError(
            f"expected USER:DIGEST (the base64 SHA-1 of USER:PASSWORD), or a list of up to "
            f"{MAX_IDENTITIES_PER_ROLE} while a password is rotated (see docs/security.md)"
        )
    return tuple(listed)


def acl_for(path: str, identities: AclIdentities) -> list[tuple[str, int]]:
    """(digest identity, permissions) for a znode pvcd creates at `path`.

    BMC credentials: the coordinators read them; a node writes (but cannot read) its own;
    operators get nothing. Everything else: all three roles, everything."""
    if schema.is_secret(path):
        granted = {"coordinator": ALL, "node": WRITE}
    else:
        granted = {"coordinator": ALL, "node": ALL, "operator": ALL}
    return [(identity, perms) for role, perms in granted.items() for identity in identities.of(role)]


@dataclass(frozen=True)
class Tls:
    """Client–server TLS: the CA that signed the servers' certificates, and for mutual TLS the
    client's certificate and key (both or neither)."""

    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class ZkSecurity:
    """How one client reaches ZooKeeper: its credentials, the role identities its new znodes are
    given (None: read from `schema.SECURITY` once connected, as the CLI does), and TLS."""

    credentials: Credentials | None = None
    identities: AclIdentities | None = None
    tls: Tls | None = None


def security_record(identities: AclIdentities) -> dict[str, Any]:
    """`schema.SECURITY`'s value: what the CLI learns the ACLs of new znodes from."""
    return {"identities": identities.to_json()}
