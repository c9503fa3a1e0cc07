"""The transposing LOAD (hw.isa `transpose`, engine load_t): token rows into A / B / V entries.

The sim model's interpreter against the golden layout (golden_model.intops.token_tiles) on random rows,
tail tiles (fewer rows than an entry's bytes), counts off the AXI beat, ring wrap in the scratchpad; the
host checks' refusals; the RTL unit alone (hw.gemm.transpose_load) on the Amaranth simulator under AXI
stalls. The linear that reads its A in place: tests/test_graph_exec.py and below; the overlay's RTL:
tests/test_overlay.py."""
import numpy as np
import pytest

from golden_model.intops import token_tiles
from hw import isa
from hw.config import preset
from sw.backends.sim import SimBackend
from sw.backends.sim_model import SimOverlay
from sw.runtime.checks import DescriptorError, check_descriptors
from tests.conftest import mid_overlay

BASE = 0x1000
ROWS_AT = 0x4000


def without_load_t(name):
    cfg = preset(name)
    return cfg.replace(engines=tuple(e for e in cfg.engines if e != "load_t"))


def run_checked(cfg, desc_addr: int, image: np.ndarray, count: int) -> SimOverlay:
    """`count` descriptors at `desc_addr` of `image` (placed there) through the sim backend's interpreter
    (SimBackend.run: an error or a hang raises); the model after the run."""
    be = SimBackend(cfg, ddr_bytes=1 << 20, sim_mode="checked")
    be.model.ddr[desc_addr:desc_addr + image.size] = image
    be.run(desc_addr, count)
    assert be.last_regs["STATUS"] & isa.STATUS_DONE and not be.last_regs["ERROR"], be.last_regs
    return be.model


def run_descriptors(cfg, descs, ddr_rows: np.ndarray) -> SimOverlay:
    """`descs` at BASE, `ddr_rows` at ROWS_AT."""
    image = np.zeros(ROWS_AT - BASE + ddr_rows.size, np.uint8)
    raw = np.frombuffer(b"".join(isa.pack_descriptor(**d) for d in descs), np.uint8)
    image[:raw.size] = raw
    image[ROWS_AT - BASE:] = ddr_rows.reshape(-1)
    return run_checked(cfg, BASE, image, len(descs))


def transposed(target, rows, count, pitch, sp, offset=0):
    return dict(opcode=isa.OPCODES["LOAD"], target=isa.TARGETS[target], transpose=1, t_rows_last=rows - 1,
                count=count, stride=pitch, dram_addr=ROWS_AT + offset, sp_addr=sp)


@pytest.mark.parametrize("name,target,rows,count", [
    ("sim", "A", 4, 24), ("sim", "A", 3, 13), ("sim", "A", 1, 1), ("sim", "B", 8, 17), ("sim", "B", 5, 8),
    ("bench16", "A", 16, 40), ("bench16", "A", 7, 3), ("bench16", "B", 11, 33), ("kv260", "B", 32, 20),
    ("kv260", "A", 16, 15)])
def test_transposed_load_equals_token_tiles(name, target, rows, count):
    """Entry e byte r = row r byte e; bytes past the rows read zero (not what the scratchpad held)."""
    cfg = preset(name)
    rng = np.random.default_rng(rows * 1000 + count)
    DB = cfg.beat_bytes
    pitch = -(-count // DB) * DB + DB                           # one beat of other bytes after each row
    x = rng.integers(-128, 128, (rows, pitch), dtype=np.int8)
    depth = isa.scratchpad_depth(cfg, target)
    sp = depth - count // 2 - 1 if target == "A" else 3           # A: across the end of the scratchpad's ring
    dirty = dict(opcode=isa.OPCODES["LOAD"], target=isa.TARGETS[target], count=count, dram_addr=ROWS_AT, sp_addr=sp)
    sim = run_descriptors(cfg, [dirty, transposed(target, rows, count, pitch, sp)], x.view(np.uint8))
    eb = isa.entry_bytes(cfg, target)
    want = token_tiles(x[:, :count], eb)[0]                      # (count, eb)
    mem = sim.a if target == "A" else sim.b
    got = mem[(sp + np.arange(count)) % len(mem)]
    assert np.array_equal(got, want)


def test_transposed_load_v_into_attention():
    """Target V (attention's values): the same layout, C tokens of one channel per entry."""
    cfg = preset("sim")
    C = cfg.cols
    x = np.random.default_rng(1).integers(-128, 128, (C, 16), dtype=np.int8)
    sim = run_descriptors(cfg, [transposed("V", C, 16, 16, 0)], x.view(np.uint8))
    ref = SimOverlay(cfg, 1 << 20, mode="checked")
    ref.attn.load_v(0, 16, token_tiles(x, C)[0].reshape(-1).view(np.uint8))
    assert all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(vars(sim.attn).values(), vars(ref.attn).values()) if isinstance(a, np.ndarray))


