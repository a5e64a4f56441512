"""The local cluster on real hosts (`pvc-devcluster up --hosts qemu`): QEMU guests, live migration, fencing.

Each node is a `QemuHost` (its own network, mount and UTS namespaces, its own
libvirtd with QEMU) and runs the real `LiveMigration`; the guests are the tiny
TCG counter guests of `guest_image.py`. A guest prints an increasing counter
on its serial port, which libvirt writes to a file in the host's own
/var/log/libvirt: after a live migration the target host's file carries on
from the source's last value, after a restart it begins again at 1.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import MakeCluster
from harness import Cluster

from helpers import bin_path, wait_for
from pvcd.devcluster import guest_image
from pvcd.devcluster.main import main as devcluster_main
from pvcd.devcluster.processes import pid_alive, pid_cmdline
from pvcd.devcluster.qemu_host import namespace_pids

QEMU = ("--hosts", "qemu")
BOOT_TIMEOUT = 60
MOVE_TIMEOUT = 120
_LINE = re.compile(r"^counter (\d+)\r?$", re.MULTILINE)


@pytest.fixture(scope="module")
def image() -> guest_image.GuestImage:
    return guest_image.build(guest_image.DEFAULT_CACHE)


def serial_log(cluster: Cluster, node: str, name: str) -> Path:
    """The guest's serial log on `node`, seen from outside the host."""
    inside = guest_image.host_serial_log(name).relative_to("/var/log/libvirt")
    return Path(cluster.node_record(node)["directory"]) / "host" / "log" / inside


def counters(cluster: Cluster, node: str, name: str) -> list[int]:
    """Every whole counter line the guest printed while it ran on `node`, in order."""
    path = serial_log(cluster, node, name)
    return [int(value) for value in _LINE.findall(path.read_text(errors="replace"))] if path.exists() else []


def define_guests(cluster: Cluster, image: guest_image.GuestImage, node: str, names: list[str]) -> None:
    for name in names:
        # As an operator would: the guest's XML from `pvc-devcluster guest-xml` (its image is `image`).
        xml = subprocess.run(
            [bin_path("pvc-devcluster"), "guest-xml", name], capture_output=True, text=True, check=True
        ).stdout
        assert f"<kernel>{image.kernel}</kernel>" in xml
        (cluster.workdir / f"{name}.xml").write_text(xml)
        cluster.pvc("vm", "define", str(cluster.workdir / f"{name}.xml"), "--node", node)
        cluster.pvc("vm", "start", name)
    for name in names:
        wait_for(lambda name=name: counters(cluster, node, name), BOOT_TIMEOUT, what=f"guest {name} counting on {node}")


def carried_on(cluster: Cluster, source: str, target: str, name: str, earlier: int = 0) -> tuple[int, int]:
    """The source's last value and the first the target printed after it; the counter never went back.

    `earlier`: how many values the target's log held before this move (from an earlier stay there).
    """
    before = counters(cluster, source, name)[-1]
    after = wait_for(lambda: counters(cluster, target, name)[earlier:], 30, what=f"{name} counting on {target}")[0]
    # A line cut in two by the switch-over is lost: at most a few values are skipped, none restarts.
    assert before < after <= before + 5, f"{name}: {before} on {source}, then {after} on {target}"
    return before, after


def qemu_pids(cluster: Cluster, node: str) -> list[int]:
    """The node's QEMU processes: those in its network namespace."""
    netns = cluster.node_record(node)["host"]["netns"]
    result = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True, check=False)
    return [
        pid for pid in map(int, result.stdout.split()) if (pid_cmdline(pid) or [""])[0].endswith("qemu-system-x86_64")
    ]


def test_live_migration_carries_the_guest_on_and_unmigrate_brings_it_back(make_cluster: MakeCluster, image) -> None:
    cluster = make_cluster(3, *QEMU)
    define_guests(cluster, image, "hv1", ["g1"])

    cluster.pvc("vm", "migrate", "g1", "--target", "hv2", "--wait", "--wait-timeout", str(MOVE_TIMEOUT))
    assert cluster.running_where()["g1"] == ["hv2"]
    carried_on(cluster, "hv1", "hv2", "g1")
    info = cluster.json("vm", "info", "g1")
    assert info["node"] == "hv2" and info["lastnode"] == "hv1"
    stats = info["last_migration"]
    assert (stats["source"], stats["target"]) == ("hv1", "hv2")
    assert stats["time_ms"] > 0 and stats["downtime_ms"] is not None and stats["data_bytes"] > 0
    assert "Last live migration: hv1 -> hv2: took" in cluster.pvc("vm", "info", "g1").stdout

    earlier = len(counters(cluster, "hv1", "g1"))
    cluster.pvc("vm", "unmigrate", "g1", "--wait", "--wait-timeout", str(MOVE_TIMEOUT))
    assert cluster.running_where()["g1"] == ["hv1"]
    carried_on(cluster, "hv2", "hv1", "g1", earlier)
    assert cluster.json("vm", "info", "g1")["last_migration"]["target"] == "hv1"
    cluster.assert_clean()


