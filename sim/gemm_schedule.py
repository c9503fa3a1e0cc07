"""Engine-level schedule of one GEMM: the scratchpad writes and commands a host (or bench) issues.

Used by the engine's Amaranth-simulator test and its cocotb bench. Tiles are
R x C outputs; K is cut into chunks of at most half a scratchpad (the two halves
double-buffer: chunk s uses half s % 2), and the accumulator and parameter
scratchpads double-buffer per tile (tile t uses region t % 2).

Ordering rules the issuer must keep (what the overlay's command processor enforces):
  load of step s        after compute of step s-2 is done (same half);
  params of tile t      after store of tile t-2 is done;
  compute of step s     after its loads; its tile's first step after store of tile t-2;
  store of tile t       after compute of its last step is done.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Step:
    tile: int
    a_entries: list[tuple[int, list[int]]]     # (address, R int8)
    b_entries: list[tuple[int, list[int]]]     # (address, C int8)
    compute: dict
    first: bool
    last: bool


@dataclass
class Tile:
    m0: int
    n0: int
    rows: int
    cols: int
    params: tuple[int, list[tuple[int, int, int]]]   # (address, C x (bias, multiplier, shift))
    store: dict


@dataclass
class Schedule:
    steps: list[Step] = field(default_factory=list)
    tiles: list[Tile] = field(default_factory=list)


def make_schedule(cfg, a, b, bias, multiplier, shift, *, relu=False, out_int32=False,
                  max_chunk: int | None = None) -> Schedule:
    R, C = cfg.rows, cfg.cols
    M, K = a.shape
    N = b.shape[1]
    half = min(cfg.a_depth, cfg.b_depth) // 2
    chunk = min(half, max_chunk or half)
    if 2 * R > cfg.acc_depth or cfg.param_depth < 2:
        raise ValueError("accumulator/param scratchpads too small to double-buffer")
    bias = np.broadcast_to(np.asarray(bias, np.int64), (N,))
    multiplier = np.broadcast_to(np.asarray(multiplier, np.int64), (N,))
    shift = np.broadcast_to(np.asarray(shift, np.int64), (N,))
    sched = Schedule()
    step_no = 0
    for t, (m0, n0) in enumerate((m0, n0) for m0 in range(0, M, R) for n0 in range(0, N, C)):
        rows, cols = min(R, M - m0), min(C, N - n0)
        region = t % 2
        ap = np.zeros((R, K), np.int64)
        ap[:rows] = a[m0:m0 + rows]
        bp = np.zeros((K, C), np.int64)
        bp[:, :cols] = b[:, n0:n0 + cols]
        params = [(int(bias[n0 + j]), int(multiplier[n0 + j]), int(shift[n0 + j])) if j < cols else (0, 0, 0)
                  for j in range(C)]
        sched.tiles.append(Tile(m0, n0, rows, cols, (region, params),
                                dict(acc_base=region * R, rows_last=rows - 1, param_addr=region,
                                     relu=int(relu), out_int32=int(out_int32))))
        for c0 in range(0, K, chunk):
            kc = min(chunk, K - c0)
            base = (step_no % 2) * half
            sched.steps.append(Step(
                t,
                [(base + k, ap[:, c0 + k].tolist()) for k in range(kc)],
                [(base + k, bp[c0 + k].tolist()) for k in range(kc)],
                dict(a_base=base, b_base=base, k_last=kc - 1, acc_base=region * R, accumulate=int(c0 > 0)),
                first=c0 == 0, last=c0 + kc >= K))
            step_no += 1
    return sched


def assemble(cfg, sched: Schedule, tile_rows: dict[int, list[list[int]]], M: int, N: int,
             out_int32: bool) -> np.ndarray:
    """Output rows collected per tile (C signed lanes each) -> the (M, N) result."""
    out = np.zeros((M, N), np.int64)
    for t, tile in enumerate(sched.tiles):
        rows = np.array(tile_rows[t], np.int64).reshape(tile.rows, cfg.cols)
        out[tile.m0:tile.m0 + tile.rows, tile.n0:tile.n0 + tile.cols] = rows[:, :tile.cols]
    return out.astype(np.int32 if out_int32 else np.int8)
