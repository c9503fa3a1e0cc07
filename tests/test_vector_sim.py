"""The vector engine on the sim backend (sw/compile/vector.py, sw/backends/sim_vector.py): every op
bit-exact against golden_model.intvec on random and adversarial data, the fast and checked modes equal
in bits and cycles, long calls split into commands, the descriptor checks, the CLI."""
import numpy as np
import pytest

from golden_model import intvec
from golden_model.memory_attention import axial_rope
from hw import isa
from hw.config import preset
from sw.backends import sim_vector
from sw.cli import main
from sw.compile import vector as CV
from sw.runtime.checks import DescriptorError
from sw.runtime.driver import Driver

DRIVERS = {}


def driver(name, mode):
    if (name, mode) not in DRIVERS:
        DRIVERS[name, mode] = Driver(preset(name), "sim", sim_mode=mode)
    return DRIVERS[name, mode]


def data(kind, shape, rng):
    if kind == "random":
        return rng.integers(-128, 128, shape, dtype=np.int8)
    if kind == "constant":                      # every row constant: variance 0
        return np.broadcast_to(rng.integers(-128, 128, shape[:-1] + (1,), dtype=np.int8), shape).copy()
    return rng.choice(np.array([-128, 127, -127, 0], np.int8), shape)     # int8 extremes


