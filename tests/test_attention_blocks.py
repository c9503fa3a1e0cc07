"""Attention engine blocks in Amaranth's simulator against golden_model.intattn, with random stalls."""
import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from golden_model import intattn as A
from hw.attention.softmax import OnlineSoftmax
from sim.runner import run_amaranth


def run_stream(dut, items, set_inputs, read_outputs, n_out, stall=0.3, seed=0, name="blk"):
    """Drive dut.i with `items` (set_inputs(ctx, item)) and collect n_out outputs from dut.o."""
    got = []
    rng_in, rng_out = random.Random(seed), random.Random(seed + 1)

    async def producer(ctx):
        for item in items:
            while rng_in.random() < stall:
                await ctx.tick()
            set_inputs(ctx, item)
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)

    async def consumer(ctx):
        while len(got) < n_out:
            ready = rng_out.random() >= stall
            ctx.set(dut.o.ready, ready)
            await ctx.delay(1e-9)
            if ready and ctx.get(dut.o.valid):
                got.append(read_outputs(ctx))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    run_amaranth(sim, name)
    return got


def softmax_rows(rng, n, lanes, score_bits=22):
    rows = []
    for i in range(n):
        s = rng.integers(-2 ** score_bits, 2 ** score_bits + 1, lanes)
        if score_bits == 23 and i % 5 == 1:
            s[:2] = [-2 ** 23, 2 ** 23 - 1]                # the int24 score port's extremes
        if i % 7 == 0:
            s[:] = s[0]                                    # all scores equal
        if i % 11 == 0:
            s[rng.integers(lanes)] = min(2 ** score_bits, 2 ** 23 - 1)   # one dominant score
        count = int(rng.integers(1, lanes + 1)) if i % 3 else lanes
        m = A.M_INIT if i % 4 == 0 else int(rng.integers(-2 ** 20, 2 ** 20))
        l = 0 if m == A.M_INIT else int(rng.integers(1 << A.P_BITS, 1 << 30))
        rows.append((s, count, m, l, i))
    return rows


def softmax_golden(rows, mult, shift):
    out = []
    for s, count, m, l, tag in rows:
        x = A.scores_log2(s[:count], mult, shift)
        m_new = max(m, int(x.max()))
        p = np.zeros(len(s), np.int64)
        p[:count] = A.exp2fix(m_new - x)
        alpha = int(A.exp2fix(m_new - m))
        out.append((p.tolist(), alpha, m_new, int(A.rescale(l, alpha)) + int(p.sum()), tag))
    return out


@pytest.mark.parametrize("mult,shift,lanes,score_bits", [(40000, 24, 8, 22), (65535, 1, 8, 22), (1, 63, 8, 22),
                                                        (12345, 17, 5, 22), (777, 20, 16, 22),
                                                        # any int24 score (the port; |S| <= 2^22 from the
                                                        # array), shifts about the softmax's cap (40) and the
                                                        # two-step shift's boundary (16), saturation
                                                        (65535, 38, 4, 23), (65535, 39, 4, 23), (65535, 40, 4, 23),
                                                        (65535, 41, 4, 23), (65535, 63, 4, 23), (65535, 15, 4, 23),
                                                        (65535, 16, 4, 23), (65535, 2, 4, 23)])
def test_online_softmax_matches_golden(mult, shift, lanes, score_bits):
    dut = OnlineSoftmax(lanes)
    rows = softmax_rows(np.random.default_rng(mult + shift), 60, lanes, score_bits)

    def set_inputs(ctx, row):
        s, count, m, l, tag = row
        ctx.set(dut.score_mult, mult)
        ctx.set(dut.score_shift, shift)
        for j in range(lanes):
            ctx.set(dut.i.payload.scores[j], int(s[j]))
        ctx.set(dut.i.payload.count, count)
        ctx.set(dut.i.payload.m, m)
        ctx.set(dut.i.payload.l, l)
        ctx.set(dut.i.payload.tag, tag)

    def read_outputs(ctx):
        o = dut.o.payload
        return ([ctx.get(o.p[j]) for j in range(lanes)], ctx.get(o.alpha), ctx.get(o.m), ctx.get(o.l), ctx.get(o.tag))

    got = run_stream(dut, rows, set_inputs, read_outputs, len(rows), seed=shift, name="softmax")
    want = softmax_golden(rows, mult, shift)
    for g, w in zip(got, want):
        assert g == w, (g, w)


