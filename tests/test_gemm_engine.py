"""GEMM engine: systolic array and whole engine in Amaranth's simulator, and the cocotb bench."""
import numpy as np
import pytest
from amaranth.sim import Simulator

from golden_model.intops import gemm
from hw.config import preset
from hw.gemm.array import SystolicArray
from hw.gemm.engine import GemmEngine
from sim.gemm_engine_tb import run_engine_amaranth
from sim.runner import BUILD, waves_requested


@pytest.mark.parametrize("rows,cols,packed", [(2, 2, False), (3, 5, False), (4, 2, False), (4, 8, False),
                                              (2, 2, True), (3, 6, True), (4, 8, True)])
def test_array_back_to_back_tiles(rows, cols, packed):
    """Tiles streamed with no gap at the shortest K the drain allows (2R - 1), drained while the next
    accumulates; a K = 1 tile padded with bubbles to the same spacing."""
    from hw.isa import array_tile_gap
    rng = np.random.default_rng(rows * 10 + cols)
    gap = array_tile_gap(rows)
    ks = [gap, gap, gap + 1, 1, gap, 2 * rows + cols + 3, gap, 40, gap]
    tiles = [(rng.integers(-128, 128, (rows, k)), rng.integers(-128, 128, (k, cols))) for k in ks]
    tiles[0][0][:] = -128
    tiles[0][1][:] = -128
    tiles[1][0][:] = 127
    tiles[1][1][:] = -128
    dut = SystolicArray(rows, cols, packed=packed)
    got = []

    async def bench(ctx):
        shift_at, out_at = [], []
        t = 0
        stream = []
        for a, b in tiles:
            stream += [None] * (gap - a.shape[1])           # bubbles (valid = 0) before a short tile
            stream += [(a[:, k], b[k], k == a.shape[1] - 1) for k in range(a.shape[1])]
        stream += [None] * (2 * rows + 2 * cols + 4 + SystolicArray.EXTRA_LATENCY)
        rows_out = []
        for item in stream:
            if item is None:
                ctx.set(dut.valid, 0)
                ctx.set(dut.last, 0)
            else:
                av, bv, last = item
                for i in range(rows):
                    ctx.set(dut.a[i], int(av[i]))
                for j in range(cols):
                    ctx.set(dut.b[j], int(bv[j]))
                ctx.set(dut.valid, 1)
                ctx.set(dut.last, int(last))
                if last:
                    shift_at.append(t + rows + SystolicArray.EXTRA_LATENCY)
                    out_at.append(shift_at[-1] + dut.drain_latency)
            ctx.set(dut.shift, int(any(d <= t < d + rows for d in shift_at)))
            if any(d <= t < d + rows for d in out_at):
                rows_out.append([ctx.get(dut.out[j]) for j in range(cols)])
            await ctx.tick()
            t += 1
        got.extend(rows_out)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert len(got) == rows * len(tiles)
    for n, (a, b) in enumerate(tiles):
        expected = (a @ b)[::-1]          # the drain emits row R-1 first
        assert np.array_equal(np.array(got[n * rows:(n + 1) * rows]), expected), f"tile {n}"


def _case(rng, m, k, n):
    a = rng.integers(-128, 128, (m, k)).astype(np.int8)
    b = rng.integers(-128, 128, (k, n)).astype(np.int8)
    a[0] = -128
    b[:, -1] = 127
    bias = rng.integers(-2**20, 2**20, n)
    bias[0], bias[1] = 2**31 - 1, -2**31         # int32 saturation both ways (with the products)
    mult = rng.integers(1 << 29, 1 << 31, n)
    shift = rng.integers(36, 44, n)
    return a, b, bias, mult, shift


@pytest.mark.parametrize("out_int32,relu,packed,cols", [(False, False, False, 8), (False, True, False, 8),
                                                        (True, True, False, 8), (False, True, True, 8),
                                                        (True, False, True, 8), (False, True, True, 32),
                                                        (True, False, False, 16)])
