"""VM records: what ZooKeeper holds about a VM, and checking what operators hand in (pure).

Three values per VM (paths in `pvcd.zk.schema`):

* the record (`VmRecord`): the definition, the desired state and the placement;
  written by the operator tool and by the node that owns the VM;
* the status (`VmStatus`): what the node that last handled the VM says is
  actually true; it also says which node may have the domain running, which
  is what keeps a VM from ever running on two hosts (see docs/vms.md);
* the migration (`Migration`), present only while the VM moves between nodes.
"""

from __future__ import annotations

import dataclasses
import re
import uuid as uuid_module
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pvcd.placement.selectors import VmRequest, check_selector
from pvcd.zk import schema


class InvalidVm(ValueError):
    """Input or a stored value that cannot be a VM; the message says what is wrong."""


class VmState(StrEnum):
    """The desired state of a VM, as the operator (or its node) set it.

    `restart`, `shutdown`, `migrate` and `unmigrate` are requests in progress:
    the owning node turns them into `start` or `stop` when done. `fail` is set
    by a node that could not do what was asked; `reason` says why.
    """

    START = "start"
    RESTART = "restart"
    SHUTDOWN = "shutdown"
    STOP = "stop"
    DISABLE = "disable"
    MIGRATE = "migrate"
    UNMIGRATE = "unmigrate"
    FAIL = "fail"


SHOULD_RUN = frozenset({VmState.START, VmState.RESTART, VmState.MIGRATE, VmState.UNMIGRATE})
"""Desired states in which the VM must end up running."""

IN_PROGRESS = frozenset({VmState.RESTART, VmState.SHUTDOWN, VmState.MIGRATE, VmState.UNMIGRATE})
"""Desired states an operator command must not overwrite: wait until the node has finished."""


class MigrationMethod(StrEnum):
    """How a running VM changes node: `live` tries a live migration and falls
    back to `shutdown` (stop here, start there) if it fails; `shutdown` always
    stops and starts it."""

    LIVE = "live"
    SHUTDOWN = "shutdown"


