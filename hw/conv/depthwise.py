"""DepthwiseUnit: SAM 2's depthwise convolutions at one output pixel per cycle per channel lane.

A systolic array shares its B operand across rows, so depthwise (every channel its own
filter, no reduction across channels) leaves all but one row idle. This unit is a
separate datapath: L lanes in lockstep, each with K_MAX x K_MAX multipliers and an adder
tree, all lanes at the same output pixel (oy, x) of their channels each cycle. One
DEPTHWISE command computes a whole stride-1 "same" convolution (padding (K-1)/2) of up to
dw_channels channels, DDR to DDR, in groups of L channels, in the overlay's planar layout
(docs/conv.md), whose real zero rows and columns around every plane make the borders need
no logic.

    AR/R (id 1) ─► line buffer: NS row slots of RB beats x L lanes ─┐  + heads memory (NS x (first window, F, G))
                    input row q of lane l ─► slot q % NS, lane l      │
    issue (oy, x): per window row ky a byte shift register, fed from ┴► K_MAX x K_MAX window
                    beat F of row q_base + ky (G prefetched), per lane
       ─► products ─► row sums ─► sum ─► + bias (saturating) ─► Requantizer ─► beat per lane
       ─► group FIFO (L beats) ─► AW/W single-beat writes (id 1, strobes) ─► B

* Line buffer: the rows of all groups form one sequence (group g's input rows 0 .. H+K-2
  follow group g-1's); row q lives in slot q % NS. NS = 2 * K_MAX + 2 slots let the next
  group's first K rows stream in while the current group's last rows are computed, so
  groups follow each other without a fill bubble. The window needs, per row, bytes
  col0 + x .. + K_MAX - 1. The state is per window row ky (row q_base + ky), not per slot:
  the window register shifts a byte per pixel and takes in byte col0 + x + K_MAX - 1 from the
  feed beat F (a byte multiplexer, not a window-wide shifter); after F's last byte, F takes G
  and a reader refills G of one window row per cycle from the line buffer's single read port
  (block RAM: the first address at the crossing, each row's data a cycle after its address),
  K_MAX cycles, before the next crossing DB > K_MAX pixels later: no per-slot registers and no
  NS:1 multiplexers. As every row arrives, its first window (bytes col0 .. + K_MAX - 1, put in
  place by one byte rotator) and its feed beats (those of bytes col0 + K_MAX and + DB) are
  written into a heads memory (an entry per slot, K_MAX asynchronous read ports), which loads
  the window rows when an output row starts: no fill bubble per row.
* The weights and the per-channel bias/multiplier/shift come from a coefficient memory
  loaded beforehand by LOAD target DW (hw.isa.DW_COEF_BYTES per channel); a prefetcher
  copies the next group's into a shadow register bank while the current group runs; at the
  group's first pixel the taps move to the one bank the multipliers read, and the bias,
  multiplier and shift to one of two small banks, which every pixel's bank bit selects in the
  later stages (the previous group's last pixels are still there).
* Output: lane l's pixel x of row oy is byte x % DB of a beat; every DB pixels (or at
  the row's end) the L beats go to a small FIFO and out as single-beat AXI writes with
  strobes (only the row's W pixels are written: the output map's zero margins stay).
  Issue only runs ahead of the FIFO by its free space (a credit counter), so the
  fixed-latency pipeline never needs to stall.
The arithmetic is golden_model.intconv.depthwise_conv2d's, bit for bit.
"""
from amaranth import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from golden_model.intops import ACC_BITS, MULT_BITS, SHIFT_BITS
from hw import isa
from hw.axi import BOUNDARY
from hw.requant import Requantizer

from hw.limits import DW_K_MAX as K_MAX
from hw.limits import DW_ROW_SLOTS as NS    # row slots: K_MAX rows read, the rest streaming in
TAP_PITCH = 8          # taps of a channel at coefficient byte ky * TAP_PITCH + kx
OUT_FIFO = 4           # depth of the output FIFO (groups of L beats)
COOLDOWN = 8           # cycles a coefficient bank is still read after its last pixel issued (to the requantiser)


