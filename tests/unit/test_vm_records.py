"""VM records: parsing operator XML, JSON round trips, and the rules of operator commands."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pvcd.cluster.vm_records import (
    MAX_DOMAIN_XML_BYTES,
    MAX_VM_NAME,
    STATUS_NEW,
    ActualState,
    InvalidVm,
    JobFigures,
    Migration,
    MigrationMethod,
    MigrationStats,
    MoveKind,
    MovePhase,
    NothingToDo,
    VmRecord,
    VmState,
    VmStatus,
    VmView,
    check_fits_node,
    check_node_name,
    check_vm_name,
    may_be_stored,
    move_target,
    moved,
    needs_handshake,
    new_record,
    next_lastnode,
    parse_domain_xml,
    shown,
    state_change,
)

UUID = "6f1c5a1e-8d0b-4d3c-9a55-0f2f6f1f7a10"


def xml(name="vm1", memory="512", unit="MiB", vcpu="<vcpu>2</vcpu>", uuid_element=f"<uuid>{UUID}</uuid>"):
    return (
        f"<domain type='kvm'><name>{name}</name>{uuid_element}"
        f"<memory unit='{unit}'>{memory}</memory>{vcpu}<os><type>hvm</type></os></domain>"
    )


def test_parse_extracts_identity_and_size():
    spec = parse_domain_xml(xml())
    assert (spec.name, spec.uuid, spec.memory_mib, spec.vcpus) == ("vm1", UUID, 512, 2)
    assert spec.xml == xml()


@pytest.mark.parametrize(
    "memory, unit, mib",
    [("1048576", "KiB", 1024), ("2", "GiB", 2048), ("1", "G", 1024), ("1000000000", "B", 954), ("524288", None, 512)],
)
def test_memory_units(memory, unit, mib):
    text = xml(memory=memory, unit=unit or "KiB")
    if unit is None:
        text = text.replace(" unit='KiB'", "")
    assert parse_domain_xml(text).memory_mib == mib


def test_current_vcpus_count_and_default_is_one():
    assert parse_domain_xml(xml(vcpu="<vcpu current='2'>8</vcpu>")).vcpus == 2
    assert parse_domain_xml(xml(vcpu="")).vcpus == 1


def test_missing_uuid_is_added_to_the_xml():
    spec = parse_domain_xml(xml(uuid_element=""))
    assert str(uuid.UUID(spec.uuid)) == spec.uuid
    assert f"<uuid>{spec.uuid}</uuid>" in spec.xml
    assert parse_domain_xml(spec.xml).uuid == spec.uuid


@pytest.mark.parametrize(
    "text, message",
    [
        ("<domain type='kvm'><name>x</name>", "malformed domain XML"),
        ("<network><name>x</name></network>", "expected <domain>"),
        ("<domain><name>x</name><memory>1</memory></domain>", "no type attribute"),
        (xml(name=""), "<name> is missing"),
        (xml(name="a/b"), "cannot be used"),
        (xml(uuid_element="<uuid>nope</uuid>"), "is not a UUID"),
        (xml(memory="lots"), "not a whole number"),
        (xml(memory="0"), "must be positive"),
        (xml(unit="parsecs"), "not a libvirt memory unit"),
        ("<domain type='kvm'><name>x</name></domain>", "<memory> is missing"),
        (xml(vcpu="<vcpu>0</vcpu>"), "<vcpu> must be positive"),
    ],
)
def test_bad_xml_is_refused_with_a_reason(text, message):
    with pytest.raises(InvalidVm, match=message):
        parse_domain_xml(text)


@pytest.mark.parametrize(
    "name",
    [
        "bad\x01name",
        "tab\tname",
        "new\nline",
        "a" * 100_000,
        "a" * (MAX_VM_NAME + 1),
        "wébé",
        "☃",
        "-lead",
        ".x",
        "a b",
        "x;rm",
        "a/b",
        "..",
        "$(reboot)",
    ],
)
def test_vm_names_outside_the_rule_are_refused(name):
    with pytest.raises(InvalidVm, match="cannot be used") as refused:
        check_vm_name(name)
    assert "\n" not in str(refused.value) and len(str(refused.value)) < 200


@pytest.mark.parametrize("name", ["vm1", "web-01.example", "a_b", "A" * MAX_VM_NAME, "0"])
def test_vm_names_within_the_rule(name):
    assert check_vm_name(name) == name


def test_names_in_the_xml_follow_the_rule():
    with pytest.raises(InvalidVm, match="longer than 64 characters"):
        parse_domain_xml(xml(name="a" * 100_000))
    with pytest.raises(InvalidVm, match="malformed domain XML"):
        parse_domain_xml(xml(name="bad&#1;name"))
    with pytest.raises(InvalidVm, match="only letters, digits"):
        parse_domain_xml(xml(name="bad&#9;name"))
    with pytest.raises(InvalidVm, match="only letters, digits"):
        parse_domain_xml(xml(name="&#x2603;"))


def test_names_an_older_pvc_may_have_stored_stay_reachable():
    assert may_be_stored("wébé") and may_be_stored("my vm") and may_be_stored("a" * 1000)
    assert not may_be_stored("bad\x01name") and not may_be_stored("a/b") and not may_be_stored("..")
    assert not may_be_stored("") and not may_be_stored(" x")


def test_node_names():
    assert check_node_name("hv1.example.org") == "hv1.example.org"
    for bad in ("", "hv\x01", "a" * 254, "hv 1", "☃", "hv/1"):
        with pytest.raises(InvalidVm):
            check_node_name(bad)


def test_shown_keeps_messages_short():
    assert shown("vm1") == "'vm1'"
    assert shown("a" * 100_000) == repr("a" * 40) + "... (100000 characters)"


def test_domain_xml_size_limit():
    padding = "x" * (2 * 1024 * 1024)
    with pytest.raises(InvalidVm, match=f"at most {MAX_DOMAIN_XML_BYTES} bytes"):
        parse_domain_xml(xml().replace("</domain>", f"<description>{padding}</description></domain>"))
    fits = xml().replace("</domain>", "<description></description></domain>")
    room = MAX_DOMAIN_XML_BYTES - len(fits.encode())
    assert parse_domain_xml(fits.replace("<description>", "<description>" + "x" * room)).name == "vm1"
    # Adding the UUID may not push the stored XML over the limit either.
    at_limit = xml(uuid_element="").replace("</domain>", "<description></description></domain>")
    room = MAX_DOMAIN_XML_BYTES - len(at_limit.encode())
    at_limit = at_limit.replace("<description>", "<description>" + "x" * room)
    with pytest.raises(InvalidVm, match="at most"):
        parse_domain_xml(at_limit)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "domain XML is empty"),
        ("  \n", "domain XML is empty"),
        ("<!DOCTYPE domain [<!ENTITY a 'x'>]><domain type='kvm'><name>&a;</name></domain>", "DOCTYPE"),
        (xml(memory="1_000"), "'1_000' is not a whole number"),
        (xml(memory="+5"), "not a whole number"),
        (xml(memory="1" + "0" * 400), "far too large"),
        (xml(memory="9" * 5000), "far too large"),
        (xml(memory="5", unit="EiB"), "more than any host has"),
        (xml(vcpu="<vcpu>99999999999</vcpu>"), "more than KVM allows"),
        (xml(vcpu="<vcpu current='x'>2</vcpu>"), "<vcpu> 'x' is not a whole number"),
    ],
)
def test_more_bad_xml_is_refused_in_one_short_line(text, message):
    with pytest.raises(InvalidVm, match=message) as refused:
        parse_domain_xml(text)
    assert "\n" not in str(refused.value) and len(str(refused.value)) < 200


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_any_text_is_a_domain_or_refused(text):
    """Whatever an operator hands in is a DomainSpec or an InvalidVm, never another exception."""
    try:
        spec = parse_domain_xml(text)
    except InvalidVm:
        return
    assert check_vm_name(spec.name) == spec.name


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_any_name_in_a_domain_is_checked(name):
    escaped = name.replace("&", "&amp;").replace("<", "&lt;")
    try:
        spec = parse_domain_xml(xml(name=escaped))
    except InvalidVm:
        return
    assert check_vm_name(spec.name) == spec.name


def test_a_vm_must_fit_its_node():
    check_fits_node("vm1", 16384, "hv1", 16384)
    check_fits_node("vm1", 10**6, "hv1", None)
    with pytest.raises(InvalidVm, match="VM vm1 needs 16385 MiB of memory; node hv1 has only 16384 MiB in total"):
        check_fits_node("vm1", 16385, "hv1", 16384)


def record(**changes) -> VmRecord:
    base = new_record(parse_domain_xml(xml()), "hv1")
    return VmRecord(**{**base.__dict__, **changes})


def view(status=STATUS_NEW, migration=None, **changes) -> VmView:
    return VmView(record(**changes), 3, status, 2, migration, 0 if migration else None)


def test_new_record_is_stopped_and_validates_options():
    assert record().state == VmState.STOP
    with pytest.raises(InvalidVm, match="unknown target selector"):
        new_record(parse_domain_xml(xml()), "hv1", node_selector="cheapest")
    with pytest.raises(InvalidVm, match="unknown migration method"):
        new_record(parse_domain_xml(xml()), "hv1", migration_method="teleport")


def test_json_round_trips():
    original = record(
        state=VmState.FAIL,
        reason="x",
        lastnode="hv2",
        node_limit=("hv1", "hv2"),
        node_selector="vms",
        node_autostart=True,
        migration_method=MigrationMethod.SHUTDOWN,
    )
    assert VmRecord.from_json(original.to_json()) == original
    status = VmStatus("hv1", ActualState.RUNNING, "ok")
    assert VmStatus.from_json(status.to_json()) == status
    migration = Migration("id", MoveKind.MIGRATE, "hv1", "hv2", MigrationMethod.LIVE, MovePhase.REQUESTED, "hv3")
    assert Migration.from_json(migration.to_json()) == migration
    assert migration.to_json()["from"] == "hv1" and migration.to_json()["to"] == "hv2"


def test_migration_stats_travel_from_the_release_to_the_record():
    stats = MigrationStats("hv1", "hv2", JobFigures(time_ms=2480, downtime_ms=21, data_bytes=None))
    migration = Migration("id", MoveKind.MIGRATE, "hv1", "hv2", MigrationMethod.LIVE, MovePhase.REQUESTED)
    released = migration.released("live", stats)
    assert Migration.from_json(released.to_json()).stats == stats
    arrived = record(last_migration=stats)
    assert VmRecord.from_json(arrived.to_json()) == arrived
    assert arrived.to_json()["last_migration"] == {
        "source": "hv1",
        "target": "hv2",
        "time_ms": 2480,
        "downtime_ms": 21,
        "data_bytes": None,
    }


@pytest.mark.parametrize("damaged", ["fast", {"source": "hv1"}, {"source": "hv1", "target": "hv2", "time_ms": -5}])
def test_damaged_migration_stats_are_dropped_not_fatal(damaged):
    value = record().to_json() | {"last_migration": damaged}
    assert VmRecord.from_json(value).last_migration is None


def test_damaged_values_raise_invalid_vm():
    with pytest.raises(InvalidVm):
        VmRecord.from_json({"name": "x"})
    with pytest.raises(InvalidVm):
        VmRecord.from_json({**record().to_json(), "state": "levitate"})
    with pytest.raises(InvalidVm):
        Migration.from_json({"id": "x"})


@pytest.mark.parametrize(
    "current, wanted",
    [
        (VmState.STOP, VmState.START),
        (VmState.FAIL, VmState.START),
        (VmState.START, VmState.RESTART),
        (VmState.START, VmState.SHUTDOWN),
        (VmState.RESTART, VmState.STOP),
        (VmState.START, VmState.DISABLE),
    ],
)
def test_allowed_state_changes(current, wanted):
    assert state_change(view(state=current, reason="old"), wanted).state == wanted
    assert state_change(view(state=current, reason="old"), wanted).reason is None


@pytest.mark.parametrize(
    "current, wanted, message",
    [
        (VmState.STOP, VmState.RESTART, "restart needs it to be start"),
        (VmState.RESTART, VmState.START, "start needs it to be"),
        (VmState.STOP, VmState.SHUTDOWN, "shutdown needs"),
        (VmState.START, VmState.MIGRATE, "not a state an operator sets"),
    ],
)
def test_refused_state_changes(current, wanted, message):
    with pytest.raises(InvalidVm, match=message):
        state_change(view(state=current), wanted)


def test_same_state_is_nothing_to_do():
    with pytest.raises(NothingToDo):
        state_change(view(state=VmState.START), VmState.START)


def test_only_stop_and_disable_while_moving():
    migration = Migration("id", MoveKind.MIGRATE, "hv1", "hv2", MigrationMethod.LIVE, MovePhase.REQUESTED)
    moving = view(state=VmState.MIGRATE, node="hv2", migration=migration)
    with pytest.raises(InvalidVm, match="moving from hv1 to hv2"):
        state_change(moving, VmState.RESTART)
    assert state_change(moving, VmState.STOP).state == VmState.STOP


def test_move_targets():
    assert move_target(view(state=VmState.START), MoveKind.MIGRATE, "hv2") == "hv2"
    assert move_target(view(state=VmState.START), MoveKind.MIGRATE, None) is None
    with pytest.raises(InvalidVm, match="already on hv1"):
        move_target(view(state=VmState.START), MoveKind.MIGRATE, "hv1")
    with pytest.raises(InvalidVm, match="already migrated from hv3"):
        move_target(view(state=VmState.START, lastnode="hv3"), MoveKind.MIGRATE, "hv2")
    assert move_target(view(state=VmState.START, lastnode="hv3"), MoveKind.MIGRATE, "hv2", force=True) == "hv2"
    assert move_target(view(state=VmState.START, lastnode="hv3"), MoveKind.UNMIGRATE, None) == "hv3"
    with pytest.raises(InvalidVm, match="has not been migrated"):
        move_target(view(state=VmState.START), MoveKind.UNMIGRATE, None)
    with pytest.raises(InvalidVm, match="busy"):
        move_target(view(state=VmState.RESTART), MoveKind.MOVE, "hv2")


def test_lastnode_rules():
    plain = record(node="hv1")
    assert next_lastnode(plain, MoveKind.MIGRATE, "hv2") == "hv1"
    assert next_lastnode(record(node="hv2", lastnode="hv1"), MoveKind.MIGRATE, "hv3") == "hv1"
    assert next_lastnode(record(node="hv2", lastnode="hv1"), MoveKind.MIGRATE, "hv1") is None
    assert next_lastnode(record(node="hv2", lastnode="hv1"), MoveKind.UNMIGRATE, "hv1") is None
    assert next_lastnode(record(node="hv2", lastnode="hv1"), MoveKind.MOVE, "hv3") is None


def test_running_vm_moves_with_a_handshake():
    new, migration = moved(
        view(state=VmState.START, status=VmStatus("hv1", ActualState.RUNNING)), MoveKind.MIGRATE, "hv2", "m1", "hv1"
    )
    assert (new.node, new.lastnode, new.state) == ("hv2", "hv1", VmState.MIGRATE)
    assert migration is not None
    assert (migration.source, migration.target, migration.phase) == ("hv1", "hv2", MovePhase.REQUESTED)
    new, _ = moved(view(state=VmState.START, lastnode="hv2"), MoveKind.UNMIGRATE, "hv2", "m2", None)
    assert new.state == VmState.UNMIGRATE


def test_stopped_vm_moves_directly_but_keeps_its_state():
    stopped = view(state=VmState.STOP, status=VmStatus("hv1", ActualState.STOPPED))
    assert not needs_handshake(stopped)
    new, migration = moved(stopped, MoveKind.MOVE, "hv2", "m1", None)
    assert migration is None and new.state == VmState.STOP and new.node == "hv2"
    # Stopped in ZooKeeper but still reported active: it may still run, so the node must release it.
    assert needs_handshake(view(state=VmState.STOP, status=VmStatus("hv1", ActualState.STOPPING)))
    # About to be started by its node: a handshake too.
    assert needs_handshake(view(state=VmState.START))


def test_after_fence():
    from pvcd.cluster.vm_records import after_fence

    dead = "hv1"
    running = VmStatus(dead, ActualState.RUNNING)
    record_, migration, status = after_fence(view(state=VmState.START, status=running), dead, "hv2")
    assert (record_.node, record_.lastnode, record_.state, migration) == ("hv2", "hv1", VmState.START, None)
    assert status == VmStatus(dead, ActualState.STOPPED, "node hv1 was fenced")
    # Migrated here earlier: the home node stays lastnode.
    record_, _, _ = after_fence(view(state=VmState.START, lastnode="hv3", status=running), dead, "hv2")
    assert record_.lastnode == "hv3"
    # Stopped VMs move too, stopped; a shutdown in progress ends stopped.
    assert after_fence(view(state=VmState.STOP), dead, "hv2")[0].state == VmState.STOP
    assert after_fence(view(state=VmState.SHUTDOWN, status=running), dead, "hv2")[0].state == VmState.STOP
    # Nowhere to go: fail, stays on the dead node.
    record_, _, _ = after_fence(view(state=VmState.START, status=running), dead, None)
    assert record_.state == VmState.FAIL and record_.node == dead and "fenced" in record_.reason
    # Leaving the dead node: released to its target, which finishes the move.
    leaving = Migration("m", MoveKind.MIGRATE, dead, "hv2", MigrationMethod.LIVE, MovePhase.MIGRATING)
    record_, migration, _ = after_fence(
        view(state=VmState.MIGRATE, node="hv2", status=running, migration=leaving), dead, None
    )
    assert record_.node == "hv2" and migration.phase == MovePhase.RELEASED and migration.how == "fenced"
    # Arriving at the dead node: the move is over, the VM goes to the replacement.
    arriving = Migration("m", MoveKind.MIGRATE, "hv3", dead, MigrationMethod.LIVE, MovePhase.RELEASED)
    record_, migration, _ = after_fence(view(state=VmState.MIGRATE, node=dead, migration=arriving), dead, "hv2")
    assert (record_.node, record_.state, migration) == ("hv2", VmState.START, None)


def test_after_fence_never_frees_a_vm_its_live_source_may_still_run():
    from pvcd.cluster.vm_records import after_fence

    source_running = VmStatus("hv3", ActualState.RUNNING)
    to_dead = Migration("m", MoveKind.MIGRATE, "hv3", "hv1", MigrationMethod.LIVE, MovePhase.REQUESTED, "hv9")
    moving = view(state=VmState.MIGRATE, node="hv1", lastnode="hv3", status=source_running, migration=to_dead)
    record_, migration, status = after_fence(moving, "hv1", "hv2")
    assert record_.node == "hv2" and migration.target == "hv2" and migration.source == "hv3"
    assert status == source_running
    record_, migration, status = after_fence(moving, "hv1", None)
    assert (record_.node, record_.lastnode, record_.state, migration) == ("hv3", "hv9", VmState.START, None)
    assert status == source_running
