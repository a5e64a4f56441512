"""Rendering for `--format pretty|json`: aligned tables and stable JSON."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import click

FORMATS = ("pretty", "json")


def format_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """`--format pretty|json`, the same on every command."""
    return click.option(
        "--format",
        "output_format",
        type=click.Choice(FORMATS),
        default="pretty",
        show_default=True,
        help="pretty: aligned text; json: machine-readable, stable keys",
    )(func)


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Columns as wide as their widest cell; numbers right-aligned."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [bool(rows) and all(row[i] is None or _is_number(row[i]) for row in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(list(headers))] + [line(r) for r in cells])


def key_values(pairs: Sequence[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k + ':':<{width + 1}} {_cell(v)}" for k, v in pairs)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value) or "-"
    return str(value)
