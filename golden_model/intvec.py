"""Integer element-wise ops of int8 SAM 2, bit for bit: the vector engine's specification.

Activations are int8 with one float scale per tensor (real = scale * int, no zero point).
Each op with parameters has a frozen dataclass of integer parameters with
  * `make(...)`: derives them from float parameters and float scales (calibration time),
  * `to_arrays()` / `from_arrays(d)`: numeric arrays for safetensors files (strict: a wrong
    name, dtype, shape or range raises ValueError naming it),
and a pure function applying it to int8 NumPy arrays (int8 out, no float at apply time).

  op                     formula (per element; `>>` is the flooring arithmetic shift,
                         `rnd(s)` = 2^(s-1) for s > 0 else 0, i.e. round half up)
  layernorm(x, p)        over the last axis, see `layernorm`
  lut(x, p)              y = table[x + 128]                       (256 x int8 ROM)
  add(a, b, p)           y = sat8((a*ma + b*mb + rnd(s)) >> s)      ma, mb < 2^16, 0 <= s <= 31
  rescale(x, p)          y = sat8((x*m + rnd(s)) >> s)              the add datapath with one input
  rope(x, p)             pairs (2i, 2i+1): int16 cos/sin (14 fraction bits), int32 products,
                         intops.requantize to int8 (rope_axial_tables: the tables' x / y factors)
  maxpool2x2(x)          max over 2x2 blocks of (..., H, W, C), floor sizes; scale unchanged
  upsample_nearest2x(x)  each pixel to a 2x2 block of (..., H, W, C); scale unchanged

What needs no op of its own (folded by the graph, so no extra pass):
  * CXBlock's layer scale `gamma * pwconv2(y)` is a per-output-channel constant: it folds into
    pwconv2's weight rows and bias before per-channel weight quantisation, exactly.
  * the FPN neck's "avg" fusion (/ 2) and memory attention's `x + 0.1 * pos` are scale changes of
    one operand: out_scale, or b_scale, of `add`.
  * ReLU after a linear is the GEMM requantiser's relu flag; GELU after an add is `lut` on the sum.
  * sigmoid, and the memory encoder's `sigmoid(m) * 20 - 10`, are `LutParams.make(fn, ...)`.
  * concatenating tensors of different scales (memory tokens) is one `rescale` per part.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from golden_model import intops, jit, nn, workers
from golden_model.intops import INT8_MAX, INT8_MIN, MULT_BITS, SHIFT_BITS, quantize_multiplier

# ------------------------------------------------------------------ widths (the one place they live)

# LayerNorm
LN_MAX_DIM = 1024         # longest row: |D q - S| < 2^18, D*Q - S^2 < 2^34
LN_FRAC_BITS = 10         # P: fraction bits of the normalised value n (|n| <= sqrt(D-1) < 32: int16)
LN_NORM_BITS = 16         # n is int16 (|n| < 2^15 proved in `layernorm`: no saturation needed)
LN_GAIN_BITS = 16         # per-channel gain g: int16 (signed: gamma may be negative)
LN_BIAS_LIMIT = 1 << 29   # per-channel bias b: |b| <= 2^29 (int32), so n*g + b + rnd(s) fits int32
LN_SHIFT_MAX = 30         # output shift s in 1..30
LN_EPS_BITS = 40          # eps term E < 2^40, so V = var + E < 2^41
RSQRT_MANT_BITS = 12      # V is normalised to a mantissa m in [2^10, 2^12] (table index)
RSQRT_FRAC_BITS = 20      # RSQRT_TABLE[m] = round(2^20 / sqrt(m)), in [2^14, 2^15] (16 bits unsigned)
RSQRT_MIN = 1 << (RSQRT_MANT_BITS - 2)
RSQRT_TABLE = np.array([math.floor((1 << RSQRT_FRAC_BITS) / math.sqrt(m) + 0.5)
                        for m in range(RSQRT_MIN, (1 << RSQRT_MANT_BITS) + 1)], dtype=np.int64)

# add / rescale
ADD_MULT_BITS = 16        # multipliers ma, mb, m: unsigned, < 2^16 (an int8 x 17-bit signed DSP product)
ADD_SHIFT_MAX = 31        # |a*ma + b*mb| < 2^24 and rnd(31) = 2^30: the sum fits int32

# LUT
LUT_SIZE = 1 << 8         # one entry per int8 input, indexed by x + 128

# RoPE
ROPE_FRAC_BITS = 14       # cos, sin as int16 with 14 fraction bits: |c|, |s| <= 2^14
ROPE_ACC_BITS = 24        # |x0*c - x1*s| <= 2 * 128 * 2^14 = 2^22: int24 (held in int32)


# ------------------------------------------------------------------ shared helpers


def _int8(name: str, x, min_ndim: int = 1) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.int8:
        raise ValueError(f"{name} must be int8, got {x.dtype}")
    if x.ndim < min_ndim:
        raise ValueError(f"{name} needs at least {min_ndim} dimension(s), got shape {x.shape}")
    return x


def _round_half_up(v) -> np.ndarray:
    """floor(v + 1/2) in float64 -> int64 (the make-time rounding, matching the shifts' rnd)."""
    return np.floor(np.asarray(v, np.float64) + 0.5).astype(np.int64)


def _positive(name: str, v: float) -> float:
    v = float(v)
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be positive and finite, got {v}")
    return v


def _shift_round(acc: np.ndarray, s: int) -> np.ndarray:
    """(acc + rnd(s)) >> s in acc's integer dtype (the caller proves no overflow)."""
    if s == 0:
        return acc
    acc += acc.dtype.type(1 << (s - 1))
    acc >>= s
    return acc


BLOCK = 1 << 16   # elements per pass of the NumPy kernels: temporaries stay in cache (speed only)


def _row_blocks(n_rows: int, row_len: int):
    """Slices of about BLOCK elements over n_rows rows of row_len."""
    step = max(1, BLOCK // max(row_len, 1))
    for i in range(0, n_rows, step):
        yield slice(i, min(i + step, n_rows))


def _blocks(n_rows: int, n_cols: int):
    """(row slice, column slice) blocks of about BLOCK elements covering an (n_rows, n_cols) array."""
    cstep = max(1, min(n_cols, BLOCK))
    for rows in _row_blocks(n_rows, cstep):
        for j in range(0, n_cols, cstep):
            yield rows, slice(j, min(j + cstep, n_cols))


#: Elements of a LayerNorm from which its rows go to the worker threads (golden_model.workers): one thread's
#: time / two threads' on 2 idle cores 0.77 at 2^18 elements, 1.03-1.09 at 2^19, 1.12-1.42 from 2^20. (The
#: residual add stays serial: 1.1 at 2^22, for 25 % more CPU.)
PARALLEL_MIN = 1 << 20


def _parts(n: int, elements: int) -> list[slice]:
    """range(n) (rows) in parts for the worker threads for a call of `elements` (two a thread, so a thread
    the machine's load holds back holds back a quarter of the work, not half), else one part."""
    threads = workers.parallel() if elements >= PARALLEL_MIN else 1
    return workers.split(n, 1 if threads == 1 else 2 * threads)


def _saturate(y: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Clamp integer y to [lo, hi] in place (np.clip is slower) and return it."""
    np.maximum(y, lo, out=y)
    np.minimum(y, hi, out=y)
    return y


def _check_range(name: str, v: int, lo: int, hi: int) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {v!r}")
    v = int(v)
    if not lo <= v <= hi:
        raise ValueError(f"{name}={v} outside {lo}..{hi}")
    return v


def _frozen_array(name: str, a, dtype, shape: tuple | None = None, ndim: int | None = None) -> np.ndarray:
    """A read-only copy of `a` after checking dtype and shape (or rank)."""
    a = np.asarray(a)
    if a.dtype != np.dtype(dtype):
        raise ValueError(f"{name} must be {np.dtype(dtype)}, got {a.dtype}")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {a.shape}")
    a = np.array(a, copy=True)
    a.setflags(write=False)
    return a


class _IntegerParams:
    """to_arrays / from_arrays of the parameter dataclasses. FILE_DTYPES maps each field to its dtype
    in files; int fields are 0-d arrays; __post_init__ checks shapes and ranges."""
    FILE_DTYPES: dict = {}

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {k: np.array(getattr(self, k), dtype) for k, dtype in self.FILE_DTYPES.items()}

    @classmethod
    def from_arrays(cls, d: dict):
        name = cls.__name__
        extra, missing = sorted(set(d) - set(cls.FILE_DTYPES)), [k for k in cls.FILE_DTYPES if k not in d]
        if extra:
            raise ValueError(f"{name}: unexpected array(s) {extra}; expected {list(cls.FILE_DTYPES)}")
        if missing:
            raise ValueError(f"{name}: missing array(s) {missing}")
        scalars = {f.name for f in fields(cls) if f.type == "int"}
        values = {}
        for k, dtype in cls.FILE_DTYPES.items():
            a = np.asarray(d[k])
            if a.dtype != np.dtype(dtype):
                raise ValueError(f"{name}.{k} must be {np.dtype(dtype)}, got {a.dtype}")
            if k in scalars and a.shape != ():
                raise ValueError(f"{name}.{k} must be a scalar (shape ()), got shape {a.shape}")
            values[k] = int(a) if k in scalars else a
        return cls(**values)


# ------------------------------------------------------------------ LayerNorm


def rsqrt_fixed(v) -> tuple[np.ndarray, np.ndarray]:
    """Integer inverse square root of V >= 1 (int64 array): (T, k) with 1/sqrt(V) ~ T / 2^(20 + k).

    e = bit_length(V), k = ceil((e - 12) / 2) (signed, -5..15 for V < 2^41),
    m = (V + rnd(2k)) >> 2k  if k > 0  else  V << -2k      (m in [2^10, 2^12]: round half up)
    T = RSQRT_TABLE[m - 2^10] = round(2^20 / sqrt(m))       (3,073 x 16-bit ROM, one per engine)
    Relative error of T / 2^(20+k) against 1/sqrt(V): <= 2^-12 (mantissa) + 2^-15 (table)."""
    v = np.asarray(v, np.int64)
    if np.any(v < 1) or np.any(v >= (1 << (LN_EPS_BITS + 1))):
        raise ValueError(f"rsqrt_fixed: V outside [1, 2^{LN_EPS_BITS + 1})")
    e = np.frexp(v.astype(np.float64))[1].astype(np.int64)       # bit_length: exact, V < 2^53
    k = (e - (RSQRT_MANT_BITS - 1)) // 2
    kp = np.maximum(k, 0)
    rnd = np.where(kp > 0, np.left_shift(np.int64(1), np.maximum(2 * kp - 1, 0)), 0)
    m = np.where(k > 0, (v + rnd) >> (2 * kp), v << (2 * np.maximum(-k, 0)))
    return RSQRT_TABLE[m - RSQRT_MIN], k


@dataclass(frozen=True, eq=False)
class LayerNormParams(_IntegerParams):
    """Integer LayerNorm over D channels (see `layernorm`): gain g (int16, D), bias b (int32, D),
    output shift s (1..30), eps term E (0 <= E < 2^40)."""
    gain: np.ndarray
    bias: np.ndarray
    shift: int
    eps_term: int

    FILE_DTYPES = {"gain": np.int16, "bias": np.int32, "shift": np.int32, "eps_term": np.int64}

    def __post_init__(self):
        gain = _frozen_array("LayerNormParams.gain", self.gain, np.int16, ndim=1)
        d = gain.shape[0]
        if not 1 <= d <= LN_MAX_DIM:
            raise ValueError(f"LayerNormParams: {d} channels outside 1..{LN_MAX_DIM}")
        bias = _frozen_array("LayerNormParams.bias", self.bias, np.int32, shape=(d,))
        if np.any(np.abs(bias.astype(np.int64)) > LN_BIAS_LIMIT):
            raise ValueError(f"LayerNormParams.bias outside +-2^{LN_BIAS_LIMIT.bit_length() - 1}")
        object.__setattr__(self, "gain", gain)
        object.__setattr__(self, "bias", bias)
        object.__setattr__(self, "shift", _check_range("LayerNormParams.shift", self.shift, 1, LN_SHIFT_MAX))
        object.__setattr__(self, "eps_term", _check_range("LayerNormParams.eps_term", self.eps_term, 0,
                                                          (1 << LN_EPS_BITS) - 1))

    @property
    def dim(self) -> int:
        return self.gain.shape[0]

    @classmethod
    def make(cls, gamma, beta, in_scale: float, out_scale: float, eps: float) -> "LayerNormParams":
        """For y = gamma * (x - mean) / sqrt(var + eps) + beta, x = in_scale * q, y = out_scale * int.

        E = round(D^2 eps / in_scale^2); G = gamma / out_scale; the largest s <= 30 with
        g = round(G * 2^(s - P)) in int16 and b = round(beta / out_scale * 2^s) within +-2^29."""
        gamma = np.asarray(gamma, np.float64)
        beta = np.asarray(beta, np.float64)
        if gamma.ndim != 1 or beta.shape != gamma.shape:
            raise ValueError(f"LayerNormParams.make: gamma {gamma.shape} and beta {beta.shape} must be the same (D,)")
        if not (np.all(np.isfinite(gamma)) and np.all(np.isfinite(beta))):
            raise ValueError("LayerNormParams.make: gamma and beta must be finite")
        in_scale, out_scale = _positive("in_scale", in_scale), _positive("out_scale", out_scale)
        eps = float(eps)
        if not (eps >= 0 and math.isfinite(eps)):
            raise ValueError(f"eps must be finite and >= 0, got {eps}")
        d = gamma.shape[0]
        eps_term = math.floor(d * d * eps / (in_scale * in_scale) + 0.5)
        if eps_term >= (1 << LN_EPS_BITS):
            raise ValueError(f"LayerNormParams.make: eps / in_scale^2 = {eps / in_scale ** 2:.3g} too large "
                             f"(eps term {eps_term} >= 2^{LN_EPS_BITS})")
        g_real, b_real = gamma / out_scale, beta / out_scale
        for s in range(LN_SHIFT_MAX, 0, -1):
            g = _round_half_up(g_real * 2.0 ** (s - LN_FRAC_BITS))
            b = _round_half_up(b_real * 2.0 ** s)
            if np.all(np.abs(g) < (1 << (LN_GAIN_BITS - 1))) and np.all(np.abs(b) <= LN_BIAS_LIMIT):
                return cls(g.astype(np.int16), b.astype(np.int32), s, eps_term)
        raise ValueError("LayerNormParams.make: gamma / out_scale or beta / out_scale too large for int16 gains "
                         "and int32 biases")


def _ln_row_constants(rows: np.ndarray, eps_term: int):
    """Steps 1-3 of `layernorm` for (R, D) rows: per row (D T, S T - rnd(sh), sh), int64 (R,) each."""
    d = rows.shape[1]
    s = np.empty(rows.shape[0], np.int64)
    q = np.empty(rows.shape[0], np.int64)
    for sl in _row_blocks(rows.shape[0], d):
        xf = rows[sl].astype(np.float32)            # an exact integer carrier: every sum is below 2^24
        s[sl] = xf.sum(axis=1)                       # S = sum q        |S| <= 2^17
        q[sl] = np.einsum("ij,ij->i", xf, xf)        # Q = sum q^2     Q <= 2^24
    var = d * q - s * s                              # D^2 variance(q) < 2^34
    t, k = rsqrt_fixed(np.maximum(var + eps_term, 1))
    sh = RSQRT_FRAC_BITS - LN_FRAC_BITS + k          # 5..25
    # c * T = q * (D T) - S T: two row constants, one 8 x 26-bit product per element (< 2^33)
    return d * t, s * t - np.left_shift(np.int64(1), sh - 1), sh


def _ln_blocks(x: np.ndarray, eps_term: int):
    """(rows, n) per cache-sized block of rows: n (int32 view of a reused buffer) of step 4."""
    d = x.shape[-1]
    if not 1 <= d <= LN_MAX_DIM:
        raise ValueError(f"layernorm: rows of {d} outside 1..{LN_MAX_DIM}")
    rows = x.reshape(-1, d)
    dt, st, sh = _ln_row_constants(rows, eps_term)
    step = max(1, BLOCK // d)
    wide, narrow = np.empty((step, d), np.int64), np.empty((step, d), np.int32)
    for sl in _row_blocks(rows.shape[0], d):
        n64, n = wide[:sl.stop - sl.start], narrow[:sl.stop - sl.start]
        np.multiply(rows[sl], dt[sl, None], out=n64, dtype=np.int64)
        n64 -= st[sl, None]
        n64 >>= sh[sl, None]
        n[...] = n64                                 # |n| < 2^15 (proved in `layernorm`): exact
        yield sl, n


def layernorm_normalised(x, eps_term: int = 0) -> np.ndarray:
    """Steps 1-4 of `layernorm`: n = (x - mean) / sqrt(var + eps) with LN_FRAC_BITS fraction bits, int16."""
    x = _int8("layernorm: x", x)
    out = np.empty((math.prod(x.shape[:-1]), x.shape[-1]), np.int16)
    for sl, n in _ln_blocks(x, eps_term):
        out[sl] = n
    return out.reshape(x.shape)


def layernorm(x, p: LayerNormParams) -> np.ndarray:
    """LayerNorm over the last axis of int8 x (..., D), D <= 1,024 (LayerNorm2d: channels last).

    Per row of q (int8, D values), with P = LN_FRAC_BITS = 10:
      1. S = sum q (int18), Q = sum q^2 (uint25), var = D*Q - S^2 = D * sum (q - mean)^2
         = D^2 variance(q): 0 <= var < 2^34 (a per-row scalar: one DSP48 accumulator)
      2. V = max(var + E, 1) < 2^41, E = p.eps_term = round(D^2 eps / in_scale^2)
      3. (T, k) = rsqrt_fixed(V): 1/sqrt(V) ~ T / 2^(20 + k), T 16-bit unsigned from a 3,073-entry ROM
      4. per element: c = D q - S (int19), n = (c * T + rnd(sh)) >> sh, sh = 10 + k in 5..25:
         n = (q - mean) / sqrt(variance(q) + eps / in_scale^2) with P fraction bits, int16 without
         saturation: |q - mean| <= sqrt(D - 1) std(q) (Samuelson), so |n| <= 31.985 (1 + 2^-12 + 2^-15)
         2^10 + 1/2 < 32,764 (E only makes it smaller). |c * T| < 2^33: one 19 x 17-bit DSP product,
         or q * (D T) - S T with the row constants D T (26 bits) and S T (34 bits).
      5. per channel j: y = sat8((n * g[j] + b[j] + rnd(s)) >> s), s = p.shift:
         |n * g| < 2^30, |b| <= 2^29, rnd(s) <= 2^29: int32 throughout.
    A constant row (var = 0) gives c = 0, n = 0 and y = sat8((b[j] + rnd(s)) >> s): beta quantised.
    Error against float LayerNorm of the dequantised input, in output LSB (before saturation):
      <= 0.5 + |G| (|n| (2^-12 + 2^-15 + 1/(4V)) + 2^-11) + (|n| + 1) 2^(P - s - 1),  G = gamma / out_scale
    (tests/test_intvec.py checks it element by element)."""
    x = _int8("layernorm: x", x)
    if x.shape[-1] != p.dim:
        raise ValueError(f"layernorm: rows of {x.shape[-1]} for parameters of {p.dim} channels")
    rows = x.reshape(-1, p.dim)
    out = np.empty(rows.shape, np.int8)
    g, b = p.gain.astype(np.int32), p.bias

    def part(rs):                                   # (rows are independent: parts write their own)
        part_out = out[rs]
        if jit.available():                         # steps 4-5 in one compiled pass, the same numbers
            x = rows[rs]                            # (p.dim in 1..LN_MAX_DIM: LayerNormParams checks it)
            dt, st, sh = _ln_row_constants(x, p.eps_term)
            _ln_rows(x, dt, st, sh, g, b, p.shift, part_out)
            return
        for sl, n in _ln_blocks(rows[rs], p.eps_term):
            n *= g
            n += b
            part_out[sl] = _saturate(_shift_round(n, p.shift), INT8_MIN, INT8_MAX)
    workers.map(part, _parts(len(rows), rows.size))
    return out.reshape(x.shape)


def _ln_rows_loop(x, dt, st, sh, g, b, s, out):
    """Steps 4-5 of `layernorm` element by element (the NumPy path's numbers): x (rows, D) int8, the row
    constants dt, st, sh of `_ln_row_constants`, gains g and biases b int32 (D,), output shift s; writes out."""
    rows, d = x.shape
    rnd = (1 << (s - 1)) if s > 0 else 0
    for i in range(rows):
        for j in range(d):
            n = np.int32((np.int64(x[i, j]) * dt[i] - st[i]) >> sh[i])        # step 4: |n| < 2^15
            y = (n * g[j] + b[j] + rnd) >> s                                    # step 5: int32 throughout
            out[i, j] = min(max(y, INT8_MIN), INT8_MAX)


_ln_rows = jit.kernel(_ln_rows_loop)


# ------------------------------------------------------------------ LUT (GELU, sigmoid, ...)


@dataclass(frozen=True, eq=False)
class LutParams(_IntegerParams):
    """A 256-entry int8 table: table[i] is the output for input i - 128."""
    table: np.ndarray

    FILE_DTYPES = {"table": np.int8}

    def __post_init__(self):
        object.__setattr__(self, "table", _frozen_array("LutParams.table", self.table, np.int8, shape=(LUT_SIZE,)))

    @classmethod
    def make(cls, fn, in_scale: float, out_scale: float) -> "LutParams":
        """table[i] = sat8(floor(fn(in_scale * (i - 128)) / out_scale + 1/2)), fn evaluated in float64
        (vectorised). Exact w.r.t. the quantised input: |error| <= 0.5 LSB unless saturated."""
        in_scale, out_scale = _positive("in_scale", in_scale), _positive("out_scale", out_scale)
        x = in_scale * np.arange(INT8_MIN, INT8_MAX + 1, dtype=np.float64)
        with np.errstate(over="ignore"):
            y = np.asarray(fn(x), np.float64)
        if y.shape != x.shape:
            raise ValueError(f"LutParams.make: fn must map an array of {x.shape} to the same shape, got {y.shape}")
        if np.any(np.isnan(y)):
            raise ValueError("LutParams.make: fn returned NaN")
        with np.errstate(over="ignore", invalid="ignore"):
            v = np.floor(y / out_scale + 0.5)
        return cls(np.clip(v, INT8_MIN, INT8_MAX).astype(np.int8))

    @classmethod
    def gelu(cls, in_scale: float, out_scale: float) -> "LutParams":
        """Exact (erf) GELU, torch.nn.GELU's default (golden_model.nn.gelu)."""
        return cls.make(nn.gelu, in_scale, out_scale)

    @classmethod
    def sigmoid(cls, in_scale: float, out_scale: float) -> "LutParams":
        return cls.make(lambda v: 1.0 / (1.0 + np.exp(-v)), in_scale, out_scale)

    @classmethod
    def relu(cls, in_scale: float, out_scale: float) -> "LutParams":
        """ReLU with a change of scale (after a GEMM, prefer the requantiser's relu flag)."""
        return cls.make(lambda v: np.maximum(v, 0.0), in_scale, out_scale)


def lut(x, p: LutParams) -> np.ndarray:
    """y = p.table[x + 128] (the index is x's byte with its sign bit flipped): one 256 x 8 ROM per lane."""
    return intops.apply_table(_int8("lut: x", x, 0), p.table)


def linear_lut(a, b, bias, multiplier, shift, p: LutParams, *, relu: bool = False) -> np.ndarray:
    """A linear layer with a table fused into the GEMM store (the store_lut engine: a 256 x 8 table per
    requantiser lane): intops.gemm's int8 result, then `lut`; bit for bit what the overlay writes."""
    return lut(intops.gemm(a, b, bias, multiplier, shift, relu=relu), p)


def linear_add(a, b, bias, multiplier, shift, residual, p: "AddParams", *, relu: bool = False,
               table: LutParams | None = None) -> np.ndarray:
    """A linear layer with the residual add fused into the GEMM store (the store_add engine):
    `add(y, residual, p)` of intops.gemm's int8 result y (through `table` first, where a store table is
    fused too), so the linear's output is `add`'s a (a_mult) and the residual its b (b_mult); bit for
    bit what the overlay writes, and the unfused pair (linear, then the vector engine's add)."""
    y = intops.gemm(a, b, bias, multiplier, shift, relu=relu)
    return add(y if table is None else lut(y, table), residual, p)


# ------------------------------------------------------------------ add / rescale


def quantize_add_multipliers(ratios: tuple[float, ...]) -> tuple[tuple[int, ...], int]:
    """Multipliers m_i < 2^ADD_MULT_BITS and one shift s in 0..ADD_SHIFT_MAX with m_i / 2^s ~ ratios[i]:
    the largest s for which every round(ratio * 2^s) fits (ratios >= 2^16 cannot be represented)."""
    for r in ratios:
        _positive("scale ratio", r)
    for s in range(ADD_SHIFT_MAX, -1, -1):
        ms = tuple(math.floor(r * (1 << s) + 0.5) for r in ratios)
        if all(m < (1 << ADD_MULT_BITS) for m in ms):
            return ms, s
    raise ValueError(f"scale ratios {ratios} too large for {ADD_MULT_BITS}-bit multipliers")


def _check_add_fields(cls: str, mults: dict[str, int], shift: int) -> dict[str, int]:
    out = {k: _check_range(f"{cls}.{k}", v, 0, (1 << ADD_MULT_BITS) - 1) for k, v in mults.items()}
    out["shift"] = _check_range(f"{cls}.shift", shift, 0, ADD_SHIFT_MAX)
    return out


@dataclass(frozen=True, eq=False)
class AddParams(_IntegerParams):
    """y = sat8((a * a_mult + b * b_mult + rnd(shift)) >> shift), see `add`."""
    a_mult: int
    b_mult: int
    shift: int

    FILE_DTYPES = {"a_mult": np.int32, "b_mult": np.int32, "shift": np.int32}

    def __post_init__(self):
        for k, v in _check_add_fields("AddParams", {"a_mult": self.a_mult, "b_mult": self.b_mult},
                                      self.shift).items():
            object.__setattr__(self, k, v)

    @classmethod
    def make(cls, a_scale: float, b_scale: float, out_scale: float) -> "AddParams":
        """out_scale * y ~ a_scale * a + b_scale * b."""
        out_scale = _positive("out_scale", out_scale)
        (ma, mb), s = quantize_add_multipliers((_positive("a_scale", a_scale) / out_scale,
                                                _positive("b_scale", b_scale) / out_scale))
        return cls(ma, mb, s)


def add(a, b, p: AddParams) -> np.ndarray:
    """Residual add of int8 a and int8 b of other scales: y = sat8((a*ma + b*mb + rnd(s)) >> s).

    |a*ma + b*mb| <= 2 * 128 * (2^16 - 1) < 2^24, plus rnd(s) <= 2^30: int32 throughout.
    Broadcasting: b's shape must broadcast to a's (NumPy rules) and the result has a's shape:
    b of (C,) adds a per-channel vector to every row (no-object embedding), b of (H, W, C) adds a
    position encoding to each image of a (B, H, W, C); the engine re-reads b for each outer index.
    Error against (a_scale a + b_scale b) / out_scale, with ra = a_scale / out_scale, rb likewise:
    <= 0.5 + (|a| |ma - ra 2^s| + |b| |mb - rb 2^s|) / 2^s <= 0.5 + 2^(7 - s) LSB (before saturation)."""
    a = _int8("add: a", a, 0)
    b = _int8("add: b", b, 0)
    try:
        shape = np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        shape = None
    if shape != a.shape:
        raise ValueError(f"add: b of shape {b.shape} does not broadcast to a's shape {a.shape}")
    if a.size == 0:
        return np.empty(a.shape, np.int8)
    # b as a (1, period) operand repeating over the rows of a (rows, period), or a's own shape
    while b.ndim and b.shape[0] == 1:
        b = b[0]
    if b.shape != a.shape[a.ndim - b.ndim:]:
        b = np.ascontiguousarray(np.broadcast_to(b, a.shape))
    period = max(b.size, 1)
    a2, b2 = a.reshape(-1, period), b.reshape(1, period)
    out = np.empty(a2.shape, np.int8)
    if jit.available():                             # one compiled pass, the same numbers
        _add_rows(a2, b2[0], p.a_mult, p.b_mult, p.shift, out)
        return out.reshape(a.shape)
    acc_buf, b_buf = np.empty(BLOCK, np.int32), np.empty(BLOCK, np.int32)
    for rows, cols in _blocks(*a2.shape):
        shape = (rows.stop - rows.start, cols.stop - cols.start)
        acc, bm = acc_buf[:shape[0] * shape[1]].reshape(shape), b_buf[:shape[0] * shape[1]].reshape(shape)
        acc[...] = a2[rows, cols]
        acc *= p.a_mult
        bm[...] = b2[:, cols]
        bm *= p.b_mult
        acc += bm
        out[rows, cols] = _saturate(_shift_round(acc, p.shift), INT8_MIN, INT8_MAX)
    return out.reshape(a.shape)


def _add_rows_loop(a, b, a_mult, b_mult, s, out):
    """`add` element by element: a (rows, period) int8, b (period,) int8 repeating over the rows; int32."""
    rows, period = a.shape
    rnd = (1 << (s - 1)) if s > 0 else 0
    for i in range(rows):
        for j in range(period):
            y = (np.int32(a[i, j]) * a_mult + np.int32(b[j]) * b_mult + rnd) >> s
            out[i, j] = min(max(y, INT8_MIN), INT8_MAX)


_add_rows = jit.kernel(_add_rows_loop)


@dataclass(frozen=True, eq=False)
class RescaleParams(_IntegerParams):
    """y = sat8((x * multiplier + rnd(shift)) >> shift): int8 to int8 at another scale."""
    multiplier: int
    shift: int

    FILE_DTYPES = {"multiplier": np.int32, "shift": np.int32}

    def __post_init__(self):
        for k, v in _check_add_fields("RescaleParams", {"multiplier": self.multiplier}, self.shift).items():
            object.__setattr__(self, k, v)

    @classmethod
    def make(cls, in_scale: float, out_scale: float) -> "RescaleParams":
        (m,), s = quantize_add_multipliers((_positive("in_scale", in_scale) / _positive("out_scale", out_scale),))
        return cls(m, s)


def rescale(x, p: RescaleParams) -> np.ndarray:
    """int8 x to int8 at another scale: the add datapath with b_mult = 0 (|x*m| < 2^23: int32).
    Error: <= 0.5 + |x| |m - r 2^s| / 2^s LSB for the ratio r = in_scale / out_scale."""
    x = _int8("rescale: x", x, 0)
    flat = x.reshape(-1)
    out = np.empty(flat.shape, np.int8)
    acc_buf = np.empty(BLOCK, np.int32)
    for i in range(0, flat.size, BLOCK):
        acc = acc_buf[:min(BLOCK, flat.size - i)]
        acc[...] = flat[i:i + acc.size]
        acc *= p.multiplier
        out[i:i + acc.size] = _saturate(_shift_round(acc, p.shift), INT8_MIN, INT8_MAX)
    return out.reshape(x.shape)


# ------------------------------------------------------------------ RoPE


@dataclass(frozen=True, eq=False)
class RopeParams(_IntegerParams):
    """Fixed-point rotary tables and the output requantiser, see `rope`: cos, sin int16 (L, D/2) with
    ROPE_FRAC_BITS fraction bits; multiplier < 2^31 and shift 0..63 as golden_model.intops.requantize."""
    cos: np.ndarray
    sin: np.ndarray
    multiplier: int
    shift: int

    FILE_DTYPES = {"cos": np.int16, "sin": np.int16, "multiplier": np.int32, "shift": np.int32}

    def __post_init__(self):
        cos = _frozen_array("RopeParams.cos", self.cos, np.int16, ndim=2)
        sin = _frozen_array("RopeParams.sin", self.sin, np.int16, shape=cos.shape)
        if cos.shape[0] < 1 or cos.shape[1] < 1:
            raise ValueError(f"RopeParams: empty tables {cos.shape}")
        one = 1 << ROPE_FRAC_BITS
        for name, t in (("cos", cos), ("sin", sin)):
            if np.any(np.abs(t.astype(np.int32)) > one):
                raise ValueError(f"RopeParams.{name} outside +-2^{ROPE_FRAC_BITS}")
        object.__setattr__(self, "cos", cos)
        object.__setattr__(self, "sin", sin)
        object.__setattr__(self, "multiplier", _check_range("RopeParams.multiplier", self.multiplier, 0,
                                                            (1 << MULT_BITS) - 1))
        object.__setattr__(self, "shift", _check_range("RopeParams.shift", self.shift, 0, (1 << SHIFT_BITS) - 1))

    @property
    def positions(self) -> int:
        return self.cos.shape[0]

    @classmethod
    def make(cls, cos, sin, in_scale: float, out_scale: float) -> "RopeParams":
        """cos, sin: float (L, D/2) as golden_model.memory_attention.axial_rope returns them;
        c = round(cos * 2^14), s = round(sin * 2^14) (half up); (m, s) = quantize_multiplier(
        in_scale / out_scale / 2^14)."""
        cos, sin = np.asarray(cos, np.float64), np.asarray(sin, np.float64)
        if cos.ndim != 2 or sin.shape != cos.shape:
            raise ValueError(f"RopeParams.make: cos {cos.shape} and sin {sin.shape} must be the same (L, D/2)")
        if not (np.all(np.abs(cos) <= 1.0) and np.all(np.abs(sin) <= 1.0)):
            raise ValueError("RopeParams.make: cos and sin must lie in [-1, 1]")
        one = 1 << ROPE_FRAC_BITS
        m, s = quantize_multiplier(_positive("in_scale", in_scale) / _positive("out_scale", out_scale) / one)
        return cls(_round_half_up(cos * one).astype(np.int16), _round_half_up(sin * one).astype(np.int16), m, s)


def rope(x, p: RopeParams) -> np.ndarray:
    """Rotary position encoding of int8 x (..., N, D), D = 2 * p.cos.shape[1], N a multiple of L.

    The official layout (view_as_complex on interleaved pairs, golden_model.memory_attention.apply_rope):
    token t (table row t mod L), pair i = channels (2i, 2i+1):
        acc[2i]   = x[2i] c[i] - x[2i+1] s[i]                 c, s int16 (|c|, |s| <= 2^14)
        acc[2i+1] = x[2i] s[i] + x[2i+1] c[i]                 |acc| <= 2^22 (int24, held in int32)
        y = intops.requantize(acc, m, shift)                   int8; m / 2^shift ~ in_scale / out_scale / 2^14
    rope_k_repeat (cross-attention keys of several memory frames use the q table): N = frames * L and
    row t uses table row t mod L, i.e. the table tiled (the engine's table address wraps at L).
    The keys excluded from RoPE (object pointers) are not passed here: the graph slices them off and
    rescales them to this op's out_scale if it differs from in_scale.
    Error against the float rotation of the dequantised x, in output LSB (before saturation):
      <= 0.5 + (|x[2i]| + |x[2i+1]|) 2^-15 r + |acc| |m 2^-shift - r 2^-14|,  r = in_scale / out_scale."""
    x = _int8("rope: x", x, 2)
    n, d = x.shape[-2:]
    L, half = p.cos.shape
    if d != 2 * half:
        raise ValueError(f"rope: {d} channels for tables of {half} pairs")
    if n % L:
        raise ValueError(f"rope: {n} tokens is not a multiple of the {L}-position table")
    rows = x.reshape(-1, d)
    out = np.empty(rows.shape, np.int8)
    c, s = p.cos.astype(np.int32), p.sin.astype(np.int32)
    m, sh = np.int64(p.multiplier), p.shift
    for sl in _row_blocks(rows.shape[0], d):
        t = np.arange(sl.start, sl.stop) % L
        ct, st = c[t], s[t]
        x0, x1 = rows[sl, 0::2].astype(np.int32), rows[sl, 1::2].astype(np.int32)
        for j, acc in ((0, x0 * ct - x1 * st), (1, x0 * st + x1 * ct)):
            y = acc.astype(np.int64)
            y *= m                                                   # |acc m| < 2^53, + rnd < 2^63
            out[sl, j::2] = _saturate(_shift_round(y, sh), INT8_MIN, INT8_MAX)
    return out.reshape(x.shape)


def rope_axial_tables(p: RopeParams, end_x: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The axial factorisation of p's tables (memory_attention.axial_rope's layout): columns [0, D/4)
    depend only on x = t mod end_x, columns [D/4, D/2) only on y = t // end_x. Returns
    (cos_x, sin_x) of shape (end_x, D/4) and (cos_y, sin_y) of shape (L / end_x, D/4), int16, from
    which row t of the full table is (cos_x[t mod end_x] | cos_y[t // end_x]), exactly: an engine can
    keep these on chip (2 x 2 x 64 x 64 int16 = 32 KiB for 64 x 64 tokens, D = 256) instead of
    streaming the (L, D/2) tables (2 MiB). ValueError if the tables do not factor so."""
    L, half = p.cos.shape
    if end_x < 1 or L % end_x or half % 2:
        raise ValueError(f"rope_axial_tables: a ({L}, {half}) table has no axial split with end_x = {end_x}")
    h = half // 2
    t = np.arange(L)
    out = []
    for full in (p.cos, p.sin):
        tx, ty = full[:end_x, :h], full[::end_x, h:]
        if not (np.array_equal(full[:, :h], tx[t % end_x]) and np.array_equal(full[:, h:], ty[t // end_x])):
            raise ValueError("rope_axial_tables: the tables are not axial (x columns, then y columns)")
        out.append((tx, ty))
    (cx, cy), (sx, sy) = out
    return cx, sx, cy, sy


# ------------------------------------------------------------------ pooling and upsampling


def maxpool2x2(x) -> np.ndarray:
    """2x2 max-pool, stride 2, of int8 (..., H, W, C) channels-last: (..., H // 2, W // 2, C).

    Hiera's q-pooling is nn.MaxPool2d(kernel 2, stride 2, ceil_mode=False): odd H or W drop the
    last row or column (golden_model.nn.max_pool2d_nhwc). Max commutes with a positive scale:
    the output has the input's scale and is exact."""
    x = _int8("maxpool2x2: x", x, 3)
    h, w = x.shape[-3:-1]
    if h < 2 or w < 2:
        raise ValueError(f"maxpool2x2: a {h}x{w} map has no 2x2 window")
    v = x[..., : h - h % 2, : w - w % 2, :]
    return np.maximum(np.maximum(v[..., 0::2, 0::2, :], v[..., 0::2, 1::2, :]),
                      np.maximum(v[..., 1::2, 0::2, :], v[..., 1::2, 1::2, :]))


def upsample_nearest2x(x) -> np.ndarray:
    """Nearest-neighbour 2x upsampling of int8 (..., H, W, C) channels-last: (..., 2H, 2W, C),
    out[2y + i, 2x + j] = x[y, x] (F.interpolate(scale_factor=2, mode="nearest"), the FPN
    neck's top-down path). Exact; scale unchanged."""
    x = _int8("upsample_nearest2x: x", x, 3)
    *lead, h, w, c = x.shape
    up = np.broadcast_to(x[..., :, None, :, None, :], (*lead, h, 2, w, 2, c))
    return up.reshape(*lead, 2 * h, 2 * w, c)
