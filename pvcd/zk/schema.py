"""Every ZooKeeper path pvcd uses, and the schema version.

One module owns the layout so that the daemon, the CLI and the tests can never
disagree about where a fact lives. `docs/zookeeper-schema.md` describes the value
stored at each path; change both together and bump SCHEMA_VERSION when an
existing value changes shape.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

ROOT = "/pvc"
SCHEMA = f"{ROOT}/schema"
CLOCK = f"{ROOT}/clock"
SECURITY = f"{ROOT}/security"
"""{"identities": {ROLE: "user:digest"}}: the ACL identities every new znode is given, for
clients that do not have them in a configuration (the CLI); see `pvcd.zk.security`."""
NODES = f"{ROOT}/nodes"


def node(name: str) -> str:
    """The node's registration record: static facts written when the daemon starts."""
    return f"{NODES}/{name}"


def node_state(name: str) -> str:
    """The node's daemon and coordinator state, written only by that node."""
    return f"{node(name)}/state"


def node_keepalive(name: str) -> str:
    """The node's latest keepalive: counter and resource figures."""
    return f"{node(name)}/keepalive"


def validate_name(name: str) -> str:
    """Reject names that would escape their parent znode."""
    if not name or "/" in name or name in (".", "..") or name.strip() != name:
        raise ValueError(f"invalid name for a ZooKeeper path component: {name!r}")
    return name


# -- VMs (see docs/vms.md) ----------------------------------------------------

VMS = f"{ROOT}/vms"
"""Parent of the VM records. Its own value is empty and nothing watches it: a
node hears of the VMs it must act on through its own index (`node_vms`)."""

VM_UUIDS = f"{ROOT}/vm_uuids"
NODE_VMS = f"{ROOT}/node_vms"
"""Parent of the per-node VM indexes (`node_vms`)."""


def vm(name: str) -> str:
    """The VM's record: definition, desired state and placement (`node`, `lastnode`)."""
    return f"{VMS}/{name}"


def vm_status(name: str) -> str:
    """What the node that last handled the VM says actually happened to it."""
    return f"{vm(name)}/status"


def vm_migration(name: str) -> str:
    """The move in progress, if any: created with the `node` change, deleted by the target."""
    return f"{vm(name)}/migration"


def vm_uuid(uuid: str) -> str:
    """Index from libvirt UUID to VM name, so two VMs can never share a UUID."""
    return f"{VM_UUIDS}/{uuid}"


def node_vms(name: str) -> str:
    """The node's index of the VMs it must act on: one empty child per VM whose record
    assigns it to the node or whose move leaves from or goes to the node. Kept in the
    same transaction as every VM write that changes it (`pvcd.zk.vms`). Outside the
    node's own znode, so that a VM defined for a node not yet registered does not
    make the node look registered."""
    return f"{NODE_VMS}/{name}"


def node_vm(name: str, vm_name: str) -> str:
    """The entry of VM `vm_name` in node `name`'s index (empty value)."""
    return f"{node_vms(name)}/{vm_name}"


def node_command(name: str) -> str:
    """An operator's request to the node (flush, ready); only the operator tool writes it."""
    return f"{node(name)}/command"


def node_flush(name: str) -> str:
    """The node's report on the last flush or ready it carried out; only the node writes it."""
    return f"{node(name)}/flush"


# -- Coordinators (see docs/coordinators.md) ----------------------------------

COORDINATORS = f"{ROOT}/coordinators"

PRIMARY = f"{COORDINATORS}/primary"
"""Parent of the primary claims: ephemeral sequential children named
`NODE~TOKEN~SEQUENCE`; the lowest sequence is the primary coordinator."""

HANDOVER = f"{COORDINATORS}/handover"
"""An operator's request that the primary step down, naming its successor or
null; deleted by the coordinator that takes over, in the same transaction."""


CLAIM_SEPARATOR = "~"
"""Separates node, token and sequence in a claim's name; never part of a node name."""


def primary_claim_prefix(node_name: str, token: str) -> str:
    """The path a coordinator creates (ZooKeeper appends the sequence) to claim the primary role."""
    return f"{PRIMARY}/{validate_name(node_name)}{CLAIM_SEPARATOR}{token}{CLAIM_SEPARATOR}"


# -- Fencing (see docs/fencing.md) ---------------------------------------------

CLUSTER = f"{ROOT}/cluster"
MAINTENANCE = f"{CLUSTER}/maintenance"
"""{"enabled": bool}: while enabled, no node is fenced."""
FAULTS = f"{CLUSTER}/faults"
"""Cluster-wide faults the primary found, e.g. the fencing storm guard."""
CLUSTER_STATES = f"{CLUSTER}/states"
"""{NODE: {"daemon", "coordinator", "domain"}} for every node, as the primary's cluster view has
it; written by the primary only when one changes, so a node can show the whole cluster (its
keepalive log's cluster details) by watching one znode instead of every node's."""
FENCE_LOCK = f"{ROOT}/locks/fence"
"""Held by whoever fences a node: one fence at a time, cluster-wide."""


def node_fence(name: str) -> str:
    """The last fence of the node: outcome, reason, recovery. Its version is checked
    by every keepalive of the node, so a node that was declared dead learns it at
    its next keepalive even if it was only frozen."""
    return f"{node(name)}/fence"


def node_ipmi(name: str) -> str:
    """The node's BMC address and credentials, published for the fencer only (readable by the
    coordinators' identity alone: see `pvcd.zk.security`)."""
    return f"{node(name)}/ipmi"


def is_secret(path: str) -> bool:
    """Is `path` one of the znodes only the fencers may read (a node's BMC credentials)?"""
    parent, _, leaf = path.rpartition("/")
    return leaf == "ipmi" and parent.rpartition("/")[0] == NODES


def node_storage(name: str) -> str:
    """{"addresses": [Ceph client address, ...], "ips": [IP, ...], "learned_ms"}: how the Ceph
    cluster sees this node's clients, as librados told the node itself; what the fencer cuts off."""
    return f"{node(name)}/storage"


STORAGE = f"{ROOT}/storage"
STORAGE_STATUS = f"{STORAGE}/status"
"""The Ceph cluster's health, usage, OSDs, pools and volumes as the primary last read them
(with when and how long it took, or why it could not)."""
STORAGE_FENCES = f"{STORAGE}/fences"


def storage_fence(name: str) -> str:
    """{"fence", "entries": [blocklisted address, ...], "until_ms"}: what a fence of the node
    blocklisted; the primary removes the entries once the node is readied, then this znode."""
    return f"{STORAGE_FENCES}/{validate_name(name)}"


NETWORKS = f"{ROOT}/networks"
"""Client networks, one child per VNI (`pvcd.cluster.client_networks`)."""


def network(vni: int) -> str:
    """A client network's record; created, changed and removed by `pvc network`."""
    return f"{NETWORKS}/{vni}"


def network_reservations(vni: int) -> str:
    """The network's DHCP reservations, one child per MAC (`pvc network dhcp add|remove`)."""
    return f"{network(vni)}/reservations"


def network_reservation(vni: int, mac: str) -> str:
    return f"{network_reservations(vni)}/{mac}"


def network_leases(vni: int) -> str:
    """The network's DHCP leases, one child per MAC, written by the primary's dnsmasq lease script."""
    return f"{network(vni)}/leases"


def network_lease(vni: int, mac: str) -> str:
    return f"{network_leases(vni)}/{mac}"
