"""Integer element-wise ops (golden_model.intvec) against their float ops: error and host speed.

`python -m benchmarks intvec`. Inputs are synthetic activations (normal, a mean offset, every 7th
channel 4x larger: LayerNorm's outlier channels) at SAM 2 tiny's 1024x1024 sizes; scales are the
max-abs calibration of each tensor. Two errors per op, in output LSB: `own_err` against the float
op on the dequantised int8 input (what the integer op adds), `e2e_err` against the float op on the
float input (plus the input's own quantisation). Speed: the integer op on int8 against the float
op (golden_model.nn) on float32, best of 3 in the same run.
"""
from __future__ import annotations


import numpy as np

from benchmarks.common import best, report
from golden_model import intvec as V
from golden_model import nn
from golden_model.memory_attention import apply_rope, axial_rope


def activations(rng, shape, offset=0.3):
    x = rng.normal(offset, 1.0, shape).astype(np.float32)
    x[..., ::7] *= 4
    return x


def scale_of(x) -> float:
    return float(np.abs(x).max()) / 127


def quantise(x, s):
    return np.clip(np.floor(x / s + 0.5), -128, 127).astype(np.int8)


def errors(y, ref_own, ref_e2e, s_out):
    """max and mean |error| in output LSB against the two float references (saturated like int8)."""
    y = y.astype(np.float64)
    own = np.abs(y - np.clip(ref_own / s_out, -128, 127))
    e2e = np.abs(y - np.clip(ref_e2e / s_out, -128, 127))
    return {"own_err_max": float(own.max()), "own_err_mean": float(own.mean()),
            "e2e_err_max": float(e2e.max()), "e2e_err_mean": float(e2e.mean())}


def row(op, shape, t_int, t_float, errs):
    return {"op": op, "shape": "x".join(map(str, shape)), **errs, "int_ms": 1e3 * t_int,
            "float_ms": 1e3 * t_float, "int/float": t_int / t_float}


def bench_layernorm(rng, rows_, d, eps):
    x = activations(rng, (rows_, d))
    gamma = rng.normal(1, 0.3, d).astype(np.float32)
    beta = rng.normal(0, 0.3, d).astype(np.float32)
    sx = scale_of(x)
    q = quantise(x, sx)
    xd = q.astype(np.float32) * np.float32(sx)
    ref_own = nn.layer_norm(xd, gamma, beta, eps)
    ref_e2e = nn.layer_norm(x, gamma, beta, eps)
    sy = scale_of(ref_e2e)
    p = V.LayerNormParams.make(gamma, beta, sx, sy, eps)
    y = V.layernorm(q, p)
    return row(f"layernorm eps={eps:g}", x.shape, best(lambda: V.layernorm(q, p)),
               best(lambda: nn.layer_norm(xd, gamma, beta, eps)), errors(y, ref_own, ref_e2e, sy))


def bench_gelu(rng, shape):
    x = rng.normal(0, 1.5, shape).astype(np.float32)
    sx = scale_of(x)
    q = quantise(x, sx)
    xd = q.astype(np.float32) * np.float32(sx)
    ref_e2e = nn.gelu(x)
    sy = scale_of(ref_e2e)
    p = V.LutParams.gelu(sx, sy)
    return row("lut gelu", shape, best(lambda: V.lut(q, p)), best(lambda: nn.gelu(xd)),
               errors(V.lut(q, p), nn.gelu(xd), ref_e2e, sy))


def bench_add(rng, shape, b_shape):
    a, b = activations(rng, shape), activations(rng, b_shape, 0.0) * np.float32(0.3)
    sa, sb = scale_of(a), scale_of(b)
    qa, qb = quantise(a, sa), quantise(b, sb)
    ad, bd = qa.astype(np.float32) * np.float32(sa), qb.astype(np.float32) * np.float32(sb)
    ref_e2e = a + b
    so = scale_of(ref_e2e)
    p = V.AddParams.make(sa, sb, so)
    name = "add" if b_shape == shape else f"add, b {'x'.join(map(str, b_shape))}"
    return row(name, shape, best(lambda: V.add(qa, qb, p)), best(lambda: ad + bd),
               errors(V.add(qa, qb, p), ad + bd, ref_e2e, so))


def bench_rescale(rng, shape):
    x = activations(rng, shape)
    sx = scale_of(x)
    q = quantise(x, sx)
    xd = q.astype(np.float32) * np.float32(sx)
    so = sx * 1.37
    p = V.RescaleParams.make(sx, so)
    return row("rescale x1/1.37", shape, best(lambda: V.rescale(q, p)),
               best(lambda: xd * np.float32(1 / 1.37)), errors(V.rescale(q, p), xd, x, so))


def bench_rope(rng, frames):
    cos, sin = axial_rope(256, 64, 64)
    x = rng.normal(0, 1.0, (frames * 4096, 256)).astype(np.float32)
    sx = scale_of(x)
    q = quantise(x, sx)
    xd = q.astype(np.float32) * np.float32(sx)
    ref_e2e = apply_rope(x, cos, sin)
    so = scale_of(ref_e2e)
    p = V.RopeParams.make(cos, sin, sx, so)
    return row(f"rope ({frames} frame{'s' if frames > 1 else ''})", x.shape, best(lambda: V.rope(q, p)),
               best(lambda: apply_rope(xd, cos, sin)), errors(V.rope(q, p), apply_rope(xd, cos, sin), ref_e2e, so))


def bench_exact(rng, name, shape, int_fn, float_fn, check):
    q = rng.integers(-128, 128, shape).astype(np.int8)
    xf = q.astype(np.float32)
    if not check(int_fn(q), float_fn(xf)):
        raise AssertionError(f"{name} differs from its float op")
    return row(name, shape, best(lambda: int_fn(q)), best(lambda: float_fn(xf)),
               {"own_err_max": 0.0, "own_err_mean": 0.0, "e2e_err_max": 0.0, "e2e_err_mean": 0.0})


def run() -> None:
    rng = np.random.default_rng(0)
    rows = [bench_layernorm(rng, 65536, 96, 1e-6), bench_layernorm(rng, 16384, 192, 1e-6),
            bench_layernorm(rng, 4096, 256, 1e-5), bench_layernorm(rng, 1024, 768, 1e-6),
            bench_gelu(rng, (16384, 768)), bench_add(rng, (65536, 96), (65536, 96)),
            bench_add(rng, (4, 256, 256, 96), (256, 256, 96)), bench_rescale(rng, (65536, 96)),
            bench_rope(rng, 1), bench_rope(rng, 7),
            bench_exact(rng, "maxpool2x2", (1, 256, 256, 192), V.maxpool2x2, lambda x: nn.max_pool2d_nhwc(x, (2, 2)),
                        np.array_equal),
            bench_exact(rng, "upsample_nearest2x", (1, 128, 128, 256), V.upsample_nearest2x,
                        lambda x: nn.upsample_nearest2x(x.transpose(0, 3, 1, 2)),
                        lambda y, f: np.array_equal(y, f.transpose(0, 2, 3, 1)))]
    report("intvec", rows, notes="int8 element-wise ops vs float (errors in output LSB; own = vs float on the "
                                 "dequantised input, e2e = vs float on the float input); speed vs golden_model.nn")


if __name__ == "__main__":
    run()
