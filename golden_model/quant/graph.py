"""The int8 SAM 2 as data: named tensors, nodes, constants (the spec the overlay compiles).

A `Graph` is a list of `Node`s in execution order over named `TensorSpec`s. Every node
names its op, and the op decides its engine class (`ENGINE`): the overlay's engines
(gemm, conv, attention, depthwise), the vector engine (the integer element-wise ops of
golden_model.intvec), `layout` (pure addressing: window partitions, which a DMA does
with strides) or `host` (float, tiny per frame). Constants (weights, position
embeddings) are float32 arrays by name; official weights keep their state-dict key.

Layouts: feature maps are channels-last with a leading batch/window axis, (N, H, W, C);
token sets are (N, L, C). The one symbolic size is "T", the number of decoder tokens
(it depends on the prompt); `Graph.dims` gives the value used for MACs.

Quantisation (golden_model.quant.quantize) fills `TensorSpec.scale` for int tensors;
the structure never changes with it.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np

#: op -> engine class. The one place this mapping lives (profiler and compiler read it).
ENGINE = {
    "linear": "gemm", "mask_product": "gemm",
    "conv": "conv", "conv_transpose": "conv", "depthwise": "depthwise",
    "attention": "attention",
    "layernorm": "vector", "gelu": "vector", "add": "vector", "maxpool2x2": "vector",
    "upsample2x": "vector", "rescale": "vector", "rope": "vector",
    "window_partition": "layout", "window_unpartition": "layout", "slice": "layout",
    "memory_bank": "layout",
    "quantize": "host", "dequantize": "host", "prompt_encoder": "host", "mlp": "host",
}

#: Stages (issue 17's per-stage totals); nodes carry one.
STAGES = ("image_encoder", "prompt_encoder", "mask_decoder", "memory_encoder", "memory_attention")


@dataclass(frozen=True)
class TensorSpec:
    """A named activation: shape (ints, or "T"), dtype of its quantised form, scale and zero point
    (real = scale * (int - zero_point); the zero point is 0 except where quantize.py says why)."""
    name: str
    shape: tuple
    dtype: str = "int8"          # int8 | int32 | float32 (host tensors stay float32)
    scale: float | None = None   # per tensor; None until calibrated (or float/dynamic)
    zero_point: int = 0

    def numel(self, dims: dict) -> int:
        return math.prod(dims.get(s, s) if isinstance(s, str) else s for s in self.shape)


@dataclass(frozen=True)
class Node:
    name: str
    op: str
    inputs: tuple[str, ...]      # tensor names (activations) and constant names (weights), in op order
    outputs: tuple[str, ...]
    stage: str
    attrs: dict = field(default_factory=dict)

    @property
    def engine(self) -> str:
        """The op's engine, or "host" for a node the builder put on the host (attrs host=True: the op in float)."""
        return "host" if self.attrs.get("host") else ENGINE[self.op]


class GraphError(ValueError):
    pass


