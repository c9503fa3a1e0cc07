"""Host-side checks of a descriptor list before it is submitted: every DDR access lies inside one
buffer of the program's buffer table, every scratchpad access inside its scratchpad."""
from __future__ import annotations

from hw import isa
from hw.limits import im2col_row_beats

class DescriptorError(ValueError):
    """A descriptor would read or write outside its buffers or scratchpads; the message says which and why."""


def check_descriptors(cfg, descriptors: list[dict], buffers: dict[str, tuple[int, int]]) -> None:
    """`descriptors`: numeric fields (bound addresses); `buffers`: name -> (DDR address, bytes) of
    every buffer the program may touch (sw.runtime.session binds them). Each opcode's own checks
    are its engine's (sw.engines: one per hw.isa.ENGINES opcode and LOAD target)."""
    from sw.engines import commands
    DB = cfg.beat_bytes
    counts = {unit: 0 for unit in dict.fromkeys(u for u in isa.OPCODE_COUNTER.values() if u)}
    names = {v: k for k, v in isa.OPCODES.items()}

    for i, d in enumerate(descriptors):
        op = names.get(d.get("opcode"))

        def fail(why, i=i, d=d):
            raise DescriptorError(f"descriptor {i} ({names.get(d.get('opcode'), d.get('opcode'))}): {why}")

        def in_buffer(addr, size, what):
            if addr % DB:
                fail(f"{what} address {addr:#x} is not aligned to the {DB}-byte AXI beat")
            for name, (lo, n) in buffers.items():
                if lo <= addr and addr + size <= lo + n:
                    return
            span = f"{what} [{addr:#x}, {addr + size:#x})"
            for name, (lo, n) in buffers.items():
                if lo <= addr < lo + n:
                    fail(f"{span} runs outside the buffer {name!r} [{lo:#x}, {lo + n:#x})")
            table = ", ".join(f"{name} [{lo:#x}, {lo + n:#x})" for name, (lo, n) in buffers.items())
            fail(f"{span} outside the buffers ({table})")

        if op is None or not isa.has_opcode(cfg, op):
            known = [o for o in isa.IMPLEMENTED_OPCODES if isa.has_opcode(cfg, o)]
            fail(f"opcode {d.get('opcode')} is not one of {known} (overlay {cfg.name!r})")
        for unit in counts:
            need = d.get(f"wait_{unit.lower()}", 0)
            if need > counts[unit]:
                fail(f"waits for {need} {unit}s but only {counts[unit]} come before it (would hang)")
        commands()[op].check(cfg, d, fail, in_buffer)
        if isa.OPCODE_COUNTER[op]:
            counts[isa.OPCODE_COUNTER[op]] += 1


def _check_load(cfg, d, fail, in_buffer) -> None:
    targets = {v: k for k, v in isa.TARGETS.items()}
    target = targets.get(d.get("target"))
    if target is None:
        fail(f"unknown LOAD target {d.get('target')}")
    if not isa.has_target(cfg, target):
        fail(f"LOAD target {target}, but the overlay has no {isa.ENGINE_TITLES[isa.TARGET_ENGINE[target]]} engine")
    from sw.engines import commands
    commands()[target].check(cfg, d, fail, in_buffer)


