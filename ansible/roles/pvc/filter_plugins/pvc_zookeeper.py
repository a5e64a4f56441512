"""Filters of the role "pvc": the ZooKeeper digest identity of a user and password.

ZooKeeper's digest scheme names an identity `user:base64(sha1(user:password))`, the raw SHA-1
digest base64-encoded (`pvcd.zk.security.digest_id`). Ansible's own `hash('sha1')` gives the
hexadecimal digest and no filter turns hexadecimal into base64 of the bytes, hence this one:

    {{ 'pvc-node' | pvc_zookeeper_digest(password) }}  ->  pvc-node:...=

The controller runs it; it needs nothing but the standard library.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from typing import Any


def pvc_zookeeper_digest(user: object, password: object) -> str:
    """`user:base64(sha1(user:password))`: the ACL identity of the credentials `user:password`."""
    user_text, password_text = str(user), str(password)  # str(): vault-encrypted values decrypt
    hashed = hashlib.sha1(f"{user_text}:{password_text}".encode()).digest()
    return f"{user_text}:{base64.b64encode(hashed).decode()}"


class FilterModule:
    def filters(self) -> dict[str, Callable[..., Any]]:
        return {"pvc_zookeeper_digest": pvc_zookeeper_digest}
