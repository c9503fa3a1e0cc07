"""DepthwiseUnit: SAM 2's depthwise convolutions at one output pixel per cycle per channel lane.

A systolic array shares its B operand across rows, so depthwise (every channel its own
filter, no reduction across channels) leaves all but one row idle. This unit is a
separate datapath: L lanes in lockstep, lane l = channel c0 + l, each with K_MAX x K_MAX
multipliers and an adder tree, all lanes at the same output pixel (oy, x) each cycle.
One DEPTHWISE command computes a whole stride-1 "same" convolution (padding (K-1)/2) of
`lanes` channels, DDR to DDR, in the overlay's planar layout (docs/conv.md), whose real
zero rows and columns around every plane make the borders need no logic.

    AR/R (id 1) ─► NS row slots (memories of RB beats x L lanes) ──┐  + 2 head beats per slot
                    row r of lane l ─► slot r % NS, lane l          │
    issue (oy, x): per slot the current and next beat of the row ──┴► K_MAX x K_MAX window
                    per lane (a byte shifter by (col0 + x) % DB)
       ─► products ─► row sums ─► sum ─► + bias (saturating) ─► Requantizer ─► beat per lane
       ─► group FIFO (L beats) ─► AW/W single-beat writes (id 1, strobes) ─► B

* Line buffer: NS = K_MAX + 1 slots, so input row oy + K streams in while rows oy .. oy+K-1
  are read. Each slot is one memory with a beat per entry, one read port; the window
  needs, per row, bytes col0 + x .. + K_MAX - 1, which lie in two beats: a slot keeps
  `cur` and `nxt` and reads the beat after `nxt` one cycle ahead (every slot reads the
  same beat address: all rows share the layout). The first two beats of every row are
  captured as it arrives ("heads"), so a new output row starts without a fill bubble.
* The weights and the per-channel bias/multiplier/shift come from a coefficient bank
  loaded beforehand by LOAD target DW (hw.isa.DW_COEF_BYTES per lane).
* Output: lane l's pixel x of row oy is byte x % DB of a beat; every DB pixels (or at
  the row's end) the L beats go to a small FIFO and out as single-beat AXI writes with
  strobes (only the row's W pixels are written: the output map's zero margins stay).
  Issue only runs ahead of the FIFO by its free space (a credit counter), so the
  fixed-latency pipeline never needs to stall.
The arithmetic is golden_model.intconv.depthwise_conv2d's, bit for bit.
"""
from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from golden_model.intops import ACC_BITS, MULT_BITS, SHIFT_BITS
from hw import isa
from hw.axi import BOUNDARY
from hw.requant import Requantizer

K_MAX = 7
NS = 8                 # row slots: K_MAX rows read while one more arrives
TAP_PITCH = 8          # taps of a lane at coefficient byte ky * TAP_PITCH + kx
GROUPS = 4             # depth of the output FIFO (groups of L beats)


class DepthwiseCommand(data.Struct):
    in_addr: unsigned(32)       # row -padding of the first channel's plane, a row start (beat aligned)
    out_addr: unsigned(32)      # output pixel (channel 0, row 0, column 0), beat aligned
    pitch: unsigned(32)         # bytes per row, input and output (beat multiple)
    plane_rows: unsigned(14)    # rows per channel plane
    rows: unsigned(16)          # output rows
    width: unsigned(14)         # pixels per output row
    k_last: unsigned(3)         # K - 1
    col0: unsigned(6)           # byte of input column -padding within a row
    lanes: unsigned(5)          # active lanes (channels), 1..L
    relu: unsigned(1)


def row_beats(cfg) -> int:
    return cfg.dw_row_bytes // cfg.beat_bytes


