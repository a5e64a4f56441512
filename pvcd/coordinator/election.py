"""The election in the store: observe, claim, release (a thin adapter).

Every call here is asynchronous underneath and waits at most `timeout`:
a synchronous call may wait without limit (kazoo's do: a request made while the
connection is down waits for the reconnection, however long the outage) and
would hold up the coordinator loop exactly when it must step down.

The recipe is kazoo's Lock reduced to its non-blocking core (see `claims`):
its blocking `acquire` retries without a deadline, and its queue decides the
next owner whereas a planned handover names it.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, TypeVar

from pvcd.coordinator.claims import Handover, claims_of
from pvcd.coordinator.decide import Observation
from pvcd.zk import schema
from pvcd.zk.base import Pending, Store, StoreError, StoreTimeout, StoreUnavailable, Unreadable

log = logging.getLogger(__name__)

T = TypeVar("T")


class ElectionUnavailable(Exception):
    """ZooKeeper did not answer in time, or refused; the message says which operation."""


class Election:
    """One coordinator process's view of, and moves in, the election."""

    def __init__(self, store: Store, node: str, timeout: float) -> None:
        self.store = store
        self.node = schema.validate_name(node)
        self.token = secrets.token_hex(4)
        self.timeout = timeout

    def _wait(self, what: str, pending: Pending[T], deadline: float) -> T:
        """The answer of an asynchronous call, or ElectionUnavailable at the deadline or on a refusal."""
        try:
            return pending.result(timeout=max(deadline - time.monotonic(), 0.0))
        except StoreTimeout as exc:
            raise ElectionUnavailable(f"{what}: ZooKeeper did not answer within {self.timeout:.1f}s") from exc
        except StoreError as exc:
            raise ElectionUnavailable(f"{what}: {exc}") from exc

    def prepare(self) -> None:
        """Create the claims directory if this is the cluster's first coordinator."""
        deadline = time.monotonic() + self.timeout
        self._wait("creating " + schema.PRIMARY, self.store.ensure_path_async(schema.PRIMARY), deadline)

    def observe(self, watch: Callable[[Any], None]) -> Observation:
        """Claims and handover request in one round trip, leaving watches on both.

        The `sync` goes first so the reads reflect the ZooKeeper leader's
        latest state even when the server we talk to is a lagging follower.
        """
        store = self.store
        sent_at = time.monotonic()
        deadline = sent_at + self.timeout
        what = "observing the election"
        synced = store.sync_async(schema.PRIMARY)
        listed = store.children_async(schema.PRIMARY, watch=watch)
        watched = store.exists_async(schema.HANDOVER, watch=watch)
        read = store.get_async(schema.HANDOVER)
        self._wait(what, synced, deadline)
        children = self._wait(what, listed, deadline)
        self._wait(what, watched, deadline)
        request: Handover | None = None
        version: int | None = None
        try:
            handover = self._wait(what, read, deadline)
        except ElectionUnavailable as exc:
            if not isinstance(exc.__cause__, Unreadable):
                raise
            version = exc.__cause__.version  # not JSON: the primary deletes it
        else:
            if handover is not None:
                request, version = Handover.from_json(handover.value), handover.version
        if children is None:
            raise ElectionUnavailable(f"{schema.PRIMARY} does not exist")
        return Observation(
            sent_at=sent_at, claims=tuple(claims_of(children)), handover=request, handover_version=version
        )

    def claim(self, observation: Observation) -> None:
        """Create our claim, deleting the handover request (if any) in the same transaction."""
        transaction = self.store.transaction().create(
            schema.primary_claim_prefix(self.node, self.token),
            {"node": self.node},
            ephemeral=True,
            sequential=True,
        )
        if observation.handover_version is not None:
            transaction.delete(schema.HANDOVER, version=observation.handover_version)
        try:
            transaction.commit(timeout=self.timeout)
        except StoreTimeout as exc:
            raise ElectionUnavailable(
                f"claiming the primary role: ZooKeeper did not answer within {self.timeout:.1f}s"
            ) from exc
        except StoreUnavailable as exc:
            raise ElectionUnavailable(f"claiming the primary role: {exc}") from exc
        except StoreError as exc:
            raise ElectionUnavailable(f"claim refused ({exc}): the election changed meanwhile") from exc

    def release(self, observation: Observation) -> None:
        """Delete every claim of ours, the primary one included."""
        self._delete_claims([claim.name for claim in observation.claims if claim.token == self.token])

    def prune(self, observation: Observation) -> None:
        """Delete our claims that lost the race to another claim."""
        self._delete_claims([claim.name for claim in observation.strays(self.token)])

    def _delete_claims(self, names: list[str]) -> None:
        deadline = time.monotonic() + self.timeout
        pending = [self.store.delete_async(f"{schema.PRIMARY}/{name}") for name in names]
        for result in pending:
            self._wait("deleting our claims", result, deadline)

    def discard_handover(self, observation: Observation) -> None:
        """Delete a handover request that no longer applies (if it is still the one we saw)."""
        if observation.handover_version is None:
            return
        pending = self.store.delete_async(schema.HANDOVER, version=observation.handover_version)
        deleted = self._wait("deleting the handover request", pending, time.monotonic() + self.timeout)
        if not deleted:
            return
        request = observation.handover.to_json() if observation.handover else "(unreadable)"
        log.warning("Discarded handover request %s: it does not ask primary %s to step down", request, self.node)

    def drop_connection(self) -> None:
        """Make the store drop its connection and reconnect (to another server if it can).

        kazoo counts every request sent as a heartbeat and never checks that
        requests are answered; the coordinator loop sends one every tick, so a
        server that silently stopped answering would go unnoticed. The session
        survives; pending requests fail at once.
        """
        self.store.drop_connection()
