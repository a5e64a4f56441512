"""Tests of pvcd.config: the example file, every validation rule, and fuzzing.

Each rule is checked against the exact problem line an operator would see,
because those lines are the interface of ``pvcd --check-config``.
"""

from __future__ import annotations

import copy
import ipaddress
import pickle
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pvcd.config import (
    CONFIG_ENV,
    DEFAULT_CONFIG_FILE,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_ENABLE_API,
    DEFAULT_LIBVIRT_URI,
    DEFAULT_SESSION_TIMEOUT,
    DEFAULT_SHUTDOWN_TIMEOUT,
    DEFAULT_ZOOKEEPER_PORT,
    Config,
    ConfigError,
    Coordinator,
    Hypervisor,
    Storage,
    ZooKeeperSettings,
    config_path_from_env,
    load_config,
    parse_config,
)

EXAMPLE_FILE = Path(__file__).resolve().parents[2] / "examples" / "pvcd.yaml"
_EXAMPLE = yaml.safe_load(EXAMPLE_FILE.read_text())

NETWORKING_REQUIRED = "required when pvc.functions.enable_networking is True"
DELETE = object()

NET = "pvc.cluster.networks"
NODE_NET = "pvc.system.configuration.networking"
INTERVALS = "pvc.system.fencing.intervals"
ACTIONS = "pvc.system.fencing.actions"
DB = "pvc.coordinator.dns.database"

# Every key that must be present in a configuration with enable_networking True
# (the conditionally required sections are in CONDITIONAL).
REQUIRED = [
    "pvc",
    "pvc.node",
    "pvc.functions",
    "pvc.functions.enable_hypervisor",
    "pvc.functions.enable_networking",
    "pvc.functions.enable_storage",
    "pvc.cluster",
    "pvc.cluster.coordinators",
    *(f"{NET}.{name}" for name in ("upstream", "cluster", "storage")),
    *(
        f"{NET}.{name}.{key}"
        for name in ("upstream", "cluster", "storage")
        for key in ("domain", "network", "floating_ip")
    ),
    "pvc.coordinator.dns",
    DB,
    *(f"{DB}.{key}" for key in ("host", "port", "name", "user", "pass")),
    "pvc.system",
    "pvc.system.fencing",
    INTERVALS,
    f"{INTERVALS}.keepalive_interval",
    f"{INTERVALS}.fence_intervals",
    f"{INTERVALS}.suicide_intervals",
    ACTIONS,
    f"{ACTIONS}.successful_fence",
    f"{ACTIONS}.failed_fence",
    "pvc.system.fencing.ipmi",
    *(f"pvc.system.fencing.ipmi.{key}" for key in ("host", "user", "pass")),
    "pvc.system.migration",
    "pvc.system.migration.target_selector",
    "pvc.system.configuration",
    "pvc.system.configuration.directories",
    *(
        f"pvc.system.configuration.directories.{key}"
        for key in ("dynamic_directory", "log_directory", "console_log_directory")
    ),
    "pvc.system.configuration.logging",
    *(
        f"pvc.system.configuration.logging.{key}"
        for key in (
            "file_logging",
            "stdout_logging",
            "log_colours",
            "log_dates",
            "log_keepalives",
            "log_keepalive_cluster_details",
            "log_keepalive_storage_details",
            "console_log_lines",
        )
    ),
    *(f"{NODE_NET}.{name}" for name in ("upstream", "cluster", "storage")),
    *(
        f"{NODE_NET}.{name}.{key}"
        for name in ("upstream", "cluster", "storage")
        for key in ("device", "mtu", "address")
    ),
]
CONDITIONAL = [NET, "pvc.coordinator", NODE_NET]
OPTIONAL = [
    "pvc.functions.enable_api",
    "pvc.cluster.zookeeper",
    "pvc.cluster.zookeeper.port",
    "pvc.cluster.zookeeper.session_timeout",
    "pvc.cluster.zookeeper.connect_timeout",
    f"{NET}.upstream.gateway",
    "pvc.system.hypervisor",
    "pvc.system.hypervisor.libvirt_uri",
    "pvc.system.hypervisor.shutdown_timeout",
    "pvc.system.storage",
    "pvc.system.storage.ceph_config_file",
    "pvc.system.storage.ceph_keyring",
    "pvc.system.storage.ceph_client_id",
    "pvc.system.storage.ceph_timeout",
    "pvc.system.storage.blocklist_time",
    "pvc.system.fencing.ipmi.port",
    "pvc.system.fencing.storm_guard_share",
    "pvc.system.fencing.self_fence_command",
    "pvc.system.fencing.watchdog",
    "pvc.system.fencing.watchdog.device",
    "pvc.system.fencing.watchdog.timeout",
    "pvc.system.migration.flush_concurrency",
    "pvc.system.migration.flush_on_shutdown",
]


def example() -> dict[str, Any]:
    """A fresh copy of the example document, free to edit."""
    return copy.deepcopy(_EXAMPLE)


def edit(document: dict[str, Any], path: str, value: object = DELETE) -> dict[str, Any]:
    """Set (or delete) the key at a dotted path; returns the document."""
    *parents, last = path.split(".")
    mapping = document
    for key in parents:
        mapping = mapping[key]
    if value is DELETE:
        del mapping[last]
    else:
        mapping[last] = value
    return document


def edited(*changes: tuple[str, object]) -> dict[str, Any]:
    document = example()
    for path, value in changes:
        edit(document, path, value)
    return document


