"""Activation layouts in DDR, and the one layout change the overlay runs itself.

The activation layout is the planar map (sw.compile.conv.FmapLayout): channel planes with
zero margins. The conv engine (IM2COL) and the depthwise engine read and write it, and a
linear layer on it is a 1 x 1 convolution on the conv engine, so linear -> conv ->
depthwise chains read each other's output in place. The attention engine reads operands
tile by tile (a tile of C tokens: channel c's C tokens contiguous, one scratchpad entry)
and writes query rows (tokens, not channels), so around it:
  * TokenTileLayout: what a 1 x 1 convolution writes instead of a planar map when its output
    feeds attention (K and V are this layout, and Q with compile_attention(token_tiles=True));
  * compile_chunks_to_planar: the attention output (written chunk-major, C channels of every
    token per chunk) back to a planar map, on the GEMM array: A = C tokens' C channels,
    B = selection matrices, so the accumulator rows are channels (a transpose) and a per-row
    STORE puts them in their planes. docs/runtime.md has the picture, the R < C case and what
    a transposing STORE in hardware would save.
"""
from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from hw import isa
from sw.compile.conv import ConvProgram, FmapLayout
from sw.compile.linear import ALIGN, CompileError, lay_out_image, pack_descriptors, plan_cache, schedule, schedule_runs
from sw.runtime.program import frozen

#: requantize(x, IDENTITY_MULT, IDENTITY_SHIFT) == x for every int32 x that fits int8.
IDENTITY_MULT, IDENTITY_SHIFT = 1 << 30, 30


