"""The vector engine (hw/vector) against golden_model.intvec: Amaranth-simulator unit tests per op
with random valid/ready stalls, throughput in steady state, and the cocotb/Verilator bench."""
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.flows.lint import lint
from hw.vector import params as P
from hw.vector.engine import VectorCommand, VectorEngine
from hw.verilog import write_verilog
from sim.benches.vector_cases import OPS, make_case, out_beats
from sim.runner import BUILD, run_amaranth, run_bench


def pack_beats(rows: np.ndarray, lanes: int) -> list[int]:
    return [int.from_bytes(b.astype(np.int8).tobytes(), "little") for b in P.to_beats(rows, lanes)]


def unpack_beats(words: list[int], lanes: int, dim: int) -> np.ndarray:
    raw = np.frombuffer(b"".join(w.to_bytes(lanes, "little") for w in words), np.int8).reshape(-1, lanes)
    return P.from_beats(raw, dim)


def simulate(case, lanes: int, stall: float = 0.3, seed: int = 0, engine=None):
    """Runs one command on the engine in Amaranth's simulator. Returns (output rows, stats) with
    stats the cycles of the first and last beat accepted on `i` and taken on `o`."""
    dut = engine or VectorEngine(lanes)
    a_words = pack_beats(case.a, lanes)
    b_words = pack_beats(case.b, lanes) if case.b is not None else []
    n_out = out_beats(case, lanes)
    got, t_in, t_out = [], [], []
    rng = random.Random(seed)

    async def producer(ctx):
        for target, addr, word in case.writes:
            ctx.set(dut.param.payload.as_value(), int(target) | addr << 2 | word << (2 + P.ADDR_BITS))
            ctx.set(dut.param.valid, 1)
            await ctx.tick()
        ctx.set(dut.param.valid, 0)
        ctx.set(dut.cmd.payload.as_value(), VectorCommand.const(case.cmd).as_bits())
        ctx.set(dut.cmd.valid, 1)
        await ctx.tick().until(dut.cmd.ready)
        ctx.set(dut.cmd.valid, 0)
        await feed(ctx, dut.i, a_words, random.Random(seed + 1))

    async def feed(ctx, port, words, r):
        for w in words:
            while r.random() < stall:
                ctx.set(port.valid, 0)
                await ctx.tick()
            ctx.set(port.payload.as_value(), w)
            ctx.set(port.valid, 1)
            await ctx.tick().until(port.ready)
        ctx.set(port.valid, 0)

    async def b_producer(ctx):
        await feed(ctx, dut.b, b_words, random.Random(seed + 2))

    async def consumer(ctx):
        cycle = 0
        while len(got) < n_out:
            ready = rng.random() >= stall
            ctx.set(dut.o.ready, ready)
            _, _, ov, op, iv, ir = await ctx.tick().sample(dut.o.valid, dut.o.payload.as_value(),
                                                           dut.i.valid, dut.i.ready)
            if iv and ir:
                t_in.append(cycle)
            if ready and ov:
                got.append(op)
                t_out.append(cycle)
            cycle += 1
        ctx.set(dut.o.ready, 0)
        for _ in range(3):          # the engine goes idle once its last beat has left
            await ctx.tick()
        assert not ctx.get(dut.busy)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    if b_words:
        sim.add_testbench(b_producer)
    sim.add_testbench(consumer)
    run_amaranth(sim, f"vector_{case.name}")
    return unpack_beats(got, lanes, case.dim), {"in": (t_in[0], t_in[-1]), "out": (t_out[0], t_out[-1])}


def check(case, lanes, **kw):
    got, stats = simulate(case, lanes, **kw)
    assert got.shape == case.expected.shape, (got.shape, case.expected.shape)
    bad = np.argwhere(got != case.expected)
    assert bad.size == 0, (f"{case.name}: {len(bad)} mismatches, first at {tuple(bad[0])}: "
                           f"rtl {got[tuple(bad[0])]} golden {case.expected[tuple(bad[0])]}")
    return stats


