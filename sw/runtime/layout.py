"""Activation layouts in DDR, and the one layout change the overlay runs itself.

The activation layout is the planar map (sw.compile.conv.FmapLayout): channel planes with
zero margins. The conv engine (IM2COL) and the depthwise engine read and write it, and a
linear layer on it is a 1 x 1 convolution on the conv engine, so linear -> conv ->
depthwise chains read each other's output in place. The attention engine reads operands
tile by tile (a tile of C tokens: channel c's C tokens contiguous, one scratchpad entry)
and writes query rows (tokens, not channels), so around it:
  * TokenTileLayout: what a 1 x 1 convolution writes instead of a planar map when its output
    feeds attention (Q, K and V of a square R = C array are this layout);
  * compile_chunks_to_planar: the attention output (written chunk-major, C channels of every
    token per chunk) back to a planar map, on the GEMM array: A = C tokens' C channels,
    B = the identity, so the accumulator rows are channels (a transpose) and a per-row STORE
    puts them in their planes. docs/runtime.md has the picture and what a transposing STORE
    in hardware would save.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hw import isa
from sw.compile.conv import ConvProgram, FmapLayout
from sw.compile.linear import ALIGN, CompileError, lay_out_image, pack_descriptors, schedule

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
    (channels, height, width), head h's channel j x C + i in plane h x channels / heads + j x C + i."""
    R, C = cfg.rows, cfg.cols
    if R != C:
        raise CompileError(f"the on-overlay transpose needs a square array (rows {R}, cols {C}): an A entry "
                           "is one token's chunk of C channels")
    if channels % (heads * C) or width % C:
        raise CompileError(f"channels {channels} per head ({heads} heads) and width {width} must be multiples of {C}")
    T, d = height * width, channels // heads
    out_l = FmapLayout(channels, height, width, C)
    a_half, regions = cfg.a_depth // 2, cfg.acc_depth // R
    ops = []
    first = [dict(target="B", src=("B", 0), count=C, sp=0, res=("B", 0)),
             dict(target="PARAM", src=("params", 0), count=1, sp=0, res=("P", 0))]
    work = ((j, h, t0) for j in range(d // C) for h in range(heads) for t0 in range(0, T, C))
    for step, (j, h, t0) in enumerate(work):
        ha = step % 2
        y, x0 = divmod(t0, width)
        loads = (first if step == 0 else []) + [dict(target="A", src=("in", ((j * heads + h) * T + t0) * C),
                                                     count=C, sp=ha * a_half, res=("A", ha))]
        ops.append(dict(loads=loads, a=("A", ha), b=("B", 0), a_base=ha * a_half, b_base=0, k_last=C - 1,
                        acc=step % regions, accumulate=0,
                        store=dict(rows=R, acc=step % regions, param=0, p=("P", 0),
                                   dst=("out", out_l.offset(h * d + j * C, y, x0)), stride=out_l.channel_pitch,
                                   fields=dict(param_rows=1))))
    descs = schedule(ops, R, relu=False, out_int32=False)
    sizes = {"in": channels * T, "B": C * C, "params": C * isa.PARAM_CHANNEL_BYTES, "out": out_l.size}
    if base_addr % ALIGN:
        raise CompileError(f"DDR buffer address {base_addr:#x} is not {ALIGN}-byte aligned")
    offsets, image = lay_out_image(cfg, len(descs), sizes, base_addr, max_ddr_bytes, "relayout")
    off = offsets["B"][0]
    image[off:off + C * C] = np.eye(C, dtype=np.int8).reshape(-1).view(np.uint8)
    params = isa.pack_params(np.zeros(C, np.int64), np.full(C, IDENTITY_MULT), np.full(C, IDENTITY_SHIFT))
    image[offsets["params"][0]:offsets["params"][0] + params.size] = params
    sym, raw = pack_descriptors(descs, image, offsets, base_addr, "split the map")
    return RelayoutProgram(cfg, channels, C, T, False, image, raw, offsets, macs=channels * T * C,
                           base_addr=base_addr, symbolic=sym, out_layout=out_l)


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
        rows = np.zeros((self.tokens, self.pitch), np.int8)
        rows[:, :self.channels] = np.asarray(x, np.int8).reshape(self.tokens, self.channels)
        return rows.reshape(-1).view(np.uint8)

    def unpack(self, raw: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(raw[:self.size]).view(np.int8).reshape(self.tokens, self.pitch)
        return rows[:, :self.channels].copy()
