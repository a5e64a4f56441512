"""A node kills its own VMs when it may have been declared dead.

Two ways to get there: the node could not deliver a keepalive for its suicide
window, or it delivered one again and found a fence record written while it was
silent (it was frozen, or cut off, and the cluster moved on). Either way other
nodes may be starting its VMs, so every running domain is destroyed at once,
without a graceful shutdown, and the node waits for an operator.
"""

from __future__ import annotations

import logging
import subprocess

import libvirt

from pvcd.hypervisor import Hypervisor, HypervisorError

log = logging.getLogger("pvcd.fencing")

COMMAND_TIMEOUT = 30.0


def destroy_all_domains(hypervisor: Hypervisor | None, node: str, reason: str) -> list[str]:
    """Destroy every running domain of this host; the names destroyed."""
    log.critical("Self-fencing node %s: %s; destroying all its running VMs", node, reason)
    if hypervisor is None:
        return []
    destroyed = []
    try:
        # One listing of the running domains: a per-domain state query could fail on a domain
        # undefined meanwhile and stop the loop before the others are destroyed.
        running = hypervisor.connection().listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
    except (HypervisorError, libvirt.libvirtError) as exc:
        log.critical("Self-fence of node %s could not reach libvirt: %s", node, exc)
        running = []
    for domain in running:
        try:
            domain.destroy()
            destroyed.append(domain.name())
        except Exception as exc:  # keep destroying the others
            log.critical("Self-fence of node %s could not destroy VM %s: %s", node, domain.name(), exc)
    log.critical("Node %s destroyed VMs: %s", node, ", ".join(sorted(destroyed)) or "none")
    return destroyed


def run_command(command: str | None, node: str) -> None:
    """The configured self_fence_command (e.g. a forced reboot), if any."""
    if not command:
        return
    log.critical("Node %s runs its self_fence_command: %s", node, command)
    try:
        subprocess.run(["/bin/sh", "-c", command], timeout=COMMAND_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.critical("self_fence_command of node %s failed: %s", node, exc)
