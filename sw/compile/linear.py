"""Compiler: a quantised linear layer (M x K @ K x N) -> DDR image + command descriptors.

DDR image (one buffer, byte offsets from its start, every region 4 KiB aligned):
  descriptors   n x 32 bytes                      (hw.isa descriptor format)
  A             per M-tile (R rows): K entries of R int8   = A[m0:m0+R, k] (rows past M zero);
                with a_rows (load_t overlays): M token rows of Kp = K rounded up to C int8 (the layout a
                linear or the vector engine writes, sw.runtime.layout.TokenRowLayout), which transposing
                LOADs (hw.isa `transpose`) read as those entries: an activation in DDR is A as it is
  B             per N-tile (C cols): K entries of C int8   = B[k, n0:n0+C] (cols past N zero)
  params        per N-tile: C x 16 bytes (hw.isa.pack_params; channels past N zero)
  lut           (with `lut`) the store table: 256 int8, entry x + 128 (LOAD target LUT, once per run)
  res           (with `residual`) per N-tile: M rows of C int8 = residual[m, n0:n0+C] (cols past N zero);
                LOAD target RES puts a tile's rows at its accumulator rows before its STORE
  out           M rows x Np columns (Np = N rounded up to C), int8 or int32, row-major
The host slices out[:, :N].

Schedule. K fits half a scratchpad ("resident" path): the B scratchpad half holds
`nb` N-tiles, loaded once per N-block; the A half holds one M-tile, loaded once per
(N-block, M-tile); each A load feeds nb computes. Where the cycle model finds it faster (`_ramp_choice`), block 0
starts with a ramp (`_resident_order`): its first g x g tiles in K-chunks, so the first computes wait for pieces,
not whole tile pairs (GEMM 256^3 on zcu104's 32 x 32: 81.2 % -> 91.5 %; kv260 93.6 -> 96.9 %: `python -c "from
benchmarks.presets import run; run(rtl=())"`); timed only where it could save 1 % of the layer (`_ramp_may_pay`:
not pynq-z2's 256^3, nor most of SAM 2's layers, which gain < 0.1 % from it). Otherwise K is cut into chunks of
half a scratchpad accumulated in place (the accumulate flag), over blocks of mb M-tiles x
nb N-tiles whose accumulators stay put (`k_split_blocking` picks the blocking with the
fewest DDR bytes): each chunk's A and B pieces are loaded once per block. Halves alternate (double buffering); every descriptor carries
the exact completion counts it must wait for (hw.isa wait_* fields), computed here
from which scratchpad half / accumulator region / parameter entry each op touches.
"""
from __future__ import annotations

import gc
import math
import threading
from dataclasses import dataclass
from functools import lru_cache, wraps

import numpy as np

from golden_model.intops import MAX_K
from hw import isa
from sw.runtime.program import Emitter, frozen

ALIGN = 4096
#: The most descriptors of one unit a run may hold: the wait counts are 16-bit (hw.isa wait_* fields).
#: Longer programs are cut into runs (`split_runs`), each started on its own with fresh counters.
WAIT_LIMIT = (1 << isa.FIELDS["wait_load"][1]) - 1


class CompileError(ValueError):
    """The layer does not fit this overlay configuration (the message says why)."""


#: Descriptors the plan caches (_linear_plan, sw.compile.attention's) hold at most, all plans together, ~190 bytes
#: each as columns (sw.runtime.program.ColumnDescriptors; ~380 MB): every plan of a 256 px video track (~210,000)
#: and of a 1024 px image (~1.9 million packed, the vector engine's included).
PLAN_CACHE_DESCRIPTORS = 2_000_000


def plan_cache(fn):
    """lru_cache for a plan function (its result's [4]: the descriptors), bounded by PLAN_CACHE_DESCRIPTORS
    across every function it wraps instead of by a count of entries: a video frame's few dozen layers fit,
    so a steady-state frame compiles none, while a 1024 px image's big plans cannot pile up."""
    def wrapper(*args, **kwargs):
        key = (fn, args, tuple(kwargs.items()))
        plan = _PLANS.pop(key, None)
        if plan is None:
            plan = fn(*args, **kwargs)
            _PLANS.descriptors += len(plan[4])
        _PLANS[key] = plan                        # (re)inserted last: the most recently used
        while _PLANS.descriptors > PLAN_CACHE_DESCRIPTORS and len(_PLANS) > 1:
            _PLANS.descriptors -= len(_PLANS.pop(next(iter(_PLANS)))[4])
        return plan
    wrapper.__wrapped__ = fn
    wrapper.__doc__ = fn.__doc__
    return wrapper


def gc_paused(compiler):
    """`compiler` with Python's cyclic garbage collector paused while it runs (resumed after, when it was on). A
    compiler makes hundreds of thousands of small objects that live until it returns (a schedule's tuples and
    lists); each time enough have piled up the collector walks every object of the process (a 1024 px image's
    first compile: ~2 s of its ~9 in ~10 such walks). They hold no cycles to free; what garbage does is
    collected after. Nested and concurrent compiles share one pause (the first one in pauses, the last one
    out resumes)."""
    @wraps(compiler)
    def paused(*args, **kwargs):
        global _paused, _gc_was_on
        with _GC_LOCK:
            if not _paused:
                _gc_was_on = gc.isenabled()
                gc.disable()
            _paused += 1
        try:
            return compiler(*args, **kwargs)
        finally:
            with _GC_LOCK:
                _paused -= 1
                if not _paused and _gc_was_on:
                    gc.enable()
    return paused


_GC_LOCK = threading.Lock()
_paused = 0                 # compiles running under gc_paused
_gc_was_on = False          # whether the collector was on when the first of them started


class _PlanStore(dict):
    """The plans plan_cache keeps, oldest use first, and their descriptors' count."""
    descriptors = 0

    def clear(self) -> None:
        super().clear()
        self.descriptors = 0


_PLANS = _PlanStore()


