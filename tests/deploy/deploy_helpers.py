"""Helpers for the deployment tests: a clean copy of the repository, the Debian
package tools, a throw-away root to install the packages into, unit-file and
sample-file parsing.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
# Debian's own tools only: dpkg-buildpackage must build with /usr/bin/python3
# (with its python3-build, python3-setuptools...), not with whatever python3
# comes first on the caller's PATH.
SYSTEM_PATH = "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
PACKAGES = ("python3-pvcd", "pvc-client-cli", "pvc-daemon")  # in dependency order
UNITS = ("pvcd.service", "pvc.target", "pvc-flush.service")
SETUP_HINT = "run ./setup.sh test (it installs the Debian packages the deployment tests need)"


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    kwargs.setdefault("text", True)
    kwargs.setdefault("timeout", 300)
    return subprocess.run(argv, check=False, **kwargs)


def system_env(**extra: str) -> dict[str, str]:
    env = {"PATH": SYSTEM_PATH, "HOME": os.environ.get("HOME", "/root"), "LC_ALL": "C.UTF-8"}
    env.update(extra)
    return env


def require_programs(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p, path=SYSTEM_PATH) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: {SETUP_HINT}")


_BUILD_PRODUCT = re.compile(
    r"^(?:\.pybuild/|debian/(?:tmp|\.debhelper|python3-pvcd|pvc-daemon|pvc-client-cli)/"
    r"|debian/files$|debian/[^/]*\.(?:substvars|debhelper\.log|debhelper)$|debian/debhelper-build-stamp$)"
)


def clean_checkout(destination: Path) -> Path:
    """Copy what a fresh clone of the working tree would hold into ``destination``.

    Tracked files plus new files that .gitignore does not exclude, as they are
    in the working tree now: in CI (a fresh clone) that is exactly the clone;
    in a developer's tree it includes the uncommitted work, without build
    products, virtualenvs or caches.
    """
    listed = run(
        ["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        env=system_env(),
    )
    assert listed.returncode == 0, listed.stderr
    destination.mkdir(parents=True, exist_ok=True)
    for name in sorted(set(filter(None, listed.stdout.split("\0")))):
        if _BUILD_PRODUCT.match(name):
            continue  # left by a package build in the working tree itself
        source = REPO / name
        if not source.is_file() or source.is_symlink():
            continue  # deleted in the working tree, or not a regular file
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
    return destination


def deb_field(deb: Path, field: str) -> str:
    result = run(["dpkg-deb", "-f", str(deb), field], env=system_env())
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def deb_relations(deb: Path, field: str) -> dict[str, str]:
    """A relationship field as {package: version constraint or ''}."""
    relations: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in deb_field(deb, field).split(","))):
        match = re.fullmatch(r"([a-z0-9.+:-]+)(?:\s*\((.*)\))?", item)
        assert match, f"unexpected relation {item!r} in {field} of {deb.name}"
        relations[match[1]] = match[2] or ""
    return relations


def deb_entries(deb: Path) -> dict[str, str]:
    """Every path of a package's data (without the leading '.') and its mode string."""
    result = run(["dpkg-deb", "-c", str(deb)], env=system_env())
    assert result.returncode == 0, result.stderr
    entries = {}
    for line in result.stdout.splitlines():
        fields = line.split(None, 5)
        path = fields[5].split(" -> ")[0]
        entries[path.removeprefix(".").rstrip("/") or "/"] = fields[0]
    return entries


def deb_control_file(deb: Path, name: str, workdir: Path) -> str | None:
    target = workdir / f"{deb.stem}-control"
    if not target.exists():
        result = run(["dpkg-deb", "-e", str(deb), str(target)], env=system_env())
        assert result.returncode == 0, result.stderr
    path = target / name
    return path.read_text() if path.exists() else None


def extract(deb: Path, workdir: Path) -> Path:
    target = workdir / f"{deb.stem}-data"
    if not target.exists():
        result = run(["dpkg-deb", "-x", str(deb), str(target)], env=system_env())
        assert result.returncode == 0, result.stderr
    return target


