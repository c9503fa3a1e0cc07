"""cocotb bench: hw.gemm.engine.GemmEngine against golden_model.intops.gemm.

Random shapes (not multiples of the array), random values with -128/127
extremes, K up to 4096 (split into accumulated chunks), int8 and int32 output,
ReLU on and off, random stalls on every stream (three scratchpad writes, two
command streams, the output). Loads, computes and stores overlap the way the
overlay runs them (sim.gemm_schedule's ordering rules).
Environment: BENCH_CONFIG (OverlayConfig as JSON), BENCH_SEED, BENCH_STALL, BENCH_CASES.
"""
import json
import os
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from golden_model.intops import gemm
from hw.config import OverlayConfig
from hw.gemm.engine import EngineLayouts
from sim.benches.report import write_report
from sim.benches.streams import StreamSink, StreamSource, to_signed
from sim.gemm_schedule import assemble, make_schedule


def config_from_env() -> OverlayConfig:
    d = json.loads(os.environ["BENCH_CONFIG"])
    d["engines"] = tuple(d["engines"])
    return OverlayConfig(**d)


def pack(layout, value) -> int:
    return layout.const(value).as_bits()


class EngineTB:
    def __init__(self, dut, cfg, seed, stall):
        self.dut, self.cfg, self.L = dut, cfg, EngineLayouts(cfg)
        r = random.Random(seed)
        mk = lambda name: StreamSource(dut, name, dut.clk, stall=stall, rng=random.Random(r.random()))
        self.a_wr, self.b_wr, self.p_wr = mk("a_wr"), mk("b_wr"), mk("p_wr")
        self.compute, self.store = mk("compute"), mk("store")
        self.out = StreamSink(dut, "out", dut.clk, stall=stall, rng=random.Random(r.random()))
        self.computed = 0
        self.cycle = 0

    async def reset(self):
        cocotb.start_soon(Clock(self.dut.clk, 10, unit="ns").start())
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, 2)
        self.dut.rst.value = 0
        await RisingEdge(self.dut.clk)
        cocotb.start_soon(self._monitor())

    async def _monitor(self):
        while True:
            await ReadOnly()
            self.computed += int(self.dut.compute_done.value)
            self.cycle += 1
            await RisingEdge(self.dut.clk)

    async def until(self, cond):
        while not cond():
            await RisingEdge(self.dut.clk)

    async def run_gemm(self, a, b, bias, mult, shift, relu, out_int32):
        cfg, L = self.cfg, self.L
        sched = make_schedule(cfg, a, b, bias, mult, shift, relu=relu, out_int32=out_int32)
        base = self.computed           # compute_done pulses are counted since reset
        state = {"loaded": 0, "stored": 0}
        rows: dict[int, list] = {}
        last_steps = [s for s, st in enumerate(sched.steps) if st.last]
        p_layout = L.p_write

        async def loader():
            for s, step in enumerate(sched.steps):
                await self.until(lambda: self.computed - base >= s - 1)
                if step.first:
                    await self.until(lambda: state["stored"] >= step.tile - 1)
                    addr, params = sched.tiles[step.tile].params
                    await self.p_wr.send([pack(p_layout, {"addr": addr, "data": [
                        {"bias": bb, "multiplier": mm, "shift": ss} for bb, mm, ss in params]})])
                await self.a_wr.send([pack(L.a_write, {"addr": ad, "data": v}) for ad, v in step.a_entries])
                await self.b_wr.send([pack(L.b_write, {"addr": ad, "data": v}) for ad, v in step.b_entries])
                state["loaded"] = s + 1

        async def computer():
            for s, step in enumerate(sched.steps):
                await self.until(lambda: state["loaded"] > s)
                if step.first:
                    await self.until(lambda: state["stored"] >= step.tile - 1)
                await self.compute.send([pack(L.compute, step.compute)])

        async def storer():
            for t, tile in enumerate(sched.tiles):
                await self.until(lambda: self.computed - base > last_steps[t])
                await self.store.send([pack(L.store, tile.store)])
                words = await self.out.receive(tile.rows)
                rows[t] = [[to_signed(w >> (32 * j), 32) for j in range(cfg.cols)] for w in words]
                state["stored"] = t + 1

        start = self.cycle
        tasks = [cocotb.start_soon(f()) for f in (loader, computer)]
        await storer()
        for task in tasks:
            await task
        return assemble(cfg, sched, rows, a.shape[0], b.shape[1], out_int32), self.cycle - start


def random_case(rng, m, k, n, extreme=None):
    if extreme is None:
        a = rng.integers(-128, 128, (m, k))
        b = rng.integers(-128, 128, (k, n))
        a[rng.random((m, k)) < 0.1] = -128
        b[rng.random((k, n)) < 0.1] = 127
    else:
        a = np.full((m, k), extreme[0])
        b = np.full((k, n), extreme[1])
    bias = rng.integers(-2**31, 2**31, n)
    bias[rng.random(n) < 0.5] //= 2**12
    mult = rng.integers(0, 2**31, n)
    shift = rng.integers(30, 46, n)
    return a.astype(np.int8), b.astype(np.int8), bias, mult, shift


async def check(tb, label, a, b, bias, mult, shift, relu, out_int32):
    got, cycles = await tb.run_gemm(a, b, bias, mult, shift, relu, out_int32)
    want = gemm(a, b, bias, mult, shift, relu=relu, out_int32=out_int32)
    bad = np.argwhere(got != want)
    write_report(tb.dut, case=label, m=a.shape[0], k=a.shape[1], n=b.shape[1], cycles=cycles)
    assert bad.size == 0, (f"{label}: {len(bad)} mismatches, first at {tuple(bad[0])}: "
                           f"rtl={got[tuple(bad[0])]} golden={want[tuple(bad[0])]}")


@cocotb.test()
async def random_shapes_match_golden(dut):
    cfg = config_from_env()
    seed = int(os.environ.get("BENCH_SEED", "1"))
    tb = EngineTB(dut, cfg, seed, float(os.environ.get("BENCH_STALL", "0.3")))
    await tb.reset()
    rng = np.random.default_rng(seed)
    for case in range(int(os.environ.get("BENCH_CASES", "6"))):
        m = int(rng.integers(1, 3 * cfg.rows + 2))
        n = int(rng.integers(1, 3 * cfg.cols + 2))
        k = int(rng.choice([1, 2, int(rng.integers(3, 300))]))
        await check(tb, f"random{case}", *random_case(rng, m, k, n),
                    relu=bool(rng.integers(2)), out_int32=bool(case % 3 == 2))


@cocotb.test()
async def extremes_and_k4096_match_golden(dut):
    cfg = config_from_env()
    tb = EngineTB(dut, cfg, 99, float(os.environ.get("BENCH_STALL", "0.3")))
    await tb.reset()
    rng = np.random.default_rng(2)
    k_big = min(4096, cfg.a_depth, cfg.b_depth) if os.environ.get("BENCH_BIGK", "1") != "0" else 64
    for ext in ((-128, -128), (-128, 127), (127, 127)):
        await check(tb, f"extreme{ext}", *random_case(rng, cfg.rows + 1, k_big, cfg.cols, extreme=ext),
                    relu=False, out_int32=True)
    await check(tb, "k_big_int8", *random_case(rng, cfg.rows, k_big, cfg.cols + 3), relu=True, out_int32=False)
