"""The election in ZooKeeper: observe, claim, release (a thin adapter over kazoo).

Every call here is asynchronous underneath and waits at most `timeout`:
kazoo's synchronous calls wait without limit — a request made while the
connection is down waits for kazoo to reconnect, however long the outage —
and would hold up the coordinator loop exactly when it must step down.

The recipe is kazoo's Lock reduced to its non-blocking core (see `claims`):
its blocking `acquire` retries without a deadline, and its queue decides the
next owner whereas a planned handover names it.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from kazoo.exceptions import KazooException, NoNodeError
from kazoo.handlers.threading import KazooTimeoutError
from kazoo.protocol.connection import _CONNECTION_DROP

from pvcd.coordinator.claims import Handover, claims_of
from pvcd.coordinator.decide import Observation
from pvcd.zk import schema
from pvcd.zk.store import Store, StoreError, decode, encode

log = logging.getLogger(__name__)


class ElectionUnavailable(Exception):
    """ZooKeeper did not answer in time, or refused; the message says which operation."""


class Election:
    """One coordinator process's view of, and moves in, the election."""

    def __init__(self, store: Store, node: str, timeout: float) -> None:
        self.store = store
        self.node = schema.validate_name(node)
        self.token = secrets.token_hex(4)
        self.timeout = timeout

    def _wait(self, what: str, results: list[Any], deadline: float) -> list[Any]:
        """The results (or exceptions) of asynchronous calls, or ElectionUnavailable at the deadline."""
        values: list[Any] = []
        for result in results:
            try:
                values.append(result.get(timeout=max(deadline - time.monotonic(), 0.0)))
            except NoNodeError as exc:
                values.append(exc)
            except KazooTimeoutError as exc:
                raise ElectionUnavailable(f"{what}: ZooKeeper did not answer within {self.timeout:.1f}s") from exc
            except KazooException as exc:
                raise ElectionUnavailable(f"{what}: {type(exc).__name__}") from exc
        return values

    def prepare(self) -> None:
        """Create the claims directory if this is the cluster's first coordinator."""
        client = self.store.client
        deadline = time.monotonic() + self.timeout
        self._wait("creating " + schema.PRIMARY, [client.ensure_path_async(schema.PRIMARY)], deadline)

    def observe(self, watch: Callable[[Any], None]) -> Observation:
        """Claims and handover request in one round trip, leaving watches on both.

        The `sync` goes first so the reads reflect the ZooKeeper leader's
        latest state even when the server we talk to is a lagging follower.
        """
        client = self.store.client
        sent_at = time.monotonic()
        results = [
            client.sync_async(schema.PRIMARY),
            client.get_children_async(schema.PRIMARY, watch=watch),
            client.exists_async(schema.HANDOVER, watch=watch),
            client.get_async(schema.HANDOVER),
        ]
        _, children, _, handover = self._wait("observing the election", results, sent_at + self.timeout)
        if isinstance(children, NoNodeError):
            raise ElectionUnavailable(f"{schema.PRIMARY} does not exist")
        if isinstance(handover, NoNodeError):
            request, version = None, None
        else:
            data, stat = handover
            request, version = _handover(data), stat.version
        return Observation(
            sent_at=sent_at, claims=tuple(claims_of(children)), handover=request, handover_version=version
        )

    def claim(self, observation: Observation) -> None:
        """Create our claim, deleting the handover request (if any) in the same transaction."""
        transaction = self.store.client.transaction()
        transaction.create(
            schema.primary_claim_prefix(self.node, self.token),
            encode({"node": self.node}),
            ephemeral=True,
            sequence=True,
        )
        if observation.handover_version is not None:
            transaction.delete(schema.HANDOVER, version=observation.handover_version)
        deadline = time.monotonic() + self.timeout
        (results,) = self._wait("claiming the primary role", [transaction.commit_async()], deadline)
        failures = [type(result).__name__ for result in results if isinstance(result, Exception)]
        if failures:
            raise ElectionUnavailable(f"claim refused ({', '.join(failures)}): the election changed meanwhile")

    def release(self, observation: Observation) -> None:
        """Delete every claim of ours, the primary one included."""
        self._delete_claims([claim.name for claim in observation.claims if claim.token == self.token])

    def prune(self, observation: Observation) -> None:
        """Delete our claims that lost the race to another claim."""
        self._delete_claims([claim.name for claim in observation.strays(self.token)])

    def _delete_claims(self, names: list[str]) -> None:
        client = self.store.client
        results = [client.delete_async(f"{schema.PRIMARY}/{name}") for name in names]
        self._wait("deleting our claims", results, time.monotonic() + self.timeout)

    def discard_handover(self, observation: Observation) -> None:
        """Delete a handover request that no longer applies (if it is still the one we saw)."""
        if observation.handover_version is None:
            return
        result = self.store.client.delete_async(schema.HANDOVER, version=observation.handover_version)
        (outcome,) = self._wait("deleting the handover request", [result], time.monotonic() + self.timeout)
        if isinstance(outcome, Exception):
            return
        request = observation.handover.to_json() if observation.handover else "(unreadable)"
        log.warning("Discarded handover request %s: it does not ask primary %s to step down", request, self.node)

    def drop_connection(self) -> None:
        """Make kazoo drop its connection and reconnect (to another server if it can).

        kazoo counts every request sent as a heartbeat and never checks that
        requests are answered; the coordinator loop sends one every tick, so a
        server that silently stopped answering would go unnoticed. This is
        kazoo's own connection-drop request (the one its test suite uses): the
        session survives, pending requests fail with ConnectionLoss at once.
        """
        client = self.store.client
        client._call(_CONNECTION_DROP, client.handler.async_result())


def _handover(data: bytes) -> Handover | None:
    try:
        return Handover.from_json(decode(data, schema.HANDOVER))
    except StoreError:
        return None
