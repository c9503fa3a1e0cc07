"""Integer convolutions: the arithmetic of the overlay's convolution ops, bit for bit.

Feature maps are one image, channels first: int8 (C, H, W). Weights follow
torch.nn.functional's layouts: conv2d (Cout, Cin / groups, K, K), conv_transpose2d
(Cin, Cout, K, K). Padding, stride, output sizes, groups (depthwise = groups = Cin)
and transposed semantics are exactly torch's; tests/test_intconv.py checks them
against torch on integer-valued tensors.

Numerics are the GEMM engine's (golden_model.intops.gemm), per output channel:
    acc[co, y, x] = exact int8 x int8 sum          (int32; |acc| <= K*K*Cin*2**14)
    t             = clamp(acc + bias[co], int32)   (saturating add)
    int8 out      = requantize(t, multiplier[co], shift[co], relu)
    int32 out     = relu ? max(t, 0) : t
float64 BLAS computes the sums exactly (every partial sum far below 2**53).
"""
from __future__ import annotations

import numpy as np

from golden_model.intops import MAX_K, requantize, saturate_int32


def out_size(size: int, k: int, stride: int, padding: int) -> int:
    """torch.nn.Conv2d's output size along one axis (dilation 1)."""
    return (size + 2 * padding - k) // stride + 1


def transposed_out_size(size: int, k: int, stride: int, padding: int = 0) -> int:
    """torch.nn.ConvTranspose2d's output size along one axis (dilation 1, output_padding 0)."""
    return (size - 1) * stride - 2 * padding + k


def _check_int8(name, x, ndim):
    x = np.asarray(x)
    if x.dtype != np.int8:
        raise ValueError(f"{name} must be int8, got {x.dtype}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {x.shape}")
    return x


def im2col(x, k: int, stride: int, padding: int) -> np.ndarray:
    """int8 (C, H, W) -> (C * k * k, Ho * Wo): column p holds output pixel p's receptive field,
    rows ordered (c, ky, kx) like torch's weight.reshape(Cout, -1); zeros where padded."""
    x = _check_int8("x", x, 3)
    c, h, w = x.shape
    ho, wo = out_size(h, k, stride, padding), out_size(w, k, stride, padding)
    if ho < 1 or wo < 1:
        raise ValueError(f"{k}x{k} kernel with padding {padding} does not fit a {h}x{w} input")
    xp = np.zeros((c, h + 2 * padding, w + 2 * padding), np.int8)
    xp[:, padding:padding + h, padding:padding + w] = x
    cols = np.empty((c, k, k, ho, wo), np.int8)
    for ky in range(k):
        for kx in range(k):
            cols[:, ky, kx] = xp[:, ky:ky + stride * (ho - 1) + 1:stride, kx:kx + stride * (wo - 1) + 1:stride]
    return cols.reshape(c * k * k, ho * wo)


