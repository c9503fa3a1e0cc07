"""Calibration and quantisation of the SAM 2 graph.

    stats = calibrate(graph, images)                                 # float run, every int8 tensor observed
    qm = quantize(graph, stats, estimator="percentile", key_tile=32)  # -> QuantModel (integer graph + parameters)

Scheme (issue 13; docs/quantisation.md says why):
  * weights: symmetric int8 per output channel, scale max|w_row| / 127; biases int32 at
    scale s_x * s_w[n] (saturated);
  * activations: int8 per tensor, symmetric, scale = estimate / 127 where the estimate of
    |x| comes from the calibration set by `estimator`:
      max         the largest |x| seen,
      percentile  the PERCENTILE-th percentile of |x| (outliers clipped),
      mse         the clip c minimising the mean squared quantisation error (clip + round) of
                  the sampled |x|, searched over MSE_GRID fractions of the max;
  * post-GELU tensors read only by GEMMs (Hiera's MLPs, the mask product) are asymmetric: GELU's
    output lies in [-0.17, max], so a symmetric code wastes its negative half; a zero point zp
    (real = s (q - zp)) spans [min, estimate] with all 256 codes. The LUT writes q + zp, and the
    GEMM folds -zp * sum_k W[n, k] into its int32 bias: the engines stay symmetric, one bit gained;
  * max-pool, upsample and window (un)partition keep their input's scale (they move values);
  * requantisation: per output channel multiplier + shift (intops.quantize_multiplier) of
    s_x s_w[n] / s_y; attention: intattn.AttentionQuant.from_scales; element-wise ops:
    golden_model.intvec's parameter classes.
The quantised weights replace the float constants in the integer graph (same names, int8 /
int32), so the graph's shapes and MACs stay readable; everything else is `params[node]`.
"""
from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass, field

import numpy as np

from golden_model import intvec
from golden_model.intattn import AttentionQuant
from golden_model.intops import INT8_MAX, INT8_MIN, quantize_multiplier
from golden_model.quant.builder import MASK_INPUT
from golden_model.quant.graph import Graph, Node
from golden_model.quant.interpret import FloatRunner
from golden_model.quant.predictor import GraphPredictor, best_low_res

ESTIMATORS = ("max", "percentile", "mse")
DEFAULT_ESTIMATOR = "percentile"   # the best worst-case IoU measured (docs/quantisation.md)
PERCENTILE = 99.99
MSE_GRID = np.linspace(0.05, 1.0, 96)
MSE_SAMPLES = 1 << 16
SAMPLES_PER_OBSERVATION = 1 << 16
#: ops whose output is a rearrangement of their input's values: the scale passes through.
SCALE_PASSES = ("maxpool2x2", "upsample2x", "window_partition", "window_unpartition")
#: ops whose output lives on the host as float32 (no scale).
FLOAT_OUT = ("dequantize", "prompt_encoder", "mlp", "mask_product")