def test_flush_and_ready_live_migrate_every_guest_and_none_restarts(make_cluster: MakeCluster, image) -> None:
    cluster = make_cluster(3, *QEMU)
    names = ["f1", "f2", "f3"]
    define_guests(cluster, image, "hv1", names)

    cluster.pvc("node", "flush", "hv1", "--wait")
    where = cluster.running_where()
    assert all(where[name] in (["hv2"], ["hv3"]) for name in names), where
    assert qemu_pids(cluster, "hv1") == []
    for name in names:
        carried_on(cluster, "hv1", where[name][0], name)
        assert cluster.json("vm", "info", name)["last_migration"]["source"] == "hv1"

    earlier = {name: len(counters(cluster, "hv1", name)) for name in names}
    cluster.pvc("node", "ready", "hv1", "--wait")
    assert all(cluster.running_where()[name] == ["hv1"] for name in names)
    for name in names:
        carried_on(cluster, where[name][0], "hv1", name, earlier[name])
    # The journals of the three hosts (each libvirtd's own domain events): never two hosts at once.
    cluster.assert_clean()


def test_a_host_whose_daemon_died_keeps_its_guests_until_the_fence_powers_it_off(
    make_cluster: MakeCluster, image
) -> None:
    # No watchdog: with one, the host would reset itself when its pvcd stops petting it, before the fence.
    cluster = make_cluster(3, *QEMU, "--no-watchdog")
    names = ["d1", "d2"]
    define_guests(cluster, image, "hv3", names)
    guests = qemu_pids(cluster, "hv3")
    assert len(guests) == 2

    cluster.fault("hv3", "daemon-crash")
    counted = {name: counters(cluster, "hv3", name)[-1] for name in names}
    # Without its pvcd the host runs on: its guests keep counting until the fence powers it off.
    wait_for(
        lambda: all(counters(cluster, "hv3", name)[-1] > counted[name] for name in names),
        10,
        what="the guests of hv3 to keep counting without its pvcd",
    )
    wait_for(lambda: cluster.chassis("hv3")["power"] == "off", 60, what="the fence to power hv3 off through its BMC")
    assert not any(pid_alive(pid) for pid in guests), "a QEMU process of hv3 survived the power-off"
    stops = {e["vm"]: e["via"] for e in cluster.journal("hv3") if e["event"] == "stop"}
    assert stops == {name: "bmc" for name in names}, f"the guests of hv3 did not stop with its power: {stops}"

    def restarted() -> dict[str, list[str]] | None:
        where = cluster.running_where()
        return where if all(where.get(name) in (["hv1"], ["hv2"]) for name in names) else None

    where = wait_for(restarted, MOVE_TIMEOUT, what="the guests of hv3 running on hv1 or hv2")
    for name in names:
        first = wait_for(lambda name=name: counters(cluster, where[name][0], name), BOOT_TIMEOUT, what=f"{name} boot")
        assert first[0] <= 3, f"{name} did not boot afresh on {where[name][0]}: first value {first[0]}"
    # Powered on again after the recovery, as after a reboot: running no guest, taking none until ready.
    node = wait_for(
        lambda: (lambda n: n if n["daemon_state"] == "run" and not n["keepalive"]["late"] else None)(
            cluster.nodes()["hv3"]
        ),
        60,
        what="hv3 to come back",
    )
    assert node["domain_state"] == "fenced" and node["running_vms"] == [] and qemu_pids(cluster, "hv3") == []
    cluster.assert_clean()


def test_floating_ips_answer_from_the_primarys_namespace_and_follow_a_handover(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3, *QEMU)
    primary = cluster.primary()
    successor, watcher = (name for name in ("hv1", "hv2", "hv3") if name != primary)
    address = floating_ip(cluster)

    def answered_by(node: str) -> bool:
        return ping(cluster, watcher, address) and neighbour(cluster, watcher, address) == mac(cluster, node)

    wait_for(lambda: answered_by(primary), 20, what=f"the floating IP {address} answering {watcher} from {primary}")
    cluster.pvc("node", "primary", successor)
    wait_for(lambda: cluster.primary() == successor, 30, what=f"{successor} primary")
    wait_for(lambda: answered_by(successor), 30, what=f"the floating IP {address} answering {watcher} from {successor}")


def netns(cluster: Cluster, node: str) -> str:
    return cluster.node_record(node)["host"]["netns"]


def floating_ip(cluster: Cluster) -> str:
    network = cluster.record["network"]
    return f"10.{network['base']}.1.254"


