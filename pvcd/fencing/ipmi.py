"""IPMI through pyghmi: power state, power off, power on, each under a timeout.

pyghmi's own retries can hold a call for many seconds, and a fencer must never
hang on one node's BMC, so every call runs in a daemon thread the caller stops
waiting for at its deadline. The password is held only in `IpmiTarget` (never in
its repr) and never appears in a log line or an error message of this module.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from pvcd.fencing.outcome import FenceVerdict, OffCommand, judge

DEFAULT_CALL_TIMEOUT = 6.0
DEFAULT_OFF_WAIT = 10.0
POLL_INTERVAL = 0.2


class IpmiError(Exception):
    """A BMC call failed or timed out; the message never contains the password."""


class IpmiTimeout(IpmiError):
    pass


@dataclass(frozen=True)
class IpmiTarget:
    host: str
    port: int
    user: str
    password: str = field(repr=False)

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


@dataclass(frozen=True)
class FenceReport:
    """A fence attempt: the verdict and what happened at each step, for the log."""

    verdict: FenceVerdict
    steps: tuple[str, ...]


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


class IpmiDriver:
    """Power control of one BMC at a time through pyghmi."""

    def __init__(self, call_timeout: float = DEFAULT_CALL_TIMEOUT, off_wait: float = DEFAULT_OFF_WAIT) -> None:
        self.call_timeout = call_timeout
        self.off_wait = off_wait
        # pyghmi hangs when a second Command is opened on a BMC it already has a
        # session with, so one logged-in Command per BMC is kept and reused,
        # and dropped after any failure.
        self._sessions: dict[IpmiTarget, Any] = {}
        self._lock = threading.Lock()

    def _login(self, target: IpmiTarget) -> Any:
        """A logged-in pyghmi session; failing here means nothing reached the host."""
        from pyghmi.ipmi import command

        with self._lock:
            session = self._sessions.get(target)
        if session is not None:
            return session
        def open_and_probe() -> Any:
            # pyghmi may hand back a session whose login failed; only an
            # answered request proves the session works.
            opened = command.Command(bmc=target.host, userid=target.user, password=target.password, port=target.port)
            opened.get_power()
            return opened

        session = _bounded(open_and_probe, self.call_timeout, f"login to BMC {target}")
        with self._lock:
            self._sessions[target] = session
        return session

    def _call(self, target: IpmiTarget, func: Callable[[Any], Any], what: str) -> Any:
        session = self._login(target)
        try:
            return _bounded(lambda: func(session), self.call_timeout, f"{what} of {target}")
        except IpmiError:
            with self._lock:
                self._sessions.pop(target, None)
            raise

    def power_state(self, target: IpmiTarget) -> str:
        """'on' or 'off', as the BMC reports it."""
        answer = self._call(target, lambda session: session.get_power(), "power state")
        state = (answer or {}).get("powerstate")
        if state not in ("on", "off"):
            raise IpmiError(f"power state of {target}: unreadable answer")
        return state

    def _power(self, target: IpmiTarget, state: str) -> None:
        self._call(target, lambda session: session.set_power(state), f"power {state}")

    def fence(self, target: IpmiTarget, clock: Callable[[], float] = time.monotonic) -> FenceReport:
        """Power off and watch for off. Powering on again is the caller's choice,
        made only after the node's VMs have been started elsewhere, so that the
        rebooted node can never race its own recovery."""
        steps = []
        off_error = ""
        try:
            self._login(target)
            logged_in = True
        except IpmiError as exc:
            logged_in = False
            off = OffCommand.REFUSED
            off_error = str(exc)
            steps.append(f"no session ({exc})")
        if logged_in:
            try:
                self._power(target, "off")
                off = OffCommand.ACCEPTED
                steps.append("power off accepted")
            except IpmiTimeout as exc:
                off = OffCommand.UNANSWERED
                steps.append(f"power off unanswered ({exc})")
            except IpmiError as exc:
                off = OffCommand.REFUSED
                off_error = str(exc)
                steps.append(f"power off refused ({exc})")
        observed: list[str | None] = []
        if off is not OffCommand.REFUSED:
            deadline = clock() + self.off_wait
            while clock() < deadline:
                try:
                    state = self.power_state(target)
                except IpmiError:
                    state = None
                observed.append(state)
                if state == "off":
                    break
                time.sleep(POLL_INTERVAL)
            steps.append(f"power states seen: {', '.join(s or 'no answer' for s in observed) or 'none'}")
        return FenceReport(judge(off, observed, off_error), tuple(steps))

    def power_on(self, target: IpmiTarget) -> None:
        """Start a fenced node again, once its VMs run elsewhere."""
        self._power(target, "on")
