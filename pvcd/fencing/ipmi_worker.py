"""One IPMI operation in a process of its own: `python -m pvcd.fencing.ipmi_worker`.

Reads a `WorkerRequest` (JSON) on stdin and prints its answer as the last line
of stdout; a fence first prints `SENDING_OFF` on a line of its own just before
the off command leaves (see `pvcd.fencing.ipmi` for why a process). Exits
without waiting for pyghmi threads that still hang on an unanswered call.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from pvcd.fencing.ipmi import SENDING_OFF, IpmiError, IpmiTimeout, WorkerRequest
from pvcd.fencing.pyghmi_client import PyghmiClient


def answer(request: WorkerRequest) -> dict[str, Any]:
    client = PyghmiClient(call_timeout=request.call_timeout, off_wait=request.off_wait)
    try:
        if request.operation == "power-state":
            return {"power": client.power_state(request.target)}
        if request.operation == "power-on":
            client.power_on(request.target)
            return {}
        if request.operation == "fence":
            report = client.fence(request.target, sending_off=lambda: print(SENDING_OFF, flush=True))
            return {"outcome": report.verdict.outcome, "reason": report.verdict.reason, "steps": list(report.steps)}
    except IpmiTimeout as exc:
        return {"error": str(exc), "timeout": True}
    except IpmiError as exc:
        return {"error": str(exc)}
    return {"error": f"unknown IPMI operation {request.operation!r}"}


def main() -> None:
    try:
        request = WorkerRequest.from_json(sys.stdin.read())
    except (ValueError, KeyError, TypeError) as exc:
        print(f"unreadable IPMI request: {exc}", file=sys.stderr)
        os._exit(2)
    print(json.dumps(answer(request)), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