def test_cycles_of_a_transposed_load():
    """Per group of a beat of entries: max(rows, beat) cycles, the first group's rows and the last group's
    entries not overlapped (sw/backends/cycles.py). The RTL unit's rate: test_transpose_unit_alone_equals_token_tiles;
    the model against the overlay's RTL within 5 %: tests/test_overlay.py test_rtl_errors_hang_reset_and_cycle_model."""
    from sw.backends import cycles as CY
    cfg = preset("bench16")
    d = transposed("A", 16, 40, 64, 0)
    f = CY.decode_descriptors(np.frombuffer(isa.pack_descriptor(**d), np.uint8))
    dur = CY.fixed_costs(cfg, f, CY.classify(cfg, f))["dur"]
    assert dur[0] == CY.READ_LATENCY + 16 + 2 * 16 + 8 + CY.LOAD_PIPELINE


@pytest.mark.parametrize("change,cfg_name,why", [
    ({}, "sim-", "no GEMM transposing load"),
    (dict(t_rows_last=4), "sim+", "5 rows, an entry holds 4"),
    (dict(stride=12), "sim+", "not a whole number"),
    (dict(target=isa.TARGETS["PARAM"]), "sim+", "only A, B, V"),
    (dict(count=64), "sim+", "source rows .* runs outside the buffer 'rows'")])
def test_checks_refuse_bad_transposed_loads(change, cfg_name, why):
    cfg = preset("sim") if cfg_name == "sim+" else without_load_t("sim")
    d = dict(transposed("A", 4, 16, 16, 0), **change)
    check_descriptors(preset("sim"), [isa.unpack_descriptor(isa.pack_descriptor(**transposed("A", 4, 16, 16, 0)))],
                      {"rows": (ROWS_AT, 4 * 16)})                 # the unchanged one passes
    with pytest.raises(DescriptorError, match=why):
        check_descriptors(cfg, [isa.unpack_descriptor(isa.pack_descriptor(**d))], {"rows": (ROWS_AT, 4 * 16)})


def test_isa_field_shares_load_bits():
    raw = isa.pack_descriptor(**transposed("B", 5, 9, 32, 2))
    d = isa.unpack_descriptor(raw)
    assert (d["transpose"], d["t_rows_last"], d["count"], d["stride"]) == (1, 4, 9, 32)
    with pytest.raises(ValueError, match="share the bits"):
        isa.pack_descriptor(**transposed("B", 5, 9, 32, 2), k_last=3)


@pytest.mark.parametrize("name,m,k,n", [
    ("sim", 37, 45, 29),          # a tail M-tile (37 = 9 x 4 + 1), K off the beat and off C
    ("sim", 9, 3000, 17),         # K in chunks (accumulated): chunk starts on beats of the token rows
    ("bench16", 23, 40, 33)])
def test_linear_reads_token_rows(name, m, k, n):
    """compile_linear(a_rows=True): A as token rows, transposing LOADs; checked == fast == golden, and the
    same result as the tiled A (the cycles of both printed by -s)."""
    from golden_model.intops import gemm
    from sw.compile.linear import compile_linear
    from tests.test_sim_fast import BASE as FAST_BASE, quant, rand8, run_both
    from sw.runtime.layout import TokenRowLayout
    cfg = preset(name)
    rng = np.random.default_rng(m + k + n)
    a, b = rand8(rng, (m, k)), rand8(rng, (k, n))
    bias, mult, shift = quant(rng, n)
    prog = compile_linear(cfg, a, b, bias, mult, shift, a_rows=True, base_addr=FAST_BASE)
    assert prog.regions["A"][1] == TokenRowLayout(m, k, cfg.cols).size
    image, cycles = run_both(cfg, prog)
    assert np.array_equal(prog.output(image), gemm(a, b, bias, mult, shift))
    tiled = compile_linear(cfg, a, b, bias, mult, shift, base_addr=FAST_BASE)
    print(f"{name} {m}x{k}x{n}: token rows {cycles} cycles, tiles {run_both(cfg, tiled)[1]}")