def problems(document: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(document)
    return caught.value.problems


def key_paths(node: object, prefix: str = "") -> list[str]:
    if not isinstance(node, dict):
        return []
    paths = []
    for key, value in node.items():
        path = f"{prefix}.{key}" if prefix else key
        paths.append(path)
        paths.extend(key_paths(value, path))
    return paths


# --- The example ---------------------------------------------------------------


def test_example_file_is_valid_and_complete() -> None:
    config = load_config(str(EXAMPLE_FILE))

    assert config.node == "pvc-hv1"
    assert config.functions.enable_api is True
    assert config.cluster.coordinators == (
        Coordinator("pvc-hv1", "pvc-hv1", 2181),
        Coordinator("pvc-hv2", "pvc-hv2", 2181),
        Coordinator("pvc-hv3", "pvc-hv3", 2181),
    )
    assert config.zookeeper_hosts == "pvc-hv1:2181,pvc-hv2:2181,pvc-hv3:2181"
    assert config.is_coordinator
    upstream = config.cluster.networks.upstream
    assert upstream.domain == "mydomain.net"
    assert upstream.network == ipaddress.IPv4Network("1.1.1.0/24")
    assert upstream.floating_ip == ipaddress.IPv4Interface("1.1.1.10/24")
    assert upstream.gateway == ipaddress.IPv4Address("1.1.1.1")
    assert config.cluster.networks.cluster.gateway is None
    assert config.coordinator.dns_database.port == 5432
    assert config.coordinator.dns_database.password == "pvcdns"
    fencing = config.fencing
    assert (fencing.keepalive_interval, fencing.fence_intervals, fencing.suicide_intervals) == (5, 6, 0)
    assert (fencing.successful_fence, fencing.failed_fence) == ("migrate", None)
    assert (fencing.ipmi.host, fencing.ipmi.user, fencing.ipmi.password) == ("pvc-hv1-lom", "admin", "Passw0rd")
    assert config.migration.target_selector == "mem"
    assert config.directories.console_log_directory == "/var/log/libvirt"
    assert config.logging.console_log_lines == 1000
    assert config.logging.log_keepalive_storage_details is True
    networking = config.networking
    assert (networking.upstream.address, networking.upstream.address_mode) == (None, "none")
    assert networking.cluster.address == ipaddress.IPv4Interface("10.255.0.1/24")
    assert networking.cluster.address_mode == "by-id"
    assert networking.storage.address == ipaddress.IPv4Interface("10.254.0.1/24")
    assert (networking.storage.device, networking.storage.mtu) == ("ens4", 1500)
    assert config.cluster.zookeeper == ZooKeeperSettings(2181, 10.0, 5.0)
    assert config.hypervisor == Hypervisor("qemu:///system", 180)


def test_example_shows_every_key_of_the_schema() -> None:
    assert sorted(key_paths(_EXAMPLE)) == sorted(REQUIRED + CONDITIONAL + OPTIONAL)


def test_added_keys_take_their_defaults_when_absent() -> None:
    config = parse_config(
        edited(
            ("pvc.functions.enable_api", DELETE),
            ("pvc.cluster.zookeeper", DELETE),
            ("pvc.system.hypervisor", DELETE),
        )
    )
    assert config.functions.enable_api is DEFAULT_ENABLE_API is False
    assert config.cluster.zookeeper == ZooKeeperSettings(
        DEFAULT_ZOOKEEPER_PORT, DEFAULT_SESSION_TIMEOUT, DEFAULT_CONNECT_TIMEOUT
    )
    assert (DEFAULT_ZOOKEEPER_PORT, DEFAULT_SESSION_TIMEOUT, DEFAULT_CONNECT_TIMEOUT) == (2181, 10.0, 5.0)
    assert config.hypervisor == Hypervisor(DEFAULT_LIBVIRT_URI, DEFAULT_SHUTDOWN_TIMEOUT)
    assert (DEFAULT_LIBVIRT_URI, DEFAULT_SHUTDOWN_TIMEOUT) == ("qemu:///system", 180)


@pytest.mark.parametrize("section", ["pvc.cluster.zookeeper", "pvc.system.hypervisor"])
@pytest.mark.parametrize("empty", [None, {}])
def test_empty_optional_sections_take_the_defaults(section: str, empty: object) -> None:
    config = parse_config(edited((section, empty)))
    assert config.cluster.zookeeper == ZooKeeperSettings()
    assert config.hypervisor == Hypervisor()


def test_partial_optional_sections_fill_in_the_rest() -> None:
    config = parse_config(
        edited(
            ("pvc.cluster.zookeeper", {"session_timeout": 3.5}),
            ("pvc.system.hypervisor", {"libvirt_uri": "test:///default"}),
        )
    )
    assert config.cluster.zookeeper == ZooKeeperSettings(port=2181, session_timeout=3.5, connect_timeout=5.0)
    assert config.hypervisor == Hypervisor(libvirt_uri="test:///default", shutdown_timeout=180)


def test_passwords_stay_out_of_repr() -> None:
    config = parse_config(edited((f"{DB}.pass", "db-secret"), ("pvc.system.fencing.ipmi.pass", "ipmi-secret")))
    assert config.coordinator.dns_database.password == "db-secret"
    assert "secret" not in repr(config)


# --- Missing keys --------------------------------------------------------------


@pytest.mark.parametrize("path", REQUIRED)
def test_each_required_key_missing(path: str) -> None:
    assert problems(edited((path, DELETE))) == [f"{path}: required key is missing"]


@pytest.mark.parametrize("path", CONDITIONAL)
@pytest.mark.parametrize("how", ["deleted", "null", "None"])
def test_networking_sections_required_when_networking_enabled(path: str, how: str) -> None:
    value = {"deleted": DELETE, "null": None, "None": "None"}[how]
    assert problems(edited((path, value))) == [f"{path}: {NETWORKING_REQUIRED}"]


def test_networking_sections_optional_when_networking_disabled() -> None:
    config = parse_config(
        edited(
            ("pvc.functions.enable_networking", False),
            (NET, DELETE),
            ("pvc.coordinator", DELETE),
            (NODE_NET, DELETE),
        )
    )
    assert config.cluster.networks is None
    assert config.coordinator is None
    assert config.networking is None


def test_networking_sections_still_validated_when_networking_disabled() -> None:
    document = edited(("pvc.functions.enable_networking", False), (f"{NET}.cluster.network", "10.0.0.1/8"))
    assert problems(document) == [
        f"{NET}.cluster.network: must have all host bits zero (did you mean 10.0.0.0/8?), got '10.0.0.1/8'"
    ]


def test_all_required_sections_missing_are_each_reported() -> None:
    assert problems({"pvc": {}}) == [
        "pvc.node: required key is missing",
        "pvc.functions: required key is missing",
        "pvc.cluster: required key is missing",
        "pvc.system: required key is missing",
    ]


# --- Wrong values ---------------------------------------------------------------

POSITIVE = "must be a positive integer"
NON_NEGATIVE = "must be a non-negative integer"
BOOLEAN = "must be a boolean (True or False)"
HOST_NAME = "must be a host name (letters, digits, '-', '_' and '.', starting with a letter or digit)"
CIDR_NETWORK = "must be an IPv4 network in CIDR form (e.g. 10.0.0.0/24)"
CIDR_ADDRESS = "must be an IPv4 address in CIDR form (e.g. 10.0.0.1/24)"
DOMAIN = "must be a DNS domain name (e.g. example.com) or None"
NODE_ADDRESS = "must be None, by-id or an IPv4 address in CIDR form (e.g. 10.0.0.1/24)"
DEVICE = "must be a network interface name (1-15 characters, no '/', ':' or whitespace)"
PORT = "must be an integer from 1 to 65535"
MTU = "must be an integer from 576 to 9216"
SECONDS = "must be a positive number of seconds"
TEXT = "must be a non-empty string"

BAD_VALUES = [
    # integers; booleans are not integers
    (f"{INTERVALS}.keepalive_interval", "five", f"{POSITIVE}, got 'five'"),
    (f"{INTERVALS}.keepalive_interval", 0, f"{POSITIVE}, got 0"),
    (f"{INTERVALS}.keepalive_interval", True, f"{POSITIVE}, got True"),
    (f"{INTERVALS}.keepalive_interval", 5.0, f"{POSITIVE}, got 5.0"),
    (f"{INTERVALS}.fence_intervals", -1, f"{NON_NEGATIVE}, got -1"),
    (f"{INTERVALS}.suicide_intervals", "0", f"{NON_NEGATIVE}, got '0'"),
    (f"{INTERVALS}.suicide_intervals", None, f"{NON_NEGATIVE}, got null"),
    ("pvc.system.configuration.logging.console_log_lines", [1], f"{NON_NEGATIVE}, got list"),
    ("pvc.system.configuration.logging.console_log_lines", -(10**400), f"{NON_NEGATIVE}, got a very large integer"),
    # booleans
    ("pvc.functions.enable_hypervisor", "yes", f"{BOOLEAN}, got 'yes'"),
    ("pvc.functions.enable_api", 1, f"{BOOLEAN}, got 1"),
    ("pvc.functions.enable_storage", "True", f"{BOOLEAN}, got 'True'"),
    ("pvc.system.configuration.logging.file_logging", None, f"{BOOLEAN}, got null"),
    ("pvc.system.configuration.logging.log_colours", {"a": 1}, f"{BOOLEAN}, got mapping"),
    # names and strings
    ("pvc.node", "", f"{HOST_NAME}, got ''"),
    ("pvc.node", "pvc hv1", f"{HOST_NAME}, got 'pvc hv1'"),
    ("pvc.node", "-hv1", f"{HOST_NAME}, got '-hv1'"),
    ("pvc.node", 1, f"{HOST_NAME}, got 1"),
    (f"{DB}.host", "", f"{TEXT}, got ''"),
    (f"{DB}.user", 5, f"{TEXT}, got 5"),
    ("pvc.system.fencing.ipmi.host", None, f"{TEXT}, got null"),
    # passwords: the problem never shows the value
    (f"{DB}.pass", 1234, f"{TEXT}, got integer"),
    ("pvc.system.fencing.ipmi.pass", "", f"{TEXT}, got an empty string"),
    ("pvc.system.fencing.ipmi.pass", ["secret"], f"{TEXT}, got list"),
    # enumerations
    ("pvc.system.migration.target_selector", "ram", "must be one of mem, vcpus, load, vms, got 'ram'"),
    ("pvc.system.migration.target_selector", None, "must be one of mem, vcpus, load, vms, got null"),
    (f"{ACTIONS}.successful_fence", "reboot", "must be one of migrate, None, got 'reboot'"),
    (f"{ACTIONS}.failed_fence", "none", "must be one of migrate, None, got 'none'"),
    # ports, MTU, seconds
    (f"{DB}.port", 0, f"{PORT}, got 0"),
    (f"{DB}.port", 65536, f"{PORT}, got 65536"),
    (f"{DB}.port", "5432", f"{PORT}, got '5432'"),
    ("pvc.cluster.zookeeper.port", 70000, f"{PORT}, got 70000"),
    (f"{NODE_NET}.upstream.mtu", 575, f"{MTU}, got 575"),
    (f"{NODE_NET}.cluster.mtu", 9217, f"{MTU}, got 9217"),
    (f"{NODE_NET}.storage.mtu", "1500", f"{MTU}, got '1500'"),
    ("pvc.cluster.zookeeper.session_timeout", 0, f"{SECONDS}, got 0"),
    ("pvc.cluster.zookeeper.session_timeout", -2.5, f"{SECONDS}, got -2.5"),
    ("pvc.cluster.zookeeper.session_timeout", float("nan"), f"{SECONDS}, got nan"),
    ("pvc.cluster.zookeeper.connect_timeout", float("inf"), f"{SECONDS}, got inf"),
    ("pvc.cluster.zookeeper.connect_timeout", True, f"{SECONDS}, got True"),
    ("pvc.cluster.zookeeper.connect_timeout", "5", f"{SECONDS}, got '5'"),
    ("pvc.system.hypervisor.shutdown_timeout", 0, f"{POSITIVE}, got 0"),
    ("pvc.system.hypervisor.libvirt_uri", "", "must be a libvirt URI (e.g. qemu:///system), got ''"),
    ("pvc.system.hypervisor.libvirt_uri", "system", "must be a libvirt URI (e.g. qemu:///system), got 'system'"),
    ("pvc.system.storage.ceph_config_file", "ceph.conf", "must be an absolute path, got 'ceph.conf'"),
    ("pvc.system.storage.ceph_keyring", 5, "must be an absolute path, got 5"),
    ("pvc.system.storage.ceph_timeout", 0, f"{SECONDS}, got 0"),
    ("pvc.system.storage.blocklist_time", 59, "must be an integer from 60 to 31536000, got 59"),
    ("pvc.system.storage.blocklist_time", 31536001, "must be an integer from 60 to 31536000, got 31536001"),
    ("pvc.system.storage.blocklist_time", 600.0, "must be an integer from 60 to 31536000, got 600.0"),
    (
        "pvc.system.storage.ceph_client_id",
        "client admin",
        "must be a Ceph client name such as admin or pvcd (letters, digits, _ . -), got 'client admin'",
    ),
    # paths and devices
    ("pvc.system.configuration.directories.dynamic_directory", "run/pvc", "must be an absolute path, got 'run/pvc'"),
    ("pvc.system.configuration.directories.log_directory", "", "must be an absolute path, got ''"),
    (f"{NODE_NET}.upstream.device", "", f"{DEVICE}, got ''"),
    (f"{NODE_NET}.upstream.device", "ens4/0", f"{DEVICE}, got 'ens4/0'"),
    (f"{NODE_NET}.upstream.device", "ens 4", f"{DEVICE}, got 'ens 4'"),
    (f"{NODE_NET}.upstream.device", "ens4:1", f"{DEVICE}, got 'ens4:1'"),
    (f"{NODE_NET}.upstream.device", "a" * 16, f"{DEVICE}, got '{'a' * 16}'"),
    (f"{NODE_NET}.upstream.device", "..", f"{DEVICE}, got '..'"),
    # domains
    (f"{NET}.upstream.domain", "my_domain.net", f"{DOMAIN}, got 'my_domain.net'"),
    (f"{NET}.upstream.domain", "-bad.net", f"{DOMAIN}, got '-bad.net'"),
    (f"{NET}.upstream.domain", "a..net", f"{DOMAIN}, got 'a..net'"),
    (f"{NET}.upstream.domain", "pvc.local.", f"{DOMAIN}, got 'pvc.local.'"),
    (f"{NET}.upstream.domain", 5, f"{DOMAIN}, got 5"),
    # networks
    (f"{NET}.upstream.network", "1.1.1.0/33", f"{CIDR_NETWORK}, got '1.1.1.0/33'"),
    (f"{NET}.upstream.network", "1.1.1.0", f"{CIDR_NETWORK}, got '1.1.1.0'"),
    (f"{NET}.upstream.network", "1.1.1.0/255.255.255.0", f"{CIDR_NETWORK}, got '1.1.1.0/255.255.255.0'"),
    (f"{NET}.upstream.network", "1.1.256.0/24", f"{CIDR_NETWORK}, got '1.1.256.0/24'"),
    (f"{NET}.upstream.network", "fd00::/64", f"{CIDR_NETWORK}, got 'fd00::/64'"),
    (f"{NET}.upstream.network", 16843008, f"{CIDR_NETWORK}, got 16843008"),
    (
        f"{NET}.upstream.network",
        "1.1.1.5/24",
        "must have all host bits zero (did you mean 1.1.1.0/24?), got '1.1.1.5/24'",
    ),
    # floating IPs and gateways
    (f"{NET}.upstream.floating_ip", "1.1.1.10", f"{CIDR_ADDRESS}, got '1.1.1.10'"),
    (
        f"{NET}.upstream.floating_ip",
        "1.1.2.10/24",
        f"must be inside {NET}.upstream.network 1.1.1.0/24, got '1.1.2.10/24'",
    ),
    (
        f"{NET}.upstream.floating_ip",
        "1.1.1.10/16",
        f"must have the prefix length of {NET}.upstream.network (/24), got '1.1.1.10/16'",
    ),
    (
        f"{NET}.upstream.floating_ip",
        "1.1.1.255/24",
        f"must not be the network or broadcast address of {NET}.upstream.network 1.1.1.0/24, got '1.1.1.255/24'",
    ),
    (
        f"{NET}.upstream.gateway",
        "1.1.1.1/24",
        "must be an IPv4 address (e.g. 10.0.0.1) or None, got '1.1.1.1/24'",
    ),
    (f"{NET}.upstream.gateway", "1.1.2.1", f"must be inside {NET}.upstream.network 1.1.1.0/24, got '1.1.2.1'"),
    (
        f"{NET}.upstream.gateway",
        "1.1.1.0",
        f"must not be the network or broadcast address of {NET}.upstream.network 1.1.1.0/24, got '1.1.1.0'",
    ),
    # node addresses
    (f"{NODE_NET}.upstream.address", "dhcp", f"{NODE_ADDRESS}, got 'dhcp'"),
    (f"{NODE_NET}.upstream.address", "1.1.1.5", f"{NODE_ADDRESS}, got '1.1.1.5'"),
    (
        f"{NODE_NET}.cluster.address",
        "10.0.0.5/24",
        f"must be inside {NET}.cluster.network 10.255.0.0/24, got '10.0.0.5/24'",
    ),
    (
        f"{NODE_NET}.cluster.address",
        "10.255.0.5/16",
        f"must have the prefix length of {NET}.cluster.network (/24), got '10.255.0.5/16'",
    ),
    (
        f"{NODE_NET}.cluster.address",
        "10.255.0.254/24",
        f"must not be the floating IP {NET}.cluster.floating_ip, got '10.255.0.254/24'",
    ),
    # mappings and lists
    ("pvc.functions", [], "must be a mapping, got list"),
    ("pvc.system", "system", "must be a mapping, got 'system'"),
    (f"{NET}.upstream", None, "must be a mapping, got null"),
    ("pvc.coordinator.dns", 5, "must be a mapping, got 5"),
    ("pvc.system.hypervisor", ["qemu:///system"], "must be a mapping, got list"),
    ("pvc.cluster.zookeeper", "2181", "must be a mapping, got '2181'"),
    ("pvc.cluster.coordinators", "pvc-hv1", "must be a list, got 'pvc-hv1'"),
    ("pvc.cluster.coordinators", {"pvc-hv1": None}, "must be a list, got mapping"),
    ("pvc.cluster.coordinators", [], "must list at least one coordinator"),
]


@pytest.mark.parametrize(
    ("path", "value", "message"),
    BAD_VALUES,
    ids=[f"{index}-{path.rsplit('.', 1)[-1]}" for index, (path, _, _) in enumerate(BAD_VALUES)],
)
def test_bad_value(path: str, value: object, message: str) -> None:
    assert problems(edited((path, value))) == [f"{path}: {message}"]


GOOD_VALUES = [
    (f"{NET}.upstream.domain", None, None),
    (f"{NET}.upstream.domain", "None", None),
    (f"{NET}.upstream.domain", "a-b.example.com", "a-b.example.com"),
    (f"{NET}.upstream.gateway", "None", None),
    (f"{NET}.upstream.gateway", None, None),
    (f"{ACTIONS}.successful_fence", None, None),
    (f"{ACTIONS}.successful_fence", "None", None),
    (f"{INTERVALS}.fence_intervals", 0, 0),
    ("pvc.system.configuration.logging.console_log_lines", 0, 0),
    ("pvc.cluster.zookeeper.session_timeout", 3.5, 3.5),
    ("pvc.cluster.zookeeper.connect_timeout", 1, 1.0),
    (f"{NODE_NET}.upstream.device", "vlan.1000-x_", "vlan.1000-x_"),
]


def _get(config: Config, path: str) -> object:
    """Walk a config path as written in the file, through the dataclasses."""
    aliases = {
        "pvc.cluster.networks": "cluster.networks",
        "pvc.cluster.zookeeper": "cluster.zookeeper",
        "pvc.system.fencing.actions": "fencing",
        "pvc.system.fencing.intervals": "fencing",
        "pvc.system.configuration.logging": "logging",
        "pvc.system.configuration.networking": "networking",
    }
    for prefix, attribute in aliases.items():
        if path.startswith(prefix + "."):
            path = attribute + path[len(prefix) :]
    value: object = config
    for name in path.split("."):
        value = getattr(value, name)
    return value


@pytest.mark.parametrize(("path", "value", "expected"), GOOD_VALUES)
def test_good_value(path: str, value: object, expected: object) -> None:
    assert _get(parse_config(edited((path, value))), path) == expected


@pytest.mark.parametrize("value", [None, "None"])
def test_address_none_in_both_spellings(value: object) -> None:
    networking = parse_config(edited((f"{NODE_NET}.cluster.address", value))).networking
    assert (networking.cluster.address, networking.cluster.address_mode) == (None, "none")


def test_static_address() -> None:
    networking = parse_config(edited((f"{NODE_NET}.storage.address", "10.254.0.7/24"))).networking
    assert networking.storage.address == ipaddress.IPv4Interface("10.254.0.7/24")
    assert networking.storage.address_mode == "static"


def test_static_address_unchecked_without_cluster_networks() -> None:
    document = edited(
        ("pvc.functions.enable_networking", False),
        (NET, DELETE),
        (f"{NODE_NET}.cluster.address", "192.168.0.5/16"),
        (f"{NODE_NET}.storage.address", None),
    )
    networking = parse_config(document).networking
    assert networking.cluster.address == ipaddress.IPv4Interface("192.168.0.5/16")


# --- Unknown keys ---------------------------------------------------------------


def test_misspelt_key_is_reported_with_the_missing_one() -> None:
    document = example()
    intervals = document["pvc"]["system"]["fencing"]["intervals"]
    intervals["keepalive_intervall"] = intervals.pop("keepalive_interval")
    assert problems(document) == [
        f"{INTERVALS}.keepalive_interval: required key is missing",
        f"{INTERVALS}.keepalive_intervall: unknown key",
    ]


@pytest.mark.parametrize(
    "path",
    [
        "pvcd",
        "pvc.nodes",
        "pvc.cluster.zookeeper.session_timeout_ms",
        "pvc.system.hypervisor.uri",
        f"{NET}.cluster.gateway6",
        f"{NET}.management",
        f"{DB}.password",
        f"{NODE_NET}.storage.vlan",
        "pvc.system.intervals",
    ],
)
def test_unknown_key(path: str) -> None:
    assert problems(edited((path, 1))) == [f"{path}: unknown key"]


@pytest.mark.parametrize(
    ("key", "shown"),
    [(3, "3"), (None, "null"), ("a.b", "'a.b'"), ("two\nlines", "'two\\nlines'"), ("", "''")],
)
def test_odd_unknown_keys_are_shown_unambiguously(key: object, shown: str) -> None:
    document = example()
    document["pvc"]["functions"][key] = True
    assert problems(document) == [f"pvc.functions.{shown}: unknown key"]


def test_misspelt_optional_key_is_not_silently_defaulted() -> None:
    document = edited(("pvc.system.hypervisor", {"shutdown_timout": 5}))
    assert problems(document) == ["pvc.system.hypervisor.shutdown_timout: unknown key"]


# --- Coordinators ----------------------------------------------------------------

COORDINATORS = "pvc.cluster.coordinators"


def test_coordinator_ports_and_zookeeper_default_port() -> None:
    document = edited(
        (COORDINATORS, ["pvc-hv1:2182", "pvc-hv2", "pvc-hv3:2182"]),
        ("pvc.cluster.zookeeper.port", 2190),
    )
    config = parse_config(document)
    assert config.cluster.coordinators[1] == Coordinator("pvc-hv2", "pvc-hv2", 2190)
    assert config.zookeeper_hosts == "pvc-hv1:2182,pvc-hv2:2190,pvc-hv3:2182"


def test_mapping_form_puts_a_cluster_on_one_machine() -> None:
    entries = [{"name": f"hv{n}", "host": "127.0.0.1", "port": 2181} for n in (1, 2, 3)]
    config = parse_config(edited(("pvc.node", "hv2"), (COORDINATORS, entries)))
    assert [c.name for c in config.cluster.coordinators] == ["hv1", "hv2", "hv3"]
    assert config.zookeeper_hosts == "127.0.0.1:2181"
    assert config.is_coordinator


def test_mapping_form_defaults_host_to_name_and_port_to_zookeeper_port() -> None:
    document = edited(
        (COORDINATORS, [{"name": "pvc-hv1"}, {"name": "pvc-hv2", "port": 3000}, "pvc-hv3"]),
        ("pvc.cluster.zookeeper.port", 2999),
    )
    assert parse_config(document).zookeeper_hosts == "pvc-hv1:2999,pvc-hv2:3000,pvc-hv3:2999"


def test_node_outside_the_coordinator_list_is_not_a_coordinator() -> None:
    config = parse_config(edited(("pvc.node", "pvc-hv4")))
    assert not config.is_coordinator


ENTRY = "must be NAME, NAME:PORT or a mapping with name, host and port"


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        (["pvc-hv1", 5], [f"{COORDINATORS}[1]: {ENTRY}, got 5"]),
        (["pvc hv1"], [f"{COORDINATORS}[0]: {ENTRY}, got 'pvc hv1'"]),
        (["pvc-hv1:"], [f"{COORDINATORS}[0]: {ENTRY}, got 'pvc-hv1:'"]),
        ([None], [f"{COORDINATORS}[0]: {ENTRY}, got null"]),
        (["pvc-hv1", "pvc-hv2:0"], [f"{COORDINATORS}[1]: port {PORT}, got 'pvc-hv2:0'"]),
        (["pvc-hv1:65536"], [f"{COORDINATORS}[0]: port {PORT}, got 'pvc-hv1:65536'"]),
        (["pvc-hv1:" + "9" * 5000], [f"{COORDINATORS}[0]: port {PORT}, got '{('pvc-hv1:' + '9' * 5000)[:80]}'..."]),
        ([{"host": "h"}], [f"{COORDINATORS}[0].name: required key is missing"]),
        ([{"name": "a", "port": 0}], [f"{COORDINATORS}[0].port: {PORT}, got 0"]),
        ([{"name": "a", "host": "a b"}], [f"{COORDINATORS}[0].host: {HOST_NAME}, got 'a b'"]),
        ([{"name": "a", "hots": "b"}], [f"{COORDINATORS}[0].hots: unknown key"]),
        (
            ["pvc-hv1", "pvc-hv2", "pvc-hv1:2182"],
            [f"{COORDINATORS}[2]: duplicate coordinator name 'pvc-hv1', already at {COORDINATORS}[0]"],
        ),
        (
            [{"name": "hv1", "host": "127.0.0.1"}, {"name": "hv1", "port": 2182}],
            [f"{COORDINATORS}[1]: duplicate coordinator name 'hv1', already at {COORDINATORS}[0]"],
        ),
    ],
)
def test_bad_coordinators(entries: list[object], expected: list[str]) -> None:
    assert problems(edited((COORDINATORS, entries))) == expected


