"""Which addresses a node manages, and the gratuitous ARP frame (pure)."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv4Interface

from pvcd.config import parse_config
from pvcd.network.addresses import DeviceAddress, floating_addresses, garp_frame, node_addresses


def networked_config(tmp_path):
    document = {
        "pvc": {
            "node": "hv2",
            "functions": {"enable_hypervisor": False, "enable_networking": True, "enable_storage": False},
            "cluster": {
                "coordinators": ["hv1", "hv2", "hv3"],
                "networks": {
                    "upstream": {"domain": "up.example", "network": "10.1.0.0/24", "floating_ip": "10.1.0.254/24"},
                    "cluster": {"domain": "cl.example", "network": "10.2.0.0/24", "floating_ip": "10.2.0.254/24"},
                    "storage": {"domain": "st.example", "network": "10.3.0.0/24", "floating_ip": "10.3.0.254/24"},
                },
            },
            "coordinator": {
                "dns": {
                    "database": {
                        "host": "localhost",
                        "port": 5432,
                        "name": "pvcdns",
                        "user": "pvcdns",
                        "pass": "pvcdns",
                    }
                }
            },
            "system": {
                "fencing": {
                    "intervals": {"keepalive_interval": 5, "fence_intervals": 6, "suicide_intervals": 0},
                    "actions": {"successful_fence": "migrate", "failed_fence": None},
                    "ipmi": {"host": "hv2-lom", "user": "admin", "pass": "x"},
                },
                "migration": {"target_selector": "mem"},
                "configuration": {
                    "directories": {
                        "dynamic_directory": str(tmp_path),
                        "log_directory": str(tmp_path),
                        "console_log_directory": str(tmp_path),
                    },
                    "logging": {
                        "file_logging": False,
                        "stdout_logging": False,
                        "log_colours": False,
                        "log_dates": False,
                        "log_keepalives": False,
                        "log_keepalive_cluster_details": False,
                        "log_keepalive_storage_details": False,
                        "console_log_lines": 10,
                    },
                    "networking": {
                        "upstream": {"device": "eth0", "mtu": 1500, "address": None},
                        "cluster": {"device": "eth1", "mtu": 1500, "address": "by-id"},
                        "storage": {"device": "eth2", "mtu": 9000, "address": "10.3.0.20/24"},
                    },
                },
            },
        }
    }
    return parse_config(document)


def test_node_addresses_skip_networks_without_one(tmp_path):
    assert node_addresses(networked_config(tmp_path).networking) == [
        DeviceAddress("cluster", "eth1", IPv4Interface("10.2.0.2/24")),
        DeviceAddress("storage", "eth2", IPv4Interface("10.3.0.20/24")),
    ]
    assert node_addresses(None) == []


def test_each_floating_ip_goes_on_its_network_device(tmp_path):
    assert floating_addresses(networked_config(tmp_path)) == [
        DeviceAddress("upstream", "eth0", IPv4Interface("10.1.0.254/24")),
        DeviceAddress("cluster", "eth1", IPv4Interface("10.2.0.254/24")),
        DeviceAddress("storage", "eth2", IPv4Interface("10.3.0.254/24")),
    ]


def test_gratuitous_arp_frame():
    mac = bytes.fromhex("020000000001")
    frame = garp_frame(mac, IPv4Address("10.2.0.254"))
    assert len(frame) == 60
    assert frame[0:6] == b"\xff" * 6 and frame[6:12] == mac and frame[12:14] == b"\x08\x06"
    htype, ptype, hlen, plen, oper = struct.unpack("!HHBBH", frame[14:22])
    assert (htype, ptype, hlen, plen, oper) == (1, 0x0800, 6, 4, 1)
    assert frame[22:28] == mac and frame[28:32] == bytes([10, 2, 0, 254])
    assert frame[32:38] == b"\x00" * 6 and frame[38:42] == bytes([10, 2, 0, 254])