def test_engine_amaranth_random_shapes_with_stalls(out_int32, relu, packed, cols):
    """cols > 8 (the 64-bit beat): the store's cfg.requant_lanes = 8 requantisers take each row in chunks."""
    cfg = preset("sim").replace(a_depth=64, b_depth=64, acc_depth=8, param_depth=2, dsp_packing=packed, cols=cols)
    rng = np.random.default_rng(11 + out_int32 + 2 * relu)
    m, k, n = 7, 45, 13                  # not multiples of 4 x 8; K over a half (32) -> accumulate
    a, b, bias, mult, shift = _case(rng, m, k, n)
    got = run_engine_amaranth(GemmEngine(cfg), cfg, a, b, bias, mult, shift, relu=relu,
                              out_int32=out_int32, stall=0.3, seed=5,
                              vcd=str(BUILD / "amaranth_gemm_engine.vcd") if waves_requested() else None)
    assert np.array_equal(got, gemm(a, b, bias, mult, shift, relu=relu, out_int32=out_int32))


@pytest.mark.parametrize("cols,relu", [(8, False), (16, True)])
def test_engine_amaranth_store_table_with_stalls(cols, relu):
    """The store table (store_lut) inside GemmStore: one chunk per row (cols 8) and two (cols 16 on the 64-bit
    beat: the first chunk waits in its registers), with ReLU, random stalls; = golden_model.intvec.linear_lut."""
    from golden_model.intvec import LutParams, linear_lut
    cfg = preset("sim").replace(a_depth=64, b_depth=64, acc_depth=8, param_depth=2, cols=cols)
    rng = np.random.default_rng(cols)
    a, b, bias, mult, shift = _case(rng, 7, 45, 13)
    table = LutParams(rng.integers(-128, 128, 256).astype(np.int8))
    got = run_engine_amaranth(GemmEngine(cfg), cfg, a, b, bias, mult, shift, relu=relu, out_int32=False,
                              stall=0.3, seed=3, table=table.table)
    assert np.array_equal(got, linear_lut(a, b, bias, mult, shift, table, relu=relu))


@pytest.mark.parametrize("cols,relu,fused_table", [(8, False, False), (16, True, True)])
def test_engine_amaranth_store_add_with_stalls(cols, relu, fused_table):
    """The residual add (store_add) inside GemmStore: one chunk per row and two, int8 extremes of the result and
    the residual, with the table before it, random stalls; = golden_model.intvec.linear_add."""
    from golden_model.intvec import AddParams, LutParams, linear_add
    cfg = preset("sim").replace(a_depth=64, b_depth=64, acc_depth=8, param_depth=2, cols=cols)
    rng = np.random.default_rng(cols + 1)
    a, b, bias, mult, shift = _case(rng, 7, 45, 13)
    x = rng.choice(np.array([-128, 127, -1, 0, 1, 100], np.int8), (7, 13))
    p = AddParams(65535, 40000, 15) if relu else AddParams(3, 1, 0)
    table = LutParams(rng.integers(-128, 128, 256).astype(np.int8)) if fused_table else None
    got = run_engine_amaranth(GemmEngine(cfg), cfg, a, b, bias, mult, shift, relu=relu, out_int32=False,
                              stall=0.3, seed=4, table=table and table.table, residual=(x, p))
    assert np.array_equal(got, linear_add(a, b, bias, mult, shift, x, p, relu=relu, table=table))


def run_engine_bench(cfg, name, **env):
    import json

    from hw.verilog import write_verilog
    from sim.runner import run_bench
    verilog = write_verilog(GemmEngine(cfg), "gemm_engine", BUILD / "verilog" / f"gemm_engine_{cfg.name}")
    return run_bench(verilog, "gemm_engine", "gemm_engine_bench", name=name,
                     extra_env={"BENCH_CONFIG": json.dumps(cfg.summary()), **env})


@pytest.mark.rtl
@pytest.mark.parametrize("packed", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_engine_rtl_bench_sim_preset(packed):
    # packed: also 16 columns on the 64-bit beat, so the store's 8 requantisers take each row in two chunks
    cfg = preset("sim").replace(name="sim-packed16", dsp_packing=True, cols=16) if packed else preset("sim")
    result = run_engine_bench(cfg, f"test-gemm-engine-{cfg.name}", BENCH_CASES="8")
    assert result.passed == 2 and result.failed == 0
    assert any(r["k"] == 4096 for r in result.reports)