# every op: random data with stalls, D not a multiple of L
@pytest.mark.parametrize("op", OPS)
def test_op_random_with_stalls(op):
    # RoPE: D a multiple of 4 (axial tables), so 8 lanes for D = 20 (whole tables: odd seed)
    lanes, dim, seed = (8, 20, 3) if op == "rope" else (4, 13, 1)
    check(make_case(op, lanes, 8, dim, seed=seed), lanes)


@pytest.mark.parametrize("op,kind", [("layernorm", "constant"), ("layernorm", "extremes"), ("lut", "extremes"),
                                     ("add", "extremes"), ("rescale", "extremes"), ("rope", "extremes"),
                                     ("maxpool", "extremes"), ("upsample", "extremes")])
def test_op_adversarial(op, kind):
    # rope: axial tables (even seed), D a multiple of 4 L
    check(make_case(op, 4, 8, 16, seed=2, kind=kind), 4)


@pytest.mark.parametrize("op", ["layernorm", "lut", "add", "rescale", "maxpool", "upsample"])
def test_dim_one(op):
    check(make_case(op, 4, 8, 1, seed=4), 4, stall=0.2)


@pytest.mark.parametrize("kind", ["random", "extremes"])
def test_layernorm_rows_of_1024(kind):
    """The widest rows: var up to 2^34, so the rsqrt's k reaches its top."""
    check(make_case("layernorm", 16, 3, 1024, seed=5, kind=kind), 16, stall=0.2)


