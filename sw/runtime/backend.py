"""The one backend interface: DDR access, registers, and the register protocol written once.

A backend is a device: a DDR window (device addresses) the host reads and writes, and the
overlay's 32-bit registers. Everything above it (arena, bound programs, the driver) is the
same for sim (functional model), rtl (a long-lived Verilator session) and pynq (the real
library on a board or on the simulated device). A backend keeps its DDR for its whole life:
buffers written once (weights) stay for every later run.

    be = open_backend("sim", cfg)
    be.write(addr, data); be.read(addr, n)        # counted in be.traffic (host <-> DDR bytes)
    cycles = be.run(desc_addr, count)              # START, wait, check, acknowledge
    be.close()

Implementations provide _write, _read, read_reg, write_reg and optionally wait_done (how
the host waits for DONE: wall-clock polling by default, simulated cycles on rtl).
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from hw import isa


class AcceleratorError(RuntimeError):
    """The overlay reported an error or did not finish in time (it has been reset).
    `regs`: the registers read before the reset; `timed_out`: a hang rather than an error.
    `program` / `frame`: where it happened, when the runtime knows (sw.runtime.session)."""

    def __init__(self, message: str, regs: dict | None = None, timed_out: bool = False,
                 program: str | None = None, frame: int | None = None):
        super().__init__(message)
        self.regs, self.timed_out, self.program, self.frame = regs or {}, timed_out, program, frame


def describe_error(regs: dict) -> str:
    error = regs.get("ERROR", 0)
    bits = [name for bit, name in isa.ERROR_NAMES.items() if error & bit]
    resp = isa.error_resp(error)
    return (f"ERROR={error:#x} ({', '.join(bits) or 'none'}{f', {resp}' if resp else ''}), "
            f"STATUS={regs.get('STATUS', 0):#x}, DESC_DONE={regs.get('DESC_DONE', 0)}, "
            f"ERROR_DESC={regs.get('ERROR_DESC', 0)}")


@dataclass
class Traffic:
    """Bytes the host moved to and from the device's DDR (descriptors included)."""
    to_ddr: int = 0
    from_ddr: int = 0

    def snapshot(self) -> "Traffic":
        return Traffic(self.to_ddr, self.from_ddr)

    def since(self, before: "Traffic") -> "Traffic":
        return Traffic(self.to_ddr - before.to_ddr, self.from_ddr - before.from_ddr)

    @property
    def total(self) -> int:
        return self.to_ddr + self.from_ddr


