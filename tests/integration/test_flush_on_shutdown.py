"""`pvc.system.migration.flush_on_shutdown`: SIGTERM empties the node before pvcd stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import yaml

from helpers import VmNode, bin_path, node_document, vm_xml, wait_for


def test_sigterm_flushes_the_node_first(zk, zookeeper, tmp_path, make_config, daemon_process):
    names = ["hv1", "hv2"]
    document = node_document(tmp_path, "hv1", zookeeper.port, names=names, zookeeper=zookeeper)
    document["pvc"]["system"]["migration"]["flush_on_shutdown"] = True
    config_path = tmp_path / "nodes" / "hv1" / "pvcd.yaml"
    config_path.write_text(yaml.safe_dump(document))
    hv1 = daemon_process(config_path)
    hv2 = VmNode(make_config("hv2", names=names)).start()
    env = dict(os.environ, PVC_ZOOKEEPER=zookeeper.address)

    def pvc(*args: str) -> str:
        result = subprocess.run([bin_path("pvc"), *args], capture_output=True, text=True, env=env, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    try:
        wait_for(
            lambda: (
                zk.exists("/pvc/nodes/hv1/keepalive")
                and json.loads(pvc("node", "info", "hv1", "--format", "json"))["daemon_state"] == "run"
            ),
            20,
            what="hv1 running",
        )
        for name in ("vm1", "vm2"):
            xml = tmp_path / f"{name}.xml"
            xml.write_text(vm_xml(name, memory_mib=256))
            pvc("vm", "define", str(xml), "--node", "hv1")
            pvc("vm", "start", name, "--wait", "--wait-timeout", "20")
        hv1.signal(signal.SIGTERM)
        assert hv1.wait(timeout=60) == 0
        assert hv2.running() == {"vm1", "vm2"}
        vms = {v["name"]: v for v in json.loads(pvc("vm", "list", "--format", "json"))}
        assert {v["node"] for v in vms.values()} == {"hv2"} and {v["lastnode"] for v in vms.values()} == {"hv1"}
        info = json.loads(pvc("node", "info", "hv1", "--format", "json"))
        assert info["daemon_state"] == "stop" and info["domain_state"] == "flushed"
        assert "Flushing node hv1 before it stops (flush_on_shutdown)" in hv1.log()
    finally:
        hv2.stop()
