"""The vector engine's plain facts (no Amaranth): op codes, field widths, limits, and how a
host lays out rows, commands and parameter writes for it. golden_model / sw import this.

Stream layout: a row of D int8 values is ceil(D / L) beats of L lanes, element e in beat e // L,
lane e % L; the last beat's unused lanes are don't-care in and zero out. Every row starts a beat.
"""
from __future__ import annotations

from enum import IntEnum

import numpy as np

from golden_model import intvec
from golden_model.intops import MULT_BITS, SHIFT_BITS
from hw.config import VEC_LANES


class VecOp(IntEnum):
    LAYERNORM = 0
    LUT = 1
    ADD = 2
    RESCALE = 3
    ROPE = 4
    MAXPOOL = 5        # input: the 4 pixels of each 2x2 window as 4 consecutive rows of C
    UPSAMPLE = 6       # output: each input row 4 times (the 2x2 block it becomes)


class ParamTarget(IntEnum):
    """Where a parameter write lands (the `param` stream's target field)."""
    GAIN = 0           # LayerNorm gain g[e], int16, addr = channel e
    BIAS = 1           # LayerNorm bias b[e], int32, addr = channel e
    LUT = 2            # table[i], int8, addr = i (all lanes' copies at once)
    ROPE = 3           # (cos, sin) of pair slot addr: data = cos & 0xffff | sin << 16


OP_BITS = 3
LANES = VEC_LANES                          # supported lane counts (even, powers of two: RoPE pairs)
MAX_DIM = intvec.LN_MAX_DIM                # elements per row (every op)
DIM_BITS = MAX_DIM.bit_length()            # 11: 1..1024
ROWS_BITS = 24
RING_ELEMS = 8192                          # row ring: 8 LayerNorm rows of 1,024, 2 max-pool windows of 1,024
ROWS_IN_FLIGHT = 16                        # LayerNorm rows between the row ring's input and output
ROPE_DEPTH = 8192                          # (cos, sin) pairs on chip: two 64 x 64 axial tables for D = 256
ROPE_COORD_BITS = 13
ADDR_BITS = 16
PARAM_DATA_BITS = 32
GROUP_ROWS = {VecOp.MAXPOOL: 4}            # input rows read together (max-pool: one 2x2 window)
REPEATS = {VecOp.UPSAMPLE: 4}              # times each row is read out

# Fields of a command, (name, width): hw.vector.engine builds its Struct from this list.
COMMAND_FIELDS = (
    ("op", OP_BITS),
    ("dim", DIM_BITS),                     # D: elements per row (channels C for max-pool / upsample)
    ("rows", ROWS_BITS),                   # input rows (max-pool: a multiple of 4)
    ("eps_term", intvec.LN_EPS_BITS),
    ("ln_shift", 5),
    ("a_mult", intvec.ADD_MULT_BITS),      # add: ma, rescale: m
    ("b_mult", intvec.ADD_MULT_BITS),
    ("add_shift", 5),
    ("rope_mult", MULT_BITS),
    ("rope_shift", SHIFT_BITS),
    ("rope_nx", ROPE_COORD_BITS),          # table rows of the first part (x), token t uses t mod nx
    ("rope_ny", ROPE_COORD_BITS),          # table rows of the second part (y), (t // nx) mod ny
    ("rope_jx", 8),                        # beats of a row using the x part (the rest use the y part)
)


