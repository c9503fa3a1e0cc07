"""Normaliser: O / l in fixed point (steps 6-7 of golden_model/intattn.py), lanes of output channels.

Per query row, the first item (`first`) starts a sequential restoring divider:
with e = bit_length(l) and ln = l << (32 - e) in [2^31, 2^32),
  r = 2^(e + RECIP_BITS - 1) // l = 2^48 // ln          (18 quotient bits, 18 cycles)
then every item of the row (C lanes of O) leaves as
  t = sat32((O * r + 2^(e-1)) >> e)                     (sh = e + RECIP_BITS - 1 - NORM_FRAC_BITS = e)
One division per query row (d / C items per row follow at one per cycle), so the
divider costs 18 cycles per row whatever the key length.
"""
from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden_model.intattn import NORM_FRAC_BITS, O_BITS, RECIP_BITS, SUM_BITS

assert RECIP_BITS - 1 == NORM_FRAC_BITS, "the shift below assumes sh = e"
QUOT_BITS = RECIP_BITS + 1          # r in [2^16, 2^17]
NUM_SHIFT = SUM_BITS + RECIP_BITS - 1   # r = 2^NUM_SHIFT // ln


class Normaliser(wiring.Component):
    def __init__(self, lanes: int):
        self.lanes = lanes
        self.in_layout = data.StructLayout({
            "o": data.ArrayLayout(signed(O_BITS), lanes),
            "l": unsigned(SUM_BITS),     # >= 1; read on `first`
            "first": unsigned(1),        # first item of a query row: compute its reciprocal
            "tag": unsigned(16),
        })
        self.out_layout = data.StructLayout({"t": data.ArrayLayout(signed(32), lanes), "tag": unsigned(16)})
        super().__init__({
            "i": In(stream.Signature(self.in_layout)),
            "o": Out(stream.Signature(self.out_layout)),
        })

    def elaborate(self, platform):
        m = Module()
        N = self.lanes
        inp = self.i.payload

        # ---- reciprocal: leading-one position, then restoring division.
        e = Signal(range(SUM_BITS + 1))          # bit_length(l) of the current row
        r = Signal(QUOT_BITS)
        have_r = Signal()                        # r and e belong to the row being streamed
        dividing = Signal()
        rem = Signal(SUM_BITS + 1)
        den = Signal(SUM_BITS)
        step = Signal(range(QUOT_BITS + 1))
        e_in = Signal(range(SUM_BITS + 1))
        for b in range(SUM_BITS):
            with m.If(inp.l[b]):
                m.d.comb += e_in.eq(b + 1)
        lead = Signal(range(SUM_BITS + 1))       # left shift that puts l's leading one at bit 31
        m.d.comb += lead.eq(SUM_BITS - e_in)
        # A row's first item needs a new reciprocal unless it is the one r was computed for.
        accepted_any = Signal()                  # an item was taken since r was computed
        new_row = self.i.valid & inp.first & (~have_r | accepted_any)
        s1_free = Signal()
        take = Signal()
        m.d.comb += [take.eq(self.i.valid & have_r & ~new_row & s1_free), self.i.ready.eq(take)]
        with m.If(take):
            m.d.sync += accepted_any.eq(1)
        with m.If(new_row & have_r):
            m.d.sync += have_r.eq(0)             # the previous row is done: divide again next cycle
        with m.If(new_row & ~have_r & ~dividing):
            m.d.sync += [dividing.eq(1), e.eq(e_in), den.eq(inp.l << lead),
                         rem.eq(1 << (NUM_SHIFT - QUOT_BITS)), r.eq(0), step.eq(0), accepted_any.eq(0)]
        with m.If(dividing):
            trial = Signal(SUM_BITS + 2)
            m.d.comb += trial.eq(rem << 1)       # the numerator's low bits are all zero
            ge = trial >= den
            m.d.sync += [rem.eq(Mux(ge, trial - den, trial)), r.eq(Cat(ge, r[:-1])), step.eq(step + 1)]
            with m.If(step == QUOT_BITS - 1):
                m.d.sync += [dividing.eq(0), have_r.eq(1)]

        # ---- stage 1: products; stage 2: rounded shift and saturation.
        s1_valid, s2_valid = Signal(), Signal()
        advance2 = ~s2_valid | self.o.ready
        advance1 = ~s1_valid | advance2
        m.d.comb += s1_free.eq(advance1)
        prods = [Signal(signed(O_BITS + QUOT_BITS + 1), name=f"prod{j}") for j in range(N)]
        e1, tag1 = Signal.like(e), Signal(16)
        with m.If(advance1):
            m.d.sync += [s1_valid.eq(take), e1.eq(e), tag1.eq(inp.tag)]
            for j in range(N):
                m.d.sync += prods[j].eq(inp.o[j] * r)
        lo, hi = -(1 << 31), (1 << 31) - 1
        ts = [Signal(signed(32), name=f"t{j}") for j in range(N)]
        tag2 = Signal(16)
        half = (Const(1, unsigned(SUM_BITS + 1)) << e1) >> 1
        with m.If(advance2):
            m.d.sync += [s2_valid.eq(s1_valid), tag2.eq(tag1)]
            for j in range(N):
                t = (prods[j] + half) >> e1
                m.d.sync += ts[j].eq(Mux(t > hi, hi, Mux(t < lo, lo, t)))
        m.d.comb += [self.o.valid.eq(s2_valid), self.o.payload.tag.eq(tag2)]
        for j in range(N):
            m.d.comb += self.o.payload.t[j].eq(ts[j])
        return m
