"""OnlineSoftmax: one row of a key tile's scores -> probabilities, rescale factor, new state.

Steps 2-5 of golden_model/intattn.py (the spec) for N key lanes in parallel, one
query row per cycle, fully pipelined (one enable, like hw/requant.py: the whole
pipeline holds when its output is not taken). Every stage is one short step (a
product, an add, a shift, a compare-and-select pair), so it times on ECP5 fabric:

  s1       S                                  the DSP's input register (A/B): on ECP5 the path from the
                                              GEMM accumulator's read port (a LUT) into the multiplier
                                              column was the `ulx3s` preset's critical path
  s2       S * score_mult                     N products (24 x 16 bits: a DSP each, its M register)
  s3       prod + 2^(sh-1)                    the DSP's post-adder (P register); sh capped at SHIFT_CAP
  s4       >> (sh mod 16)                     the shift in two steps: 16:1 (two LUT levels),
  s5       x = sat32(. >> 16 (sh div 16))     3:1 with the saturation (only when sh < 16); x = M_INIT
                                              past `count` (the register's reset)
  s6..     m' = max(m, max_j x_j)             a comparator tree, registered every two levels (T stages)
  +1       deltas m' - x_j and m' - m         33 bits, >= 0
  +2       exp2 table lookup, n mod 4 and f   a 4 x 2^FRAC_BITS-entry ROM (block RAM read ports)
  +3       U >> 4 (n div 4)                   a 5:1 choice
  +4       p = (. + 1) >> 1                   round half up; 0 past `count` or n > P_BITS + 1 (reset)
  +5       sum p, l * alpha                   (l * alpha: two DSPs, 33 x 18 bits)
  +6       l' = ((l * alpha + 2^15) >> 16) + sum p

The row state (m, l) goes in and comes out with the row, so the engine keeps it in
a small memory per query row; the output accumulator's rescale by `alpha` is the
P V side's job.
"""
from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden_model.intattn import (EXP2_TABLE, FRAC_BITS, M_INIT, P_BITS, SCORE_BITS, SCORE_MULT_BITS, SUM_BITS,
                                  X_BITS)
from hw.limits import softmax_latency
from hw.limits import softmax_tree_stages as tree_stages

# The Q K^T array's int32 scores are exact int24 (|S| <= 2^22 for d <= MAX_HEAD_DIM, which the compiler
# enforces): the low SCORE_BITS bits are S, and S * score_mult is one DSP (24 x 17 bits signed).
SCORE = signed(SCORE_BITS)
SCORE_PROD = signed(SCORE_BITS + SCORE_MULT_BITS)   # any int24 S: |S * score_mult| < 2^39
# (S * mult + 2^(sh-1)) >> sh is 0 for every sh >= SHIFT_CAP (2^(sh-1) > |S * mult|), so the rounding and
# the shift run at sh = min(sh, SHIFT_CAP) on SCORE_PROD.width + 1 bits (bit for bit the same).
SHIFT_CAP = SCORE_PROD.width
PROB = unsigned(P_BITS + 1)   # p and alpha: [0, 2^P_BITS]
DELTA_BITS = X_BITS + 1       # m' - x, m' - m
# The exp2 table with two bits of n in its address: U[a][f] = floor(2 T[f] / 2^a), address a * 2^FRAC_BITS + f.
EXP2_ROM = [(2 * int(t)) >> a for a in range(4) for t in EXP2_TABLE]
EXP2_SHAPE = unsigned(P_BITS + 2)


class SoftmaxLayouts:
    def __init__(self, lanes: int):
        self.lanes = lanes
        self.i = data.StructLayout({
            "scores": data.ArrayLayout(SCORE, lanes),
            "count": range(lanes + 1),               # valid lanes 0 .. count-1 (the last tile may be short)
            "m": signed(X_BITS),
            "l": unsigned(SUM_BITS),
            "tag": unsigned(16),                     # passed through (the engine's row index)
        })
        self.o = data.StructLayout({
            "p": data.ArrayLayout(PROB, lanes),
            "alpha": PROB,
            "m": signed(X_BITS),
            "l": unsigned(SUM_BITS),
            "tag": unsigned(16),
        })




