"""The storage record (issue 13): its shape from parsed Ceph answers, a failed refresh keeping the
previous figures, the fault, the keepalive's storage line; and the service and follower on the
in-memory store with a Ceph double (the real Ceph is in tests/integration/test_storage_status.py)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from pvcd.storage import values
from pvcd.storage.ceph import CephError
from pvcd.storage.status import (
    FAULT,
    StorageFollower,
    StorageStatus,
    build_record,
    failed_record,
    fault_of,
    read_figures,
    storage_text,
)
from pvcd.supervisor import Supervisor
from pvcd.zk import schema
from pvcd.zk.memory import MemoryServer, MemoryStore

ANSWERS = Path(__file__).parent / "ceph_answers"
GiB = 1 << 30


def answer(name: str) -> str:
    return (ANSWERS / name).read_text()


STATUS = values.parse_status(answer("status.json"))
USAGE = values.parse_df(answer("df.json"))
OSDS = values.parse_osd_df(answer("osd_df.json"))
POOLS = values.join_pools(values.parse_pool_details(answer("pool_ls_detail.json")), USAGE)
VOLUMES = values.parse_volume_list("vms", answer("rbd_ls_l.json"), answer("rbd_du.json"))


def good_record(refreshed_ms: int = 1000, partial: str | None = None) -> dict[str, Any]:
    return build_record(refreshed_ms, 1.23456, STATUS, USAGE, OSDS, [(pool, VOLUMES) for pool in POOLS], partial)


def test_record_from_parsed_answers() -> None:
    record = good_record()
    assert record["ok"] is True and record["error"] is None and record["stale_since_ms"] is None
    assert (record["refreshed_ms"], record["took_s"], record["partial"]) == (1000, 1.235, None)
    assert record["cluster"]["health"] == STATUS.health.status
    assert record["cluster"]["osds"] == {"total": STATUS.osds, "up": STATUS.osds_up, "in": STATUS.osds_in}
    assert record["usage"] == {
        "total_bytes": USAGE.total_bytes,
        "used_bytes": USAGE.used_bytes,
        "avail_bytes": USAGE.avail_bytes,
    }
    assert [osd["name"] for osd in record["osds"]] == [osd.name for osd in OSDS]
    (vms,) = [pool for pool in record["pools"] if pool["name"] == "vms"]
    assert set(vms) >= {"size", "pgs", "stored_bytes", "used_bytes", "max_avail_bytes", "volumes"}
    by_name = {volume["name"]: volume for volume in vms["volumes"]}
    assert by_name["base"]["size_bytes"] == next(v.size_bytes for v in VOLUMES if v.name == "base")
    assert by_name["linked"]["parent"] == {"pool": "vms", "volume": "base", "snapshot": "s1"}
    assert by_name["base"]["parent"] is None


def test_a_failed_refresh_keeps_the_figures_marked_stale() -> None:
    first = failed_record(good_record(1000), "ceph status: no answer from Ceph within 10s", 5000, 10.0)
    assert (first["ok"], first["error"], first["stale_since_ms"], first["tried_ms"]) == (
        False,
        "ceph status: no answer from Ceph within 10s",
        5000,
        5000,
    )
    assert first["refreshed_ms"] == 1000 and first["pools"] == good_record()["pools"]
    second = failed_record(first, "ceph status: no answer from Ceph within 10s", 9000, 10.0)
    assert (second["stale_since_ms"], second["tried_ms"], second["refreshed_ms"]) == (5000, 9000, 1000)
    nothing = failed_record(None, "ceph status: cannot run ceph: No such file or directory", 7000, 0.01)
    assert nothing["ok"] is False and nothing["cluster"] is None and nothing["pools"] is None
    assert nothing["stale_since_ms"] == 7000


def test_fault_only_while_refreshes_fail() -> None:
    assert fault_of(good_record()) is None
    fault = fault_of(failed_record(good_record(), "ceph status: no answer from Ceph within 2s", 3000, 2.0))
    assert fault == {
        "reason": "Ceph figures not refreshed: ceph status: no answer from Ceph within 2s",
        "since_ms": 3000,
    }


def test_sizes() -> None:
    assert [values.size_text(n) for n in (0, 512, 2048, 12 * GiB, 100 * GiB, 1536 * GiB)] == [
        "0 B",
        "512 B",
        "2.0 KiB",
        "12.0 GiB",
        "100 GiB",
        "1.5 TiB",
    ]


def record_of(used: int, total: int, pools: int, volumes_each: int, osds: list[tuple[bool, bool]]) -> dict[str, Any]:
    return {
        "ok": True,
        "refreshed_ms": 0,
        "cluster": {"health": "HEALTH_OK", "checks": []},
        "usage": {"total_bytes": total, "used_bytes": used, "avail_bytes": total - used},
        "osds": [{"up": up, "in": in_} for up, in_ in osds],
        "pools": [{"name": f"p{n}", "volumes": [{}] * volumes_each} for n in range(pools)],
        "partial": None,
        "error": None,
    }


def test_log_line_of_a_fresh_record() -> None:
    record = record_of(12 * GiB, 100 * GiB, 3, 5, [(True, True)])
    assert storage_text(record, 2.2) == (
        "HEALTH_OK; 1/1 OSDs up and in; 12.0 GiB used of 100 GiB (12%); 3 pools, 15 volumes; figures 2s old"
    )
    record = record_of(0, 0, 0, 0, [(True, True), (False, True), (False, False)])
    record["cluster"] = {"health": "HEALTH_WARN", "checks": [{"code": "OSD_DOWN"}, {"code": "PG_DEGRADED"}]}
    record["partial"] = "refresh deadline passed: volumes of 1 pool(s) not read (p9)"
    assert storage_text(record, 400) == (
        "HEALTH_WARN (OSD_DOWN, PG_DEGRADED); 1/3 OSDs up, 2/3 in; 0 B used of 0 B; 0 pools, 0 volumes; "
        "partial: refresh deadline passed: volumes of 1 pool(s) not read (p9); figures 7min old"
    )


def test_log_line_without_fresh_figures() -> None:
    assert storage_text(None, None) == "no figures: the primary has not recorded any yet"
    error = "ceph status: no answer from Ceph within 10s"
    assert storage_text(failed_record(None, error, 1, 10.0), 3.0) == f"no figures: {error}"
    stale = failed_record(record_of(GiB, 10 * GiB, 1, 1, [(True, True)]), error, 1, 10.0)
    assert storage_text(stale, 40.0) == (
        f"STALE ({error}); figures 40s old: HEALTH_OK; 1/1 OSDs up and in; 1.0 GiB used of 10.0 GiB (10%); "
        "1 pools, 1 volumes"
    )


class FakeCeph:
    """The adapter's reads from the recorded answers; `fail` makes every call raise as a stopped mon does."""

    def __init__(self) -> None:
        self.fail: str | None = None
        self.volume_reads: list[str] = []

    def _check(self) -> None:
        if self.fail is not None:
            raise CephError(self.fail)

    def status(self) -> values.ClusterStatus:
        self._check()
        return STATUS

    def usage(self) -> values.ClusterUsage:
        self._check()
        return USAGE

    def osds(self) -> tuple[values.Osd, ...]:
        self._check()
        return OSDS

    def run(self, tool: str, args: list[str], timeout: float | None = None) -> str:
        self._check()
        assert (tool, args[:4]) == ("ceph", ["osd", "pool", "ls", "detail"])
        return answer("pool_ls_detail.json")

    def volumes(self, pool: str) -> tuple[values.Volume, ...]:
        self._check()
        self.volume_reads.append(pool)
        return VOLUMES


