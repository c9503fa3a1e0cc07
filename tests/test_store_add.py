"""The residual add fused into the GEMM store (engine store_add, docs/vector.md "Fusing into the GEMM store
stage"): a linear layer's int8 results plus an int8 residual, requantised by the add's parameters after the
requantiser (and the table), bit for bit golden_model.intvec.linear_add (= requantise, then intvec.add), on
the sim model's fast and checked modes, in split runs, and refused where it cannot run; the StoreAdd stage
in the Amaranth simulator; the placement rule; `sim gemm --add`. The RTL runs are in tests/test_overlay.py
(its rtl tests' add cases), the whole GEMM engine with the add in tests/test_gemm_engine.py, the graph on
bench16 in tests/test_graph_exec.py."""
import numpy as np
import pytest

from golden_model.intops import gemm
from golden_model.intvec import AddParams, LutParams, add, linear_add
from hw import isa
from hw.config import preset
from sw.cli import main
from sw.compile import linear
from sw.compile.linear import CompileError
from sw.runtime.checks import DescriptorError, check_descriptors
from sw.runtime.driver import Driver
from tests.test_overlay import layer
from tests.test_program_runs import check_runs, run_each_after_reset
from tests.test_store_lut import stream_through

SIM = preset("sim")
EXTREMES = np.array([-128, 127, -1, 0, 1], np.int8)


@pytest.mark.parametrize("name,m,k,n,relu,p,table", [
    ("sim", 1, 1, 8, False, AddParams(1, 1, 0), False),                 # plain sum, saturating both ways
    ("sim", 13, 33, 17, True, AddParams(65535, 65535, 31), True),        # largest multipliers and shift, table
    ("sim", 4, 2100, 8, False, AddParams.make(0.05, 0.08, 0.1), False),  # K split into accumulated chunks
    ("bench16", 17, 40, 33, False, AddParams.make(0.02, 0.3, 0.05), False)])
def test_fused_add_fast_and_checked_equal_golden(name, m, k, n, relu, p, table):
    cfg = preset(name)
    rng = np.random.default_rng(m + k + n)
    a, b, bias, mult, shift = layer(rng, m, k, n, extremes=True)
    x = rng.choice(EXTREMES, (m, n))
    lut = LutParams(rng.integers(-128, 128, 256).astype(np.int8)) if table else None
    want = linear_add(a, b, bias, mult, shift, x, p, relu=relu, table=lut)
    if not table:
        assert np.array_equal(want, add(gemm(a, b, bias, mult, shift, relu=relu), x, p))
    got = []
    for mode in ("fast", "checked"):
        drv = Driver(cfg, "sim", sim_mode=mode)
        got.append((drv.linear(a, b, bias, mult, shift, relu=relu, lut=lut, residual=x, add=p), drv.last_run.cycles))
        assert drv.device.model.fast_runs == (mode == "fast")
    assert np.array_equal(got[0][0], want) and np.array_equal(got[1][0], want) and got[0][1] == got[1][1]


def test_fused_add_in_split_runs(monkeypatch):
    """Each run loads its tiles' residual rows itself (runs are self-contained): every run after a soft reset."""
    monkeypatch.setattr(linear, "WAIT_LIMIT", 20)
    rng = np.random.default_rng(5)
    a, b, bias, mult, shift = layer(rng, 70, 40, 50)
    x, p = rng.integers(-128, 128, (70, 50)).astype(np.int8), AddParams.make(0.05, 0.08, 0.1)
    prog = Driver(SIM, "sim").compile(a, b, bias, mult, shift, residual=x, add=p)
    check_runs(prog, 20)
    stores = sum(d["opcode"] == isa.OPCODES["STORE"] for d in prog.descriptors)
    res_loads = sum(d["opcode"] == isa.OPCODES["LOAD"] and d["target"] == isa.TARGETS["RES"] for d in prog.descriptors)
    assert res_loads == stores and all(d["add"] for d in prog.descriptors if d["opcode"] == isa.OPCODES["STORE"])
    assert np.array_equal(prog.output(run_each_after_reset(SIM, prog)), linear_add(a, b, bias, mult, shift, x, p))


