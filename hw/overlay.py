"""The overlay: AXI4-Lite control/status, AXI4 master to DDR, command processor, GEMM engine.

   s_axil ─► registers (hw.isa.REGISTERS) ── start/reset ─► Core
   Core:  Fetcher ─► descriptor FIFO ─► Dispatcher ─┬─► LoadUnit  ─► scratchpads (A, B, PARAM)
          (AXI AR/R, id 0)                          ├─► engine compute
                                                    ├─► StoreUnit ─► engine store ─► AXI AW/W/B
                                                    └─► SYNC (waits for all units)
          LoadUnit reads through AXI AR/R id 1; the AR channel is shared by arbitration.

Descriptors run in order. Each carries wait_load/compute/store counts: it is dispatched
only when that many LOAD/COMPUTE/STORE descriptors have completed, so the compiler
states every dependency exactly and loads, computes and stores of different tiles
overlap (double buffering) without the hardware tracking addresses.
Later engines (attention, convolution) plug in as further dispatcher outputs with their
own opcodes (reserved in hw.isa.OPCODES) and LOAD targets, reusing the DMA units.
"""
from amaranth import Cat, ClockDomain, ClockSignal, Const, DomainRenamer, Module, Mux, ResetSignal, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from hw import isa
from hw.axi import BOUNDARY, BURST_INCR, MAX_BURST_BEATS, Axi4Signature, AxiLiteSignature
from hw.conv.depthwise import DepthwiseUnit
from hw.conv.im2col import Im2colLoader
from hw.gemm.engine import GemmEngine
from hw.regfifo import RegisterFIFO2

DESCRIPTOR = data.StructLayout({name: unsigned(width) for name, width, _ in isa.DESCRIPTOR_FIELDS})
#: Where each engine sits in the overlay's hierarchy: the Overlay's `core`, the Core's submodule per engine
#: (hw.flows.estimate groups a hierarchical yosys run by them; the rest of the core is control and DMA).
CORE = "core"
ENGINE_SUBMODULES = {"gemm": "engine", "attention": "attention", "conv": "im2col", "depthwise": "depthwise",
                     "vector": "vector"}
#: ERROR's flag bits (hw.isa.ERROR_NAMES: one bit each, from bit 0).
ERROR_BITS = len(isa.ERROR_NAMES)
assert sorted(isa.ERROR_NAMES) == [1 << i for i in range(ERROR_BITS)]
COUNT_BITS = 16


def shared_field(desc, name):
    """A field whose bits are shared with fields its opcode does not read (hw.isa.SHARED_GROUPS)."""
    pos, width = isa.FIELDS[name]
    return desc.as_value()[pos:pos + width]


