"""The integer interpreter: what the overlay computes for every node of a QuantModel, bit for bit.

    runner = IntRunner(qm)
    predictor = GraphPredictor(qm.graph, runner)

Engines: linear -> intops.gemm; conv / depthwise / conv_transpose -> golden_model.intconv (channels
first inside, channels-last in the graph); attention -> intattn.attention with the overlay's key
tile; element-wise -> golden_model.intvec; layout ops move int8 values (zero padding = real 0).
Host ops run in float32 on dequantised inputs and quantise what they hand back (round half to
even, clamp); nodes the builder put on the host (attrs host=True: the decoder's token stream) run
the float op table on their float32 constants. The mask product is the GEMM engine with int32
output: the host quantises the hypernetwork rows per row (symmetric int8) and dequantises the int32
logits (minus the zero point's share when the upscaled embedding is asymmetric, see quantize.py).
"""
from __future__ import annotations

import numpy as np

from golden_model import intconv, intops, intvec
from golden_model.intattn import AttentionQuant, attention
from golden_model.quant.interpret import (FLOAT_OPS, Runner, host_mlp, merge_heads, nchw_to_nhwc, nhwc_to_nchw,
                                          prompt_tokens, split_heads, window_partition_op, window_unpartition_op)
from golden_model.quant.quantize import QuantModel, dequantize_tensor, quantize_tensor, weight_scales

F32 = np.float32
LINEAR_CHUNK = 1 << 18      # output elements per row block of the fast linear (speed only: temporaries in cache)


def _requant_args(r, n):
    p = r.params[n.name]
    return p["multiplier"], p["shift"]


