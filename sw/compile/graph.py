"""The int8 SAM 2 graph -> programs for an OverlayConfig: every node placed on an engine or the host.

The rule (docs/profile.md), per node:
  1. Layout nodes (window partition / unpartition, slices) are DMA addressing: placed "layout",
     no time of their own (the neighbouring programs read and write with those strides).
  2. Host-only nodes (quantise / dequantise at the model's edges, the prompt encoder, the decoder's
     single-token MLPs) run on the host.
  3. Every other node has its engine candidate: linear, 1x1 and transposed 2x2/s2 convolutions and
     the mask product on the GEMM engine; K x K convolutions on the convolution engine and depthwise
     7x7 on the depthwise engine (else the convolution engine's depthwise mode), with the GEMM array's
     relayouts of their planes from and to token rows (conv_route; without those, the strided ones with
     K <= 2 x stride as a linear over their im2col patches on the GEMM engine); attention on the
     attention engine; element-wise int ops on the vector engine. A candidate exists when the preset
     has the engine and the compiler accepts the shape (its CompileError says why not).
  4. The node goes where it is fastest: the candidate's time (the cycle model on the compiled
     program at the preset's clock, or its DDR bytes at the board's DDR bandwidth when that is
     longer) against the host's (sw.perf.host_model). Small attentions (the mask decoder's 8-token
     ones, small windows) go wherever that comparison says, not wherever they happen to fit.

Lowering: a node becomes one program, or several over blocks of its rows when it would exceed
PROGRAM_UNITS descriptors of a unit. Engine programs are compiled for their shapes with zero operands
(timing needs no data) and timed with sw.backends.cycles.program_cycles: the cycles the sim backend
reports when it runs the same program with data (tests/test_profile.py). Programs of the same shape
are compiled once per process.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from hw import isa
from hw.vector import params as VP
from hw.limits import im2col_row_beats
from sw.compile.linear import gc_paused
from sw.perf.host_model import HostModel, ddr_gbs, host_for, host_seconds
from sw.perf.layers import Layer

LAYOUT_OPS = ("window_partition", "window_unpartition", "slice")
HOST_OPS = ("quantize", "dequantize", "prompt_encoder", "mlp")
VECTOR_OPS = ("layernorm", "gelu", "add", "rescale", "rope", "maxpool2x2", "upsample2x")

#: graph op -> the vector engine's op (hw.isa.VEC_OPS)
VECTOR_ENGINE_OPS = {"layernorm": "LAYERNORM", "gelu": "LUT", "add": "ADD", "rescale": "RESCALE", "rope": "ROPE",
                     "maxpool2x2": "MAXPOOL", "upsample2x": "UPSAMPLE"}
#: The most descriptors of one unit in one program of the graph compiler. A bigger node is lowered to
#: several programs over blocks of its rows (linear: M rows; attention: heads, then query rows), each
#: started on its own; equal blocks share one compiled program. Blocks this size cost about 1 % of the
#: GEMM time (weights loaded again per block, the pipeline's fill and drain: kv260 0.4 %, pynq-z2 1 %
#: on a tiny frame) and keep a whole tiny frame's compile within seconds.
PROGRAM_UNITS = 16384
#: lanes of the vector engine assumed for a preset that has one but does not say how many
VECTOR_DEFAULT_LANES = 16


def vector_commands(cfg, op: str, shape: tuple) -> list[dict]:
    """The VECTOR descriptors' fields sw.compile.vector emits for a graph node `op` on int8 `shape`
    ((rows, D), or (H, W, C) for max-pool and upsample): commands of at most MAX_ROWS rows."""
    from sw.compile.vector import MAX_ROWS, row_dim
    from sw.runtime.layout import TokenRowLayout
    vop = VECTOR_ENGINE_OPS[op]
    dim = row_dim(vop, shape[-1])
    image = vop in ("MAXPOOL", "UPSAMPLE")
    rows, width = math.prod(shape) // dim, 0
    if image:                                      # image rows of `width` pixels ((tokens, C): a square map)
        rows, width = (math.prod(shape[:-2]), shape[-2]) if len(shape) >= 3 else (math.isqrt(rows), 0)
        width = width or shape[0] // rows
    pitch = TokenRowLayout(rows, dim, cfg.cols).pitch // cfg.beat_bytes
    out = []
    for r0 in range(0, rows, MAX_ROWS):
        n = min(MAX_ROWS, rows - r0)
        aux = n if vop == "ADD" else min(VP.ROPE_DEPTH, n * dim // 2) if vop == "ROPE" else 0
        out.append(dict(target=isa.VEC_OPS[vop], vec_rows=n, vec_width=width, vec_dim=dim, vec_pitch=pitch,
                        vec_aux=aux))
    return out


def vector_cycles(cfg, op: str, shape: tuple, lanes: int) -> tuple[int, str]:
    """(cycles, bound) of a graph element-wise node on a vector engine of `lanes` lanes: its commands
    timed by the engine's own cycle model (sw.backends.sim_vector.cycles, within 1.3 % of the RTL), the
    bound from the engine's and the DDR port's steady-state rates (sim_vector.bounds)."""
    from types import SimpleNamespace

    from sw.backends import sim_vector
    from sw.compile.vector import row_dim
    eng = SimpleNamespace(vec_lanes=lanes, beat_bytes=cfg.beat_bytes, cols=cfg.cols)
    cycles = sum(sim_vector.cycles(eng, d) for d in vector_commands(cfg, op, shape))
    vop = VECTOR_ENGINE_OPS[op]
    engine, ddr = sim_vector.bounds(eng, vop, row_dim(vop, shape[-1]))
    return cycles, "DDR" if ddr < engine else "compute"


def vector_lanes(cfg, assume: int = 0) -> int:
    """Lanes of the preset's vector engine (0: none); `assume` > 0 profiles as if it had one."""
    if assume:
        return assume
    if "vector" in cfg.engines:
        return getattr(cfg, "vec_lanes", 0) or VECTOR_DEFAULT_LANES
    return 0


