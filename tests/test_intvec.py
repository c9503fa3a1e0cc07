"""Integer element-wise ops (golden_model.intvec): the spec read independently, accuracy against
the float ops of golden_model.nn with error bounds derived from the scales, edge cases, file round trips."""
import math

import numpy as np
import pytest

from golden_model import intvec as V
from golden_model import nn
from golden_model.checkpoint import load_safetensors, save_safetensors
from golden_model.intops import requantize

P = V.LN_FRAC_BITS


def quantise(x, scale):
    return np.clip(np.floor(np.asarray(x, np.float64) / scale + 0.5), -128, 127).astype(np.int8)


def lsb(y, scale):
    """Float reference in output LSB, saturated like the int8 output."""
    return np.clip(np.asarray(y, np.float64) / scale, -128, 127)


# ------------------------------------------------------------------ LayerNorm: the spec with Python ints


def rsqrt_ref(v):
    """rsqrt_fixed read from its docstring with Python ints; the table entry via isqrt:
    round(2^20 / sqrt(m)) = (floor(2^21 / sqrt(m)) + 1) // 2 = (isqrt(2^42 // m) + 1) // 2."""
    e = v.bit_length()
    k = -((V.RSQRT_MANT_BITS - e) // 2)          # ceil((e - 12) / 2)
    m = (v + (1 << (2 * k - 1))) >> (2 * k) if k > 0 else v << (-2 * k)
    assert 1 << 10 <= m <= 1 << 12
    return (math.isqrt((1 << 42) // m) + 1) // 2, k


def layernorm_ref(x, p):
    """Steps 1-5 of layernorm's docstring, one row at a time, with unbounded Python ints."""
    out = []
    for row in x.reshape(-1, x.shape[-1]).tolist():
        d = len(row)
        s, q = sum(row), sum(v * v for v in row)
        t, k = rsqrt_ref(max(d * q - s * s + p.eps_term, 1))
        sh = 10 + k
        ys = []
        for j, v in enumerate(row):
            n = ((d * v - s) * t + (1 << (sh - 1))) >> sh
            assert -(1 << 15) <= n < 1 << 15                  # int16 without saturation
            y = (n * int(p.gain[j]) + int(p.bias[j]) + (1 << (p.shift - 1))) >> p.shift
            ys.append(max(-128, min(127, y)))
        out.append(ys)
    return np.array(out, np.int8).reshape(x.shape)


def test_rsqrt_table_is_the_nearest_integer():
    """T[m] = round(2^20 / sqrt(m)): (2T - 1)^2 m <= 2^42 < (2T + 1)^2 m for every entry."""
    for i, t in enumerate(V.RSQRT_TABLE.tolist()):
        m = i + V.RSQRT_MIN
        assert (2 * t - 1) ** 2 * m <= 1 << 42 < (2 * t + 1) ** 2 * m, m
    assert V.RSQRT_TABLE.min() >= 1 << 14 and V.RSQRT_TABLE.max() <= 1 << 15


def test_rsqrt_fixed_matches_python_ints_and_precision():
    rng = np.random.default_rng(1)
    vs = np.concatenate([np.arange(1, 5000), rng.integers(1, 1 << 41, 5000), 4 ** np.arange(21),
                         4 ** np.arange(1, 21) - 1, [(1 << 41) - 1]]).astype(np.int64)
    t, k = V.rsqrt_fixed(vs)
    for v, ti, ki in zip(vs.tolist(), t.tolist(), k.tolist()):
        assert (ti, ki) == rsqrt_ref(v), v
    rel = np.abs(t / 2.0 ** (20 + k) * np.sqrt(vs.astype(np.float64)) - 1)
    assert rel.max() <= 2 ** -12 + 2 ** -15


def test_layernorm_hand_derived(jit_mode):
    """Row [1, -1], gamma 1, beta 0, eps 0, in_scale 1, out_scale 1/64, by hand:
    S = 0, Q = 2, var = 2 * 2 - 0 = 4; V = 4: e = 3, k = ceil(-9 / 2) = -4, m = 4 << 8 = 1024,
    T = 2^20 / 32 = 2^15, sh = 6; c = 2 q = +-2, n = (+-2^16 + 32) >> 6 = +-1024 (1.0 in Q10).
    G = 64: g = 64 * 2^(s - 10) < 2^15 -> s = 18, g = 2^14, b = 0; y = (2^24 + 2^17) >> 18 = 64."""
    p = V.LayerNormParams.make([1.0, 1.0], [0.0, 0.0], 1.0, 1 / 64, 0.0)
    assert (p.shift, p.gain.tolist(), p.bias.tolist(), p.eps_term) == (18, [16384, 16384], [0, 0], 0)
    x = np.array([[1, -1]], np.int8)
    assert V.layernorm_normalised(x).tolist() == [[1024, -1024]]
    assert V.layernorm(x, p).tolist() == [[64, -64]]
    # -1 - 1 = -2 half-way cases: beta = -0.5 LSB exactly rounds up (towards +inf)
    p = V.LayerNormParams.make([0.0, 0.0], [-0.5 / 64, 0.5 / 64], 1.0, 1 / 64, 0.0)
    assert V.layernorm(x, p).tolist() == [[0, 1]]


def layernorm_float(x, gamma, beta, eps):
    """golden_model.nn.layer_norm in float64 on the dequantised input, and the normalised value."""
    x = np.asarray(x, np.float64)
    y = nn.layer_norm(x.copy(), np.asarray(gamma, np.float64), np.asarray(beta, np.float64), eps)
    n = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + eps)
    return y, n


def layernorm_bound(p, gamma, out_scale, n, var_int):
    """The docstring's bound, element by element (output LSB)."""
    g = np.abs(np.asarray(gamma, np.float64) / out_scale)
    an = np.abs(n)
    vv = np.maximum(var_int + p.eps_term, 1)[..., None]
    return (0.5 + g * (an * (2 ** -12 + 2 ** -15 + 0.25 / vv) + 2 ** -11)
            + (an + 1) * 2.0 ** (P - p.shift - 1) + 1e-9)


def int_var(q):
    q = q.astype(np.int64)
    d = q.shape[-1]
    return d * (q * q).sum(-1) - q.sum(-1) ** 2


@pytest.mark.parametrize("d,eps", [(1, 1e-6), (3, 1e-5), (96, 1e-6), (256, 1e-5), (1024, 1e-6)])
def test_layernorm_against_float(d, eps, jit_mode):
    rng = np.random.default_rng(d)
    rows = 300 if d < 1024 else 40
    xf = rng.normal(0.5, 1.0, (rows, d)) * rng.uniform(0.05, 2, (rows, 1))
    xf[:, :: 7] *= 4                                                    # outlier channels
    sx = float(np.abs(xf).max() / 127)
    q = quantise(xf, sx)
    gamma = rng.normal(1, 0.5, d) * np.where(rng.random(d) < 0.1, -1, 1)
    beta = rng.normal(0, 0.3, d)
    y_f, n = layernorm_float(q * sx, gamma, beta, eps)
    sy = float(np.abs(y_f).max() / 127)
    p = V.LayerNormParams.make(gamma, beta, sx, sy, eps)
    y = V.layernorm(q, p)
    err = np.abs(y - lsb(y_f, sy))
    bound = layernorm_bound(p, gamma, sy, n, int_var(q))
    assert np.all(err <= bound), float((err - bound).max())
    if d >= 96:
        assert err.max() <= 0.52                                 # the bound in numbers for these scales
    sl = slice(0, 3)
    assert np.array_equal(y[sl], layernorm_ref(q[sl], p))


def test_layernorm_from_float_input_propagated_error():
    """Quantising a float input adds at most |G| s_x / sigma (1 + |n| / 2) (first order) to the bound."""
    rng = np.random.default_rng(7)
    d = 192
    xf = rng.normal(0, 1.0, (200, d))
    sx = float(np.abs(xf).max() / 127)
    gamma, beta = rng.normal(1, 0.2, d), rng.normal(0, 0.2, d)
    y_f, n = layernorm_float(xf, gamma, beta, 1e-6)
    sy = float(np.abs(y_f).max() / 127)
    q = quantise(xf, sx)
    p = V.LayerNormParams.make(gamma, beta, sx, sy, 1e-6)
    err = np.abs(V.layernorm(q, p) - lsb(y_f, sy))
    sigma = xf.std(-1, keepdims=True)
    prop = np.abs(gamma / sy) * sx / sigma * (1 + np.abs(n) / 2) * 1.05
    assert np.all(err <= layernorm_bound(p, gamma, sy, n, int_var(q)) + prop)


@pytest.mark.parametrize("d", [1, 2, 96, 1024])
def test_layernorm_constant_rows_give_beta(d, jit_mode):
    rng = np.random.default_rng(d)
    gamma, beta = rng.normal(1, 1, d), rng.normal(0, 1, d)
    sy = 2.0 / 127
    for eps in (0.0, 1e-6):
        p = V.LayerNormParams.make(gamma, beta, 0.02, sy, eps)
        x = np.repeat(np.array([-128, -1, 0, 5, 127], np.int8)[:, None], d, axis=1)
        y = V.layernorm(x, p)
        want = np.clip((p.bias.astype(np.int64) + (1 << (p.shift - 1))) >> p.shift, -128, 127)
        assert np.array_equal(y, np.broadcast_to(want, y.shape))
        assert np.abs(y - lsb(beta, sy)).max() <= 0.5 + 2.0 ** -p.shift
        assert not V.layernorm_normalised(x).any()


def test_layernorm_int8_extremes(jit_mode):
    """One -128 among 1,023 x 127: |n| = sqrt(D - 1) = 31.98, the largest a row can give, stays in int16;
    alternating -128 / 127 rows are +-1 (up to the mean's offset)."""
    d = 1024
    x = np.full((3, d), 127, np.int8)
    x[0, 5] = -128
    x[1, ::2] = -128
    x[2] = -128
    x[2, 0] = 127
    n = V.layernorm_normalised(x).astype(np.float64) / 2 ** P
    _, n_f = layernorm_float(x, np.ones(d), np.zeros(d), 0.0)
    assert np.abs(n - n_f).max() <= 32 * (2 ** -12 + 2 ** -15) + 2 ** -P
    assert n[0, 5] < -31.9 and n[2, 0] > 31.9 and np.abs(V.layernorm_normalised(x)).max() < 1 << 15
    gamma, beta = np.linspace(-2, 2, d), np.linspace(1, -1, d)
    y_f, n_f = layernorm_float(x * 0.1, gamma, beta, 1e-6)
    p = V.LayerNormParams.make(gamma, beta, 0.1, 0.05, 1e-6)
    err = np.abs(V.layernorm(x, p) - lsb(y_f, 0.05))
    assert np.all(err <= layernorm_bound(p, gamma, 0.05, n_f, int_var(x)))
    assert np.array_equal(V.layernorm(x[:1], p), layernorm_ref(x[:1], p))


@pytest.mark.parametrize("d", [2, 3, 17, 96, 1023, 1024])
def test_layernorm_largest_normalised_values_fit_int16(d, jit_mode):
    """The rows with the largest |n| (one value against D - 1 equal others: |n| = sqrt(D - 1)) against
    the Python-int reading of the spec, which asserts n fits int16 unsaturated."""
    x = np.full((2, d), 127, np.int8)
    x[0, -1] = -128
    x[1] = -128
    x[1, 0] = 127
    p = V.LayerNormParams.make(np.full(d, 0.1), np.zeros(d), 0.1, 0.1, 0.0)
    assert np.array_equal(V.layernorm(x, p), layernorm_ref(x, p))
    n = V.layernorm_normalised(x)
    assert abs(abs(int(n[0, -1])) / 2 ** P - math.sqrt(d - 1)) <= math.sqrt(d - 1) * 2 ** -11 + 2 ** -P


def test_layernorm2d_channels_last():
    """sam2's LayerNorm2d (eps 1e-6, over the channels of NCHW) is layernorm on the channels-last map."""
    rng = np.random.default_rng(9)
    c = 32
    q = rng.integers(-128, 128, (2, c, 6, 5)).astype(np.int8)
    sx, gamma, beta = 0.03, rng.normal(1, 0.5, c), rng.normal(0, 0.5, c)
    y_f = nn.layer_norm_2d(q.astype(np.float64) * sx, gamma, beta, eps=1e-6)
    sy = float(np.abs(y_f).max() / 127)
    p = V.LayerNormParams.make(gamma, beta, sx, sy, 1e-6)
    y = V.layernorm(q.transpose(0, 2, 3, 1), p).transpose(0, 3, 1, 2)
    _, n = layernorm_float(q.transpose(0, 2, 3, 1) * sx, gamma, beta, 1e-6)
    bound = layernorm_bound(p, gamma, sy, n, int_var(q.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2)
    assert np.all(np.abs(y - lsb(y_f, sy)) <= bound)


def test_layernorm_shapes_and_leading_axes(jit_mode):
    rng = np.random.default_rng(3)
    x = rng.integers(-128, 128, (2, 5, 7, 32)).astype(np.int8)
    p = V.LayerNormParams.make(np.ones(32), np.zeros(32), 0.05, 0.03, 1e-6)
    y = V.layernorm(x, p)
    assert y.shape == x.shape and y.dtype == np.int8
    assert np.array_equal(y.reshape(-1, 32), V.layernorm(x.reshape(-1, 32), p))


def test_layernorm_rejects_bad_input():
    p = V.LayerNormParams.make(np.ones(8), np.zeros(8), 0.05, 0.03, 1e-6)
    with pytest.raises(ValueError, match="int8"):
        V.layernorm(np.zeros((2, 8), np.int16), p)
    with pytest.raises(ValueError, match="rows of 4"):
        V.layernorm(np.zeros((2, 4), np.int8), p)
    with pytest.raises(ValueError, match="1..1024"):
        V.LayerNormParams.make(np.ones(1025), np.zeros(1025), 0.05, 0.03, 1e-6)
    with pytest.raises(ValueError, match="same"):
        V.LayerNormParams.make(np.ones(8), np.zeros(7), 0.05, 0.03, 1e-6)
    with pytest.raises(ValueError, match="in_scale"):
        V.LayerNormParams.make(np.ones(8), np.zeros(8), 0.0, 0.03, 1e-6)
    with pytest.raises(ValueError, match="eps term"):
        V.LayerNormParams.make(np.ones(8), np.zeros(8), 1e-12, 0.03, 1e-5)
    with pytest.raises(ValueError, match="gain must be int16"):
        V.LayerNormParams(np.ones(8, np.int32), np.zeros(8, np.int32), 10, 0)
    with pytest.raises(ValueError, match="shift=0"):
        V.LayerNormParams(np.ones(8, np.int16), np.zeros(8, np.int32), 0, 0)


# ------------------------------------------------------------------ LUT


def test_lut_gelu_exhaustive_and_identity():
    sx, sy = 0.04, 0.03
    p = V.LutParams.gelu(sx, sy)
    x = np.arange(-128, 128, dtype=np.int8)
    err = np.abs(V.lut(x, p) - lsb(nn.gelu(x.astype(np.float64) * sx), sy))
    assert err.max() <= 0.5
    ident = V.LutParams.make(lambda v: v, 1.0, 1.0)
    assert np.array_equal(V.lut(x, ident), x)
    grid = x.reshape(16, 16)
    assert np.array_equal(V.lut(grid, p), p.table[grid.astype(np.int64) + 128])


def test_lut_from_float_input_propagated_error():
    """gelu' <= 1.129: quantising the input adds <= 1.129 * s_x / 2 / s_y LSB."""
    rng = np.random.default_rng(2)
    xf = rng.normal(0, 1.5, 100_000)
    sx = float(np.abs(xf).max() / 127)
    y_f = nn.gelu(xf)
    sy = float(np.abs(y_f).max() / 127)
    err = np.abs(V.lut(quantise(xf, sx), V.LutParams.gelu(sx, sy)) - lsb(y_f, sy))
    assert err.max() <= 0.5 + 1.129 * sx / 2 / sy


def test_lut_sigmoid_and_saturation():
    x = np.array([-128, -1, 0, 1, 127], np.int8)
    sig = V.lut(x, V.LutParams.sigmoid(0.1, 1 / 127))
    # 127 sigmoid(0.1 x): x = -128 -> 3.5e-4 -> 0; -1 -> 60.33 -> 60; 0 -> 63.5 -> 64 (half up); 1 -> 66.67 -> 67
    assert sig.tolist() == [0, 60, 64, 67, 127]
    mem = V.LutParams.make(lambda v: 20 / (1 + np.exp(-v)) - 10, 0.1, 0.01)   # sigmoid * 20 - 10, saturated
    assert V.lut(x, mem).tolist() == [-128, -50, 0, 50, 127]     # +-0.4996 / 0.01 = +-49.96


def test_lut_rejects_bad_input():
    p = V.LutParams.gelu(0.1, 0.1)
    with pytest.raises(ValueError, match="int8"):
        V.lut(np.zeros(4, np.uint8), p)
    with pytest.raises(ValueError, match="NaN"):
        V.LutParams.make(lambda v: np.where(v < 0, np.nan, v), 0.1, 0.1)
    with pytest.raises(ValueError, match="same shape"):
        V.LutParams.make(lambda v: v[:3], 0.1, 0.1)
    with pytest.raises(ValueError, match=r"shape \(256,\)"):
        V.LutParams(np.zeros(255, np.int8))


# ------------------------------------------------------------------ add / rescale


def add_bound(p, a, b, ra, rb):
    a, b = np.abs(a.astype(np.float64)), np.abs(b.astype(np.float64))     # |int8 -128| overflows in int8
    return 0.5 + (a * abs(p.a_mult - ra * 2 ** p.shift) + b * abs(p.b_mult - rb * 2 ** p.shift)) / 2 ** p.shift + 1e-9


@pytest.mark.parametrize("sa,sb,so", [(0.02, 0.03, 0.04), (0.05, 0.001, 0.05), (1.0, 1.0, 0.01), (0.01, 0.02, 3.0)])
def test_add_against_float(sa, sb, so, jit_mode):
    rng = np.random.default_rng(int(sa * 1000))
    a = rng.integers(-128, 128, (500, 96)).astype(np.int8)
    b = rng.integers(-128, 128, (500, 96)).astype(np.int8)
    p = V.AddParams.make(sa, sb, so)
    y = V.add(a, b, p)
    err = np.abs(y - lsb(a * sa + b.astype(np.float64) * sb, so))
    assert np.all(err <= add_bound(p, a, b, sa / so, sb / so))
    assert err.max() <= 0.5 + 2.0 ** (7 - p.shift)
    ref = np.clip((a.astype(np.int64) * p.a_mult + b.astype(np.int64) * p.b_mult
                   + (1 << (p.shift - 1) if p.shift else 0)) >> p.shift, -128, 127)
    assert np.array_equal(y, ref)


def test_add_hand_derived_rounding(jit_mode):
    """(3a + b + 2) >> 2 by hand: (1, -1) -> 4 >> 2 = 1; (-1, 1) -> 0 >> 2 = 0 (-0.5 rounds up);
    (-2, 0) -> -4 >> 2 = -1 (-1.5 rounds up); (127, 127) -> 510 >> 2 = 127; (-128, -128) -> -510 >> 2 = -128."""
    p = V.AddParams(3, 1, 2)
    a = np.array([1, -1, -2, 127, -128], np.int8)
    b = np.array([-1, 1, 0, 127, -128], np.int8)
    assert V.add(a, b, p).tolist() == [1, 0, -1, 127, -128]
    assert V.add(a, b, V.AddParams(1 << 15, 1 << 15, 15)).tolist() == [0, 0, -2, 127, -128]   # saturates


def test_add_broadcasting(jit_mode):
    rng = np.random.default_rng(4)
    a = rng.integers(-128, 128, (2, 6, 5, 8)).astype(np.int8)
    p = V.AddParams.make(0.02, 0.03, 0.05)
    full = lambda b: V.add(a, np.ascontiguousarray(np.broadcast_to(b, a.shape)), p)
    for shape in [(8,), (5, 8), (6, 5, 8), (1, 6, 5, 8), (6, 1, 8), (2, 1, 1, 8), (1,), ()]:
        b = rng.integers(-128, 128, shape).astype(np.int8)
        assert np.array_equal(V.add(a, b, p), full(b)), shape
    with pytest.raises(ValueError, match="does not broadcast"):
        V.add(a[0], a, p)
    with pytest.raises(ValueError, match="does not broadcast"):
        V.add(a, np.zeros(7, np.int8), p)
    with pytest.raises(ValueError, match="int8"):
        V.add(a, a.astype(np.int32), p)


def test_rescale_is_the_requantiser_with_a_narrow_multiplier():
    x = np.arange(-128, 128, dtype=np.int8)
    for si, so in [(0.1, 0.1), (0.1, 0.3), (0.3, 0.1), (1e-3, 1.0), (1.0, 1 / 1000)]:
        p = V.RescaleParams.make(si, so)
        y = V.rescale(x, p)
        assert np.array_equal(y, requantize(x.astype(np.int32), p.multiplier, p.shift))
        r = si / so
        assert np.all(np.abs(y - lsb(x * si, so)) <= 0.5 + 128 * abs(p.multiplier - r * 2 ** p.shift) / 2 ** p.shift)
    assert np.array_equal(V.rescale(x, V.RescaleParams.make(0.7, 0.7)), x)
    with pytest.raises(ValueError, match="too large"):
        V.RescaleParams.make(1.0, 1e-6)
    with pytest.raises(ValueError, match="multiplier=65536"):
        V.RescaleParams(1 << 16, 3)


# ------------------------------------------------------------------ RoPE


def test_rope_hand_derived():
    """One position, one pair. 90 degrees (c = 0, s = 2^14), in = out scale: m / 2^shift = 2^-14 ->
    m = 2^30, shift = 44; x = (3, -5): acc = (0 + 5 * 2^14, 3 * 2^14) -> (5, 3).
    45 degrees: c = s = round(2^14 / sqrt 2) = 11585; x = (100, 0): acc = (1158500, 1158500),
    1158500 / 2^14 = 70.71 -> 71; x = (1, 1): acc = (0, 23170) -> (0, 1)."""
    p = V.RopeParams.make([[0.0]], [[1.0]], 0.1, 0.1)
    assert (p.cos.tolist(), p.sin.tolist(), p.multiplier, p.shift) == ([[0]], [[16384]], 1 << 30, 44)
    assert V.rope(np.array([[3, -5]], np.int8), p).tolist() == [[5, 3]]
    h = math.sqrt(0.5)
    p = V.RopeParams.make([[h]], [[h]], 0.1, 0.1)
    assert p.cos.tolist() == [[11585]]
    assert V.rope(np.array([[100, 0], [1, 1]], np.int8), p).tolist() == [[71, 71], [0, 1]]


def rope_bound(p, x, r):
    x = x.astype(np.float64)
    pair = np.abs(x[..., 0::2]) + np.abs(x[..., 1::2])
    acc_max = pair * (1 << V.ROPE_FRAC_BITS)
    b = 0.5 + pair * 2.0 ** -15 * r + acc_max * abs(p.multiplier * 2.0 ** -p.shift - r * 2.0 ** -14) + 1e-4
    return np.repeat(b, 2, axis=-1)        # both channels of a pair


@pytest.mark.parametrize("frames,sin_s,sout", [(1, 0.05, 0.05), (3, 0.05, 0.07), (2, 0.2, 0.1)])
def test_rope_against_float(frames, sin_s, sout):
    """Against golden_model.memory_attention.apply_rope (the official pair layout) on axial tables;
    frames > 1 is rope_k_repeat: the table tiled over the memory frames."""
    from golden_model.memory_attention import apply_rope, axial_rope
    cos, sin = axial_rope(64, 8, 8)
    p = V.RopeParams.make(cos, sin, sin_s, sout)
    rng = np.random.default_rng(frames)
    x = rng.integers(-128, 128, (frames * 64, 64)).astype(np.int8)
    x[:5] = -128
    x[5:9] = 127
    y = V.rope(x, p)
    y_f = apply_rope(x.astype(np.float64) * sin_s, cos, sin).astype(np.float64)
    assert np.all(np.abs(y - lsb(y_f, sout)) <= rope_bound(p, x, sin_s / sout))
    assert np.array_equal(V.rope(x.reshape(frames, 64, 64), p).reshape(-1, 64), y)   # leading axes
    # the spec's formula: int32 products of the tiled table, then intops.requantize
    c, sn = (np.tile(t.astype(np.int64), (frames, 1)) for t in (p.cos, p.sin))
    x0, x1 = x[:, 0::2].astype(np.int64), x[:, 1::2].astype(np.int64)
    acc = np.empty(x.shape, np.int64)
    acc[:, 0::2], acc[:, 1::2] = x0 * c - x1 * sn, x0 * sn + x1 * c
    assert np.abs(acc).max() <= 1 << 22
    assert np.array_equal(y, requantize(acc, p.multiplier, p.shift))


def test_rope_axial_tables_rebuild_the_full_table():
    from golden_model.memory_attention import axial_rope
    p = V.RopeParams.make(*axial_rope(64, 8, 4), 0.1, 0.1)         # 8 x 4 tokens, D = 64
    cx, sx, cy, sy = V.rope_axial_tables(p, 8)
    assert cx.shape == sx.shape == (8, 16) and cy.shape == sy.shape == (4, 16)
    t = np.arange(32)
    assert np.array_equal(np.concatenate([cx[t % 8], cy[t // 8]], axis=1), p.cos)
    assert np.array_equal(np.concatenate([sx[t % 8], sy[t // 8]], axis=1), p.sin)
    with pytest.raises(ValueError, match="not axial"):
        V.rope_axial_tables(p, 4)
    with pytest.raises(ValueError, match="no axial split"):
        V.rope_axial_tables(p, 5)


def test_rope_rejects_bad_input():
    from golden_model.memory_attention import axial_rope
    p = V.RopeParams.make(*axial_rope(16, 4, 4), 0.1, 0.1)
    with pytest.raises(ValueError, match="int8"):
        V.rope(np.zeros((16, 16), np.float32), p)
    with pytest.raises(ValueError, match="8 pairs"):
        V.rope(np.zeros((16, 8), np.int8), p)
    with pytest.raises(ValueError, match="multiple of the 16-position"):
        V.rope(np.zeros((24, 16), np.int8), p)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        V.RopeParams.make([[2.0]], [[0.0]], 0.1, 0.1)
    with pytest.raises(ValueError, match="sin must be int16"):
        V.RopeParams(np.zeros((2, 2), np.int16), np.zeros((2, 2), np.int32), 1, 1)
    with pytest.raises(ValueError, match="cos outside"):
        V.RopeParams(np.full((2, 2), 16385, np.int16), np.zeros((2, 2), np.int16), 1, 1)


# ------------------------------------------------------------------ pooling and upsampling


@pytest.mark.parametrize("h,w", [(8, 8), (5, 7), (2, 3), (64, 64)])
def test_maxpool_matches_float_floor_sizes(h, w):
    rng = np.random.default_rng(h * w)
    x = rng.integers(-128, 128, (2, h, w, 5)).astype(np.int8)
    x[0, 0, 0] = -128
    x[1, :2, :2] = 127
    y = V.maxpool2x2(x)
    assert y.dtype == np.int8 and y.shape == (2, h // 2, w // 2, 5)
    assert np.array_equal(y, nn.max_pool2d_nhwc(x.astype(np.float32), (2, 2)))
    assert np.array_equal(V.maxpool2x2(x[0]), y[0])                # (H, W, C) without a batch axis


def test_upsample_matches_float():
    rng = np.random.default_rng(8)
    x = rng.integers(-128, 128, (2, 3, 5, 4)).astype(np.int8)
    y = V.upsample_nearest2x(x)
    want = nn.upsample_nearest2x(x.transpose(0, 3, 1, 2).astype(np.float32)).transpose(0, 2, 3, 1)
    assert y.dtype == np.int8 and np.array_equal(y, want)
    assert y[1, 5, 9].tolist() == x[1, 2, 4].tolist()
    assert np.array_equal(V.upsample_nearest2x(x[0]), y[0])


def test_pool_upsample_reject_bad_input():
    with pytest.raises(ValueError, match="no 2x2 window"):
        V.maxpool2x2(np.zeros((1, 5, 3), np.int8))
    with pytest.raises(ValueError, match="int8"):
        V.maxpool2x2(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="at least 3"):
        V.upsample_nearest2x(np.zeros((4, 4), np.int8))


# ------------------------------------------------------------------ files


def round_trip(params, tmp_path):
    arrays = params.to_arrays()
    assert all(isinstance(v, np.ndarray) and v.dtype.kind in "iu" for v in arrays.values())
    save_safetensors(tmp_path / "p.safetensors", arrays)
    back = type(params).from_arrays(load_safetensors(tmp_path / "p.safetensors"))
    for k, v in back.to_arrays().items():
        assert v.dtype == arrays[k].dtype and np.array_equal(v, arrays[k]), k
    return back


def all_params():
    rng = np.random.default_rng(5)
    return [V.LayerNormParams.make(rng.normal(1, 1, 96), rng.normal(0, 1, 96), 0.05, 0.03, 1e-6),
            V.LutParams.gelu(0.05, 0.03), V.AddParams.make(0.01, 0.02, 0.03), V.RescaleParams.make(0.1, 0.2),
            V.RopeParams.make(rng.uniform(-1, 1, (16, 8)), rng.uniform(-1, 1, (16, 8)), 0.1, 0.12)]


@pytest.mark.parametrize("params", all_params(), ids=lambda p: type(p).__name__)
def test_round_trip_and_strict_loading(params, tmp_path):
    back = round_trip(params, tmp_path)
    arrays = back.to_arrays()
    cls = type(params)
    with pytest.raises(ValueError, match="unexpected"):
        cls.from_arrays({**arrays, "extra": np.zeros(1, np.int8)})
    name = next(iter(arrays))
    with pytest.raises(ValueError, match=rf"missing array\(s\) \['{name}'\]"):
        cls.from_arrays({k: v for k, v in arrays.items() if k != name})
    with pytest.raises(ValueError, match=name):
        cls.from_arrays({**arrays, name: arrays[name].astype(np.float32)})
    with pytest.raises(ValueError, match=name):
        cls.from_arrays({**arrays, name: np.stack([arrays[name]] * 2)})
    if "shift" in arrays:
        with pytest.raises(ValueError, match="shift=99 outside"):
            cls.from_arrays({**arrays, "shift": np.array(99, arrays["shift"].dtype)})


# ------------------------------------------------------------------ docs


def test_quantisation_doc_matches_code(monkeypatch):
    from sw import intvec_doc
    table = intvec_doc.markdown_table()
    assert table in intvec_doc.DOC.read_text(), "docs/quantisation.md is stale: run `python -m sw.intvec_doc`"
    assert f"int{V.LN_GAIN_BITS}" in table and f"{len(V.RSQRT_TABLE)} x uint16" in table
    monkeypatch.setattr(V, "ADD_MULT_BITS", V.ADD_MULT_BITS + 1)
    assert intvec_doc.markdown_table() != table
