"""Driver convolution ops on the sim, pynq and rtl backends: bit-identical to golden_model.intconv."""
import numpy as np
import pytest

from golden_model import intconv
from hw.config import preset
from sw.compile.routes import ConvError
from sw.runtime.driver import Driver

SIM = preset("sim")


def params(rng, n):
    bias = rng.integers(-2**16, 2**16, n)
    bias[0] = -2**31
    return bias, rng.integers(1 << 29, 1 << 31, n), rng.integers(36, 44, n)


def rand8(rng, shape):
    x = rng.integers(-128, 128, shape).astype(np.int8)
    x.reshape(-1)[:2] = (-128, 127)
    return x


def case(kind, cin, h, w, cout, k, stride, padding, seed=0):
    rng = np.random.default_rng(seed + cin + h * 7 + k)
    x = rand8(rng, (cin, h, w))
    if kind == "dense":
        wt = rand8(rng, (cout, cin, k, k))
    elif kind == "depthwise":
        wt = rand8(rng, (cin, 1, k, k))
        cout = cin
    else:
        wt = rand8(rng, (cin, cout, k, k))
    return x, wt, *params(rng, cout)


def golden(kind, x, wt, bias, mult, shift, stride, padding, relu, out_int32):
    kw = dict(stride=stride, padding=padding, relu=relu, out_int32=out_int32)
    fn = {"dense": intconv.conv2d, "depthwise": intconv.depthwise_conv2d,
          "transposed": intconv.conv_transpose2d}[kind]
    return fn(x, wt, bias, mult, shift, **kw)


def run(drv, kind, x, wt, bias, mult, shift, stride, padding, relu, out_int32):
    fn = {"dense": drv.conv2d, "depthwise": drv.depthwise_conv2d, "transposed": drv.conv_transpose2d}[kind]
    return fn(x, wt, bias, mult, shift, stride=stride, padding=padding, relu=relu, out_int32=out_int32)


CASES = [  # kind, cin, h, w, cout, k, stride, padding, relu, out_int32
    ("dense", 3, 19, 13, 10, 7, 4, 3, False, False),      # patch-embed class, odd sizes
    ("dense", 1, 16, 16, 4, 3, 2, 1, True, False),        # mask downsampler's first conv
    ("dense", 4, 9, 7, 16, 3, 2, 1, False, True),
    ("dense", 12, 5, 6, 9, 1, 1, 0, True, False),         # 1x1: straight GEMM
    ("depthwise", 9, 8, 7, 9, 7, 1, 3, False, False),     # CXBlock dwconv class
    ("depthwise", 5, 9, 9, 5, 3, 2, 1, True, True),
    ("transposed", 10, 3, 5, 6, 2, 2, 0, False, False),   # mask decoder upscaling
    ("transposed", 4, 4, 4, 3, 4, 4, 0, True, True),
]


@pytest.mark.parametrize("kind,cin,h,w,cout,k,stride,padding,relu,out_int32", CASES)
def test_on_sim_bit_exact(kind, cin, h, w, cout, k, stride, padding, relu, out_int32):
    x, wt, bias, mult, shift = case(kind, cin, h, w, cout, k, stride, padding)
    drv = Driver(SIM, "sim")
    got = run(drv, kind, x, wt, bias, mult, shift, stride, padding, relu, out_int32)
    want = golden(kind, x, wt, bias, mult, shift, stride, padding, relu, out_int32)
    assert got.dtype == want.dtype and np.array_equal(got, want)
    assert 0 < drv.last_run.utilisation <= 1
    dw_engine = kind == "depthwise" and stride == 1 and padding == (k - 1) // 2 and not out_int32
    assert drv.last_run.engine == ("gemm" if kind == "transposed" or k == 1 else
                                   "depthwise" if dw_engine else "conv")


@pytest.mark.parametrize("kind,cin,h,w,cout,k,stride,padding,relu,out_int32", [
    ("dense", 3, 19, 13, 10, 7, 4, 3, False, False), ("depthwise", 5, 9, 9, 5, 3, 2, 1, True, True),
    ("dense", 2, 11, 10, 3, 3, 3, 1, False, False), ("dense", 2, 6, 6, 3, 3, 1, 4, True, False)])
def test_gemm_im2col_fallback_bit_exact(kind, cin, h, w, cout, k, stride, padding, relu, out_int32):
    """Overlays without the conv engine, and strides/paddings it does not take, run on the GEMM engine."""
    x, wt, bias, mult, shift = case(kind, cin, h, w, cout, k, stride, padding)
    cfg = SIM.replace(engines=("gemm",)) if stride in (1, 2, 4) and padding <= 3 else SIM
    drv = Driver(cfg, "sim")
    got = run(drv, kind, x, wt, bias, mult, shift, stride, padding, relu, out_int32)
    assert np.array_equal(got, golden(kind, x, wt, bias, mult, shift, stride, padding, relu, out_int32))
    assert drv.last_run.engine == "gemm-im2col"


def test_pynq_backend_bit_exact():
    pytest.importorskip("pynq")
    drv = Driver(SIM, "pynq")
    for kind, cin, h, w, cout, k, stride, padding, relu, out_int32 in (CASES[1], CASES[4], CASES[6]):
        x, wt, bias, mult, shift = case(kind, cin, h, w, cout, k, stride, padding, seed=5)
        got = run(drv, kind, x, wt, bias, mult, shift, stride, padding, relu, out_int32)
        assert np.array_equal(got, golden(kind, x, wt, bias, mult, shift, stride, padding, relu, out_int32))


@pytest.mark.rtl
def test_rtl_backend_bit_exact():
    drv = Driver(SIM, "rtl", stall=0.2)
    for kind, cin, h, w, cout, k, stride, padding, relu, out_int32 in (
            ("dense", 2, 7, 9, 5, 3, 2, 1, True, False), ("depthwise", 3, 5, 6, 3, 3, 1, 1, False, False),
            ("transposed", 5, 3, 2, 4, 2, 2, 0, False, True)):
        x, wt, bias, mult, shift = case(kind, cin, h, w, cout, k, stride, padding, seed=9)
        got = run(drv, kind, x, wt, bias, mult, shift, stride, padding, relu, out_int32)
        assert np.array_equal(got, golden(kind, x, wt, bias, mult, shift, stride, padding, relu, out_int32)), kind


@pytest.mark.parametrize("call,match", [
    (lambda d: d.conv2d(np.zeros((3, 8, 8), np.int8), np.zeros((4, 2, 3, 3), np.int8), out_int32=True), "Cin=3"),
    (lambda d: d.conv2d(np.zeros((3, 2, 2), np.int8), np.zeros((4, 3, 5, 5), np.int8), out_int32=True),
     "does not fit"),
    (lambda d: d.conv2d(np.zeros((3, 8, 8), np.float32), np.zeros((4, 3, 3, 3), np.int8)), "int8"),
    (lambda d: d.conv_transpose2d(np.zeros((3, 4, 4), np.int8), np.zeros((3, 2, 3, 3), np.int8), stride=2,
                                  out_int32=True), "kernel == stride"),
    (lambda d: d.depthwise_conv2d(np.zeros((3, 8, 8), np.int8), np.zeros((3, 2, 3, 3), np.int8)), "depthwise"),
])
def test_bad_convolutions_are_refused(call, match):
    with pytest.raises(ConvError, match=match):
        call(Driver(SIM, "sim"))
