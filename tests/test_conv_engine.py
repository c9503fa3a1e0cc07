"""Convolution engine: im2col loader (Amaranth simulator), compiler, sim model, and rtl == sim == golden."""
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from golden_model import intconv
from hw import isa
from hw.config import preset
from hw.conv.im2col import Im2colLoader
from sim.amaranth_ddr import axi_read_testbenches
from sw.backends.sim_model import SimOverlay
from sw.runtime.checks import DescriptorError, check_descriptors
from sw.compile.conv import PAD, FmapLayout, compile_conv2d
from sw.compile.linear import CompileError
from sw.runtime.driver import Driver

SIM = preset("sim")


def rand8(rng, shape):
    x = rng.integers(-128, 128, shape).astype(np.int8)
    x.reshape(-1)[:2] = (-128, 127)
    return x


def run_loader(cfg, mem: np.ndarray, cmd: dict, *, stall: float, seed: int) -> dict[int, np.ndarray]:
    """Drive Im2colLoader with a DDR model answering AR with R beats, both with random stalls."""
    dut = Im2colLoader(cfg)
    DB, C = cfg.beat_bytes, cfg.cols
    rng = random.Random(seed)
    got, state = {}, {"done": False}

    ar_sink, r_source = axi_read_testbenches(dut, mem, rng, stall, DB)

    async def collector(ctx):
        async for _, _, valid, addr, data, done in ctx.tick().sample(
                dut.b_wr.valid, dut.b_wr.payload.addr, dut.b_wr.payload.data.as_value(), dut.done):
            if valid:
                got[addr] = np.frombuffer(int(data).to_bytes(C, "little"), np.int8).copy()
            if done:
                state["done"] = True

    async def main(ctx):
        for name, value in cmd.items():
            ctx.set(dut.cmd.payload[name], value)
        ctx.set(dut.cmd.valid, 1)
        await ctx.tick().until(dut.cmd.ready)
        ctx.set(dut.cmd.valid, 0)
        for _ in range(20_000):
            if state["done"]:
                break
            await ctx.tick()
        assert state["done"], "loader never finished"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for proc in (ar_sink, r_source, collector):
        sim.add_testbench(proc, background=True)
    sim.add_testbench(main)
    sim.run()
    return got


@pytest.mark.parametrize("cin,h,w,k,stride,padding,oy,xt,base,n_out", [
    (3, 11, 13, 7, 4, 3, 1, 0, 0x1000, 1),       # patch-embed class, top border
    (2, 9, 21, 3, 2, 1, 1, 1, 0xF00, 4),         # right border tile, 4 output rows; rows cross 4 KiB
    (4, 5, 6, 1, 1, 0, 2, 0, 0x2000, 3),         # 1x1
    (1, 8, 8, 7, 1, 3, 3, 0, 0x3FC8, 5),         # depthwise 7x7 class, to the bottom border
    (2, 7, 9, 5, 2, 2, 0, 0, 0x1FF0, 1),
    (1, 16, 19, 3, 2, 1, 0, 1, 0x2400, 8),       # mask-downsampler class: one channel, every output row
])
def test_im2col_loader_amaranth(cin, h, w, k, stride, padding, oy, xt, base, n_out):
    cfg = SIM
    C, DB = cfg.cols, cfg.beat_bytes
    rng = np.random.default_rng(k * 100 + cin)
    x = rand8(rng, (cin, h, w))
    lay = FmapLayout(cin, h, w, C)
    mem = np.zeros(0x8000, np.uint8)
    mem[base:base + lay.size] = lay.pack(x)
    mem[base + lay.size:] = rng.integers(0, 256, len(mem) - base - lay.size)   # garbage past the map
    ox0 = xt * C
    off = lay.offset(0, oy * stride - padding, ox0 * stride - padding)
    cmd = dict(addr=base + off // DB * DB, pitch=lay.row_bytes, plane_rows=lay.plane_rows, channels=cin,
               k_last=k - 1, stride_log2=stride.bit_length() - 1, offset=off % DB, sp=5, out_rows_last=n_out - 1)
    got = run_loader(cfg, mem, cmd, stall=0.3, seed=k)
    n = cin * k * k
    assert sorted(got) == list(range(5, 5 + n * n_out))
    entries = np.array([got[5 + e] for e in range(n * n_out)])
    # Valid lanes (output pixels inside the map) = golden im2col; all lanes = the sim model.
    wo = intconv.out_size(w, k, stride, padding)
    lanes = min(C, wo - ox0)
    for t in range(n_out):
        cols = intconv.im2col(x, k, stride, padding).reshape(n, -1, wo)[:, oy + t]
        assert np.array_equal(entries[t * n:(t + 1) * n, :lanes], cols[:, ox0:ox0 + lanes]), f"output row {oy + t}"
    model = SimOverlay(cfg, len(mem))
    model.ddr[:] = mem
    model._im2col(dict(dram_addr=cmd["addr"], stride=cmd["pitch"], plane_rows=cmd["plane_rows"], count=cin,
                       kernel_last=k - 1, stride_log2=cmd["stride_log2"], col_offset=cmd["offset"], sp_addr=5,
                       out_rows_last=n_out - 1))
    assert np.array_equal(model.b[5:5 + n * n_out], entries)


