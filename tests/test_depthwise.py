"""Depthwise engine (hw/conv/depthwise.py): the unit under the Amaranth simulator against golden, with
random AXI stalls on every channel; the compiler, sim model and routing; rtl == sim == golden on the overlay."""
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from golden_model import intconv
from hw import isa
from hw.config import preset
from hw.conv.depthwise import DepthwiseUnit
from sim.amaranth_ddr import axi_read_testbenches
from sw.compile.conv import FmapLayout, dw_coefficients

SIM = preset("sim")


def dw_case(rng, c, h, w, k, extreme=False):
    if extreme:       # int8 extremes everywhere: the largest sums, saturating bias
        x = rng.choice(np.array([-128, 127], np.int8), (c, h, w))
        wt = rng.choice(np.array([-128, 127], np.int8), (c, 1, k, k))
    else:
        x = rng.integers(-128, 128, (c, h, w)).astype(np.int8)
        wt = rng.integers(-128, 128, (c, 1, k, k)).astype(np.int8)
        x.reshape(-1)[:2] = (-128, 127)[:x.size]
    bias = rng.integers(-2**12, 2**12, c)
    if extreme and c > 1:
        bias[1] = rng.choice([-2**31, 2**31 - 1])          # saturating bias add: a constant channel
    # Scales that spread the outputs over int8 (the saturating ends included).
    shift = 30 + int(np.ceil(np.log2(128 * 128 * k / 64))) + rng.integers(-1, 2, c)
    return x, wt, bias, rng.integers(1 << 29, 1 << 31, c), shift


