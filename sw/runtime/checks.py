"""Host-side checks of a descriptor list before it is submitted: every DDR access lies inside one
buffer of the program's buffer table, every scratchpad access inside its scratchpad.

The checks run on whole columns (NumPy over all descriptors of an opcode at once: a 78k-descriptor
program checks in milliseconds). Each check is a mask of the descriptors that fail it and a message
for one of them; the error names the first failing descriptor and, within it, the first check in
the order the checks are written (as a descriptor-by-descriptor loop would find it).

A check function `check(cfg, d, fail, in_buffer)` (each opcode's and LOAD target's Command.check in
the engine registry, sw/engines.py) gets `d`: field ->
int64 array over its descriptors; `fail(bad, why)`: `bad` a bool mask over them, `why(j)` the message
for entry j; `in_buffer(addr, size, what)`: arrays of accesses that must lie in one buffer (`what` a
string or a function of j). Per-tile checks pass `at=` (the descriptor of each mask entry) and
`tile=` (its tile: within a descriptor, tile t's checks come after all its plain ones and before
tile t + 1's).
"""
from __future__ import annotations

import numpy as np

from hw import isa
from hw.limits import im2col_row_beats

PAGE = 4096          # AXI bursts may not cross one


class DescriptorError(ValueError):
    """A descriptor would read or write outside its buffers or scratchpads; the message says which and why."""


def descriptor_columns(descriptors) -> dict[str, np.ndarray]:
    """Field -> int64 array: from packed descriptors (uint8, 32 bytes each, as written to DDR) or a list
    of field dicts (a field not given is 0)."""
    if isinstance(descriptors, np.ndarray):       # (read here and dropped: decoded in place, not digested)
        from sw.backends.cycles import fields_of
        return fields_of(descriptors)
    n = len(descriptors)
    cols = {name: np.zeros(n, np.int64) for name in isa.FIELDS}
    for j, d in enumerate(descriptors):
        for name, value in d.items():
            if name in cols:
                cols[name][j] = value
    return cols


class _FirstFailure:
    """The failure a descriptor-by-descriptor loop would raise first: key (descriptor, plain/tile, tile, check)."""

    def __init__(self):
        self.key, self.why, self.seq = None, None, 0

    def add(self, bad, why, index, tile=None):
        self.seq += 1
        hits = np.flatnonzero(bad)
        if not hits.size:
            return
        j = int(hits[0])         # entries are in (descriptor, tile) order: the first hit is this check's first
        key = (int(index[j]), 0, 0, self.seq) if tile is None else (int(index[j]), 1, int(tile[j]), self.seq)
        if self.key is None or key < self.key:
            self.key, self.why = key, (why, j)


def _scope(cfg, buffers, found: _FirstFailure, index: np.ndarray):
    """fail and in_buffer for the descriptors `index` (global indices; their columns are the caller's d)."""
    DB = cfg.beat_bytes
    spans = np.array(list(buffers.values()), np.int64).reshape(-1, 2)

    def fail(bad, why, at=None, tile=None):
        found.add(np.asarray(bad, bool), why, index if at is None else index[at], tile)

    def in_buffer(addr, size, what, at=None, tile=None):
        label = what if callable(what) else (lambda j: what)
        fail(addr % DB != 0, lambda j: f"{label(j)} address {addr[j]:#x} is not aligned to the {DB}-byte AXI beat",
             at, tile)
        inside = ((spans[:, :1] <= addr) & (addr + size <= spans[:, :1] + spans[:, 1:])).any(axis=0)

        def outside(j):
            a, span = int(addr[j]), f"{label(j)} [{int(addr[j]):#x}, {int(addr[j] + size[j]):#x})"
            for name, (lo, n) in buffers.items():
                if lo <= a < lo + n:
                    return f"{span} runs outside the buffer {name!r} [{lo:#x}, {lo + n:#x})"
            table = ", ".join(f"{name} [{lo:#x}, {lo + n:#x})" for name, (lo, n) in buffers.items())
            return f"{span} outside the buffers ({table})"
        fail(~inside, outside, at, tile)

    return fail, in_buffer


class _Rows(dict):
    """The columns of `cols` at rows `idx`, each taken when first read."""

    def __init__(self, cols, idx):
        super().__init__()
        self.cols, self.idx = cols, idx

    def __missing__(self, name):
        value = self[name] = self.cols[name][self.idx]
        return value


