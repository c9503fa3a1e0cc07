"""VectorEngine: golden_model.intvec's element-wise ops on L int8 lanes, bit for bit.

    i (beats of L lanes) ─► row ring (RING_ELEMS bytes, one block RAM pair) ─► issue ─► 8-stage datapath ─► o
            └─► RowStats (LayerNorm: S, Q, rsqrt, per-row DT, ST, sh) ─► FIFO ─┘      b (add's second input) ┘

* Every op goes through the ring, so all ops share one issue unit: pass 1 writes the rows as they
  arrive, pass 2 reads them back as soon as they are there (LayerNorm: once the row's constants
  are, i.e. the whole row is in). The ring holds up to 8 LayerNorm rows of 1,024, so pass 1 of the
  next rows overlaps pass 2 of this one and both run at one beat per cycle.
* Pass 2's read order is the op's: a row's beats in order (LayerNorm, LUT, add, rescale, RoPE);
  for max-pool, groups of 4 rows (a 2x2 window) read beat j of each row in turn, the max of 4
  going out (one output beat per 4 cycles: input-bound at L elements per cycle); for upsample,
  each row read 4 times (output-bound at L elements per cycle).
* The datapath has one global enable (`advance`, as hw.requant): it moves when its last stage is
  empty or taken. Four multipliers per lane, shared between the ops, each registered:
    st1  A = q x (DT | ma | c)      B = (b | q | -q odd lanes) x (mb | s)      LUT read, max-pool max
    st2  U = A + (-ST | B | pairs: B1, B0)    (one adder: -ST negated once for all lanes)
    st3  n = U >> sh (int16) | RoPE: acc = U                          gain, bias read (per channel)
    st4  C = (n | acc) x (g | m_lo)  D = acc x m_hi
    st5  W = C + b | C + D 2^16 | add: U      (56 bits: RoPE's shift is capped at 55, OSH_MAX)
    st6  T = 2 W >> s, low 9 bits, and whether T is outside [-256, 255] (a per-command bit mask)
    st7  Z = (T + 1) >> 1 = (W + rnd(s)) >> s saturated, op select, unused lanes zeroed -> o
Parameters (gains, biases, the LUT, RoPE tables) are written through `param` while no command that
reads them runs; the scalars come with the command (hw.vector.params.COMMAND_FIELDS).
"""
from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from golden_model import intvec
from golden_model.intops import MULT_BITS
from hw.vector import params as P
from hw.vector.params import ParamTarget, VecOp
from hw.vector.rowstats import RowConstants, RowStats

VectorCommand = data.StructLayout({name: unsigned(width) for name, width in P.COMMAND_FIELDS})
ParamWrite = data.StructLayout({"target": unsigned(2), "addr": unsigned(P.ADDR_BITS),
                                "data": unsigned(P.PARAM_DATA_BITS)})
STAGES = 8        # issue -> o.payload register (ring read, 7 datapath registers)
# The output stage's word W = C + (D 2^16 | b | add's sum) + rnd(s), shifted right by s and saturated to
# int8. RoPE's is the widest: |acc| < 2^23 (int16 cos / sin, int8 x) times m < 2^31, so |acc m| < 2^54;
# for s >= 55, acc m + 2^(s-1) lies in (0, 2^s) and the result is 0, as it is with s = 55: the shift is
# capped at OSH_MAX and W needs W_BITS (LayerNorm and add are int32 throughout).
OSH_MAX = intvec.ROPE_ACC_BITS - 1 + MULT_BITS + 1
W_BITS = OSH_MAX + 1



