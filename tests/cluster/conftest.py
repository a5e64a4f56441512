"""Fixtures of the whole-cluster tests (the harness is in harness.py).

Every cluster a test starts is checked when the test ends, before it is
stopped: `pvc-devcluster check` must report no VM that ran on two hosts at any
moment of the test. Tests that expect every VM to run call
`Cluster.assert_clean()` themselves, which also wants each VM whose desired
state is `start` running on exactly one host.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness import INTERVAL, WINDOW, Cluster

from helpers import bin_path

MakeCluster = Callable[..., Cluster]


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[MakeCluster]:
    """Start clusters; when the test ends, check each for double runs, then stop it."""
    started: list[Cluster] = []

    def make(
        nodes: int = 3, *extra: str, fence_intervals: int = WINDOW, interval: int = INTERVAL, cwd: Path | None = None
    ) -> Cluster:
        workdir = tmp_path / f"c{len(started)}"
        result = subprocess.run(
            [
                bin_path("pvc-devcluster"),
                "up",
                "--nodes",
                str(nodes),
                "--workdir",
                str(workdir),
                "--keepalive-interval",
                str(interval),
                "--fence-intervals",
                str(fence_intervals),
                "--detach",
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=cwd,
        )
        assert result.returncode == 0, result.stderr
        cluster = Cluster(workdir, json.loads((workdir / "cluster.json").read_text()))
        started.append(cluster)
        cluster.primary()
        return cluster

    yield make
    reports = []
    for cluster in started:
        if cluster.stopped:
            continue
        try:
            reports.append(cluster.check())
        finally:
            cluster.down()
    for report in reports:
        assert report["overlaps"] == [], f"VMs ran on two hosts at once: {report['overlaps']}"