def _linear(n, a, r):
    """intops.gemm, bit for bit, faster: the int8 products as float32 BLAS on K chunks of
    intops.F32_EXACT_K (every partial sum an exact float32 integer, the chunks summed exactly in
    float64: |acc| <= K 2^14 < 2^53) and the sim's exact output stage (golden_model.intops.OutputStage:
    the saturating bias add and requantiser, in float64 where its bound proves it exact; tests hold it
    equal to intops on adversarial data), in row blocks of LINEAR_CHUNK outputs."""
    x, w, b = a
    k = x.shape[-1]
    if k > intops.MAX_K:
        raise ValueError(f"{n.name}: K={k} exceeds {intops.MAX_K}, where int32 accumulation could overflow")
    wt = r.cached(("linear_w", n.name), lambda: np.ascontiguousarray(w.reshape(w.shape[0], -1).T, F32))
    stage = r.cached(("linear_out", n.name),
                     lambda: intops.OutputStage(b, *_requant_args(r, n), n.attrs.get("relu", False), False, k << 14))
    x2 = x.reshape(-1, k)
    n_out = wt.shape[1]
    out = np.empty((x2.shape[0], n_out), np.int8)
    rows = max(1, LINEAR_CHUNK // n_out)
    for r0 in range(0, x2.shape[0], rows):      # row blocks: the float64 temporaries stay in cache
        out[r0:r0 + rows] = stage(intops.exact_f32_matmul(x2[r0:r0 + rows].astype(F32), wt))
    return out.reshape(x.shape[:-1] + (n_out,))


def _conv(n, a, r):
    x, w, b = a
    m, s = _requant_args(r, n)
    groups = w.shape[0] if n.op == "depthwise" else 1
    ys = [intconv.conv2d(xi, w, b, m, s, stride=n.attrs["stride"], padding=n.attrs["padding"], groups=groups)
          for xi in nhwc_to_nchw(x)]
    return nchw_to_nhwc(np.stack(ys))


def _conv_transpose(n, a, r):
    x, w, b = a
    m, s = _requant_args(r, n)
    ys = [intconv.conv_transpose2d(xi, w, b, m, s, stride=n.attrs["stride"]) for xi in nhwc_to_nchw(x)]
    return nchw_to_nhwc(np.stack(ys))


def _attention(n, a, r):
    q, k, v = a
    h = n.attrs["heads"]
    quant = r.cached(("attn", n.name), lambda: AttentionQuant(*(int(v) for v in r.params[n.name]["quant"])))
    o = attention(np.ascontiguousarray(split_heads(q, h)), np.ascontiguousarray(split_heads(k, h)),
                  np.ascontiguousarray(split_heads(v, h)), quant, r.key_tile)
    return merge_heads(o, q.shape)


def _vec_params(r, n, cls_name):
    return r.cached(("vec", n.name), lambda: getattr(intvec, cls_name).from_arrays(
        {k: v for k, v in r.params[n.name].items() if k != "b_scale"}))


def _layernorm(n, a, r):
    return intvec.layernorm(a[0], _vec_params(r, n, "LayerNormParams"))


def _gelu(n, a, r):
    return intvec.lut(a[0], _vec_params(r, n, "LutParams"))


def _add(n, a, r):
    return intvec.add(a[0], a[1], _vec_params(r, n, "AddParams"))


def _rescale(n, a, r):
    return intvec.rescale(a[0], _vec_params(r, n, "RescaleParams"))


def _quantize(n, a, r):
    spec = r.graph.tensors[n.outputs[0]]
    return quantize_tensor(a[0], r.scale(spec.name), spec.zero_point)


def _dequantize(n, a, r):
    r.scale(n.inputs[0])
    return dequantize_tensor(a[0], r.graph.tensors[n.inputs[0]]).astype(F32)


def _gemm_int32(a, b):
    return intops.gemm(a, b, out_int32=True)


def _mask_product(n, a, r, gemm=_gemm_int32):
    """`gemm(a, b)` -> int32 a @ b: the GEMM engine's int32-output product (sw.runtime.graph_exec passes
    the overlay's)."""
    x = a[0]
    hyper = np.concatenate([np.asarray(h, np.float64).reshape(1, -1) for h in a[1:]], axis=0)   # (M, c)
    hs = weight_scales(hyper, 0)
    hq = np.clip(np.rint(hyper / hs[:, None]), -127, 127).astype(np.int8)
    b, hh, ww, c = x.shape
    acc = gemm(x.reshape(-1, c), np.ascontiguousarray(hq.T)).astype(np.int64)           # (HW, M) int32
    zp = r.graph.tensors[n.inputs[0]].zero_point       # real x = s (q - zp): subtract zp * row sums
    acc -= zp * hq.astype(np.int64).sum(axis=1)[None, :]
    logits = acc.astype(np.float64) * (hs[None, :] * r.scale(n.inputs[0]))
    return logits.T.reshape(1, -1, hh, ww).astype(F32)


INT_OPS = {
    "linear": _linear, "conv": _conv, "depthwise": _conv, "conv_transpose": _conv_transpose,
    "attention": _attention,
    "layernorm": _layernorm, "gelu": _gelu, "add": _add, "rescale": _rescale,
    "maxpool2x2": lambda n, a, r: intvec.maxpool2x2(a[0]),
    "upsample2x": lambda n, a, r: intvec.upsample_nearest2x(a[0]),
    "window_partition": lambda n, a, r: window_partition_op(n, a[0]),
    "window_unpartition": lambda n, a, r: window_unpartition_op(n, a[0], r.graph.tensors[n.outputs[0]].shape),
    "quantize": _quantize, "dequantize": _dequantize,
    "prompt_encoder": prompt_tokens, "mlp": host_mlp, "mask_product": _mask_product,
}


class IntRunner(Runner):
    OPS = INT_OPS

    def __init__(self, qm: QuantModel):
        super().__init__(qm.graph)
        self.params = qm.params
        self.key_tile = qm.key_tile

    def op_fn(self, node):
        return FLOAT_OPS[node.op] if node.attrs.get("host") else INT_OPS[node.op]

    def scale(self, tensor: str) -> float:
        s = self.graph.tensors[tensor].scale
        if s is None:
            raise ValueError(f"tensor {tensor!r} has no scale: the graph is not quantised")
        return s