def beats(dim: int, lanes: int) -> int:
    return -(-dim // lanes)


def check_lanes(lanes: int) -> int:
    if lanes not in LANES:
        raise ValueError(f"vector engine: {lanes} lanes, expected one of {LANES}")
    return lanes


def to_beats(rows: np.ndarray, lanes: int) -> np.ndarray:
    """int8 (R, D) -> int8 (R * ceil(D / L), L), unused lanes zero."""
    rows = np.asarray(rows, np.int8)
    r, d = rows.shape
    padded = np.zeros((r, beats(d, lanes) * lanes), np.int8)
    padded[:, :d] = rows
    return padded.reshape(-1, lanes)


def from_beats(b: np.ndarray, dim: int) -> np.ndarray:
    """int8 (R * ceil(D / L), L) -> (R, D)."""
    lanes = b.shape[1]
    return np.asarray(b, np.int8).reshape(-1, beats(dim, lanes) * lanes)[:, :dim]


def command(op: VecOp, dim: int, rows: int, **fields) -> dict:
    """A command as a dict of COMMAND_FIELDS (missing ones 0), with its limits checked."""
    if not 1 <= dim <= MAX_DIM:
        raise ValueError(f"vector engine: rows of {dim} outside 1..{MAX_DIM}")
    if not 1 <= rows < 1 << ROWS_BITS or rows % GROUP_ROWS.get(op, 1):
        raise ValueError(f"vector engine: {rows} rows for {op.name}")
    cmd = {name: 0 for name, _ in COMMAND_FIELDS} | {"op": int(op), "dim": dim, "rows": rows}
    for k, v in fields.items():
        width = dict(COMMAND_FIELDS)[k]
        if not 0 <= int(v) < 1 << width:
            raise ValueError(f"vector engine: {k}={v} outside {width} bits")
        cmd[k] = int(v)
    return cmd


def layernorm_command(p: intvec.LayerNormParams, rows: int) -> tuple[dict, list]:
    writes = [(ParamTarget.GAIN, e, int(g) & 0xFFFF) for e, g in enumerate(p.gain)]
    writes += [(ParamTarget.BIAS, e, int(b) & 0xFFFFFFFF) for e, b in enumerate(p.bias)]
    return command(VecOp.LAYERNORM, p.dim, rows, eps_term=p.eps_term, ln_shift=p.shift), writes


def lut_command(p: intvec.LutParams, dim: int, rows: int) -> tuple[dict, list]:
    return command(VecOp.LUT, dim, rows), [(ParamTarget.LUT, i, int(v) & 0xFF) for i, v in enumerate(p.table)]


def add_command(p: intvec.AddParams, dim: int, rows: int) -> tuple[dict, list]:
    return command(VecOp.ADD, dim, rows, a_mult=p.a_mult, b_mult=p.b_mult, add_shift=p.shift), []


def rescale_command(p: intvec.RescaleParams, dim: int, rows: int) -> tuple[dict, list]:
    return command(VecOp.RESCALE, dim, rows, a_mult=p.multiplier, add_shift=p.shift), []


def rope_command(p: intvec.RopeParams, rows: int, lanes: int, end_x: int | None = None) -> tuple[dict, list]:
    """RoPE over rows of D = 2 * p.cos.shape[1]. With end_x, the tables are stored axially
    (intvec.rope_axial_tables: (end_x + L_pos / end_x) x D/4 pairs); without, whole (L_pos x D/2)."""
    positions, half = p.cos.shape
    pb = lanes // 2                                   # pairs per beat
    if end_x is None:
        parts = [(p.cos, p.sin)]
        nx, ny = positions, 1
    else:
        cx, sx, cy, sy = intvec.rope_axial_tables(p, end_x)
        if (half // 2) % pb:
            raise ValueError(f"rope: axial tables need D/4 = {half // 2} to be a multiple of {pb} pairs")
        parts = [(cx, sx), (cy, sy)]
        nx, ny = end_x, positions // end_x
    jx = beats(parts[0][0].shape[1], pb)
    writes, slot = [], 0
    for c, s in parts:                                 # each part: rows of whole beats, back to back
        width = beats(c.shape[1], pb) * pb
        for r in range(c.shape[0]):
            for i in range(c.shape[1]):
                writes.append((ParamTarget.ROPE, slot + r * width + i,
                               (int(c[r, i]) & 0xFFFF) | (int(s[r, i]) & 0xFFFF) << 16))
        slot += c.shape[0] * width
    if slot > ROPE_DEPTH:
        raise ValueError(f"rope: tables of {slot} pair slots exceed the engine's {ROPE_DEPTH}")
    if not (nx < 1 << ROPE_COORD_BITS and ny < 1 << ROPE_COORD_BITS):
        raise ValueError(f"rope: {nx} x {ny} table rows exceed {ROPE_COORD_BITS} bits")
    return command(VecOp.ROPE, 2 * half, rows, rope_mult=p.multiplier, rope_shift=p.shift,
                   rope_nx=nx, rope_ny=ny, rope_jx=jx), writes


def maxpool_rows(x: np.ndarray) -> np.ndarray:
    """int8 (H, W, C) -> the max-pool input order: per output pixel (y, x) the rows
    (2y, 2x), (2y, 2x + 1), (2y + 1, 2x), (2y + 1, 2x + 1), i.e. (H//2 * W//2 * 4, C) (floor sizes)."""
    h, w, c = x.shape
    v = x[: h - h % 2, : w - w % 2].reshape(h // 2, 2, w // 2, 2, c)
    return np.ascontiguousarray(v.transpose(0, 2, 1, 3, 4)).reshape(-1, c)


def upsample_image(rows: np.ndarray, h: int, w: int) -> np.ndarray:
    """The upsample output order (each input pixel's 2x2 block, rows (2y, 2x), (2y, 2x + 1),
    (2y + 1, 2x), (2y + 1, 2x + 1)) -> the (2H, 2W, C) image."""
    c = rows.shape[-1]
    return np.ascontiguousarray(rows.reshape(h, w, 2, 2, c).transpose(0, 2, 1, 3, 4)).reshape(2 * h, 2 * w, c)