def test_linear_token_rows_need_load_t():
    from sw.compile.linear import CompileError, compile_linear
    with pytest.raises(CompileError, match="no load_t engine"):
        compile_linear(without_load_t("sim"), np.zeros((4, 8), np.int8), np.zeros((8, 8), np.int8), None,
                       out_int32=True, a_rows=True)


def test_linear_reads_its_activation_in_place(scaled):
    """bench16's image encoder chained in DDR with and without load_t: the same outputs; with it a linear fed
    by an engine node (token rows) reads its A in place: fewer host <-> DDR bytes, and linears that move
    nothing but their program (A in place, output left in DDR). (Node by node against intinterp with load_t:
    tests/test_graph_exec.py, whose bench16 and kv260 carry it.)"""
    from golden_model.quant.intinterp import IntRunner
    from golden_model.quant.predictor import GraphPredictor
    from sw.runtime.graph_exec import GraphExecutor
    from tests.conftest import scaled_quantised
    qm = scaled_quantised(scaled, preset("bench16"))
    feeds = {"image": GraphPredictor(qm.graph, IntRunner(qm)).image_input(scaled[2])}
    moved, outs = {}, {}
    for has, cfg in ((False, without_load_t("bench16")), (True, preset("bench16"))):
        ex = GraphExecutor(qm, cfg, "sim")
        env = ex.run(feeds, stages=("image_encoder",))
        outs[has] = [env[t] for t in qm.graph.meta["image_outputs"]]
        moved[has] = sum(r.ddr_bytes for r in ex.records.values() if r.op == "linear")
    for a, b in zip(outs[False], outs[True]):
        np.testing.assert_array_equal(a, b)
    assert moved[True] < 0.9 * moved[False], moved
    in_place = [r for r in ex.records.values() if r.op == "linear" and r.ddr_bytes == r.program_bytes]
    assert in_place, "no linear read its A in place"


