"""The Debian packages: built from a clean copy of the repository with
`dpkg-buildpackage -us -uc -b`, their metadata and contents (`dpkg-deb -I/-c`),
and a real `dpkg -i` of all three, then `pvcd --check-config` on the installed
sample with Debian's own Python and libraries.

The installation happens in an overlay of this machine's root (see
deploy_helpers.OverlayRoot): dpkg checks the real Depends against the
packages really installed here, but nothing is left on the machine.
"""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import pvcd
from deploy_helpers import (
    PACKAGES,
    OverlayRoot,
    deb_control_file,
    deb_entries,
    deb_field,
    deb_relations,
    extract,
    undocumented_keys,
)

SAMPLE = "/etc/pvc/pvcd.sample.yaml"
SITE = "/usr/lib/python3/dist-packages"

# Each Python requirement of setup.cfg and the Debian package that provides it.
DEBIAN_PYTHON = {
    "kazoo": "python3-kazoo",
    "libvirt-python": "python3-libvirt",
    "pyyaml": "python3-yaml",
    "pyghmi": "python3-pyghmi",
    "psycopg2": "python3-psycopg2",
    "dnspython": "python3-dnspython",
    "pyroute2": "python3-pyroute2",
    "click": "python3-click",
}


def install_requires(checkout: Path) -> list[str]:
    parser = configparser.ConfigParser()
    parser.read(checkout / "setup.cfg")
    lines = parser["options"]["install_requires"].split("\n")
    return [re.split(r"[<>=!~ ;\[]", line.strip())[0].lower() for line in lines if line.strip()]


def test_build_makes_three_packages_of_the_source_version(debs: dict[str, Path], checkout: Path) -> None:
    changelog = (checkout / "debian" / "changelog").read_text().splitlines()[0]
    version = re.match(r"pvc \(([^)]+)\)", changelog)[1]
    assert version == pvcd.__version__, "debian/changelog and pvcd.__version__ disagree"
    for name, deb in debs.items():
        assert deb_field(deb, "Package") == name
        assert deb_field(deb, "Version") == version
        assert deb_field(deb, "Architecture") == "all"
        assert deb_field(deb, "Description"), name


def test_library_package_depends_on_every_python_requirement(debs: dict[str, Path], checkout: Path) -> None:
    depends = deb_relations(debs["python3-pvcd"], "Depends")
    requirements = install_requires(checkout)
    unknown = [r for r in requirements if r not in DEBIAN_PYTHON]
    assert not unknown, f"add the Debian package of {unknown} to DEBIAN_PYTHON (and check debian/control)"
    for requirement in requirements:
        assert DEBIAN_PYTHON[requirement] in depends, f"python3-pvcd does not depend on {DEBIAN_PYTHON[requirement]}"
    assert "python3:any" in depends


def test_daemon_package_relations(debs: dict[str, Path]) -> None:
    deb = debs["pvc-daemon"]
    depends = deb_relations(deb, "Depends")
    assert depends["python3-pvcd"] == "= " + pvcd.__version__
    assert depends["pvc-client-cli"] == "= " + pvcd.__version__  # the flush unit runs `pvc`
    for tool in ("dnsmasq", "pdns-server", "pdns-backend-pgsql", "ceph-common", "python3-rados"):
        assert tool in depends  # ceph-common: storage; python3-rados: a node's Ceph client address
    assert {"libvirt-daemon-system", "qemu-system-x86"} <= set(deb_relations(deb, "Recommends"))
    assert {"zookeeperd", "ipmitool"} <= set(deb_relations(deb, "Suggests"))


def test_client_package_relations(debs: dict[str, Path]) -> None:
    depends = deb_relations(debs["pvc-client-cli"], "Depends")
    assert depends["python3-pvcd"] == "= " + pvcd.__version__
    assert "python3-click" in depends
    assert "ceph-common" in deb_relations(debs["pvc-client-cli"], "Recommends")  # pvc storage
    assert "pvc-daemon" not in depends  # an operator's workstation needs no daemon


def test_library_package_contents(debs: dict[str, Path], checkout: Path) -> None:
    entries = deb_entries(debs["python3-pvcd"])
    modules = sorted(p.relative_to(checkout).as_posix() for p in (checkout / "pvcd").rglob("*.py"))
    assert modules, "no pvcd modules in the checkout"
    for module in modules:
        assert f"{SITE}/{module}" in entries, f"{module} is not packaged"
    assert f"{SITE}/pvcd-{pvcd.__version__}.dist-info" in entries
    assert not [e for e in entries if e.startswith(f"{SITE}/cli") or e.startswith(f"{SITE}/tests") or "/bin/" in e]


def test_client_package_contents(debs: dict[str, Path], checkout: Path) -> None:
    entries = deb_entries(debs["pvc-client-cli"])
    assert entries["/usr/bin/pvc"].startswith("-rwx")
    for module in sorted((checkout / "cli").glob("*.py")):
        assert f"{SITE}/cli/{module.name}" in entries
    assert not [e for e in entries if e.startswith(f"{SITE}/pvcd")]
    assert "/usr/share/doc/pvc-client-cli/cli.md" in entries


