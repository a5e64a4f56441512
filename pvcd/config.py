"""Read and validate the node daemon's configuration file (``PVCD_CONFIG_FILE``).

The file's layout follows the PVC daemon manual; docs/configuration.md lists
every key, including the few pvcd adds. Nothing else in pvcd looks at the raw
YAML: every module receives the frozen :class:`Config` built here.

Validation is a pure function of the parsed document (:func:`parse_config`).
It walks the whole document instead of stopping at the first mistake, and
raises every problem at once as ``<key path>: <problem>`` lines, so an operator
(or the Ansible role that renders the file) fixes a broken file in one pass
rather than one daemon restart per typo. Problems are listed in the order the
keys are read, which is the order of the example file, with each mapping's
unknown keys after its known ones.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard, TypeVar, overload

import yaml

from pvcd.cluster.liveness import DEFAULT_STORM_GUARD_SHARE
from pvcd.zk.security import ROLES, AclIdentities, Tls, parse_identities

DEFAULT_CONFIG_FILE = "/etc/pvc/pvcd.yaml"
CONFIG_ENV = "PVCD_CONFIG_FILE"

# Defaults of the optional keys. docs/configuration.md refers to these names.
DEFAULT_ENABLE_API = False
DEFAULT_ZOOKEEPER_PORT = 2181
DEFAULT_SESSION_TIMEOUT = 10.0
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_LIBVIRT_URI = "qemu:///system"
DEFAULT_SHUTDOWN_TIMEOUT = 180

TARGET_SELECTORS = ("mem", "vcpus", "load", "vms")
FENCE_ACTIONS = ("migrate", None)
NETWORK_NAMES = ("upstream", "cluster", "storage")
PORT_RANGE = (1, 65535)
DEFAULT_IPMI_PORT = 623
MIN_SESSION_TIMEOUT_WITH_ADDRESSES = 3.0
"""Below this, a floating IP's kernel lifetime inside the session timeout would round down to under a second."""
DEFAULT_FLUSH_CONCURRENCY = 16
DEFAULT_FLUSH_ON_SHUTDOWN = False
DEFAULT_WATCHDOG_DEVICE = "/dev/watchdog"
WATCHDOG_TIMEOUT_RANGE = (2, 600)
"""Seconds; Linux watchdog drivers take whole seconds, softdog up to 65535."""
MIN_WATCHDOG_TIMEOUT_INTERVALS = 2
"""A watchdog must outlast two keepalive intervals, or one slow keepalive resets a healthy host."""
MTU_RANGE = (576, 9216)
DEFAULT_CEPH_CONFIG_FILE = "/etc/ceph/ceph.conf"
DEFAULT_CEPH_KEYRING = "/etc/ceph/ceph.client.admin.keyring"
DEFAULT_CEPH_CLIENT_ID = "admin"
DEFAULT_CEPH_TIMEOUT = 10.0
DEFAULT_BLOCKLIST_TIME = 86400
BLOCKLIST_TIME_RANGE = (60, 31536000)
"""Seconds a fenced node stays blocklisted unless readied first: at least a minute, at most a year."""

AddressMode = Literal["none", "by-id", "static"]

