"""A two-entry FIFO in flip-flops whose output is a register (a skid buffer).

It behaves cycle for cycle as `amaranth.lib.fifo.SyncFIFO(depth=2)` (same ports, same ready and
level on every cycle; tests/test_regfifo.py compares them), but holds its entries in registers:
SyncFIFO reads a memory asynchronously, which yosys maps to LUT RAM, and on ECP5 the read address
of a wide one (the store's 256-bit rows on `ulx3s-gemm`) fans out over the die (9.4 ns of routing).
Here the head of the queue is already in a register and the second entry waits in another.
"""
from amaranth import Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out


class RegisterFIFO2(wiring.Component):
    """w_data/w_en/w_rdy in, r_data/r_en/r_rdy out, `level` 0..2; first in, first out."""

    def __init__(self, width: int):
        self.width = width
        super().__init__({
            "w_data": In(width), "w_en": In(1), "w_rdy": Out(1),
            "r_data": Out(width), "r_en": In(1), "r_rdy": Out(1),
            "level": Out(range(3)),
        })

    def elaborate(self, platform):
        m = Module()
        head, spare = Signal(self.width), Signal(self.width)
        head_full, spare_full = Signal(), Signal()
        m.d.comb += [self.r_data.eq(head), self.r_rdy.eq(head_full), self.w_rdy.eq(~spare_full),
                     self.level.eq(head_full + spare_full)]
        write = self.w_en & ~spare_full
        with m.If(~head_full | self.r_en):
            # The head is free (or leaves this cycle): it takes the oldest entry waiting.
            with m.If(spare_full):
                m.d.sync += [head.eq(spare), spare_full.eq(0)]
            with m.Else():
                m.d.sync += [head.eq(self.w_data), head_full.eq(write)]
        with m.Elif(write):
            m.d.sync += [spare.eq(self.w_data), spare_full.eq(1)]
        return m