class DepthwiseCommand(data.Struct):
    in_addr: unsigned(32)       # row -padding of the first channel's plane, a row start (beat aligned)
    out_addr: unsigned(32)      # output pixel (channel 0, row 0, column 0), beat aligned
    pitch: unsigned(32)         # bytes per row, input and output (beat multiple)
    plane_rows: unsigned(14)    # rows per channel plane
    rows: unsigned(16)          # output rows
    width: unsigned(14)         # pixels per output row
    k_last: unsigned(3)         # K - 1
    col0: unsigned(6)           # byte of input column -padding within a row
    channels: unsigned(11)      # channels, 1..dw_channels, in groups of L lanes
    relu: unsigned(1)


def row_beats(cfg) -> int:
    return cfg.dw_row_bytes // cfg.beat_bytes


class DepthwiseUnit(wiring.Component):
    def __init__(self, cfg):
        self.cfg = cfg
        DB = cfg.beat_bytes
        if DB <= K_MAX:
            raise ValueError(f"depthwise unit: {DB}-byte beats leave the window-row reader no time (needs > {K_MAX})")
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
        L, DB = cfg.dw_lanes, cfg.beat_bytes
        RB = row_beats(cfg)
        lg, lgL, nsb = exact_log2(DB), exact_log2(L), exact_log2(NS)
        BW = DB * 8
        E = isa.DW_COEF_BYTES // DB          # coefficient entries per channel
        LANE_BITS = 5

        cmd = Signal(DepthwiseCommand)
        busy = Signal()
        plane = Signal(32)
        lplane = Signal(32)                  # L planes: one group of channels
        nb = Signal(range(RB + 1))
        rows_in = Signal(17)
        groups = Signal(12)
        last_lanes = Signal(LANE_BITS)
        m.d.comb += [self.busy.eq(busy), self.cmd.ready.eq(~busy)]
        p = self.cmd.payload
        accept = self.cmd.valid & self.cmd.ready
        p_groups = (p.channels + L - 1) >> lgL
        with m.If(accept):
            m.d.sync += [busy.eq(1), cmd.eq(p), plane.eq(p.plane_rows * p.pitch),
                         lplane.eq((p.plane_rows * p.pitch) << lgL), nb.eq(p.pitch >> lg),
                         rows_in.eq(p.rows + p.k_last), groups.eq(p_groups),
                         last_lanes.eq(p.channels - ((p_groups - 1) << lgL))]

        def lanes_of(g):
            return Mux(g == groups - 1, last_lanes, L)

        # ------------------------------------------------ coefficients: memory (LOAD DW) -> a shadow register bank
        # -> at a group's first pixel, its taps to the one active bank the multipliers read (no bank
        # multiplexer in front of them) and its bias, multiplier and shift to one of two small banks (pixels of
        # the previous group are still in the stages that read those).
        cmem = Memory(shape=unsigned(BW), depth=isa.scratchpad_depth(cfg, "DW"), init=[])
        m.submodules.coef_mem = cmem
        cwp, crp = cmem.write_port(), cmem.read_port()
        m.d.comb += [self.coef_wr.ready.eq(1), cwp.addr.eq(self.coef_wr.payload.addr),
                     cwp.data.eq(self.coef_wr.payload.data), cwp.en.eq(self.coef_wr.valid)]
        PB = isa.DW_COEF_BYTES - isa.DW_TAP_BYTES            # parameter bytes per channel (bias, multiplier, shift)
        shadow = Signal(L * isa.DW_COEF_BYTES * 8)
        taps = Signal(L * isa.DW_TAP_BYTES * 8)
        pbanks = [Signal(L * PB * 8, name=f"param_bank{b}") for b in range(2)]
        copied = Signal(12)                  # groups whose coefficients have left the shadow bank
        ig = Signal(12)                      # group being issued
        cooldown = [Signal(range(COOLDOWN + 1), name=f"cooldown{b}") for b in range(2)]
        pf_g = Signal(12)                    # group being (or next to be) prefetched
        pf_active = Signal()
        pf_i = Signal(range(L * E + 1))
        pf_base = Signal(len(crp.addr) + 1)
        loaded = Signal(12)                  # groups whose coefficients are in their bank
        pf_w, pf_w_last = Signal(), Signal()
        pf_w_idx = Signal(range(L * E))
        m.d.comb += crp.addr.eq(pf_base + pf_i)
        with m.If(accept):
            m.d.sync += [pf_g.eq(0), pf_active.eq(0), pf_base.eq(0), loaded.eq(0), copied.eq(0)]
        with m.Elif(pf_active):
            m.d.sync += pf_i.eq(pf_i + 1)
            with m.If(pf_i == L * E - 1):
                m.d.sync += [pf_active.eq(0), pf_g.eq(pf_g + 1), pf_base.eq(pf_base + L * E)]
        with m.Elif(busy & (pf_g < groups) & (pf_g <= ig + 1) & (copied == pf_g)
                    & (Mux(pf_g[0], cooldown[1], cooldown[0]) == 0)):
            # The shadow bank is free (group pf_g - 1 has begun), and parameter bank pf_g % 2 will be when
            # group pf_g begins: group pf_g - 2 has issued its last pixel and left the coefficient stages.
            m.d.sync += [pf_active.eq(1), pf_i.eq(0)]
        m.d.sync += [pf_w.eq(pf_active), pf_w_last.eq(pf_active & (pf_i == L * E - 1)), pf_w_idx.eq(pf_i)]
        with m.If(pf_w):
            m.d.sync += shadow.word_select(pf_w_idx, BW).eq(crp.data)
        with m.If(pf_w_last & ~accept):
            m.d.sync += loaded.eq(loaded + 1)

        def tap(lane, byte):
            return taps.word_select(lane * isa.DW_TAP_BYTES + byte, 8)

        def param(bank_sel, lane, byte, width):
            base = (lane * PB + byte - isa.DW_TAP_BYTES) * 8
            return Mux(bank_sel, pbanks[1][base:base + width], pbanks[0][base:base + width])

        # ------------------------------------------------ AR: groups, their rows 0 .. rows_in-1, lanes, nb beats each
        q_base = Signal(32)                  # global row of the window's top row (issue side)
        a_q = Signal(32)                     # global row being requested
        a_g = Signal(12)
        a_r = Signal(17)
        a_lane = Signal(LANE_BITS)
        a_left = Signal(range(RB + 1))
        a_addr, a_lane_addr, a_row_addr, a_grp_addr = (Signal(32, name=n) for n in
                                                       ("a_addr", "a_lane_addr", "a_row_addr", "a_grp_addr"))
        with m.If(accept):
            m.d.sync += [a_q.eq(0), a_g.eq(0), a_r.eq(0), a_lane.eq(0), a_left.eq(p.pitch >> lg),
                         a_addr.eq(p.in_addr), a_lane_addr.eq(p.in_addr), a_row_addr.eq(p.in_addr),
                         a_grp_addr.eq(p.in_addr)]
        to_boundary = Signal(range(BOUNDARY // DB + 1))
        m.d.comb += to_boundary.eq((BOUNDARY - a_addr[:exact_log2(BOUNDARY)]) >> lg)
        burst = Signal(range(RB + 1))
        m.d.comb += burst.eq(Mux(a_left < to_boundary, a_left, to_boundary))
        a_more = busy & (a_g < groups)
        # Row q may stream in once its slot's previous row (q - NS) is no longer read.
        m.d.comb += [self.ar.valid.eq(a_more & (a_left != 0) & (a_q < q_base + NS)),
                     self.ar.payload.addr.eq(a_addr), self.ar.payload.len.eq(burst - 1)]
        with m.If(self.ar.valid & self.ar.ready):          # (ar.valid is low while idle: no clash with accept)
            m.d.sync += [a_addr.eq(a_addr + (burst << lg)), a_left.eq(a_left - burst)]
        with m.Elif(a_more & (a_left == 0)):
            m.d.sync += a_left.eq(nb)
            with m.If(a_lane == lanes_of(a_g) - 1):
                m.d.sync += [a_lane.eq(0), a_q.eq(a_q + 1)]
                with m.If(a_r == rows_in - 1):
                    nxt = a_grp_addr + lplane
                    m.d.sync += [a_r.eq(0), a_g.eq(a_g + 1), a_grp_addr.eq(nxt), a_row_addr.eq(nxt),
                                 a_lane_addr.eq(nxt), a_addr.eq(nxt)]
                with m.Else():
                    nxt = a_row_addr + cmd.pitch
                    m.d.sync += [a_r.eq(a_r + 1), a_row_addr.eq(nxt), a_lane_addr.eq(nxt), a_addr.eq(nxt)]
            with m.Else():
                m.d.sync += [a_lane.eq(a_lane + 1), a_lane_addr.eq(a_lane_addr + plane),
                             a_addr.eq(a_lane_addr + plane)]

        # ------------------------------------------------ R: beats into the row slots
        r_q = Signal(32)                     # rows completely received (global)
        r_g = Signal(12)
        r_r = Signal(17)
        r_lane = Signal(LANE_BITS)
        r_beat = Signal(range(RB))
        b0 = Signal(range(64 // DB + 1))
        m.d.comb += b0.eq(cmd.col0 >> lg)
        r_fire = self.r.valid & self.r.ready
        m.d.comb += self.r.ready.eq(busy)
        r_slot = r_q[:nsb]
        with m.If(accept):
            m.d.sync += [r_q.eq(0), r_g.eq(0), r_r.eq(0), r_lane.eq(0), r_beat.eq(0)]
        with m.Elif(r_fire):
            with m.If(r_beat == nb - 1):
                m.d.sync += r_beat.eq(0)
                with m.If(r_lane == lanes_of(r_g) - 1):
                    m.d.sync += [r_lane.eq(0), r_q.eq(r_q + 1)]
                    with m.If(r_r == rows_in - 1):
                        m.d.sync += [r_r.eq(0), r_g.eq(r_g + 1)]
                    with m.Else():
                        m.d.sync += r_r.eq(r_r + 1)
                with m.Else():
                    m.d.sync += r_lane.eq(r_lane + 1)
            with m.Else():
                m.d.sync += r_beat.eq(r_beat + 1)

        x = Signal(14)
        pos = Signal(16)
        m.d.comb += pos.eq(cmd.col0 + x)
        # The line buffer: one memory, slot s's beat j at entry s * RB + j, in block RAM (as LUT RAM it was
        # about 1.5 k LUTs on kv260), read by the window-row reader below, one window row per cycle.
        lbuf = Memory(shape=unsigned(L * BW), depth=NS * RB, init=[], attrs={"ram_style": "block"})
        m.submodules.line_buffer = lbuf
        wp = lbuf.write_port(granularity=BW)
        rp = lbuf.read_port()
        m.d.comb += [wp.addr.eq(Cat(r_beat, r_slot)), wp.data.eq(Cat(*[self.r.payload] * L)),
                     wp.en.eq(Mux(r_fire, 1 << r_lane, 0))]
        # Heads, one entry per slot, in a small memory read asynchronously (LUTRAM) by the K_MAX window rows
        # when an output row starts, all lanes: the row's first window (bytes col0 .. col0 + K_MAX - 1, put
        # in place by one byte rotator as the row's beats arrive) and the feed beats F, G (the beat of byte
        # col0 + K_MAX, and the next).
        WB = K_MAX * 8
        b_f = Signal(range(64 // DB + 2))
        m.d.comb += b_f.eq((cmd.col0 + K_MAX) >> lg)
        o0 = cmd.col0[:lg]
        rot = Cat(*[self.r.payload.word_select((o0 + j)[:lg], 8) for j in range(K_MAX)])
        heads = Memory(shape=unsigned(L * (2 * BW + WB)), depth=NS, init=[])
        m.submodules.heads = heads
        hwp = heads.write_port(granularity=8)
        lane_en = Cat(*[r_fire & (r_lane == lane) for lane in range(L)])
        m.d.comb += [hwp.addr.eq(r_slot), hwp.data.eq(Cat(*[self.r.payload] * (2 * L), *[rot] * L)),
                     hwp.en.eq(Cat(*[Cat(*[lane_en[lane] & (r_beat == b_f + i)] * DB) for i in range(2)
                                     for lane in range(L)],
                                   *[Cat(*[lane_en[lane] & (r_beat == b0 + ((o0 + j) >> lg)) for j in range(K_MAX)])
                                     for lane in range(L)]))]
        head_ports = [heads.read_port(domain="comb") for _ in range(K_MAX)]
        # Window state per window row ky (row q_base + ky), not per slot. The window registers shift one byte a
        # pixel; the byte coming in (col0 + x + K_MAX - 1) is taken from the feed beat F; once F's last byte is
        # in, F takes G and the reader refills G, one window row per cycle (K_MAX < DB cycles before the next
        # feed crossing). `wn` holds the next row's first window until its first pixel issues.
        fs = [Signal(L * BW, name=f"feed{ky}") for ky in range(K_MAX)]
        gs = [Signal(L * BW, name=f"feed_next{ky}") for ky in range(K_MAX)]
        wns = [Signal(L * WB, name=f"win_first{ky}") for ky in range(K_MAX)]
        rd_row = Signal(range(K_MAX + 1), init=K_MAX)     # window row the reader fetches (K_MAX: idle)
        rd_data_row = Signal(range(K_MAX + 1), init=K_MAX)  # ... whose data the memory gives this cycle
        rd_beat = Signal(range(RB))                       # the beat it fetches: F's + 2 at the crossing
        cross = Signal()                                  # a feed crossing: the reader starts (row 0 now)
        cross_beat = Signal(range(RB))
        m.d.comb += rp.addr.eq(Mux(cross, Cat(cross_beat, q_base[:nsb]), Cat(rd_beat, (q_base + rd_row)[:nsb])))
        m.d.sync += rd_data_row.eq(Mux(cross, 0, rd_row))
        with m.If(cross):
            m.d.sync += [rd_row.eq(1), rd_beat.eq(cross_beat)]
        with m.Elif(rd_row != K_MAX):
            m.d.sync += rd_row.eq(rd_row + 1)
        for ky in range(K_MAX):
            with m.If(rd_data_row == ky):
                m.d.sync += gs[ky].eq(rp.data)
        feed = Signal(16)
        m.d.comb += feed.eq(pos + K_MAX - 1)              # the byte the window takes in at pixel x > 0

        # ------------------------------------------------ issue: one output pixel of every lane per cycle
        run = Signal()                     # issuing row oy of group ig (else waiting for its rows / coefficients)
        issuing = Signal()                 # the command still has pixels to issue
        oy = Signal(16)
        row_addr = Signal(32)              # output row oy of group ig, column 0
        grp_out = Signal(32)               # output row 0 of group ig
        last_x = x == cmd.width - 1
        last_row = oy == cmd.rows - 1
        last_group = ig == groups - 1
        group_end = (x[:lg] == DB - 1) | last_x
        outstanding = Signal(range(OUT_FIFO + 2))    # output beat groups issued, not yet written out
        go = run & (~group_end | (outstanding < OUT_FIFO))
        rows_ready = (r_q > q_base + cmd.k_last) & (loaded > ig)
        next_q = Signal(32)
        m.d.comb += next_q.eq(q_base + Mux(last_row, cmd.k_last + 1, 1))
        next_ready = (r_q > next_q + cmd.k_last) & (loaded > ig + last_row)

        # The row that starts next: the waiting one, or the one after the running one.
        start_q = Signal(32)
        m.d.comb += start_q.eq(Mux(run, next_q, q_base))
        for ky, hp in enumerate(head_ports):
            m.d.comb += hp.addr.eq((start_q + ky)[:nsb])

        def start_row():
            stmts = []
            for ky, hp in enumerate(head_ports):
                stmts += [fs[ky].eq(hp.data.word_select(0, L * BW)), gs[ky].eq(hp.data.word_select(1, L * BW)),
                          wns[ky].eq(hp.data[2 * L * BW:])]
            return stmts + [rd_row.eq(K_MAX), rd_data_row.eq(K_MAX)]

        with m.If(accept):
            m.d.sync += [issuing.eq(1), run.eq(0), ig.eq(0), oy.eq(0), x.eq(0), q_base.eq(0),
                         row_addr.eq(p.out_addr), grp_out.eq(p.out_addr)]
        with m.Elif(issuing & ~run):
            with m.If(rows_ready):
                m.d.sync += [run.eq(1), *start_row()]
        with m.Elif(go):
            with m.If(last_x):
                m.d.sync += x.eq(0)
                with m.If(last_row & last_group):
                    m.d.sync += [run.eq(0), issuing.eq(0)]
                with m.Else():
                    m.d.sync += q_base.eq(next_q)
                    with m.If(last_row):
                        m.d.sync += [oy.eq(0), ig.eq(ig + 1), grp_out.eq(grp_out + lplane),
                                     row_addr.eq(grp_out + lplane)]
                    with m.Else():
                        m.d.sync += [oy.eq(oy + 1), row_addr.eq(row_addr + cmd.pitch)]
                    with m.If(next_ready):
                        m.d.sync += start_row()
                    with m.Else():
                        m.d.sync += run.eq(0)
            with m.Else():
                m.d.sync += x.eq(x + 1)
                with m.If((x != 0) & (feed[:lg] == DB - 1)):
                    for ky in range(K_MAX):
                        m.d.sync += fs[ky].eq(gs[ky])
                    m.d.comb += [cross.eq(1), cross_beat.eq((feed >> lg) + 2)]
        with m.If(go & (x == 0) & (oy == 0)):           # the group's first pixel: its coefficients leave the shadow
            m.d.sync += copied.eq(copied + 1)
            for lane in range(L):
                ch = shadow.word_select(lane, isa.DW_COEF_BYTES * 8)
                m.d.sync += taps.word_select(lane, isa.DW_TAP_BYTES * 8).eq(ch[:isa.DW_TAP_BYTES * 8])
                for b in range(2):
                    with m.If(ig[0] == b):
                        m.d.sync += pbanks[b].word_select(lane, PB * 8).eq(ch[isa.DW_TAP_BYTES * 8:])
        for b in range(2):
            with m.If(go & (ig[0] == b)):
                m.d.sync += cooldown[b].eq(COOLDOWN)
            with m.Elif(cooldown[b] != 0):
                m.d.sync += cooldown[b].eq(cooldown[b] - 1)

        # Stage 1: the window of every lane, 7 rows of 7 bytes: the row's first, or the last one shifted a byte.
        v = [Signal(name=f"valid{i}") for i in range(6)]
        meta_layout = data.StructLayout({"x_lo": unsigned(lg), "end": unsigned(1), "addr": unsigned(32),
                                         "bank": unsigned(1), "lanes": unsigned(LANE_BITS)})
        meta = [Signal(meta_layout, name=f"meta{i}") for i in range(6)]
        m.d.sync += v[1].eq(go)
        with m.If(go):
            m.d.sync += [meta[1].x_lo.eq(x[:lg]), meta[1].end.eq(group_end), meta[1].bank.eq(ig[0]),
                         meta[1].addr.eq(row_addr + ((x >> lg) << lg)), meta[1].lanes.eq(lanes_of(ig))]
        wins = []
        for lane in range(L):
            win = []
            for ky in range(K_MAX):
                reg = Signal(WB, name=f"win{lane}_{ky}")
                byte_in = fs[ky].word_select(lane, BW).word_select(feed[:lg], 8)
                with m.If(go):
                    m.d.sync += reg.eq(Mux(x == 0, wns[ky].word_select(lane, WB), Cat(reg[8:], byte_in)))
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
                                      * tap(lane, ky * TAP_PITCH + kx).as_signed())
                    prods.append(pr)
            row_sums = []
            for ky in range(K_MAX):
                rs = Signal(signed(19), name=f"rowsum{lane}_{ky}")
                m.d.sync += rs.eq(sum(prods[ky * K_MAX:(ky + 1) * K_MAX]))
                row_sums.append(rs)
            total = Signal(signed(22), name=f"sum{lane}")
            m.d.sync += total.eq(sum(row_sums))
            bias = param(meta[4].bank, lane, isa.DW_TAP_BYTES, 32).as_signed()
            wide = Signal(signed(ACC_BITS + 1), name=f"wide{lane}")
            biased = Signal(signed(ACC_BITS), name=f"biased{lane}")
            m.d.comb += wide.eq(total + bias)
            m.d.sync += biased.eq(Mux(wide > hi, hi, Mux(wide < lo, lo, wide)))
            rq = Requantizer()
            m.submodules[f"requant{lane}"] = rq
            m.d.comb += [rq.relu.eq(cmd.relu), rq.i.valid.eq(v[5]), rq.i.payload.acc.eq(biased),
                         rq.i.payload.multiplier.eq(param(meta[5].bank, lane, isa.DW_TAP_BYTES + 4, MULT_BITS)),
                         rq.i.payload.shift.eq(param(meta[5].bank, lane, isa.DW_TAP_BYTES + 8, SHIFT_BITS)),
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
        m.submodules.out_fifo = fifo = SyncFIFOBuffered(width=L * BW + 32 + lg + 1 + LANE_BITS, depth=OUT_FIFO)
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
                     fifo.w_data.eq(Cat(*merged, out_meta.addr, out_meta.x_lo + 1, out_meta.lanes))]
        head = fifo.r_data
        h_data, h_addr = head[:L * BW], head[L * BW:L * BW + 32]
        h_n = head[L * BW + 32:L * BW + 32 + lg + 1]
        h_lanes = head[L * BW + 32 + lg + 1:]
        j = Signal(LANE_BITS)
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
            with m.If(j == h_lanes - 1):
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

        drained = (~issuing & (outstanding == 0) & (writes == 0) & ~aw_fire & (r_g == groups)
                   & (a_g == groups) & ~pf_active)
        with m.If(busy & ~accept & drained):
            m.d.sync += busy.eq(0)
            m.d.comb += self.done.eq(1)
        return m
