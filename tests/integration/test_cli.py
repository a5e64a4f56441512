"""`pvc` and `pvcd --check-config` as an operator runs them."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import pytest

from helpers import bin_path, wait_for
from pvcd.daemon import NodeDaemon
from pvcd.devcluster.processes import free_port


def pvc(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("PVC_ZOOKEEPER", "PVCD_CONFIG_FILE")}
    environment.update(env or {})
    return subprocess.run([bin_path("pvc"), *args], capture_output=True, text=True, timeout=timeout, env=environment)


@pytest.fixture
def two_nodes(zk, make_config):
    daemons = [NodeDaemon(make_config(name, names=["hv1", "hv2"])) for name in ("hv1", "hv2")]
    threads = [threading.Thread(target=d.run, daemon=True) for d in daemons]
    for thread in threads:
        thread.start()
    wait_for(
        lambda: all(
            zk.exists(f"/pvc/nodes/{n}/keepalive")
            and json.loads(zk.get(f"/pvc/nodes/{n}/keepalive")[0]).get("counter", 0) >= 1
            for n in ("hv1", "hv2")
        ),
        15,
        what="both nodes to send a keepalive",
    )
    yield daemons
    for daemon in daemons:
        daemon.stop_event.set()
    for thread in threads:
        thread.join(10)


def test_node_list_json_has_stable_keys(zookeeper, two_nodes):
    result = pvc("--zookeeper", zookeeper.address, "node", "list", "--format", "json")
    assert result.returncode == 0, result.stderr
    nodes = json.loads(result.stdout)
    assert [n["name"] for n in nodes] == ["hv1", "hv2"]
    for node in nodes:
        assert set(node) == {
            "name",
            "daemon_state",
            "coordinator_state",
            "domain_state",
            "vms",
            "running_vms",
            "fence",
            "memory",
            "vcpus_allocated",
            "load",
            "keepalive",
            "coordinator",
            "pvcd_version",
            "hypervisor",
            "watchdog",
            "loops",
        }
        assert node["daemon_state"] == "run"
        # The test nodes run without a watchdog device, and their loops have not failed.
        assert node["watchdog"]["armed"] is False and node["loops"] == {}
        assert node["memory"]["total"] == 16384
        assert 0 <= node["keepalive"]["age_seconds"] < 5


def test_node_list_pretty_is_an_aligned_table(zookeeper, two_nodes):
    result = pvc("--zookeeper", zookeeper.address, "node", "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["NAME", "DAEMON", "COORDINATOR", "DOMAIN"]
    assert [line.split()[0] for line in lines[1:]] == ["hv1", "hv2"]
    # Every column starts at the same offset on every line.
    header_offsets = [lines[0].index("DAEMON"), lines[0].index("COORDINATOR")]
    for line in lines[1:]:
        assert line[header_offsets[0] :].startswith("run")
        assert line[header_offsets[1] :].startswith(("primary", "secondary"))


def test_node_info_and_cluster_status(zookeeper, two_nodes):
    info = pvc("--zookeeper", zookeeper.address, "node", "info", "hv2", "--format", "json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["name"] == "hv2"
    pretty = pvc("--zookeeper", zookeeper.address, "node", "info", "hv2")
    assert "Daemon state:" in pretty.stdout and "run" in pretty.stdout
    status = pvc("--zookeeper", zookeeper.address, "cluster", "status", "--format", "json")
    summary = json.loads(status.stdout)
    assert summary["nodes"] == 2
    assert summary["daemon_states"] == {"run": 2}
    assert summary["coordinators"] == ["hv1", "hv2"]
    assert summary["healthy"] is True


def test_unknown_node_is_one_line_and_exit_1(zookeeper, two_nodes):
    result = pvc("--zookeeper", zookeeper.address, "node", "info", "hv9")
    assert result.returncode == 1
    assert result.stderr == "pvc: no node named 'hv9'\n"


def test_zookeeper_from_environment_and_from_config_file(zookeeper, two_nodes, write_config):
    by_env = pvc("node", "list", "--format", "json", env={"PVC_ZOOKEEPER": zookeeper.address})
    assert by_env.returncode == 0, by_env.stderr
    config = write_config("hv1", names=["hv1", "hv2"])
    by_config = pvc("node", "list", "--format", "json", env={"PVCD_CONFIG_FILE": str(config)})
    assert by_config.returncode == 0, by_config.stderr
    assert json.loads(by_env.stdout)[0]["name"] == json.loads(by_config.stdout)[0]["name"] == "hv1"


def test_unreachable_zookeeper_fails_fast_with_one_line():
    port = free_port()
    started = time.monotonic()
    result = pvc("--zookeeper", f"127.0.0.1:{port}", "--timeout", "2", "node", "list")
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    # Over TLS (the suite's environment names the CA) the store says what its own connection found.
    assert result.stderr in (
        f"pvc: cannot reach ZooKeeper at 127.0.0.1:{port} within 2s\n",
        f"pvc: cannot reach ZooKeeper at 127.0.0.1:{port} within 2s; 127.0.0.1:{port}: Connection refused\n",
    ), result.stderr
    assert result.stdout == ""
    assert elapsed < 10


def test_no_zookeeper_configured_is_one_line(tmp_path):
    result = pvc("node", "list", env={"PVCD_CONFIG_FILE": str(tmp_path / "missing.yaml")})
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1
    assert "missing.yaml" in result.stderr and "Traceback" not in result.stderr


def test_bad_format_is_a_usage_error():
    result = pvc("--zookeeper", "127.0.0.1:1", "node", "list", "--format", "xml")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_check_config(write_config, tmp_path):
    good = write_config()
    ok = subprocess.run([bin_path("pvcd"), "--check-config", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "valid" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("keepalive_interval: 1", "keepalive_interval: five"))
    failed = subprocess.run([bin_path("pvcd"), "--check-config", str(bad)], capture_output=True, text=True)
    assert failed.returncode == 2
    assert failed.stderr == "pvc.system.fencing.intervals.keepalive_interval: must be a positive integer, got 'five'\n"
    by_env = subprocess.run(
        [bin_path("pvcd"), "--check-config"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PVCD_CONFIG_FILE=str(bad)),
    )
    assert by_env.returncode == 2 and "keepalive_interval" in by_env.stderr


def test_pvcd_refuses_to_start_on_a_bad_config(tmp_path):
    bad = tmp_path / "pvcd.yaml"
    bad.write_text("pvc:\n  node: hv1\n")
    result = subprocess.run(
        [bin_path("pvcd")], capture_output=True, text=True, timeout=30, env=dict(os.environ, PVCD_CONFIG_FILE=str(bad))
    )
    assert result.returncode == 2
    assert "pvc.functions: required key is missing" in result.stderr.splitlines()
    assert "Traceback" not in result.stderr
