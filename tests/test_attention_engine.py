"""The attention engine alone in Amaranth's simulator: several query slots, back-to-back STEPs
(softmax of the next tile overlapping the P V of the current one), NORMs; every accumulator row
it writes equals the sim backend's model (= golden_model.intattn), and every command's taken and
done cycles equal the sim backend's cycle model exactly."""
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.attention.engine import AttentionEngine
from hw.config import preset
from hw import isa
from sim.runner import run_amaranth
from sw.backends.sim_attention import AttentionModel

CFG = preset("sim").replace(attn_max_dim=32, acc_depth=128, attn_q_slots=3)   # R = 4, C = 8


def program(rng):
    """STEP / NORM descriptors over 3 slots (d = 16 and d = 32, short key tiles, extremes), the
    accumulator's score rows and the V scratchpad."""
    R, C = CFG.rows, CFG.cols
    acc = np.zeros((CFG.acc_depth, C), np.int64)
    v = rng.integers(-128, 128, (isa.scratchpad_depth(CFG, "V"), C)).astype(np.int8)
    v[:4] = -128                                           # int8 extremes in a tile
    descs, row = [], 0
    plan = [(0, 16), (1, 32), (2, 16)]                    # (slot, d): slots 0 and 2 share a head dim
    for ki, count in enumerate((C, C, 3, C)):
        for slot, d in plan:
            s = rng.integers(-(1 << 22), (1 << 22) + 1, (R, C))
            if ki == 1 and slot == 0:
                s[:] = 12345                               # all scores equal
            if ki == 2 and slot == 1:
                s[1, 2] = 1 << 22                          # one dominant score
            acc[row:row + R] = s
            descs.append(dict(target=isa.ATTN_MODES["STEP"], accumulate=int(ki > 0), slot=slot, sp_addr=row,
                              b_base=int(rng.integers(0, len(v) - d)), count=count, k_last=d // C - 1,
                              param_addr=int(rng.integers(1, 1 << 16)), stride=26 if slot != 2 else 1, acc_base=0))
            row += R
    out = row
    for slot, d in plan:
        descs.append(dict(target=isa.ATTN_MODES["NORM"], slot=slot, sp_addr=0, count=d // C, acc_base=out,
                          accumulate=0, b_base=0, k_last=0, param_addr=0, stride=0))
        out += d // C * R
    return descs, acc, v


@pytest.mark.parametrize("stall,norm_lanes,lut_rows", [(0.0, 0, 0), (0.3, 0, 0), (0.0, 1, 0), (0.0, 0, 2)])
def test_engine_slots_and_overlap_match_the_model_bit_and_cycle_exact(stall, norm_lanes, lut_rows):
    """stall: probability that the accumulator's write port refuses a row in a cycle (the GEMM drain
    has priority in the overlay); the cycles are compared without stalls only. norm_lanes: the
    normaliser's multipliers (0: one per lane; 1: the ECP5 preset's, shared by the lanes). lut_rows: the P V
    array's last rows in the fabric (their results a cycle later)."""
    cfg = CFG.replace(attn_norm_lanes=norm_lanes, attn_pv_lut_rows=lut_rows)
    R, C = cfg.rows, cfg.cols
    rng = np.random.default_rng(21)
    descs, acc0, v = program(rng)
    dut = AttentionEngine(cfg)

    model = AttentionModel(cfg)
    model.v[:] = v
    want_acc = acc0.copy()
    want_times = []
    t = 0
    for d in descs:
        a, done = model.schedule(d, t)
        model.run(d, want_acc)
        want_times.append((a, done))
        t = a + 1                                          # the bench offers the next command right away

    acc = acc0.copy()
    got_taken, got_done, written = [], [], set()
    cycle = [0]
    ready_rng = random.Random(7)

    async def memory_and_clock(ctx):
        async for _, _, addr, wv, wa, wd, done, ready in ctx.tick().sample(
                dut.acc_rd_addr, dut.acc_wr.valid, dut.acc_wr.payload.addr, dut.acc_wr.payload.data, dut.done,
                dut.acc_wr.ready):
            cycle[0] += 1
            if wv and ready:
                acc[wa] = [int(wd[j]) for j in range(C)]
                written.add(int(wa))
            if done:
                got_done.append(cycle[0])
            ctx.set(dut.acc_rd_data, [int(x) for x in acc[addr]])  # a synchronous read: data the cycle after
            ctx.set(dut.acc_wr.ready, ready_rng.random() >= stall)

    async def driver(ctx):
        ctx.set(dut.acc_wr.ready, 1)
        for addr in range(len(v)):
            ctx.set(dut.v_wr.payload.addr, addr)
            ctx.set(dut.v_wr.payload.data, [int(x) for x in v[addr]])
            ctx.set(dut.v_wr.valid, 1)
            await ctx.tick()
        ctx.set(dut.v_wr.valid, 0)
        start = cycle[0] + 1                               # cycle 0: the first command is offered
        for d in descs:
            p = dut.cmd.payload
            for name, value in (("mode", d["target"]), ("accumulate", d["accumulate"]), ("s_base", d["sp_addr"]),
                                ("v_base", d["b_base"]), ("count", d["count"]), ("chunks_last", d["k_last"]),
                                ("c0", d["sp_addr"]), ("out_base", d["acc_base"]), ("score_mult", d["param_addr"]),
                                ("score_shift", d["stride"]), ("slot", d["slot"])):
                ctx.set(getattr(p, name), value)
            ctx.set(dut.cmd.valid, 1)
            while True:
                _, _, ready = await ctx.tick().sample(dut.cmd.ready)
                if ready:
                    break
            got_taken.append(cycle[0] - start)
            ctx.set(dut.cmd.valid, 0)
        while len(got_done) < len(descs):
            await ctx.tick()
        got_done[:] = [c - start for c in got_done]

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_process(memory_and_clock)
    sim.add_testbench(driver)
    run_amaranth(sim, "attention_engine", until=1e-8 * 20000)

    first_out = descs[-3]["acc_base"]
    norm_rows = set(range(first_out, first_out + sum(d["count"] for d in descs[-3:]) * R))
    assert written == norm_rows
    assert np.array_equal(acc, want_acc)
    assert len(got_done) == len(descs)
    if stall:
        return
    assert [d for _, d in want_times] == got_done, (want_times, got_taken, got_done)
    assert [a for a, _ in want_times] == got_taken
