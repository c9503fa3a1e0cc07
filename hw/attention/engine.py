"""AttentionEngine: online softmax + P V + normalisation for S slots of R query rows each.

The overlay computes S = Q K^T on the GEMM array (an int8 GEMM: Q tile in the A
scratchpad, a K tile of C keys in the B scratchpad, S into an accumulator region);
this engine takes it from there (docs/attention.md says why the split):

  STEP (mode 0), one key tile of C keys (`count` valid) for the rows of query slot `slot`:
    SOFTMAX  row i of S (accumulator row s_base + i) -> OnlineSoftmax with the row's
             state (m, l) (state memory entry slot * R + i) -> p row i into a bank of
             the P V array's p registers, alpha_i into the same bank, new (m, l)
    PV       values v[:, c] for c = 0 .. d-1 (V scratchpad entries v_base + c, C keys
             each) through the PVArray; O[slot][i][c] = rescale(O, alpha_i) + pv
             (O: per row, U = attn_norm_lanes banks of one int40 lane, `accumulate` = 0 starts from 0)
  NORM (mode 1): chunks c0 .. c0 + count - 1 of every row of `slot`: t = O / l
             (Normaliser) -> accumulator row out_base + (chunk - c0) * R + i; a STORE then
             requantises (PARAM entry: bias 0, the output multiplier and shift) or writes int32.

Overlap: a STEP's P V-side state (p, alpha, first, slot, d) lives in one of two banks. The
front (softmax phase) fills one bank while the P V array streams the other, and hands its
bank over the cycle the previous tile's last channel issues, so back-to-back STEPs cost
d cycles each. A bank is free again when its step's last O write is done (the `done`
pulse); a NORM waits until every STEP is done.

O memories: channel c of row i, slot s is entry s x d_max / U + c // U of row i's bank c % U.
A STEP reads and writes one channel per row per cycle, a NORM reads U channels (one per bank) per
cycle, what the normaliser's U lanes take. One lane wide and d_max x S / U deep, they fill their
block RAMs (or UltraRAMs, attn_o_uram), where memories of C lanes with a write enable per lane
took a 72-bit block RAM per lane whatever the depth (20 BRAM36 a row at C = 32).

Arithmetic: golden_model/intattn.py with key_tile = C, bit for bit (rows and slots are
independent, so the order of slots changes nothing).
"""
from amaranth import Array, Cat, Module, Mux, Signal, signed, unsigned
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
# The O update sets a channel's read address, then writes the entry this many cycles later (stages
# A-C); the same entry's next read (the next tile's channel) comes d >= cols cycles after the first.
O_READ_TO_WRITE = 3


def v_depth(cfg) -> int:
    """V scratchpad entries: two tiles (double buffering) of up to attn_max_dim channels."""
    return isa.scratchpad_depth(cfg, "V")


def o_banks(cfg) -> tuple[int, int]:
    """The O memories of one query row: (banks, entries each), one int40 lane (OACC) wide."""
    return cfg.norm_lanes, cfg.attn_q_slots * cfg.attn_max_dim // cfg.norm_lanes


