"""IPMI power control of one BMC per call, each call in a worker process of its own.

pyghmi keeps module-wide state (one I/O thread, socket pools and session
tables shared by every session of the process), and a call that hangs can
only be abandoned, never stopped. In a daemon that fences for months, one
wedged session would leave every later fence waiting for nothing. So every
operation (a power-state read, a fence, a power-on) runs in a fresh
`python -m pvcd.fencing.ipmi_worker` (pyghmi there, see `pyghmi_client`),
which exits when done and is killed at a deadline above its own call
timeouts. The target's password reaches the worker on its stdin, never on its
command line, and never appears in a log line or an error message.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from pvcd.fencing.outcome import FenceOutcome, FenceVerdict, OffCommand, judge

DEFAULT_CALL_TIMEOUT = 6.0
DEFAULT_OFF_WAIT = 10.0
WORKER_MARGIN = 5.0
"""Beyond the worst case of the calls a worker makes: its start (~0.15 s) and exit."""
SENDING_OFF = "sending-off"
"""The line a fence's worker prints just before the off command leaves."""


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


@dataclass(frozen=True)
class WorkerRequest:
    """What `ipmi_worker` reads on its stdin: one operation on one BMC."""

    operation: str
    target: IpmiTarget
    call_timeout: float
    off_wait: float

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "target": asdict(self.target)})

    @classmethod
    def from_json(cls, text: str) -> WorkerRequest:
        value = json.loads(text)
        return cls(value["operation"], IpmiTarget(**value["target"]), value["call_timeout"], value["off_wait"])


class IpmiDriver:
    """Power control of one BMC at a time, each operation in its own worker process.

    Every operation logs in afresh and logs out when done: a session kept from
    an earlier call proves nothing about the BMC now (pyghmi keeps resending on
    it for many seconds before it gives up, so a fence of a BMC that has since
    gone down would end `ambiguous` after ~18 s where a fresh login shows
    within one call timeout that nothing reached the host: `failed`).
    """

    def __init__(
        self,
        call_timeout: float = DEFAULT_CALL_TIMEOUT,
        off_wait: float = DEFAULT_OFF_WAIT,
        worker: tuple[str, ...] = (sys.executable, "-m", "pvcd.fencing.ipmi_worker"),
    ) -> None:
        self.call_timeout = call_timeout
        self.off_wait = off_wait
        self.worker = worker

    def power_state(self, target: IpmiTarget) -> str:
        """'on' or 'off', as the BMC reports it."""
        answer = self._answer("power-state", target, deadline=3 * self.call_timeout)
        state = answer.get("power")
        if state not in ("on", "off"):
            raise IpmiError(f"power state of {target}: unreadable answer")
        return str(state)

    def power_on(self, target: IpmiTarget) -> None:
        """Start a fenced node again, once its VMs run elsewhere."""
        self._answer("power-on", target, deadline=3 * self.call_timeout)

    def fence(self, target: IpmiTarget) -> FenceReport:
        """Power off and watch for off (see `PyghmiClient.fence`).

        A worker that has to be killed, or dies, after it said the off command
        was leaving may have powered the host off: that is `ambiguous`, never
        `failed`, so no VM is restarted elsewhere on the strength of it."""
        # The worker's worst case: a login and the off command, then polls for
        # `off_wait`, the last of which may need a login and a read.
        deadline = 4 * self.call_timeout + self.off_wait
        lines, error = self._run("fence", target, deadline)
        if error is None:
            try:
                value = json.loads(lines[-1])
                verdict = FenceVerdict(FenceOutcome(value["outcome"]), str(value["reason"]))
                return FenceReport(verdict, tuple(str(step) for step in value["steps"]))
            except (ValueError, KeyError, TypeError, IndexError):
                error = "unreadable answer"
        off = OffCommand.UNANSWERED if SENDING_OFF in lines else OffCommand.REFUSED
        step = f"fence worker for BMC {target}: {error}"
        return FenceReport(judge(off, [], step), (step,))

    def _answer(self, operation: str, target: IpmiTarget, deadline: float) -> dict[str, Any]:
        lines, error = self._run(operation, target, deadline)
        if error is not None:
            raise (IpmiTimeout if error.startswith("no answer") else IpmiError)(error)
        try:
            value = json.loads(lines[-1])
        except (ValueError, IndexError):
            raise IpmiError(f"{operation} of {target}: unreadable answer from the IPMI worker") from None
        if not isinstance(value, dict):
            raise IpmiError(f"{operation} of {target}: unreadable answer from the IPMI worker")
        if "error" in value:
            raise (IpmiTimeout if value.get("timeout") else IpmiError)(str(value["error"]))
        return value

    def _run(self, operation: str, target: IpmiTarget, deadline: float) -> tuple[list[str], str | None]:
        """The worker's output lines, and why it gave no answer (None when it did)."""
        request = WorkerRequest(operation, target, self.call_timeout, self.off_wait)
        limit = deadline + WORKER_MARGIN
        worker = subprocess.Popen(
            list(self.worker),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            out, err = worker.communicate(request.to_json(), timeout=limit)
        except subprocess.TimeoutExpired:
            worker.kill()
            out, _ = worker.communicate()
            return out.splitlines(), f"no answer within {limit:g}s from the IPMI worker for BMC {target}"
        lines = out.splitlines()
        if worker.returncode != 0 or not lines:
            last = (err.strip().splitlines() or ["no output"])[-1].replace(target.password, "***")
            return lines, f"IPMI worker for BMC {target} exited with status {worker.returncode}: {last}"
        return lines, None
