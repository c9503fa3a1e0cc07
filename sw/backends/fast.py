"""The sim backend's fast mode: a compiled program's whole layer at once, from and to DDR.

Each compiler records what its program computes (`Program.op`: the kind of layer, its shapes and
parameters, the names of the image regions holding its operands and output). Here that record
becomes one NumPy computation (golden_model's arithmetic: int8 GEMMs exact in float BLAS,
intattn's online softmax, the requantiser) that reads the operands from the same DDR bytes the
descriptors would load (the compiler's tile layouts) and writes exactly the bytes the program's
STOREs (or DEPTHWISE) would write, and no others. The cycles come from the cycle model
(sw.backends.cycles) as in the checked mode, so both modes agree in bits and cycles
(tests/test_sim_fast.py); the model remembers a descriptor list's timing by its bytes, so a
program run again (without attention, whose engine state carries over) costs only its data.

What it relies on: the compiler's layouts (zero blocks off the diagonal of a depthwise weight tile,
reductions within MAX_K so no accumulator wraps); a program the host did not compile has no record
and is interpreted. It leaves the scratchpads as they were (the interpreter would leave the last
tiles there): no compiled program reads what an earlier run left (sw.compile.linear.split_runs).
"""
from __future__ import annotations

import numpy as np

from golden_model import intattn, intvec, workers
from golden_model.image_encoder import window_partition
from golden_model.intconv import im2col, out_size
from golden_model.intops import OutputStage, exact_f32_matmul
from hw import isa
from sw.lru import BytesMemo

ROWS_PER_CHUNK = 256      # output rows per NumPy pass: intermediates stay in cache
#: Multiply-accumulates of a GEMM from which its row chunks go to the worker threads (golden_model.workers):
#: one thread's time / two threads' on 2 idle cores 1.22-1.24 at 2^25 (512 x 256 x 256, 1024 x 128 x 256),
#: 1.35-1.48 at 2^26, 1.62 at 2^28, 1.72-1.94 at 2^31 (65,536 x 96 x 384: 0.136 -> 0.079 s).
PARALLEL_MIN_MACS = 1 << 25


def job(cfg, prog, addresses: dict[str, int] | None = None):
    """The fast mode's work for a compiled program: a function of the DDR array (None: no op record).
    `addresses`: where each of the program's regions (prog.regions' names) sits in DDR; default: the
    program's one image at prog.base_addr."""
    op = getattr(prog, "op", None)
    if op is None:
        return None
    at = addresses or {name: prog.base_addr + off for name, (off, _) in prog.regions.items()}
    from sw.engines import engine_of_kind, fast_jobs
    run = fast_jobs()[op["kind"]]

    def work(ddr):
        return run(cfg, ddr, op, at)
    work.blas = engine_of_kind()[op["kind"]] != "vector"      # whether it multiplies matrices (BLAS)
    return work


# ---------------------------------------------------------------- shared pieces

def tiles(ddr, addr: int, n: int, stride: int, used: int) -> np.ndarray:
    """n tiles of `used` bytes, `stride` bytes apart from `addr`, as int8 (n, used)."""
    return ddr[addr:addr + n * stride].reshape(n, stride)[:, :used].view(np.int8)