class OnlineSoftmax(wiring.Component):
    def __init__(self, lanes: int):
        self.lanes = lanes
        self.LATENCY = softmax_latency(lanes)
        self.layouts = L = SoftmaxLayouts(lanes)
        super().__init__({
            "i": In(stream.Signature(L.i)),
            "o": Out(stream.Signature(L.o)),
            # Configuration (hold stable while rows flow): step 2's multiplier and shift (>= 1).
            "score_mult": In(SCORE_MULT_BITS),
            "score_shift": In(6),
        })

    def elaborate(self, platform):
        m = Module()
        N = self.lanes
        T = tree_stages(N)
        advance = Signal()
        valid = Signal(self.LATENCY)
        m.d.comb += [advance.eq(~self.o.valid | self.o.ready), self.i.ready.eq(advance),
                     self.o.valid.eq(valid[-1])]
        with m.If(advance):
            m.d.sync += valid.eq(Cat(self.i.valid, valid[:-1]))

        def stage(value, name, shape=None, reset_when=None, reset_to=0):
            """A pipeline register; with `reset_when`, `reset_to` instead of `value` when that holds. The reset is
            written over the enable (`advance & reset_when`), so it is the flip-flop's own synchronous reset or set
            (FDRE R / FDSE S, which take priority over CE): under the enable it is a multiplexer a bit."""
            r = Signal(shape if shape is not None else value.shape(), name=name)
            if reset_when is not None:
                with m.If(advance & reset_when):
                    m.d.sync += r.eq(reset_to)
                with m.Elif(advance):
                    m.d.sync += r.eq(value)
            else:
                with m.If(advance):
                    m.d.sync += r.eq(value)
            return r

        def carry(sig, name, upto):
            """`sig` delayed through stages 1..upto: element k - 1 is the output of stage k."""
            out = []
            for s in range(1, upto + 1):
                sig = stage(sig, f"{name}_s{s}")
                out.append(sig)
            return out

        def delay(sig, name, n):
            for k in range(n):
                sig = stage(sig, f"{name}_d{k}")
            return sig

        inp = self.i.payload
        s_max = 5 + T                                # the stage whose output is m'
        ms = carry(inp.m, "m", s_max)
        tags = carry(inp.tag, "tag", self.LATENCY)
        counts = carry(inp.count, "count", 4)

        # s1..s5: x = sat32((S * score_mult + 2^(shift-1)) >> shift)
        lo, hi = M_INIT, -M_INIT - 1
        sh = Signal(range(SHIFT_CAP + 1))
        m.d.comb += sh.eq(Mux(self.score_shift > SHIFT_CAP, SHIFT_CAP, self.score_shift))
        half = Signal(unsigned(SHIFT_CAP))           # 2^(sh-1)
        m.d.comb += half.eq((Const(1, unsigned(SHIFT_CAP + 1)) << sh) >> 1)
        rounded_shape = signed(SCORE_PROD.width + 1)    # prod + half in (-2^39, 2^40)
        xs, ok = [], []
        for j in range(N):
            # s1..s3: `S * mult + half` with its input, M and P registers, the post-adder's shape (one DSP, no LUTs).
            score = stage(inp.scores[j], f"score{j}", SCORE)
            prod = stage(score * self.score_mult, f"prod{j}", SCORE_PROD)
            rounded = stage(prod + half, f"rounded{j}", rounded_shape)
            # s4, s5: the shift as two 16:1 / 3:1 steps (a log shifter of one stage took 40 % more LUTs);
            # |rounded| < 2^40, so x saturates only when sh < 16, i.e. in s5's first case.
            shifted = stage(rounded >> sh[:4], f"shifted{j}", rounded_shape)
            top = shifted[X_BITS - 1:]              # all equal unless the value overflows int32 (sh < 16)
            low = sh[4:] == 0
            pos_ovf, neg_ovf = low & ~top[-1] & top.any(), low & top[-1] & ~top.all()
            # x = M_INIT for a lane past `count` (the maximum's identity; its p is 0 whatever x) and on
            # negative overflow: the x register's own reset; only positive overflow is a LUT input.
            ok_now = j < counts[3]
            xs.append(stage(Mux(pos_ovf, hi, shifted >> Cat(Const(0, 4), sh[4:])), f"x{j}", signed(X_BITS),
                            reset_when=~ok_now | neg_ovf, reset_to=lo))
            ok.append(stage(ok_now, f"ok{j}"))
        # s6 .. s5 + T: the new maximum.
        # A balanced tree of named signals: an expression reusing `best` twice per step would
        # double the emitted Verilog per lane (2^N copies).
        level = [ms[4]] + xs
        depth = 0
        while len(level) > 1:
            nxt = []
            for i in range(0, len(level) - 1, 2):
                a, b = level[i], level[i + 1]
                w = Signal(signed(X_BITS), name=f"max{depth}_{i // 2}")
                m.d.comb += w.eq(Mux(b > a, b, a))
                nxt.append(w)
            level = nxt + level[len(level) & ~1:]
            depth += 1
            if depth % 2 == 0 and len(level) > 1:
                level = [stage(w, f"max{depth}_{k}_r", signed(X_BITS)) for k, w in enumerate(level)]
        m_new = stage(level[0], "m_new", signed(X_BITS))
        xs_t = [delay(xs[j], f"x{j}_t", T) for j in range(N)]
        ok_t = [delay(ok[j], f"ok{j}_t", T) for j in range(N)]
        # +1: deltas (>= 0 by construction).
        deltas = [stage(m_new - xs_t[j], f"delta{j}", unsigned(DELTA_BITS)) for j in range(N)]
        d_alpha = stage(m_new - ms[s_max - 1], "delta_alpha", unsigned(DELTA_BITS))
        m_out = delay(m_new, "m_new", 6)
        ok_1 = [stage(ok_t[j], f"ok{j}_s1") for j in range(N)]
        # +2 .. +4: exp2 (t = delta: n = t >> 8, f = t mod 256) as p = floor((T[f] + 2^(n-1)) / 2^n), in block RAM
        # a copy per two lanes (a block RAM's two ports): yosys would build the read ports from logic, and
        # mapping one memory of N + 1 read ports took it past 14 GB at N = 32. A table of 2^8 entries leaves
        # 3/4 of the RAMB18 empty, so it holds 4: U[a][f] = floor(2 T[f] / 2^a) for a = n mod 4 (1,024 x 18
        # bits), and with b = 4 (n div 4) nested floors give p = floor((U + 2^b) / 2^(b+1)) =
        # ((U >> b) + 1) >> 1: a 5:1 choice (b = 0, 4 .. 16) and an increment instead of a 19-bit adder
        # and a 19:1 barrel shift. p = 0 for n >= P_BITS + 2 (the spec's n > P_BITS + 1): the register's reset.
        lanes = [(deltas[j], ok_1[j], f"p{j}") for j in range(N)] + [(d_alpha, Const(1), "alpha")]
        tables = []
        for k in range(0, len(lanes), 2):
            tables.append(Memory(shape=EXP2_SHAPE, depth=len(EXP2_ROM), init=EXP2_ROM, attrs={"rom_style": "block"}))
            m.submodules[f"exp2_table{k // 2}"] = tables[-1]
        outs = []
        for i, (delta, lane_ok, name) in enumerate(lanes):
            rd = tables[i // 2].read_port(domain="sync")
            m.d.comb += [rd.addr.eq(delta[:FRAC_BITS + 2]), rd.en.eq(advance)]
            n_full = delta[FRAC_BITS:]
            b2 = stage(n_full[2:5], f"{name}_b2", range(P_BITS // 4 + 1))      # n div 4 (n < P_BITS + 2)
            ok2 = stage(lane_ok & (n_full < P_BITS + 2), f"{name}_ok2")
            shifted = stage(rd.data >> (b2 << 2), f"{name}_shifted", EXP2_SHAPE)
            ok3 = stage(ok2, f"{name}_ok3")
            outs.append(stage((shifted + 1) >> 1, f"{name}_s4", PROB, reset_when=~ok3))
        ps, alpha = outs[:N], outs[N]
        # +5, +6: the running sum (l < 2^32 by the spec's widths).
        l_in = delay(inp.l, "l", s_max + 4)
        total = stage(sum(ps[1:], ps[0]), "total", unsigned(SUM_BITS + 1))
        l_alpha = stage(l_in * alpha, "l_alpha", unsigned(SUM_BITS + P_BITS + 1))
        l_new = stage(((l_alpha + (1 << (P_BITS - 1))) >> P_BITS) + total, "l_new", unsigned(SUM_BITS))
        p_out = [delay(ps[j], f"p{j}_out", 2) for j in range(N)]
        alpha_out = delay(alpha, "alpha_out", 2)
        o = self.o.payload
        m.d.comb += [o.alpha.eq(alpha_out), o.m.eq(m_out), o.l.eq(l_new), o.tag.eq(tags[-1])]
        for j in range(N):
            m.d.comb += o.p[j].eq(p_out[j])
        return m
