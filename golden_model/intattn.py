"""Integer attention: tiled online softmax (FlashAttention) in fixed point, bit for bit.

This module is the specification of the attention engine: every width, every
rounding and the order of operations are defined here, and the hardware and the
overlay's sim model are tested against `attention` (never the other way round).
`attention_reference` runs steps 1-5 literally tile by tile; `attention` computes the same bits with
whole-array operations (tests/test_intattn.py holds them equal).

Inputs: q (Lq, d), k (Lk, d), v (Lk, d) int8 with float scales (real = scale * int),
d <= MAX_HEAD_DIM, 1 <= Lk <= MAX_KEYS. The keys are processed in tiles of
`key_tile` keys (the last tile may be short); per query row the state is
(m, l, O): running maximum, running sum, output accumulator. For each tile:

  1. scores     S[j]  = sum_c q[c] * k[j, c]                    exact, |S| <= 2^22 (signed 24 bits)
  2. log2 domain x[j]  = (S[j] * score_mult + 2^(score_shift-1)) >> score_shift
                 score_mult < 2^SCORE_MULT_BITS, 1 <= score_shift <= 63, `>>` flooring (round half up);
                 x is log2(e) * softmax_scale * sq * sk * S in fixed point with FRAC_BITS fraction
                 bits, saturated to int32 (X_BITS)
  3. new max     m'    = max(m, max_j x[j])                     m starts at M_INIT = -2^31
  4. exp2        p[j]  = exp2fix(m' - x[j])                     uint17, in [0, 2^P_BITS]
                 alpha = exp2fix(m' - m)                        (= 2^P_BITS when the max did not grow)
  5. rescale     l     = ((l * alpha + 2^(P_BITS-1)) >> P_BITS) + sum_j p[j]            uint32 (SUM_BITS)
                 O[c]  = ((O[c] * alpha + 2^(P_BITS-1)) >> P_BITS) + sum_j p[j] v[j, c]  int40 (O_BITS)
     with exp2fix(t) for t >= 0 (33-bit difference): n = t >> FRAC_BITS, f = t mod 2^FRAC_BITS,
                 exp2fix(t) = (EXP2_TABLE[f] + 2^(n-1)) >> n  (n >= 1; the table entry itself when n = 0;
                 0 for n > P_BITS + 1),  EXP2_TABLE[f] = round(2^P_BITS * 2^(-f / 2^FRAC_BITS)).
     When alpha = 2^P_BITS the rescale is exact (l and O unchanged), so rounding happens only
     when the running maximum grows.
After the last tile:
  6. reciprocal  e = bit_length(l) (l >= 2^P_BITS after one key, so 17 <= e <= 32),
                 r = 2^(e + RECIP_BITS - 1) // l                in [2^16, 2^17] (18 bits unsigned; exact for powers of two)
  7. normalise   t[c]  = (O[c] * r + 2^(sh-1)) >> sh,  sh = e + RECIP_BITS - 1 - NORM_FRAC_BITS
                 t = O / l in fixed point with NORM_FRAC_BITS fraction bits, saturated to int32
  8. output      y[c]  = intops.requantize(t[c], out_mult, out_shift)   int8 (the GEMM requantiser)

Why these widths: int8 probabilities lose the bulk of a diffuse softmax over long key
sequences (a score 4 below the max of 32k keys is 2.3 % of it, 3 int8 steps); 16-bit
probabilities keep it to 2^-16 of the maximum. Measured on logits of std 3 over 32k keys, d 96
(relative L2 of O / l against float): P_BITS 15 -> 0.63 %, 16 -> 0.36 %, 17 -> 0.21 %;
FRAC_BITS 8 -> 10 changes < 0.03 %. p <= 2^16 is 17 bits unsigned, the widest a DSP48's
18-bit signed port multiplies by int8 V in one slice. l <= MAX_KEYS * 2^16 = 2^31 fits
uint32, |O| <= 2^31 * 128 = 2^38 fits int40. The table has 2^FRAC_BITS = 256 entries of
17 bits (one ROM); the reciprocal is one 17-bit division per query row (a
sequential divider in hardware, Lk-independent), the rest multiplies that map onto DSPs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from golden_model import jit, workers
from golden_model.intops import INT8_MAX, quantize_multiplier, requantize

FRAC_BITS = 8             # fraction bits of the log2-domain scores (the exp2 table's index width)
P_BITS = 16               # probabilities p in [0, 2^16] (17-bit unsigned: a DSP's 18-bit signed port)
SCORE_MULT_BITS = 16      # score multiplier: one 24 x 16 bit product (a DSP)
X_BITS = 32               # log2-domain scores and the running maximum: int32 (saturated)
SUM_BITS = 32             # running sum l: uint32
O_BITS = 40               # output accumulators: int40
RECIP_BITS = 17           # reciprocal of l: mantissa in [2^16, 2^17] (18 bits unsigned)
NORM_FRAC_BITS = 16       # fraction bits of O / l before the output requantiser
MAX_HEAD_DIM = 256
SCORE_BITS = (128 * 128 * MAX_HEAD_DIM).bit_length() + 1   # S = q k^T: |S| <= 2^22, signed 24 bits
MAX_KEYS = 1 << 15        # l <= MAX_KEYS * 2^P_BITS = 2^31 fits SUM_BITS
M_INIT = -(1 << (X_BITS - 1))

EXP2_TABLE = np.array([round((1 << P_BITS) * 2.0 ** (-f / (1 << FRAC_BITS))) for f in range(1 << FRAC_BITS)],
                      dtype=np.int64)


@dataclass(frozen=True)
class AttentionQuant:
    """The integer parameters of one attention call (see the module docstring, steps 2 and 8)."""
    score_mult: int
    score_shift: int
    out_mult: int
    out_shift: int

    def __post_init__(self):
        if not 0 <= self.score_mult < (1 << SCORE_MULT_BITS):
            raise ValueError(f"score_mult={self.score_mult} outside [0, 2^{SCORE_MULT_BITS})")
        if not 1 <= self.score_shift <= 63:
            raise ValueError(f"score_shift={self.score_shift} outside 1..63")
        # out_mult / out_shift are checked by intops.requantize.

    @classmethod
    def from_scales(cls, q_scale: float, k_scale: float, v_scale: float, out_scale: float, head_dim: int,
                    softmax_scale: float | None = None) -> "AttentionQuant":
        """Parameters for softmax(softmax_scale * (sq q)(sk k)^T) (sv v) / out_scale (default 1/sqrt(d))."""
        if softmax_scale is None:
            softmax_scale = 1.0 / math.sqrt(head_dim)
        score_mult, score_shift = quantize_small_multiplier(
            q_scale * k_scale * softmax_scale * math.log2(math.e) * (1 << FRAC_BITS))
        out_mult, out_shift = quantize_multiplier(v_scale / out_scale / (1 << NORM_FRAC_BITS))
        return cls(score_mult, score_shift, out_mult, out_shift)


def quantize_small_multiplier(scale: float) -> tuple[int, int]:
    """(m, s) with m / 2^s closest to `scale`, m < 2^SCORE_MULT_BITS, 1 <= s <= 63."""
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"score scale must be positive and finite, got {scale}")
    for s in range(63, 0, -1):
        m = round(scale * (1 << s))
        if 0 < m < (1 << SCORE_MULT_BITS):
            return m, s
    raise ValueError(f"score scale {scale} cannot be represented with a {SCORE_MULT_BITS}-bit multiplier")


def exp2fix_formula(t) -> np.ndarray:
    """Step 4's exp2fix exactly as specified (module docstring), t >= 0."""
    t = np.asarray(t, dtype=np.int64)
    n = np.minimum(t >> FRAC_BITS, P_BITS + 2)
    f = t & ((1 << FRAC_BITS) - 1)
    base = EXP2_TABLE[f]
    half = np.where(n > 0, np.left_shift(np.int64(1), np.maximum(n - 1, 0)), 0)
    return (base + half) >> n


