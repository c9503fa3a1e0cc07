"""Output-stationary R x C systolic array of int8 x int8 -> int32 multiply-accumulate cells.

Dataflow (why output-stationary): every processing element (PE) owns one output
C[i, j] and accumulates it over the whole K of a tile without ever leaving the PE.
  * K can be as long as the scratchpads (4096 and more) with no accumulator
    traffic: each PE does exactly one MAC per cycle, so utilisation is set only by
    how fast operands arrive, not by partial-sum read-modify-write.
  * Both operands stream: A's rows enter from the left (row i delayed by i
    cycles), B's columns from the top (column j delayed by j), so PE(i, j) sees
    a[i, k] and b[k, j] together at cycle k + i + j. Reuse of A across N-tiles and
    of B across M-tiles is the scratchpads' job, which the host compiler schedules.
  * The results leave through a separate shadow register per PE (`out`, written when its
    PE finishes a tile) while the next tile already accumulates. Each column drains as soon
    as its own last PE has finished (column j j cycles after column 0, following the
    wavefront), so back-to-back tiles need only K >= 2R - 1 (`isa.array_tile_gap`): short
    reductions (a 3x3 convolution of one channel is K = 9) keep the array busy too.
Weight-stationary would need one accumulator write per output per K-slice of R
(an accumulator scratchpad port per column every cycle) and a weight preload per
tile: more memory traffic for the same MACs.

`valid` and `last` travel with A along the rows. On `last` a PE moves its sum
(including this cycle's product) into `out` and restarts from zero, so tiles can
follow each other with no gap in the stream. `shift` drains column 0: over R shift cycles
it shows rows R-1, R-2, ... 0; column j does the same j cycles later. `out` is the
columns de-skewed (column j delayed C-1-j cycles), so the row column 0 showed when
`shift` was high appears, whole, `drain_latency` = C - 1 cycles later. The caller times
`shift` (GemmCompute; the array never stalls, so this is pure timing): a column's drain
starts after its last PE's write and ends no later than the next tile's first write into
that column.

How a column drains (not a shift chain): each column reads its R `out` registers through one
R:1 multiplexer whose select is a row counter (shift cycles, mod R) handed from column to column
through registers. `out` is then a flip-flop with an enable (written on restart only) and the
multiplexer is one per column instead of a 32-bit 3:1 multiplexer (shift, restart, hold) in
every PE. The rows leave in the order and at the cycles the shift chain gave them, and the
drain-before-overwrite contract holds for the same K >= 2R - 1: let `last` enter at cycle s and
column 0's drain start at t0 >= s + R + 4 (= s + R + EXTRA_LATENCY, GemmCompute's timing).
PE (i, j)'s `out` (j: a packed pair's odd column) takes the tile's sum at cycle s + i + j + 5
and is read at drain cycle R-1-i, cycle t0 + j + R - 1 - i >= s + 2R + 3 + j - i: after the
write, as i <= R - 1. The next tile's `last` comes at s' >= s + 2R - 1, so its write into that
`out` lands at s' + i + j + 5 >= s + 2R + 4 + i + j, after the read (at t0 = s + R + 4) by
2i + 1 cycles: row 0, read last and written first, sets the gap, as in the chain, where the
whole drain had to end before row 0's next write.

Four registers beyond the skew, for timing (`EXTRA_LATENCY`): the edge inputs are
registered once (the scratchpads' outputs go straight to flip-flops), and each PE's
multiplier has registers of its own on its inputs, its product and its output (a DSP
block's AREG/BREG, MREG and PREG), so the multiplier and the wires into and out of the DSP
column each get a cycle; `out` takes the tile's sum the cycle after PREG.

`packed` (the Zynq presets): PREG is the accumulator. The DSP's post-adder adds each product
into it (P <- P + product; a tile's first product loads P through OPMODE's Z multiplexer), so
the fabric keeps no adder per PE, and a pair keeps both sums in one 48-bit P: the fabric counts
the lower field's wraps (16 bits a pair) and the drain subtracts the count from the upper sum
after each column pair's multiplexer, one 32-bit subtractor a column pair
(`_accumulate_packed`; golden_model/dsp_packing.py: why that is exact up to intops.MAX_K).
Unpacked (the ECP5 presets): PREG feeds a 32-bit accumulator in the fabric (`_accumulate`).
"""
from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from golden_model.dsp_packing import P_BITS, PACK_SHIFT, PRODUCT_BITS, Q_BITS, WORD_BITS
from golden_model.intops import ACC_BITS
from hw import isa

