"""A DDR read model for Amaranth-simulator benches of units with an AXI read slot.

The unit under test has `ar` (stream of addr/len bursts) and `r` (stream of beats) ports,
as hw/conv/im2col.py and hw/conv/depthwise.py do. The model accepts AR with random
stalls, checks each burst is beat aligned and stays inside a 4 KiB page (the AXI rule
the overlay's DMA keeps), and answers in order with beats of `mem`, stalling R at random.
"""
from __future__ import annotations


def axi_read_testbenches(dut, mem, rng, stall: float, beat_bytes: int):
    """The two async testbenches (AR sink, R source); add both with sim.add_testbench(..., background=True)."""
    queue = []

    async def ar_sink(ctx):
        while True:
            ready = rng.random() >= stall
            ctx.set(dut.ar.ready, ready)
            _, _, valid, addr, length = await ctx.tick().sample(dut.ar.valid, dut.ar.payload.addr, dut.ar.payload.len)
            if ready and valid:
                last = addr + (length + 1) * beat_bytes - 1
                assert addr % beat_bytes == 0 and addr // 4096 == last // 4096, "burst crosses 4 KiB"
                queue.append((addr, length))

    async def r_source(ctx):
        while True:
            if not queue:
                await ctx.tick()
                continue
            addr, length = queue.pop(0)
            for b in range(length + 1):
                while rng.random() < stall:
                    ctx.set(dut.r.valid, 0)
                    await ctx.tick()
                beat = mem[addr + b * beat_bytes:addr + (b + 1) * beat_bytes]
                ctx.set(dut.r.payload, int.from_bytes(beat.tobytes(), "little"))
                ctx.set(dut.r.valid, 1)
                await ctx.tick().until(dut.r.ready)
            ctx.set(dut.r.valid, 0)

    return ar_sink, r_source
