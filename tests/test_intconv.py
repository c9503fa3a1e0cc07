"""Golden integer convolutions against torch.nn.functional on integer-valued tensors."""
import numpy as np
import pytest

from golden_model import intconv
from golden_model.intops import gemm

torch = pytest.importorskip("torch")
F = torch.nn.functional


def rand8(rng, shape, extremes=True):
    x = rng.integers(-128, 128, shape).astype(np.int8)
    if extremes:
        x.reshape(-1)[:3] = (-128, 127, -128)
    return x


def t64(a):
    return torch.from_numpy(np.asarray(a, np.float64))


CONV_CASES = [  # cin, h, w, cout, k, stride, padding, groups
    (3, 17, 23, 5, 7, 4, 3, 1),      # patch-embed shape class, odd sizes
    (1, 16, 16, 4, 3, 2, 1, 1),      # mask downsampler
    (4, 9, 11, 8, 3, 2, 1, 1),
    (6, 8, 8, 6, 7, 1, 3, 6),        # depthwise 7x7
    (5, 13, 7, 5, 3, 1, 1, 5),
    (8, 6, 5, 3, 1, 1, 0, 1),        # 1x1
    (4, 10, 12, 6, 5, 1, 0, 2),      # grouped
    (2, 9, 9, 3, 4, 4, 0, 1),        # kernel = stride
    (3, 5, 5, 2, 2, 1, 2, 1),        # padding wider than half the kernel
]


@pytest.mark.parametrize("cin,h,w,cout,k,stride,padding,groups", CONV_CASES)
def test_conv2d_acc_equals_torch(cin, h, w, cout, k, stride, padding, groups):
    rng = np.random.default_rng(cin * 100 + h + k)
    x = rand8(rng, (cin, h, w))
    wt = rand8(rng, (cout, cin // groups, k, k))
    want = F.conv2d(t64(x)[None], t64(wt), stride=stride, padding=padding, groups=groups)[0].numpy()
    got = intconv.conv2d_acc(x, wt, stride=stride, padding=padding, groups=groups)
    assert got.shape == want.shape and np.array_equal(got, want.astype(np.int64))


@pytest.mark.parametrize("cin,h,w,cout,k,stride,padding", [
    (8, 5, 7, 4, 2, 2, 0),     # the mask decoder's upscaling
    (3, 4, 4, 2, 3, 2, 1), (2, 3, 6, 3, 4, 2, 1), (4, 1, 1, 2, 2, 2, 0), (1, 5, 3, 2, 3, 1, 0),
])
def test_conv_transpose2d_acc_equals_torch(cin, h, w, cout, k, stride, padding):
    rng = np.random.default_rng(cin * 10 + k)
    x = rand8(rng, (cin, h, w))
    wt = rand8(rng, (cin, cout, k, k))
    want = F.conv_transpose2d(t64(x)[None], t64(wt), stride=stride, padding=padding)[0].numpy()
    got = intconv.conv_transpose2d_acc(x, wt, stride=stride, padding=padding)
    assert got.shape == want.shape and np.array_equal(got, want.astype(np.int64))


def test_requantisation_is_the_gemm_engines():
    """Per output channel bias/multiplier/shift, exactly as gemm does per column."""
    rng = np.random.default_rng(3)
    x, wt = rand8(rng, (4, 9, 9)), rand8(rng, (6, 4, 3, 3))
    bias = rng.integers(-2**20, 2**20, 6)
    bias[0] = -2**31
    mult, shift = rng.integers(1 << 29, 1 << 31, 6), rng.integers(34, 42, 6)
    for relu in (False, True):
        for out_int32 in (False, True):
            got = intconv.conv2d(x, wt, bias, mult, shift, stride=2, padding=1, relu=relu, out_int32=out_int32)
            cols = intconv.im2col(x, 3, 2, 1)
            want = gemm(cols.T, wt.reshape(6, -1).T, bias, mult, shift, relu=relu, out_int32=out_int32)
            assert np.array_equal(got.reshape(6, -1).T, want)
            assert got.dtype == (np.int32 if out_int32 else np.int8)
    dw = intconv.depthwise_conv2d(x, rand8(rng, (4, 1, 7, 7)), None, 1 << 30, 38, padding=3)
    assert dw.shape == (4, 9, 9) and dw.dtype == np.int8


@pytest.mark.parametrize("call,match", [
    (lambda: intconv.conv2d_acc(np.zeros((3, 8, 8), np.int16), np.zeros((1, 3, 3, 3), np.int8)), "int8"),
    (lambda: intconv.conv2d_acc(np.zeros((3, 8, 8), np.int8), np.zeros((1, 2, 3, 3), np.int8)), "groups"),
    (lambda: intconv.conv2d_acc(np.zeros((3, 2, 2), np.int8), np.zeros((1, 3, 5, 5), np.int8)), "does not fit"),
    (lambda: intconv.conv2d_acc(np.zeros((3, 8, 8), np.int8), np.zeros((1, 3, 3, 3), np.int8), stride=0), "stride"),
    (lambda: intconv.conv2d(np.zeros((1, 4, 4), np.int8), np.zeros((1, 1, 3, 3), np.int8)), "multiplier"),
    (lambda: intconv.conv_transpose2d_acc(np.zeros((3, 4, 4), np.int8), np.zeros((2, 3, 2, 2), np.int8)), "Cin"),
])
def test_bad_input_is_refused(call, match):
    with pytest.raises(ValueError, match=match):
        call()