def test_exp2_table_with_two_bits_of_n_is_exp2fix():
    """The softmax's exp2 (hw/attention/softmax.py): U = EXP2_ROM[(n mod 4, f)], p = ((U >> 4 (n div 4)) + 1) >> 1,
    0 from n = P_BITS + 2 on, equals golden's exp2fix for every argument up to where it is 0 and past it."""
    from hw.attention.softmax import EXP2_ROM
    t = np.arange(1 << (A.FRAC_BITS + 6))
    n, low = t >> A.FRAC_BITS, t & ((1 << (A.FRAC_BITS + 2)) - 1)
    rom = np.array(EXP2_ROM)
    got = np.where(n < A.P_BITS + 2, ((rom[low] >> (4 * (n >> 2))) + 1) >> 1, 0)
    assert (got == A.exp2fix(t)).all()
    assert A.exp2fix(t)[(A.P_BITS + 2) * (1 << A.FRAC_BITS) - 1] == 0 and got[(A.P_BITS + 1) << A.FRAC_BITS] == 1


@pytest.mark.parametrize("units", [4, 2, 1])
def test_normaliser_matches_golden(units):
    """units: multipliers shared by the 4 lanes (4: one each)."""
    from hw.attention.normalise import Normaliser
    lanes = 4
    dut = Normaliser(lanes, units)
    rng = np.random.default_rng(2)
    items, want = [], []
    for row in range(12):
        l = [1 << A.P_BITS, (1 << 31), (1 << 32) - 1, (1 << A.P_BITS) + 1][row] if row < 4 else \
            int(rng.integers(1 << A.P_BITS, 1 << 31))
        chunks = int(rng.integers(1, 4))
        for c in range(chunks):
            o = rng.integers(-l * 128, l * 128 + 1, lanes)
            if row == 1:
                o[:] = [-(1 << 38), (1 << 38) - 1, 0, -1]
            for g in range(0, lanes, units):               # an item arrives as lanes / units transfers
                items.append((o[g:g + units], l, int(c == 0 and g == 0), row * 10 + c))
            want.append((A.normalise(o[None], np.array([l]))[0].tolist(), row * 10 + c))

    def set_inputs(ctx, item):
        o, l, first, tag = item
        for j in range(units):
            ctx.set(dut.i.payload.o[j], int(o[j]))
        ctx.set(dut.i.payload.l, l)
        ctx.set(dut.i.payload.first, first)
        ctx.set(dut.i.payload.tag, tag)

    def read_outputs(ctx):
        return ([ctx.get(dut.o.payload.t[j]) for j in range(lanes)], ctx.get(dut.o.payload.tag))

    got = run_stream(dut, items, set_inputs, read_outputs, len(want), seed=4, name="normaliser")
    assert got == want


def run_pv_array(rows, cols, preadd, lut_rows, tiles, entries, rng, name):
    """PVArray(rows, cols) fed tile t's channel c (tiles[t] = (p, v)) at cycle entries[t][c], its v_bank a
    cycle ahead, and random values on v between channels (out_valid must not see them). Bank t % 2 is loaded
    (the cycle before t's first channel at the latest) once tile t - 2's last channel has passed the last PE.
    Every row's result, channel and bank must leave i + C cycles after the channel entered (i + C + 1 in the
    last lut_rows rows: their product register), and out_valid be low at every other cycle."""
    from hw.attention.pv_array import PVArray
    load = [entries[t - 2][-1] + rows + cols - 1 if t >= 2 else 0 for t in range(len(tiles))]
    assert all(load[t] < entries[t][0] for t in range(len(tiles)))
    at = {e: (t, c) for t, es in enumerate(entries) for c, e in enumerate(es)}
    dut = PVArray(rows, cols, chan_bits=3, preadd=preadd, lut_rows=lut_rows)
    want, got = {}, {}
    for t, (p, v) in enumerate(tiles):
        for c, e in enumerate(entries[t]):
            for i in range(rows):
                want[(e + i + cols + (i >= rows - lut_rows), i)] = (int(p[i] @ v[:, c]), c, t % 2)

    async def bench(ctx):
        for cycle in range(entries[-1][-1] + rows + cols + 3):
            for t, (p, v) in enumerate(tiles):
                if cycle == load[t]:
                    for i in range(rows):
                        for j in range(cols):
                            ctx.set(dut.p[t % 2][i][j], int(p[i, j]))
            if cycle in at:
                t, c = at[cycle]
                for j in range(cols):
                    ctx.set(dut.v[j], int(tiles[t][1][j, c]))
                ctx.set(dut.v_chan, c)
            else:
                for j in range(cols):
                    ctx.set(dut.v[j], int(rng.integers(-128, 128)))
            if cycle + 1 in at:
                ctx.set(dut.v_bank, at[cycle + 1][0] % 2)              # the next cycle's channel's bank
            ctx.set(dut.v_valid, int(cycle in at))
            for i in range(rows):
                if ctx.get(dut.out_valid[i]):
                    got[(cycle, i)] = (ctx.get(dut.out[i]), ctx.get(dut.out_chan[i]), ctx.get(dut.out_bank[i]))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    run_amaranth(sim, name)
    assert got == want