def test_read_figures_stops_reading_volumes_past_the_deadline() -> None:
    ceph = FakeCeph()
    *_, pools, partial = read_figures(ceph, 50.0, clock=lambda: 10.0)  # type: ignore[arg-type]
    assert ceph.volume_reads == ["vms"] and partial is None
    assert [(pool.name, volumes) for pool, volumes in pools] == [("device_health_metrics", []), ("vms", VOLUMES)]

    ceph = FakeCeph()
    *_, pools, partial = read_figures(ceph, 50.0, clock=lambda: 60.0)  # type: ignore[arg-type]
    assert ceph.volume_reads == [] and [volumes for _, volumes in pools] == [None, None]
    assert partial == "refresh deadline passed: volumes of 2 pool(s) not read (device_health_metrics, vms)"


@pytest.fixture
def store() -> MemoryStore:
    store = MemoryStore(MemoryServer())
    store.start()
    return store


def test_service_records_fails_keeps_figures_sets_and_clears_the_fault(store: MemoryStore) -> None:
    ceph = FakeCeph()
    service = StorageStatus(store, ceph, 5, Supervisor("hv1"))  # type: ignore[arg-type]
    follower = StorageFollower(store)
    follower.start()
    assert follower.log_line() == "Storage: no figures: the primary has not recorded any yet"

    written = service.refresh()
    assert written is not None
    found = store.get(schema.STORAGE_STATUS)
    assert found is not None and found.value == written and written["ok"] is True
    assert follower.log_line().startswith("Storage: HEALTH_OK; 1/1 OSDs up and in; ")
    faults = store.get(schema.FAULTS)
    assert faults is None or FAULT not in faults.value

    ceph.fail = "ceph status: no answer from Ceph within 10s"
    failed = service.refresh()
    assert failed is not None and failed["ok"] is False and failed["pools"] == written["pools"]
    faults = store.get(schema.FAULTS)
    assert faults is not None and faults.value[FAULT]["reason"].endswith(ceph.fail)
    assert follower.log_line().startswith(f"Storage: STALE ({ceph.fail}); figures ")

    ceph.fail = None
    assert service.refresh()["ok"] is True  # type: ignore[index]
    faults = store.get(schema.FAULTS)
    assert faults is not None and FAULT not in faults.value


def test_a_new_primary_keeps_the_figures_of_the_last_one(store: MemoryStore) -> None:
    ceph = FakeCeph()
    written = StorageStatus(store, ceph, 5, Supervisor("hv1")).refresh()  # type: ignore[arg-type]
    ceph.fail = "ceph status: no answer from Ceph within 10s"
    failed = StorageStatus(store, ceph, 5, Supervisor("hv2")).refresh()  # type: ignore[arg-type]
    assert failed is not None and written is not None
    assert failed["ok"] is False and failed["pools"] == written["pools"]


def test_nothing_is_written_once_stopped(store: MemoryStore) -> None:
    stop = threading.Event()
    stop.set()
    assert StorageStatus(store, FakeCeph(), 5, Supervisor("hv1")).refresh(stop) is None  # type: ignore[arg-type]
    assert store.get(schema.STORAGE_STATUS) is None