def params(ddr, addr: int, entries: int, cfg) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PARAM entries as the scratchpad holds them: (bias, multiplier, shift) of shape (entries, C)."""
    words = ddr[addr:addr + entries * cfg.cols * isa.PARAM_CHANNEL_BYTES].view("<u4").reshape(entries, cfg.cols, 4)
    bias = words[..., 0].view(np.int32).astype(np.int64)
    return bias, (words[..., 1] & ((1 << 31) - 1)).astype(np.int64), (words[..., 2] & 63).astype(np.int64)


def store_add(ddr, at, cfg, op) -> tuple[np.ndarray, "intvec.AddParams"]:
    """The fused residual add (STORE.add): the residual (M, N-tiles x C) from the program's "res" region
    (per N-tile, M rows of C int8) and the add's parameters from the first PARAM channel (compile_linear
    writes the same in every channel)."""
    M, nt, C = op["m"], op["nt"], cfg.cols
    res = ddr[at["res"]:at["res"] + nt * M * C].view(np.int8).reshape(nt, M, C).transpose(1, 0, 2).reshape(M, -1)
    words = ddr[at["params"]:at["params"] + isa.PARAM_CHANNEL_BYTES].view("<u4")
    return res, intvec.AddParams(*(int(v) for v in isa.unpack_add(words)))


def store_table(ddr, at) -> "intvec.LutParams":
    """The GEMM store's table (LOAD target LUT) from the program's "lut" region."""
    return intvec.LutParams(ddr[at["lut"]:at["lut"] + isa.LUT_BYTES].view(np.int8))


#: the GEMMs' weights as float matrices (~5x their int8 bytes) and their output stages
_WEIGHTS = BytesMemo(1 << 29)
_STAGES = BytesMemo(1 << 26)


# ---------------------------------------------------------------- the layers (sw/compile/linear.py, sw/compile/conv.py,
# sw/compile/attention.py say the layouts)

def linear(cfg, ddr, op, at):
    R, C = cfg.rows, cfg.cols
    M, K, mt, nt = op["m"], op["k"], op["mt"], op["nt"]
    if op.get("a_rows"):                                 # token rows (transposing LOADs)
        from sw.runtime.layout import TokenRowLayout
        layout = TokenRowLayout(M, K, C)
        rows = layout.unpack(ddr[at["A"]:at["A"] + layout.size])
    else:
        a = tiles(ddr, at["A"], mt, op["a_stride"], K * R).reshape(mt, K, R)
        rows = None
    b = _WEIGHTS.get(ddr, at["B"], nt, op["b_stride"], K * C, "float32", lambda raw: raw.view(np.int8).reshape(
        nt, K, C).transpose(1, 0, 2).reshape(K, nt * C).astype(np.float32))
    relu, i32 = op["relu"], op["out_int32"]
    pb = nt * C * isa.PARAM_CHANNEL_BYTES
    stage = _STAGES.get(ddr, at["params"], 1, pb, pb, (relu, i32, K), lambda raw: OutputStage(
        *(p.reshape(-1) for p in params(raw.reshape(-1), 0, nt, cfg)), relu, i32, K << 14))
    table = store_table(ddr, at) if op.get("lut") else None
    residual, add_params = store_add(ddr, at, cfg, op) if op.get("add") else (None, None)
    row_bytes = nt * C * (4 if op["out_int32"] else 1)
    out = at["out"]
    step = max(1, ROWS_PER_CHUNK // R)

    def chunk(t0):                              # (chunks write disjoint output rows)
        r0, r1 = t0 * R, min(M, (t0 + step) * R)
        x = rows[r0:r1] if rows is not None else a[t0:t0 + step].transpose(0, 2, 1).reshape(-1, K)[:r1 - r0]
        y = stage(exact_f32_matmul(x.astype(np.float32), b), None if table is None else table.table)
        if residual is not None:
            y = intvec.add(y, residual[r0:r1], add_params)
        ddr[out + r0 * row_bytes:out + r1 * row_bytes] = y.view(np.uint8).reshape(-1)
    starts = range(0, mt, step)
    if M * K * nt * C < PARALLEL_MIN_MACS:
        for t0 in starts:
            chunk(t0)
    else:
        workers.map(chunk, starts)


def _planes(ddr, addr, layout, dtype=np.uint8) -> np.ndarray:
    """A feature map's whole planes in the overlay layout (channels, plane rows, pitch), a view of DDR."""
    return ddr[addr:addr + layout.size].view(dtype).reshape(layout.channels, layout.plane_rows, layout.pitch)


