"""The int8 SAM 2 graph on the overlay: each node where the placement rule puts it, checked against the spec.

    ex = GraphExecutor(qm, preset("sim"), backend="sim")
    env = ex.run({"image": x_nhwc}, stages=("image_encoder",))
    ex.records            # per node: placement, cycles, (after check) bit-exact
    ex.check(env, IntRunner(qm).run(feeds, stages=...))   # node by node against the integer interpreter

Placement: sw.compile.graph.place_all for the preset (engine, host or layout, with its reason). Engine
nodes run through the Driver on the chosen backend (linear, conv2d, depthwise_conv2d,
conv_transpose2d, attention, vector) with the integer interpreter's own parameters (requant
multiplier / shift, AttentionQuant, intvec parameter sets); host and layout nodes run the
interpreter's op functions (golden_model.quant.intinterp), so they equal it by construction. A GELU the
placement fuses into its fc1's store (store_lut: sw.compile.graph.fuse_store_tables) runs inside that
linear's Driver call (lut=its table): the linear's output tensor then holds the GELU'd values, checked
against the GELU's output, and the GELU node passes them on with no run of its own. An add fused into
a linear's store (store_add: sw.compile.graph.fused_adds) likewise: the linear's Driver call takes the
residual (the add's other input) and the add's parameters, its output tensor holds the sum.

The interpreter is the spec: the one parameter it must share with the overlay is the attention key
tile (the engine's online softmax runs over tiles of cfg.cols keys), so the QuantModel must be
quantised for the preset (`sam2fpga quantize --preset P` sets key_tile = cols); another is refused.

Not yet: activations chaining in DDR. Every engine node is one or more Driver calls, each writing its
inputs to DDR and reading its output back (host <-> DDR per node); weights are reloaded per call
except where the Driver's program cache keeps them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from golden_model.intattn import AttentionQuant
from golden_model.quant.interpret import merge_heads, nchw_to_nhwc, nhwc_to_nchw, split_heads
from golden_model.quant.intinterp import IntRunner, _mask_product, _requant_args, _vec_params
from sw.compile.graph import fused_adds, place_all, vector_lanes
from sw.perf.layers import graph_layers
from sw.runtime.driver import Driver


class GraphExecError(ValueError):
    pass


@dataclass
class NodeRecord:
    name: str
    op: str
    stage: str
    where: str            # engine, "host" or "layout" (sw.compile.graph.place)
    reason: str
    cycles: int = 0       # the Driver's runs (sum over its calls); 0 off the overlay
    calls: int = 0
    ddr_bytes: int = 0    # host <-> DDR bytes of its Driver calls (program, weights, inputs in; output out)
    wall_s: float = 0.0   # this process's time for the node (engine nodes: compile + simulate + copies)
    exact: bool | None = None   # set by check()
    holds: str = ""       # the tensor its output equals when a fused op rode in its store ("": its own)


# ---------------------------------------------------------------- engine nodes through the Driver
def _linear(drv, n, a, r, lut=None, residual=None, add=None):
    x, w, b = a
    m, s = _requant_args(r, n)
    if residual is not None:
        residual = np.ascontiguousarray(residual).reshape(-1, w.shape[0])
    y = drv.linear(x.reshape(-1, x.shape[-1]), np.ascontiguousarray(w.reshape(w.shape[0], -1).T), b, m, s,
                   relu=n.attrs.get("relu", False), lut=lut, residual=residual, add=add)
    return y.reshape(x.shape[:-1] + (w.shape[0],)), [drv.last_run]


def _per_image(drv, x, call):
    """`call` on each (C, H, W) image of an (N, H, W, C) batch; the results back as (N, H', W', C')."""
    ys, runs = [], []
    for xi in nhwc_to_nchw(x):
        ys.append(call(xi))
        runs.append(drv.last_run)
    return nchw_to_nhwc(np.stack(ys)), runs


def _conv(drv, n, a, r):
    x, w, b = a
    m, s = _requant_args(r, n)
    fn = drv.depthwise_conv2d if n.op == "depthwise" else drv.conv2d
    return _per_image(drv, x, lambda xi: fn(xi, w, b, m, s, stride=n.attrs["stride"], padding=n.attrs["padding"]))


def _conv_transpose(drv, n, a, r):
    x, w, b = a
    m, s = _requant_args(r, n)
    return _per_image(drv, x, lambda xi: drv.conv_transpose2d(xi, w, b, m, s, stride=n.attrs["stride"]))


def _attention(drv, n, a, r):
    q, k, v = a
    h = n.attrs["heads"]
    quant = AttentionQuant(*(int(x) for x in r.params[n.name]["quant"]))

    def heads(t):          # (N, ..., C) -> (N * heads, L, d): every window's every head, one call
        s = split_heads(t, h)
        return np.ascontiguousarray(s.reshape((-1,) + s.shape[2:]))
    o = drv.attention(heads(q), heads(k), heads(v), quant)
    return merge_heads(o.reshape((q.shape[0], h) + o.shape[1:]), q.shape), [drv.last_run]


def _rows(drv, op, x, p, b=None):
    y = drv.vector(op, x.reshape(-1, x.shape[-1]), p, b=None if b is None else b.reshape(-1, x.shape[-1]))
    return y.reshape(x.shape), [drv.last_run]


def _add(drv, n, a, r):
    x, b = a
    return _rows(drv, "add", x, _vec_params(r, n, "AddParams"), np.ascontiguousarray(np.broadcast_to(b, x.shape)))


def _image_op(op):
    def run(drv, n, a, r):
        ys, runs = [], []
        for xi in a[0]:
            ys.append(drv.vector(op, xi))
            runs.append(drv.last_run)
        return np.stack(ys), runs
    return run


def _mask(drv, n, a, r):
    runs = []

    def gemm(x, h):
        y = drv.linear(x, h, out_int32=True)
        runs.append(drv.last_run)
        return y
    return _mask_product(n, a, r, gemm), runs


ENGINE_OPS = {
    "linear": _linear, "conv": _conv, "depthwise": _conv, "conv_transpose": _conv_transpose,
    "attention": _attention, "mask_product": _mask,
    "layernorm": lambda d, n, a, r: _rows(d, "layernorm", a[0], _vec_params(r, n, "LayerNormParams")),
    "gelu": lambda d, n, a, r: _rows(d, "lut", a[0], _vec_params(r, n, "LutParams")),
    "rescale": lambda d, n, a, r: _rows(d, "rescale", a[0], _vec_params(r, n, "RescaleParams")),
    "add": _add, "maxpool2x2": _image_op("maxpool"), "upsample2x": _image_op("upsample"),
}


# ---------------------------------------------------------------- the executor
class GraphExecutor(IntRunner):
    """IntRunner whose engine-placed nodes run on the overlay (module docstring)."""
    ENGINE_OPS = ENGINE_OPS          # op -> its Driver call (a subclass adds ops)

    def __init__(self, qm, cfg, backend: str = "sim", driver: Driver | None = None):
        if qm.key_tile != cfg.cols:
            raise GraphExecError(f"the model was quantised with attention key tile {qm.key_tile}, the {cfg.name!r} "
                                 f"overlay's is {cfg.cols}: quantise it for this preset (--preset {cfg.name})")
        super().__init__(qm)
        self.cfg = cfg
        self.driver = driver or Driver(cfg, backend)
        lanes = vector_lanes(cfg)
        self.placements = {p.layer.name: p for p in place_all(cfg, graph_layers(qm.graph), lanes=lanes)}
        # linear node -> the GELU node placed in its store (the placement checked it is its only reader)
        writers = {t: n for n in qm.graph.nodes for t in n.outputs}
        self.fused = {writers[n.inputs[0]].name: n for n in qm.graph.nodes
                      if n.op == "gelu" and self.placements[n.name].where == "gemm"
                      and not n.attrs.get("host") and not writers[n.inputs[0]].attrs.get("host")}
        # linear node -> (the add node riding in its store, which of the add's inputs the linear writes)
        nodes = {n.name: n for n in qm.graph.nodes}
        self.fused_adds = {lin: (nodes[add], i) for add, (lin, i) in
                           fused_adds(cfg, list(self.placements.values())).items()
                           if not nodes[add].attrs.get("host") and not nodes[lin].attrs.get("host")}
        self.records: dict[str, NodeRecord] = {}
        self._env: dict = {}

    def arg(self, name, env):
        self._env = env                 # the running environment: a fused add's residual is read from it
        return super().arg(name, env)

    def _fused_add_call(self, add, i):
        """The linear's Driver call with `add` in its store: the residual is the add's other input, and
        the add's (a_mult, b_mult) swap when the linear writes its second input (the store's y is a)."""
        def call(d, n, a, r):
            p = _vec_params(r, add, "AddParams")
            p = p if i == 0 else type(p)(p.b_mult, p.a_mult, p.shift)
            return _linear(d, n, a, r, residual=self.arg(add.inputs[1 - i], self._env), add=p)
        return call

    def op_fn(self, node):
        p = self.placements[node.name]
        where, reason = (p.where, p.reason)
        if node.attrs.get("host"):       # the builder's float nodes (decoder token stream) stay on the host
            where, reason = "host", "float op (the builder's host node)"
        rec = NodeRecord(node.name, node.op, node.stage, where, reason)
        self.records[node.name] = rec
        host_fn = super().op_fn(node)
        if where in ("host", "layout"):
            def on_host(n, args, r):
                t = time.perf_counter()
                y = host_fn(n, args, r)
                rec.wall_s = time.perf_counter() - t
                return y
            return on_host
        if node.op not in self.ENGINE_OPS:
            raise GraphExecError(f"node {node.name}: placed on {p.where} but the executor has no Driver call "
                                 f"for op {node.op!r}")

        if any(g.name == node.name for g in self.fused.values()):
            return lambda n, args, r: args[0]           # its fc1's store applied the table
        for add, i in self.fused_adds.values():
            if add.name == node.name:
                return lambda n, args, r, i=i: args[i]      # its linear's store added the residual
        gelu = self.fused.get(node.name)
        call = self.ENGINE_OPS[node.op]
        if gelu is not None:
            rec.holds = gelu.outputs[0]
            call = lambda d, n, a, r: _linear(d, n, a, r, lut=_vec_params(r, gelu, "LutParams"))  # noqa: E731
        if node.name in self.fused_adds:
            add, i = self.fused_adds[node.name]
            rec.holds, call = add.outputs[0], self._fused_add_call(add, i)

        def on_engine(n, args, r):
            traffic, t = self.driver.device.traffic, time.perf_counter()
            before = traffic.to_ddr + traffic.from_ddr
            y, runs = call(self.driver, n, args, r)
            rec.cycles, rec.calls = sum(x.cycles for x in runs), len(runs)
            rec.ddr_bytes = traffic.to_ddr + traffic.from_ddr - before
            rec.wall_s = time.perf_counter() - t
            return y
        return on_engine

    def check(self, env: dict, ref: dict) -> list[NodeRecord]:
        """Mark every executed node bit-exact or not against the interpreter's environment `ref`;
        returns the records that differ."""
        bad = []
        outputs = {n.name: n.outputs[0] for n in self.graph.nodes}
        for name, rec in self.records.items():
            out = rec.holds or outputs[name]
            a, b = np.asarray(env[out]), np.asarray(ref[out])
            rec.exact = a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
            if not rec.exact:
                bad.append(rec)
        return bad

    def table(self) -> str:
        """Per node: placement, bit-exact (after check), cycles, host <-> DDR bytes, reason; then per stage
        and placement: nodes, overlay cycles and their time at the preset's clock, wall time, DDR bytes."""
        lines = [f"{'node':44s} {'op':16s} {'on':9s} {'exact':5s} {'cycles':>10s} {'DDR bytes':>10s}  reason"]
        totals: dict = {}
        for r in self.records.values():
            ex = "-" if r.exact is None else "yes" if r.exact else "NO"
            lines.append(f"{r.name:44s} {r.op:16s} {r.where:9s} {ex:5s} {r.cycles:10,d} {r.ddr_bytes:10,d}  {r.reason}")
            t = totals.setdefault((r.stage, r.where), [0, 0, 0.0, 0])
            t[0], t[1], t[2], t[3] = t[0] + 1, t[1] + r.cycles, t[2] + r.wall_s, t[3] + r.ddr_bytes
        lines.append(f"{'stage':16s} {'on':10s} {'nodes':>5s} {'cycles':>12s} {'modelled ms':>11s} {'wall ms':>8s} "
                     f"{'DDR bytes':>11s}   (modelled at {self.cfg.clock_mhz:g} MHz)")
        for (stage, where), (k, c, w, b) in sorted(totals.items()):
            ms = c / (self.cfg.clock_mhz * 1e3)
            lines.append(f"{stage:16s} {where:10s} {k:5d} {c:12,d} {ms:11.3f} {w * 1e3:8.1f} {b:11,d}")
        return "\n".join(lines)

    def stage_totals(self) -> dict[str, dict]:
        """Per stage of the executed nodes: counts by placement; the overlay's modelled time (its engine
        cycles at the preset's clock); the host nodes' modelled time on the board's CPU (the placement's
        sw.perf.host_model figure); this process's wall time of engine nodes (simulation + copies) and of
        host nodes; host <-> DDR bytes of the engine nodes' Driver calls."""
        out: dict[str, dict] = {}
        for r in self.records.values():
            t = out.setdefault(r.stage, dict(engine_nodes=0, host_nodes=0, layout_nodes=0, cycles=0,
                                             overlay_s=0.0, host_model_s=0.0, engine_wall_s=0.0,
                                             host_wall_s=0.0, ddr_bytes=0))
            if r.where in ("host", "layout"):
                t[f"{r.where}_nodes"] += 1
                t["host_wall_s"] += r.wall_s
                t["host_model_s"] += self.placements[r.name].host_seconds if r.where == "host" else 0.0
            else:
                t["engine_nodes"] += 1
                t["cycles"] += r.cycles
                t["engine_wall_s"] += r.wall_s
                t["ddr_bytes"] += r.ddr_bytes
        for t in out.values():
            t["overlay_s"] = t["cycles"] / (self.cfg.clock_mhz * 1e6)
        return out