def ping(cluster: Cluster, node: str, address: str) -> bool:
    result = subprocess.run(
        ["ip", "netns", "exec", netns(cluster, node), "ping", "-n", "-c", "1", "-W", "1", address],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


def neighbour(cluster: Cluster, node: str, address: str) -> str | None:
    result = subprocess.run(
        ["ip", "-n", netns(cluster, node), "neigh", "show", address], capture_output=True, text=True, check=False
    )
    fields = result.stdout.split()
    return fields[fields.index("lladdr") + 1] if "lladdr" in fields else None


def mac(cluster: Cluster, node: str) -> str:
    result = subprocess.run(
        ["ip", "-n", netns(cluster, node), "-o", "link", "show", "eth0"], capture_output=True, text=True, check=True
    )
    return result.stdout.split("link/ether ")[1].split()[0]


def cut_libvirtd_off(cluster: Cluster, node: str) -> None:
    """Refuse connections to the node's libvirtd from other hosts, as a libvirtd that is down would."""
    rules = (
        "add table inet pvctest\n"
        "add chain inet pvctest input { type filter hook input priority 0 ; }\n"
        "add rule inet pvctest input tcp dport 16509 reject with tcp reset\n"
    )
    subprocess.run(["ip", "netns", "exec", netns(cluster, node), "nft", "-f", "-"], input=rules, text=True, check=True)


def test_a_live_migration_the_target_refuses_falls_back_to_a_shutdown_move(make_cluster: MakeCluster, image) -> None:
    cluster = make_cluster(3, *QEMU)
    define_guests(cluster, image, "hv1", ["r1"])
    cut_libvirtd_off(cluster, "hv2")

    cluster.pvc("vm", "migrate", "r1", "--target", "hv2", "--wait", "--wait-timeout", str(MOVE_TIMEOUT))
    assert cluster.running_where()["r1"] == ["hv2"]
    first = wait_for(lambda: counters(cluster, "hv2", "r1"), BOOT_TIMEOUT, what="r1 booting on hv2")[0]
    assert first <= 3, f"r1 was not restarted on hv2 (first value {first}): the refused migration cannot have moved it"
    info = cluster.json("vm", "info", "r1")
    assert info["last_migration"] is None and info["actual"]["state"] == "running"
    assert "live migration of VM r1 to qemu+tcp://" in cluster.log("hv1") and "falling back" in cluster.log("hv1")
    cluster.assert_clean()


def test_the_watchdog_resets_a_real_host_whose_daemon_died(make_cluster: MakeCluster, image) -> None:
    cluster = make_cluster(3, *QEMU)
    define_guests(cluster, image, "hv3", ["w1"])
    (guest,) = qemu_pids(cluster, "hv3")
    earlier = {node: len(counters(cluster, node, "w1")) for node in ("hv1", "hv2", "hv3")}

    cluster.fault("hv3", "daemon-crash")
    wait_for(
        lambda: any(e["event"] == "watchdog-reset" for e in cluster.journal("hv3")),
        30,
        what="hv3's watchdog to reset the host",
    )
    wait_for(lambda: not pid_alive(guest), 10, what="w1's QEMU to die with the reset")
    # The reset host reboots with its pvcd: if that keepalive came back before the fence window ended, hv3
    # starts w1 again itself, as after any reboot; otherwise hv3 is fenced and w1 starts elsewhere.
    where = wait_for(
        lambda: (lambda hosts: hosts if hosts is not None and len(hosts) == 1 else None)(
            cluster.running_where().get("w1")
        ),
        MOVE_TIMEOUT,
        what="w1 running again on one host",
    )
    host = where[0]
    first = wait_for(lambda: counters(cluster, host, "w1")[earlier[host] :], BOOT_TIMEOUT, what=f"w1 booting on {host}")
    assert first[0] <= 3, f"w1 on {host} did not boot afresh: first value {first[0]}"
    cluster.assert_clean()


def test_down_removes_every_namespace_link_and_process_after_the_chassis_died(make_cluster: MakeCluster, image):
    cluster = make_cluster(2, *QEMU)
    define_guests(cluster, image, "hv2", ["o1"])
    tag = cluster.record["network"]["tag"]
    processes = [pid for node in ("hv1", "hv2") for pid in namespace_pids(netns(cluster, node))]
    assert qemu_pids(cluster, "hv2") and processes
    # The launcher and every chassis gone at once: pvcd, libvirtd and QEMU are orphans in their namespaces.
    for node in ("hv1", "hv2"):
        os.kill(cluster.node_record(node)["chassis_pid"], signal.SIGKILL)

    result = cluster.down()
    assert result.returncode == 0, result.stderr
    assert [pid for pid in processes if pid_alive(pid)] == []
    assert f"pvq{tag}" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"pvq{tag}" not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert str(cluster.workdir) not in Path("/proc/self/mountinfo").read_text()
    assert not (cluster.workdir / "nodes" / "hv2" / "host").exists()


def test_without_root_qemu_hosts_are_refused_in_one_line(tmp_path, monkeypatch, capsys) -> None:
    # As another user the checkout itself may be unreadable (CI clones into a 0700 directory),
    # so the launcher is run here with the effective user ID it would see as an ordinary user.
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert devcluster_main(["up", "--hosts", "qemu", "--workdir", str(tmp_path / "c")]) == 1
    error = capsys.readouterr().err
    assert (
        error
        == "pvc-devcluster: --hosts qemu needs root: it creates network namespaces, bridges, a libvirtd per host\n"
    )
    assert not (tmp_path / "c").exists()


def test_a_guest_name_a_vm_cannot_have_is_refused_in_one_line(capsys) -> None:
    assert devcluster_main(["guest-xml", "no spaces"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("pvc-devcluster: VM name 'no spaces' cannot be used")
    assert captured.err.count("\n") == 1
