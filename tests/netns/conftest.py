"""Fixtures for the network namespace tests: one lab per module (pvcd.devcluster.netlab).

Needs root (CI runs as root); without it the tests skip, saying so (the
`pytestmark` of each test module). Every namespace, bridge and process the
lab creates is removed at the end, whatever happened.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pvcd.devcluster.netlab import Lab
from pvcd.devcluster.zookeeper import zookeeper_available


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if not zookeeper_available():
        pytest.fail("ZooKeeper is not installed: run the README's test command, which installs it")
    laboratory = Lab(tmp_path_factory.mktemp("netns"))
    try:
        laboratory.setup()
        yield laboratory
    finally:
        laboratory.teardown()


@pytest.fixture
def nodes(lab: Lab) -> Iterator[Lab]:
    """The lab with an empty /pvc; the test adds and starts nodes, removed afterwards."""
    lab.clear_zookeeper()
    try:
        yield lab
    finally:
        lab.remove_nodes()