def _subset(d, fail, in_buffer, mask):
    """The columns, fail and in_buffer of the entries of `d` that `mask` selects."""
    idx = np.flatnonzero(mask)

    def sub_fail(bad, why, at=None, tile=None):
        fail(bad, why, idx if at is None else idx[at], tile)

    def sub_in_buffer(addr, size, what, at=None, tile=None):
        in_buffer(addr, size, what, idx if at is None else idx[at], tile)

    return _Rows(d, idx), sub_fail, sub_in_buffer


def check_descriptors(cfg, descriptors, buffers: dict[str, tuple[int, int]]) -> None:
    """`descriptors`: packed (uint8, n x 32 bytes) or numeric field dicts (bound addresses); `buffers`:
    name -> (DDR address, bytes) of every buffer the program may touch (sw.runtime.session binds them).
    Each opcode's own checks are its engine's (sw.engines: one per hw.isa.ENGINES opcode and LOAD target)."""
    from sw.engines import commands
    f = descriptor_columns(descriptors)
    op = f["opcode"]
    n = len(op)
    if not n:
        return
    found = _FirstFailure()
    fail, in_buffer = _scope(cfg, buffers, found, np.arange(n))
    names = {v: k for k, v in isa.OPCODES.items()}
    known = [o for o in isa.IMPLEMENTED_OPCODES if isa.has_opcode(cfg, o)]
    units = list(dict.fromkeys(u for u in isa.OPCODE_COUNTER.values() if u))
    code = np.where((op >= 0) & (op < 256), op, 255)            # (field dicts may hold anything)
    lut = np.full(256, -2)                                      # opcode -> its counter (-1: none; -2: invalid)
    for o in known:
        lut[isa.OPCODES[o]] = units.index(isa.OPCODE_COUNTER[o]) if isa.OPCODE_COUNTER[o] else -1
    counter = np.where(code == op, lut[code], -2)
    valid = counter > -2
    fail(~valid, lambda j: f"opcode {op[j]} is not one of {known} (overlay {cfg.name!r})")
    # Waits: each must be met by the descriptors before it that complete into its counter.
    for u, unit in enumerate(units):
        mine = counter == u
        before = np.cumsum(mine) - mine
        need = f[f"wait_{unit.lower()}"]
        fail(need > before, lambda j, unit=unit, need=need, before=before:
             f"waits for {need[j]} {unit}s but only {before[j]} come before it (would hang)")
    for name in known:
        sel = valid & (op == isa.OPCODES[name])
        if sel.any():
            commands()[name].check(cfg, *_subset(f, fail, in_buffer, sel))
    if found.key is not None:
        i = found.key[0]
        why, j = found.why
        raise DescriptorError(f"descriptor {i} ({names.get(int(op[i]), int(op[i]))}): {why(j)}")


def _check_load(cfg, d, fail, in_buffer) -> None:
    from sw.engines import commands
    t = d["target"]
    fail(~np.isin(t, list(isa.TARGETS.values())), lambda j: f"unknown LOAD target {t[j]}")
    for target, code in isa.TARGETS.items():
        sel = t == code
        if not sel.any():
            continue
        if not isa.has_target(cfg, target):
            title = isa.ENGINE_TITLES[isa.TARGET_ENGINE[target]]
            fail(sel, lambda j, target=target, title=title: f"LOAD target {target}, but the overlay has no {title} "
                 "engine")
            continue
        tr = sel & (d["transpose"] != 0)
        if target not in isa.TRANSPOSE_TARGETS or "load_t" not in cfg.engines:
            why = (f"the overlay has no {isa.ENGINE_TITLES['load_t']}" if target in isa.TRANSPOSE_TARGETS else
                   f"only {', '.join(isa.TRANSPOSE_TARGETS)} load transposed")
            fail(tr, lambda j, target=target, why=why: f"transposing LOAD into {target}: {why}")
        commands()[target].check(cfg, *_subset(d, fail, in_buffer, sel))