class VectorEngine(wiring.Component):
    """`cmd` starts a command (accepted when idle); `i` then carries its rows (beats of L lanes),
    `b` add's second operand (the same layout, one beat per `i` beat), `o` the results."""

    def __init__(self, lanes: int = 8, ring_elems: int = P.RING_ELEMS, rope_depth: int = P.ROPE_DEPTH):
        self.lanes = P.check_lanes(lanes)
        self.ring_depth = ring_elems // lanes
        self.rope_depth = rope_depth
        beat = data.ArrayLayout(signed(8), lanes)
        super().__init__({
            "cmd": In(stream.Signature(VectorCommand)),
            "param": In(stream.Signature(ParamWrite)),
            "i": In(stream.Signature(beat)),
            "b": In(stream.Signature(beat)),
            "o": Out(stream.Signature(beat)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        L = self.lanes
        lgL = exact_log2(L)
        PB = L // 2                                   # RoPE pairs per beat
        RD = self.ring_depth
        RB = exact_log2(RD)
        PW = RB + 1                                   # ring pointers: one wrap bit
        JB = P.DIM_BITS                               # beats per row (and beat counters)

        cmd = Signal(VectorCommand)
        busy = Signal()
        op = cmd.op
        is_ln, is_add, is_rescale, is_rope = (op == VecOp.LAYERNORM, op == VecOp.ADD, op == VecOp.RESCALE,
                                              op == VecOp.ROPE)
        is_lut, is_max, is_up = op == VecOp.LUT, op == VecOp.MAXPOOL, op == VecOp.UPSAMPLE
        nbeats = Signal(JB)                           # J = ceil(D / L)
        group_beats = Signal(JB + 2)                  # beats freed per group: 4 J (max-pool) or J
        osh = Signal(range(OSH_MAX + 1))              # the op's output shift (RoPE's capped at OSH_MAX)
        ovf_mask = Signal(W_BITS)                     # bits of W at osh + 7 and up: all the sign's, or saturate
        c_osh = Signal(range(OSH_MAX + 1))
        ybase = Signal(P.ROPE_COORD_BITS + 8)         # table word of the y part's first row
        accept = self.cmd.valid & self.cmd.ready
        c = self.cmd.payload
        m.d.comb += [self.cmd.ready.eq(~busy), self.busy.eq(busy)]
        c_beats = (c.dim + L - 1) >> lgL
        m.d.comb += c_osh.eq(Mux(c.op == VecOp.LAYERNORM, c.ln_shift,
                                 Mux(c.op == VecOp.ROPE, Mux(c.rope_shift > OSH_MAX, OSH_MAX, c.rope_shift),
                                     c.add_shift)))
        with m.If(accept):
            m.d.sync += [busy.eq(1), cmd.eq(c), nbeats.eq(c_beats),
                         group_beats.eq(Mux(c.op == VecOp.MAXPOOL, c_beats << 2, c_beats)),
                         osh.eq(c_osh),
                         ovf_mask.eq(Cat(*[c_osh + 7 <= b for b in range(W_BITS)])),
                         ybase.eq(c.rope_nx * c.rope_jx)]

        # ------------------------------------------------ parameter memories (written through `param`)
        pw = self.param.payload
        m.d.comb += self.param.ready.eq(1)
        gain = Memory(shape=unsigned(16 * L), depth=P.MAX_DIM // L, init=[])
        bias = Memory(shape=unsigned(32 * L), depth=P.MAX_DIM // L, init=[])
        rope = Memory(shape=unsigned(32 * PB), depth=self.rope_depth // PB, init=[])
        m.submodules.gain_mem, m.submodules.bias_mem, m.submodules.rope_mem = gain, bias, rope
        for mem, target, width, per in ((gain, ParamTarget.GAIN, 16, L), (bias, ParamTarget.BIAS, 32, L),
                                        (rope, ParamTarget.ROPE, 32, PB)):
            wp = mem.write_port(granularity=width)
            lg = exact_log2(per)
            m.d.comb += [wp.addr.eq(pw.addr >> lg), wp.data.eq(Cat(*[pw.data[:width]] * per)),
                         wp.en.eq(Mux(self.param.valid & (pw.target == target), 1 << pw.addr[:lg], 0))]
        luts = []
        for i in range(L):                            # one 256 x 8 table per lane
            lut = Memory(shape=signed(8), depth=intvec.LUT_SIZE, init=[])
            m.submodules[f"lut{i}"] = lut
            wp = lut.write_port()
            m.d.comb += [wp.addr.eq(pw.addr[:8]), wp.data.eq(pw.data[:8]),
                         wp.en.eq(self.param.valid & (pw.target == ParamTarget.LUT))]
            luts.append(lut)

        # ------------------------------------------------ pass 1: rows into the ring (and RowStats)
        ring = Memory(shape=unsigned(8 * L), depth=RD, init=[])
        m.submodules.ring = ring
        ring_w, ring_r = ring.write_port(), ring.read_port()
        wptr, freed = Signal(PW), Signal(PW)          # beats written; beats pass 2 is done with
        rows_in = Signal(P.ROWS_BITS)                 # rows still to come
        j1 = Signal(JB)
        left1 = Signal(P.DIM_BITS + 1)                # elements of the row from this beat on
        in_flight = Signal(range(P.ROWS_IN_FLIGHT + 1))  # LayerNorm rows in the ring
        row_start = j1 == 0
        ln_room = ~is_ln | ~row_start | (in_flight < P.ROWS_IN_FLIGHT)
        not_full = (wptr - freed)[:PW] < RD
        m.d.comb += self.i.ready.eq(busy & (rows_in != 0) & not_full & ln_room)
        fire1 = self.i.valid & self.i.ready
        last1 = j1 == nbeats - 1
        m.d.comb += [ring_w.addr.eq(wptr[:RB]), ring_w.data.eq(self.i.payload), ring_w.en.eq(fire1)]
        with m.If(accept):
            m.d.sync += [wptr.eq(0), j1.eq(0), left1.eq(c.dim), rows_in.eq(c.rows)]
        with m.Elif(fire1):
            m.d.sync += wptr.eq(wptr + 1)
            with m.If(last1):
                m.d.sync += [j1.eq(0), left1.eq(cmd.dim), rows_in.eq(rows_in - 1)]
            with m.Else():
                m.d.sync += [j1.eq(j1 + 1), left1.eq(left1 - L)]

        m.submodules.rowstats = rs = RowStats(L)
        m.submodules.row_fifo = rf = SyncFIFOBuffered(width=len(Signal(RowConstants).as_value()),
                                                      depth=P.ROWS_IN_FLIGHT)
        m.d.comb += [rs.beat.valid.eq(fire1 & is_ln), rs.beat.payload.x.eq(self.i.payload),
                     rs.beat.payload.nvalid.eq(left1), rs.beat.payload.last.eq(last1),
                     rs.dim.eq(cmd.dim), rs.eps_term.eq(cmd.eps_term),
                     rs.o.ready.eq(1), rf.w_data.eq(rs.o.payload), rf.w_en.eq(rs.o.valid)]
        row_c = RowConstants(rf.r_data)

        # ------------------------------------------------ pass 2: issue
        advance = Signal()
        valid = Signal(STAGES)                        # valid[s]: stage s + 1 holds a slot
        emit = Signal(STAGES)                         # ... that produces an output beat
        m.d.comb += [advance.eq(~self.o.valid | self.o.ready), self.o.valid.eq(valid[-1] & emit[-1])]
        groups = Signal(P.ROWS_BITS)                  # groups (rows; max-pool: windows) still to issue
        base = Signal(PW)                             # ring address of the group's first beat
        j, k = Signal(JB), Signal(2)
        kj = Signal(JB + 2)                           # max-pool: k J, the row of the window read
        jl = Signal(P.DIM_BITS + 1)                   # j L
        tx, ty = Signal(P.ROPE_COORD_BITS), Signal(P.ROPE_COORD_BITS)
        tx_word, ty_word = Signal(P.ROPE_COORD_BITS + 8), Signal(P.ROPE_COORD_BITS + 8)
        addr = Signal(PW)
        m.d.comb += addr.eq(base + kj + j)
        readable = (wptr - addr)[:PW]
        ok = (busy & (groups != 0) & (readable != 0) & (readable <= RD)
              & (~is_ln | rf.r_rdy) & (~is_add | self.b.valid))
        fire2 = Signal()
        m.d.comb += [fire2.eq(ok & advance), self.b.ready.eq(fire2 & is_add)]
        last_j = j == nbeats - 1
        # read order: max-pool k fastest (4 rows' beat j), upsample j fastest then k, others j
        group_end = Mux(is_max | is_up, last_j & (k == 3), last_j)
        with m.If(accept):
            m.d.sync += [groups.eq(Mux(c.op == VecOp.MAXPOOL, c.rows >> 2, c.rows)), base.eq(0), freed.eq(0),
                         j.eq(0), k.eq(0), kj.eq(0), jl.eq(0), tx.eq(0), ty.eq(0), tx_word.eq(0),
                         ty_word.eq(c.rope_nx * c.rope_jx)]
        with m.Elif(fire2):
            with m.If(is_max & (k != 3)):
                m.d.sync += [k.eq(k + 1), kj.eq(kj + nbeats)]
            with m.Elif(last_j):
                m.d.sync += [j.eq(0), jl.eq(0), k.eq(Mux(is_up, k + 1, 0)), kj.eq(0)]
            with m.Else():
                m.d.sync += [j.eq(j + 1), jl.eq(jl + L), k.eq(Mux(is_max, 0, k)), kj.eq(0)]
            with m.If(group_end):
                m.d.sync += [groups.eq(groups - 1), base.eq(base + group_beats), freed.eq(base + group_beats)]
                with m.If(tx == cmd.rope_nx - 1):     # RoPE: token t -> t + 1 (x = t mod nx, y = t // nx mod ny)
                    m.d.sync += [tx.eq(0), tx_word.eq(0)]
                    with m.If(ty == cmd.rope_ny - 1):
                        m.d.sync += [ty.eq(0), ty_word.eq(ybase)]
                    with m.Else():
                        m.d.sync += [ty.eq(ty + 1), ty_word.eq(ty_word + nbeats - cmd.rope_jx)]
                with m.Else():
                    m.d.sync += [tx.eq(tx + 1), tx_word.eq(tx_word + cmd.rope_jx)]
        row_done = fire2 & group_end & is_ln
        m.d.comb += rf.r_en.eq(row_done)
        row_begun = fire1 & is_ln & row_start
        m.d.sync += in_flight.eq(in_flight + row_begun - row_done)
        with m.If(busy & (groups == 0) & (valid == 0) & ~accept):
            m.d.sync += busy.eq(0)

        # ------------------------------------------------ pass 2: the datapath
        with m.If(advance):
            m.d.sync += [valid.eq(Cat(fire2, valid[:-1])),
                         emit.eq(Cat(~is_max | (k == 3), emit[:-1]))]
        m.d.comb += [ring_r.addr.eq(addr[:RB]), ring_r.en.eq(advance)]
        rope_r = rope.read_port()
        m.d.comb += [rope_r.addr.eq(Mux(j < cmd.rope_jx, tx_word + j, ty_word + j - cmd.rope_jx)),
                     rope_r.en.eq(advance)]

        def stage_regs(name, shape, n=L):
            return [Signal(shape, name=f"{name}_{i}") for i in range(n)]

        def carry(src, name):
            """Registers one stage on from `src` (a Value), moving with `advance`."""
            dst = Signal(src.shape(), name=name)
            with m.If(advance):
                m.d.sync += dst.eq(src)
            return dst

        # issue -> st1: the slot's metadata (memory data arrives with it)
        nvalid = cmd.dim - jl
        mask = Cat(*[nvalid > i for i in range(L)])
        mask1 = carry(mask, "mask1")
        k1 = carry(k, "k1")
        j1s = carry(j, "j_st1")
        bq1 = carry(Mux(is_add, self.b.payload.as_value(), 0), "b_st1")
        # -(S T - rnd(sh)): negated once for all lanes, so that every lane's U below is one adder
        dt1, st1c, sh1 = carry(row_c.dt, "dt1"), carry(-row_c.st, "nst1"), carry(row_c.sh, "sh1")
        q = data.ArrayLayout(signed(8), L)(ring_r.data)
        bq = data.ArrayLayout(signed(8), L)(bq1)
        cos = [rope_r.data[32 * p:32 * p + 16].as_signed() for p in range(PB)]
        sin = [rope_r.data[32 * p + 16:32 * p + 32].as_signed() for p in range(PB)]

        # st1 -> st2: the first multipliers, LUT read, max-pool
        A2, B2 = stage_regs("A2", signed(36)), stage_regs("B2", signed(26))
        simple2 = stage_regs("simple2", signed(8))
        macc = stage_regs("max_acc", signed(8))
        with m.If(advance):
            for i in range(L):
                coef_a = Mux(is_ln, Cat(dt1, Const(0, 1)).as_signed(),
                             Mux(is_rope, cos[i // 2], Cat(cmd.a_mult, Const(0, 1)).as_signed()))
                coef_b = Mux(is_rope, sin[i // 2], Cat(cmd.b_mult, Const(0, 1)).as_signed())
                # RoPE: the odd lane's B is -x1 s, which its even partner adds (x0 c - x1 s)
                xb = Mux(is_rope, -q[i] if i % 2 else q[i], bq[i])
                m.d.sync += [A2[i].eq(q[i] * coef_a), B2[i].eq(xb * coef_b)]
                mx = Mux((k1 == 0) | (q[i] > macc[i]), q[i], macc[i])
                with m.If(valid[0] & is_max):
                    m.d.sync += macc[i].eq(mx)
                m.d.sync += simple2[i].eq(Mux(is_max, mx, q[i]))
        for i, lut in enumerate(luts):
            rp = lut.read_port()
            m.d.comb += [rp.addr.eq(q[i].as_unsigned() ^ 0x80), rp.en.eq(advance)]
            luts[i] = rp.data
        st2c, sh2 = carry(st1c, "nst2"), carry(sh1, "sh2")
        j2 = carry(j1s, "j_st2")
        mask2 = carry(mask1, "mask2")

        # st2 -> st3
        U3 = stage_regs("U3", signed(38))
        res3 = stage_regs("res3", signed(8))
        with m.If(advance):
            for i in range(L):
                partner = B2[i ^ 1]                  # RoPE: x0 c + (-x1 s), x1 c + x0 s
                m.d.sync += [
                    U3[i].eq(A2[i] + Mux(is_ln, st2c, Mux(is_rope, partner, B2[i]))),
                    res3[i].eq(Mux(is_lut, luts[i], simple2[i])),
                ]
        sh3 = carry(sh2, "sh3")
        j3 = carry(j2, "j_st3")
        mask3 = carry(mask2, "mask3")

        # st3 -> st4: normalise; gain and bias read
        V4 = stage_regs("V4", signed(25))
        gain_r, bias_r = gain.read_port(), bias.read_port()
        m.d.comb += [gain_r.addr.eq(j3), bias_r.addr.eq(j3), gain_r.en.eq(advance), bias_r.en.eq(advance)]
        with m.If(advance):
            for i in range(L):
                # n is int16 without saturation (golden_model.intvec.layernorm, step 4): 16 bits suffice
                m.d.sync += V4[i].eq(Mux(is_ln, (U3[i] >> sh3)[:intvec.LN_NORM_BITS].as_signed(),
                                         Mux(is_rope, U3[i], 0)))
        sum4 = [carry(u[:32].as_signed(), f"sum4_{i}") for i, u in enumerate(U3)]   # add: a ma + b mb
        res4 = [carry(r, f"res4_{i}") for i, r in enumerate(res3)]
        mask4 = carry(mask3, "mask4")

        # st4 -> st5: the second multipliers
        C5, D5 = stage_regs("C5", signed(42)), stage_regs("D5", signed(41))
        add5 = stage_regs("add5", signed(32))
        m_lo = Cat(cmd.rope_mult[:16], Const(0, 1)).as_signed()
        with m.If(advance):
            for i in range(L):
                g = gain_r.data[16 * i:16 * i + 16].as_signed()
                bi = bias_r.data[32 * i:32 * i + 32].as_signed()
                m.d.sync += [C5[i].eq(V4[i] * Mux(is_ln, g, m_lo)),
                             D5[i].eq(V4[i] * cmd.rope_mult[16:]),
                             add5[i].eq(Mux(is_ln, bi, sum4[i]))]
        res5 = [carry(r, f"res5_{i}") for i, r in enumerate(res4)]
        mask5 = carry(mask4, "mask5")

        # st5 -> st6: sum (without the rounding: below)
        W6 = stage_regs("W6", signed(W_BITS))
        with m.If(advance):
            for i in range(L):
                m.d.sync += W6[i].eq(C5[i] + Mux(is_rope, D5[i] << 16, add5[i]))
        res6 = [carry(r, f"res6_{i}") for i, r in enumerate(res5)]
        mask6 = carry(mask5, "mask6")

        # st6 -> st7: Z = (W + rnd(s)) >> s = (T + 1) >> 1 with T = 2 W >> s (also for s = 0). Only T's low 9
        # bits go on, and whether T is outside [-256, 255] (a bit of W at s + 7 or above differs from the
        # sign);  st7 -> o: Z, saturated (T = 255 gives 128), select, mask
        T7 = stage_regs("T7", signed(9))
        ov7, sg7 = stage_regs("ov7", 1), stage_regs("sg7", 1)
        with m.If(advance):
            for i in range(L):
                sign = W6[i][-1]
                m.d.sync += [T7[i].eq((Cat(Const(0, 1), W6[i]).as_signed() >> osh)[:9]), sg7[i].eq(sign),
                             ov7[i].eq(((W6[i].as_unsigned() ^ Cat(*[sign] * W_BITS)) & ovf_mask).any())]
        res7 = [carry(r, f"res7_{i}") for i, r in enumerate(res6)]
        mask7 = carry(mask6, "mask7")
        out = data.ArrayLayout(signed(8), L)(self.o.payload)
        out_r = stage_regs("out", signed(8))
        shifted = is_ln | is_rope | is_add | is_rescale
        with m.If(advance):
            for i in range(L):
                z = ((T7[i] + 1) >> 1)[:8].as_signed()
                sat = Mux(ov7[i] | (T7[i] == 255), Mux(sg7[i], -128, 127), z)
                m.d.sync += out_r[i].eq(Mux(mask7[i], Mux(shifted, sat, res7[i]), 0))
        m.d.comb += [out[i].eq(out_r[i]) for i in range(L)]
        return m
