"""NumPy building blocks with torch.nn.functional's numerics (float32, NCHW / (..., C)).

Every SAM 2 module in golden_model/ is written with these, so each numerical
choice (GELU form, LayerNorm epsilon placement, conv padding) is made once.
"""
from __future__ import annotations

import math

import numpy as np

try:  # exact erf, vectorised; scipy is a numpy-only dependency of scikit-image and most stacks
    from scipy.special import erf as _erf
except ImportError:  # pragma: no cover
    _erf = np.vectorize(math.erf, otypes=[np.float64])

F32 = np.float32


def linear(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """torch.nn.functional.linear: x @ W.T + b (weight is (out, in))."""
    if x.ndim > 2 and x.flags.c_contiguous:
        # one 2-D GEMM instead of numpy's per-leading-index loop
        return linear(x.reshape(-1, x.shape[-1]), weight, bias).reshape(*x.shape[:-1], weight.shape[0])
    y = x @ weight.T
    if bias is not None:
        y += bias
    return y


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, torch's default. float32 goes through gelu_ on a copy; other dtypes use erf directly."""
    if x.dtype == F32:
        return gelu_(np.array(x, F32, order="C"))
    return (0.5 * x * (1.0 + _erf(x / np.sqrt(2.0).astype(x.dtype)))).astype(x.dtype, copy=False)


# erf(z) = 1 - t (a1 + t (a2 + ... a5 t)) exp(-z^2), t = 1 / (1 + p z), z >= 0: Abramowitz & Stegun 7.1.26,
# |error| <= 1.5e-7, i.e. at float32 resolution (torch's own float32 GELU is off by up to ~1e-6).
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
_CHUNK = 1 << 16   # elements per pass of the in-place elementwise kernels: a few hundred KB stays in cache


def gelu_(x: np.ndarray) -> np.ndarray:
    """GELU in place on a float32 C-contiguous array (returns x); others get gelu(x).

    gelu(x) = x/2 + |x|/2 * erf(|x|/sqrt 2), evaluated in float32 passes over cache-sized
    chunks (NumPy has no erf; scipy's is ~5x slower). Max abs error ~3e-7 * max(1, |x|)."""
    if x.dtype != F32 or not x.flags.c_contiguous:
        return gelu(x)
    flat = x.reshape(-1)
    n = min(_CHUNK, flat.size)
    ax_buf, t_buf, e_buf, p_buf = (np.empty(n, F32) for _ in range(4))
    a1, a2, a3, a4, a5 = (F32(a) for a in _AS_A)
    p2 = F32(2 * _AS_P / math.sqrt(2.0))   # applied to |x|/2
    one, half, m2 = F32(1), F32(0.5), F32(-2)
    with np.errstate(over="ignore", under="ignore"):
        for s in range(0, flat.size, _CHUNK):
            h = flat[s:s + _CHUNK]
            m = h.size
            ax, t, e, poly = ax_buf[:m], t_buf[:m], e_buf[:m], p_buf[:m]
            h *= half                                   # h = x/2
            np.abs(h, out=ax)                           # |x|/2
            np.multiply(ax, p2, out=t)
            t += one
            np.reciprocal(t, out=t)                     # t = 1 / (1 + p |x|/sqrt2)
            np.multiply(h, h, out=e)
            e *= m2
            np.exp(e, out=e)                            # exp(-x^2/2)
            np.multiply(t, a5, out=poly)
            poly += a4; poly *= t; poly += a3; poly *= t; poly += a2; poly *= t; poly += a1; poly *= t
            e *= poly
            np.subtract(one, e, out=e)                  # erf(|x|/sqrt2)
            e *= ax
            h += e
    return x


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0, dtype=x.dtype)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x))).astype(x.dtype, copy=False)


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """LayerNorm over the last axis (biased variance, eps inside the sqrt).
    Two passes over x, the rest in place on the centred copy."""
    mean = x.mean(-1, keepdims=True)
    xc = x - mean
    flat = xc.reshape(-1, xc.shape[-1])
    var = np.einsum("ij,ij->i", flat, flat).reshape(mean.shape)   # row sums of squares, no temporary
    var /= xc.shape[-1]
    var += eps
    np.sqrt(var, out=var)
    xc /= var
    xc *= weight
    xc += bias
    return xc