@dataclass
class TensorStats:
    max_abs: float = 0.0
    min_val: float = 0.0          # the most negative value seen (0 if none)
    samples: list = field(default_factory=list)

    def observe(self, x: np.ndarray, rng: np.random.Generator) -> None:
        x = np.asarray(x, np.float32)
        if x.size:
            self.min_val = min(self.min_val, float(x.min()))
        a = np.abs(x).reshape(-1)
        self.max_abs = max(self.max_abs, float(a.max()) if a.size else 0.0)
        if a.size > SAMPLES_PER_OBSERVATION:
            a = a[rng.integers(0, a.size, SAMPLES_PER_OBSERVATION)]
        self.samples.append(a)

    def estimate(self, estimator: str) -> float:
        if self.max_abs == 0.0:
            return 1.0   # an all-zero tensor: any scale represents it
        if estimator == "max":
            return self.max_abs
        s = np.concatenate(self.samples)
        if estimator == "percentile":
            return max(float(np.percentile(s, PERCENTILE)), self.max_abs * 1e-3)
        if estimator == "mse":    # 96 candidate clips: on at most MSE_SAMPLES evenly strided samples
            s = s[::max(1, s.size // MSE_SAMPLES)].astype(np.float64)
            best, best_err = self.max_abs, np.inf
            for c in MSE_GRID * self.max_abs:
                step = c / INT8_MAX
                q = np.minimum(np.rint(s / step), INT8_MAX) * step
                err = float(np.mean((s - q) ** 2))
                if err < best_err:
                    best, best_err = c, err
            return best
        raise ValueError(f"unknown estimator {estimator!r}; known: {', '.join(ESTIMATORS)}")


def stats_key(node: Node) -> str:
    """The statistic a node's output is calibrated with: its own, or that of the tensor it stands for
    (attrs replaces: the mask prompt's src, which takes src's scale; never observed, mask_branch_only)."""
    return node.attrs.get("replaces", node.outputs[0])


def calibration_clicks(image_hw, n: int, rng: np.random.Generator) -> list[list[float]]:
    """`n` single foreground clicks (x, y) spread over the image's central area."""
    h, w = image_hw
    return [[rng.uniform(0.2, 0.8) * w, rng.uniform(0.2, 0.8) * h] for _ in range(n)]


def calibrate(graph: Graph, images, prompts_per_image: int = 3, seed: int = 0) -> dict[str, TensorStats]:
    """Run the float graph on `images` (uint8 RGB) with a few clicks each, then the last click again with its
    best mask as a mask prompt (the refinement loop, observed in the mask branch only); statistics of every
    int8 tensor."""
    if not images:
        raise ValueError("calibration needs at least one image")
    rng = np.random.default_rng(seed)
    stats: dict[str, TensorStats] = {}
    samplers: dict[str, np.random.Generator] = {}   # one per tensor: its samples do not depend on the others

    def observe(node: Node, value):
        name = stats_key(node)
        if graph.tensors[name].dtype == "int8" and node.op not in SCALE_PASSES:
            if name not in samplers:
                samplers[name] = np.random.default_rng([seed, zlib.crc32(name.encode())])
            stats.setdefault(name, TensorStats()).observe(value, samplers[name])
    predictor = GraphPredictor(graph, FloatRunner(graph))
    for image in images:
        image = np.asarray(image)
        predictor.set_image(image, observe)
        for click in calibration_clicks(image.shape[:2], prompts_per_image, rng):
            out = predictor.decode_click(click, observe)
        if MASK_INPUT in graph.tensors:
            predictor.decode_click(click, mask_branch_only(observe), mask=best_low_res(out))
    return stats


def mask_branch_only(observe):
    """`observe` for the mask branch's own tensors only: a mask-prompted calibration run leaves every other
    tensor's statistics (the point-prompt path's, and `src`'s, which the branch's last node shares) as the
    clicks alone give them."""
    return lambda node, value: observe(node, value) if node.attrs.get("branch") and "replaces" not in node.attrs \
        else None


# ---------------------------------------------------------------- the quantised model
@dataclass
class QuantModel:
    """The integer graph (scales set, weights int8 / biases int32 as constants) and per-node parameters."""
    graph: Graph
    params: dict[str, dict[str, np.ndarray]]
    key_tile: int
    preset: str = "kv260"
    estimator: str = DEFAULT_ESTIMATOR


def weight_scales(w: np.ndarray, axis: int) -> np.ndarray:
    """Per output channel (along `axis`) symmetric int8 scales: max |w| / 127 (1 for an all-zero channel)."""
    red = tuple(i for i in range(w.ndim) if i != axis)
    m = np.abs(w).max(axis=red) if red else np.abs(w)
    return np.where(m > 0, m / INT8_MAX, 1.0).astype(np.float64)


def quantize_weights(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    s = weight_scales(w, axis)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / s.reshape(shape)), -INT8_MAX, INT8_MAX).astype(np.int8)
    return q, s


def requant_params(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pairs = [quantize_multiplier(float(s)) for s in np.broadcast_to(scales, np.shape(scales)).reshape(-1)]
    return np.array([p[0] for p in pairs], np.int64), np.array([p[1] for p in pairs], np.int64)


def quantize_tensor(x, scale: float, zero_point: int = 0) -> np.ndarray:
    """Host quantisation of float values: clamp(round_half_even(x / scale) + zero_point, -128, 127) as int8."""
    return np.clip(np.rint(np.asarray(x, np.float64) / scale) + zero_point, -128, 127).astype(np.int8)


def dequantize_tensor(q, spec) -> np.ndarray:
    """Real values of an int8 tensor: scale * (q - zero_point), float64."""
    return (np.asarray(q, np.float64) - spec.zero_point) * spec.scale


def asymmetric_gelus(graph: Graph) -> set[str]:
    """GELU outputs read only as the activation input of linear nodes or the mask product: the ones
    whose zero point the consumers can fold (a transposed conv's taps could not: not a per-channel sum)."""
    out = set()
    for n in graph.nodes:
        if n.op == "gelu":
            users = graph.consumers(n.outputs[0])
            if users and all((u.op == "linear" and u.inputs[0] == n.outputs[0]) or u.op == "mask_product"
                             for u in users):
                out.add(n.outputs[0])
    return out


def gelu_shifted(zero_point: int, out_scale: float):
    """GELU plus zero_point codes: the LUT's float function for an asymmetric output."""
    from golden_model import nn
    return lambda v: nn.gelu(v) + zero_point * out_scale


#: output-channel axis of each weighted op's weight constant
WEIGHT_AXIS = {"linear": 0, "conv": 0, "depthwise": 0, "conv_transpose": 1}


def quantize(graph: Graph, stats: dict[str, TensorStats], estimator: str = DEFAULT_ESTIMATOR, key_tile: int = 32,
             preset: str = "kv260") -> QuantModel:
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; known: {', '.join(ESTIMATORS)}")
    g = copy.copy(graph)
    g.tensors = dict(graph.tensors)
    g.constants = dict(graph.constants)
    g.nodes = list(graph.nodes)
    scale, zp = {}, {}
    asym = asymmetric_gelus(graph)
    for node in g.nodes:
        out = node.outputs[0]
        if node.op in SCALE_PASSES:
            scale[out], zp[out] = scale[node.inputs[0]], zp[node.inputs[0]]
        elif g.tensors[out].dtype == "int8":
            if stats_key(node) not in stats:
                raise ValueError(f"no calibration statistics for tensor {stats_key(node)!r}")
            st = stats[stats_key(node)]
            if out in asym:     # [min, estimate] over all 256 codes (module docstring)
                hi, lo = st.estimate(estimator), min(st.min_val, 0.0)
                scale[out] = (hi - lo) / (INT8_MAX - INT8_MIN) if hi > lo else 1.0
                zp[out] = int(np.clip(round(INT8_MIN - lo / scale[out]), INT8_MIN, 0))
            else:
                scale[out], zp[out] = st.estimate(estimator) / INT8_MAX, 0
        if out in scale:
            g.set_scale(out, scale[out], zp[out])
    params: dict[str, dict[str, np.ndarray]] = {}
    for node in g.nodes:
        op, ins, out = node.op, node.inputs, node.outputs[0]
        if node.attrs.get("host"):      # host float: its constants stay float32, no integer parameters
            continue
        if op in WEIGHT_AXIS:
            w, b = graph.constants[ins[1]], graph.constants[ins[2]]
            wq, ws = quantize_weights(w, WEIGHT_AXIS[op])
            sx = scale[ins[0]]
            g.constants[ins[1]] = wq
            bq = np.rint(b / (sx * ws))
            if zp[ins[0]]:           # real x = sx (q - zp): W x = sx (W q - zp sum_k W)
                bq -= zp[ins[0]] * wq.reshape(wq.shape[0], -1).astype(np.int64).sum(axis=1)
            g.constants[ins[2]] = np.clip(bq, -(1 << 31), (1 << 31) - 1).astype(np.int32)
            mult, shift = requant_params(sx * ws / scale[out])
            params[node.name] = {"multiplier": mult, "shift": shift}
        elif op == "attention":
            head_dim = g.tensors[ins[0]].shape[-1] // node.attrs["heads"]
            aq = AttentionQuant.from_scales(scale[ins[0]], scale[ins[1]], scale[ins[2]], scale[out], head_dim)
            params[node.name] = {"quant": np.array([aq.score_mult, aq.score_shift, aq.out_mult, aq.out_shift],
                                                   np.int64)}
        elif op == "layernorm":
            p = intvec.LayerNormParams.make(graph.constants[ins[1]], graph.constants[ins[2]], scale[ins[0]],
                                            scale[out], node.attrs["eps"])
            params[node.name] = p.to_arrays()
        elif op == "gelu":
            fn = gelu_shifted(zp[out], scale[out])
            params[node.name] = intvec.LutParams.make(fn, scale[ins[0]], scale[out]).to_arrays()
        elif op == "add":
            a, b = ins
            if b in graph.constants:       # a constant operand: int8 at its own scale
                bv = graph.constants[b]
                sb = float(np.abs(bv).max()) / INT8_MAX or 1.0
                g.constants[b] = quantize_tensor(bv, sb)
                params[node.name] = {**intvec.AddParams.make(scale[a], sb, scale[out]).to_arrays(),
                                     "b_scale": np.array([sb])}
            else:
                params[node.name] = intvec.AddParams.make(scale[a], scale[b], scale[out]).to_arrays()
        elif op == "rescale":
            params[node.name] = intvec.RescaleParams.make(scale[ins[0]], scale[out]).to_arrays()
    return QuantModel(g, params, key_tile, preset, estimator)
