"""Programs longer than the descriptors' 16-bit wait counts: the compilers cut them into runs
(sw.compile.linear.split_runs), each started on its own, each self-contained. A small limit makes short
layers split here; the real limit is checked on the 65,536 x 96 x 288 linear (slow)."""
import numpy as np
import pytest

from golden_model import intconv
from golden_model.intops import gemm
from hw import isa
from hw.config import preset
from sw.compile import linear
from sw.backends import fast
from sw.backends.cycles import program_cycles
from sw.compile.conv import compile_conv2d
from sw.compile.linear import compile_linear
from sw.backends.sim import SimBackend
from sw.runtime.driver import Driver
from sw.runtime.backend import DDR_BASE

UNITS = {"LOAD": ("LOAD", "DEPTHWISE"), "COMPUTE": ("COMPUTE",), "STORE": ("STORE",)}


def rand8(rng, shape):
    return rng.integers(-128, 128, shape, dtype=np.int8)


def check_runs(prog, limit):
    """The runs tile the descriptor list; per run no unit exceeds `limit` and no wait exceeds its count."""
    assert prog.runs and prog.runs[0][0] == 0
    assert sum(n for _, n in prog.runs) == len(prog.descriptors)
    assert all(a + n == b for (a, n), (b, _) in zip(prog.runs, prog.runs[1:]))
    names = {v: k for k, v in isa.OPCODES.items()}
    for first, n in prog.runs:
        counts = dict.fromkeys(UNITS, 0)
        for d in prog.descriptors[first:first + n]:
            for unit in UNITS:
                assert d.get(f"wait_{unit.lower()}", 0) <= counts[unit]
            for unit, ops in UNITS.items():
                counts[unit] += names[d["opcode"]] in ops
        assert max(counts.values()) <= limit


def run_each_after_reset(cfg, prog):
    """Each run on its own with a soft reset before it (scratchpads cleared): runs rely on nothing an
    earlier run left behind. Checked mode (the interpreter)."""
    be = SimBackend(cfg, ddr_bytes=prog.base_addr + len(prog.image), sim_mode="checked", timeout_s=60)
    be.model.ddr[prog.base_addr:] = prog.image
    for first, n in prog.runs:
        be.reset()
        be.run(prog.base_addr + first * isa.DESCRIPTOR_BYTES, n)
    return be.model.ddr[prog.base_addr:]


@pytest.mark.parametrize("m,k,n,limit", [(70, 40, 50, 20), (33, 3000, 20, 9), (200, 24, 8, 5)])
def test_linear_split_into_runs(monkeypatch, m, k, n, limit):
    monkeypatch.setattr(linear, "WAIT_LIMIT", limit)
    cfg = preset("sim")
    rng = np.random.default_rng(m + k)
    a, b = rand8(rng, (m, k)), rand8(rng, (k, n))
    bias, mult, shift = rng.integers(-999, 999, n), rng.integers(1 << 20, 1 << 22, n), rng.integers(20, 30, n)
    want = gemm(a, b, bias, mult, shift, relu=True)
    outs, cycles = [], []
    for mode in ("checked", "fast"):
        drv = Driver(cfg, "sim", sim_mode=mode)
        prog = drv.compile(a, b, bias, mult, shift, relu=True)
        check_runs(prog, limit)
        outs.append(prog.output(drv.run(prog)))
        cycles.append(drv.last_run.cycles)
    assert np.array_equal(outs[0], want) and np.array_equal(outs[1], want) and cycles[0] == cycles[1]
    assert program_cycles(prog) == cycles[0]
    assert np.array_equal(prog.output(run_each_after_reset(cfg, prog)), want)


@pytest.mark.parametrize("cin,h,w,cout,k,stride,depthwise", [(4, 9, 10, 40, 3, 1, False), (3, 64, 64, 8, 7, 4, False),
                                                            (240, 6, 7, 9, 3, 2, False), (16, 8, 8, 16, 3, 1, True)])
