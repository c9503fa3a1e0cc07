"""LayerNorm's per-row constants, as a row streams in (the engine's first pass).

Per beat: masked lanes, their squares (two per multiplier), the beat's sum and sum of squares (a tree), accumulated
over the row. At the row's last beat (S, Q) enter the scalar pipeline, one row per cycle at most:

    var = D Q - S^2, V = max(var + E, 1)      D Q: 11 x 25, S^2: 18 x 18 (registered products)
    e = bit_length(V), k = floor((e - 11) / 2)
    m = (V + rnd(2k)) >> 2k  or  V << -2k      the mantissa in [2^10, 2^12]
    T = RSQRT_TABLE[m - 2^10]                  3,073 x 16-bit ROM (one block RAM)
    DT = D T, ST = S T - rnd(sh), sh = 10 + k   (golden_model.intvec._ln_row_constants)

and (DT, ST, sh) go out on `o`, a stream that never waits: the engine bounds the rows in flight
(hw.vector.params.ROWS_IN_FLIGHT) and gives `o` a FIFO that deep.
"""
from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden_model import intvec
from hw.vector.params import DIM_BITS

S_BITS = 18                              # |S| <= 2^17
Q_BITS = 25                              # Q <= 2^24
V_BITS = intvec.LN_EPS_BITS + 1          # V < 2^41
T_BITS = 16
DT_BITS = 26                               # D T <= 2^10 x 2^15: one 27-bit signed DSP operand with its sign
ST_BITS = S_BITS + T_BITS + 2            # S T - rnd(sh), signed
SH_BITS = 5


class RowConstants(data.Struct):
    dt: unsigned(DT_BITS)
    st: signed(ST_BITS)
    sh: unsigned(SH_BITS)


