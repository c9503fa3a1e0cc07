"""Two int8 x int8 products from one wide multiply, accumulated in the DSP's own 48-bit register: the
systolic array's packed PE pair, bit for bit.

Shared-operand packing (Xilinx WP486): two weights b_hi, b_lo that meet the same activation a are packed
into one signed word

    w = b_hi * 2^PACK_SHIFT + b_lo                (25 bits signed; as bits: b_hi - (b_lo < 0), then b_lo)

and one multiplier (a DSP48E2's 27 x 18, or a DSP48E1's 25 x 18) computes w * a = (b_hi a) 2^16 + b_lo a.
The DSP's post-adder accumulates these products in its P register (P <- P + w a; a tile's first product
loads P <- w a, the Z multiplexer selecting 0), so after K products, as integers mod 2^48,

    P = A 2^16 + B,        A = sum b_hi a,  B = sum b_lo a.

WP486 stops there after a few products, as B soon spills into A's bits. Here the spill is tracked:
  * The lower field r = P mod 2^16 is B mod 2^16. Write B = q 2^16 + r (q = floor(B / 2^16)).
  * q counts the lower field's wraps. Each product moves r by x = b_lo a, |x| <= 2^14 (-128 x -128 = 2^14:
    a quarter of the field), so a wrap up (r + x >= 2^16) starts from r >= 2^16 - 2^14 and lands below
    2^14, and without a wrap r cannot go from its top quarter to its bottom one (r + x >= 3 * 2^14 - 2^14);
    likewise downwards. So the field wrapped up exactly when its top two bits went 11 -> 00 between
    consecutive P values, and down exactly when they went 00 -> 11 (`wrap`; before a tile's first product
    the field counts as 0). A small up/down counter in the fabric keeps q.
  * |B| <= K 2^14 < 2^31 for K <= intops.MAX_K, so q fits Q_BITS = 16 bits signed, and B = q 2^16 + r is a
    concatenation.
  * P's upper 32 bits are (A + q) mod 2^32 (P = (A + q) 2^16 + r with 0 <= r < 2^16), and A fits int32,
    so A = P[16:48] - q mod 2^32 exactly (`drain`): one subtractor per array column, after its drain
    multiplexer, instead of a 32-bit adder per PE.
16 bits is the narrowest lower field that holds b_lo a (-128 x -128 = 2^14 needs int16, and the quarter
argument needs |x| <= 2^14); it keeps w within the DSP48E1's 25-bit port, so Zynq-7000 packs as well.
"""
from __future__ import annotations

import numpy as np

from golden_model.intops import ACC_BITS, MAX_K

PACK_SHIFT = 16                  # bit position of the upper product field
WORD_BITS = 8 + PACK_SHIFT + 1   # signed width of the packed weight word w (b_hi - 1 needs 9 bits)
PRODUCT_BITS = WORD_BITS + 8     # signed width of w * a
P_BITS = 48                      # the DSP's accumulator register P (DSP48E1 and DSP48E2)
Q_BITS = 16                      # the wrap counter: floor(B / 2^16) for K <= MAX_K
_P_MASK = (1 << P_BITS) - 1
_FIELD = (1 << PACK_SHIFT) - 1


def pack(b_hi, b_lo) -> np.ndarray:
    """The packed weight word w = b_hi * 2^16 + b_lo (int64)."""
    return np.asarray(b_hi, np.int64) * (1 << PACK_SHIFT) + np.asarray(b_lo, np.int64)


def wide_product(w, a) -> np.ndarray:
    """What the DSP's multiplier computes: w * a (int64)."""
    return np.asarray(w, np.int64) * np.asarray(a, np.int64)


def wrap(r_before, r_after) -> np.ndarray:
    """+1 / -1 / 0: the lower field wrapped up / down / not between two consecutive P values, from the
    top two bits of its values before and after (r: P mod 2^16; 0 before a tile's first product)."""
    t0 = (np.asarray(r_before, np.int64) >> (PACK_SHIFT - 2)) & 3
    t1 = (np.asarray(r_after, np.int64) >> (PACK_SHIFT - 2)) & 3
    return ((t0 == 3) & (t1 == 0)).astype(np.int64) - ((t0 == 0) & (t1 == 3))


def drain(p_reg, q) -> tuple[np.ndarray, np.ndarray]:
    """(A, B) as int32 from a finished P (mod 2^48) and the wrap counter q (Q_BITS wide): B is q and the
    lower field side by side, A the upper 32 bits minus q, mod 2^32."""
    p_reg = np.asarray(p_reg, np.int64) & _P_MASK
    q = _signed(np.asarray(q, np.int64), Q_BITS)
    lo = q * (1 << PACK_SHIFT) + (p_reg & _FIELD)
    hi = _signed((p_reg >> PACK_SHIFT) - q, ACC_BITS)
    return hi.astype(np.int32), lo.astype(np.int32)


def _signed(x, bits):
    """x mod 2^bits, read as a signed bits-wide integer (a register's wrap)."""
    return ((x + (1 << (bits - 1))) & ((1 << bits) - 1)) - (1 << (bits - 1))


def packed_matmul(a, b) -> np.ndarray:
    """a (M x K) @ b (K x N) int8 -> int32 as the packed array computes it: columns 2q and 2q+1 of b
    form pair q (b_lo = column 2q, b_hi = column 2q+1); per (row, pair) P accumulates w a mod 2^48, the
    counter the lower field's wraps, and `drain` gives both sums. N must be even; K <= intops.MAX_K.
    Equal to the exact matmul (tested)."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.dtype != np.int8 or b.dtype != np.int8:
        raise TypeError("packed_matmul: int8 operands")
    (m, k), (k2, n) = a.shape, b.shape
    if k != k2 or n % 2:
        raise ValueError(f"packed_matmul: shapes {a.shape} x {b.shape} (K must agree, N be even)")
    if k > MAX_K:
        raise ValueError(f"packed_matmul: K={k} exceeds {MAX_K}")
    w = pack(b[:, 1::2], b[:, 0::2])                 # K x N/2
    p_reg = np.zeros((m, n // 2), np.int64)          # P, and the lower field before the next product
    q = np.zeros((m, n // 2), np.int64)
    r = np.zeros((m, n // 2), np.int64)
    step = max(1, (1 << 22) // max(1, m * n))        # k-chunks that keep the wide products in memory
    for k0 in range(0, k, step):
        p = wide_product(w[None, k0:k0 + step, :], a[:, k0:k0 + step, None])   # M x k x N/2
        seq = (p_reg[:, None, :] + np.cumsum(p, axis=1)) & _P_MASK          # P after each product
        fields = seq & _FIELD
        q = _signed(q + wrap(np.concatenate([r[:, None, :], fields[:, :-1, :]], axis=1), fields).sum(axis=1),
                    Q_BITS)
        p_reg, r = seq[:, -1, :], fields[:, -1, :]
    hi, lo = drain(p_reg, q)
    out = np.empty((m, n), np.int32)
    out[:, 1::2], out[:, 0::2] = hi, lo
    return out