class ActualState(StrEnum):
    """What the node in `VmStatus.node` reports about the VM's domain."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    MIGRATING = "migrating"
    STOPPED = "stopped"


class MovePhase(StrEnum):
    """`requested`: the source has not acted yet; `migrating`: a live migration
    is under way; `released`: the source no longer runs the VM (it stopped it,
    or libvirt moved it to the target)."""

    REQUESTED = "requested"
    MIGRATING = "migrating"
    RELEASED = "released"


class MoveKind(StrEnum):
    """`migrate` remembers the old node in `lastnode`, `unmigrate` goes back to
    it, `move` is permanent and clears it."""

    MIGRATE = "migrate"
    UNMIGRATE = "unmigrate"
    MOVE = "move"


_MIB = 1024 * 1024
_MEMORY_UNITS = {
    "b": 1,
    "bytes": 1,
    "kb": 1000,
    "k": 1024,
    "kib": 1024,
    "mb": 1000**2,
    "m": 1024**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "g": 1024**3,
    "gib": 1024**3,
    "tb": 1000**4,
    "t": 1024**4,
    "tib": 1024**4,
    "pb": 1000**5,
    "p": 1024**5,
    "pib": 1024**5,
    "eb": 1000**6,
    "e": 1024**6,
    "eib": 1024**6,
}


@dataclass(frozen=True)
class DomainSpec:
    """The facts pvcd needs from a libvirt domain XML, and the XML to store."""

    name: str
    uuid: str
    memory_mib: int
    vcpus: int
    xml: str


MAX_DOMAIN_XML_BYTES = 256 * 1024
"""The largest domain XML accepted, in UTF-8 bytes. ZooKeeper refuses a request
above its jute.maxbuffer (1 MiB by default) by dropping the connection; JSON
escaping at most triples the XML, so a record stays well under that limit."""


class _NoDoctype(ElementTree.TreeBuilder):
    """libvirt domain XML has no DTD; entities declared in one would make the XML
    stored differ from the XML that was checked (and can expand enormously)."""

    def doctype(self, name: str, pubid: str | None, system: str | None) -> None:
        raise InvalidVm("domain XML: a <!DOCTYPE> (DTD or entity declarations) is not allowed")


def check_domain_xml_size(size: int) -> None:
    """Refuse a domain XML of `size` UTF-8 bytes that ZooKeeper could not store safely."""
    if size > MAX_DOMAIN_XML_BYTES:
        kib = MAX_DOMAIN_XML_BYTES // 1024
        raise InvalidVm(f"domain XML is {size} bytes; at most {MAX_DOMAIN_XML_BYTES} bytes ({kib} KiB) are accepted")


def parse_domain_xml(text: str) -> DomainSpec:
    """Check a domain XML and extract its name, UUID, memory and vCPUs.

    libvirt would refuse most of these mistakes only when a node starts the VM;
    catching them here keeps bad input out of ZooKeeper. A domain without a
    `<uuid>` gets one, so ZooKeeper and every libvirt host agree on it.
    """
    if not text.strip():
        raise InvalidVm("domain XML is empty")
    check_domain_xml_size(len(text.encode("utf-8", "surrogatepass")))
    try:
        root = ElementTree.fromstring(text, parser=ElementTree.XMLParser(target=_NoDoctype(insert_comments=True)))
    except ElementTree.ParseError as exc:
        raise InvalidVm(f"malformed domain XML: {exc}") from exc
    if root.tag != "domain":
        raise InvalidVm(f"domain XML: the root element is <{root.tag}>, expected <domain>")
    if not root.get("type"):
        raise InvalidVm("domain XML: <domain> has no type attribute (e.g. type='kvm')")
    name_element = root.find("name")
    name = (name_element.text or "").strip() if name_element is not None else ""
    if name_element is None or not name:
        raise InvalidVm("domain XML: <name> is missing or empty")
    check_vm_name(name)
    uuid_text = (root.findtext("uuid") or "").strip()
    if uuid_text:
        try:
            uuid = str(uuid_module.UUID(uuid_text))
        except ValueError as exc:
            raise InvalidVm(f"domain XML: <uuid> {shown(uuid_text)} is not a UUID") from exc
    else:
        uuid = str(uuid_module.uuid4())
        element = ElementTree.Element("uuid")
        element.text = uuid
        root.insert(list(root).index(name_element) + 1, element)
        text = ElementTree.tostring(root, encoding="unicode")
        check_domain_xml_size(len(text.encode("utf-8", "surrogatepass")))
    return DomainSpec(name=name, uuid=uuid, memory_mib=_memory_mib(root), vcpus=_vcpus(root), xml=text)


@dataclass(frozen=True, order=True)
class RbdVolume:
    """An RBD volume a VM's domain XML uses as a disk: `pool/volume`."""

    pool: str
    volume: str

    def __str__(self) -> str:
        return f"{self.pool}/{self.volume}"


def writable_disks_on_rbd(xml: str) -> bool:
    """Is every disk the guest can write an RBD volume (so a Ceph blocklist stops all its writes)?

    Read-only disks and cdroms are left out: a copy of the guest left running cannot change them."""
    try:
        root = ElementTree.fromstring(xml, parser=ElementTree.XMLParser(target=_NoDoctype()))
    except ElementTree.ParseError as exc:
        raise InvalidVm(f"malformed domain XML: {exc}") from exc
    for disk in root.iterfind("devices/disk"):
        if disk.get("device", "disk") == "cdrom" or disk.find("readonly") is not None:
            continue
        source = disk.find("source")
        if disk.get("type") != "network" or source is None or source.get("protocol") != "rbd":
            return False
    return True


def rbd_volumes(xml: str) -> tuple[RbdVolume, ...]:
    """The RBD volumes the domain uses as disks, in the order of its `<disk>` elements, each once.

    A disk counts when it is `<disk type='network'>` with `<source protocol='rbd' name='POOL/VOLUME'>`
    (a cdrom as well as a disk). Left out: a source naming a snapshot (`POOL/VOLUME@SNAP`: read-only,
    libvirt takes no lock on it, so it has none to show or break), a name with an RBD namespace
    (`POOL/NAMESPACE/VOLUME`) or otherwise not two non-empty parts, and `type='volume'` disks of a
    libvirt storage pool. A stored XML was checked when it was defined; one that does not parse
    is an InvalidVm.
    """
    try:
        root = ElementTree.fromstring(xml, parser=ElementTree.XMLParser(target=_NoDoctype()))
    except ElementTree.ParseError as exc:
        raise InvalidVm(f"malformed domain XML: {exc}") from exc
    found: dict[RbdVolume, None] = {}
    for disk in root.iterfind("devices/disk"):
        if disk.get("type") != "network":
            continue
        source = disk.find("source")
        if source is None or source.get("protocol") != "rbd":
            continue
        name = (source.get("name") or "").strip()
        if "@" in name:
            continue
        pool, slash, volume = name.partition("/")
        if not slash or not pool or not volume or "/" in volume:
            continue
        found[RbdVolume(pool, volume)] = None
    return tuple(found)


