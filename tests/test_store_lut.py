"""A table fused into the GEMM store (engine store_lut, docs/vector.md "Fusing into the GEMM store stage"):
a linear layer's int8 results go through a 256-entry table after the requantiser, bit for bit
golden_model.intvec.linear_lut (= requantise, then intvec.lut), on the sim model's fast and checked modes,
in split runs, and refused where it cannot run; the StoreTable stage in the Amaranth simulator. The RTL runs
are in tests/test_overlay.py (its rtl tests' lut cases), the whole GEMM engine with the table in
tests/test_gemm_engine.py."""
import numpy as np
import pytest

from golden_model.intops import gemm
from golden_model.intvec import LutParams, linear_lut, lut
from hw import isa
from hw.config import preset
from sw.compile import linear
from sw.compile.linear import CompileError
from sw.runtime.checks import DescriptorError, check_descriptors
from sw.runtime.driver import Driver
from tests.test_overlay import layer
from tests.test_program_runs import check_runs, run_each_after_reset

SIM = preset("sim")


def random_table(rng) -> LutParams:
    t = rng.integers(-128, 128, 256).astype(np.int8)
    t[[0, 255]] = (127, -128)                      # x = -128 -> 127 and x = 127 -> -128: the widest swing
    return LutParams(t)


@pytest.mark.parametrize("name,m,k,n,relu", [("sim", 1, 1, 8, False), ("sim", 13, 33, 17, True),
                                             ("sim", 4, 2100, 8, False), ("bench16", 17, 40, 33, False)])
def test_fused_table_fast_and_checked_equal_golden(name, m, k, n, relu):
    cfg = preset(name)
    rng = np.random.default_rng(m + k + n)
    a, b, bias, mult, shift = layer(rng, m, k, n, extremes=True)
    table = random_table(rng)
    want = linear_lut(a, b, bias, mult, shift, table, relu=relu)
    assert np.array_equal(want, lut(gemm(a, b, bias, mult, shift, relu=relu), table))
    got = []
    for mode in ("fast", "checked"):
        drv = Driver(cfg, "sim", sim_mode=mode)
        got.append((drv.linear(a, b, bias, mult, shift, relu=relu, lut=table), drv.last_run.cycles))
        assert drv.device.model.fast_runs == (mode == "fast")
    assert np.array_equal(got[0][0], want) and np.array_equal(got[1][0], want) and got[0][1] == got[1][1]


def test_fused_table_in_split_runs(monkeypatch):
    """Each run loads the table again (runs are self-contained): every run on its own after a soft reset."""
    monkeypatch.setattr(linear, "WAIT_LIMIT", 20)
    rng = np.random.default_rng(5)
    a, b, bias, mult, shift = layer(rng, 70, 40, 50)
    table = LutParams.gelu(0.02, 0.01)
    prog = Driver(SIM, "sim").compile(a, b, bias, mult, shift, lut=table)
    check_runs(prog, 20)
    loads = [i for i, d in enumerate(prog.descriptors) if d["opcode"] == isa.OPCODES["LOAD"]
             and d["target"] == isa.TARGETS["LUT"]]
    assert [next(f for f, n in prog.runs if f <= i < f + n) for i in loads] == [f for f, _ in prog.runs]
    assert np.array_equal(prog.output(run_each_after_reset(SIM, prog)), linear_lut(a, b, bias, mult, shift, table))


def test_fused_table_costs_one_store_cycle_and_no_ddr_pass():
    """The table stage adds a cycle of latency per STORE and none per row, and DDR moves only the table (and
    its LOAD descriptor) more; the unfused GELU on the vector engine reads and writes the whole output again."""
    from sw.compile.graph import program_cost
    from sw.compile.vector import compile_vector
    rng = np.random.default_rng(2)
    a, b, bias, mult, shift = layer(rng, 64, 96, 64)
    gelu = LutParams.gelu(0.02, 0.01)
    drv = Driver(SIM, "sim")
    plain, fused = (drv.compile(a, b, bias, mult, shift, lut=t) for t in (None, gelu))
    (plain_cycles, plain_bytes), (fused_cycles, fused_bytes) = program_cost(plain), program_cost(fused)
    stores = sum(d["opcode"] == isa.OPCODES["STORE"] for d in plain.descriptors)
    assert 0 <= fused_cycles - plain_cycles <= stores + 40     # + the table's LOAD (32 beats, mostly hidden)
    assert fused_bytes - plain_bytes == isa.LUT_BYTES + isa.DESCRIPTOR_BYTES
    vec_cycles, vec_bytes = program_cost(compile_vector(SIM, "lut", np.zeros((64, 64), np.int8), gelu))
    assert vec_bytes >= 2 * 64 * 64 and fused_cycles < plain_cycles + vec_cycles


def test_fused_table_refused_where_it_cannot_run():
    rng = np.random.default_rng(3)
    a, b, bias, mult, shift = layer(rng, 4, 8, 8)
    table = LutParams.gelu(0.02, 0.01)
    board = preset("kv260")
    assert "store_lut" not in board.engines
    with pytest.raises(CompileError, match="no store_lut engine"):
        linear.compile_linear(board, a, b, bias, mult, shift, lut=table)
    with pytest.raises(CompileError, match="int32"):
        linear.compile_linear(SIM, a, b, bias, lut=table, out_int32=True)
    with pytest.raises(CompileError, match="LutParams"):
        linear.compile_linear(SIM, a, b, bias, mult, shift, lut=np.zeros(255, np.int8))
    store = dict(opcode=isa.OPCODES["STORE"], count=1, dram_addr=0, stride=SIM.beat_bytes, lut=1)
    with pytest.raises(DescriptorError, match="int8 only"):
        check_descriptors(SIM, [dict(store, out_int32=1)], {"out": (0, 4096)})
    with pytest.raises(DescriptorError, match="no store_lut engine"):
        check_descriptors(board, [dict(store, stride=board.beat_bytes)], {"out": (0, 4096)})
    with pytest.raises(DescriptorError, match="LOAD target LUT"):
        check_descriptors(board, [dict(opcode=isa.OPCODES["LOAD"], target=isa.TARGETS["LUT"], count=1)],
                          {"lut": (0, 4096)})