class RowStats(wiring.Component):
    """`beat` carries an accepted input beat (no backpressure): its lanes, how many are in the row
    (`nvalid`, lanes l >= nvalid count as 0) and whether it ends the row. `dim` and `eps_term` are
    held stable while a command runs."""

    def __init__(self, lanes: int):
        self.lanes = lanes
        super().__init__({
            "beat": In(stream.Signature(data.StructLayout({
                "x": data.ArrayLayout(signed(8), lanes), "nvalid": unsigned(DIM_BITS), "last": 1}))),
            "dim": In(DIM_BITS),
            "eps_term": In(intvec.LN_EPS_BITS),
            "o": Out(stream.Signature(RowConstants)),
        })

    def elaborate(self, platform):
        m = Module()
        L = self.lanes
        b = self.beat
        m.d.comb += b.ready.eq(1)

        # beat: masked lanes, then their squares, then the beat's sums, then the row's.
        x1 = [Signal(signed(8), name=f"x1_{i}") for i in range(L)]
        v1, last1 = Signal(), Signal()
        m.d.sync += [v1.eq(b.valid), last1.eq(b.payload.last)]
        for i in range(L):
            m.d.sync += x1[i].eq(Mux(i < b.payload.nvalid, b.payload.x[i], 0))
        # Two squares per multiplier, of w = x + 128 in [0, 255] (so its operands are wiring and one
        # negation): (u + 2^9 v)(u - 2^9 v) = u^2 - 2^18 v^2 (18 x 18 bits, one DSP), 0 <= u^2 < 2^16, so
        # the low 18 bits are u^2 and the rest, arithmetically shifted, -v^2. Over the beat's L lanes
        # (masked ones are x = 0, w = 128 too): sum x^2 = sum w^2 - 2^8 sum x - 2^14 L.
        x2 = [Signal(signed(8), name=f"x2_{i}") for i in range(L)]
        p2 = [Signal(signed(36), name=f"p2_{i}") for i in range(L // 2)]
        v2, last2 = Signal(), Signal()
        m.d.sync += [v2.eq(v1), last2.eq(last1)]
        for i in range(L):
            m.d.sync += x2[i].eq(x1[i])
        for i in range(L // 2):
            u, v = (x1[2 * i + j].as_unsigned() ^ 0x80 for j in (0, 1))
            nv = Signal(signed(9), name=f"nv{i}")                 # -v: u - 2^9 v is u, 0, -v side by side
            m.d.comb += nv.eq(-v)
            m.d.sync += p2[i].eq(Cat(u, Const(0, 1), v, Const(0, 1)).as_signed() * Cat(u, Const(0, 1), nv).as_signed())
        sum_x = Signal(signed(S_BITS))
        pp = [Signal(unsigned(17), name=f"pp{i}") for i in range(L // 2)]   # u^2 + v^2 (17-bit terms for the sum)
        m.d.comb += [q.eq(p[:16] - p[18:].as_signed()) for q, p in zip(pp, p2)]
        m.d.comb += sum_x.eq(sum(x2))
        sb, qb = Signal(signed(S_BITS)), Signal(unsigned(Q_BITS))
        v3, last3 = Signal(), Signal()
        m.d.sync += [v3.eq(v2), last3.eq(last2), sb.eq(sum_x),
                     qb.eq(sum(pp) - (sum_x << 8) - (L << 14))]
        s_acc, q_acc = Signal(signed(S_BITS)), Signal(unsigned(Q_BITS))
        s4, q4, v4 = Signal(signed(S_BITS)), Signal(unsigned(Q_BITS)), Signal()
        m.d.sync += v4.eq(v3 & last3)
        with m.If(v3):
            with m.If(last3):
                m.d.sync += [s4.eq(s_acc + sb), q4.eq(q_acc + qb), s_acc.eq(0), q_acc.eq(0)]
            with m.Else():
                m.d.sync += [s_acc.eq(s_acc + sb), q_acc.eq(q_acc + qb)]

        # the scalar pipeline: stage n's registers carry the row's S along (sN), valid vN.
        d = self.dim
        dq5, ss5, s5, v5 = Signal(DIM_BITS + Q_BITS), Signal(2 * S_BITS), Signal(signed(S_BITS)), Signal()
        m.d.sync += [dq5.eq(d * q4), ss5.eq(s4 * s4), s5.eq(s4), v5.eq(v4)]
        var = Signal(V_BITS + 1)
        m.d.comb += var.eq(dq5 - ss5 + self.eps_term)
        vv6, s6, v6 = Signal(V_BITS), Signal(signed(S_BITS)), Signal()
        m.d.sync += [vv6.eq(Mux(var == 0, 1, var)), s6.eq(s5), v6.eq(v5)]
        e = Signal(range(V_BITS + 1))
        for i in range(V_BITS):                  # bit_length: the last If that holds wins
            with m.If(vv6[i]):
                m.d.comb += e.eq(i + 1)
        vv7, e7, s7, v7 = Signal(V_BITS), Signal(range(V_BITS + 1)), Signal(signed(S_BITS)), Signal()
        m.d.sync += [vv7.eq(vv6), e7.eq(e), s7.eq(s6), v7.eq(v6)]
        k = Signal(signed(6))
        m.d.comb += k.eq((Cat(e7, Const(0, 1)).as_signed() - (intvec.RSQRT_MANT_BITS - 1)) >> 1)
        two_k = Signal(5)
        m.d.comb += two_k.eq(Mux(k > 0, k << 1, 0))
        rnd = Signal(V_BITS)
        m.d.comb += rnd.eq((Const(1, V_BITS) << two_k) >> 1)
        mant8, k8, s8, v8 = Signal(intvec.RSQRT_MANT_BITS + 1), Signal(signed(6)), Signal(signed(S_BITS)), Signal()
        m.d.sync += [mant8.eq(Mux(k > 0, (vv7 + rnd) >> two_k, vv7 << (-k << 1)[:4])),
                     k8.eq(k), s8.eq(s7), v8.eq(v7)]
        rom = Memory(shape=unsigned(T_BITS), depth=len(intvec.RSQRT_TABLE), init=[int(t) for t in intvec.RSQRT_TABLE])
        m.submodules.rsqrt_rom = rom
        rp = rom.read_port()
        m.d.comb += rp.addr.eq(mant8 - intvec.RSQRT_MIN)
        k9, s9, v9 = Signal(signed(6)), Signal(signed(S_BITS)), Signal()
        m.d.sync += [k9.eq(k8), s9.eq(s8), v9.eq(v8)]
        dt10, st10, sh10, v10 = Signal(DT_BITS), Signal(signed(ST_BITS)), Signal(SH_BITS), Signal()
        m.d.sync += [dt10.eq(d * rp.data), st10.eq(s9 * rp.data),
                     sh10.eq(k9 + (intvec.RSQRT_FRAC_BITS - intvec.LN_FRAC_BITS)), v10.eq(v9)]
        m.d.sync += [self.o.valid.eq(v10), self.o.payload.dt.eq(dt10), self.o.payload.sh.eq(sh10),
                     self.o.payload.st.eq(st10 - ((Const(1, ST_BITS) << sh10) >> 1))]
        return m