def conv(cfg, ddr, op, at):
    from sw.compile.conv import PAD, FmapLayout
    R, C = cfg.rows, cfg.cols
    cin, h, w, cout, k, s, p = (op[n] for n in ("cin", "h", "w", "cout", "k", "stride", "padding"))
    mt, kk = op["mt"], k * k
    ho, wo = out_size(h, k, s, p), out_size(w, k, s, p)
    in_l = FmapLayout(cin, h, w, C)
    out_l = FmapLayout(cout, ho, wo, C, 4 if op["out_int32"] else 1)
    # The engine reads the margins from DDR (zeros the layout keeps), so the fast path reads them too.
    xp = _planes(ddr, at["in"], in_l).view(np.int8)[:, PAD - p:PAD + h + p, in_l.left - p:in_l.left + w + p]
    cols = im2col(np.ascontiguousarray(xp), k, s, 0)                          # (cin k k, ho wo)
    a = tiles(ddr, at["A"], mt, op["a_stride"], op["ntile_k"] * R).reshape(mt, op["ntile_k"], R)
    bias, mult, shift = (q[:, :R].reshape(-1)[:cout, None] for q in params(ddr, at["params"], mt, cfg))
    if op["depthwise"]:
        # Channel i of a tile reads entries i kk .. i kk + kk - 1 of column i (the block diagonal).
        wd = np.einsum("tiji->tij", a.reshape(mt, R, kk, R)).reshape(mt * R, kk)[:cout]
        acc = np.einsum("cj,cjp->cp", wd.astype(np.int64), cols.reshape(cin, kk, -1).astype(np.int64))
    else:
        wm = a.transpose(0, 2, 1).reshape(mt * R, -1)[:cout].astype(np.float32)
        acc = exact_f32_matmul(wm, cols.astype(np.float32))
    bound = (1 if op["depthwise"] else cin) * kk << 14
    y = OutputStage(bias, mult, shift, op["relu"], op["out_int32"], bound)(acc).reshape(cout, ho, wo)
    if op["out_layout"] != out_l:           # token tiles (sw.runtime.layout): the STOREs write every byte
        ddr[at["out"]:at["out"] + op["out_layout"].size] = op["out_layout"].pack(y)
        return
    dtype = np.dtype("<i4") if op["out_int32"] else np.int8
    _planes(ddr, at["out"], out_l, dtype)[:, PAD:PAD + ho, out_l.left:out_l.left + wo] = y


def depthwise(cfg, ddr, op, at):
    from sw.compile.conv import PAD, FmapLayout
    c, h, w, k, p = (op[n] for n in ("channels", "h", "w", "k", "padding"))
    lay = FmapLayout(c, h, w, cfg.cols)
    x = _planes(ddr, at["in"], lay).view(np.int8)[:, PAD - p:PAD - p + h + k - 1, lay.left - p:lay.left - p + w + k - 1]
    coef = ddr[at["coef"]:at["coef"] + c * isa.DW_COEF_BYTES].reshape(c, isa.DW_COEF_BYTES)
    taps = coef[:, :isa.DW_TAP_BYTES].view(np.int8).reshape(c, 8, 8).astype(np.int32)
    words = np.ascontiguousarray(coef[:, isa.DW_TAP_BYTES:]).view("<u4")
    bias = words[:, 0].view(np.int32).astype(np.int64)[:, None, None]
    mult = (words[:, 1] & ((1 << 31) - 1)).astype(np.int64)[:, None, None]
    shift = (words[:, 2] & 63).astype(np.int64)[:, None, None]
    acc = np.zeros((c, h, w), np.int32)                   # |sum| <= 49 x 2^14: int32 is exact
    for ky in range(k):
        for kx in range(k):
            acc += taps[:, ky, kx, None, None] * x[:, ky:ky + h, kx:kx + w]
    y = OutputStage(bias, mult, shift, op["relu"], False, k * k << 14)(acc)
    _planes(ddr, at["out"], lay).view(np.int8)[:, PAD:PAD + h, lay.left:lay.left + w] = y


