"""Compiler: multi-head attention (int8 q, k, v per head) -> DDR image + command descriptors.

Arithmetic: golden_model.intattn.attention with key_tile = C (the array's columns), bit for bit.
Heads and windows are independent attention calls batched in one program: pass them as
the leading axis (H, L, d). Head dims are padded with zero channels up to a multiple of C
(zero channels change no score and give zero outputs, which are sliced off); query tiles
of R rows (rows past Lq are zero and ignored), key tiles of C keys (the last one masked
by its `count`).

DDR image (4 KiB aligned regions):
  descriptors
  Q       per (head, query tile): dp entries of R int8      (entry c = q[rows, c]; the A layout;
          with token_tiles, per (head, tile of C queries) as K: docs/runtime.md)
  K       per (head, key tile):   dp entries of C int8      (entry c = k[keys, c]; the B layout)
  V       per (head, key tile):   dp entries of C int8      (entry c = v[keys, c]; the V layout)
  params  one PARAM entry: C channels of (bias 0, out_mult, out_shift)
  out     H x Lq rows of dp int8 (or int32), row-major
With `rows` (TokenRows) out, and with rows.inputs Q, K and V, are token rows instead, the heads
merged (row = token, head h at columns h d .. h d + d - 1): what a linear writes and reads. An input
may be in several DDR ranges (rows.segments, sw.runtime.layout.RowSegments: regions V.0, V.1, ..., e.g.
a memory bank's slots): each tile's LOAD reads its segment, which it may not straddle.

Schedule per (head, group of `slots` query tiles, one per engine slot): one LOAD of their Q
tiles into an A half (from token rows: one transposing LOAD per tile); per key tile n: LOAD K
(B half n % 2) and LOAD V (V half n % 2) once, then per slot s: COMPUTE S = Q_s K^T (GEMM array,
a ring of up to 4 accumulator regions) and ATTENTION STEP(slot s) (softmax + P V on the attention
engine); then per slot ATTENTION NORM over groups of chunks into the remaining accumulator regions,
and one STORE per chunk through the requantiser. Each K and V tile is read once per group (S x fewer DDR reads than one query
tile at a time). Descriptors dispatch in order, so the order is the schedule: each COMPUTE
is emitted one step ahead of its STEP (the GEMM array works on step j + 1 while the engine
runs step j), and the next key tile's two LOADs are spread over the group's steps.
Waits are exact: every descriptor waits for the completion counts of the last users of what
it overwrites (hw.isa wait_* fields).
"""
from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass, replace

import numpy as np

from golden_model import intattn
from hw import isa
from sw.compile.linear import (ALIGN, WAIT_LIMIT, CompileError, Program, gc_paused, lay_out_head, pack_descriptors,
                               plan_cache, put_token_tiles, tiles_view)
from sw.lru import Lru
from sw.runtime.program import Emitter, frozen


