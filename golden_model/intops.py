"""Integer reference ops: the arithmetic the hardware implements, bit for bit.

Every function here is the specification of a hardware block. Widths are the
ones in `hw/`; the hardware is tested against these functions, never the other
way round.
"""
from __future__ import annotations

import numpy as np

from golden_model import jit

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
    if acc.size and (acc.min() < -(1 << (ACC_BITS - 1)) or acc.max() >= (1 << (ACC_BITS - 1))):
        raise ValueError("requantize: accumulator outside int32")
    if np.any((m < 0) | (m >= (1 << MULT_BITS))):
        raise ValueError(f"requantize: multiplier must be in [0, 2**{MULT_BITS})")
    if np.any((s < 0) | (s >= (1 << SHIFT_BITS))):
        raise ValueError(f"requantize: shift must be in [0, {(1 << SHIFT_BITS) - 1}]")
    rounding = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 0)
    y = np.array(acc * m + rounding, dtype=np.int64)   # the full broadcast shape; then in place (speed only)
    np.right_shift(y, s, out=y)
    np.maximum(y, 0 if relu else INT8_MIN, out=y)
    np.minimum(y, INT8_MAX, out=y)
    return y.astype(np.int8)


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


#: The largest K whose int8 x int8 dot products provably fit an int32 accumulator:
#: |sum| <= K * 128 * 128 < 2**31.
MAX_K = ((1 << (ACC_BITS - 1)) - 1) // (128 * 128)


def saturate_int32(x) -> np.ndarray:
    """Clamp int64 values to the int32 range (the bias adder saturates, it never wraps)."""
    lo, hi = -(1 << (ACC_BITS - 1)), (1 << (ACC_BITS - 1)) - 1
    x = np.asarray(x, dtype=np.int64)
    return np.minimum(np.maximum(x, lo), hi)


#: K per float32 BLAS call in int8_matmul: |partial sum| <= K * 2**14 <= 2**24, an exact float32 integer.
F32_EXACT_K = 1 << 10


def int8_matmul(a, b) -> np.ndarray:
    """Exact int8 (M, K) @ int8 (K, N) -> int64 via float32 BLAS on K chunks of F32_EXACT_K.

    Every product is <= 2**14 and every partial sum of a chunk <= 2**24 (in any summation order,
    FMA or not), so each chunk is exact in float32; chunks are summed in int64.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"int8_matmul: shapes {a.shape} and {b.shape} do not chain")
    for name, x in (("a", a), ("b", b)):
        if x.dtype != np.int8:
            raise ValueError(f"int8_matmul: {name} must be int8, got {x.dtype}")
    return exact_f32_matmul(a.astype(np.float32), b.astype(np.float32)).astype(np.int64)


def exact_f32_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b of int8 values held as float32 (a: (..., K), b: (K, N)), exact: float32 BLAS on K chunks of
    F32_EXACT_K (every partial sum an exact float32 integer), the chunks summed in float64 (|sum| <= K 2^14
    < 2^53). float32 when K <= F32_EXACT_K, else float64 (float32 GEMMs run about twice as fast)."""
    k = a.shape[-1]
    if k <= F32_EXACT_K:
        return a @ b
    acc = (a[..., :F32_EXACT_K] @ b[:F32_EXACT_K]).astype(np.float64)
    for k0 in range(F32_EXACT_K, k, F32_EXACT_K):
        acc += a[..., k0:k0 + F32_EXACT_K] @ b[k0:k0 + F32_EXACT_K]
    return acc