class Core(wiring.Component):
    """Everything the soft reset clears: command processor, DMA units, engine, counters."""

    def __init__(self, cfg):
        self.cfg = cfg
        super().__init__({
            "start": In(1), "desc_addr": In(32), "desc_count": In(32),
            "busy": Out(1), "done": Out(1), "error": Out(ERROR_BITS), "error_resp": Out(isa.ERROR_RESP_BITS),
            "error_desc": Out(32),
            "desc_done": Out(32), "cycles": Out(32),
            "loads_done": Out(COUNT_BITS), "computes_done": Out(COUNT_BITS), "stores_done": Out(COUNT_BITS),
            "attentions_done": Out(COUNT_BITS),
            "m_axi": Out(Axi4Signature(cfg.axi_addr_bits, cfg.axi_data_bits, 1)),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        R, C = cfg.rows, cfg.cols
        DB = cfg.axi_data_bits // 8
        DW = cfg.axi_data_bits
        axi = self.m_axi
        m.submodules[ENGINE_SUBMODULES["gemm"]] = engine = GemmEngine(cfg)
        attention = None
        if "attention" in cfg.engines:
            from hw.attention.engine import AttentionEngine
            m.submodules[ENGINE_SUBMODULES["attention"]] = attention = AttentionEngine(cfg)
            m.d.comb += [engine.attn_acc_rd_addr.eq(attention.acc_rd_addr),
                         attention.acc_rd_data.eq(engine.attn_acc_rd_data)]
            wiring.connect(m, attention.acc_wr, engine.attn_acc_wr)
        # The convolution engine's input side: LOAD target IM2COL, sharing the load unit's AXI id and slot.
        has_conv = "conv" in cfg.engines
        i2c = None
        if has_conv:
            m.submodules[ENGINE_SUBMODULES["conv"]] = i2c = Im2colLoader(cfg)
        i2c_busy = i2c.busy if has_conv else Const(0)
        # The depthwise engine: opcode DEPTHWISE on the load unit's AXI read slot (id 1), its own writes (id 1).
        has_dw = "depthwise" in cfg.engines
        dw = None
        if has_dw:
            m.submodules[ENGINE_SUBMODULES["depthwise"]] = dw = DepthwiseUnit(cfg)
        dw_busy = dw.busy if has_dw else Const(0)
        # The vector engine: opcode VECTOR on the same slot and write channel (hw/vector/unit.py).
        has_vec = "vector" in cfg.engines
        vec = None
        if has_vec:
            from hw.vector.unit import VectorUnit
            m.submodules[ENGINE_SUBMODULES["vector"]] = vec = VectorUnit(cfg)
        vec_busy = vec.busy if has_vec else Const(0)
        # The transposing LOAD (load_t): LOAD A / B / V with `transpose`, on the load unit's slot (id 1).
        has_lt = "load_t" in cfg.engines
        tl = None
        if has_lt:
            from hw.gemm.transpose_load import TransposeLoader
            m.submodules.transpose_load = tl = TransposeLoader(cfg, max(R, C))
        tl_busy = tl.busy if has_lt else Const(0)
        # The units that take the load unit's AR/R slot (id 1) while busy: no LOAD starts then, their beats are theirs.
        slot_busy = i2c_busy | dw_busy | vec_busy | tl_busy

        running = Signal()
        error = Signal(ERROR_BITS)
        # Error sources of this cycle (all of them reach `error`, whichever fire together).
        err_set = {bit: Signal(name=f"err_{name.lower().replace(' ', '_')}") for bit, name in isa.ERROR_NAMES.items()}
        m.d.sync += error.eq(error | Cat(*[err_set[1 << i] for i in range(ERROR_BITS)]))
        resp = Signal(isa.ERROR_RESP_BITS)       # the first AXI error response's code (ERROR.AXI_RESP)
        m.d.comb += [self.error.eq(error), self.error_resp.eq(resp)]
        axi_busy = Signal()                      # an AXI transfer still in flight (BUSY stays up after an error)
        m.d.comb += self.busy.eq(running | axi_busy)
        with m.If(running):
            m.d.sync += self.cycles.eq(self.cycles + 1)

        # ------------------------------------------------ AR arbitration (fetch id 0, load id 1)
        f_ar_valid, f_ar_ready, f_ar_addr, f_ar_len = Signal(), Signal(), Signal(32), Signal(8)
        l_ar_valid, l_ar_ready, l_ar_addr, l_ar_len = Signal(), Signal(), Signal(32), Signal(8)
        ar_free = ~axi.arvalid | axi.arready
        m.d.comb += [axi.arsize.eq(exact_log2(DB)), axi.arburst.eq(BURST_INCR),
                     f_ar_ready.eq(ar_free & f_ar_valid),
                     l_ar_ready.eq(ar_free & ~f_ar_valid & l_ar_valid)]
        with m.If(ar_free):
            m.d.sync += axi.arvalid.eq(f_ar_valid | l_ar_valid)
            with m.If(f_ar_valid):
                m.d.sync += [axi.araddr.eq(f_ar_addr), axi.arlen.eq(f_ar_len), axi.arid.eq(0)]
            with m.Else():
                m.d.sync += [axi.araddr.eq(l_ar_addr), axi.arlen.eq(l_ar_len), axi.arid.eq(1)]
        f_r_ready, l_r_ready = Signal(), Signal()
        m.d.comb += axi.rready.eq(Mux(axi.rid, l_r_ready, f_r_ready))
        r_fire = axi.rvalid & axi.rready
        f_beat = r_fire & (axi.rid == 0)
        l_beat = r_fire & (axi.rid == 1) & ~slot_busy
        r_err = r_fire & (axi.rresp != 0)
        b_err = axi.bvalid & (axi.bresp != 0)      # (bready is always 1)
        m.d.comb += [err_set[isa.ERROR_AXI_READ].eq(r_err & (axi.rid != 0)),
                     err_set[isa.ERROR_DESC_FETCH].eq(r_err & (axi.rid == 0)),
                     err_set[isa.ERROR_AXI_WRITE].eq(b_err)]
        with m.If((resp == 0) & (r_err | b_err)):
            m.d.sync += resp.eq(Mux(r_err, axi.rresp, axi.bresp))

        # ------------------------------------------------ fetcher
        m.submodules.descs = fifo = SyncFIFOBuffered(width=isa.DESCRIPTOR_BYTES * 8, depth=isa.DESC_FIFO_DEPTH)
        beats_per_desc = isa.DESCRIPTOR_BYTES // DB
        f_ptr = Signal(32)
        f_left = Signal(32)
        f_inflight = Signal()
        f_ar_pending = Signal()
        f_beats = Signal(range(beats_per_desc + 1))
        f_buf = Signal(isa.DESCRIPTOR_BYTES * 8)
        m.d.comb += [f_ar_valid.eq(f_ar_pending), f_ar_addr.eq(f_ptr), f_ar_len.eq(beats_per_desc - 1),
                     f_r_ready.eq(1)]
        with m.If(running & ~f_inflight & (f_left != 0) & fifo.w_rdy & (error == 0)):
            m.d.sync += [f_inflight.eq(1), f_ar_pending.eq(1), f_beats.eq(0)]
        with m.If(f_ar_ready):
            m.d.sync += f_ar_pending.eq(0)
        shifted = Cat(f_buf, axi.rdata)[DW:]
        m.d.comb += fifo.w_data.eq(shifted)
        with m.If(f_beat):
            m.d.sync += [f_buf.eq(shifted), f_beats.eq(f_beats + 1)]
            with m.If(f_beats == beats_per_desc - 1):
                m.d.comb += fifo.w_en.eq(1)
                m.d.sync += [f_inflight.eq(0), f_ptr.eq(f_ptr + isa.DESCRIPTOR_BYTES), f_left.eq(f_left - 1)]

        # ------------------------------------------------ counters
        issued = {u: Signal(COUNT_BITS, name=f"{u}_issued") for u in ("load", "compute", "store", "attention")}
        load_done_pulse, store_done_pulse = Signal(), Signal()
        with m.If(load_done_pulse):
            m.d.sync += self.loads_done.eq(self.loads_done + 1)
        with m.If(engine.compute_done):
            m.d.sync += self.computes_done.eq(self.computes_done + 1)
        with m.If(store_done_pulse):
            m.d.sync += self.stores_done.eq(self.stores_done + 1)
        if attention is not None:
            with m.If(attention.done):
                m.d.sync += self.attentions_done.eq(self.attentions_done + 1)
        all_idle = ((issued["load"] == self.loads_done) & (issued["compute"] == self.computes_done)
                    & (issued["store"] == self.stores_done) & (issued["attention"] == self.attentions_done))

        # ------------------------------------------------ start / done
        with m.If(self.start & ~self.busy):
            m.d.sync += [running.eq(1), f_ptr.eq(self.desc_addr), f_left.eq(self.desc_count),
                         self.desc_done.eq(0), self.cycles.eq(0),
                         self.loads_done.eq(0), self.computes_done.eq(0), self.stores_done.eq(0),
                         self.attentions_done.eq(0), issued["attention"].eq(0),
                         issued["load"].eq(0), issued["compute"].eq(0), issued["store"].eq(0)]
        with m.If(running & (self.desc_done == self.desc_count) & all_idle & ~f_inflight):
            m.d.sync += running.eq(0)
            m.d.comb += self.done.eq(1)

        # ------------------------------------------------ dispatcher
        desc = data.View(DESCRIPTOR, fifo.r_data[:DESCRIPTOR.size])
        waits_met = ((self.loads_done >= desc.wait_load) & (self.computes_done >= desc.wait_compute)
                     & (self.stores_done >= desc.wait_store) & (self.attentions_done >= desc.wait_attention))
        can_dispatch = running & fifo.r_rdy & waits_met & (error == 0)
        l_cmd_valid, l_cmd_ready = Signal(), Signal()
        dw_free = Signal()         # DEPTHWISE may start: no load running (same slot), no store (the write channel)
        s_cmd_valid, s_cmd_ready = Signal(), Signal()
        taken = Signal()
        op = isa.OPCODES
        with m.If(can_dispatch):
            with m.Switch(desc.opcode):
                with m.Case(op["LOAD"]):
                    known = [desc.target == v for k, v in isa.TARGETS.items() if isa.has_target(cfg, k)]
                    with m.If(Cat(*known).any()):
                        m.d.comb += [l_cmd_valid.eq(1), taken.eq(l_cmd_ready)]
                    with m.Else():
                        m.d.comb += err_set[isa.ERROR_BAD_OPCODE].eq(1)
                with m.Case(op["COMPUTE"]):
                    m.d.comb += [engine.compute.valid.eq(1), taken.eq(engine.compute.ready)]
                with m.Case(op["STORE"]):
                    m.d.comb += [s_cmd_valid.eq(1), taken.eq(s_cmd_ready)]
                with m.Case(op["SYNC"]):
                    m.d.comb += taken.eq(all_idle)
                if attention is not None:
                    with m.Case(op["ATTENTION"]):
                        m.d.comb += [attention.cmd.valid.eq(1), taken.eq(attention.cmd.ready)]
                if has_dw:
                    with m.Case(op["DEPTHWISE"]):
                        # After the loads before it (same slot) and any store (the AXI write channel).
                        m.d.comb += [dw.cmd.valid.eq(dw_free & ~vec_busy), taken.eq(dw_free & ~vec_busy & dw.cmd.ready)]
                if has_vec:
                    with m.Case(op["VECTOR"]):
                        # Like DEPTHWISE: after the loads before it and any store.
                        m.d.comb += [vec.cmd.valid.eq(dw_free & ~dw_busy), taken.eq(dw_free & ~dw_busy & vec.cmd.ready)]
                with m.Default():
                    m.d.comb += err_set[isa.ERROR_BAD_OPCODE].eq(1)
        m.d.comb += fifo.r_en.eq(taken)
        with m.If(taken):
            m.d.sync += self.desc_done.eq(self.desc_done + 1)
            with m.Switch(desc.opcode):
                for name, unit in (("LOAD", "load"), ("COMPUTE", "compute"), ("STORE", "store"),
                                   ("ATTENTION", "attention")) + ((("DEPTHWISE", "load"),) if has_dw else ()) \
                        + ((("VECTOR", "load"),) if has_vec else ()):
                    with m.Case(op[name]):
                        m.d.sync += issued[unit].eq(issued[unit] + 1)
        m.d.comb += [engine.compute.payload.a_base.eq(desc.sp_addr), engine.compute.payload.b_base.eq(desc.b_base),
                     engine.compute.payload.k_last.eq(desc.k_last), engine.compute.payload.acc_base.eq(desc.acc_base),
                     engine.compute.payload.accumulate.eq(desc.accumulate),
                     engine.compute.payload.tiles_last.eq(Mux(desc.count == 0, 0, desc.count - 1))]
        if attention is not None:
            ap = attention.cmd.payload
            m.d.comb += [ap.mode.eq(desc.target), ap.accumulate.eq(desc.accumulate), ap.s_base.eq(desc.sp_addr),
                         ap.v_base.eq(desc.b_base), ap.count.eq(desc.count), ap.chunks_last.eq(desc.k_last),
                         ap.c0.eq(desc.sp_addr), ap.out_base.eq(desc.acc_base),
                         ap.score_mult.eq(desc.param_addr), ap.score_shift.eq(desc.stride),
                         ap.slot.eq(desc.slot)]

        # ------------------------------------------------ load unit
        # Three registered steps, so no path runs from the AXI R handshake to a scratchpad:
        #   R      a beat is taken into `r1` (rready depends on flip-flops only);
        #   issue  `r1` feeds the gearbox: wide targets (an entry of >= 1 beat) shift it into `sr`,
        #          narrow ones (several entries per beat) pick one entry per cycle from it;
        #   write  the scratchpad write port is driven from flip-flops (`w_en`, `w_addr`, `sr`/`w_small`).
        # AR bursts are sized a cycle ahead (`burst_r`), away from the address adder.
        targets = {"A": (R, engine.a_wr), "B": (C, engine.b_wr), "PARAM": (C * isa.PARAM_CHANNEL_BYTES, engine.p_wr)}
        if attention is not None:
            targets["V"] = (C, attention.v_wr)
        if has_dw:
            targets["DW"] = (DB, dw.coef_wr)
        if has_vec:
            targets["VEC"] = (DB, vec.param_wr)
        if "store_lut" in cfg.engines:
            targets["LUT"] = (DB, engine.lut_wr)
        if "store_add" in cfg.engines:
            targets["RES"] = (C, engine.res_wr)
        l_busy = Signal()
        l_sel = {name: Signal(name=f"l_sel_{name}") for name in targets}
        l_has = Signal()                         # entries left to write (narrow targets stop there)
        l_entries = Signal(COUNT_BITS + 1)
        l_ar_addr_r = Signal(32)
        l_ar_left = Signal(32)
        l_r_left = Signal(32)
        m.d.comb += l_cmd_ready.eq(~l_busy & ~slot_busy)
        total_beats = Signal(32)
        narrow_ebs = [eb for eb, _ in targets.values() if eb < DB]
        epb_max = DB // min(narrow_ebs) if narrow_ebs else 1
        epb_last = Signal(range(max(2, epb_max)))      # entries per beat - 1 for this load's target
        epb_last_in = Signal.like(epb_last)
        with m.Switch(desc.target):
            for name, (eb, _) in targets.items():
                with m.Case(isa.TARGETS[name]):
                    if eb >= DB:
                        m.d.comb += total_beats.eq(desc.count * (eb // DB))
                    else:
                        m.d.comb += [total_beats.eq((desc.count + (DB // eb - 1)) >> exact_log2(DB // eb)),
                                     epb_last_in.eq(DB // eb - 1)]
        is_im2col = desc.target == isa.TARGETS["IM2COL"]
        is_transpose = Signal()
        if has_lt:
            m.d.comb += is_transpose.eq(desc.transpose & Cat(*[desc.target == isa.TARGETS[t]
                                                              for t in isa.TRANSPOSE_TARGETS if t in targets]).any())
        w_addr = Signal(16)
        beat_in_entry = Signal(range(max(2, max(eb for eb, _ in targets.values()) // DB + 1)))
        l_start = l_cmd_valid & l_cmd_ready & ~is_im2col & ~is_transpose
        with m.If(l_start):
            m.d.sync += [l_busy.eq(1), w_addr.eq(desc.sp_addr), l_entries.eq(desc.count), l_has.eq(desc.count != 0),
                         l_ar_addr_r.eq(desc.dram_addr), l_ar_left.eq(total_beats), l_r_left.eq(total_beats),
                         epb_last.eq(epb_last_in), beat_in_entry.eq(0)]
        with m.If(l_cmd_valid & l_cmd_ready & ~is_im2col):        # its target's write port (a transposing LOAD's too)
            m.d.sync += [sel.eq(desc.target == isa.TARGETS[name]) for name, sel in l_sel.items()]
        # AR: bursts of up to 256 beats, never across a 4 KiB boundary.
        to_boundary = Signal(range(BOUNDARY // DB + 1))
        m.d.comb += to_boundary.eq((BOUNDARY - l_ar_addr_r[:exact_log2(BOUNDARY)]) >> exact_log2(DB))
        capped = Signal(range(MAX_BURST_BEATS + 1))
        burst = Signal(range(MAX_BURST_BEATS + 1))
        m.d.comb += [capped.eq(Mux(to_boundary < MAX_BURST_BEATS, to_boundary, MAX_BURST_BEATS)),
                     burst.eq(Mux(l_ar_left < capped, l_ar_left, capped))]
        burst_r = Signal.like(burst)
        ar_more = Signal()
        ar_fresh = Signal()                       # burst_r and ar_more are of the current address and count
        m.d.sync += [burst_r.eq(burst), ar_more.eq(l_ar_left != 0), ar_fresh.eq(~l_start & ~l_ar_ready)]
        m.d.comb += [l_ar_valid.eq(l_busy & ar_fresh & ar_more), l_ar_addr.eq(l_ar_addr_r), l_ar_len.eq(burst_r - 1)]
        with m.If(l_ar_ready):
            m.d.sync += [l_ar_addr_r.eq(l_ar_addr_r + burst_r * DB), l_ar_left.eq(l_ar_left - burst_r)]
        # R: one beat register; it is free unless a narrow target still has entries in it.
        r1_data = Signal(DW)
        r1_valid = Signal()
        r1_sub = Signal.like(epb_last)            # entry of the beat issued this cycle (narrow targets)
        r1_last = Signal()                        # r1_sub == epb_last
        m.d.comb += l_r_ready.eq(l_busy & (~r1_valid | r1_last))
        with m.If(l_beat):
            m.d.sync += [l_r_left.eq(l_r_left - 1), r1_data.eq(axi.rdata), r1_valid.eq(1), r1_sub.eq(0),
                         r1_last.eq(epb_last == 0)]
        with m.Elif(r1_valid):
            m.d.sync += [r1_sub.eq(r1_sub + 1), r1_last.eq(r1_sub + 1 == epb_last)]
            with m.If(r1_last):
                m.d.sync += r1_valid.eq(0)
        # Issue: the gearbox from beats to entries.
        wide_bytes = max([DB] + [eb for eb, _ in targets.values() if eb >= DB])
        sr = Signal(wide_bytes * 8)
        with m.If(r1_valid):
            m.d.sync += sr.eq(Cat(sr, r1_data)[DW:])
        w_small = Signal(max(narrow_ebs, default=1) * 8)
        issue = Signal()
        w_en = Signal()
        m.d.sync += w_en.eq(issue)
        for name, (eb, port) in targets.items():
            sel = l_sel[name]
            if eb >= DB:
                n = eb // DB
                entry = sr[len(sr) - eb * 8:]
                with m.If(r1_valid & sel):
                    m.d.comb += issue.eq(beat_in_entry == n - 1 if n > 1 else 1)
                    if n > 1:
                        m.d.sync += beat_in_entry.eq(Mux(beat_in_entry == n - 1, 0, beat_in_entry + 1))
            else:
                entry = w_small[:eb * 8]
                with m.If(r1_valid & sel):
                    m.d.comb += issue.eq(l_has)
                    m.d.sync += w_small[:eb * 8].eq(r1_data.word_select(r1_sub, eb * 8))
            # Write: from flip-flops only.
            m.d.comb += [port.valid.eq(w_en & sel), port.payload.addr.eq(w_addr)]
            if name == "PARAM":
                for j in range(C):
                    base = j * isa.PARAM_CHANNEL_BYTES * 8
                    m.d.comb += [port.payload.data[j].bias.eq(entry[base:base + 32]),
                                 port.payload.data[j].multiplier.eq(entry[base + 32:base + 63]),
                                 port.payload.data[j].shift.eq(entry[base + 64:base + 70])]
                if "store_add" in cfg.engines:   # hw.isa.pack_params: channel 0's add word and add shift bits
                    word3, mw, at = 96, isa.ADD_MULT_WIDTH, 64 + isa.ADD_SHIFT_AT
                    m.d.comb += [port.payload.add.a.eq(entry[word3:word3 + mw]),
                                 port.payload.add.b.eq(entry[word3 + mw:word3 + 2 * mw]),
                                 port.payload.add.s.eq(entry[at:at + isa.ADD_SHIFT_WIDTH])]
            else:
                m.d.comb += port.payload.data.eq(entry)
        with m.If(issue):
            m.d.sync += [l_entries.eq(l_entries - 1), l_has.eq(l_entries != 1)]
        with m.If(w_en):
            m.d.sync += w_addr.eq(w_addr + 1)
        if has_conv:
            # IM2COL loads: the loader takes the AR/R slot (id 1) and the B scratchpad's write port.
            m.d.comb += [i2c.cmd.valid.eq(l_cmd_valid & is_im2col & ~l_busy),
                         i2c.cmd.payload.addr.eq(desc.dram_addr), i2c.cmd.payload.pitch.eq(desc.stride),
                         i2c.cmd.payload.plane_rows.eq(shared_field(desc, "plane_rows")),
                         i2c.cmd.payload.channels.eq(desc.count),
                         i2c.cmd.payload.k_last.eq(shared_field(desc, "kernel_last")),
                         i2c.cmd.payload.stride_log2.eq(shared_field(desc, "stride_log2")),
                         i2c.cmd.payload.offset.eq(shared_field(desc, "col_offset")),
                         i2c.cmd.payload.out_rows_last.eq(shared_field(desc, "out_rows_last")),
                         i2c.cmd.payload.sp.eq(desc.sp_addr),
                         i2c.r.valid.eq(axi.rvalid & (axi.rid == 1) & i2c.busy), i2c.r.payload.eq(axi.rdata),
                         i2c.ar.ready.eq(l_ar_ready)]
            with m.If(i2c.busy):
                m.d.comb += [l_ar_valid.eq(i2c.ar.valid), l_ar_addr.eq(i2c.ar.payload.addr),
                             l_ar_len.eq(i2c.ar.payload.len), l_r_ready.eq(i2c.r.ready),
                             engine.b_wr.valid.eq(i2c.b_wr.valid), engine.b_wr.payload.eq(i2c.b_wr.payload)]
            with m.If(i2c.done):
                m.d.comb += load_done_pulse.eq(1)

        def take_read_slot(unit):
            """A DDR-to-DDR unit (DEPTHWISE, VECTOR) takes the AR/R slot (id 1) while busy, like IM2COL loads,
            and completes as a LOAD."""
            m.d.comb += [unit.r.valid.eq(axi.rvalid & (axi.rid == 1) & unit.busy), unit.r.payload.eq(axi.rdata),
                         unit.ar.ready.eq(l_ar_ready)]
            with m.If(unit.busy):
                m.d.comb += [l_ar_valid.eq(unit.ar.valid), l_ar_addr.eq(unit.ar.payload.addr),
                             l_ar_len.eq(unit.ar.payload.len), l_r_ready.eq(unit.r.ready)]
            with m.If(unit.done):
                m.d.comb += load_done_pulse.eq(1)

        if has_dw:
            take_read_slot(dw)
            dp = dw.cmd.payload
            dwf = lambda name: shared_field(desc, name)     # noqa: E731 (shared-bit fields, hw.isa.DW_FIELDS)
            m.d.comb += [dp.in_addr.eq(desc.dram_addr), dp.out_addr.eq(dwf("dw_out_addr")), dp.pitch.eq(desc.stride),
                         dp.plane_rows.eq(dwf("dw_plane_rows")), dp.rows.eq(desc.count),
                         dp.width.eq(dwf("dw_width")), dp.k_last.eq(dwf("dw_kernel_last")),
                         dp.col0.eq(dwf("dw_col0")), dp.channels.eq(dwf("dw_channels")), dp.relu.eq(desc.relu)]
        if has_vec:
            take_read_slot(vec)
            vp = vec.cmd.payload
            vf = lambda name: shared_field(desc, name)     # noqa: E731 (shared-bit fields, hw.isa.VEC_FIELDS)
            m.d.comb += [vp.op.eq(desc.target), vp.in_addr.eq(desc.dram_addr), vp.out_addr.eq(vf("vec_out_addr")),
                         vp.b_addr.eq(vf("vec_b_addr")), vp.rows.eq(vf("vec_rows")), vp.aux.eq(vf("vec_aux")),
                         vp.dim.eq(vf("vec_dim")), vp.pitch.eq(vf("vec_pitch")), vp.width.eq(vf("vec_width"))]
        if has_lt:
            # After the loads before it (same slot); its entries through the target's write port.
            take_read_slot(tl)
            tp = tl.cmd.payload
            m.d.comb += [tl.cmd.valid.eq(l_cmd_valid & is_transpose & l_cmd_ready), tp.addr.eq(desc.dram_addr),
                         tp.pitch.eq(desc.stride), tp.count.eq(desc.count),
                         tp.rows_last.eq(shared_field(desc, "t_rows_last")), tp.sp.eq(desc.sp_addr)]
            for name in (t for t in isa.TRANSPOSE_TARGETS if t in targets):
                eb, port = targets[name]
                with m.If(tl.wr.valid & l_sel[name]):
                    m.d.comb += [port.valid.eq(1), port.payload.addr.eq(tl.wr.payload.addr),
                                 port.payload.data.eq(tl.wr.payload.data[:8 * eb])]
        with m.If(l_busy & (l_r_left == 0) & (l_ar_left == 0) & ~r1_valid & ~w_en):
            m.d.sync += l_busy.eq(0)
            m.d.comb += load_done_pulse.eq(1)

        # ------------------------------------------------ store unit
        # A STORE is tiles_last + 1 tiles of `count` rows: row r of tile t at dram_addr + t tile_stride + r stride.
        s_busy = Signal()
        s_engine_cmd = Signal()
        s_aw_addr = Signal(32)
        s_tile_addr = Signal(32)
        s_stride = Signal(32)
        s_tile_stride = Signal(isa.FIELDS["tile_stride"][1])
        s_rows_last = Signal(range(R))
        s_aw_row = Signal(range(R))
        total = R * isa.MAX_TILES
        s_aw_left = Signal(range(total + 1))
        s_w_left = Signal(range(total + 1))
        s_b_left = Signal(range(total + 1))
        s_int32 = Signal()
        s_cols = Signal(8)
        m.d.comb += s_cmd_ready.eq(~s_busy)
        sp = engine.store.payload
        s_rows = Signal(range(total + 1))
        tiles_last = shared_field(desc, "tiles_last")
        m.d.comb += s_rows.eq(desc.count[:len(s_aw_row) + 1] * (tiles_last + 1))
        with m.If(s_cmd_valid & s_cmd_ready):
            m.d.sync += [s_busy.eq(1), s_engine_cmd.eq(1), s_aw_addr.eq(desc.dram_addr), s_stride.eq(desc.stride),
                         s_tile_addr.eq(desc.dram_addr), s_tile_stride.eq(shared_field(desc, "tile_stride")),
                         s_rows_last.eq(desc.count - 1), s_aw_row.eq(0),
                         s_aw_left.eq(s_rows), s_w_left.eq(s_rows), s_b_left.eq(s_rows),
                         s_int32.eq(desc.out_int32), s_cols.eq(desc.cols), sp.param_rows.eq(desc.param_rows),
                         sp.acc_base.eq(desc.sp_addr), sp.rows_last.eq(desc.count - 1), sp.tiles_last.eq(tiles_last),
                         sp.param_addr.eq(desc.param_addr), sp.relu.eq(desc.relu), sp.out_int32.eq(desc.out_int32),
                         sp.lut.eq(desc.lut), sp.add.eq(desc.add)]
        m.d.comb += engine.store.valid.eq(s_engine_cmd)
        with m.If(engine.store.ready & s_engine_cmd):
            m.d.sync += s_engine_cmd.eq(0)
        bpr8, bpr32 = C // DB, C * 4 // DB          # beats per output row
        m.d.comb += [axi.awvalid.eq(s_busy & (s_aw_left != 0)), axi.awaddr.eq(s_aw_addr), axi.awid.eq(0),
                     axi.awlen.eq(Mux(s_int32, bpr32 - 1, bpr8 - 1)),
                     axi.awsize.eq(exact_log2(DB)), axi.awburst.eq(BURST_INCR)]
        with m.If(axi.awvalid & axi.awready & ~dw_busy & ~vec_busy):
            m.d.sync += [s_aw_addr.eq(s_aw_addr + s_stride), s_aw_left.eq(s_aw_left - 1), s_aw_row.eq(s_aw_row + 1)]
            with m.If(s_aw_row == s_rows_last):
                next_tile = s_tile_addr + s_tile_stride
                m.d.sync += [s_aw_row.eq(0), s_tile_addr.eq(next_tile), s_aw_addr.eq(next_tile)]
        # Rows wait in a 2-row FIFO for the W channel: the next row is ready the cycle after the
        # last beat of the current one (a single-beat row per cycle), and the store pipeline's
        # ready comes from the FIFO's registers, not from wready.
        # An int8 row is its first C bytes (bpr8 beats; the beats after them are not sent, so the bits
        # above are the int32 view's, with no gate to clear them).
        m.submodules.w_rows = w_rows = RegisterFIFO2(C * 32)     # in flip-flops: not a LUT RAM read (hw.regfifo)
        w_beat = Signal(range(max(2, bpr32)))
        row32 = Cat(*[engine.out.payload[j] for j in range(C)])
        m.d.comb += [engine.out.ready.eq(w_rows.w_rdy), w_rows.w_en.eq(engine.out.valid),
                     w_rows.w_data.eq(Cat(Mux(s_int32, row32[:C * 8], Cat(*[engine.out.payload[j][:8] for j in range(C)])),
                                          row32[C * 8:]))]
        w_last = w_beat == Mux(s_int32, bpr32 - 1, bpr8 - 1)
        m.d.comb += [axi.wvalid.eq(w_rows.r_rdy), axi.wdata.eq(w_rows.r_data.word_select(w_beat, DW)),
                     axi.wstrb.eq((1 << DB) - 1), axi.wlast.eq(w_last)]
        # STORE.cols: only the first `cols` columns of each row reach DDR (write strobes).
        valid_bytes = Signal(range(C * 4 + 1))
        m.d.comb += valid_bytes.eq(Mux(s_cols == 0, C, s_cols) << Mux(s_int32, 2, 0))
        m.d.comb += axi.wstrb.eq(Cat(*[(w_beat * DB + i) < valid_bytes for i in range(DB)]))
        with m.If(axi.wvalid & axi.wready & ~dw_busy & ~vec_busy):
            m.d.sync += w_beat.eq(w_beat + 1)
            with m.If(w_last):
                m.d.comb += w_rows.r_en.eq(1)
                m.d.sync += [w_beat.eq(0), s_w_left.eq(s_w_left - 1)]
        m.d.comb += axi.bready.eq(1)
        with m.If(axi.bvalid & (axi.bid == 0)):
            m.d.sync += s_b_left.eq(s_b_left - 1)
        with m.If(s_busy & ~s_engine_cmd & (s_aw_left == 0) & (s_w_left == 0) & (s_b_left == 0)):
            m.d.sync += s_busy.eq(0)
            m.d.comb += store_done_pulse.eq(1)
        m.d.comb += dw_free.eq(~l_busy & ~i2c_busy & ~tl_busy & ~s_busy)
        m.d.comb += axi_busy.eq(f_inflight | l_busy | slot_busy | s_busy)
        if has_dw:
            # The depthwise unit owns the write channel while busy (no STORE starts then, and it starts
            # only when no STORE runs): single-beat bursts with id 1, its B responses counted by the unit.
            m.d.comb += [s_cmd_ready.eq(~s_busy & ~dw.busy), dw.b.eq(axi.bvalid & (axi.bid == 1) & ~vec_busy),
                         dw.aw.ready.eq(axi.awready & dw.busy), dw.w.ready.eq(axi.wready & dw.busy)]
            with m.If(dw.busy):
                m.d.comb += [axi.awvalid.eq(dw.aw.valid), axi.awaddr.eq(dw.aw.payload), axi.awid.eq(1),
                             axi.awlen.eq(0), axi.wvalid.eq(dw.w.valid), axi.wdata.eq(dw.w.payload.data),
                             axi.wstrb.eq(dw.w.payload.strb), axi.wlast.eq(1)]

        if has_vec:
            # The vector unit owns the write channel while busy, as the depthwise unit (id 1).
            m.d.comb += [s_cmd_ready.eq(~s_busy & ~dw_busy & ~vec.busy), vec.b.eq(axi.bvalid & (axi.bid == 1) & vec.busy),
                         vec.aw.ready.eq(axi.awready & vec.busy), vec.w.ready.eq(axi.wready & vec.busy)]
            with m.If(vec.busy):
                m.d.comb += [axi.awvalid.eq(vec.aw.valid), axi.awaddr.eq(vec.aw.payload.addr), axi.awid.eq(1),
                             axi.awlen.eq(vec.aw.payload.len), axi.wvalid.eq(vec.w.valid),
                             axi.wdata.eq(vec.w.payload.data), axi.wstrb.eq((1 << DB) - 1),
                             axi.wlast.eq(vec.w.payload.last)]

        with m.If((error != 0) & running):
            # First error of the run: stop, and remember where the dispatcher was.
            m.d.sync += [running.eq(0), self.error_desc.eq(self.desc_done)]
        return m


#: The overlay's Verilog module name (simulation, Vivado IP, ECP5 flow).
VERILOG_NAME = isa.VERILOG_NAME


class Overlay(wiring.Component):
    """The top level: `s_axil` registers, `m_axi` to DDR, `irq`."""

    def __init__(self, cfg):
        self.cfg = cfg
        super().__init__({
            "s_axil": In(AxiLiteSignature(isa.CSR_ADDR_BITS, 32)),
            "m_axi": Out(Axi4Signature(cfg.axi_addr_bits, cfg.axi_data_bits, 1)),
            "irq": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        soft_reset = Signal()
        # The core has one reset, the bus's or CONTROL's soft reset, from one flip-flop (init 1: set while the
        # bus is in reset), a cycle after either, and on a global network where the platform has one
        # (`global_net`): it reaches nearly every flip-flop of the core (~14k on ECP5's ulx3s-gemm), and two
        # resets ORed at each (a ResetInserter) put that fan-out back in the fabric, the slowest net there.
        core_reset = Signal(init=1)
        m.d.sync += core_reset.eq(soft_reset)
        m.domains.core = ClockDomain("core", local=True)
        global_net = getattr(platform, "global_net", None)
        m.d.comb += [ClockSignal("core").eq(ClockSignal()),
                     ResetSignal("core").eq(global_net(m, core_reset) if global_net else core_reset)]
        m.submodules[CORE] = core = DomainRenamer("core")(Core(cfg))
        wiring.connect(m, core.m_axi, wiring.flipped(self.m_axi))

        desc_addr, desc_count, irq_enable = Signal(32), Signal(32), Signal()
        done_flag = Signal()
        m.d.comb += [core.desc_addr.eq(desc_addr), core.desc_count.eq(desc_count)]
        with m.If(core.done):
            m.d.sync += done_flag.eq(1)
        m.d.comb += self.irq.eq(irq_enable & (done_flag | (core.error != 0)))
        reg = isa.REG
        readable = {
            reg["STATUS"]: Cat(core.busy, done_flag, core.error != 0),
            reg["ERROR"]: core.error | (core.error_resp << isa.ERROR_RESP_SHIFT), reg["IRQ_ENABLE"]: irq_enable,
            reg["DESC_ADDR"]: desc_addr, reg["DESC_COUNT"]: desc_count, reg["DESC_DONE"]: core.desc_done,
            reg["CYCLES"]: core.cycles, reg["LOADS_DONE"]: core.loads_done,
            reg["COMPUTES_DONE"]: core.computes_done, reg["STORES_DONE"]: core.stores_done,
            reg["CONFIG"]: Const(isa.config_word(cfg), 32),
            reg["ERROR_DESC"]: core.error_desc, reg["ATTENTIONS_DONE"]: core.attentions_done,
        }

        # AXI4-Lite: a write needs address and data together; one outstanding response each way.
        s = self.s_axil
        bvalid, rvalid = Signal(), Signal()
        rdata = Signal(32)
        m.d.comb += [s.bvalid.eq(bvalid), s.bresp.eq(0), s.rvalid.eq(rvalid), s.rdata.eq(rdata), s.rresp.eq(0)]
        write = s.awvalid & s.wvalid & ~bvalid
        m.d.comb += [s.awready.eq(write), s.wready.eq(write)]
        with m.If(write):
            m.d.sync += bvalid.eq(1)
            with m.Switch(s.awaddr[2:]):
                with m.Case(reg["CONTROL"] >> 2):
                    # RESET wins over a START in the same write (the core's reset comes a cycle later:
                    # a START let through would begin a fetch that the reset then cuts off mid-burst).
                    m.d.comb += [core.start.eq(s.wdata[0] & ~s.wdata[1]), soft_reset.eq(s.wdata[1])]
                    with m.If(s.wdata[0] & ~core.busy):
                        m.d.sync += done_flag.eq(0)
                    with m.If(s.wdata[1]):
                        m.d.sync += done_flag.eq(0)
                with m.Case(reg["STATUS"] >> 2):
                    with m.If(s.wdata[1]):
                        m.d.sync += done_flag.eq(0)
                with m.Case(reg["IRQ_ENABLE"] >> 2):
                    m.d.sync += irq_enable.eq(s.wdata[0])
                with m.Case(reg["DESC_ADDR"] >> 2):
                    m.d.sync += desc_addr.eq(s.wdata)
                with m.Case(reg["DESC_COUNT"] >> 2):
                    m.d.sync += desc_count.eq(s.wdata)
        with m.If(s.bvalid & s.bready):
            m.d.sync += bvalid.eq(0)
        m.d.comb += s.arready.eq(~rvalid)
        with m.If(s.arvalid & ~rvalid):
            m.d.sync += rvalid.eq(1)
            with m.Switch(s.araddr[2:]):
                for offset, value in readable.items():
                    with m.Case(offset >> 2):
                        m.d.sync += rdata.eq(value)
                with m.Default():
                    m.d.sync += rdata.eq(0)
        with m.If(s.rvalid & s.rready):
            m.d.sync += rvalid.eq(0)
        return m
