"""Im2colLoader: the convolution engine's input side, on-the-fly im2col from DDR into the B scratchpad.

A convolution runs on the systolic array with the weights as A (rows = R output channels)
and the input patches as B (columns = C output pixels of one output row). B entry k =
(ci, ky, kx) holds, for the C pixels ox0 .. ox0+C-1,

    x[ci, oy*S - P + ky, (ox0 + j)*S - P + kx]        j = 0 .. C-1

which in the overlay's planar feature-map layout (docs/conv.md) are bytes
off + kx + j*S of one input row read from DDR. So, per (ci, ky): read the row's span
(nb beats, bursts split at 4 KiB) into a line buffer, then emit K entries, one per
cycle, each lane j picking byte off + kx + j*S (a shared byte shifter by off + kx and a
per-lane choice of stride 1, 2 or 4). The next row streams into the line buffer while
the current one emits from its copy, so a row costs max(nb, K) cycles. Padding needs no
logic: the layout keeps zero margins around every plane. Entries are in torch's weight
order (ci, ky, kx), channels*K*K of them from `sp`, for each of out_rows_last + 1 output
rows in turn (input rows S x pitch apart): one command feeds several array tiles, so a
short reduction (one channel of 3x3: 9 entries) does not pay the command's start-up each time.
"""
from amaranth import Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from hw.axi import BOUNDARY, MAX_BURST_BEATS
from hw.gemm.engine import EngineLayouts
from hw.limits import MAX_KERNEL

STRIDES_LOG2 = (0, 1, 2)          # strides 1, 2, 4