def conv_case(rng, cin, h, w, cout, k, depthwise):
    x = rand8(rng, (cin, h, w))
    wt = rand8(rng, (cout, 1 if depthwise else cin, k, k))
    bias = rng.integers(-2**16, 2**16, cout)
    bias[0] = -2**31
    return x, wt, bias, rng.integers(1 << 29, 1 << 31, cout), rng.integers(36, 44, cout)


def golden(x, wt, bias, mult, shift, stride, padding, depthwise, relu, out_int32):
    fn = intconv.depthwise_conv2d if depthwise else intconv.conv2d
    return fn(x, wt, bias, mult, shift, stride=stride, padding=padding, relu=relu, out_int32=out_int32)


CASES = [  # cin, h, w, cout, k, stride, padding, depthwise, relu, out_int32
    (3, 19, 13, 10, 7, 4, 3, False, False, False),
    (1, 16, 16, 4, 3, 2, 1, False, True, True),
    (4, 9, 7, 16, 3, 2, 1, False, True, False),
    (9, 8, 7, 9, 7, 1, 3, True, False, False),
    (5, 9, 9, 5, 3, 2, 1, True, True, True),
    (6, 7, 10, 3, 5, 1, 2, False, False, False),
    (2, 6, 5, 9, 2, 2, 0, False, False, False),
    (3, 8, 8, 5, 4, 4, 0, False, True, False),
]


@pytest.mark.parametrize("cin,h,w,cout,k,stride,padding,depthwise,relu,out_int32", CASES)
def test_sim_model_bit_exact(cin, h, w, cout, k, stride, padding, depthwise, relu, out_int32):
    rng = np.random.default_rng(cin * 31 + k)
    x, wt, bias, mult, shift = conv_case(rng, cin, h, w, cout, k, depthwise)
    drv = Driver(SIM, "sim")
    prog = compile_conv2d(SIM, x, wt, bias, mult, shift, stride=stride, padding=padding, depthwise=depthwise,
                          relu=relu, out_int32=out_int32, base_addr=drv.BUFFER_BASE)
    image = drv.run(prog)
    assert np.array_equal(prog.output(image), golden(x, wt, bias, mult, shift, stride, padding, depthwise, relu,
                                                     out_int32))
    # The output map keeps the layout's zero margins (stores write only valid columns).
    out = prog.out_layout
    off, size = prog.regions["out"]
    full = np.frombuffer(image[off:off + size].tobytes(), np.int8 if not out_int32 else "<i4")
    full = full.reshape(out.channels, out.plane_rows, out.pitch).copy()
    full[:, PAD:PAD + out.height, out.left:out.left + out.width] = 0
    assert not full.any()


def test_sim_model_input_channels_in_chunks():
    """Cin * K * K beyond half the B scratchpad: channel chunks accumulated in place."""
    cfg = SIM.replace(a_depth=256, b_depth=256, acc_depth=8, param_depth=2)
    rng = np.random.default_rng(4)
    x, wt, bias, mult, shift = conv_case(rng, 40, 6, 9, 6, 3, False)
    prog = compile_conv2d(cfg, x, wt, bias, mult, shift, stride=1, padding=1, base_addr=0x10000)
    assert any(d.get("accumulate") for d in prog.descriptors)
    model = Driver(cfg, "sim")
    assert np.array_equal(prog.output(model.run(prog)), golden(x, wt, bias, mult, shift, 1, 1, False, False, False))


