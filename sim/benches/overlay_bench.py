"""cocotb bench: the whole overlay through its AXI ports, serving a host process until told to stop.

DDR is cocotbext-axi's AxiSlave on a MemoryRegion (out-of-range accesses answer SLVERR);
the registers are reached through an AxiLiteMaster. The bench is a long-lived device: it
connects to the host's socket (SERVE_SOCKET) and answers requests (sim.rpc messages) one
at a time, so DDR keeps its contents between programs:
  ("write", addr, bytes) / ("read", addr, n)      DDR, by the back door (no simulated time)
  ("reg_write", offset, value) / ("reg_read", offset)   AXI4-Lite transactions
  ("wait", cycles)   until the interrupt rises or `cycles` pass; answers (irq, wall seconds)
  ("fault", (channel, n, resp) or None)   arm (or disarm) an AXI error response (sim.benches.axi_faults)
  ("stop",)
The register protocol itself is the host's (sw.runtime.backend.Backend.run), as for every backend.
Random backpressure on every AXI channel with BENCH_STALL > 0. Environment: SERVE_SOCKET,
BENCH_DDR_BYTES, BENCH_STALL, BENCH_SEED.
"""
import os
import random
import socket
import time

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, First, RisingEdge, Timer
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiSlave
from cocotbext.axi.address_space import MemoryRegion

from sim import rpc
from sim.benches.axi_faults import AxiFaults

CLOCK_NS = 10


def pauses(rng: random.Random, p: float):
    while True:
        yield rng.random() < p


class OverlayTB:
    def __init__(self, dut, ddr_bytes: int, stall: float, seed: int):
        self.dut = dut
        self.ddr = MemoryRegion(ddr_bytes)
        self.ram = AxiSlave(AxiBus.from_prefix(dut, "m_axi_"), dut.clk, dut.rst, target=self.ddr)
        self.faults = AxiFaults(self.ram)
        self.ctrl = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil_"), dut.clk, dut.rst)
        if stall > 0:
            rng = random.Random(seed)
            for ch in (self.ram.write_if.aw_channel, self.ram.write_if.w_channel, self.ram.write_if.b_channel,
                       self.ram.read_if.ar_channel, self.ram.read_if.r_channel,
                       self.ctrl.write_if.aw_channel, self.ctrl.write_if.w_channel, self.ctrl.write_if.b_channel,
                       self.ctrl.read_if.ar_channel, self.ctrl.read_if.r_channel):
                ch.set_pause_generator(pauses(random.Random(rng.random()), stall))

    async def reset(self):
        cocotb.start_soon(Clock(self.dut.clk, CLOCK_NS, unit="ns").start())
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, 4)
        self.dut.rst.value = 0
        await ClockCycles(self.dut.clk, 2)

    async def handle(self, req):
        op = req[0]
        if op == "write":
            _, addr, data = req
            self.ddr.mem[addr:addr + len(data)] = data
            return None
        if op == "read":
            _, addr, n = req
            return bytes(self.ddr.mem[addr:addr + n])
        if op == "reg_write":
            await self.ctrl.write(req[1], int(req[2]).to_bytes(4, "little"))
            return None
        if op == "reg_read":
            return int.from_bytes((await self.ctrl.read(req[1], 4)).data, "little")
        if op == "wait":
            t0 = time.monotonic()
            if not self.dut.irq.value:      # one trigger, not a Python wake-up per cycle
                await First(RisingEdge(self.dut.irq), Timer(req[1] * CLOCK_NS, unit="ns"))
            await RisingEdge(self.dut.clk)
            return bool(self.dut.irq.value), time.monotonic() - t0
        if op == "fault":
            self.faults.arm(req[1])
            return None
        raise ValueError(f"unknown request {op!r}")


@cocotb.test()
async def serve(dut):
    tb = OverlayTB(dut, int(os.environ["BENCH_DDR_BYTES"]), float(os.environ.get("BENCH_STALL", "0")),
                   int(os.environ.get("BENCH_SEED", "1")))
    await tb.reset()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(os.environ["SERVE_SOCKET"])
        while True:
            req = rpc.recv(sock)
            if req[0] == "stop":
                rpc.send(sock, ("ok", None))
                return
            try:
                rpc.send(sock, ("ok", await tb.handle(req)))
            except Exception as e:          # the host raises it; the session goes on
                rpc.send(sock, ("error", f"{type(e).__name__}: {e}"))