def run_unit(cfg, x, wt, bias, mult, shift, *, relu, stall, seed, base=0x1F40):
    """One DEPTHWISE command on DepthwiseUnit, DDR a numpy array behind AR/R and AW/W/B with random stalls."""
    c, h, w = x.shape
    k = wt.shape[2]
    P = (k - 1) // 2
    DB = cfg.beat_bytes
    dut = DepthwiseUnit(cfg)
    lay = FmapLayout(c, h, w, cfg.cols)
    mem = np.zeros(base + 2 * lay.size + 0x2000, np.uint8)
    rng = random.Random(seed)
    mem[:] = np.frombuffer(bytes(rng.randrange(256) for _ in range(len(mem))), np.uint8)   # garbage
    in_base, out_base = base, base + lay.size + 0x400
    mem[in_base:in_base + lay.size] = lay.pack(x)
    mem[out_base:out_base + lay.size] = lay.pack(np.zeros_like(x))
    before = mem.copy()
    coef = dw_coefficients(wt, bias, mult, shift).reshape(-1)
    writes, state = [], {"done": False, "b": 0}

    ar_sink, r_source = axi_read_testbenches(dut, mem, rng, stall, DB)

    async def write_sink(ctx):
        aws, ws = [], []
        while True:
            awr, wr = rng.random() >= stall, rng.random() >= stall
            ctx.set(dut.aw.ready, awr)
            ctx.set(dut.w.ready, wr)
            ctx.set(dut.b, 0)
            if aws and ws and rng.random() >= stall:        # B for the oldest complete write
                addr, (data, strb) = aws.pop(0), ws.pop(0)
                for i in range(DB):
                    if strb >> i & 1:
                        mem[addr + i] = (data >> (8 * i)) & 0xFF
                writes.append(addr)
                ctx.set(dut.b, 1)
            _, _, awv, awa, wv, wd, ws_ = await ctx.tick().sample(dut.aw.valid, dut.aw.payload, dut.w.valid,
                                                                  dut.w.payload.data, dut.w.payload.strb)
            if awv and awr:
                assert awa % DB == 0
                aws.append(awa)
            if wv and wr:
                ws.append((wd, ws_))

    async def watch(ctx):
        async for _, _, done in ctx.tick().sample(dut.done):
            if done:
                state["done"] = True

    async def main(ctx):
        for e in range(len(coef) // DB):
            ctx.set(dut.coef_wr.payload.addr, e)
            ctx.set(dut.coef_wr.payload.data, int.from_bytes(coef[e * DB:(e + 1) * DB].tobytes(), "little"))
            ctx.set(dut.coef_wr.valid, 1)
            await ctx.tick()
        ctx.set(dut.coef_wr.valid, 0)
        cmd = dict(in_addr=in_base + lay.offset(0, -P, -lay.left), out_addr=out_base + lay.offset(0, 0, 0),
                   pitch=lay.row_bytes, plane_rows=lay.plane_rows, rows=h, width=w, k_last=k - 1,
                   col0=lay.left - P, channels=c, relu=int(relu))
        for name, value in cmd.items():
            ctx.set(dut.cmd.payload[name], value)
        ctx.set(dut.cmd.valid, 1)
        await ctx.tick().until(dut.cmd.ready)
        ctx.set(dut.cmd.valid, 0)
        cycles = 0
        while not state["done"]:
            await ctx.tick()
            cycles += 1
            assert cycles < 100_000, "unit never finished"
        state["cycles"] = cycles

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for proc in (ar_sink, r_source, write_sink, watch):
        sim.add_testbench(proc, background=True)
    sim.add_testbench(main)
    sim.run()
    out = mem[out_base:out_base + lay.size].copy()
    # Nothing outside the output region changed (garbage around the buffers).
    mem[out_base:out_base + lay.size] = before[out_base:out_base + lay.size]
    changed = np.flatnonzero(mem != before)
    return out, changed, state["cycles"]


@pytest.mark.parametrize("c,h,w,k,relu,stall,extreme", [
    (5, 5, 11, 7, False, 0.3, False),       # three groups of L = 2 channels, the last one partial; odd sizes
    (1, 6, 9, 3, True, 0.3, False),         # a lane idle, 3x3
    (4, 4, 7, 5, False, 0.3, True),         # int8 extremes everywhere, 5x5
    (4, 3, 17, 7, False, 0.0, True),        # no stalls: rows and groups back to back
    (3, 1, 1, 1, False, 0.2, False),        # 1x1 pixels, 1x1 kernel
    (2, 5, 1, 3, False, 0.0, False),        # 1-pixel rows back to back: each row start reads the next heads
    (3, 4, 45, 7, False, 0.3, False),       # wide rows under stalls: many beat crossings, each refilling `nn`
])
def test_unit_equals_golden_amaranth(c, h, w, k, relu, stall, extreme):
    rng = np.random.default_rng(c * 100 + k * 10 + h)
    x, wt, bias, mult, shift = dw_case(rng, c, h, w, k, extreme)
    out, changed, cycles = run_unit(SIM, x, wt, bias, mult, shift, relu=relu, stall=stall, seed=k)
    want = intconv.depthwise_conv2d(x, wt, bias, mult, shift, padding=(k - 1) // 2, relu=relu)
    assert len(np.unique(want)) > 2
    # The whole output map, zero margins included, is the golden map in the overlay's layout.
    assert np.array_equal(out, FmapLayout(*want.shape, SIM.cols).pack(want))
    assert changed.size == 0
    if stall == 0.0:
        # One pixel per cycle per lane once the first K rows are in: issue cycles plus a bounded fill.
        assert cycles < -(-c // SIM.dw_lanes) * h * w + 12 * k * 2 + 60, cycles
    print(f"cycles {cycles} for {h * w} pixels per lane")


@pytest.mark.parametrize("c,h,w,k", [(6, 5, 21, 7), (4, 3, 9, 3)])
def test_unit_equals_golden_amaranth_bench16(c, h, w, k):
    """The bench16 build: 4 lanes, 128-bit beats (16 pixels per output beat), a partial last group."""
    cfg = preset("bench16")
    rng = np.random.default_rng(c + k)
    x, wt, bias, mult, shift = dw_case(rng, c, h, w, k)
    out, changed, _ = run_unit(cfg, x, wt, bias, mult, shift, relu=False, stall=0.3, seed=c)
    want = intconv.depthwise_conv2d(x, wt, bias, mult, shift, padding=(k - 1) // 2)
    assert np.array_equal(out, FmapLayout(*want.shape, cfg.cols).pack(want))
    assert changed.size == 0


# ---------------------------------------------------------------- compiler, sim model, routing

from sw.runtime.checks import DescriptorError, check_descriptors          # noqa: E402
from sw.compile.conv import compile_depthwise                     # noqa: E402
from sw.compile.linear import CompileError                              # noqa: E402
from sw.runtime.driver import Driver                                      # noqa: E402

ROUTED = [  # c, h, w, k, relu: channels not multiples of L, odd sizes, every odd K
    (5, 9, 11, 7, False), (3, 7, 6, 5, True), (4, 5, 13, 3, False), (1, 1, 1, 7, False), (2, 3, 40, 1, True),
]


@pytest.mark.parametrize("c,h,w,k,relu", ROUTED)
def test_driver_routes_depthwise_to_its_engine(c, h, w, k, relu):
    rng = np.random.default_rng(c * 7 + h)
    x, wt, bias, mult, shift = dw_case(rng, c, h, w, k, extreme=c == 4)
    drv = Driver(SIM, "sim")
    got = drv.depthwise_conv2d(x, wt, bias, mult, shift, padding=(k - 1) // 2, relu=relu)
    assert np.array_equal(got, intconv.depthwise_conv2d(x, wt, bias, mult, shift, padding=(k - 1) // 2, relu=relu))
    assert drv.last_run.engine == "depthwise"
    assert drv.last_run.array_macs == SIM.dw_lanes * 49


@pytest.mark.parametrize("cfg,kw", [
    (SIM, dict(stride=2, padding=3)), (SIM, dict(padding=2)), (SIM, dict(padding=3, out_int32=True)),
    (SIM.replace(engines=("gemm", "conv")), dict(padding=3)),
])
def test_other_depthwise_convolutions_fall_back_to_the_conv_engine(cfg, kw):
    rng = np.random.default_rng(3)
    x, wt, bias, mult, shift = dw_case(rng, 3, 9, 10, 7)
    drv = Driver(cfg, "sim")
    got = drv.depthwise_conv2d(x, wt, bias, mult, shift, **kw)
    assert np.array_equal(got, intconv.depthwise_conv2d(x, wt, bias, mult, shift, **kw))
    assert drv.last_run.engine == "conv"


def test_more_channels_than_the_coefficient_memory_run_as_several_commands():
    cfg = SIM.replace(dw_channels=4)
    rng = np.random.default_rng(5)
    x, wt, bias, mult, shift = dw_case(rng, 9, 5, 7, 5)
    prog = compile_depthwise(cfg, x, wt, bias, mult, shift, padding=2, base_addr=0x100000)
    assert [d["dw_channels"] for d in prog.descriptors if d["opcode"] == isa.OPCODES["DEPTHWISE"]] == [4, 4, 1]
    got = prog.output(Driver(cfg, "sim").run(prog))
    assert np.array_equal(got, intconv.depthwise_conv2d(x, wt, bias, mult, shift, padding=2))


def test_compiler_refuses_what_the_engine_does_not_run():
    x, wt = np.zeros((2, 8, 8), np.int8), np.zeros((2, 1, 3, 3), np.int8)
    for kw, match in [(dict(padding=0), "padding 0"), (dict(padding=1, multiplier=None), "multiplier")]:
        args = dict(bias=None, multiplier=1, shift=0) | kw
        with pytest.raises(CompileError, match=match):
            compile_depthwise(SIM, x, wt, args.pop("bias"), args.pop("multiplier"), args.pop("shift"), **args)
    with pytest.raises(CompileError, match="line buffers"):
        compile_depthwise(SIM, np.zeros((1, 2, 200), np.int8), wt[:1], None, 1, 0, padding=1)
    with pytest.raises(CompileError, match="no depthwise engine"):
        compile_depthwise(preset("ulx3s"), x, wt, None, 1, 0, padding=1)


def test_checks_refuse_bad_depthwise_descriptors():
    rng = np.random.default_rng(1)
    x, wt, bias, mult, shift = dw_case(rng, 3, 6, 9, 5)
    prog = compile_depthwise(SIM, x, wt, bias, mult, shift, padding=2, base_addr=0x100000)
    i = next(j for j, d in enumerate(prog.descriptors) if d["opcode"] == isa.OPCODES["DEPTHWISE"])
    ld = next(j for j, d in enumerate(prog.descriptors) if d.get("target") == isa.TARGETS["DW"])
    check_descriptors(SIM, prog.descriptors, prog.buffer_table())
    for j, change, match in [(i, {"dw_channels": 300}, "channels"), (i, {"count": 500}, "outside the buffer"),
                             (i, {"stride": 12}, "pitch"), (i, {"dw_width": 40}, "run past"),
                             (i, {"dw_out_addr": 0x100004}, "aligned"), (ld, {"count": 5000}, "DW scratchpad")]:
        descs = [dict(d) for d in prog.descriptors]
        descs[j].update(change)
        with pytest.raises(DescriptorError, match=match):
            check_descriptors(SIM, descs, prog.buffer_table())
    no_dw = SIM.replace(engines=("gemm", "conv"))
    with pytest.raises(DescriptorError, match="no depthwise engine"):
        check_descriptors(no_dw, prog.descriptors, prog.buffer_table())
    with pytest.raises(DescriptorError, match="DEPTHWISE"):
        check_descriptors(no_dw, [prog.descriptors[i]], prog.buffer_table())


def test_depthwise_fields_share_bits_it_does_not_read():
    b0 = isa.FIELDS[isa.DW_SHARES[0]][0]
    b1 = sum(isa.FIELDS[isa.DW_SHARES[-1]])
    spans = sorted(isa.FIELDS[n] for n, _, _ in isa.DW_FIELDS)
    assert all(b0 <= p and p + w <= b1 for p, w in spans) and all(p + w <= q for (p, w), (q, _) in zip(spans, spans[1:]))
    read = ("opcode", "relu", "wait_load", "wait_compute", "wait_store", "wait_attention", "dram_addr", "stride",
            "count", "cols")
    assert all(sum(isa.FIELDS[n]) <= b0 or isa.FIELDS[n][0] >= b1 for n in read)
    fields = dict(opcode=isa.OPCODES["DEPTHWISE"], dram_addr=0x12345640, stride=80, count=64, cols=2, relu=1,
                  dw_out_addr=0xFEDCBA98, dw_width=(1 << 14) - 1, dw_plane_rows=70, dw_kernel_last=6, dw_col0=63,
                  wait_attention=3)
    got = isa.unpack_descriptor(isa.pack_descriptor(**fields))
    assert {k: got[k] for k in fields} == fields
    with pytest.raises(ValueError, match="share the bits"):
        isa.pack_descriptor(**fields, param_addr=1)


# ---------------------------------------------------------------- the overlay under Verilator

@pytest.mark.rtl
@pytest.mark.slow
def test_rtl_equals_sim_equals_golden_and_one_pixel_per_cycle_per_lane():
    """Whole programs on the sim overlay: with 30 % random stalls on every AXI channel every DDR byte equals
    the sim model's (and the output golden's); without stalls the cycle model is within 5 % of the RTL and
    the steady state (two heights, same everything else) is one output pixel per cycle per lane."""
    from sw.backends.rtl import run_images
    drv = Driver(SIM, "sim")
    rng = np.random.default_rng(8)
    cases = [(3, 7, 13, 7, False, False), (2, 6, 9, 3, True, True), (5, 5, 11, 5, False, False),
             (3, 4, 9, 1, False, False), (2, 8, 64, 7, False, False), (2, 16, 64, 7, False, False)]
    progs, wants, sims = [], [], []
    for c, h, w, k, relu, extreme in cases:
        x, wt, bias, mult, shift = dw_case(rng, c, h, w, k, extreme)
        prog = compile_depthwise(SIM, x, wt, bias, mult, shift, padding=(k - 1) // 2, relu=relu,
                                 base_addr=drv.BUFFER_BASE)
        progs.append(prog)
        wants.append(intconv.depthwise_conv2d(x, wt, bias, mult, shift, padding=(k - 1) // 2, relu=relu))
        sims.append((drv.run(prog), drv.last_run.cycles))
    jobs = [dict(base=p.base_addr, image=p.image, desc_count=len(p.descriptors), timeout=200_000) for p in progs]
    stalled = run_images(SIM, jobs[:4], stall=0.3, seed=3)
    free = run_images(SIM, jobs)
    for prog, want, (sim_image, _), res in zip(progs, wants, sims, stalled):
        assert res["error"] == 0 and not res["timed_out"], res
        assert np.array_equal(prog.output(res["image"]), want)
        assert np.array_equal(res["image"], sim_image)           # every byte, margins included
    for prog, want, (sim_image, sim_cycles), res in zip(progs, wants, sims, free):
        assert np.array_equal(res["image"], sim_image)
        assert abs(sim_cycles / res["cycles"] - 1) < 0.05, (sim_cycles, res["cycles"])
    steady = (8 * 64) / (free[5]["cycles"] - free[4]["cycles"])      # pixels per lane / extra cycles
    assert steady >= 0.99, steady