@dataclass
class Graph:
    model: str
    image_size: int
    tensors: dict[str, TensorSpec] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    dims: dict = field(default_factory=lambda: {"T": 8, "P": 1})
    meta: dict = field(default_factory=dict)   # builder facts the host side needs (decoder options, ...)

    # ------------------------------------------------------------- building
    def tensor(self, name: str, shape, dtype: str = "int8") -> str:
        if name in self.tensors or name in self.constants:
            raise GraphError(f"tensor {name!r} defined twice")
        self.tensors[name] = TensorSpec(name, tuple(shape), dtype)
        return name

    def const(self, name: str, value) -> str:
        if name in self.constants or name in self.tensors:
            raise GraphError(f"constant {name!r} defined twice")
        self.constants[name] = np.ascontiguousarray(value, dtype=np.float32)
        return name

    def add(self, name: str, op: str, inputs, outputs, stage: str, **attrs) -> Node:
        if op not in ENGINE:
            raise GraphError(f"node {name}: unknown op {op!r}")
        if stage not in STAGES:
            raise GraphError(f"node {name}: unknown stage {stage!r}")
        for t in inputs:
            if t not in self.tensors and t not in self.constants:
                raise GraphError(f"node {name}: input {t!r} is not defined")
        for t in outputs:
            if t not in self.tensors:
                raise GraphError(f"node {name}: output {t!r} is not declared")
        node = Node(name, op, tuple(inputs), tuple(outputs), stage, dict(attrs))
        self.nodes.append(node)
        return node

    def set_scale(self, name: str, scale: float | None, zero_point: int = 0) -> None:
        self.tensors[name] = replace(self.tensors[name], scale=scale, zero_point=zero_point)

    def consumers(self, tensor: str) -> list[Node]:
        return [n for n in self.nodes if tensor in n.inputs]

    # ------------------------------------------------------------- reading
    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def stage_nodes(self, stage: str) -> list[Node]:
        return [n for n in self.nodes if n.stage == stage]

    def macs(self, node: Node) -> int:
        """Multiply-accumulates of one node at the graph's dims (0 for layout; element ops count 0)."""
        t, c = self.tensors, self.constants
        d = self.dims

        def shape(name):
            s = t[name].shape if name in t else c[name].shape
            return tuple(d.get(x, x) if isinstance(x, str) else x for x in s)
        if node.op in ("linear", "mlp"):
            if node.op == "mlp":   # one token row through every layer
                return sum(int(np.prod(c[w].shape)) for w in node.inputs[1::2])
            return math.prod(shape(node.outputs[0])) * shape(node.inputs[1])[1]
        if node.op in ("conv", "depthwise"):
            w = shape(node.inputs[1])
            return math.prod(shape(node.outputs[0])) * math.prod(w[1:])
        if node.op == "conv_transpose":
            w = shape(node.inputs[1])
            return math.prod(shape(node.inputs[0])) * math.prod(w[1:])
        if node.op == "attention":
            q, k = shape(node.inputs[0]), shape(node.inputs[1])
            lq, lk = math.prod(q[1:-1]), math.prod(k[1:-1])
            return 2 * q[0] * lq * lk * q[-1]
        if node.op == "mask_product":
            return math.prod(shape(node.outputs[0])) * shape(node.inputs[0])[-1]
        return 0

    def nbytes(self, name: str) -> int:
        """Bytes of an activation at the graph's dims (int8 1, int32 / float32 4 per element)."""
        t = self.tensors[name]
        return t.numel(self.dims) * (1 if t.dtype == "int8" else 4)

    def host_table(self) -> str:
        """The host ops with their MACs and the bytes they read and write (docs/quantisation.md)."""
        lines = [f"{'host node':24s} {'op':16s} {'MACs':>10s} {'bytes in':>10s} {'bytes out':>10s}"]
        for n in self.nodes:
            if n.engine == "host":
                bin_ = sum(self.nbytes(i) for i in n.inputs if i in self.tensors)
                lines.append(f"{n.name:24s} {n.op:16s} {self.macs(n):10,d} {bin_:10,d} {self.nbytes(n.outputs[0]):10,d}")
        return "\n".join(lines)

    def summary(self) -> str:
        """One line per node (engine, op, output shape, MACs, scale) and totals per stage and engine."""
        lines = [f"int8 SAM 2 graph: model {self.model}, image {self.image_size}, "
                 f"{len(self.nodes)} nodes, {len(self.constants)} constants, dims {self.dims}"]
        lines.append(f"{'node':58s} {'engine':9s} {'op':18s} {'output':22s} {'MACs':>14s}  scale")
        totals: dict[tuple[str, str], int] = {}
        for n in self.nodes:
            out = self.tensors[n.outputs[0]]
            m = self.macs(n)
            totals[(n.stage, n.engine)] = totals.get((n.stage, n.engine), 0) + m
            sc = "" if out.scale is None else f"{out.scale:.4g}" + (f" zp {out.zero_point}" if out.zero_point else "")
            lines.append(f"{n.name:58s} {n.engine:9s} {n.op:18s} {str(out.shape):22s} {m:14,d}  {sc}")
        lines.append("totals (GMAC):")
        for (stage, engine), m in sorted(totals.items()):
            if m:
                lines.append(f"  {stage:16s} {engine:10s} {m / 1e9:9.3f}")
        return "\n".join(lines)

    # ------------------------------------------------------------- serialising
    def to_json(self) -> str:
        """The structure (not the constants' values): tensors, nodes, inputs/outputs, dims."""
        return json.dumps({
            "model": self.model, "image_size": self.image_size, "dims": self.dims, "meta": self.meta,
            "inputs": list(self.inputs), "outputs": list(self.outputs),
            "tensors": [asdict(t) for t in self.tensors.values()],
            "constants": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in self.constants.items()},
            "nodes": [{**asdict(n), "engine": n.engine} for n in self.nodes],
        }, default=_json_default)

    @classmethod
    def from_json(cls, text: str, constants: dict[str, np.ndarray]) -> "Graph":
        d = json.loads(text)
        g = cls(d["model"], d["image_size"], dims=d["dims"], inputs=tuple(d["inputs"]), outputs=tuple(d["outputs"]),
                meta=_attrs_from_json(d["meta"]))
        for t in d["tensors"]:
            g.tensors[t["name"]] = TensorSpec(t["name"], tuple(t["shape"]), t["dtype"], t["scale"], t["zero_point"])
        problems = check_arrays(constants, {k: (tuple(v["shape"]), v["dtype"]) for k, v in d["constants"].items()},
                                "constants")
        if problems:
            raise GraphError("; ".join(problems))
        g.constants = {k: constants[k] for k in d["constants"]}
        for n in d["nodes"]:
            g.nodes.append(Node(n["name"], n["op"], tuple(n["inputs"]), tuple(n["outputs"]), n["stage"],
                                _attrs_from_json(n["attrs"])))
        return g


def _json_default(x):
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    raise TypeError(f"not serialisable: {type(x)}")


def _attrs_from_json(attrs: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in attrs.items()}


def check_arrays(arrays: dict, expected: dict, what: str, check_shapes: bool = True) -> list[str]:
    """Problems (missing, extra, wrong dtype or shape) of `arrays` against {name: (shape, dtype)}, each named."""
    problems = []
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    if missing:
        problems.append(f"{what} missing ({len(missing)}): {', '.join(missing[:20])}")
    if extra:
        problems.append(f"unexpected {what} ({len(extra)}): {', '.join(extra[:20])}")
    bad = [f"{k}: {arrays[k].dtype}{list(arrays[k].shape)}, expected {dt}{list(sh) if check_shapes else ''}"
           for k, (sh, dt) in expected.items() if k in arrays and
           (str(arrays[k].dtype) != dt or (check_shapes and tuple(arrays[k].shape) != tuple(sh)))]
    if bad:
        problems.append(f"{what} of the wrong dtype or shape ({len(bad)}): {'; '.join(bad[:20])}")
    return problems
