"""cocotb bench: the whole overlay through its AXI ports (cocotbext-axi AxiSlave + AxiLiteMaster).

DDR is cocotbext-axi's AxiSlave on a MemoryRegion (out-of-range accesses answer SLVERR).
Runs compiled programs (sw.compiler: DDR image + descriptors) exactly as a host
would: image into DDR, DESC_ADDR/DESC_COUNT, START, wait for the done interrupt,
read STATUS/ERROR/CYCLES, DDR back out. Random backpressure on every AXI channel
(BENCH_STALL > 0). The comparison with golden is done by the caller (sw/backends/rtl.py).
Environment: PROGRAM_DIR (prog_NNN.npz in, res_NNN.npz out), BENCH_STALL, BENCH_SEED,
BENCH_TIMEOUT (cycles per program).
"""
import os
import random
import time
from pathlib import Path

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, RisingEdge, Timer
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiSlave
from cocotbext.axi.address_space import MemoryRegion

from hw import isa


def pauses(rng: random.Random, p: float):
    while True:
        yield rng.random() < p


class OverlayTB:
    def __init__(self, dut, ddr_bytes: int, stall: float, seed: int):
        self.dut = dut
        # DDR: cocotbext-axi's slave on a memory region; accesses outside it answer SLVERR.
        self.ddr = MemoryRegion(ddr_bytes)
        self.ram = AxiSlave(AxiBus.from_prefix(dut, "m_axi_"), dut.clk, dut.rst, target=self.ddr)
        self.ctrl = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil_"), dut.clk, dut.rst)
        if stall > 0:
            rng = random.Random(seed)
            for ch in (self.ram.write_if.aw_channel, self.ram.write_if.w_channel, self.ram.write_if.b_channel,
                       self.ram.read_if.ar_channel, self.ram.read_if.r_channel,
                       self.ctrl.write_if.aw_channel, self.ctrl.write_if.w_channel, self.ctrl.write_if.b_channel,
                       self.ctrl.read_if.ar_channel, self.ctrl.read_if.r_channel):
                ch.set_pause_generator(pauses(random.Random(rng.random()), stall))

    async def reset(self):
        cocotb.start_soon(Clock(self.dut.clk, 10, unit="ns").start())
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, 4)
        self.dut.rst.value = 0
        await ClockCycles(self.dut.clk, 2)

    async def read(self, name):
        return int.from_bytes((await self.ctrl.read(isa.REG[name], 4)).data, "little")

    async def write(self, name, value):
        await self.ctrl.write(isa.REG[name], int(value).to_bytes(4, "little"))

    async def run(self, base, image, runs, timeout):
        """The image into DDR, then each run (first descriptor, count): one START each; cycles summed."""
        self.ddr.mem[base:base + len(image)] = image.tobytes()
        cycles = 0
        for first, count in runs:
            result = await self.start(base + int(first) * isa.DESCRIPTOR_BYTES, int(count), timeout)
            cycles += result["cycles"]
            if result["timed_out"] or result["error"]:
                break
        result["cycles"] = cycles
        result["image"] = np.frombuffer(self.ddr.mem[base:base + len(image)], np.uint8).copy()
        return result

    async def start(self, desc_addr, desc_count, timeout):
        await self.write("DESC_ADDR", desc_addr)
        await self.write("DESC_COUNT", desc_count)
        await self.write("IRQ_ENABLE", 1)
        await self.write("CONTROL", isa.CONTROL_START)
        if not self.dut.irq.value:     # one trigger, not a Python wake-up per cycle
            await First(RisingEdge(self.dut.irq), Timer(timeout * 10, unit="ns"))
        await RisingEdge(self.dut.clk)
        status = await self.read("STATUS")
        result = {"status": status, "error": await self.read("ERROR"), "cycles": await self.read("CYCLES"),
                  "desc_done": await self.read("DESC_DONE"), "error_desc": await self.read("ERROR_DESC"),
                  "timed_out": int(not (status & (isa.STATUS_DONE | isa.STATUS_ERROR)))}
        if result["timed_out"] or result["error"]:
            await self.write("CONTROL", isa.CONTROL_RESET)     # what the driver does on a hang
            result["status_after_reset"] = await self.read("STATUS")
        else:
            await self.write("STATUS", isa.STATUS_DONE)        # acknowledge the interrupt
        return result


@cocotb.test()
async def run_programs(dut):
    folder = Path(os.environ["PROGRAM_DIR"])
    progs = sorted(folder.glob("prog_*.npz"))
    assert progs, f"no programs in {folder}"
    metas = [np.load(p) for p in progs]
    ddr = max(int(m["base"]) + len(m["image"]) for m in metas)
    ddr = 1 << max(16, (ddr - 1).bit_length())
    tb = OverlayTB(dut, ddr, float(os.environ.get("BENCH_STALL", "0")), int(os.environ.get("BENCH_SEED", "1")))
    await tb.reset()
    for path, meta in zip(progs, metas):
        timeout = int(meta["timeout"]) if "timeout" in meta else int(os.environ.get("BENCH_TIMEOUT", "10000000"))
        t0 = time.monotonic()
        runs = meta["runs"] if "runs" in meta else [(0, int(meta["desc_count"]))]
        res = await tb.run(int(meta["base"]), meta["image"], runs, timeout)
        res["sim_wall_s"] = time.monotonic() - t0      # simulation only, without build and start-up
        np.savez(folder / path.name.replace("prog_", "res_"), **res)