#: From here on exp2fix is 0 (n >= P_BITS + 2: (base + 2^(n-1)) >> n with base <= 2^P_BITS rounds to 0),
#: so every value is one lookup in a table built from the formula (speed only: same numbers).
EXP2_ZERO_FROM = (P_BITS + 2) << FRAC_BITS
_EXP2_ALL = exp2fix_formula(np.arange(EXP2_ZERO_FROM + 1))


def exp2fix(t) -> np.ndarray:
    """2^P_BITS * 2^(-t / 2^FRAC_BITS), t >= 0 integers, as values in [0, 2^P_BITS] (step 4)."""
    t = np.asarray(t, dtype=np.int64)
    if t.size and t.min() < 0:
        raise ValueError("exp2fix: negative argument")
    return _EXP2_ALL[np.minimum(t, EXP2_ZERO_FROM)]


def scores_log2(s, score_mult: int, score_shift: int) -> np.ndarray:
    """Step 2: int32 scores -> saturated int32 log2-domain fixed point."""
    s = np.asarray(s, dtype=np.int64)
    x = (s * score_mult + (1 << (score_shift - 1))) >> score_shift
    return np.clip(x, M_INIT, -M_INIT - 1)


def rescale(acc, alpha) -> np.ndarray:
    """Step 5's rescale of l or O by alpha / 2^P_BITS (round half up)."""
    return (np.asarray(acc, np.int64) * alpha + (1 << (P_BITS - 1))) >> P_BITS


