"""The ZooKeeper security keys of pvcd.yaml (`pvc.cluster.zookeeper.credentials_file`, `acl`,
`tls`): what is accepted, and the one line each mistake gets."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from pvcd.config import ConfigError, parse_config
from pvcd.zk.security import AclIdentities, Credentials, SecurityError, Tls, acl_for, digest_id

EXAMPLE = yaml.safe_load((Path(__file__).resolve().parents[2] / "examples" / "pvcd.yaml").read_text())
COORDINATOR = digest_id("pvc-coordinator", "c-pass")
NODE = digest_id("pvc-node", "n-pass")
OPERATOR = digest_id("pvc-operator", "o-pass")
SECURE = {
    "credentials_file": "/etc/pvc/zookeeper.credentials",
    "acl": {"coordinator": COORDINATOR, "node": NODE, "operator": OPERATOR},
    "tls": {"ca_file": "/etc/pvc/zk-ca.pem", "cert_file": "/etc/pvc/zk.pem", "key_file": "/etc/pvc/zk.key"},
}


def with_zookeeper(**keys: Any) -> dict[str, Any]:
    document = copy.deepcopy(EXAMPLE)
    zookeeper = document["pvc"]["cluster"].setdefault("zookeeper", {})
    for key in ("credentials_file", "acl", "tls"):
        zookeeper.pop(key, None)
    zookeeper.update(keys)
    return document


def problems(document: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(document)
    return caught.value.problems


def test_the_secure_keys_are_read() -> None:
    settings = parse_config(with_zookeeper(**SECURE)).cluster.zookeeper
    assert settings.credentials_file == "/etc/pvc/zookeeper.credentials"
    assert settings.acl == AclIdentities(COORDINATOR, NODE, OPERATOR)
    assert settings.tls == Tls("/etc/pvc/zk-ca.pem", "/etc/pvc/zk.pem", "/etc/pvc/zk.key")


def test_without_them_the_zookeeper_is_open_and_plain() -> None:
    settings = parse_config(with_zookeeper()).cluster.zookeeper
    assert (settings.credentials_file, settings.acl, settings.tls) == (None, None, None)


def test_two_identities_for_a_role_while_its_password_is_rotated() -> None:
    rotated = digest_id("pvc-coordinator", "new-pass")
    acl = dict(SECURE["acl"], coordinator=[rotated, COORDINATOR])
    settings = parse_config(with_zookeeper(**dict(SECURE, acl=acl))).cluster.zookeeper
    assert settings.acl is not None and settings.acl.coordinator == (rotated, COORDINATOR)
    assert settings.acl.role_of(Credentials("pvc-coordinator", "new-pass")) == "coordinator"
    assert settings.acl.role_of(Credentials("pvc-coordinator", "c-pass")) == "coordinator"
    assert settings.acl.role_of(Credentials("pvc-coordinator", "wrong")) is None


@pytest.mark.parametrize(
    "keys,expected",
    [
        ({"credentials_file": "/etc/pvc/x"}, "pvc.cluster.zookeeper.acl: credentials_file and acl go together"),
        ({"acl": SECURE["acl"]}, "pvc.cluster.zookeeper.credentials_file: credentials_file and acl go together"),
        (dict(SECURE, credentials_file="relative"), "pvc.cluster.zookeeper.credentials_file: must be an absolute"),
        (dict(SECURE, acl=dict(SECURE["acl"], node="pvc-node:c-pass")), "pvc.cluster.zookeeper.acl.node: must be"),
        (dict(SECURE, acl={"coordinator": COORDINATOR}), "pvc.cluster.zookeeper.acl.node: required key is missing"),
        (
            dict(SECURE, acl=dict(SECURE["acl"], operator=[OPERATOR, OPERATOR, OPERATOR])),
            "pvc.cluster.zookeeper.acl.operator: must be",
        ),
        (dict(SECURE, tls={"cert_file": "/a"}), "pvc.cluster.zookeeper.tls.ca_file: required key is missing"),
        (
            dict(SECURE, tls={"ca_file": "/ca", "cert_file": "/a"}),
            "pvc.cluster.zookeeper.tls.key_file: cert_file and key_file go together",
        ),
    ],
)
def test_each_mistake_is_one_line_naming_the_key(keys: dict[str, Any], expected: str) -> None:
    found = problems(with_zookeeper(**keys))
    assert any(line.startswith(expected) for line in found), found


def test_a_credentials_file_is_one_line_user_colon_password(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.write_text("pvc-node:pa:ss:word\n")
    assert Credentials.from_file(good) == Credentials("pvc-node", "pa:ss:word")
    assert "pa:ss" not in repr(Credentials.from_file(good))
    for text, why in (("", "found 0 lines"), ("a:b\nc:d\n", "found 2 lines"), ("nopassword", "expected USER:PASSWORD")):
        bad = tmp_path / "bad"
        bad.write_text(text)
        with pytest.raises(SecurityError, match=why):
            Credentials.from_file(bad)
    with pytest.raises(SecurityError, match="cannot read ZooKeeper credentials"):
        Credentials.from_file(tmp_path / "missing")


def test_bmc_records_are_granted_to_the_coordinators_alone() -> None:
    identities = AclIdentities(COORDINATOR, NODE, OPERATOR)
    assert acl_for("/pvc/nodes/hv1/ipmi", identities) == [(COORDINATOR, 31), (NODE, 2)]
    assert acl_for("/pvc/nodes/hv1/fence", identities) == [(COORDINATOR, 31), (NODE, 31), (OPERATOR, 31)]
    assert acl_for("/pvc/vms/ipmi", identities)[-1] == (OPERATOR, 31)
