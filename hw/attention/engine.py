"""AttentionEngine: online softmax + P V + normalisation for one tile of R query rows.

The overlay computes S = Q K^T on the GEMM array (an int8 GEMM: Q tile in the A
scratchpad, a K tile of C keys in the B scratchpad, S into an accumulator region);
this engine takes it from there (docs/attention.md says why the split):

  STEP (mode 0), one key tile of C keys (`count` valid):
    SOFTMAX  row i of S (accumulator row s_base + i) -> OnlineSoftmax with the row's
             state (m_i, l_i) -> p row i (held in PE registers), alpha_i, new (m_i, l_i)
    PV       values v[:, c] for c = 0 .. d-1 (V scratchpad entries v_base + c, C keys
             each) through the PVArray; O[i][c] = rescale(O[i][c], alpha_i) + pv
             (O: R memories of d_max int40, `accumulate` = 0 starts from 0)
  NORM (mode 1): chunks c0 .. c0 + count - 1 of every row: t = O / l (Normaliser) ->
             accumulator row out_base + (chunk - c0) * R + i; a STORE then requantises
             (PARAM entry: bias 0, the output multiplier and shift) or writes int32.

Arithmetic: golden_model/intattn.py with key_tile = C, bit for bit.
"""
from amaranth import Array, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from golden_model.intattn import M_INIT, O_BITS, P_BITS, SCORE_MULT_BITS, SUM_BITS, X_BITS
from hw import isa
from hw.attention.normalise import Normaliser
from hw.attention.pv_array import PVArray
from hw.attention.softmax import PROB, OnlineSoftmax
from hw.gemm.array import ACC, INT8
from hw.gemm.engine import abits

MODE_STEP, MODE_NORM = 0, 1
OACC = signed(O_BITS)


def v_depth(cfg) -> int:
    """V scratchpad entries: two tiles (double buffering) of up to attn_max_dim channels."""
    return isa.scratchpad_depth(cfg, "V")


class AttentionLayouts:
    def __init__(self, cfg):
        C = cfg.cols
        chunks = cfg.attn_max_dim // C
        self.chunk_bits = abits(chunks)
        self.v_write = data.StructLayout({"addr": unsigned(abits(v_depth(cfg))), "data": data.ArrayLayout(INT8, C)})
        self.cmd = data.StructLayout({
            "mode": unsigned(1),
            "accumulate": unsigned(1),                 # STEP: continue the rows' state (0: first key tile)
            "s_base": unsigned(abits(cfg.acc_depth)),  # STEP: accumulator row of S row 0
            "v_base": unsigned(abits(v_depth(cfg))),   # STEP: V entry of channel 0
            "count": unsigned(16),                     # STEP: valid keys (1..C); NORM: chunks
            "chunks_last": unsigned(self.chunk_bits),  # STEP: d / C - 1
            "c0": unsigned(self.chunk_bits),           # NORM: first chunk
            "out_base": unsigned(abits(cfg.acc_depth)),  # NORM: first accumulator row written
            "score_mult": unsigned(SCORE_MULT_BITS),
            "score_shift": unsigned(6),
            "slot": unsigned(abits(cfg.attn_q_slots)),  # query slot: which rows' state (m, l, O)
        })
        self.acc_write = data.StructLayout({"addr": unsigned(abits(cfg.acc_depth)),
                                            "data": data.ArrayLayout(ACC, C)})


