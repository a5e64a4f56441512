"""Random and hostile configuration documents (issue 14, item 4): `parse_config` and `load_config`
either accept a document or raise `ConfigError` whose problems are single short lines; nothing else
escapes. Fuzzed in-process (fast, many examples); `pvcd --check-config` itself is run as a process
on a few of the oddest files (one line per problem on stderr, exit 2, never a traceback).
"""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pvcd.config import Config, ConfigError, load_config, parse_config

EXAMPLE_FILE = Path(__file__).resolve().parents[2] / "examples" / "pvcd.yaml"
EXAMPLE: dict[str, Any] = yaml.safe_load(EXAMPLE_FILE.read_text())
MAX_PROBLEM = 400

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**300), 2**300),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(["", "yes", "on", "~", "0x10", "1e400", "☃" * 40, "a\nb", "\u0000", "x" * 5000, "../../etc"]),
)
junk = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.one_of(st.text(max_size=12), st.integers()), inner, max_size=4)
    ),
    max_leaves=15,
)


def paths_of(document: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path of a nested document (mappings and lists)."""
    found = [prefix] if prefix else []
    if isinstance(document, dict):
        for key, value in document.items():
            found += paths_of(value, (*prefix, key))
    elif isinstance(document, list):
        for index, value in enumerate(document):
            found += paths_of(value, (*prefix, index))
    return found


EXAMPLE_PATHS = paths_of(EXAMPLE)


@st.composite
def mutated_example(draw: st.DrawFn) -> Any:
    """The valid example with a few values replaced by junk or keys removed or added."""
    document = copy.deepcopy(EXAMPLE)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(EXAMPLE_PATHS))
        parent: Any = document
        try:
            for key in path[:-1]:
                parent = parent[key]
            how = draw(st.sampled_from(("replace", "delete", "add")))
            if how == "replace":
                parent[path[-1]] = draw(junk)
            elif how == "delete" and isinstance(parent, dict):
                del parent[path[-1]]
            elif isinstance(parent, dict):
                parent[draw(st.text(max_size=12))] = draw(junk)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change removed or replaced the way there
    return document


def check_outcome(parse: Any) -> None:
    """Valid, or ConfigError with one short line per problem; any other exception fails the test."""
    try:
        config = parse()
    except ConfigError as exc:
        assert exc.problems, "a ConfigError names at least one problem"
        for problem in exc.problems:
            assert isinstance(problem, str) and "\n" not in problem and len(problem) < MAX_PROBLEM, problem[:300]
    else:
        assert isinstance(config, Config)


SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(st.one_of(junk, mutated_example()))
@example({"pvc": {"node": "x" * 100_000}})
@example({"pvc": {"node": "hv1", "cluster": {"coordinators": [{"name": ["a"]}]}}})
@example({"pvc": [1, 2, {"a": None}]})
@example({("a", "b"): 1})
def test_any_document_is_valid_or_one_line_per_problem(document: Any) -> None:
    check_outcome(lambda: parse_config(document))


ODD_YAML: list[bytes] = [
    b"!!python/object/apply:os.system ['echo pwned']",
    b"pvc: !!python/object:pvcd.config.Config {}\n",
    b"pvc:\n  node: !!binary aGVsbG8=\n",
    b"pvc: &a [*a]\n",
    b"a: &a ['x', 'x']\nb: &b [*a, *a, *a, *a]\nc: &c [*b, *b, *b, *b]\n"
    b"d: &d [*c, *c, *c, *c]\npvc: [*d, *d, *d, *d]\n",  # a billion laughs, small
    b"pvc:\n  node: 1" + b"0" * 5000 + b"\n",
    b"[" * 5000 + b"]" * 5000,
    b"{a: " * 2000 + b"1" + b"}" * 2000,
    b"pvc:\n  node: hv1\n  node: hv2\n",
    b"pvc: {<<: {node: hv1}, <<: [1, 2]}\n",
    b"pvc:\n  node: !!timestamp not-a-date\n",
    b"pvc:\n  node: !!int abc\n",
    b"pvc:\n  node: !!float xyz\n",
    b"\xff\xfe\x00p\x00v\x00c\x00",
    b"pvc:\n  node: \xc3\x28\n",
    b"pvc:\n\tnode: hv1\n",
    b"%YAML 9.9\n---\npvc: {}\n",
    b"--- a\n--- b\n",
    b"? [1, 2]\n: 3\n",
    b"pvc: !custom {}\n",
    b"",
    b"\x00",  # found by the fuzzing: PyYAML's reader error spanned two lines
    b"pvc:\n  " + b"k" * 3000 + b": 1\n  " + b"k" * 3000 + b": 2\n",  # a duplicate key quoted whole
]


@pytest.mark.parametrize("text", ODD_YAML, ids=range(len(ODD_YAML)))
def test_odd_yaml_files_are_reported_not_crashed_on(text: bytes, tmp_path: Path) -> None:
    path = tmp_path / "pvcd.yaml"
    path.write_bytes(text)
    check_outcome(lambda: load_config(str(path)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(junk, mutated_example()), st.sampled_from(("safe_dump", "anchored", "raw")), st.binary(max_size=40))
def test_random_yaml_files_are_valid_or_reported(document: Any, how: str, noise: bytes) -> None:
    if how == "raw":
        text = noise
    else:
        try:
            dumped = yaml.safe_dump(document, allow_unicode=True)
        except (yaml.YAMLError, ValueError):
            return
        text = dumped.encode() if how == "safe_dump" else b"base: &base\n  x: 1\n" + dumped.encode() + noise
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".yaml") as file:
        file.write(text)
        file.flush()
        check_outcome(lambda: load_config(file.name))


@pytest.mark.parametrize("index", [0, 4, 5, 6, 13])
def test_check_config_prints_problems_and_exits_2_without_a_traceback(index: int, tmp_path: Path) -> None:
    path = tmp_path / "pvcd.yaml"
    path.write_bytes(ODD_YAML[index])
    done = subprocess.run(
        [sys.executable, "-m", "pvcd.main", "--check-config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    lines = done.stderr.splitlines()
    assert lines and all(0 < len(line) < MAX_PROBLEM for line in lines)
