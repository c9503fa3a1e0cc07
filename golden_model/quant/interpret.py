"""Running a `Graph`: one executor, two op tables (float32 here; integer in golden_model.quant.intinterp).

    env = FloatRunner(graph).run({"image": x_nhwc}, stages=("image_encoder",))

The float ops follow the official numerics (the torch ops SAM 2 calls), written with
golden_model.nn so the float graph reproduces golden_model.model.SAM2Model.
`observe(node, value)` sees every node output (calibration hooks in there). Branch nodes
(attrs branch=INPUT: the mask prompt) run only when INPUT is fed; a branch node with
replaces=T then stands for tensor T, and T's own node is skipped.
"""
from __future__ import annotations

import numpy as np

from golden_model import nn
from golden_model.image_encoder import window_partition, window_unpartition
from golden_model.quant.graph import Graph, Node

F32 = np.float32


class Runner:
    """Executes a graph's nodes in order with an op table {op: fn(node, args, runner) -> array}."""
    OPS: dict = {}

    def __init__(self, graph: Graph):
        self.graph = graph
        self._cache: dict = {}

    def arg(self, name: str, env: dict):
        if name in env:
            return env[name]
        return self.graph.constants[name]

    def run(self, feeds: dict, stages=None, env: dict | None = None, observe=None) -> dict:
        env = dict(env or {})
        env.update(feeds)
        replaced = set()
        for node in self.graph.nodes:
            if stages is not None and node.stage not in stages:
                continue
            branch = node.attrs.get("branch")
            if (branch is not None and branch not in env) or node.outputs[0] in replaced:
                continue
            args = [self.arg(i, env) for i in node.inputs]
            out = self.op_fn(node)(node, args, self)
            env[node.outputs[0]] = out
            if "replaces" in node.attrs:
                env[node.attrs["replaces"]] = out
                replaced.add(node.attrs["replaces"])
            if observe is not None:
                observe(node, out)
        return env

    def op_fn(self, node: Node):
        return self.OPS[node.op]

    def cached(self, key, make):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]