class AttentionEngine(wiring.Component):
    def __init__(self, cfg):
        self.cfg = cfg
        R, C = cfg.rows, cfg.cols
        if C & (C - 1):
            raise ValueError(f"attention engine: cols={C} must be a power of two")
        if cfg.attn_max_dim % C:
            raise ValueError(f"attention engine: attn_max_dim={cfg.attn_max_dim} not a multiple of cols={C}")
        self.layouts = L = AttentionLayouts(cfg)
        super().__init__({
            "v_wr": In(stream.Signature(L.v_write)),
            "cmd": In(stream.Signature(L.cmd)),
            "acc_rd_addr": Out(abits(cfg.acc_depth)),
            "acc_rd_data": In(data.ArrayLayout(ACC, C)),
            "acc_wr": Out(stream.Signature(L.acc_write)),
            "done": Out(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self.cfg
        R, C = cfg.rows, cfg.cols
        lc = exact_log2(C)
        chunks_max = cfg.attn_max_dim // C
        chan_bits = abits(cfg.attn_max_dim)

        m.submodules.v_mem = v_mem = Memory(shape=data.ArrayLayout(INT8, C), depth=v_depth(cfg), init=[])
        vw = v_mem.write_port()
        m.d.comb += [vw.addr.eq(self.v_wr.payload.addr), vw.data.eq(self.v_wr.payload.data),
                     vw.en.eq(self.v_wr.valid), self.v_wr.ready.eq(1)]
        v_rd = v_mem.read_port()
        o_rd, o_wr = [], []
        S = cfg.attn_q_slots
        for i in range(R):
            # slot s, chunk c of row i at entry s * chunks_max + c
            mem = Memory(shape=data.ArrayLayout(OACC, C), depth=S * chunks_max, init=[])
            m.submodules[f"o_mem{i}"] = mem
            o_rd.append(mem.read_port())
            o_wr.append(mem.write_port(granularity=1))

        m.submodules.softmax = sm = OnlineSoftmax(C)
        m.submodules.pv = pv = PVArray(R, C, chan_bits)
        m.submodules.norm = norm = Normaliser(C)

        cmd = Signal(self.layouts.cmd)
        # Per (slot, row) softmax state: running maximum and sum, entry slot * R + row.
        state = data.StructLayout({"m": signed(X_BITS), "l": unsigned(SUM_BITS)})
        m.submodules.state_mem = state_mem = Memory(shape=state, depth=S * R, init=[])
        st_wr, st_sm, st_norm = state_mem.write_port(), state_mem.read_port(), state_mem.read_port()
        st_base = Signal(range(S * R))
        o_base = Signal(range(S * chunks_max))
        m.d.comb += [st_base.eq(cmd.slot * R), o_base.eq(cmd.slot * chunks_max)]
        alpha_regs = Array(Signal(PROB, name=f"alpha{i}") for i in range(R))
        p_regs = Signal(data.ArrayLayout(data.ArrayLayout(PROB, C), R))
        m.d.comb += [pv.p.eq(p_regs), sm.score_mult.eq(cmd.score_mult), sm.score_shift.eq(cmd.score_shift),
                     sm.o.ready.eq(1)]

        done = Signal()
        m.d.comb += self.done.eq(done)

        # ------------------------------------------------ SOFTMAX: R rows of S through the row unit
        issue_i = Signal(range(R + 1))
        got_i = Signal(range(R + 1))
        sm_valid, sm_tag = Signal(), Signal(range(R))
        m.d.comb += [self.acc_rd_addr.eq(cmd.s_base + issue_i), st_sm.addr.eq(st_base + issue_i)]
        first = ~cmd.accumulate
        m.d.comb += [sm.i.valid.eq(sm_valid), sm.i.payload.scores.eq(self.acc_rd_data),
                     sm.i.payload.count.eq(cmd.count), sm.i.payload.tag.eq(sm_tag),
                     sm.i.payload.m.eq(Mux(first, M_INIT, st_sm.data.m)),
                     sm.i.payload.l.eq(Mux(first, 0, st_sm.data.l))]
        m.d.comb += [st_wr.en.eq(sm.o.valid), st_wr.addr.eq(st_base + sm.o.payload.tag),
                     st_wr.data.m.eq(sm.o.payload.m), st_wr.data.l.eq(sm.o.payload.l)]
        with m.If(sm.o.valid):
            tag = sm.o.payload.tag
            m.d.sync += alpha_regs[tag].eq(sm.o.payload.alpha)
            with m.Switch(tag):
                for i in range(R):
                    with m.Case(i):
                        m.d.sync += p_regs[i].eq(sm.o.payload.p)

        # ------------------------------------------------ PV: d channels through the array, O updated
        pv_c = Signal(chan_bits + 1)
        d_total = Signal(chan_bits + 1)
        m.d.comb += [d_total.eq((cmd.chunks_last + 1) << lc), v_rd.addr.eq(cmd.v_base + pv_c)]
        pv_issue = Signal()
        v_valid1, v_chan1 = Signal(), Signal(chan_bits)
        m.d.sync += [v_valid1.eq(pv_issue), v_chan1.eq(pv_c)]
        m.d.comb += [pv.v.eq(v_rd.data), pv.v_valid.eq(v_valid1), pv.v_chan.eq(v_chan1)]
        last_row_done = Signal()
        norm_mode = Signal()
        for i in range(R):
            # stage A: the row's result arrives; read its O entry.  stage B: rescale, add, write the lane.
            a_valid, a_chan, a_pv = Signal(name=f"a_valid{i}"), Signal(chan_bits, name=f"a_chan{i}"), \
                Signal(signed(32), name=f"a_pv{i}")
            m.d.sync += [a_valid.eq(pv.out_valid[i] & ~norm_mode), a_chan.eq(pv.out_chan[i]), a_pv.eq(pv.out[i])]
            old = Signal(OACC, name=f"old{i}")
            m.d.comb += old.eq(o_rd[i].data[a_chan[:lc]])
            rescaled = (old * alpha_regs[i] + (1 << (P_BITS - 1))) >> P_BITS
            new = Signal(OACC, name=f"new{i}")
            m.d.comb += new.eq(Mux(first, 0, rescaled) + a_pv)
            m.d.comb += [o_wr[i].addr.eq(o_base + a_chan[lc:]), o_wr[i].en.eq(Mux(a_valid, 1 << a_chan[:lc], 0))]
            for j in range(C):
                m.d.comb += o_wr[i].data[j].eq(new)
            if i == R - 1:
                m.d.comb += last_row_done.eq(a_valid & (a_chan == d_total - 1))

        # ------------------------------------------------ NORM: O / l -> accumulator rows
        n_row = Signal(range(R + 1))
        n_chunk = Signal(self.layouts.chunk_bits + 1)
        slot_valid, slot_row, slot_chunk = Signal(), Signal(range(R)), Signal(self.layouts.chunk_bits + 1)
        n_left = Signal(16)                       # outputs still to write
        n_feeding = Signal()
        taken = norm.i.valid & norm.i.ready
        load = ~slot_valid | taken
        o_data = Array(o_rd[i].data for i in range(R))
        m.d.comb += [norm.i.valid.eq(slot_valid), norm.i.payload.o.eq(o_data[slot_row]),
                     norm.i.payload.l.eq(st_norm.data.l), norm.i.payload.first.eq(slot_chunk == cmd.c0),
                     norm.i.payload.tag.eq(((slot_chunk - cmd.c0) << exact_log2(R) if R & (R - 1) == 0
                                            else (slot_chunk - cmd.c0) * R) + slot_row)]
        for i in range(R):
            m.d.comb += [o_rd[i].addr.eq(o_base + Mux(norm_mode, n_chunk, self.pv_addr(pv.out_chan[i], lc))),
                         o_rd[i].en.eq(Mux(norm_mode, load, 1))]
        m.d.comb += [st_norm.addr.eq(st_base + n_row), st_norm.en.eq(load)]
        m.d.comb += [self.acc_wr.valid.eq(norm.o.valid), norm.o.ready.eq(self.acc_wr.ready),
                     self.acc_wr.payload.addr.eq(cmd.out_base + norm.o.payload.tag),
                     self.acc_wr.payload.data.eq(norm.o.payload.t)]
        with m.If(self.acc_wr.valid & self.acc_wr.ready):
            m.d.sync += n_left.eq(n_left - 1)

        # ------------------------------------------------ control
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += [cmd.eq(self.cmd.payload), issue_i.eq(0), got_i.eq(0), pv_c.eq(0)]
                    with m.If(self.cmd.payload.mode == MODE_STEP):
                        m.next = "SOFTMAX"
                    with m.Else():
                        m.d.sync += [norm_mode.eq(1), n_row.eq(0), n_chunk.eq(self.cmd.payload.c0),
                                     slot_valid.eq(0), n_left.eq(self.cmd.payload.count * R), n_feeding.eq(1)]
                        m.next = "NORM"
            with m.State("SOFTMAX"):
                m.d.sync += [sm_valid.eq(issue_i < R), sm_tag.eq(issue_i)]
                with m.If(issue_i < R):
                    m.d.sync += issue_i.eq(issue_i + 1)
                with m.If(sm.o.valid):
                    m.d.sync += got_i.eq(got_i + 1)
                    with m.If(got_i == R - 1):
                        m.next = "PV"
            with m.State("PV"):
                m.d.comb += pv_issue.eq(pv_c < d_total)
                with m.If(pv_c < d_total):
                    m.d.sync += pv_c.eq(pv_c + 1)
                with m.If(last_row_done):
                    m.d.comb += done.eq(1)
                    m.next = "IDLE"
            with m.State("NORM"):
                with m.If(load):
                    m.d.sync += slot_valid.eq(n_feeding)
                    with m.If(n_feeding):
                        m.d.sync += [slot_row.eq(n_row), slot_chunk.eq(n_chunk)]
                        with m.If(n_chunk == cmd.c0 + cmd.count - 1):
                            m.d.sync += [n_chunk.eq(cmd.c0), n_row.eq(n_row + 1)]
                            with m.If(n_row == R - 1):
                                m.d.sync += n_feeding.eq(0)
                        with m.Else():
                            m.d.sync += n_chunk.eq(n_chunk + 1)
                with m.If((n_left == 1) & self.acc_wr.valid & self.acc_wr.ready):
                    m.d.comb += done.eq(1)
                    m.d.sync += norm_mode.eq(0)
                    m.next = "IDLE"
        m.d.comb += self.busy.eq(~self.cmd.ready | sm_valid)
        return m

    @staticmethod
    def pv_addr(chan, lc):
        return chan[lc:]
