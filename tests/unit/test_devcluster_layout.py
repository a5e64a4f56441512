"""The local cluster's generated configuration is a valid pvcd.yaml."""

from __future__ import annotations

from pathlib import Path

from pvcd.config import parse_config
from pvcd.devcluster import layout


def test_generated_configs_validate_and_share_one_zookeeper(tmp_path: Path):
    names = layout.node_names(5)
    configs = [
        parse_config(
            layout.node_config(
                name,
                layout.node_paths(tmp_path, name),
                names,
                2345,
                layout.Timing(keepalive_interval=2, fence_intervals=4),
            )
        )
        for name in names
    ]
    assert [c.node for c in configs] == ["hv1", "hv2", "hv3", "hv4", "hv5"]
    assert [c.is_coordinator for c in configs] == [True, True, True, False, False]
    assert {c.zookeeper_hosts for c in configs} == {"127.0.0.1:2345"}
    assert configs[0].fencing.keepalive_interval == 2 and configs[0].fencing.fence_intervals == 4
    assert configs[1].hypervisor.libvirt_uri == f"test://{tmp_path}/nodes/hv2/host.xml"


def test_host_xml_declares_memory_in_kib():
    assert "<memory>2097152</memory>" in layout.host_xml(memory_mib=2048)


def test_a_node_in_a_chassis_uses_its_libvirtd_and_its_watchdog(tmp_path: Path):
    paths = layout.node_paths(tmp_path, "hv2")
    config = parse_config(
        layout.node_config("hv2", paths, ["hv1", "hv2"], 2345, layout.Timing(keepalive_interval=2), in_chassis=True)
    )
    assert config.hypervisor.libvirt_uri == f"test+unix:///default?socket={tmp_path}/nodes/hv2/libvirt-sock"
    assert config.fencing.watchdog is not None
    assert (config.fencing.watchdog.device, config.fencing.watchdog.timeout) == (str(paths.watchdog), 6)
    timed = parse_config(
        layout.node_config("hv2", paths, ["hv2"], 2345, layout.Timing(watchdog_timeout=5), in_chassis=True)
    )
    assert timed.fencing.watchdog is not None and timed.fencing.watchdog.timeout == 5
    bare = parse_config(layout.node_config("hv2", paths, ["hv2"], 2345, layout.Timing(watchdog=False), in_chassis=True))
    assert bare.fencing.watchdog is None


def test_without_a_chassis_there_is_no_watchdog():
    paths = layout.node_paths(Path("/w"), "hv1")
    assert "watchdog" not in layout.node_config("hv1", paths, ["hv1"], 2345)["pvc"]["system"]["fencing"]


def test_a_node_directory_too_long_for_unix_sockets_is_refused():
    assert layout.node_paths(Path("/tmp/short"), "hv1").socket_problem() is None
    problem = layout.node_paths(Path("/tmp/" + "x" * 90), "hv1").socket_problem()
    assert problem is not None and "too long for UNIX sockets" in problem and "use a shorter --workdir" in problem


def test_socket_paths_in_the_uri_are_escaped():
    paths = layout.node_paths(Path("/tmp/a b&c"), "hv1")
    assert layout.chassis_libvirt_uri(paths) == "test+unix:///default?socket=/tmp/a%20b%26c/nodes/hv1/libvirt-sock"


def test_each_node_carries_the_zookeeper_identity_of_its_role(tmp_path: Path):
    """Coordinators authenticate as `coordinator` (they fence: they read BMC credentials), the others as `node`."""
    from pvcd.devcluster.zookeeper import ZooKeeperServer

    server = ZooKeeperServer.create(tmp_path / "zookeeper")  # its secrets only; nothing is started
    names = layout.node_names(4)
    roles = [layout.node_role(name, names) for name in names]
    assert roles == ["coordinator", "coordinator", "coordinator", "node"]
    for name, role in zip(names, roles, strict=True):
        document = layout.node_config(
            name, layout.node_paths(tmp_path, name), names, 2345, zookeeper_keys=server.config_keys(role)
        )
        settings = parse_config(document).cluster.zookeeper
        assert settings.credentials_file == str(server.credentials_file(role))
        assert settings.acl == server.identities
        assert settings.tls == server.tls
        assert settings.session_timeout == layout.Timing().session_timeout
    assert all((server.credentials_file(role).stat().st_mode & 0o777) == 0o600 for role in set(roles) | {"operator"})
    assert ZooKeeperServer.create(tmp_path / "open", secure=False).config_keys("node") == {}