MAX_MEMORY_MIB = 2**32
"""4 PiB, the most an x86-64 host can address (52 bits): anything above is a typo."""
MAX_VCPUS = 4096
"""KVM's limit of vCPUs per guest on x86-64 (KVM_MAX_VCPUS)."""
_NUMBER_DIGITS = 30


def _whole_number(text: str, element: str) -> int:
    """A positive decimal number as libvirt reads it: ASCII digits only (Python's int()
    would also take '1_000', '+5' or other scripts' digits, and fail on thousands of digits)."""
    if not (text.isascii() and text.isdigit()):
        raise InvalidVm(f"domain XML: <{element}> {shown(text)} is not a whole number")
    if len(text) > _NUMBER_DIGITS:
        raise InvalidVm(f"domain XML: <{element}> {shown(text)} is far too large")
    value = int(text)
    if value <= 0:
        raise InvalidVm(f"domain XML: <{element}> must be positive")
    return value


def _memory_mib(root: ElementTree.Element) -> int:
    element = root.find("memory")
    if element is None or not (element.text or "").strip():
        raise InvalidVm("domain XML: <memory> is missing")
    unit = (element.get("unit") or "KiB").lower()
    if unit not in _MEMORY_UNITS:
        raise InvalidVm(f"domain XML: <memory unit={shown(element.get('unit') or '')}> is not a libvirt memory unit")
    amount = _whole_number((element.text or "").strip(), "memory")
    mib = -(-amount * _MEMORY_UNITS[unit] // _MIB)
    if mib > MAX_MEMORY_MIB:
        raise InvalidVm(f"domain XML: <memory> of {mib} MiB is more than any host has (at most {MAX_MEMORY_MIB} MiB)")
    return mib


def _vcpus(root: ElementTree.Element) -> int:
    """The vCPUs the VM starts with (`current`, else the maximum); libvirt's default is 1."""
    element = root.find("vcpu")
    if element is None:
        return 1
    vcpus = _whole_number(element.get("current") or (element.text or "").strip(), "vcpu")
    if vcpus > MAX_VCPUS:
        raise InvalidVm(f"domain XML: <vcpu> {vcpus} is more than KVM allows (at most {MAX_VCPUS})")
    return vcpus


MAX_VM_NAME = 64
MAX_NODE_NAME = 253
_HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHOWN = 40


def shown(text: str) -> str:
    """Operator input as a short part of a one-line message, however long or strange it is."""
    if len(text) <= _SHOWN:
        return repr(text)
    return f"{text[:_SHOWN]!r}... ({len(text)} characters)"


def check_vm_name(name: str) -> str:
    """Refuse a name a new VM cannot have.

    The name is a libvirt domain name on every node, a ZooKeeper path
    component and a word in operators' commands and logs: letters, digits,
    '-', '_' and '.', starting with a letter or digit (as a host name), and
    at most MAX_VM_NAME characters.
    """
    if not name:
        raise InvalidVm("VM name cannot be used: it is empty")
    if len(name) > MAX_VM_NAME:
        raise InvalidVm(f"VM name {shown(name)} cannot be used: it is longer than {MAX_VM_NAME} characters")
    if not _HOST_NAME.fullmatch(name):
        raise InvalidVm(
            f"VM name {shown(name)} cannot be used: only letters, digits, '-', '_' and '.' are allowed, "
            f"starting with a letter or digit"
        )
    return name


def may_be_stored(name: str) -> bool:
    """Whether an earlier pvc, which only asked for a single path component, could have
    stored a VM under `name`: such a VM must stay reachable to be stopped or removed.
    ZooKeeper itself refuses control characters in paths."""
    try:
        schema.validate_name(name)
    except ValueError:
        return False
    return name.isprintable()


def check_node_name(name: str) -> str:
    """Refuse what cannot be a node's name (pvcd's configuration allows host names only),
    before it is used in a ZooKeeper path or a message."""
    if not name:
        raise InvalidVm("node name is empty")
    if len(name) > MAX_NODE_NAME or not _HOST_NAME.fullmatch(name):
        raise InvalidVm(
            f"invalid node name {shown(name)}: a node name is a host name (letters, digits, '-', '_' and '.', "
            f"starting with a letter or digit, at most {MAX_NODE_NAME} characters)"
        )
    return name


def check_fits_node(name: str, memory_mib: int, node: str, total_mib: int | None) -> None:
    """Refuse to put a VM on a node that could never run it. A node that has not
    reported its memory yet (`total_mib` None) cannot be judged, and is not refused."""
    if total_mib is not None and memory_mib > total_mib:
        raise InvalidVm(f"VM {name} needs {memory_mib} MiB of memory; node {node} has only {total_mib} MiB in total")


@dataclass(frozen=True)
class JobFigures:
    """libvirt's completed-job statistics of a live migration; a figure it did not report is None."""

    time_ms: int | None
    """Wall time of the whole migration."""
    downtime_ms: int | None
    """How long the guest was paused for the switch-over."""
    data_bytes: int | None
    """Data sent to the target."""


@dataclass(frozen=True)
class MigrationStats:
    """What the hypervisor reported about a VM's live migration from `source` to `target`."""

    source: str
    target: str
    figures: JobFigures

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, **dataclasses.asdict(self.figures)}

    @classmethod
    def from_json(cls, value: Any) -> MigrationStats | None:
        """The stats, or None for anything that is not a stats object (dropped, never fatal)."""
        if not isinstance(value, dict):
            return None
        try:
            figures = JobFigures(*(_optional_count(value.get(f.name)) for f in dataclasses.fields(JobFigures)))
            return cls(source=_text(value, "source"), target=_text(value, "target"), figures=figures)
        except (KeyError, TypeError, ValueError):
            return None


