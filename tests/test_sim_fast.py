"""The sim backend's fast mode (whole layers in NumPy) against its checked mode (the descriptor
interpreter): the same DDR bytes after the run (every byte of the DDR, with the output region
filled with noise first, so a byte written by one mode and not the other shows), the same cycles
and completion counters; and `cycles_only` (timing without data) gives the same cycles."""
import dataclasses

import numpy as np
import pytest

from golden_model import intattn, intconv, intops
from golden_model.intops import gemm
from hw import isa
from hw.config import preset
from sw.backends import fast
from sw.backends.cycles import cycles_only, program_cycles
from sw.backends.sim_model import SimOverlay
from sw.compile.attention import TokenRows, compile_attention
from sw.compile.conv import compile_conv2d, compile_depthwise
from sw.compile.linear import CompileError, compile_linear
from sw.backends.sim import SimBackend
from sw.runtime.driver import Driver
from sw.runtime.backend import DDR_BASE

BASE = DDR_BASE
COUNTERS = ("CYCLES", "DESC_DONE", "LOADS_DONE", "COMPUTES_DONE", "STORES_DONE", "ATTENTIONS_DONE")


def rand8(rng, shape):
    x = rng.integers(-128, 128, shape, dtype=np.int8)
    x.reshape(-1)[:2] = (-128, 127)[:x.size]             # the extremes in every operand
    return x


def quant(rng, n, big_bias=False):
    bias = rng.integers(-2 ** 16, 2 ** 16, n)
    if big_bias:
        bias[0], bias[-1] = -2 ** 31, 2 ** 31 - 1        # the bias adder saturates
    return bias, rng.integers(1 << 20, 1 << 31, n), rng.integers(20, 40, n)


def run_both(cfg, prog, seed=0):
    """Run `prog` on a checked and a fast SimOverlay with identical DDR; assert equal bytes and
    registers; return the fast model's DDR (the buffer's bytes) and its cycles."""
    rng = np.random.default_rng(seed)
    size = BASE + len(prog.image) + 4096
    noise = rng.integers(0, 256, size, dtype=np.uint8)
    image = prog.image.copy()
    off, n = prog.regions["out"]
    image[off:off + n] = noise[:n]                        # bytes no STORE writes keep their noise
    models = []
    for mode in ("checked", "fast"):
        be = SimBackend(cfg, ddr_bytes=size, sim_mode=mode, timeout_s=600)
        sim = be.model
        sim.ddr[:] = noise
        sim.ddr[BASE:BASE + len(image)] = image
        be.expect(BASE, len(prog.descriptors), fast.job(cfg, prog))
        be.run(BASE, len(prog.descriptors))
        models.append(sim)
    checked, quick = models
    assert quick.fast_runs == 1 and checked.fast_runs == 0
    assert np.array_equal(checked.ddr, quick.ddr), "fast and checked modes wrote different bytes"
    regs = [{k: m.regs[k] for k in COUNTERS} for m in models]
    assert regs[0] == regs[1]
    assert cycles_only(cfg, prog.descriptors) == regs[0]["CYCLES"]
    return quick.ddr[BASE:BASE + len(image)], regs[0]["CYCLES"]


def linear_case(cfg, rng, m, k, n, *, relu=False, out_int32=False, big_bias=False):
    a, b = rand8(rng, (m, k)), rand8(rng, (k, n))
    bias, mult, shift = quant(rng, n, big_bias)
    prog = compile_linear(cfg, a, b, bias, mult, shift, relu=relu, out_int32=out_int32, base_addr=BASE)
    image, _ = run_both(cfg, prog)
    assert np.array_equal(prog.output(image), gemm(a, b, bias, mult, shift, relu=relu, out_int32=out_int32))


@pytest.mark.parametrize("preset_name", ["sim", "bench16", "pynq-z2"])
@pytest.mark.parametrize("m,k,n,relu,out_int32,big_bias", [
    (1, 1, 1, False, False, False),
    (37, 45, 29, True, False, True),          # odd sizes, ReLU, saturating bias
    (23, 300, 33, False, True, True),         # int32 out
    (9, 3000, 17, True, False, False),        # K chunks accumulated (K over half a scratchpad)
    (70, 17, 200, False, False, False),       # several N blocks
])
def test_linear_fast_equals_checked(preset_name, m, k, n, relu, out_int32, big_bias):
    linear_case(preset(preset_name), np.random.default_rng(m * k + n), m, k, n, relu=relu, out_int32=out_int32,
                big_bias=big_bias)


@pytest.mark.parametrize("preset_name", ["sim", "bench16"])
@pytest.mark.parametrize("heads,lq,lk,d,out_int32", [
    (1, 16, 40, 32, False),
    (3, 37, 70, 48, False),                   # several heads, padded d, a short last key tile
    (2, 130, 33, 16, True),                   # many query tiles (slots), int32 out
    (1, 5, 7, 8, False),                      # one short key tile
])
def test_attention_fast_equals_checked(preset_name, heads, lq, lk, d, out_int32):
    cfg = preset(preset_name)
    rng = np.random.default_rng(lq * lk + d)
    q, k, v = (rand8(rng, (heads, n, d)) for n in (lq, lk, lk))
    aq = intattn.AttentionQuant(score_mult=int(rng.integers(1000, 20000)), score_shift=14,
                                out_mult=1 << 28, out_shift=30)
    prog = compile_attention(cfg, q, k, v, aq, out_int32=out_int32, base_addr=BASE)
    image, _ = run_both(cfg, prog)
    want = np.stack([intattn.attention(q[h], k[h], v[h], aq, key_tile=cfg.cols, out_int32=out_int32)
                     for h in range(heads)])
    assert np.array_equal(prog.output(image), want)


