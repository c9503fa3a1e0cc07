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
    y = x @ weight.T
    if bias is not None:
        y = y + bias
    return y


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU, torch's default."""
    return (0.5 * x * (1.0 + _erf(x / np.sqrt(2.0).astype(x.dtype)))).astype(x.dtype, copy=False)


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


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Scaled dot-product attention (no mask, no dropout): (..., Lq, D) x (..., Lk, D)."""
    scale = F32(1.0 / math.sqrt(q.shape[-1])) if q.dtype == F32 else 1.0 / math.sqrt(q.shape[-1])
    s = (q * scale) @ np.swapaxes(k, -1, -2)
    return softmax(s) @ v


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
            cols = windows.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, cin * kh * kw)
            y = (cols @ weight.reshape(cout, -1).T).reshape(n, ho, wo, cout).transpose(0, 3, 1, 2)
        elif groups == cin and cin_g == 1 and cout == cin:
            y = np.einsum("nchwij,cij->nchw", windows, weight[:, 0], optimize=True)
        else:
            per = cout // groups
            y = np.concatenate([conv2d(x[:, g * cin_g:(g + 1) * cin_g], weight[g * per:(g + 1) * per],
                                       None, stride, padding) for g in range(groups)], axis=1)
    if bias is not None:
        y = y + bias[None, :, None, None]
    return np.ascontiguousarray(y)


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
