"""Activations an engine node left in DDR (sw.runtime.graph_exec chains them): DeviceTensor, a session buffer
holding an int8 tensor in token rows; SegmentedTensor, token rows in several buffers (a memory bank's slots);
and the predicates a reader uses to decide whether it can bind one in place (its layout, its rows' order, its
padded windows)."""
from __future__ import annotations

import weakref

import numpy as np

from golden_model.image_encoder import window_partition, window_unpartition
from sw.runtime.driver import Driver
from sw.runtime.layout import RowRuns, RowSegments, TokenRowLayout


class GraphExecError(ValueError):
    pass


class DeviceTensor:
    """An int8 activation an engine node left in DDR: a session buffer holding it in token rows
    (sw.runtime.layout.TokenRowLayout: a linear's out, the vector engine's in and out), and its shape.
    np.asarray reads it back (host <-> DDR bytes of whoever asks). `pending`: readers still to run in
    this run; the executor frees the buffer after the last (keeping the values when it reads back).
    `order`: None, its rows in the shape's order; ws, a (1, H, W, C) map whose rows are in window order
    (window_partition(map, ws)'s, no padding): a window (un)partition of it is that buffer as it is (alias);
    a tuple of block sizes, nested windows (order_index: a stride-k transposed convolution's output, its rows
    in the order the GEMM writes them, subpixel_order).
    `pad`: None, or ws: a (1, H, W, C) map (ws not dividing H or W) held inside the zero-padded ws x ws
    windows a window partition makes of it (sw.runtime.layout.RowRuns.windows), the layout's rows those
    windows'. `kept`: the buffer is the executor's (padded_out), never freed."""

    dtype = np.dtype(np.int8)
    pinned = False          # a graph constant kept in DDR for the session (GraphExecutor._constant): never freed

    def __init__(self, driver: Driver, buffer: str, layout: TokenRowLayout, shape: tuple, producer: str,
                 order: int | tuple | None = None):
        self.driver, self.buffer, self.layout, self.shape = driver, buffer, layout, tuple(shape)
        self.producer, self.order = producer, order if order != 1 else None     # 1 x 1 windows: the map's order
        self.pad, self.kept = None, False
        self.pending = 0
        self.host: np.ndarray | None = None      # the values, once read back for keeps
        self.holders = [1]                       # tensors sharing the buffer (aliases): freed with the last

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def read(self) -> np.ndarray:
        if self.host is not None:
            return self.host
        if self.buffer is None:
            raise GraphExecError(f"{self.producer}'s output was freed after its last reader (run the executor "
                                 "with read_back=True to keep every value for check())")
        s = self.driver.session
        rows = self.layout.unpack(s.backend.read(s.arena[self.buffer].addr, self.layout.size))
        if self.pad:
            ws, (_, h, w, c) = self.pad, self.shape
            return window_unpartition(rows.reshape(-1, ws, ws, c), ws, (-(-h // ws) * ws, -(-w // ws) * ws), (h, w))
        return rows.reshape(self.shape) if self.order is None else _map_order(rows, self.order, self.shape)

    def alias(self, shape: tuple, order: int | None, producer: str, pad: int | None = None) -> "DeviceTensor":
        """The same buffer seen as another tensor (a window (un)partition by addressing)."""
        t = DeviceTensor(self.driver, self.buffer, self.layout, shape, producer, order)
        t.pad, t.kept = pad, self.kept
        t.holders = self.holders
        if self.pinned:             # a Resident's or a constant's: freed with it, not by a reader
            t.pinned = True
        else:
            self.holders[0] += 1
        return t

    def __array__(self, dtype=None, copy=None):
        a = self.read()
        return a if dtype is None else a.astype(dtype)

    def free(self, keep: bool) -> None:
        """Give the buffer back to the arena; `keep`: read the values back first."""
        if keep:
            self.host = self.read()
        self.holders[0] -= 1
        if not self.holders[0] and not self.kept:
            self.driver.session.free(self.buffer)
        self.buffer = None


def _window_order(x, ws) -> np.ndarray:
    """A (1, H, W, C) map's values with its rows in window order (window_partition's), in its shape; `ws` a tuple:
    in that nested order (order_index)."""
    if isinstance(ws, tuple):
        x = np.asarray(x)
        return x.reshape(-1, x.shape[-1])[order_index(x.shape[1], x.shape[2], ws)].reshape(x.shape)
    return window_partition(np.asarray(x), ws)[0].reshape(x.shape)


def _map_order(rows, ws, shape: tuple) -> np.ndarray:
    """_window_order's inverse: rows in window order -> the (1, H, W, C) map."""
    _, h, w, c = shape
    if isinstance(ws, tuple):
        rows = np.asarray(rows).reshape(-1, shape[-1])
        out = np.empty_like(rows)
        out[order_index(h, w, ws)] = rows
        return out.reshape(shape)
    return window_unpartition(np.asarray(rows).reshape(-1, ws, ws, c), ws, (h, w), (h, w))


def reorder_rows(shape: tuple, order, stored) -> np.ndarray:
    """For a (1, H, W, C) map processed with its rows in `order` (None, ws or a tuple), the row of a copy stored in
    order `stored` holding each processed row."""
    _, h, w, _ = shape
    index = lambda o: np.arange(h * w) if o is None else order_index(h, w, o if isinstance(o, tuple) else (o,))  # noqa
    where = np.empty(h * w, np.int64)
    where[index(stored)] = np.arange(h * w)
    return where[index(order)]


def order_index(h: int, w: int, sizes: tuple) -> np.ndarray:
    """The (h, w) map's pixels (flat indices) in the nested window order `sizes` (s1 > s2 > ... each dividing the
    one before and s1 the map): s1 x s1 windows in raster order, in each its s2 x s2 windows in raster order, ...,
    in each sn x sn window its pixels in raster order. (ws,) is window_partition's order."""
    levels = [h // sizes[0]] + [a // b for a, b in zip(sizes, sizes[1:])] + [sizes[-1]]
    wl = [w // sizes[0]] + levels[1:]
    n = len(levels)
    idx = np.arange(h * w).reshape(levels + wl)
    return idx.transpose([a for i in range(n) for a in (i, n + i)]).reshape(-1)


def subpixel_order(order, k: int, shape: tuple):
    """The order of a stride-k, k x k transposed convolution's output stored as the GEMM writes it (input row r's
    k x k output pixels, each a row, after row r - 1's) when its input's rows are in `order` (None, ws or a
    tuple): the input's windows scaled by k, then k x k windows; None where the output map (1, H, W, C) is not
    one such order (a batch, or sizes not dividing the map)."""
    sizes = () if order is None else order if isinstance(order, tuple) else (order,)
    sizes = tuple(s * k for s in sizes) + (k,)
    _, h, w, _ = shape
    if shape[0] != 1 or h % sizes[0] or w % sizes[0]:
        return None
    return sizes[0] if len(sizes) == 1 else sizes


def window_alias(node, x, out_shape: tuple):
    """A window partition or unpartition (node) of DeviceTensor x without moving a byte, or None where it
    needs the host: partition of a map stored in that window order -> the windows (each window's rows
    are contiguous, in order); unpartition of windows of a map the size divides -> the map stored in
    window order (a row op wanting the map's order writes its output so: _vector_dev; other readers read
    it back, reordered). Padded windows (ws not dividing H or W) are not a reordering of the rows, but
    they hold the map's rows in runs (DeviceTensor.pad): an unpartition of padded windows -> the map they
    crop, held so (a row op reads it there: _vector_dev). (A padded partition is a copy:
    GraphExecutor._pad_copy.)"""
    if not isinstance(x, DeviceTensor) or x.buffer is None or x.pad:
        return None
    ws = node.attrs["ws"]
    if (node.op == "window_unpartition" and x.order is None and x.shape[1:3] == (ws, ws) and out_shape[0] == 1
            and (out_shape[1] % ws or out_shape[2] % ws)
            and x.shape[0] == -(-out_shape[1] // ws) * -(-out_shape[2] // ws)):
        return x.alias(out_shape, None, node.name, pad=ws)
    if (x.shape[0] == out_shape[0] == 1 and x.order is None and x.shape[1:3] == out_shape[1:3] == (ws, ws)):
        return x.alias(out_shape, None, node.name)         # one window, the whole map: its rows as they are
    if node.op == "window_partition" and x.order == ws and x.shape[0] == 1:
        return x.alias(out_shape, None, node.name)
    if (node.op == "window_unpartition" and x.order is None and out_shape[0] == 1 and ws > 1
            and out_shape[1] % ws == 0 and out_shape[2] % ws == 0):
        return x.alias(out_shape, ws, node.name)
    return None


class SegmentedTensor(DeviceTensor):
    """An int8 activation in DDR as several ranges of token rows, each a whole session buffer (rows of
    `channels` bytes: unpadded, channels a multiple of C), e.g. a memory attention's banked keys: each memory
    frame's rows in its bank slot, the object-pointer tokens' rows in a buffer of their own. A reader that
    takes segments (the vector engine's row ops, attention's Q, K, V as token rows) binds each range in place
    (sw.runtime.layout.RowSegments); any other reads it back (np.asarray). Freeing it frees only the
    buffers it `owns` (a bank's slots stay)."""

    def __init__(self, driver: Driver, parts: list, channels: int, shape: tuple, producer: str, owns=()):
        cols = driver.cfg.cols
        if channels % cols:
            raise GraphExecError(f"{producer}: segments of {channels}-byte rows, not a multiple of C = {cols}")
        self.parts = [(buf, int(rows)) for buf, rows in parts]       # (session buffer, its token rows), in order
        super().__init__(driver, self.parts[0][0], TokenRowLayout(sum(r for _, r in self.parts), channels, cols),
                         shape, producer)
        self.owns = list(owns)

    def segments(self, region: str) -> tuple[RowSegments, dict]:
        """The RowSegments of a program's `region` holding this tensor, and its bind (segment -> buffer)."""
        g = RowSegments(region, tuple(r for _, r in self.parts))
        return g, dict(zip(g.regions, (buf for buf, _ in self.parts)))

    def starts(self) -> list:
        """(buffer, first row) of each part."""
        firsts = np.cumsum([0] + [r for _, r in self.parts])[:-1]
        return [(buf, int(s)) for (buf, _), s in zip(self.parts, firsts)]

    def read(self) -> np.ndarray:
        if self.host is not None or self.buffer is None:
            return super().read()
        s, pitch = self.driver.session, self.layout.pitch
        raw = np.concatenate([s.backend.read(s.arena[buf].addr, rows * pitch) for buf, rows in self.parts])
        return self.layout.unpack(raw).reshape(self.shape)

    def free(self, keep: bool) -> None:
        if keep:
            self.host = self.read()
        for buf in self.owns:
            self.driver.session.free(buf)
        self.buffer, self.owns = None, []


def _segmented(t, pitch: int, tokens: int) -> bool:
    """Whether t is a SegmentedTensor still in DDR of `tokens` rows at this row pitch (read there)."""
    return (isinstance(t, SegmentedTensor) and t.buffer is not None and t.layout.pitch == pitch
            and t.layout.tokens == tokens)


def same_placement(a: TokenRowLayout, b: TokenRowLayout) -> bool:
    """Whether two token-row layouts put every element at the same byte (rows cut into narrower rows,
    compile_vector's row_dim, agree only when neither pads its rows)."""
    if (a.tokens, a.channels, a.cols) == (b.tokens, b.channels, b.cols):
        return True
    return a.pitch == a.channels and b.pitch == b.channels and a.size == b.size


def _in_place(t, layout: TokenRowLayout, order: int | None = None) -> bool:
    """Whether t is a DeviceTensor still in DDR with every element where `layout` puts it, its rows in
    `order` (read there)."""
    return (isinstance(t, DeviceTensor) and not isinstance(t, SegmentedTensor) and t.buffer is not None
            and same_placement(t.layout, layout) and t.order == order and not t.pad)


def _padded(t, shape: tuple) -> bool:
    """Whether t is a map of `shape` still in DDR inside its padded windows (DeviceTensor.pad; read there)."""
    return (isinstance(t, DeviceTensor) and not isinstance(t, SegmentedTensor) and t.buffer is not None
            and bool(t.pad) and t.shape == tuple(shape)
            and t.layout.tokens == RowRuns.windows(shape[1], shape[2], t.pad).size)


class Resident(np.lib.mixins.NDArrayOperatorsMixin):
    """A run's output left in DDR for a later run (GraphExecutor.chained: the image embedding and the high-res
    features the decoder reads, a video frame's features the memory attention and encoder read): a view of a
    DeviceTensor the caller holds like an array. transpose / reshape / copy (the predictors' NCHW <-> NHWC and
    token views) make views without reading it: `index` maps the view's elements (C order) to the tensor's.
    A later run given a view that is the tensor itself (its elements in the tensor's order: the transposes
    undone) reads the buffer in place (device()); anything else reads it back (np.asarray, an operator, another
    array method: `on_read` counts the bytes, once; the values are kept). The buffer is freed when the last view
    is collected."""

    def __init__(self, kept: "_Kept", index: np.ndarray):
        self._kept, self._index = kept, index

    @classmethod
    def of(cls, t: DeviceTensor, on_read) -> "Resident":
        return cls(_Kept(t, on_read), np.arange(int(np.prod(t.shape))).reshape(t.shape))

    shape = property(lambda self: self._index.shape)
    ndim = property(lambda self: self._index.ndim)
    size = property(lambda self: self._index.size)
    dtype = DeviceTensor.dtype

    def _view(self, index) -> "Resident":
        return Resident(self._kept, index)

    def transpose(self, *axes) -> "Resident":
        return self._view(self._index.transpose(*axes))

    def reshape(self, *shape) -> "Resident":
        return self._view(self._index.reshape(*shape))

    def copy(self) -> "Resident":
        return self._view(np.ascontiguousarray(self._index))

    @property
    def T(self) -> "Resident":
        return self.transpose()

    def __array__(self, dtype=None, copy=None):
        a = self._kept.values().reshape(-1)[self._index]
        return a if dtype is None else a.astype(dtype)

    def __getitem__(self, k):
        return np.asarray(self)[k]

    def __len__(self) -> int:
        return self.shape[0]

    def __getattr__(self, name: str):
        """Any other array attribute (astype, sum, ...) on the values, read back."""
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(np.asarray(self), name)

    def __array_ufunc__(self, ufunc, method, *args, **kwargs):
        args = [np.asarray(a) if isinstance(a, Resident) else a for a in args]
        return getattr(ufunc, method)(*args, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        conv = lambda a: np.asarray(a) if isinstance(a, Resident) else [conv(b) for b in a] if isinstance(  # noqa
            a, (list, tuple)) else a
        return func(*[conv(a) for a in args], **kwargs)

    def device(self, shape: tuple) -> DeviceTensor | None:
        """The tensor in DDR seen as `shape` where this view is it in the tensor's element order (read in place);
        None where it is another order or the buffer is gone."""
        t = self._kept.tensor
        if t.buffer is None or self._index.size != int(np.prod(shape)) or not np.array_equal(
                self._index.reshape(-1), np.arange(self._index.size)):
            return None
        if tuple(shape) == t.shape:
            return t
        v = DeviceTensor(t.driver, t.buffer, t.layout, shape, t.producer, t.order)   # never freed: pinned
        v.pinned, v.holders = True, t.holders
        return v


class _Kept:
    """A Resident's tensor (pinned: no reader frees it), read back at most once, freed with the last view."""

    def __init__(self, t: DeviceTensor, on_read):
        t.pinned = True
        self.tensor, self.on_read = t, on_read
        weakref.finalize(self, _release, t, t.driver.session)

    def values(self) -> np.ndarray:
        t = self.tensor
        if t.host is None:
            t.host = t.read()
            self.on_read(t)
        return t.host


def _release(t: DeviceTensor, session) -> None:
    """Free a Resident's buffer, if its session is still the driver's, open."""
    if t.buffer is not None and t.driver._session is session and t.buffer in session.arena:
        t.holders[0] -= 1
        if not t.holders[0] and not t.kept:
            t.driver.session.free(t.buffer)
    t.buffer = None