def reciprocal(l) -> tuple[np.ndarray, np.ndarray]:
    """Step 6: (r, e) with r = 2^(e+RECIP_BITS-1) // l, e = bit_length(l), l >= 1."""
    l = np.asarray(l, dtype=np.int64)
    if np.any(l < 1) or np.any(l >= (1 << SUM_BITS)):
        raise ValueError("reciprocal: l outside [1, 2^32)")
    e = np.floor(np.log2(l)).astype(np.int64) + 1
    # float log2 is exact enough for l < 2^53 except at powers of two, fixed here:
    e = np.where((1 << e) <= l, e + 1, e)
    e = np.where((1 << (e - 1)) > l, e - 1, e)
    r = np.left_shift(np.int64(1), e + RECIP_BITS - 1) // l
    return r, e


def normalise(o, l) -> np.ndarray:
    """Step 7: O / l with NORM_FRAC_BITS fraction bits, int32 (saturated)."""
    r, e = reciprocal(l)
    sh = (e + RECIP_BITS - 1 - NORM_FRAC_BITS)[..., None]
    t = (np.asarray(o, np.int64) * r[..., None] + np.left_shift(np.int64(1), sh - 1)) >> sh
    return np.clip(t, -(1 << 31), (1 << 31) - 1)


def check_inputs(q, k, v):
    q, k, v = (np.asarray(x) for x in (q, k, v))
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dtype != np.int8:
            raise ValueError(f"attention: {name} must be int8, got {x.dtype}")
        if x.ndim < 2 or x.ndim != q.ndim:
            raise ValueError(f"attention: {name} must be (..., tokens, head dim) like q, got shape {x.shape}")
    lq, d = q.shape[-2:]
    if (k.shape[:-2] != q.shape[:-2] or v.shape[:-2] != q.shape[:-2] or k.shape[-1] != d or v.shape[-1] != d
            or k.shape[-2] != v.shape[-2]):
        raise ValueError(f"attention: shapes q {q.shape}, k {k.shape}, v {v.shape} do not match")
    if not 1 <= d <= MAX_HEAD_DIM:
        raise ValueError(f"attention: head dim {d} outside 1..{MAX_HEAD_DIM}")
    if not 1 <= k.shape[-2] <= MAX_KEYS:
        raise ValueError(f"attention: {k.shape[-2]} keys outside 1..{MAX_KEYS}")
    if lq < 1:
        raise ValueError("attention: no queries")
    return q, k, v


def attention_state_reference(q, k, v, quant: AttentionQuant, key_tile: int):
    """Steps 1-5 tile by tile, as the hardware runs them: the final (m, l, O) per query row (int64 arrays).
    Leading axes (..., L, d) are independent attentions (heads, windows), computed together."""
    q, k, v = check_inputs(q, k, v)
    if key_tile < 1:
        raise ValueError("attention: key_tile must be positive")
    lead, (lq, d) = q.shape[:-2], q.shape[-2:]
    m = np.full(lead + (lq,), M_INIT, np.int64)
    l = np.zeros(lead + (lq,), np.int64)
    o = np.zeros(lead + (lq, d), np.float64)   # integers held exactly (|O| < 2^40 < 2^53): BLAS adds into it
    qf = q.astype(np.float32)
    for j0 in range(0, k.shape[-2], key_tile):
        kt = k[..., j0:j0 + key_tile, :].astype(np.float32)
        vt = v[..., j0:j0 + key_tile, :].astype(np.float64)
        s = (qf @ np.swapaxes(kt, -1, -2)).astype(np.int64)    # exact in float32: every partial sum <= 2^22
        x = scores_log2(s, quant.score_mult, quant.score_shift)
        m_new = np.maximum(m, x.max(axis=-1))
        p = exp2fix(m_new[..., None] - x)
        alpha = exp2fix(m_new - m)
        l = rescale(l, alpha) + p.sum(axis=-1)
        grew = alpha != (1 << P_BITS)      # rescaling by alpha = 2^P_BITS is the identity: skip those rows
        if j0 and grew.any():              # (before the first tile O is 0: nothing to rescale)
            o[grew] = rescale(o[grew].astype(np.int64), alpha[grew][:, None])
        o += p.astype(np.float64) @ vt     # exact: every partial sum < 2^53
        m = m_new
        # Cannot fail for int8 inputs within MAX_KEYS (see the widths above): a guard for the spec.
        assert l.max() < (1 << SUM_BITS) and np.abs(o).max() < (1 << (O_BITS - 1))
    return m, l, o.astype(np.int64)