INT8 = signed(8)
ACC = signed(ACC_BITS)


def delay_line(m: Module, sig, n: int, name: str):
    """`sig` through n registers in m's sync domain (the skews that line a systolic wavefront up)."""
    for t in range(n):
        r = Signal.like(sig, name=f"{name}_d{t + 1}")
        m.d.sync += r.eq(sig)
        sig = r
    return sig


class SystolicArray(wiring.Component):
    """`packed`: columns 2q and 2q+1 form a PE pair that shares one multiplier (two int8 MACs per
    DSP block and one 48-bit accumulator P, golden_model/dsp_packing.py). The pair works at the odd
    column's time: the even column's b enters one cycle later and its results drain one cycle later
    and de-skew one cycle shorter (so both of a pair's columns drain at the same cycles, through the
    pair's subtractor), and the ports and their timing are those of the unpacked array."""
    #: Cycles beyond the skew from an input to its PE's `out` write.
    EXTRA_LATENCY = isa.ARRAY_EXTRA_LATENCY

    def __init__(self, rows: int, cols: int, packed: bool = False):
        if packed and cols % 2:
            raise ValueError(f"a packed array pairs columns: cols={cols} must be even")
        self.rows, self.cols, self.packed = rows, cols, packed
        #: Cycles from column 0's `shift` to its row on the de-skewed `out`.
        self.drain_latency = cols - 1
        super().__init__({
            "a": In(data.ArrayLayout(INT8, rows)),
            "b": In(data.ArrayLayout(INT8, cols)),
            "valid": In(1),
            "last": In(1),
            "shift": In(1),
            "out": Out(data.ArrayLayout(ACC, cols)),
        })

    def elaborate(self, platform):
        m = Module()
        R, C = self.rows, self.cols

        def delayed(sig, n, name):
            return delay_line(m, sig, n, name)

        # The time column j works at, relative to the unpacked array (a pair at its odd column's).
        late = [int(self.packed and j % 2 == 0) for j in range(C)]
        # Skewed inputs at the array's edges, plus the one input register.
        a_edge = [delayed(self.a[i], i + 1 + int(self.packed), f"a{i}") for i in range(R)]
        v_edge = [delayed(self.valid, i + 1 + int(self.packed), f"v{i}") for i in range(R)]
        l_edge = [delayed(self.last, i + 1 + int(self.packed), f"l{i}") for i in range(R)]

        out = [[Signal(ACC, name=f"out_{i}_{j}") for j in range(C)] for i in range(R)]
        # Column 0's row counter: shift cycles, mod R (drain cycle d reads row R-1-d). Column j
        # drains j cycles after column 0, as its PEs finish j cycles later: its select is the
        # counter j cycles late (registers only; a packed pair's even column one more).
        drain_row = Signal(range(R), name="drain_row")
        with m.If(self.shift):
            m.d.sync += drain_row.eq(Mux(drain_row == R - 1, 0, drain_row + 1))
        taps = [drain_row]                                # one chain, tapped by every column
        for t in range(1, C):
            taps.append(delayed(taps[-1], 1, f"drain_row{t}"))
        select = [taps[j + late[j]] for j in range(C)]
        if self.packed:
            # Pair q's packed weight word, made from the edge registers and registered once more
            # (b_edge of pair q is delayed 2q + 2, the same as the odd column's in the unpacked array).
            words = []
            for q in range(C // 2):
                lo, hi = delayed(self.b[2 * q], 2 * q + 1, f"blo{q}"), delayed(self.b[2 * q + 1], 2 * q + 1, f"bhi{q}")
                w = Signal(signed(WORD_BITS), name=f"w_edge{q}")
                m.d.sync += w.eq((hi << PACK_SHIFT) + lo)
                words.append(w)
            b_from_above = words
            groups = [(2 * q, 2 * q + 2) for q in range(C // 2)]
        else:
            b_from_above = [delayed(self.b[j], j + 1, f"b{j}") for j in range(C)]
            groups = [(j, j + 1) for j in range(C)]
        for i in range(R):
            a_in, v_in, l_in = a_edge[i], v_edge[i], l_edge[i]
            b_below = []
            for g, (j0, j1) in enumerate(groups):
                b_in = b_from_above[g]
                # The DSP block's three registers: its inputs (flip-flops that feed only the multiplier,
                # so they can sit in the DSP: AREG/BREG), the product (MREG) and its output (PREG:
                # packed, the accumulator itself; unpacked, the fabric accumulator's input); valid/last
                # kept in step. Every path into or out of a DSP starts or ends at a register.
                a_d, b_d = Signal.like(a_in, name=f"adsp_{i}_{j0}"), Signal.like(b_in, name=f"bdsp_{i}_{j0}")
                m.d.sync += [a_d.eq(a_in), b_d.eq(b_in)]
                v_m, l_m = delayed(v_in, 2, f"vm_{i}_{j0}"), delayed(l_in, 2, f"lm_{i}_{j0}")
                prod = Signal(signed(PRODUCT_BITS if self.packed else 16), name=f"prod_{i}_{j0}")  # MREG
                m.d.sync += prod.eq(b_d * a_d)
                if self.packed:
                    self._accumulate_packed(m, i, j0, prod, v_m, l_m, out)
                else:
                    p = Signal.like(prod, name=f"p_{i}_{j0}")
                    m.d.sync += p.eq(prod)
                    v_p, l_p = delayed(v_m, 1, f"vp_{i}_{j0}"), delayed(l_m, 1, f"lp_{i}_{j0}")
                    self._accumulate(m, i, j0, p, v_p, l_p, out)
                # Forward operands to the right and downwards (not past the edges); a pair's a takes
                # two registers, as two PEs' would.
                if j1 < C:
                    for t in range(j1 - j0):
                        a_r, v_r, l_r = (Signal.like(a_in, name=f"a_{i}_{j0 + t}"),
                                         Signal(name=f"v_{i}_{j0 + t}"), Signal(name=f"l_{i}_{j0 + t}"))
                        m.d.sync += [a_r.eq(a_in), v_r.eq(v_in), l_r.eq(l_in)]
                        a_in, v_in, l_in = a_r, v_r, l_r
                if i + 1 < R:
                    b_r = Signal.like(b_in, name=f"b_{i}_{j0}")
                    m.d.sync += b_r.eq(b_in)
                    b_below.append(b_r)
            b_from_above = b_below
        bottom = [Signal(ACC, name=f"drain_{j}") for j in range(C)]   # what the chain's bottom register held
        for j in range(C):
            with m.Switch(select[j]):
                for d in range(R):
                    with m.Case(d):
                        m.d.comb += bottom[j].eq(out[R - 1 - d][j])
        drained = bottom
        if self.packed:
            # A pair's upper sum is its `out` minus the wrap counter, the lower `out`'s top half (both
            # columns of a pair drain at the same cycles): one subtractor a column pair, mod 2^32.
            drained = list(bottom)
            for j in range(1, C, 2):
                drained[j] = Signal(ACC, name=f"drain_hi{j}")
                m.d.comb += drained[j].eq(bottom[j] - bottom[j - 1][PACK_SHIFT:].as_signed())
        for j in range(C):
            m.d.comb += self.out[j].eq(delayed(drained[j], C - 1 - j - late[j], f"deskew{j}"))
        return m

    @staticmethod
    def _accumulate(m, i, j, x, v_p, l_p, out):
        """The unpacked PE (i, j)'s accumulator, in the fabric, and its `out` register: on `last` the sum
        (this product included) moves to `out` (its only write: a flip-flop enable) and the accumulator
        restarts. The unpacked array is the ECP5 presets' (the Zynq presets pack): yosys maps no
        post-adder into ECP5's multipliers, and there the restart as the flip-flops' own synchronous
        reset is free where `_accumulate_packed`'s Z multiplexer would be a LUT a bit."""
        acc = Signal(ACC, name=f"acc_{i}_{j}")
        total = acc + x
        restart = Signal(name=f"restart_{i}_{j}")
        m.d.comb += restart.eq(v_p & l_p)
        with m.If(restart):
            m.d.sync += out[i][j].eq(total)
        # The restart written as a reset over the enable: a flip-flop's own synchronous reset
        # (FDRE R), not a LUT per bit.
        with m.If(restart):
            m.d.sync += acc.eq(0)
        with m.Elif(v_p):
            m.d.sync += acc.eq(total)

    @staticmethod
    def _accumulate_packed(m, i, j, prod, v_m, l_m, out):
        """PE pair (i, j)'s (j, j + 1) accumulator, in the DSP block, and its two `out` registers.

        The DSP's post-adder and P register: P <- P + prod on valid (CEP), P <- prod on a tile's first
        product (`fresh`: OPMODE's Z multiplexer selects 0 instead of P), so no adder is left in the
        fabric (yosys xilinx_dsp's postAdd and postAddMux patterns; Vivado's multiply-accumulate with a
        synchronous load, UG901). The cycle after the tile's last product P holds the sums and `out`
        takes them (its only write: a flip-flop enable), the cycle the fabric accumulators' sums came.
        P is both sums in one 48-bit word: the fabric keeps the lower field's wrap counter q, and `out`
        holds B = (q, P[:16]) and P[16:48] = A + q mod 2^32; the drain subtracts q
        (golden_model/dsp_packing.py: why this is exact)."""
        p_reg = Signal(signed(P_BITS), name=f"p_{i}_{j}")
        fresh = Signal(init=1, name=f"fresh_{i}_{j}")     # the next valid product starts a tile
        with m.If(v_m):
            m.d.sync += [p_reg.eq(Mux(fresh, 0, p_reg) + prod), fresh.eq(l_m)]
        v_p, l_p = delay_line(m, v_m, 1, f"vp_{i}_{j}"), delay_line(m, l_m, 1, f"lp_{i}_{j}")
        restart = Signal(name=f"restart_{i}_{j}")
        m.d.comb += restart.eq(v_p & l_p)
        # The lower field's top two bits before P's last update (00 before a tile's first product; a
        # reset over the enable: the flip-flops' own), against now: the wrap (dsp_packing.wrap).
        top = p_reg[PACK_SHIFT - 2:PACK_SHIFT]
        before = Signal(2, name=f"top_{i}_{j}")
        with m.If(v_m & fresh):
            m.d.sync += before.eq(0)
        with m.Elif(v_m):
            m.d.sync += before.eq(top)
        up, down = (before == 3) & (top == 0), (before == 0) & (top == 3)
        q, q_next = Signal(signed(Q_BITS), name=f"q_{i}_{j}"), Signal(signed(Q_BITS), name=f"qn_{i}_{j}")
        m.d.comb += q_next.eq(q + Cat(up | down, down.replicate(Q_BITS - 1)).as_signed())
        with m.If(restart):
            m.d.sync += [q.eq(0), out[i][j].eq(Cat(p_reg[:PACK_SHIFT], q_next)),
                         out[i][j + 1].eq(p_reg[PACK_SHIFT:PACK_SHIFT + ACC_BITS])]
        with m.Elif(v_p):
            m.d.sync += q.eq(q_next)
