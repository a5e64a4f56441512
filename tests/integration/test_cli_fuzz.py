"""`pvc` fed random input as a real process (issue 14, item 4): random and mangled domain XML for
`pvc vm define`, and huge, unicode and control-character names for VMs, nodes, networks and pools.

The outcome is always the same: a refusal is one line on stderr, a non-zero exit and no
traceback, and nothing stored changes (an XML document that happens to be a valid domain is
defined, then removed again). Each run costs a process start, so the examples are few; the
oddest cases are in test_cli_input.py.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from helpers import bin_path, vm_cluster, vm_xml, wait_for_node_figures
from pvcd.cluster import vm_records as records
from pvcd.zk import schema

SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


def run(*args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("PVC_ZOOKEEPER", "PVCD_CONFIG_FILE")}
    result = subprocess.run([bin_path("pvc"), *args], capture_output=True, timeout=60, env=environment)
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.decode(errors="replace"), result.stderr.decode(errors="replace")
    )


def refused(result: subprocess.CompletedProcess[str]) -> None:
    """A non-zero exit, one short line on stderr, no traceback."""
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode != 0, result.stdout[:500]
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pvc: "), result.stderr[:1000]
    assert len(lines[0]) < 400, lines[0][:500]


def tree(zk, path: str) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    if not zk.exists(path):
        return found
    for child in zk.get_children(path):
        child_path = f"{path}/{child}"
        found[child_path] = zk.get(child_path)[0]
        found.update(tree(zk, child_path))
    return found


def stored(zk) -> tuple[dict[str, bytes], ...]:
    """What an operator's command could change: VMs, their index, networks, node commands and fences."""
    commands = {
        path: zk.get(path)[0]
        for node in zk.get_children(schema.NODES)
        for path in (schema.node_command(node), schema.node_fence(node))
        if zk.exists(path)
    }
    return (
        tree(zk, schema.VMS),
        tree(zk, schema.VM_UUIDS),
        tree(zk, schema.NODE_VMS),
        tree(zk, schema.NETWORKS),
        commands,
    )


@pytest.fixture
def cluster(zk, make_config):
    yield from vm_cluster(make_config)


@pytest.fixture
def two_nodes(zk, zookeeper, cluster):
    cluster(("hv1", "hv2"))
    wait_for_node_figures(zk, ("hv1", "hv2"))
    assert run("--zookeeper", zookeeper.address, "vm", "define", "-", "--node", "hv1").returncode != 0  # warm up


# -- domain XML ------------------------------------------------------------------------

VALID = vm_xml("fuzz1", 128)
xml_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)
tags = st.sampled_from(["domain", "name", "uuid", "memory", "vcpu", "devices", "interface", "source", "x", "d:o"])
attributes = st.dictionaries(
    st.sampled_from(["type", "unit", "bridge", "network", "xmlns", "a"]), xml_text.map(lambda t: t[:20]), max_size=2
)


@st.composite
def elements(draw: st.DrawFn, depth: int = 0) -> str:
    tag = draw(tags)
    attrs = "".join(
        f" {key}='{value.replace('&', '&amp;').replace('<', '&lt;').replace(chr(39), '&apos;')}'"
        for key, value in draw(attributes).items()
    )
    inner = (
        "".join(draw(st.lists(elements(depth + 1), max_size=3)))
        if depth < 3 and draw(st.booleans())
        else draw(xml_text).replace("&", "&amp;").replace("<", "&lt;")
    )
    return f"<{tag}{attrs}>{inner}</{tag}>"


@st.composite
def mangled(draw: st.DrawFn) -> str:
    """The valid domain with a slice cut out, replaced or repeated."""
    start = draw(st.integers(0, len(VALID) - 1))
    end = draw(st.integers(start, min(len(VALID), start + 40)))
    how = draw(st.sampled_from(("cut", "replace", "repeat")))
    if how == "cut":
        return VALID[:start] + VALID[end:]
    if how == "replace":
        return VALID[:start] + draw(xml_text) + VALID[end:]
    return VALID[:end] + VALID[start:end] * draw(st.integers(2, 50_000)) + VALID[end:]


domain_documents = st.one_of(
    xml_text.map(str.encode),
    elements().map(str.encode),
    mangled().map(str.encode),
    st.binary(max_size=200),
    st.sampled_from(
        [
            b"\xef\xbb\xbf" + b"\xff" * 10,
            b"<?xml version='1.0' encoding='latin-1'?><domain type='test'><name>\xe9</name></domain>",
            b"<!DOCTYPE lol [<!ENTITY a 'aaaa'><!ENTITY b '&a;&a;&a;'>]><domain>&b;</domain>",
            b"<domain type='test' xmlns:x='urn:x'><name>" + ("é" * 70_000).encode() + b"</name></domain>",
            b"<" * 100_000,
        ]
    ),
)


@SETTINGS
@given(document=domain_documents)
@example(document=VALID.replace("<memory unit='MiB'>128</memory>", "<memory unit='MiB'>1e400</memory>").encode())
@example(document=VALID.replace("</domain>", "<devices><interface type='network'><source network='x'/>" * 3).encode())
def test_random_domain_xml_is_refused_in_one_line_or_defined(
    document: bytes, zk, zookeeper, two_nodes, tmp_path: Path
) -> None:
    path = tmp_path / "domain.xml"
    path.write_bytes(document)
    before = stored(zk)
    result = run("--zookeeper", zookeeper.address, "vm", "define", str(path), "--node", "hv1")
    if result.returncode == 0:  # a valid domain after all: defined, then removed again
        name = records.parse_domain_xml(document.decode()).name
        assert run("--zookeeper", zookeeper.address, "vm", "remove", name).returncode == 0
    else:
        refused(result)
    assert stored(zk) == before


# -- names -----------------------------------------------------------------------------

names = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=80),
    st.sampled_from(["é" * 70, "☃", "a/b", "..", ".", " hv1", "hv1 ", "x" * 100_000, "\u202ehv1", "hv\x01", "-1"]),
    st.integers(65, 100_000).map(lambda n: "n" * n),  # an argument is at most 128 KiB
)
COMMANDS: list[tuple[str, ...]] = [
    ("vm", "info"),
    ("vm", "start"),
    ("vm", "remove"),
    ("vm", "dump"),
    ("vm", "migrate"),
    ("node", "info"),
    ("node", "flush"),
    ("node", "confirm-fenced"),
    ("network", "info"),
    ("network", "remove"),
    ("storage", "volume", "list"),
]
EXISTING = {"hv1", "hv2"}


@SETTINGS
@given(command=st.sampled_from(COMMANDS), name=names)
@example(command=("network", "info"), name="1" + "0" * 5000)
@example(command=("network", "remove"), name="-99999999999999999999")
@example(command=("storage", "volume", "list"), name="p" * 100_000)
@example(command=("node", "flush"), name="ümlaut-node")
def test_huge_and_unicode_names_are_refused_in_one_line(
    command: tuple[str, ...], name: str, zk, zookeeper, two_nodes
) -> None:
    if name in EXISTING:
        return
    before = stored(zk)
    refused(run("--zookeeper", zookeeper.address, *command, "--", name))
    assert stored(zk) == before
