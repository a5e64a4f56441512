"""The local cluster's generated configuration is a valid pvcd.yaml."""

from __future__ import annotations

from pathlib import Path

from pvcd.config import parse_config
from pvcd.devcluster import layout


def test_generated_configs_validate_and_share_one_zookeeper(tmp_path: Path):
    names = layout.node_names(5)
    configs = [
        parse_config(layout.node_config(name, layout.node_paths(tmp_path, name), names, 2345,
                                       layout.Timing(keepalive_interval=2, fence_intervals=4)))
        for name in names
    ]
    assert [c.node for c in configs] == ["hv1", "hv2", "hv3", "hv4", "hv5"]
    assert [c.is_coordinator for c in configs] == [True, True, True, False, False]
    assert {c.zookeeper_hosts for c in configs} == {"127.0.0.1:2345"}
    assert configs[0].fencing.keepalive_interval == 2 and configs[0].fencing.fence_intervals == 4
    assert configs[1].hypervisor.libvirt_uri == f"test://{tmp_path}/nodes/hv2/host.xml"


def test_host_xml_declares_memory_in_kib():
    assert "<memory>2097152</memory>" in layout.host_xml(memory_mib=2048)