def o_bank_memory(cfg) -> Memory:
    """One bank of a row's O memory. Block RAM or UltraRAM (attn_o_uram): as LUT RAM, nextpnr's router
    could not resolve the congestion around the O memories' slices on ECP5."""
    return Memory(shape=OACC, depth=o_banks(cfg)[1], init=[],
                  attrs={"ram_style": "ultra" if cfg.attn_o_uram else "block"})


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
        C = cfg.cols
        if C & (C - 1):
            raise ValueError(f"attention engine: cols={C} must be a power of two")
        if C <= O_READ_TO_WRITE:
            raise ValueError(f"attention engine: cols={C} must exceed {O_READ_TO_WRITE} (a tile's channels must "
                             "cover the O update's read-to-write distance)")
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
        chan_bits = abits(cfg.attn_max_dim)
        S = cfg.attn_q_slots

        m.submodules.v_mem = v_mem = Memory(shape=data.ArrayLayout(INT8, C), depth=v_depth(cfg), init=[])
        vw = v_mem.write_port()
        m.d.comb += [vw.addr.eq(self.v_wr.payload.addr), vw.data.eq(self.v_wr.payload.data),
                     vw.en.eq(self.v_wr.valid), self.v_wr.ready.eq(1)]
        v_rd = v_mem.read_port()
        U = o_banks(cfg)[0]
        lu = exact_log2(U)
        o_entries = cfg.attn_max_dim // U          # entries of a slot in a bank
        o_rd, o_wr = [], []                        # [row][bank]
        for i in range(R):
            o_rd.append([]), o_wr.append([])
            for b in range(U):
                m.submodules[f"o_mem{i}_{b}"] = mem = o_bank_memory(cfg)
                o_rd[i].append(mem.read_port())
                o_wr[i].append(mem.write_port())

        m.submodules.softmax = sm = OnlineSoftmax(C)
        m.submodules.pv = pv = PVArray(R, C, chan_bits, preadd=cfg.pv_preadd, lut_rows=cfg.attn_pv_lut_rows)
        m.submodules.norm = norm = Normaliser(C, cfg.norm_lanes)

        cmd = Signal(self.layouts.cmd)           # the front's command (STEP in its softmax phase, or NORM)
        # Per (slot, row) softmax state: running maximum and sum, entry slot * R + row.
        state = data.StructLayout({"m": signed(X_BITS), "l": unsigned(SUM_BITS)})
        m.submodules.state_mem = state_mem = Memory(shape=state, depth=S * R, init=[])
        st_wr, st_sm, st_norm = state_mem.write_port(), state_mem.read_port(), state_mem.read_port()
        st_base = Signal(range(S * R))
        m.d.comb += st_base.eq(cmd.slot * R)

        # Two banks of a step's P V-side state: p (in the array), alpha, first, slot, d. The front
        # fills bank `front_bank` while the P V array streams the other; a bank is busy from its
        # step's softmax until its last O write.
        p_banks = Signal(data.ArrayLayout(data.ArrayLayout(data.ArrayLayout(PROB, C), R), 2))
        alpha_banks = [[Signal(PROB, name=f"alpha{b}_{i}") for i in range(R)] for b in range(2)]
        bank_first = Array(Signal(name=f"first{b}") for b in range(2))
        bank_obase = Array(Signal(range(S * o_entries), name=f"obase{b}") for b in range(2))
        bank_dlast = Array(Signal(chan_bits, name=f"dlast{b}") for b in range(2))
        bank_busy = Array(Signal(name=f"busy{b}") for b in range(2))
        front_bank = Signal()
        m.d.comb += [pv.p.eq(p_banks), sm.score_mult.eq(cmd.score_mult), sm.score_shift.eq(cmd.score_shift),
                     sm.o.ready.eq(1)]

        step_done = Signal()
        norm_done = Signal()
        m.d.comb += self.done.eq(step_done | norm_done)

        # ------------------------------------------------ SOFTMAX: R rows of S through the row unit
        issue_i = Signal(range(R + 1))
        got_i = Signal(range(R + 1))
        sm_valid, sm_tag = Signal(), Signal(range(R))
        m.d.comb += [self.acc_rd_addr.eq(cmd.s_base + issue_i), st_sm.addr.eq(st_base + issue_i)]
        first = ~cmd.accumulate
        # int32 scores into the softmax's int24 lanes (exact: |S| <= 2^22), lane by lane.
        m.d.comb += [sm.i.payload.scores[j].eq(self.acc_rd_data[j]) for j in range(C)]
        m.d.comb += [sm.i.valid.eq(sm_valid),
                     sm.i.payload.count.eq(cmd.count), sm.i.payload.tag.eq(sm_tag),
                     sm.i.payload.m.eq(Mux(first, M_INIT, st_sm.data.m)),
                     sm.i.payload.l.eq(Mux(first, 0, st_sm.data.l))]
        m.d.comb += [st_wr.en.eq(sm.o.valid), st_wr.addr.eq(st_base + sm.o.payload.tag),
                     st_wr.data.m.eq(sm.o.payload.m), st_wr.data.l.eq(sm.o.payload.l)]
        with m.If(sm.o.valid):
            with m.Switch(sm.o.payload.tag):
                for i in range(R):
                    with m.Case(i):
                        with m.If(front_bank):
                            m.d.sync += [p_banks[1][i].eq(sm.o.payload.p), alpha_banks[1][i].eq(sm.o.payload.alpha)]
                        with m.Else():
                            m.d.sync += [p_banks[0][i].eq(sm.o.payload.p), alpha_banks[0][i].eq(sm.o.payload.alpha)]

        # ------------------------------------------------ PV: d channels through the array, O updated
        pv_active = Signal()
        pv_c = Signal(chan_bits)
        pv_bank = Signal()
        pv_vbase = Signal.like(cmd.v_base)
        pv_last = Signal()                         # the channel issued this cycle is the tile's last
        m.d.comb += [pv_last.eq(pv_active & (pv_c == bank_dlast[pv_bank])), v_rd.addr.eq(pv_vbase + pv_c)]
        with m.If(pv_active):
            m.d.sync += pv_c.eq(pv_c + 1)
            with m.If(pv_last):
                m.d.sync += pv_active.eq(0)
        v_valid1, v_chan1 = Signal(), Signal(chan_bits)
        m.d.sync += [v_valid1.eq(pv_active), v_chan1.eq(pv_c)]
        # v_bank a cycle ahead of the channel (the array registers p): the bank of the one issued now.
        m.d.comb += [pv.v.eq(v_rd.data), pv.v_valid.eq(v_valid1), pv.v_chan.eq(v_chan1), pv.v_bank.eq(pv_bank)]
        norm_mode = Signal()
        n_chunk = Signal(self.layouts.chunk_bits + 1)
        n_grp = Signal(range(C // U))              # NORM: the lane group (U channels) of the chunk read
        norm_obase = Signal(range(S * o_entries))
        m.d.comb += norm_obase.eq(cmd.slot * o_entries)
        for i in range(R):
            # stage A: the row's result arrives (its O entry was read the cycle before); stage B holds
            # the old value and alpha (the multiplier's inputs in flip-flops), stage C the product;
            # C adds the rounding and P V and writes the lane. The bank travels with the channel.
            a_valid, a_chan, a_pv, a_bank = Signal(name=f"a_valid{i}"), Signal(chan_bits, name=f"a_chan{i}"), \
                Signal(signed(32), name=f"a_pv{i}"), Signal(name=f"a_bank{i}")
            m.d.sync += [a_valid.eq(pv.out_valid[i]), a_chan.eq(pv.out_chan[i]), a_pv.eq(pv.out[i]),
                         a_bank.eq(pv.out_bank[i])]
            b_valid, b_chan, b_pv, b_bank, b_first = (Signal.like(a_valid, name=f"b_valid{i}"),
                                                      Signal.like(a_chan, name=f"b_chan{i}"),
                                                      Signal.like(a_pv, name=f"b_pv{i}"),
                                                      Signal.like(a_bank, name=f"b_bank{i}"), Signal(name=f"b_first{i}"))
            b_old, b_alpha = Signal(OACC, name=f"b_old{i}"), Signal(PROB, name=f"b_alpha{i}")
            m.d.sync += [b_valid.eq(a_valid), b_chan.eq(a_chan), b_pv.eq(a_pv), b_bank.eq(a_bank),
                         b_first.eq(bank_first[a_bank]),
                         b_old.eq(Array(p.data for p in o_rd[i])[a_chan[:lu]] if U > 1 else o_rd[i][0].data),
                         b_alpha.eq(Mux(a_bank, alpha_banks[1][i], alpha_banks[0][i]))]
            c_valid, c_chan, c_pv, c_bank, c_first = (Signal.like(b_valid, name=f"c_valid{i}"),
                                                      Signal.like(b_chan, name=f"c_chan{i}"),
                                                      Signal.like(b_pv, name=f"c_pv{i}"),
                                                      Signal.like(b_bank, name=f"c_bank{i}"),
                                                      Signal.like(b_first, name=f"c_first{i}"))
            c_prod = Signal(signed(O_BITS + PROB.width + 1), name=f"c_prod{i}")
            m.d.sync += [c_valid.eq(b_valid), c_chan.eq(b_chan), c_pv.eq(b_pv), c_bank.eq(b_bank),
                         c_first.eq(b_first), c_prod.eq(b_old * b_alpha)]
            rescaled = (c_prod + (1 << (P_BITS - 1))) >> P_BITS
            new = Signal(OACC, name=f"new{i}")
            m.d.comb += new.eq(Mux(c_first, 0, rescaled) + c_pv)
            for b, (rd, wr) in enumerate(zip(o_rd[i], o_wr[i])):
                m.d.comb += [wr.addr.eq(bank_obase[c_bank] + c_chan[lu:]), wr.data.eq(new),
                             wr.en.eq(c_valid & (c_chan[:lu] == b)),
                             rd.addr.eq(Mux(norm_mode, norm_obase + ((n_chunk << (lc - lu)) | n_grp),
                                            bank_obase[pv.out_bank[i]] + pv.out_chan[i][lu:]))]
            if i == R - 1:
                with m.If(c_valid & (c_chan == bank_dlast[c_bank])):
                    m.d.comb += step_done.eq(1)
                    m.d.sync += bank_busy[c_bank].eq(0)

        # ------------------------------------------------ NORM: O / l -> accumulator rows
        n_row = Signal(range(R + 1))
        slot_valid, slot_row, slot_chunk = Signal(), Signal(range(R)), Signal(self.layouts.chunk_bits + 1)
        slot_grp = Signal.like(n_grp)
        n_left = Signal(16)                       # outputs still to write
        n_feeding = Signal()
        taken = norm.i.valid & norm.i.ready
        load = ~slot_valid | taken
        o_data = Array(Cat(*(p.data for p in o_rd[i])) for i in range(R))     # a row's U banks: U channels
        m.d.comb += [norm.i.valid.eq(slot_valid), norm.i.payload.o.eq(o_data[slot_row]),
                     norm.i.payload.l.eq(st_norm.data.l),
                     norm.i.payload.first.eq((slot_chunk == cmd.c0) & (slot_grp == 0)),
                     norm.i.payload.tag.eq(((slot_chunk - cmd.c0) << exact_log2(R) if R & (R - 1) == 0
                                            else (slot_chunk - cmd.c0) * R) + slot_row)]
        for i in range(R):
            for rd in o_rd[i]:
                m.d.comb += rd.en.eq(Mux(norm_mode, load, 1))
        m.d.comb += [st_norm.addr.eq(st_base + n_row), st_norm.en.eq(load)]
        m.d.comb += [self.acc_wr.valid.eq(norm.o.valid), norm.o.ready.eq(self.acc_wr.ready),
                     self.acc_wr.payload.addr.eq(cmd.out_base + norm.o.payload.tag),
                     self.acc_wr.payload.data.eq(norm.o.payload.t)]
        with m.If(self.acc_wr.valid & self.acc_wr.ready):
            m.d.sync += n_left.eq(n_left - 1)

        # ------------------------------------------------ control (the front: softmax phase, hand-over, NORM)
        all_idle = ~pv_active & ~bank_busy[0] & ~bank_busy[1]
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += cmd.eq(self.cmd.payload)
                    m.next = "WAIT"
            with m.State("WAIT"):
                # STEP: the bank must be free (its previous step's O writes done); NORM: everything done.
                with m.If(cmd.mode == MODE_STEP):
                    with m.If(~bank_busy[front_bank]):
                        m.d.sync += [issue_i.eq(0), got_i.eq(0), bank_busy[front_bank].eq(1),
                                     bank_first[front_bank].eq(first),
                                     bank_obase[front_bank].eq(cmd.slot * o_entries),
                                     bank_dlast[front_bank].eq(((cmd.chunks_last + 1) << lc) - 1)]
                        m.next = "SOFTMAX"
                with m.Elif(all_idle):
                    m.d.sync += [norm_mode.eq(1), n_row.eq(0), n_chunk.eq(cmd.c0), n_grp.eq(0),
                                 slot_valid.eq(0), n_left.eq(cmd.count * R), n_feeding.eq(1)]
                    m.next = "NORM"
            with m.State("SOFTMAX"):
                m.d.sync += [sm_valid.eq(issue_i < R), sm_tag.eq(issue_i)]
                with m.If(issue_i < R):
                    m.d.sync += issue_i.eq(issue_i + 1)
                with m.If(sm.o.valid):
                    m.d.sync += got_i.eq(got_i + 1)
                    with m.If(got_i == R - 1):
                        m.next = "HANDOVER"
            with m.State("HANDOVER"):
                # The P V array takes the bank when the previous tile's last channel issues (back to back).
                with m.If(~pv_active | pv_last):
                    m.d.sync += [pv_active.eq(1), pv_c.eq(0), pv_bank.eq(front_bank), pv_vbase.eq(cmd.v_base),
                                 front_bank.eq(~front_bank)]
                    m.next = "IDLE"
            with m.State("NORM"):
                with m.If(load):
                    m.d.sync += slot_valid.eq(n_feeding)
                    with m.If(n_feeding):
                        m.d.sync += [slot_row.eq(n_row), slot_chunk.eq(n_chunk), slot_grp.eq(n_grp),
                                     n_grp.eq(n_grp + 1)]
                        with m.If(n_grp == C // U - 1):
                            with m.If(n_chunk == cmd.c0 + cmd.count - 1):
                                m.d.sync += [n_chunk.eq(cmd.c0), n_row.eq(n_row + 1)]
                                with m.If(n_row == R - 1):
                                    m.d.sync += n_feeding.eq(0)
                            with m.Else():
                                m.d.sync += n_chunk.eq(n_chunk + 1)
                with m.If((n_left == 1) & self.acc_wr.valid & self.acc_wr.ready):
                    m.d.comb += norm_done.eq(1)
                    m.d.sync += norm_mode.eq(0)
                    m.next = "IDLE"
        m.d.comb += self.busy.eq(~self.cmd.ready | ~all_idle)
        return m