def gemm(a, b, bias=None, multiplier=None, shift=None, *, relu: bool = False,
         out_int32: bool = False) -> np.ndarray:
    """The quantised linear layer every GEMM engine implements, bit for bit.

    a: int8 (M, K) activations; b: int8 (K, N) weights (per output channel n);
    bias: int32 (N,) or None (= 0); multiplier, shift: per output channel (N,) or scalars.
    Exactly:
      acc[m, n] = sum_k a[m, k] * b[k, n]                 (exact; K <= MAX_K keeps it in int32)
      t[m, n]   = clamp(acc[m, n] + bias[n], int32)       (saturating add)
      int8 mode : y = requantize(t, multiplier[n], shift[n], relu)   (see `requantize`)
      int32 mode: y = max(t, 0) if relu else t            (int32; multiplier/shift unused)
    """
    a = np.asarray(a)
    b = np.asarray(b)
    k = a.shape[-1] if a.ndim else 0
    if k > MAX_K:
        raise ValueError(f"gemm: K={k} exceeds {MAX_K}, where int32 accumulation could overflow")
    acc = int8_matmul(a, b)
    n = b.shape[1]
    if bias is None:
        bias = np.zeros(n, dtype=np.int32)
    bias = np.asarray(bias)
    if bias.shape not in ((), (n,)):
        raise ValueError(f"gemm: bias shape {bias.shape}, expected ({n},)")
    if np.any((bias.astype(np.int64) < -(1 << 31)) | (bias.astype(np.int64) >= (1 << 31))):
        raise ValueError("gemm: bias outside int32")
    acc += bias.astype(np.int64)
    t = saturate_int32(acc)
    if out_int32:
        if relu:
            t = np.maximum(t, 0)
        return t.astype(np.int32)
    if multiplier is None or shift is None:
        raise ValueError("gemm: int8 output needs multiplier and shift (or out_int32=True)")
    return requantize(t, multiplier, shift, relu=relu)