def test_conv_split_into_runs(monkeypatch, cin, h, w, cout, k, stride, depthwise):
    monkeypatch.setattr(linear, "WAIT_LIMIT", 24)
    cfg = preset("sim")
    rng = np.random.default_rng(cin + k)
    x, wt = rand8(rng, (cin, h, w)), rand8(rng, (cout, 1 if depthwise else cin, k, k))
    bias, mult, shift = rng.integers(-999, 999, cout), rng.integers(1 << 20, 1 << 22, cout), rng.integers(20, 30, cout)
    prog = compile_conv2d(cfg, x, wt, bias, mult, shift, stride=stride, padding=k // 2, depthwise=depthwise,
                          base_addr=DDR_BASE)
    check_runs(prog, 24)
    op = intconv.depthwise_conv2d if depthwise else intconv.conv2d
    want = op(x, wt, bias, mult, shift, stride=stride, padding=k // 2)
    assert np.array_equal(prog.output(run_each_after_reset(cfg, prog)), want)
    be = SimBackend(cfg, ddr_bytes=DDR_BASE + len(prog.image), timeout_s=60)  # fast: the first run computes
    be.model.ddr[DDR_BASE:] = prog.image
    for i, (first, n) in enumerate(prog.runs):
        be.expect(DDR_BASE + first * isa.DESCRIPTOR_BYTES, n, fast.job(cfg, prog) if i == 0 else None)
        be.run(DDR_BASE + first * isa.DESCRIPTOR_BYTES, n)
    assert be.model.fast_runs == 1 and np.array_equal(prog.output(be.model.ddr[DDR_BASE:]), want)


def test_short_programs_are_one_run():
    prog = compile_linear(preset("sim"), np.ones((8, 8), np.int8), np.ones((8, 8), np.int8), None, out_int32=True)
    assert prog.runs is None


@pytest.mark.slow
@pytest.mark.parametrize("preset_name", ["bench16", "pynq-z2"])
def test_the_65536_x_96_x_288_linear_compiles_and_runs(preset_name):
    """Issue 14's layer, which overflowed the wait counts on these presets, in fast mode."""
    cfg = preset(preset_name)
    rng = np.random.default_rng(14)
    a, b = rand8(rng, (65536, 96)), rand8(rng, (96, 288))
    bias, mult, shift = rng.integers(-999, 999, 288), rng.integers(1 << 20, 1 << 22, 288), rng.integers(20, 30, 288)
    drv = Driver(cfg, "sim", ddr_bytes=1 << 27)
    prog = drv.compile(a, b, bias, mult, shift)
    check_runs(prog, linear.WAIT_LIMIT)
    assert len(prog.runs) >= 2
    assert np.array_equal(prog.output(drv.run(prog)), gemm(a, b, bias, mult, shift))


@pytest.mark.rtl
def test_runs_on_rtl(monkeypatch):
    """A program of several runs on the RTL (one Verilator session, one START per run): bit-exact,
    cycles within 5 % of the sim model's (which sums its runs the same way)."""
    monkeypatch.setattr(linear, "WAIT_LIMIT", 20)
    cfg = preset("sim")
    rng = np.random.default_rng(5)
    a, b = rand8(rng, (40, 40)), rand8(rng, (40, 50))
    bias, mult, shift = rng.integers(-999, 999, 50), rng.integers(1 << 20, 1 << 22, 50), rng.integers(20, 30, 50)
    sim, rtl = Driver(cfg, "sim"), Driver(cfg, "rtl", timeout_cycles=2_000_000)
    prog = sim.compile(a, b, bias, mult, shift, relu=True)
    assert len(prog.runs) >= 3
    want = gemm(a, b, bias, mult, shift, relu=True)
    assert np.array_equal(prog.output(sim.run(prog)), want)
    assert np.array_equal(prog.output(rtl.run(prog)), want)
    assert abs(sim.last_run.cycles / rtl.last_run.cycles - 1) < 0.05, (sim.last_run.cycles, rtl.last_run.cycles)