@dataclass(frozen=True)
class EngineCost:
    """One node's programs on one engine: cycles (all programs, back to back), DDR bytes, the
    engine's MACs per cycle (utilisation = useful MACs / (cycles x these)), programs."""
    engine: str
    cycles: int
    ddr_bytes: int
    array_macs: int
    programs: int = 1
    bound: str = ""          # set where the engine's own model says (the vector engine's)
    note: str = ""           # how the executor runs it, where that is not plain (its placement's reason says)


@dataclass(frozen=True)
class Placement:
    layer: Layer
    where: str            # engine name, "host" or "layout"
    reason: str
    cycles: int           # overlay cycles (0 on the host)
    seconds: float        # its time: overlay max(cycles / clock, DDR bytes / DDR bandwidth), or the host's
    ddr_bytes: int        # bytes the overlay moves (the host: the bytes it copies in and out)
    bound: str            # "compute", "DDR", "host" or "" (layout)
    array_macs: int = 0
    host_seconds: float = 0.0

    @property
    def macs(self) -> int:
        return self.layer.macs

    @property
    def utilisation(self) -> float:
        return self.macs / (self.cycles * self.array_macs) if self.cycles and self.array_macs else 0.0


# ---------------------------------------------------------------- DDR bytes of a program

def descriptor_ddr_bytes(cfg, raw: np.ndarray) -> int:
    """Bytes a descriptor list moves between DDR and the overlay: every LOAD's and IM2COL's beats,
    every STORE's rows, every DEPTHWISE's planes and VECTOR's rows in and out, and the descriptors themselves."""
    from sw.backends.cycles import K_IM2COL, K_LOAD, K_STORE, classify, decode_descriptors
    f = decode_descriptors(raw)
    kind = classify(cfg, f)
    DB, C = cfg.beat_bytes, cfg.cols
    count = f["count"]
    eb = np.zeros(len(kind), np.int64)
    for name, code in isa.TARGETS.items():
        if name != "IM2COL" and isa.has_target(cfg, name):
            eb[f["target"] == code] = isa.entry_bytes(cfg, name)
    load = -(-count * eb // DB) * DB
    kk = f["kernel_last"] + 1
    im2col = (f["out_rows_last"] + 1) * count * kk * im2col_row_beats(
        cfg, kk, np.left_shift(1, f["stride_log2"]), f["col_offset"]) * DB
    store = (f["tiles_last"] + 1) * count * C * np.where(f["out_int32"] != 0, 4, 1)
    dw = f["dw_channels"] * (2 * count + f["dw_kernel_last"]) * f["stride"]
    op = f["opcode"]
    n_in, n_out = isa.vector_rows(f["target"], f["vec_rows"], f["vec_width"])
    b_rows = np.where(f["target"] == isa.VEC_OPS["ADD"], f["vec_aux"], 0)
    vec = (n_in + n_out + b_rows) * VP.beats(f["vec_dim"], DB) * DB     # rows in (and b), rows out
    moved = np.select([kind == K_LOAD, kind == K_IM2COL, kind == K_STORE, op == isa.OPCODES["DEPTHWISE"],
                       op == isa.OPCODES["VECTOR"]], [load, im2col, store, dw, vec], 0)
    return int(moved.sum()) + len(kind) * isa.DESCRIPTOR_BYTES


def program_cost(prog) -> tuple[int, int]:
    """(cycles, DDR bytes) of a compiled program: sw.backends.cycles.program_cycles and its descriptors'
    bytes."""
    from sw.backends.cycles import program_cycles
    raw = prog.image[:len(prog.descriptors) * isa.DESCRIPTOR_BYTES]
    return program_cycles(prog), descriptor_ddr_bytes(prog.cfg, raw)


def descriptors_cost(cfg, raw: np.ndarray, runs=None) -> tuple[int, int]:
    """program_cost of a program whose descriptor bytes are `raw` and runs `runs` (its data does not count)."""
    from sw.backends.cycles import cycles_only
    return cycles_only(cfg, raw, runs), descriptor_ddr_bytes(cfg, raw)


# ---------------------------------------------------------------- engine programs by shape (cached)

def _zeros(*shape):
    return np.zeros(shape, np.int8)


def _ones(n):
    return np.ones(n, np.int64)


def linear_cost(cfg, m: int, k: int, n: int, out_int32: bool = False) -> EngineCost:
    """A linear node's programs: blocks of M rows within PROGRAM_UNITS, equal blocks compiled once."""
    tiles = _linear_block_tiles(cfg, k, n)
    return _blocks(m, tiles * cfg.rows, lambda rows: _linear_program(cfg, rows, k, n, out_int32))


def _linear_block_tiles(cfg, k: int, n: int) -> int:
    """M-tiles per program so no unit exceeds PROGRAM_UNITS descriptors (sw.compile.linear's schedule:
    per M-tile and N-tile one COMPUTE and (non-resident K) two LOADs per K chunk, a PARAM load, a STORE)."""
    half = min(cfg.a_depth, cfg.b_depth) // 2
    chunks = 1 if k <= half else -(-k // half)
    per_tile = (2 * chunks + 1) * -(-n // cfg.cols)
    return max(1, PROGRAM_UNITS // per_tile)


def _blocks(total: int, block: int, cost) -> EngineCost:
    """Programs over `total` rows in blocks of `block`: the full blocks' cost (compiled once) times
    their number plus the remainder's."""
    full, rest = divmod(total, block)
    parts = ([(full, cost(block))] if full else []) + ([(1, cost(rest))] if rest else [])
    first = parts[0][1]
    return EngineCost(first.engine, sum(c * p.cycles for c, p in parts), sum(c * p.ddr_bytes for c, p in parts),
                      first.array_macs, sum(c * p.programs for c, p in parts))


@lru_cache(maxsize=None)
def _linear_program(cfg, m: int, k: int, n: int, out_int32: bool) -> EngineCost:
    from sw.compile.linear import linear_descriptors
    return EngineCost("gemm", *descriptors_cost(cfg, *linear_descriptors(cfg, m, k, n, out_int32)), cfg.macs)


@lru_cache(maxsize=None)
def conv_cost(cfg, cin: int, h: int, w: int, cout: int, k: int, stride: int, padding: int,
              depthwise: bool = False) -> EngineCost:
    from sw.compile.conv import compile_conv2d
    wshape = (cout, 1, k, k) if depthwise else (cout, cin, k, k)
    prog = compile_conv2d(cfg, _zeros(cin, h, w), _zeros(*wshape), None, _ones(cout), _ones(cout), stride=stride,
                          padding=padding, depthwise=depthwise)
    return EngineCost("conv", *program_cost(prog), cfg.macs)


@lru_cache(maxsize=None)
def depthwise_cost(cfg, c: int, h: int, w: int, k: int, padding: int) -> EngineCost:
    from sw.compile.conv import compile_depthwise
    prog = compile_depthwise(cfg, _zeros(c, h, w), _zeros(c, 1, k, k), None, _ones(c), _ones(c), padding=padding)
    return EngineCost("depthwise", *program_cost(prog), prog.array_macs)


def conv_route(cfg, k: int, stride: int, padding: int, batch: int = 1) -> str:
    """How the executor runs a K x K convolution (not 1 x 1 / 1; sw.runtime.graph_exec._conv_dev), which the
    placement prices: "planes" on the convolution engine between token rows (the GEMM array's relayouts from
    and to its planes, its input written there by the host where the host made it); without the convolution
    engine or the transposing LOAD, or for a batch, "patches" (a linear over its im2col patches, gathered on
    the host) where K <= 2 x stride (at most about 4 times the map's elements), else "host-planar" (the
    convolution engine from and to the host). A 1 x 1 / 1 convolution is "linear": a linear on its input's
    token rows."""
    from sw.compile.conv import supported
    from sw.runtime.layout import transpose_refusal
    if k == 1 and stride == 1 and padding == 0:
        return "linear"
    if batch == 1 and supported(cfg, k, stride, padding) is None and transpose_refusal(cfg) is None:
        return "planes"
    return "patches" if k <= 2 * stride else "host-planar"


def planes_cost(cfg, one: EngineCost, ins: tuple | None, outs: tuple, order: int | None,
                note: str = "its planes from and to token rows on the GEMM array") -> EngineCost:
    """An engine's planar program `one` between token rows: with the relayouts of its output (outs: channels,
    H, W; in window order `order`) and, unless the host writes it (ins None), of its input."""
    from sw.runtime.layout import compile_planar_to_rows, compile_rows_to_planar
    progs = [compile_planar_to_rows(cfg, *outs, order=order)] + ([compile_rows_to_planar(cfg, *ins)] if ins else [])
    costs = [program_cost(p) for p in progs]
    return EngineCost(one.engine, one.cycles + sum(c for c, _ in costs), one.ddr_bytes + sum(b for _, b in costs),
                      one.array_macs, one.programs + len(progs), note=note)


def attention_cost(cfg, heads: int, lq: int, lk: int, d: int) -> EngineCost:
    """An attention node's programs: whole when within PROGRAM_UNITS descriptors a unit; else groups
    of heads (windows x heads), else per head blocks of query rows (whole groups of the engine's query
    slots); equal programs compiled once."""
    from sw.compile.attention import program_counts, query_slots
    R = cfg.rows
    qt = -(-lq // R)
    per_head = max(program_counts(cfg, qt, lk, d).values())
    if per_head * heads <= PROGRAM_UNITS:
        return _attention_program(cfg, heads, lq, lk, d)
    if per_head <= PROGRAM_UNITS:
        return _blocks(heads, PROGRAM_UNITS // per_head, lambda h: _attention_program(cfg, h, lq, lk, d))
    slots = query_slots(cfg, -(-d // cfg.cols) * cfg.cols, qt)
    tiles = slots
    while tiles + slots < qt and max(program_counts(cfg, tiles + slots, lk, d).values()) <= PROGRAM_UNITS:
        tiles += slots
    one = _blocks(lq, tiles * R, lambda rows: _attention_program(cfg, 1, rows, lk, d))
    return EngineCost(one.engine, one.cycles * heads, one.ddr_bytes * heads, one.array_macs, one.programs * heads)


@lru_cache(maxsize=None)
def _attention_program(cfg, heads: int, lq: int, lk: int, d: int) -> EngineCost:
    from golden_model.intattn import AttentionQuant
    from sw.compile.attention import attention_descriptors
    raw = attention_descriptors(cfg, heads, lq, lk, d, AttentionQuant(1 << 14, 14, 1 << 14, 14))
    return EngineCost("attention", *descriptors_cost(cfg, raw), 2 * cfg.macs)


def engine_cost(cfg, layer: Layer, lanes: int = 0, host_input: bool = False,
                order: int | None = None) -> tuple[EngineCost | None, str]:
    """The node's program on its engine, or (None, why not). `host_input`: its input is a host array (a graph
    input, a host node's output): a convolution between token rows has the host write its input planes;
    `order`: the window order its output is stored in (window_orders), which its relayout writes."""
    from sw.compile.conv import dw_supported, supported
    from sw.compile.linear import CompileError
    op, a = layer.op, layer.attrs
    x = layer.in_shapes[0] if layer.in_shapes else ()
    try:
        if op == "linear":
            return linear_cost(cfg, math.prod(x[:-1]), x[-1], layer.out_shape[-1]), ""
        if op == "mask_product":          # (1, H, W, c) x c -> masks, int32 logits
            return linear_cost(cfg, math.prod(x[1:-1]), x[-1], layer.out_shape[1], True), ""
        if op == "conv_transpose":        # kernel == stride: every pixel's K x K patch, then a pixel shuffle
            k = a["k"]
            return linear_cost(cfg, math.prod(x[:-1]), x[-1], layer.w_shape[1] * k * k), ""
        if op in ("conv", "depthwise"):
            n, h, w, cin = x
            k, s, p = a["k"], a.get("stride", 1), a.get("padding", 0)
            cout = layer.out_shape[-1]
            if op == "conv" and k == 1 and s == 1 and p == 0:
                return linear_cost(cfg, n * h * w, cin, cout), ""
            ho, wo = layer.out_shape[1:3]
            ins = None if host_input else (cin, h, w)
            if op == "depthwise" and dw_supported(cfg, k, s, p, w, False) is None:
                from sw.runtime.layout import transpose_refusal
                one = depthwise_cost(cfg, cin, h, w, k, p)
                if n == 1 and transpose_refusal(cfg) is None:
                    return planes_cost(cfg, one, ins, (cout, ho, wo), order), ""
            else:
                route = conv_route(cfg, k, s, p, n) if op == "conv" else "host-planar"
                if route == "patches":
                    return replace(linear_cost(cfg, n * ho * wo, cin * k * k, cout),
                                   note="as a linear over its im2col patches"), ""
                why = supported(cfg, k, s, p)
                if why:
                    return None, why
                one = conv_cost(cfg, cin, h, w, cout, k, s, p, op == "depthwise")
                if route == "planes":
                    return planes_cost(cfg, one, ins, (cout, ho, wo), order), ""
            return EngineCost(one.engine, one.cycles * n, one.ddr_bytes * n, one.array_macs, n), ""
        if op == "attention":
            if "attention" not in cfg.engines:
                return None, "no attention engine"
            heads = a.get("heads", 1)
            q, k = layer.in_shapes[0], layer.in_shapes[1]
            return attention_cost(cfg, q[0] * heads, math.prod(q[1:-1]), math.prod(k[1:-1]), q[-1] // heads), ""
        if op in VECTOR_OPS:
            if not lanes:
                return None, "no vector engine"
            cycles, bound = vector_cycles(cfg, op, tuple(x), lanes)
            return EngineCost("vector", cycles,
                              layer.bytes_in() + layer.bytes_out(), 0, bound=bound), ""
    except CompileError as e:
        return None, str(e)
    return None, f"no engine runs {op}"


# ---------------------------------------------------------------- placement

def host_cost(host: HostModel, layer: Layer) -> float:
    """The host's time for a node (attention: its score matrix is what the passes run over)."""
    elements = layer.elements
    if layer.op == "attention":
        q, k = layer.in_shapes[0], layer.in_shapes[1]
        elements = q[0] * layer.attrs.get("heads", 1) * math.prod(q[1:-1]) * math.prod(k[1:-1])
    return host_seconds(host, layer.op, elements, layer.macs, layer.bytes_in(), layer.bytes_out())


def place(cfg, layer: Layer, host: HostModel | None = None, lanes: int = 0, host_input: bool = False,
          order: int | None = None) -> Placement:
    """One node's placement by the rule in this module's docstring (`host_input`, `order`: engine_cost's)."""
    host = host or host_for(cfg)
    if layer.op in LAYOUT_OPS:
        return Placement(layer, "layout", "DMA addressing (strides of the neighbouring programs)", 0, 0.0, 0, "")
    hs = host_cost(host, layer)
    host_bytes = layer.bytes_in() + layer.bytes_out()
    if layer.op in HOST_OPS or layer.host:
        why = "float op (the builder's host node)" if layer.host else "host op"
        return Placement(layer, "host", why, 0, hs, host_bytes, "host", host_seconds=hs)
    eng, why = engine_cost(cfg, layer, lanes, host_input, order)
    if eng is None:
        return Placement(layer, "host", why, 0, hs, host_bytes, "host", host_seconds=hs)
    clock = cfg.clock_mhz * 1e6
    ddr_s = eng.ddr_bytes / (host.ddr_gbs * 1e9)
    seconds = max(eng.cycles / clock, ddr_s)
    floor_s = layer.macs / (eng.array_macs * clock) if eng.array_macs else 0.0
    bound = eng.bound or ("DDR" if eng.ddr_bytes / (ddr_gbs(cfg, host) * 1e9) >= floor_s else "compute")
    if hs < seconds:
        return Placement(layer, "host", f"faster on the host ({_ms(hs)} vs {eng.engine} {_ms(seconds)})", 0, hs,
                         host_bytes, "host", host_seconds=hs)
    return Placement(layer, eng.engine, f"{eng.engine} {_ms(seconds)} < host {_ms(hs)}" + (
        f"; {eng.note}" if eng.note else ""), eng.cycles, seconds, eng.ddr_bytes, bound, eng.array_macs, hs)


def window_orders(layers: list[Layer]) -> dict[str, int]:
    """node -> the window size ws whose order (DeviceTensor.order) its output is stored in: the nodes that
    lead to a window partition of ws tiling its map exactly, so the partition is the buffer as it is:
    back from it through row-wise nodes (add, layernorm, GELU, rescale, a linear's A), a 2x2 max-pool (its
    input in order 2 ws) and up to a window unpartition of ws (its windows are the map in that order) or a
    convolution (the patch embedding: graph_exec._conv_dev writes its output rows in that order). The
    vector nodes of this map write their output in its order (their host operands so; one in DDR in
    another order read back), the others in the map's order: Hiera's later stages, whose windows pad, and
    their global attentions read their maps in place."""
    writers = {x.output: x for x in layers if x.output}
    want: dict[str, int] = {}
    for node in layers:
        if node.op != "window_partition":
            continue
        ws, (b, h, w, _) = node.attrs["ws"], node.in_shapes[0]
        exact = b == 1 and 1 < ws < max(h, w) and h % ws == 0 and w % ws == 0     # (ws = h = w: one window)
        todo = [(node.inputs[0], ws)] if exact else []
        while todo:
            t, ws = todo.pop()
            p = writers.get(t)
            if p is None or p.name in want or p.op == "window_unpartition" and p.attrs["ws"] != ws or p.op not in (
                    "add", "layernorm", "gelu", "rescale", "linear", "maxpool2x2", "window_unpartition", "conv"):
                continue
            want[p.name] = ws
            if p.op not in ("window_unpartition", "conv"):
                todo += [(i, 2 * ws if p.op == "maxpool2x2" else ws)
                         for i in (p.inputs[:2] if p.op == "add" else p.inputs[:1])]
    return want


@gc_paused
def place_all(cfg, layers: list[Layer], host: HostModel | None = None, lanes: int = 0) -> list[Placement]:
    host = host or host_for(cfg)
    written = {x.output for x in layers if x.output}
    on_host: set = set()          # tensors the host holds: graph inputs (the frame), host nodes' outputs
    want, out = window_orders(layers), []
    for layer in layers:
        first = layer.inputs[0] if layer.inputs else None
        p = place(cfg, layer, host, lanes, host_input=first is not None and (first not in written or first in on_host),
                  order=want.get(layer.name))
        if p.where == "host" and layer.output:
            on_host.add(layer.output)
        out.append(p)
    return fuse_store_tables(cfg, out)


def fuse_store_tables(cfg, placements: list[Placement]) -> list[Placement]:
    """On an overlay with the GEMM store table (engine store_lut): a GELU whose input only a linear on the
    GEMM engine writes and only the GELU reads rides in that linear's store (compile_linear(lut=...)):
    placed "gemm", no cycles (the table stage adds a cycle per STORE, a LOAD of 256 bytes per program) and
    no DDR bytes (the hidden tensor is written once, GELU'd, and never read back for it).
    With the store's residual add (engine store_add) likewise an add of such a linear's output (`fused_adds`):
    the add rides in the linear's store (compile_linear(residual=, add=)), which reads the residual (its
    bytes move to the linear's placement): the linear's output is never written alone nor read back."""
    readers: dict[str, int] = {}
    for p in placements:
        for t in p.layer.inputs:
            readers[t] = readers.get(t, 0) + 1
    writers = {p.layer.output: p for p in placements if p.layer.output}
    adds = fused_adds(cfg, placements)
    by_name = {p.layer.name: p for p in placements}
    residual_bytes = {src: math.prod(by_name[add].layer.out_shape) for add, (src, _) in adds.items()}
    out = []
    for p in placements:
        src = writers.get(p.layer.inputs[0]) if p.layer.op == "gelu" and p.layer.inputs and not p.layer.host else None
        if ("store_lut" in cfg.engines and src is not None and src.layer.op == "linear" and src.where == "gemm"
                and readers[p.layer.inputs[0]] == 1):
            p = Placement(p.layer, "gemm", f"fused into {src.layer.name}'s store (store_lut)", 0, 0.0, 0, "",
                          host_seconds=p.host_seconds)
        elif p.layer.name in adds:
            p = Placement(p.layer, "gemm", f"fused into {adds[p.layer.name][0]}'s store (store_add)", 0, 0.0, 0, "",
                          host_seconds=p.host_seconds)
        elif p.layer.name in residual_bytes:
            p = replace(p, ddr_bytes=p.ddr_bytes + residual_bytes[p.layer.name])
        out.append(p)
    return out


def fused_adds(cfg, placements: list[Placement]) -> dict[str, tuple[str, int]]:
    """The adds that ride in a linear's store on an overlay with store_add: add name -> (the linear, which
    of the add's inputs it writes). The linear is on the GEMM engine and the add its output's only reader;
    the other input (the residual) has the same shape (no broadcast) and is there when the linear runs
    (written before it in node order, or a graph input)."""
    if "store_add" not in cfg.engines:
        return {}
    readers: dict[str, int] = {}
    order = {p.layer.output: i for i, p in enumerate(placements) if p.layer.output}
    for p in placements:
        for t in p.layer.inputs:
            readers[t] = readers.get(t, 0) + 1
    out = {}
    for p in placements:
        lay = p.layer
        if (lay.op != "add" or lay.host or len(lay.inputs) != 2 or len(lay.in_shapes) != 2
                or lay.in_shapes[0] != lay.in_shapes[1]):
            continue
        for i, t in enumerate(lay.inputs):
            src = placements[order[t]] if t in order else None
            other = lay.inputs[1 - i]
            if (src is not None and src.layer.op == "linear" and src.where == "gemm" and not src.layer.host
                    and readers[t] == 1 and order.get(other, -1) < order[t]):
                out[lay.name] = (src.layer.name, i)
                break
    return out


def _ms(s: float) -> str:
    return f"{s * 1e3:.3g} ms"