class OverlayRoot:
    """This machine's root file system under a private, writable overlay.

    Each command runs in its own mount namespace: an overlay whose lower layer
    is "/" (read-only to us) and whose upper layer is a directory of the test,
    chrooted into. Packages installed with dpkg there see this machine's real
    dpkg database and installed dependencies, yet nothing reaches the machine
    itself; changes persist from one command to the next through the upper
    layer. ``shared`` is bind-mounted at /mnt/pvc-test inside.
    """

    MOUNTPOINT = "/mnt/pvc-test"

    def __init__(self, directory: Path, shared: Path) -> None:
        self.directory = directory
        self.shared = shared
        for name in ("upper", "work", "root"):
            (directory / name).mkdir(parents=True, exist_ok=True)

    def run(self, command: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        d = self.directory
        root = d / "root"
        script = "\n".join(
            [
                "set -e",
                f"mount -t overlay overlay -o lowerdir=/,upperdir={d / 'upper'},workdir={d / 'work'} {root}",
                f"mount --bind /proc {root}/proc",
                f"mount --bind /dev {root}/dev",
                f"mkdir -p {root}{self.MOUNTPOINT}",
                f"mount --bind {self.shared} {root}{self.MOUNTPOINT}",
                f"exec chroot {root} /usr/bin/env -i PATH={SYSTEM_PATH} HOME=/root LC_ALL=C.UTF-8 "
                f"DEBIAN_FRONTEND=noninteractive /bin/sh -c {shlex.quote(command)}",
            ]
        )
        return run(["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script], timeout=timeout)

    @classmethod
    def available(cls, directory: Path) -> str | None:
        """None when overlays can be made here, else why not."""
        if os.geteuid() != 0:
            return "needs root (mount namespaces and overlayfs)"
        probe = cls(directory, directory)
        result = probe.run("true", timeout=60)
        if result.returncode != 0:
            return f"cannot make an overlay of /: {result.stderr.strip()}"
        return None


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values in order]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {line!r}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def words(values: list[str]) -> list[str]:
    return [word for value in values for word in value.split()]


def seconds(value: str) -> float:
    """A systemd time span such as 30min, 5s, 1h 30min, or plain seconds."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "hr": 3600}
    total = 0.0
    for number, unit in re.findall(r"([0-9.]+)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


_KEY_LINE = re.compile(r"^(\s*)([A-Za-z_][A-Za-z0-9_]*):(.*)$")
NETWORKS = ("upstream", "cluster", "storage")


def undocumented_keys(text: str) -> list[str]:
    """Keys of a commented YAML file that no comment explains.

    A key counts as documented when its line carries a comment, when a
    comment line stands directly above it, or when a comment directly above
    (or beside) one of its enclosing sections names it. Keys repeated per
    network (upstream, cluster, storage) need documenting once. Only leaf keys
    (those with a value on their line, or a list under them) are checked.
    """
    lines = text.splitlines()
    documented: set[str] = set()
    seen: list[str] = []
    stack: list[tuple[int, str, str]] = []  # (indent, key, the comment text about it)
    pending: list[str] = []  # comment lines directly above
    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped)
            continue
        match = _KEY_LINE.match(line)
        if not match:
            pending = [] if not stripped.startswith("-") else pending
            continue
        indent, key, rest = len(match[1]), match[2], match[3]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        value, _, comment = rest.partition("#")
        about = " ".join(pending + ([comment] if comment else []))
        keys = [k for _, k, _ in stack] + [key]
        path = ".".join(
            "*" if i and keys[i - 1] in ("networks", "networking") and k in NETWORKS else k for i, k in enumerate(keys)
        )
        is_leaf = bool(value.strip()) or _list_follows(lines, index, indent)
        if is_leaf:
            seen.append(path)
            if about or any(re.search(rf"\b{re.escape(key)}\b", note) for _, _, note in stack):
                documented.add(path)
        else:
            stack.append((indent, key, about))
        pending = []
    return sorted({path for path in seen if path not in documented})


def _list_follows(lines: list[str], index: int, indent: int) -> bool:
    for line in lines[index + 1 :]:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        return stripped.startswith("-") and len(line) - len(line.lstrip()) >= indent
    return False
