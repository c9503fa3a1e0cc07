"""Follows nextpnr's log while it runs: says which phase it is in, how the router is doing, and
tells a router that no longer converges from one that is still getting there.

nextpnr's router2 has no iteration limit: on a design it cannot route it runs on for hours with a
roughly constant number of overused wires. `RouterProgress` watches the `iter=N ... overused=M`
lines and calls the routing stalled when M has not reached a new minimum for `stall_iterations`
iterations (the `ulx3s` preset routed with a new minimum every few iterations down to 0 at
iteration 93; a placement that does not route plateaus, or climbs back, for 40+ iterations).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

#: nextpnr log line -> the phase it starts.
PHASES = (
    ("Info: Packing IOs", "packing"),
    ("Info: Running HeAP", "placing (HeAP)"),
    ("Info: Running Static placer", "placing (static)"),
    ("Info: Running simulated annealing", "refining the placement"),
    ("Info: Running router2", "routing (router2)"),
    ("Info: Running router1 to check", "checking the routes"),
    ("Info: Program finished normally", "done"),
)
_ITER = re.compile(r"iter=(\d+) wires=\d+ overused=(\d+)")


@dataclass
class RouterProgress:
    stall_iterations: int = 50
    phase: str = "synthesis"
    iteration: int = 0
    overused: int | None = None
    best: int | None = None           # fewest overused wires so far
    best_iteration: int = 0
    _pending: str = field(default="", repr=False)
    _offset: int = field(default=0, repr=False)

    def feed(self, text: str) -> list[str]:
        """Take more of the log; return the phases entered (for a progress line each)."""
        entered = []
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()       # a line still being written
        for line in lines:
            for marker, phase in PHASES:
                if line.startswith(marker) and phase != self.phase:
                    self.phase = phase
                    entered.append(phase)
            if self.phase.startswith("routing") and (m := _ITER.search(line)):
                self.iteration, self.overused = int(m.group(1)), int(m.group(2))
                if self.best is None or self.overused < self.best:
                    self.best, self.best_iteration = self.overused, self.iteration
        return entered

    @property
    def stalled(self) -> bool:
        return (self.best is not None and self.best > 0
                and self.iteration - self.best_iteration >= self.stall_iterations)

    def status(self) -> str:
        if self.phase.startswith("routing") and self.overused is not None:
            return (f"{self.phase}: iteration {self.iteration}, {self.overused} overused wires "
                    f"(fewest {self.best} at iteration {self.best_iteration})")
        return self.phase

    def follow(self, log: Path) -> list[str]:
        """Feed what `log` gained since the last call (it may not exist yet); the phases entered."""
        try:
            with open(log, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        return self.feed(data.decode("utf-8", errors="replace"))