# --- Rules that combine keys -------------------------------------------------------


def test_failed_fence_migrate_requires_suicide_intervals() -> None:
    assert problems(edited((f"{ACTIONS}.failed_fence", "migrate"))) == [
        f"{ACTIONS}.failed_fence: migrate requires {INTERVALS}.suicide_intervals > 0"
    ]


def test_failed_fence_migrate_with_suicide_intervals() -> None:
    config = parse_config(edited((f"{ACTIONS}.failed_fence", "migrate"), (f"{INTERVALS}.suicide_intervals", 3)))
    assert config.fencing.failed_fence == "migrate"


def test_by_id_uses_the_trailing_number_of_the_node_name() -> None:
    networking = parse_config(edited(("pvc.node", "pvc-hv12"))).networking
    assert networking.cluster.address == ipaddress.IPv4Interface("10.255.0.12/24")
    assert networking.storage.address == ipaddress.IPv4Interface("10.254.0.12/24")


def by_id_problem(network: str, problem: str) -> str:
    return f"{NODE_NET}.{network}.address: {problem}"


@pytest.mark.parametrize(
    ("node", "problem"),
    [
        ("pvc-hva", "by-id requires pvc.node to end in a number (e.g. pvc-hv1), got 'pvc-hva'"),
        (
            "hv0",
            "by-id host 0 (from pvc.node 'hv0') is the network address of {net}.network {cidr}",
        ),
        (
            "hv255",
            "by-id host 255 (from pvc.node 'hv255') is the broadcast address of {net}.network {cidr}",
        ),
        ("hv256", "by-id host 256 (from pvc.node 'hv256') is outside {net}.network {cidr}"),
        (
            "hv" + "7" * 5000,
            "by-id host number of pvc.node 'hv" + "7" * 78 + "'... is outside {net}.network {cidr}",
        ),
        ("hv00255", "by-id host 255 (from pvc.node 'hv00255') is the broadcast address of {net}.network {cidr}"),
        (
            "hv254",
            "by-id host 254 (from pvc.node 'hv254') is the floating IP {net}.floating_ip {floating}",
        ),
    ],
)
def test_by_id_problems(node: str, problem: str) -> None:
    expected = [
        by_id_problem(name, problem.format(net=f"{NET}.{name}", cidr=cidr, floating=floating))
        for name, cidr, floating in (
            ("cluster", "10.255.0.0/24", "10.255.0.254/24"),
            ("storage", "10.254.0.0/24", "10.254.0.254/24"),
        )
    ]
    assert problems(edited(("pvc.node", node))) == expected


