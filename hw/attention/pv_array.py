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
with out_valid[i] / out_chan[i] / out_bank[i] the input's valid / channel / bank delayed by i + C.

Two banks of p (b = v_bank, which travels with v through the skew): while bank b's tile
streams, the engine's softmax fills bank 1 - b with the next tile's probabilities, and
the next tile's first channel may follow the current tile's last one in the next cycle,
so back-to-back tiles keep every PE busy. Bank b must be held while its channels are in flight.

Each partial sum is only as wide as its prefix can get (`psum_bits`): the PE in column j adds
j + 1 products of a PROB-wide p (any value of the port, not only softmax's [0, 2^16]) and an
int8, |sum| < (j + 1) 2^(PROB.width + 7), so 25 bits in column 0 and 30 in column 31 (PROB is
17 bits) instead of 32: on UltraScale+ yosys 0.70 leaves these adders in the fabric (its
xilinx_dsp pass packs post-adders and registers into DSP48E1s only, the xc7 family), where
every bit is a LUT and a flip-flop; on xc7 they are in the DSP (P = C + A B, PREG) either way.
"""

from amaranth import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from hw.attention.softmax import PROB
from hw.gemm.array import INT8, delay_line

PSUM = signed(32)


def psum_bits(j: int) -> int:
    """Bits of the partial sum leaving column j: j + 1 products, each |p v| <= (2^PROB.width - 1) 128
    < 2^(PROB.width + 7), sum to |s| < 2^(PROB.width + 7 + ceil(log2(j + 1))) (j.bit_length() is that
    ceiling), a signed number of PROB.width + 8 + j.bit_length() bits."""
    return min(PSUM.width, PROB.width + 8 + j.bit_length())


class PVArray(wiring.Component):
    def __init__(self, rows: int, cols: int, chan_bits: int):
        self.rows, self.cols, self.chan_bits = rows, cols, chan_bits
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
        bin_ = [delayed(self.v_bank, j, f"bank{j}") for j in range(C)]  # the bank travels with v
        for i in range(R):
            left = None
            below, below_bank = [], []
            for j in range(C):
                psum = Signal(signed(psum_bits(j)), name=f"psum_{i}_{j}")
                prod = Signal(signed(psum_bits(0)), name=f"prod_{i}_{j}")
                p = Mux(bin_[j], self.p[1][i][j], self.p[0][i][j])
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
        # Row i's result leaves i + C cycles after its channel entered.
        valid, chan, bank = self.v_valid, self.v_chan, self.v_bank
        valid = delayed(valid, C, "valid")
        chan = delayed(chan, C, "chan")
        bank = delayed(bank, C, "bank")
        for i in range(R):
            m.d.comb += [self.out_valid[i].eq(valid), self.out_chan[i].eq(chan), self.out_bank[i].eq(bank)]
            if i + 1 < R:
                valid = delayed(valid, 1, f"valid_r{i}")
                chan = delayed(chan, 1, f"chan_r{i}")
                bank = delayed(bank, 1, f"bank_r{i}")
        return m