@pytest.mark.parametrize("out_chunked", [False, True])
def test_attention_from_token_tiles_fast_equals_checked(out_chunked):
    """Q, K, V in token tiles of 32 on kv260's 16-row array (query tiles loaded a channel at a time):
    two heads, queries and keys not a multiple of a tile, d padded 40 -> 64."""
    cfg = preset("kv260")
    rng = np.random.default_rng(5)
    q, k, v = (rand8(rng, (2, n, 40)) for n in (70, 45, 45))
    aq = intattn.AttentionQuant(score_mult=3000, score_shift=14, out_mult=1 << 28, out_shift=30)
    prog = compile_attention(cfg, q, k, v, aq, base_addr=BASE, token_tiles=True, out_chunked=out_chunked)
    image, _ = run_both(cfg, prog)
    want = np.stack([intattn.attention(q[h], k[h], v[h], aq, key_tile=cfg.cols) for h in range(2)])
    assert np.array_equal(prog.output(image), want)


@pytest.mark.parametrize("name,inputs", [("bench16", False), ("bench16", True), ("sim", True)])
def test_attention_as_token_rows_fast_equals_checked(name, inputs):
    """Output STOREd as token rows, heads merged (TokenRows), and with `inputs` Q, K, V read from token rows
    by transposing LOADs (load_t): 2 windows x 3 heads of d 16, 21 queries (a tail query tile), 40 keys (a
    tail key tile); then a split call's part (items 1..2, query rows 8..) of the same tensors: it reads
    and writes only its own rows."""
    cfg = preset(name)
    assert "load_t" in cfg.engines          # (both presets carry it; without it: the refusal at the end)
    rng = np.random.default_rng(9)
    q, k, v = (rand8(rng, (6, n, 16)) for n in (21, 40, 40))
    aq = intattn.AttentionQuant(score_mult=3000, score_shift=14, out_mult=1 << 28, out_shift=30)
    want = np.stack([intattn.attention(q[i], k[i], v[i], aq, key_tile=cfg.cols) for i in range(6)])
    rows = TokenRows(heads=3, groups=2, queries=21, keys=40, inputs=inputs)
    prog = compile_attention(cfg, q, k, v, aq, base_addr=BASE, rows=rows)
    image, _ = run_both(cfg, prog)
    off, n = prog.regions["out"]
    merged = want.reshape(2, 3, 21, 16).transpose(0, 2, 1, 3)
    assert np.array_equal(image[off:off + n].view(np.int8), merged.reshape(-1))
    assert np.array_equal(prog.output(image), want)
    part = compile_attention(cfg, q[1:3, 8:], k[1:3], v[1:3], aq, base_addr=BASE,
                             rows=dataclasses.replace(rows, item0=1, q0=8))
    assert np.array_equal(part.output(run_both(cfg, part)[0]), want[1:3, 8:])
    with pytest.raises(CompileError, match="head dim 8 is not a multiple"):
        compile_attention(preset("bench16"), q[..., :8], k[..., :8], v[..., :8], aq, rows=rows)
    if inputs:
        no_load_t = cfg.replace(engines=tuple(e for e in cfg.engines if e != "load_t"))
        with pytest.raises(CompileError, match="no transp"):
            compile_attention(no_load_t, q, k, v, aq, rows=rows)


@pytest.mark.parametrize("cin,h,w,cout,k,stride,padding,depthwise,out_int32", [
    (3, 20, 21, 8, 7, 4, 3, False, False),    # patch-embed-like: 7x7 stride 4
    (4, 9, 10, 16, 3, 1, 1, False, False),
    (5, 11, 9, 20, 3, 2, 1, False, True),     # stride 2, int32 out
    (2, 6, 7, 5, 1, 2, 0, False, False),      # 1x1 stride 2
    (3, 8, 8, 4, 2, 2, 0, False, False),      # even kernel
    (6, 12, 13, 7, 5, 1, 2, False, False),
    (1, 7, 9, 3, 4, 1, 3, False, False),      # padding 3
    (40, 5, 6, 9, 3, 1, 1, False, False),     # input channels in chunks
    (16, 8, 12, 16, 3, 2, 1, True, False),    # depthwise on the conv engine
    (8, 11, 13, 8, 7, 1, 3, True, True),
])
def test_conv_fast_equals_checked(cin, h, w, cout, k, stride, padding, depthwise, out_int32):
    cfg = preset("bench16")
    rng = np.random.default_rng(cin * h + k)
    x, wt = rand8(rng, (cin, h, w)), rand8(rng, (cout, 1 if depthwise else cin, k, k))
    bias, mult, shift = quant(rng, cout, big_bias=True)
    prog = compile_conv2d(cfg, x, wt, bias, mult, shift, stride=stride, padding=padding, depthwise=depthwise,
                          relu=True, out_int32=out_int32, base_addr=BASE)
    image, _ = run_both(cfg, prog)
    op = intconv.depthwise_conv2d if depthwise else intconv.conv2d
    assert np.array_equal(prog.output(image), op(x, wt, bias, mult, shift, stride=stride, padding=padding, relu=True,
                                                 out_int32=out_int32))