def conv2d_acc(x, w, *, stride: int = 1, padding: int = 0, groups: int = 1) -> np.ndarray:
    """Exact int64 accumulators (Cout, Ho, Wo) of torch.nn.functional.conv2d on int8 tensors."""
    x = _check_int8("x", x, 3)
    w = _check_int8("w", w, 4)
    cin, h, wd = x.shape
    cout, cpg, k, k2 = w.shape
    if k != k2:
        raise ValueError(f"square kernels only, got {k}x{k2}")
    if stride < 1 or padding < 0 or groups < 1:
        raise ValueError(f"stride {stride} must be >= 1, padding {padding} >= 0, groups {groups} >= 1")
    if cin % groups or cout % groups or cpg != cin // groups:
        raise ValueError(f"weights {w.shape} do not fit {cin} input channels in {groups} groups")
    if cpg * k * k > MAX_K:
        raise ValueError(f"reduction {cpg * k * k} exceeds {MAX_K}: int32 accumulation could overflow")
    ho, wo = out_size(h, k, stride, padding), out_size(wd, k, stride, padding)
    cols = im2col(x, k, stride, padding).astype(np.float64).reshape(groups, cpg * k * k, ho * wo)
    wg = w.astype(np.float64).reshape(groups, cout // groups, cpg * k * k)
    return np.matmul(wg, cols).astype(np.int64).reshape(cout, ho, wo)


def conv_transpose2d_acc(x, w, *, stride: int = 1, padding: int = 0) -> np.ndarray:
    """Exact int64 accumulators (Cout, Ho, Wo) of torch.nn.functional.conv_transpose2d (groups 1,
    output_padding 0): out[co, iy*S - P + ky, ix*S - P + kx] += x[ci, iy, ix] * w[ci, co, ky, kx]."""
    x = _check_int8("x", x, 3)
    w = _check_int8("w", w, 4)
    cin, h, wd = x.shape
    if w.shape[0] != cin or w.shape[2] != w.shape[3]:
        raise ValueError(f"weights {w.shape} are not (Cin={cin}, Cout, K, K)")
    if stride < 1 or padding < 0:
        raise ValueError(f"stride {stride} must be >= 1 and padding {padding} >= 0")
    if cin > MAX_K:
        raise ValueError(f"reduction {cin} exceeds {MAX_K}")
    cout, k = w.shape[1], w.shape[2]
    ho, wo = transposed_out_size(h, k, stride, padding), transposed_out_size(wd, k, stride, padding)
    if ho < 1 or wo < 1:
        raise ValueError(f"padding {padding} leaves no output")
    # Every input pixel scatters a K x K patch per output channel; sum the patches.
    patches = np.einsum("chw,cokl->oklhw", x.astype(np.float64), w.astype(np.float64))
    full = np.zeros((cout, (h - 1) * stride + k, (wd - 1) * stride + k), np.float64)
    for ky in range(k):
        for kx in range(k):
            full[:, ky:ky + stride * (h - 1) + 1:stride, kx:kx + stride * (wd - 1) + 1:stride] += patches[:, ky, kx]
    return full[:, padding:padding + ho, padding:padding + wo].astype(np.int64)


def requantize_channels(acc, bias=None, multiplier=None, shift=None, *, relu: bool = False,
                        out_int32: bool = False) -> np.ndarray:
    """The GEMM engine's output stage with the channel on axis 0 (bias, multiplier, shift per channel)."""
    acc = np.asarray(acc, np.int64)
    c = acc.shape[0]
    bias = np.zeros(c, np.int64) if bias is None else np.asarray(bias, np.int64)
    if bias.shape not in ((), (c,)):
        raise ValueError(f"bias shape {bias.shape}, expected ({c},)")
    if np.any((bias < -(1 << 31)) | (bias >= (1 << 31))):
        raise ValueError("bias outside int32")
    if np.any((acc < -(1 << 31)) | (acc >= (1 << 31))):
        raise ValueError("accumulator outside int32")
    per_channel = (c,) + (1,) * (acc.ndim - 1)
    t = saturate_int32(acc + np.broadcast_to(bias, (c,)).reshape(per_channel))
    if out_int32:
        return (np.maximum(t, 0) if relu else t).astype(np.int32)
    if multiplier is None or shift is None:
        raise ValueError("int8 output needs multiplier and shift (or out_int32=True)")
    m = np.broadcast_to(np.asarray(multiplier, np.int64), (c,)).reshape(per_channel)
    s = np.broadcast_to(np.asarray(shift, np.int64), (c,)).reshape(per_channel)
    return requantize(t, m, s, relu=relu)


def conv2d(x, w, bias=None, multiplier=None, shift=None, *, stride: int = 1, padding: int = 0,
           groups: int = 1, relu: bool = False, out_int32: bool = False) -> np.ndarray:
    """Quantised conv2d (dense, strided, padded, grouped): int8 (or int32) (Cout, Ho, Wo)."""
    acc = conv2d_acc(x, w, stride=stride, padding=padding, groups=groups)
    return requantize_channels(acc, bias, multiplier, shift, relu=relu, out_int32=out_int32)


def depthwise_conv2d(x, w, bias=None, multiplier=None, shift=None, *, stride: int = 1, padding: int = 0,
                     relu: bool = False, out_int32: bool = False) -> np.ndarray:
    """Quantised depthwise conv2d: w is (C, 1, K, K), groups = C."""
    x = _check_int8("x", x, 3)
    return conv2d(x, w, bias, multiplier, shift, stride=stride, padding=padding, groups=x.shape[0],
                  relu=relu, out_int32=out_int32)


def conv_transpose2d(x, w, bias=None, multiplier=None, shift=None, *, stride: int = 1, padding: int = 0,
                     relu: bool = False, out_int32: bool = False) -> np.ndarray:
    """Quantised conv_transpose2d: int8 (or int32) (Cout, Ho, Wo)."""
    acc = conv_transpose2d_acc(x, w, stride=stride, padding=padding)
    return requantize_channels(acc, bias, multiplier, shift, relu=relu, out_int32=out_int32)
