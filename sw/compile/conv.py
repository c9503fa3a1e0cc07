"""Compiler for the convolution engine: a quantised conv2d (dense or depthwise) -> DDR image + descriptors.

The overlay's feature-map layout (`FmapLayout`, one for every convolution): planar, channels
first. Plane c holds PAD rows of zeros, the H image rows, PAD rows of zeros; each row holds
LEFT = C (array columns) zero elements, the W pixels, then zeros up to the pitch
(LEFT + roundup(W + PAD, C) elements). Element (c, y, x) is at
    ((c * (H + 2*PAD) + PAD + y) * pitch + LEFT + x) * element_bytes
so every padding pixel of a convolution with padding <= PAD is a real zero in DDR (the
engine needs no border logic), every output row segment starts on an AXI beat, and a
following layer reads a stored output map as it is (stores write only valid columns).

Mapping onto the systolic array: A = weights (R output channels per tile, K = Cin*k*k
entries in torch's (ci, ky, kx) order), B = on-the-fly im2col (C output pixels of one
output row per tile, LOAD target IM2COL), accumulator rows = output channels, so STORE
uses per-row parameters (param_rows) and writes each row into its channel's plane.
Depthwise: each R-channel tile gets its own B tile (its R channels) and block-diagonal
weights (row i only sees channel i), so 1 column of R does useful work.

Schedule: output-channel tiles in blocks whose weights stay resident in half of the A
scratchpad; per block, every output pixel tile (oy, ox0) loads its B tile once (dense) and
runs all the block's channel tiles on it. Halves of A, B and PARAM alternate, accumulator
regions rotate, and every descriptor carries exact wait counts (as sw/compile/linear.py). With a
single channel tile and input chunk (short reductions: the mask downsampler's 1 -> 4 and
4 -> 16), output rows are grouped: one IM2COL load, COMPUTE and STORE per group of rows.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from golden_model import intconv
from golden_model.intops import MAX_K
from hw import isa
from hw.limits import DW_K_MAX, MAX_KERNEL
from hw.limits import im2col_row_beats as row_beats
from sw.compile.linear import (ALIGN, CompileError, Program, gc_paused, lay_out_image, pack_descriptors,
                               schedule_runs)

PAD = 3                       # zero rows/columns kept around every plane: paddings 0..3
STRIDES = (1, 2, 4)
ROW_GROUP_ENTRIES = 256       # B entries an output-row group's IM2COL load gathers at least (when it can)


@dataclass(frozen=True)
class FmapLayout:
    """Where each element of a (channels, height, width) feature map lives in DDR."""
    channels: int
    height: int
    width: int
    cols: int                  # the array's C: row segments of C elements are stored at once
    element_bytes: int = 1     # 1: int8, 4: int32

    @property
    def left(self) -> int:
        return self.cols

    @property
    def pitch(self) -> int:
        """Elements per row."""
        return self.left + -(-(self.width + PAD) // self.cols) * self.cols

    @property
    def plane_rows(self) -> int:
        return self.height + 2 * PAD

    @property
    def row_bytes(self) -> int:
        return self.pitch * self.element_bytes

    @property
    def plane_bytes(self) -> int:
        return self.plane_rows * self.row_bytes

    # What a STORE of output rows needs from any output layout (sw.runtime.layout.TokenTileLayout too):
    @property
    def channel_pitch(self) -> int:
        """Bytes from pixel (c, y, x) to (c + 1, y, x)."""
        return self.plane_bytes

    @property
    def row_pitch(self) -> int:
        """Bytes from pixel (c, y, x) to (c, y + 1, x)."""
        return self.row_bytes

    @property
    def size(self) -> int:
        return self.channels * self.plane_bytes

    def offset(self, c: int, y: int, x: int) -> int:
        """Byte offset of element (c, y, x); y and x may reach into the zero margins (>= -PAD)."""
        return ((c * self.plane_rows + PAD + y) * self.pitch + self.left + x) * self.element_bytes

    def pack(self, x: np.ndarray) -> np.ndarray:
        dtype = np.int8 if self.element_bytes == 1 else np.dtype("<i4")
        full = np.zeros((self.channels, self.plane_rows, self.pitch), dtype)
        full[:, PAD:PAD + self.height, self.left:self.left + self.width] = x
        return full.reshape(-1).view(np.uint8)

    def unpack(self, raw: np.ndarray) -> np.ndarray:
        dtype = np.int8 if self.element_bytes == 1 else np.dtype("<i4")
        full = np.frombuffer(np.ascontiguousarray(raw[:self.size]).tobytes(), dtype)
        full = full.reshape(self.channels, self.plane_rows, self.pitch)
        return full[:, PAD:PAD + self.height, self.left:self.left + self.width].astype(
            np.int8 if self.element_bytes == 1 else np.int32)


@dataclass
class ConvProgram(Program):
    out_layout: FmapLayout | None = None

    ROLES = {"descriptors": "program", "A": "weight", "coef": "weight", "params": "weight", "in": "input",
             "out": "output"}

    def unpack_out(self, raw: np.ndarray) -> np.ndarray:
        return self.out_layout.unpack(raw)


def supported(cfg, k: int, stride: int, padding: int) -> str | None:
    """Why the convolution engine cannot run this convolution (None: it can)."""
    if "conv" not in cfg.engines:
        return "the overlay has no convolution engine"
    if not 1 <= k <= MAX_KERNEL:
        return f"kernel {k} outside 1..{MAX_KERNEL}"
    if stride not in STRIDES:
        return f"stride {stride} not one of {STRIDES}"
    if not 0 <= padding <= PAD:
        return f"padding {padding} outside 0..{PAD}"
    if cfg.rows > cfg.cols:
        return "per-row parameters need rows <= cols"
    return None


@gc_paused
def compile_conv2d(cfg, x, w, bias=None, multiplier=None, shift=None, *, stride=1, padding=0, depthwise=False,
                   relu=False, out_int32=False, base_addr: int = 0, max_ddr_bytes: int = 1 << 30,
                   out_layout=None) -> ConvProgram:
    """x: int8 (Cin, H, W); w: int8 (Cout, Cin, K, K), or (C, 1, K, K) with depthwise.
    `out_layout`: a layout class (channels, height, width, cols, element_bytes) for the output;
    default the planar FmapLayout (sw.runtime.layout.TokenTileLayout writes attention operands)."""
    if base_addr % ALIGN:
        raise CompileError(f"DDR buffer address {base_addr:#x} is not {ALIGN}-byte aligned")
    x, w = np.asarray(x), np.asarray(w)
    if x.dtype != np.int8 or w.dtype != np.int8 or x.ndim != 3 or w.ndim != 4:
        raise CompileError(f"x must be int8 (C, H, W) and w int8 (Cout, Cin, K, K); got {x.dtype} {x.shape}, "
                           f"{w.dtype} {w.shape}")
    cin, h, wd = x.shape
    cout, wc, k, k2 = w.shape
    if k != k2 or (depthwise and (cout != cin or wc != 1)) or (not depthwise and wc != cin):
        raise CompileError(f"weights {w.shape} do not fit a {'depthwise ' if depthwise else ''}convolution of "
                           f"{cin} channels")
    why = supported(cfg, k, stride, padding)
    if why:
        raise CompileError(f"convolution engine: {why}")
    ho, wo = intconv.out_size(h, k, stride, padding), intconv.out_size(wd, k, stride, padding)
    if ho < 1 or wo < 1:
        raise CompileError(f"{k}x{k} kernel with padding {padding} does not fit a {h}x{wd} input")
    if not out_int32 and (multiplier is None or shift is None):
        raise CompileError("int8 output needs per-channel multiplier and shift")
    R, C, DB = cfg.rows, cfg.cols, cfg.beat_bytes
    kk = k * k
    if (1 if depthwise else cin) * kk > MAX_K:
        raise CompileError(f"reduction {cin * kk} exceeds {MAX_K}: int32 accumulation could overflow")
    bias = np.broadcast_to(np.asarray(0 if bias is None else bias, np.int64), (cout,))
    multiplier = np.broadcast_to(np.asarray(0 if multiplier is None else multiplier, np.int64), (cout,))
    shift = np.broadcast_to(np.asarray(0 if shift is None else shift, np.int64), (cout,))
    a_half, b_half, p_half = cfg.a_depth // 2, cfg.b_depth // 2, cfg.param_depth // 2
    regions_acc = cfg.acc_depth // R
    if regions_acc < 2 or p_half < 1:
        raise CompileError("accumulator or parameter scratchpad too small to double-buffer")
    in_l = FmapLayout(cin, h, wd, C)
    out_l = (out_layout or FmapLayout)(cout, ho, wo, C, 4 if out_int32 else 1)
    if in_l.size + out_l.size > max_ddr_bytes:     # before planning: a huge map fails at once
        raise CompileError(f"convolution needs more than {in_l.size + out_l.size} bytes of DDR for its feature "
                           f"maps, more than the {max_ddr_bytes} allowed")
    if in_l.plane_rows >= 1 << 14:
        raise CompileError(f"{h} rows: planes of more than {(1 << 14) - 1 - 2 * PAD} rows do not fit a descriptor")

    # ---- channel tiles (R output channels) and the input channel chunks each one reduces over
    mt = -(-cout // R)
    ntile_k = R * kk if depthwise else cin * kk        # A entries per channel tile (depthwise: block-diagonal)
    if depthwise:
        if R * kk > b_half or R * kk > a_half:
            raise CompileError(f"depthwise {k}x{k}: {R * kk} entries exceed half a scratchpad")
        chunks = [(0, None)]                             # its own R channels
    else:
        # Chunks of input channels whose im2col fits half of B; starts beat-aligned in the A tile.
        per = max(1, b_half // kk, 1)
        per = min(per, a_half // kk)
        if per < cin:
            step = DB // np.gcd(DB, kk * R)
            per = per // step * step
            if per < 1:
                raise CompileError(f"{k}x{k} kernel: one input channel's im2col does not fit the scratchpads")
        chunks = [(c0, min(per, cin - c0)) for c0 in range(0, cin, per)]
    single = len(chunks) == 1
    # Blocks of channel tiles whose weights stay resident (single chunk only).
    nb = max(1, min(a_half // ntile_k, p_half, mt)) if single else 1

    # ---- DDR regions
    a_stride = -(-ntile_k * R // DB) * DB
    x_tiles = -(-wo // C)
    # The engine reads whole row spans: the last tile of the last row may run past the map.
    span_end = max(in_l.offset(cin - 1, (ho - 1) * stride - padding + k - 1, (x_tiles - 1) * C * stride - padding)
                   // DB * DB + row_beats(cfg, k, stride, DB - 1) * DB, in_l.size)
    sizes = {"A": mt * a_stride, "params": mt * C * isa.PARAM_CHANNEL_BYTES, "in": span_end, "out": out_l.size}

    # ---- output rows per command: when one channel tile reads one input-channel chunk, an IM2COL load
    # gathers several output rows, one COMPUTE runs their tiles back to back and one STORE writes them.
    # A short reduction (9 entries for one channel of 3x3) would otherwise pay each command's start-up
    # and descriptor fetch per tile. Enough rows to amortise them, few enough that the first load (not
    # overlapped with compute) stays short; their accumulator regions stay contiguous (double-buffered).
    ntile_b = cin * kk
    group = load_rows = 1      # output rows per COMPUTE / STORE, per IM2COL load (a multiple of group)
    if single and not depthwise and nb == 1:
        group = max(1, min(isa.MAX_TILES, regions_acc // 2, b_half // ntile_b, -(-ROW_GROUP_ENTRIES // ntile_b), ho))
        load_rows = group * max(1, min(b_half // (ntile_b * group), -(-ROW_GROUP_ENTRIES // (ntile_b * group)),
                                       isa.MAX_TILES // group))

    im2col_fields = dict(kernel_last=k - 1, stride_log2=stride.bit_length() - 1, stride=in_l.row_bytes,
                         plane_rows=in_l.plane_rows)

    # ---- ops
    ops = []
    tile_no = 0
    step = 0
    blk_no = 0
    for t0 in range(0, mt, nb):
        tiles = list(range(t0, min(t0 + nb, mt)))
        ha, hp = blk_no % 2, blk_no % 2
        blk_no += 1
        a_loads, p_loads = [], []
        if single:
            a_loads = [dict(target="A", src=("A", t * a_stride), count=ntile_k, sp=ha * a_half + i * ntile_k,
                            res=("A", ha)) for i, t in enumerate(tiles)]
        p_loads = [dict(target="PARAM", src=("params", t * C * isa.PARAM_CHANNEL_BYTES), count=1,
                        sp=hp * p_half + i, res=("P", hp)) for i, t in enumerate(tiles)]
        first_in_block = True
        if group > 1:
            (t,) = tiles
            co0, rows = t * R, min(R, cout - t * R)
            for oy_l, xt in itertools.product(range(0, ho, load_rows), range(x_tiles)):
                n_load = min(load_rows, ho - oy_l)
                ox0 = xt * C
                hb = step % 2
                step += 1
                src = in_l.offset(0, oy_l * stride - padding, ox0 * stride - padding)
                loads = a_loads + p_loads if first_in_block else []
                first_in_block = False
                loads.append(dict(target="IM2COL", src=("in", src // DB * DB), count=cin, sp=hb * b_half,
                                  res=("B", hb), fields=dict(im2col_fields, col_offset=src % DB, out_rows_last=n_load - 1)))
                for oy0 in range(oy_l, oy_l + n_load, group):
                    n_out = min(group, oy_l + n_load - oy0)
                    region = tile_no % (regions_acc // group) * group
                    tile_no += 1
                    regions = list(range(region, region + n_out))
                    store = dict(rows=rows, acc=region, acc_regions=regions, param=hp * p_half, p=("P", hp),
                                 dst=("out", out_l.offset(co0, oy0, ox0)), stride=out_l.channel_pitch,
                                 fields=dict(param_rows=1, cols=min(C, wo - ox0), tiles_last=n_out - 1,
                                             tile_stride=out_l.row_pitch))
                    ops.append(dict(loads=loads, a=("A", ha), b=("B", hb), a_base=ha * a_half,
                                    b_base=hb * b_half + (oy0 - oy_l) * ntile_b, k_last=ntile_b - 1, acc=region,
                                    acc_regions=regions, tiles=n_out, accumulate=0, store=store))
                    loads = []
            continue
        for oy in range(ho):
            for xt in range(x_tiles):
                ox0 = xt * C
                x0 = ox0 * stride - padding
                b_shared = None
                for i, t in enumerate(tiles):
                    co0, rows = t * R, min(R, cout - t * R)
                    for ci, (c0, nch) in enumerate(chunks):
                        if depthwise:
                            c0, nch = co0, rows
                        need_b = depthwise or not single or b_shared is None
                        loads = []
                        if first_in_block:
                            loads += a_loads + p_loads
                            first_in_block = False
                        if need_b:
                            hb = step % 2
                            step += 1
                            src = in_l.offset(c0, oy * stride - padding, x0)
                            b_shared = ("B", hb)
                            loads.append(dict(target="IM2COL", src=("in", src // DB * DB), count=nch,
                                              sp=hb * b_half, res=b_shared,
                                              fields=dict(im2col_fields, col_offset=src % DB)))
                        if not single:
                            hx = (step - 1) % 2
                            loads.append(dict(target="A", src=("A", t * a_stride + c0 * kk * R), count=nch * kk,
                                              sp=hx * a_half, res=("A", hx)))
                            a_res, a_base = ("A", hx), hx * a_half
                        else:
                            a_res, a_base = ("A", ha), ha * a_half + i * ntile_k
                        region = tile_no % regions_acc
                        last = ci == len(chunks) - 1
                        store = None
                        if last:
                            store = dict(rows=rows, acc=region, param=hp * p_half + i, p=("P", hp),
                                         dst=("out", out_l.offset(co0, oy, ox0)), stride=out_l.channel_pitch,
                                         fields=dict(param_rows=1, cols=min(C, wo - ox0)))
                        ops.append(dict(loads=loads, a=a_res, b=b_shared, a_base=a_base, b_base=int(b_shared[1]) * b_half,
                                        k_last=(nch * kk if not depthwise else rows * kk) - 1, acc=region,
                                        accumulate=int(ci > 0), store=store))
                    tile_no += 1

    descs, runs = schedule_runs(ops, R, relu, out_int32)

    # ---- addresses and the image
    offsets, image = lay_out_image(cfg, len(descs), sizes, base_addr, max_ddr_bytes, "convolution")
    _fill(cfg, image, offsets, x, w, bias, multiplier, shift, in_l, depthwise, mt, a_stride, ntile_k)
    sym, raw = pack_descriptors(descs, image, offsets, base_addr, "split the convolution")
    macs = cout * ho * wo * (1 if depthwise else cin) * kk
    op = dict(kind="conv", cin=cin, h=h, w=wd, cout=cout, k=k, stride=stride, padding=padding, depthwise=depthwise,
              mt=mt, a_stride=a_stride, ntile_k=ntile_k, relu=relu, out_int32=out_int32, out_layout=out_l)
    return ConvProgram(cfg, cout, (1 if depthwise else cin) * kk, ho * wo, out_int32, image, raw, offsets,
                       macs=macs, base_addr=base_addr, symbolic=sym, op=op, runs=runs, out_layout=out_l)


def _fill(cfg, image, offsets, x, w, bias, multiplier, shift, in_l, depthwise, mt, a_stride, ntile_k):
    R, C = cfg.rows, cfg.cols
    cout, k = w.shape[0], w.shape[2]
    kk = k * k
    off = offsets["in"][0]
    image[off:off + in_l.size] = in_l.pack(x)
    off = offsets["A"][0]
    for t in range(mt):
        co0, rows = t * R, min(R, cout - t * R)
        tile = np.zeros((ntile_k, R), np.int8)          # entry e = R int8, row i = channel co0 + i
        if depthwise:
            for i in range(rows):
                tile[i * kk:(i + 1) * kk, i] = w[co0 + i, 0].reshape(-1)
        else:
            tile[:, :rows] = w[co0:co0 + rows].reshape(rows, -1).T
        image[off + t * a_stride:off + t * a_stride + tile.size] = tile.reshape(-1).view(np.uint8)
    off = offsets["params"][0]
    for t in range(mt):
        co0, rows = t * R, min(R, cout - t * R)
        pad = C - rows
        z = np.zeros(pad, np.int64)
        p = isa.pack_params(np.concatenate([bias[co0:co0 + rows], z]),
                            np.concatenate([multiplier[co0:co0 + rows], z]),
                            np.concatenate([shift[co0:co0 + rows], z]))
        image[off + t * C * isa.PARAM_CHANNEL_BYTES:off + (t + 1) * C * isa.PARAM_CHANNEL_BYTES] = p


# ---------------------------------------------------------------- the depthwise engine (hw/conv/depthwise.py)

def dw_coefficients(w, bias, multiplier, shift) -> np.ndarray:
    """(C, 1, K, K) int8 weights + per-channel parameters -> (C, DW_COEF_BYTES) uint8, the DW bank's lane
    layout (hw.isa): K x K taps at byte ky * 8 + kx (unused taps zero), then the PARAM channel."""
    c, k = w.shape[0], w.shape[2]
    out = np.zeros((c, isa.DW_COEF_BYTES), np.uint8)
    taps = np.zeros((c, 8, 8), np.int8)
    taps[:, :k, :k] = w[:, 0]
    out[:, :isa.DW_TAP_BYTES] = taps.reshape(c, -1).view(np.uint8)
    out[:, isa.DW_TAP_BYTES:] = isa.pack_params(bias, multiplier, shift).reshape(c, -1)
    return out


def dw_supported(cfg, k: int, stride: int, padding: int, width: int, out_int32: bool) -> str | None:
    """Why the depthwise engine cannot run this depthwise convolution (None: it can)."""
    if "depthwise" not in cfg.engines:
        return "the overlay has no depthwise engine"
    if stride != 1:
        return f"stride {stride} (the engine runs stride 1, SAM 2's depthwise layers)"
    if k % 2 == 0 or not 1 <= k <= 7 or padding != (k - 1) // 2:
        return f"kernel {k} with padding {padding} (the engine runs odd K <= 7 with padding (K-1)/2)"
    if out_int32:
        return "int32 output (the engine requantises to int8)"
    pitch = FmapLayout(1, 1, width, cfg.cols).row_bytes
    if pitch > cfg.dw_row_bytes:
        return f"rows of {pitch} bytes exceed its line buffers ({cfg.dw_row_bytes} bytes)"
    return None


@gc_paused
def compile_depthwise(cfg, x, w, bias, multiplier, shift, *, padding, relu=False, base_addr: int = 0,
                      max_ddr_bytes: int = 1 << 30) -> ConvProgram:
    """A stride-1 "same" depthwise conv2d on the depthwise engine: per dw_channels channels one LOAD DW
    (their coefficients) and one DEPTHWISE (the whole planes, DDR to DDR, L = dw_lanes channels at a
    time). The hardware serialises both on the load unit's slot, so no descriptor needs a wait
    (sw.compile.linear.schedule orders COMPUTE/STORE pairs, which this engine has none of); the image layout
    and descriptor encoding are sw.compile.linear's."""
    if base_addr % ALIGN:
        raise CompileError(f"DDR buffer address {base_addr:#x} is not {ALIGN}-byte aligned")
    x, w = np.asarray(x), np.asarray(w)
    if x.dtype != np.int8 or w.dtype != np.int8 or x.ndim != 3 or w.shape != (x.shape[0], 1) + w.shape[2:] \
            or w.ndim != 4 or w.shape[2] != w.shape[3]:
        raise CompileError(f"depthwise: x must be int8 (C, H, W) and w int8 (C, 1, K, K); got {x.dtype} {x.shape}, "
                           f"{w.dtype} {w.shape}")
    c, h, wd = x.shape
    k = w.shape[2]
    why = dw_supported(cfg, k, 1, padding, wd, False)
    if why:
        raise CompileError(f"depthwise engine: {why}")
    if multiplier is None or shift is None:
        raise CompileError("int8 output needs per-channel multiplier and shift")
    L, DB, N = cfg.dw_lanes, cfg.beat_bytes, cfg.dw_channels
    bias = np.broadcast_to(np.asarray(0 if bias is None else bias, np.int64), (c,))
    multiplier = np.broadcast_to(np.asarray(multiplier, np.int64), (c,))
    shift = np.broadcast_to(np.asarray(shift, np.int64), (c,))
    lay = FmapLayout(c, h, wd, cfg.cols)
    if lay.plane_rows >= 1 << 14:
        raise CompileError(f"{h} rows: planes of more than {(1 << 14) - 1 - 2 * PAD} rows do not fit a descriptor")
    if 2 * lay.size > max_ddr_bytes:
        raise CompileError(f"depthwise convolution needs more than {2 * lay.size} bytes of DDR for its feature maps, "
                           f"more than the {max_ddr_bytes} allowed")
    sizes = {"coef": c * isa.DW_COEF_BYTES, "in": lay.size, "out": lay.size}
    descs = []
    for c0 in range(0, c, N):
        n = min(N, c - c0)
        descs.append(dict(opcode="LOAD", target="DW", src=("coef", c0 * isa.DW_COEF_BYTES),
                          count=n * isa.DW_COEF_BYTES // DB, sp_addr=0))
        descs.append(dict(opcode="DEPTHWISE", src=("in", lay.offset(c0, -padding, -lay.left)), stride=lay.row_bytes,
                          count=h, dw_channels=n, relu=int(relu), dw_out_addr=("out", lay.offset(c0, 0, 0)), dw_width=wd,
                          dw_plane_rows=lay.plane_rows, dw_kernel_last=k - 1, dw_col0=lay.left - padding))
    offsets, image = lay_out_image(cfg, len(descs), sizes, base_addr, max_ddr_bytes, "depthwise convolution")
    image[offsets["in"][0]:offsets["in"][0] + lay.size] = lay.pack(x)
    coef = dw_coefficients(w, bias, multiplier, shift).reshape(-1)
    image[offsets["coef"][0]:offsets["coef"][0] + coef.size] = coef
    sym, raw = pack_descriptors(descs, image, offsets, base_addr, "split the convolution")
    op = dict(kind="depthwise", channels=c, h=h, w=wd, k=k, padding=padding, relu=relu)
    prog = ConvProgram(cfg, c, k * k, h * wd, False, image, raw, offsets, macs=c * h * wd * k * k,
                       base_addr=base_addr, symbolic=sym, op=op, out_layout=lay)
    prog.array_macs = L * DW_K_MAX * DW_K_MAX        # the engine's multipliers (utilisation = useful / these)
    return prog
