"""Integer reference ops: the arithmetic the hardware implements, bit for bit.

Every function here is the specification of a hardware block. Widths are the
ones in `hw/`; the hardware is tested against these functions, never the other
way round.
"""
from __future__ import annotations

import numpy as np

#: Widths shared by the golden model and the hardware (the one place they live).
ACC_BITS = 32          # int32 accumulators
OUT_BITS = 8           # int8 activations
MULT_BITS = 31         # requantisation multiplier: unsigned, 0 <= m < 2**31
SHIFT_BITS = 6         # requantisation shift: 0 <= s <= 63

INT8_MIN, INT8_MAX = -(1 << (OUT_BITS - 1)), (1 << (OUT_BITS - 1)) - 1


def requantize(acc, multiplier, shift, relu: bool = False) -> np.ndarray:
    """Requantise int32 accumulators to int8.

    Exactly:  y = clamp( (acc * m + r) >> s , -128, 127 )  with
      * acc : int32, m : unsigned 31-bit, s : 0..63 (all broadcast together),
      * r = 2**(s-1) when s > 0 else 0, i.e. round half towards +infinity,
      * `>>` the arithmetic (flooring) shift of the full 64-bit product,
      * relu: y = max(y, 0) before the clamp.
    acc*m needs 63 bits and acc*m + r < 2**63, so int64 holds every step exactly.
    """
    acc = np.asarray(acc, dtype=np.int64)
    m = np.asarray(multiplier, dtype=np.int64)
    s = np.asarray(shift, dtype=np.int64)
    if np.any((acc < -(1 << (ACC_BITS - 1))) | (acc >= (1 << (ACC_BITS - 1)))):
        raise ValueError("requantize: accumulator outside int32")
    if np.any((m < 0) | (m >= (1 << MULT_BITS))):
        raise ValueError(f"requantize: multiplier must be in [0, 2**{MULT_BITS})")
    if np.any((s < 0) | (s >= (1 << SHIFT_BITS))):
        raise ValueError(f"requantize: shift must be in [0, {(1 << SHIFT_BITS) - 1}]")
    rounding = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 0)
    y = np.right_shift(acc * m + rounding, s)
    if relu:
        y = np.maximum(y, 0)
    return np.clip(y, INT8_MIN, INT8_MAX).astype(np.int8)


def quantize_multiplier(scale: float) -> tuple[int, int]:
    """The (multiplier, shift) pair whose m / 2**s is closest to a positive real scale.

    Uses the largest shift that keeps m < 2**31, for the most precision.
    """
    if not (scale > 0 and np.isfinite(scale)):
        raise ValueError(f"quantize_multiplier: scale must be positive and finite, got {scale}")
    for s in range((1 << SHIFT_BITS) - 1, -1, -1):
        m = int(round(scale * (1 << s)))
        if 0 < m < (1 << MULT_BITS):
            return m, s
    raise ValueError(f"quantize_multiplier: scale {scale} cannot be represented")