def layer_norm_2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """sam2's LayerNorm2d: normalise over channels of NCHW."""
    mean = x.mean(1, keepdims=True)
    xc = x - mean
    var = (xc * xc).mean(1, keepdims=True)
    return weight[:, None, None] * (xc / np.sqrt(var + eps)) + bias[:, None, None]


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, block_scores: int = 1 << 16) -> np.ndarray:
    """Scaled dot-product attention (no mask, no dropout): (..., Lq, D) x (..., Lk, D) -> (..., Lq, Dv).

    Flash-style blocking without the online softmax: a block of about `block_scores`
    scores (several small matrices, or a slice of queries of a big one) is scored,
    exponentiated and applied while it is still in cache; rows are normalised after
    the value product (dividing Dv columns instead of Lk)."""
    lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    lq, d = q.shape[-2:]
    lk, dv = k.shape[-2], v.shape[-1]
    dtype = np.result_type(q, k, v)
    scale = dtype.type(1.0 / math.sqrt(d))
    g_all = math.prod(lead)
    q3 = (np.broadcast_to(q, lead + (lq, d)) * scale).reshape(g_all, lq, d)
    # K^T as a transposed view: BLAS reads it with a transpose flag, no copy
    kt3 = np.swapaxes(np.ascontiguousarray(np.broadcast_to(k, lead + (lk, d))).reshape(g_all, lk, d), -1, -2)
    v3 = np.ascontiguousarray(np.broadcast_to(v, lead + (lk, dv))).reshape(g_all, lk, dv)
    out = np.empty((g_all, lq, dv), dtype)
    if lq * lk <= block_scores:
        g, qb = max(1, block_scores // (lq * lk)), lq
    else:
        g, qb = 1, max(256, block_scores // lk)   # skinnier GEMMs than 256 rows lose more than cache gains
    buf = np.empty(min(g, g_all) * min(qb, lq) * lk, dtype)
    for i in range(0, g_all, g):
        gi = min(g, g_all - i)
        for j in range(0, lq, qb):
            qj = min(qb, lq - j)
            s = buf[:gi * qj * lk].reshape(gi, qj, lk)
            np.matmul(q3[i:i + gi, j:j + qj], kt3[i:i + gi], out=s)
            s -= s.max(-1, keepdims=True)
            np.exp(s, out=s)
            den = s.sum(-1, keepdims=True)
            o = out[i:i + gi, j:j + qj]
            np.matmul(s, v3[i:i + gi], out=o)
            o /= den
    return out.reshape(lead + (lq, dv))


def max_pool2d_nhwc(x: np.ndarray, stride: tuple[int, int]) -> np.ndarray:
    """MaxPool2d(kernel=stride, stride, ceil_mode=False) over H, W of (B, H, W, C)."""
    sh, sw = stride
    b, h, w, c = x.shape
    ho, wo = h // sh, w // sw
    x = x[:, :ho * sh, :wo * sw].reshape(b, ho, sh, wo, sw, c)
    return x.max(axis=(2, 4))


def upsample_nearest2x(x: np.ndarray) -> np.ndarray:
    """F.interpolate(scale_factor=2, mode="nearest") on NCHW."""
    n, c, h, w = x.shape
    return np.broadcast_to(x[:, :, :, None, :, None], (n, c, h, 2, w, 2)).reshape(n, c, 2 * h, 2 * w)


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """torch's cubic convolution coefficients for taps at -1, 0, 1, 2 (A = -0.75)."""
    def near(d):   # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):    # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], -1)


def _bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) interpolation matrix of F.interpolate(mode="bicubic", align_corners=False):
    source x = (i + 0.5) * n_in / n_out - 0.5, taps clamped to the border."""
    scale = n_in / n_out
    src = (np.arange(n_out) + 0.5) * scale - 0.5
    i0 = np.floor(src).astype(np.int64)
    wts = _cubic_weights(src - i0)
    m = np.zeros((n_out, n_in))
    for j in range(4):
        np.add.at(m, (np.arange(n_out), np.clip(i0 - 1 + j, 0, n_in - 1)), wts[:, j])
    return m


def interpolate_bicubic(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """F.interpolate(x, size, mode="bicubic", align_corners=False) on NCHW (computed in float64)."""
    mh = _bicubic_matrix(x.shape[-2], size[0])
    mw = _bicubic_matrix(x.shape[-1], size[1])
    y = np.einsum("oh,nchw,pw->ncop", mh, x.astype(np.float64), mw, optimize=True)
    return y.astype(x.dtype)


def _pad_nchw(x: np.ndarray, padding: int) -> np.ndarray:
    if padding == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None,
           stride: int = 1, padding: int = 0, groups: int = 1) -> np.ndarray:
    """torch.nn.functional.conv2d on NCHW, weight (Cout, Cin/groups, kh, kw)."""
    n, cin, h, w = x.shape
    cout, cin_g, kh, kw = weight.shape
    if cin != cin_g * groups:
        raise ValueError(f"conv2d: {cin} input channels, weight expects {cin_g}x{groups}")
    xp = _pad_nchw(x, padding)
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (w + 2 * padding - kw) // stride + 1
    if kh == kw == 1 and stride == 1 and groups == 1:
        y = np.einsum("oc,nchw->nohw", weight[:, :, 0, 0], xp, optimize=True)
    else:
        # Strided windows view: (n, c, ho, wo, kh, kw), no copies until the contraction.
        sn, sc, sh, sw = xp.strides
        windows = np.lib.stride_tricks.as_strided(
            xp, (n, cin, ho, wo, kh, kw), (sn, sc, sh * stride, sw * stride, sh, sw), writeable=False)
        if groups == 1:
            y = _im2col_gemm(windows, weight).transpose(0, 3, 1, 2)
        elif groups == cin and cin_g == 1 and cout == cin:
            y = np.einsum("nchwij,cij->nchw", windows, weight[:, 0], optimize=True)
        else:
            per = cout // groups
            y = np.concatenate([conv2d(x[:, g * cin_g:(g + 1) * cin_g], weight[g * per:(g + 1) * per],
                                       None, stride, padding) for g in range(groups)], axis=1)
    if bias is not None:
        y = y + bias[None, :, None, None]
    return np.ascontiguousarray(y)


def _im2col_gemm(windows: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """(n, cin, ho, wo, kh, kw) windows x (cout, cin, kh, kw) -> (n, ho, wo, cout)."""
    n, cin, ho, wo, kh, kw = windows.shape
    cols = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, cin * kh * kw)
    return (cols @ weight.reshape(weight.shape[0], -1).T).reshape(n, ho, wo, weight.shape[0])


def conv2d_nhwc_out(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None,
                    stride: int = 1, padding: int = 0) -> np.ndarray:
    """conv2d on NCHW input, result channels-last (n, ho, wo, cout): what a patch embedding
    followed by .permute(0, 2, 3, 1) gives, without the transposes."""
    n, cin, h, w = x.shape
    cout, cin_w, kh, kw = weight.shape
    if cin != cin_w:
        raise ValueError(f"conv2d: {cin} input channels, weight expects {cin_w}")
    xp = _pad_nchw(x, padding)
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (w + 2 * padding - kw) // stride + 1
    sn, sc, sh, sw = xp.strides
    windows = np.lib.stride_tricks.as_strided(
        xp, (n, cin, ho, wo, kh, kw), (sn, sc, sh * stride, sw * stride, sh, sw), writeable=False)
    y = _im2col_gemm(windows, weight)
    if bias is not None:
        y += bias
    return y


def conv_transpose2d_k2s2(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """ConvTranspose2d with kernel 2, stride 2, no padding (weight (Cin, Cout, 2, 2)):
    each input pixel writes a disjoint 2x2 output block."""
    n, cin, h, w = x.shape
    _, cout, kh, kw = weight.shape
    if (kh, kw) != (2, 2):
        raise ValueError("conv_transpose2d_k2s2 needs a 2x2 kernel")
    y = np.einsum("nchw,cokl->nohkwl", x, weight, optimize=True).reshape(n, cout, 2 * h, 2 * w)
    if bias is not None:
        y = y + bias[None, :, None, None]
    return y