def _edge_case(op: str, shift: int, mult: int, seed: int):
    """A command at the edges of the output shift and multiplier ranges (past what .make() picks):
    the output word's width, its rounding and the saturation test (bits of W at s + 7 and up)."""
    from golden_model import intvec as V
    from sim.benches.vector_cases import Case
    rng = np.random.default_rng(seed)
    rows, dim = 8, 16
    x = rng.choice(np.array([-128, 127, -127, 0, -1, 1, 64, -65], np.int8), (rows, dim))
    x[rows // 2:] = rng.integers(-128, 128, (rows - rows // 2, dim))
    if op == "rope":
        one = 1 << V.ROPE_FRAC_BITS
        t = rng.choice(np.array([one, -one, one - 1, 0, 3], np.int16), (2, rows, dim // 2))
        t[:, rows // 2:] = rng.integers(-one, one + 1, (2, rows - rows // 2, dim // 2))
        p = V.RopeParams(t[0], t[1], mult, shift)
        cmd, writes = P.rope_command(p, rows, 8)
        return Case(f"rope-edge-s{shift}", cmd, writes, x, None, V.rope(x, p))
    if op == "add":
        b = rng.integers(-128, 128, (rows, dim)).astype(np.int8)
        p = V.AddParams(mult, (1 << V.ADD_MULT_BITS) - 1 - mult, shift)
        cmd, writes = P.add_command(p, dim, rows)
        return Case(f"add-edge-s{shift}", cmd, writes, x, b, V.add(x, b, p))
    gain = rng.integers(-(1 << 15) + 1, 1 << 15, dim).astype(np.int16)
    bias = rng.integers(-V.LN_BIAS_LIMIT, V.LN_BIAS_LIMIT + 1, dim).astype(np.int32)
    p = V.LayerNormParams(gain, bias, shift, 0)
    cmd, writes = P.layernorm_command(p, rows)
    return Case(f"layernorm-edge-s{shift}", cmd, writes, x, None, V.layernorm(x, p))


@pytest.mark.parametrize("op,shift,mult", [
    ("rope", 0, (1 << 31) - 1), ("rope", 45, (1 << 31) - 1), ("rope", 46, (1 << 30) + 12345),
    ("rope", 54, (1 << 31) - 1), ("rope", 55, (1 << 31) - 1), ("rope", 63, (1 << 31) - 1),
    ("add", 0, 65535), ("add", 23, 40000), ("add", 31, 65535), ("layernorm", 1, 0), ("layernorm", 30, 0)])
def test_output_shift_edges(op, shift, mult):
    check(_edge_case(op, shift, mult, seed=shift), 8, stall=0.1)


def test_add_broadcast_and_back_to_back_commands():
    """Two commands on one engine (parameters rewritten in between): nothing is left over."""
    dut = VectorEngine(4)
    for seed, op in ((1, "add"), (2, "layernorm")):
        case = make_case(op, 4, 5, 10, seed=seed)
        got, _ = simulate(case, 4, seed=seed, engine=dut)
        assert np.array_equal(got, case.expected), case.name


# steady state: no stalls, D a multiple of L; elements per cycle on the busier stream
RATE_CASES = {"layernorm": 64, "lut": 64, "add": 64, "rescale": 64, "rope": 64, "maxpool": 64, "upsample": 32}


@pytest.mark.parametrize("op", list(RATE_CASES))
def test_throughput_steady_state(op):
    lanes = 8
    case = make_case(op, lanes, RATE_CASES[op], 64, seed=2)
    stats = check(case, lanes, stall=0.0)
    side = {"maxpool": "in", "upsample": "out"}.get(op, "out")
    first, last = stats[side]
    beats = (len(case.a) if side == "in" else len(case.expected)) * P.beats(case.dim, lanes)
    rate = beats * lanes / (last - first + 1)
    assert rate >= 0.9 * lanes, f"{op}: {rate:.2f} elements per cycle < 0.9 x {lanes}"


@pytest.mark.rtl
@pytest.mark.slow          # the Verilator build: 1-2 minutes (the run itself ~10 s)
@pytest.mark.parametrize("lanes", [8])
def test_vector_engine_rtl_bench(lanes):
    verilog = write_verilog(VectorEngine(lanes), "vector_engine", BUILD / "verilog" / f"vector{lanes}")
    result = run_bench(verilog, "vector_engine", "vector_bench", name=f"test-vector{lanes}",
                       extra_env={"BENCH_LANES": str(lanes)})
    assert result.failed == 0 and result.passed == len(OPS)
    for r in result.reports:
        if r.get("steady"):
            assert r["elements_per_cycle"] >= 0.9 * lanes, r


@pytest.mark.rtl
def test_vector_engine_lints_clean():
    lint(write_verilog(VectorEngine(8), "vector_engine", BUILD / "verilog" / "vector8"), "vector_engine")


# hw.vector.params: the host side of the layout
def test_beats_round_trip_and_padding():
    rows = np.arange(-60, 60, dtype=np.int8).reshape(8, 15)
    b = P.to_beats(rows, 4)
    assert b.shape == (8 * 4, 4) and np.all(b.reshape(8, 16)[:, 15] == 0)
    assert np.array_equal(P.from_beats(b, 15), rows)


def test_sam2_rope_tables_fit_on_chip():
    """Memory attention's 64 x 64 map at D = 256: the axial tables fill the pair slots exactly."""
    from golden_model import intvec as V
    from golden_model.memory_attention import axial_rope
    p = V.RopeParams.make(*axial_rope(256, 64, 64), 0.05, 0.05)
    cmd, writes = P.rope_command(p, 7 * 4096, 16, end_x=64)
    assert len(writes) == P.ROPE_DEPTH and cmd["rope_jx"] == 64 // 8
    with pytest.raises(ValueError, match="exceed"):
        P.rope_command(p, 4096, 16)                                   # whole: 4096 x 128 pairs


@pytest.mark.parametrize("bad", [dict(dim=0), dict(dim=1025), dict(rows=0), dict(op=P.VecOp.MAXPOOL, rows=6),
                                 dict(ln_shift=32), dict(a_mult=1 << 16)])
def test_command_refuses_out_of_range(bad):
    args = dict(op=P.VecOp.LUT, dim=8, rows=4) | bad
    with pytest.raises(ValueError, match="vector engine"):
        P.command(args.pop("op"), args.pop("dim"), args.pop("rows"), **args)


def test_lanes_are_checked():
    with pytest.raises(ValueError, match="lanes"):
        P.check_lanes(6)          # what VectorEngine(6) raises