def test_by_id_requires_cluster_networks() -> None:
    document = edited(("pvc.functions.enable_networking", False), (NET, DELETE))
    assert problems(document) == [
        by_id_problem("cluster", "by-id requires pvc.cluster.networks"),
        by_id_problem("storage", "by-id requires pvc.cluster.networks"),
    ]


def test_by_id_in_a_small_network() -> None:
    document = edited(
        (f"{NET}.cluster.network", "10.255.0.0/30"),
        (f"{NET}.cluster.floating_ip", "10.255.0.2/30"),
    )
    assert parse_config(document).networking.cluster.address == ipaddress.IPv4Interface("10.255.0.1/30")


def test_one_mistake_is_reported_once() -> None:
    # A bad cluster network must not also fail the checks that depend on it.
    assert problems(edited((f"{NET}.cluster.network", "bad"))) == [f"{NET}.cluster.network: {CIDR_NETWORK}, got 'bad'"]
    assert problems(edited(("pvc.node", "pvc hv1"))) == [f"pvc.node: {HOST_NAME}, got 'pvc hv1'"]


# --- Several problems at once, and garbage documents ---------------------------------


def test_all_problems_are_reported_one_per_line() -> None:
    document = edited(
        ("pvc.node", DELETE),
        (f"{INTERVALS}.keepalive_interval", "five"),
        ("pvc.system.migration.target_selector", "ram"),
        (f"{NET}.upstream.network", "1.1.1.0/33"),
        (f"{INTERVALS}.keepalive_intervall", 5),
    )
    expected = [
        "pvc.node: required key is missing",
        f"{NET}.upstream.network: {CIDR_NETWORK}, got '1.1.1.0/33'",
        f"{INTERVALS}.keepalive_interval: {POSITIVE}, got 'five'",
        f"{INTERVALS}.keepalive_intervall: unknown key",
        "pvc.system.migration.target_selector: must be one of mem, vcpus, load, vms, got 'ram'",
    ]
    with pytest.raises(ConfigError) as caught:
        parse_config(document)
    assert caught.value.problems == expected
    assert str(caught.value) == "\n".join(expected)


