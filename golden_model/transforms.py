"""Image and mask resampling with torch's numerics, in NumPy (float32, NCHW).

* `resize_antialias`: `F.interpolate(x, size, mode="bilinear", align_corners=False,
  antialias=True)` (what torchvision's Resize does to a float tensor). Separable:
  the last axis first, then the rows, as torch does. Each output sample is a
  normalised triangle filter whose support grows with the downscale factor:
      scale = in / out, support = max(scale, 1), centre = scale * (i + 0.5),
      taps j in [trunc(centre - support + 0.5), trunc(centre + support + 0.5)) clipped to the input,
      w_j = max(0, 1 - |j - centre + 0.5| / max(scale, 1)), normalised to sum 1.
  Weights are float32 (with torch's float64 intermediates) and sums run tap by
  tap in torch's order and rounding (see `_apply_taps`), so results are bit-identical.
* `resize_bilinear`: `F.interpolate(x, size, mode="bilinear", align_corners=False)`
  without antialias (SAM 2's mask upsampling): 2 taps per axis at
  src = max(scale * (i + 0.5) - 0.5, 0), blended with fused multiply-adds like torch's kernel.
* `to_tensor` / `normalize`: torchvision's ToTensor (uint8 HWC -> float CHW / 255)
  and Normalize ((x - mean) / std), float32.
"""
from __future__ import annotations

import numpy as np

F32 = np.float32

#: ImageNet statistics SAM 2 normalises with (sam2/utils/transforms.py).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _fma(a, b, c) -> np.ndarray:
    """float32 fused multiply-add (one rounding), as torch's compiled CPU kernels do: the float32
    product is exact in float64 and the float64 sum rounds once more to float32."""
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + np.asarray(c, np.float64)).astype(F32)