def _optional_count(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not a count: {value!r}")
    return value


@dataclass(frozen=True)
class VmRecord:
    """The VM's record in ZooKeeper.

    `node` is the one node the VM belongs to; `lastnode` the node it was
    migrated away from (for `unmigrate` and a node's `ready`), or None.
    `reason` explains the state when a node set it (`fail`, a guest that shut
    itself down, a VM a flush could not place); operator commands clear it.
    `node_autostart` asks the node to start the VM when it next becomes ready.
    `last_migration` is what the hypervisor reported about the VM's last live
    migration, written by the node it arrived on.
    """

    name: str
    uuid: str
    xml: str
    memory_mib: int
    vcpus: int
    state: VmState
    node: str
    reason: str | None = None
    lastnode: str | None = None
    node_limit: tuple[str, ...] = ()
    node_selector: str | None = None
    node_autostart: bool = False
    migration_method: MigrationMethod = MigrationMethod.LIVE
    last_migration: MigrationStats | None = None

    def to_json(self) -> dict[str, Any]:
        value = dataclasses.asdict(self)
        value["last_migration"] = self.last_migration.to_json() if self.last_migration else None
        value["node_limit"] = list(self.node_limit)
        value["state"] = str(self.state)
        value["migration_method"] = str(self.migration_method)
        return value

    @classmethod
    def from_json(cls, value: Any) -> VmRecord:
        """The record as stored; InvalidVm, in one short line, for anything pvcd did not write."""
        if not isinstance(value, dict):
            raise InvalidVm(f"VM record is not an object: {brief(value)}")
        try:
            return cls(
                name=_text(value, "name"),
                uuid=_text(value, "uuid"),
                xml=_text(value, "xml"),
                memory_mib=_positive(value, "memory_mib"),
                vcpus=_positive(value, "vcpus"),
                state=VmState(value["state"]),
                node=_text(value, "node"),
                reason=_optional_text(value, "reason"),
                lastnode=_optional_text(value, "lastnode"),
                node_limit=_texts(value, "node_limit"),
                node_selector=_optional_text(value, "node_selector"),
                node_autostart=_flag(value, "node_autostart"),
                migration_method=MigrationMethod(value.get("migration_method", MigrationMethod.LIVE)),
                last_migration=MigrationStats.from_json(value.get("last_migration")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidVm(f"VM record {brief(value.get('name'))} is not valid: {_problem(exc)}") from exc

    def with_state(self, state: VmState, reason: str | None = None) -> VmRecord:
        return dataclasses.replace(self, state=state, reason=reason)

    def request(self, target: str | None = None) -> VmRequest:
        """This VM as the placement planner sees it."""
        return VmRequest(
            name=self.name,
            memory_mib=self.memory_mib,
            vcpus=self.vcpus,
            current_node=self.node,
            node_limit=self.node_limit,
            selector=self.node_selector,
            target=target,
        )


def _text(value: dict[str, Any], key: str) -> str:
    found = value[key]
    if not isinstance(found, str) or not found:
        raise ValueError(f"{key} must be a non-empty string")
    return found


def _optional_text(value: dict[str, Any], key: str) -> str | None:
    found = value.get(key)
    if found is not None and not isinstance(found, str):
        raise ValueError(f"{key} must be a string or null, not {type(found).__name__}")
    return found


def _texts(value: dict[str, Any], key: str) -> tuple[str, ...]:
    found = value.get(key) or []
    if not isinstance(found, list) or not all(isinstance(item, str) and item for item in found):
        raise ValueError(f"{key} must be a list of names")
    return tuple(found)


def _flag(value: dict[str, Any], key: str) -> bool:
    found = value.get(key, False)
    if not isinstance(found, bool):
        raise ValueError(f"{key} must be true or false")
    return found


def _positive(value: dict[str, Any], key: str) -> int:
    """A positive whole number (not a bool, a float, NaN or a string)."""
    found = value[key]
    if isinstance(found, bool) or not isinstance(found, int) or found <= 0:
        raise ValueError(f"{key} must be a positive whole number, not {brief(found)}")
    return found


def brief(value: Any) -> str:
    """Any value read from the store, as a short part of a one-line message."""
    if isinstance(value, str):
        return shown(value)
    try:
        text = repr(value)
    except ValueError:  # an integer with more digits than Python prints
        text = f"a {type(value).__name__} too large to show"
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}... ({len(text)} characters)"


def _problem(exc: BaseException) -> str:
    """An exception about a stored value, in one short line (an Enum's error repeats the value whole)."""
    if isinstance(exc, KeyError):
        return f"{brief(exc.args[0] if exc.args else '')} is missing"
    text = " ".join(str(exc).split())
    return text if len(text) <= 3 * _SHOWN else f"{text[: 3 * _SHOWN]}... ({len(text)} characters)"


def new_record(
    spec: DomainSpec,
    node: str,
    node_limit: tuple[str, ...] = (),
    node_selector: str | None = None,
    node_autostart: bool = False,
    migration_method: str = MigrationMethod.LIVE,
) -> VmRecord:
    """A freshly defined VM: stopped on `node` (starting it is a separate command, as in libvirt)."""
    if node_selector is not None:
        try:
            check_selector(node_selector)
        except ValueError as exc:
            raise InvalidVm(str(exc)) from exc
    try:
        method = MigrationMethod(migration_method)
    except ValueError as exc:
        raise InvalidVm(
            f"unknown migration method {migration_method!r}; valid methods: {', '.join(MigrationMethod)}"
        ) from exc
    return VmRecord(
        name=spec.name,
        uuid=spec.uuid,
        xml=spec.xml,
        memory_mib=spec.memory_mib,
        vcpus=spec.vcpus,
        state=VmState.STOP,
        node=node,
        node_limit=tuple(node_limit),
        node_selector=node_selector,
        node_autostart=node_autostart,
        migration_method=method,
    )


@dataclass(frozen=True)
class VmStatus:
    """The actual state of a VM, as reported by the node that handled it last.

    While `state` is anything but `stopped`, `node` is the only host that may
    have the domain running, and no other node starts the VM.
    """

    node: str | None
    state: ActualState
    message: str | None = None

    @property
    def active(self) -> bool:
        return self.state != ActualState.STOPPED

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "state": str(self.state), "message": self.message}

    @classmethod
    def from_json(cls, value: Any) -> VmStatus:
        if not isinstance(value, dict):
            # Never "stopped" for a status that cannot be read: it may be running somewhere.
            raise InvalidVm(f"VM status is not an object: {brief(value)}")
        try:
            return cls(
                node=_optional_text(value, "node"),
                state=ActualState(value["state"]),
                message=_optional_text(value, "message"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidVm(f"VM status is not valid: {_problem(exc)}") from exc


STATUS_NEW = VmStatus(node=None, state=ActualState.STOPPED, message="defined, never started")


@dataclass(frozen=True)
class Migration:
    """A move of the VM from `source` to `target` in progress.

    Created in the same transaction that changes the record's `node`, so a VM
    is assigned to exactly one node at every moment. The target starts the VM
    only once `phase` is `released`. `previous_lastnode` lets the source put
    the record back as it was if it cannot let the VM go. `how` records what
    the source did (`live`, `simulated`, `shutdown`, `not_running`), and
    `stats` what the hypervisor reported about a live migration.
    """

    id: str
    kind: MoveKind
    source: str
    target: str
    method: MigrationMethod
    phase: MovePhase
    previous_lastnode: str | None = None
    how: str | None = None
    stats: MigrationStats | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": str(self.kind),
            "from": self.source,
            "to": self.target,
            "method": str(self.method),
            "phase": str(self.phase),
            "previous_lastnode": self.previous_lastnode,
            "how": self.how,
            "stats": self.stats.to_json() if self.stats else None,
        }

    @classmethod
    def from_json(cls, value: Any) -> Migration:
        if not isinstance(value, dict):
            raise InvalidVm(f"migration record is not an object: {brief(value)}")
        try:
            return cls(
                id=_text(value, "id"),
                kind=MoveKind(value["kind"]),
                source=_text(value, "from"),
                target=_text(value, "to"),
                method=MigrationMethod(value["method"]),
                phase=MovePhase(value["phase"]),
                previous_lastnode=_optional_text(value, "previous_lastnode"),
                how=_optional_text(value, "how"),
                stats=MigrationStats.from_json(value.get("stats")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidVm(f"migration record is not valid: {_problem(exc)}") from exc

    def released(self, how: str, stats: MigrationStats | None = None) -> Migration:
        return dataclasses.replace(self, phase=MovePhase.RELEASED, how=how, stats=stats)


@dataclass(frozen=True)
class VmView:
    """One VM as read from ZooKeeper: its three values and their versions, for version-checked writes."""

    record: VmRecord
    record_version: int
    status: VmStatus
    status_version: int
    migration: Migration | None = None
    migration_version: int | None = None

    @property
    def name(self) -> str:
        return self.record.name


# -- Operator commands (pure rules; the CLI and the flush runner apply them) ---

_ALLOWED_FROM: dict[VmState, frozenset[VmState]] = {
    VmState.START: frozenset({VmState.STOP, VmState.DISABLE, VmState.FAIL}),
    VmState.RESTART: frozenset({VmState.START}),
    VmState.SHUTDOWN: frozenset({VmState.START, VmState.FAIL}),
    VmState.STOP: frozenset(VmState) - {VmState.STOP},
    VmState.DISABLE: frozenset(VmState) - {VmState.DISABLE},
}
_ALLOWED_WHILE_MOVING = frozenset({VmState.STOP, VmState.DISABLE})


class NothingToDo(Exception):
    """The VM is already as asked; not an error."""


def state_change(view: VmView, wanted: VmState) -> VmRecord:
    """The record after an operator asks for `wanted`; raises InvalidVm (refused) or NothingToDo.

    Requests in progress are not overwritten (a restart half done would be
    lost), except by `stop`/`disable`, the operator's way out of anything.
    """
    record = view.record
    if wanted not in _ALLOWED_FROM:
        raise InvalidVm(f"{wanted} is not a state an operator sets directly")
    if record.state == wanted:
        raise NothingToDo(f"VM {record.name} is already {wanted}")
    if view.migration is not None and wanted not in _ALLOWED_WHILE_MOVING:
        raise InvalidVm(
            f"VM {record.name} is moving from {view.migration.source} to {view.migration.target}; "
            f"wait until it has arrived"
        )
    if record.state not in _ALLOWED_FROM[wanted]:
        raise InvalidVm(f"VM {record.name} is {record.state}; {wanted} needs it to be {_either(_ALLOWED_FROM[wanted])}")
    return record.with_state(wanted)


def _either(states: frozenset[VmState]) -> str:
    return " or ".join(sorted(states))


def move_target(view: VmView, kind: MoveKind, target: str | None, force: bool = False) -> str | None:
    """The explicit target of a move, or None to let the planner choose; raises InvalidVm if refused."""
    record = view.record
    if view.migration is not None:
        raise InvalidVm(f"VM {record.name} is already moving from {view.migration.source} to {view.migration.target}")
    if record.state in IN_PROGRESS:
        raise InvalidVm(f"VM {record.name} is busy ({record.state} in progress); try again when it is done")
    if kind == MoveKind.UNMIGRATE:
        if record.lastnode is None:
            raise InvalidVm(f"VM {record.name} has not been migrated (no lastnode to return to)")
        return record.lastnode
    if kind == MoveKind.MIGRATE and record.lastnode is not None and not force:
        raise InvalidVm(
            f"VM {record.name} was already migrated from {record.lastnode}; "
            f"unmigrate it, or use --force to migrate it again (it keeps {record.lastnode} as lastnode)"
        )
    if target is not None and target == record.node:
        raise InvalidVm(f"VM {record.name} is already on {target}")
    return target


def next_lastnode(record: VmRecord, kind: MoveKind, target: str) -> str | None:
    """`migrate` remembers where the VM came from (keeping an earlier home on a forced
    re-migration), `unmigrate` and `move` forget it; arriving home forgets it too."""
    if kind != MoveKind.MIGRATE:
        return None
    home = record.lastnode or record.node
    return None if home == target else home


def needs_handshake(view: VmView) -> bool:
    """Whether a move must wait for the current node to release the VM.

    Only a VM that nobody may be running (status stopped) and that nobody is
    about to start (desired state not a running one) changes node directly.
    """
    return view.status.active or view.record.state in SHOULD_RUN or view.record.state == VmState.SHUTDOWN


def moved(
    view: VmView, kind: MoveKind, target: str, move_id: str, lastnode: str | None
) -> tuple[VmRecord, Migration | None]:
    """The record (and migration, if a handshake is needed) for moving the VM to `target`."""
    record = view.record
    running = record.state in SHOULD_RUN
    state = record.state
    if running:
        state = VmState.UNMIGRATE if kind == MoveKind.UNMIGRATE else VmState.MIGRATE
    new_record = dataclasses.replace(
        record, node=target, lastnode=lastnode, state=state, reason=None if running else record.reason
    )
    if not needs_handshake(view):
        return new_record, None
    migration = Migration(
        id=move_id,
        kind=kind,
        source=record.node,
        target=target,
        method=record.migration_method,
        phase=MovePhase.REQUESTED,
        previous_lastnode=record.lastnode,
    )
    return new_record, migration


def state_after_fence(state: VmState) -> VmState:
    """What a fenced node's VM wants on its new node: it runs again if it ran (or was restarting);
    a shutdown the dead node never finished is a stop."""
    if state in SHOULD_RUN:
        return VmState.START
    if state == VmState.SHUTDOWN:
        return VmState.STOP
    return state


def after_fence(view: VmView, dead: str, replacement: str | None) -> tuple[VmRecord, Migration | None, VmStatus]:
    """What becomes of a VM once node `dead` is confirmed powered off (for the fencing flow).

    Returns the record, the migration to keep (None: delete it, if any) and
    the status, to be written in one transaction (`vms.write_after_fence`).

    * Moving away from `dead`: released to its target, which finds it running
      (a live migration that completed) or starts it.
    * Moving to `dead` but not yet released: the source may still run it, so
      its status stays; the move is redirected to `replacement`, or cancelled
      (the VM stays on its source) when there is none.
    * Any other VM of `dead`: nothing runs there any more (status `stopped`);
      it goes to `replacement` (chosen by the planner) with `dead` as
      lastnode, so `pvc node ready` brings it home, and starts there if it
      should run. With no replacement it stays, in `fail` if it should run.
    """
    record, migration = view.record, view.migration
    fenced = VmStatus(dead, ActualState.STOPPED, f"node {dead} was fenced")
    if migration is not None and migration.phase != MovePhase.RELEASED:
        if migration.source == dead:
            return record, migration.released("fenced"), fenced
        if migration.target == dead:
            if replacement is None or replacement == migration.source:
                back = VmState.START if record.state in SHOULD_RUN else record.state
                restored = dataclasses.replace(
                    record, node=migration.source, lastnode=migration.previous_lastnode, state=back
                )
                return restored, None, view.status
            return (
                dataclasses.replace(record, node=replacement),
                dataclasses.replace(migration, target=replacement),
                view.status,
            )
    if replacement is None or replacement == dead:
        if record.state in SHOULD_RUN:
            record = record.with_state(VmState.FAIL, f"node {dead} was fenced and no node could take the VM")
        return dataclasses.replace(record, node=dead), None, fenced
    moved_record = dataclasses.replace(
        record, node=replacement, lastnode=record.lastnode or dead, state=state_after_fence(record.state), reason=None
    )
    return moved_record, None, fenced
