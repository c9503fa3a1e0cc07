"""The requantiser: golden spec, Amaranth-simulator unit test, cocotb/Verilator bench."""
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from golden_model.intops import MULT_BITS, quantize_multiplier, requantize
from hw.requant import Requantizer
from hw.verilog import write_verilog
from sim.runner import BUILD, run_amaranth, run_bench
from sim.toolchain import icarus_available


def reference_bigint(acc, m, s, relu):
    """Python's unbounded ints: an independent reading of the spec."""
    y = (acc * m + ((1 << (s - 1)) if s else 0)) >> s
    if relu:
        y = max(y, 0)
    return max(-128, min(127, y))


def test_golden_matches_bigint_reading_of_spec():
    rng = random.Random(0)
    cases = [(rng.randrange(-2**31, 2**31), rng.randrange(0, 2**31), rng.randrange(0, 64), rng.random() < .5)
             for _ in range(3000)]
    cases += [(a, m, s, r) for a in (-2**31, 2**31 - 1, -1, 0, 1) for m in (0, 1, 2**31 - 1)
              for s in (0, 1, 63) for r in (False, True)]
    for acc, m, s, relu in cases:
        assert requantize(acc, m, s, relu=relu) == reference_bigint(acc, m, s, relu), (acc, m, s, relu)


def test_golden_rounds_half_up_and_saturates():
    # m / 2**s = 1/2: 3/2 -> 2, -3/2 -> -1 (half towards +inf); 300 -> 127; -300 -> -128.
    got = requantize(np.array([3, -3, 600, -600]), 1, 1)
    assert got.tolist() == [2, -1, 127, -128]
    assert got.dtype == np.int8


@pytest.mark.parametrize("bad", [dict(acc=2**31), dict(m=2**MULT_BITS), dict(m=-1), dict(s=64)])
def test_golden_refuses_out_of_range(bad):
    args = dict(acc=0, m=1, s=0) | bad
    with pytest.raises(ValueError):
        requantize(args["acc"], args["m"], args["s"])


@pytest.mark.parametrize("scale", [1e-6, 0.0123, 0.5, 1.0, 3.7])
def test_quantize_multiplier_is_close(scale):
    m, s = quantize_multiplier(scale)
    assert abs(m / 2**s - scale) <= scale * 2**-30