def test_fused_add_saves_the_outputs_ddr_pass():
    """DDR moves the residual (and its LOAD descriptors) more than the plain linear; the unfused add on the
    vector engine reads the linear's output and the residual and writes the sum: 2 bytes per element saved."""
    from sw.compile.graph import program_cost
    from sw.compile.vector import compile_vector
    rng = np.random.default_rng(2)
    M, N = 64, 64
    a, b, bias, mult, shift = layer(rng, M, 96, N)
    x, p = rng.integers(-128, 128, (M, N)).astype(np.int8), AddParams.make(0.05, 0.08, 0.1)
    drv = Driver(SIM, "sim")
    plain, fused = drv.compile(a, b, bias, mult, shift), drv.compile(a, b, bias, mult, shift, residual=x, add=p)
    (plain_cycles, plain_bytes), (fused_cycles, fused_bytes) = program_cost(plain), program_cost(fused)
    stores = sum(d["opcode"] == isa.OPCODES["STORE"] for d in plain.descriptors)
    assert fused_bytes - plain_bytes == M * N + stores * isa.DESCRIPTOR_BYTES
    vec_cycles, vec_bytes = program_cost(compile_vector(SIM, "add", np.zeros((M, N), np.int8), p,
                                                        b=np.zeros((M, N), np.int8)))
    assert vec_bytes >= 3 * M * N and plain_bytes + vec_bytes - fused_bytes >= 2 * M * N - stores * isa.DESCRIPTOR_BYTES
    assert plain_cycles <= fused_cycles < plain_cycles + vec_cycles


def test_fused_add_refused_where_it_cannot_run():
    rng = np.random.default_rng(3)
    a, b, bias, mult, shift = layer(rng, 4, 8, 8)
    x, p = np.zeros((4, 8), np.int8), AddParams(1, 1, 0)
    board = preset("kv260")
    assert "store_add" not in board.engines
    with pytest.raises(CompileError, match="no store_add engine"):
        linear.compile_linear(board, a, b, bias, mult, shift, residual=x, add=p)
    with pytest.raises(CompileError, match="int32"):
        linear.compile_linear(SIM, a, b, bias, residual=x, add=p, out_int32=True)
    with pytest.raises(CompileError, match="both"):
        linear.compile_linear(SIM, a, b, bias, mult, shift, residual=x)
    with pytest.raises(CompileError, match="shape"):
        linear.compile_linear(SIM, a, b, bias, mult, shift, residual=x[:, :4], add=p)
    with pytest.raises(CompileError, match="AddParams"):
        linear.compile_linear(SIM, a, b, bias, mult, shift, residual=x, add=(1, 1, 0))
    store = dict(opcode=isa.OPCODES["STORE"], count=1, dram_addr=0, stride=SIM.beat_bytes, add=1)
    with pytest.raises(DescriptorError, match="per channel only"):
        check_descriptors(SIM, [dict(store, param_rows=1)], {"out": (0, 4096)})
    with pytest.raises(DescriptorError, match="no store_add engine"):
        check_descriptors(board, [dict(store, stride=board.beat_bytes)], {"out": (0, 4096)})
    with pytest.raises(DescriptorError, match="LOAD target RES"):
        check_descriptors(board, [dict(opcode=isa.OPCODES["LOAD"], target=isa.TARGETS["RES"], count=1)],
                          {"res": (0, 4096)})


