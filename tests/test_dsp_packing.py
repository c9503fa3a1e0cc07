"""Two int8 MACs per DSP: the packed arithmetic (golden_model/dsp_packing.py) and the packed PE pair
(hw/gemm/array.py, SystolicArray(packed=True)) in Amaranth's simulator, bit for bit."""
import itertools

import numpy as np
import pytest
from amaranth.sim import Simulator

from golden_model.dsp_packing import PRODUCT_BITS, WORD_BITS, pack, packed_matmul, split, wide_product
from golden_model.intops import MAX_K
from hw.gemm.array import SystolicArray
from hw.isa import array_tile_gap
from sim.runner import run_amaranth

INT8 = np.arange(-128, 128)


def test_every_product_pair_splits_exactly():
    """All 2^24 (b_hi, b_lo, a) triples: the fields give both products; the widths hold."""
    b_hi, b_lo = np.meshgrid(INT8, INT8, indexing="ij")
    w = pack(b_hi, b_lo)
    assert w.min() >= -(1 << (WORD_BITS - 1)) and w.max() < (1 << (WORD_BITS - 1))
    for a in INT8:
        p = wide_product(w, a)
        assert p.min() >= -(1 << (PRODUCT_BITS - 1)) and p.max() < (1 << (PRODUCT_BITS - 1))
        upper, correction, lower = split(p)
        assert np.array_equal(upper + correction, b_hi * a)
        assert np.array_equal(lower, b_lo * a)


@pytest.mark.parametrize("seed", range(3))
def test_packed_matmul_random(seed):
    rng = np.random.default_rng(seed)
    m, k, n = rng.integers(1, 20), rng.integers(1, 300), 2 * rng.integers(1, 10)
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    b = rng.integers(-128, 128, (k, n), dtype=np.int8)
    assert np.array_equal(packed_matmul(a, b), a.astype(np.int64) @ b.astype(np.int64))


@pytest.mark.parametrize("av,blo,bhi", list(itertools.product((-128, 127), repeat=3)))
def test_packed_matmul_extremes_at_max_k(av, blo, bhi):
    """The longest accumulation int32 allows, every sign combination of the extremes."""
    a = np.full((1, MAX_K), av, np.int8)
    b = np.empty((MAX_K, 2), np.int8)
    b[:, 0], b[:, 1] = blo, bhi
    assert np.array_equal(packed_matmul(a, b), [[av * blo * MAX_K, av * bhi * MAX_K]])


def test_packed_matmul_refuses():
    with pytest.raises(ValueError):
        packed_matmul(np.zeros((1, 2), np.int8), np.zeros((2, 3), np.int8))
    with pytest.raises(TypeError):
        packed_matmul(np.zeros((1, 2)), np.zeros((2, 2), np.int8))


def run_pair(a, b, rows=1):
    """Stream tiles [(a: rows x K, b: K x 2)] back to back through a packed 1 x 2 array (one PE pair,
    one DSP); returns each tile's R x 2 result. Values are fed as whole arrays per cycle."""
    dut = SystolicArray(rows, 2, packed=True)
    tiles = list(zip(a, b))
    got = []

    async def bench(ctx):
        t, shift_at, out_at = 0, [], []
        schedule = []
        for x, y in tiles:      # bubbles before a tile shorter than the drain allows (isa.array_tile_gap)
            schedule += [None] * (array_tile_gap(rows) - x.shape[1]) + [(x, y, k) for k in range(x.shape[1])]
        for t in range(len(schedule) + 4 * rows + 12):
            if t < len(schedule) and schedule[t] is not None:
                x, y, k = schedule[t]
                for i in range(rows):
                    ctx.set(dut.a[i], int(x[i, k]))
                ctx.set(dut.b[0], int(y[k, 0]))
                ctx.set(dut.b[1], int(y[k, 1]))
                last = k == x.shape[1] - 1
                ctx.set(dut.valid, 1)
                ctx.set(dut.last, int(last))
                if last:
                    shift_at.append(t + rows + SystolicArray.EXTRA_LATENCY)
                    out_at.append(shift_at[-1] + dut.drain_latency)
            else:
                ctx.set(dut.valid, 0)
                ctx.set(dut.last, 0)
            ctx.set(dut.shift, int(any(d <= t < d + rows for d in shift_at)))
            if any(d <= t < d + rows for d in out_at):
                got.append([ctx.get(dut.out[0]), ctx.get(dut.out[1])])
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    run_amaranth(sim, "packed_pair")
    return [np.array(got[n * rows:(n + 1) * rows])[::-1] for n in range(len(tiles))]


def test_packed_pe_extremes_and_random():
    """Every sign combination of -128/127 on a, b_lo, b_hi (K = 5 each, back to back), then random tiles."""
    rng = np.random.default_rng(7)
    a, b = [], []
    for av, blo, bhi in itertools.product((-128, 127), repeat=3):
        a.append(np.full((2, 5), av, np.int8))
        b.append(np.array([[blo, bhi]] * 5, np.int8))
    for k in (3, 1, 8, 40):
        a.append(rng.integers(-128, 128, (2, k), dtype=np.int8))
        b.append(rng.integers(-128, 128, (k, 2), dtype=np.int8))
    for (x, y), got in zip(zip(a, b), run_pair(a, b, rows=2)):
        assert np.array_equal(got, x.astype(np.int64) @ y.astype(np.int64))


@pytest.mark.slow
@pytest.mark.parametrize("av,blo,bhi", [(-128, -128, -128), (127, -128, 127)])
def test_packed_pe_max_k(av, blo, bhi):
    """MAX_K = 131071 products into one accumulator pair: the int32 limit, no wrap in either field."""
    a = [np.full((1, MAX_K), av, np.int8)]
    b = [np.array([[blo, bhi]] * MAX_K, np.int8)]
    got = run_pair(a, b)[0]
    assert np.array_equal(got, [[av * blo * MAX_K, av * bhi * MAX_K]])


def test_packed_pe_long_mixed_signs():
    """A 4,096-step accumulation (the longest tile the presets' scratchpads hold) with random
    signs that sit at the extremes: -128 or 127 everywhere."""
    rng = np.random.default_rng(11)
    k = 4096
    a = [rng.choice(np.array([-128, 127], np.int8), (1, k))]
    b = [rng.choice(np.array([-128, 127], np.int8), (k, 2))]
    got = run_pair(a, b)[0]
    assert np.array_equal(got, a[0].astype(np.int64) @ b[0].astype(np.int64))
