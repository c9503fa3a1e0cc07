"""Requantiser: int32 accumulator -> int8, the output stage of every engine.

Implements `golden_model.intops.requantize` bit for bit. A stream in, a stream
out, seven pipeline stages (the inputs registered, partial products, their sum, the product, a
coarse and a fine shift, rounding + relu + saturate), each short enough for 100 MHz on ECP5; the
whole pipeline stalls when the output is not taken, so no data is ever dropped.
"""
from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden_model.intops import ACC_BITS, MULT_BITS, OUT_BITS, SHIFT_BITS
from hw.limits import REQUANT_LATENCY

PRODUCT_BITS = ACC_BITS + MULT_BITS + 1   # signed acc x unsigned m (as the four partial products sum it)
T_BITS = 9             # T = P >> max(s - 1, 0) saturated: the fewest bits rounding and int8 saturation cannot tell
WINDOW_BITS = T_BITS + 7   # stage 4's window of P: its fine shift (<= 7) leaves T_BITS bits


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

    LATENCY = REQUANT_LATENCY

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

        # Stage 0: the inputs registered, so the multipliers take them from flip-flops (what feeds them is
        # logic: the store's saturation and chunk pick, a LUT into a MULT18X18D on ECP5's slowest path).
        acc, mult, shift = Signal(signed(ACC_BITS)), Signal(MULT_BITS), Signal(SHIFT_BITS)
        with m.If(advance):
            m.d.sync += [acc.eq(self.i.payload.acc), mult.eq(self.i.payload.multiplier),
                         shift.eq(self.i.payload.shift)]
        # Rounding after the shift, not before: with P the product and s > 0,
        # (P + 2^(s-1)) >> s == ((P >> (s-1)) + 1) >> 1, so the 64-bit adder and the
        # 2^(s-1) decoder give way to a 9-bit increment. And only what decides an int8
        # result is shifted: T = P >> max(s-1, 0) saturated to 9 bits gives the same
        # int8 (T >= 255 or T <= -256 saturate either way), so the shift keeps a 16-bit
        # window of P (stage 4: by s1 & ~7, and whether P's bits above the window are all
        # its sign) and then 9 bits of it (stage 5: by s1 & 7).
        s1 = Signal(SHIFT_BITS)                  # max(s - 1, 0): the shift before rounding
        m.d.comb += s1.eq(Mux(shift == 0, 0, shift - 1))
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
        # Stage 3: the product P.
        product = Signal(signed(PRODUCT_BITS))
        # Stage 4: P >> (s1 & ~7), WINDOW_BITS of it, and whether it fits them (else it saturates).
        window = Signal(signed(WINDOW_BITS))
        wide = Signal()
        # Stage 5: T, T_BITS of it, and whether it saturates (P's sign says which way).
        t = Signal(signed(T_BITS))
        over = Signal()
        neg = [Signal(name=f"neg{i}") for i in (4, 5)]
        # Stage 6: rounding, relu and saturation to int8.
        out = Signal(signed(OUT_BITS))
        # (s1, s == 0) travel with their values: s1's top bits are used in stage 4, its low bits in 5, s == 0 in 6.
        shifts = [Signal(SHIFT_BITS + 1, name=f"shift{i}") for i in range(1, 6)]

        def all_equal(x):
            return x.all() | ~x.any()

        # P's bits from WINDOW_BITS - 1 + 8k up all equal (its sign): the window at coarse shift 8k holds P; true
        # once that is past P's top bit.
        coarse = shifts[2][3:SHIFT_BITS]
        fits = [Const(1)] * (1 << (SHIFT_BITS - 3))
        for k in reversed(range(len(fits))):
            lo_bit = WINDOW_BITS - 1 + 8 * k
            if lo_bit < PRODUCT_BITS - 1:
                fits[k] = all_equal(product[lo_bit:min(lo_bit + 9, PRODUCT_BITS)]) & fits[k + 1]
        shifted = (window >> shifts[3][:3])
        lo, hi = -(1 << (OUT_BITS - 1)), (1 << (OUT_BITS - 1)) - 1
        t_lo, t_hi = -(1 << (T_BITS - 1)), (1 << (T_BITS - 1)) - 1
        rounded = Signal(signed(T_BITS + 1))
        m.d.comb += rounded.eq(Mux(shifts[4][-1], t, (t + 1) >> 1))
        y = Mux(over, Mux(neg[1], t_lo, t_hi), rounded)
        relued = Mux(self.relu & (y < 0), 0, y)
        with m.If(advance):
            m.d.sync += [
                p_ll.eq(a_lo * m_lo),
                p_lh.eq(a_lo * m_hi),
                p_hl.eq(a_hi * m_lo),
                p_hh.eq(a_hi * m_hi),
                Cat(*shifts).eq(Cat(s1, shift == 0, *shifts[:-1])),
                cross.eq(p_lh + p_hl),
                outer.eq(Cat(p_ll, p_hh).as_signed()),
                product.eq(outer + (cross << 16)),
                window.eq((product >> Cat(Const(0, 3), coarse))[:WINDOW_BITS]),
                wide.eq(~Array(fits)[coarse]),
                neg[0].eq(product[-1]),
                t.eq(shifted[:T_BITS]),
                over.eq(wide | ~all_equal(shifted[T_BITS - 1:])),
                neg[1].eq(neg[0]),
                out.eq(Mux(relued > hi, hi, Mux(relued < lo, lo, relued))),
            ]
        m.d.comb += self.o.payload.eq(out)
        return m
