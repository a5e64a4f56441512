"""When a node must kill its own VMs (pure).

The fencer's rules about a dead node live in `flow`; this is the other side:
a node that cannot deliver keepalives for its suicide window may already have
been declared dead, so it destroys its VMs before anyone else starts them.
"""

from __future__ import annotations


def should_self_fence(unreachable_for: float, suicide_intervals: int, interval: float) -> bool:
    """A node cut off from ZooKeeper for its suicide window must destroy its own VMs."""
    return suicide_intervals > 0 and unreachable_for >= suicide_intervals * interval