@dataclass
class AttentionProgram:
    cfg: object
    heads: int
    lq: int
    lk: int
    d: int
    out_int32: bool
    image: np.ndarray
    descriptors: list[dict]
    regions: dict[str, tuple[int, int]]
    macs: int = 0                   # 2 * H * Lq * Lk * d (Q K^T and P V)
    base_addr: int = 0
    kv_bytes: int = 0               # K and V bytes the program reads from DDR
    slots: int = 1                  # query tiles resident at once (each K/V tile serves them all)
    symbolic: list[dict] | None = None
    out_chunked: bool = False       # out in chunk-major order (sw.runtime.layout: the overlay transposes it)
    token_tiles: bool = False       # Q, K and V in token tiles of C (sw.runtime.layout.TokenTileLayout)
    op: dict | None = None          # what it computes, by region name, for the sim's fast mode (sw/backends/fast.py)
    rows: "TokenRows | None" = None  # Q, K, V (rows.inputs) and the output as token rows, heads merged
    runs = None                     # one run (max_query_tiles keeps the wait counts within sw.compile.linear.WAIT_LIMIT)

    ROLES = {"descriptors": "program", "Q": "input", "K": "input", "V": "input", "params": "weight",
             "out": "output"}
    region, buffer_table = Program.region, Program.buffer_table

    @property
    def array_macs(self) -> int:
        """MACs per cycle the program's arrays offer: the GEMM array (Q K^T) and the P V array."""
        return 2 * self.cfg.macs

    @property
    def ddr_bytes(self) -> int:
        """Bytes the program moves over AXI: descriptors, Q (once), K and V (once per query tile),
        parameters read; output written."""
        return self.kv_bytes + sum(self.regions[r][1] for r in ("descriptors", "Q", "params", "out"))

    @property
    def kv_min_bytes(self) -> int:
        """The least K and V traffic for this engine: each K and V read once per group of `slots`
        resident query tiles of R rows, without the padding of d and of the last key tile."""
        return 2 * self.heads * -(-self.lq // (self.cfg.rows * self.slots)) * self.lk * self.d

    @property
    def d_padded(self) -> int:
        return -(-self.d // self.cfg.cols) * self.cfg.cols

    output = Program.output

    def unpack_out(self, raw: np.ndarray) -> np.ndarray:
        dtype = np.dtype("<i4") if self.out_int32 else np.int8
        C = self.cfg.cols
        flat = np.frombuffer(np.ascontiguousarray(raw).tobytes(), dtype=dtype)
        if self.rows is not None:            # this program's items and query rows of the merged token rows
            at, view = self.rows.part(flat, self.rows.queries, self.d, self.heads, self.rows.q0, self.lq)
            return view[at].copy()
        if self.out_chunked:         # (chunk, head, query, C) -> (head, query, chunk x C)
            out = flat.reshape(self.d_padded // C, self.heads, self.lq, C).transpose(1, 2, 0, 3)
            out = out.reshape(self.heads, self.lq, self.d_padded)
        else:
            out = flat.reshape(self.heads, self.lq, self.d_padded)
        return out[:, :, :self.d].astype(np.int32 if self.out_int32 else np.int8)


@dataclass(frozen=True)
class TokenRows:
    """Q, K, V and the output as token rows (sw.runtime.layout.TokenRowLayout, pitch heads x d: what a
    linear or the vector engine writes), the heads merged: batch item b = g x heads + h (g: a window or
    batch item, h: its head) has its token t in row g x tokens + t, columns h x d .. h x d + d - 1, so
    the attention reads its projections and the next node its output in place. The output: STOREs of
    R rows x C columns at row pitch heads x d. The inputs (`inputs`; overlays with load_t): one
    transposing LOAD per query or key tile (hw.isa `transpose`: rows at that pitch -> K-major entries).
    Each region holds the whole call's tensor; a program of a split call (compile_attention_calls)
    covers items item0 .. and query rows q0 .. of it (the calls' programs share the buffers)."""
    heads: int
    groups: int
    queries: int         # query tokens of each group (the whole call's Lq)
    keys: int            # key tokens of each group
    inputs: bool = False
    item0: int = 0
    q0: int = 0
    segments: tuple = ()   # RowSegments of inputs held in several DDR ranges (e.g. V over memory bank slots)

    @property
    def items_total(self) -> int:
        return self.groups * self.heads

    def size(self, tokens: int, d: int) -> int:
        return self.groups * tokens * self.heads * d

    def part(self, flat: np.ndarray, tokens: int, d: int, n: int, t0: int, t: int):
        """Where items item0 .. item0 + n - 1, tokens t0 .. t0 + t - 1 of a (groups x tokens) x (heads x d)
        region `flat` are: (index tuple into its (groups, tokens, heads, d) view, that view); the view
        indexed so gives (n, t, d)."""
        view = flat[:self.size(tokens, d)].reshape(self.groups, tokens, self.heads, d)
        b = self.item0 + np.arange(n)
        return (b // self.heads, slice(t0, t0 + t), b % self.heads), view

    def row(self, item: int, token: int, tokens: int, d: int) -> int:
        """The byte of item item0 + item's token `token`'s first channel in a region of `tokens` per group."""
        g, h = divmod(self.item0 + item, self.heads)
        return ((g * tokens + token) * self.heads + h) * d

    def segmented(self, region: str):
        """The region's RowSegments, or None (one range)."""
        if not self.segments:            # (the common case: called for each of a plan's loads)
            return None
        return next((g for g in self.segments if g.name == region), None)

    def at(self, region: str, offset: int, n_rows: int, d: int) -> tuple[str, int]:
        """The (region, byte offset) an access of n_rows token rows from byte `offset` of `region` reads:
        in its segment where the region is segmented."""
        g = self.segmented(region)
        return (region, offset) if g is None else g.address(offset, n_rows, self.heads * d)

    def sizes(self, region: str, tokens: int, d: int) -> dict:
        """The bytes of a region of `tokens` per group: {region: size}, or each segment's."""
        g = self.segmented(region)
        if g is None:
            return {region: self.size(tokens, d)}
        if g.total != self.groups * tokens:
            raise CompileError(f"attention as token rows: {region} segments hold {g.total} rows, the call "
                               f"{self.groups} x {tokens}")
        return g.sizes(self.heads * d)

    def region_bytes(self, mem: np.ndarray, at: dict, region: str, tokens: int, d: int) -> np.ndarray:
        """A region's bytes as one contiguous array (its segments gathered), from `mem` at addresses `at`."""
        g = self.segmented(region)
        return mem[at[region]:at[region] + self.size(tokens, d)] if g is None else g.gather(mem, at, self.heads * d)


def token_rows_refusal(cfg, d: int, inputs: bool = False) -> str | None:
    """Why an attention of head dim d cannot keep its output (and with `inputs` its Q, K, V) as token
    rows (None: it can). Each STORE row is C bytes from the head's column h x d: C-aligned (so AXI-beat
    aligned, inside one 4 KiB page and inside the row) only when C divides d; the inputs take the
    transposing LOAD (load_t)."""
    if d % cfg.cols:
        return (f"head dim {d} is not a multiple of the array's {cfg.cols} columns (a head's C-byte STORE rows "
                "would start off the C grid: across 4 KiB pages, past the last token row)")
    if inputs and "load_t" not in cfg.engines:
        return f"overlay {cfg.name!r} has no transposing LOAD (load_t) to read Q, K, V from token rows"
    return None


def _heads(x, name):
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3:
        raise CompileError(f"{name} must be (tokens, d) or (heads, tokens, d), got shape {x.shape}")
    if x.dtype != np.int8:
        raise CompileError(f"{name} must be int8, got {x.dtype}")
    return x


@gc_paused
def compile_attention(cfg, q, k, v, quant: intattn.AttentionQuant, *, out_int32: bool = False,
                      base_addr: int = 0, max_ddr_bytes: int = 1 << 30, out_chunked: bool = False,
                      token_tiles: bool = False, rows: TokenRows | None = None) -> AttentionProgram:
    """`rows`: the output, and with rows.inputs Q, K and V, as token rows, heads merged (TokenRows; int8,
    C dividing d); q, k, v are this program's items (a split call's part: TokenRows.item0, q0).
    `out_chunked`: write the output chunk-major, C channels of every (head, query) for chunk 0, then
    chunk 1, ... (rows C elements apart), the order sw.runtime.layout.compile_chunks_to_planar reads.
    `token_tiles`: Q in the layout of K and V, tiles of C tokens (sw.runtime.layout.TokenTileLayout, what
    a 1 x 1 convolution writes), so one buffer can feed all three. With R = C that is the Q layout above;
    with R < C a query tile is 1 / (C / R) of a token tile, its channel c's R tokens C bytes after its
    channel c - 1's, so it is loaded one A entry (R bytes) per channel."""
    _require_engine(cfg)
    if base_addr % ALIGN:
        raise CompileError(f"DDR buffer address {base_addr:#x} is not {ALIGN}-byte aligned")
    q, k, v = _heads(q, "q"), _heads(k, "k"), _heads(v, "v")
    H, Lq, d = q.shape
    if k.shape[0] != H or v.shape != k.shape or k.shape[2] != d:
        raise CompileError(f"shapes q {q.shape}, k {k.shape}, v {v.shape} do not match")
    Lk = k.shape[1]
    plan = _checked_plan(cfg, H, Lq, Lk, d, quant, out_int32, out_chunked, token_tiles, rows, base_addr, max_ddr_bytes)
    offsets, head, size, sym, raw, kv_bytes, slots, q_tiles, kt, k_stride = plan
    C = cfg.cols
    dp = -(-d // C) * C
    image = np.zeros(size, np.uint8)
    image[:head.size] = head
    _fill(image, offsets, q, k, v, quant, C, dp, q_tiles, (kt, k_stride, C), rows if rows is not None and rows.inputs
          else None)
    op = dict(kind="attention", heads=H, lq=Lq, lk=Lk, dp=dp, q_tiles=q_tiles, kt=kt, k_stride=k_stride,
              out_int32=out_int32, out_chunked=out_chunked, score_mult=quant.score_mult, score_shift=quant.score_shift,
              rows=rows)
    prog = AttentionProgram(cfg, H, Lq, Lk, d, out_int32, image, frozen(raw), dict(offsets), macs=2 * H * Lq * Lk * d,
                            base_addr=base_addr, kv_bytes=kv_bytes, slots=slots, symbolic=sym, out_chunked=out_chunked,
                            token_tiles=token_tiles, op=op, rows=rows)
    if rows is not None and rows.segments:       # each segment an input, as its whole region is
        split = {g.name: g.regions for g in rows.segments}
        prog.ROLES = {**{r: v for r, v in AttentionProgram.ROLES.items() if r not in split},
                      **{r: "input" for regions in split.values() for r in regions}}
    return prog


def _require_engine(cfg) -> None:
    if "attention" not in cfg.engines:
        raise CompileError(f"overlay {cfg.name!r} has no attention engine (engines: {', '.join(cfg.engines)})")


def _checked_plan(cfg, H: int, Lq: int, Lk: int, d: int, quant, out_int32, out_chunked, token_tiles,
                  rows: TokenRows | None, base_addr: int, max_ddr_bytes: int):
    """compile_attention's plan (_scored_plan) for its shapes, or the CompileError saying why there is none."""
    if min(H, Lq, Lk) < 1:
        raise CompileError("empty attention")
    if d > min(cfg.attn_max_dim, intattn.MAX_HEAD_DIM):
        raise CompileError(f"head dim {d} exceeds the engine's {min(cfg.attn_max_dim, intattn.MAX_HEAD_DIM)}")
    if Lk > intattn.MAX_KEYS:
        raise CompileError(f"{Lk} keys exceed {intattn.MAX_KEYS} (the running sum's width)")
    R, C = cfg.rows, cfg.cols
    dp = -(-d // C) * C
    split_q = token_tiles and R != C                 # query tiles are parts of token tiles
    if split_q:
        why = split_query_tiles(cfg)
        if why:
            raise CompileError(f"query tiles from token tiles: {why}")
    a_half, b_half = cfg.a_depth // 2, cfg.b_depth // 2
    if dp > min(a_half, b_half):
        raise CompileError(f"head dim {dp} does not fit half the A/B scratchpads ({min(a_half, b_half)} entries)")
    if rows is not None:
        why = token_rows_refusal(cfg, d, rows.inputs)
        if out_int32 or out_chunked or token_tiles:
            why = "int8 rows only (not int32, not chunk-major, not from token tiles)"
        if rows.item0 + H > rows.items_total or rows.q0 + Lq > rows.queries or Lk != rows.keys:
            why = f"items {rows.item0}+{H}, queries {rows.q0}+{Lq}, {Lk} keys outside {rows}"
        if why:
            raise CompileError(f"attention as token rows: {why}")
    return _scored_plan(cfg, H, Lq, Lk, d, bool(out_int32), bool(out_chunked), bool(token_tiles), rows,
                        _Score(quant.score_mult, quant.score_shift), base_addr, max_ddr_bytes)


def attention_descriptors(cfg, H: int, Lq: int, Lk: int, d: int, quant: intattn.AttentionQuant) -> np.ndarray:
    """The descriptor bytes of compile_attention's program for H heads of Lq queries against Lk keys of dim d
    (Q, K, V in tiles, int8 out, at address 0), without its data: what the placement prices
    (sw.compile.graph). The same plan, so the same bytes, without an image to zero and fill."""
    _require_engine(cfg)
    return _checked_plan(cfg, H, Lq, Lk, d, quant, False, False, False, None, 0, 1 << 30)[1]


#: The score requantiser's parameters: the one part of an AttentionQuant in the descriptors (the output's are
#: data, in the params region), so layers that differ only there share a plan.
_Score = namedtuple("_Score", "score_mult score_shift")


def _scored_plan(cfg, H: int, Lq: int, Lk: int, d: int, out_int32: bool, out_chunked: bool, token_tiles: bool,
                 rows: TokenRows | None, quant: _Score, base_addr: int, max_ddr_bytes: int):
    """_attention_plan with score requantiser `quant`: the plan of its shapes, made and kept for the first score
    they came with, and for another (layers of one shape, e.g. a memory attention's four, differ only there)
    that plan with the ATTENTION STEPs' score fields set (the symbolic, numeric and packed descriptors alike).
    The copies are not kept: a node's calls repeating its arguments reuse its whole program
    (sw.runtime.compile_cache), and copies per layer would crowd the plans out; a shape seen once (most of a
    1024 px image's) is not copied at all."""
    shape = (cfg, H, Lq, Lk, d, out_int32, out_chunked, token_tiles, rows, base_addr, max_ddr_bytes)
    first = _FIRST_SCORES.get(shape)
    if first is None:
        _FIRST_SCORES.put(shape, first := quant)
    plan = _attention_plan(cfg, H, Lq, Lk, d, out_int32, out_chunked, token_tiles, rows, first, base_addr,
                           max_ddr_bytes)
    return plan if first == quant else _with_score(plan, quant, base_addr)


#: The score each attention shape's plan was made with (_scored_plan), for the most recent shapes.
_FIRST_SCORES = Lru(1 << 12)


def _with_score(plan, quant: _Score, base_addr: int):
    """An _attention_plan result with its ATTENTION STEPs' score fields set to `quant`."""
    from sw.runtime.program import ColumnDescriptors, SplitDescriptors, link_words
    offsets, _, _, sym, raw = plan[:5]
    score = {"param_addr": quant.score_mult, "stride": quant.score_shift}
    fixed, moved = sym.split                      # (pack_descriptors' fields as columns: isa fields only)
    steps = np.flatnonzero((fixed["opcode"] == isa.OPCODES["ATTENTION"])
                           & (fixed["target"] == isa.ATTN_MODES["STEP"]))
    cols = {key: fixed[key].copy() for key in score}
    for key, value in score.items():
        cols[key][steps] = value
    if isinstance(sym, ColumnDescriptors) and isinstance(raw, ColumnDescriptors):
        symbolic, raw = sym.with_columns(cols), raw.with_columns(cols)   # (STEPs have both fields already)
    else:
        raw, symbolic = list(raw), list(sym)
        for j in steps.tolist():
            raw[j], symbolic[j] = {**raw[j], **score}, {**symbolic[j], **score}
        symbolic, raw = SplitDescriptors(symbolic), tuple(raw)
        symbolic.split = ({**fixed, **cols}, moved)
    # (the scores fit their fields: AttentionQuant checks them)
    head = link_words(symbolic, {name: base_addr + off for name, (off, _) in offsets.items()})
    head.flags.writeable = False
    return (offsets, head, plan[2], symbolic, raw, *plan[5:])


# Each descriptor's fields in the order the schedule names them (dram_addr, when it has one, after its waits).
_NONE: dict = {}
_LOAD_KEYS = ("opcode", "target", "count", "sp_addr")
_LOAD_T_KEYS = _LOAD_KEYS + ("transpose", "t_rows_last", "stride")
_COMPUTE_KEYS = ("opcode", "sp_addr", "b_base", "k_last", "acc_base", "accumulate")
_STEP_KEYS = ("opcode", "target", "accumulate", "slot", "sp_addr", "b_base", "count", "k_last", "param_addr", "stride")
_NORM_KEYS = ("opcode", "target", "slot", "sp_addr", "count", "acc_base")
_STORE_KEYS = ("opcode", "count", "sp_addr", "param_addr", "out_int32", "stride")


#: Plans kept: every attention shape of a video frame (the memory attention's, the decoder's, Hiera's windows),
#: so a steady-state frame relinks and refills them instead of rebuilding their descriptor lists.
@plan_cache
def _attention_plan(cfg, H: int, Lq: int, Lk: int, d: int, out_int32: bool, out_chunked: bool, token_tiles: bool,
                    rows: TokenRows | None, quant: _Score, base_addr: int, max_ddr_bytes: int):
    """What compile_attention's program is for its shapes, whatever the data: the DDR layout, the image's
    descriptor bytes, the descriptors (symbolic, split for relinking, and numeric), the K/V bytes loaded,
    the query slots, the Q tiling and the K/V tiles."""
    R, C, DB = cfg.rows, cfg.cols, cfg.beat_bytes
    dp = -(-d // C) * C
    chunks = dp // C
    split_q = token_tiles and R != C
    a_half, b_half = cfg.a_depth // 2, cfg.b_depth // 2
    s_regions, group_chunks = acc_regions(cfg)
    qt, kt = -(-Lq // R), -(-Lk // C)
    slots = query_slots(cfg, dp, qt)
    eb = 4 if out_int32 else 1
    row_bytes = dp * eb
    q_stride = -(-dp * R // DB) * DB
    k_stride = -(-dp * C // DB) * DB
    qtc = -(-Lq // C)                       # token tiles of queries (split_q)
    sizes = {"Q": H * qtc * k_stride if split_q else H * qt * q_stride, "K": H * kt * k_stride, "V": H * kt * k_stride,
             "params": C * isa.PARAM_CHANNEL_BYTES, "out": H * Lq * row_bytes}
    if rows is not None:
        sizes["out"] = rows.size(rows.queries, d)
        if rows.inputs:
            for region, tokens in (("Q", rows.queries), ("K", Lk), ("V", Lk)):
                del sizes[region]
                sizes.update(rows.sizes(region, tokens, d))
            sizes["params"] = sizes.pop("params")       # the regions' order as before: params, out last
            sizes["out"] = sizes.pop("out")
        elif rows.segments:
            raise CompileError("attention: inputs in segments need Q, K, V as token rows (rows.inputs)")
    token_pitch = rows.heads * d if rows else 0      # bytes between token rows
    rows_in = rows is not None and rows.inputs
    v_half = isa.scratchpad_depth(cfg, "V") // 2

    descs = Emitter()
    done = {"LOAD": 0, "COMPUTE": 0, "STORE": 0, "ATTENTION": 0}
    last = {}                               # resource -> {unit: count} of its last users
    LOAD, COMPUTE, STORE, ATTENTION = (isa.OPCODES[u] for u in ("LOAD", "COMPUTE", "STORE", "ATTENTION"))
    STEP, NORM, A = isa.ATTN_MODES["STEP"], isa.ATTN_MODES["NORM"], isa.TARGETS["A"]
    with_waits: dict = {}                   # (keys, units waited for) -> the descriptor's keys
    rec = None                              # the group being recorded (_GroupTemplate), if any
    at = (0, 0)                             # the group's (head, first query tile): its addresses' arguments

    def emit(keys, values, unit, waits, addr=None):
        """A descriptor of fields `keys` = `values` that waits for the last users of the resources `waits`
        (wait_<unit> fields after its own, in order of use). addr: dram_addr, a (region, offset), or
        (function, args) of the group's addresses: function(head, first query tile, *args) is it."""
        if len(waits) == 1:                 # (most: its last users as they are; counts are never negative)
            w = dict(last.get(waits[0], _NONE))
        else:
            w = {}
            for res in waits:
                for u, n in last.get(res, _NONE).items():
                    w[u] = max(w.get(u, 0), n)
        k = with_waits.get((keys, tuple(w)))
        if k is None:
            k = with_waits[(keys, tuple(w))] = keys + tuple(f"wait_{u.lower()}" for u in w)
        if rec is not None:
            rec.note(k, values, w, [(res, last.get(res, _NONE)) for res in waits], addr)
        if addr is None:
            descs.add(k, values + tuple(w.values()))
        else:
            descs.add_at(k, values + tuple(w.values()), *(addr[0](*at, *addr[1]) if callable(addr[0]) else addr))
        done[unit] += 1
        return done[unit]

    def use(res, unit, n):
        last.setdefault(res, {})[unit] = n

    n_param = emit(_LOAD_KEYS, (LOAD, isa.TARGETS["PARAM"], 1, 0), "LOAD", [], ("params", 0))
    use("param", "LOAD", n_param)
    kv_bytes = 0
    kv_tiles = 0                            # K/V tiles loaded before this group: their halves alternate

    # The addresses of a group's loads and stores: (region, offset) of (head h, first query tile q0, ...).
    def kv_src(h, q0, region, ki):
        if rows_in:                         # the tile's keys from the item's token rows
            return rows.at(region, rows.row(h, ki * C, Lk, d), min(C, Lk - ki * C), d)
        return region, (h * kt + ki) * k_stride

    def q_rows_src(h, q0, s):               # query tile q0 + s from its R token rows
        qi = q0 + s
        n_rows = min(R, Lq - qi * R) if rows.segments else None      # (what a segment's address needs)
        return rows.at("Q", rows.row(h, rows.q0 + qi * R, rows.queries, d), n_rows, d)

    def q_split_src(h, q0, s, c):           # channel c of query tile qi: R bytes of token tile qi // m
        qi, m = q0 + s, C // R
        return "Q", ((h * qtc + qi // m) * dp + c) * C + qi % m * R

    def q_src(h, q0):
        return "Q", (h * qt + q0) * q_stride

    def out_dst(h, q0, s, c):               # chunk c of query tile q0 + s
        qi = q0 + s
        if rows is not None:                # the item's query rows, its head's columns
            return "out", rows.row(h, rows.q0 + qi * R, rows.queries, d) + c * C
        if out_chunked:
            return "out", ((c * H + h) * Lq + qi * R) * C * eb
        return "out", ((h * Lq + qi * R) * dp + c * C) * eb
    pitch = token_pitch if rows is not None else C * eb if out_chunked else row_bytes
    # Each is arithmetic in (h, q0), so also takes arrays of them (a template's replays at once), but for a
    # region in segments (RowSegments.address: one access at a time).
    for fn in (kv_src, q_rows_src, q_split_src, q_src, out_dst):
        fn.vectorised = rows is None or not rows.segments

    def load(target, region, ki, half):
        nonlocal kv_bytes
        sp = half * (b_half if target == "B" else v_half)
        res = "B" if target == "B" else "Vh"
        if rows_in:                         # transposed from token rows
            keys = min(C, Lk - ki * C)
            n_l = emit(_LOAD_T_KEYS, (LOAD, isa.TARGETS[target], dp, sp, 1, keys - 1, token_pitch), "LOAD",
                       [(res, half)], (kv_src, (region, ki)))
        else:
            n_l = emit(_LOAD_KEYS, (LOAD, isa.TARGETS[target], dp, sp), "LOAD", [(res, half)], (kv_src, (region, ki)))
        last[(res, half)] = {}
        use(("kload" if target == "B" else "vload", half), "LOAD", n_l)
        kv_bytes += dp * C

    def group(ns):
        """Emit the group of `ns` query tiles at `at`."""
        nonlocal kv_tiles, n
        ha = g % 2
        if rows_in:                     # each query tile from its R token rows, transposed
            for s in range(ns):
                n_rows = min(R, Lq - (at[1] + s) * R)
                n_q = emit(_LOAD_T_KEYS, (LOAD, A, dp, ha * a_half + s * dp, 1, n_rows - 1, token_pitch),
                           "LOAD", [("A", ha)], (q_rows_src, (s,)))
                last[("A", ha)] = {}    # the first waited; descriptors dispatch in order
        elif split_q:
            for s in range(ns):
                for c in range(dp):
                    n_q = emit(_LOAD_KEYS, (LOAD, A, 1, ha * a_half + s * dp + c), "LOAD", [("A", ha)],
                               (q_split_src, (s, c)))
                    last[("A", ha)] = {}    # the first waited; descriptors dispatch in order
        else:
            n_q = emit(_LOAD_KEYS, (LOAD, A, ns * dp, ha * a_half), "LOAD", [("A", ha)], (q_src, ()))
        last[("A", ha)] = {}
        use(("qload", ha), "LOAD", n_q)
        half = [(kv_tiles + ki) % 2 for ki in range(kt)]
        kv_tiles += kt
        steps = [(ki, s) for ki in range(kt) for s in range(ns)]
        v_after = (ns - 1) // 2             # LOAD V of the next key tile follows this slot's STEP

        def compute(j):
            """COMPUTE S = Q_slot K^T of step j into the next score region; K(ki + 1) follows slot 0's."""
            ki, s = steps[j]
            sr = (n + j) % s_regions
            n_c = emit(_COMPUTE_KEYS, (COMPUTE, ha * a_half + s * dp, half[ki] * b_half, dp - 1, sr * R, 0),
                       "COMPUTE", [("qload", ha), ("kload", half[ki]), ("S", sr)])
            last[("S", sr)] = {}
            use(("A", ha), "COMPUTE", n_c)
            use(("B", half[ki]), "COMPUTE", n_c)
            use(("Sready", sr), "COMPUTE", n_c)
            if s == 0 and ki + 1 < kt:
                load("B", "K", ki + 1, half[ki + 1])

        # Descriptors run in order, so the order is the schedule: the GEMM array computes one step
        # ahead of the engine (COMPUTE j + 1 before STEP j), and the two LOADs of the next key tile
        # sit about ns / 2 steps apart, so neither waits behind the other's burst in the dispatcher.
        load("B", "K", 0, half[0])
        load("V", "V", 0, half[0])
        compute(0)
        for j, (ki, s) in enumerate(steps):
            if j + 1 < len(steps):
                compute(j + 1)
            sr = (n + j) % s_regions
            n_a = emit(_STEP_KEYS, (ATTENTION, STEP, int(ki > 0), s, sr * R, half[ki] * v_half,
                                    min(C, Lk - ki * C), chunks - 1, quant.score_mult, quant.score_shift),
                       "ATTENTION", [("Sready", sr), ("vload", half[ki])])
            use(("S", sr), "ATTENTION", n_a)
            use(("Vh", half[ki]), "ATTENTION", n_a)
            if s == v_after and ki + 1 < kt:
                load("V", "V", ki + 1, half[ki + 1])
        n += len(steps)
        for s in range(ns):
            valid = min(R, Lq - (at[1] + s) * R)
            for c0 in range(0, chunks, group_chunks):
                cnt = min(group_chunks, chunks - c0)
                n_norm = emit(_NORM_KEYS, (ATTENTION, NORM, s, c0, cnt, s_regions * R), "ATTENTION",
                              [("out", r) for r in range(cnt)])
                last["normed"] = {"ATTENTION": n_norm}
                for r in range(cnt):
                    last[("out", r)] = {}
                    n_s = emit(_STORE_KEYS, (STORE, valid, (s_regions + r) * R, 0, int(out_int32), pitch),
                               "STORE", ["param", "normed"], (out_dst, (s, c0 + r)))
                    use(("out", r), "STORE", n_s)

    # Groups repeat: one whose state (the last users, as counts back from each unit's done count; the
    # halves and score region it starts on; its tiles' valid rows) equals an earlier group's emits that
    # group's descriptors again with every wait moved by the units' progress since, and its own addresses
    # (_GroupTemplate). Entries set before the groups (the PARAM load's) do not move: part of the state as
    # they are.
    fixed = {res: dict(units) for res, units in last.items()}
    templates: dict = {}
    g = n = 0
    state = replayed = None      # `last` as a key has it; the template replayed last (`last` is its end)
    replays: dict = {}           # template -> its replays, emitted together after the groups
    for h in range(H):
        for q0 in range(0, qt, slots):      # a group of `ns` query tiles, one per slot
            ns = min(slots, qt - q0)
            at = (h, q0)
            if state is None:
                state = _relative_state(last, fixed, done)
            key = (ns, tuple(min(R, Lq - (q0 + s) * R) for s in range(ns)), g % 2, kv_tiles % 2, n % s_regions,
                   state)
            t = templates.get(key)
            if t is not None and t.replayable and REPLAY_GROUPS:
                t.replay(descs, done, at, replays)
                state, replayed = t.end_state, t       # (`last` made from it when a group is emitted again)
                kv_bytes += t.kv_bytes
                kv_tiles += kt
                n += kt * ns
            else:
                if replayed is not None:
                    last = {res: dict(units) if res in fixed else {u: done[u] - c for u, c in units}
                            for res, units in replayed.end_state}
                    replayed = None
                kv0 = kv_bytes
                rec = _GroupTemplate(done, fixed) if t is None else None
                group(ns)
                state = None
                if rec is not None:
                    rec.close(done, kv_bytes - kv0, last)
                    templates[key], rec = rec, None
            g += 1
    for t, where in replays.items():
        t.emit(descs, where)

    # ---- addresses
    offsets, size, head = lay_out_head(cfg, len(descs), sizes, base_addr, max_ddr_bytes, "attention")
    q_tiles = (qtc, k_stride, C) if split_q else (qt, q_stride, R)    # Q: tiles, bytes apart, tokens each
    sym, raw = pack_descriptors(descs, head, offsets, base_addr, "split the attention")
    head.flags.writeable = False
    return offsets, head, size, sym, frozen(raw), kv_bytes, slots, q_tiles, kt, k_stride


#: Whether _attention_plan emits a group again from the template of an earlier one in the same state (False:
#: every group by the Python schedule, the reference the templates are tested against).
REPLAY_GROUPS = True


def _relative_state(last: dict, fixed: dict, done: dict) -> tuple:
    """`last` (per resource: each unit's progress when its entry was last written) as a key: the units of
    entries that stay (`fixed`) as they are, the others' relative to the units' progress now (`done`)."""
    return tuple((res, tuple(units.items()) if res in fixed else tuple((u, done[u] - c) for u, c in units.items()))
                 for res, units in last.items())


class _GroupTemplate:
    """One group of an attention's descriptors as _attention_plan emitted it, to emit again for a group that
    starts in the same state: the same fields, each wait moved by its unit's progress since (a wait on an
    entry set before the groups stays), each address from its function at the new group's (head, query
    tile). Not replayable when a wait mixes entries that move and entries that stay, or the group changes
    one that stays, or has an address of no function."""

    def __init__(self, done: dict, fixed: dict):
        self.start, self.fixed = dict(done), fixed
        self.notes: list = []
        self.replayable = True

    def note(self, keys, values, w, sources, addr) -> None:
        fixed, moving = set(), set()               # the units waited for through entries that stay, that move
        for res, src in sources:
            (fixed if res in self.fixed else moving).update(src)
        moves = []
        for u in w:
            if u in fixed and u in moving:
                self.replayable = False
            moves.append(u not in fixed)
        if addr is not None and not callable(addr[0]):
            self.replayable = False
        self.notes.append((keys, values + tuple(w.values()), tuple(w), tuple(moves), addr))

    def close(self, done: dict, kv_bytes: int, last: dict) -> None:
        self.count = {u: done[u] - self.start[u] for u in done}
        self.kv_bytes = kv_bytes
        if any(last.get(res) != units for res, units in self.fixed.items()):
            self.replayable = False
        # the group's end as the plan's key of `last` has it (fixed entries' units, the others' relative progress)
        self.end_state = _relative_state(last, self.fixed, done)
        kinds: dict = {}
        for j, (keys, values, units, moves, addr) in enumerate(self.notes):
            kind = kinds.setdefault((keys, units, moves, addr is not None), ([], [], []))
            kind[0].append(j)
            kind[1].append(values)
            kind[2].append(addr)
        self.m = len(self.notes)
        self.kinds = []
        for (keys, units, moves, has_addr), (rows, values, addrs) in kinds.items():
            table = np.array(values, np.int64)
            first_wait = len(keys) - len(units)
            moving = [(first_wait + i, u) for i, (u, mv) in enumerate(zip(units, moves)) if mv]
            self.kinds.append((keys, np.array(rows, np.intp), table, moving, addrs if has_addr else None))
        del self.notes

    def replay(self, descs, done: dict, at: tuple, replays: dict) -> None:
        """Reserve the group's rows in `descs` and advance `done` past it; its descriptors are made by `emit`,
        with the template's other replays (replays[self]: (first row, each unit's progress, (head, tile)))."""
        replays.setdefault(self, []).append((descs.reserve(self.m), [done[u] - self.start[u] for u in self.count],
                                             at))
        for u, k in self.count.items():
            done[u] += k

    def emit(self, descs, replays: list) -> None:
        """The descriptors of `replays` (replay's), each kind of all of them at once."""
        bases = np.array([r[0] for r in replays], np.intp)
        moved = np.array([r[1] for r in replays], np.int64).reshape(len(replays), len(self.count))
        units = list(self.count)
        for keys, rows, table, moving, addrs in self.kinds:
            values = np.repeat(table[None], len(replays), axis=0)
            for col, u in moving:
                values[:, :, col] += moved[:, units.index(u), None]
            at_rows = (bases[:, None] + rows[None, :]).reshape(-1)
            values = values.reshape(-1, table.shape[1])
            if addrs is None:
                descs.add_block(keys, at_rows, values)
            elif all(getattr(fn, "vectorised", False) for fn, _ in addrs):      # each address for all replays
                h, q0 = (np.array([r[2][i] for r in replays], np.int64) for i in (0, 1))
                where = [fn(h, q0, *args) for fn, args in addrs]      # (region, offset per replay)
                offsets = np.stack([np.broadcast_to(off, h.shape) for _, off in where], axis=1)
                descs.add_block(keys, at_rows, values, [region for region, _ in where] * len(replays),
                                offsets.reshape(-1))
            else:
                where = [fn(*at, *args) for _, _, at in replays for fn, args in addrs]
                descs.add_block(keys, at_rows, values, [w[0] for w in where], [w[1] for w in where])


def acc_regions(cfg) -> tuple[int, int]:
    """Accumulator regions of R rows: (ring for S = Q K^T tiles, regions for normalised chunks).
    A ring of up to 4 score tiles lets the GEMM array run up to 3 tiles ahead of the engine."""
    regions = cfg.acc_depth // cfg.rows
    if regions < 3:
        raise CompileError(f"accumulator scratchpad ({cfg.acc_depth} rows) needs at least 3 regions of {cfg.rows} rows")
    s_regions = max(2, min(4, regions - 2))
    return s_regions, regions - s_regions


def split_query_tiles(cfg) -> str | None:
    """Why query tiles of R rows cannot be loaded from token tiles of C (None: they can, one A entry a channel)."""
    R, C, DB = cfg.rows, cfg.cols, cfg.beat_bytes
    if C % R:
        return f"the array's cols ({C}) must be a multiple of its rows ({R})"
    if R % DB:
        return (f"one A entry ({R} bytes, the array's rows) must be whole {DB}-byte AXI beats to be loaded from "
                "inside a token tile")
    return None


def query_slots(cfg, dp: int, qt: int) -> int:
    """Query tiles resident at once: the engine's slots, as many Q tiles as fit an A half, the tiles there are."""
    return max(1, min(cfg.attn_q_slots, (cfg.a_depth // 2) // dp, qt))


def _fill(image, offsets, q, k, v, quant, C, dp, q_tiles, kv_tiles, rows=None):
    """Q, K, V per (head, tile of `lanes` tokens): dp entries of `lanes` int8 (entry c = x[tokens, c]),
    tiles `stride` bytes apart; q_tiles, kv_tiles = (tiles, stride, lanes). `rows` (TokenRows): as its
    token rows instead, this program's items in their rows."""
    H, _, d = q.shape
    for name, x, (n, stride, lanes) in (("Q", q, q_tiles), ("K", k, kv_tiles), ("V", v, kv_tiles)):
        if rows is not None:
            tokens, t0 = (rows.queries, rows.q0) if name == "Q" else (rows.keys, 0)
            g = rows.segmented(name)
            off, size = offsets[name] if g is None else (0, rows.size(tokens, d))
            region = image[off:off + size] if g is None else np.zeros(size, np.uint8)
            at, view = rows.part(region.view(np.int8), tokens, d, H, t0, x.shape[1])
            view[at] = x
            if g is not None:
                g.scatter(image, offsets, region, rows.heads * d)
            continue
        tiles = tiles_view(image[offsets[name][0]:], H * n, stride, dp, lanes).reshape(H, n, dp, lanes)
        put_token_tiles(tiles[:, :, :d], x)        # (channels d .. dp and tokens past L stay zero)
    params = isa.pack_params(np.zeros(C, np.int64), np.full(C, quant.out_mult), np.full(C, quant.out_shift))
    off = offsets["params"][0]
    image[off:off + params.size] = params


def program_counts(cfg, tiles: int, lk: int, d: int, token_tiles: bool = False, rows_in: bool = False
                   ) -> dict[str, int]:
    """Descriptors per unit of a one-head program of `tiles` query tiles against `lk` keys (as emitted above;
    `rows_in`: Q, K, V from token rows, TokenRows.inputs)."""
    C = cfg.cols
    dp = -(-d // C) * C
    chunks, kt = dp // C, -(-lk // C)
    slots = query_slots(cfg, dp, tiles)
    groups = -(-tiles // slots)
    norms = -(-chunks // acc_regions(cfg)[1])
    q_loads = tiles * dp if token_tiles and cfg.rows != C else tiles if rows_in else groups
    return {"LOAD": 1 + q_loads + groups * 2 * kt, "COMPUTE": tiles * kt, "ATTENTION": tiles * (kt + norms),
            "STORE": tiles * chunks}


def max_query_tiles(cfg, lk: int, d: int | None = None, token_tiles: bool = False, rows_in: bool = False) -> int:
    """Query tiles (per head) one program can hold: a descriptor's wait counts are 16-bit, so no unit
    may complete more than 65,535 descriptors. `d`: the head dim (default the engine's largest)."""
    d = d or cfg.attn_max_dim
    lo, hi = 1, 1
    while max(program_counts(cfg, hi * 2, lk, d, token_tiles, rows_in).values()) <= WAIT_LIMIT:
        hi *= 2
    hi *= 2
    while hi - lo > 1:                      # the counts grow with the tiles: the largest that fits
        mid = (lo + hi) // 2
        if max(program_counts(cfg, mid, lk, d, token_tiles, rows_in).values()) <= WAIT_LIMIT:
            lo = mid
        else:
            hi = mid
    slots = query_slots(cfg, -(-d // cfg.cols) * cfg.cols, lo)
    return lo - lo % slots                  # whole groups: each K/V tile then serves `slots` query tiles


def compile_attention_calls(cfg, q, k, v, quant: intattn.AttentionQuant, *, out_int32: bool = False,
                            base_addr: int = 0, max_ddr_bytes: int = 1 << 30, rows: TokenRows | None = None):
    """Split an attention too big for one program into programs over heads and query rows
    (independent: each query row's softmax sees all keys); yields (head, q0, q1, program).
    One program when everything fits. `rows`: the whole call's (TokenRows: each program's regions
    hold the whole tensors, it reads and writes its own items' rows)."""
    q, k, v = _heads(q, "q"), _heads(k, "k"), _heads(v, "v")
    H, Lq, _ = q.shape
    per = max_query_tiles(cfg, k.shape[1], q.shape[2], rows_in=bool(rows and rows.inputs)) * cfg.rows
    if H * -(-Lq // cfg.rows) * cfg.rows <= per:
        yield None, 0, Lq, compile_attention(cfg, q, k, v, quant, out_int32=out_int32, base_addr=base_addr,
                                             max_ddr_bytes=max_ddr_bytes, rows=rows)
        return
    for h in range(H):
        for q0 in range(0, Lq, per):
            q1 = min(Lq, q0 + per)
            part = rows and replace(rows, item0=rows.item0 + h, q0=rows.q0 + q0)
            yield h, q0, q1, compile_attention(cfg, q[h:h + 1, q0:q1], k[h:h + 1], v[h:h + 1], quant,
                                               out_int32=out_int32, base_addr=base_addr,
                                               max_ddr_bytes=max_ddr_bytes, rows=part)