def cases(rows, dim, kind, rng):
    """(op, x, params, keyword arguments, golden) for every op on (rows, dim) data of `kind`."""
    x = data(kind, (rows, dim), rng)
    ln = intvec.LayerNormParams.make(rng.normal(1, 0.5, dim), rng.normal(0, 0.5, dim), 0.04, 0.02, 1e-6)
    lut = intvec.LutParams.gelu(0.05, 0.02)
    add = intvec.AddParams.make(0.08, 0.05, 0.03)          # saturates on extremes
    b = data(kind, (rows, dim), rng)
    out = [("layernorm", x, ln, {}, intvec.layernorm(x, ln)), ("lut", x, lut, {}, intvec.lut(x, lut)),
           ("add", x, add, {"b": b}, intvec.add(x, b, add)),
           ("add", x, add, {"b": b[0]}, intvec.add(x, b[0], add)),
           ("rescale", x, intvec.RescaleParams.make(0.05, 0.02), {},
            intvec.rescale(x, intvec.RescaleParams.make(0.05, 0.02)))]
    if dim % 2 == 0:
        ang = rng.uniform(-np.pi, np.pi, (rows if rows <= 64 else 64, dim // 2))     # 64: the table wraps
        rope = intvec.RopeParams.make(np.cos(ang), np.sin(ang), 0.05, 0.03)
        out.append(("rope", x, rope, {}, intvec.rope(x, rope)))
    img = data(kind, (5, 3, dim), rng)
    out += [("maxpool", img, None, {}, intvec.maxpool2x2(img)),
            ("upsample", img, None, {}, intvec.upsample_nearest2x(img))]
    return out


@pytest.mark.parametrize("name", ["sim", "bench16"])
@pytest.mark.parametrize("rows,dim,kind", [(9, 21, "random"), (6, 16, "constant"), (7, 13, "extremes"),
                                           (5, 1, "random"), (3, 1024, "extremes")])
def test_every_op_bit_exact_fast_and_checked_equal(name, rows, dim, kind):
    rng = np.random.default_rng(rows * 1000 + dim)
    for op, x, p, kw, want in cases(rows, dim, kind, rng):
        got = {}
        for mode in ("fast", "checked"):
            drv = driver(name, mode)
            before = drv.device.model.fast_runs
            got[mode] = (drv.vector(op, x, p, **kw), drv.last_run.cycles)
            assert drv.device.model.fast_runs == before + (mode == "fast")
            assert np.array_equal(got[mode][0], want), (op, mode)
        assert got["fast"][1] == got["checked"][1], op


def test_axial_rope_tables_on_chip():
    """SAM 2's axial tables (memory attention's 8 x 4 map, d 32), stored axially, over two frames
    (rope_k_repeat: the table wraps)."""
    rng = np.random.default_rng(1)
    p = intvec.RopeParams.make(*axial_rope(32, 8, 4), 0.05, 0.04)
    x = rng.integers(-128, 128, (64, 32), dtype=np.int8)
    for mode in ("fast", "checked"):
        assert np.array_equal(driver("sim", mode).vector("rope", x, p, end_x=8), intvec.rope(x, p))


def test_long_calls_split_into_commands(monkeypatch):
    """Calls over one command's rows split (RoPE at whole table periods, add at whole periods of b,
    max-pool at whole window rows), with the same bits in both modes."""
    monkeypatch.setattr(CV, "MAX_ROWS", 9)
    rng = np.random.default_rng(2)
    x = rng.integers(-128, 128, (40, 12), dtype=np.int8)
    b = rng.integers(-128, 128, (4, 12), dtype=np.int8)
    add = intvec.AddParams.make(0.05, 0.04, 0.06)
    ang = rng.uniform(-3, 3, (4, 6))
    rope = intvec.RopeParams.make(np.cos(ang), np.sin(ang), 0.05, 0.05)
    img = rng.integers(-128, 128, (21, 3, 12), dtype=np.int8)
    ln = intvec.LayerNormParams.make(np.ones(12), np.zeros(12), 0.05, 0.03, 1e-6)
    for op, xx, p, kw, want in [("add", x, add, {"b": b}, intvec.add(x.reshape(10, 4, 12), b, add).reshape(40, 12)),
                                ("add", x, add, {"b": x[::-1].copy()}, intvec.add(x, x[::-1], add)),
                                ("rope", x, rope, {}, intvec.rope(x, rope)),
                                ("layernorm", x, ln, {}, intvec.layernorm(x, ln)),
                                ("maxpool", img, None, {}, intvec.maxpool2x2(img)),
                                ("upsample", img, None, {}, intvec.upsample_nearest2x(img))]:
        for mode in ("fast", "checked"):
            drv = driver("sim", mode)
            assert np.array_equal(drv.vector(op, xx, p, **kw), want), (op, mode)
        assert sum(d["opcode"] == isa.OPCODES["VECTOR"] for d in drv.last_programs[0].descriptors) > 1


@pytest.mark.parametrize("op", ["layernorm", "lut", "add", "rescale"])
def test_commands_in_runs_and_segments_fast_equals_checked(op, monkeypatch):
    """A row op reading its input in segments and writing its output in padded windows (RowRuns: a VECTOR
    command per run): the fast mode runs the commands as one pass (sim_vector.run_rows), with the same bytes
    (padding rows and beats included) and cycles as the checked mode's interpreter."""
    from sw.runtime.layout import RowRuns, TokenRowLayout
    h, w, ws, d = 5, 9, 4, 24
    rng = np.random.default_rng(7)
    _, x, p, kw, want = next(c for c in cases(h * w, d, "random", rng) if c[0] == op and "b" not in c[3] or
                             c[0] == op and c[3]["b"].ndim == 2)
    passes = []
    run_rows = sim_vector.run_rows
    monkeypatch.setattr(sim_vector, "run_rows", lambda *a: passes.append(run_rows(*a)) or passes[-1])
    segments = {"in": (20, 25), **({"b": (20, 25)} if "b" in kw else {})}
    got = {}
    for mode in ("fast", "checked"):
        prog = CV.compile_vector(preset("bench16"), op, x, p, **kw, segments=segments,
                                 runs={"out": RowRuns.windows(h, w, ws)}, base_addr=Driver.BUFFER_BASE)
        drv = driver("bench16", mode)
        got[mode] = (drv.run(prog, keep=False), drv.last_run.cycles)
        runs = RowRuns.windows(h, w, ws)
        out = TokenRowLayout(runs.size, d, prog.cfg.cols).unpack(got[mode][0][slice(*_span(prog, "out"))])
        assert np.array_equal(out[[runs.row(r) for r in range(h * w)]], want), (op, mode)
    assert np.array_equal(got["fast"][0], got["checked"][0]) and got["fast"][1] == got["checked"][1]
    assert passes == [True]


def _span(prog, region):
    off, size = prog.regions[region]
    return off, off + size


def test_row_commands_one_pass_only_where_it_equals_them_in_turn():
    """run_rows declines (and changes nothing) where running the commands in turn would differ: a command
    writing rows a later one reads, or two writing the same bytes; otherwise it equals them in turn."""
    cfg = preset("bench16")
    rng = np.random.default_rng(8)
    pitch, dim = 2 * cfg.cols, 20
    mem = np.zeros(isa.VEC_PARAM_BYTES, np.uint8)
    for name, value in (("a_mult", 3000), ("b_mult", 5000), ("add_shift", 12)):
        o, dt = isa.VEC_HEADER[name]
        mem[o:o + np.dtype(dt).itemsize] = np.array([value], dt).view(np.uint8)

    def command(src, b, out, n, aux):
        return dict(target=isa.VEC_OPS["ADD"], vec_rows=n, vec_width=0, vec_dim=dim, vec_pitch=pitch // cfg.beat_bytes,
                    vec_aux=aux, dram_addr=int(src * pitch), vec_b_addr=int(b * pitch), vec_out_addr=int(out * pitch))

    for commands, one_pass in [([command(0, 10, 20, 3, 3), command(3, 13, 23, 4, 4)], True),
                               ([command(0, 10, 20, 6, 2), command(6, 10, 26, 2, 2)], True),     # b repeated
                               ([command(0, 10, 20, 3, 3), command(3.5, 13.5, 23.5, 4, 4)], True),  # two grids
                               ([command(0, 10, 20, 3, 3), command(20, 13, 30, 3, 3)], False),   # reads its output
                               ([command(0, 10, 20, 3, 3), command(3, 13, 22, 3, 3)], False),    # outputs meet
                               ([command(0, 10, 0, 3, 3)], False)]:                              # in place
        ddr = rng.integers(0, 256, 40 * pitch, dtype=np.uint8)
        turn = ddr.copy()
        for c in commands:
            assert sim_vector.run(cfg, mem, turn, c)
        before = ddr.copy()
        assert sim_vector.run_rows(cfg, mem, ddr, commands) == one_pass
        assert np.array_equal(ddr, turn if one_pass else before)


def test_steady_state_reaches_the_bound():
    """The streaming part of long calls runs within 3 % of the slower of the engine's and the DDR port's bounds."""
    rng = np.random.default_rng(3)
    for name in ("sim", "bench16"):
        cfg = preset(name)
        drv = driver(name, "fast")
        for op, x, p, kw, _ in cases(512, 64, "random", rng):
            if op in ("maxpool", "upsample"):
                x = rng.integers(-128, 128, (32, 32, 64), dtype=np.int8)
            drv.vector(op, x, p, **kw)
            prog = drv.last_programs[0]
            vec = [d for d in prog.descriptors if d["opcode"] == isa.OPCODES["VECTOR"]]
            rate = CV.elements(prog) / sum(sim_vector.stream_cycles(cfg, d) for d in vec)
            assert rate >= 0.97 * min(sim_vector.bounds(cfg, prog.op["op"], 64)), (name, op, rate)


def test_bad_descriptors_are_refused():
    rng = np.random.default_rng(4)
    x = rng.integers(-128, 128, (8, 16), dtype=np.int8)
    prog = CV.compile_vector(preset("sim"), "lut", x, intvec.LutParams.gelu(0.05, 0.02),
                             base_addr=Driver.BUFFER_BASE)
    drv = driver("sim", "checked")
    i = next(j for j, d in enumerate(prog.descriptors) if d["opcode"] == isa.OPCODES["VECTOR"])
    for change, match in [({"vec_rows": 9}, "input rows"), ({"vec_pitch": 1}, "pitch"),
                          ({"target": 9}, "unknown vector op"), ({"vec_dim": 0}, "rows of 0")]:
        bad = [dict(d) for d in prog.descriptors]
        bad[i].update(change)
        with pytest.raises(DescriptorError, match=match):
            drv.run(prog, bad)


def test_compile_errors():
    cfg = preset("sim")
    x = np.zeros((4, 8), np.int8)
    with pytest.raises(CV.CompileError, match="no vector engine"):
        CV.compile_vector(preset("pynq-z2"), "lut", x, intvec.LutParams.gelu(0.05, 0.02))
    with pytest.raises(CV.CompileError, match="LayerNormParams"):
        CV.compile_vector(cfg, "layernorm", x, intvec.LutParams.gelu(0.05, 0.02))
    with pytest.raises(CV.CompileError, match="multiple of b"):
        CV.compile_vector(cfg, "add", x, intvec.AddParams(1, 1, 0), b=np.zeros((3, 8), np.int8))


@pytest.mark.parametrize("op", ["layernorm", "gelu", "add", "rope", "maxpool", "upsample"])
def test_cli_sim_vector(op, capsys):
    assert main(["sim", "vector", "--op", op, "--rows", "16", "--dim", "40", "--preset", "bench16"]) == 0
    out = capsys.readouterr().out
    assert "bit-exact against golden" in out and "elements per cycle" in out and "DDR bound" in out


@pytest.mark.parametrize("argv,match", [(["--op", "rope", "--rows", "4", "--dim", "5"], "even"),
                                        (["--op", "gelu", "--rows", "4", "--dim", "0"], "1..1024"),
                                        (["--op", "gelu", "--rows", "4", "--dim", "4", "--preset", "pynq-z2"],
                                         "no vector engine"),
                                        (["--op", "sqrt", "--rows", "4", "--dim", "4"], "invalid choice")])
def test_cli_sim_vector_usage_errors(argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        main(["sim", "vector", *argv])
    assert e.value.code == 2 and match in capsys.readouterr().err


# ---------------------------------------------------------------- the overlay under Verilator (hw/vector/unit.py)

def rtl_check(cases_, stall, cycles_within=None):
    """Compile each case at the sim driver's buffer base, run the images on the Verilator overlay
    (sw.backends.rtl.run_images) and on the sim model; every output byte equal, equal to golden;
    returns the rtl cycles. `cycles_within`: the sim cycle model's largest relative error allowed."""
    from sw.backends.rtl import run_images
    drv = driver("sim", "checked")
    progs, sims = [], []
    for op, x, p, kw, want in cases_:
        prog = CV.compile_vector(drv.cfg, op, x, p, base_addr=drv.BUFFER_BASE, **kw)
        progs.append(prog)
        image = drv.run(prog)
        assert np.array_equal(prog.output(image), want), op
        sims.append((image, drv.last_run.cycles))
    jobs = [dict(base=p.base_addr, image=p.image, desc_count=len(p.descriptors), timeout=400_000) for p in progs]
    results = run_images(drv.cfg, jobs, stall=stall, seed=5)
    off = [p.regions["out"] for p in progs]
    for (op, *_), prog, (o, n), (sim_image, sim_cycles), res in zip(cases_, progs, off, sims, results):
        assert res["error"] == 0 and not res["timed_out"], (op, res)
        assert np.array_equal(res["image"][o:o + n], sim_image[o:o + n]), op          # padding bytes too
        if cycles_within is not None:
            assert abs(sim_cycles / res["cycles"] - 1) <= cycles_within, (op, sim_cycles, res["cycles"])
    return [r["cycles"] for r in results]


@pytest.mark.rtl
def test_rtl_one_small_case_per_op_with_stalls():
    """One small call per op (D not a multiple of L) on the Verilator overlay with 30 % random stalls on
    every AXI channel: bit-exact with the sim model and golden."""
    rng = np.random.default_rng(6)
    small = [c for c in cases(5, 13, "random", rng) if not (c[0] == "add" and c[3]["b"].ndim == 1)]
    ang = rng.uniform(-3, 3, (5, 7))
    x = rng.integers(-128, 128, (5, 14), dtype=np.int8)
    rope = intvec.RopeParams.make(np.cos(ang), np.sin(ang), 0.05, 0.04)
    rtl_check(small + [("rope", x, rope, {}, intvec.rope(x, rope))], stall=0.3)


@pytest.mark.rtl
@pytest.mark.slow
def test_rtl_adversarial_cycle_model_and_steady_state():
    """Adversarial data with 30 % stalls (constant rows, int8 extremes, D = 1, rows of 1,024, rows across
    4 KiB, axial RoPE tables, b broadcast); without stalls the cycle model within 5 % of the RTL and the
    steady state (two sizes, the difference) at the slower of L and the DDR bound."""
    rng = np.random.default_rng(7)
    adv = cases(6, 16, "constant", rng) + cases(3, 1, "extremes", rng) + cases(2, 1024, "extremes", rng)
    x = rng.integers(-128, 128, (48, 96), dtype=np.int8)           # rows 43.. straddle a 4 KiB boundary
    b = rng.integers(-128, 128, (48, 96), dtype=np.int8)
    add = intvec.AddParams.make(0.05, 0.04, 0.06)
    p = intvec.RopeParams.make(*axial_rope(32, 8, 4), 0.05, 0.04)
    xr = rng.integers(-128, 128, (64, 32), dtype=np.int8)
    adv += [("add", x, add, {"b": b}, intvec.add(x, b, add)), ("rope", xr, p, {"end_x": 8}, intvec.rope(xr, p))]
    rtl_check(adv, stall=0.3)
    cfg = preset("sim")
    steady = []
    for n in (64, 128):
        for op, xx, pp, kw, want in cases(n, 64, "random", rng):
            if op in ("maxpool", "upsample"):
                xx = rng.integers(-128, 128, (n // 8, 16, 64), dtype=np.int8)
                want = intvec.maxpool2x2(xx) if op == "maxpool" else intvec.upsample_nearest2x(xx)
            if op == "rope":
                ang = rng.uniform(-3, 3, (64, 32))
                pp = intvec.RopeParams.make(np.cos(ang), np.sin(ang), 0.05, 0.05)
                want = intvec.rope(xx, pp)
            steady.append((op, xx, pp, kw, want))
    cycles = rtl_check(adv[:7] + steady, stall=0.0, cycles_within=0.05)[7:]
    half = len(steady) // 2
    for (op, x1, *_), c1, (_, x2, *_), c2 in zip(steady[:half], cycles[:half], steady[half:], cycles[half:]):
        els = (x2.size - x1.size) * (4 if op == "upsample" else 1)
        rate = els / (c2 - c1)
        assert rate >= 0.9 * min(sim_vector.bounds(cfg, CV.OPS[op][0], 64)), (op, rate)
