"""Requantiser: int32 accumulator -> int8, the output stage of every engine.

Implements `golden_model.intops.requantize` bit for bit. A stream in, a stream
out, three pipeline stages (multiply, round+shift, relu+saturate); the whole
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


class Requantizer(wiring.Component):
    """Streams of `RequantIn` in, int8 out.

    `relu` is a configuration input: hold it stable while data flows.
    """

    i: In(stream.Signature(RequantIn))
    o: Out(stream.Signature(signed(OUT_BITS)))
    relu: In(1)

    LATENCY = 3

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

        # Stage 1: the full-width product.
        product = Signal(signed(PRODUCT_BITS))
        shift1 = Signal(SHIFT_BITS)
        # Stage 2: add half an LSB of the result, then the arithmetic shift.
        shifted = Signal(signed(PRODUCT_BITS))
        # Stage 3: relu and saturation to int8.
        out = Signal(signed(OUT_BITS))

        lo, hi = -(1 << (OUT_BITS - 1)), (1 << (OUT_BITS - 1)) - 1
        rounding = (Const(1, PRODUCT_BITS + 1) << shift1) >> 1   # 2**(s-1), or 0 for s=0
        relued = Mux(self.relu & (shifted < 0), 0, shifted)
        with m.If(advance):
            m.d.sync += [
                product.eq(self.i.payload.acc * self.i.payload.multiplier),
                shift1.eq(self.i.payload.shift),
                shifted.eq((product + rounding) >> shift1),
                out.eq(Mux(relued > hi, hi, Mux(relued < lo, lo, relued))),
            ]
        m.d.comb += self.o.payload.eq(out)
        return m
