"""Two int8 MACs per DSP: the packed arithmetic (golden_model/dsp_packing.py: P accumulates w a mod 2^48,
a counter keeps the lower field's wraps, the drain subtracts it) and the packed array
(hw/gemm/array.py, SystolicArray(packed=True)) in Amaranth's simulator, bit for bit."""
import itertools

import numpy as np
import pytest
from amaranth.sim import Simulator

from golden_model.dsp_packing import (P_BITS, PACK_SHIFT, PRODUCT_BITS, Q_BITS, WORD_BITS, drain, pack,
                                      packed_matmul, wide_product, wrap)
from golden_model.intops import MAX_K
from hw.gemm.array import SystolicArray
from hw.isa import array_tile_gap
from sim.runner import run_amaranth

INT8 = np.arange(-128, 128)
FIELD = 1 << PACK_SHIFT


def test_wrap_rule_at_every_edge():
    """Every product b_lo a the lower field can take, from the field values where the top two bits change
    and where that product wraps the field (r + x = 0 or 2^16, and one either side): `wrap` is the carry
    or borrow out of the field."""
    x = np.unique(np.outer(INT8, INT8))[:, None]
    quarters = np.array([0, 1, FIELD // 4 - 1, FIELD // 4, FIELD // 2 - 1, FIELD // 2,
                         3 * FIELD // 4 - 1, 3 * FIELD // 4, FIELD - 1])
    edges = np.concatenate([np.broadcast_to(quarters, (len(x), len(quarters))),
                            (-x + np.arange(-1, 2)) % FIELD, (FIELD - x + np.arange(-1, 2)) % FIELD], axis=1)
    r = np.clip(edges, 0, FIELD - 1)
    total = r + x
    assert np.array_equal(wrap(r, total % FIELD), total // FIELD)


LIM = (1 << 31) - (1 << 14) - 1          # a sum that one more product keeps in int32
#: (A, B) before the step: (0, 0) is a tile's start (P = 0, q = 0, the field counted as 0); the others put
#: the lower field at its quarters' edges and the upper sum and the counter near their limits.
BEFORE = [(0, 0), (LIM, -FIELD), (-LIM, LIM), (-LIM, FIELD // 4 - 1), (12345, FIELD // 4),
          (-1, -FIELD // 4), (7, 3 * FIELD // 4 - 1), (LIM, LIM - FIELD // 4), (-LIM, -LIM)]


@pytest.mark.parametrize("before", [pytest.param(BEFORE[:2], id="start"),
                                    pytest.param(BEFORE[2:], id="edges", marks=pytest.mark.slow(seconds=10))])
def test_every_product_accumulates_exactly(before):
    """All 2^24 (b_hi, b_lo, a) triples: the widths hold, and one step of P, the counter and the drain
    gives both sums from each state `before`."""
    b_hi, b_lo = (v.ravel() for v in np.meshgrid(INT8, INT8, indexing="ij"))
    w = pack(b_hi, b_lo)
    assert w.min() >= -(1 << (WORD_BITS - 1)) and w.max() < (1 << (WORD_BITS - 1))
    a0, b0 = (np.array(before, np.int64)[:, n, None] for n in (0, 1))
    p0 = (a0 * FIELD + b0) % (1 << P_BITS)
    for a in INT8:
        p = wide_product(w, a)
        assert p.min() >= -(1 << (PRODUCT_BITS - 1)) and p.max() < (1 << (PRODUCT_BITS - 1))
        p1 = (p0 + p) % (1 << P_BITS)
        q = (b0 >> PACK_SHIFT) + wrap(p0 % FIELD, p1 % FIELD)
        hi, lo = drain(p1, q)
        assert np.array_equal(hi, a0 + b_hi * a) and np.array_equal(lo, b0 + b_lo * a)


@pytest.mark.parametrize("seed", range(3))
def test_packed_matmul_random(seed):
    rng = np.random.default_rng(seed)
    m, k, n = rng.integers(1, 20), rng.integers(1, 300), 2 * rng.integers(1, 10)
    a = rng.integers(-128, 128, (m, k), dtype=np.int8)
    b = rng.integers(-128, 128, (k, n), dtype=np.int8)
    assert np.array_equal(packed_matmul(a, b), a.astype(np.int64) @ b.astype(np.int64))


@pytest.mark.parametrize("av,blo,bhi", list(itertools.product((-128, 127), repeat=3)))
def test_packed_matmul_extremes_at_max_k(av, blo, bhi):
    """The longest accumulation int32 allows, every sign combination of the extremes (all -128: the
    counter at its top, 2^15 - 1)."""
    a = np.full((1, MAX_K), av, np.int8)
    b = np.empty((MAX_K, 2), np.int8)
    b[:, 0], b[:, 1] = blo, bhi
    assert np.array_equal(packed_matmul(a, b), [[av * blo * MAX_K, av * bhi * MAX_K]])


@pytest.mark.parametrize("av", (-128, 127))
def test_packed_matmul_alternating_signs_at_max_k(av):
    """b_lo alternating between the extremes: the lower sum crosses zero at every step for the first
    hundred or so (the field wraps down, up, down, ...) then drifts; b_hi alternating the other way."""
    a = np.full((1, MAX_K), av, np.int8)
    b = np.empty((MAX_K, 2), np.int8)
    b[:, 0] = np.where(np.arange(MAX_K) % 2, -128, 127)
    b[:, 1] = b[::-1, 0]
    assert np.array_equal(packed_matmul(a, b), a.astype(np.int64) @ b.astype(np.int64))


def test_packed_matmul_refuses():
    with pytest.raises(ValueError):
        packed_matmul(np.zeros((1, 2), np.int8), np.zeros((2, 3), np.int8))
    with pytest.raises(ValueError):
        packed_matmul(np.zeros((1, MAX_K + 1), np.int8), np.zeros((MAX_K + 1, 2), np.int8))
    with pytest.raises(TypeError):
        packed_matmul(np.zeros((1, 2)), np.zeros((2, 2), np.int8))
    assert Q_BITS == 16 and (MAX_K * 128 * 128) >> PACK_SHIFT < 1 << (Q_BITS - 1)


def run_packed(a, b, rows=1, cols=2, stall=0.0, seed=0):
    """Stream tiles [(a: rows x K, b: K x cols)] back to back through a packed rows x cols array (cols / 2
    PE pairs, a DSP each), with valid low on a `stall` fraction of the cycles inside each tile; returns
    each tile's rows x cols result. Values are fed as whole arrays per cycle."""
    dut = SystolicArray(rows, cols, packed=True)
    rng = np.random.default_rng(seed)
    schedule = []
    for x, y in zip(a, b):      # bubbles before a tile shorter than the drain allows (isa.array_tile_gap)
        schedule += [None] * (array_tile_gap(rows) - x.shape[1])
        for k in range(x.shape[1]):
            schedule += [None] * int(rng.geometric(1 - stall) - 1) + [(x, y, k)]
    got = []

    async def bench(ctx):
        shift_at, out_at = [], []
        for t in range(len(schedule) + 4 * rows + 2 * cols + 12):
            if t < len(schedule) and schedule[t] is not None:
                x, y, k = schedule[t]
                for i in range(rows):
                    ctx.set(dut.a[i], int(x[i, k]))
                for j in range(cols):
                    ctx.set(dut.b[j], int(y[k, j]))
                last = k == x.shape[1] - 1
                ctx.set(dut.valid, 1)
                ctx.set(dut.last, int(last))
                if last:
                    shift_at.append(t + rows + SystolicArray.EXTRA_LATENCY)
                    out_at.append(shift_at[-1] + dut.drain_latency)
            else:
                # Garbage on the data ports while valid is low: it must not reach the sums.
                for i in range(rows):
                    ctx.set(dut.a[i], -128)
                for j in range(cols):
                    ctx.set(dut.b[j], -128)
                ctx.set(dut.valid, 0)
                ctx.set(dut.last, t % 2)
            ctx.set(dut.shift, int(any(d <= t < d + rows for d in shift_at)))
            if any(d <= t < d + rows for d in out_at):
                got.append([ctx.get(dut.out[j]) for j in range(cols)])
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    run_amaranth(sim, "packed_pair")
    assert len(got) == rows * len(a)
    return [np.array(got[n * rows:(n + 1) * rows])[::-1] for n in range(len(a))]


def test_packed_pe_extremes_and_random():
    """Every sign combination of -128/127 on a, b_lo, b_hi (K = 5 each, back to back), tiles whose lower
    sum crosses zero at every step, then random tiles."""
    rng = np.random.default_rng(7)
    a, b = [], []
    for av, blo, bhi in itertools.product((-128, 127), repeat=3):
        a.append(np.full((2, 5), av, np.int8))
        b.append(np.array([[blo, bhi]] * 5, np.int8))
    for av in (-128, 127):
        a.append(np.full((2, 60), av, np.int8))
        b.append(np.array([[127, -128], [-128, 127]] * 30, np.int8))
    for k in (3, 1, 8, 40):
        a.append(rng.integers(-128, 128, (2, k), dtype=np.int8))
        b.append(rng.integers(-128, 128, (k, 2), dtype=np.int8))
    for (x, y), got in zip(zip(a, b), run_packed(a, b, rows=2)):
        assert np.array_equal(got, x.astype(np.int64) @ y.astype(np.int64))


def test_packed_array_stalls_back_to_back():
    """A 3 x 4 packed array (two pairs, two drain subtractors), valid low on 30 % of the cycles inside
    the tiles and garbage on the ports meanwhile, tiles back to back at the shortest K the drain allows,
    extremes and random."""
    rng = np.random.default_rng(3)
    rows, cols = 3, 4
    a, b = [], []
    for k in (array_tile_gap(rows), 1, 37, array_tile_gap(rows), 2, 90):
        a.append(rng.integers(-128, 128, (rows, k), dtype=np.int8))
        b.append(rng.integers(-128, 128, (k, cols), dtype=np.int8))
    a[0][:], b[0][:] = -128, -128
    a[3][:], b[3][:] = 127, -128
    b[5][:, 0::2] = np.where(np.arange(90) % 2, -128, 127)[:, None]
    for (x, y), got in zip(zip(a, b), run_packed(a, b, rows, cols, stall=0.3, seed=5)):
        assert np.array_equal(got, x.astype(np.int64) @ y.astype(np.int64))


@pytest.mark.slow
@pytest.mark.parametrize("av,blo,bhi", [(-128, -128, -128), (127, -128, 127)])
def test_packed_pe_max_k(av, blo, bhi):
    """MAX_K = 131071 products into one DSP's P: the int32 limit, the counter at its extremes."""
    a = [np.full((1, MAX_K), av, np.int8)]
    b = [np.array([[blo, bhi]] * MAX_K, np.int8)]
    got = run_packed(a, b)[0]
    assert np.array_equal(got, [[av * blo * MAX_K, av * bhi * MAX_K]])


def test_packed_pe_long_mixed_signs():
    """A 4,096-step accumulation (the longest tile the presets' scratchpads hold) with random
    signs that sit at the extremes: -128 or 127 everywhere."""
    rng = np.random.default_rng(11)
    k = 4096
    a = [rng.choice(np.array([-128, 127], np.int8), (1, k))]
    b = [rng.choice(np.array([-128, 127], np.int8), (k, 2))]
    got = run_packed(a, b)[0]
    assert np.array_equal(got, a[0].astype(np.int64) @ b[0].astype(np.int64))