@pytest.mark.rtl
def test_rtl_equals_sim_equals_golden_with_axi_backpressure():
    from sw.backends.rtl import run_images
    rng = np.random.default_rng(21)
    drv = Driver(SIM, "sim")
    progs, wants, sims = [], [], []
    for cin, h, w, cout, k, stride, padding, depthwise, relu, out_int32 in CASES[:5] + [
            (2, 5, 17, 5, 3, 2, 1, False, False, False),
            (1, 21, 19, 3, 3, 2, 1, False, False, False)]:     # output rows in groups of 8 and 3, two x tiles
        x, wt, bias, mult, shift = conv_case(rng, cin, h, w, cout, k, depthwise)
        prog = compile_conv2d(SIM, x, wt, bias, mult, shift, stride=stride, padding=padding, depthwise=depthwise,
                              relu=relu, out_int32=out_int32, base_addr=drv.BUFFER_BASE)
        progs.append(prog)
        wants.append(golden(x, wt, bias, mult, shift, stride, padding, depthwise, relu, out_int32))
        sims.append((drv.run(prog), drv.last_run.cycles))
    jobs = [dict(base=p.base_addr, image=p.image, desc_count=len(p.descriptors), timeout=1_000_000) for p in progs]
    stalled = run_images(SIM, jobs, stall=0.3, seed=5)
    free = run_images(SIM, jobs[:3])
    for prog, want, (sim_image, sim_cycles), res in zip(progs, wants, sims, stalled):
        assert res["error"] == 0 and not res["timed_out"], res
        assert np.array_equal(prog.output(res["image"]), want)
        assert np.array_equal(res["image"], sim_image)           # every byte, margins included
    for (_, sim_cycles), res in zip(sims, free):
        assert abs(sim_cycles / res["cycles"] - 1) < 0.05, (sim_cycles, res["cycles"])


def test_checks_refuse_bad_im2col_and_store_descriptors():
    rng = np.random.default_rng(0)
    x, wt, bias, mult, shift = conv_case(rng, 2, 6, 6, 4, 3, False)
    prog = compile_conv2d(SIM, x, wt, bias, mult, shift, padding=1, base_addr=0x100000)
    i = next(j for j, d in enumerate(prog.descriptors) if d.get("target") == isa.TARGETS["IM2COL"])
    s = next(j for j, d in enumerate(prog.descriptors) if d["opcode"] == isa.OPCODES["STORE"])
    for j, change, match in [(i, {"count": 40}, "outside the buffer"), (i, {"sp_addr": 4090}, "B scratchpad"),
                             (i, {"stride": 12}, "pitch"), (i, {"kernel_last": 7}, "out of range"),
                             (s, {"cols": 9}, "columns")]:
        descs = [dict(d) for d in prog.descriptors]
        descs[j].update(change)
        with pytest.raises(DescriptorError, match=match):
            check_descriptors(SIM, descs, prog.buffer_table())
    with pytest.raises(DescriptorError, match="no convolution engine"):
        check_descriptors(SIM.replace(engines=("gemm",)), prog.descriptors, prog.buffer_table())


