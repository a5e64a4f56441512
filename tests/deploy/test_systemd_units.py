"""The systemd units of pvc-daemon: the packaged files pass `systemd-analyze
verify` (run where the packages are installed, so ExecStart's programs exist;
any output at all counts as a failure, since unknown keys and bad values only
warn), say what the deployment needs, and the flush unit's helper calls the
`pvc` tool as it should.

No systemd runs here as PID 1, so nothing is started; the helper is run
directly, with a stand-in `pvc` program that records its arguments (the real
`pvc node flush/ready` need a cluster, and are tested with one elsewhere).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy_helpers import (
    REPO,
    UNITS,
    OverlayRoot,
    extract,
    parse_unit,
    seconds,
    words,
)


@pytest.fixture(scope="module")
def units(debs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    data = extract(debs["pvc-daemon"], tmp_path_factory.mktemp("units"))
    return {unit: parse_unit((data / "lib/systemd/system" / unit).read_text()) for unit in UNITS}


def test_packaged_units_are_the_repository_units(debs: dict[str, Path], tmp_path: Path) -> None:
    data = extract(debs["pvc-daemon"], tmp_path)
    for unit in UNITS:
        packaged = (data / "lib/systemd/system" / unit).read_text()
        assert packaged == (REPO / "debian" / f"pvc-daemon.{unit}").read_text(), unit


def test_units_pass_systemd_analyze_verify(installed_root: OverlayRoot) -> None:
    result = installed_root.run("systemd-analyze verify " + " ".join(UNITS))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_reports_a_misspelt_key(installed_root: OverlayRoot) -> None:
    """The check above would see a mistake: systemd-analyze only warns on one."""
    result = installed_root.run(
        "mkdir -p /tmp/units && sed 's/^Restart=/Restrat=/' /lib/systemd/system/pvcd.service"
        " > /tmp/units/pvcd.service && systemd-analyze verify /tmp/units/pvcd.service"
    )
    assert result.returncode == 0
    assert "Restrat" in result.stdout + result.stderr


def test_pvcd_service(units: dict[str, dict]) -> None:
    unit, service, install = (units["pvcd.service"][s] for s in ("Unit", "Service", "Install"))
    assert service["Environment"] == ["PVCD_CONFIG_FILE=/etc/pvc/pvcd.yaml"]
    assert service["ExecStart"] == ["/usr/bin/pvcd"]
    assert service["Restart"] == ["on-failure"]
    assert service["RestartPreventExitStatus"] == ["2"]  # a refused configuration
    assert service["KillMode"] == ["mixed"]
    # Long enough for a flush: VMs migrating or shutting down (180 s each by default).
    assert seconds(service["TimeoutStopSec"][0]) >= 15 * 60
    after = words(unit["After"])
    assert {"network-online.target", "zookeeper.service", "libvirtd.service"} <= set(after)
    assert "network-online.target" in words(unit["Wants"])
    assert "zookeeper.service" not in words(unit.get("Requires", []) + unit.get("Wants", []))
    assert unit["PartOf"] == ["pvc.target"]
    assert unit["ConditionPathExists"] == ["/etc/pvc/pvcd.yaml"]
    assert install["WantedBy"] == ["pvc.target"]


def test_pvc_target_groups_the_services(units: dict[str, dict]) -> None:
    target = units["pvc.target"]
    assert "pvcd.service" in words(target["Unit"]["Wants"])
    assert target["Install"]["WantedBy"] == ["multi-user.target"]
    for name in ("pvcd.service", "pvc-flush.service"):
        assert units[name]["Unit"]["PartOf"] == ["pvc.target"]
        assert units[name]["Install"]["WantedBy"] == ["pvc.target"]


def test_flush_unit_flushes_on_stop_and_readies_on_start(units: dict[str, dict]) -> None:
    unit, service = units["pvc-flush.service"]["Unit"], units["pvc-flush.service"]["Service"]
    assert service["Type"] == ["oneshot"]
    assert service["RemainAfterExit"] == ["yes"]
    assert service["ExecStart"] == ["/usr/lib/pvc/pvc-flush ready"]
    assert service["ExecStop"] == ["/usr/lib/pvc/pvc-flush flush"]
    assert service["Environment"] == ["PVCD_CONFIG_FILE=/etc/pvc/pvcd.yaml"]
    assert seconds(service["TimeoutStopSec"][0]) >= 15 * 60
    # Stopped before pvcd at shutdown; a restart of pvcd alone must not flush.
    assert "pvcd.service" in words(unit["After"])
    assert "pvcd.service" in words(unit["Wants"])
    assert "Requires" not in unit and "BindsTo" not in unit


# --- The flush helper ---------------------------------------------------------

FAKE_PVC = """#!/bin/sh
echo "$*" >> "$PVC_CALLS"
if [ "$2" = info ]; then
    [ -n "$FAKE_DAEMON_STATE" ] || exit 1
    echo "{\\"name\\": \\"$3\\", \\"daemon_state\\": \\"$FAKE_DAEMON_STATE\\"}"
fi
exit "${FAKE_EXIT:-0}"
"""


def run_helper(
    tmp_path: Path, action: str, config: Path | None = None, **env: str
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "pvc").write_text(FAKE_PVC)
    (bin_dir / "pvc").chmod(0o755)
    calls = tmp_path / "calls"
    calls.write_text("")
    if config is None:
        config = tmp_path / "pvcd.yaml"
        config.write_text((REPO / "examples" / "pvcd.yaml").read_text().replace("node: pvc-hv1", "node: pvc-hv7"))
    environment = dict(
        os.environ,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        PVCD_CONFIG_FILE=str(config),
        PVC_CALLS=str(calls),
        **env,
    )
    result = subprocess.run(
        [sys.executable, str(REPO / "debian" / "pvc-flush"), action],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result, calls.read_text().splitlines()


def test_flush_helper_flushes_the_configured_node(tmp_path: Path) -> None:
    result, calls = run_helper(tmp_path, "flush")
    assert result.returncode == 0, result.stderr
    assert calls == ["node flush --wait pvc-hv7"]


def test_flush_helper_readies_once_the_daemon_runs(tmp_path: Path) -> None:
    result, calls = run_helper(tmp_path, "ready", FAKE_DAEMON_STATE="run")
    assert result.returncode == 0, result.stderr
    assert calls == ["node info pvc-hv7 --format json", "node ready --wait pvc-hv7"]


def test_flush_helper_does_not_ready_a_node_whose_daemon_is_not_running(tmp_path: Path) -> None:
    result, calls = run_helper(tmp_path, "ready", FAKE_DAEMON_STATE="init", PVC_FLUSH_DAEMON_WAIT="0")
    assert result.returncode == 1
    assert "pvcd on node pvc-hv7 is not running" in result.stderr
    assert calls == ["node info pvc-hv7 --format json"]


def test_flush_helper_passes_on_the_failure_of_pvc(tmp_path: Path) -> None:
    result, calls = run_helper(tmp_path, "flush", FAKE_EXIT="1")
    assert result.returncode == 1
    assert calls == ["node flush --wait pvc-hv7"]


def test_flush_helper_refuses_a_bad_configuration_or_command_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("pvc: {}\n")
    result, calls = run_helper(tmp_path, "flush", config=bad)
    assert result.returncode == 2 and calls == []
    assert "pvc-flush: pvc.node: required key is missing" in result.stderr.splitlines()
    result, calls = run_helper(tmp_path, "drain")
    assert result.returncode == 2 and calls == []
    assert result.stderr.strip() == "usage: pvc-flush flush|ready"
