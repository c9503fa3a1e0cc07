"""cocotb bench: hw.requant.Requantizer against golden_model.intops.requantize.

Random and adversarial accumulators/multipliers/shifts, random stalls on both
streams; every output is compared, in order, with the golden result.
Parameters from the environment: BENCH_SEED, BENCH_N, BENCH_STALL.
"""
import os
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge
from cocotb.utils import get_sim_time

from golden_model.intops import ACC_BITS, MULT_BITS, OUT_BITS, SHIFT_BITS, requantize
from sim.benches.report import write_report
from sim.benches.streams import StreamSink, StreamSource, pack_fields, to_signed


def make_cases(rng: np.random.Generator, n: int):
    amax = 1 << (ACC_BITS - 1)
    extremes_acc = np.array([-amax, amax - 1, 0, -1, 1])
    extremes_m = np.array([0, 1, (1 << MULT_BITS) - 1, 1 << (MULT_BITS - 1)])
    extremes_s = np.array([0, 1, 31, (1 << SHIFT_BITS) - 1])
    # Every combination of extremes, then random values.
    grid = np.array(np.meshgrid(extremes_acc, extremes_m, extremes_s)).reshape(3, -1)
    acc = np.concatenate([grid[0], rng.integers(-amax, amax, n)])
    mult = np.concatenate([grid[1], rng.integers(0, 1 << MULT_BITS, n)])
    shift = np.concatenate([grid[2], rng.integers(0, 1 << SHIFT_BITS, n)])
    # Shifts near 31..40 give outputs in int8 range for typical multipliers.
    shift[len(grid[0])::2] = rng.integers(28, 42, (n + 1) // 2)
    return acc, mult, shift


async def run_requant(dut, relu: int):
    seed = int(os.environ.get("BENCH_SEED", "1"))
    n = int(os.environ.get("BENCH_N", "400"))
    stall = float(os.environ.get("BENCH_STALL", "0.3"))
    acc, mult, shift = make_cases(np.random.default_rng(seed + relu), n)
    expected = requantize(acc, mult, shift, relu=bool(relu))

    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    dut.relu.value = relu
    dut.rst.value = 1
    src = StreamSource(dut, "i", dut.clk, stall=stall, rng=random.Random(seed))
    sink = StreamSink(dut, "o", dut.clk, stall=stall, rng=random.Random(seed + 7))
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    await RisingEdge(dut.clk)

    words = [pack_fields([(int(a), ACC_BITS), (int(m), MULT_BITS), (int(s), SHIFT_BITS)])
             for a, m, s in zip(acc, mult, shift)]
    cocotb.start_soon(src.send(words))
    start = get_sim_time("ns")
    got = np.array([to_signed(v, OUT_BITS) for v in await sink.receive(len(words))])
    write_report(dut, relu=relu, items=len(words), cycles=int((get_sim_time("ns") - start) // 10))
    bad = np.nonzero(got != expected)[0]
    assert bad.size == 0, (f"{bad.size} mismatches, first at {bad[0]}: acc={acc[bad[0]]} "
                           f"m={mult[bad[0]]} s={shift[bad[0]]} rtl={got[bad[0]]} golden={expected[bad[0]]}")


@cocotb.test()
async def requant_matches_golden(dut):
    await run_requant(dut, relu=0)


@cocotb.test()
async def requant_relu_matches_golden(dut):
    await run_requant(dut, relu=1)
