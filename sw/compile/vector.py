"""Compiler: one element-wise op of int8 SAM 2 (golden_model.intvec) -> DDR image + VECTOR descriptors.

    compile_vector(cfg, "layernorm", x, p)          x (R, D) int8, p an intvec.LayerNormParams
    compile_vector(cfg, "lut", x, p)                p an intvec.LutParams (GELU, sigmoid, ...)
    compile_vector(cfg, "add", a, p, b=b)           b (Rb, D) with R a multiple of Rb (Rb = 1: one vector for all)
    compile_vector(cfg, "rescale", x, p)            p an intvec.RescaleParams
                                                    (lut, add, rescale: rows wider than MAX_DIM run as narrower rows)
    compile_vector(cfg, "rope", x, p, end_x=None)   p an intvec.RopeParams (end_x: axial tables on chip)
    compile_vector(cfg, "maxpool", x)               x (H, W, C) channels last
    compile_vector(cfg, "upsample", x)              x (H, W, C) channels last
    compile_vector(cfg, "add", a, p, b=b, segments={"in": (64, 64, 16), "b": (64, 64, 16)})
                                                    row ops: an input held in several DDR ranges
                                                    (sw.runtime.layout.RowSegments: regions in.0, in.1, ...)
    compile_vector(cfg, "rescale", x, p, runs={"out": RowRuns.windows(8, 8, 14)})
                                                    row ops: a region's rows placed in runs
                                                    (sw.runtime.layout.RowRuns: a map inside its zero-padded
                                                    windows; the rows between never read or written)

DDR image (regions, sw.compile.linear.lay_out_image): descriptors; params: the sections of the engine's
parameter memory the op reads (hw.isa VEC_*), packed back to back; in, b, out: token rows
(sw.runtime.layout.TokenRowLayout, channels-last, rows of D rounded up to the array's C). The program
is one LOAD VEC per section, then VECTOR commands of at most 2^16 - 1 rows each (RoPE: whole table
periods; ADD: whole periods of b; max-pool: whole window rows). LOAD VEC and VECTOR run in order on
the load unit's slot, so no descriptor waits.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from golden_model import intvec
from hw import isa
from hw.vector import params as VP
from sw.compile.linear import ALIGN, CompileError, Program, gc_paused, lay_out_image, pack_descriptors
from sw.lru import Lru
from sw.runtime.layout import RowRuns, RowSegments, TokenRowLayout
from sw.runtime.program import Emitter, frozen

#: CLI / driver names -> (VECTOR op, parameter class or None)
OPS = {"layernorm": ("LAYERNORM", intvec.LayerNormParams), "lut": ("LUT", intvec.LutParams),
       "add": ("ADD", intvec.AddParams), "rescale": ("RESCALE", intvec.RescaleParams),
       "rope": ("ROPE", intvec.RopeParams), "maxpool": ("MAXPOOL", None), "upsample": ("UPSAMPLE", None)}
MAX_ROWS = (1 << isa.FIELDS["vec_rows"][1]) - 1
#: ops whose result does not depend on where rows break (each element on its own, or with b's same element)
ELEMENTWISE = ("LUT", "ADD", "RESCALE")


def row_dim(vop: str, dim: int) -> int:
    """The row width a VECTOR op runs rows of `dim` at: an element-wise op's rows wider than the engine's
    MAX_DIM (the MLPs' 4x-wide GELU) as the widest equal pieces that fit; any other op at `dim`."""
    if vop not in ELEMENTWISE or dim <= VP.MAX_DIM:
        return dim
    return dim // next(k for k in range(2, dim + 1) if dim % k == 0 and dim // k <= VP.MAX_DIM)


@dataclass
class VectorProgram(Program):
    out_layout: TokenRowLayout | None = None
    out_shape: tuple = ()

    ROLES = {"descriptors": "program", "params": "weight", "in": "input", "b": "input", "out": "output"}

    def unpack_out(self, raw: np.ndarray) -> np.ndarray:
        return self.out_layout.unpack(raw).reshape(self.out_shape)


def parameter_memory(cfg, op: str, p, dim: int, rows: int, end_x: int | None) -> dict[int, np.ndarray]:
    """The parameter memory's sections the op reads: memory offset -> bytes (hw.isa VEC_* layout)."""
    cmd, writes = {}, []
    if op == "LAYERNORM":
        cmd, writes = VP.layernorm_command(p, 1)
    elif op == "LUT":
        cmd, writes = VP.lut_command(p, dim, 1)
    elif op == "ADD":
        cmd, writes = VP.add_command(p, dim, 1)
    elif op == "RESCALE":
        cmd, writes = VP.rescale_command(p, dim, 1)
    elif op == "ROPE":
        cmd, writes = VP.rope_command(p, 1, cfg.vec_lanes, end_x)
    head = np.zeros(isa.VEC_HEADER_BYTES, np.uint8)
    for name, (off, dt) in isa.VEC_HEADER.items():
        head[off:off + np.dtype(dt).itemsize] = np.array([cmd.get(name, 0)], dt).view(np.uint8)
    sections = {0: head}
    if op == "LAYERNORM":
        sections[isa.VEC_GAIN] = p.gain.astype("<i2").view(np.uint8)
        sections[isa.VEC_BIAS] = p.bias.astype("<i4").view(np.uint8)
    elif op == "LUT":
        sections[isa.VEC_LUT] = p.table.view(np.uint8)
    elif op == "ROPE":
        slots = max(w[1] for w in writes) + 1
        pairs = np.zeros(slots, "<u4")
        for _, slot, data in writes:
            pairs[slot] = data
        sections[isa.VEC_ROPE] = pairs.view(np.uint8)
    return sections


def _chunks(total: int, unit: int) -> list[tuple[int, int]]:
    """(first, count) chunks of at most MAX_ROWS rows, each a multiple of `unit` but the last."""
    step = MAX_ROWS // unit * unit
    if step == 0:
        raise CompileError(f"a period of {unit} rows exceeds the {MAX_ROWS} rows of one VECTOR command")
    return [(r, min(step, total - r)) for r in range(0, total, step)]


@gc_paused
def compile_vector(cfg, op: str, x, p=None, *, b=None, end_x: int | None = None, base_addr: int = 0,
                   max_ddr_bytes: int = 1 << 30, segments: dict | None = None, runs: dict | None = None
                   ) -> VectorProgram:
    """`segments`: input region ("in", "b") -> rows per DDR range holding it (RowSegments), row ops only
    (not maxpool, upsample; rows not narrowed: D <= MAX_DIM); each range starts on a period of the op
    (RoPE's table, a repeated b). `runs`: region ("in", "b", "out") -> RowRuns placing its rows, row ops on
    whole rows, b not repeated: a VECTOR command per run."""
    if "vector" not in cfg.engines:
        raise CompileError(f"overlay {cfg.name!r} has no vector engine")
    if op not in OPS:
        raise CompileError(f"unknown vector op {op!r}; choose one of {', '.join(OPS)}")
    if base_addr % ALIGN:
        raise CompileError(f"DDR buffer address {base_addr:#x} is not {ALIGN}-byte aligned")
    vop, pclass = OPS[op]
    if pclass is not None and not isinstance(p, pclass):
        raise CompileError(f"{op} needs an intvec.{pclass.__name__}, got {type(p).__name__}")
    x = np.asarray(x)
    image_op = vop in ("MAXPOOL", "UPSAMPLE")
    if x.dtype != np.int8 or x.ndim != (3 if image_op else 2) or 0 in x.shape:
        raise CompileError(f"{op}: x must be int8 {'(H, W, C)' if image_op else '(rows, D)'}, got {x.dtype} {x.shape}")
    shape, dim = x.shape, row_dim(vop, x.shape[-1])
    if dim != x.shape[-1]:                 # element-wise rows too wide: run them as narrower rows
        x = x.reshape(-1, dim)
        if b is not None and np.asarray(b).shape[-1] == shape[-1]:
            b = np.asarray(b).reshape(-1, dim)
    if dim > VP.MAX_DIM:
        raise CompileError(f"{op}: rows of {dim} elements, the engine takes 1..{VP.MAX_DIM}")
    C, DB = cfg.cols, cfg.beat_bytes
    tokens = x.shape[0] * x.shape[1] if image_op else x.shape[0]
    in_l = TokenRowLayout(tokens, dim, C)
    if in_l.pitch // DB >= 1 << isa.FIELDS["vec_pitch"][1]:
        raise CompileError(f"{op}: a row pitch of {in_l.pitch} bytes does not fit the descriptor")
    width, b_rows, b_l = 0, 0, None
    if image_op:
        h, width = x.shape[:2]
        if width >= 1 << isa.FIELDS["vec_width"][1]:
            raise CompileError(f"{op}: {width} pixels per row, at most {(1 << isa.FIELDS['vec_width'][1]) - 1}")
        if vop == "MAXPOOL" and (h < 2 or width < 2):
            raise CompileError(f"maxpool: a {h}x{width} map has no 2x2 window")
        out_shape = (h // 2, width // 2, dim) if vop == "MAXPOOL" else (2 * h, 2 * width, dim)
        rows, unit = h, 2
    else:
        out_shape, rows, unit = x.shape, tokens, 1
    if vop == "ADD":
        b = np.asarray(b) if b is not None else None
        if b is None or b.dtype != np.int8 or b.ndim not in (1, 2) or b.shape[-1] != dim:
            raise CompileError(f"add: b must be int8 (rows, {dim}) or ({dim},)")
        b = b.reshape(-1, dim)
        b_rows = len(b)
        if rows % b_rows:
            raise CompileError(f"add: {rows} rows of a are not a multiple of b's {b_rows} rows")
        unit = b_rows if b_rows < rows else 1
        b_l = TokenRowLayout(b_rows, dim, C)
    elif vop == "ROPE":
        if dim % 2:
            raise CompileError(f"rope: {dim} channels, must be even (pairs)")
        unit = p.positions
        if rows % unit:
            raise CompileError(f"rope: {rows} tokens is not a multiple of the {unit}-position table")
    try:
        sections = parameter_memory(cfg, vop, p, dim, rows, end_x)
    except ValueError as e:
        raise CompileError(str(e) if str(e).startswith(op) else f"{op}: {e}") from None
    slots = sections[isa.VEC_ROPE].size // 4 if vop == "ROPE" else 0
    out_l = TokenRowLayout(int(np.prod(out_shape[:-1])), dim, C)
    packed, pos = [], 0                       # (offset in the params region, memory offset, bytes)
    for at_mem, raw in sections.items():
        size = -(-raw.size // DB) * DB
        packed.append((pos, at_mem, size))
        pos += size
    descs = [dict(opcode="LOAD", target="VEC", src=("params", off), count=size // DB, sp_addr=at_mem // DB)
             for off, at_mem, size in packed]
    per_row = width if image_op else 1
    segs = _segments(op, segments, image_op or dim != shape[-1], {"in": rows, "b": b_rows}, unit)
    placed = _runs(op, runs, image_op or dim != shape[-1] or b_rows not in (0, rows), rows, segs, unit)
    cuts = sorted({0, rows, *(s for g in segs.values() for s in g.starts),
                   *(s for g in placed.values() for s in g.starts)})

    def at(region, layout, row, n):
        """A VECTOR's address of `n` rows from `row` of a region (its segment's where segmented, its place in
        its run where placed in runs)."""
        g = segs.get(region)
        if region in placed:
            row = placed[region].row(row)
        return (region, layout.offset(row)) if g is None else g.address(layout.offset(row), n, layout.pitch)
    pieces = []
    spans = [(c0 + r, n) for c0, c1 in zip(cuts, cuts[1:]) for r, n in _chunks(c1 - c0, unit)]
    columns = None if segs or not COLUMNS else _vector_columns(
        vop, spans, placed, in_l, out_l, b_l, b_rows, rows, width, per_row, dim, slots, DB)
    if columns is not None:               # (the descriptors as columns: the residual adds' tens of thousands)
        vectors, pieces = columns
        emitted = Emitter()
        for off, at_mem, size in packed:
            emitted.add_at(_VEC_LOAD_KEYS, (isa.OPCODES["LOAD"], isa.TARGETS["VEC"], size // DB, at_mem // DB),
                           "params", off)
        keys, values, addresses = vectors
        emitted.add_addressed(keys, emitted.reserve(len(spans)) + np.arange(len(spans)), values, addresses)
        descs = emitted
        spans = ()
    for r0, n in spans:
        if vop == "MAXPOOL":
            n_out0 = (r0 // 2) * (width // 2)
        else:
            n_out0 = r0 * per_row * (4 if vop == "UPSAMPLE" else 1)
        d = dict(opcode="VECTOR", target=isa.VEC_OPS[vop], src=at("in", in_l, r0 * per_row, n),
                 vec_out_addr=at("out", out_l, n_out0, n), vec_rows=n, vec_dim=dim, vec_pitch=in_l.pitch // DB,
                 vec_width=width)
        if vop == "ADD":
            first = r0 % b_rows
            d.update(vec_b_addr=at("b", b_l, first, n if b_rows == rows else b_rows),
                     vec_aux=b_rows if b_rows < rows else n)
        elif vop == "ROPE":
            d.update(vec_aux=slots)
        descs.append(d)
        pieces.append((d["src"], d.get("vec_b_addr"), d["vec_out_addr"][1], n, d.get("vec_aux", 0)))
    inputs = {"in": in_l, **({"b": b_l} if b_l else {})}
    sizes = {"params": pos}
    for region, layout in inputs.items():
        sizes.update(segs[region].sizes(layout.pitch) if region in segs else
                     {region: placed[region].size * layout.pitch if region in placed else layout.size})
    sizes["out"] = placed["out"].size * out_l.pitch if "out" in placed else out_l.size
    offsets, image = lay_out_image(cfg, len(descs), sizes, base_addr, max_ddr_bytes, f"vector {op}")
    for (off, _, _), raw in zip(packed, sections.values()):
        image[offsets["params"][0] + off:offsets["params"][0] + off + raw.size] = raw
    for region, data in (("in", x.reshape(tokens, dim)), ("b", b)):
        if region in inputs:
            if region not in placed and region not in segs:      # (straight into the image)
                inputs[region].pack_into(data, image[offsets[region][0]:offsets[region][0] + offsets[region][1]])
                continue
            packed_rows = inputs[region].pack(data)
            if region in placed:
                packed_rows = placed[region].spread(packed_rows, inputs[region].pitch)
            if region in segs:
                segs[region].scatter(image, offsets, packed_rows, inputs[region].pitch)
            else:
                image[offsets[region][0]:offsets[region][0] + packed_rows.size] = packed_rows
    sym, raw = _pack(descs, image, offsets, base_addr)
    record = dict(kind="vector", op=vop, rows=rows, width=width, dim=dim, pitch=in_l.pitch, aux=b_rows or slots,
                  sections=packed, pieces=pieces if segs or placed else None)
    prog = VectorProgram(cfg, tokens, dim, dim, False, image, raw, offsets, macs=0, base_addr=base_addr,
                         symbolic=sym, op=record, out_layout=out_l, out_shape=shape if not image_op else out_shape)
    if segs:        # the segments are inputs, each bound (or written) as the whole region would be
        prog.ROLES = {**{r: v for r, v in VectorProgram.ROLES.items() if r not in segs},
                      **{r: "input" for g in segs.values() for r in g.regions}}
    return prog


def _segments(op: str, segments: dict | None, whole_rows_only: bool, rows: dict, unit: int) -> dict:
    """compile_vector's `segments` as RowSegments per region, checked: row ops on rows not narrowed, every
    segment's rows summing to its region's, each starting on a period of `unit` rows."""
    segs = {r: RowSegments(r, tuple(int(n) for n in k)) for r, k in (segments or {}).items()}
    for region, g in segs.items():
        if region not in rows or not rows[region] or rows[region] != rows["in"]:
            raise CompileError(f"{op}: no input region {region!r} row for row with the input to hold in segments")
        if whole_rows_only:
            raise CompileError(f"{op}: an input in segments needs whole token rows (a row op, D <= {VP.MAX_DIM})")
        if g.total != rows[region] or min(g.rows) < 1:
            raise CompileError(f"{op}: {region} segments of {g.rows} rows, the region has {rows[region]}")
        if any(s % unit for s in g.starts):
            raise CompileError(f"{op}: {region} segments start at rows {g.starts}, not on its period of {unit}")
    return segs


def _runs(op: str, runs: dict | None, refused: bool, rows: int, segs: dict, unit: int) -> dict:
    """compile_vector's `runs` checked: row ops on whole rows (b not repeated), not segmented, every row in a
    run, the runs inside the region, each starting on a period of `unit` rows (RoPE's table: a command's
    rows restart it)."""
    for region, g in (runs or {}).items():
        if region not in ("in", "b", "out") or region in segs or not isinstance(g, RowRuns):
            raise CompileError(f"{op}: region {region!r} cannot be placed in runs (in, b or out, a RowRuns, not "
                               "segmented)")
        if refused:
            raise CompileError(f"{op}: rows in runs need a row op on whole rows, b not repeated")
        if sorted(g.starts) != list(g.starts) or sum(n for _, n, _ in g.runs) != rows or g.starts[:1] != (0,) or any(
                first + n != nxt for (first, n, _), nxt in zip(g.runs, g.starts[1:])) or any(
                at < 0 or at + n > g.size for _, n, at in g.runs):
            raise CompileError(f"{op}: {region}'s runs do not cover its {rows} rows in order within "
                               f"its {g.size} rows")
        if any(start % unit for start in g.starts):
            raise CompileError(f"{op}: {region}'s runs start at rows {g.starts}, not on its period of {unit}")
    return dict(runs or {})


#: pack_descriptors' results by descriptor list, layout and base address: a video frame's vector calls
#: (Hiera's per-window maxpools, the adds, norms and tables of every block) repeat a few hundred lists,
#: and packing one is most of a small call's compile.
_PACKED = Lru(keep=512)


#: Whether compile_vector makes an unsegmented call's VECTOR descriptors as columns (_vector_columns; False: a
#: dict each, the reference it is tested against).
COLUMNS = True
_VEC_LOAD_KEYS = ("opcode", "target", "count", "sp_addr")


def _vector_columns(vop: str, spans: list, placed: dict, in_l, out_l, b_l, b_rows: int, rows: int, width: int,
                    per_row: int, dim: int, slots: int, DB: int):
    """compile_vector's VECTOR commands for `spans` ((first row, rows) each) as Emitter.add_addressed's keys,
    values and addresses, and the fast mode's pieces; None where a row is in no run (compile_vector's loop then
    says which)."""
    r0, n = (np.array(c, np.int64).reshape(-1) for c in zip(*spans)) if spans else (np.zeros(0, np.int64),) * 2
    m = len(r0)

    def at(region, layout, row):
        g = placed.get(region)
        if g is not None:
            first, count, where = (np.array(c, np.int64) for c in zip(*g.runs))
            k = np.maximum(0, np.searchsorted(first, row, side="right") - 1)
            if np.any((row < first[k]) | (row >= first[k] + count[k])):
                return None
            row = where[k] + row - first[k]
        return layout.offset(row)
    n_out0 = (r0 // 2) * (width // 2) if vop == "MAXPOOL" else r0 * per_row * (4 if vop == "UPSAMPLE" else 1)
    src, out = at("in", in_l, r0 * per_row), at("out", out_l, n_out0)
    keys = ["opcode", "target", "vec_out_addr", "vec_rows", "vec_dim", "vec_pitch", "vec_width"]
    cols = [np.full(m, isa.OPCODES["VECTOR"]), np.full(m, isa.VEC_OPS[vop]), np.zeros(m, np.int64), n,
            np.full(m, dim), np.full(m, in_l.pitch // DB), np.full(m, width)]
    addresses = {"dram_addr": ("in", src), "vec_out_addr": ("out", out)}
    b_addr = aux = None
    if vop == "ADD":
        b_addr = at("b", b_l, r0 % b_rows)
        aux = np.full(m, b_rows) if b_rows < rows else n
        keys += ["vec_b_addr", "vec_aux"]
        cols += [np.zeros(m, np.int64), aux]
        addresses["vec_b_addr"] = ("b", b_addr)
    elif vop == "ROPE":
        aux = np.full(m, slots)
        keys.append("vec_aux")
        cols.append(aux)
    if src is None or out is None or (vop == "ADD" and b_addr is None):
        return None
    keys.append("dram_addr")
    cols.append(np.zeros(m, np.int64))
    pieces = list(zip([("in", o) for o in src.tolist()],
                      [("b", o) for o in b_addr.tolist()] if b_addr is not None else [None] * m,
                      out.tolist(), n.tolist(), aux.tolist() if aux is not None else [0] * m))
    return (tuple(keys), np.stack(cols, axis=1), addresses), pieces


def _pack(descs, image: np.ndarray, offsets: dict, base_addr: int) -> tuple:
    """pack_descriptors(descs, image, offsets, base_addr), remembered: (symbolic, numeric fields). `descs`: dicts
    or an Emitter (keyed by its columns' bytes)."""
    if isinstance(descs, Emitter):
        cols = descs.columns()
        key = None if cols is None else (
            tuple((k, c.tobytes()) for k, c in sorted(cols.split[0].items())),
            tuple((b, k, r.tobytes(), o.tobytes()) for b, fs in sorted(cols.split[1].items())
                  for k, (r, o) in sorted(fs.items())),
            tuple(cols._kinds), cols._kind.tobytes(), tuple(offsets.items()), base_addr)
    else:
        key = (tuple(tuple(d.items()) for d in descs), tuple(offsets.items()), base_addr)
    kept = None if key is None else _PACKED.get(key)
    if kept is None:
        sym, raw = pack_descriptors(descs, image, offsets, base_addr, "split the call")
        kept = (sym, frozen(raw), image[:len(descs) * isa.DESCRIPTOR_BYTES].copy())
        if key is not None:
            _PACKED.put(key, kept)
    else:
        image[:kept[2].size] = kept[2]
    return kept[0], kept[1]


def elements(prog: VectorProgram) -> int:
    """The elements a call processes: its input's (upsample: its output's)."""
    n = prog.m * prog.k
    return 4 * n if prog.op["op"] == "UPSAMPLE" else n
