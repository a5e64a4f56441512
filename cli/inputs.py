"""Node names operators type, checked before they reach a ZooKeeper path or a message.

A name ZooKeeper cannot take (control characters, a 100,000-character
argument) would otherwise surface as a ZooKeeper error or a message as long
as the input; the rule itself is `pvcd.vm.records.check_node_name`.
"""

from __future__ import annotations

from cli.connection import CliError
from pvcd.vm.records import InvalidVm, check_node_name


def node_name(name: str) -> str:
    """`name` if it can be a node's name; CliError (one line, exit 1) if not."""
    try:
        return check_node_name(name)
    except InvalidVm as exc:
        raise CliError(str(exc)) from exc
