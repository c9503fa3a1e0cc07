"""A two-entry register slice (skid buffer) for a ready/valid stream.

Both sides see only flip-flop outputs: `i.ready` and `o.valid`/`o.payload` are
registers, so no combinational path crosses the slice in either direction. Full
throughput (one transfer per cycle) at one cycle of latency; the second entry
catches the beat that arrives in the cycle `o` stalls.
"""
from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out


class SkidBuffer(wiring.Component):
    def __init__(self, shape):
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})
        self._shape = shape

    def elaborate(self, platform):
        m = Module()
        skid = Signal(self._shape)
        skid_valid = Signal()
        m.d.comb += self.i.ready.eq(~skid_valid)
        take = self.i.valid & self.i.ready
        with m.If(~self.o.valid | self.o.ready):
            # The output register is free: refill it from the skid entry first.
            with m.If(skid_valid):
                m.d.sync += [self.o.payload.eq(skid), self.o.valid.eq(1), skid_valid.eq(0)]
            with m.Else():
                m.d.sync += [self.o.payload.eq(self.i.payload), self.o.valid.eq(take)]
        with m.Elif(take):
            m.d.sync += [skid.eq(self.i.payload), skid_valid.eq(1)]
        return m