def _check_entries(cfg, d, fail, in_buffer) -> None:
    """LOAD of whole entries into a scratchpad."""
    DB = cfg.beat_bytes
    target = next(k for k, v in isa.TARGETS.items() if v == d["target"])
    n, sp = d["count"], d["sp_addr"]
    depth = isa.scratchpad_depth(cfg, target)
    if n < 1 or sp + n > depth:
        fail(f"entries [{sp}, {sp + n}) outside the {target} scratchpad (depth {depth})")
    eb = isa.entry_bytes(cfg, target)
    size = n * eb if eb >= DB else -(-n * eb // DB) * DB
    in_buffer(d["dram_addr"], size, "source")


def _check_compute(cfg, d, fail, in_buffer) -> None:
    k, tiles = d["k_last"] + 1, max(1, d.get("count", 0))
    if tiles > isa.MAX_TILES:
        fail(f"{tiles} tiles, at most {isa.MAX_TILES}")
    if d["sp_addr"] + k > cfg.a_depth or d["b_base"] + tiles * k > cfg.b_depth:
        fail(f"K={k} entries from A {d['sp_addr']} / B {d['b_base']} ({tiles} tiles) run past the scratchpads")
    if d["acc_base"] + tiles * cfg.rows > cfg.acc_depth:
        fail(f"accumulator rows [{d['acc_base']}, {d['acc_base'] + tiles * cfg.rows}) past depth {cfg.acc_depth}")


def _check_store(cfg, d, fail, in_buffer) -> None:
    R, C, DB = cfg.rows, cfg.cols, cfg.beat_bytes
    rows, tiles = d["count"], d.get("tiles_last", 0) + 1
    if not 1 <= rows <= R:
        fail(f"{rows} rows, must be 1..{R}")
    if d["sp_addr"] + (tiles - 1) * R + rows > cfg.acc_depth or d["param_addr"] >= cfg.param_depth:
        fail("accumulator rows or parameter entry outside their scratchpads")
    if d.get("param_rows") and rows > C:
        fail(f"per-row parameters for {rows} rows, but an entry holds {C} channels")
    if d.get("cols", 0) > C:
        fail(f"{d['cols']} columns, the array has {C}")
    row_bytes = C * (4 if d.get("out_int32") else 1)
    if d["stride"] % DB or d.get("tile_stride", 0) % DB:
        fail(f"row stride {d['stride']} or tile stride {d.get('tile_stride', 0)} not a multiple of the "
             f"{DB}-byte beat")
    for t in range(tiles):
        first = d["dram_addr"] + t * d.get("tile_stride", 0)
        in_buffer(first, (rows - 1) * d["stride"] + row_bytes, f"tile {t}'s destination")
        for r in range(rows):
            start = first + r * d["stride"]
            if start // 4096 != (start + row_bytes - 1) // 4096:
                fail(f"tile {t} row {r} crosses a 4 KiB boundary (AXI bursts may not)")


def _check_im2col(cfg, d, fail, in_buffer) -> None:
    """LOAD IM2COL: entries inside B, every row span inside the buffer."""
    DB = cfg.beat_bytes
    k, n, t = d["kernel_last"] + 1, d["count"], d.get("out_rows_last", 0) + 1
    if k > 7 or d["stride_log2"] > 2 or d["col_offset"] >= DB:
        fail(f"kernel {k}, stride 2^{d['stride_log2']} or column offset {d['col_offset']} out of range")
    if n < 1 or d["sp_addr"] + t * n * k * k > cfg.b_depth:
        fail(f"{t * n * k * k} entries from {d['sp_addr']} outside the B scratchpad (depth {cfg.b_depth})")
    if d["stride"] % DB:
        fail(f"row pitch {d['stride']} not a multiple of the {DB}-byte beat")
    nb = im2col_row_beats(cfg, k, 1 << d["stride_log2"], d["col_offset"])
    last = d["dram_addr"] + (n - 1) * d["plane_rows"] * d["stride"] + ((t - 1 << d["stride_log2"]) + k - 1) * d["stride"]
    in_buffer(d["dram_addr"], nb * DB, "first row span")
    in_buffer(last, nb * DB, "last row span")


def _check_depthwise(cfg, d, fail, in_buffer) -> None:
    """DEPTHWISE: geometry the line buffers hold, every row it reads and writes inside the buffer."""
    DB = cfg.beat_bytes
    k, chans, rows, width = d["dw_kernel_last"] + 1, d["dw_channels"], d["count"], d["dw_width"]
    pitch, plane = d["stride"], d["dw_plane_rows"] * d["stride"]
    if not 1 <= chans <= cfg.dw_channels:
        fail(f"{chans} channels, the engine holds coefficients of 1..{cfg.dw_channels}")
    if rows < 1 or width < 1:
        fail(f"{rows} rows of {width} pixels")
    if pitch % DB or not 0 < pitch <= cfg.dw_row_bytes:
        fail(f"row pitch {pitch} not a multiple of the {DB}-byte beat within the {cfg.dw_row_bytes}-byte line buffer")
    if d["dw_col0"] + width + k - 1 > pitch:
        fail(f"columns {d['dw_col0']} + {width} + {k - 1} run past the {pitch}-byte row")
    in_buffer(d["dram_addr"], (chans - 1) * plane + (rows + k - 1) * pitch, "input rows")
    in_buffer(d["dw_out_addr"], (chans - 1) * plane + (rows - 1) * pitch + -(-width // DB) * DB, "output rows")


def _check_attention(cfg, d, fail, in_buffer) -> None:
    R, C = cfg.rows, cfg.cols
    mode = d.get("target", 0)
    if d.get("slot", 0) >= cfg.attn_q_slots:
        fail(f"query slot {d.get('slot', 0)} beyond the engine's {cfg.attn_q_slots}")
    if mode == isa.ATTN_MODES["STEP"]:
        dp = (d["k_last"] + 1) * C
        if not 1 <= d["count"] <= C:
            fail(f"{d['count']} keys in a tile, must be 1..{C}")
        if dp > cfg.attn_max_dim:
            fail(f"head dim {dp} beyond the engine's {cfg.attn_max_dim}")
        if d["sp_addr"] + R > cfg.acc_depth:
            fail(f"score rows [{d['sp_addr']}, {d['sp_addr'] + R}) past the accumulator depth {cfg.acc_depth}")
        if d["b_base"] + dp > isa.scratchpad_depth(cfg, "V"):
            fail(f"V entries [{d['b_base']}, {d['b_base'] + dp}) outside the V scratchpad")
        if not 1 <= d.get("stride", 0) <= 63:
            fail(f"score shift {d.get('stride', 0)} outside 1..63")
    elif mode == isa.ATTN_MODES["NORM"]:
        n, c0 = d["count"], d["sp_addr"]
        if n < 1 or (c0 + n) * C > cfg.attn_max_dim:
            fail(f"chunks [{c0}, {c0 + n}) outside the engine's {cfg.attn_max_dim // C}")
        if d["acc_base"] + n * R > cfg.acc_depth:
            fail(f"output rows [{d['acc_base']}, {d['acc_base'] + n * R}) past the accumulator depth {cfg.acc_depth}")
    else:
        fail(f"unknown attention mode {mode}")


def _check_vector(cfg, d, fail, in_buffer) -> None:
    """VECTOR: a known op, row geometry within the engine's limits, every row read and written inside a buffer."""
    from hw.vector.params import MAX_DIM, ROPE_DEPTH
    op, n_in, n_out, pitch, row_bytes = isa.vector_geometry(cfg, d)
    dim = d["vec_dim"]
    if op not in isa.VEC_OPS:
        fail(f"unknown vector op {d['target']} (ops: {isa.VEC_OPS})")
    if not 1 <= dim <= MAX_DIM or d["vec_rows"] < 1:
        fail(f"{d['vec_rows']} rows of {dim} elements (1..{MAX_DIM} each)")
    if pitch < row_bytes:
        fail(f"row pitch {pitch} bytes shorter than a row's {row_bytes}")
    if op == "ROPE" and (dim % 2 or not 1 <= d["vec_aux"] <= ROPE_DEPTH):
        fail(f"RoPE over {dim} elements (must be even: pairs) with {d['vec_aux']} table slots (1..{ROPE_DEPTH})")
    if op in ("MAXPOOL", "UPSAMPLE") and d["vec_width"] < (2 if op == "MAXPOOL" else 1) or \
            op == "MAXPOOL" and d["vec_rows"] < 2:
        fail(f"{op} over a {d['vec_rows']}x{d['vec_width']} map")
    in_buffer(d["dram_addr"], (n_in - 1) * pitch + row_bytes, "input rows")
    if n_out:
        in_buffer(d["vec_out_addr"], (n_out - 1) * pitch + row_bytes, "output rows")
    if op == "ADD":
        if d["vec_aux"] < 1:
            fail("ADD with b of 0 rows")
        in_buffer(d["vec_b_addr"], (d["vec_aux"] - 1) * pitch + row_bytes, "b rows")