def _aa_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first tap index (out,), tap count (out,), weights (out, taps)) of torch's antialiased bilinear
    filter on one axis (aten UpSampleKernel.cpp `_compute_weights_aa`; its double literals promote
    parts of the arithmetic to float64)."""
    scale = F32(in_size) / F32(out_size)
    support = scale if scale >= 1 else F32(1.0)
    invscale = F32(1.0 / np.float64(scale)) if scale >= 1 else F32(1.0)
    centre = (np.float64(scale) * (np.arange(out_size) + 0.5)).astype(F32)
    xmin = np.maximum(np.trunc((centre - support).astype(np.float64) + 0.5).astype(np.int64), 0)
    xmax = np.minimum(np.trunc((centre + support).astype(np.float64) + 0.5).astype(np.int64), in_size)
    xsize = xmax - xmin
    taps = int(xsize.max())
    j = np.arange(taps)
    x = (((j[None, :] + xmin[:, None]).astype(F32) - centre[:, None]).astype(np.float64) + 0.5) * np.float64(invscale)
    w = np.maximum(F32(1.0) - np.abs(x.astype(F32)), F32(0.0)).astype(F32)
    w[j[None, :] >= xsize[:, None]] = 0
    total = np.zeros(out_size, F32)
    for k in range(taps):  # torch sums the weights tap by tap
        total += w[:, k]
    w = np.where(total[:, None] != 0, w / np.where(total == 0, F32(1), total)[:, None], w).astype(F32)
    return xmin, xsize, w


def _apply_taps(x: np.ndarray, axis: int, first: np.ndarray, count: np.ndarray, w: np.ndarray) -> np.ndarray:
    """out[..., i, ...] = sum_k x[..., first[i] + k, ...] * w[i, k], accumulated tap by tap.

    torch's compiled loop (x86-64 build) adds taps 1..4m as separate multiply and add (the loop body
    unrolled by 4) and the remaining taps with fused multiply-adds; reproducing that makes the result
    bit-identical."""
    x = np.moveaxis(x, axis, -1)
    n_in = x.shape[-1]
    out = x[..., np.minimum(first, n_in - 1)] * w[:, 0]
    unrolled = 4 * ((count - 1) // 4)  # taps 1..unrolled: mul + add; the rest: fma
    for k in range(1, w.shape[1]):
        idx = np.minimum(first + k, n_in - 1)  # taps past the edge carry weight 0
        t = x[..., idx]
        out = np.where(k <= unrolled, out + t * w[:, k], _fma(t, w[:, k], out))
    return np.moveaxis(out, -1, axis)


def resize_antialias(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """torch F.interpolate(bilinear, align_corners=False, antialias=True) of NCHW float32 to size (h, w)."""
    x = np.asarray(x, F32)
    h, w = int(size[0]), int(size[1])
    if x.shape[-1] != w:
        x = _apply_taps(x, x.ndim - 1, *_aa_taps(x.shape[-1], w))
    if x.shape[-2] != h:
        x = _apply_taps(x, x.ndim - 2, *_aa_taps(x.shape[-2], h))
    return np.ascontiguousarray(x)


def _linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1, w0, w1) of torch's bilinear (align_corners=False) source positions on one axis:
    src = max(fma(scale, i + 0.5, -0.5), 0)."""
    scale = F32(in_size) / F32(out_size)
    src = np.maximum(_fma(scale, np.arange(out_size, dtype=F32) + F32(0.5), F32(-0.5)), F32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lam = np.clip(src - i0.astype(F32), F32(0.0), F32(1.0)).astype(F32)
    i1 = np.where(i0 < in_size - 1, i0 + 1, i0)
    return i0, i1, F32(1.0) - lam, lam


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """torch F.interpolate(bilinear, align_corners=False) (no antialias) of NCHW float32 to size (h, w):
    rows r = fma(a, ww0, b * ww1), then out = fma(r_top, wh0, r_bottom * wh1), as torch's CPU kernel with two or
    more intra-op threads (with one, torch 2.13 runs another kernel for some channel counts, e.g. 3, which
    differs in the last bit of some values)."""
    x = np.asarray(x, F32)
    h0, h1, a0, a1 = _linear_taps(x.shape[-2], int(size[0]))
    w0, w1, b0, b1 = _linear_taps(x.shape[-1], int(size[1]))
    rows0, rows1 = x[..., h0, :], x[..., h1, :]
    top = _fma(rows0[..., w0], b0, rows0[..., w1] * b1)
    bottom = _fma(rows1[..., w0], b0, rows1[..., w1] * b1)
    return np.ascontiguousarray(_fma(top, a0[:, None], bottom * a1[:, None]))


def to_tensor(image: np.ndarray) -> np.ndarray:
    """torchvision ToTensor on a uint8 HWC RGB array: (3, H, W) float32 in [0, 1]."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 RGB of shape (H, W, 3), got {image.dtype} {image.shape}")
    return image.transpose(2, 0, 1).astype(F32) / F32(255)


def normalize(x: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """torchvision Normalize on (..., C, H, W): (x - mean) / std per channel, float32."""
    m = np.asarray(mean, F32)[:, None, None]
    s = np.asarray(std, F32)[:, None, None]
    return ((x - m) / s).astype(F32, copy=False)


#: PIL modes holding one 16-bit (or wider integer) channel: Image.convert("RGB") would clip them at 255.
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def rgb8(img) -> np.ndarray:
    """A PIL image as uint8 RGB (H, W, 3). 16-bit greyscale is scaled to 8 bits (round(v * 255 / 65535)),
    not clipped as Image.convert("RGB") does (a 16-bit scan would come out almost white); 16-bit RGB
    PNGs already open as 8-bit RGB. Float images and integers outside 0..65535 raise ValueError."""
    if img.mode in WIDE_GREY_MODES:
        v = np.asarray(img).astype(np.int64)
        if v.size and (v.min() < 0 or v.max() > 65535):
            raise ValueError(f"{img.mode} image with values {v.min()}..{v.max()}: only 8- and 16-bit images "
                             "are supported")
        grey = ((v * 255 + 32767) // 65535).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if img.mode == "F":
        raise ValueError("floating-point (mode F) images are not supported: save it as an 8- or 16-bit image")
    return np.asarray(img.convert("RGB"))