@dataclass
class Program:
    cfg: object
    m: int
    k: int
    n: int
    out_int32: bool
    image: np.ndarray                  # uint8 DDR image (descriptors, operands, space for out)
    descriptors: list[dict]
    regions: dict[str, tuple[int, int]]   # name -> (offset, size) in the image
    macs: int = 0
    base_addr: int = 0
    symbolic: list[dict] | tuple | None = None   # the descriptors with (region, offset) addresses (sw.runtime.program;
                                                # a SplitDescriptors: shared by programs of the same shapes,
                                                # relinked fast)
    op: dict | None = None             # what it computes, by region name, for the sim's fast mode (sw/backends/fast.py)
    runs: list[tuple[int, int]] | None = None   # (first descriptor, count) per START; None: one run of all

    #: region -> its role for the runtime (sw.runtime.program.ROLES)
    ROLES = {"descriptors": "program", "A": "input", "B": "weight", "params": "weight", "lut": "weight",
             "res": "input", "out": "output"}

    @property
    def n_padded(self) -> int:
        return -(-self.n // self.cfg.cols) * self.cfg.cols

    def region(self, name: str) -> np.ndarray:
        """The compiled contents of one region (what the runtime writes into its buffer)."""
        off, size = self.regions[name]
        return self.image[off:off + size]

    def buffer_table(self) -> dict[str, tuple[int, int]]:
        """Region -> (DDR address, bytes) when the whole image sits at base_addr."""
        return {name: (self.base_addr + off, size) for name, (off, size) in self.regions.items()}

    def output(self, image: np.ndarray) -> np.ndarray:
        """The result from a DDR image the overlay has run on."""
        off, size = self.regions["out"]
        return self.unpack_out(image[off:off + size])

    def unpack_out(self, raw: np.ndarray) -> np.ndarray:
        """The (M, N) result from the bytes of the out region."""
        dtype = np.dtype("<i4") if self.out_int32 else np.int8
        out = np.frombuffer(np.ascontiguousarray(raw).tobytes(), dtype=dtype).reshape(self.m, self.n_padded)
        return out[:, :self.n].astype(np.int32 if self.out_int32 else np.int8)


def _align(x: int) -> int:
    return -(-x // ALIGN) * ALIGN

def lay_out(cfg, n_descriptors: int, sizes: dict, base_addr: int, max_ddr_bytes: int, what: str):
    """Place the descriptors and then each named region in one DDR image, each aligned.

    Returns ({region: (offset, size)}, the image's bytes); `what` names the program in the error."""
    offsets, pos = {}, 0
    for name, size in {"descriptors": n_descriptors * isa.DESCRIPTOR_BYTES, **sizes}.items():
        offsets[name] = (pos, size)
        pos = _align(pos + size)
    if pos > max_ddr_bytes or base_addr + pos > (1 << cfg.axi_addr_bits):
        raise CompileError(f"{what} needs {pos} bytes of DDR, more than the {max_ddr_bytes} allowed")
    return offsets, pos


def lay_out_image(cfg, n_descriptors: int, sizes: dict, base_addr: int, max_ddr_bytes: int, what: str):
    """lay_out's regions and a zeroed image of its bytes."""
    offsets, size = lay_out(cfg, n_descriptors, sizes, base_addr, max_ddr_bytes, what)
    return offsets, np.zeros(size, np.uint8)


def lay_out_head(cfg, n_descriptors: int, sizes: dict, base_addr: int, max_ddr_bytes: int, what: str):
    """lay_out's regions, the image's bytes and a zeroed buffer for the descriptors alone: what a plan packs its
    descriptors into (a plan's image would be the whole layer's, tens of MB to zero for a few hundred KB)."""
    offsets, size = lay_out(cfg, n_descriptors, sizes, base_addr, max_ddr_bytes, what)
    return offsets, size, np.zeros(n_descriptors * isa.DESCRIPTOR_BYTES, np.uint8)


@gc_paused
def compile_linear(cfg, a, b, bias, multiplier=None, shift=None, *, relu=False, out_int32=False, lut=None,
                   residual=None, add=None, a_rows: bool = False, base_addr: int = 0,
                   max_ddr_bytes: int = 1 << 30) -> Program:
    """Compile one layer for a DDR buffer at physical address `base_addr` (4 KiB aligned).

    `lut`: a golden_model.intvec.LutParams (GELU, sigmoid, ...) fused into the store: every int8 result
    goes through the table after the requantiser (golden_model.intvec.linear_lut), on overlays with the
    store_lut engine; the activation is never written unmapped nor read back.

    `residual` (M x N int8) and `add` (a golden_model.intvec.AddParams): the residual add fused into the
    store (golden_model.intvec.linear_add: add(result, residual, add), the result as add's a), on overlays
    with the store_add engine; the projection's output is never written alone nor read back.

    `a_rows`: the A region holds `a` as token rows (module docstring), loaded transposed (load_t overlays),
    so a runtime can bind it to the buffer another program wrote its output to."""
    if base_addr % ALIGN:
        raise CompileError(f"DDR buffer address {base_addr:#x} is not {ALIGN}-byte aligned")
    a = np.asarray(a)
    b = np.asarray(b)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise CompileError(f"shapes {a.shape} and {b.shape} are not M x K and K x N")
    if a.dtype != np.int8 or b.dtype != np.int8:
        raise CompileError(f"activations and weights must be int8 (got {a.dtype}, {b.dtype})")
    M, K = a.shape
    N = b.shape[1]
    _check_layer(M, K, N)
    if not out_int32 and (multiplier is None or shift is None):
        raise CompileError("int8 output needs per-channel multiplier and shift")
    table = _store_table(cfg, lut, out_int32)
    residual = _store_residual(cfg, residual, add, out_int32, M, N)
    bias = np.broadcast_to(np.asarray(0 if bias is None else bias, np.int64), (N,))
    multiplier = np.broadcast_to(np.asarray(0 if multiplier is None else multiplier, np.int64), (N,))
    shift = np.broadcast_to(np.asarray(0 if shift is None else shift, np.int64), (N,))
    if a_rows and "load_t" not in cfg.engines:
        raise CompileError(f"overlay {cfg.name!r} has no load_t engine (engines: {', '.join(cfg.engines)}): "
                           "A in token rows needs the transposing LOAD")
    plan = _linear_plan(cfg, M, K, N, bool(relu), bool(out_int32), table is not None, residual is not None,
                        base_addr, max_ddr_bytes, a_rows=bool(a_rows))
    offsets, head, size, sym, raw, runs, mt, nt, a_stride, b_stride = plan
    image = np.zeros(size, np.uint8)
    image[:head.size] = head
    _fill_operands(cfg, image, offsets, a, b, bias, multiplier, shift, mt, nt, a_stride, b_stride,
                   add if residual is not None else None, a_rows)
    if table is not None:
        image[offsets["lut"][0]:offsets["lut"][0] + isa.LUT_BYTES] = table.view(np.uint8)
    if residual is not None:
        rp = np.zeros((M, nt * cfg.cols), np.int8)
        rp[:, :N] = residual
        res = np.ascontiguousarray(rp.reshape(M, nt, cfg.cols).transpose(1, 0, 2))
        image[offsets["res"][0]:offsets["res"][0] + res.size] = res.reshape(-1).view(np.uint8)
    op = dict(kind="linear", m=M, k=K, mt=mt, nt=nt, a_stride=a_stride, b_stride=b_stride, relu=relu,
              out_int32=out_int32, lut=table is not None, add=residual is not None, a_rows=bool(a_rows))
    return Program(cfg, M, K, N, out_int32, image, frozen(raw), dict(offsets), macs=M * K * N, base_addr=base_addr,
                   symbolic=sym, op=op, runs=runs and list(runs))


def _check_layer(M: int, K: int, N: int) -> None:
    if min(M, K, N) < 1:
        raise CompileError(f"empty layer {M} x {K} x {N}")
    if K > MAX_K:
        raise CompileError(f"K={K} exceeds {MAX_K}: int32 accumulation could overflow")


def linear_descriptors(cfg, M: int, K: int, N: int, out_int32: bool = False) -> tuple[np.ndarray, tuple | None]:
    """The descriptor bytes and runs of compile_linear's program for an M x K x N layer (A in tiles, no fused
    epilogue, at address 0), without its data: what the placement prices (sw.compile.graph). The same plan
    (_linear_plan, cached), so the same bytes, without a layer's image to zero and fill."""
    _check_layer(M, K, N)
    plan = _linear_plan(cfg, M, K, N, False, bool(out_int32), False, False, 0, 1 << 30, a_rows=False)
    return plan[1], plan[5]


def k_split_blocking(cfg, mt: int, nt: int, K: int, a_rows: bool = False) -> tuple[int, int, int]:
    """(mb, nb, kc) for a layer whose K does not fit half a scratchpad: blocks of mb M-tiles x nb
    N-tiles whose accumulators stay put while K streams through in chunks of kc (A is read once per
    N-block, B once per M-block). The fastest of the blockings that fit, timed on the cycle model."""
    regions = max(1, cfg.acc_depth // cfg.rows // 2)
    return _fastest_blocking(cfg, K, min(mt, regions), min(nt, regions), a_rows)


def blocking_candidates(cfg, mt: int, nt: int, K: int, a_rows: bool = False) -> list[tuple[int, int, int]]:
    """Every (mb, nb, kc) that fits: mb x kc <= half of A, nb x kc <= half of B, mb x nb accumulator
    regions (half of them, so the next block's computes overlap this one's stores), nb parameter
    entries (half), a block's descriptors within one run's wait counts (a block is one accumulation:
    split_runs cannot cut it), chunks on AXI beats in both tiles (and in A's token rows, a_rows) and at least
    MIN_K_CHUNK long."""
    R, C = cfg.rows, cfg.cols
    a_half, b_half = cfg.a_depth // 2, cfg.b_depth // 2
    regions = max(1, cfg.acc_depth // R // 2)
    quantum = _k_quantum(cfg, a_rows)
    out = []
    for mb in range(1, min(mt, regions) + 1):
        for nb in range(1, min(nt, regions // mb, max(1, cfg.param_depth // 2)) + 1):
            kc = min(a_half // mb, b_half // nb, K) // quantum * quantum
            chunks = -(-K // max(kc, 1))
            # chunks of equal length: a short last chunk's computes would not cover the next block's loads
            kc = min(kc, -(-K // chunks // quantum) * quantum) if kc else kc
            if kc >= min(K, MIN_K_CHUNK) and max(mb * nb * chunks, (mb + nb) * chunks + nb) <= WAIT_LIMIT:
                out.append((mb, nb, kc))
    return out or [(1, 1, min(a_half, b_half) // quantum * quantum)]     # tiny scratchpads: a tile at a time


@lru_cache(maxsize=64)
def _fastest_blocking(cfg, K: int, mt: int, nt: int, a_rows: bool = False) -> tuple[int, int, int]:
    """The candidates within TIMED_TRAFFIC of the fewest DDR bytes, each timed on the cycle model over
    two blocks by two blocks of itself and up to three chunks (what ranks them over the whole layer: the
    same loads, computes and stores per step and block); once per overlay and K (a model has a handful).
    Ties go to fewer DDR bytes."""
    from sw.backends.cycles import cycles_only
    R, C = cfg.rows, cfg.cols
    traffic = {b: mt * R * K * -(-nt // b[1]) + nt * C * K * -(-mt // b[0])
               for b in blocking_candidates(cfg, mt, nt, K, a_rows)}
    least = min(traffic.values())
    best = None
    for mb, nb, kc in (b for b, t in traffic.items() if t <= TIMED_TRAFFIC * least):
        m, n = R * min(mt, 2 * mb), C * min(nt, 2 * nb)
        # uncached: the candidates' plans would push the model's own shapes out of _linear_plan's cache
        plan = _linear_plan.__wrapped__(cfg, m, min(K, 3 * kc), n, False, False, False, False, 0, 1 << 40,
                                        blocking=(mb, nb, kc), a_rows=a_rows)
        per_mac = cycles_only(cfg, plan[1], plan[5]) / (m * n * min(K, 3 * kc))
        key = (per_mac, traffic[mb, nb, kc])
        if best is None or key < best[0]:
            best = (key, (mb, nb, kc))
    return best[1]


#: The blockings timed are those within this factor of the fewest DDR bytes.
TIMED_TRAFFIC = 1.4
#: The shortest K chunk the blocked path uses: a chunk's compute must outlast the loads of the next.
MIN_K_CHUNK = 64


@lru_cache(maxsize=256)
def _ramp_choice(cfg, K: int, mt: int, nt: int, a_rows: bool, out_int32: bool) -> tuple[int, int, int] | None:
    """The resident ramp (g, P, SPLIT: `_resident_order`) for a layer of mt M-tiles x nt N-tiles (the caller's
    counts clamped: RAMP_TIMED_TILES, block 0 and one tile of block 1, what the ramp changes), the fastest of
    RAMP_CANDIDATES that fit (g + 2 <= A slots, g^2 <= accumulator regions, g <= both tile counts) timed on the cycle
    model over that sub-layer; None (no ramp) unless one is faster. Once per overlay, K and clamped counts."""
    from sw.backends.cycles import cycles_only
    R, C = cfg.rows, cfg.cols
    limit = min(cfg.a_depth // K - 2, mt, nt)
    cands = [(g, p, s) for g, p, s in RAMP_CANDIDATES if g <= limit and g * g <= cfg.acc_depth // R]
    if not cands:
        return None
    best, best_cycles = None, None
    for ramp in [None, *cands]:
        plan = _linear_plan.__wrapped__(cfg, mt * R, K, nt * C, False, out_int32, False, False, 0, 1 << 40,
                                        a_rows=a_rows, ramp=ramp)
        cycles = cycles_only(cfg, plan[1], plan[5])
        if best_cycles is None or cycles < best_cycles:
            best, best_cycles = ramp, cycles
    return best


def _ramp_may_pay(cfg, K: int, mt: int, nt: int, nb: int) -> bool:
    """Whether a resident ramp could save RAMP_MIN_SHARE of a layer of mt x nt tiles whose first block has nb
    N-tiles: it shortens at most the wait for block 0's B tiles and first A tile (their bytes at a beat a cycle),
    against the layer's mt x nt x K array cycles. Longer layers are not timed (`_ramp_choice`'s 10-100 ms):
    SAM 2 tiny's layers gain < 0.1 % from it (`sam2fpga profile`), a 256^3 GEMM on 32 x 32 10 %."""
    start = (nb * cfg.cols + cfg.rows) * K / cfg.beat_bytes
    return start >= RAMP_MIN_SHARE * mt * nt * K


#: The least share of a layer's array cycles a resident ramp must be able to save to be timed (`_ramp_may_pay`).
RAMP_MIN_SHARE = 0.01
#: The (g, P, SPLIT) `_ramp_choice` times: g x g tiles in P K-chunks, A and B loads in SPLIT LOADs.
RAMP_CANDIDATES = tuple((g, p, s) for g in (2, 3, 4, 5, 8) for p in (2, 4) for s in (1, 2))
#: The M-tiles `_ramp_choice` times a layer over (at most): the ramp's and a few after.
RAMP_TIMED_TILES = 10


#: Plans kept (plan_cache): a Hiera stage's blocks repeat a handful of shapes; a video frame repeats them all.
@plan_cache
def _linear_plan(cfg, M: int, K: int, N: int, relu: bool, out_int32: bool, fused_table: bool, fused_add: bool,
                 base_addr: int, max_ddr_bytes: int, blocking: tuple[int, int, int] | None = None,
                 a_rows: bool = False, ramp: tuple[int, int, int] | None | str = "auto"):
    """What compile_linear's program is for its shapes, whatever the data: the DDR layout, the packed
    descriptors and their fields (the symbolic ones with their addresses split out for relinking), the runs.
    Kept for the layers of a model that share shapes (a Hiera stage's blocks), whose descriptor lists are
    most of a compile's time. `ramp` (resident path): (g, P, SPLIT) (`_resident_order`), None for none, "auto"
    for `_ramp_choice`'s."""
    R, C = cfg.rows, cfg.cols
    mt, nt = -(-M // R), -(-N // C)
    a_half, b_half = cfg.a_depth // 2, cfg.b_depth // 2
    regions_acc = cfg.acc_depth // R
    if regions_acc < 2:
        raise CompileError(f"accumulator scratchpad ({cfg.acc_depth} rows) cannot double-buffer {R}-row tiles")
    if cfg.param_depth < 2:
        raise CompileError("parameter scratchpad needs at least 2 entries")

    ebytes = 4 if out_int32 else 1
    np_cols = nt * C
    # ---- DDR layout
    # Tiles start on AXI beats: the DMA reads whole, aligned beats.
    a_stride = -(-K * R // cfg.beat_bytes) * cfg.beat_bytes
    b_stride = -(-K * C // cfg.beat_bytes) * cfg.beat_bytes
    from sw.runtime.layout import TokenRowLayout
    a_pitch = TokenRowLayout(M, K, C).pitch          # a_rows: the token rows' pitch

    def a_load(mi, k0, count, sp, res):
        """LOAD A of M-tile mi's entries k0 .. k0 + count (a_rows: transposed from its token rows)."""
        if not a_rows:
            return paced(cfg, dict(op="LOAD", target="A", src=("A", mi * a_stride + k0 * R), count=count, sp=sp,
                                   res=res))
        return paced(cfg, dict(op="LOAD", target="A", src=("A", mi * R * a_pitch + k0), count=count, sp=sp, res=res,
                               fields=dict(transpose=1, t_rows_last=min(R, M - mi * R) - 1, stride=a_pitch)))
    if a_rows:
        a_stride = 0                                 # (no tiles in DDR)
    sizes = {"A": M * a_pitch if a_rows else mt * a_stride, "B": nt * b_stride,
             "params": nt * C * isa.PARAM_CHANNEL_BYTES,
             **({"lut": isa.LUT_BYTES} if fused_table else {}), **({"res": M * np_cols} if fused_add else {}),
             "out": M * np_cols * ebytes}

    # ---- the op list (before descriptors get their addresses)
    ops: list[dict] = []       # dicts with 'op' and resource annotations
    resident = K <= min(a_half, b_half)
    descs = runs = None
    order = None
    if resident:
        if ramp == "auto":
            nb = _resident_block(cfg, K, nt)
            ramp = _ramp_choice(                           # (a fused epilogue's too: the same schedule)
                cfg, K, min(mt, RAMP_TIMED_TILES), min(nt, nb + 1), a_rows, out_int32) if _ramp_may_pay(
                cfg, K, mt, nt, nb) else None
        order = _resident_order(cfg, M, K, N, out_int32, a_rows, a_stride, b_stride, a_pitch, ramp)
        if ramp and max(len(order[0]["acc"]), len(order[1][0])) > WAIT_LIMIT:    # (split_runs would not reload
            order = _resident_order(cfg, M, K, N, out_int32, a_rows, a_stride, b_stride, a_pitch, None)  # pieces)
    if SCHEDULE_ARRAYS and not (fused_table or fused_add):
        columns = (_resident_ops(order) if resident else
                   _blocked_ops(cfg, M, K, N, out_int32, a_rows, a_stride, b_stride, a_pitch,
                                blocking or k_split_blocking(cfg, mt, nt, K, a_rows)))
        if columns is not None:
            descs = _scheduled_columns(cfg, relu, out_int32, *columns[:2], a_pitch if a_rows else 0, columns[2])
    if descs is None and resident:          # (the op list: fused epilogues, several runs, the reference)
        op_cols, lds, _ = order
        keys = ("a_base", "b_base", "k_last", "acc", "accumulate", "res_a", "res_b", "store", "rows", "param",
                "res_p", "dst", "stride")
        by_op: dict = {}
        for j, kind, res, count, sp, src, mi in zip(*(c.tolist() for c in lds)):
            ld = dict(op="LOAD", target=("A", "B", "PARAM")[kind], src=(("A", "B", "params")[kind], src),
                      count=count, sp=sp, res=(("A", "B", "P")[kind], res))
            if kind == 0 and a_rows:
                ld["fields"] = dict(transpose=1, t_rows_last=min(R, M - mi * R) - 1, stride=a_pitch)
            by_op.setdefault(j, []).append(paced(cfg, ld))
        for j, (a_base, b_base, k_last, acc, accumulate, res_a, res_b, store, rows, param, res_p, dst,
                stride) in enumerate(zip(*(op_cols[k].tolist() for k in keys))):
            ops.append(dict(op="COMPUTE", loads=by_op.get(j, []), a=("A", res_a), b=("B", res_b), a_base=a_base,
                            b_base=b_base, k_last=k_last, acc=acc, accumulate=accumulate,
                            store=dict(rows=rows, acc=acc, param=param, p=("P", res_p), dst=("out", dst),
                                       stride=stride) if store else None))
    elif descs is None:
        # K does not fit half a scratchpad: a block of mb M-tiles x nb N-tiles keeps its accumulators
        # while K streams through in chunks; each chunk's A and B pieces are loaded once per block.
        mb, nb, kc = blocking or k_split_blocking(cfg, mt, nt, K, a_rows)
        step = blk = tile_no = 0
        chunks = list(range(0, K, kc))
        for mi0 in range(0, mt, mb):
            tiles_m = list(range(mi0, min(mi0 + mb, mt)))
            for nj0 in range(0, nt, nb):
                tiles_n = list(range(nj0, min(nj0 + nb, nt)))
                hp = blk % 2
                p_loads = [dict(op="LOAD", target="PARAM", src=("params", nj * C * isa.PARAM_CHANNEL_BYTES), count=1,
                                sp=hp * (cfg.param_depth // 2) + i, res=("P", hp)) for i, nj in enumerate(tiles_n)]
                regions = {(mi, nj): (tile_no + i) % regions_acc
                           for i, (mi, nj) in enumerate((mi, nj) for mi in tiles_m for nj in tiles_n)}
                tile_no += len(regions)
                for ci, k0 in enumerate(chunks):
                    kk = min(kc, K - k0)
                    h = step % 2
                    loads = [a_load(mi, k0, kk, h * a_half + i * kc, ("A", h)) for i, mi in enumerate(tiles_m)]
                    loads += [paced(cfg, dict(op="LOAD", target="B", src=("B", nj * b_stride + k0 * C), count=kk,
                                              sp=h * b_half + i * kc, res=("B", h))) for i, nj in enumerate(tiles_n)]
                    if ci == 0:
                        loads += [paced(cfg, ld) for ld in p_loads]
                    last = ci == len(chunks) - 1
                    first = True
                    for ia, mi in enumerate(tiles_m):
                        for ib, nj in enumerate(tiles_n):
                            region = regions[mi, nj]
                            ops.append(dict(op="COMPUTE", loads=loads if first else [],
                                            a=("A", h), b=("B", h),
                                            a_base=h * a_half + ia * kc, b_base=h * b_half + ib * kc, k_last=kk - 1,
                                            acc=region, accumulate=int(ci > 0),
                                            store=dict(rows=min(R, M - mi * R), acc=region,
                                                       param=hp * (cfg.param_depth // 2) + ib, p=("P", hp),
                                                       dst=("out", (mi * R * np_cols + nj * C) * ebytes),
                                                       stride=np_cols * ebytes) if last else None))
                            first = False
                    step += 1
                blk += 1

    if descs is None:
        if fused_table:
            fuse_store_table(cfg, ops)
        if fused_add:
            fuse_store_add(cfg, ops, M)
        descs, runs = schedule_runs(ops, R, relu, out_int32, stream=bool(order and order[2].stream))

    # ---- addresses
    from sw.runtime.program import SplitDescriptors
    offsets, size, head = lay_out_head(cfg, len(descs), sizes, base_addr, max_ddr_bytes, "layer")
    sym, raw = pack_descriptors(descs, head, offsets, base_addr, "split the layer")
    head.flags.writeable = False
    return (offsets, head, size, SplitDescriptors.of(sym), frozen(raw), runs and tuple(runs), mt, nt, a_stride,
            b_stride)


#: Whether _linear_plan schedules a layer without a fused epilogue that fits one run as NumPy columns
#: (_resident_ops, _blocked_ops, _scheduled_columns; False: the op list through `schedule`, the reference they
#: are tested against).
SCHEDULE_ARRAYS = True


def _scheduled_columns(cfg, relu: bool, out_int32: bool, ops: dict, loads: list, a_pitch: int,
                       window: "LoadWindows") -> Emitter:
    """`schedule` of a regular op list given as columns: the same descriptors in the same order, made with
    NumPy instead of an op dict and a descriptor at a time (a 65,536-token layer has ~50,000 computes).

    ops: per COMPUTE (in order) a_base, b_base, k_last, acc (region), accumulate, res_a, res_b (the ids of its A
    and B resources), and its STORE's: store (0: none), rows, param, res_p (its PARAM resource), dst (offset in
    "out"), stride. loads: (op, spread, hazard, after, kind, res, count, sp, src, t_rows) in `schedule`'s order,
    hazard the last op before `op` using the load's resource (None: none), `after` how many ops after it the load
    may go (1; 2 for a PARAM entry, which the STORE after the next compute reads), kind 0 A (src in "A"), 1 B
    ("B"), 2 PARAM ("params"), t_rows: an A load's rows (transposed from token rows where a_pitch). Every load is
    paced (LoadWindows, `window`: a Python loop over the loads alone); the rest is computed: the dispatch order
    (bucket -1's loads; per op its COMPUTE, the previous op's STORE, the loads after it), the LOADs' numbers,
    each descriptor's waits from the last users (before it in that order) of what it overwrites or reads."""
    R, beat = cfg.rows, cfg.beat_bytes
    n = len(ops["acc"])
    j = np.arange(n)
    entry = [isa.entry_bytes(cfg, t) for t in ("A", "B", "PARAM")]
    by_field = list(zip(*loads))
    by_field[2] = [-1 if x is None else x for x in by_field[2]]       # (the hazard alone may be None)
    ld_op, ld_spread, ld_hz, ld_after, ld_kind, ld_res, ld_count, ld_sp, ld_src, ld_rows = (
        np.array(c, np.int64) for c in by_field)
    hazard = ld_hz >= 0                                        # (an op index; None: none)
    ld_bucket = np.where(hazard, ld_hz + ld_after, -1)
    paced = np.flatnonzero(ld_op > 0)
    cycles = np.where((ld_kind == 0) & bool(a_pitch), -(-ld_count // beat) * np.maximum(ld_rows, beat),
                      -(-ld_count * np.array(entry, np.int64)[ld_kind] // beat)) + LOAD_OVERHEAD
    ld_bucket[paced] = window.place_all(np.maximum(ld_bucket[paced], 0).tolist(), (ld_op[paced] - 1).tolist(),
                                        cycles[paced].tolist(), hazard[paced].tolist(), ld_spread[paced].tolist())
    ld_bucket = np.minimum(ld_bucket, ld_op - 1)
    nl = len(loads)
    order = np.argsort(ld_bucket, kind="stable")              # the LOADs in dispatch order
    done_at = np.empty(nl, np.int64)
    done_at[order] = np.arange(1, nl + 1)

    # ---- positions
    store = ops["store"].astype(bool)
    after_store = np.concatenate([[0], store[:-1]]).astype(np.int64)    # op j's COMPUTE is followed by op j-1's STORE
    per_bucket = np.bincount(ld_bucket + 1, minlength=n + 1)   # [bucket -1, 0, .., n - 1]
    total = n + int(store.sum()) + nl

    def excl(x):
        return np.concatenate([[0], np.cumsum(x)[:-1]])
    pos_c = per_bucket[0] + j + excl(after_store) + excl(per_bucket[1:])
    stores = np.flatnonzero(store)
    pos_s = np.where(stores < n - 1, pos_c[np.minimum(stores + 1, n - 1)] + 1, total - 1)
    n_store = np.cumsum(store)                                 # op j's STORE is the n_store[j]-th
    b_sorted = ld_bucket[order]
    rank = np.arange(nl) - np.searchsorted(b_sorted, b_sorted)
    bb = np.maximum(b_sorted, 0)
    pos_l = np.empty(nl, np.int64)
    pos_l[order] = np.where(b_sorted < 0, 0, pos_c[bb] + 1 + after_store[bb]) + rank

    # ---- waits
    wait_load = np.zeros(n, np.int64)
    np.maximum.at(wait_load, ld_op, done_at)
    # a COMPUTE that starts its accumulator region waits for the last STORE from it dispatched before it: the
    # STORE of the last op j' <= j - 2 with that region
    span = n + 2
    skey = ops["acc"][stores] * span + stores
    by = np.argsort(skey, kind="stable")
    q = np.searchsorted(skey[by], ops["acc"] * span + j - 2, side="right") - 1
    last = stores[by][np.maximum(q, 0)]
    hit = (q >= 0) & (ops["acc"][last] == ops["acc"]) & (ops["accumulate"] == 0)
    wait_store = np.where(hit, n_store[last], 0)
    # A LOAD waits for the last reader of what it overwrites, in dispatch order: COMPUTE j (its A and B) at time
    # 3 j, op j's STORE (its PARAM entry) at 3 (j + 1) + 1, the loads of bucket b at 3 b + 2.
    ev_res = np.concatenate([ops["res_a"], ops["res_b"], ops["res_p"][stores]])
    ev_t = np.concatenate([3 * j, 3 * j, 3 * stores + 4])
    ev_cnt = np.concatenate([j + 1, j + 1, n_store[stores]])
    ev_store = np.arange(len(ev_res)) >= 2 * n
    span = 3 * n + 8
    key = ev_res * span + ev_t
    by = np.argsort(key, kind="stable")
    q = np.searchsorted(key[by], ld_res * span + 3 * ld_bucket + 2, side="right") - 1
    at = by[np.maximum(q, 0)]
    hit = (q >= 0) & (ev_res[at] == ld_res)
    cnt = np.where(hit, ev_cnt[at], 0)
    by_store = hit & ev_store[at]

    # ---- the descriptors
    LOAD, COMPUTE, STORE = (isa.OPCODES[u] for u in ("LOAD", "COMPUTE", "STORE"))
    descs = Emitter()
    descs.reserve(total)
    zeros = np.zeros(n, np.int64)

    def const(v, m):
        return np.full(m, v, np.int64)
    descs.add_block(_COMPUTE_KEYS[0], pos_c, np.stack(
        [const(COMPUTE, n), ops["a_base"], ops["b_base"], ops["k_last"], ops["acc"] * R, ops["accumulate"],
         wait_load, zeros, wait_store], axis=1))
    m = len(stores)
    descs.add_block(_STORE_KEYS + _WAIT_KEYS, pos_s, np.stack(
        [const(STORE, m), ops["rows"][stores], ops["acc"][stores] * R, ops["param"][stores], const(int(relu), m),
         const(int(out_int32), m), ops["stride"][stores], const(0, m), stores + 1, const(0, m)], axis=1),
        "out", ops["dst"][stores])
    waits = [np.zeros(nl, np.int64), np.where(by_store, 0, cnt), np.where(by_store, cnt, 0)]
    for kind, (target, name) in enumerate((("A", "A"), ("B", "B"), ("PARAM", "params"))):
        sel = np.flatnonzero(ld_kind == kind)
        m = len(sel)
        cols = [const(LOAD, m), const(isa.TARGETS[target], m), ld_count[sel], ld_sp[sel]]
        keys = _LOAD_KEYS
        if a_pitch and kind == 0:
            cols += [const(1, m), ld_rows[sel] - 1, const(a_pitch, m)]
            keys = _LOAD_KEYS + ("transpose", "t_rows_last", "stride")
        descs.add_block(keys + _WAIT_KEYS, pos_l[sel], np.stack(cols + [w[sel] for w in waits], axis=1),
                        name, ld_src[sel])
    return descs


def _op_columns(**cols) -> dict:
    return {k: np.asarray(v, np.int64) for k, v in cols.items()}


def _resident_block(cfg, K: int, nt: int) -> int:
    """N-tiles a block of the resident path holds: as many as half of B (K entries each) and half of PARAM take."""
    return max(1, min(cfg.b_depth // 2 // K, cfg.param_depth // 2, nt))


def _k_quantum(cfg, a_rows: bool) -> int:
    """The entries a K piece's bounds are a multiple of: on AXI beats in both tiles (and in A's token rows)."""
    beat = cfg.beat_bytes
    return math.lcm(beat // math.gcd(beat, cfg.rows), beat // math.gcd(beat, cfg.cols), beat if a_rows else 1)


def _cut(count: int, parts: int, quantum: int) -> list[int]:
    """Bounds of `count` cut into at most `parts` pieces on `quantum` (all but the last of equal length)."""
    step = -(-(-(-count // parts)) // quantum) * quantum
    return list(range(0, count, step)) + [count]


def _resident_order(cfg, M: int, K: int, N: int, out_int32: bool, a_rows: bool, a_stride: int, b_stride: int,
                    a_pitch: int, ramp: tuple[int, int, int] | None):
    """The resident schedule (K fits half a scratchpad), which both its columns (`_resident_ops`) and its op list
    (`_linear_plan`'s, the reference and the way of fused epilogues and several runs) are made from:
    (ops, loads, windows), ops as `_scheduled_columns` takes them, loads as columns (op, kind, res, count, sp,
    src, M-tile) in the order `schedule` places them (per op: A, B, PARAM).

    Without a ramp (None): the steps, an M-tile each, of a block's nb N-tiles; op j reads A half (step % 2) and
    B tile (block % 2, i), its STORE the PARAM entry (block % 2, i) and accumulator region j % regions; a step's
    first op loads its A tile, a block's first step each B tile and PARAM entry.

    With a ramp (g, P, SPLIT) the first computes wait for less than a tile pair (issue 15: a 32 x 32 array's
    first block brings one 525-cycle B tile per 256-cycle compute): block 0's first g x g tiles go in P K-chunks,
    chunk-major, each chunk in shell order (A_s with B_0 .. B_(s-1), then B_s with A_0 .. A_s: s A and s B
    pieces feed s^2 computes), then its N-tiles g.. over M-tiles < g, then the M-tiles g.. as without. A lives
    in slots of K entries (the ramp's g A tiles at once, then two for the other steps, as the halves), the ramp's
    loads of at least 32 entries are cut in SPLIT LOADs (the descriptor fetch shares the read channel: it waits
    behind a long LOAD's beats), a PARAM entry loads with its tile's last chunk (only STOREs read it) and the
    LoadWindows stream. A chunk but the last reads
    its own resources (its loads wait for no reader of another piece); the last and whole tiles the slot's or
    tile's (after every piece's readers). Needs g + 2 slots, g^2 accumulator regions (`_ramp_choice`)."""
    R, C = cfg.rows, cfg.cols
    mt, nt = -(-M // R), -(-N // C)
    a_half, b_half, p_half = cfg.a_depth // 2, cfg.b_depth // 2, cfg.param_depth // 2
    regions = cfg.acc_depth // R
    nb = _resident_block(cfg, K, nt)
    blocks = [(nj0, min(nb, nt - nj0)) for nj0 in range(0, nt, nb)]
    g, P, split = ramp or (1, 1, 1)
    a_slot, slots = (K, cfg.a_depth // K) if ramp else (a_half, 2)
    quantum = _k_quantum(cfg, a_rows)
    kb = np.array(_cut(K, P, quantum), np.int64)
    P = len(kb) - 1
    parts = []                                   # (block, M-tile, tile of the block, piece: -1 the whole tile)
    ramp_ops = 0                                 # the ramp's ops (its tiles' M-tiles and N-tiles in block 0)
    for b, (_, w) in enumerate(blocks):
        gg = min(g, mt, w) if b == 0 else 1
        if gg > 1:
            shell = [(m, i, p) for p in range(P) for s in range(gg)
                     for m, i in [(s, i) for i in range(s)] + [(m, s) for m in range(s + 1)]]
            parts.append((b, *np.array(shell, np.int64).T))
            parts.append((b, np.tile(np.arange(gg), w - gg), np.repeat(np.arange(gg, w), gg), -1))
            ramp_ops = len(shell) + gg * (w - gg)
        else:
            gg = 0
        parts.append((b, np.repeat(np.arange(gg, mt), w), np.tile(np.arange(w), mt - gg), -1))
    blk = np.concatenate([np.full(len(m), b, np.int64) for b, m, _, _ in parts])
    mi = np.concatenate([m for _, m, _, _ in parts])
    ti = np.concatenate([i for _, _, i, _ in parts])
    pc = np.concatenate([np.broadcast_to(np.asarray(p, np.int64), len(m)) for _, m, _, p in parts])
    n = len(mi)
    nj = np.array([nj0 for nj0, _ in blocks], np.int64)[blk] + ti
    step, hb = blk * mt + mi, blk % 2
    ring = min(g, mt, blocks[0][1]) if ramp else 0                # A slots 0 .. ring - 1: the ramp's M-tiles
    slot = np.where((blk == 0) & (mi < ring), mi, ring + step % 2)  # (every other step: two slots, as halves)
    whole = pc < 0
    q = np.where(whole, P - 1, pc)               # a resource's piece (the last piece's: the whole tile's)
    k0 = np.where(whole, 0, kb[np.maximum(pc, 0)])
    kk = np.where(whole, K, kb[np.maximum(pc, 0) + 1] - k0)
    last = whole | (pc == P - 1)
    res_b, res_p = slots * P, slots * P + 2 * nb * P     # resource ids: A (slot, piece); B, PARAM (half, tile)
    if ramp:                                     # a tile's accumulator region: in the order tiles start
        _, first, inv = np.unique(step * nb + ti, return_index=True, return_inverse=True)
        rank = np.empty(len(first), np.int64)
        rank[np.argsort(first)] = np.arange(len(first))
        acc, accumulate = rank[inv.reshape(-1)] % regions, (np.arange(n) != first[inv.reshape(-1)])
    else:
        acc, accumulate = np.arange(n) % regions, np.zeros(n, np.int64)
    ebytes = 4 if out_int32 else 1
    np_cols = nt * C
    ops = _op_columns(a_base=slot * a_slot + k0, b_base=hb * b_half + ti * K + k0, k_last=kk - 1, acc=acc,
                      accumulate=accumulate, res_a=slot * P + q, res_b=res_b + (hb * nb + ti) * P + q, store=last,
                      rows=np.minimum(R, M - mi * R), param=hb * p_half + ti, res_p=res_p + hb * nb + ti,
                      dst=(mi * R * np_cols + nj * C) * ebytes, stride=np.full(n, np_cols * ebytes))

    def firsts(key, sel=None):
        """The first op of each value of key (among ops `sel`)."""
        idx = np.arange(n) if sel is None else np.flatnonzero(sel)
        return idx[np.unique(key[idx], return_index=True)[1]]
    # a unit (A of a step, B of a block's tile) loads whole where no piece of it does, else piece by piece
    loads = []
    for kind, unit in ((0, step), (1, blk * nb + ti)):
        at = firsts(unit * (P + 1) + pc + 1)
        if ramp:
            at = at[~whole[at] | ~np.isin(unit[at], unit[~whole])]
        loads.append((at, np.full(len(at), kind)))
    at = firsts(blk * nb + ti, last)
    loads.append((at, np.full(len(at), 2)))
    ld_op, ld_kind = (np.concatenate(c) for c in zip(*loads))
    by = np.lexsort((ld_kind, ld_op))
    ld_op, ld_kind = ld_op[by], ld_kind[by]
    o = ld_op
    ld_res = np.choose(ld_kind, [ops["res_a"][o], ops["res_b"][o], ops["res_p"][o]])
    ld_count = np.where(ld_kind == 2, 1, kk[o])
    ld_sp = np.choose(ld_kind, [ops["a_base"][o], ops["b_base"][o], ops["param"][o]])
    a_src = mi[o] * R * a_pitch + k0[o] if a_rows else mi[o] * a_stride + k0[o] * R
    ld_src = np.choose(ld_kind, [a_src, nj[o] * b_stride + k0[o] * C, nj[o] * C * isa.PARAM_CHANNEL_BYTES])
    ld = [ld_op, ld_kind, ld_res, ld_count, ld_sp, ld_src, mi[o]]
    if split > 1:                                # long A and B loads in SPLIT LOADs
        cut = (ld_kind < 2) & (ld_count >= split * 32) & (ld_op < ramp_ops)
        pieces = [_cut(c, split, quantum) if x else [0, c] for c, x in zip(ld_count.tolist(), cut.tolist())]
        times = np.array([len(b) - 1 for b in pieces])
        off = np.concatenate([b[:-1] for b in pieces]).astype(np.int64)
        cnt = np.concatenate([np.diff(b) for b in pieces]).astype(np.int64)
        ld = [np.repeat(c, times) for c in ld]
        per = np.where(ld[1] == 0, 1 if a_rows else R, C)        # bytes of DDR an entry further
        ld[3], ld[4], ld[5] = cnt, ld[4] + off, ld[5] + off * per
    return ops, ld, LoadWindows.of_lengths(kk.tolist(), stream=bool(ramp))


def _resident_ops(order):
    """A `_resident_order` as `_scheduled_columns` takes it (ops, loads, windows), or None where it needs more than
    one run. A load's hazard: the last op before its own that uses its resource (its COMPUTE reads it, or its
    STORE, a PARAM entry); it may go `after` 1 op after it, a PARAM entry 2 (the STORE follows the next COMPUTE)."""
    ops, (ld_op, ld_kind, ld_res, ld_count, ld_sp, ld_src, ld_m), windows = order
    n = len(ops["acc"])
    if max(n, len(ld_op)) > WAIT_LIMIT:
        return None
    stores = np.flatnonzero(ops["store"])
    ev_res = np.concatenate([ops["res_a"], ops["res_b"], ops["res_p"][stores]])
    ev_op = np.concatenate([np.arange(n), np.arange(n), stores])
    span = n + 1
    key = np.sort(ev_res * span + ev_op)
    at = np.searchsorted(key, ld_res * span + ld_op) - 1
    hit = (at >= 0) & (key[np.maximum(at, 0)] // span == ld_res)
    hazard = np.where(hit, key[np.maximum(at, 0)] % span, -1)
    starts = np.flatnonzero(np.concatenate([[True], ld_op[1:] != ld_op[:-1]]))
    spread = np.arange(len(ld_op)) - np.repeat(starts, np.diff(np.append(starts, len(ld_op))))
    after = np.where(ld_kind == 2, 2, 1)
    rows = np.where(ld_kind == 0, ops["rows"][ld_op], 0)
    hz = [None if h < 0 else h for h in hazard.tolist()]
    loads = list(zip(ld_op.tolist(), spread.tolist(), hz, after.tolist(), ld_kind.tolist(), ld_res.tolist(),
                     ld_count.tolist(), ld_sp.tolist(), ld_src.tolist(), rows.tolist()))
    return ops, loads, windows


def _blocked_ops(cfg, M: int, K: int, N: int, out_int32: bool, a_rows: bool, a_stride: int, b_stride: int,
                 a_pitch: int, blocking: tuple[int, int, int]):
    """_linear_plan's K-split op list (blocks of mb M-tiles x nb N-tiles, K in chunks of kc) as
    _scheduled_columns takes it, or None where it needs more than one run. A chunk's ops read A and B half
    (step % 2), its first op loads the chunk's A and B pieces (and in a block's first chunk its PARAM entries,
    one resource a half), the last chunk's ops store."""
    R, C = cfg.rows, cfg.cols
    mt, nt = -(-M // R), -(-N // C)
    a_half, b_half, p_half = cfg.a_depth // 2, cfg.b_depth // 2, cfg.param_depth // 2
    regions = cfg.acc_depth // R
    mb, nb, kc = blocking
    chunks = list(range(0, K, kc))
    ebytes = 4 if out_int32 else 1
    np_cols = nt * C
    cols = {k: [] for k in ("a_base", "b_base", "k_last", "acc", "accumulate", "res_a", "res_b", "store", "rows",
                            "param", "res_p", "dst")}
    loads, windows = [], []
    step = blk = tile_no = j0 = 0
    block_end, step_first = [], []                # each block's last op, each step's first
    for mi0 in range(0, mt, mb):
        tiles_m = np.arange(mi0, min(mi0 + mb, mt))
        for nj0 in range(0, nt, nb):
            tiles_n = np.arange(nj0, min(nj0 + nb, nt))
            a, b = len(tiles_m), len(tiles_n)
            hp = blk % 2
            ia, ib = np.repeat(np.arange(a), b), np.tile(np.arange(b), a)
            region = (tile_no + np.arange(a * b)) % regions
            tile_no += a * b
            mi, nj = tiles_m[ia], tiles_n[ib]
            for ci, k0 in enumerate(chunks):
                kk = min(kc, K - k0)
                h = step % 2
                last = ci == len(chunks) - 1
                step_first.append(j0)
                hz = step_first[-2] - 1 if step >= 2 else None     # the last op of the step two back
                spread = 0
                for i, m_ in enumerate(tiles_m.tolist()):
                    loads.append((j0, spread, hz, 1, 0, h, kk, h * a_half + i * kc,
                                  m_ * R * a_pitch + k0 if a_rows else m_ * a_stride + k0 * R, min(R, M - m_ * R)))
                    spread += 1
                for i, n_ in enumerate(tiles_n.tolist()):
                    loads.append((j0, spread, hz, 1, 1, 2 + h, kk, h * b_half + i * kc, n_ * b_stride + k0 * C, 0))
                    spread += 1
                if ci == 0:
                    hzp = block_end[-2] if len(block_end) >= 2 else None
                    for i, n_ in enumerate(tiles_n.tolist()):
                        loads.append((j0, spread, hzp, 2, 2, 4 + hp, 1, hp * p_half + i,
                                      n_ * C * isa.PARAM_CHANNEL_BYTES, 0))
                        spread += 1
                m = a * b
                for key, v in (("a_base", h * a_half + ia * kc), ("b_base", h * b_half + ib * kc),
                               ("k_last", np.full(m, kk - 1)), ("acc", region), ("accumulate", np.full(m, int(ci > 0))),
                               ("res_a", np.full(m, h)), ("res_b", np.full(m, 2 + h)), ("store", np.full(m, int(last))),
                               ("rows", np.minimum(R, M - mi * R)), ("param", hp * p_half + ib),
                               ("res_p", np.full(m, 4 + hp)), ("dst", (mi * R * np_cols + nj * C) * ebytes)):
                    cols[key].append(v)
                windows += [kk] * m
                j0 += m
                step += 1
            block_end.append(j0 - 1)
            blk += 1
    n = j0
    n_stores = tile_no
    if max(n, len(loads), n_stores) > WAIT_LIMIT:
        return None
    ops = _op_columns(**{k: np.concatenate(v) for k, v in cols.items()}, stride=np.full(n, np_cols * ebytes))
    return ops, loads, LoadWindows.of_lengths(windows)


def _store_table(cfg, lut, out_int32: bool) -> np.ndarray | None:
    """The int8 table a fused `lut` epilogue loads (None: no epilogue); refused where it cannot run."""
    if lut is None:
        return None
    if "store_lut" not in cfg.engines:
        raise CompileError(f"overlay {cfg.name!r} has no store_lut engine (engines: {', '.join(cfg.engines)}): "
                           "run the table on the vector engine or the host")
    if out_int32:
        raise CompileError("the store table maps int8 results: lut with out_int32 is not possible")
    table = np.asarray(getattr(lut, "table", None))
    if table.shape != (isa.LUT_BYTES,) or table.dtype != np.int8:
        raise CompileError(f"lut must be a golden_model.intvec.LutParams (a {isa.LUT_BYTES}-entry int8 table)")
    return table


def _store_residual(cfg, residual, add, out_int32: bool, M: int, N: int) -> np.ndarray | None:
    """The int8 (M, N) residual a fused add reads (None: no add); refused where it cannot run."""
    if residual is None and add is None:
        return None
    if residual is None or add is None:
        raise CompileError("a fused residual add needs both the residual and its AddParams")
    if "store_add" not in cfg.engines:
        raise CompileError(f"overlay {cfg.name!r} has no store_add engine (engines: {', '.join(cfg.engines)}): "
                           "run the add on the vector engine or the host")
    if out_int32:
        raise CompileError("the store's residual add takes int8 results: add with out_int32 is not possible")
    if not all(hasattr(add, k) for k in ("a_mult", "b_mult", "shift")):
        raise CompileError("add must be a golden_model.intvec.AddParams")
    residual = np.asarray(residual)
    if residual.shape != (M, N) or residual.dtype != np.int8:
        raise CompileError(f"the residual must be int8 of the output's shape {(M, N)} "
                           f"(got {residual.dtype} {residual.shape})")
    return residual


def fuse_store_add(cfg, ops: list[dict], M: int) -> None:
    """Every STORE of `ops` adds its residual tile: the op that stores loads the tile's rows (region
    "res", per N-tile M rows of C) at its accumulator rows (RES mirrors the accumulator), after the
    STORE that last read them (resource ("RES", region), like a PARAM entry's)."""
    C = cfg.cols
    for op in ops:
        st = op["store"]
        if not st:
            continue
        res = ("RES", st["acc"])
        row0 = st["dst"][1] // (st["stride"])                  # the tile's first output row
        n0 = st["dst"][1] % st["stride"]                       # its first column
        # (store_only: the STORE waits for it, not the COMPUTE: the compute never waits on a residual)
        op["loads"] = op["loads"] + [dict(op="LOAD", target="RES", src=("res", (n0 * M + row0 * C)),
                                          count=st["rows"], sp=st["acc"] * cfg.rows, res=res, store_only=True)]
        st["fields"] = dict(st.get("fields", {}), add=1)
        st["uses"] = [*st.get("uses", ()), res]


def fuse_store_table(cfg, ops: list[dict]) -> None:
    """Every STORE of `ops` through the store table: the first op loads it (region "lut"), each store marks
    it used (split_runs loads it again in each later run, so runs stay self-contained)."""
    res = ("LUT", 0)
    ops[0]["loads"] = [dict(op="LOAD", target="LUT", src=("lut", 0), count=isa.LUT_BYTES // cfg.beat_bytes, sp=0,
                            res=res)] + ops[0]["loads"]
    for op in ops:
        if op["store"]:
            op["store"]["fields"] = dict(op["store"].get("fields", {}), lut=1)
            op["store"]["uses"] = [res]


def split_runs(ops: list[dict], limit: int = None) -> list[list[dict]]:
    """Cut an op list (as `schedule` takes it) into runs of at most `limit` descriptors per unit.

    Each run is self-contained: a run's first user of a scratchpad half loaded in an earlier run
    gets that half's last loads again (copies), so no run relies on what an earlier one left in the
    scratchpads. Runs end only before an op that starts its accumulator rows (accumulate = 0)."""
    limit = WAIT_LIMIT if limit is None else limit
    if max(sum(len(op["loads"]) for op in ops), len(ops), sum(1 for op in ops if op["store"])) <= limit:
        return [ops]                             # one run: nothing to load again
    chains: list[list[dict]] = []                # ops from one accumulate = 0 to the next
    for op in ops:
        if op["accumulate"] and chains:
            chains[-1].append(op)
        else:
            chains.append([op])
    last_group: dict = {}                        # resource -> the loads that last filled it
    runs: list[list[dict]] = []
    run: list[dict] = []
    counts = [0, 0, 0]                           # loads, computes, stores of `run`
    loaded: set = set()                          # resources loaded in `run`

    def place(chain, loaded):
        """The chain's ops with the loads they need in a run that has loaded `loaded` so far."""
        placed, have, n_loads = [], set(loaded), 0
        for op in chain:
            own = {ld["res"] for ld in op["loads"]}
            used = [op["a"], op["b"]] + ([op["store"]["p"], *op["store"].get("uses", ())] if op["store"] else [])
            again = [dict(ld) for res in dict.fromkeys(used) if res not in have and res not in own
                     for ld in last_group[res]]
            have |= own | {ld["res"] for ld in again}
            placed.append(dict(op, loads=again + [dict(ld) for ld in op["loads"]]) if again else op)
            n_loads += len(again) + len(op["loads"])
        return placed, have, [n_loads, len(chain), sum(1 for op in chain if op["store"])]

    for chain in chains:
        placed, have, n = place(chain, loaded)
        if run and any(c + k > limit for c, k in zip(counts, n)):
            runs.append(run)
            run, counts = [], [0, 0, 0]
            placed, have, n = place(chain, set())
        if any(k > limit for k in n):
            raise CompileError(f"one accumulation needs {max(n)} descriptors of a unit, more than the {limit} "
                               "a run's wait counts allow")
        run += placed
        counts = [c + k for c, k in zip(counts, n)]
        loaded = have
        for op in chain:
            for res in {ld["res"] for ld in op["loads"]}:
                last_group[res] = [ld for ld in op["loads"] if ld["res"] == res]
    if run:
        runs.append(run)
    return runs


def schedule_runs(ops: list[dict], R: int, relu: bool, out_int32: bool, stream: bool = False):
    """`schedule` per run of `split_runs`: (all descriptors in order, (first, count) per run or None for one)."""
    descs, runs = Emitter(), []
    for run in split_runs(ops):
        first = len(descs)
        schedule(run, R, relu, out_int32, out=descs, stream=stream)
        runs.append((first, len(descs) - first))
    return descs, (runs if len(runs) > 1 else None)


def paced(cfg, ld: dict) -> dict:
    """A load `schedule` places by its estimated cycles (the LOAD's beats, `cycles`): see LoadWindows."""
    fields = ld.get("fields", {})
    if fields.get("transpose"):     # a group of beat-bytes entries per max(rows, beat bytes) cycles
        rows = fields["t_rows_last"] + 1
        beats = -(-ld["count"] // cfg.beat_bytes) * max(rows, cfg.beat_bytes)
    else:
        beats = -(-ld["count"] * isa.entry_bytes(cfg, ld["target"]) // cfg.beat_bytes)
    return dict(ld, cycles=beats + LOAD_OVERHEAD)


#: A LOAD's cycles beyond its beats, roughly (the read latency and the load unit's pipeline: sw.backends.cycles).
LOAD_OVERHEAD = 9


class LoadWindows:
    """Where paced loads go: the load unit's time cut into windows, one per COMPUTE (from its dispatch to
    the next one's, its K steps x tiles). A paced load goes after the first compute from its hazard on
    whose window has load time left, and fills windows from there. The in-order dispatcher waits for a
    LOAD while the load unit is busy, so loads bunched after one compute hold up the computes behind them;
    spread this way they stream under the computes (the first computes start after their own tiles only,
    not after every tile that has no earlier user).

    `stream` (a resident ramp's, `_resident_order`): a load without a hazard that finds no time left goes after
    the op that needs the load placed before it, not right before its own op: while the DMA is the bound (a
    ramp's first tiles) the loads then stream back to back instead of each waiting for its op's predecessor."""

    def __init__(self, ops: list[dict], stream: bool = False):
        self.left = [(op["k_last"] + 1) * max(1, op.get("tiles", 1)) for op in ops]
        self.next = list(range(len(ops) + 1))      # the first window at or after i with time left
        self.stream, self.after = stream, 0        # (stream: the op after the last load placed's latest window)

    @classmethod
    def of_lengths(cls, left: list[int], stream: bool = False) -> "LoadWindows":
        """Windows of the given lengths (each compute's K steps x tiles)."""
        w = cls([], stream)
        w.left, w.next = list(left), list(range(len(left) + 1))
        return w

    def _free(self, i: int) -> int:
        root = i
        while self.next[root] != root:
            root = self.next[root]
        while self.next[i] != root:                # path compression
            self.next[i], i = root, self.next[i]
        return root

    def place(self, first: int, last: int, cycles: int, hazard: bool, spread: int) -> int:
        """The window (compute index) of a load of `cycles` that may go after compute `first` at the
        earliest and must go after compute `last` at the latest; reserves its time. When no time is left
        before it is needed (the DMA is the bound), a load with a hazard `spread` computes after it (the op's
        i-th load after the i-th compute from the hazard on, so that no long stretch of load beats holds up
        the fetch of the computes queued behind them); one without, where it is needed (early, it would hold
        up the first computes). Windows with no time left take nothing: skipped, not walked."""
        return self.place_all([first], [last], [cycles], [hazard], [spread])[0]

    def place_all(self, first: list, last: list, cycles: list, hazard: list, spread: list) -> list[int]:
        """Loads placed in turn, each as `place` says (its arguments as lists): their windows. One loop, no call
        per load (a 65,536-token layer paces ~100,000 loads)."""
        left, nxt, end, free = self.left, self.next, len(self.left), self._free
        out, stream, after = [], self.stream, self.after
        for lo, hi, c, hz, sp in zip(first, last, cycles, hazard, spread):
            at = lo if nxt[lo] == lo else free(lo)
            if at > hi:
                at = min(lo + sp, hi) if hz else max(lo, min(hi, after)) if stream else hi
            after = hi + 1
            i = at if nxt[at] == at else free(at)
            while c > 0 and i < end:
                if left[i] > c:
                    left[i] -= c
                    break
                c -= left[i]
                left[i] = 0
                nxt[i] = i + 1
                i = i + 1 if nxt[i + 1] == i + 1 else free(i + 1)
            out.append(at)
        self.after = after
        return out


def schedule(ops: list[dict], R: int, relu: bool, out_int32: bool, out: Emitter | None = None,
             stream: bool = False) -> Emitter:
    """Descriptors in dispatch order with exact waits, for the GEMM and conv compilers.

    ops: COMPUTEs in order, each with the loads it needs ("loads": target, src, count, sp,
    res = the (scratchpad, half) it overwrites, optional "fields" for extra descriptor fields,
    optional "store_only": only the op's STORE reads it, so the STORE waits for it, not the COMPUTE;
    optional "cycles": a paced load, placed by `LoadWindows`),
    its operands "a"/"b" (resources), "acc" region, "accumulate", optional "tiles" (COMPUTE.count:
    tiles back to back) with their "acc_regions", and an optional "store" (rows, acc, param,
    p = its PARAM resource, dst, stride, optional "fields" and "acc_regions").
    Appended to `out` (a new Emitter by default): each descriptor's fields in the order of its dict before
    the Emitter (opcode, ..., its "fields", wait_load, wait_compute, wait_store, dram_addr). `stream`: the
    LoadWindows rule of a resident ramp.
    """
    descs = Emitter() if out is None else out
    add, add_at = descs.add, descs.add_at
    last_reader: dict = {}    # resource -> (unit, completion count needed) of its last user
    acc_free: dict = {}       # acc region -> stores_done needed before overwriting
    LOAD, COMPUTE, STORE = (isa.OPCODES[u] for u in ("LOAD", "COMPUTE", "STORE"))
    relu, out_int32 = int(relu), int(out_int32)
    load_keys: dict = {(): _LOAD_KEYS + _WAIT_KEYS}      # extra fields' names -> a LOAD's keys
    store_keys: dict = {(): _STORE_KEYS + _WAIT_KEYS}    # ... a STORE's

    # Each load goes right after the compute that follows its hazard (the last compute
    # using its half, or for parameters the last store using them): early enough to be
    # hidden behind compute, late enough that the in-order dispatcher never waits on it
    # while the engine has nothing queued.
    buckets: dict[int, list] = {}
    last_user: dict = {}
    window = LoadWindows(ops, stream)
    for j, op in enumerate(ops):
        for i, ld in enumerate(op["loads"]):
            hz = last_user.get(ld["res"])
            # (what a STORE reads, PARAM entries and RES rows, is free only after the next COMPUTE)
            pos = -1 if hz is None else hz + (2 if ld["res"][0] in ("P", "RES") else 1)
            if ld.get("store_only"):
                # As late as possible: only the op's STORE (after the next COMPUTE) waits for it; placed
                # early, its wait on the STORE before it would hold the in-order load unit (8 % slower).
                pos = j - 1
            elif "cycles" in ld and j > 0:
                pos = window.place(max(pos, 0), j - 1, ld["cycles"], hazard=hz is not None, spread=i)
            buckets.setdefault(min(pos, j - 1), []).append(ld)
        last_user[op["a"]] = last_user[op["b"]] = j
        if op["store"]:
            for res in (op["store"]["p"], *op["store"].get("uses", ())):
                last_user[res] = j

    def put(keys, values, addr):
        if type(addr) is tuple:
            add_at(keys, values, *addr)
        else:                                     # a number: an address field like any other
            add(keys + ("dram_addr",), values + (addr,))

    def emit_loads(bucket, n_load):
        """The loads of a bucket, LOADs n_load + 1 ...; the LOADs done after them."""
        for ld in bucket:
            unit, cnt = last_reader.get(ld["res"], ("COMPUTE", 0))
            n_load += 1
            ld["done_at"] = n_load
            waits = (cnt, 0, 0) if unit == "LOAD" else (0, cnt, 0) if unit == "COMPUTE" else (0, 0, cnt)
            target = ld["target"]
            target = isa.TARGETS[target] if type(target) is str else target
            fields = ld.get("fields")
            if fields:
                names = tuple(fields)
                keys = load_keys.get(names) or load_keys.setdefault(names, _LOAD_KEYS + names + _WAIT_KEYS)
                put(keys, (LOAD, target, ld["count"], ld["sp"], *fields.values(), *waits), ld["src"])
            else:
                put(load_keys[()], (LOAD, target, ld["count"], ld["sp"], *waits), ld["src"])
        return n_load

    def emit_store(st, compute_done, load_done, n_store):
        """op's STORE, the n_store-th."""
        fields = st.get("fields")
        names = tuple(fields) if fields else ()
        keys = store_keys.get(names) or store_keys.setdefault(names, _STORE_KEYS + names + _WAIT_KEYS)
        put(keys, (STORE, st["rows"], st["acc"] * R, st["param"], relu, out_int32, st["stride"],
                   *(fields.values() if fields else ()), load_done, compute_done, 0), st["dst"])
        regions = st.get("acc_regions")
        if regions is None:
            acc_free[st["acc"]] = n_store
        else:
            for region in regions:
                acc_free[region] = n_store
        for res in (st["p"], *st.get("uses", ())):
            prev = last_reader.get(res)
            last_reader[res] = ("STORE", n_store if prev is None or prev[0] != "STORE" else max(n_store, prev[1]))

    n_load = emit_loads(buckets.get(-1, ()), 0)
    n_store = 0
    pending = None
    for i, op in enumerate(ops):
        wait_load = store_loads = 0
        for ld in op["loads"]:
            if ld.get("store_only"):
                store_loads = max(store_loads, ld["done_at"])
            else:
                wait_load = max(wait_load, ld["done_at"])
        if op["accumulate"]:
            wait_store = 0
        else:
            regions = op.get("acc_regions")
            wait_store = acc_free.get(op["acc"], 0) if regions is None else max(acc_free.get(r, 0) for r in regions)
        op["done_at"] = done = i + 1                 # (COMPUTEs done: one per op)
        tiles = op.get("tiles", 1)
        if tiles > 1:
            add(_COMPUTE_KEYS[1], (COMPUTE, op["a_base"], op["b_base"], op["k_last"], op["acc"] * R,
                                   op["accumulate"], tiles, wait_load, 0, wait_store))
        else:
            add(_COMPUTE_KEYS[0], (COMPUTE, op["a_base"], op["b_base"], op["k_last"], op["acc"] * R,
                                   op["accumulate"], wait_load, 0, wait_store))
        last_reader[op["a"]] = last_reader[op["b"]] = ("COMPUTE", done)
        if pending is not None:
            n_store += 1
            emit_store(*pending, n_store)      # after the next COMPUTE: the store overlaps it
        pending = (op["store"], done, store_loads) if op["store"] else None
        bucket = buckets.get(i)
        if bucket:
            n_load = emit_loads(bucket, n_load)
    if pending is not None:
        emit_store(*pending, n_store + 1)
    return descs


_NONE: dict = {}
_WAIT_KEYS = ("wait_load", "wait_compute", "wait_store")
_LOAD_KEYS = ("opcode", "target", "count", "sp_addr")
_STORE_KEYS = ("opcode", "count", "sp_addr", "param_addr", "relu", "out_int32", "stride")
_COMPUTE_KEYS = tuple(("opcode", "sp_addr", "b_base", "k_last", "acc_base", "accumulate", *tiles, *_WAIT_KEYS)
                      for tiles in ((), ("count",)))


def pack_descriptors(descs: list[dict], image: np.ndarray, offsets: dict, base_addr: int,
                     hint: str) -> tuple:
    """Encode descriptors (symbolic opcode, target; addresses as ("region", offset), `src`/`dst`
    standing for dram_addr) into the image's descriptor area, the image placed at base_addr.
    Returns (symbolic fields, numeric fields): sw.runtime.program.ColumnDescriptors, the fields as columns
    (the dicts made only when read). hint: what to do when one does not fit."""
    from sw.runtime.program import ColumnDescriptors, LinkError, SplitDescriptors, encode_columns, link, link_words
    addresses = {name: base_addr + off for name, (off, _) in offsets.items()}
    emitted = isinstance(descs, Emitter)
    symbolic = descs.columns() if emitted else ColumnDescriptors.of_compiled(descs)
    if symbolic is not None and symbolic.split[1].keys() <= addresses.keys():
        numeric = symbolic.resolved(addresses)
        # linked as the runtime links it: the words without addresses, made here and kept on the list, are the
        # session's load's too (it writes only the address bytes); encode_columns where those do not fit
        words = link_words(symbolic, addresses, words=True)
        if words is None:
            words = encode_columns(numeric.split[0], len(numeric))
        if words is not None:
            raw = words.view(np.uint8).reshape(-1)
            image[:raw.size] = raw
            return symbolic, numeric
    # something does not fit (or is not a number): the dict path says which descriptor and why
    symbolic = []
    for d in descs.dicts() if emitted else descs:
        if emitted:
            symbolic.append({k: v for k, v in d.items() if k in isa.FIELDS})
            continue
        fields = {k: v for k, v in d.items() if k in isa.FIELDS}
        fields["opcode"] = isa.OPCODES[d["opcode"]]
        if isinstance(d.get("target"), str):
            fields["target"] = isa.TARGETS[d["target"]]
        for key in ("src", "dst"):
            if key in d:
                fields["dram_addr"] = d[key]
        symbolic.append(fields)
    symbolic = SplitDescriptors.of(symbolic)
    try:
        numeric, raw = link(symbolic, addresses)
    except LinkError as e:
        raise CompileError(f"{e} (does not fit the format); {hint}") from None
    image[:raw.size] = raw
    return symbolic, numeric


def put_token_tiles(dst: np.ndarray, x: np.ndarray) -> None:
    """golden_model.intops.token_tiles of x (..., tokens, channels) written into dst (..., tiles, channels, lanes)
    in place: tile i entry c byte r = x[i lanes + r, c]; dst's bytes past the tokens are left as they are (zero
    in a new image). Straight into the image's bytes: no zero-padded copy, no transposed one (a layer's operands
    are MBs)."""
    lanes, t = dst.shape[-1], x.shape[-2]
    full, rest = divmod(t, lanes)
    x_full = x[..., :full * lanes, :].reshape(*x.shape[:-2], full, lanes, x.shape[-1])
    dst[..., :full, :, :] = np.swapaxes(x_full, -1, -2)
    if rest:
        dst[..., full, :, :rest] = np.swapaxes(x[..., full * lanes:, :], -1, -2)


def tiles_view(region: np.ndarray, tiles: int, stride: int, entries: int, lanes: int) -> np.ndarray:
    """A region's tiles (`stride` bytes apart, each `entries` entries of `lanes` bytes from its start) as an int8
    (tiles, entries, lanes) view."""
    return region[:tiles * stride].view(np.int8).reshape(tiles, stride)[:, :entries * lanes].reshape(
        tiles, entries, lanes)


def _fill_operands(cfg, image, offsets, a, b, bias, multiplier, shift, mt, nt, a_stride, b_stride, add=None,
                   a_rows=False):
    """A, B and params into the zeroed `image` (the module docstring's layout)."""
    R, C = cfg.rows, cfg.cols
    M, K = a.shape
    N = b.shape[1]
    off = offsets["A"][0]
    if a_rows:                                              # token rows (the loads transpose them)
        from sw.runtime.layout import TokenRowLayout
        TokenRowLayout(M, K, C).pack_into(a, image[off:off + offsets["A"][1]])
    else:                                                   # per M-tile: K entries of R
        put_token_tiles(tiles_view(image[off:], mt, a_stride, K, R), a)
    off = offsets["B"][0]                                   # per N-tile: K entries of C
    put_token_tiles(tiles_view(image[off:], nt, b_stride, K, C), b.T)
    pad = nt * C - N
    params = isa.pack_params(np.concatenate([bias, np.zeros(pad, np.int64)]),
                             np.concatenate([multiplier, np.zeros(pad, np.int64)]),
                             np.concatenate([shift, np.zeros(pad, np.int64)]), add)
    off = offsets["params"][0]
    image[off:off + params.size] = params