def test_networking_enabled_without_any_networking_section() -> None:
    document = edited((NET, DELETE), ("pvc.coordinator", DELETE), (NODE_NET, DELETE))
    assert problems(document) == [
        f"{NET}: {NETWORKING_REQUIRED}",
        f"pvc.coordinator: {NETWORKING_REQUIRED}",
        f"{NODE_NET}: {NETWORKING_REQUIRED}",
    ]


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (None, "pvc: required key is missing"),
        ({}, "pvc: required key is missing"),
        ({"pvcd": {}}, "pvc: required key is missing"),
        ([1, 2], "pvc: required key is missing (the document must be a mapping, got list)"),
        ("pvc", "pvc: required key is missing (the document must be a mapping, got 'pvc')"),
        (5, "pvc: required key is missing (the document must be a mapping, got 5)"),
        ({"pvc": None}, "pvc: must be a mapping, got null"),
        ({"pvc": ["node"]}, "pvc: must be a mapping, got list"),
    ],
)
def test_garbage_documents(document: object, expected: str) -> None:
    assert problems(document)[0] == expected


def test_config_error_survives_pickling() -> None:
    error = pickle.loads(pickle.dumps(ConfigError(["a: b", "c: d"])))
    assert error.problems == ["a: b", "c: d"]
    assert str(error) == "a: b\nc: d"