@pytest.mark.parametrize("preset_name", ["sim", "bench16"])
@pytest.mark.parametrize("c,h,w,k", [(3, 9, 10, 1), (5, 12, 17, 3), (8, 7, 33, 5), (6, 14, 20, 7)])
def test_depthwise_engine_fast_equals_checked(preset_name, c, h, w, k):
    cfg = preset(preset_name)
    rng = np.random.default_rng(c * h * w + k)
    x, wt = rand8(rng, (c, h, w)), rand8(rng, (c, 1, k, k))
    bias, mult, shift = quant(rng, c, big_bias=True)
    prog = compile_depthwise(cfg, x, wt, bias, mult, shift, padding=(k - 1) // 2, relu=bool(k % 4 == 1),
                             base_addr=BASE)
    image, _ = run_both(cfg, prog)
    want = intconv.depthwise_conv2d(x, wt, bias, mult, shift, padding=(k - 1) // 2, relu=bool(k % 4 == 1))
    assert np.array_equal(prog.output(image), want)


@pytest.mark.parametrize("preset_name", ["bench16", "kv260"])
def test_chain_layouts_fast_equal_checked(preset_name):
    """The chain's own layouts (sw.runtime.layout), on a square and a non-square (16 x 32) array: a 1 x 1
    conv writing token tiles of two heads, attention reading Q, K, V from token tiles and writing chunks,
    the relayout program turning chunks into planes; each against golden too."""
    from sw.runtime.layout import TokenTileLayout, compile_chunks_to_planar
    cfg = preset(preset_name)
    C, heads, d, h, w = cfg.cols, 2, 32, 2, 2 * cfg.cols
    rng = np.random.default_rng(11)
    x, wt = rand8(rng, (16, h, w)), rand8(rng, (heads * d, 16, 1, 1))
    bias, mult, shift = quant(rng, heads * d)
    prog = compile_conv2d(cfg, x, wt, bias, mult, shift, base_addr=BASE, out_layout=TokenTileLayout.heads_of(heads))
    image, _ = run_both(cfg, prog)
    t = prog.output(image)
    assert np.array_equal(t, intconv.conv2d(x, wt, bias, mult, shift))
    tokens = t.reshape(heads, d, h * w).transpose(0, 2, 1)                       # (head, token, d)
    aq = intattn.AttentionQuant(score_mult=3000, score_shift=14, out_mult=1 << 28, out_shift=30)
    prog = compile_attention(cfg, tokens, tokens, tokens, aq, base_addr=BASE, out_chunked=True, token_tiles=True)
    lay = TokenTileLayout(heads * d, h, w, C, heads=heads)
    assert prog.region("Q").tobytes() == lay.pack(t).tobytes() == prog.region("K").tobytes()
    image, _ = run_both(cfg, prog)
    att = prog.output(image)
    assert np.array_equal(att, np.stack([intattn.attention(q, q, q, aq, key_tile=C) for q in tokens]))
    prog = compile_chunks_to_planar(cfg, heads * d, h, w, heads=heads, base_addr=BASE)
    off, n = prog.regions["in"]
    prog.image[off:off + n] = rng.integers(0, 256, n, dtype=np.uint8)
    chunks = prog.region("in").view(np.int8).reshape(d // C, heads, h * w, C)    # (chunk, head, token, C)
    image, _ = run_both(cfg, prog)
    want = chunks.transpose(1, 0, 3, 2).reshape(heads * d, h, w)
    assert np.array_equal(prog.output(image), want)


@pytest.mark.parametrize("preset_name,ch,h,w,order", [("bench16", 32, 3, 8, None), ("bench16", 20, 2, 37, None),
                                                       ("kv260", 64, 2, 40, None), ("sim", 16, 3, 11, None),
                                                       ("bench16", 3, 16, 32, 8), ("sim", 6, 4, 12, 2)])
def test_token_rows_planar_transposes_fast_equal_checked(preset_name, ch, h, w, order):
    """The GEMM array's relayouts between token rows and planes (sw.runtime.layout): token rows -> planes,
    writing only the pixels (the margins keep their bytes), and planes -> token rows (in window order too),
    reading only the pixels; maps narrower than C, rows of several C-pixel runs, tails of fewer than R pixels
    or channels, fewer channels than C, square and 16 x 32 arrays."""
    from sw.compile.conv import FmapLayout
    from sw.runtime.device_tensor import _window_order
    from sw.runtime.layout import TokenRowLayout, compile_planar_to_rows, compile_rows_to_planar
    cfg = preset(preset_name)
    rng = np.random.default_rng(5)
    x = rand8(rng, (ch, h, w))
    rows = TokenRowLayout(h * w, ch, cfg.cols)
    prog = compile_rows_to_planar(cfg, ch, h, w, base_addr=BASE)
    off, n = prog.regions["in"]
    prog.image[off:off + n] = rows.pack(x.reshape(ch, -1).T)
    image, _ = run_both(cfg, prog)
    assert np.array_equal(prog.output(image), x)
    prog = compile_planar_to_rows(cfg, ch, h, w, order=order, base_addr=BASE)
    off, n = prog.regions["in"]
    lay = FmapLayout(ch, h, w, cfg.cols)
    pixels = lay.pack(np.ones_like(x)) != 0
    prog.image[off:off + n] = np.where(pixels, lay.pack(x), rng.integers(0, 256, n, dtype=np.uint8))   # margins: noise
    image, _ = run_both(cfg, prog)
    want = x.transpose(1, 2, 0)[None]
    want = _window_order(want, order) if order else want
    assert np.array_equal(prog.output(image), want.reshape(h * w, ch))


def test_driver_modes_agree_on_every_route():
    """Through the driver: conv-transpose and host-im2col convs (GEMM programs), a dense conv, the
    depthwise engine and attention, fast and checked, in one session each: same results, same cycles."""
    cfg = preset("bench16")
    results = {}
    for mode in ("checked", "fast"):
        rng = np.random.default_rng(3)
        drv = Driver(cfg, "sim", sim_mode=mode)
        x = rand8(rng, (8, 5, 6))
        out = [drv.conv_transpose2d(x, rand8(rng, (8, 4, 2, 2)), None, 1 << 21, 24, stride=2)]
        out.append(drv.conv2d(rand8(rng, (3, 12, 12)), rand8(rng, (6, 3, 3, 3)), None, 1 << 21, 24, stride=3))
        out.append(drv.depthwise_conv2d(rand8(rng, (4, 9, 9)), rand8(rng, (4, 1, 3, 3)), None, 1 << 21, 24, padding=1))
        aq = intattn.AttentionQuant(score_mult=5000, score_shift=14, out_mult=1 << 28, out_shift=30)
        for _ in range(2):                        # the normaliser's state carries across runs (NORM_AGAIN)
            out.append(drv.attention(rand8(rng, (2, 20, 32)), rand8(rng, (2, 40, 32)), rand8(rng, (2, 40, 32)), aq))
            out.append(drv.last_run.cycles)
        out.append(drv.linear(rand8(rng, (40, 50)), rand8(rng, (50, 30)), out_int32=True))
        out.append(drv.last_run.cycles)
        out.append(program_cycles(drv.last_programs[0]))     # the first attention, timing only, from reset
        assert out[-1] == out[4]
        results[mode] = out
        assert (drv.device.model.fast_runs > 0) == (mode == "fast")
    for got, want in zip(results["fast"], results["checked"]):
        assert np.array_equal(got, want)


def test_unannounced_runs_are_interpreted():
    """A run the host did not announce (no op record: e.g. hand-written descriptors) is interpreted."""
    cfg = preset("sim")
    rng = np.random.default_rng(1)
    a, b = rand8(rng, (8, 8)), rand8(rng, (8, 8))
    prog = compile_linear(cfg, a, b, None, out_int32=True, base_addr=BASE)
    be = SimBackend(cfg, ddr_bytes=BASE + (1 << 16))
    sim = be.model
    sim.ddr[BASE:BASE + len(prog.image)] = prog.image
    be.run(BASE, len(prog.descriptors))
    assert sim.fast_runs == 0
    assert np.array_equal(prog.output(sim.ddr[BASE:BASE + len(prog.image)]), gemm(a, b, out_int32=True))


def test_fast_mode_cycles_follow_a_hang_like_the_checked_mode():
    """A descriptor waiting for a count never reached leaves both modes BUSY at the same descriptor."""
    cfg = preset("sim")
    descs = [isa.pack_descriptor(opcode=isa.OPCODES["SYNC"]),
             isa.pack_descriptor(opcode=isa.OPCODES["SYNC"], wait_load=1)]
    for mode in ("checked", "fast"):
        sim = SimOverlay(cfg, BASE + (1 << 16), mode=mode)
        sim.ddr[BASE:BASE + 64] = np.frombuffer(b"".join(descs), np.uint8)
        sim.expect(BASE, 2, lambda ddr: None)
        for name, value in (("DESC_ADDR", BASE), ("DESC_COUNT", 2), ("CONTROL", isa.CONTROL_START)):
            sim.write_reg(isa.REG[name], value)
        assert sim.regs["STATUS"] == isa.STATUS_BUSY and sim.regs["DESC_DONE"] == 1


@pytest.mark.slow
def test_big_layers_fast_equals_checked():
    """Bigger shapes on the board presets: the 65,536 x 96 x 288 linear (78k descriptors; ~10 s
    interpreted), a 64 x 64 patch-embed conv, attention over 1,024 keys with 4 slots."""
    rng = np.random.default_rng(7)
    linear_case(preset("kv260"), rng, 65536, 96, 288, relu=True)
    cfg = preset("bench16")
    x, wt = rand8(rng, (3, 64, 64)), rand8(rng, (96, 3, 7, 7))
    bias, mult, shift = quant(rng, 96)
    prog = compile_conv2d(cfg, x, wt, bias, mult, shift, stride=4, padding=3, base_addr=BASE)
    run_both(cfg, prog)
    q, k, v = rand8(rng, (2, 256, 64)), rand8(rng, (2, 1024, 64)), rand8(rng, (2, 1024, 64))
    aq = intattn.AttentionQuant(score_mult=3000, score_shift=14, out_mult=1 << 28, out_shift=30)
    run_both(cfg, compile_attention(cfg, q, k, v, aq, base_addr=BASE))


def test_descriptors_packed_at_once_equal_the_scalar_packer():
    """sw.runtime.program.encode_descriptors (the whole list in NumPy) = hw.isa.pack_descriptor per descriptor,
    on programs using every field group (LOAD/COMPUTE/STORE, IM2COL, STORE tiles, DEPTHWISE, ATTENTION)."""
    cfg = preset("bench16")
    rng = np.random.default_rng(2)
    progs = [compile_conv2d(cfg, rand8(rng, (3, 30, 30)), rand8(rng, (4, 3, 3, 3)), None, 1 << 20, 20, padding=1),
             compile_conv2d(cfg, rand8(rng, (8, 9, 9)), rand8(rng, (8, 8, 3, 3)), None, 1 << 20, 20, stride=2),
             compile_depthwise(cfg, rand8(rng, (5, 8, 8)), rand8(rng, (5, 1, 7, 7)), None, 1 << 20, 20, padding=3),
             compile_attention(cfg, rand8(rng, (2, 40, 32)), rand8(rng, (2, 50, 32)), rand8(rng, (2, 50, 32)),
                               intattn.AttentionQuant(3000, 14, 1 << 28, 30)),
             compile_linear(cfg, rand8(rng, (40, 3000)), rand8(rng, (3000, 20)), None, out_int32=True)]
    for prog in progs:
        n = len(prog.descriptors)
        assert prog.image[:n * 32].tobytes() == b"".join(isa.pack_descriptor(**d) for d in prog.descriptors)


def test_encode_lanes_equal_the_reference():
    """encode_columns' fast way (sw.runtime.program._encode_lanes: ranges from each column's largest value, zero
    columns skipped, lane by lane) = _encode_reference, the same words or the same refusal: on programs of
    every field group and on columns that break each rule (negative, too wide, two groups, a group and its
    shared fields, a field no group shares set with a group's)."""
    from sw.runtime import program as P
    cfg = preset("bench16")
    rng = np.random.default_rng(5)
    progs = [compile_conv2d(cfg, rand8(rng, (3, 30, 30)), rand8(rng, (4, 3, 3, 3)), None, 1 << 20, 20, padding=1),
             compile_depthwise(cfg, rand8(rng, (5, 8, 8)), rand8(rng, (5, 1, 7, 7)), None, 1 << 20, 20, padding=3),
             compile_attention(cfg, rand8(rng, (2, 40, 32)), rand8(rng, (2, 50, 32)), rand8(rng, (2, 50, 32)),
                               intattn.AttentionQuant(3000, 14, 1 << 28, 30)),
             compile_linear(cfg, rand8(rng, (40, 300)), rand8(rng, (300, 20)), None, 1 << 20, 20)]
    cases = [(P._columns(prog.descriptors), len(prog.descriptors)) for prog in progs]
    cases += [(prog.symbolic.split[0], len(prog.symbolic)) for prog in progs]
    shares, _, fields = isa.SHARED_GROUPS[0]
    other = next(f for _, _, fs in isa.SHARED_GROUPS[1:] for f, _, _ in fs)
    n = 50
    for trial in range(40):
        cols = {name: np.zeros(n, np.int64) for name in ("opcode", "count", "dram_addr")}
        cols["opcode"][:] = rng.integers(0, 8, n)
        cols["count"][:] = rng.integers(0, 1 << 16, n)
        cols["dram_addr"][:] = rng.integers(0, 1 << 32, n)
        rows = rng.integers(0, n, 2)
        breaks = trial % 5
        if breaks == 1:
            cols["count"][rows[0]] = -1
        elif breaks == 2:
            cols["count"][rows[0]] = 1 << 16
        elif breaks in (3, 4):
            cols[fields[0][0]] = np.where(np.arange(n) % 3 == 0, 1, 0)
            cols[fields[0][0]][rows[0]] = 1
            extra = other if breaks == 3 else shares[0]
            cols[extra] = np.zeros(n, np.int64)
            cols[extra][rows[0]] = 1
        cases.append((cols, n))
    cases.append(({"opcode": np.zeros(0, np.int64)}, 0))
    refused = 0
    for cols, n in cases:
        want, got = P._encode_reference(cols, n), P._encode_lanes(cols, n)
        refused += want is None
        assert (got is None) == (want is None)
        if want is not None:
            assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)
    assert refused == 32


def test_relinks_write_the_addresses_into_the_kept_words():
    """A compiled list relinked (sw.runtime.program.link_words: its words without addresses kept, the address
    bytes written) equals the list linked afresh field by field (hw.isa.pack_descriptor), for programs using
    every address field, at buffers moved about; an address past 32 bits is refused as before."""
    from golden_model import intvec
    from sw.compile.vector import compile_vector
    from sw.runtime.layout import RowRuns
    from sw.runtime.program import LinkError, link_words
    cfg = preset("bench16")
    rng = np.random.default_rng(6)
    x = rand8(rng, (45, 24))
    progs = [compile_depthwise(cfg, rand8(rng, (5, 8, 8)), rand8(rng, (5, 1, 7, 7)), None, 1 << 20, 20, padding=3),
             compile_attention(cfg, rand8(rng, (2, 40, 32)), rand8(rng, (2, 50, 32)), rand8(rng, (2, 50, 32)),
                               intattn.AttentionQuant(3000, 14, 1 << 28, 30)),
             compile_vector(cfg, "add", x, intvec.AddParams(3000, 5000, 12), b=x[::-1].copy(),
                            runs={"out": RowRuns.windows(5, 9, 4)}),
             compile_linear(cfg, rand8(rng, (40, 300)), rand8(rng, (300, 20)), None, 1 << 20, 20)]
    for prog in progs:
        assert prog.symbolic.split is not None          # (a SplitDescriptors or a ColumnDescriptors: split once)
        for trial in range(3):
            at = {name: int(rng.integers(0, 1 << 20)) * 64 for name in prog.regions}
            want = b"".join(isa.pack_descriptor(**{k: at[v[0]] + v[1] if isinstance(v, tuple) else v
                                                    for k, v in d.items()}) for d in prog.symbolic)
            assert link_words(prog.symbolic, at).tobytes() == want
            assert prog.symbolic._unaddressed[1] is not None              # (the kept words' way)
        with pytest.raises(LinkError):
            link_words(prog.symbolic, {name: 1 << 32 for name in prog.regions})


def test_a_descriptor_that_does_not_fit_is_named():
    from sw.compile.linear import CompileError, pack_descriptors
    image = np.zeros(4096, np.uint8)
    descs = [dict(opcode="SYNC"), dict(opcode="LOAD", target="A", count=1 << 16, sp_addr=0)]
    with pytest.raises(CompileError, match="descriptor 1: .*count=65536 does not fit 16 bits"):
        pack_descriptors(descs, image, {}, 0, "split it")
    with pytest.raises(CompileError, match="descriptor 0: .*share"):
        pack_descriptors([dict(opcode="STORE", tiles_last=1, k_last=2)], image, {}, 0, "split it")


def test_cli_sim_modes_print_the_same_cycles(capsys):
    import re

    from sw.cli import main
    cycles = []
    for mode in ("checked", "fast"):
        assert main(["sim", "conv", "--in", "3x20x20", "--out", "8", "--k", "3", "--stride", "2",
                     "--sim-mode", mode]) == 0
        out = capsys.readouterr().out
        assert "bit-exact against golden" in out
        cycles.append(re.search(r"cycles ([\d,]+)", out).group(1))
    assert cycles[0] == cycles[1]


@pytest.mark.parametrize("k,big_bias,mult_hi,shift_hi,path", [
    (96, False, 1 << 31, 64, "folded"),       # acc + bias stays in int32: (acc + bias) m + r = acc m + c
    (4, False, 4, 41, "folded"),              # small multipliers: many ties
    (96, True, 1 << 31, 64, "saturating")])   # the bias add saturates
@pytest.mark.parametrize("relu", [False, True])
def test_output_stage_equals_the_requantiser(k, big_bias, mult_hi, shift_hi, path, relu):
    """intops.OutputStage's two paths = golden_model.intops (saturating bias add, requantize) on the
    extremes of acc, ties (acc m + 2^(s-1) a multiple of 2^s) and every shift."""
    from golden_model.intops import requantize, saturate_int32
    rng = np.random.default_rng(k)
    bound = k << 14
    n = 64
    acc = rng.integers(-bound, bound + 1, (500, n))
    acc[:4] = [[-bound], [bound], [0], [1]]
    bias, _, _ = quant(rng, n, big_bias)
    mult = rng.integers(0, mult_hi, n)
    shift = np.arange(n) % shift_hi
    mult[:8], shift[:8] = 1, np.arange(1, 9)                      # x + 2^(s-1) ties for odd multiples
    stage = intops.OutputStage(bias, mult, shift, relu, False, bound)
    assert path == ("folded" if stage.folded is not None else "saturating")
    for a in (acc, acc.astype(np.float32) if k <= 1024 else acc):
        assert np.array_equal(stage(a), requantize(saturate_int32(acc + bias), mult, shift, relu=relu))
    int32 = intops.OutputStage(bias, mult, shift, relu, True, bound)(acc)
    want = saturate_int32(acc + bias)
    assert np.array_equal(int32, np.maximum(want, 0) if relu else want)


def test_output_stage_float_path_is_exact(jit_mode):
    """intops.OutputStage requantises in float64 when |acc| m + 2^s <= 2^51 (its comment proves it exact):
    equal to golden_model's integer requantiser (and with a store table, the table of it) at the extremes (|acc| at
    its bound, biases next to saturation, multipliers up to 2^31 - 1, every shift 1..43, ReLU), from float32 and
    float64 accumulators."""
    from golden_model.intops import requantize, saturate_int32
    rng = np.random.default_rng(9)
    taken = 0
    for trial in range(400):
        k = int(rng.choice([1, 9, 96, 1024]))
        bound = k << 14
        acc = rng.integers(-bound, bound + 1, (40, 16))
        acc[:3] = [[bound], [-bound], [0]]
        bias = rng.integers(-(1 << 31) + bound + 1, (1 << 31) - bound, 16)
        bias[:2] = (1 << 31) - bound - 1, -(1 << 31) + bound + 1
        mult = rng.integers(0, 1 << 31, 16)
        mult[0] = (1 << 31) - 1
        shift = np.full(16, trial % 43 + 1) if trial % 2 else rng.integers(1, 44, 16)
        relu = trial % 3 == 0
        stage = intops.OutputStage(bias, mult, shift, relu, False, bound)
        want = requantize(saturate_int32(acc + bias), mult, shift, relu=relu)
        floats = stage.scale is not None and np.abs(acc).max() <= stage.float_limit
        taken += floats
        table = rng.integers(-128, 128, 256).astype(np.int8)
        for a in (acc.astype(np.float32), acc.astype(np.float64)):
            assert np.array_equal(stage(a), want), trial
            assert np.array_equal(stage(a, table), table[want.astype(np.int64) + 128]), trial   # the store's table
    with pytest.raises(ValueError, match="int32"):
        intops.OutputStage(bias, mult, shift, False, True, bound)(acc, table)
    assert taken > 50                                   # the float path ran (the rest: int64)
    assert bool(intops._requantise_rows.signatures) or jit_mode == "numpy"   # (compiled when Numba is on)


def test_timing_is_remembered_by_the_descriptor_bytes():
    """simulate without data remembers a list's outcome by its bytes: the same bytes give the same outcome,
    other bytes their own (and a plain dict of fields, with no digest, is always timed afresh)."""
    from sw.backends import cycles as CY
    cfg = preset("kv260")
    rng = np.random.default_rng(3)
    prog = compile_linear(cfg, rand8(rng, (300, 96)), rand8(rng, (96, 64)), None, 1 << 20, 20)
    raw = prog.image[:len(prog.descriptors) * isa.DESCRIPTOR_BYTES].copy()
    first = CY.simulate(cfg, CY.decode_descriptors(raw))
    again = CY.simulate(cfg, CY.decode_descriptors(raw))
    assert (again.cycles, again.counts) == (first.cycles, first.counts) and again is not first
    edited = [dict(d) for d in prog.descriptors]
    load = next(d for d in edited if d["opcode"] == isa.OPCODES["LOAD"] and d["target"] == isa.TARGETS["A"])
    load["count"] *= 2                                 # a longer burst: more cycles
    raw2 = np.frombuffer(b"".join(isa.pack_descriptor(**d) for d in edited), np.uint8)
    other = CY.simulate(cfg, CY.decode_descriptors(raw2))
    assert other.cycles > first.cycles
    assert other.cycles == CY.simulate(cfg, dict(CY.decode_descriptors(raw2))).cycles


def test_timing_is_remembered_wherever_the_program_is_linked():
    """The memo's key leaves the addresses out (the recurrence never reads them: dram_addr, and the output and b
    addresses of the opcodes whose own fields they are): an attention, a linear, a depthwise and a vector
    program (an add into padded windows: a VECTOR command per run) linked at other buffers share their first
    link's entry, and timed afresh (a plain dict, no digest: every slot command timed on its own, where the
    decoded list times each distinct one once) they take exactly its cycles, unit counts included."""
    from golden_model import intvec
    from sw.backends import cycles as CY
    from sw.backends.sim_attention import AttentionModel
    from sw.compile.vector import compile_vector
    from sw.runtime.layout import RowRuns
    from sw.runtime.program import link_words
    cfg = preset("kv260")
    rng = np.random.default_rng(5)
    x = rand8(rng, (5 * 9, 48))
    progs = [compile_linear(cfg, rand8(rng, (300, 96)), rand8(rng, (96, 64)), None, 1 << 20, 20),
             compile_attention(cfg, *(rand8(rng, (2, n, 64)) for n in (40, 70, 70)),
                               intattn.AttentionQuant(3000, 14, 1 << 28, 30)),
             compile_depthwise(cfg, rand8(rng, (40, 8, 8)), rand8(rng, (40, 1, 7, 7)), None, 1 << 20, 20, padding=3),
             compile_vector(cfg, "add", x, intvec.AddParams(3000, 5000, 12), b=x[::-1].copy(),
                            runs={"out": RowRuns.windows(5, 9, 4)})]
    for prog in progs:
        raw = prog.image[:len(prog.descriptors) * isa.DESCRIPTOR_BYTES]
        moved = link_words(prog.symbolic, {name: 0x4000_0000 + 0x10_0000 * i + off
                                           for i, (name, (off, _)) in enumerate(prog.regions.items())})
        assert not np.array_equal(moved, raw)
        f, g = CY.decode_descriptors(raw), CY.decode_descriptors(moved)
        assert f.digest == g.digest and not np.array_equal(f["dram_addr"], g["dram_addr"])
        CY.forget_timings()
        a, b, c = (CY.simulate(cfg, h, AttentionModel(cfg)) for h in (f, dict(f), dict(g)))
        assert (a.state, a.cycles, a.counts) == (b.state, b.cycles, b.counts) == (c.state, c.cycles, c.counts)


def test_attention_timing_is_remembered_with_the_normaliser_state():
    """An attention list's remembered timing follows the engine's one lasting state (a NORM since reset:
    NORM_AGAIN): the same runs timed afresh each time and from the memo give the same cycles, and set the
    state alike."""
    from sw.backends import cycles as CY
    from sw.backends.sim_attention import AttentionModel
    cfg = preset("kv260")
    rng = np.random.default_rng(4)
    prog = compile_attention(cfg, *(rand8(rng, (1, n, 64)) for n in (40, 70, 70)),
                             intattn.AttentionQuant(3000, 14, 1 << 28, 30))
    raw = prog.image[:len(prog.descriptors) * isa.DESCRIPTOR_BYTES]
    runs = []
    for memo in (False, True, True):
        attn = AttentionModel(cfg)
        cycles = []
        for _ in range(3):
            if not memo:
                CY.forget_timings()
            cycles.append(CY.simulate(cfg, CY.decode_descriptors(raw), attn).cycles)
        runs.append((cycles, attn.normed))
    assert runs[0] == runs[1] == runs[2] and runs[0][1]
    assert runs[0][0][0] < runs[0][0][1] == runs[0][0][2]     # the first NORM since reset is a cycle quicker


def test_plan_caches_give_the_uncached_programs_and_stay_within_their_budget(monkeypatch):
    """A linear's and an attention's plan, kept, serve a call of the same shapes with other data and output
    requantisers: images and descriptors identical to compiling afresh (and a vector call's remembered
    descriptors); an attention with another score requantiser (in its descriptors) gets its own descriptors,
    the shape's plan with its score set (sw.compile.attention._scored_plan), identical to a fresh compile's;
    the caches drop their oldest plans past PLAN_CACHE_DESCRIPTORS."""
    from sw.compile import attention as A
    from sw.compile import linear as L
    cfg = preset("kv260")

    def linear(seed):
        rng = np.random.default_rng(seed)
        return compile_linear(cfg, rand8(rng, (70, 96)), rand8(rng, (96, 40)), None, 1 << 20, 20 + seed)

    def attention(seed, score=3000):
        rng = np.random.default_rng(seed)
        return compile_attention(cfg, *(rand8(rng, (2, n, 64)) for n in (40, 70, 70)),
                                 intattn.AttentionQuant(score, 14, (1 << 28) + seed, 30))

    def fresh(make, *args):
        L._PLANS.clear()
        return make(*args)
    kept_linear = linear(1)
    for make in (linear, attention):
        make(1)
        before = len(L._PLANS)
        kept = make(2)
        assert len(L._PLANS) == before                  # served from the kept plan
        want = fresh(make, 2)
        assert np.array_equal(kept.image, want.image) and kept.descriptors == want.descriptors
    other = attention(2, 1234)                          # its own descriptors, from the shape's one plan
    assert list(L._PLANS) == [key for key in L._PLANS if key[0] is A._attention_plan.__wrapped__] and len(L._PLANS) == 1
    assert other.descriptors != want.descriptors
    assert np.array_equal(other.image, fresh(attention, 2, 1234).image)
    with monkeypatch.context() as m:                    # the plan made for that score itself: the same program
        m.setattr(A, "_scored_plan", A._attention_plan.__wrapped__)
        direct = attention(2, 1234)
    assert np.array_equal(other.image, direct.image) and other.descriptors == direct.descriptors
    assert list(other.symbolic) == list(direct.symbolic)
    from sw.compile import vector as V
    rng = np.random.default_rng(7)
    maps = [rand8(rng, (6, 8, 40)) for _ in range(2)]
    kept = [V.compile_vector(cfg, "maxpool", m) for m in maps]         # the second's descriptors remembered
    V._PACKED.clear()
    assert np.array_equal(kept[1].image, V.compile_vector(cfg, "maxpool", maps[1]).image)
    assert all(key[0] is not L._linear_plan.__wrapped__ for key in L._PLANS)
    monkeypatch.setattr(L, "PLAN_CACHE_DESCRIPTORS", len(kept_linear.descriptors))
    lin = linear(1)
    assert len(L._PLANS) == 1 and L._PLANS.descriptors == len(lin.descriptors)     # the attention's dropped


def test_fast_mode_kept_weights_follow_the_bytes_in_ddr():
    """The fast linear keeps a layer's float weights and output stage while DDR holds the same bytes
    (sw.lru.BytesMemo); a weight or a parameter changed in DDR between runs is used at once."""
    cfg = preset("sim")
    rng = np.random.default_rng(11)
    a, b = rand8(rng, (9, 1100)), rand8(rng, (1100, 20))          # K over 1024: float32 K chunks
    bias, mult, shift = quant(rng, 20)
    prog = compile_linear(cfg, a, b, bias, mult, shift, base_addr=BASE)
    be = SimBackend(cfg, ddr_bytes=BASE + len(prog.image) + 4096)
    be.model.ddr[BASE:BASE + len(prog.image)] = prog.image
    n = len(prog.descriptors)

    def run():
        be.expect(BASE, n, fast.job(cfg, prog))
        be.run(BASE, n)
        return prog.output(be.model.ddr[BASE:BASE + len(prog.image)])
    assert np.array_equal(run(), gemm(a, b, bias, mult, shift))
    b2, bias2 = b.copy(), bias.copy()
    b2[1050, 3] = -b2[1050, 3] - 1                                 # one weight, in the last K chunk
    bias2[7] += 1000
    again = compile_linear(cfg, a, b2, bias2, mult, shift, base_addr=BASE)
    for region in ("B", "params"):
        off, size = again.regions[region]
        be.model.ddr[BASE + off:BASE + off + size] = again.image[off:off + size]
    assert np.array_equal(run(), gemm(a, b2, bias2, mult, shift))


def test_bytes_memo_makes_again_when_a_byte_changes_and_stays_in_budget():
    from sw.lru import BytesMemo
    mem, made = np.zeros(4096, np.uint8), []
    memo = BytesMemo(budget=3 * 64)

    def make(raw):
        made.append(raw.copy())
        return raw.sum()
    assert memo.get(mem, 256, 4, 32, 16, "x", make) == 0 and memo.get(mem, 256, 4, 32, 16, "x", make) == 0
    assert len(made) == 1
    mem[256 + 32 + 20] = 9                         # between the used bytes of two rows: not read
    memo.get(mem, 256, 4, 32, 16, "x", make)
    mem[256 + 32 + 15] = 5                         # a used byte
    assert memo.get(mem, 256, 4, 32, 16, "x", make) == 5 and len(made) == 2
    for addr in (1024, 2048, 3072):                # each 64 bytes kept: the first ones dropped
        memo.get(mem, addr, 4, 32, 16, "x", make)
    assert memo.used <= memo.budget and len(made) == 5
