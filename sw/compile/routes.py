"""Convolutions on the overlay: which engine runs each one, and the layout transforms around it.

Routing (decided here, once; `last_run.engine` says which was taken):
  * 1x1, stride 1, no padding        -> "gemm": pixels are rows (M = H*W), K = Cin, N = Cout; every
                                         array row and column does useful work, no im2col needed.
  * transposed, kernel == stride, no padding (SAM 2's 2x2/s2 upscaling)
                                      -> "gemm": M = H*W, K = Cin, N = Cout*K*K (every input pixel
                                         writes its own KxK output patch, no overlap), then a pixel
                                         shuffle on the host.
  * depthwise, stride 1, odd K <= 7 with padding (K-1)/2, int8 out (SAM 2's CXBlock 7x7)
                                      -> "depthwise": the depthwise engine (hw/conv/depthwise.py, one
                                         output pixel per cycle per channel lane, sw/compile/conv.py).
  * dense / strided / padded KxK, other depthwise, kernels 1-7, strides 1/2/4, padding 0-3
                                      -> "conv": the convolution engine (on-the-fly im2col into the
                                         systolic array, sw/compile/conv.py), feature maps in the
                                         overlay's planar layout.
  * anything else (other strides, wider padding, an overlay without the conv engine)
                                      -> "gemm-im2col": host-built im2col rows on the GEMM engine
                                         (depthwise with block-diagonal weights).
Every route is bit-identical to golden_model.intconv (same per-channel requantisation).
`last_run.macs` counts the convolution's useful MACs.
"""
from __future__ import annotations

import numpy as np

from golden_model import intconv


class ConvError(ValueError):
    """A convolution the overlay does not run (the message says which and why)."""


def _int8(name, x, ndim):
    x = np.asarray(x)
    if x.dtype != np.int8 or x.ndim != ndim:
        raise ConvError(f"{name} must be int8 with {ndim} dimensions, got {x.dtype} {x.shape}")
    return x


def _per_channel(v, n):
    return None if v is None else np.broadcast_to(np.asarray(v, np.int64), (n,))


def _run(drv, a, b, bias, multiplier, shift, relu, out_int32, useful_macs, engine="gemm"):
    y = drv.linear(a, b, bias, multiplier, shift, relu=relu, out_int32=out_int32)
    drv.last_run.macs = int(useful_macs)
    drv.last_run.engine = engine
    return y


def _run_conv_engine(drv, x, w, bias, multiplier, shift, *, stride, padding, depthwise, relu, out_int32):
    from sw.compile.conv import compile_conv2d
    base = drv._buffer_base()
    prog = compile_conv2d(drv.cfg, x, w, bias, multiplier, shift, stride=stride, padding=padding,
                          depthwise=depthwise, relu=relu, out_int32=out_int32, base_addr=base,
                          max_ddr_bytes=drv.ddr_bytes - base)
    y = prog.output(drv.run(prog))
    drv.last_run.engine = "conv"
    return y


def _run_depthwise_engine(drv, x, w, bias, multiplier, shift, *, padding, relu):
    from sw.compile.conv import compile_depthwise
    base = drv._buffer_base()
    prog = compile_depthwise(drv.cfg, x, w, bias, multiplier, shift, padding=padding, relu=relu, base_addr=base,
                             max_ddr_bytes=drv.ddr_bytes - base)
    y = prog.output(drv.run(prog))
    drv.last_run.engine = "depthwise"
    return y


def _on_conv_engine(drv, k, stride, padding) -> bool:
    from sw.compile.conv import supported
    return supported(drv.cfg, k, stride, padding) is None


def conv2d(drv, x, w, bias=None, multiplier=None, shift=None, *, stride=1, padding=0, relu=False,
           out_int32=False) -> np.ndarray:
    """Dense conv2d (Cout, Cin, K, K) on int8 (Cin, H, W) -> (Cout, Ho, Wo)."""
    x, w = _int8("x", x, 3), _int8("w", w, 4)
    cin, h, wd = x.shape
    cout, wc, k, k2 = w.shape
    if wc != cin or k != k2:
        raise ConvError(f"weights {w.shape} are not (Cout, Cin={cin}, K, K)")
    if stride < 1 or padding < 0:
        raise ConvError(f"stride {stride} must be >= 1 and padding {padding} >= 0")
    ho, wo = intconv.out_size(h, k, stride, padding), intconv.out_size(wd, k, stride, padding)
    if ho < 1 or wo < 1:
        raise ConvError(f"{k}x{k} kernel with padding {padding} does not fit a {h}x{wd} input")
    if k == 1 and stride == 1 and padding == 0:
        a, engine = x.reshape(cin, h * wd).T, "gemm"
    elif _on_conv_engine(drv, k, stride, padding):
        return _run_conv_engine(drv, x, w, bias, multiplier, shift, stride=stride, padding=padding,
                                depthwise=False, relu=relu, out_int32=out_int32)
    else:
        a, engine = intconv.im2col(x, k, stride, padding).T, "gemm-im2col"
    y = _run(drv, np.ascontiguousarray(a), np.ascontiguousarray(w.reshape(cout, -1).T), bias, multiplier, shift,
             relu, out_int32, cout * ho * wo * cin * k * k, engine)
    return np.ascontiguousarray(y.T).reshape(cout, ho, wo)


