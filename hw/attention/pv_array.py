"""PVArray: weight-stationary R x C array for P V (17-bit probabilities x int8 values).

Why weight-stationary here (the GEMM array is output-stationary): P V reduces over the
key tile, only C keys long, while the output (R queries x d channels) is long. An
output-stationary array would drain R x C results every C cycles (tiles at least 2R - 1
cycles apart for C steps: about half the MACs at R = C). Here PE(i, j) holds p[i][j] (query i,
key j) for the whole tile; channel c of the tile's values, v[:, c] (C keys), enters
at the top (column j delayed j cycles) and moves down; partial sums move right along
each row, so row i's result for channel c leaves the right edge i + C cycles after
v[:, c] entered. One channel per cycle: d cycles per tile, every PE busy.

  out[i] = sum_j p[b][i][j] * v[j]  (int32: C <= 32 keys x 2^16 x 128 < 2^31)
with out_valid[i] / out_chan[i] the input's valid / channel delayed by i + C, out_bank[i] the
channel's bank.

Two banks of p (b, which travels with v through the skew): while bank b's tile
streams, the engine's softmax fills bank 1 - b with the next tile's probabilities, and
the next tile's first channel may follow the current tile's last one in the next cycle,
so back-to-back tiles keep every PE busy. Bank b must be held while its channels are in flight,
and set a cycle before its first channel enters: `v_bank` is the bank of the channel that enters
in the *next* cycle (one cycle ahead of v, v_valid and v_chan), because each PE registers its p.

How a PE picks its bank (`preadd`): with a DSP pre-adder (DSP48E1/E2: (D + A) x B), as two registers
`pa <= bank ? 0 : p[0]` and `pd <= bank ? p[1] : 0`, a synchronous reset each (the DSP's A and D
registers, RSTA / RSTD), whose sum is the selected p: no logic outside the DSP. Without one (ECP5's
MULT18X18D), a 17-bit 2:1 multiplexer in the fabric before the multiplier (17 LUTs a MAC on Xilinx
parts, which is what the pre-adder saves; bitstreams/README.md).

Each partial sum is only as wide as its prefix can get (`psum_bits`): the PE in column j adds
j + 1 products of a PROB-wide p (any value of the port, not only softmax's [0, 2^16]) and an
int8, |sum| < (j + 1) 2^(PROB.width + 7), so 25 bits in column 0 and 30 in column 31 (PROB is
17 bits) instead of 32. On Xilinx parts each PE is one DSP (P = C + (D + A) B, PREG, the PCIN
cascade): yosys 0.70 packs that into DSP48E1s only, so the xcup estimate maps these multipliers
as for xc7 (hw.flows.estimate.xcup_map_dsp); in the fabric (ECP5) every bit is a LUT and a flip-flop.

LUT rows (`lut_rows`, cfg.attn_pv_lut_rows): the last k rows multiply-add in the fabric, so an overlay reaches
R x C P V MACs a cycle on (R - k) x C DSPs (ZCU104: a 32 x 32 GEMM array and a 32 x 32 P V array within 85 %
of its 1,728 DSPs). Their product has no `*` (yosys and Vivado would map one to a DSP): radix-4 Booth over v
(booth_product), exact for every p and v; their bank select is the 17-bit multiplexer register, and their
product is registered, so the 17 x 8 multiply and the accumulate are separate stages at 300 MHz. That
register makes a LUT row's results leave a cycle later, i + C + 1 cycles after the channel entered, and its
out_valid / out_chan / out_bank are delayed to match; p is used in the same cycle as in a DSP row (the
product register takes it), so the banks' timing is unchanged. Being the last rows, the last row stays the
latest (the engine's STEP is done at its last O write, one cycle later with any LUT row). Cost (yosys,
xcup, bitstreams/README.md): 164 LUTs and 79 flip-flops a LUT-row MAC (PVArray(4, 32, 6): 2 LUT rows take
64 DSPs fewer, 10,498 LUTs and 5,066 flip-flops more), against 255 for the same Booth sum written as one
expression and 341 for shift-and-add over v's bits.
"""

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hw.attention.softmax import PROB
from hw.gemm.array import INT8, delay_line

PSUM = signed(32)


def booth_product(m: Module, p, v, name: str):
    """p x v (p unsigned, v an int8) in the fabric, without a `*` (which yosys and Vivado would map to a
    DSP): radix-4 Booth over v, four digits d_k = v[2k] + v[2k-1] - 2 v[2k+1] in -2..2, each partial product
    |d_k| p (0, p or 2p: a multiplexer) one's-complemented when d_k < 0 (v[2k+1] set; a 111 digit's ~0 = -1
    and its +1 cancel). Each digit's +1 sits in the next partial product's free low bits (bit 2k of the
    term shifted by 2k + 2), the last one is the final adder's carry-in, so three two-input adders (carry
    chains) sum them: (pp0 + pp1) + (pp2 + pp3) + carry. Exact for every p and v. The two first sums are
    kept apart (`keep`): without it yosys's alumacc folds the sum into one $macc, which it maps to LUT
    full adders (255 instead of 160 LUTs a PE, bitstreams/README.md)."""
    terms, neg = [], None
    for k in range(4):
        b1, b0, lo = v[2 * k + 1], v[2 * k], v[2 * k - 1] if k else Const(0, 1)
        one, two = b0 ^ lo, (b1 & ~b0 & ~lo) | (~b1 & b0 & lo)
        mag = Mux(two, p << 1, Mux(one, p, 0))                               # |d_k| p
        pp = Cat(mag, Const(0, 1)) ^ b1.replicate(len(p) + 2)                # as signed: d_k p, or d_k p - 1
        terms.append(Cat(Const(0, 2 * k - 2), neg, Const(0, 1), pp).as_signed() if k else pp.as_signed())
        neg = b1
    halves = []
    for h in range(2):
        s = terms[2 * h] + terms[2 * h + 1]
        halves.append(Signal(s.shape(), name=f"{name}_{h}", attrs={"keep": 1}))
        m.d.comb += halves[-1].eq(s)
    return halves[0] + halves[1] + Cat(Const(0, 6), neg)


