"""golden_model.nn building blocks against torch.nn.functional (and float64 math where torch is itself approximate)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from golden_model import nn

torch = pytest.importorskip("torch")
F = torch.nn.functional
rng = np.random.default_rng(0)


def randn(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def test_gelu_matches_exact_erf_at_float32_resolution():
    from scipy.special import erf
    x = randn(200_003, scale=4.0)   # odd size: a partial last chunk
    x[:12] = [0, -0.0, 1e-30, -1e-30, 10, -10, 40, -40, 3.4e38, -3.4e38, 1e-5, -1e-5]
    exact = 0.5 * x.astype(np.float64) * (1 + erf(x.astype(np.float64) / math.sqrt(2)))
    ours = nn.gelu(x)
    assert ours.dtype == np.float32 and np.isfinite(ours).all()
    err = np.abs(ours - exact) / np.maximum(1.0, np.abs(x))
    assert err.max() < 5e-7
    theirs = F.gelu(torch.from_numpy(x[12:])).numpy()    # torch's own float32 error is of the same order
    assert np.abs(ours[12:] - theirs).max() < 3e-6
    assert np.isnan(nn.gelu(np.array([np.nan], np.float32))).all()


def test_gelu_in_place_and_copy():
    x = randn(5, 7)
    y = nn.gelu(x)
    assert not np.shares_memory(x, y)
    z = x.copy()
    assert nn.gelu_(z) is z and np.array_equal(z, y)
    xt = x.T                                   # non-contiguous: falls back to a copy
    assert np.array_equal(nn.gelu_(xt), y.T)
    x64 = x.astype(np.float64)
    assert np.abs(nn.gelu(x64) - F.gelu(torch.from_numpy(x64)).numpy()).max() < 1e-12


@pytest.mark.parametrize("qs,ks,block", [
    ((2, 3, 17, 8), (2, 3, 29, 8), 1 << 16),       # several small matrices per block
    ((1, 2, 700, 16), (1, 2, 300, 16), 1 << 12),   # query blocks of one matrix, ragged last block
    ((5, 1, 64, 32), (5, 1, 64, 32), 64 * 64 * 2), # group split with a ragged last group
    ((3, 4, 1, 8), (3, 4, 6, 8), 1 << 16),
])
def test_attention_matches_sdpa(qs, ks, block):
    q, k, v = randn(*qs, scale=3), randn(*ks, scale=3), randn(*ks)
    ref = F.scaled_dot_product_attention(*map(torch.from_numpy, (q, k, v))).numpy()
    out = nn.attention(q, k, v, block_scores=block)
    assert out.shape == ref.shape and out.dtype == np.float32
    assert np.abs(out - ref).max() < 2e-5


def test_attention_strided_inputs_and_large_scores():
    qkv = randn(2, 40, 3, 2, 8, scale=30)          # scores ~1e4: softmax must subtract the max
    q, k, v = (qkv[:, :, i].transpose(0, 2, 1, 3) for i in range(3))
    ref = F.scaled_dot_product_attention(*(torch.from_numpy(np.ascontiguousarray(t)) for t in (q, k, v))).numpy()
    out = nn.attention(q, k, v)
    assert np.isfinite(out).all() and np.abs(out - ref).max() < 1e-4 * np.abs(ref).max()


@pytest.mark.parametrize("h,w", [(8, 8), (7, 9), (3, 5)])
def test_max_pool2d_nhwc(h, w):
    x = randn(2, h, w, 5)
    ref = F.max_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), 2, 2).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(nn.max_pool2d_nhwc(x, (2, 2)), ref)


def test_upsample_nearest2x():
    x = randn(2, 3, 5, 4)
    ref = F.interpolate(torch.from_numpy(x), scale_factor=2.0, mode="nearest").numpy()
    assert np.array_equal(nn.upsample_nearest2x(x), ref)


@pytest.mark.parametrize("src,dst", [((7, 7), (256, 256)), ((14, 14), (64, 64)), ((7, 7), (16, 16)),
                                     ((5, 9), (12, 7)), ((16, 16), (8, 8))])
def test_interpolate_bicubic(src, dst):
    x = randn(1, 4, *src)
    ref = F.interpolate(torch.from_numpy(x), size=dst, mode="bicubic", align_corners=False).numpy()
    out = nn.interpolate_bicubic(x, dst)
    assert out.shape == ref.shape and np.abs(out - ref).max() < 2e-6 * max(1.0, np.abs(ref).max())


@pytest.mark.parametrize("stride,padding,size", [(4, 3, 64), (4, 3, 30), (1, 1, 9), (2, 0, 11)])
def test_conv2d_nhwc_out(stride, padding, size):
    x, wt, b = randn(2, 3, size, size), randn(6, 3, 7, 7, scale=0.2), randn(6)
    ref = F.conv2d(*map(torch.from_numpy, (x, wt, b)), stride=stride, padding=padding).permute(0, 2, 3, 1).numpy()
    out = nn.conv2d_nhwc_out(x, wt, b, stride=stride, padding=padding)
    assert out.shape == ref.shape and np.abs(out - ref).max() < 1e-5
    assert np.abs(nn.conv2d(x, wt, b, stride, padding) - ref.transpose(0, 3, 1, 2)).max() < 1e-5


def test_linear_on_batched_and_strided_inputs():
    w, b = randn(7, 5), randn(7)
    for x in (randn(2, 3, 4, 5), randn(2, 5, 3, 4).transpose(0, 2, 3, 1), randn(5)):
        ref = F.linear(*map(lambda a: torch.from_numpy(np.ascontiguousarray(a)), (x, w, b))).numpy()
        assert np.abs(nn.linear(x, w, b) - ref).max() < 1e-5


@pytest.mark.parametrize("shape,eps", [((2, 9, 11, 96), 1e-6), ((7, 256), 1e-5), ((5,), 1e-5)])
def test_layer_norm(shape, eps):
    x, w, b = randn(*shape, scale=3) + 2, randn(shape[-1]), randn(shape[-1])
    ref = F.layer_norm(*map(torch.from_numpy, (x,)), shape[-1:], torch.from_numpy(w), torch.from_numpy(b), eps).numpy()
    out = nn.layer_norm(x, w, b, eps)
    assert out.dtype == np.float32 and np.abs(out - ref).max() < 1e-5
    assert np.abs(nn.layer_norm(x.swapaxes(0, -1).swapaxes(0, -1), w, b, eps) - ref).max() < 1e-5
