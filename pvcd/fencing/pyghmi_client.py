"""IPMI through pyghmi, in the process that `pvcd.fencing.ipmi_worker` runs for one operation.

pyghmi's own retries can hold a call for many seconds, so every call runs in a
daemon thread the caller stops waiting for at its deadline; the worker process
that holds these threads exits after its one operation, which is what frees
them (see `pvcd.fencing.ipmi`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from pvcd.fencing.ipmi import (
    FenceReport,
    IpmiError,
    IpmiTarget,
    IpmiTimeout,
)
from pvcd.fencing.outcome import OffCommand, judge

LOGOUT_TIMEOUT = 1.0
"""A logout is sent once, unretried: an answer takes milliseconds, and a BMC
that does not answer within this has its session dropped on our side anyway."""
POLL_INTERVAL = 0.2


def _bounded(func: Callable[[], Any], timeout: float, what: str) -> Any:
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = func()
        except Exception as exc:  # reported to the caller as an IpmiError
            box["error"] = exc

    worker = threading.Thread(target=run, name=f"ipmi-{what}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise IpmiTimeout(f"{what}: no answer within {timeout:g}s")
    if "error" in box:
        error = box["error"]
        raise IpmiError(f"{what}: {getattr(error, 'args', [None])[0] or type(error).__name__}")
    return box.get("value")


class PyghmiClient:
    """Power control of one BMC through pyghmi, a fresh login per operation (see `IpmiDriver`)."""

    def __init__(self, call_timeout: float, off_wait: float) -> None:
        self.call_timeout = call_timeout
        self.off_wait = off_wait

    def _login(self, target: IpmiTarget) -> Any:
        """A new logged-in pyghmi session; failing here means nothing reached the host."""
        from pyghmi.ipmi import command

        opened: list[Any] = []

        def open_and_probe() -> Any:
            # pyghmi may hand back a session whose login failed; only an
            # answered request proves the session works.
            session = command.Command(bmc=target.host, userid=target.user, password=target.password, port=target.port)
            opened.append(session)
            session.get_power()
            return session

        try:
            return _bounded(open_and_probe, self.call_timeout, f"login to BMC {target}")
        except IpmiError:
            # Logged in but never answered: no later login may be handed this session.
            for session in opened:
                _forget(session.ipmi_session)
            raise

    def _logout(self, session: Any, target: IpmiTarget) -> None:
        """End the session, and make sure pyghmi can never hand it out again.

        The logout frees the BMC's session slot; it cannot finish when the BMC
        does not answer or a call still hangs on the session, and either way
        pyghmi keeps the session in a table from which the next login to the
        same BMC and user would take it (see `_forget`).
        """
        ipmi_session = session.ipmi_session
        # A BMC we cannot reach keeps the slot until its own session timeout.
        with suppress(IpmiError):
            _bounded(ipmi_session.logout, LOGOUT_TIMEOUT, f"logout from BMC {target}")
        _forget(ipmi_session)

    @contextmanager
    def _session(self, target: IpmiTarget) -> Iterator[Any]:
        session = self._login(target)
        try:
            yield session
        finally:
            self._logout(session, target)

    def _call(self, session: Any, target: IpmiTarget, func: Callable[[Any], Any], what: str) -> Any:
        return _bounded(lambda: func(session), self.call_timeout, f"{what} of {target}")

    def _read_power(self, session: Any, target: IpmiTarget) -> str:
        answer = self._call(session, target, lambda s: s.get_power(), "power state")
        state = (answer or {}).get("powerstate")
        if state not in ("on", "off"):
            raise IpmiError(f"power state of {target}: unreadable answer")
        return state

    def power_state(self, target: IpmiTarget) -> str:
        """'on' or 'off', as the BMC reports it."""
        with self._session(target) as session:
            return self._read_power(session, target)

    def fence(
        self,
        target: IpmiTarget,
        clock: Callable[[], float] = time.monotonic,
        sending_off: Callable[[], None] = lambda: None,
    ) -> FenceReport:
        """Power off and watch for off, on a session opened for this fence.

        Powering on again is the caller's choice, made only after the node's
        VMs have been started elsewhere, so that the rebooted node can never
        race its own recovery. `sending_off` is told just before the off
        command leaves, so that whoever watches this process knows from then
        on that the host may be off even if no report comes."""
        try:
            session = self._login(target)
        except IpmiError as exc:
            return FenceReport(judge(OffCommand.REFUSED, [], str(exc)), (f"no session ({exc})",))
        sending_off()
        try:
            self._call(session, target, lambda s: s.set_power("off"), "power off")
        except IpmiTimeout as exc:
            # The call may still hang inside pyghmi: watch on a new session.
            self._logout(session, target)
            off, step, off_error, watch_on = OffCommand.UNANSWERED, f"power off unanswered ({exc})", "", None
        except IpmiError as exc:
            self._logout(session, target)
            return FenceReport(judge(OffCommand.REFUSED, [], str(exc)), (f"power off refused ({exc})",))
        else:
            off, step, off_error, watch_on = OffCommand.ACCEPTED, "power off accepted", "", session
        observed = self._watch_for_off(watch_on, target, clock)
        seen = f"power states seen: {', '.join(s or 'no answer' for s in observed) or 'none'}"
        return FenceReport(judge(off, observed, off_error), (step, seen))

    def _watch_for_off(self, session: Any | None, target: IpmiTarget, clock: Callable[[], float]) -> list[str | None]:
        """Poll the power state for `off_wait` seconds or until off; None for a poll without an answer.

        A poll that fails ends its session and the next one logs in again,
        so a BMC that comes back within the wait can still confirm the off."""
        observed: list[str | None] = []
        deadline = clock() + self.off_wait
        try:
            while clock() < deadline:
                state: str | None
                try:
                    if session is None:
                        session = self._login(target)
                    state = self._read_power(session, target)
                except IpmiError:
                    state = None
                    if session is not None:
                        self._logout(session, target)
                        session = None
                observed.append(state)
                if state == "off":
                    break
                time.sleep(POLL_INTERVAL)
        finally:
            if session is not None:
                self._logout(session, target)
        return observed

    def power_on(self, target: IpmiTarget) -> None:
        """Start a fenced node again, once its VMs run elsewhere."""
        with self._session(target) as session:
            self._call(session, target, lambda s: s.set_power("on"), "power on")


def _forget(ipmi_session: Any) -> None:
    """Drop a pyghmi session from pyghmi's own tables.

    `Session.__new__` hands out any session it finds there instead of
    logging in anew: one still counted alive in `bmc_handlers`, or one left
    in `initting_sessions`, which pyghmi does not clear after a successful
    login, so even a logged-out session would be joined and fail ("no longer
    connected"). Keepalives keep a session looking alive. Removed from all
    three, the session can only be used by whoever still holds it.
    """
    from pyghmi.ipmi.private import session as pyghmi_session
    from pyghmi.ipmi.private import util as pyghmi_util

    known = pyghmi_session.Session
    with pyghmi_util.protect(pyghmi_session.KEEPALIVE_SESSIONS):
        known.keepalive_sessions.pop(ipmi_session, None)
    for key, candidate in list(known.initting_sessions.items()):
        if candidate is ipmi_session:
            known.initting_sessions.pop(key, None)
    for address, handlers in list(known.bmc_handlers.items()):
        for port, candidate in list(handlers.items()):
            if candidate is ipmi_session:
                handlers.pop(port, None)
        if not handlers:
            known.bmc_handlers.pop(address, None)
