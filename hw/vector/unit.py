"""VectorUnit: the vector engine (hw.vector.engine) behind the overlay's DMA, one VECTOR descriptor at a time.

    LOAD VEC beats ─► parameter memory (hw.isa VEC_*, one beat wide)
    VECTOR ─► header (scalars) ─► copy the op's tables into the engine's memories, one value a cycle
           ─► engine command ─► AR/R: input rows (max-pool: each 2x2 window's 4 pixels; add: a row, then its
              b row) ─► engine i / b ─► engine o ─► AW/W: output rows (upsample: each pixel's 2x2 block)

Rows are token rows at a pitch (sw.runtime.layout.TokenRowLayout); a row is ceil(D / beat) AXI beats,
split into two bursts where it crosses 4 KiB. The engine's beat is the AXI beat (vec_lanes = beat
bytes), so beats pass through unchanged. The unit uses AXI id 1 on the load slot's read side and the
write channel, like the depthwise unit; `done` once the last write response is in.
"""
from amaranth import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from hw import isa
from hw.axi import BOUNDARY
from hw.vector import params as P
from hw.vector.engine import VectorEngine
from hw.vector.params import ParamTarget, VecOp

UnitCommand = data.StructLayout({"op": unsigned(P.OP_BITS), "in_addr": unsigned(32), "out_addr": unsigned(32),
                                 "b_addr": unsigned(32), "rows": unsigned(16), "aux": unsigned(16),
                                 "dim": unsigned(P.DIM_BITS), "pitch": unsigned(8), "width": unsigned(12)})


def _field(header, name):
    off, dt = isa.VEC_HEADER[name]
    size = int(dt.lstrip("<u")) * 8
    return header[off * 8:off * 8 + size]