def psum_bits(j: int) -> int:
    """Bits of the partial sum leaving column j: j + 1 products, each |p v| <= (2^PROB.width - 1) 128
    < 2^(PROB.width + 7), sum to |s| < 2^(PROB.width + 7 + ceil(log2(j + 1))) (j.bit_length() is that
    ceiling), a signed number of PROB.width + 8 + j.bit_length() bits."""
    return min(PSUM.width, PROB.width + 8 + j.bit_length())


class PVArray(wiring.Component):
    def __init__(self, rows: int, cols: int, chan_bits: int, preadd: bool = True, lut_rows: int = 0):
        if not 0 <= lut_rows <= rows:
            raise ValueError(f"PVArray: lut_rows={lut_rows} outside 0..rows={rows}")
        self.rows, self.cols, self.chan_bits, self.preadd, self.lut_rows = rows, cols, chan_bits, preadd, lut_rows
        super().__init__({
            "p": In(data.ArrayLayout(data.ArrayLayout(data.ArrayLayout(PROB, cols), rows), 2)),
            "v": In(data.ArrayLayout(INT8, cols)),
            "v_bank": In(1),
            "v_valid": In(1),
            "v_chan": In(chan_bits),
            "out": Out(data.ArrayLayout(PSUM, rows)),
            "out_valid": Out(rows),
            "out_chan": Out(data.ArrayLayout(unsigned(chan_bits), rows)),
            "out_bank": Out(rows),
        })

    def elaborate(self, platform):
        m = Module()
        R, C = self.rows, self.cols

        def delayed(sig, n, name):
            return delay_line(m, sig, n, name)

        vin = [delayed(self.v[j], j, f"v{j}") for j in range(C)]       # skew: column j late by j
        # The bank travels with v, a cycle ahead: bin_ is the bank of the channel at the PE next cycle.
        bin_ = [delayed(self.v_bank, j, f"bank{j}") for j in range(C)]
        for i in range(R):
            lut = i >= R - self.lut_rows                                # a LUT row: its products in the fabric
            left = None
            below, below_bank = [], []
            for j in range(C):
                psum = Signal(signed(psum_bits(j)), name=f"psum_{i}_{j}")
                prod = Signal(signed(psum_bits(0)), name=f"prod_{i}_{j}")
                if self.preadd and not lut:
                    pa, pd = Signal(PROB, name=f"pa_{i}_{j}"), Signal(PROB, name=f"pd_{i}_{j}")
                    m.d.sync += [pa.eq(Mux(bin_[j], 0, self.p[0][i][j])), pd.eq(Mux(bin_[j], self.p[1][i][j], 0))]
                    p = pa + pd
                else:
                    p = Signal(PROB, name=f"p_{i}_{j}")
                    m.d.sync += p.eq(Mux(bin_[j], self.p[1][i][j], self.p[0][i][j]))
                if lut:                                                 # registered: multiply, then add
                    m.d.sync += prod.eq(booth_product(m, p, vin[j], f"mul_{i}_{j}"))
                else:
                    m.d.comb += prod.eq(p * vin[j])
                m.d.sync += psum.eq(prod if left is None else left + prod)
                left = psum
                if i + 1 < R:
                    r = Signal(INT8, name=f"vdown_{i}_{j}")
                    rb = Signal(name=f"bankdown_{i}_{j}")
                    m.d.sync += [r.eq(vin[j]), rb.eq(bin_[j])]
                    below.append(r)
                    below_bank.append(rb)
            m.d.comb += self.out[i].eq(left)
            vin, bin_ = below, below_bank
        # Row i's result leaves i + C cycles after its channel entered (i + C + 1 in a LUT row).
        valid, chan, bank = self.v_valid, self.v_chan, self.v_bank
        valid = delayed(valid, C, "valid")
        chan = delayed(chan, C, "chan")
        bank = delayed(bank, C + 1, "bank")
        for i in range(R):
            if i == R - self.lut_rows:                                  # the first LUT row: its product register
                valid, chan, bank = (delayed(valid, 1, "valid_lut"), delayed(chan, 1, "chan_lut"),
                                     delayed(bank, 1, "bank_lut"))
            m.d.comb += [self.out_valid[i].eq(valid), self.out_chan[i].eq(chan), self.out_bank[i].eq(bank)]
            if i + 1 < R:
                valid = delayed(valid, 1, f"valid_r{i}")
                chan = delayed(chan, 1, f"chan_r{i}")
                bank = delayed(bank, 1, f"bank_r{i}")
        return m