def test_daemon_package_contents(debs: dict[str, Path]) -> None:
    entries = deb_entries(debs["pvc-daemon"])
    assert entries["/usr/bin/pvcd"].startswith("-rwx")
    assert entries["/usr/lib/pvc/pvc-flush"].startswith("-rwx")
    for unit in ("pvcd.service", "pvc.target", "pvc-flush.service"):
        assert entries[f"/lib/systemd/system/{unit}"].startswith("-rw-r--r--")
    assert entries[SAMPLE].startswith("-rw-r--r--")
    for doc in ("install.md", "configuration.md", "operations.md", "networking.md", "networking.svg"):
        assert f"/usr/share/doc/pvc-daemon/{doc}" in entries  # where the units' Documentation= points
    assert not [e for e in entries if e.startswith(SITE)]
    everything = [e for deb in debs.values() for e in deb_entries(deb)]
    assert not [e for e in everything if "devcluster" in e and not e.startswith(f"{SITE}/pvcd/")]


def test_daemon_package_maintainer_scripts(debs: dict[str, Path], tmp_path: Path) -> None:
    deb = debs["pvc-daemon"]
    assert deb_control_file(deb, "conffiles", tmp_path).split() == [SAMPLE]
    postinst = deb_control_file(deb, "postinst", tmp_path)
    # pvcd.service and pvc.target are enabled; nothing is started by the
    # package (there is no configuration yet); the flush unit is left off.
    assert "deb-systemd-helper enable 'pvcd.service'" in postinst
    assert "deb-systemd-helper enable 'pvc.target'" in postinst
    assert "deb-systemd-invoke" not in postinst and "systemctl start" not in postinst
    assert re.search(r"was-enabled 'pvc-flush.service'; then\n\s*# Create new symlinks", postinst)
    assert "deb-systemd-invoke stop pvcd.service" in deb_control_file(deb, "prerm", tmp_path)


def test_packaged_sample_is_the_documented_example(debs: dict[str, Path], checkout: Path, tmp_path: Path) -> None:
    sample = (extract(debs["pvc-daemon"], tmp_path) / SAMPLE.lstrip("/")).read_text()
    assert sample == (checkout / "examples" / "pvcd.yaml").read_text()
    assert undocumented_keys(sample) == [], "every key of the sample needs a comment"


def test_undocumented_keys_are_found() -> None:
    text = "pvc:\n  # The node.\n  node: a\n  system:\n    port: 5\n    user: x  # the user\n"
    assert undocumented_keys(text) == ["pvc.system.port"]


def test_dpkg_installs_the_packages_and_they_work(installed_root: OverlayRoot) -> None:
    result = installed_root.run(
        "dpkg-query -W -f '${Package} ${Status}\\n' "
        + " ".join(PACKAGES)
        + f" && pvcd --check-config {SAMPLE} && pvcd --version && pvc --help && head -1 /usr/bin/pvcd"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for name in PACKAGES:
        assert f"{name} install ok installed" in lines
    assert f"{SAMPLE}: configuration is valid" in lines
    assert f"pvcd {pvcd.__version__}" in lines
    assert "Operate a pvcd cluster." in result.stdout
    assert lines[-1] == "#! /usr/bin/python3" or lines[-1] == "#!/usr/bin/python3"


def test_installed_pvcd_refuses_a_bad_configuration(installed_root: OverlayRoot) -> None:
    result = installed_root.run(
        f"sed 's/keepalive_interval: 5 /keepalive_interval: five /' {SAMPLE} > /tmp/bad.yaml"
        " && pvcd --check-config /tmp/bad.yaml"
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == (
        "pvc.system.fencing.intervals.keepalive_interval: must be a positive integer, got 'five'"
    )


def test_installation_enables_the_daemon_and_target_only(installed_root: OverlayRoot) -> None:
    result = installed_root.run("cd /etc/systemd/system && find . -name 'pvc*' | sort")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "./multi-user.target.wants/pvc.target",
        "./pvc.target.wants",
        "./pvc.target.wants/pvcd.service",
    ]


def test_packages_remove_and_purge_cleanly(debs: dict[str, Path], tmp_path: Path) -> None:
    root = OverlayRoot(tmp_path / "overlay", debs["pvc-daemon"].parent)
    files = " ".join(f"{OverlayRoot.MOUNTPOINT}/{debs[name].name}" for name in PACKAGES)
    result = root.run(
        f"dpkg -i {files} >/dev/null && dpkg --purge {' '.join(reversed(PACKAGES))}"
        " && ls /usr/bin/pvcd /usr/bin/pvc /etc/pvc /lib/systemd/system/pvcd.service"
        " /etc/systemd/system/pvc.target.wants 2>&1; true"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("No such file or directory") == 5, result.stdout
