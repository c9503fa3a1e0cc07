"""Activation layouts in DDR, and the one layout change the overlay runs itself.

The activation layout is the planar map (sw.compile_conv.FmapLayout): channel planes with
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
from sw.compile_conv import ConvProgram, FmapLayout
from sw.compiler import ALIGN, CompileError, lay_out_image, pack_descriptors, schedule

#: requantize(x, IDENTITY_MULT, IDENTITY_SHIFT) == x for every int32 x that fits int8.
IDENTITY_MULT, IDENTITY_SHIFT = 1 << 30, 30


@dataclass(frozen=True)
class TokenTileLayout:
    """A (channels, height, width) map as tiles of C tokens (token t = y * width + x): tile t // C
    holds channel 0's C tokens, then channel 1's, ... The attention engine's Q, K and V layout."""
    channels: int
    height: int
    width: int
    cols: int
    element_bytes: int = 1

    def __post_init__(self):
        if self.width % self.cols:
            raise CompileError(f"token tiles: width {self.width} must be a multiple of the array's {self.cols} "
                               "columns (a stored row segment may not straddle two tiles)")

    @property
    def tokens(self) -> int:
        return self.height * self.width

    @property
    def size(self) -> int:
        return self.tokens * self.channels * self.element_bytes

    @property
    def channel_pitch(self) -> int:
        return self.cols * self.element_bytes

    @property
    def row_pitch(self) -> int:
        return self.width * self.channels * self.element_bytes

    def offset(self, c: int, y: int, x: int) -> int:
        t = y * self.width + x
        return ((t // self.cols * self.channels + c) * self.cols + t % self.cols) * self.element_bytes

    def pack(self, x: np.ndarray) -> np.ndarray:
        tiles = x.reshape(self.channels, -1, self.cols).transpose(1, 0, 2)
        return np.ascontiguousarray(tiles.astype(np.int8 if self.element_bytes == 1 else "<i4")).reshape(-1).view(
            np.uint8)

    def unpack(self, raw: np.ndarray) -> np.ndarray:
        dtype = np.int8 if self.element_bytes == 1 else np.dtype("<i4")
        tiles = np.frombuffer(np.ascontiguousarray(raw[:self.size]).tobytes(), dtype)
        tiles = tiles.reshape(-1, self.channels, self.cols).transpose(1, 0, 2)
        return tiles.reshape(self.channels, self.height, self.width).astype(
            np.int8 if self.element_bytes == 1 else np.int32)


class RelayoutProgram(ConvProgram):
    ROLES = {"descriptors": "program", "in": "input", "B": "weight", "params": "weight", "out": "output"}


def compile_chunks_to_planar(cfg, channels: int, height: int, width: int, *, base_addr: int = 0,
                             max_ddr_bytes: int = 1 << 30) -> RelayoutProgram:
    """int8 tokens written chunk-major (chunk j: C channels of each of the height x width tokens,
    C bytes apart; sw.compile_attention out_chunked) -> the planar map (channels, height, width)."""
    R, C = cfg.rows, cfg.cols
    if R != C:
        raise CompileError(f"the on-overlay transpose needs a square array (rows {R}, cols {C}): an A entry "
                           "is one token's chunk of C channels")
    if channels % C or width % C:
        raise CompileError(f"channels {channels} and width {width} must be multiples of {C}")
    T, chunks = height * width, channels // C
    out_l = FmapLayout(channels, height, width, C)
    a_half, regions = cfg.a_depth // 2, cfg.acc_depth // R
    ops = []
    first = [dict(target="B", src=("B", 0), count=C, sp=0, res=("B", 0)),
             dict(target="PARAM", src=("params", 0), count=1, sp=0, res=("P", 0))]
    for step, (j, t0) in enumerate((j, t0) for j in range(chunks) for t0 in range(0, T, C)):
        ha = step % 2
        y, x0 = divmod(t0, width)
        loads = (first if step == 0 else []) + [dict(target="A", src=("in", (j * T + t0) * C), count=C,
                                                     sp=ha * a_half, res=("A", ha))]
        ops.append(dict(loads=loads, a=("A", ha), b=("B", 0), a_base=ha * a_half, b_base=0, k_last=C - 1,
                        acc=step % regions, accumulate=0,
                        store=dict(rows=R, acc=step % regions, param=0, p=("P", 0),
                                   dst=("out", out_l.offset(j * C, y, x0)), stride=out_l.channel_pitch,
                                   fields=dict(param_rows=1))))
    descs = schedule(ops, R, relu=False, out_int32=False)
    sizes = {"in": chunks * T * C, "B": C * C, "params": C * isa.PARAM_CHANNEL_BYTES, "out": out_l.size}
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