# ---------------------------------------------------------------- shared helpers (layout, host)
def nhwc_to_nchw(x):
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def nchw_to_nhwc(x):
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def split_heads(x, heads: int):
    """(N, ..., C) -> (N, heads, L, C/heads)."""
    n, c = x.shape[0], x.shape[-1]
    return x.reshape(n, -1, heads, c // heads).transpose(0, 2, 1, 3)


def merge_heads(o, shape):
    """(N, heads, L, d) -> shape (N, ..., heads * d)."""
    return np.ascontiguousarray(o.transpose(0, 2, 1, 3)).reshape(shape)


def window_partition_op(node: Node, x):
    return window_partition(x, node.attrs["ws"])[0]


def window_unpartition_op(node: Node, x, out_shape):
    ws = node.attrs["ws"]
    _, h, w, _ = out_shape
    return window_unpartition(x, ws, (h + (-h) % ws, w + (-w) % ws), (h, w))


def upsample2x(x):
    """Nearest 2x upsampling of (N, H, W, C) (F.interpolate(scale_factor=2, mode='nearest'))."""
    n, h, w, c = x.shape
    return np.broadcast_to(x[:, :, None, :, None], (n, h, 2, w, 2, c)).reshape(n, 2 * h, 2 * w, c)


def prompt_tokens(node: Node, args, runner: Runner):
    """Host: output tokens + PromptEncoder.embed_points (pad point appended), (1, T, C) float32."""
    from golden_model.prompt_encoder import PromptEncoder
    from golden_model.weights import Weights
    coords, labels = args[0], args[1]
    names = node.inputs[2:]        # the prompt encoder's weights, then the learned output tokens (builder)
    consts = dict(zip(names, args[2:]))
    out_tokens = consts.pop(names[-1])

    def make():
        pre = "sam_prompt_encoder."
        w = Weights({k[len(pre):]: v for k, v in consts.items()})
        s = node.attrs["input_image_size"]
        return PromptEncoder(w, embed_dim=out_tokens.shape[1], image_embedding_size=(s // 16, s // 16),
                             input_image_size=(s, s))
    pe = runner.cached(("prompt_encoder", node.name), make)
    coords = np.asarray(coords, F32)     # no points (a mask prompt alone): no padding point, as the official
    sparse = pe.embed_points(coords, np.asarray(labels).astype(np.int32), pad=coords.shape[1] > 0)
    b = sparse.shape[0]
    return np.concatenate([np.broadcast_to(out_tokens[None], (b,) + out_tokens.shape), sparse], axis=1).astype(F32)


def host_mlp(node: Node, args, runner: Runner):
    """Host: sam2_utils.MLP (ReLU between layers, optional sigmoid) on token `row` of (1, T, C)."""
    x = np.asarray(args[0], F32)[:, node.attrs["row"]]
    layers = list(zip(args[1::2], args[2::2]))
    for i, (w, b) in enumerate(layers):
        x = nn.linear(x, w, b)
        if i < len(layers) - 1:
            x = nn.relu(x)
    return nn.sigmoid(x) if node.attrs["sigmoid"] else x


# ---------------------------------------------------------------- float ops
def _linear(n, a, r):
    x, w, b = a
    y = nn.linear(np.ascontiguousarray(x, F32), w.reshape(w.shape[0], -1), b)
    return nn.relu(y) if n.attrs.get("relu") else y


def _conv(n, a, r):
    x, w, b = a
    y = nn.conv2d(nhwc_to_nchw(x), w, b, stride=n.attrs["stride"], padding=n.attrs["padding"],
                  groups=w.shape[0] if n.op == "depthwise" else 1)
    return nchw_to_nhwc(y)


def _conv_transpose(n, a, r):
    x, w, b = a
    if (n.attrs["k"], n.attrs["stride"]) != (2, 2):
        raise ValueError(f"{n.name}: only 2x2 stride-2 transposed convolutions are implemented")
    return nchw_to_nhwc(nn.conv_transpose2d_k2s2(nhwc_to_nchw(x), w, b))


def _attention(n, a, r):
    q, k, v = a
    h = n.attrs["heads"]
    o = nn.attention(split_heads(q, h), split_heads(k, h), split_heads(v, h))
    return merge_heads(o, q.shape)


def _mask_product(n, a, r):
    x = a[0]
    hyper = np.stack([np.asarray(h, F32) for h in a[1:]], axis=1)        # (1, M, c)
    b, hh, ww, c = x.shape
    return (hyper @ x.reshape(b, hh * ww, c).transpose(0, 2, 1)).reshape(b, -1, hh, ww)


FLOAT_OPS = {
    "linear": _linear,
    "conv": _conv, "depthwise": _conv,
    "conv_transpose": _conv_transpose,
    "attention": _attention,
    "layernorm": lambda n, a, r: nn.layer_norm(a[0], a[1], a[2], n.attrs["eps"]),
    "gelu": lambda n, a, r: nn.gelu(a[0]),
    "add": lambda n, a, r: a[0] + a[1],
    "rescale": lambda n, a, r: a[0],
    "maxpool2x2": lambda n, a, r: nn.max_pool2d_nhwc(a[0], (2, 2)),
    "upsample2x": lambda n, a, r: upsample2x(a[0]),
    "window_partition": lambda n, a, r: window_partition_op(n, a[0]),
    "window_unpartition": lambda n, a, r: window_unpartition_op(n, a[0], r.graph.tensors[n.outputs[0]].shape),
    "quantize": lambda n, a, r: np.asarray(a[0], F32),
    "dequantize": lambda n, a, r: np.asarray(a[0], F32),
    "prompt_encoder": prompt_tokens,
    "mlp": host_mlp,
    "mask_product": _mask_product,
}


class FloatRunner(Runner):
    OPS = FLOAT_OPS
