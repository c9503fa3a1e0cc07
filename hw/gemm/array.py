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
  * The results leave through a separate shadow-register chain (one `out`
    register per PE, shifted down a column per cycle) while the next tile already
    accumulates. Each column drains as soon as its own last PE has finished (column j
    j cycles after column 0, following the wavefront), so back-to-back tiles need only
    K >= 2R - 1 (`isa.array_tile_gap`): short reductions (a 3x3 convolution of one
    channel is K = 9) keep the array busy too.
Weight-stationary would need one accumulator write per output per K-slice of R
(an accumulator scratchpad port per column every cycle) and a weight preload per
tile: more memory traffic for the same MACs.

`valid` and `last` travel with A along the rows. On `last` a PE moves its sum
(including this cycle's product) into `out` and restarts from zero, so tiles can
follow each other with no gap in the stream. `shift` drains column 0: it moves its
`out` registers down by one; column j does the same j cycles later. `out` is the
bottom row de-skewed (column j delayed C-1-j cycles), so the row column 0 showed when
`shift` was high appears, whole, `drain_latency` = C - 1 cycles later: rows R-1,
R-2, ... 0 for R consecutive shift cycles. The caller times `shift` (GemmCompute; the
array never stalls, so this is pure timing): a column's drain starts after its last
PE's write and ends no later than the next tile's first write into that column.

Four registers beyond the skew, for timing (`EXTRA_LATENCY`): the edge inputs are
registered once (the scratchpads' outputs go straight to flip-flops), and each PE's
multiplier has registers of its own on its inputs, its product and its output (a DSP
block's AREG/BREG, MREG and PREG), so the multiplier, the wires into and out of the DSP
column and the accumulator's adder each get a cycle.
"""
from amaranth import Cat, Module, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from golden_model.dsp_packing import PACK_SHIFT, PRODUCT_BITS, WORD_BITS
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
    DSP block, golden_model/dsp_packing.py). The pair works at the odd column's time: the even
    column's b enters one cycle later and its results drain one cycle later and de-skew one cycle
    shorter, so the ports and their timing are those of the unpacked array."""
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
        # Column j drains j cycles after column 0, as its PEs finish j cycles later.
        shift = [delayed(self.shift, j + late[j], f"shift{j}") for j in range(C)]
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
                # so they can sit in the DSP: AREG/BREG), the product (MREG) and its output (PREG);
                # valid/last kept in step. Every path into or out of a DSP starts or ends at a register.
                a_d, b_d = Signal.like(a_in, name=f"adsp_{i}_{j0}"), Signal.like(b_in, name=f"bdsp_{i}_{j0}")
                m.d.sync += [a_d.eq(a_in), b_d.eq(b_in)]
                v_p, l_p = delayed(v_in, 3, f"vp_{i}_{j0}"), delayed(l_in, 3, f"lp_{i}_{j0}")
                width = signed(PRODUCT_BITS if self.packed else 16)
                prod, p = Signal(width, name=f"prod_{i}_{j0}"), Signal(width, name=f"p_{i}_{j0}")
                m.d.sync += [prod.eq(b_d * a_d), p.eq(prod)]
                if self.packed:
                    # The two fields (golden_model.dsp_packing.split); the correction bit p[15] joins the
                    # upper sum (yosys makes it the accumulator's carry-in, not an adder of its own).
                    terms = [p[:PACK_SHIFT].as_signed(), p[PACK_SHIFT:].as_signed() + p[PACK_SHIFT - 1]]
                else:
                    terms = [p]
                for j, x in zip(range(j0, j1), terms):
                    self._accumulate(m, i, j, x, v_p, l_p, shift[j], out)
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
        for j in range(C):
            m.d.comb += self.out[j].eq(delayed(out[R - 1][j], C - 1 - j - late[j], f"deskew{j}"))
        return m

    @staticmethod
    def _accumulate(m, i, j, x, v_p, l_p, shift, out):
        """PE (i, j)'s accumulator and `out` register: on `last` the sum (this product included)
        moves to `out` and the accumulator restarts; `shift` moves `out` one row down."""
        acc = Signal(ACC, name=f"acc_{i}_{j}")
        total = acc + x
        with m.If(shift):
            m.d.sync += out[i][j].eq(out[i - 1][j] if i else 0)
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
