"""The register slice on the overlay's AXI R channel: order, no loss, full rate, registered ready."""
import random

import pytest
from amaranth.sim import Simulator

from hw.skid import SkidBuffer


def run_slice(n, p_in_idle, p_out_stall, seed):
    dut = SkidBuffer(16)
    rng = random.Random(seed)
    values = [rng.randrange(1 << 16) for _ in range(n)]
    got, cycles = [], [0]

    async def bench(ctx):
        sent = 0
        while len(got) < n:
            assert cycles[0] < 20 * n + 10, "the slice stopped moving"
            in_valid = sent < n and rng.random() >= p_in_idle
            out_ready = rng.random() >= p_out_stall
            ctx.set(dut.i.valid, in_valid)
            ctx.set(dut.i.payload, values[sent] if sent < n else 0)
            ctx.set(dut.o.ready, out_ready)
            i_ready, o_valid, o_payload = ctx.get(dut.i.ready), ctx.get(dut.o.valid), ctx.get(dut.o.payload)
            await ctx.tick()
            cycles[0] += 1
            sent += in_valid and i_ready
            if out_ready and o_valid:
                got.append(o_payload)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return values, got, cycles[0]


@pytest.mark.parametrize("p_in_idle,p_out_stall,seed", [(0.3, 0.3, 1), (0.0, 0.6, 2), (0.6, 0.0, 3), (0.0, 0.0, 4)])
def test_slice_keeps_every_beat_in_order_under_stalls(p_in_idle, p_out_stall, seed):
    values, got, _ = run_slice(300, p_in_idle, p_out_stall, seed)
    assert got == values


def test_slice_runs_at_full_rate_with_one_cycle_latency():
    values, got, cycles = run_slice(100, 0.0, 0.0, 5)
    assert got == values and cycles == 100 + 1


def test_ready_and_valid_are_registers():
    """No combinational path through the slice: its outputs do not follow its inputs within a cycle."""
    dut = SkidBuffer(8)

    async def bench(ctx):
        before = ctx.get(dut.i.ready), ctx.get(dut.o.valid)
        ctx.set(dut.o.ready, 0)
        ctx.set(dut.i.valid, 1)
        assert (ctx.get(dut.i.ready), ctx.get(dut.o.valid)) == before

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
