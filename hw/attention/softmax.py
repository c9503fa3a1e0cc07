"""OnlineSoftmax: one row of a key tile's scores -> probabilities, rescale factor, new state.

Steps 2-5 of golden_model/intattn.py (the spec) for N key lanes in parallel, one
query row per cycle, fully pipelined (one enable, like hw/requant.py: the whole
pipeline holds when its output is not taken):

  s1  S * score_mult                          N products (24 x 16 bits: a DSP each)
  s2  x = sat32((prod + 2^(sh-1)) >> sh)      lanes past `count` excluded
  s3  m' = max(m, max_j x_j)                  a comparator tree
  s4  deltas m' - x_j and m' - m              33 bits, >= 0
  s5  exp2 table lookup, integer part n       2^FRAC_BITS-entry ROM per lane
  s6  p = (T + 2^(n-1)) >> n                  a barrel shift with rounding
  s7  l' = ((l * alpha + 2^15) >> 16) + sum p

The row state (m, l) goes in and comes out with the row, so the engine keeps it in
a small memory per query row; the output accumulator's rescale by `alpha` is the
P V side's job.
"""
from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden_model.intattn import EXP2_TABLE, FRAC_BITS, M_INIT, P_BITS, SCORE_MULT_BITS, SUM_BITS, X_BITS

SCORE = signed(32)            # what the Q K^T array delivers (|S| <= 2^22 for d <= 256)
PROB = unsigned(P_BITS + 1)   # p and alpha: [0, 2^P_BITS]
DELTA_BITS = X_BITS + 1       # m' - x, m' - m


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


def exp2_split(m: Module, delta, name: str):
    """Stage s5 for one lane: (table entry, integer part clamped to P_BITS + 2), registered by the caller."""
    table = Array(Const(int(v), PROB) for v in EXP2_TABLE)
    n_full = delta[FRAC_BITS:]
    n = Signal(range(P_BITS + 3), name=f"{name}_n")
    m.d.comb += n.eq(Mux(n_full > P_BITS + 2, P_BITS + 2, n_full))
    return table[delta[:FRAC_BITS]], n


def exp2_shift(base, n):
    """Stage s6: (base + 2^(n-1)) >> n, base itself for n = 0."""
    wide = unsigned(P_BITS + 1 + P_BITS + 3)
    half = Mux(n == 0, 0, (Const(1, wide) << n) >> 1)
    return ((base + half) >> n)[:P_BITS + 1]


class OnlineSoftmax(wiring.Component):
    LATENCY = 7

    def __init__(self, lanes: int):
        self.lanes = lanes
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
        advance = Signal()
        valid = Signal(self.LATENCY)
        m.d.comb += [advance.eq(~self.o.valid | self.o.ready), self.i.ready.eq(advance),
                     self.o.valid.eq(valid[-1])]
        with m.If(advance):
            m.d.sync += valid.eq(Cat(self.i.valid, valid[:-1]))

        def stage(value, name, shape=None):
            r = Signal(shape if shape is not None else value.shape(), name=name)
            with m.If(advance):
                m.d.sync += r.eq(value)
            return r

        def carry(sig, name, upto):
            """`sig` delayed through stages 1..upto (the row's passengers)."""
            out = []
            for s in range(1, upto + 1):
                sig = stage(sig, f"{name}_s{s}")
                out.append(sig)
            return out

        inp = self.i.payload
        ms = carry(inp.m, "m", 4)
        ls = carry(inp.l, "l", 7)
        tags = carry(inp.tag, "tag", 7)
        counts = carry(inp.count, "count", 2)

        lo, hi = M_INIT, -M_INIT - 1
        prod = [stage(inp.scores[j] * self.score_mult, f"prod{j}", signed(32 + SCORE_MULT_BITS + 1))
                for j in range(N)]
        half = Signal(signed(65))                    # 2^(shift-1), shift <= 63
        m.d.comb += half.eq((Const(1, unsigned(64)) << self.score_shift) >> 1)
        xs, ok = [], []
        for j in range(N):
            shifted = Signal(signed(66), name=f"shifted{j}")
            m.d.comb += shifted.eq((prod[j] + half) >> self.score_shift)
            xs.append(stage(Mux(shifted > hi, hi, Mux(shifted < lo, lo, shifted)), f"x{j}", signed(X_BITS)))
            ok.append(stage(j < counts[0], f"ok{j}"))
        # s3: the new maximum (lanes past count do not take part; M_INIT is the identity).
        best = ms[1]
        for j in range(N):
            cand = Mux(ok[j], xs[j], lo)
            best = Mux(cand > best, cand, best)
        m_new = stage(best, "m_new", signed(X_BITS))
        xs3 = [stage(xs[j], f"x{j}_s3") for j in range(N)]
        ok3 = [stage(ok[j], f"ok{j}_s3") for j in range(N)]
        # s4: deltas (>= 0 by construction).
        deltas = [stage(m_new - xs3[j], f"delta{j}", unsigned(DELTA_BITS)) for j in range(N)]
        d_alpha = stage(m_new - ms[2], "delta_alpha", unsigned(DELTA_BITS))
        m4 = stage(m_new, "m_s4")
        ok4 = [stage(ok3[j], f"ok{j}_s4") for j in range(N)]
        # s5, s6: exp2.
        lanes = [(deltas[j], ok4[j], f"p{j}") for j in range(N)] + [(d_alpha, Const(1), "alpha")]
        outs = []
        for delta, lane_ok, name in lanes:
            base, n = exp2_split(m, delta, name)
            base5 = stage(base, f"{name}_base", PROB)
            n5 = stage(n, f"{name}_n5")
            ok5 = stage(lane_ok, f"{name}_ok5")
            outs.append(stage(Mux(ok5, exp2_shift(base5, n5), 0), f"{name}_s6", PROB))
        ps, alpha = outs[:N], outs[N]
        m5 = stage(m4, "m_s5")
        m6 = stage(m5, "m_s6")
        # s7: the running sum (l < 2^32 by the spec's widths).
        total = Signal(unsigned(SUM_BITS + 1))
        m.d.comb += total.eq(sum(ps[1:], ps[0]))
        rescaled = (ls[5] * alpha + (1 << (P_BITS - 1))) >> P_BITS
        l_new = stage(rescaled + total, "l_new", unsigned(SUM_BITS))
        p7 = [stage(ps[j], f"p{j}_s7") for j in range(N)]
        alpha7 = stage(alpha, "alpha_s7")
        m7 = stage(m6, "m_s7")
        o = self.o.payload
        m.d.comb += [o.alpha.eq(alpha7), o.m.eq(m7), o.l.eq(l_new), o.tag.eq(tags[6])]
        for j in range(N):
            m.d.comb += o.p[j].eq(p7[j])
        return m
