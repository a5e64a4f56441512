"""A stand-alone BMC simulator for tests that need a BMC but no whole machine.

Run as `python bmc_sim.py PORT USER PASSWORD STATE_FILE`: it serves IPMI over
UDP on 127.0.0.1:PORT with the local cluster's BMC simulator, keeps the power
state and counts in STATE_FILE (JSON), and stops answering while STATE_FILE
says `"bmc": "down"` (the test edits it). pyghmi's client and its simulator
cannot share one process (they share pyghmi's socket loop), hence a process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pvcd.devcluster.chassis import SimulatedBmc


class FileChassis:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.write_text(json.dumps({"power": "on", "bmc": "up", "offs": 0, "ons": 0}))

    @property
    def state(self) -> Any:
        return type("State", (), json.loads(self.path.read_text()))

    def _update(self, **changes: Any) -> None:
        value = json.loads(self.path.read_text())
        for key, change in changes.items():
            value[key] = change(value[key]) if callable(change) else change
        self.path.write_text(json.dumps(value))

    def power_off(self, *_cause: str) -> None:
        self._update(power="off", offs=lambda n: n + 1)

    def power_on(self, *_cause: str) -> None:
        self._update(power="on", ons=lambda n: n + 1)

    def handle(self, command: str, *_args: str) -> None:
        if command == "bmc-down":
            self._update(bmc="down")


def main() -> None:
    port, user, password, state_file = int(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
    SimulatedBmc(FileChassis(state_file), {user: password}, port)  # type: ignore[arg-type]
    SimulatedBmc.listen()


if __name__ == "__main__":
    main()