def test_store_add_stage_amaranth_with_stalls():
    """StoreAdd alone (Amaranth simulator): chunks of L lanes' (y, x) with int8 extremes through adds of
    extreme parameters (shift 0 and 31, the largest multipliers), the enable off and on, random valid and
    ready stalls: every chunk out once, in order, exact (= intvec.add, y as its a)."""
    from hw.gemm.engine import StoreAdd

    rng, L = np.random.default_rng(9), SIM.requant_lanes
    dut = StoreAdd(L)
    commands = [((enable, p), rng.choice(EXTREMES, (int(rng.integers(1, 20)), 2, L)))
                for enable, p in ((True, AddParams(65535, 65535, 31)), (False, AddParams(3, 5, 2)),
                                  (True, AddParams(1, 1, 0)), (True, AddParams.make(0.05, 0.08, 0.1)))]
    commands.append(((True, AddParams(40000, 123, 9)), rng.integers(-128, 128, (25, 2, L)).astype(np.int8)))
    # Every shift, random multipliers: the rounding half and the saturation edges move with it.
    commands += [((True, AddParams(int(rng.integers(1, 65536)), int(rng.integers(0, 65536)), s)),
                  rng.integers(-128, 128, (6, 2, L)).astype(np.int8)) for s in range(1, 31)]

    def set_command(ctx, command):
        enable, p = command
        ctx.set(dut.enable, enable)
        ctx.set(dut.params, {"a": p.a_mult, "b": p.b_mult, "s": p.shift})

    def set_chunk(ctx, chunk):
        for lane in range(L):
            ctx.set(dut.i.payload[lane].y, int(chunk[0][lane]))
            ctx.set(dut.i.payload[lane].x, int(chunk[1][lane]))
    results = stream_through(dut, dut, commands, rng, set_command, set_chunk)
    for ((enable, p), chunks), out in zip(commands, results, strict=True):
        assert np.array_equal(out, add(chunks[:, 0], chunks[:, 1], p) if enable else chunks[:, 0])


def test_placement_fuses_an_add_into_its_linears_store():
    """sw.compile.graph.place_all: an add rides in the store of a linear on the GEMM engine whose output only it
    reads, the other input (same shape) written before the linear; the linear's placement moves the residual's
    bytes. Not: a residual written after the linear, a broadcast operand, a linear output read twice, an
    overlay without store_add. (Layers as sw.perf.layers.graph_layers makes them from the int8 graph.)"""
    from sw.compile import graph as G
    from sw.perf.layers import Layer

    t, h = (1, 256, 64), (1, 256, 256)

    def node(name, op, ins, out, shapes, out_shape, **kw):
        return Layer(name, op, "image_encoder", shapes, out_shape, inputs=ins, output=out, **kw)
    layers = [node("fc1", "linear", ("x",), "h", (t,), h, w_shape=(256, 64)),
              node("fc2", "linear", ("h",), "y", (h,), t, w_shape=(64, 256)),
              node("res", "add", ("x", "y"), "r", (t, t), t),                     # fused: x is a graph input
              node("proj", "linear", ("r",), "p", (t,), t, w_shape=(64, 64)),
              node("late", "linear", ("r",), "q", (t,), t, w_shape=(64, 64)),
              node("res_late", "add", ("p", "q"), "s", (t, t), t),                # q after p, p after q: fused
              node("pos", "add", ("s", "pe"), "u", (t, (1, 64)), t),              # pe broadcasts: not fused
              node("proj2", "linear", ("u",), "v", (t,), t, w_shape=(64, 64)),
              node("res_shared", "add", ("u", "v"), "w", (t, t), t),
              node("norm", "layernorm", ("v",), "n", (t,), t)]                     # v read twice: not fused
    cfg = preset("bench16")
    plain_cfg = cfg.replace(engines=tuple(e for e in cfg.engines if e != "store_add"))
    fused, plain = ({p.layer.name: p for p in G.place_all(c, layers, lanes=G.vector_lanes(c))}
                    for c in (cfg, plain_cfg))
    assert G.fused_adds(cfg, list(fused.values())) == {"res": ("fc2", 1), "res_late": ("late", 1)}
    for name, src in (("res", "fc2"), ("res_late", "late")):
        assert fused[name].where == "gemm" and fused[name].cycles == 0 and fused[name].ddr_bytes == 0
        assert src in fused[name].reason and plain[name].where == "vector"
        assert fused[src].ddr_bytes == plain[src].ddr_bytes + 256 * 64
    assert all(fused[n].where == plain[n].where == "vector" for n in ("pos", "res_shared"))
    assert G.fused_adds(plain_cfg, list(plain.values())) == {}


def test_cli_sim_gemm_add(capsys):
    assert main(["sim", "gemm", "--m", "9", "--k", "20", "--n", "11", "--add", "--lut", "gelu"]) == 0
    assert "+ gelu + residual add (fused in the store)" in capsys.readouterr().out
    for bad in (["--preset", "kv260"], ["--int32"]):
        with pytest.raises(SystemExit) as e:
            main(["sim", "gemm", "--m", "1", "--k", "1", "--n", "1", "--add"] + bad)
        assert e.value.code == 2