_MISSING = "required key is missing"
_NETWORKING_SWITCH = "pvc.functions.enable_networking"


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` holds one line per problem.

    Each line is ``<key path>: <problem>`` (or ``<file>: <problem>`` when the
    file itself cannot be read or parsed), ready to print as it is.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        return "\n".join(self.problems)


@dataclass(frozen=True, slots=True)
class Functions:
    enable_hypervisor: bool
    enable_networking: bool
    enable_storage: bool
    enable_api: bool = DEFAULT_ENABLE_API


@dataclass(frozen=True, slots=True)
class Coordinator:
    """One ZooKeeper server, and the node of the same name that may become primary."""

    name: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class ZooKeeperSettings:
    port: int = DEFAULT_ZOOKEEPER_PORT
    session_timeout: float = DEFAULT_SESSION_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    credentials_file: str | None = None
    """This node's `user:password` for ZooKeeper's digest scheme (read at start, never logged)."""
    acl: AclIdentities | None = None
    tls: Tls | None = None


@dataclass(frozen=True, slots=True)
class ClusterNetwork:
    domain: str | None
    network: ipaddress.IPv4Network
    floating_ip: ipaddress.IPv4Interface
    gateway: ipaddress.IPv4Address | None


@dataclass(frozen=True, slots=True)
class ClusterNetworks:
    upstream: ClusterNetwork
    cluster: ClusterNetwork
    storage: ClusterNetwork


@dataclass(frozen=True, slots=True)
class Cluster:
    coordinators: tuple[Coordinator, ...]
    networks: ClusterNetworks | None
    zookeeper: ZooKeeperSettings


@dataclass(frozen=True, slots=True)
class DnsDatabase:
    host: str
    port: int
    name: str
    user: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class CoordinatorSettings:
    dns_database: DnsDatabase


@dataclass(frozen=True, slots=True)
class Ipmi:
    host: str
    user: str
    password: str = field(repr=False)
    port: int = DEFAULT_IPMI_PORT


@dataclass(frozen=True, slots=True)
class Watchdog:
    """The host watchdog pvcd arms at start and pets after each delivered keepalive."""

    device: str
    timeout: int


@dataclass(frozen=True, slots=True)
class Fencing:
    keepalive_interval: int
    fence_intervals: int
    suicide_intervals: int
    successful_fence: str | None
    failed_fence: str | None
    ipmi: Ipmi
    storm_guard_share: float = DEFAULT_STORM_GUARD_SHARE
    self_fence_command: str | None = None
    watchdog: Watchdog | None = None


@dataclass(frozen=True, slots=True)
class Migration:
    target_selector: str
    flush_concurrency: int = DEFAULT_FLUSH_CONCURRENCY
    flush_on_shutdown: bool = DEFAULT_FLUSH_ON_SHUTDOWN


@dataclass(frozen=True, slots=True)
class Directories:
    dynamic_directory: str
    log_directory: str
    console_log_directory: str


@dataclass(frozen=True, slots=True)
class Logging:
    file_logging: bool
    stdout_logging: bool
    log_colours: bool
    log_dates: bool
    log_keepalives: bool
    log_keepalive_cluster_details: bool
    log_keepalive_storage_details: bool
    console_log_lines: int


@dataclass(frozen=True, slots=True)
class NodeNetwork:
    """This node's interface on one cluster network.

    ``address`` is already resolved (``by-id`` becomes the concrete address);
    ``address_mode`` keeps what the file said, for logs and ``--check-config``.
    """

    device: str
    mtu: int
    address: ipaddress.IPv4Interface | None
    address_mode: AddressMode


@dataclass(frozen=True, slots=True)
class NodeNetworking:
    upstream: NodeNetwork
    cluster: NodeNetwork
    storage: NodeNetwork


@dataclass(frozen=True, slots=True)
class Hypervisor:
    libvirt_uri: str = DEFAULT_LIBVIRT_URI
    shutdown_timeout: int = DEFAULT_SHUTDOWN_TIMEOUT


@dataclass(frozen=True, slots=True)
class Storage:
    """How this node reaches the Ceph cluster (used only with `enable_storage`)."""

    ceph_config_file: str = DEFAULT_CEPH_CONFIG_FILE
    ceph_keyring: str = DEFAULT_CEPH_KEYRING
    ceph_client_id: str = DEFAULT_CEPH_CLIENT_ID
    ceph_timeout: float = DEFAULT_CEPH_TIMEOUT
    blocklist_time: int = DEFAULT_BLOCKLIST_TIME


@dataclass(frozen=True, slots=True)
class Config:
    node: str
    functions: Functions
    cluster: Cluster
    coordinator: CoordinatorSettings | None
    fencing: Fencing
    migration: Migration
    directories: Directories
    logging: Logging
    networking: NodeNetworking | None
    hypervisor: Hypervisor
    storage: Storage = field(default_factory=Storage)

    @property
    def is_coordinator(self) -> bool:
        return any(coordinator.name == self.node for coordinator in self.cluster.coordinators)

    @property
    def zookeeper_hosts(self) -> str:
        """The kazoo connection string.

        Duplicates are dropped because several coordinator names may point at
        one ZooKeeper server (a whole test cluster on one machine).
        """
        endpoints = (f"{c.host}:{c.port}" for c in self.cluster.coordinators)
        return ",".join(dict.fromkeys(endpoints))


def config_path_from_env(environ: Mapping[str, str] | None = None) -> str:
    """The file named by PVCD_CONFIG_FILE, or the packaged default when unset or empty."""
    environ = os.environ if environ is None else environ
    return environ.get(CONFIG_ENV) or DEFAULT_CONFIG_FILE


def load_config(path: str) -> Config:
    """Read, parse and validate the configuration file at ``path``."""
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except OSError as error:
        raise ConfigError([f"{path}: cannot read: {error.strerror or error}"]) from None
    except UnicodeDecodeError as error:
        raise ConfigError([f"{path}: cannot read: not UTF-8 text (byte {error.start})"]) from None
    try:
        document = yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as error:
        raise ConfigError([f"{path}: {_describe_yaml_error(error)}"]) from None
    except Exception as error:
        # PyYAML's constructors raise plain ValueError, AttributeError and the
        # like on some malformed values (an integer too long to convert, an
        # explicit !!timestamp that is not one), and very deep nesting raises
        # RecursionError: all are broken files, to be reported, not crashed on.
        raise ConfigError([f"{path}: invalid YAML: {_one_line(str(error))}"]) from None
    return parse_config(document)


def _one_line(text: str, limit: int = 200) -> str:
    """A parser's message as one short line (PyYAML's span several, and may quote a whole value)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else f"{text[:limit]}..."


def parse_config(raw: object) -> Config:
    """Validate a parsed YAML document and build the Config; pure, no I/O.

    Every problem in the document is collected before raising one ConfigError.
    """
    problems: list[str] = []
    config = _read_document(raw, problems)
    if problems:
        raise ConfigError(problems)
    return config


# --- YAML loading -----------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and YAML 1.1's yes/no/on/off booleans.

    A duplicate key silently replaces the first one, and ``yes``/``no``/``on``/
    ``off`` turning into booleans surprises people (a device named ``on``, a
    user named ``no``): both would hide mistakes the validator exists to catch.
    Only true/false (in any of YAML's three spellings, such as ``True``) are
    booleans here.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, yaml.MappingNode):
            return super().construct_mapping(node, deep=deep)  # raises the proper error
        seen: set[object] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable; SafeLoader reports it properly below
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_BOOL_TAG = "tag:yaml.org,2002:bool"
_StrictLoader.yaml_implicit_resolvers = {
    first: [resolver for resolver in resolvers if resolver[0] != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictLoader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _describe_yaml_error(error: yaml.MarkedYAMLError) -> str:
    problem = _one_line(error.problem or error.context or "unreadable")
    mark = error.problem_mark or error.context_mark
    if mark is None:
        return f"invalid YAML: {problem}"
    return f"invalid YAML at line {mark.line + 1} column {mark.column + 1}: {problem}"


# --- The document reader ----------------------------------------------------

T = TypeVar("T")


class _Bad:
    """Stands in for a value that failed validation (its problem is recorded elsewhere).

    Reading carries on past a bad value so that one pass finds every problem.
    The half-built Config holding such placeholders never escapes: parse_config
    raises whenever a problem was recorded. Checks that combine several keys
    skip any placeholder, so one mistake is reported once.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "<invalid>"


_BAD: Any = _Bad()
_ABSENT = object()
_REQUIRED: Any = object()


def _is_bad(value: object) -> bool:
    """Whether ``value`` is the placeholder of a value that failed validation.

    A function rather than ``value is _BAD`` at each use: _BAD is typed Any so
    that it fits any field, and an ``is`` comparison would make a type checker
    narrow _BAD to the type of the value it was compared with.
    """
    return value is _BAD


class _Invalid(Exception):
    """A value check failed; the message is the problem, without the key path."""


class _Section:
    """One mapping of the document, with its key path and the keys read from it.

    Remembering the keys read lets :meth:`finish` report the rest as unknown: a
    misspelt optional key would otherwise be ignored and its default used
    without anyone noticing. A section built with ``data=None`` stands for a
    mapping that is missing or malformed (already reported): it yields
    placeholders and reports nothing more, so callers need no special case.
    """

    def __init__(self, path: str, data: Mapping[Any, Any] | None, problems: list[str]) -> None:
        self.path = path
        self.data = data
        self.problems = problems
        self._read: set[object] = set()

    def key_path(self, key: object) -> str:
        return f"{self.path}.{_key_text(key)}" if self.path else _key_text(key)

    def report(self, key: object, problem: str) -> None:
        self.problems.append(f"{self.key_path(key)}: {problem}")

    def raw(self, key: str) -> object:
        """The key's value as written, ``_ABSENT``, or ``_BAD`` in a dead section."""
        if self.data is None:
            return _BAD
        self._read.add(key)
        return self.data.get(key, _ABSENT)

    def value(self, key: str, check: Callable[[object], T], default: T = _REQUIRED) -> T:
        raw = self.raw(key)
        if _is_bad(raw):
            return _BAD
        if raw is _ABSENT:
            if default is _REQUIRED:
                self.report(key, _MISSING)
                return _BAD
            return default
        try:
            return check(raw)
        except _Invalid as problem:
            self.report(key, str(problem))
            return _BAD

    @overload
    def section(self, key: str, missing: str = ...) -> _Section: ...

    @overload
    def section(self, key: str, missing: str | None) -> _Section | None: ...

    def section(self, key: str, missing: str | None = _MISSING) -> _Section | None:
        """The mapping under ``key``.

        ``missing`` is the problem to report when the key is absent: _MISSING
        for a required section, the condition for one required only sometimes,
        or None for an optional one (which then gives None). Only a required
        section must be a mapping when present; for the others a null, as left
        behind by commenting out every line under the key, counts as absent.
        """
        raw = self.raw(key)
        if _is_bad(raw):
            return self._dead(key)
        if raw is _ABSENT or (missing != _MISSING and _is_none(raw)):
            if missing is None:
                return None
            self.report(key, missing)
            return self._dead(key)
        if not isinstance(raw, Mapping):
            self.report(key, f"must be a mapping, got {_show(raw)}")
            return self._dead(key)
        return _Section(self.key_path(key), raw, self.problems)

    def finish(self) -> None:
        if self.data is None:
            return
        for key in self.data:
            if key not in self._read:
                self.report(key, "unknown key")

    def _dead(self, key: str) -> _Section:
        return _Section(self.key_path(key), None, self.problems)


def _read_document(raw: object, problems: list[str]) -> Config:
    if raw is not None and not isinstance(raw, Mapping):
        problems.append(f"pvc: {_MISSING} (the document must be a mapping, got {_show(raw)})")
        return _BAD
    document = _Section("", raw or {}, problems)
    pvc = document.section("pvc")
    node = pvc.value("node", _host_name)
    functions = _functions(pvc.section("functions"))
    networking_required = f"required when {_NETWORKING_SWITCH} is True" if functions.enable_networking is True else None
    cluster = _cluster(pvc.section("cluster"), networking_required)
    session_timeout = getattr(getattr(cluster, "zookeeper", None), "session_timeout", None)
    if (
        functions.enable_networking is True
        and isinstance(session_timeout, float)
        and session_timeout < MIN_SESSION_TIMEOUT_WITH_ADDRESSES
    ):
        problems.append(
            f"pvc.cluster.zookeeper.session_timeout: must be at least {MIN_SESSION_TIMEOUT_WITH_ADDRESSES:g} seconds "
            f"when {_NETWORKING_SWITCH} is True (the primary's floating IPs expire inside the session timeout), "
            f"got {session_timeout:g}"
        )
    coordinator = _coordinator_settings(pvc.section("coordinator", networking_required))
    system = pvc.section("system")
    fencing = _fencing(system.section("fencing"))
    migration = _migration(system.section("migration"))
    configuration = system.section("configuration")
    directories = _directories(configuration.section("directories"))
    logging = _logging(configuration.section("logging"))
    networking = _node_networking(configuration.section("networking", networking_required), node, cluster.networks)
    configuration.finish()
    hypervisor = _hypervisor(system.section("hypervisor", None))
    storage = _storage(system.section("storage", None))
    system.finish()
    pvc.finish()
    document.finish()
    return Config(
        node=node,
        functions=functions,
        cluster=cluster,
        coordinator=coordinator,
        fencing=fencing,
        migration=migration,
        directories=directories,
        logging=logging,
        networking=networking,
        hypervisor=hypervisor,
        storage=storage,
    )


def _functions(section: _Section) -> Functions:
    functions = Functions(
        enable_hypervisor=section.value("enable_hypervisor", _boolean),
        enable_networking=section.value("enable_networking", _boolean),
        enable_storage=section.value("enable_storage", _boolean),
        enable_api=section.value("enable_api", _boolean, DEFAULT_ENABLE_API),
    )
    section.finish()
    return functions


def _cluster(section: _Section, networks_required: str | None) -> Cluster:
    # zookeeper (a key pvcd adds) is read first: it gives the coordinators' default port.
    zookeeper = _zookeeper(section.section("zookeeper", None))
    coordinators = _coordinators(section, zookeeper.port)
    networks = _cluster_networks(section.section("networks", networks_required))
    section.finish()
    return Cluster(coordinators=coordinators, networks=networks, zookeeper=zookeeper)


def _zookeeper(section: _Section | None) -> ZooKeeperSettings:
    if section is None:
        return ZooKeeperSettings()
    credentials_file = section.value("credentials_file", _absolute_path, None)
    acl_section = section.section("acl", None)
    acl = None
    if acl_section is not None:
        identities = {role: acl_section.value(role, _digest_identities) for role in ROLES}
        acl_section.finish()
        if not any(_is_bad(identity) for identity in identities.values()):
            acl = AclIdentities(**identities)
    if (credentials_file is None) != (acl_section is None):
        section.report(
            "credentials_file" if credentials_file is None else "acl",
            "credentials_file and acl go together (a node that authenticates gives its znodes the cluster's ACLs)",
        )
    tls_section = section.section("tls", None)
    tls = None
    if tls_section is not None:
        ca_file = tls_section.value("ca_file", _absolute_path)
        cert_file = tls_section.value("cert_file", _absolute_path, None)
        key_file = tls_section.value("key_file", _absolute_path, None)
        if (cert_file is None) != (key_file is None):
            tls_section.report(
                "cert_file" if cert_file is None else "key_file", "cert_file and key_file go together (mutual TLS)"
            )
        tls_section.finish()
        tls = Tls(ca_file, cert_file, key_file)
    settings = ZooKeeperSettings(
        port=section.value("port", _port, DEFAULT_ZOOKEEPER_PORT),
        session_timeout=section.value("session_timeout", _positive_seconds, DEFAULT_SESSION_TIMEOUT),
        connect_timeout=section.value("connect_timeout", _positive_seconds, DEFAULT_CONNECT_TIMEOUT),
        credentials_file=credentials_file,
        acl=acl,
        tls=tls,
    )
    section.finish()
    return settings


_HOST_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_COORDINATOR_STRING = re.compile(rf"(?P<name>{_HOST_NAME_PATTERN})(?::(?P<port>[0-9]+))?")


def _coordinators(cluster: _Section, default_port: int) -> tuple[Coordinator, ...]:
    """The coordinator list; its entries' problems carry their index, e.g. ``[1]``."""
    path = cluster.key_path("coordinators")
    raw = cluster.raw("coordinators")
    if _is_bad(raw):
        return _BAD
    if raw is _ABSENT:
        cluster.report("coordinators", _MISSING)
        return _BAD
    if not isinstance(raw, (list, tuple)):
        cluster.report("coordinators", f"must be a list, got {_show(raw)}")
        return _BAD
    if not raw:
        cluster.report("coordinators", "must list at least one coordinator")
        return _BAD
    coordinators: list[Coordinator] = []
    first_path: dict[str, str] = {}
    for index, entry in enumerate(raw):
        entry_path = f"{path}[{index}]"
        coordinator = _coordinator(entry, entry_path, default_port, cluster.problems)
        if _is_bad(coordinator.name):
            continue
        if coordinator.name in first_path:
            cluster.problems.append(
                f"{entry_path}: duplicate coordinator name {coordinator.name!r},"
                f" already at {first_path[coordinator.name]}"
            )
            continue
        first_path[coordinator.name] = entry_path
        coordinators.append(coordinator)
    return tuple(coordinators)


def _coordinator(entry: object, path: str, default_port: int, problems: list[str]) -> Coordinator:
    if isinstance(entry, Mapping):
        section = _Section(path, entry, problems)
        name = section.value("name", _host_name)
        coordinator = Coordinator(
            name=name,
            host=section.value("host", _host_name, name),
            port=section.value("port", _port, default_port),
        )
        section.finish()
        return coordinator
    match = _COORDINATOR_STRING.fullmatch(entry) if isinstance(entry, str) else None
    if match is None:
        problems.append(f"{path}: must be NAME, NAME:PORT or a mapping with name, host and port, got {_show(entry)}")
        return Coordinator(_BAD, _BAD, _BAD)
    digits = match["port"]
    if digits is None:
        return Coordinator(name=match["name"], host=match["name"], port=default_port)
    # The length test keeps int() away from digit strings too long to convert.
    if len(digits) > 5 or not PORT_RANGE[0] <= int(digits) <= PORT_RANGE[1]:
        problems.append(f"{path}: port {_range_text(PORT_RANGE)}, got {_show(entry)}")
        return Coordinator(name=match["name"], host=match["name"], port=_BAD)
    return Coordinator(name=match["name"], host=match["name"], port=int(digits))


def _cluster_networks(section: _Section | None) -> ClusterNetworks | None:
    if section is None:
        return None
    networks = ClusterNetworks(**{name: _cluster_network(section.section(name)) for name in NETWORK_NAMES})
    section.finish()
    return networks


def _cluster_network(section: _Section) -> ClusterNetwork:
    network_path = section.key_path("network")
    domain = section.value("domain", _domain)
    network = section.value("network", _network)
    floating_ip = section.value(
        "floating_ip", lambda value: _interface_in(value, _interface(value), network, network_path)
    )
    gateway = section.value("gateway", lambda value: _gateway(value, network, network_path), None)
    section.finish()
    return ClusterNetwork(domain=domain, network=network, floating_ip=floating_ip, gateway=gateway)


def _coordinator_settings(section: _Section | None) -> CoordinatorSettings | None:
    if section is None:
        return None
    dns = section.section("dns")
    database = dns.section("database")
    settings = CoordinatorSettings(
        dns_database=DnsDatabase(
            host=database.value("host", _text),
            port=database.value("port", _port),
            name=database.value("name", _text),
            user=database.value("user", _text),
            password=database.value("pass", _secret),
        )
    )
    database.finish()
    dns.finish()
    section.finish()
    return settings


def _fencing(section: _Section) -> Fencing:
    intervals = section.section("intervals")
    keepalive_interval = intervals.value("keepalive_interval", _positive_int)
    fence_intervals = intervals.value("fence_intervals", _non_negative_int)
    suicide_intervals = intervals.value("suicide_intervals", _non_negative_int)
    intervals.finish()

    actions = section.section("actions")
    successful_fence = actions.value("successful_fence", _fence_action)
    failed_fence = actions.value("failed_fence", _fence_action)
    if failed_fence == "migrate" and suicide_intervals == 0:
        # Migrating a failed fence's VMs is only safe if the lost node is
        # known to kill itself first; otherwise the VMs may run twice.
        actions.report(
            "failed_fence",
            f"migrate requires {intervals.key_path('suicide_intervals')} > 0",
        )
    actions.finish()

    ipmi_section = section.section("ipmi")
    ipmi = Ipmi(
        host=ipmi_section.value("host", _text),
        user=ipmi_section.value("user", _text),
        password=ipmi_section.value("pass", _secret),
        port=ipmi_section.value("port", _port, DEFAULT_IPMI_PORT),
    )
    ipmi_section.finish()
    storm_guard_share = section.value("storm_guard_share", _share, DEFAULT_STORM_GUARD_SHARE)
    self_fence_command = section.value("self_fence_command", _text, None)
    watchdog = _watchdog(section.section("watchdog", None), keepalive_interval)
    section.finish()
    return Fencing(
        keepalive_interval=keepalive_interval,
        fence_intervals=fence_intervals,
        suicide_intervals=suicide_intervals,
        successful_fence=successful_fence,
        failed_fence=failed_fence,
        ipmi=ipmi,
        storm_guard_share=storm_guard_share,
        self_fence_command=self_fence_command,
        watchdog=watchdog,
    )


def _watchdog(section: _Section | None, keepalive_interval: object) -> Watchdog | None:
    if section is None:
        return None
    device = section.value("device", _absolute_path, DEFAULT_WATCHDOG_DEVICE)
    timeout = section.value("timeout", _int_in(WATCHDOG_TIMEOUT_RANGE))
    if (
        _is_int(keepalive_interval)
        and _is_int(timeout)
        and timeout < MIN_WATCHDOG_TIMEOUT_INTERVALS * keepalive_interval
    ):
        section.report(
            "timeout",
            f"must be at least {MIN_WATCHDOG_TIMEOUT_INTERVALS} keepalive intervals "
            f"({MIN_WATCHDOG_TIMEOUT_INTERVALS * keepalive_interval}s), got {timeout}",
        )
    section.finish()
    return Watchdog(device=device, timeout=timeout)


def _migration(section: _Section) -> Migration:
    migration = Migration(
        target_selector=section.value("target_selector", _target_selector),
        flush_concurrency=section.value("flush_concurrency", _positive_int, DEFAULT_FLUSH_CONCURRENCY),
        flush_on_shutdown=section.value("flush_on_shutdown", _boolean, DEFAULT_FLUSH_ON_SHUTDOWN),
    )
    section.finish()
    return migration


def _directories(section: _Section) -> Directories:
    directories = Directories(
        dynamic_directory=section.value("dynamic_directory", _absolute_path),
        log_directory=section.value("log_directory", _absolute_path),
        console_log_directory=section.value("console_log_directory", _absolute_path),
    )
    section.finish()
    return directories


def _logging(section: _Section) -> Logging:
    logging = Logging(
        file_logging=section.value("file_logging", _boolean),
        stdout_logging=section.value("stdout_logging", _boolean),
        log_colours=section.value("log_colours", _boolean),
        log_dates=section.value("log_dates", _boolean),
        log_keepalives=section.value("log_keepalives", _boolean),
        log_keepalive_cluster_details=section.value("log_keepalive_cluster_details", _boolean),
        log_keepalive_storage_details=section.value("log_keepalive_storage_details", _boolean),
        console_log_lines=section.value("console_log_lines", _non_negative_int),
    )
    section.finish()
    return logging


def _node_networking(section: _Section | None, node: str, networks: ClusterNetworks | None) -> NodeNetworking | None:
    if section is None:
        return None
    networking = NodeNetworking(
        **{
            name: _node_network(
                section.section(name),
                node,
                None if networks is None else getattr(networks, name),
                f"pvc.cluster.networks.{name}",
            )
            for name in NETWORK_NAMES
        }
    )
    # Networks often share one device, and a device has one MTU.
    first_on_device: dict[str, str] = {}
    for name in NETWORK_NAMES:
        network = getattr(networking, name)
        if _is_bad(network.device) or _is_bad(network.mtu):
            continue
        other = first_on_device.setdefault(network.device, name)
        if getattr(networking, other).mtu != network.mtu:
            section.problems.append(
                f"{section.key_path(name)}.mtu: device {network.device} is also the {other} network's, "
                f"with mtu {getattr(networking, other).mtu}; one device has one MTU, got {network.mtu}"
            )
    section.finish()
    return networking


def _node_network(section: _Section, node: str, network: ClusterNetwork | None, network_path: str) -> NodeNetwork:
    device = section.value("device", _device)
    mtu = section.value("mtu", _mtu)
    address = section.value("address", lambda value: _node_address(value, node, network, network_path))
    section.finish()
    mode, interface = (_BAD, _BAD) if _is_bad(address) else address
    return NodeNetwork(device=device, mtu=mtu, address=interface, address_mode=mode)


def _hypervisor(section: _Section | None) -> Hypervisor:
    if section is None:
        return Hypervisor()
    hypervisor = Hypervisor(
        libvirt_uri=section.value("libvirt_uri", _libvirt_uri, DEFAULT_LIBVIRT_URI),
        shutdown_timeout=section.value("shutdown_timeout", _positive_int, DEFAULT_SHUTDOWN_TIMEOUT),
    )
    section.finish()
    return hypervisor


def _storage(section: _Section | None) -> Storage:
    if section is None:
        return Storage()
    storage = Storage(
        ceph_config_file=section.value("ceph_config_file", _absolute_path, DEFAULT_CEPH_CONFIG_FILE),
        ceph_keyring=section.value("ceph_keyring", _absolute_path, DEFAULT_CEPH_KEYRING),
        ceph_client_id=section.value("ceph_client_id", _ceph_client_id, DEFAULT_CEPH_CLIENT_ID),
        ceph_timeout=section.value("ceph_timeout", _positive_seconds, DEFAULT_CEPH_TIMEOUT),
        blocklist_time=section.value("blocklist_time", _int_in(BLOCKLIST_TIME_RANGE), DEFAULT_BLOCKLIST_TIME),
    )
    section.finish()
    return storage


# --- Value checks: return the parsed value or raise _Invalid ------------------


def _kind(value: object) -> str:
    """The YAML name of a value's type, for problems that must not show the value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, (list, tuple)):
        return "list"
    return type(value).__name__


def _show(value: object) -> str:
    """How a problem line shows the offending value: strings quoted, numbers plain."""
    if isinstance(value, str):
        return repr(value) if len(value) <= 80 else repr(value[:80]) + "..."
    if _is_int(value) and value.bit_length() > 128:
        return "a very large integer"
    if isinstance(value, (bool, int, float)):
        return str(value)
    return _kind(value)


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key_text(key: object) -> str:
    """A key as written in a key path: plain names as they are, anything odd quoted.

    Quoting keeps a problem on one line and unambiguous even for a key such as
    "a.b" or one holding a newline.
    """
    if isinstance(key, str) and _PLAIN_KEY.fullmatch(key):
        return key
    return _show(key)


def _expected(expectation: str, value: object) -> _Invalid:
    return _Invalid(f"{expectation}, got {_show(value)}")


def _is_none(value: object) -> bool:
    """YAML's null, or the string None that the manual's examples use for it."""
    return value is None or value == "None"


def _is_int(value: object) -> TypeGuard[int]:
    # bool is a subclass of int, but True is not a number of seconds.
    return isinstance(value, int) and not isinstance(value, bool)


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _expected("must be a boolean (True or False)", value)
    return value


def _positive_int(value: object) -> int:
    if not _is_int(value) or value <= 0:
        raise _expected("must be a positive integer", value)
    return value


def _non_negative_int(value: object) -> int:
    if not _is_int(value) or value < 0:
        raise _expected("must be a non-negative integer", value)
    return value


def _range_text(bounds: tuple[int, int]) -> str:
    return f"must be an integer from {bounds[0]} to {bounds[1]}"


def _int_in(bounds: tuple[int, int]) -> Callable[[object], int]:
    def check(value: object) -> int:
        if not _is_int(value) or not bounds[0] <= value <= bounds[1]:
            raise _expected(_range_text(bounds), value)
        return value

    return check


_port = _int_in(PORT_RANGE)
_mtu = _int_in(MTU_RANGE)


def _positive_seconds(value: object) -> float:
    if _is_int(value) or isinstance(value, float):
        try:
            seconds = float(value)
        except OverflowError:
            seconds = math.inf
        if 0 < seconds < math.inf:
            return seconds
    raise _expected("must be a positive number of seconds", value)


def _share(value: object) -> float:
    if (_is_int(value) or isinstance(value, float)) and 0 < float(value) <= 1:
        return float(value)
    raise _expected("must be a number greater than 0 and at most 1", value)


def _text(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise _expected("must be a non-empty string", value)
    return value


def _secret(value: object) -> str:
    """A password: like _text, but the problem line names only the value's type."""
    if not isinstance(value, str) or not value:
        kind = "an empty string" if value == "" else _kind(value)
        raise _Invalid(f"must be a non-empty string, got {kind}")
    return value


def _choice(*choices: str | None) -> Callable[[object], Any]:
    shown = ", ".join("None" if choice is None else choice for choice in choices)

    def check(value: object) -> str | None:
        if None in choices and _is_none(value):
            return None
        if isinstance(value, str) and value in choices:
            return value
        raise _expected(f"must be one of {shown}", value)

    return check


_fence_action = _choice(*FENCE_ACTIONS)
_target_selector = _choice(*TARGET_SELECTORS)

_HOST_NAME = re.compile(_HOST_NAME_PATTERN)


def _host_name(value: object) -> str:
    if not isinstance(value, str) or not _HOST_NAME.fullmatch(value):
        raise _expected(
            "must be a host name (letters, digits, '-', '_' and '.', starting with a letter or digit)",
            value,
        )
    return value


_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _domain(value: object) -> str | None:
    if _is_none(value):
        return None
    if isinstance(value, str) and len(value) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in value.split(".")):
        return value
    raise _expected("must be a DNS domain name (e.g. example.com) or None", value)


def _absolute_path(value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise _expected("must be an absolute path", value)
    return value


def _digest_identities(value: object) -> tuple[str, ...]:
    try:
        return parse_identities(value)
    except ValueError as exc:
        raise _expected(f"must be {str(exc).removeprefix('expected ')}", value) from None


def _ceph_client_id(value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value):
        raise _expected("must be a Ceph client name such as admin or pvcd (letters, digits, _ . -)", value)
    return value


def _libvirt_uri(value: object) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*:\S*", value):
        raise _expected("must be a libvirt URI (e.g. qemu:///system)", value)
    return value


def _device(value: object) -> str:
    # The kernel's own rule (dev_valid_name): at most 15 bytes, not "." or "..",
    # no '/', ':' or whitespace.
    if (
        not isinstance(value, str)
        or not 1 <= len(value.encode("utf-8", "surrogatepass")) <= 15
        or value in (".", "..")
        or any(char in "/:" or char.isspace() for char in value)
    ):
        raise _expected("must be a network interface name (1-15 characters, no '/', ':' or whitespace)", value)
    return value


_DOTTED_QUAD = r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}"
_CIDR = re.compile(_DOTTED_QUAD + r"/[0-9]{1,2}")


def _network(value: object) -> ipaddress.IPv4Network:
    expectation = "must be an IPv4 network in CIDR form (e.g. 10.0.0.0/24)"
    if not isinstance(value, str) or not _CIDR.fullmatch(value):
        raise _expected(expectation, value)
    try:
        return ipaddress.IPv4Network(value)
    except ValueError:
        pass
    try:
        network = ipaddress.IPv4Network(value, strict=False)
    except ValueError:
        raise _expected(expectation, value) from None
    raise _expected(f"must have all host bits zero (did you mean {network}?)", value)


def _interface(
    value: object, expectation: str = "must be an IPv4 address in CIDR form (e.g. 10.0.0.1/24)"
) -> ipaddress.IPv4Interface:
    if isinstance(value, str) and _CIDR.fullmatch(value):
        try:
            return ipaddress.IPv4Interface(value)
        except ValueError:
            pass
    raise _expected(expectation, value)


def _check_host_in(
    address: ipaddress.IPv4Address, network: ipaddress.IPv4Network, network_path: str, value: object
) -> None:
    where = f"{network_path} {network}"
    if address not in network:
        raise _expected(f"must be inside {where}", value)
    if network.prefixlen <= 30 and address in (network.network_address, network.broadcast_address):
        raise _expected(f"must not be the network or broadcast address of {where}", value)


def _interface_in(
    value: object,
    interface: ipaddress.IPv4Interface,
    network: ipaddress.IPv4Network,
    network_path: str,
) -> ipaddress.IPv4Interface:
    """``interface`` (parsed from ``value``), checked to be a host address of ``network``.

    The prefix length must match too: an interface address with another
    prefix would install a wrong on-link route.
    """
    if _is_bad(network):
        return interface
    _check_host_in(interface.ip, network, network_path, value)
    if interface.network.prefixlen != network.prefixlen:
        raise _expected(f"must have the prefix length of {network_path} (/{network.prefixlen})", value)
    return interface


def _gateway(value: object, network: ipaddress.IPv4Network, network_path: str) -> ipaddress.IPv4Address | None:
    if _is_none(value):
        return None
    try:
        if not isinstance(value, str) or not re.fullmatch(_DOTTED_QUAD, value):
            raise ValueError(value)
        gateway = ipaddress.IPv4Address(value)
    except ValueError:
        raise _expected("must be an IPv4 address (e.g. 10.0.0.1) or None", value) from None
    if not _is_bad(network):
        _check_host_in(gateway, network, network_path, value)
    return gateway


def _node_address(
    value: object, node: str, network: ClusterNetwork | None, network_path: str
) -> tuple[AddressMode, ipaddress.IPv4Interface | None]:
    """The node's address on one network: None, by-id (resolved here) or static."""
    if _is_none(value):
        return "none", None
    if value == "by-id":
        return "by-id", _by_id_address(node, network, network_path)
    interface = _interface(value, "must be None, by-id or an IPv4 address in CIDR form (e.g. 10.0.0.1/24)")
    if network is None or _is_bad(network):
        return "static", interface
    _interface_in(value, interface, network.network, f"{network_path}.network")
    floating_ip = network.floating_ip
    if not _is_bad(floating_ip) and interface.ip == floating_ip.ip:
        raise _expected(f"must not be the floating IP {network_path}.floating_ip", value)
    return "static", interface


def _by_id_address(node: str, network: ClusterNetwork | None, network_path: str) -> ipaddress.IPv4Interface:
    """Host N of the cluster network, N being the number the node's name ends in.

    Every node computes its own address from its name, so the Ansible role
    needs no per-node address list; a name or network that cannot give a
    usable, unique address is a configuration error, not a runtime surprise.
    """
    if network is None:
        raise _Invalid("by-id requires pvc.cluster.networks")
    if _is_bad(node) or _is_bad(network) or _is_bad(network.network):
        return _BAD
    number = re.search(r"[0-9]+$", node)
    if number is None:
        raise _Invalid(f"by-id requires pvc.node to end in a number (e.g. pvc-hv1), got {_show(node)}")
    digits = number[0].lstrip("0") or "0"
    subnet = network.network
    where = f"{network_path}.network {subnet}"
    if len(digits) > 10:  # beyond any IPv4 network, and maybe too long for int()
        raise _Invalid(f"by-id host number of pvc.node {_show(node)} is outside {where}")
    host = int(digits)
    origin = f"by-id host {host} (from pvc.node {_show(node)})"
    if host >= subnet.num_addresses:
        raise _Invalid(f"{origin} is outside {where}")
    if subnet.prefixlen <= 30 and host == 0:
        raise _Invalid(f"{origin} is the network address of {where}")
    if subnet.prefixlen <= 30 and host == subnet.num_addresses - 1:
        raise _Invalid(f"{origin} is the broadcast address of {where}")
    interface = ipaddress.IPv4Interface((int(subnet.network_address) + host, subnet.prefixlen))
    if not _is_bad(network.floating_ip) and interface.ip == network.floating_ip.ip:
        raise _Invalid(f"{origin} is the floating IP {network_path}.floating_ip {network.floating_ip}")
    return interface