def test_short_reductions_run_output_rows_per_command_and_checks_bound_them():
    """One input channel of 3x3: an IM2COL load gathers several output rows and one COMPUTE / STORE covers
    a group of them (tiles); the descriptor checks bound every tile."""
    rng = np.random.default_rng(3)
    x, wt, bias, mult, shift = conv_case(rng, 1, 40, 20, 3, 3, False)
    prog = compile_conv2d(SIM, x, wt, bias, mult, shift, stride=2, padding=1, base_addr=0x100000)
    ops = {v: k for k, v in isa.OPCODES.items()}
    computes = [d for d in prog.descriptors if ops[d["opcode"]] == "COMPUTE"]
    stores = [d for d in prog.descriptors if ops[d["opcode"]] == "STORE"]
    loads = [d for d in prog.descriptors if d.get("target") == isa.TARGETS["IM2COL"]]
    assert max(d.get("count", 0) for d in computes) > 1 and max(d.get("tiles_last", 0) for d in stores) > 0
    assert max(d["out_rows_last"] for d in loads) + 1 >= max(d.get("count", 0) for d in computes)
    assert sum(max(1, d.get("count", 0)) for d in computes) == 20 * 2       # 20 output rows x 2 column tiles
    want = golden(x, wt, bias, mult, shift, 2, 1, False, False, False)
    assert np.array_equal(prog.output(Driver(SIM, "sim").run(prog)), want)
    c = prog.descriptors.index(computes[0])
    st = prog.descriptors.index(max(stores, key=lambda d: d.get("tiles_last", 0)))
    for j, change, match in [(c, {"count": isa.MAX_TILES + 1}, "tiles"), (c, {"count": 200}, "past"),
                             (st, {"tiles_last": 200}, "outside"), (st, {"tile_stride": 12}, "tile stride")]:
        descs = [dict(d) for d in prog.descriptors]
        descs[j].update(change)
        with pytest.raises(DescriptorError, match=match):
            check_descriptors(SIM, descs, prog.buffer_table())


@pytest.mark.parametrize("kw,match", [
    (dict(stride=3), "stride 3"), (dict(padding=4), "padding 4"), (dict(k=9), "kernel 9"),
])
def test_compiler_refuses_what_the_engine_does_not_run(kw, match):
    k = kw.pop("k", 3)
    x = np.zeros((2, 12, 12), np.int8)
    with pytest.raises(CompileError, match=match):
        compile_conv2d(SIM, x, np.zeros((2, 2, k, k), np.int8), out_int32=True, **kw)


def test_im2col_fields_share_bits_a_load_does_not_read():
    """IM2COL's fields live in b_base/k_last; they round-trip and never collide with another field."""
    spans = sorted(isa.FIELDS[n] for n, _, _ in isa.DESCRIPTOR_FIELDS)
    assert all(p + w <= q for (p, w), (q, _) in zip(spans, spans[1:]))          # primary fields disjoint
    b0 = isa.FIELDS[isa.IM2COL_SHARES[0]][0]
    b1 = sum(isa.FIELDS[isa.IM2COL_SHARES[-1]])
    assert all(b0 <= isa.FIELDS[n][0] and sum(isa.FIELDS[n]) <= b1 for n, _, _ in isa.IM2COL_FIELDS)
    fields = dict(opcode=isa.OPCODES["LOAD"], target=isa.TARGETS["IM2COL"], kernel_last=6, stride_log2=2,
                  col_offset=17, plane_rows=(1 << 14) - 1, count=3, wait_attention=5, cols=9)
    got = isa.unpack_descriptor(isa.pack_descriptor(**fields))
    assert {k: got[k] for k in fields} == fields
    with pytest.raises(ValueError, match="share the bits"):
        isa.pack_descriptor(**fields, b_base=1)
    assert isa.TARGETS["IM2COL"] != isa.TARGETS["V"] and len(set(isa.TARGETS.values())) == len(isa.TARGETS)


@pytest.mark.parametrize("name", ["sim", "pynq-z2", "bench16", "kv260", "zcu104"])
def test_sim_model_never_beats_the_ddr_bound(name):
    """The cycle model may not claim more MAC utilisation than AXI's bandwidth allows on the
    benchmark's real layers (mask_downsampler.0 is bandwidth-bound on every Zynq preset's array)."""
    from benchmarks.conv import LAYERS, ddr_bound, tile_case
    cfg = preset(name)
    drv = Driver(cfg, "sim")
    for i, (layer, kind, _full, cout, k, stride, padding, tile) in enumerate(LAYERS):
        (x, wt, bias, mult, shift), op, _ = tile_case(i, kind, tile, cout, k)
        getattr(drv, op)(x, wt, bias, mult, shift, stride=stride, padding=padding)
        if drv.last_run.engine == "depthwise":
            continue   # its own engine: px/cycle/lane, not array MACs
        bound = ddr_bound(cfg, kind, tile, cout, k, stride, padding)
        assert drv.last_run.utilisation <= bound + 1e-9, (layer, drv.last_run.utilisation, bound)
