"""Self-fence on a real libvirt (test driver) host and the configured command."""

from __future__ import annotations

import libvirt

from helpers import vm_xml
from pvcd.devcluster import layout
from pvcd.fencing.self_fence import destroy_all_domains, run_command
from pvcd.hypervisor import Hypervisor


def test_destroys_every_running_domain(tmp_path):
    host = tmp_path / "host.xml"
    host.write_text(layout.host_xml())
    hypervisor = Hypervisor(f"test://{host}")
    conn = hypervisor.connection()
    for name in ("a", "b"):
        conn.defineXML(vm_xml(name)).create()
    conn.defineXML(vm_xml("stopped"))
    assert sorted(destroy_all_domains(hypervisor, "hv1", "test")) == ["a", "b"]
    assert conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE) == []


def test_runs_the_configured_command(tmp_path):
    marker = tmp_path / "rebooted"
    run_command(f"touch {marker}", "hv1")
    assert marker.exists()
    run_command(None, "hv1")
