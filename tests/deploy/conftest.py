"""Fixtures of the deployment tests: the Debian packages, built once per session
from a clean copy of the repository, and a throw-away root they are installed in.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy_helpers import (
    PACKAGES,
    OverlayRoot,
    clean_checkout,
    require_programs,
    run,
    system_env,
)

SETUP_HINT_BUILD = "run ./setup.sh test (it installs the build dependencies and the packages' Depends)"


@pytest.fixture(scope="session")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clean copy of the repository (see clean_checkout), built in place."""
    require_programs("git")
    return clean_checkout(tmp_path_factory.mktemp("build") / "pvc")


@pytest.fixture(scope="session")
def debs(checkout: Path) -> dict[str, Path]:
    """The binary packages, built by `dpkg-buildpackage -us -uc -b` in the checkout."""
    require_programs("dpkg-buildpackage", "dpkg-checkbuilddeps", "dh", "dpkg-deb")
    unmet = run(["dpkg-checkbuilddeps"], cwd=checkout, env=system_env())
    if unmet.returncode != 0:
        pytest.fail(f"{unmet.stderr.strip()}: {SETUP_HINT_BUILD}")
    build = run(["dpkg-buildpackage", "-us", "-uc", "-b"], cwd=checkout, env=system_env())
    (checkout.parent / "build.log").write_text(build.stdout + build.stderr)
    assert build.returncode == 0, f"dpkg-buildpackage failed:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}"
    built = {path.name.split("_")[0]: path for path in checkout.parent.glob("*.deb")}
    assert sorted(built) == sorted(PACKAGES), f"built {sorted(built)}"
    return built


@pytest.fixture(scope="session")
def installed_root(debs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> OverlayRoot:
    """This machine's root with the three packages installed by `dpkg -i`, in an overlay."""
    reason = OverlayRoot.available(tmp_path_factory.mktemp("overlay-probe"))
    if reason:
        pytest.fail(f"installing the packages needs an overlay of /: {reason}")
    root = OverlayRoot(tmp_path_factory.mktemp("overlay"), debs["pvc-daemon"].parent)
    files = " ".join(f"{OverlayRoot.MOUNTPOINT}/{debs[name].name}" for name in PACKAGES)
    result = root.run(f"dpkg -i {files}")
    assert result.returncode == 0, (
        "dpkg -i failed (are the packages' Depends installed? "
        + SETUP_HINT_BUILD
        + "):\n"
        + result.stdout[-3000:]
        + result.stderr[-3000:]
    )
    return root