@pytest.mark.parametrize("rows,cols,preadd,lut_rows", [(3, 5, True, 0), (2, 8, True, 0), (3, 5, False, 0),
                                                       (3, 5, True, 1), (3, 5, False, 3)])
def test_pv_array_matches_dot_products(rows, cols, preadd, lut_rows):
    """PVArray alone, its banks picked by the pre-adder's two reset registers or by a multiplexer, its last
    lut_rows rows multiplying in the fabric: tiles back to back (a bank switch between them) and after bubbles,
    p at its port's extremes (2^17 - 1, beyond softmax's 2^16: the narrowed partial sums must hold it) with
    v = -128 and 127, then random (run_pv_array)."""
    from hw.attention.pv_array import PROB
    rng = np.random.default_rng(rows * 10 + cols)
    pmax = (1 << PROB.width) - 1
    ds = [3, 1, 4, 2, 5, 1]
    tiles = [(rng.integers(0, pmax + 1, (rows, cols)), rng.integers(-128, 128, (cols, d))) for d in ds]
    tiles[0][0][:], tiles[0][1][:] = pmax, -128            # the most negative sums
    tiles[1][0][:], tiles[1][1][:] = pmax, 127             # the most positive
    tiles[2][0][:, ::2] = 0                                # zero probabilities among extremes
    tiles[2][1][::3] = -128
    # Each tile right after the previous one (tile 3 after 2 bubbles), and not before the cycle after its
    # bank can be loaded.
    entries = []
    for t, d in enumerate(ds):
        first = entries[-1][-1] + 1 + 2 * (t == 3) if entries else 1
        if t >= 2:
            first = max(first, entries[t - 2][-1] + rows + cols)
        entries.append(list(range(first, first + d)))
    assert entries[1][0] == entries[0][-1] + 1 and entries[2][0] == entries[0][-1] + rows + cols  # just in time
    run_pv_array(rows, cols, preadd, lut_rows, tiles, entries, rng,
                 f"pv_array_{rows}x{cols}{'' if preadd else '_mux'}{f'_lut{lut_rows}' if lut_rows else ''}")


@pytest.mark.parametrize("rows,cols,preadd,lut_rows", [(4, 4, True, 2), (3, 8, False, 1)])
def test_pv_array_lut_rows_long_run(rows, cols, preadd, lut_rows):
    """A long run with LUT rows: 24 tiles of 1..8 channels, gaps (v_valid low, v random) inside tiles and
    between them, p and v drawn from their extremes (0, 2^17 - 1; -128, 127) as often as at random."""
    from hw.attention.pv_array import PROB
    rng = np.random.default_rng(rows * 100 + cols)
    pmax = (1 << PROB.width) - 1

    def draw(lo, hi, shape):
        x = rng.integers(lo, hi + 1, shape)
        return np.where(rng.random(shape) < 0.5, rng.choice([lo, hi], shape), x)

    tiles, entries, e = [], [], 1
    for t in range(24):
        d = int(rng.integers(1, 9))
        tiles.append((draw(0, pmax, (rows, cols)), draw(-128, 127, (cols, d))))
        if t >= 2:
            e = max(e, entries[t - 2][-1] + rows + cols)
        es = []
        for _ in range(d):
            es.append(e)
            e += 1 + int(rng.integers(0, 3) if rng.random() < 0.3 else 0)
        entries.append(es)
        e += int(rng.integers(0, 3))
    run_pv_array(rows, cols, preadd, lut_rows, tiles, entries, rng, f"pv_array_long_{rows}x{cols}_lut{lut_rows}")