def _check_entries(cfg, d, fail, in_buffer) -> None:
    """LOAD of whole entries into a scratchpad (descriptors of one target)."""
    DB = cfg.beat_bytes
    target = next(k for k, v in isa.TARGETS.items() if v == d["target"][0])
    n, sp = d["count"], d["sp_addr"]
    depth = isa.scratchpad_depth(cfg, target)
    fail((n < 1) | (sp + n > depth),
         lambda j: f"entries [{sp[j]}, {sp[j] + n[j]}) outside the {target} scratchpad (depth {depth})")
    eb = isa.entry_bytes(cfg, target)
    tr = d["transpose"] != 0
    size = n * eb if eb >= DB else -(-n * eb // DB) * DB
    if (~tr).any():
        at = np.flatnonzero(~tr)
        in_buffer(d["dram_addr"][at], size[at], "source", at=at)
    if tr.any():
        _check_transposed(cfg, d, fail, in_buffer, tr, eb)


def _check_transposed(cfg, d, fail, in_buffer, tr, eb) -> None:
    """A transposing LOAD (`transpose`): its rows fit an entry, its rows start on beats, all of them in the buffer."""
    DB = cfg.beat_bytes
    rows, stride, n = d["t_rows_last"] + 1, d["stride"], d["count"]
    at = np.flatnonzero(tr)
    rows, stride, n = rows[at], stride[at], n[at]
    fail(rows > eb, lambda j: f"transposing LOAD of {rows[j]} rows, an entry holds {eb} bytes", at=at)
    fail(stride % DB != 0, lambda j: f"transposing LOAD: row pitch {stride[j]} is not a whole number of "
         f"{DB}-byte AXI beats", at=at)
    in_buffer(d["dram_addr"][at], (rows - 1) * stride + -(-n // DB) * DB, "source rows", at=at)


def _check_compute(cfg, d, fail, in_buffer) -> None:
    k, tiles, sp, b, acc = d["k_last"] + 1, np.maximum(1, d["count"]), d["sp_addr"], d["b_base"], d["acc_base"]
    fail(tiles > isa.MAX_TILES, lambda j: f"{tiles[j]} tiles, at most {isa.MAX_TILES}")
    fail((sp + k > cfg.a_depth) | (b + tiles * k > cfg.b_depth),
         lambda j: f"K={k[j]} entries from A {sp[j]} / B {b[j]} ({tiles[j]} tiles) run past the scratchpads")
    fail(acc + tiles * cfg.rows > cfg.acc_depth,
         lambda j: f"accumulator rows [{acc[j]}, {acc[j] + tiles[j] * cfg.rows}) past depth {cfg.acc_depth}")


def _check_store(cfg, d, fail, in_buffer) -> None:
    R, C, DB = cfg.rows, cfg.cols, cfg.beat_bytes
    rows, tiles, cols, stride, tile_stride = d["count"], d["tiles_last"] + 1, d["cols"], d["stride"], d["tile_stride"]
    fail((rows < 1) | (rows > R), lambda j: f"{rows[j]} rows, must be 1..{R}")
    fail((d["sp_addr"] + (tiles - 1) * R + rows > cfg.acc_depth) | (d["param_addr"] >= cfg.param_depth),
         lambda j: "accumulator rows or parameter entry outside their scratchpads")
    fail((d["param_rows"] != 0) & (rows > C),
         lambda j: f"per-row parameters for {rows[j]} rows, but an entry holds {C} channels")
    fail(cols > C, lambda j: f"{cols[j]} columns, the array has {C}")
    lut = d["lut"] != 0
    fail(lut & ("store_lut" not in cfg.engines),
         lambda j: f"STORE through the table (lut), but overlay {cfg.name!r} has no store_lut engine")
    fail(lut & (d["out_int32"] != 0), lambda j: "STORE through the table (lut) of int32 results (int8 only)")
    add = d["add"] != 0
    fail(add & ("store_add" not in cfg.engines),
         lambda j: f"STORE with the residual add (add), but overlay {cfg.name!r} has no store_add engine")
    fail(add & ((d["out_int32"] != 0) | (d["param_rows"] != 0)),
         lambda j: "STORE with the residual add (add) of int32 results or per-row parameters (int8, per channel only)")
    row_bytes = C * np.where(d["out_int32"] != 0, 4, 1)
    fail((stride % DB != 0) | (tile_stride % DB != 0),
         lambda j: f"row stride {stride[j]} or tile stride {tile_stride[j]} not a multiple of the {DB}-byte beat")
    # Per tile (descriptor e, tile t), then per row r of it. A descriptor whose rows or tiles are out of
    # range failed above; the clips only bound the arrays.
    n_t = np.clip(tiles, 1, cfg.acc_depth // R + 1)
    e = np.repeat(np.arange(len(rows)), n_t)
    t = np.arange(len(e)) - np.repeat(np.cumsum(n_t) - n_t, n_t)
    first = d["dram_addr"][e] + t * tile_stride[e]
    in_buffer(first, (rows[e] - 1) * stride[e] + row_bytes[e], lambda j: f"tile {t[j]}'s destination", e, t)
    # (tile, row): where each row starts in its page. PAGE a power of 2: x & (PAGE - 1) is x % PAGE (negative x
    # too), so each term is taken mod PAGE first and the sum (< R x PAGE) fits int32
    r = np.arange(R, dtype=np.int32)
    in_page = np.int64(PAGE - 1)
    offset = ((first & in_page).astype(np.int32)[:, None] + r * (stride & in_page).astype(np.int32)[e][:, None]) \
        & np.int32(PAGE - 1)
    crosses = (offset > (PAGE - row_bytes).astype(np.int32)[e][:, None]) & \
        (r < np.clip(rows, 0, R).astype(np.int32)[e][:, None])
    fail(crosses.any(axis=1), lambda j: f"tile {t[j]} row {np.argmax(crosses[j])} crosses a 4 KiB boundary "
         "(AXI bursts may not)", e, t)


def _check_im2col(cfg, d, fail, in_buffer) -> None:
    """LOAD IM2COL: entries inside B, every row span inside the buffer."""
    DB = cfg.beat_bytes
    k, n, t, s, off = d["kernel_last"] + 1, d["count"], d["out_rows_last"] + 1, d["stride_log2"], d["col_offset"]
    fail((k > 7) | (s > 2) | (off >= DB),
         lambda j: f"kernel {k[j]}, stride 2^{s[j]} or column offset {off[j]} out of range")
    entries, sp = t * n * k * k, d["sp_addr"]
    fail((n < 1) | (sp + entries > cfg.b_depth),
         lambda j: f"{entries[j]} entries from {sp[j]} outside the B scratchpad (depth {cfg.b_depth})")
    pitch = d["stride"]
    fail(pitch % DB != 0, lambda j: f"row pitch {pitch[j]} not a multiple of the {DB}-byte beat")
    nb = im2col_row_beats(cfg, k, np.left_shift(1, s), off)
    last = d["dram_addr"] + (n - 1) * d["plane_rows"] * pitch + (np.left_shift(t - 1, s) + k - 1) * pitch
    in_buffer(d["dram_addr"], nb * DB, "first row span")
    in_buffer(last, nb * DB, "last row span")


def _check_depthwise(cfg, d, fail, in_buffer) -> None:
    """DEPTHWISE: geometry the line buffers hold, every row it reads and writes inside the buffer."""
    DB = cfg.beat_bytes
    k, chans, rows, width = d["dw_kernel_last"] + 1, d["dw_channels"], d["count"], d["dw_width"]
    pitch, plane, col0 = d["stride"], d["dw_plane_rows"] * d["stride"], d["dw_col0"]
    fail((chans < 1) | (chans > cfg.dw_channels),
         lambda j: f"{chans[j]} channels, the engine holds coefficients of 1..{cfg.dw_channels}")
    fail((rows < 1) | (width < 1), lambda j: f"{rows[j]} rows of {width[j]} pixels")
    fail((pitch % DB != 0) | (pitch <= 0) | (pitch > cfg.dw_row_bytes),
         lambda j: f"row pitch {pitch[j]} not a multiple of the {DB}-byte beat within the {cfg.dw_row_bytes}-byte "
         "line buffer")
    fail(col0 + width + k - 1 > pitch, lambda j: f"columns {col0[j]} + {width[j]} + {k[j] - 1} run past the "
         f"{pitch[j]}-byte row")
    in_buffer(d["dram_addr"], (chans - 1) * plane + (rows + k - 1) * pitch, "input rows")
    in_buffer(d["dw_out_addr"], (chans - 1) * plane + (rows - 1) * pitch + -(-width // DB) * DB, "output rows")


def _check_attention(cfg, d, fail, in_buffer) -> None:
    R, C = cfg.rows, cfg.cols
    mode, slot, n, sp = d["target"], d["slot"], d["count"], d["sp_addr"]
    fail(slot >= cfg.attn_q_slots, lambda j: f"query slot {slot[j]} beyond the engine's {cfg.attn_q_slots}")
    step, norm = mode == isa.ATTN_MODES["STEP"], mode == isa.ATTN_MODES["NORM"]
    dp, v, shift = (d["k_last"] + 1) * C, d["b_base"], d["stride"]
    v_depth = isa.scratchpad_depth(cfg, "V")
    fail(step & ((n < 1) | (n > C)), lambda j: f"{n[j]} keys in a tile, must be 1..{C}")
    fail(step & (dp > cfg.attn_max_dim), lambda j: f"head dim {dp[j]} beyond the engine's {cfg.attn_max_dim}")
    fail(step & (sp + R > cfg.acc_depth),
         lambda j: f"score rows [{sp[j]}, {sp[j] + R}) past the accumulator depth {cfg.acc_depth}")
    fail(step & (v + dp > v_depth), lambda j: f"V entries [{v[j]}, {v[j] + dp[j]}) outside the V scratchpad")
    fail(step & ((shift < 1) | (shift > 63)), lambda j: f"score shift {shift[j]} outside 1..63")
    acc = d["acc_base"]
    fail(norm & ((n < 1) | ((sp + n) * C > cfg.attn_max_dim)),
         lambda j: f"chunks [{sp[j]}, {sp[j] + n[j]}) outside the engine's {cfg.attn_max_dim // C}")
    fail(norm & (acc + n * R > cfg.acc_depth),
         lambda j: f"output rows [{acc[j]}, {acc[j] + n[j] * R}) past the accumulator depth {cfg.acc_depth}")
    fail(~step & ~norm, lambda j: f"unknown attention mode {mode[j]}")


def _check_vector(cfg, d, fail, in_buffer) -> None:
    """VECTOR: a known op, row geometry within the engine's limits, every row read and written inside a
    buffer (hw.isa.vector_rows: the geometry hw.isa.vector_geometry gives one descriptor)."""
    from hw.vector import params as VP
    DB = cfg.beat_bytes
    op, dim, rows, width, aux = d["target"], d["vec_dim"], d["vec_rows"], d["vec_width"], d["vec_aux"]
    codes = isa.VEC_OPS
    known = np.isin(op, list(codes.values()))
    fail(~known, lambda j: f"unknown vector op {op[j]} (ops: {codes})")
    fail((dim < 1) | (dim > VP.MAX_DIM) | (rows < 1),
         lambda j: f"{rows[j]} rows of {dim[j]} elements (1..{VP.MAX_DIM} each)")
    pitch, row_bytes = d["vec_pitch"] * DB, VP.beats(dim, DB) * DB
    fail(pitch < row_bytes, lambda j: f"row pitch {pitch[j]} bytes shorter than a row's {row_bytes[j]}")
    rope, pool, up, add = (op == codes[k] for k in ("ROPE", "MAXPOOL", "UPSAMPLE", "ADD"))
    fail(rope & ((dim % 2 != 0) | (aux < 1) | (aux > VP.ROPE_DEPTH)),
         lambda j: f"RoPE over {dim[j]} elements (must be even: pairs) with {aux[j]} table slots "
                   f"(1..{VP.ROPE_DEPTH})")
    fail((pool & ((width < 2) | (rows < 2))) | (up & (width < 1)),
         lambda j: f"{'MAXPOOL' if pool[j] else 'UPSAMPLE'} over a {rows[j]}x{width[j]} map")
    n_in, n_out = isa.vector_rows(op, rows, width)
    ok = known & (dim >= 1) & (rows >= 1) & (pitch >= row_bytes)
    at = np.flatnonzero(ok)
    in_buffer(d["dram_addr"][at], (n_in[at] - 1) * pitch[at] + row_bytes[at], "input rows", at=at)
    at = np.flatnonzero(ok & (n_out > 0))
    in_buffer(d["vec_out_addr"][at], (n_out[at] - 1) * pitch[at] + row_bytes[at], "output rows", at=at)
    fail(add & (aux < 1), lambda j: "ADD with b of 0 rows")
    at = np.flatnonzero(ok & add & (aux >= 1))
    in_buffer(d["vec_b_addr"][at], (aux[at] - 1) * pitch[at] + row_bytes[at], "b rows", at=at)
