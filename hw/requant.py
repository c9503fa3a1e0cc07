"""Requantiser: int32 accumulator -> int8, the output stage of every engine.

Implements `golden_model.intops.requantize` bit for bit. A stream in, a stream
out, six pipeline stages (partial products, their sum,
rounding, shift, relu+saturate), each short enough for 100 MHz on ECP5; the whole
pipeline stalls when the output is not taken, so no data is ever dropped.
"""
from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden_model.intops import ACC_BITS, MULT_BITS, OUT_BITS, SHIFT_BITS

PRODUCT_BITS = ACC_BITS + MULT_BITS + 1   # signed acc x unsigned m, plus the rounding carry


class RequantIn(data.Struct):
    """One accumulator and its per-channel requantisation parameters."""
    acc: signed(ACC_BITS)
    multiplier: unsigned(MULT_BITS)
    shift: unsigned(SHIFT_BITS)


#: Multipliers (18 x 18 DSP blocks) one Requantizer maps to: stage 1's four partial products.
DSPS = 4


class Requantizer(wiring.Component):
    """Streams of `RequantIn` in, int8 out.

    `relu` is a configuration input: hold it stable while data flows.
    """

    i: In(stream.Signature(RequantIn))
    o: Out(stream.Signature(signed(OUT_BITS)))
    relu: In(1)

    LATENCY = 6

    def elaborate(self, platform):
        m = Module()

        # One enable for the whole pipeline: it moves when its last stage is
        # empty or being taken.
        advance = Signal()
        valid = Signal(self.LATENCY)
        m.d.comb += [
            advance.eq(~self.o.valid | self.o.ready),
            self.i.ready.eq(advance),
            self.o.valid.eq(valid[-1]),
        ]
        with m.If(advance):
            m.d.sync += valid.eq(Cat(self.i.valid, valid[:-1]))

        acc, mult, shift = self.i.payload.acc, self.i.payload.multiplier, self.i.payload.shift
        # Stage 1: four 16-bit partial products (each fits one 18x18 DSP).
        a_lo, a_hi = acc.as_unsigned()[:16], acc[16:].as_signed()
        m_lo, m_hi = mult[:16], mult[16:]
        p_ll = Signal(32)
        p_lh = Signal(signed(33))
        p_hl = Signal(signed(33))
        p_hh = Signal(signed(32))
        # Stage 2: the cross terms summed; the outer terms are one concatenation.
        cross = Signal(signed(34))
        outer = Signal(signed(PRODUCT_BITS))
        # Stage 3: the product, and half an LSB of the result: 2**(s-1), 0 for s=0.
        product = Signal(signed(PRODUCT_BITS))
        rounding = Signal(PRODUCT_BITS - 1)
        # Stage 4: plus the rounding; stage 5: the arithmetic shift.
        rounded = Signal(signed(PRODUCT_BITS))
        shifted = Signal(signed(PRODUCT_BITS))
        # Stage 6: relu and saturation to int8.
        out = Signal(signed(OUT_BITS))
        shifts = [Signal(SHIFT_BITS, name=f"shift{i}") for i in range(1, 5)]

        lo, hi = -(1 << (OUT_BITS - 1)), (1 << (OUT_BITS - 1)) - 1
        relued = Mux(self.relu & (shifted < 0), 0, shifted)
        with m.If(advance):
            m.d.sync += [
                p_ll.eq(a_lo * m_lo),
                p_lh.eq(a_lo * m_hi),
                p_hl.eq(a_hi * m_lo),
                p_hh.eq(a_hi * m_hi),
                rounding.eq((Const(1, PRODUCT_BITS) << shifts[1]) >> 1),
                Cat(*shifts).eq(Cat(shift, *shifts[:-1])),
                cross.eq(p_lh + p_hl),
                outer.eq(Cat(p_ll, p_hh).as_signed()),
                product.eq(outer + (cross << 16)),
                rounded.eq(product + rounding),
                shifted.eq(rounded >> shifts[-1]),
                out.eq(Mux(relued > hi, hi, Mux(relued < lo, lo, relued))),
            ]
        m.d.comb += self.o.payload.eq(out)
        return m