def depthwise_conv2d(drv, x, w, bias=None, multiplier=None, shift=None, *, stride=1, padding=0, relu=False,
                     out_int32=False) -> np.ndarray:
    """Depthwise conv2d (C, 1, K, K) on int8 (C, H, W) -> (C, Ho, Wo)."""
    x, w = _int8("x", x, 3), _int8("w", w, 4)
    c, h, wd = x.shape
    if w.shape[0] != c or w.shape[1] != 1 or w.shape[2] != w.shape[3]:
        raise ConvError(f"depthwise weights {w.shape} are not (C={c}, 1, K, K)")
    k = w.shape[2]
    if stride < 1 or padding < 0:
        raise ConvError(f"stride {stride} must be >= 1 and padding {padding} >= 0")
    ho, wo = intconv.out_size(h, k, stride, padding), intconv.out_size(wd, k, stride, padding)
    if ho < 1 or wo < 1:
        raise ConvError(f"{k}x{k} kernel with padding {padding} does not fit a {h}x{wd} input")
    from sw.compile.conv import dw_supported
    if multiplier is not None and shift is not None and dw_supported(drv.cfg, k, stride, padding, wd,
                                                                     out_int32) is None:
        return _run_depthwise_engine(drv, x, w, bias, multiplier, shift, padding=padding, relu=relu)
    if _on_conv_engine(drv, k, stride, padding):
        return _run_conv_engine(drv, x, w, bias, multiplier, shift, stride=stride, padding=padding,
                                depthwise=True, relu=relu, out_int32=out_int32)
    kk = k * k
    b = np.zeros((c * kk, c), np.int8)
    for ch in range(c):
        b[ch * kk:(ch + 1) * kk, ch] = w[ch, 0].reshape(-1)
    a = np.ascontiguousarray(intconv.im2col(x, k, stride, padding).T)
    y = _run(drv, a, b, bias, multiplier, shift, relu, out_int32, c * ho * wo * kk, "gemm-im2col")
    return np.ascontiguousarray(y.T).reshape(c, ho, wo)


def conv_transpose2d(drv, x, w, bias=None, multiplier=None, shift=None, *, stride=2, padding=0, relu=False,
                     out_int32=False) -> np.ndarray:
    """Transposed conv2d (Cin, Cout, K, K) with K == stride and no padding (non-overlapping patches)."""
    x, w = _int8("x", x, 3), _int8("w", w, 4)
    cin, h, wd = x.shape
    if w.shape[0] != cin or w.shape[2] != w.shape[3]:
        raise ConvError(f"weights {w.shape} are not (Cin={cin}, Cout, K, K)")
    cout, k = w.shape[1], w.shape[2]
    if k != stride or padding:
        raise ConvError(f"transposed convolution with kernel {k}, stride {stride}, padding {padding}: the overlay "
                        "runs kernel == stride without padding (non-overlapping patches, SAM 2's 2x2/s2)")
    kk = k * k
    rep = [(_per_channel(v, cout) if v is not None else None) for v in (bias, multiplier, shift)]
    bias, multiplier, shift = [None if v is None else np.repeat(v, kk) for v in rep]
    y = _run(drv, np.ascontiguousarray(x.reshape(cin, h * wd).T), np.ascontiguousarray(w.reshape(cin, cout * kk)),
             bias, multiplier, shift, relu, out_int32, cin * h * wd * cout * kk)
    # (H*W, Cout*K*K) -> (Cout, H, K, W, K): output pixel (y*K + ky, x*K + kx).
    y = y.reshape(h, wd, cout, k, k).transpose(2, 0, 3, 1, 4)
    return np.ascontiguousarray(y).reshape(cout, h * k, wd * k)