#: Score elements (query rows x padded keys) per block of the fast path: bounds its temporaries (~8 bytes
#: each); 2^20 measured faster than 2^19, 2^21 and 2^22 on the tiny encoder (cache-sized blocks).
FAST_BLOCK = 1 << 20
#: Keys a block takes at a time (rounded down to whole key tiles): a block's rows are FAST_BLOCK / KEY_CHUNK
#: at least, however long the keys (more rows a GEMM: BLAS is faster, k and v read fewer times). 2,048 and
#: 1,024 within 1 %, 4,096 3 % slower on `python -m benchmarks intattn_state`'s long-key shapes (1 thread).
KEY_CHUNK = 2048


def attention_state(q, k, v, quant: AttentionQuant, key_tile: int):
    """`attention_state_reference` (the spec) with the same numbers, computed with whole-array ops.

    The running maxima after every tile are a cumulative maximum of the tile maxima, so steps 1-4 run
    on all scores of a block of query rows and a chunk of keys at once (FAST_BLOCK scores; KEY_CHUNK keys a
    chunk, the maximum and O carried to the next). Step 5 rescales only
    where the maximum grew (alpha = 2^P_BITS is the identity), so between two growths O just sums
    P_t V_t: a row whose maximum does not grow inside a run of SUPER_TILE tiles takes them in one GEMM,
    the others go tile by tile. l is O's column for v = 1 (the same rescale), so it rides in the GEMM.
    Exactness of the float arithmetic (every value below is an integer held exactly):
      scores  float32: |every partial sum| <= MAX_HEAD_DIM * 128 * 128 = 2^22 < 2^24.
      step 2  float64: a = S * score_mult, |a| < 2^22 * 2^16 = 2^38; a * 2^-score_shift + 1/2 is exact for
              score_shift <= 39 (the integer a + 2^(score_shift-1) < 2^39 < 2^53), and for score_shift >= 40
              |a * 2^-score_shift| < 1/4, so the sum rounds into [1/4, 3/4]: floor 0, as the spec's x = 0.
      P V     float64: |sum| <= MAX_KEYS * 2^P_BITS * 128 = 2^38 < 2^53 (any key tile, any prefix).
      m - x   float64: 0 <= difference < 2^35 (padding included), an exact integer index.
    """
    q, k, v = check_inputs(q, k, v)
    if key_tile < 1:
        raise ValueError("attention: key_tile must be positive")
    lead, (lq, d), lk = q.shape[:-2], q.shape[-2:], k.shape[-2]
    key_tile = min(key_tile, lk)                  # (one tile either way: no padding keys to compute)
    nt = -(-lk // key_tile)
    q = q.reshape(-1, lq, d)
    # Keys and values padded to whole tiles: k^T (batch, d, keys) for one score GEMM, v (batch, keys, d).
    kt = np.zeros((q.shape[0], d, nt * key_tile), np.float32)
    kt[..., :lk] = np.swapaxes(k.reshape(-1, lk, d), -1, -2)
    # v gets a column of ones: l follows O's recurrence with v = 1, so l is O's last column.
    vt = np.zeros((q.shape[0], nt * key_tile, d + 1), np.float64)
    vt[:, :lk, :d] = v.reshape(-1, lk, d)
    vt[:, :lk, d] = 1
    m = np.empty((q.shape[0], lq), np.int64)
    l = np.empty((q.shape[0], lq), np.int64)
    o = np.empty((q.shape[0], lq, d), np.int64)

    chunk = max(1, KEY_CHUNK // key_tile)         # tiles a chunk of keys

    def block(sl):                                # (blocks write disjoint parts of m, l, o)
        m[sl], l[sl], o[sl] = _state_block(q[sl].astype(np.float32), kt[sl[0]], vt[sl[0]], quant, lk, key_tile,
                                           chunk)
    workers.map(block, state_blocks(q.shape[0], lq, nt * key_tile, min(nt, chunk) * key_tile))
    # Cannot fail for int8 inputs within MAX_KEYS (see the widths above): a guard for the spec.
    assert l.max() < (1 << SUM_BITS) and np.abs(o).max() < (1 << (O_BITS - 1))
    return m.reshape(lead + (lq,)), l.reshape(lead + (lq,)), o.reshape(lead + (lq, d))


#: Score elements of an attention_state call from which its blocks go to the worker threads
#: (golden_model.workers): one thread's time / two threads' on 2 idle cores 0.93-1.03 at 2^16-2^17 (16 x 64 x
#: 64, 1 x 256 x 256, 1 x 128 x 1024), 1.24-1.54 at 2^18, 1.61-1.68 from 2^23 (1 x 4096 x 4096: 0.269 ->
#: 0.162 s). Scores: attentions x query rows x padded keys.
PARALLEL_MIN = 1 << 18


def state_blocks(batch: int, lq: int, keys: int, chunk: int | None = None) -> list[tuple[slice, slice]]:
    """attention_state's (attention, query row) blocks of at most FAST_BLOCK scores at a time (`keys` padded keys
    a row, taken `chunk` at a time: all at once by default), of even sizes. With several worker threads
    (golden_model.workers) and at least PARALLEL_MIN scores the blocks are smaller, at least one a thread, and
    a multiple of the threads when they split rows; blocks of whole attentions are then FAST_BLOCK / threads at
    most (the threads' blocks together in the cache one took: 1,024 windows of 64 x 64 scores on 2 threads
    0.227 s in blocks of 2^20, 0.093 s in 2^19; one 4,096 x 4,096 attention 0.128 s in blocks of 2^20 rows,
    0.161 s in 2^19)."""
    threads = workers.parallel() if batch * lq * keys >= PARALLEL_MIN else 1
    keys = keys if chunk is None else min(keys, chunk)
    limit = FAST_BLOCK if lq * keys >= FAST_BLOCK else FAST_BLOCK // threads
    blocks = -(-batch * lq * keys // limit)
    blocks = -(-max(blocks, threads) // threads) * threads
    cap = -(-batch * lq * keys // blocks)             # <= limit
    rows = max(1, min(lq, cap // keys))
    per = max(1, cap // (rows * keys))
    batch_blocks = -(-batch // per)
    row_blocks = -(-lq // rows)
    if batch_blocks == 1:                             # one group of attentions: its rows shared out evenly
        row_blocks = min(lq, -(-row_blocks // threads) * threads)
    rows, per = -(-lq // row_blocks), -(-batch // batch_blocks)   # (even sizes: never larger)
    return [(slice(b0, b0 + per), slice(r0, r0 + rows)) for b0 in range(0, batch, per) for r0 in range(0, lq, rows)]


_EXP2_ALL_F64 = _EXP2_ALL.astype(np.float64)
#: Scores of the padding keys: below every real x (>= M_INIT) by more than EXP2_ZERO_FROM, so p = 0.
PAD_SCORE = float(M_INIT - (1 << 33))


def _state_block(qf, kt, vt, quant: AttentionQuant, lk: int, tile: int, chunk: int):
    """attention_state for one block: qf (b, r, d) float32, kt (b, d, keys) float32, vt (b, keys, d + 1)
    float64 (v and a column of ones), keys padded to whole tiles (lk real ones), taken `chunk` tiles at a
    time (the running maximum and O carried from one chunk to the next, as from tile to tile)."""
    b, r = qf.shape[:2]
    nt = vt.shape[1] // tile
    m = np.full((b, r, 1), M_INIT, np.int64)                            # running maximum before the chunk
    o = np.zeros((b, r, vt.shape[-1]), np.float64)                       # integers held exactly (< 2^53)
    for c0 in range(0, nt, chunk):
        c1 = min(c0 + chunk, nt)
        k0, k1 = c0 * tile, c1 * tile
        s = qf @ kt[:, :, k0:k1]                                         # step 1 (b, r, keys)
        if jit.available():                                              # steps 2-4 in one compiled pass
            p = np.empty(s.shape, np.float64)
            ms = np.empty((b, r, c1 - c0 + 1), np.int64)
            _probabilities(s.reshape(b * r, -1), quant.score_mult, quant.score_shift, m.reshape(-1), lk - k0, tile,
                           _EXP2_ALL, p.reshape(b * r, -1), ms.reshape(b * r, -1))
            p = p.reshape(b, r, c1 - c0, tile)
        else:
            p, ms = _probabilities_numpy(s, quant, qf.shape[-1], m, lk - k0, tile)
        alpha = exp2fix(np.diff(ms.astype(np.int64), axis=-1))
        grew = alpha != (1 << P_BITS)     # rescaling by alpha = 2^P_BITS is the identity: skip those rows
        if c0 == 0:
            grew[..., 0] = False          # (before tile 0, O = 0)
        if c1 - c0 <= SUPER_TILE:                                        # step 5, all attentions at once
            for t in range(c1 - c0):
                if grew[..., t].any():
                    bi, ri = np.nonzero(grew[..., t])
                    o[bi, ri] = rescale(o[bi, ri].astype(np.int64), alpha[bi, ri, t][:, None])
                o += p[:, :, t] @ vt[:, k0 + t * tile:k0 + (t + 1) * tile]
        else:                                                            # step 5, SUPER_TILE tiles a GEMM
            for bb in range(b):
                for a in range(0, c1 - c0, SUPER_TILE):
                    _accumulate_o(o[bb], p[bb], vt[bb, k0:k1], alpha[bb], grew[bb], a, min(a + SUPER_TILE, c1 - c0),
                                  tile)
        m = ms[..., -1:]
    o = o.astype(np.int64)
    return m[..., 0].astype(np.int64), o[..., -1], o[..., :-1]


def _probabilities_numpy(s, quant: AttentionQuant, d: int, m, valid: int, tile: int):
    """Steps 2-4 of a chunk of scores s (b, r, keys) float32 of head dim d (`valid` real keys, then padding), the
    running maximum m (b, r, 1) before it: p (b, r, tiles, tile) float64 and the maxima (b, r, tiles + 1), m
    first. Whole-array NumPy, exact (see attention_state)."""
    b, r, keys = s.shape
    clip = d * 128 * 128 * quant.score_mult >= 1 << (quant.score_shift + X_BITS - 2)
    x = np.multiply(s, quant.score_mult * 2.0 ** -quant.score_shift, dtype=np.float64)   # step 2,
    x += 0.5                                                         # exact: see attention_state
    np.floor(x, out=x)
    if clip:
        np.clip(x, M_INIT, -M_INIT - 1, out=x)                       # (else |x| < 2^30: nothing to clip)
    if keys > valid:
        x[..., valid:] = PAD_SCORE                                   # padding: never the max, p = 0
    x = x.reshape(b, r, keys // tile, tile)
    ms = np.maximum.accumulate(np.concatenate([m, x.max(axis=-1)], axis=-1), axis=-1)  # step 3: m, then
    np.subtract(ms[..., 1:, None], x, out=x)                         # after each tile; step 4: m' - x,
    return np.take(_EXP2_ALL_F64, x.astype(np.intp), mode="clip", out=x), ms   # exp2fix (t >= ZERO_FROM: 0)


def _probabilities_loop(s, score_mult, score_shift, m, valid, tile, table, p, ms):
    """Steps 2-4 as `_probabilities_numpy`, one row at a time in integers (the spec's arithmetic), for Numba:
    s (rows, keys) float32 holding exact integer scores, m (rows,) int64; writes p (rows, keys) float64 and
    ms (rows, tiles + 1) int64. Padding keys (from `valid` on) are never the maximum and get p = 0."""
    rows, keys = s.shape
    half = np.int64(1) << (score_shift - 1)
    x = np.empty(tile, np.int64)
    for i in range(rows):
        mi = m[i]
        ms[i, 0] = mi
        for t in range(keys // tile):
            j0 = t * tile
            n = min(tile, valid - j0)
            for j in range(n):                                       # step 2, and the tile's maximum
                xj = (np.int64(s[i, j0 + j]) * score_mult + half) >> score_shift
                xj = min(max(xj, M_INIT), -M_INIT - 1)
                x[j] = xj
                if xj > mi:
                    mi = xj
            ms[i, t + 1] = mi                                        # step 3
            for j in range(n):                                       # step 4: exp2fix(m' - x)
                p[i, j0 + j] = table[min(mi - x[j], EXP2_ZERO_FROM)]
            for j in range(max(n, 0), tile):
                p[i, j0 + j] = 0.0


_probabilities = jit.kernel(_probabilities_loop)


#: Key tiles per GEMM of the fast path's O update.
SUPER_TILE = 8


def _accumulate_o(o, p, v, alpha, grew, a: int, e: int, tile: int):
    """Step 5 for O over tiles a..e-1 of one attention, in place: o (r, d), p (r, tiles, tile), v (keys, d).
    Rows whose maximum does not grow inside (a, e) take all e - a tiles in one product (no rounding
    happens between them); the others go tile by tile, as the spec."""
    g = grew[:, a]
    if g.any():
        o[g] = rescale(o[g].astype(np.int64), alpha[g, a][:, None])
    inner = grew[:, a + 1:e].any(axis=-1)
    ri = np.flatnonzero(inner)
    if 4 * ri.size <= len(o):             # few others: all rows' product, added in place where it counts
        np.add(o, p[:, a:e].reshape(len(p), -1) @ v[a * tile:e * tile], out=o, where=~inner[:, None])
    elif ri.size < len(o):                # many: the product of the rows that take it only
        rest = np.flatnonzero(~inner)
        o[rest] += p[rest, a:e].reshape(len(rest), -1) @ v[a * tile:e * tile]
    if ri.size:                           # one product a tile (a batch of e - a), the rescales between them
        y = np.matmul(p[ri, a:e].transpose(1, 0, 2), v[a * tile:e * tile].reshape(e - a, tile, -1))
        oi = o[ri]
        for t in range(a, e):
            if t > a:
                g = grew[ri, t]
                if g.any():
                    oi[g] = rescale(oi[g].astype(np.int64), alpha[ri[g], t][:, None])
            oi += y[t - a]
        o[ri] = oi


def attention(q, k, v, quant: AttentionQuant, key_tile: int = 64, *, out_int32: bool = False) -> np.ndarray:
    """The attention engine's result, (..., Lq, d): int8 (step 8), or with out_int32 the int32 t of
    step 7 (O / l with NORM_FRAC_BITS fraction bits, the requantiser bypassed).
    Heads and windows: one engine call per (head, window), here leading axes; `key_tile` is the
    engine's key tile."""
    return _finish(attention_state(q, k, v, quant, key_tile), quant, out_int32)


def attention_reference(q, k, v, quant: AttentionQuant, key_tile: int = 64, *, out_int32: bool = False) -> np.ndarray:
    """`attention` computed tile by tile (attention_state_reference): the spec the fast path is tested against."""
    return _finish(attention_state_reference(q, k, v, quant, key_tile), quant, out_int32)


def _finish(state, quant: AttentionQuant, out_int32: bool) -> np.ndarray:
    """Steps 6-8 on the final (m, l, O)."""
    _, l, o = state
    t = normalise(o, l)
    return t.astype(np.int32) if out_int32 else requantize(t, quant.out_mult, quant.out_shift)


def attention_float(q, k, v, q_scale: float, k_scale: float, v_scale: float,
                    softmax_scale: float | None = None) -> np.ndarray:
    """Float64 softmax attention on the same int8 inputs (the accuracy reference), real units."""
    q, k, v = check_inputs(q, k, v)
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(q.shape[-1])
    s = (q.astype(np.float64) * q_scale) @ np.swapaxes(k.astype(np.float64) * k_scale, -1, -2) * softmax_scale
    s -= s.max(axis=-1, keepdims=True)
    p = np.exp(s)
    p /= p.sum(axis=-1, keepdims=True)
    return p @ (v.astype(np.float64) * v_scale)


def output_scale_for(reference: np.ndarray) -> float:
    """An int8 output scale covering `reference` (calibration, as for any quantised layer)."""
    peak = float(np.max(np.abs(reference)))
    return peak / INT8_MAX if peak > 0 else 1.0
