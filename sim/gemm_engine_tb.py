"""Drive GemmEngine through an engine schedule in Amaranth's simulator (cycle level, random stalls).

A small issuer that keeps the ordering rules of sim.gemm_schedule, used by the unit tests.
"""
from __future__ import annotations

import random

from amaranth.sim import Simulator

from sim.gemm_schedule import assemble, make_schedule


def run_engine_amaranth(dut, cfg, a, b, bias, mult, shift, *, relu, out_int32, stall=0.3, seed=0,
                        max_chunk=None, vcd=None, timeout=200_000, table=None, residual=None):
    """`table`: 256 int8 for the store table (engine store_lut): loaded first, every STORE through it.
    `residual`: (int8 M x N, golden_model.intvec.AddParams) for the store's residual add (engine store_add):
    each tile's rows written with its PARAM entry at its accumulator rows, every STORE adds them."""
    sched = make_schedule(cfg, a, b, bias, mult, shift, relu=relu, out_int32=out_int32, max_chunk=max_chunk)
    rng = random.Random(seed)
    state = {"computed": 0, "stored": 0}
    tile_rows: dict[int, list] = {}
    C = cfg.cols

    async def send(ctx, port, fields: dict):
        while rng.random() < stall:
            await ctx.tick()
        for name, value in fields.items():
            target = port.payload[name]
            if isinstance(value, list):
                for i, v in enumerate(value):
                    if isinstance(v, tuple):
                        for fname, fv in zip(("bias", "multiplier", "shift"), v):
                            ctx.set(target[i][fname], fv)
                    else:
                        ctx.set(target[i], v)
            else:
                ctx.set(target, value)
        ctx.set(port.valid, 1)
        await ctx.tick().until(port.ready)
        ctx.set(port.valid, 0)

    async def wait(ctx, cond):
        while not cond():
            await ctx.tick()

    async def loader(ctx):
        if table is not None:
            beat = cfg.beat_bytes
            for e in range(len(table) // beat):
                await send(ctx, dut.lut_wr, {"addr": e, "data": int.from_bytes(bytes(table[e * beat:(e + 1) * beat]),
                                                                               "little")})
        for s, step in enumerate(sched.steps):
            await wait(ctx, lambda: state["computed"] >= s - 1)
            if step.first:
                t = step.tile
                await wait(ctx, lambda: state["stored"] >= t - 1)
                tile = sched.tiles[t]
                addr, params = tile.params
                if residual is None:
                    await send(ctx, dut.p_wr, {"addr": addr, "data": params})
                else:
                    x, p = residual
                    await send(ctx, dut.p_wr, {"addr": addr, "data": params,
                                               "add": {"a": p.a_mult, "b": p.b_mult, "s": p.shift}})
                    for r in range(tile.rows):
                        row = [0] * C
                        row[:tile.cols] = x[tile.m0 + r, tile.n0:tile.n0 + tile.cols].tolist()
                        await send(ctx, dut.res_wr, {"addr": tile.store["acc_base"] + r, "data": row})
            for addr, vec in step.a_entries:
                await send(ctx, dut.a_wr, {"addr": addr, "data": vec})
            for addr, vec in step.b_entries:
                await send(ctx, dut.b_wr, {"addr": addr, "data": vec})
            state.setdefault("loaded", 0)
            state["loaded"] = s + 1

    async def computer(ctx):
        for s, step in enumerate(sched.steps):
            await wait(ctx, lambda: state.get("loaded", 0) > s)
            if step.first:
                await wait(ctx, lambda: state["stored"] >= step.tile - 1)
            await send(ctx, dut.compute, step.compute)

    async def done_monitor(ctx):
        async for _, _, done in ctx.tick().sample(dut.compute_done):
            state["computed"] += done

    async def storer(ctx):
        last_steps = [s for s, st in enumerate(sched.steps) if st.last]
        for t, tile in enumerate(sched.tiles):
            await wait(ctx, lambda: state["computed"] > last_steps[t])
            await send(ctx, dut.store, dict(tile.store, **({} if table is None else {"lut": 1}),
                                            **({} if residual is None else {"add": 1})))
            while len(tile_rows.get(t, [])) < tile.rows:
                await ctx.tick()
            state["stored"] = t + 1

    async def collector(ctx):
        lanes = [dut.out.payload[j] for j in range(C)]
        for t, tile in enumerate(sched.tiles):
            tile_rows[t] = []
            while len(tile_rows[t]) < tile.rows:
                ready = rng.random() >= stall
                ctx.set(dut.out.ready, ready)
                _, _, valid, *vals = await ctx.tick().sample(dut.out.valid, *lanes)
                if ready and valid:
                    tile_rows[t].append(list(vals))
        ctx.set(dut.out.ready, 0)

    async def watchdog(ctx):
        """The one critical process: ends the run when every tile is stored, or at the time-out."""
        for _ in range(timeout):
            if state["stored"] == len(sched.tiles):
                return
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for process in (loader, computer, done_monitor, storer, collector):
        sim.add_testbench(process, background=True)
    sim.add_testbench(watchdog)
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    if state["stored"] != len(sched.tiles):
        raise AssertionError(f"engine hung: {state['stored']} of {len(sched.tiles)} tiles stored "
                             f"after {timeout} cycles ({state['computed']} computes done)")
    return assemble(cfg, sched, tile_rows, a.shape[0], b.shape[1], out_int32)