class VectorUnit(wiring.Component):
    def __init__(self, cfg):
        self.cfg = cfg
        DB = cfg.beat_bytes
        if cfg.vec_lanes != DB:
            raise ValueError(f"vector unit: vec_lanes={cfg.vec_lanes} must equal the {DB}-byte AXI beat")
        self.depth = isa.scratchpad_depth(cfg, "VEC")
        super().__init__({
            "cmd": In(stream.Signature(UnitCommand)),
            "param_wr": In(stream.Signature(data.StructLayout({"addr": unsigned(ceil_log2(self.depth)),
                                                               "data": unsigned(DB * 8)}))),
            "ar": Out(stream.Signature(data.StructLayout({"addr": unsigned(32), "len": unsigned(8)}))),
            "r": In(stream.Signature(cfg.axi_data_bits)),
            "aw": Out(stream.Signature(data.StructLayout({"addr": unsigned(32), "len": unsigned(8)}))),
            "w": Out(stream.Signature(data.StructLayout({"data": unsigned(DB * 8), "last": unsigned(1)}))),
            "b": In(1),
            "busy": Out(1),
            "done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        DB = cfg.beat_bytes
        lg = exact_log2(DB)
        m.submodules.engine = eng = VectorEngine(DB)

        # ------------------------------------------------ parameter memory (LOAD VEC)
        pmem = Memory(shape=unsigned(DB * 8), depth=self.depth, init=[])
        m.submodules.pmem = pmem
        pw, pr = pmem.write_port(), pmem.read_port()
        m.d.comb += [self.param_wr.ready.eq(1), pw.addr.eq(self.param_wr.payload.addr),
                     pw.data.eq(self.param_wr.payload.data), pw.en.eq(self.param_wr.valid)]

        # ------------------------------------------------ command: header, table copy, engine command
        cmd = Signal(UnitCommand)
        busy = Signal()
        header = Signal(isa.VEC_HEADER_BYTES * 8)
        hbeats = isa.VEC_HEADER_BYTES // DB
        rb = Signal(8)                                   # AXI beats per row
        m.d.comb += [self.busy.eq(busy), self.cmd.ready.eq(~busy)]
        op = cmd.op
        is_add, is_max, is_up = op == VecOp.ADD, op == VecOp.MAXPOOL, op == VecOp.UPSAMPLE
        # table copy: up to two sections (target, count, first byte, bytes per value)
        sec = Signal(2)
        e = Signal(16)                                   # value index of the read issued this cycle
        e_n = Signal(16)
        s_target, s_base, s_lgeb = Signal(2), Signal(17), Signal(2)    # s_lgeb: log2(bytes per value)
        rd_valid = Signal()
        rd_sel = Signal(lg)
        rd_target = Signal(2)
        rd_addr = Signal(16)
        hcount = Signal(range(hbeats + 2))
        ar_more = Signal()                               # rows or beats still to request
        writes_left = Signal(32)                         # output rows whose AW is still to issue
        aw_left = Signal(8)                              # beats of the current output row still to request
        b_left = Signal(32)                              # bursts written whose response is still to come
        eng_rows = Signal(P.ROWS_BITS)
        n_out = Signal(32)
        wp = cmd.width * cmd.pitch                      # beats from a pixel to the one below it

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.cmd.valid):
                    m.d.sync += [cmd.eq(self.cmd.payload), busy.eq(1), hcount.eq(0),
                                 rb.eq((self.cmd.payload.dim + DB - 1) >> lg)]
                    m.next = "HEADER"
            with m.State("HEADER"):
                # read beat hcount (address now), its data the next cycle
                m.d.comb += pr.addr.eq(hcount)
                m.d.sync += hcount.eq(hcount + 1)
                with m.If(hcount != 0):
                    m.d.sync += header.eq(Cat(header, pr.data)[DB * 8:])
                with m.If(hcount == hbeats):
                    m.d.sync += [sec.eq(0), e.eq(0)]
                    m.next = "SECTION"
            with m.State("SECTION"):
                # choose the section to copy (sec), or go on
                with m.Switch(Cat(sec, op)):
                    for o, sections in ((VecOp.LAYERNORM, [(ParamTarget.GAIN, isa.VEC_GAIN, 2),
                                                            (ParamTarget.BIAS, isa.VEC_BIAS, 4)]),
                                        (VecOp.LUT, [(ParamTarget.LUT, isa.VEC_LUT, 1)]),
                                        (VecOp.ROPE, [(ParamTarget.ROPE, isa.VEC_ROPE, 4)])):
                        for i, (target, base, eb) in enumerate(sections):
                            with m.Case(i | int(o) << 2):
                                count = {ParamTarget.GAIN: cmd.dim, ParamTarget.BIAS: cmd.dim,
                                         ParamTarget.LUT: Const(256, 16), ParamTarget.ROPE: cmd.aux}[target]
                                m.d.sync += [s_target.eq(target), s_base.eq(base), s_lgeb.eq(exact_log2(eb)), e.eq(0),
                                             e_n.eq(count)]
                                m.next = "COPY"
                    with m.Default():
                        m.next = "COMMAND"
            with m.State("COPY"):
                byte = Signal(20)
                m.d.comb += [byte.eq(s_base + (e << s_lgeb)), pr.addr.eq(byte >> lg)]
                m.d.sync += [rd_valid.eq(e != e_n), rd_sel.eq(byte[:lg]), rd_target.eq(s_target), rd_addr.eq(e)]
                with m.If(e != e_n):
                    m.d.sync += e.eq(e + 1)
                with m.Else():
                    m.d.sync += sec.eq(sec + 1)
                    m.next = "SECTION"
            with m.State("COMMAND"):
                m.d.comb += eng.cmd.valid.eq(1)
                with m.If(eng.cmd.ready):
                    m.next = "STREAM"
            with m.State("STREAM"):
                with m.If(~eng.busy & (writes_left == 0) & (aw_left == 0) & (b_left == 0) & ~ar_more):
                    m.d.sync += busy.eq(0)
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
        # the copy's data stage: the value in the beat read last cycle, to the engine's parameter port
        value = Signal(32)
        m.d.comb += value.eq((pr.data >> (rd_sel << 3))[:32])
        m.d.comb += [eng.param.valid.eq(rd_valid), eng.param.payload.target.eq(rd_target),
                     eng.param.payload.addr.eq(rd_addr),
                     eng.param.payload.data.eq(Mux(rd_target == ParamTarget.GAIN, value[:16],
                                                   Mux(rd_target == ParamTarget.LUT, value[:8], value)))]
        pixels = Signal(28)                              # max-pool: windows; upsample: input pixels (one multiplier)
        m.d.comb += [pixels.eq(Mux(is_max, cmd.rows >> 1, cmd.rows) * Mux(is_max, cmd.width >> 1, cmd.width)),
                     eng_rows.eq(Mux(is_max, pixels << 2, Mux(is_up, pixels, cmd.rows))),
                     n_out.eq(Mux(is_max, pixels, Mux(is_up, pixels << 2, cmd.rows)))]
        ec = eng.cmd.payload
        m.d.comb += [ec.op.eq(op), ec.dim.eq(cmd.dim), ec.rows.eq(eng_rows),
                     ec.eps_term.eq(_field(header, "eps_term")), ec.ln_shift.eq(_field(header, "ln_shift")),
                     ec.a_mult.eq(_field(header, "a_mult")), ec.b_mult.eq(_field(header, "b_mult")),
                     ec.add_shift.eq(_field(header, "add_shift")), ec.rope_mult.eq(_field(header, "rope_mult")),
                     ec.rope_shift.eq(_field(header, "rope_shift")), ec.rope_nx.eq(_field(header, "rope_nx")),
                     ec.rope_ny.eq(_field(header, "rope_ny")), ec.rope_jx.eq(_field(header, "rope_jx"))]
        streaming = Signal()
        start = Signal()
        m.d.comb += start.eq(eng.cmd.valid & eng.cmd.ready)
        with m.If(start):
            m.d.sync += streaming.eq(1)
        with m.If(self.done):
            m.d.sync += streaming.eq(0)

        pitch_b = Signal(20)
        m.d.comb += pitch_b.eq(cmd.pitch << lg)
        wp_b = Signal(32)
        m.d.comb += wp_b.eq(wp << lg)

        # ------------------------------------------------ reads: row addresses, bursts within 4 KiB
        n_reads = Signal(32)                           # rows still to request (add: a and b rows)
        ar_addr = Signal(32)                           # current burst's address
        ar_left = Signal(8)                            # beats of the current row still to request
        a_ptr, b_ptr, b_idx = Signal(32), Signal(32), Signal(16)
        is_b = Signal()                                # the row being requested is a b row
        # max-pool: window base, k of 4; upsample / others: a_ptr steps by the pitch
        k = Signal(2)
        x = Signal(12)
        row_base = Signal(32)
        m.d.comb += ar_more.eq((n_reads != 0) | (ar_left != 0))
        to_boundary = Signal(range(BOUNDARY // DB + 1))
        m.d.comb += to_boundary.eq((BOUNDARY - ar_addr[:exact_log2(BOUNDARY)]) >> lg)
        burst = Signal(9)
        m.d.comb += burst.eq(Mux(ar_left < to_boundary, ar_left, to_boundary))
        m.d.comb += [self.ar.valid.eq(streaming & (ar_left != 0)), self.ar.payload.addr.eq(ar_addr),
                     self.ar.payload.len.eq(burst - 1)]
        next_addr = Signal(32)
        with m.If(start):
            m.d.sync += [n_reads.eq(Mux(is_add, cmd.rows << 1, eng_rows)), ar_left.eq(0), a_ptr.eq(cmd.in_addr),
                         row_base.eq(cmd.in_addr), b_ptr.eq(cmd.b_addr), b_idx.eq(0), is_b.eq(0), k.eq(0),
                         x.eq(0)]
        with m.Elif(self.ar.valid & self.ar.ready):
            m.d.sync += [ar_addr.eq(ar_addr + (burst << lg)), ar_left.eq(ar_left - burst)]
        with m.Elif(streaming & (ar_left == 0) & (n_reads != 0)):
            # the next row: its address, and the pointers past it
            m.d.sync += [n_reads.eq(n_reads - 1), ar_left.eq(rb)]
            with m.If(is_add & is_b):
                m.d.sync += [ar_addr.eq(b_ptr), is_b.eq(0)]
                with m.If(b_idx + 1 == cmd.aux):
                    m.d.sync += [b_idx.eq(0), b_ptr.eq(cmd.b_addr)]
                with m.Else():
                    m.d.sync += [b_idx.eq(b_idx + 1), b_ptr.eq(b_ptr + pitch_b)]
            with m.Elif(is_max):
                offsets = [0, pitch_b, wp_b, wp_b + pitch_b]
                m.d.comb += next_addr.eq(Mux(k[1], Mux(k[0], offsets[3], offsets[2]), Mux(k[0], offsets[1], 0)))
                m.d.sync += [ar_addr.eq(a_ptr + next_addr), k.eq(k + 1)]
                with m.If(k == 3):
                    with m.If(x + 1 == cmd.width >> 1):
                        m.d.sync += [x.eq(0), a_ptr.eq(row_base + (wp_b << 1)), row_base.eq(row_base + (wp_b << 1))]
                    with m.Else():
                        m.d.sync += [x.eq(x + 1), a_ptr.eq(a_ptr + (pitch_b << 1))]
            with m.Else():
                m.d.sync += [ar_addr.eq(a_ptr), a_ptr.eq(a_ptr + pitch_b), is_b.eq(is_add)]
        # R: rb beats per row, to i (b rows of add: to b)
        r_beat = Signal(8)
        r_is_b = Signal()
        with m.If(start):
            m.d.sync += [r_beat.eq(0), r_is_b.eq(0)]
        m.d.comb += [eng.i.payload.eq(self.r.payload), eng.b.payload.eq(self.r.payload),
                     eng.i.valid.eq(self.r.valid & ~r_is_b), eng.b.valid.eq(self.r.valid & r_is_b),
                     self.r.ready.eq(Mux(r_is_b, eng.b.ready, eng.i.ready))]
        with m.If(self.r.valid & self.r.ready):
            with m.If(r_beat == rb - 1):
                m.d.sync += [r_beat.eq(0), r_is_b.eq(is_add & ~r_is_b)]
            with m.Else():
                m.d.sync += r_beat.eq(r_beat + 1)

        # ------------------------------------------------ writes: output row addresses, bursts, W, B
        aw_addr = Signal(32)
        o_ptr, o_base = Signal(32), Signal(32)
        ok = Signal(2)
        ox = Signal(12)
        aw_boundary = Signal(range(BOUNDARY // DB + 1))
        m.d.comb += aw_boundary.eq((BOUNDARY - aw_addr[:exact_log2(BOUNDARY)]) >> lg)
        aw_burst = Signal(9)
        m.d.comb += aw_burst.eq(Mux(aw_left < aw_boundary, aw_left, aw_boundary))
        m.submodules.bursts = bursts = SyncFIFOBuffered(width=8, depth=8)
        m.d.comb += [self.aw.valid.eq(streaming & (aw_left != 0) & bursts.w_rdy),
                     self.aw.payload.addr.eq(aw_addr), self.aw.payload.len.eq(aw_burst - 1),
                     bursts.w_data.eq(aw_burst - 1), bursts.w_en.eq(self.aw.valid & self.aw.ready)]
        aw_fire = self.aw.valid & self.aw.ready
        b_in = Signal()
        m.d.comb += b_in.eq(self.b)
        with m.If(start):
            m.d.sync += [writes_left.eq(n_out), aw_left.eq(0), o_ptr.eq(cmd.out_addr), o_base.eq(cmd.out_addr),
                         ok.eq(0), ox.eq(0), b_left.eq(0)]
        with m.Else():
            m.d.sync += b_left.eq(b_left + aw_fire - b_in)
            with m.If(aw_fire):
                m.d.sync += [aw_addr.eq(aw_addr + (aw_burst << lg)), aw_left.eq(aw_left - aw_burst)]
            with m.Elif(streaming & (aw_left == 0) & (writes_left != 0)):
                m.d.sync += [writes_left.eq(writes_left - 1), aw_left.eq(rb)]
                with m.If(is_up):
                    # each input pixel's 2x2 block: rows (2y, 2x), (2y, 2x+1), (2y+1, 2x), (2y+1, 2x+1) of 2W
                    up = [0, pitch_b, wp_b << 1, (wp_b << 1) + pitch_b]
                    sel = Signal(32)
                    m.d.comb += sel.eq(Mux(ok[1], Mux(ok[0], up[3], up[2]), Mux(ok[0], up[1], 0)))
                    m.d.sync += [aw_addr.eq(o_ptr + sel), ok.eq(ok + 1)]
                    with m.If(ok == 3):
                        with m.If(ox + 1 == cmd.width):
                            m.d.sync += [ox.eq(0), o_ptr.eq(o_base + (wp_b << 2)), o_base.eq(o_base + (wp_b << 2))]
                        with m.Else():
                            m.d.sync += [ox.eq(ox + 1), o_ptr.eq(o_ptr + (pitch_b << 1))]
                with m.Else():
                    m.d.sync += [aw_addr.eq(o_ptr), o_ptr.eq(o_ptr + pitch_b)]
        # W: the engine's output beats, wlast at each burst's end (bursts in AW order)
        w_beat = Signal(8)
        w_last = w_beat == bursts.r_data
        m.d.comb += [self.w.valid.eq(eng.o.valid & bursts.r_rdy), self.w.payload.data.eq(eng.o.payload),
                     self.w.payload.last.eq(w_last), eng.o.ready.eq(self.w.ready & bursts.r_rdy)]
        with m.If(self.w.valid & self.w.ready):
            with m.If(w_last):
                m.d.comb += bursts.r_en.eq(1)
                m.d.sync += w_beat.eq(0)
            with m.Else():
                m.d.sync += w_beat.eq(w_beat + 1)
        return m
