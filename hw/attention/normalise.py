"""Normaliser: O / l in fixed point (steps 6-7 of golden_model/intattn.py), lanes of output channels.

Per query row, the first item (`first`) starts a sequential restoring divider:
with e = bit_length(l) and ln = l << (32 - e) in [2^31, 2^32),
  r = 2^(e + RECIP_BITS - 1) // l = 2^48 // ln          (18 quotient bits, 18 cycles)
then every item of the row (C lanes of O) leaves as
  t = sat32((O * r + 2^(e-1)) >> e)                     (sh = e + RECIP_BITS - 1 - NORM_FRAC_BITS = e)
One division per query row; an item (C lanes of O) arrives as C / units transfers of `units` lanes
(transfer g carries lanes g x units ..), one per cycle straight into as many multipliers and shifters
(all C lanes at once by default, one on the small ECP5 preset): the attention engine's O memories
are `units` lanes wide, so nothing holds a whole item. The divider costs 18 cycles per row whatever
the key length.
"""
from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden_model.intattn import NORM_FRAC_BITS, O_BITS, RECIP_BITS, SUM_BITS

assert RECIP_BITS - 1 == NORM_FRAC_BITS, "the shift below assumes sh = e"
QUOT_BITS = RECIP_BITS + 1          # r in [2^16, 2^17]
NUM_SHIFT = SUM_BITS + RECIP_BITS - 1   # r = 2^NUM_SHIFT // ln


class Normaliser(wiring.Component):
    """`lanes` channels per item (output row); `units` multipliers (a divisor of lanes): an item is lanes / units
    transfers of `units` lanes, `first` on the first transfer of a query row, the item's tag on each."""

    def __init__(self, lanes: int, units: int | None = None):
        units = lanes if units is None else units
        if units < 1 or lanes % units:
            raise ValueError(f"normaliser: units={units} must divide lanes={lanes}")
        self.lanes, self.units = lanes, units
        self.in_layout = data.StructLayout({
            "o": data.ArrayLayout(signed(O_BITS), units),   # lane group g of the item: lanes g x units ..
            "l": unsigned(SUM_BITS),     # >= 1; read on `first`
            "first": unsigned(1),        # first transfer of a query row: compute its reciprocal
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
        out_valid = Signal()
        advance = ~out_valid | self.o.ready      # one enable for the lane pipeline (it holds when the output waits)
        take = Signal()                          # a transfer goes straight into the multipliers
        m.d.comb += [take.eq(self.i.valid & have_r & ~new_row & advance), self.i.ready.eq(take)]
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

        # ---- the lanes: an item's lane groups arrive in order, its last completes the output row.
        U = self.units
        groups = N // U
        grp = Signal(range(groups))
        last = grp == groups - 1
        with m.If(take):
            m.d.sync += grp.eq(Mux(last, 0, grp + 1))

        # stage 1: O and r registered (the multipliers' inputs: on ECP5 the O memories' block RAM outputs
        # and the row's select in front of the multiplier were the `ulx3s` preset's critical path, 46.3 MHz);
        # stage 2: the products; stage 3: plus half an LSB of the result; stage 4: the shift;
        # stage 5: saturation, shifted into the output row (lane 0 first, so it ends at the bottom).
        def stage(value, name, shape=None):
            reg = Signal(shape if shape is not None else value.shape(), name=name)
            with m.If(advance):
                m.d.sync += reg.eq(value)
            return reg

        # r and e travel with the item: a new row's division may overwrite them while the pipeline holds.
        v1, last1, tag1, e1 = stage(take, "v1"), stage(last, "last1"), stage(inp.tag, "tag1"), stage(e, "e1")
        v2, last2, tag2, e2 = stage(v1, "v2"), stage(last1, "last2"), stage(tag1, "tag2"), stage(e1, "e2")
        v3, last3, tag3, e3 = stage(v2, "v3"), stage(last2, "last3"), stage(tag2, "tag3"), stage(e2, "e3")
        v4, last4, tag4 = stage(v3, "v4"), stage(last3, "last4"), stage(tag3, "tag4")
        half = (Const(1, unsigned(SUM_BITS + 1)) << e1) >> 1
        # O r = O 2^16 + O (r - 2^16): r is in (2^16, 2^17], so r - 2^16 is r's low 16 bits with bit 16 = r[17]
        # (wires), 17 bits unsigned: O (r - 2^16) is 2 DSPs (41 x 18 signed), where O r (41 x 19) was 4.
        # O 2^16 + half is added beside the product, not after it: on ECP5 (no post-adder) the extra term
        # behind the multiplier was the `ulx3s` preset's critical path (O memory -> multiplier -> two carry
        # chains: 37.2 MHz at 40).
        r_lo = stage(Cat(r[:RECIP_BITS - 1], r[RECIP_BITS]), "r_lo1")
        lo, hi = -(1 << 31), (1 << 31) - 1
        sats = []
        for u in range(U):
            o = stage(inp.o[u], f"o{u}")
            prod = stage(o * r_lo, f"prod{u}", signed(O_BITS + RECIP_BITS + 1))
            o_half = stage((o << RECIP_BITS - 1) + half, f"o_half{u}", signed(O_BITS + RECIP_BITS))
            rounded = stage(prod + o_half, f"rounded{u}", signed(O_BITS + QUOT_BITS + 2))
            shifted = stage(rounded >> e3, f"shifted{u}", signed(O_BITS + QUOT_BITS + 2))
            sats.append(Mux(shifted > hi, hi, Mux(shifted < lo, lo, shifted))[:32])
        ts = Signal(data.ArrayLayout(signed(32), N))
        tag_out = Signal(16)
        with m.If(advance):
            m.d.sync += out_valid.eq(v4 & last4)
            with m.If(v4):
                m.d.sync += [ts.as_value().eq(Cat(ts.as_value()[32 * U:], *sats)), tag_out.eq(tag4)]
        m.d.comb += [self.o.valid.eq(out_valid), self.o.payload.tag.eq(tag_out), self.o.payload.t.eq(ts)]
        return m