@dataclass(frozen=True)
class TokenTileLayout:
    """A (channels, height, width) map as tiles of C tokens (token t = y * width + x), head by head
    (channels split into `heads` groups of d): tile t // C of head h holds the head's channel 0's C
    tokens, then its channel 1's, ... The attention engine's Q, K and V layout (per head, query or
    key tile: d entries of C tokens). Build one for a given head count with `TokenTileLayout.heads_of(h)`."""
    channels: int
    height: int
    width: int
    cols: int
    element_bytes: int = 1
    heads: int = 1

    @classmethod
    def heads_of(cls, heads: int):
        """A layout class (channels, height, width, cols, element_bytes) with `heads` heads (compile_conv2d)."""
        return lambda *args: cls(*args, heads=heads)

    def __post_init__(self):
        if self.width % self.cols:
            raise CompileError(f"token tiles: width {self.width} must be a multiple of the array's {self.cols} "
                               "columns (a stored row segment may not straddle two tiles)")
        if self.channels % self.heads:
            raise CompileError(f"{self.channels} channels do not split into {self.heads} heads")

    @property
    def tokens(self) -> int:
        return self.height * self.width

    @property
    def head_dim(self) -> int:
        return self.channels // self.heads

    @property
    def size(self) -> int:
        return self.tokens * self.channels * self.element_bytes

    @property
    def channel_pitch(self) -> int:
        """Bytes from channel c to c + 1 within a head (a STORE's rows must not cross heads)."""
        return self.cols * self.element_bytes

    @property
    def row_pitch(self) -> int:
        return self.width * self.head_dim * self.element_bytes

    def offset(self, c: int, y: int, x: int) -> int:
        h, cc = divmod(c, self.head_dim)
        t = y * self.width + x
        tile = h * (self.tokens // self.cols) + t // self.cols
        return ((tile * self.head_dim + cc) * self.cols + t % self.cols) * self.element_bytes

    def pack(self, x: np.ndarray) -> np.ndarray:
        H, d, C = self.heads, self.head_dim, self.cols
        tiles = x.reshape(H, d, -1, C).transpose(0, 2, 1, 3)          # (head, tile, channel, token)
        return np.ascontiguousarray(tiles.astype(np.int8 if self.element_bytes == 1 else "<i4")).reshape(-1).view(
            np.uint8)

    def unpack(self, raw: np.ndarray) -> np.ndarray:
        H, d, C = self.heads, self.head_dim, self.cols
        dtype = np.int8 if self.element_bytes == 1 else np.dtype("<i4")
        tiles = np.frombuffer(np.ascontiguousarray(raw[:self.size]).tobytes(), dtype)
        tiles = tiles.reshape(H, -1, d, C).transpose(0, 2, 1, 3)
        return tiles.reshape(self.channels, self.height, self.width).astype(
            np.int8 if self.element_bytes == 1 else np.int32)


class RelayoutProgram(ConvProgram):
    ROLES = {"descriptors": "program", "in": "input", "B": "weight", "params": "weight", "out": "output"}


def compile_chunks_to_planar(cfg, channels: int, height: int, width: int, *, heads: int = 1, base_addr: int = 0,
                             max_ddr_bytes: int = 1 << 30) -> RelayoutProgram:
    """int8 tokens written chunk-major (per chunk j of C channels, per head h: C channels of each of
    the height x width tokens, C bytes apart; sw.compile.attention out_chunked) -> the planar map
    (channels, height, width), head h's channel j x C + i in plane h x channels / heads + j x C + i.

    Per C tokens of a chunk (C x C bytes): A = those bytes as m C entries of R (C = m R; entry e =
    token e // m, channels (e % m) R ..), B = m selection matrices (tile t: entry m col + t in column
    col), so one COMPUTE of m tiles leaves channel t R + r's C tokens in accumulator row r of tile t;
    one STORE writes the m tiles' rows into their planes. m C MACs per output element."""
    R, C = cfg.rows, cfg.cols
    if C % R:
        raise CompileError(f"the on-overlay transpose needs the array's cols ({C}) a multiple of its rows ({R}): "
                           "an A entry is a part of one token's chunk of C channels")
    if channels % (heads * C) or width % C:
        raise CompileError(f"channels {channels} per head ({heads} heads) and width {width} must be multiples of {C}")
    m = C // R
    T, d = height * width, channels // heads
    K = m * C                                    # A entries per C tokens' chunk
    out_l = FmapLayout(channels, height, width, C)
    a_half, groups = cfg.a_depth // 2, cfg.acc_depth // (m * R)
    if K > a_half or m * K > cfg.b_depth // 2 or groups < 2:
        raise CompileError(f"the transpose needs {K} A entries, {m * K} B entries and 2 x {m} accumulator tiles")
    ops = []
    first = [dict(target="B", src=("B", 0), count=m * K, sp=0, res=("B", 0)),
             dict(target="PARAM", src=("params", 0), count=1, sp=0, res=("P", 0))]
    work = ((j, h, t0) for j in range(d // C) for h in range(heads) for t0 in range(0, T, C))
    for step, (j, h, t0) in enumerate(work):
        ha, region = step % 2, step % groups * m
        y, x0 = divmod(t0, width)
        loads = (first if step == 0 else []) + [dict(target="A", src=("in", ((j * heads + h) * T + t0) * C),
                                                     count=K, sp=ha * a_half, res=("A", ha))]
        regions = list(range(region, region + m))
        tiles = dict(tiles_last=m - 1, tile_stride=R * out_l.channel_pitch) if m > 1 else {}
        ops.append(dict(loads=loads, a=("A", ha), b=("B", 0), a_base=ha * a_half, b_base=0, k_last=K - 1,
                        acc=region, acc_regions=regions, tiles=m, accumulate=0,
                        store=dict(rows=R, acc=region, acc_regions=regions, param=0, p=("P", 0),
                                   dst=("out", out_l.offset(h * d + j * C, y, x0)), stride=out_l.channel_pitch,
                                   fields=dict(param_rows=1, **tiles))))
    descs = schedule(ops, R, relu=False, out_int32=False)
    sizes = {"in": channels * T, "B": m * K * C, "params": C * isa.PARAM_CHANNEL_BYTES, "out": out_l.size}
    if base_addr % ALIGN:
        raise CompileError(f"DDR buffer address {base_addr:#x} is not {ALIGN}-byte aligned")
    offsets, image = lay_out_image(cfg, len(descs), sizes, base_addr, max_ddr_bytes, "relayout")
    select = np.zeros((m, K, C), np.int8)                # tile t: entry m col + t -> column col
    for t in range(m):
        select[t, m * np.arange(C) + t, np.arange(C)] = 1
    off = offsets["B"][0]
    image[off:off + select.size] = select.reshape(-1).view(np.uint8)
    params = isa.pack_params(np.zeros(C, np.int64), np.full(C, IDENTITY_MULT), np.full(C, IDENTITY_SHIFT))
    image[offsets["params"][0]:offsets["params"][0] + params.size] = params
    sym, raw = pack_descriptors(descs, image, offsets, base_addr, "split the map")
    op = dict(kind="relayout", channels=channels, height=height, width=width, heads=heads)
    return RelayoutProgram(cfg, channels, K, T, False, image, raw, offsets, macs=channels * T * K,
                           base_addr=base_addr, symbolic=sym, out_layout=out_l, op=op)



@dataclass(frozen=True)
class TokenRowLayout:
    """Tokens as channels-last rows: token t's channels at t x pitch, pitch = channels rounded up to the
    array's C (int8). What a linear layer writes (sw.compile.linear's out: M rows of N rounded up to C),
    so the vector engine (hw/vector) reads a linear's output in place and writes the same layout; an
    (H, W, C) map is H x W tokens, t = y W + x. Padding bytes (channels .. pitch) are zero."""
    tokens: int
    channels: int
    cols: int

    @property
    def pitch(self) -> int:
        return -(-self.channels // self.cols) * self.cols

    @property
    def size(self) -> int:
        return self.tokens * self.pitch

    def offset(self, t: int, c: int = 0) -> int:
        return t * self.pitch + c

    def pack(self, x: np.ndarray) -> np.ndarray:
        rows = np.zeros(self.size, np.uint8)
        self.pack_into(x, rows)
        return rows

    def pack_into(self, x: np.ndarray, out: np.ndarray) -> None:
        """pack(x) written into `out` (uint8, `size` bytes or more, zeroed: the padding is left as it is)."""
        rows = out[:self.size].view(np.int8).reshape(self.tokens, self.pitch)
        rows[:, :self.channels] = np.asarray(x, np.int8).reshape(self.tokens, self.channels)

    def unpack(self, raw: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(raw[:self.size]).view(np.int8).reshape(self.tokens, self.pitch)
        return rows[:, :self.channels].copy()


@dataclass(frozen=True)
class RowRuns:
    """A region's rows placed in runs: run (first, n, at) puts rows first .. first + n - 1 at the region's rows
    at .. at + n - 1; `size` rows in all, the rows no run covers never read or written. What a map's rows
    are inside the zero-padded windows that a window partition makes of it (`windows`: Hiera's later stages,
    ws not dividing the map), and a map's rows in window order put back in the map's (`unwindows`). The one
    place that says where windows put a map's rows. Runs in order of `first`, covering every row."""
    runs: tuple
    size: int

    @classmethod
    def windows(cls, h: int, w: int, ws: int) -> "RowRuns":
        """An (h, w) map's rows (t = y w + x) inside window_partition's ws x ws windows of it padded to whole
        windows (windows row-major, each window's rows row-major)."""
        nx = -(-w // ws)
        runs = tuple((y * w + x0, min(ws, w - x0), ((y // ws * nx + x0 // ws) * ws + y % ws) * ws)
                     for y in range(h) for x0 in range(0, w, ws))
        return cls(runs, -(-h // ws) * nx * ws * ws)

    @classmethod
    def unwindows(cls, h: int, w: int, ws: int) -> "RowRuns":
        """An (h, w) map's rows in window order ws (ws tiling it: window_partition's rows) placed in the map's
        order: each window row a run of ws rows."""
        nx = w // ws
        runs = tuple((k * ws * ws + iy * ws, ws, (k // nx * ws + iy) * w + k % nx * ws)
                     for k in range(h * w // (ws * ws)) for iy in range(ws))
        return cls(runs, h * w)

    @classmethod
    def gather(cls, rows, size: int) -> "RowRuns":
        """Row i at the region's row rows[i] (a map's rows read in another row order: sw.runtime.graph_exec), a
        run per stretch of consecutive rows; `size` rows in the region."""
        rows = np.asarray(rows)
        cuts = np.flatnonzero(np.diff(rows) != 1) + 1
        firsts, ends = np.concatenate([[0], cuts]), np.concatenate([cuts, [rows.size]])
        return cls(tuple((int(f), int(e - f), int(rows[f])) for f, e in zip(firsts, ends)), size)

    @cached_property
    def starts(self) -> tuple:
        return tuple(first for first, _, _ in self.runs)

    def row(self, r: int) -> int:
        """The region's row holding row r."""
        first, n, at = self.runs[max(0, bisect_right(self.starts, r) - 1)]
        if not first <= r < first + n:
            raise CompileError(f"row {r} is in no run")
        return at + r - first

    def spread(self, packed: np.ndarray, pitch: int) -> np.ndarray:
        """The rows' bytes (`pitch` a row) -> the region's bytes, the rows no run covers zero."""
        src, out = packed.reshape(-1, pitch), np.zeros((self.size, pitch), np.uint8)
        for first, n, at in self.runs:
            out[at:at + n] = src[first:first + n]
        return out.reshape(-1)


@dataclass(frozen=True)
class RowSegments:
    """A region of token rows held in several DDR ranges: segment i is region `name.i` of `rows[i]` rows at
    the region's row pitch, so a runtime binds each to the buffer holding those rows (a memory bank slot, an
    activation) and the descriptor relink (sw.runtime.session.LoadedProgram.rebind) moves them per call.
    A compiler gives every access of the region to the segment holding it (`locate`); an access may not
    straddle two segments (a tile of C keys inside one memory frame's rows: a frame's HW tokens are a multiple
    of C). The one place that says how a segmented region's rows map to its segments."""
    name: str
    rows: tuple

    @property
    def regions(self) -> tuple:
        return tuple(f"{self.name}.{i}" for i in range(len(self.rows)))

    @property
    def starts(self) -> tuple:
        return tuple(int(s) for s in np.cumsum((0,) + tuple(self.rows))[:-1])

    @property
    def total(self) -> int:
        return sum(self.rows)

    def sizes(self, pitch: int) -> dict:
        """Each segment region's bytes."""
        return {r: n * pitch for r, n in zip(self.regions, self.rows)}

    def locate(self, row: int, n: int = 1) -> tuple[str, int]:
        """(segment region, row within it) of rows row .. row + n - 1, which must lie in one segment."""
        for region, s, k in zip(self.regions, self.starts, self.rows):
            if s <= row < s + k:
                if row + n > s + k:
                    raise CompileError(f"{self.name}: rows {row}..{row + n - 1} straddle segments (rows "
                                       f"{', '.join(map(str, self.rows))})")
                return region, row - s
        raise CompileError(f"{self.name}: row {row} outside its {self.total} rows")

    def address(self, offset: int, n_rows: int, pitch: int) -> tuple[str, int]:
        """(segment region, byte offset) of a byte `offset` of the contiguous region (rows `pitch` apart)
        whose access spans n_rows rows from there."""
        row, col = divmod(offset, pitch)
        region, r = self.locate(row, n_rows)
        return region, r * pitch + col

    def gather(self, mem: np.ndarray, at: dict, pitch: int) -> np.ndarray:
        """The region's bytes as one contiguous array, read from `mem` at each segment's address (at[region])."""
        return np.concatenate([mem[at[r]:at[r] + size] for r, size in self.sizes(pitch).items()])

    def scatter(self, image: np.ndarray, offsets: dict, data: np.ndarray, pitch: int) -> None:
        """Write the contiguous region's bytes `data` into each segment region of a compiled image."""
        for r, s, size in zip(self.regions, self.starts, self.sizes(pitch).values()):
            image[offsets[r][0]:offsets[r][0] + size] = data[s * pitch:s * pitch + size]


class TransposeProgram(ConvProgram):
    """compile_rows_to_planar / compile_planar_to_rows: the identity tile (A) is its weight."""
    ROLES = {"descriptors": "program", "in": "input", "A": "weight", "params": "weight", "out": "output"}


def transpose_refusal(cfg) -> str | None:
    """Why the GEMM array cannot move a map between token rows and planes (None: it can)."""
    R, C, DB = cfg.rows, cfg.cols, cfg.beat_bytes
    if "load_t" not in cfg.engines:
        return "the overlay has no transposing LOAD"
    if C % R or C % DB:
        return f"the array's cols ({C}) must be a multiple of its rows ({R}) and of the {DB}-byte AXI beat"
    if cfg.b_depth // 2 < C or cfg.acc_depth // C < 2:
        return f"the transpose needs {C} B entries a half and 2 x {C} accumulator rows"
    return None


def _transpose_program(cfg, kind: str, channels: int, height: int, width: int, base_addr: int,
                       max_ddr_bytes: int, order: int | None = None) -> TransposeProgram:
    offsets, image, sym, out_l, raw, runs = _transpose_plan(cfg, kind, channels, height, width, base_addr,
                                                            max_ddr_bytes, order)
    op = dict(kind=kind, channels=channels, height=height, width=width, order=order)
    T = height * width
    return TransposeProgram(cfg, channels, cfg.rows, T, False, image.copy(), frozen(raw), offsets,
                            macs=channels * T * cfg.rows, base_addr=base_addr, symbolic=sym, out_layout=out_l, op=op,
                            runs=runs)


@plan_cache
def _transpose_plan(cfg, kind: str, channels: int, height: int, width: int, base_addr: int, max_ddr_bytes: int,
                    order: int | None = None):
    """An identity GEMM moving a map between token rows and planes (kind "rows_to_planar" or "planar_to_rows"),
    whatever the data (kept: a video frame runs the same ones every frame). Per item of the work (src offset,
    rows read, row pitch, entries, stores: [(tiles, first entry, rows, dst offset, row pitch, tile pitch,
    cols)]) one transposing LOAD B of those entries (entry e byte c = DDR row c byte e: the rows read become the
    columns) and per store one COMPUTE of `tiles` R x R identity tiles (tile t: B entries first + t R ..) and
    one STORE: accumulator row r of tile t = B entry first + t R + r, a transpose of the rows read. The
    requantisation is the identity. `order`: planar_to_rows writes the token rows in window order ws."""
    why = transpose_refusal(cfg)
    if why:
        raise CompileError(f"{kind}: {why}")
    if base_addr % ALIGN:
        raise CompileError(f"DDR buffer address {base_addr:#x} is not {ALIGN}-byte aligned")
    R, C = cfg.rows, cfg.cols
    rows_l, planes = TokenRowLayout(height * width, channels, C), FmapLayout(channels, height, width, C)
    if kind == "rows_to_planar":
        work = _rows_to_planar_work(R, C, cfg.beat_bytes, rows_l, planes)
    else:
        # pixels per item: whole C-pixel blocks of a row, as many as half the accumulator's tiles and of B hold
        tile = order if order and R % order == 0 and C % order == 0 else R     # pixels a tile
        block = max(C, min(cfg.acc_depth // (2 * R) * tile, cfg.b_depth // 2, isa.MAX_TILES * tile) // C * C)
        work = _planar_to_rows_work(R, C, rows_l, planes, block, order, tile)
    in_l, out_l = (rows_l, planes) if kind == "rows_to_planar" else (planes, rows_l)
    b_half, regions = cfg.b_depth // 2, cfg.acc_depth // R
    first = [dict(target="A", src=("A", 0), count=R, sp=0, res=("A", 0)),
             dict(target="PARAM", src=("params", 0), count=1, sp=0, res=("P", 0))]
    ops, step, acc = [], 0, 0
    for src, rows, pitch, entries, stores in work:
        h = step % 2
        # (not paced: each load goes right after the compute that frees its half, which keeps the DMA-bound
        # relayouts' schedule linear in their length)
        load = dict(target="B", src=("in", src), count=entries, sp=h * b_half, res=("B", h),
                    fields=dict(transpose=1, t_rows_last=rows - 1, stride=pitch))
        for i, (tiles, e0, n, dst, row_pitch, tile_pitch, cols, *k) in enumerate(stores):
            K = k[0] if k else R                  # B entries a tile (an identity tile's first K columns)
            if acc + tiles > regions:
                acc = 0
            used = list(range(acc, acc + tiles))
            fields = dict(cols=0 if cols == C else cols)
            if tiles > 1:
                fields.update(tiles_last=tiles - 1, tile_stride=tile_pitch)
            ops.append(dict(loads=(first if not ops else []) + ([load] if i == 0 else []), a=("A", 0), b=("B", h),
                            a_base=0, b_base=h * b_half + e0, k_last=K - 1, acc=acc, acc_regions=used,
                            tiles=tiles, accumulate=0,
                            store=dict(rows=n, acc=acc, acc_regions=used, param=0, p=("P", 0), dst=("out", dst),
                                       stride=row_pitch, fields=fields)))
            acc += tiles
        step += 1
    descs, runs = schedule_runs(ops, R, relu=False, out_int32=False)     # (runs: a big map's wait counts)
    sizes = {"in": in_l.size, "A": R * R, "params": C * isa.PARAM_CHANNEL_BYTES, "out": out_l.size}
    offsets, image = lay_out_image(cfg, len(descs), sizes, base_addr, max_ddr_bytes, kind)
    off = offsets["A"][0]
    image[off:off + R * R] = np.eye(R, dtype=np.int8).reshape(-1).view(np.uint8)     # entry k: byte k is 1
    params = isa.pack_params(np.zeros(C, np.int64), np.full(C, IDENTITY_MULT), np.full(C, IDENTITY_SHIFT))
    image[offsets["params"][0]:offsets["params"][0] + params.size] = params
    sym, raw = pack_descriptors(descs, image, offsets, base_addr, "split the map")
    image.flags.writeable = False
    return offsets, image, sym, out_l, frozen(raw), runs


def _tiles(first: int, n: int, dst: int, pitch: int, R: int, cols: int) -> list[tuple]:
    """Stores of n rows of B entries first .. first + n - 1 to DDR rows `pitch` apart from dst: whole R-row
    tiles, then the rest (fewer than R rows) by a STORE of its own."""
    full, rest = divmod(n, R)
    return ([(full, first, R, dst, pitch, R * pitch, cols)] if full else []) + (
        [(1, first + full * R, rest, dst + full * R * pitch, pitch, 0, cols)] if rest else [])


def _rows_to_planar_work(R, C, DB, rows_l, planes):
    """Per C channels and run of up to C tokens of a map row: its tokens' rows (an entry a channel: the channels'
    whole beats, fewer than C for a map of fewer channels), each channel row stored in its plane, only the run's
    columns."""
    width, out = planes.width, []
    for c0 in range(0, planes.channels, C):
        nc = min(C, planes.channels - c0)
        for y in range(planes.height):
            for x0 in range(0, width, C):
                n = min(C, width - x0)
                out.append((rows_l.offset(y * width + x0, c0), n, rows_l.pitch, -(-nc // DB) * DB,
                            _tiles(0, nc, planes.offset(c0, y, x0), planes.channel_pitch, R, n)))
    return out


def _planar_to_rows_work(R, C, rows_l, planes, block: int, order: int | None, tile: int):
    """Per C channels and `block` pixels of a map row: the channels' plane rows (an entry a pixel); each run of
    pixels whose token rows follow each other (a whole row segment; in window order ws, the run within one
    window) stored in them. In window order ws dividing R (`tile` = ws), tiles of ws pixels (K = ws: ws rows
    of an identity tile) make every window's run one tile of one STORE, the next window ws x ws rows on."""
    width, out = planes.width, []
    for c0 in range(0, planes.channels, C):
        nc = min(C, planes.channels - c0)
        for y in range(planes.height):
            for x0 in range(0, width, block):
                n = min(block, width - x0)
                stores, x = [], x0
                if tile != R:                     # whole windows (ws divides C, so the block and the map width)
                    stores, x = [(n // tile, 0, tile, rows_l.offset(window_row(y, x0, width, order), c0),
                                  rows_l.pitch, tile * tile * rows_l.pitch, C, tile)], x0 + n
                while x < x0 + n:
                    run = min(x0 + n, (x // order + 1) * order) - x if order else x0 + n - x
                    t = window_row(y, x, width, order) if order else y * width + x
                    stores += _tiles(x - x0, run, rows_l.offset(t, c0), rows_l.pitch, R, C)
                    x += run
                out.append((planes.offset(c0, y, x0), nc, planes.channel_pitch, -(-n // C) * C, stores))
    return out


def window_row(y: int, x: int, width: int, ws: int) -> int:
    """The token row of pixel (y, x) of a map `width` wide stored in window order ws (ws tiling it:
    window_partition's rows, windows row-major, each window's rows row-major)."""
    return ((y // ws * (width // ws) + x // ws) * ws + y % ws) * ws + x % ws


def compile_rows_to_planar(cfg, channels: int, height: int, width: int, *, base_addr: int = 0,
                           max_ddr_bytes: int = 1 << 30) -> TransposeProgram:
    """int8 token rows (TokenRowLayout: token y width + x's channels at its row) -> the planar map (FmapLayout)
    on the GEMM array, writing only the map's pixels (the planes' zero margins are the buffer's). Per C
    channels and run of up to C tokens of one map row: the tokens' rows read transposed into B (entry e = channel
    c0 + e of the run's tokens), C / R identity tiles leave channel c0 + t R + r's tokens in row r of tile t,
    one STORE puts them in their planes (its columns: the run's tokens). What a depthwise convolution reads
    when its neighbours write token rows (sw.runtime.graph_exec._depthwise_dev)."""
    return _transpose_program(cfg, "rows_to_planar", channels, height, width, base_addr, max_ddr_bytes)


def compile_planar_to_rows(cfg, channels: int, height: int, width: int, *, order: int | None = None,
                           base_addr: int = 0, max_ddr_bytes: int = 1 << 30) -> TransposeProgram:
    """The planar map (FmapLayout) -> int8 token rows (TokenRowLayout), on the GEMM array: per C channels and C
    pixels of a map row, the C channels' plane rows read transposed into B (entry e = pixel x0 + e of the C
    channels), identity tiles leave pixel x0 + t R + r's channels in row r of tile t, STOREs put each row in its
    token row (a tail of fewer than R pixels: a STORE of its own). `order`: the token rows in window order ws
    (window_row; ws tiling the map), as the patch embedding's readers want them (graph_exec.window_orders)."""
    if order and (height % order or width % order):
        raise CompileError(f"window order {order} does not tile a {height} x {width} map")
    return _transpose_program(cfg, "planar_to_rows", channels, height, width, base_addr, max_ddr_bytes, order)