# --- load_config ---------------------------------------------------------------------


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "pvcd.yaml"
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert caught.value.problems == [f"{path}: cannot read: No such file or directory"]


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(str(tmp_path))
    assert caught.value.problems == [f"{tmp_path}: cannot read: Is a directory"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("pvc:\n  node: [unclosed\n", "invalid YAML at line 3 column 1: expected ',' or ']', but got '<stream end>'"),
        ("pvc:\n  node: a\n   functions: b\n", "invalid YAML at line 3 column 13: mapping values are not allowed here"),
        ("pvc:\n  node: a\n  node: b\n", "invalid YAML at line 3 column 3: duplicate key 'node'"),
        (
            "pvc: !!python/object:os.system x\n",
            "invalid YAML at line 1 column 6: could not determine a constructor for the tag"
            " 'tag:yaml.org,2002:python/object:os.system'",
        ),
        ("a: 1\n---\nb: 2\n", "invalid YAML at line 2 column 1: but found another document"),
        ("pvc: " + "9" * 5000 + "\n", "invalid YAML: Exceeds the limit"),
        ("[" * 5000, "invalid YAML: maximum recursion depth exceeded"),
        ("pvc: !!set [node]\n", "invalid YAML at line 1 column 6: expected a mapping node, but found sequence"),
        ("pvc: !!timestamp soon\n", "invalid YAML: "),
    ],
)
def test_load_invalid_yaml(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "pvcd.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    [line] = caught.value.problems
    assert line.startswith(f"{path}: {problem}")


def test_load_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "pvcd.yaml"
    path.write_bytes(b"pvc:\xff\n")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert caught.value.problems == [f"{path}: cannot read: not UTF-8 text (byte 4)"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "pvc: required key is missing"),
        ("# only a comment\n", "pvc: required key is missing"),
        ("- pvc\n", "pvc: required key is missing (the document must be a mapping, got list)"),
    ],
)
def test_load_empty_or_wrong_document(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "pvcd.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert caught.value.problems == [expected]


def test_yaml_1_1_booleans_are_strings(tmp_path: Path) -> None:
    text = EXAMPLE_FILE.read_text().replace("enable_storage: True", "enable_storage: yes")
    path = tmp_path / "pvcd.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert caught.value.problems == [f"pvc.functions.enable_storage: {BOOLEAN}, got 'yes'"]


def test_yaml_true_false_spellings_are_booleans(tmp_path: Path) -> None:
    text = (
        EXAMPLE_FILE.read_text()
        .replace("enable_storage: True", "enable_storage: false")
        .replace("log_dates: True", "log_dates: TRUE")
    )
    path = tmp_path / "pvcd.yaml"
    path.write_text(text)
    config = load_config(str(path))
    assert config.functions.enable_storage is False
    assert config.logging.log_dates is True


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    original = EXAMPLE_FILE.read_text()
    text = original.replace(
        "        cluster:\n          device: ens4\n", "        cluster: &cluster\n          device: ens4\n"
    ).replace("        storage:\n          device: ens4\n", "        storage:\n          <<: *cluster\n")
    assert text.count("cluster") == original.count("cluster") + 2
    path = tmp_path / "pvcd.yaml"
    path.write_text(text)
    storage = load_config(str(path)).networking.storage
    assert (storage.device, storage.mtu, storage.address_mode) == ("ens4", 1500, "by-id")


# --- The file's location ----------------------------------------------------------------


def test_config_path_from_env() -> None:
    assert config_path_from_env({}) == DEFAULT_CONFIG_FILE == "/etc/pvc/pvcd.yaml"
    assert config_path_from_env({CONFIG_ENV: ""}) == DEFAULT_CONFIG_FILE
    assert config_path_from_env({"PVCD_CONFIG_FILE": "/tmp/x.yaml"}) == "/tmp/x.yaml"


def test_config_path_from_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CONFIG_ENV, "/srv/pvcd.yaml")
    assert config_path_from_env() == "/srv/pvcd.yaml"
    monkeypatch.delenv(CONFIG_ENV)
    assert config_path_from_env() == DEFAULT_CONFIG_FILE


