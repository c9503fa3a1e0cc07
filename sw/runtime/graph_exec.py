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

Activations in DDR (chain=True, the default). Within a run (run(), or run_nodes for the video
executor) an engine node whose output is token rows (sw.runtime.layout.TokenRowLayout: a linear's out,
every vector op's out, attention's out with its heads merged) leaves it in an arena buffer (a
DeviceTensor: buffer, layout, shape) instead of reading it back; the next node reads it in place where
the layouts agree, and the buffer is freed after its last reader in the run (liveness from the graph),
so the arena holds only the live activations.
Where the layouts agree (read in place, no host bytes):
  linear or vector op out -> layernorm, GELU table, rescale, add (both operands), maxpool / upsample on the
  vector engine (rows wider than the engine's MAX_DIM run as narrower rows: in place when the channels
  are a multiple of C, so no row is padded; a batch of images, the Q-pooled blocks' windows, is one
  call on them stacked, (N H, W, C), their token rows as they are);
  window partition / unpartition by addressing (window_alias): a map whose rows are in window order
  (DeviceTensor.order) is its windows' token rows as they are, and windows are their map in that
  order, so a window node moves no byte where ws tiles the map exactly (Hiera's first two stages):
  the row-wise nodes (linear, layernorm, GELU, rescale, add) keep their input's row order, the
  positional embedding's add writes its host operands in it (window_orders), a 2x2 max-pool of a map
  in window order ws pools its windows and leaves order ws / 2; an unpartition of windows tiling their map
  is always the map in window order, and a row-wise op wanted in the map's order whose operands in DDR
  share one window order (stage 2's last residual add: its unpartition and its max-pooled shortcut) runs
  in it and writes each window row where the map has it (sw.runtime.layout.RowRuns.unwindows); anything
  else that reads such a map (attention, the convolutions, the host) takes it back to the map's order,
  from the host;
  padded windows (ws not dividing the map: Hiera's later stages): the partition is a copy of the map into
  them on the vector engine (an identity rescale writing each run of a map row where window_partition puts
  it, sw.runtime.layout.RowRuns.windows) in a buffer the executor keeps and zeroes once a session, so the
  padding rows are zeros (GraphExecutor._pad_copy); the projections read the windows in place; the
  unpartition is the projection's windows as they are (DeviceTensor.pad), which a row op (the residual add)
  reads run by run;
  linear or vector op out -> a linear's A, on overlays with the transposing LOAD (load_t): the GEMM array
  reads A as tiles of R tokens, entry k = channel k of the tile's R tokens, which LOAD `transpose` makes
  of the token rows as it reads them (sw.compile.linear a_rows);
  linear or vector op out -> attention's Q, K and V on overlays with load_t: per query or key tile one
  LOAD reads the head's d columns of R or C token rows at the row pitch into K-major entries; a host
  array (a host node's output) is written there once (its bytes); and attention out -> the next node:
  each STORE writes R query rows x C columns of a head at its column h x d, row pitch heads x d
  (sw.compile.attention.TokenRows), so the heads are merged in DDR. Both need C to divide the head dim;
  otherwise, or without load_t, all of that attention crosses the host (the record's reason says why);
  linear or vector op out -> a K x K convolution and a depthwise one (the patch embedding, the mask downsampler,
  the fuser's 7 x 7) on their engines between token rows on load_t overlays (_planar_dev): the GEMM array
  moves the map into the planes the engines read (sw.runtime.layout.compile_rows_to_planar; a host input's
  pixels the host writes there) and their output planes back into token rows (compile_planar_to_rows, in the
  window order its readers want), left in DDR; without the conv engine or load_t, or for a batch, a strided one
  (K <= 2 x stride) runs as a linear over its im2col patches gathered on the host (_conv_dev), its output token
  rows too (sw.compile.graph.conv_route names the route, the placement prices it);
  a k x k, stride k transposed convolution (the decoder's upscaling) runs as a linear over its input's token rows
  (_conv_transpose_dev), its output left as the GEMM stores it: each input row's k x k output pixels as k k rows,
  the map in nested window order (subpixel_order: DeviceTensor.order a tuple), with no pixel shuffle; its
  readers up to the mask product are row-wise (any_order: they keep the order), and the mask product reads its
  pixels in place (_mask_dev: only its hypernetwork tokens written, as a bound B, and the int32 logits read,
  put in the map's order on the host); a row op with an operand in DDR in another row order (the skip feature
  beside a transposed convolution's output) reads it where it is, a command per stretch of rows consecutive in
  both orders (RowRuns.gather);
  a SegmentedTensor (token rows in several buffers, e.g. a memory bank's slots: the video executor's)
  -> a vector row op's inputs and attention's Q, K, V as token rows: one program region per range
  (sw.runtime.layout.RowSegments), each bound to its buffer, no command or tile straddling two.
Where they differ, the reader takes the tensor back to the host (its bytes counted as the reader's; the
table's "host own" column is the part issue 18 allows a frame: a host node's, the frame in, the logits out):
  * a linear's A without load_t (the ECP5 presets): the transpose of token rows done on the host as it
    writes A;
  * attention's Q, K, V and output on overlays without load_t or where C does not divide the head dim
    (heads split and tiled, and merged, on the host);
  * the convolutions without load_t or for a batch: planar (C, H, W) maps (sw.compile.conv.FmapLayout), image by
    image, and the token-row readers of their outputs (layernorm, add, the next linear); a strided convolution's
    patches gathered on the host (about K^2 / stride^2 times the map's bytes);
  * a fused add's residual (the GEMM store's RES region is N-tile major, not token rows): read back and
    written in the linear's row order;
  * a map inside padded windows read by anything but a row op (its windows' rows read back, cropped), and a
    map in window order read by anything but a row-wise node or a max-pool;
  * a transposed convolution whose Cout is not a multiple of C, and RoPE with an excluded tail or several batch
    rows (one ROPE call on one row is the video executor's _rope_dev, chained),
    and every host node (quantize, the decoder's float nodes: the host op's own bytes) and layout node
    not done by addressing.
What is still in DDR when a run ends and a later run reads (the graph's meta outputs, image_outputs and the
video's tensors, which a run keeps to its end: the image embedding and high-res features between set_image and
predict, a video frame's features for its memory attention, decoder and memory encoder, the memory attention's
output for the decoder) stays there: the env the run returns holds it as a Resident
(sw.runtime.device_tensor), a view the caller may transpose and reshape (the predictors' NCHW <-> NHWC and token
views) without reading it, and a later run given a view that is the tensor as stored reads it in place (arg);
np.asarray reads it back (counted to its producer); its buffer is freed with the last view. Anything else
still in DDR is read back then, counted to its producer, and stands in the env as an array. An intermediate
freed in the run stays a DeviceTensor that raises a clear error if read, unless read_back=True, which reads
each one back when it is freed (counted in check_bytes, not in the nodes' figures) so check() sees every value.
When the arena is full the run's device tensors are read back and freed (spilled_bytes) and the node
runs from the host. Programs stay loaded (the Driver's program cache, bounded by the arena alone): a node
that runs again (the next video frame) has its descriptors relinked to the new buffers and written again
(not when they sit where the last frame's did), its weights left in DDR (LoadedProgram.rebind); a full
arena drops kept programs first (Driver._drop_one). program_bytes counts what is written of them
(descriptors, and weights on a first load).
"""
from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import numpy as np

from golden_model import intconv
from golden_model.intops import MAX_K
from golden_model.intattn import AttentionQuant
from golden_model.intvec import RescaleParams
from golden_model.quant.interpret import merge_heads, nchw_to_nhwc, nhwc_to_nchw, split_heads
from golden_model.quant.intinterp import IntRunner, _mask_product, _requant_args, _vec_params
from sw.compile.attention import TokenRows, compile_attention_calls, token_rows_refusal
from sw.compile.conv import FmapLayout, compile_conv2d, compile_depthwise, dw_supported
from sw.compile.graph import conv_route, fused_adds, place_all, vector_lanes, window_orders
from sw.compile.linear import compile_linear
from sw.compile.vector import OPS as VECTOR_OPS, compile_vector, row_dim
from sw.perf.layers import graph_layers
from sw.runtime.arena import ArenaFull
from sw.runtime.compile_cache import freeze, zeros
from sw.runtime.device_tensor import (DeviceTensor, GraphExecError, Resident, SegmentedTensor, _in_place, _map_order,
                                      _padded, _segmented, _window_order, reorder_rows, subpixel_order,
                                      window_alias)
from sw.runtime.driver import Driver
from sw.runtime.layout import (RowRuns, TokenRowLayout, compile_planar_to_rows, compile_rows_to_planar,
                               transpose_refusal)


@dataclass
class NodeRecord:
    name: str
    op: str
    stage: str
    where: str            # engine, "host" or "layout" (sw.compile.graph.place)
    reason: str
    cycles: int = 0       # the Driver's runs (sum over its calls); 0 off the overlay
    calls: int = 0
    ddr_bytes: int = 0    # host <-> DDR bytes while it ran (program, weights, inputs in; output out; device
                          # inputs read back for it) and, at the run's end, its output read back if still in DDR
    program_bytes: int = 0   # of which descriptors and weights written by its program loads
    own_bytes: int = 0    # of which the host ops' own (issue 18's allowed kind; GraphExecutor._own_bytes)
    wall_s: float = 0.0   # this process's time for the node (engine nodes: compile + simulate + copies)
    device_s: float = 0.0  # of which inside the device's runs (RunStats.wall_s; sim: its data and cycle model)
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


def _split_heads(t, h):
    """(N, ..., C) -> (N * heads, L, d): every window's every head, one call."""
    s = split_heads(t, h)
    return np.ascontiguousarray(s.reshape((-1,) + s.shape[2:]))


def _attention_quant(n, r) -> AttentionQuant:
    return AttentionQuant(*(int(x) for x in r.params[n.name]["quant"]))


def _attention(drv, n, a, r):
    q, h = a[0], n.attrs["heads"]
    o = drv.attention(*(_split_heads(t, h) for t in a), _attention_quant(n, r))
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
        y = drv.linear(x, h, out_int32=True, keep=False)      # h is the frame's: never reused
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


# ---------------------------------------------------------------- engine nodes leaving their outputs in DDR
def _run_to_device(drv, prog, bind, layout, shape, producer, order=None, out: str | None = None) -> DeviceTensor:
    """Run `prog` (regions bound as `bind`) with its out region in a new buffer (or in `out`, a buffer the
    caller keeps: a kept program per such buffer, so a node writing into two of them relinks none; a memory bank
    slot's, pinned, its node's one program, which keeps a descriptor list per slot: Session.pin): that buffer as
    a DeviceTensor (rows in `order`: a row-wise op's, its input's)."""
    y = DeviceTensor(drv, out or drv.buffer(prog.regions["out"][1]).name, layout, shape, producer, order)
    try:
        drv.run_bound(prog, {**bind, "out": y.buffer}, owner=producer if out is None or out in drv.session.pinned
                      else f"{producer}@{out}")
    except BaseException:
        if out is None:
            y.free(keep=False)
        raise
    return y


def _linear_dev(drv, n, a, r, lut=None, residual=None, add=None, out=None, order=None, requant=None):
    """_linear with its output left in DDR (token rows); its A read in place where a DeviceTensor holds it in
    token rows and the overlay has the transposing LOAD (load_t), else from the host (`order`: the window
    order a host A's rows are in, _conv_dev's). `requant`: (multiplier, shift) instead of the node's."""
    x, w, b = a
    m, s = requant or _requant_args(r, n)
    tokens, k = math.prod(x.shape[:-1]), x.shape[-1]
    # row-wise: A's rows in whatever order they are, the output's in that order (the residual's written so)
    order = x.order if isinstance(x, DeviceTensor) else order
    in_place = "load_t" in drv.cfg.engines and _in_place(x, TokenRowLayout(tokens, k, drv.cfg.cols), order)
    order = order if in_place or not isinstance(x, DeviceTensor) else None     # read back: the map's order
    x2 = zeros((tokens, k)) if in_place else np.asarray(x).reshape(tokens, k)    # in place: its shape only
    if residual is not None:
        residual = _window_order(residual, order) if order else residual
        residual = np.ascontiguousarray(residual).reshape(-1, w.shape[0])
    base = drv._buffer_base()
    prog = drv.compiles.get(n.name, _linear_nk, drv.cfg, base, x2, w.reshape(w.shape[0], -1), b, m, s,
                            relu=n.attrs.get("relu", False), lut=lut, residual=residual, add=add, a_rows=in_place,
                            max_ddr_bytes=drv.ddr_bytes - base)
    y = _run_to_device(drv, prog, {"A": x.buffer} if in_place else {}, TokenRowLayout(prog.m, prog.n, drv.cfg.cols),
                       x.shape[:-1] + (w.shape[0],), n.name, order, out)
    return y, [drv.last_run]


def _linear_nk(cfg, base: int, a, w, *args, **kwargs):
    """Driver.compile's program with B given as a layer's (N, K) weights (torch's layout), transposed here: the
    compile cache compares (and keeps) the weights as they are, so a node's next call makes no transposed copy of
    them. A module-level function of its arguments alone (the program store keys it by them): a program at `base`
    in DDR."""
    return compile_linear(cfg, a, np.ascontiguousarray(w.T), *args, base_addr=base, **kwargs)


def _conv_dev(drv, n, a, r):
    """A K x K convolution with its output left in DDR as token rows (where a layernorm, an add or a linear reads
    it in place), by the route sw.compile.graph.conv_route names (the placement prices the same):
      "linear" (1 x 1 / 1): a linear on its input's token rows;
      "planes": on the convolution engine between token rows (_planar_dev), its input read in place;
      "patches" (no convolution engine or transposing LOAD, or a batch): a linear over its im2col patches, which
        the host gathers (its input read back where it is in DDR): A's token row for output pixel (y, x) is its
        K x K x Cin field in torch's (ci, ky, kx) order (golden_model.intconv.im2col), so the weights' rows are
        the linear's as they are and the int32 sums, hence the output, are the convolution's; its rows in the
        window order its readers want (window_orders: the patch embedding's);
      else planar from and to the host (_conv)."""
    x, w, b = a
    k, stride, pad = w.shape[2], n.attrs["stride"], n.attrs["padding"]
    route = conv_route(drv.cfg, k, stride, pad, x.shape[0])
    if route == "linear":
        return _linear_dev(drv, n, a, r)
    if route == "planes":
        m, s = _requant_args(r, n)
        ho, wo = (intconv.out_size(d, k, stride, pad) for d in x.shape[1:3])
        return _planar_dev(drv, n, x, r, (w.shape[0], ho, wo), (compile_conv2d, (w, b, m, s),
                                                                 {"stride": stride, "padding": pad}),
                           lambda: _conv(drv, n, _host_args(a), r))
    if route != "patches":
        return _conv(drv, n, _host_args(a), r)
    x = np.asarray(x)
    ho, wo = (intconv.out_size(d, k, stride, pad) for d in x.shape[1:3])
    patches = np.stack([intconv.im2col(xi, k, stride, pad).T.reshape(ho, wo, -1) for xi in nhwc_to_nchw(x)])
    order = _want(r, n) if patches.shape[0] == 1 else None       # its reader's window order (window_orders)
    return _linear_dev(drv, n, [_window_order(patches, order) if order else patches, w, b], r, order=order)


def _conv_transpose_dev(drv, n, a, r):
    """A k x k, stride k transposed convolution (non-overlapping patches: the decoder's upscaling) as a linear over
    its input's token rows (read in place as _linear_dev's A), N = k k Cout in (ky, kx, co) order: input row r's
    output row is its k x k output pixels' rows of Cout, so the output stays in DDR as the GEMM stores it, the map
    in subpixel_order (its input's order refined by k x k windows), with no pixel shuffle: its readers are
    row-wise (add, layernorm, GELU, the next one, the mask product; GraphExecutor.any_order) and read it so. Where
    Cout is not a multiple of C (its rows would be padded) or the input is a batch: _conv_transpose (planar maps,
    the host shuffles)."""
    x, w, b = a
    cin, cout, k = w.shape[0], w.shape[1], w.shape[2]
    if cout % drv.cfg.cols or x.shape[0] != 1 or n.attrs["stride"] != k or n.attrs.get("padding", 0):
        return _conv_transpose(drv, n, _host_args(a), r)
    tile = lambda v: np.tile(np.broadcast_to(np.asarray(v), (cout,)), k * k)     # noqa: E731  per (ky, kx, co)
    wl = np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(k * k * cout, cin))
    y, runs = _linear_dev(drv, n, [x, wl, None if b is None else tile(b)], r,
                          requant=tuple(tile(v) for v in _requant_args(r, n)))
    shape = (1, x.shape[1] * k, x.shape[2] * k, cout)
    y.layout, y.shape = TokenRowLayout(y.layout.tokens * k * k, cout, drv.cfg.cols), shape
    y.order = subpixel_order(y.order, k, shape)
    return y, runs


def _mask_dev(drv, n, a, r):
    """_mask reading its pixels (the upscaled map, in any row order) in place as the GEMM's A (load_t) and reading
    back only the int32 logits, put in the map's order on the host. g = C / M consecutive pixels (M masks) make
    one A row of g c channels (their token rows are contiguous when c is a multiple of C) and B is block-diagonal
    (g blocks of the c x M hypernetwork product), so an output row holds g pixels' M logits: C int32 columns, none
    padded (C / M times fewer bytes read than one pixel a row; the same MAC cycles: the array's C columns all
    used). B is the frame's (a host node's output: the host's own bytes), in a buffer bound to the kept program
    (_hyper_b: only its diagonal blocks written). Elsewhere _mask."""
    x, C = a[0], drv.cfg.cols
    tokens, c, m = math.prod(x.shape[:-1]), x.shape[-1], len(a) - 1
    g = C // m if C % m == 0 and tokens % (C // m) == 0 and c % C == 0 and c * C // m <= MAX_K else 1
    if "load_t" not in drv.cfg.engines or not _in_place(x, TokenRowLayout(tokens // g, g * c, C),
                                                         getattr(x, "order", None)):
        return _mask(drv, n, _host_args(a), r)
    runs = []

    def gemm(_, h):
        a0 = np.zeros((tokens // g, g * c), np.int8)     # A is x's buffer: the programs are compiled on its shape
        diagonal = lambda b: np.kron(np.eye(g, dtype=np.int8), b)     # noqa: E731  g blocks of b on the diagonal
        prog = drv.compile(a0, diagonal(np.zeros_like(h)), out_int32=True, a_rows=True)   # one program whatever h
        bbuf = _hyper_b(drv, r, n.name, lambda b: drv.compile(a0, diagonal(b), out_int32=True, a_rows=True).region("B"),
                        h)
        obuf = drv.buffer(prog.regions["out"][1]).name
        try:
            runs.append(drv.run_bound(prog, {"A": x.buffer, "B": bbuf, "out": obuf}, owner=n.name))
            s = drv.session
            acc = prog.unpack_out(s.backend.read(s.arena[obuf].addr, prog.regions["out"][1])).reshape(tokens, m)
        finally:
            drv.session.free(obuf)
        return _map_order(acc, x.order, x.shape[:-1] + (m,)).reshape(acc.shape) if x.order else acc
    return _mask_product(n, [np.zeros(x.shape, np.int8)] + list(a[1:]), r, gemm), runs


def _hyper_b(drv, r, owner: str, region, h) -> str:
    """The session buffer holding B region region(h) for the mask product `owner`: kept per node and session
    (r.b_buffers), zeroed when made (the block-diagonal's zero blocks stay), then only the bytes h sets written
    each call (those a B of ones makes nonzero, in runs: the host's own bytes, no zeros)."""
    def make():
        ones = region(np.ones_like(h))
        at = np.flatnonzero(ones)
        cuts = np.flatnonzero(np.diff(at) != 1) + 1
        return _upload(drv, np.zeros(ones.size, np.uint8), None, "hyper", top=True), [(int(a[0]), a.size)
                                                                            for a in np.split(at, cuts)]
    name, spans = r.b_buffers.get(owner, make)
    session = drv.session
    data, addr = region(h), session.arena[name].addr
    for start, size in spans:
        session.backend.write(addr + start, data[start:start + size])
    return name


def _depthwise_dev(drv, n, a, r):
    """A depthwise convolution on the depthwise engine between token rows (_planar_dev); else (a batch, no
    depthwise engine or transposing LOAD) _conv, from and to the host."""
    x, w, b = a
    k, pad = w.shape[2], n.attrs["padding"]
    if x.shape[0] != 1 or transpose_refusal(drv.cfg) or dw_supported(drv.cfg, k, n.attrs["stride"], pad,
                                                                      x.shape[2], False):
        return _conv(drv, n, _host_args(a), r)
    m, s = _requant_args(r, n)
    return _planar_dev(drv, n, x, r, _chw(x.shape), (compile_depthwise, (w, b, m, s), {"padding": pad}),
                       lambda: _conv(drv, n, _host_args(a), r))


def _chw(nhwc: tuple) -> tuple:
    """An (N, H, W, C) shape's image as (C, H, W)."""
    return nhwc[3], nhwc[1], nhwc[2]


def _planar_dev(drv, n, x, r, out_chw: tuple, engine: tuple, fallback):
    """A convolution engine's or the depthwise engine's program (engine: (compiler, its arguments after the
    config and the input map, its keyword arguments); planar maps in and out, FmapLayout; compiled through the
    compile cache) between token rows: its input, a (1, H, W, C) DeviceTensor in token rows, moved into its
    planes on the GEMM array (compile_rows_to_planar), or a host array's pixels written there (its bytes alone:
    the frame, the mask); its output planes moved back into token rows (compile_planar_to_rows, in the window
    order its readers want) and left in DDR. The planes are buffers the executor keeps a session per shape
    (GraphExecutor.plane), zeroed when made; only their pixels are ever written after, so their margins stay
    the zeros the engines read as padding. Where the arena has no room for them: fallback()."""
    cfg, (_, H, W, cin) = drv.cfg, x.shape
    planes = r.plane((cin, H, W), 0), r.plane(out_chw, 1)
    if None in planes:
        return fallback()
    rows_l, base, room = TokenRowLayout(H * W, cin, cfg.cols), drv.BUFFER_BASE, drv.ddr_bytes - drv.BUFFER_BASE
    runs = []
    if _in_place(x, rows_l):
        runs.append(drv.run_bound(compile_rows_to_planar(cfg, cin, H, W, base_addr=base, max_ddr_bytes=room),
                                  {"in": x.buffer, "out": planes[0]}, owner=f"{n.name} in"))
    else:
        lay, at = FmapLayout(cin, H, W, cfg.cols), drv.session.arena[planes[0]].addr
        for c, rows in enumerate(np.asarray(x)[0].transpose(2, 0, 1)):
            for yy, row in enumerate(rows):
                drv.device.write(at + lay.offset(c, yy, 0), row.view(np.uint8))
    compiler, args, kwargs = engine        # compiled on zeros (the input read in place): the same each frame
    prog = drv.compiles.get(n.name, compiler, cfg, zeros((cin, H, W)), *args, base_addr=base,
                            max_ddr_bytes=room, **kwargs)
    runs.append(drv.run_bound(prog, {"in": planes[0], "out": planes[1]}, owner=n.name))
    cout, ho, wo = out_chw
    order = _want(r, n)
    prog = compile_planar_to_rows(cfg, cout, ho, wo, order=order, base_addr=base, max_ddr_bytes=room)
    y = _run_to_device(drv, prog, {"in": planes[1]}, TokenRowLayout(ho * wo, cout, cfg.cols), (1, ho, wo, cout),
                       n.name, order)
    return y, runs + [drv.last_run]


def _vector_dev(drv, n, op, x, p=None, b=None, end_x=None, want=None, out=None, pad=None):
    """_rows / _image_op on the vector engine reading x (and add's b) in place where a DeviceTensor in the
    program's input layout holds it; its output left in DDR. Anything else is read back and written in.
    maxpool and upsample take one image: a batch (the Q-pooled blocks' windows) is one call on its images
    stacked, (N, H, W, C) as (N H, W, C), which is its token rows as they are (_stacked_images). `want`: the
    window order of the node's output (window_orders). A map inside its padded windows (DeviceTensor.pad) is
    read there by a row op, a command per run of its rows (RowRuns.windows); `pad` (ws, buffer): a row op
    writes its output so, into that buffer of zero padding rows (GraphExecutor.padded_out)."""
    shape, C = x.shape, drv.cfg.cols
    image = op in ("maxpool", "upsample")
    # the rows' order (DeviceTensor.order): a row-wise op's operands and output in `want`'s; a max-pool of a
    # map in window order ws pools its windows (2x2 cells never span two when ws is even) and leaves the
    # pooled map in window order ws / 2 (a reader wanting another reads the 4x smaller map back); any other
    # op reads the shape's order
    order = want if op in ROW_WISE else x.order if isinstance(x, DeviceTensor) and x.buffer is not None else None
    if order and not (op in ROW_WISE or op == "maxpool" and isinstance(order, int) and order % 2 == 0):
        order = None
    # a row op wanted in the map's order whose operands in DDR are all in one window order ws (a block's
    # last residual add before padded windows: its unpartition and its max-pooled shortcut) runs in that
    # order and writes each window row where the map has it (RowRuns.unwindows)
    out_runs = None
    if op in ROW_WISE and want is None and out is None and row_dim(VECTOR_OPS[op][0], shape[-1]) == shape[-1]:
        ws = _one_order((x, b), shape)
        if isinstance(ws, int):
            order, out_runs = ws, _row_runs("unwindows", shape[1], shape[2], ws)
    stored = (shape[1] * shape[2] // order ** 2, order, order, shape[3]) if image and order else shape
    if image and not _stacked_images(op, stored):
        return _image_op(op)(drv, n, [np.asarray(x)], None)
    dim = shape[-1] if image else row_dim(VECTOR_OPS[op][0], shape[-1])
    rows_l = TokenRowLayout(math.prod(shape) // dim, dim, C)
    form = (stored[0] * stored[1],) + stored[2:] if image else (rows_l.tokens, dim)    # what compile_vector takes
    bind, data, segments, runs = {}, {}, {}, {}
    whole_rows = op in ROW_WISE and dim == shape[-1] and shape[0] == 1
    for region, t in (("in", x), ("b", b)):
        if t is None:
            continue
        if _in_place(t, rows_l, order) and t.shape == shape:
            bind[region], data[region] = t.buffer, zeros(form)     # its shape only
        elif whole_rows and not order and _padded(t, shape):
            bind[region], data[region] = t.buffer, zeros(form)
            runs[region] = _row_runs("windows", shape[1], shape[2], t.pad)
        elif whole_rows and _in_place(t, rows_l, getattr(t, "order", None)) and t.shape == shape:
            # in DDR in another row order (a transposed convolution's output beside an earlier run's feature in
            # the map's): read where it is, a command per stretch of rows consecutive in both orders
            bind[region], data[region] = t.buffer, zeros(form)
            runs[region] = _row_runs("gather", tuple(shape), order, t.order, rows_l.tokens)
        elif not image and dim == shape[-1] and _segmented(t, rows_l.pitch, rows_l.tokens):
            g, parts = t.segments(region)
            segments[region], data[region] = g.rows, zeros(form)
            bind.update(parts)
        else:
            v = np.ascontiguousarray(np.broadcast_to(np.asarray(t), shape))
            data[region] = (_window_order(v, order) if order else v).reshape(form)
    pad = pad if whole_rows and not order and out is None else None
    if pad:
        runs["out"], out = _row_runs("windows", shape[1], shape[2], pad[0]), pad[1]
    if out_runs:
        runs["out"] = out_runs
    base = drv.BUFFER_BASE
    prog = drv.compiles.get(n.name, compile_vector, drv.cfg, op, data["in"], p, b=data.get("b"), end_x=end_x,
                            base_addr=base, max_ddr_bytes=drv.ddr_bytes - base, segments=segments, runs=runs)
    if pad:
        y = _run_to_device(drv, prog, bind, TokenRowLayout(runs["out"].size, dim, C), shape, n.name, None, out)
        y.pad, y.kept = pad[0], True
        return y, [drv.last_run]
    if out_runs:                # the map's order
        order = None
    if image and order:         # the pooled map, in window order ws / 2
        out_shape, order = (1, shape[1] // 2, shape[2] // 2, shape[3]), order // 2
    else:
        out_shape = (shape[0], prog.out_shape[0] // shape[0]) + prog.out_shape[1:] if image else shape
    return _run_to_device(drv, prog, bind, prog.out_layout, out_shape, n.name, order, out), [drv.last_run]


@functools.lru_cache(maxsize=256)
def _row_runs(kind: str, *args) -> RowRuns:
    """RowRuns.windows / unwindows (h, w, ws), or "gather" (shape, order, stored order, rows): the runs a map of
    that shape reordering between those orders reads in, by reorder_rows. A function of its arguments (and
    frozen): made once, not again for every frame's run of the node (the reorder's runs are a Python tuple a
    row each)."""
    if kind == "gather":
        shape, order, stored, rows = args
        return RowRuns.gather(reorder_rows(shape, order, stored), rows)
    return getattr(RowRuns, kind)(*args)


def _one_order(operands, shape: tuple) -> int | None:
    """The window order ws every DeviceTensor among a row op's operands (each of `shape`) is stored in, where
    there is one (None: some in the map's order, or none in DDR)."""
    orders = {t.order if isinstance(t, DeviceTensor) and not isinstance(t, SegmentedTensor) and not t.pad
              and t.shape == tuple(shape) else None
              for t in operands if isinstance(t, DeviceTensor) and t.buffer is not None}
    return orders.pop() if len(orders) == 1 and shape[0] == 1 else None


#: an identity rescale (x * 1 >> 0): a copy on the vector engine
COPY = RescaleParams(1, 0)

#: the vector ops whose rows are independent (any order of the rows in, the same order out), and their graph ops
ROW_WISE = ("layernorm", "lut", "rescale", "add")
ROW_WISE_NODES = ("layernorm", "gelu", "rescale", "add")


def _stacked_images(op: str, shape: tuple) -> bool:
    """Whether `op` on N images (N, H, W, C) equals it on the one image (N H, W, C) they make stacked: always
    for upsample (each pixel its own), for the 2x2 max-pool when H is even (no window spans two images)."""
    return shape[0] == 1 or op == "upsample" or shape[1] % 2 == 0


def _broadcast(value, x) -> bool:
    """Whether host array `value` is broadcast over the rows of a row op's first operand `x` (fewer values)."""
    return isinstance(value, np.ndarray) and value.size < math.prod(np.shape(x))


def _upload(drv, x, layout: TokenRowLayout | None, prefix: str = "act", top: bool = False) -> str:
    """A new session buffer holding host array x in `layout` (None: x's bytes as they are; written once): its
    name. `top`: a buffer kept for the session (Driver.buffer)."""
    data = np.ascontiguousarray(x).reshape(-1).view(np.uint8) if layout is None else layout.pack(x)
    name = drv.buffer(data.size, prefix, top=top).name
    drv.session.backend.write(drv.session.arena[name].addr, data)
    return name


def _attention_dev(drv, n, a, r, out: str | None = None):
    """_attention reading Q, K, V from token rows and leaving its output there, heads merged
    (sw.compile.attention.TokenRows): a DeviceTensor in that layout is read in place, a host array written
    there once; the output in a new buffer, or in `out` (a buffer the caller holds). Where that cannot be (token_rows_refusal: no load_t, or a head dim C does not divide) it
    runs as _attention, output too: its reader, a linear, would only read the output back (its A is a host
    transpose), and the program, bound to a new buffer each run, would rewrite its descriptors."""
    q, k, v = a
    h, cfg = n.attrs["heads"], drv.cfg
    d = q.shape[-1] // h
    if token_rows_refusal(cfg, d, inputs=True):
        return _attention(drv, n, _host_args(a), r)
    N, lq, lk = q.shape[0], math.prod(q.shape[1:-1]), math.prod(k.shape[1:-1])
    bind, uploaded, segments = {}, [], []
    try:
        for region, t, tokens in (("Q", q, lq), ("K", k, lk), ("V", v, lk)):
            layout = TokenRowLayout(N * tokens, h * d, cfg.cols)
            if _in_place(t, layout):
                bind[region] = t.buffer
            elif _segmented(t, h * d, N * tokens) and all(
                    s % tokens % (cfg.rows if region == "Q" else cfg.cols) == 0 for _, s in t.starts()):
                g, parts = t.segments(region)             # each tile inside one segment: its LOADs read there
                segments.append(g)
                bind.update(parts)
            else:
                bind[region] = _upload(drv, np.asarray(t), layout)
                uploaded.append(bind[region])
        rows = TokenRows(h, N, lq, lk, inputs=True, segments=tuple(segments))
        # the programs read Q, K, V from those buffers: compiled on zeros of their shapes
        qh, kh, vh = (zeros((N * h, tokens, d)) for tokens in (lq, lk, lk))
        y = DeviceTensor(drv, out or drv.buffer(rows.size(lq, d)).name, TokenRowLayout(N * lq, h * d, cfg.cols),
                         q.shape, n.name)
        runs = []
        try:
            base = drv._buffer_base()
            calls = drv.compiles.get(n.name, _attention_calls, drv.cfg, base, qh, kh, vh, _attention_quant(n, r), rows,
                                     max_ddr_bytes=drv.ddr_bytes - base)
            for *_, prog in calls:
                runs.append(drv.run_bound(prog, {**bind, "out": y.buffer}, owner=n.name))
        except BaseException:
            if out is None:
                y.free(keep=False)
            raise
    finally:
        for name in uploaded:
            drv.session.free(name)
    return y, runs


def _attention_calls(cfg, base: int, q, k, v, quant, rows, max_ddr_bytes: int) -> list:
    """Driver.attention_programs as a list (what the compile cache keeps), programs at `base` in DDR."""
    return list(compile_attention_calls(cfg, q, k, v, quant, base_addr=base, max_ddr_bytes=max_ddr_bytes, rows=rows))


def _want(r, n, operands=()) -> int | tuple | None:
    """The window order node n's output is stored in (GraphExecutor.want: window_orders); for a node of
    GraphExecutor.any_order (every reader row-wise), the one its operands in DDR share (_one_order)."""
    want = getattr(r, "want", {}).get(n.name)
    if want is None and n.name in getattr(r, "any_order", ()):
        want = _one_order(operands, np.shape(operands[0]))
    return want


#: ops whose output an engine node leaves in DDR (token rows), and which of their inputs they read in place
DEVICE_OPS = {
    "linear": _linear_dev,
    "conv": _conv_dev,
    "depthwise": _depthwise_dev,
    "attention": _attention_dev,
    "conv_transpose": _conv_transpose_dev,
    "mask_product": _mask_dev,
    "layernorm": lambda d, n, a, r: _vector_dev(d, n, "layernorm", a[0], _vec_params(r, n, "LayerNormParams"),
                                           want=_want(r, n, a[:1])),
    "gelu": lambda d, n, a, r: _vector_dev(d, n, "lut", a[0], _vec_params(r, n, "LutParams"), want=_want(r, n, a[:1])),
    "rescale": lambda d, n, a, r: _vector_dev(d, n, "rescale", a[0], _vec_params(r, n, "RescaleParams"),
                                           want=_want(r, n, a[:1])),
    "add": lambda d, n, a, r: _vector_dev(d, n, "add", a[0], _vec_params(r, n, "AddParams"), a[1],
                                     want=_want(r, n, a[:2])),
    "maxpool2x2": lambda d, n, a, r: _vector_dev(d, n, "maxpool", a[0], want=_want(r, n)),
    "upsample2x": lambda d, n, a, r: _vector_dev(d, n, "upsample", a[0]),
}
IN_PLACE = {"linear": (0,), "conv": (0,), "depthwise": (0,), "conv_transpose": (0,), "mask_product": (0,),
            "attention": (0, 1, 2), "layernorm": (0,), "gelu": (0,), "rescale": (0,), "add": (0, 1),
            "maxpool2x2": (0,), "upsample2x": (0,)}


def _host_args(args, keep=()):
    """The arguments with every DeviceTensor read back but those at positions `keep`."""
    return [np.asarray(a) if isinstance(a, DeviceTensor) and i not in keep else a for i, a in enumerate(args)]


@dataclass
class _Scope:
    """One run's liveness: how many of its nodes read each tensor, and the device tensors it made."""
    nodes: set
    readers: dict
    made: dict


class SessionKept:
    """Values made once a driver session and kept for it (buffers an executor keeps: zeroed planes, padded
    windows, a mask product's B), by key; a new session (after a reset) makes them again."""

    def __init__(self, driver: Driver):
        self.driver, self._kept = driver, {}

    def get(self, key, make):
        """The value kept for key in this session, else make()'s (kept; an exception from make keeps nothing)."""
        kept = self._kept.get(key)
        if kept is None or kept[1] is not self.driver.session:
            kept = self._kept[key] = make(), self.driver.session
        return kept[0]

    def current(self) -> list:
        """The values kept for this session."""
        return [v for v, session in self._kept.values() if session is self.driver.session]


# ---------------------------------------------------------------- the executor
class GraphExecutor(IntRunner):
    """IntRunner whose engine-placed nodes run on the overlay (module docstring)."""
    ENGINE_OPS = ENGINE_OPS          # op -> its Driver call (a subclass adds ops)
    DEVICE_OPS, IN_PLACE = DEVICE_OPS, IN_PLACE      # op -> its call leaving the output in DDR; inputs read in place

    def __init__(self, qm, cfg, backend: str = "sim", driver: Driver | None = None, *, chain: bool = True,
                 read_back: bool = False):
        """`chain`: engine outputs stay in DDR for the next engine node (False: every node's output comes back
        to the host, as before chaining). `read_back`: keep every device tensor's values when it is freed
        (read from DDR then, counted in `check_bytes`, not in the nodes' figures) so check() sees them all."""
        if qm.key_tile != cfg.cols:
            raise GraphExecError(f"the model was quantised with attention key tile {qm.key_tile}, the {cfg.name!r} "
                                 f"overlay's is {cfg.cols}: quantise it for this preset (--preset {cfg.name})")
        super().__init__(qm)
        # the weights and quantisation never change after loading: read-only, the compile cache compares them by
        # identity, not by value on every call
        freeze([*qm.graph.constants.values(), *(v for p in qm.params.values() for v in p.values())])
        self.cfg = cfg
        self.driver = driver or Driver(cfg, backend)
        self.chain, self.read_back = chain, read_back
        self.check_bytes = 0
        self._constants: dict[tuple, DeviceTensor] = {}     # graph constants a vector op reads, kept in DDR
        self.spilled_bytes = 0     # device tensors read back because the arena was full (in the nodes' figures)
        lanes = vector_lanes(cfg)
        # (pricing the nodes compiles programs: ~2 s at 1024 px; a program store keeps the placement too)
        store, layers = self.driver.compiles.store, graph_layers(qm.graph)
        placed = place_all(cfg, layers, lanes=lanes) if store is None else store.compile(place_all, (cfg, layers),
                                                                                          {"lanes": lanes})
        self.placements = {p.layer.name: p for p in placed}
        self.pad_into = self._padded_windows() if chain else {}
        if chain:      # every engine node's programs (a node may run several) kept loaded while the arena has room
            self.driver.CACHED_PROGRAMS = math.inf
        # linear node -> the GELU node placed in its store (the placement checked it is its only reader)
        writers = {t: n for n in qm.graph.nodes for t in n.outputs}
        self._outputs = {n.name: n.outputs[0] for n in qm.graph.nodes}
        self.fused = {writers[n.inputs[0]].name: n for n in qm.graph.nodes
                      if n.op == "gelu" and self.placements[n.name].where == "gemm"}
        self.fused_gelus = {g.name for g in self.fused.values()}
        self.host_outputs: set[str] = set()     # nodes whose output must be a host array (a subclass's)
        # tensors the predictors read from a run's env besides its last outputs: kept to the run's end
        meta = qm.graph.meta
        self.run_outputs = set(meta.get("image_outputs", ())) | {
            v for v in meta.get("video", {}).values() if isinstance(v, str)}
        # linear node -> (the add node riding in its store, which of the add's inputs the linear writes)
        nodes = {n.name: n for n in qm.graph.nodes}
        self.fused_adds = {lin: (nodes[add], i) for add, (lin, i) in
                           fused_adds(cfg, list(self.placements.values())).items()}
        # chained, an add whose residual an engine node leaves in DDR runs on the vector engine instead, both
        # operands read in place: the store's RES region is N-tile major, so the fused add would take the
        # residual to the host and back (2 x its bytes) to save one vector pass
        self.unfused = {add.name: lin for lin, (add, i) in self.fused_adds.items()
                        if chain and "vector" in cfg.engines and self._engine_output(writers.get(add.inputs[1 - i]))}
        for lin in self.unfused.values():
            del self.fused_adds[lin]
        # add node -> which of its inputs its linear writes (op_fn: the add's node returns that input)
        self._fused_into = {add.name: i for add, i in self.fused_adds.values()}
        # tensors the host makes or takes: a host node's output or a feed (the frame) written in, one a host
        # node or the caller reads (the logits) read back (_own_bytes)
        self.host_made = set(qm.graph.inputs) | {t for n in qm.graph.nodes if self.placements[n.name].where == "host"
                                                 for t in n.outputs}
        self.host_read = set(qm.graph.outputs) | {t for n in qm.graph.nodes
                                                  if self.placements[n.name].where == "host" for t in n.inputs}
        self.want = window_orders(graph_layers(qm.graph)) if chain else {}
        self.any_order = self._any_order() if chain else set()
        self.shared = self._shared_layouts() if chain else set()
        self._pad_buffers = SessionKept(self.driver)     # node -> its padded windows' buffer (padded_out)
        self.b_buffers = SessionKept(self.driver)        # mask product -> (its B's buffer, spans): _hyper_b
        self._planes = SessionKept(self.driver)          # (planar map shape, slot) -> its buffer (plane)
        self.records: dict[str, NodeRecord] = {}
        self._scope: _Scope | None = None
        self._env: dict = {}

    def _any_order(self) -> set[str]:
        """Row-wise vector nodes (_want) whose output may stay in the row order of their operands in DDR (a
        transposed convolution's subpixel_order) rather than be put back in the map's: those whose readers, and
        their readers on, are engine nodes that read rows in any order and keep it (a row-wise node, a linear, a
        transposed convolution: each output row is its input row's) up to the mask product (its logits put in the
        map's order on the host): the decoder's upscaling. (Elsewhere a map in window order is put back in the
        map's order where the vector engine does it cheapest: _vector_dev's unwindows.)"""
        readers: dict[str, list] = {}
        for n in self.graph.nodes:
            for t in n.inputs:
                readers.setdefault(t, []).append(n)
        free: set[str] = set()      # tensors whose every reader, and theirs on, keeps rows in any order
        for n in reversed(self.graph.nodes):
            t, on = n.outputs[0], lambda m: self.placements[m.name].where not in ("host", "layout")
            if readers.get(t) and all(on(m) and (m.op == "mask_product" or m.op in ROW_WISE_NODES + (
                    "linear", "conv_transpose") and m.outputs[0] in free) for m in readers[t]):
                free.add(t)
        return {n.name for n in self.graph.nodes if n.op in ROW_WISE_NODES and n.outputs[0] in free}

    def _shared_layouts(self) -> set[str]:
        """Layout nodes run on the host whose output several engine nodes read in place (a padded window
        partition's windows: the q, k and v projections): written to DDR once for all of them (_shared)."""
        readers: dict[str, list] = {}
        for n in self.graph.nodes:
            for i, t in enumerate(n.inputs):
                readers.setdefault(t, []).append((n, i))

        def in_place(n, i) -> bool:
            return (self.placements[n.name].where not in ("host", "layout") and i in self.IN_PLACE.get(n.op, ())
                    and (n.op != "linear" or "load_t" in self.cfg.engines))
        return {n.name for n in self.graph.nodes if self.placements[n.name].where == "layout"
                and len(readers.get(n.outputs[0], ())) > 1 and all(in_place(*x) for x in readers[n.outputs[0]])}

    def _padded_windows(self) -> dict[str, int]:
        """Window partitions of a (1, H, W, C) map into zero-padded ws x ws windows, ws not dividing H or W
        (Hiera's later stages): node -> ws. Each is a copy of the map into its windows on the vector engine
        (_pad_copy); its unpartition is addressing (window_alias). (The map's writer, a layernorm, could
        write it there itself, but that is a VECTOR command per run of a row, and a layernorm command costs
        some 800 cycles more: 8,359 cycles for an 8 x 8 map in 8 commands against 2,549 in one; the copy
        1,725.)"""
        out = {}
        for n in self.graph.nodes:
            if n.op != "window_partition" or "vector" not in self.cfg.engines:
                continue
            b, h, w, _ = self.graph.tensors[n.inputs[0]].shape
            ws = n.attrs["ws"]
            if b == 1 and (h % ws or w % ws):
                out[n.name] = ws
        return out

    def _pad_copy(self, node, x, rec):
        """Window partition `node` of DeviceTensor x (the map in its rows' order) into its padded windows by
        an identity rescale on the vector engine writing the map's rows inside them (padded_out); None where
        x is not such a tensor or the arena has no room."""
        if not (isinstance(x, DeviceTensor) and not isinstance(x, SegmentedTensor) and x.buffer is not None
                and x.order is None and not x.pad):
            return None
        pad = self.padded_out(node)
        if pad is None:
            return None
        y, runs = _vector_dev(self.driver, node, "rescale", x, COPY, pad=pad)
        y.shape, y.pad = self.graph.tensors[node.outputs[0]].shape, None
        rec.where, rec.cycles, rec.calls = "vector", sum(r.cycles for r in runs), len(runs)
        rec.device_s = sum(r.wall_s for r in runs)
        rec.reason = "the map copied into its padded windows on the vector engine (a command per run of a row)"
        return y

    def padded_out(self, node) -> tuple | None:
        """(ws, buffer) for a node of pad_into: a buffer of its padded windows' rows, zeroed when made (once a
        session, like a weight) and written only at the map's rows after, so its padding rows stay zero;
        None for another node, or where the arena has no room."""
        ws = self.pad_into.get(node.name)
        if ws is None:
            return None
        shape = self.graph.tensors[node.outputs[0]].shape
        layout = TokenRowLayout(math.prod(shape[:-1]), shape[-1], self.cfg.cols)
        try:
            return ws, self._pad_buffers.get(node.name, lambda: _upload(
                self.driver, np.zeros((layout.tokens, shape[-1]), np.int8), layout, "pad", top=True))
        except ArenaFull:
            return None

    def plane(self, shape: tuple, slot: int) -> str | None:
        """A buffer of a planar (channels, H, W) map (FmapLayout) for _planar_dev (slot 0: a program's input, 1:
        its output), kept a session and shared by the nodes of that shape and slot: zeroed when made, then
        written only at the map's pixels, so its margins stay the zeros the engines read as padding; None where
        the arena has no room."""
        try:
            return self._planes.get((tuple(shape), slot), lambda: self.driver.buffer(
                FmapLayout(*shape, self.cfg.cols).size, "planes", zero=True, top=True)).name
        except ArenaFull:
            return None

    def kept_bytes(self) -> int:
        """Arena bytes of the buffers the executor keeps a session for its convolutions' planes (plane) and the
        constants its vector nodes read (_constant), a fixed amount per graph whatever the number of runs."""
        from sw.runtime.arena import aligned
        s = self.driver.session
        return sum(aligned(b.size) for b in self._planes.current()) + sum(
            aligned(s.arena[t.buffer].size) for t in self._constants.values() if t.session is s and t.buffer)

    def _shared(self, node, y):
        """Host array y (a layout node's output, _shared_layouts) written to DDR once, as token rows, for its
        readers to read in place; y itself where the arena has no room."""
        drv, y = self.driver, np.ascontiguousarray(y)
        layout = TokenRowLayout(math.prod(y.shape[:-1]), y.shape[-1], self.cfg.cols)
        try:
            return DeviceTensor(drv, _upload(drv, y.reshape(layout.tokens, -1), layout), layout, y.shape, node.name)
        except ArenaFull:
            return y

    def _engine_output(self, node) -> bool:
        """Whether node's output is an engine's (left in DDR when chained)."""
        return node is not None and node.op in self.DEVICE_OPS and self.placements[node.name].where not in (
            "host", "layout")

    def arg(self, name, env):
        self._env = env                 # the running environment: a fused add's residual is read from it
        v = super().arg(name, env)
        if isinstance(v, Resident):     # an earlier run's output in DDR: read in place where the view is it
            t = v.device(v.shape) if self._scope is not None else None
            return t if t is not None else np.asarray(v)
        return v

    def _fused_add_calls(self, add, i):
        """The linear's Driver calls (host output, output left in DDR) with `add` in its store: the residual
        is the add's other input (read back to the host where it is in DDR), and the add's (a_mult, b_mult)
        swap when the linear writes its second input (the store's y is add's a)."""
        def params(r):
            p = _vec_params(r, add, "AddParams")
            residual = _host_args([self.arg(add.inputs[1 - i], self._env)])[0]
            return dict(residual=residual, add=p if i == 0 else type(p)(p.b_mult, p.a_mult, p.shift))
        return (lambda d, n, a, r: _linear(d, n, a, r, **params(r)),
                lambda d, n, a, r: _linear_dev(d, n, a, r, **params(r)))

    # ------------------------------------------------------------ runs: liveness of the device tensors
    def run(self, feeds: dict, stages=None, env: dict | None = None, observe=None) -> dict:
        nodes = [n for n in self.graph.nodes if stages is None or n.stage in stages]
        return self.chained(nodes, lambda: super(GraphExecutor, self).run(feeds, stages, env, observe))

    def chained(self, nodes, call) -> dict:
        """call() (a run over `nodes`, returning its env) with the engine outputs kept in DDR between the
        nodes: each buffer freed after its last reader among `nodes`; what is still in DDR at the end: the
        tensors a later run reads (run_outputs: the image embedding, the high-res features, a video frame's
        features) stay there as Residents in the env, which that run reads in place (arg) and the caller may
        transpose and reshape (or read back: np.asarray, counted to the producer); the others are read back,
        their bytes counted to their producer, the env's device tensors replaced by their values."""
        if self._scope is not None or not self.chain:
            return call()
        readers = dict.fromkeys(self.run_outputs, 1)        # one reader after the run: the caller
        for n in nodes:
            for t in n.inputs:
                readers[t] = readers.get(t, 0) + 1
        self._scope = scope = _Scope({n.name for n in nodes}, readers, {})
        try:
            env = call()
        except BaseException:
            for t in scope.made.values():
                if t.buffer is not None:
                    t.free(keep=False)
            raise
        finally:
            self._scope, self._env = None, {}
        resident = {id(v): v for k, v in env.items()
                    if k in self.run_outputs and id(v) in scope.made and self._may_stay(v)}
        for t in scope.made.values():
            if t.buffer is not None and id(t) not in resident:
                self.on_read_back(self.records[t.producer], self._free(t, keep=True))
        for i, t in resident.items():
            if self.read_back:          # for check(), like every freed tensor (not in the nodes' figures)
                t.host, moved = self._bytes_of(t.read)
                self.check_bytes += moved
            resident[i] = Resident.of(t, lambda t: self.on_read_back(self.records[t.producer], t.layout.size))
        for k, v in env.items():
            if isinstance(v, DeviceTensor) and id(v) in resident:
                env[k] = resident[id(v)]
            elif isinstance(v, DeviceTensor) and v.host is not None:
                env[k] = v.host
        return env

    def _may_stay(self, t) -> bool:
        """Whether a run's output t stays in DDR as a Resident: a DeviceTensor of this run in one buffer of its
        own, in the map's order or a window order (a later run's reader reads it as its producer left it)."""
        return (isinstance(t, DeviceTensor) and not isinstance(t, SegmentedTensor) and t.buffer is not None
                and not t.pad and not t.kept and not t.pinned)

    def _free(self, t: DeviceTensor, keep: bool) -> int:
        """t.free(keep): the host <-> DDR bytes it took (its read back)."""
        return self._bytes_of(lambda: t.free(keep))[1]

    def _bytes_of(self, fn) -> tuple:
        """fn()'s result and the host <-> DDR bytes it moved."""
        traffic = self.driver.device.traffic
        before = traffic.snapshot()
        out = fn()
        return out, traffic.since(before).total

    def on_read_back(self, rec: NodeRecord, nbytes: int) -> None:
        """A node's output read back at the end of a run (a subclass counts it where it keeps figures)."""
        rec.ddr_bytes += nbytes
        if (rec.holds or self._outputs[rec.name]) in self.host_read:
            rec.own_bytes += nbytes

    def _own_bytes(self, node, args, moved, program: int, out=None) -> int:
        """Of a node's host <-> DDR bytes `moved` (a Traffic; `program` of them its programs'), the host ops'
        own, the kind issue 18 allows a frame: all of a host node's (its inputs read back); of an engine
        node's data written, at most the bytes of its inputs a host node made or the caller fed (the
        frame); of its data read, at most its output's bytes where the output is the caller's or a host
        node's and comes back as a host array (the mask product's logits). The rest (programs, layout nodes,
        activations the host only relays) is what still round-trips (module docstring)."""
        where = self.placements[node.name].where
        if where == "host":
            return moved.total
        if where == "layout":
            return 0
        written = moved.to_ddr - program      # (none in a steady frame's node: its inputs not summed then)
        fed = sum(a.nbytes for t, a in zip(node.inputs, args) if t in self.host_made and isinstance(a, np.ndarray)) \
            if written > 0 else 0
        read = out.nbytes if isinstance(out, np.ndarray) and node.outputs[0] in self.host_read else 0
        return min(fed, max(0, written)) + min(read, moved.from_ddr)

    def _done(self, node, args, out) -> None:
        """Liveness after a node: its device output's readers to come, its device inputs' one fewer."""
        scope = self._scope
        if scope is None:
            return
        if isinstance(out, DeviceTensor):
            out.pending += scope.readers.get(node.outputs[0], 0)
            scope.made[id(out)] = out
        for a in args:
            if isinstance(a, DeviceTensor) and a.buffer is not None and not a.pinned:
                a.pending -= 1
                if a.pending <= 0:
                    self.check_bytes += self._free(a, self.read_back)

    def _spill(self) -> bool:
        """The arena is full: read every device tensor of the run back and free its buffer (its readers
        then take it from the host). Whether there was any."""
        live = [t for t in (self._scope.made.values() if self._scope else ()) if t.buffer is not None]
        for t in live:
            self.spilled_bytes += self._free(t, keep=True)
        return bool(live)

    def _device(self, node, layout: bool = False) -> bool:
        """Whether this run leaves the node's output in DDR (`layout`: a layout node's, window_alias)."""
        return (self._scope is not None and node.name in self._scope.nodes
                and (node.op in self.DEVICE_OPS or layout and node.op in ("window_partition", "window_unpartition"))
                and "replaces" not in node.attrs and node.name not in self.host_outputs)

    def _counted(self, rec, node, fn):
        """fn(n, args, r) -> output, with the node's wall time, DDR bytes and liveness recorded."""
        def run(n, args, r):
            traffic, drv, t = self.driver.device.traffic, self.driver, time.perf_counter()
            before, program = traffic.snapshot(), drv.program_bytes
            y = fn(n, args, r)
            moved = traffic.since(before)
            rec.ddr_bytes = moved.total
            rec.program_bytes = drv.program_bytes - program
            rec.own_bytes = self._own_bytes(node, args, moved, rec.program_bytes, y)
            rec.wall_s = time.perf_counter() - t
            self._done(node, args, y)
            return y
        return run

    def op_fn(self, node):
        p = self.placements[node.name]
        where = p.where
        rec = NodeRecord(node.name, node.op, node.stage, where, p.reason)
        if node.name in self.unfused:
            rec.where = "vector"
            rec.reason = f"not in {self.unfused[node.name]}'s store: its residual is in DDR ({p.reason})"
        self.records[node.name] = rec
        host_fn = super().op_fn(node)
        if where in ("host", "layout"):
            def on_host(n, args, r):
                if where == "layout" and self._device(n, layout=True):      # a window (un)partition by addressing
                    y = window_alias(n, args[0], self.graph.tensors[n.outputs[0]].shape)
                    if y is None and n.name in self.pad_into:
                        y = self._pad_copy(n, args[0], rec)
                    if y is not None:
                        return y
                y = host_fn(n, _host_args(args), r)
                return self._shared(n, y) if n.name in self.shared and self._device(n, layout=True) else y
            return self._counted(rec, node, on_host)
        if node.op not in self.ENGINE_OPS:
            raise GraphExecError(f"node {node.name}: placed on {p.where} but the executor has no Driver call "
                                 f"for op {node.op!r}")

        if node.name in self.fused_gelus:
            return self._counted(rec, node, lambda n, args, r: args[0])     # its fc1's store applied the table
        i = self._fused_into.get(node.name)
        if i is not None:       # its linear's store added the residual
            return self._counted(rec, node, lambda n, args, r, i=i: args[i])
        gelu = self.fused.get(node.name)
        call, dev_call = self.ENGINE_OPS[node.op], self.DEVICE_OPS.get(node.op)
        if gelu is not None:
            rec.holds = gelu.outputs[0]
            lut = lambda r: _vec_params(r, gelu, "LutParams")        # noqa: E731
            call = lambda d, n, a, r: _linear(d, n, a, r, lut=lut(r))  # noqa: E731
            dev_call = lambda d, n, a, r: _linear_dev(d, n, a, r, lut=lut(r))  # noqa: E731
        if node.name in self.fused_adds:
            add, i = self.fused_adds[node.name]
            rec.holds = add.outputs[0]
            call, dev_call = self._fused_add_calls(add, i)

        if node.op == "attention" and self.chain:      # why it does not chain (_attention_dev)
            why = token_rows_refusal(self.cfg, self.graph.tensors[node.inputs[0]].shape[-1] // node.attrs["heads"],
                                     inputs=True)
            rec.reason += f"; Q, K, V and output via the host: {why}" if why else ""

        def once(n, args, r):
            if self._device(n):
                keep = self.IN_PLACE.get(n.op, ())
                if n.op in ROW_WISE_NODES:
                    args = [self._constant(n, i, a, np.shape(args[0])) if i and i in keep
                            and (n.inputs[i] in self.graph.constants or _broadcast(a, args[0]))
                            else a for i, a in enumerate(args)]
                return dev_call(self.driver, n, _host_args(args, keep), r)
            return call(self.driver, n, _host_args(args), r)

        def on_engine(n, args, r):
            try:
                y, runs = once(n, args, r)
            except ArenaFull:
                if not self._spill():
                    raise
                y, runs = once(n, args, r)      # its inputs now from the host
            rec.cycles, rec.calls, rec.device_s = sum(x.cycles for x in runs), len(runs), sum(x.wall_s for x in runs)
            return y
        return self._counted(rec, node, on_engine)

    def _constant(self, node, i: int, value, shape: tuple) -> DeviceTensor:
        """Graph constant `value`, node's input i (the positional embeddings an add reads), as a DeviceTensor of
        `shape` (its first input's) in its window order, written once a session like a weight (pinned),
        shared by the nodes reading it so (again after the driver opened a new session). A host tensor an add
        broadcasts (the memory encoder's no-object embedding, one row for every token) is kept so too while its
        values stay those of its last run (written again when they change, the old copy freed): its broadcast
        rows would otherwise be written every run."""
        order = self.want.get(node.name)
        key = (node.inputs[i], tuple(shape), order)
        t = self._constants.get(key)
        if t is not None and node.inputs[i] not in self.graph.constants and t.session is self.driver.session \
                and not np.array_equal(t.value, value):
            t.free(keep=False)
            t = None
        if t is None or t.session is not self.driver.session:
            drv, v = self.driver, np.ascontiguousarray(np.broadcast_to(value, shape))
            layout = TokenRowLayout(math.prod(shape[:-1]), shape[-1], self.cfg.cols)
            t = DeviceTensor(drv, _upload(drv, (_window_order(v, order) if order else v).reshape(layout.tokens, -1),
                                          layout, "const", top=True), layout, shape, node.inputs[i], order)
            t.pinned, t.session = True, drv.session
            t.value = None if node.inputs[i] in self.graph.constants else np.array(value)    # compared next run
            self._constants[key] = t
        return t

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
        """Per node: placement, bit-exact (after check), cycles, host <-> DDR bytes (its last run) and of them
        the programs' (descriptors, weights) and the host ops' own (NodeRecord.own_bytes; the rest relays
        activations), reason; then per stage and placement: nodes, overlay cycles and their time at the
        preset's clock, wall time, DDR bytes, of them the programs' and the host ops' own."""
        lines = [f"{'node':44s} {'op':16s} {'on':9s} {'exact':5s} {'cycles':>10s} {'DDR bytes':>10s} "
                 f"{'programs':>9s} {'host own':>9s}  reason"]
        totals: dict = {}
        for r in self.records.values():
            ex = "-" if r.exact is None else "yes" if r.exact else "NO"
            lines.append(f"{r.name:44s} {r.op:16s} {r.where:9s} {ex:5s} {r.cycles:10,d} {r.ddr_bytes:10,d} "
                         f"{r.program_bytes:9,d} {r.own_bytes:9,d}  {r.reason}")
            t = totals.setdefault((r.stage, r.where), [0, 0, 0.0, 0, 0, 0])
            for i, v in enumerate((1, r.cycles, r.wall_s, r.ddr_bytes, r.program_bytes, r.own_bytes)):
                t[i] += v
        lines.append(f"{'stage':16s} {'on':10s} {'nodes':>5s} {'cycles':>12s} {'modelled ms':>11s} {'wall ms':>8s} "
                     f"{'DDR bytes':>11s} {'programs':>9s} {'host own':>9s}   (modelled at {self.cfg.clock_mhz:g} MHz)")
        for (stage, where), (k, c, w, b, pb, ob) in sorted(totals.items()):
            ms = c / (self.cfg.clock_mhz * 1e3)
            lines.append(f"{stage:16s} {where:10s} {k:5d} {c:12,d} {ms:11.3f} {w * 1e3:8.1f} {b:11,d} "
                         f"{pb:9,d} {ob:9,d}")
        return "\n".join(lines)

    def stage_totals(self) -> dict[str, dict]:
        """Per stage of the executed nodes: counts by placement; the overlay's modelled time (its engine
        cycles at the preset's clock); the host nodes' modelled time on the board's CPU (the placement's
        sw.perf.host_model figure); this process's wall time of engine nodes (simulation + copies) and of
        host nodes; host <-> DDR bytes of every node (NodeRecord.ddr_bytes) and of them the programs' and
        weights' (program_bytes) and the host ops' own (own_bytes)."""
        out: dict[str, dict] = {}
        for r in self.records.values():
            t = out.setdefault(r.stage, dict(engine_nodes=0, host_nodes=0, layout_nodes=0, cycles=0,
                                             overlay_s=0.0, host_model_s=0.0, engine_wall_s=0.0,
                                             host_wall_s=0.0, ddr_bytes=0, program_bytes=0, own_bytes=0))
            t["ddr_bytes"] += r.ddr_bytes
            t["program_bytes"] += r.program_bytes
            t["own_bytes"] += r.own_bytes
            if r.where in ("host", "layout"):
                t[f"{r.where}_nodes"] += 1
                t["host_wall_s"] += r.wall_s
                t["host_model_s"] += self.placements[r.name].host_seconds if r.where == "host" else 0.0
            else:
                t["engine_nodes"] += 1
                t["cycles"] += r.cycles
                t["engine_wall_s"] += r.wall_s
        for t in out.values():
            t["overlay_s"] = t["cycles"] / (self.cfg.clock_mhz * 1e6)
        return out