class OutputStage:
    """The STORE path (gemm above, after the products), fast and exact: the sim backend's fast mode and the
    integer interpreter's linear use it: saturating bias add, then ReLU
    (int32 out) or the requantiser (int8 out); parameters broadcast against the accumulators.
    `acc_bound`: a bound on |acc| (int8 products: K x 2^14). When acc + bias cannot leave int32, the
    add saturates nothing and (acc + bias) m + r = acc m + (bias m + r): two passes fewer per element;
    and when also every |acc| m + 2^s <= 2^51 (shift 1 <= s <= 43; by acc_bound, else by the
    accumulators at hand), the requantiser runs in float64, exactly (`_requantise_float`: float
    multiplies vectorise, int64 ones do not)."""

    def __init__(self, bias, mult, shift, relu: bool, out_int32: bool, acc_bound: int | None = None):
        self.bias, self.mult, self.shift = (np.asarray(v, np.int64) for v in (bias, mult, shift))
        self.relu, self.out_int32 = relu, out_int32
        self.round = np.where(self.shift > 0, np.left_shift(np.int64(1), np.maximum(self.shift - 1, 0)), 0)
        self.folded = self.scale = None
        if acc_bound is not None and not out_int32 and int(np.abs(self.bias).max(initial=0)) + acc_bound < 1 << 31:
            self.folded = self.bias * self.mult + self.round       # |.| < 2^62 + 2^62: int64
            s = self.shift
            if np.all((s >= 1) & (s <= 43)):
                # y = clip((acc m + folded) >> s) = clip(hi + floor(w 2^-s)), folded = hi 2^s + lo, 0 <= lo < 2^s,
                # w = acc m + lo, |w| < 2^51. hi beyond B + 256 (B = 2^51 2^-s >= 2^8) clips alike either way:
                # clamp it there. Then v = acc (m 2^-s) + (lo 2^-s + hi + 128) is exact in float64: both terms
                # and the sum are multiples of 2^-s below 2^53 2^-s. y + 128 = floor(clip(v, lo8 + 128, 255)),
                # and on [0, 255] the conversion to uint8 (truncation) is that floor; ^ 0x80 makes it int8.
                hi = self.folded >> s
                lo = self.folded - (hi << s)
                bound = np.right_shift(np.int64(1) << 51, s) + 256
                self.scale = np.ldexp(self.mult.astype(np.float64), -s)                     # m 2^-s, exact
                self.offset = np.ldexp(lo.astype(np.float64), -s) + (np.clip(hi, -bound, bound) + 128)
                # the largest |acc| with |acc| m + 2^s <= 2^51 in every column
                room = (np.int64(1) << 51) - np.left_shift(np.int64(1), s)
                self.float_limit = int(np.min(room // np.maximum(self.mult, 1)))
                self.always_float = acc_bound <= self.float_limit

    def _requantise_float(self, acc, table=None) -> np.ndarray:
        if jit.available() and acc.ndim == 2 and self.scale.shape in ((), acc.shape[1:]):
            out = np.empty(acc.shape, np.int8)              # one compiled pass, the same numbers
            n = acc.shape[1]
            _requantise_rows(acc, np.broadcast_to(self.scale, (n,)), np.broadcast_to(self.offset, (n,)),
                             float((0 if self.relu else INT8_MIN) + 128), _IDENTITY if table is None else table, out)
            return out
        return apply_table(self._requantise_float_numpy(acc), table)

    def _requantise_float_numpy(self, acc) -> np.ndarray:
        v = np.multiply(acc, self.scale, dtype=np.float64)
        v += self.offset
        np.minimum(v, INT8_MAX + 128, out=v)                 # (np.clip: several times slower here)
        np.maximum(v, (0 if self.relu else INT8_MIN) + 128, out=v)
        y = v.astype(np.uint8)
        y ^= 0x80
        return y.view(np.int8)

    def __call__(self, acc, table=None) -> np.ndarray:
        """The int8 (or int32) outputs of accumulators `acc`; `table` (int8 (256,), output for input i - 128:
        intvec.LutParams.table), when given, applied to the int8 outputs (the GEMM store's table)."""
        if table is not None and self.out_int32:
            raise ValueError("OutputStage: a table applies to int8 outputs, not int32")
        if self.scale is not None and (self.always_float or max(-acc.min(), acc.max()) <= self.float_limit):
            return self._requantise_float(acc, table)
        return apply_table(self._requantise_int(acc), table)

    def _requantise_int(self, acc) -> np.ndarray:
        t = acc.astype(np.int64)
        if self.folded is not None:
            t *= self.mult
            t += self.folded
        else:
            t += self.bias
            np.clip(t, -(1 << 31), (1 << 31) - 1, out=t)
            if self.out_int32:
                if self.relu:
                    np.maximum(t, 0, out=t)
                return t.astype("<i4")
            t *= self.mult
            t += self.round
        np.right_shift(t, self.shift, out=t)
        np.minimum(t, INT8_MAX, out=t)
        np.maximum(t, 0 if self.relu else INT8_MIN, out=t)
        return t.astype(np.int8)


def apply_table(y, table) -> np.ndarray:
    """table[y + 128] for int8 y (table: int8 (256,), the output for input i - 128), or y when table is None."""
    if table is None:
        return y
    by_byte = np.concatenate([table[128:], table[:128]])            # entry u: table[u ^ 0x80], y's byte u
    return np.take(by_byte, y.view(np.uint8))                       # (one pass: faster than table[u ^ 0x80])


#: The table that maps every int8 to itself (apply_table's identity), for the compiled requantiser.
_IDENTITY = np.arange(INT8_MIN, INT8_MAX + 1, dtype=np.int8)
_IDENTITY.flags.writeable = False           # (read-only like LutParams' tables: one compiled signature for both)


def _requantise_rows_loop(acc, scale, offset, low, table, out):
    """OutputStage._requantise_float for (rows, n) accumulators and per-column scale and offset, element by
    element, then the table: v = acc scale + offset is exact (either rounding order: see OutputStage),
    clipped to [low, 255] and truncated (the floor on [0, 255]): y + 128, so the output is table[y + 128]
    (y itself with the identity table: the uint8 ^ 0x80 of the NumPy path)."""
    rows, n = acc.shape
    for i in range(rows):
        for j in range(n):                  # (branch-free, int32: the loop vectorises, ~10x NumPy's passes)
            v = np.float64(acc[i, j]) * scale[j] + offset[j]
            v = v if v < 255.0 else 255.0
            v = v if v > low else low
            out[i, j] = table[np.int32(v)]


_requantise_rows = jit.kernel(_requantise_rows_loop)


def token_tiles(x, rows: int) -> np.ndarray:
    """Token rows (M, K) -> tiles of `rows` tokens, channel-major: (ceil(M / rows), K, rows), tile i entry k
    byte r = x[i rows + r, k], tokens past M zero. The GEMM array's operand layout (an A entry: one channel
    of R tokens; B and V: of C) and what a transposing LOAD (hw.isa `transpose`) makes of the rows it reads."""
    x = np.asarray(x)
    m, k = x.shape
    t = -(-m // rows)
    padded = np.zeros((t * rows, k), x.dtype)
    padded[:m] = x
    return np.ascontiguousarray(padded.reshape(t, rows, k).transpose(0, 2, 1))
