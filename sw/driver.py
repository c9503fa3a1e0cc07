"""The driver: one interface over three backends (sim, rtl, pynq).

    drv = Driver(preset("kv260"), backend="sim")
    y = drv.linear(a, b, bias, multiplier, shift, relu=True)   # int8 (M, N)
    drv.last_run.cycles, drv.last_run.utilisation

Every backend runs the same compiled program (sw.compiler) through the same
register protocol (hw.isa); descriptors are bounds-checked before submission
(sw.checks). A run that does not finish within `timeout_s` (sim, pynq: wall
clock; rtl: `timeout_cycles`) is a hung accelerator: the driver reads the
status and error registers, soft-resets the overlay and raises AcceleratorError.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from hw import isa
from sw.checks import check_descriptors
from sw.compiler import compile_linear

BACKENDS = ("sim", "rtl", "pynq")


class AcceleratorError(RuntimeError):
    """The overlay reported an error or did not finish in time (it has been reset)."""


@dataclass
class RunStats:
    backend: str
    cycles: int
    macs: int
    array_macs: int
    wall_s: float          # rtl: simulation only (no Verilator build / cocotb start-up)
    descriptors: int
    engine: str = "gemm"   # convolutions: which route ran it (sw/conv.py)

    @property
    def utilisation(self) -> float:
        return self.macs / (self.cycles * self.array_macs) if self.cycles else 0.0

    @property
    def cycles_per_s(self) -> float:
        return self.cycles / self.wall_s if self.wall_s else 0.0


def describe_error(regs: dict) -> str:
    bits = [name for bit, name in isa.ERROR_NAMES.items() if regs.get("ERROR", 0) & bit]
    return (f"ERROR={regs.get('ERROR', 0):#x} ({', '.join(bits) or 'none'}), STATUS={regs.get('STATUS', 0):#x}, "
            f"DESC_DONE={regs.get('DESC_DONE', 0)}, ERROR_DESC={regs.get('ERROR_DESC', 0)}")


class MmioSession:
    """The register protocol over any read(offset)/write(offset, value) pair (sim model, pynq MMIO)."""

    def __init__(self, read, write, timeout_s: float, poll_s: float = 0.0):
        self.read, self.write, self.timeout_s, self.poll_s = read, write, timeout_s, poll_s

    def run(self, desc_addr: int, count: int) -> int:
        R = isa.REG
        self.write(R["DESC_ADDR"], desc_addr)
        self.write(R["DESC_COUNT"], count)
        self.write(R["IRQ_ENABLE"], 1)
        self.write(R["CONTROL"], isa.CONTROL_START)
        deadline = time.monotonic() + self.timeout_s
        while True:
            status = self.read(R["STATUS"])
            if status & (isa.STATUS_DONE | isa.STATUS_ERROR):
                break
            if time.monotonic() > deadline:
                regs = self.registers()
                self.write(R["CONTROL"], isa.CONTROL_RESET)
                raise AcceleratorError(f"accelerator hung: not done after {self.timeout_s} s; {describe_error(regs)}; "
                                       "the overlay has been reset")
            if self.poll_s:
                time.sleep(self.poll_s)
        regs = self.registers()
        if regs["ERROR"]:
            self.write(R["CONTROL"], isa.CONTROL_RESET)
            raise AcceleratorError(f"accelerator error: {describe_error(regs)}; the overlay has been reset")
        self.write(R["STATUS"], isa.STATUS_DONE)
        return regs["CYCLES"]

    def registers(self) -> dict:
        return {r.name: self.read(r.offset) for r in isa.REGISTERS if r.name != "CONTROL"}


class Driver:
    def __init__(self, cfg, backend: str = "sim", *, timeout_s: float = 10.0, timeout_cycles: int = 50_000_000,
                 ddr_bytes: int = 1 << 26, stall: float = 0.0, waves: bool | None = None,
                 bitfile: str | None = None, sim_mode: str = "fast"):
        """`bitfile`: pynq backend on a board, the overlay's .bit (its .hwh beside it);
        None runs the real pynq library on the simulated device. `sim_mode`: the sim backend's
        "fast" (whole layers in NumPy) or "checked" (descriptor by descriptor) mode, same bits and cycles."""
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        self.cfg, self.backend = cfg, backend
        self.timeout_s, self.timeout_cycles = timeout_s, timeout_cycles
        self.ddr_bytes, self.stall, self.waves = ddr_bytes, stall, waves
        self.last_run: RunStats | None = None
        self.last_programs: list = []
        self._sim = None
        self._pynq = None
        self.bitfile = bitfile
        self.sim_mode = sim_mode

    # Where the layer's buffer lives in the backend's address space.
    BUFFER_BASE = 0x0010_0000

    def compile(self, a, b, bias=None, multiplier=None, shift=None, *, relu=False, out_int32=False):
        base = self._buffer_base()
        prog = compile_linear(self.cfg, a, b, bias, multiplier, shift, relu=relu, out_int32=out_int32,
                              base_addr=base, max_ddr_bytes=self.ddr_bytes - base)
        return prog

    def linear(self, a, b, bias=None, multiplier=None, shift=None, *, relu=False, out_int32=False) -> np.ndarray:
        prog = self.compile(a, b, bias, multiplier, shift, relu=relu, out_int32=out_int32)
        return prog.output(self.run(prog))

    # Convolutions (sw/conv.py routes each one to an engine): int8 (C, H, W) feature maps.
    def conv2d(self, x, w, bias=None, multiplier=None, shift=None, *, stride=1, padding=0, relu=False,
               out_int32=False) -> np.ndarray:
        from sw import conv
        return conv.conv2d(self, x, w, bias, multiplier, shift, stride=stride, padding=padding, relu=relu,
                           out_int32=out_int32)

    def depthwise_conv2d(self, x, w, bias=None, multiplier=None, shift=None, *, stride=1, padding=0, relu=False,
                         out_int32=False) -> np.ndarray:
        from sw import conv
        return conv.depthwise_conv2d(self, x, w, bias, multiplier, shift, stride=stride, padding=padding,
                                     relu=relu, out_int32=out_int32)

    def conv_transpose2d(self, x, w, bias=None, multiplier=None, shift=None, *, stride=2, padding=0, relu=False,
                         out_int32=False) -> np.ndarray:
        from sw import conv
        return conv.conv_transpose2d(self, x, w, bias, multiplier, shift, stride=stride, padding=padding,
                                     relu=relu, out_int32=out_int32)

    def attention(self, q, k, v, quant, *, out_int32: bool = False) -> np.ndarray:
        """Attention on the overlay: q (Lq, d) or (H, Lq, d), k and v (Lk, d) or (H, Lk, d), int8;
        `quant` a golden_model.intattn.AttentionQuant. Returns int8 (or int32 O / l) of q's shape,
        bit-identical to intattn.attention(..., key_tile=cfg.cols) per head. Calls too big for one
        program run as several (sw.compile_attention.compile_attention_calls); `last_run` sums
        them and `last_programs` lists them."""
        from sw.compile_attention import compile_attention_calls
        base = self._buffer_base()
        q3 = np.asarray(q)[None] if np.asarray(q).ndim == 2 else np.asarray(q)
        out, runs, self.last_programs = None, [], []
        for h, q0, q1, prog in compile_attention_calls(self.cfg, q, k, v, quant, out_int32=out_int32,
                                                       base_addr=base, max_ddr_bytes=self.ddr_bytes - base):
            y = prog.output(self.run(prog))
            runs.append(self.last_run)
            self.last_programs.append(prog)
            if h is None:
                out = y
                break
            if out is None:
                out = np.zeros(q3.shape, y.dtype)
            out[h, q0:q1] = y[0]
        if len(runs) > 1:
            self.last_run = RunStats(self.backend, sum(r.cycles for r in runs), sum(r.macs for r in runs),
                                     runs[0].array_macs, sum(r.wall_s for r in runs),
                                     sum(r.descriptors for r in runs))
        return out[0] if np.asarray(q).ndim == 2 else out

    def run(self, prog, descriptors: list[dict] | None = None) -> np.ndarray:
        """Submit a compiled program (its runs one after another, sw.compiler.split_runs); return the
        buffer's bytes after the run. `descriptors`: other descriptors (already in the image) as one run."""
        compiled = descriptors is None
        descriptors = prog.descriptors if compiled else descriptors
        runs = (getattr(prog, "runs", None) if compiled else None) or [(0, len(descriptors))]
        for first, count in runs:
            check_descriptors(self.cfg, descriptors[first:first + count], prog.base_addr, len(prog.image))
        t0 = time.monotonic()
        self._sim_wall = None
        image, cycles = getattr(self, f"_run_{self.backend}")(prog, runs, compiled)
        wall = self._sim_wall if self._sim_wall is not None else time.monotonic() - t0
        array_macs = getattr(prog, "array_macs", self.cfg.macs)   # attention: GEMM array + P V array
        engine = "conv" if getattr(prog, "out_layout", None) is not None else "gemm"
        self.last_run = RunStats(self.backend, int(cycles), prog.macs, array_macs, wall, len(descriptors), engine)
        return image

    def _buffer_base(self) -> int:
        return self.BUFFER_BASE

    # ---------------------------------------------------------------- backends
    def _run_sim(self, prog, runs, compiled):
        from sw.backends import fast
        from sw.backends.sim import SimOverlay
        if self._sim is None:
            self._sim = SimOverlay(self.cfg, self.ddr_bytes, mode=self.sim_mode)
        sim = self._sim
        base, size = prog.base_addr, len(prog.image)
        sim.ddr[base:base + size] = prog.image
        job = fast.job(self.cfg, prog) if compiled else None
        session = MmioSession(sim.read_reg, sim.write_reg, self.timeout_s)
        cycles = 0
        for i, (first, count) in enumerate(runs):
            addr = base + first * isa.DESCRIPTOR_BYTES
            if job is not None:          # fast mode: the first run computes the layer, the others take their time
                sim.expect(addr, count, job if i == 0 else None)
            cycles += session.run(addr, count)
        return sim.ddr[base:base + size].copy(), cycles

    def _run_rtl(self, prog, runs, compiled):
        from sw.backends.rtl import run_images
        res = run_images(self.cfg, [dict(base=prog.base_addr, image=prog.image, runs=np.array(runs),
                                          timeout=self.timeout_cycles)], stall=self.stall, waves=self.waves)[0]
        if res["timed_out"]:
            raise AcceleratorError(f"accelerator hung: not done after {self.timeout_cycles} cycles; "
                                   f"{describe_error(res)}; the overlay has been reset")
        if res["error"]:
            raise AcceleratorError(f"accelerator error: {describe_error(res)}; the overlay has been reset")
        self._sim_wall = float(res["sim_wall_s"])      # Verilator time only, without build and start-up
        return res["image"], res["cycles"]

    def _run_pynq(self, prog, runs, compiled):
        from sw.backends.pynq_backend import PynqRunner
        if self._pynq is None:
            self._pynq = PynqRunner(self.cfg, timeout_s=self.timeout_s, bitfile=self.bitfile)
        return self._pynq.run(prog, runs)