def stream_through(top, dut, commands, rng, set_command, set_chunk) -> list[np.ndarray]:
    """A GEMM store stage `dut` (streams i and o of L lanes) inside `top` in the Amaranth simulator: each
    (command, chunks) of `commands` set (set_command; steady while its chunks pass, as GemmStore takes one
    STORE at a time), its chunks sent (set_chunk) with random valid and ready stalls (30 %). Returns per
    command the int8 chunks that came out, in order."""
    from amaranth.sim import Simulator
    L = len(dut.o.payload)
    results = []

    async def bench(ctx):
        for command, chunks in commands:
            set_command(ctx, command)
            sent, outs = 0, []
            while len(outs) < len(chunks):
                valid, ready = sent < len(chunks) and rng.random() > 0.3, rng.random() > 0.3
                ctx.set(dut.i.valid, valid)
                ctx.set(dut.o.ready, ready)
                if valid:
                    set_chunk(ctx, chunks[sent])
                took = valid and ctx.get(dut.i.ready)
                if ready and ctx.get(dut.o.valid):
                    outs.append([ctx.get(dut.o.payload[lane]) for lane in range(L)])
                await ctx.tick()
                sent += took
            ctx.set(dut.i.valid, 0)
            results.append(np.array(outs, np.int8))

    sim = Simulator(top)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return results


def test_store_table_stage_amaranth_with_stalls():
    """StoreTable alone (Amaranth simulator): chunks of L lanes' int8 (the extremes among them) through a random
    table with the enable off and on, random valid and ready stalls: every chunk out once, in order, exact."""
    from amaranth import Module, unsigned
    from amaranth.lib.memory import Memory

    from hw.gemm.engine import StoreTable

    cfg, rng = SIM, np.random.default_rng(9)
    L, DB = cfg.requant_lanes, cfg.beat_bytes
    table = random_table(rng)
    words = [int.from_bytes(table.table[e * DB:(e + 1) * DB].tobytes(), "little") for e in range(256 // DB)]
    m = Module()
    m.submodules.mem = mem = Memory(shape=unsigned(8 * DB), depth=256 // DB, init=words)
    m.submodules.dut = dut = StoreTable(cfg, [mem.read_port() for _ in range(L)])
    # Commands (enable, chunks): the enable is a STORE's, steady while its chunks pass (GemmStore takes one at a time).
    commands = [(enable, rng.integers(-128, 128, (int(rng.integers(1, 30)), L)).astype(np.int8))
                for enable in (True, False, True, True, False)]
    commands[0][1][0] = np.resize([-128, 127], L)
    results = stream_through(m, dut, commands, rng, lambda ctx, enable: ctx.set(dut.enable, enable),
                             lambda ctx, chunk: [ctx.set(dut.i.payload[lane], int(chunk[lane])) for lane in range(L)])
    for (enable, chunks), out in zip(commands, results, strict=True):
        assert np.array_equal(out, lut(chunks, table) if enable else chunks)


def test_placement_fuses_gelu_into_fc1_store():
    """sw.compile.graph.place_all: a GELU rides in its fc1's store on an overlay with store_lut (no cycles, no
    DDR bytes of its own) when only that linear writes its input and only it reads it; a GELU after a
    LayerNorm, after a linear whose output another node also reads, or on an overlay without the table,
    keeps its own pass. (Layers as sw.perf.layers.graph_layers makes them from the int8 graph.)"""
    from sw.compile import graph as G
    from sw.perf.layers import Layer

    t, d = (1, 256, 64), (1, 256, 256)

    def node(name, op, ins, out, shapes, out_shape, **kw):
        return Layer(name, op, "image_encoder", shapes, out_shape, inputs=ins, output=out, **kw)
    layers = [node("fc1", "linear", ("x",), "h", (t,), d, w_shape=(256, 64)),
              node("act", "gelu", ("h",), "g", (d,), d),
              node("fc2", "linear", ("g",), "y", (d,), t, w_shape=(64, 256)),
              node("norm", "layernorm", ("y",), "n", (t,), t),
              node("act_after_norm", "gelu", ("n",), "m", (t,), t),
              node("proj", "linear", ("m",), "p", (t,), d, w_shape=(256, 64)),
              node("act_shared", "gelu", ("p",), "q", (d,), d),
              node("res", "add", ("p", "q"), "r", (d, d), d)]
    cfg = preset("bench16")
    plain_cfg = cfg.replace(engines=tuple(e for e in cfg.engines if e != "store_lut"))
    fused, plain = ({p.layer.name: p for p in G.place_all(c, layers, lanes=G.vector_lanes(c))}
                    for c in (cfg, plain_cfg))
    act = fused["act"]
    assert act.where == "gemm" and act.cycles == 0 and act.ddr_bytes == 0 and "fc1" in act.reason
    assert plain["act"].where == "vector" and plain["act"].ddr_bytes == 2 * 256 * 256
    assert all(fused[n].where == plain[n].where == "vector" for n in ("act_after_norm", "act_shared"))
    assert all(fused[n].where == plain[n].where for n in fused if n != "act")