def b_transposed_job(cfg, rng, rows: int, count: int, base: int = 0x10000) -> tuple[dict, np.ndarray]:
    """A hand-made program reading B through a transposing LOAD: LOAD A (random, count entries), LOAD B
    transposed (`rows` token rows of count bytes, pitch a beat past them), LOAD PARAM (zero bias), COMPUTE
    K = count, STORE int32 rows. Returns (run_images job, the expected R x C int32 result:
    A^T token_tiles(rows)); the result region is at job["out"]."""
    R, C, DB = cfg.rows, cfg.cols, cfg.beat_bytes
    pitch = -(-count // DB) * DB + DB
    a = rng.integers(-128, 128, (count, R), dtype=np.int8)
    x = rng.integers(-128, 128, (rows, pitch), dtype=np.int8)
    at, xt, pt, out = 0x1000, 0x2000, 0x2000 + rows * pitch + 0x1000, 0x8000
    load = lambda target, **f: dict(opcode=isa.OPCODES["LOAD"], target=isa.TARGETS[target], **f)  # noqa: E731
    descs = [load("A", count=count, dram_addr=base + at, sp_addr=0),
             load("B", count=count, dram_addr=base + xt, sp_addr=1, transpose=1, t_rows_last=rows - 1, stride=pitch),
             load("PARAM", count=1, dram_addr=base + pt, sp_addr=0),
             dict(opcode=isa.OPCODES["COMPUTE"], wait_load=3, sp_addr=0, b_base=1, k_last=count - 1, acc_base=0),
             dict(opcode=isa.OPCODES["STORE"], wait_compute=1, count=R, sp_addr=0, out_int32=1, stride=4 * C,
                  dram_addr=base + out)]
    image = np.zeros(out + 4 * R * C, np.uint8)
    raw = np.frombuffer(b"".join(isa.pack_descriptor(**d) for d in descs), np.uint8)
    image[:raw.size] = raw
    image[at:at + a.size] = a.reshape(-1).view(np.uint8)
    image[xt:xt + x.size] = x.reshape(-1).view(np.uint8)
    b = token_tiles(x[:, :count], C)[0].astype(np.int64)                 # (count, C)
    want = a.astype(np.int64).T @ b
    return dict(base=base, image=image, desc_count=len(descs), timeout=200_000, out=out), want.astype(np.int32)


def job_result(cfg, job, image) -> np.ndarray:
    return image[job["out"]:job["out"] + 4 * cfg.rows * cfg.cols].view("<i4").reshape(cfg.rows, cfg.cols)


@pytest.mark.parametrize("rows,count", [(8, 8), (3, 21), (1, 1)])
def test_b_transposed_job_on_sim(rows, count):
    """The hand-made B program (the rtl benches run it too: tests/test_overlay.py) on the sim model."""
    cfg = preset("sim")
    job, want = b_transposed_job(cfg, np.random.default_rng(rows * count), rows, count)
    sim = run_checked(cfg, job["base"], job["image"], job["desc_count"])
    assert np.array_equal(job_result(cfg, job, sim.ddr[job["base"]:]), want)


def run_unit(cfg, rows_seq: list, count: int, pitch: int, ddr: np.ndarray, stall: float, seed: int):
    """The TransposeLoader alone on the Amaranth simulator, a command of each number of rows in turn: AR
    accepted and R beats given with probability 1 - stall (a beat the cycle after its AR at the earliest).
    Returns each command's writes ({scratchpad addr: entry}) and cycles."""
    from amaranth.sim import Simulator
    from hw.gemm.transpose_load import TransposeLoader
    dut = TransposeLoader(cfg, max(cfg.rows, cfg.cols))
    DB, rng, out = cfg.beat_bytes, np.random.default_rng(seed), []

    async def one(ctx, rows):
        got = {}
        ctx.set(dut.cmd.payload, {"addr": 0, "pitch": pitch, "count": count, "rows_last": rows - 1, "sp": 5})
        ctx.set(dut.cmd.valid, 1)
        await ctx.tick()
        ctx.set(dut.cmd.valid, 0)
        pending = []
        for cycle in range(20 * (rows + DB) * (count // DB + 1)):
            ar_ready, r_valid = rng.random() >= stall, bool(pending) and rng.random() >= stall
            ctx.set(dut.ar.ready, ar_ready)
            ctx.set(dut.r.valid, r_valid)
            if r_valid:
                ctx.set(dut.r.payload, int.from_bytes(ddr[pending[0]:pending[0] + DB].tobytes(), "little"))
            ar = ctx.get(dut.ar.payload.addr) if ctx.get(dut.ar.valid) and ar_ready else None
            if ctx.get(dut.wr.valid):
                got[ctx.get(dut.wr.payload.addr)] = ctx.get(dut.wr.payload.data)
            done = ctx.get(dut.done)
            await ctx.tick()
            pending = pending[r_valid:] + ([ar] if ar is not None else [])
            if done:
                return got, cycle + 1
        raise AssertionError("no done")

    async def bench(ctx):
        for rows in rows_seq:
            out.append(await one(ctx, rows))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return out


@pytest.mark.parametrize("name,rows,count", [
    ("kv260", 32, 20), ("kv260", 7, 33),          # 32 rows of 16-byte beats (two blocks of memories)
    ("sim", 8, 17),                               # as many rows as a beat has bytes
    ("mid", 13, 9)])                              # 16 rows of 8-byte beats
def test_transpose_unit_alone_equals_token_tiles(name, rows, count):
    """The unit's writes (entry e at sp + e: row r byte e, rows past rows_last zero although a command of every
    row ran before) under random AR / R stalls, and without stalls one group per max(rows, beat bytes)
    cycles (the rate sw.backends.cycles models)."""
    cfg = mid_overlay() if name == "mid" else preset(name)
    DB, NR = cfg.beat_bytes, max(cfg.rows, cfg.cols)
    pitch = -(-count // DB) * DB + DB
    ddr = np.random.default_rng(rows + count).integers(0, 256, NR * pitch, dtype=np.uint8)
    for stall, seed in ((0.4, 1), (0.0, 2)):
        results = run_unit(cfg, [NR, rows], count, pitch, ddr, stall, seed)
        for n, (got, cycles) in zip([NR, rows], results, strict=True):     # every row's command, then `rows`
            want = token_tiles(ddr.reshape(NR, pitch)[:n, :count], NR)[0]
            assert sorted(got) == list(range(5, 5 + count))
            entries = np.array([list(got[5 + e].to_bytes(NR, "little")) for e in range(count)], np.uint8)
            assert np.array_equal(entries, want), n
    groups = -(-count // DB)
    # No stalls: the first group's rows, max(rows, DB) a group after it, the last group's entries; 4 more
    # cycles (the command, the first beat's latency, the registered write, done).
    assert cycles <= rows + (groups - 1) * max(rows, DB) + (count - (groups - 1) * DB) + 4, cycles
