"""Two int8 x int8 products from one wide multiply: the systolic array's packed PE pair, bit for bit.

Shared-operand packing (Xilinx WP486), arranged for per-cycle extraction: two weights b_hi, b_lo that
meet the same activation a are packed into one signed word

    w = b_hi * 2^PACK_SHIFT + b_lo                (25 bits signed; as bits: b_hi - (b_lo < 0), then b_lo)

and one multiplier (a DSP48E2's 27 x 18, or a DSP48E1's 25 x 18) computes p = w * a = (b_hi a) 2^16 + b_lo a.
b_lo a lies in [-16256, 16384], inside int16, so

    b_lo a = p mod 2^16, read as int16            (the lower field: wiring)
    b_hi a = (p >> 16) + p[15]                     (the upper field plus the correction term: the lower
                                                    field's sign bit, the borrow it took from the upper one)

Each field is accumulated on its own in int32; the correction bit goes in as the upper accumulator's
carry-in, so it costs no adder of its own. This is why K is not limited by the field width: WP486
accumulates the packed word inside the DSP and must stop after 7 products; here each cycle's product is
split and the sums run to intops.MAX_K. 16 bits is the narrowest lower field that holds b_lo a
(-128 x -128 = 2^14 needs int16); it keeps w within the DSP48E1's 25-bit port, so Zynq-7000 packs as well.
"""
from __future__ import annotations

import numpy as np

from golden_model.intops import MAX_K

PACK_SHIFT = 16                  # bit position of the upper product field
WORD_BITS = 8 + PACK_SHIFT + 1   # signed width of the packed weight word w (b_hi - 1 needs 9 bits)
PRODUCT_BITS = WORD_BITS + 8     # signed width of w * a


def pack(b_hi, b_lo) -> np.ndarray:
    """The packed weight word w = b_hi * 2^16 + b_lo (int64)."""
    return np.asarray(b_hi, np.int64) * (1 << PACK_SHIFT) + np.asarray(b_lo, np.int64)


def wide_product(w, a) -> np.ndarray:
    """What the DSP computes: w * a (int64)."""
    return np.asarray(w, np.int64) * np.asarray(a, np.int64)


def split(p) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(upper field p >> 16, correction bit p[15], lower field as int16) of a wide product:
    b_hi a = upper + correction, b_lo a = lower."""
    p = np.asarray(p, np.int64)
    lower = ((p + (1 << (PACK_SHIFT - 1))) & ((1 << PACK_SHIFT) - 1)) - (1 << (PACK_SHIFT - 1))
    return p >> PACK_SHIFT, (p >> (PACK_SHIFT - 1)) & 1, lower


def packed_matmul(a, b) -> np.ndarray:
    """a (M x K) @ b (K x N) int8 -> int32 as the packed array computes it: columns 2q and 2q+1 of b
    form pair q (b_lo = column 2q, b_hi = column 2q+1), one wide product per (row, k, pair), each field
    accumulated in int32. N must be even; K <= intops.MAX_K. Equal to the exact matmul (tested)."""
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
    out = np.zeros((m, n), np.int64)
    step = max(1, (1 << 22) // max(1, m * n))        # k-chunks that keep the wide products in memory
    for k0 in range(0, k, step):
        p = wide_product(w[None, k0:k0 + step, :], a[:, k0:k0 + step, None])   # M x k x N/2
        upper, correction, lower = split(p)
        out[:, 1::2] += upper.sum(axis=1) + correction.sum(axis=1)
        out[:, 0::2] += lower.sum(axis=1)
    assert np.all((out >= -(1 << 31)) & (out < (1 << 31)))
    return out.astype(np.int32)