def line_beats(cfg) -> int:
    """Beats of the line buffer: the widest row span (offset + (C-1)*4 + 7 bytes)."""
    DB = cfg.beat_bytes
    return -(-(DB - 1 + (cfg.cols - 1) * 4 + MAX_KERNEL) // DB)



class Im2colCommand(data.Struct):
    addr: unsigned(32)          # DDR address of the first beat of row (ci=0, ky=0), beat aligned
    pitch: unsigned(32)         # bytes between input rows (beat multiple)
    plane_rows: unsigned(14)    # rows per channel plane (plane bytes = plane_rows * pitch)
    channels: unsigned(16)      # input channels ci = 0 .. channels-1
    k_last: unsigned(3)         # K - 1
    stride_log2: unsigned(2)    # 0, 1, 2: stride 1, 2, 4
    offset: unsigned(5)         # byte of the first input column within the first beat
    sp: unsigned(16)            # first B scratchpad entry
    out_rows_last: unsigned(8)  # output rows - 1; the next one's input rows start 2^stride_log2 rows further


class Im2colLoader(wiring.Component):
    def __init__(self, cfg):
        self.cfg = cfg
        layouts = EngineLayouts(cfg)
        super().__init__({
            "cmd": In(stream.Signature(Im2colCommand)),
            "ar": Out(stream.Signature(data.StructLayout({"addr": unsigned(32), "len": unsigned(8)}))),
            "r": In(stream.Signature(cfg.axi_data_bits)),
            "b_wr": Out(stream.Signature(layouts.b_write)),     # the scratchpad is always ready
            "done": Out(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        C, DB, DW = cfg.cols, cfg.beat_bytes, cfg.axi_data_bits
        NB = line_beats(cfg)
        SPAN = (C - 1) * 4 + 1

        cmd = Signal(Im2colCommand)
        busy = Signal()
        plane = Signal(32)
        nb = Signal(range(NB + 1))
        m.d.comb += [self.busy.eq(busy), self.cmd.ready.eq(~busy)]
        p = self.cmd.payload
        span = p.offset + ((C - 1) << p.stride_log2) + p.k_last + 1

        # ------------------------------------------------ AR: rows (ci, ky), nb beats each
        a_addr = Signal(32)          # next burst
        a_row = Signal(32)           # start of the current row
        a_chan = Signal(32)          # start of the current channel's first row
        a_ky = Signal(3)
        a_left = Signal(range(NB + 1))
        a_rows = Signal(20)          # rows still to request in this output row after the current one
        a_out = Signal(32)           # the current output row's first input row (ci=0, ky=0)
        a_outs = Signal(8)           # output rows still to request after the current one
        rows_per_out = Signal(20)    # input rows per output row: channels x K
        row_step = Signal(32)        # bytes between output rows' first input rows: S x pitch
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [busy.eq(1), cmd.eq(p), plane.eq(p.plane_rows * p.pitch),
                         nb.eq((span + DB - 1) >> exact_log2(DB)),
                         a_addr.eq(p.addr), a_row.eq(p.addr), a_chan.eq(p.addr), a_out.eq(p.addr), a_ky.eq(0),
                         a_left.eq((span + DB - 1) >> exact_log2(DB)),
                         rows_per_out.eq(p.channels * (p.k_last + 1)), row_step.eq(p.pitch << p.stride_log2),
                         a_rows.eq(p.channels * (p.k_last + 1) - 1), a_outs.eq(p.out_rows_last)]
        to_boundary = Signal(range(BOUNDARY // DB + 1))
        m.d.comb += to_boundary.eq((BOUNDARY - a_addr[:exact_log2(BOUNDARY)]) >> exact_log2(DB))
        burst = Signal(range(MAX_BURST_BEATS + 1))
        m.d.comb += [burst.eq(Mux(a_left < to_boundary, a_left, to_boundary)),
                     self.ar.valid.eq(busy & (a_left != 0)),
                     self.ar.payload.addr.eq(a_addr), self.ar.payload.len.eq(burst - 1)]
        with m.If(self.ar.valid & self.ar.ready):
            m.d.sync += [a_addr.eq(a_addr + burst * DB), a_left.eq(a_left - burst)]
        with m.Elif(busy & (a_left == 0) & (a_rows != 0)):
            # Next row: the next ky of this channel, or the first row of the next channel.
            next_row = Mux(a_ky == cmd.k_last, a_chan + plane, a_row + cmd.pitch)
            m.d.sync += [a_rows.eq(a_rows - 1), a_left.eq(nb), a_addr.eq(next_row), a_row.eq(next_row)]
            with m.If(a_ky == cmd.k_last):
                m.d.sync += [a_ky.eq(0), a_chan.eq(a_chan + plane)]
            with m.Else():
                m.d.sync += a_ky.eq(a_ky + 1)
        with m.Elif(busy & (a_left == 0) & (a_outs != 0)):
            # Next output row: its first input row, S rows below the current one's.
            next_out = a_out + row_step
            m.d.sync += [a_outs.eq(a_outs - 1), a_rows.eq(rows_per_out - 1), a_left.eq(nb), a_ky.eq(0),
                         a_out.eq(next_out), a_chan.eq(next_out), a_row.eq(next_out), a_addr.eq(next_out)]

        # ------------------------------------------------ R: beats into the line buffer
        line = Signal(NB * DW)
        rb = Signal(range(NB + 1))
        full = Signal()
        emit = Signal(NB * DW)       # the row being emitted
        emitting = Signal()
        kx = Signal(3)
        emit_last = emitting & (kx == cmd.k_last)
        take = full & (~emitting | emit_last)
        m.d.comb += self.r.ready.eq(busy & (~full | take))
        with m.If(take):
            m.d.sync += full.eq(0)
        with m.If(self.r.valid & self.r.ready):
            m.d.sync += line.word_select(rb, DW).eq(self.r.payload)
            with m.If(rb == nb - 1):
                m.d.sync += [rb.eq(0), full.eq(1)]
            with m.Else():
                m.d.sync += rb.eq(rb + 1)

        # ------------------------------------------------ emission: K entries per row
        rows_left = Signal(20)       # input rows of this output row still to emit
        outs_left = Signal(8)        # output rows after this one
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [rows_left.eq(p.channels * (p.k_last + 1)), outs_left.eq(p.out_rows_last)]
        with m.If(take):
            m.d.sync += [emit.eq(line), emitting.eq(1), kx.eq(0)]
        with m.Elif(emit_last):
            m.d.sync += emitting.eq(0)
        with m.Elif(emitting):
            m.d.sync += kx.eq(kx + 1)
        with m.If(emit_last & (rows_left == 1) & (outs_left != 0)):
            m.d.sync += [rows_left.eq(rows_per_out), outs_left.eq(outs_left - 1)]
        with m.Elif(emit_last):
            m.d.sync += rows_left.eq(rows_left - 1)

        shifted = Signal(SPAN * 8)
        m.d.comb += shifted.eq(emit.bit_select((cmd.offset + kx) * 8, SPAN * 8))
        lanes = []
        for j in range(C):
            by = [shifted.word_select(min(j << s, SPAN - 1), 8) for s in STRIDES_LOG2]
            lanes.append(Mux(cmd.stride_log2 == 0, by[0], Mux(cmd.stride_log2 == 1, by[1], by[2])))
        o_valid = Signal()
        o_addr = Signal(16)
        written = Signal(16)
        m.d.sync += o_valid.eq(emitting)
        with m.If(emitting):
            m.d.sync += [o_addr.eq(cmd.sp + written), written.eq(written + 1)]
            for j in range(C):
                m.d.sync += self.b_wr.payload.data[j].eq(lanes[j])
        m.d.comb += [self.b_wr.valid.eq(o_valid), self.b_wr.payload.addr.eq(o_addr)]

        with m.If(busy & (rows_left == 0) & ~emitting & ~o_valid & ~full):
            m.d.sync += [busy.eq(0), written.eq(0), rb.eq(0)]
            m.d.comb += self.done.eq(1)
        return m