def _run_amaranth(acc, mult, shift, relu: bool, seed: int) -> np.ndarray:
    """The Requantizer in Amaranth's simulator, random stalls on both streams; its outputs in order."""
    dut = Requantizer()
    n = len(acc)
    got = []
    stalls = random.Random(seed)

    async def producer(ctx):
        ctx.set(dut.relu, int(relu))
        for a, m, s in zip(acc, mult, shift):
            while stalls.random() < 0.3:
                await ctx.tick()
            ctx.set(dut.i.payload.acc, int(a))
            ctx.set(dut.i.payload.multiplier, int(m))
            ctx.set(dut.i.payload.shift, int(s))
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)

    async def consumer(ctx):
        sink_rng = random.Random(seed + 1)
        while len(got) < n:
            ready = sink_rng.random() > 0.3
            ctx.set(dut.o.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            if ready and valid:
                got.append(payload)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    run_amaranth(sim, "requant")
    return np.array(got)


def test_requantizer_amaranth_sim():
    """Cycle-level unit test in Amaranth's own simulator, with random stalls."""
    rng = np.random.default_rng(3)
    n = 200
    acc = rng.integers(-2**31, 2**31, n)
    mult = rng.integers(0, 2**31, n)
    # In-range outputs (shifts near 31..40) and rounding-sensitive small values.
    shift = np.where(np.arange(n) % 2, rng.integers(25, 45, n), rng.integers(0, 64, n))
    acc[::3] = rng.integers(-300, 300, len(acc[::3]))
    mult[::3] = rng.integers(0, 8, len(mult[::3]))
    assert np.array_equal(_run_amaranth(acc, mult, shift, True, 5), requantize(acc, mult, shift, relu=True))


def test_requantizer_amaranth_rounding_and_saturation_edges():
    """Every shift with products just around the edges the shifter's windows and the rounding decide: the int8
    and the 10-bit saturation bounds, the rounding half (P = k 2^s +- 1, k 2^s + 2^(s-1) +- 1), and P's
    extremes (int32 min/max accumulators with the largest multiplier), at multipliers 1 and 2^30; and
    powers of two around the top of the shifter's window."""
    acc, mult, shift = [], [], []
    for s in range(64):
        for k in (-513, -512, -258, -257, -129, -128, -1, 0, 127, 128, 255, 256, 511, 512):
            for m, d in ((1, -1), (1, 0), (1, 1), (1 << 30, 0)):
                half = 1 << (s - 1) if s else 0
                for p in ((k << s) + d, (k << s) + half + d):
                    a = p // m if m > 1 else p
                    if -2**31 <= a < 2**31:
                        acc.append(a), mult.append(m), shift.append(s)
        for a in (-2**31, 2**31 - 1):
            acc.append(a), mult.append(2**31 - 1), shift.append(s)
        if (s - 1) % 8 in (0, 7):
            # Powers of two around the 16-bit window's top, which the coarse shift (s - 1) & ~7 places: a
            # sign change just above or below it; P = (+-2^30, +-(2^30 - 1)) x 2^(j - 30).
            for j in range(s + 8, min(s + 27, 61)):
                for a in (1 << 30, -(1 << 30), (1 << 30) - 1, 1 - (1 << 30)):
                    acc.append(a >> max(30 - j, 0)), mult.append(1 << max(j - 30, 0)), shift.append(s)
    acc, mult, shift = np.array(acc), np.array(mult), np.array(shift)
    assert np.array_equal(_run_amaranth(acc, mult, shift, False, 7), requantize(acc, mult, shift))
    some = slice(None, None, 5)
    assert np.array_equal(_run_amaranth(acc[some], mult[some], shift[some], True, 8),
                          requantize(acc[some], mult[some], shift[some], relu=True))


@pytest.mark.rtl
def test_requantizer_rtl_bench(tmp_path):
    verilog = write_verilog(Requantizer(), "requant", BUILD / "verilog" / "requant")
    result = run_bench(verilog, "requant", "requant_bench", name="test-requant")
    assert result.passed == 2 and result.failed == 0


@pytest.mark.rtl
@pytest.mark.skipif(not icarus_available(), reason="Icarus Verilog not installed (optional simulator)")
def test_requantizer_bench_on_icarus():
    verilog = write_verilog(Requantizer(), "requant", BUILD / "verilog" / "requant-icarus")
    result = run_bench(verilog, "requant", "requant_bench", name="test-requant", simulator="icarus")
    assert result.passed == 2 and result.failed == 0


def test_simulator_builds_shared_by_content_and_stale_ones_pruned(tmp_path, monkeypatch):
    """sim/runner.py: the same sources build in the same directory whatever the run's name, changed ones
    in another; a top's builds unused for STALE_BUILD_S are removed then, unless in use (locked)."""
    import fcntl
    import os
    import time

    import sim.runner as runner
    monkeypatch.setattr(runner, "BUILD", tmp_path)
    v = tmp_path / "top.v"
    v.write_text("module top; endmodule\n")

    def build_dir():
        with runner._shared_build([v], "top", "verilator", ["-O3"], False) as d:
            return d

    first = build_dir()
    assert build_dir() == first and first.is_dir()
    busy = first.parent.with_name("top-busy")
    busy.mkdir()
    stale = time.time() - runner.STALE_BUILD_S - 60
    for d in (first.parent, busy):
        os.utime(d, (stale, stale))
    with open(busy / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        v.write_text("module top; wire a; endmodule\n")
        changed = build_dir()
    assert changed != first and changed.is_dir()
    assert not first.parent.exists() and busy.exists()
