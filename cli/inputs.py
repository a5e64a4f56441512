"""Operator input the command line takes as plain strings and numbers, checked before use.

A name ZooKeeper cannot take (control characters, a 100,000-character
argument) would otherwise surface as a ZooKeeper error or a message as long
as the input; the rule itself is `pvcd.cluster.vm_records.check_node_name`. A timeout
of `nan` passes click's range checks and then never expires, one of `inf`
overflows the clock.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import click

from cli.connection import CliError
from pvcd.cluster.vm_records import InvalidVm, check_node_name


def node_name(name: str) -> str:
    """`name` if it can be a node's name; CliError (one line, exit 1) if not."""
    try:
        return check_node_name(name)
    except InvalidVm as exc:
        raise CliError(str(exc)) from exc


if TYPE_CHECKING:
    _ParamType = click.ParamType[float, Any]
else:  # click before 8.2 (Debian bookworm's python3-click) has no generic ParamType
    _ParamType = click.ParamType


class Seconds(_ParamType):
    """A finite number of seconds from `low` to `high`: a usage error (exit 2) otherwise."""

    name = "seconds"

    def __init__(self, low: float, high: float) -> None:
        self.low = low
        self.high = high

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not math.isfinite(seconds) or not self.low <= seconds <= self.high:
            self.fail(f"{value!r} is not a number of seconds from {self.low:g} to {self.high:g}", param, ctx)
        return seconds