# --- Fuzzing: whatever the document, only ConfigError ---------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(
        [
            "None",
            "by-id",
            "migrate",
            "mem",
            "10.255.0.0/24",
            "10.255.0.3/24",
            "pvc-hv1:2181",
            "/run/pvc",
            "9" * 5000,
            "hv" + "1" * 5000,
            "hv:" + "1" * 5000,
        ]
    )
)
garbage = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10) | st.integers(), children, max_size=4)
    ),
    max_leaves=12,
)
EXAMPLE_PATHS = key_paths(_EXAMPLE)


def check_outcome(document: object) -> None:
    try:
        config = parse_config(document)
    except ConfigError as error:
        assert error.problems
        assert all(isinstance(line, str) and ": " in line and "\n" not in line for line in error.problems)
    else:
        assert isinstance(config, Config)


@settings(max_examples=300, deadline=None)
@given(garbage)
def test_fuzz_garbage_documents(document: object) -> None:
    check_outcome(document)
    check_outcome({"pvc": document})


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(EXAMPLE_PATHS), garbage | st.just(DELETE)), min_size=1, max_size=4))
def test_fuzz_damaged_example(changes: list[tuple[str, object]]) -> None:
    document = example()
    for path, value in changes:
        try:
            edit(document, path, value)
        except (KeyError, TypeError):
            pass  # an earlier change removed or replaced a parent of this path
    check_outcome(document)


