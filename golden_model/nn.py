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
    """Exact (erf) GELU, torch's default."""
    return (0.5 * x * (1.0 + _erf(x / np.sqrt(2.0).astype(x.dtype)))).astype(x.dtype, copy=False)


_CHUNK = 1 << 16   # elements per pass of the in-place elementwise kernels: stays in L2


def gelu_(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU in place on a float32 C-contiguous array (returns x): chunked so the
    erf, multiply and add passes run out of cache."""
    if x.dtype != F32 or not x.flags.c_contiguous:
        return gelu(x)
    flat = x.reshape(-1)
    inv_sqrt2 = F32(1.0 / math.sqrt(2.0))
    tmp = np.empty(min(_CHUNK, flat.size), F32)
    for s in range(0, flat.size, _CHUNK):
        seg = flat[s:s + _CHUNK]
        t = tmp[:seg.size]
        np.multiply(seg, inv_sqrt2, out=t)
        _erf(t, out=t)
        t += F32(1.0)
        seg *= F32(0.5)
        seg *= t
    return x


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0, dtype=x.dtype)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x))).astype(x.dtype, copy=False)


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """LayerNorm over the last axis (biased variance, eps inside the sqrt)."""
    mean = x.mean(-1, keepdims=True)
    xc = x - mean
    var = (xc * xc).mean(-1, keepdims=True)
    return xc / np.sqrt(var + eps) * weight + bias


def layer_norm_2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """sam2's LayerNorm2d: normalise over channels of NCHW."""
    mean = x.mean(1, keepdims=True)
    xc = x - mean
    var = (xc * xc).mean(1, keepdims=True)
    return weight[:, None, None] * (xc / np.sqrt(var + eps)) + bias[:, None, None]


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, max_scores: int = 1 << 24) -> np.ndarray:
    """Scaled dot-product attention (no mask, no dropout): (..., Lq, D) x (..., Lk, D).
    Queries are processed in blocks so at most ~`max_scores` scores exist at once."""
    scale = F32(1.0 / math.sqrt(q.shape[-1])) if q.dtype == F32 else 1.0 / math.sqrt(q.shape[-1])
    lq, lk = q.shape[-2], k.shape[-2]
    kt = np.swapaxes(k, -1, -2)
    batch = int(np.prod(q.shape[:-2]))
    block = max(1, min(lq, max_scores // max(1, batch * lk)))
    if block >= lq:
        return _attention_block(q, kt, v, scale)
    out = np.empty(q.shape[:-1] + (v.shape[-1],), np.result_type(q, v))
    for s in range(0, lq, block):
        out[..., s:s + block, :] = _attention_block(q[..., s:s + block, :], kt, v, scale)
    return out


def _attention_block(q, kt, v, scale):
    s = (q * scale) @ kt
    s -= s.max(-1, keepdims=True)
    np.exp(s, out=s)
    s /= s.sum(-1, keepdims=True)
    return s @ v


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