class Backend(ABC):
    name = "?"

    def __init__(self, cfg, ddr_base: int, ddr_bytes: int):
        self.cfg = cfg
        self.ddr_base, self.ddr_bytes = ddr_base, ddr_bytes   # the DDR window the arena may use
        self.traffic = Traffic()
        self.last_wall_s = 0.0          # the last run's wall time (rtl: simulation only)
        self.last_regs: dict = {}       # the registers after the last run, before its acknowledge

    # ---------------------------------------------------------------- DDR
    def write(self, addr: int, data) -> None:
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        self._check_range(addr, data.size)
        self._write(addr, data)
        self.traffic.to_ddr += data.size

    def write_rows(self, addr: int, rows: np.ndarray, which: np.ndarray) -> None:
        """Rows `which` (indices, ascending) of the (n, w) uint8 `rows` at addr + i w: each run of
        consecutive rows one write."""
        w = rows.shape[1]
        edges = np.flatnonzero(np.diff(which) != 1) + 1
        for run in np.split(which, edges) if len(which) else ():
            first, end = int(run[0]), int(run[-1]) + 1
            self.write(addr + first * w, rows[first:end])

    def read(self, addr: int, size: int) -> np.ndarray:
        self._check_range(addr, size)
        out = self._read(addr, size)
        self.traffic.from_ddr += size
        return out

    def _check_range(self, addr, size):
        if addr < self.ddr_base or addr + size > self.ddr_base + self.ddr_bytes:
            raise ValueError(f"[{addr:#x}, {addr + size:#x}) outside the {self.name} backend's DDR window "
                             f"[{self.ddr_base:#x}, {self.ddr_base + self.ddr_bytes:#x})")

    @abstractmethod
    def _write(self, addr: int, data: np.ndarray) -> None: ...

    @abstractmethod
    def _read(self, addr: int, size: int) -> np.ndarray: ...

    # ---------------------------------------------------------------- registers
    @abstractmethod
    def read_reg(self, offset: int) -> int: ...

    @abstractmethod
    def write_reg(self, offset: int, value: int) -> None: ...

    def registers(self) -> dict:
        return {r.name: self.read_reg(r.offset) for r in isa.REGISTERS if r.name != "CONTROL"}

    def reset(self) -> None:
        """Soft-reset the overlay (command processor, engines, counters); DDR keeps its contents."""
        self.write_reg(isa.REG["CONTROL"], isa.CONTROL_RESET)

    # ---------------------------------------------------------------- the register protocol (the one copy)
    timeout_s = 10.0
    poll_s = 0.0

    def wait_done(self) -> str | None:
        """Wait until STATUS shows DONE or ERROR; None, or what was waited for when it timed out."""
        deadline = time.monotonic() + self.timeout_s
        while not self.read_reg(isa.REG["STATUS"]) & (isa.STATUS_DONE | isa.STATUS_ERROR):
            if time.monotonic() > deadline:
                return f"{self.timeout_s} s"
            if self.poll_s:
                time.sleep(self.poll_s)
        return None

    def run(self, desc_addr: int, count: int) -> int:
        """Run `count` descriptors from `desc_addr`; the overlay's CYCLES. A hang or an error resets the
        overlay and raises AcceleratorError with the registers read before the reset."""
        R = isa.REG
        self.write_reg(R["DESC_ADDR"], desc_addr)
        self.write_reg(R["DESC_COUNT"], count)
        self.write_reg(R["IRQ_ENABLE"], 1)
        t0 = time.monotonic()
        self.write_reg(R["CONTROL"], isa.CONTROL_START)
        waited = self.wait_done()
        self.last_wall_s = time.monotonic() - t0
        regs = self.last_regs = self.registers()
        if waited is not None:
            self.reset()
            raise AcceleratorError(f"accelerator hung: not done after {waited}; {describe_error(regs)}; "
                                   "the overlay has been reset", regs, timed_out=True)
        if regs["ERROR"]:
            self.quiesce()
            self.reset()
            raise AcceleratorError(f"accelerator error: {describe_error(regs)}; the overlay has been reset", regs)
        self.write_reg(R["STATUS"], isa.STATUS_DONE)          # acknowledge (clears DONE and the interrupt)
        return regs["CYCLES"]

    #: STATUS reads to wait, after an error, for the AXI transfers in flight to end (STATUS.BUSY low).
    QUIESCE_POLLS = 10_000

    def quiesce(self) -> bool:
        """After an error: wait until STATUS.BUSY is low (the AXI transfers the overlay had in flight have
        ended), so a soft reset leaves no burst half done on the bus; False if it stayed busy."""
        for _ in range(self.QUIESCE_POLLS):
            if not self.read_reg(isa.REG["STATUS"]) & isa.STATUS_BUSY:
                return True
        return False

    def inject_fault(self, fault) -> None:
        """Arm an AXI fault (sw.backends.faults.Fault) for the next START(s); None disarms.
        Only simulated devices can (sim, rtl, pynq without a board)."""
        raise NotImplementedError(f"the {self.name} backend cannot inject faults")

    def expect(self, desc_addr: int, count: int, job) -> None:
        """Announce the next run (its descriptors and what they compute, sw.backends.fast.job, or None
        for a run that only takes time): the sim backend's fast mode computes the data instead of
        interpreting the descriptors. Real devices run the descriptors and ignore it."""

    def close(self) -> None:
        """Release the device (rtl: stop the simulator)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


#: Default DDR window of the sim and rtl backends: the low 1 MiB stays unused, so an
#: address of 0 (a forgotten binding) is outside every buffer.
DDR_BASE = 0x0010_0000
#: The device DDR a session gets unless told otherwise (Driver, the backends).
DEFAULT_DDR_BYTES = 1 << 26


def _sim(cfg, **opts):
    from sw.backends.sim import SimBackend
    return SimBackend(cfg, **opts)


def _rtl(cfg, **opts):
    from sw.backends.rtl import RtlBackend
    return RtlBackend(cfg, **opts)


def _pynq(cfg, **opts):
    from sw.backends.pynq_backend import PynqBackend
    return PynqBackend(cfg, **opts)


#: name -> factory(cfg, **options); imported on use (pynq and cocotb are optional at run time).
BACKENDS = {"sim": _sim, "rtl": _rtl, "pynq": _pynq}


def open_backend(name: str, cfg, **opts) -> Backend:
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}") from None
    return factory(cfg, **opts)