class DepthwiseUnit(wiring.Component):
    def __init__(self, cfg):
        self.cfg = cfg
        L, DB = cfg.dw_lanes, cfg.beat_bytes
        coef_entries = isa.scratchpad_depth(cfg, "DW")
        super().__init__({
            "cmd": In(stream.Signature(DepthwiseCommand)),
            "coef_wr": In(stream.Signature(data.StructLayout({"addr": unsigned(max(1, ceil_log2(coef_entries))),
                                                              "data": unsigned(DB * 8)}))),
            "ar": Out(stream.Signature(data.StructLayout({"addr": unsigned(32), "len": unsigned(8)}))),
            "r": In(stream.Signature(cfg.axi_data_bits)),
            "aw": Out(stream.Signature(unsigned(32))),
            "w": Out(stream.Signature(data.StructLayout({"data": unsigned(DB * 8), "strb": unsigned(DB)}))),
            "b": In(1),                 # a write response for this unit (id 1) arrived
            "busy": Out(1),
            "done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        L, DB, DW = cfg.dw_lanes, cfg.beat_bytes, cfg.axi_data_bits
        RB = row_beats(cfg)
        lg = exact_log2(DB)
        BW = DB * 8

        cmd = Signal(DepthwiseCommand)
        busy = Signal()
        plane = Signal(32)
        nb = Signal(range(RB + 1))
        rows_in = Signal(17)
        m.d.comb += [self.busy.eq(busy), self.cmd.ready.eq(~busy)]
        p = self.cmd.payload
        accept = self.cmd.valid & self.cmd.ready

        # ------------------------------------------------ coefficient bank (LOAD target DW)
        coef = Signal(L * isa.DW_COEF_BYTES * 8)
        m.d.comb += self.coef_wr.ready.eq(1)
        with m.If(self.coef_wr.valid):
            m.d.sync += coef.word_select(self.coef_wr.payload.addr, BW).eq(self.coef_wr.payload.data)

        def coef_byte(lane, byte, width=8):
            base = (lane * isa.DW_COEF_BYTES + byte) * 8
            return coef[base:base + width]

        # ------------------------------------------------ AR: rows r = 0 .. rows_in-1, lanes, nb beats each
        oy = Signal(16)                    # output row being issued
        a_row = Signal(17)
        a_lane = Signal(range(max(2, L)))
        a_left = Signal(range(RB + 1))
        a_addr = Signal(32)
        a_lane_addr = Signal(32)           # start of (a_row, a_lane)
        a_row_addr = Signal(32)            # start of (a_row, lane 0)
        with m.If(accept):
            m.d.sync += [busy.eq(1), cmd.eq(p), plane.eq(p.plane_rows * p.pitch), nb.eq(p.pitch >> lg),
                         rows_in.eq(p.rows + p.k_last), a_row.eq(0), a_lane.eq(0), a_left.eq(p.pitch >> lg),
                         a_addr.eq(p.in_addr), a_lane_addr.eq(p.in_addr), a_row_addr.eq(p.in_addr)]
        to_boundary = Signal(range(BOUNDARY // DB + 1))
        m.d.comb += to_boundary.eq((BOUNDARY - a_addr[:exact_log2(BOUNDARY)]) >> lg)
        burst = Signal(range(RB + 1))
        m.d.comb += burst.eq(Mux(a_left < to_boundary, a_left, to_boundary))
        # A row may stream in once its slot's previous row (r - NS) is no longer read.
        a_more = busy & (a_row < rows_in)
        m.d.comb += [self.ar.valid.eq(a_more & (a_left != 0) & (a_row < oy + NS)),
                     self.ar.payload.addr.eq(a_addr), self.ar.payload.len.eq(burst - 1)]
        with m.If(self.ar.valid & self.ar.ready):
            m.d.sync += [a_addr.eq(a_addr + (burst << lg)), a_left.eq(a_left - burst)]
        with m.Elif(a_more & (a_left == 0)):
            m.d.sync += a_left.eq(nb)
            with m.If(a_lane == cmd.lanes - 1):
                m.d.sync += [a_lane.eq(0), a_row.eq(a_row + 1), a_row_addr.eq(a_row_addr + cmd.pitch),
                             a_lane_addr.eq(a_row_addr + cmd.pitch), a_addr.eq(a_row_addr + cmd.pitch)]
            with m.Else():
                m.d.sync += [a_lane.eq(a_lane + 1), a_lane_addr.eq(a_lane_addr + plane),
                             a_addr.eq(a_lane_addr + plane)]

        # ------------------------------------------------ R: beats into the row slots
        r_row = Signal(17)                 # rows completely received
        r_lane = Signal(range(max(2, L)))
        r_beat = Signal(range(RB))
        b0 = Signal(range(64 // DB + 1))
        m.d.comb += b0.eq(cmd.col0 >> lg)
        r_fire = self.r.valid & self.r.ready
        m.d.comb += self.r.ready.eq(busy)
        r_slot = r_row[:exact_log2(NS)]
        with m.If(accept):
            m.d.sync += [r_row.eq(0), r_lane.eq(0), r_beat.eq(0)]
        with m.Elif(r_fire):
            with m.If(r_beat == nb - 1):
                m.d.sync += r_beat.eq(0)
                with m.If(r_lane == cmd.lanes - 1):
                    m.d.sync += [r_lane.eq(0), r_row.eq(r_row + 1)]
                with m.Else():
                    m.d.sync += r_lane.eq(r_lane + 1)
            with m.Else():
                m.d.sync += r_beat.eq(r_beat + 1)

        x = Signal(14)
        pos = Signal(16)
        m.d.comb += pos.eq(cmd.col0 + x)
        o = pos[:lg]
        # Read address for every slot: the beat after `nxt`, one cycle ahead (see the module doc).
        rd_addr = Signal(range(RB))
        slots, heads0, heads1, curs, nxts = [], [], [], [], []
        for s in range(NS):
            mem = Memory(shape=unsigned(L * BW), depth=RB, init=[])
            m.submodules[f"slot{s}"] = mem
            wp = mem.write_port(granularity=BW)
            rp = mem.read_port()
            hit = r_fire & (r_slot == s)
            m.d.comb += [wp.addr.eq(r_beat), wp.data.eq(Cat(*[self.r.payload] * L)), rp.addr.eq(rd_addr),
                         wp.en.eq(Mux(hit, 1 << r_lane, 0))]
            h0, h1 = Signal(L * BW, name=f"head0_{s}"), Signal(L * BW, name=f"head1_{s}")
            with m.If(hit & (r_beat == b0)):
                m.d.sync += h0.word_select(r_lane, BW).eq(self.r.payload)
            with m.If(hit & (r_beat == b0 + 1)):
                m.d.sync += h1.word_select(r_lane, BW).eq(self.r.payload)
            cur, nxt = Signal(L * BW, name=f"cur{s}"), Signal(L * BW, name=f"nxt{s}")
            slots.append(rp)
            heads0.append(h0), heads1.append(h1), curs.append(cur), nxts.append(nxt)

        # ------------------------------------------------ issue: one output pixel of every lane per cycle
        run = Signal()                     # issuing row oy (else waiting for its input rows)
        issuing = Signal()                 # the command still has pixels to issue
        row_addr = Signal(32)              # output row oy, column 0
        last_x = x == cmd.width - 1
        group_end = (x[:lg] == DB - 1) | last_x
        outstanding = Signal(range(GROUPS + 2))    # groups issued, not yet written out
        go = run & (~group_end | (outstanding < GROUPS))
        rows_ready = Signal()
        m.d.comb += rows_ready.eq(r_row > oy + cmd.k_last)
        next_ready = r_row > oy + 1 + cmd.k_last
        # rd.data at a beat crossing must be the beat two after the current one: address by the next pos.
        m.d.comb += rd_addr.eq(Mux(run & ~last_x, ((pos + go) >> lg) + 2, b0 + 2))

        def start_row():
            stmts = []
            for s in range(NS):
                stmts += [curs[s].eq(heads0[s]), nxts[s].eq(heads1[s])]
            return stmts

        with m.If(accept):
            m.d.sync += [issuing.eq(1), run.eq(0), oy.eq(0), x.eq(0), row_addr.eq(p.out_addr)]
        with m.Elif(issuing & ~run):
            with m.If(rows_ready):
                m.d.sync += [run.eq(1), *start_row()]
        with m.Elif(go):
            with m.If(last_x):
                m.d.sync += [x.eq(0), oy.eq(oy + 1), row_addr.eq(row_addr + cmd.pitch)]
                with m.If(oy == cmd.rows - 1):
                    m.d.sync += [run.eq(0), issuing.eq(0)]
                with m.Elif(next_ready):
                    m.d.sync += start_row()
                with m.Else():
                    m.d.sync += run.eq(0)
            with m.Else():
                m.d.sync += x.eq(x + 1)
                with m.If(o == DB - 1):
                    for s in range(NS):
                        m.d.sync += [curs[s].eq(nxts[s]), nxts[s].eq(slots[s].data)]

        # Stage 1: the window of every lane, 7 rows of 7 bytes from the two beats of slot (oy + ky) % NS.
        v = [Signal(name=f"valid{i}") for i in range(6)]
        meta_layout = data.StructLayout({"x_lo": unsigned(lg), "end": unsigned(1), "addr": unsigned(32)})
        meta = [Signal(meta_layout, name=f"meta{i}") for i in range(6)]
        m.d.sync += v[1].eq(go)
        with m.If(go):
            m.d.sync += [meta[1].x_lo.eq(x[:lg]), meta[1].end.eq(group_end),
                         meta[1].addr.eq(row_addr + ((x >> lg) << lg))]
        wins = []
        for lane in range(L):
            pairs = Array(Cat(curs[s].word_select(lane, BW), nxts[s].word_select(lane, BW)) for s in range(NS))
            win = []
            for ky in range(K_MAX):
                row = Signal(2 * BW, name=f"pair{lane}_{ky}")
                m.d.comb += row.eq(pairs[(oy + ky)[:exact_log2(NS)]])
                reg = Signal(K_MAX * 8, name=f"win{lane}_{ky}")
                with m.If(go):
                    m.d.sync += reg.eq(row.bit_select(o * 8, K_MAX * 8))
                win.append(reg)
            wins.append(win)
        for i in range(2, 6):
            m.d.sync += [v[i].eq(v[i - 1]), meta[i].eq(meta[i - 1])]

        # Stages 2-5 per lane: products, row sums, the sum, + bias saturated to int32.
        lanes = []
        lo, hi = -(1 << (ACC_BITS - 1)), (1 << (ACC_BITS - 1)) - 1
        for lane in range(L):
            prods = []
            for ky in range(K_MAX):
                for kx in range(K_MAX):
                    pr = Signal(signed(16), name=f"prod{lane}_{ky}_{kx}")
                    m.d.sync += pr.eq(wins[lane][ky].word_select(kx, 8).as_signed()
                                      * coef_byte(lane, ky * TAP_PITCH + kx).as_signed())
                    prods.append(pr)
            row_sums = []
            for ky in range(K_MAX):
                rs = Signal(signed(19), name=f"rowsum{lane}_{ky}")
                m.d.sync += rs.eq(sum(prods[ky * K_MAX:(ky + 1) * K_MAX]))
                row_sums.append(rs)
            total = Signal(signed(22), name=f"sum{lane}")
            m.d.sync += total.eq(sum(row_sums))
            bias = coef_byte(lane, isa.DW_TAP_BYTES, 32).as_signed()
            wide = Signal(signed(ACC_BITS + 1), name=f"wide{lane}")
            biased = Signal(signed(ACC_BITS), name=f"biased{lane}")
            m.d.comb += wide.eq(total + bias)
            m.d.sync += biased.eq(Mux(wide > hi, hi, Mux(wide < lo, lo, wide)))
            rq = Requantizer()
            m.submodules[f"requant{lane}"] = rq
            m.d.comb += [rq.relu.eq(cmd.relu), rq.i.valid.eq(v[5]), rq.i.payload.acc.eq(biased),
                         rq.i.payload.multiplier.eq(coef_byte(lane, isa.DW_TAP_BYTES + 4, MULT_BITS)),
                         rq.i.payload.shift.eq(coef_byte(lane, isa.DW_TAP_BYTES + 8, SHIFT_BITS)),
                         rq.o.ready.eq(1)]
            lanes.append(rq)
        # The requantisers never stall (output always ready): their latency is fixed.
        delay = [meta[5]]
        for i in range(Requantizer.LATENCY):
            d = Signal(meta_layout, name=f"meta_rq{i}")
            m.d.sync += d.eq(delay[-1])
            delay.append(d)
        out_meta = delay[-1]
        out_valid = lanes[0].o.valid

        # ------------------------------------------------ output beats -> FIFO -> AXI writes
        m.submodules.groups = fifo = SyncFIFOBuffered(width=L * BW + 32 + lg + 1, depth=GROUPS)
        beats = [Signal(BW, name=f"beat{lane}") for lane in range(L)]
        merged = []
        for lane in range(L):
            mg = Signal(BW, name=f"merged{lane}")
            m.d.comb += mg.eq(beats[lane])
            m.d.comb += mg.word_select(out_meta.x_lo, 8).eq(lanes[lane].o.payload)
            merged.append(mg)
            with m.If(out_valid):
                m.d.sync += beats[lane].eq(mg)
        m.d.comb += [fifo.w_en.eq(out_valid & out_meta.end),
                     fifo.w_data.eq(Cat(*merged, out_meta.addr, out_meta.x_lo + 1))]
        head = fifo.r_data
        h_data, h_addr, h_n = head[:L * BW], head[L * BW:L * BW + 32], head[L * BW + 32:]
        j = Signal(range(max(2, L)))
        j_off = Signal(32)
        aw_done, w_done = Signal(), Signal()
        m.d.comb += [self.aw.valid.eq(fifo.r_rdy & ~aw_done), self.aw.payload.eq(h_addr + j_off),
                     self.w.valid.eq(fifo.r_rdy & ~w_done), self.w.payload.data.eq(h_data.word_select(j, BW)),
                     self.w.payload.strb.eq(Cat(*[i < h_n for i in range(DB)]))]
        aw_fire, w_fire = self.aw.valid & self.aw.ready, self.w.valid & self.w.ready
        beat_done = fifo.r_rdy & (aw_done | aw_fire) & (w_done | w_fire)
        popped = Signal()
        with m.If(beat_done):
            m.d.sync += [aw_done.eq(0), w_done.eq(0)]
            with m.If(j == cmd.lanes - 1):
                m.d.sync += [j.eq(0), j_off.eq(0)]
                m.d.comb += [fifo.r_en.eq(1), popped.eq(1)]
            with m.Else():
                m.d.sync += [j.eq(j + 1), j_off.eq(j_off + plane)]
        with m.Else():
            with m.If(aw_fire):
                m.d.sync += aw_done.eq(1)
            with m.If(w_fire):
                m.d.sync += w_done.eq(1)
        issued_group = go & group_end
        with m.If(issued_group & ~popped):
            m.d.sync += outstanding.eq(outstanding + 1)
        with m.Elif(~issued_group & popped):
            m.d.sync += outstanding.eq(outstanding - 1)
        writes = Signal(16)                # AW sent, B not yet back
        with m.If(aw_fire & ~self.b):
            m.d.sync += writes.eq(writes + 1)
        with m.Elif(~aw_fire & self.b):
            m.d.sync += writes.eq(writes - 1)

        drained = (~issuing & (outstanding == 0) & (writes == 0) & ~aw_fire & (r_row == rows_in)
                   & (a_row == rows_in))
        with m.If(busy & ~accept & drained):
            m.d.sync += busy.eq(0)
            m.d.comb += self.done.eq(1)
        return m
