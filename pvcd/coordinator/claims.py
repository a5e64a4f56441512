"""The election's records in ZooKeeper, as values (pure).

A coordinator claims the primary role by creating an ephemeral sequential
child of `schema.PRIMARY` named `NODE~TOKEN~SEQUENCE`. The claim with the
lowest sequence is the primary: ZooKeeper hands out sequences in order, so a
later claim can never overtake an earlier one, and the claim vanishes with the
session that made it. TOKEN is random per process: it lets a process recognise
its own claims (even one whose creation it never heard back about) and tells
a restarted daemon that the claim of its previous life is not its own.

An operator's handover request at `schema.HANDOVER` names the primary asked to
step down (`from`) and its successor (`to`, or null for any other coordinator).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pvcd.zk.schema import CLAIM_SEPARATOR


@dataclass(frozen=True, order=True)
class Claim:
    """One child of the claims directory; ordered by sequence, as ZooKeeper ranks them."""

    sequence: int
    node: str
    token: str
    name: str


def parse_claim(name: str) -> Claim | None:
    """The claim a child name stands for, or None for anything that is not a claim."""
    parts = name.rsplit(CLAIM_SEPARATOR, 2)
    if len(parts) != 3 or not parts[0] or not parts[1] or not parts[2].isdigit():
        return None
    return Claim(sequence=int(parts[2]), node=parts[0], token=parts[1], name=name)


def claims_of(children: Iterable[str]) -> list[Claim]:
    """The claims among `children`, lowest sequence (the primary) first."""
    return sorted(claim for claim in map(parse_claim, children) if claim is not None)


@dataclass(frozen=True)
class Handover:
    """An operator's request: `source` steps down; `target` (None: any other coordinator) takes over."""

    source: str
    target: str | None

    def to_json(self) -> dict[str, Any]:
        return {"from": self.source, "to": self.target}

    @classmethod
    def from_json(cls, value: Any) -> Handover | None:
        """The request, or None for a value that is not one (the primary then deletes it)."""
        if not isinstance(value, dict) or not isinstance(value.get("from"), str):
            return None
        target = value.get("to")
        if target is not None and not isinstance(target, str):
            return None
        return cls(source=value["from"], target=target)
