"""What Ceph's JSON answers mean (answers recorded from the test suite's Ceph 16.2.15), and the
validation of names, sizes and addresses: bad input is refused with one line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pvcd.cluster.vm_records import shown
from pvcd.storage import values
from pvcd.storage.values import BlocklistEntry, HealthCheck, Lock, Parent, Watcher

ANSWERS = Path(__file__).parent / "ceph_answers"
"""Standard output of each command as Ceph 16.2.15 printed it (pool vms: base with snapshots
s1 protected and s2, linked cloned from base@s1; an advisory lock; one blocklisted address)."""


def answer(name: str) -> str:
    return (ANSWERS / name).read_text()


STATUS = answer("status.json")
STATUS_WARN = STATUS.replace(
    '"health":{"status":"HEALTH_OK","checks":{}',
    '"health":{"status":"HEALTH_WARN","checks":{"POOL_APP_NOT_ENABLED":{"severity":"HEALTH_WARN","summary":'
    '{"message":"1 pool(s) do not have an application enabled","count":1},"muted":false}}',
)
DF = answer("df.json")
OSD_DF = answer("osd_df.json")
POOL_DETAIL = answer("pool_ls_detail.json")
RBD_LS = answer("rbd_ls_l.json")
RBD_DU = answer("rbd_du.json")
RBD_INFO = answer("rbd_info.json")
SNAP_LS = answer("rbd_snap_ls.json")
LOCK_LS = answer("rbd_lock_ls.json")
BLOCKLIST = answer("blocklist_ls.json")
STATUS_WATCHERS = '{"watchers":[{"address":"127.0.0.1:0/1387426351","client":4171,"cookie":139870413407872}]}'
"""The shapes below are Ceph's, not recorded here: a watched volume, the lock listing of releases
before Pacific (an object keyed by cookie), and a blocklist with a range entry (its second array)."""
LOCK_LS_OLD = '{"mycookie":{"locker":"client.4173","address":"127.0.0.1:0/478399278"}}'
BLOCKLIST_WITH_RANGE = (
    '[{"addr":"127.0.0.1:0/12345","until":"2026-11-27T12:27:03.736952+0000"}]\n'
    '[{"addr":"127.0.0.0:0/32","until":"2026-11-27T13:08:45.000000+0000"}]'
)


def test_status() -> None:
    status = values.parse_status(STATUS)
    assert (status.fsid, status.health.status, status.health.checks) == (
        "5de573a3-4d18-49a5-b09d-7a39388ef6b3",
        "HEALTH_OK",
        (),
    )
    assert (status.osds, status.osds_up, status.osds_in, status.mgr_available, status.pgs) == (1, 1, 1, True, 9)
    assert (status.total_bytes, status.used_bytes, status.avail_bytes) == (1073741824, 20127, 1073721697)


def test_status_warnings() -> None:
    health = values.parse_status(STATUS_WARN).health
    assert health.status == "HEALTH_WARN"
    assert health.checks == (
        HealthCheck("POOL_APP_NOT_ENABLED", "HEALTH_WARN", "1 pool(s) do not have an application enabled"),
    )
    assert health.errors == ()


def test_status_before_pacific_nests_the_osdmap() -> None:
    nested = STATUS.replace('"osdmap":{"epoch":13,', '"osdmap":{"osdmap":{"epoch":13,').replace(
        '"num_remapped_pgs":0}', '"num_remapped_pgs":0}}'
    )
    assert values.parse_status(nested).osds_up == 1


def test_health_errors_are_told_apart() -> None:
    health = values.parse_health(
        {"status": "HEALTH_ERR", "checks": {"OSD_FULL": {"severity": "HEALTH_ERR", "summary": {"message": "full"}}}}
    )
    assert health.errors == (HealthCheck("OSD_FULL", "HEALTH_ERR", "full"),)


def test_df() -> None:
    usage = values.parse_df(DF)
    assert (usage.total_bytes, usage.used_bytes, usage.avail_bytes) == (1073741824, 20127, 1073721697)
    vms = usage.pools[1]
    assert (vms.name, vms.id, vms.stored_bytes, vms.objects, vms.max_avail_bytes) == ("vms", 2, 8, 1, 1020034240)


def test_osd_df() -> None:
    (osd,) = values.parse_osd_df(OSD_DF)
    assert (osd.id, osd.name, osd.up, osd.in_, osd.pgs) == (0, "osd.0", True, True, 9)
    assert (osd.total_bytes, osd.used_bytes, osd.avail_bytes) == (1073741824, 1048 * 1024, 1047527 * 1024)


def test_osd_down_and_out() -> None:
    down_out = OSD_DF.replace('"status":"up"', '"status":"down"').replace('"reweight":1', '"reweight":0')
    (osd,) = values.parse_osd_df(down_out)
    assert (osd.up, osd.in_) == (False, False)


def test_pools_join_settings_and_usage() -> None:
    pools = values.join_pools(values.parse_pool_details(POOL_DETAIL), values.parse_df(DF))
    assert [pool.name for pool in pools] == ["device_health_metrics", "vms"]
    vms = pools[1]
    assert (vms.id, vms.size, vms.pg_num, vms.applications, vms.stored_bytes) == (2, 1, 8, ("rbd",), 8)


def test_a_pool_ceph_df_does_not_count_yet_has_no_usage() -> None:
    (pool,) = values.join_pools(values.parse_pool_details(POOL_DETAIL)[1:], values.parse_df(DF.replace('"vms"', '"x"')))
    assert (pool.stored_bytes, pool.objects) == (0, 0)


def test_pool_names() -> None:
    assert values.parse_pool_names(answer("rados_lspools.txt")) == ("device_health_metrics", "vms")


def test_volumes_skip_snapshot_lines_and_carry_parents() -> None:
    base, linked = values.parse_volume_list("vms", RBD_LS, RBD_DU)
    assert (base.name, base.size_bytes, base.used_bytes, base.parent) == ("base", 2097152, 0, None)
    assert linked.parent == Parent(pool="vms", volume="base", snapshot="s1")
    assert (linked.size_bytes, linked.used_bytes, linked.format) == (2097152, 0, 2)


def test_volume_info() -> None:
    info = values.parse_volume_info(RBD_INFO)
    assert (info.name, info.size_bytes, info.snapshot_count) == ("linked", 2097152, 0)
    assert info.parent == Parent("vms", "base", "s1")
    assert "exclusive-lock" in info.features


def test_snapshots_protected_is_a_string() -> None:
    s1, s2 = values.parse_snapshots(SNAP_LS)
    assert (s1.name, s1.id, s1.size_bytes, s1.protected) == ("s1", 4, 2097152, True)
    assert (s2.name, s2.protected, s2.timestamp) == ("s2", False, "Fri Nov 27 12:17:01 2026")


def test_watchers() -> None:
    assert values.parse_watchers(STATUS_WATCHERS) == (Watcher("127.0.0.1:0/1387426351", "client.4171"),)
    assert values.parse_watchers('{"watchers":[]}') == ()


@pytest.mark.parametrize("text", [LOCK_LS, LOCK_LS_OLD])
def test_locks_in_both_formats(text: str) -> None:
    assert values.parse_locks(text) == (Lock("client.4173", "mycookie", "127.0.0.1:0/478399278"),)


def test_blocklist_two_arrays_back_to_back() -> None:
    assert values.parse_blocklist(BLOCKLIST) == (
        BlocklistEntry("127.0.0.1:0/12345", "2026-11-27T12:27:03.736952+0000"),
    )
    entries = values.parse_blocklist(BLOCKLIST_WITH_RANGE)
    assert [(entry.address, entry.range) for entry in entries] == [
        ("127.0.0.1:0/12345", False),
        ("127.0.0.0:0/32", True),
    ]
    assert values.parse_blocklist("[]") == ()


@pytest.mark.parametrize(
    ("parser", "text", "message"),
    [
        (values.parse_status, "not json", "ceph status: not JSON"),
        (values.parse_df, "[]", "ceph df: expected a JSON object, got list"),
        (values.parse_snapshots, "{}", "rbd snap ls: expected a JSON array, got dict"),
        (values.parse_blocklist, "[][", "ceph osd blocklist ls: not JSON"),
        (values.parse_osd_df, '{"nodes":[{"id":"zero"}]}', "ceph osd df: id missing or not a number"),
    ],
)
def test_surprising_answers_are_one_line_errors(parser: object, text: str, message: str) -> None:
    with pytest.raises(ValueError) as error:
        parser(text)  # type: ignore[operator]
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("text", "size"),
    [("1024", 1024), (4096, 4096), ("512M", 512 << 20), ("10G", 10 << 30), ("4KiB", 4096), ("1TB", 1 << 40), ("7B", 7)],
)
def test_sizes(text: str | int, size: int) -> None:
    assert values.parse_size(text) == size


@pytest.mark.parametrize("text", ["0", 0, -1, "ten", "1.5G", "10X", "", "G", True])
def test_bad_sizes(text: object) -> None:
    with pytest.raises(ValueError, match="^invalid size") as error:
        values.parse_size(text)  # type: ignore[arg-type]
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", ["vms", "vm1_disk0", "a.b-c+d", "A" * 100])
def test_good_names(name: str) -> None:
    assert values.validate_name("volume", name) == name


@pytest.mark.parametrize("name", ["", "a/b", "a@b", "-x", ".hidden", "a b", "A" * 101, "é"])
def test_bad_names(name: str) -> None:
    with pytest.raises(ValueError, match=f"^invalid snapshot name {re.escape(shown(name))}:"):
        values.validate_name("snapshot", name)


def test_a_huge_bad_name_makes_a_short_line() -> None:
    with pytest.raises(ValueError) as error:
        values.validate_name("pool", "x" * 100_000 + "/")
    assert len(str(error.value)) < 200 and "100001 characters" in str(error.value)


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.1:0/1387426351", "10.0.0.5:6800", "[::1]:0/42", "::1"])
def test_good_addresses(address: str) -> None:
    assert values.validate_address(address) == address


@pytest.mark.parametrize("address", ["nowhere", "127.0.0.1:x/1", "300.1.1.1", "127.0.0.1:70000", "[::1]x", ""])
def test_bad_addresses(address: str) -> None:
    with pytest.raises(ValueError, match="^invalid client address"):
        values.validate_address(address)


def test_lockers() -> None:
    assert values.validate_locker("client.4171") == "client.4171"
    with pytest.raises(ValueError, match="^invalid lock holder 'osd.0'"):
        values.validate_locker("osd.0")


def test_error_line_is_the_tools_own_line() -> None:
    from pvcd.storage.ceph import _describe, _error_line

    assert _error_line(answer("rbd_create_exists.stderr"), 17) == "rbd: create error: (17) File exists"
    assert _error_line("2026-11-27T12:08:45.123+0000 7f3c2a1b4380 -1 librbd: no such pool\n", 2) == (
        "librbd: no such pool"
    )
    assert _error_line("", 1) == "exited with status 1"
    assert _describe("rbd", ["create", "--size", "1024B", "--no-progress", "vms/disk2"]) == "rbd create vms/disk2"
    assert _describe("rbd", ["du", "--pool", "vms", "--format", "json"]) == "rbd du vms"


def test_error_line_rejoins_the_tools_line_a_library_log_line_cut_in_two() -> None:
    """What CI saw: librbd's log line began in the middle of rbd's own line on stderr."""
    from pvcd.storage.ceph import _error_line

    stderr = (
        "rbd: create error: 2026-11-27T12:08:45.123+0000 7f3c2a1b4380 -1 librbd: image already exists\n"
        "2026-11-27T12:08:45.124+0000 7f3c2a1b4380 -1 librbd: another line\n"
        "(17) File exists\n"
    )
    assert _error_line(stderr, 17) == "rbd: create error: (17) File exists"
    whole = "rbd: create error: (17) File exists\n2026-11-27T12:08:45.124+0000 7f3c2a1b4380 -1 librbd: later\n"
    assert _error_line(whole, 17) == "rbd: create error: (17) File exists"
