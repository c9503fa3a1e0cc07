"""The sim backend: the overlay's functional model (sw.backends.sim_model.SimOverlay) behind the backend interface."""
from __future__ import annotations

import numpy as np

from sw.runtime.backend import DDR_BASE, DEFAULT_DDR_BYTES, Backend


class SimBackend(Backend):
    name = "sim"

    def __init__(self, cfg, *, ddr_bytes: int = DEFAULT_DDR_BYTES, timeout_s: float = 10.0, sim_mode: str = "fast", **_):
        """`sim_mode`: "fast" (a compiled program's layer in NumPy, announced by LoadedProgram.run) or
        "checked" (every descriptor interpreted); the same bytes and cycles (sw.backends.sim_model)."""
        from sw.backends.sim_model import SimOverlay
        super().__init__(cfg, DDR_BASE, ddr_bytes - DDR_BASE)
        self.model = SimOverlay(cfg, ddr_bytes, mode=sim_mode)   # the model's DDR is device addresses 0 .. ddr_bytes
        self.timeout_s = timeout_s

    def _write(self, addr, data):
        self.model.ddr[addr:addr + data.size] = data

    def write_rows(self, addr, rows, which):
        """One scatter (a relink's changed descriptors: thousands of short runs)."""
        if len(which):
            w = rows.shape[1]
            self._check_range(addr + int(which[0]) * w, (int(which[-1]) - int(which[0]) + 1) * w)
            self.model.ddr[addr:addr + len(rows) * w].reshape(-1, w)[which] = rows[which]
            self.traffic.to_ddr += len(which) * w

    def _read(self, addr, size):
        return self.model.ddr[addr:addr + size].copy()

    def read_reg(self, offset):
        return self.model.read_reg(offset)

    def write_reg(self, offset, value):
        self.model.write_reg(offset, int(value))

    def peek(self, addr: int, size: int) -> np.ndarray:
        """DDR bytes without counting them as host traffic (tests, debugging)."""
        return self.model.ddr[addr:addr + size]

    def inject_fault(self, fault) -> None:
        self.model.inject(fault)

    def expect(self, desc_addr: int, count: int, job) -> None:
        """Announce the next run's descriptors and the fast mode's job for them (SimOverlay.expect)."""
        self.model.expect(desc_addr, count, job)