yaml_tokens = st.sampled_from(
    [
        "pvc",
        "node",
        "x",
        "1",
        "1.5",
        "~",
        "None",
        "True",
        "yes",
        ":",
        ": ",
        "- ",
        "\n",
        "\n  ",
        "  ",
        "\t",
        "[",
        "]",
        "{",
        "}",
        ",",
        "?",
        "'",
        '"',
        "#",
        "|",
        ">",
        "&a ",
        "*a",
        "<<: ",
        "%YAML 1.1\n",
        "---\n",
        "!!set ",
        "!!map ",
        "!!omap ",
        "!!timestamp ",
        "!!binary ",
        "!!int ",
        "!!float ",
        "!!str ",
        "!x ",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(yaml_tokens, max_size=30).map("".join) | st.text(max_size=40))
def test_fuzz_yaml_text(tmp_path: Path, text: str) -> None:
    path = tmp_path / "fuzz.yaml"
    path.write_text(text)
    try:
        load_config(str(path))
    except ConfigError as error:
        assert error.problems


def test_ipmi_port_defaults_to_623_and_is_validated():
    document = yaml.safe_load((Path(__file__).parents[2] / "examples" / "pvcd.yaml").read_text())
    assert parse_config(document).fencing.ipmi.port == 623
    custom = copy.deepcopy(document)
    custom["pvc"]["system"]["fencing"]["ipmi"]["port"] = 16230
    assert parse_config(custom).fencing.ipmi.port == 16230
    custom["pvc"]["system"]["fencing"]["ipmi"]["port"] = 70000
    with pytest.raises(ConfigError) as error:
        parse_config(custom)
    assert error.value.problems == ["pvc.system.fencing.ipmi.port: must be an integer from 1 to 65535, got 70000"]


def test_added_migration_and_fencing_keys():
    document = yaml.safe_load((Path(__file__).parents[2] / "examples" / "pvcd.yaml").read_text())
    config = parse_config(document)
    assert config.migration.flush_concurrency == 16 and config.migration.flush_on_shutdown is False
    assert config.fencing.storm_guard_share == 0.5 and config.fencing.self_fence_command == "/sbin/reboot -f"
    custom = copy.deepcopy(document)
    custom["pvc"]["system"]["migration"].update(flush_concurrency=4, flush_on_shutdown=True)
    custom["pvc"]["system"]["fencing"].update(storm_guard_share=0.34, self_fence_command="/sbin/reboot -f")
    config = parse_config(custom)
    assert (config.migration.flush_concurrency, config.migration.flush_on_shutdown) == (4, True)
    assert (config.fencing.storm_guard_share, config.fencing.self_fence_command) == (0.34, "/sbin/reboot -f")
    custom["pvc"]["system"]["migration"].update(flush_concurrency=0, flush_on_shutdown="yes")
    custom["pvc"]["system"]["fencing"].update(storm_guard_share=0, self_fence_command="")
    with pytest.raises(ConfigError) as error:
        parse_config(custom)
    assert error.value.problems == [
        "pvc.system.fencing.storm_guard_share: must be a number greater than 0 and at most 1, got 0",
        "pvc.system.fencing.self_fence_command: must be a non-empty string, got ''",
        "pvc.system.migration.flush_concurrency: must be a positive integer, got 0",
        "pvc.system.migration.flush_on_shutdown: must be a boolean (True or False), got 'yes'",
    ]


def test_session_timeout_must_leave_room_for_floating_ip_lifetimes():
    document = yaml.safe_load((Path(__file__).parents[2] / "examples" / "pvcd.yaml").read_text())
    document["pvc"]["cluster"]["zookeeper"] = {"session_timeout": 2}
    with pytest.raises(ConfigError) as error:
        parse_config(document)
    assert error.value.problems == [
        "pvc.cluster.zookeeper.session_timeout: must be at least 3 seconds when pvc.functions.enable_networking "
        "is True (the primary's floating IPs expire inside the session timeout), got 2"
    ]
    document["pvc"]["functions"]["enable_networking"] = False
    assert parse_config(document).cluster.zookeeper.session_timeout == 2


def test_one_device_has_one_mtu():
    document = yaml.safe_load((Path(__file__).parents[2] / "examples" / "pvcd.yaml").read_text())
    networking = document["pvc"]["system"]["configuration"]["networking"]
    device = networking["upstream"]["device"]
    networking["cluster"].update(device=device, mtu=9000)
    with pytest.raises(ConfigError) as error:
        parse_config(document)
    upstream_mtu = networking["upstream"]["mtu"]
    assert error.value.problems == [
        f"pvc.system.configuration.networking.cluster.mtu: device {device} is also the upstream network's, "
        f"with mtu {upstream_mtu}; one device has one MTU, got 9000"
    ]


def test_a_network_on_its_own_device_takes_its_own_mtu():
    config = parse_config(edited((f"{NODE_NET}.upstream.device", "ens3"), (f"{NODE_NET}.upstream.mtu", 9000)))
    assert (config.networking.upstream.device, config.networking.upstream.mtu) == ("ens3", 9000)
    assert config.networking.cluster.mtu == 1500


def test_watchdog_settings() -> None:
    config = parse_config(example())
    assert config.fencing.watchdog is not None
    assert (config.fencing.watchdog.device, config.fencing.watchdog.timeout) == ("/dev/watchdog", 30)
    assert parse_config(edited(("pvc.system.fencing.watchdog", DELETE))).fencing.watchdog is None
    defaulted = parse_config(edited(("pvc.system.fencing.watchdog.device", DELETE)))
    assert defaulted.fencing.watchdog is not None and defaulted.fencing.watchdog.device == "/dev/watchdog"


@pytest.mark.parametrize(
    "key,value,problem",
    [
        ("timeout", 1, "pvc.system.fencing.watchdog.timeout: must be an integer from 2 to 600, got 1"),
        ("timeout", 9, "pvc.system.fencing.watchdog.timeout: must be at least 2 keepalive intervals (10s), got 9"),
        ("timeout", "30", "pvc.system.fencing.watchdog.timeout: must be an integer from 2 to 600, got '30'"),
        ("device", "watchdog", "pvc.system.fencing.watchdog.device: must be an absolute path, got 'watchdog'"),
        ("bark", True, "pvc.system.fencing.watchdog.bark: unknown key"),
    ],
)
def test_bad_watchdog_settings(key: str, value: object, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(edited((f"pvc.system.fencing.watchdog.{key}", value)))
    assert caught.value.problems == [problem]


def test_storage_keys_and_their_defaults() -> None:
    """`pvc.system.storage` (issue 13): the example's values, and the defaults of a Ceph admin node."""
    assert parse_config(example()).storage == Storage(
        "/etc/ceph/ceph.conf", "/etc/ceph/ceph.client.admin.keyring", "admin", 10.0, 86400
    )
    for empty in (DELETE, None, {}):
        assert parse_config(edited(("pvc.system.storage", empty))).storage == Storage(
            ceph_config_file="/etc/ceph/ceph.conf",
            ceph_keyring="/etc/ceph/ceph.client.admin.keyring",
            ceph_client_id="admin",
            ceph_timeout=10.0,
            blocklist_time=86400,
        )
    config = parse_config(edited(("pvc.system.storage", {"ceph_client_id": "pvcd", "ceph_timeout": 2.5})))
    assert (config.storage.ceph_client_id, config.storage.ceph_timeout) == ("pvcd", 2.5)
    assert problems(edited(("pvc.system.storage", {"ceph_conf": "/x"}))) == [
        "pvc.system.storage.ceph_conf: unknown key"
    ]