def attention(cfg, ddr, op, at):
    C = cfg.cols
    H, lq, lk, dp, kt = (op[n] for n in ("heads", "lq", "lk", "dp", "kt"))

    def heads(region, n_tiles, stride, lanes):
        x = tiles(ddr, at[region], H * n_tiles, stride, dp * lanes).reshape(H, n_tiles, dp, lanes)
        return x.transpose(0, 1, 3, 2).reshape(H, n_tiles * lanes, dp)

    rows = op.get("rows")                       # TokenRows: heads merged in token rows (C divides d: dp = d)

    def part(region, tokens, t0, t):
        """(index, view): this program's items' tokens t0 .. t0 + t - 1 in a token-row region (segments gathered)."""
        return rows.part(rows.region_bytes(ddr, at, region, tokens, dp).view(np.int8), tokens, dp, H, t0, t)

    if rows is not None and rows.inputs:
        q, k, v = (view[i] for i, view in (part("Q", rows.queries, rows.q0, lq), part("K", lk, 0, lk),
                                           part("V", lk, 0, lk)))
    else:
        q = heads("Q", *op["q_tiles"])[:, :lq]
        k = heads("K", kt, op["k_stride"], C)[:, :lk]
        v = heads("V", kt, op["k_stride"], C)[:, :lk]
    quant = intattn.AttentionQuant(op["score_mult"], op["score_shift"], 0, 0)
    bias, mult, shift = (np.tile(q_[0], dp // C) for q_ in params(ddr, at["params"], 1, cfg))
    eb = 4 if op["out_int32"] else 1
    stage = OutputStage(bias, mult, shift, False, op["out_int32"])
    _, l, o = intattn.attention_state(q, k, v, quant, C)                      # heads are a leading axis
    out = stage(intattn.normalise(o, l))                                         # (head, query, dp)
    if rows is not None:
        i, view = part("out", rows.queries, rows.q0, lq)
        view[i] = out
        return
    if op["out_chunked"]:                       # (chunk, head, query, C): chunk j = channels j C .. j C + C - 1
        out = out.reshape(H, lq, dp // C, C).transpose(2, 0, 1, 3)
    ddr[at["out"]:at["out"] + H * lq * dp * eb] = np.ascontiguousarray(out).view(np.uint8).reshape(-1)


def relayout(cfg, ddr, op, at):
    """sw.runtime.layout.compile_chunks_to_planar: per C tokens of a chunk, A^T times the m B tiles
    (selection matrices) through the output stage with per-row parameters, into the planes."""
    from sw.compile.conv import PAD, FmapLayout
    R, C = cfg.rows, cfg.cols
    ch, h, w, H = (op[n] for n in ("channels", "height", "width", "heads"))
    m, T = C // R, h * w
    K, n = m * C, ch * T // (C * C)                                   # chunks of C tokens x C channels
    a = ddr[at["in"]:at["in"] + ch * T].view(np.int8).reshape(n, K, R).astype(np.float32)
    b = ddr[at["B"]:at["B"] + m * K * C].view(np.int8).reshape(m, K, C).astype(np.float32)
    acc = np.einsum("nkr,tkc->ntrc", a, b)                            # K <= 1024: float32 sums exact (F32_EXACT_K)
    bias, mult, shift = (p_[0, :R, None] for p_ in params(ddr, at["params"], 1, cfg))   # row r: channel r
    y = OutputStage(bias, mult, shift, False, False, K << 14)(acc)    # (chunk, tile, row, token)
    # chunk (j, head, token tile) -> channel head d + j C + tile R + row, tokens of the tile
    y = y.reshape(ch // H // C, H, T // C, m, R, C).transpose(1, 0, 3, 4, 2, 5).reshape(ch, h, w)
    out_l = FmapLayout(ch, h, w, C)
    _planes(ddr, at["out"], out_l).view(np.int8)[:, PAD:PAD + h, out_l.left:out_l.left + w] = y



def rows_to_planar(cfg, ddr, op, at):
    """sw.runtime.layout.compile_rows_to_planar: token rows -> the map's pixels in their planes (the STOREs write
    those and no margin byte)."""
    from sw.compile.conv import PAD, FmapLayout
    from sw.runtime.layout import TokenRowLayout
    ch, h, w = (op[n] for n in ("channels", "height", "width"))
    rows_l, out_l = TokenRowLayout(h * w, ch, cfg.cols), FmapLayout(ch, h, w, cfg.cols)
    x = ddr[at["in"]:at["in"] + rows_l.size].reshape(h, w, rows_l.pitch)[:, :, :ch]
    _planes(ddr, at["out"], out_l)[:, PAD:PAD + h, out_l.left:out_l.left + w] = x.transpose(2, 0, 1)


def planar_to_rows(cfg, ddr, op, at):
    """sw.runtime.layout.compile_planar_to_rows: the map's pixels -> token rows (every byte of them)."""
    from sw.compile.conv import PAD, FmapLayout
    from sw.runtime.layout import TokenRowLayout
    ch, h, w = (op[n] for n in ("channels", "height", "width"))
    in_l, rows_l = FmapLayout(ch, h, w, cfg.cols), TokenRowLayout(h * w, ch, cfg.cols)
    x = _planes(ddr, at["in"], in_l)[:, PAD:PAD + h, in_l.left:in_l.left + w].view(np.int8)
    rows = x.reshape(ch, h * w).T
    if op["order"]:                             # window order: token (y, x) at its window row
        rows = window_partition(rows.reshape(1, h, w, ch), op["order"])[0].reshape(h * w, ch)
    ddr[at["out"]:at["out"] + rows_l.size] = rows_l.pack(rows)
